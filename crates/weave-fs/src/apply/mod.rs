//! The executor: carries out one replica's part of a plan on disk.
//!
//! Order: removals (deepest first; files go to `.weave/trash` so their
//! chunks stay available), directories (shallowest first), then file and
//! symlink writes in batches: every new content is built in a temporary
//! file next to its target from verified chunks (I-3), the batch is made
//! durable, and only then is each temporary renamed over its target after
//! the target was checked against the index once more (I-4, I-5); a file
//! at a new path is built without a name where the file system allows it
//! and linked into place, which never replaces anything. Metadata changes
//! come last.

mod hooks;
mod modes;
#[cfg(test)]
mod test_support;
mod trash;

pub use modes::restore_modes;
pub use trash::{clear_trash, trash_leftovers};

use crate::util::{
    aligned_start, create_unnamed, join, link_unnamed, open_dir_beneath, open_direct, same_stat,
    stat_of, temp_name, FsIssue, BLOCK,
};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};
use weave_chunk::ChunkList;
use weave_core::path::{ancestors, depth, STATE_DIR};
use weave_core::{Entry, Hash, Object};
use weave_core::{Op, OpKind, Stat};

/// Files at least this large are flushed as soon as they are written (by a
/// background thread), so the disk works while other files are built.
const EARLY_WRITEBACK: u64 = 256 * 1024;

/// An operation that was carried out.
#[derive(Debug, Clone)]
pub struct Done {
    pub op: usize,
    pub entry: Entry,
    pub stat: Option<Stat>,
    /// The chunk list of a file that was written.
    pub content: Option<ChunkList>,
}

#[derive(Debug, Default)]
pub struct ApplyOutcome {
    pub done: Vec<Done>,
    pub issues: Vec<FsIssue>,
    /// Bytes of new file content taken from this replica's own files.
    pub bytes_local: u64,
    /// Bytes of new file content taken from other replicas.
    pub bytes_remote: u64,
    /// Files this run replaced or removed, still held in the trash until
    /// [`clear_trash`] (for the version store).
    pub replaced: Vec<Replaced>,
}

/// A file version a run replaced or removed.
#[derive(Debug, Clone)]
pub struct Replaced {
    pub path: String,
    pub old: Entry,
    /// Where the old content is now (in the trash).
    pub file: PathBuf,
    /// Removed (rather than replaced by another version).
    pub deleted: bool,
    /// The stat recorded for it, which it still had when it was moved.
    pub stat: Option<Stat>,
}

/// Where content can be found.
pub trait ContentSource: Sync {
    /// The chunk list of a content id.
    fn chunk_list(&self, content: &Hash) -> Option<ChunkList>;
    /// Files that should hold this content, the replica's own first.
    fn locations(&self, content: &Hash) -> Vec<Location>;
    /// Chunks received from other replicas: a pack file and where each
    /// chunk's data is in it (see [`crate::stage`]).
    fn staged(&self) -> Option<&crate::stage::StageView> {
        None
    }
    /// A complete part file holding this content (see
    /// [`crate::stage::Part`]): the first write of the content takes it
    /// by a rename.
    fn part(&self, _content: &Hash) -> Option<PathBuf> {
        None
    }
}

/// A file that should hold some content.
#[derive(Debug, Clone)]
pub struct Location {
    pub path: PathBuf,
    /// One of the receiving replica's own files.
    pub local: bool,
    /// The stat recorded when this file's content was hashed, if it was not
    /// racy. A file whose stat still matches it, before and after a copy,
    /// holds exactly the hashed content: it is copied whole by the kernel.
    /// Otherwise every chunk read from it is verified.
    pub stat: Option<Stat>,
}

/// Files per write batch and bytes per write batch: a batch is made
/// durable with one filesystem flush before its renames.
const BATCH_FILES: usize = 4096;
const BATCH_BYTES: u64 = 1 << 30;

struct Ctx<'a> {
    root: &'a Path,
    trash: PathBuf,
    source: &'a dyn ContentSource,
    /// Content ids moved into the trash during this run.
    trashed: Mutex<HashMap<Hash, PathBuf>>,
    /// Old versions this run replaced or removed, kept in the trash.
    replaced: Mutex<Vec<Replaced>>,
    /// Part files taken by a write: content → (its temporary, its target).
    parts: Mutex<HashMap<Hash, (PathBuf, PathBuf)>>,
    progress: &'a (dyn Fn(u64) + Sync),
    /// The trash journal (see [`trash_leftovers`]), opened on first use.
    journal: Mutex<Option<File>>,
    /// Whether new files can be made without a name and linked into
    /// place ([`create_unnamed`]), tried once on first use.
    unnamed: std::sync::OnceLock<bool>,
    /// Unnamed files a batch may hold open until its commit: a quarter of
    /// what this process may open (a batch over it uses named
    /// temporaries, which are closed once written).
    fd_budget: usize,
    /// The replica's root, to reach a new file's directory without
    /// following a symlink ([`open_dir_beneath`]).
    root_fd: Option<std::os::fd::OwnedFd>,
    /// The root's device: files on another one are flushed there too.
    root_dev: Option<u64>,
    /// Tests: directories under this path count as another file system.
    #[cfg(test)]
    test_other_fs: Option<String>,
}

/// Carries out `ops` on the replica at `root`.
pub fn apply(
    root: &Path,
    ops: &[Op],
    source: &dyn ContentSource,
    progress: &(dyn Fn(u64) + Sync),
) -> ApplyOutcome {
    let mut out = ApplyOutcome::default();
    let trash = match trash::empty_trash(root) {
        Ok(trash) => trash,
        Err(issue) => {
            out.issues.push(issue);
            return out;
        }
    };
    let ctx = Ctx {
        root,
        trash,
        source,
        trashed: Mutex::new(HashMap::new()),
        parts: Mutex::new(HashMap::new()),
        replaced: Mutex::new(Vec::new()),
        progress,
        journal: Mutex::new(None),
        unnamed: std::sync::OnceLock::new(),
        fd_budget: fd_budget(),
        root_fd: rustix::fs::open(
            root,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .ok(),
        root_dev: fs::metadata(root).ok().map(|m| m.dev()),
        #[cfg(test)]
        test_other_fs: hooks::OTHER_FS.with(|o| o.borrow().clone()),
    };
    #[cfg(test)]
    if hooks::NO_UNNAMED.with(|n| n.get()) {
        let _ = ctx.unnamed.set(false);
    }
    let live_now = |o: &Op| o.current.as_ref().is_some_and(|c| c.entry.is_live());
    let is_write = |o: &Op| matches!(o.kind, OpKind::WriteFile | OpKind::WriteSymlink);
    let old_content = |o: &Op| match o.current.as_ref().map(|c| &c.entry.object) {
        Some(Object::File { content, .. }) => Some(*content),
        _ => None,
    };

    // Directories this run writes into but their owner cannot write:
    // opened up for the run, their modes restored (or set as planned) at
    // the end.
    let locked = ctx.unlock_parents(ops);

    // Nothing is destroyed before what must survive it has landed: new
    // paths (conflict copies, rename targets, new files) are written first,
    // from the originals still in place; a removal or overwrite whose old
    // content failed to land elsewhere is skipped, and retried next sync.
    let mut final_modes: Vec<(String, u32)> = Vec::new();
    let mut failed: HashSet<Hash> = HashSet::new();

    // 1. Directories at free paths, shallowest first. Created writable by
    // their owner; final modes are set at the end.
    let mut dirs: Vec<(usize, &Op)> = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| o.kind == OpKind::MakeDir)
        .collect();
    dirs.sort_by(|a, b| {
        depth(&a.1.path)
            .cmp(&depth(&b.1.path))
            .then(a.1.path.cmp(&b.1.path))
    });
    // A directory is made now if nothing is in its way: its path is free
    // (or already a directory) and its parents are directories already or
    // made just before it.
    let mut free_dirs: Vec<(usize, &Op)> = Vec::new();
    let mut blocked_dirs: Vec<(usize, &Op)> = Vec::new();
    let mut free_set: HashSet<&str> = HashSet::new();
    let mut blocked_set: HashSet<&str> = HashSet::new();
    for (i, o) in dirs {
        let path_free =
            !fs::symlink_metadata(join(root, &o.path)).is_ok_and(|m| !m.file_type().is_dir());
        let parent_ok = match weave_core::path::parent(&o.path) {
            None => true,
            Some(p) => {
                free_set.contains(p)
                    || (!blocked_set.contains(p) && ctx.check_parents(&o.path).is_ok())
            }
        };
        if path_free && parent_ok {
            free_set.insert(&o.path);
            free_dirs.push((i, o));
        } else {
            blocked_set.insert(&o.path);
            blocked_dirs.push((i, o));
        }
    }
    ctx.make_dirs(&free_dirs, &mut out, &mut final_modes);

    // 2. Writes to free paths whose directory is already there (not to a
    // path a removal below must clear first: a type change).
    let cleared: HashSet<&str> = ops
        .iter()
        .filter(|o| o.kind == OpKind::Remove)
        .map(|o| o.path.as_str())
        .collect();
    let mut early: Vec<(usize, &Op)> = Vec::new();
    let mut late: Vec<(usize, &Op)> = Vec::new();
    for (i, o) in ops.iter().enumerate().filter(|(_, o)| is_write(o)) {
        if !live_now(o) && !cleared.contains(o.path.as_str()) && ctx.check_parents(&o.path).is_ok()
        {
            early.push((i, o));
        } else {
            late.push((i, o));
        }
    }
    let size_of = |o: &Op| match o.target.object {
        Object::File { size, .. } => size,
        _ => 0,
    };
    // Largest first: their disk writes overlap with building the rest.
    early.sort_by_key(|(_, o)| std::cmp::Reverse(size_of(o)));
    let retry = ctx.write_batches(ops, &early, &mut out, &mut failed, true);

    // 3. Removals, deepest first, unless they would destroy content that
    // failed to land at its new place.
    let mut removes: Vec<(usize, &Op)> = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| o.kind == OpKind::Remove)
        .collect();
    removes.sort_by(|a, b| {
        depth(&b.1.path)
            .cmp(&depth(&a.1.path))
            .then(b.1.path.cmp(&a.1.path))
    });
    for (i, op) in removes {
        if old_content(op).is_some_and(|c| failed.contains(&c)) {
            out.issues.push(FsIssue::new(join(root, &op.path), KEPT));
            continue;
        }
        match ctx.remove(op) {
            Ok(()) => out.done.push(Done {
                op: i,
                entry: op.target.clone(),
                stat: None,
                content: None,
            }),
            Err(msg) => out.issues.push(FsIssue::new(join(root, &op.path), msg)),
        }
    }

    // 4. Directories that replace something removed above.
    ctx.make_dirs(&blocked_dirs, &mut out, &mut final_modes);

    // 5. Writes that had to wait for a directory or for a removal, then
    // overwrites.
    late.extend(retry);
    late.sort_by_key(|(_, o)| (live_now(o), std::cmp::Reverse(size_of(o))));
    let late: Vec<(usize, &Op)> = late
        .into_iter()
        .filter(|(_, op)| {
            if old_content(op).is_some_and(|c| failed.contains(&c)) {
                out.issues.push(FsIssue::new(join(root, &op.path), KEPT));
                return false;
            }
            true
        })
        .collect();
    ctx.write_batches(ops, &late, &mut out, &mut failed, false);

    // 6. Metadata.
    for (i, op) in ops
        .iter()
        .enumerate()
        .filter(|(_, o)| o.kind == OpKind::SetMeta)
    {
        match ctx.set_meta(op) {
            Ok(stat) => {
                if op.target.object.is_dir() {
                    final_modes.push((op.path.clone(), op.target.mode));
                }
                out.done.push(Done {
                    op: i,
                    entry: op.target.clone(),
                    stat,
                    content: None,
                })
            }
            Err(msg) => out.issues.push(FsIssue::new(join(root, &op.path), msg)),
        }
    }
    // 7. Index-only changes.
    for (i, op) in ops
        .iter()
        .enumerate()
        .filter(|(_, o)| o.kind == OpKind::Record)
    {
        let stat = op
            .current
            .as_ref()
            .filter(|c| c.entry.same_state(&op.target))
            .and_then(|c| c.stat);
        out.done.push(Done {
            op: i,
            entry: op.target.clone(),
            stat,
            content: None,
        });
    }
    ctx.settle_modes(final_modes, locked, &mut out);
    out.replaced = ctx.into_replaced();
    out
}

const APPEARED: &str =
    "a file appeared at this path during the sync; left as it is (it will sync as a new change next time)";

const KEPT: &str = "left as it is: its content could not be saved at its new place (see the error above), so it was not replaced or removed; the sync will retry";

/// Copies `src` whole into `dst` (both at offset 0) if `src` is still the
/// file recorded in `expect`, before and after the copy. False if it is not
/// (or the kernel cannot copy): the caller then reads and verifies chunks.
fn fast_copy(dst: &File, src: &Path, expect: &Stat, size: u64) -> bool {
    let Ok(sf) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nofollow())
        .open(src)
    else {
        return false;
    };
    let unchanged = |f: &File| {
        f.metadata()
            .is_ok_and(|m| !expect.racy && same_stat(&m, expect) && m.len() == size)
    };
    if !unchanged(&sf) {
        return false;
    }
    let (mut off_in, mut off_out) = (0u64, 0u64);
    while off_in < size {
        let want = (size - off_in).min(1 << 30) as usize;
        match rustix::fs::copy_file_range(&sf, Some(&mut off_in), dst, Some(&mut off_out), want) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
    unchanged(&sf)
}

/// The old version of a file, opened for kernel copies of its chunks
/// because its stat still matches what was recorded when it was hashed.
struct Trusted {
    file: File,
    stat: Stat,
    /// Chunk → offset in the file.
    map: Arc<HashMap<Hash, u64>>,
}

impl Trusted {
    fn open(path: &Path, stat: Stat, map: Arc<HashMap<Hash, u64>>) -> Option<Trusted> {
        if stat.racy {
            return None;
        }
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nofollow())
            .open(path)
            .ok()?;
        let t = Trusted { file, stat, map };
        t.unchanged().then_some(t)
    }

    fn unchanged(&self) -> bool {
        self.file
            .metadata()
            .is_ok_and(|m| same_stat(&m, &self.stat))
    }
}

/// Positioned, buffered writes into a file being built, mixed with
/// kernel copies from other files.
struct Out<'f> {
    file: &'f File,
    buf: Vec<u8>,
    /// Offset in the file of `buf[0]`.
    at: u64,
    /// The file's path, to open it for direct I/O (see [`Out::copy`]).
    path: Option<PathBuf>,
    /// The file opened for direct I/O, and an aligned buffer, once a long
    /// run needed them; None inside if the file system refuses.
    direct: Option<Option<(File, Vec<u8>)>>,
}

/// Runs of the old version at least this long, whose offsets in the old
/// and the new file agree modulo a block, are copied with direct I/O.
const DIRECT_MIN: u64 = 8 << 20;
/// The size of one direct write.
const DIRECT_STEP: usize = 4 << 20;

impl<'f> Out<'f> {
    const FLUSH_AT: usize = 256 * 1024;

    fn new(file: &'f File, path: Option<PathBuf>) -> Out<'f> {
        Out {
            file,
            buf: Vec::with_capacity(Self::FLUSH_AT + weave_chunk::CHUNK_MAX as usize),
            at: 0,
            path,
            direct: None,
        }
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= Self::FLUSH_AT {
            // Whole blocks only: a write that ends inside a new block makes
            // the kernel zero the rest of it first (see `stage::Part`).
            let end = self.at + self.buf.len() as u64;
            let n = (end - end % 4096).saturating_sub(self.at) as usize;
            if n == 0 {
                return self.flush();
            }
            self.file.write_all_at(&self.buf[..n], self.at)?;
            self.at += n as u64;
            self.buf.drain(..n);
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.write_all_at(&self.buf, self.at)?;
        self.at += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Appends `len` bytes of `src` from offset `from`. False if that
    /// fails (nothing is known of what was written).
    ///
    /// A long run whose offsets agree modulo a block is read into memory
    /// and its whole blocks written with direct I/O: on some machines the
    /// kernel's copy into the page cache, and its write-back, cost more
    /// than the disk's time. The rest is copied by the kernel. (All writes
    /// to the file are made by this thread, in order: direct and cached
    /// writes never race.)
    fn copy(&mut self, src: &File, from: u64, len: u64) -> bool {
        if self.flush().is_err() {
            return false;
        }
        if len < DIRECT_MIN || from % BLOCK != self.at % BLOCK {
            return self.kernel_copy(src, from, len);
        }
        if self.direct.is_none() {
            self.direct = Some(
                self.path
                    .as_ref()
                    .and_then(|p| open_direct(p, self.file))
                    .map(|f| (f, vec![0u8; DIRECT_STEP + BLOCK as usize])),
            );
        }
        let Some((direct, mut buf)) = self.direct.take().flatten() else {
            self.direct = Some(None);
            return self.kernel_copy(src, from, len);
        };
        let ok = self.direct_copy(src, from, len, &direct, &mut buf);
        self.direct = Some(Some((direct, buf)));
        ok
    }

    /// [`Out::copy`] of a long run, through `direct` (the file opened for
    /// direct I/O) and `buf` (a step and a block long).
    fn direct_copy(
        &mut self,
        src: &File,
        from: u64,
        len: u64,
        direct: &File,
        buf: &mut [u8],
    ) -> bool {
        let base = aligned_start(buf);
        let head = (BLOCK - self.at % BLOCK) % BLOCK;
        let whole = (len - head) / BLOCK * BLOCK;
        let (mut from, end) = (from, from + len);
        if !self.kernel_copy(src, from, head) {
            return false;
        }
        from += head;
        let whole_end = from + whole;
        while from < whole_end {
            let n = (whole_end - from).min(DIRECT_STEP as u64) as usize;
            let chunk = &mut buf[base..base + n];
            if src.read_exact_at(chunk, from).is_err() {
                return false;
            }
            if direct.write_all_at(chunk, self.at).is_err()
                && self.file.write_all_at(chunk, self.at).is_err()
            {
                return false;
            }
            from += n as u64;
            self.at += n as u64;
        }
        self.kernel_copy(src, from, end - from)
    }

    /// Appends `len` bytes of `src` from offset `from`, copied by the
    /// kernel.
    fn kernel_copy(&mut self, src: &File, mut from: u64, len: u64) -> bool {
        let end = from + len;
        while from < end {
            let want = (end - from).min(1 << 30) as usize;
            match rustix::fs::copy_file_range(
                src,
                Some(&mut from),
                self.file,
                Some(&mut self.at),
                want,
            ) {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
        true
    }
}

struct Built {
    /// The temporary's path (empty for an unnamed one).
    temp: PathBuf,
    /// A new file made without a name ([`create_unnamed`]): it gets its
    /// name by a link at the commit, and nothing is left to remove if it
    /// never does.
    unnamed: Option<Arc<File>>,
    list: Option<ChunkList>,
    bytes_local: u64,
    bytes_remote: u64,
    /// The part file the temporary was, if it was one.
    part: Option<PathBuf>,
    /// Renamed into place: nothing is left to remove.
    committed: bool,
}

impl Drop for Built {
    fn drop(&mut self) {
        if self.committed || self.unnamed.is_some() {
            return;
        }
        // A temporary that was not committed is removed (a part file goes
        // back to its place, for the next run).
        if let Some(part) = &self.part {
            if fs::rename(&self.temp, part).is_ok() {
                return;
            }
        }
        let _ = fs::remove_file(&self.temp);
    }
}

/// A quarter of the files this process may have open (see
/// [`Ctx::fd_budget`]): the rest is for part files and everything else.
fn fd_budget() -> usize {
    #[cfg(test)]
    if let Some(b) = hooks::FD_BUDGET.with(|n| n.get()) {
        return b;
    }
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or(usize::MAX, |n| usize::try_from(n / 4).unwrap_or(usize::MAX))
}

fn flush_fs(root: &Path) -> std::io::Result<()> {
    let f = File::open(root)?;
    rustix::fs::syncfs(&f)?;
    hooks::note("flush");
    Ok(())
}

fn nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

fn io_msg(what: &str, e: std::io::Error) -> String {
    format!("{what}: {e}")
}

const CHANGED: &str =
    "changed on disk during the sync; left as it is (it will sync as a new change next time)";

impl Ctx<'_> {
    fn make_dirs(
        &self,
        dirs: &[(usize, &Op)],
        out: &mut ApplyOutcome,
        final_modes: &mut Vec<(String, u32)>,
    ) {
        for &(i, op) in dirs {
            match self.make_dir(op) {
                Ok(()) => {
                    final_modes.push((op.path.clone(), op.target.mode));
                    out.done.push(Done {
                        op: i,
                        entry: op.target.clone(),
                        stat: None,
                        content: None,
                    })
                }
                Err(msg) => out
                    .issues
                    .push(FsIssue::new(join(self.root, &op.path), msg)),
            }
        }
    }

    /// Builds and commits file and symlink writes, in batches: every
    /// temporary of a batch is made durable with one flush before any of
    /// them replaces its target; that flush also makes the previous
    /// batch's renames durable, and one more after the last batch makes
    /// the last ones durable. Contents that failed to land go to `failed`.
    /// With `retry_taken`, a create whose path turned out to be taken
    /// (on a case-insensitive filesystem, by the old name of a case-only
    /// rename) is returned, to be tried again after the removals.
    fn write_batches<'o>(
        &self,
        ops: &'o [Op],
        writes: &[(usize, &'o Op)],
        out: &mut ApplyOutcome,
        failed: &mut HashSet<Hash>,
        retry_taken: bool,
    ) -> Vec<(usize, &'o Op)> {
        let mut retry = Vec::new();
        // Other file systems mounted inside the replica that this run
        // writes to: each is flushed too (a descriptor of one of its
        // directories names it), with the directories already looked at.
        let mut others: HashMap<u64, File> = HashMap::new();
        let mut seen: HashSet<&str> = HashSet::new();
        let mut start = 0;
        while start < writes.len() {
            let mut end = start;
            let mut bytes = 0u64;
            while end < writes.len()
                && end - start < BATCH_FILES
                && (bytes < BATCH_BYTES || end == start)
            {
                if let Object::File { size, .. } = writes[end].1.target.object {
                    bytes += size;
                }
                end += 1;
            }
            let batch = &writes[start..end];
            // Unnamed files stay open until the commit: only as many as
            // the process may hold.
            let unnamed = batch.len() <= self.fd_budget;
            let t = std::time::Instant::now();
            // Large files are made durable by a background thread as soon
            // as they are written, while the workers go on with the rest.
            // Bounded: builders wait when the disk lags, rather than piling
            // up open descriptors.
            let (tx, rx) = std::sync::mpsc::sync_channel::<File>(16);
            let flusher = std::thread::spawn(move || {
                rx.into_iter().filter(|f| f.sync_data().is_err()).count()
            });
            let mut built: Vec<(usize, Result<Built, String>)> = batch
                .par_iter()
                .with_max_len(1)
                .map(|&(i, op)| (i, self.build(op, &tx, unnamed)))
                .collect();
            drop(tx);
            let flush_failures = flusher.join().unwrap_or(1);
            tracing::debug!(files = batch.len(), elapsed = ?t.elapsed(), "built temporary files");
            if flush_failures > 0 {
                for (_, b) in built.iter_mut() {
                    if b.is_ok() {
                        *b = Err("cannot flush written data to disk".into());
                    }
                }
            }
            for (i, b) in &built {
                if b.is_ok() {
                    let parent = weave_core::path::parent(&ops[*i].path).unwrap_or("");
                    if seen.insert(parent) {
                        self.note_file_system(parent, &mut others);
                    }
                }
            }
            if built.iter().any(|(_, b)| b.is_ok()) {
                let t = std::time::Instant::now();
                if let Err(e) = self.flush(&others) {
                    // Nothing may replace a target before it is durable.
                    for (_, b) in built.iter_mut() {
                        if b.is_ok() {
                            *b = Err(format!("cannot flush written data to disk: {e}"));
                        }
                    }
                }
                tracing::debug!(elapsed = ?t.elapsed(), "flushed");
            }
            // What failed to build cannot land: the old contents it was
            // meant to save must not be destroyed by this batch either.
            for (i, b) in &built {
                if let (Err(_), Object::File { content, .. }) = (b, &ops[*i].target.object) {
                    if self.source.locations(content).iter().all(|l| l.local) {
                        failed.insert(*content);
                    }
                }
            }
            // Creates before overwrites.
            built.sort_by_key(|(i, _)| ops[*i].current.as_ref().is_some_and(|c| c.entry.is_live()));
            let t = std::time::Instant::now();
            for (i, b) in built {
                let op = &ops[i];
                let destroys = match op.current.as_ref().map(|c| &c.entry.object) {
                    Some(Object::File { content, .. }) => failed.contains(content),
                    _ => false,
                };
                if destroys && b.is_ok() {
                    out.issues
                        .push(FsIssue::new(join(self.root, &op.path), KEPT));
                    continue;
                }
                let result = b.and_then(|mut b| {
                    out.bytes_local += b.bytes_local;
                    out.bytes_remote += b.bytes_remote;
                    self.commit(op, &mut b).map(|stat| (stat, b.list.take()))
                });
                match result {
                    Ok((stat, list)) => out.done.push(Done {
                        op: i,
                        entry: op.target.clone(),
                        stat,
                        content: list,
                    }),
                    Err(msg) if retry_taken && msg == APPEARED => retry.push((i, op)),
                    Err(msg) => {
                        // Content that exists nowhere else must not be
                        // destroyed in this run (a conflict loser whose
                        // copy failed, a rename's only source).
                        if let Object::File { content, .. } = &op.target.object {
                            if self.source.locations(content).iter().all(|l| l.local) {
                                failed.insert(*content);
                            }
                        }
                        out.issues
                            .push(FsIssue::new(join(self.root, &op.path), msg))
                    }
                }
            }
            // The renames are made durable by the next batch's flush (it
            // syncs the whole file system), and after the last batch here:
            // all of them before this returns and the index records them.
            if end == writes.len() {
                if let Err(e) = self.flush(&others) {
                    out.issues.push(FsIssue::new(
                        self.root,
                        format!("cannot flush renames to disk: {e}"),
                    ));
                }
                tracing::debug!(elapsed = ?t.elapsed(), "committed and flushed");
            } else {
                tracing::debug!(elapsed = ?t.elapsed(), "committed");
            }
            start = end;
        }
        retry
    }

    /// Notes the file system of directory `rel` in `others` if it is not
    /// the root's (a mount inside the replica).
    fn note_file_system(&self, rel: &str, others: &mut HashMap<u64, File>) {
        let dir = join(self.root, rel);
        #[cfg(test)]
        if self
            .test_other_fs
            .as_deref()
            .is_some_and(|p| rel.starts_with(p))
        {
            if let Ok(f) = File::open(&dir) {
                others.entry(u64::MAX).or_insert(f);
            }
            return;
        }
        let Ok(m) = fs::symlink_metadata(&dir) else {
            return;
        };
        if Some(m.dev()) != self.root_dev {
            if let Ok(f) = File::open(&dir) {
                others.entry(m.dev()).or_insert(f);
            }
        }
    }

    /// Makes what was written durable: the root's file system, and the
    /// others this run wrote to.
    fn flush(&self, others: &HashMap<u64, File>) -> std::io::Result<()> {
        flush_fs(self.root)?;
        for f in others.values() {
            rustix::fs::syncfs(f)?;
            hooks::note("flush other");
        }
        Ok(())
    }

    /// Checks that every directory above `rel` is a real directory inside
    /// the replica, never a symlink (no write passes through a symlink).
    fn check_parents(&self, rel: &str) -> Result<(), String> {
        let mut anc: Vec<&str> = ancestors(rel).collect();
        anc.reverse();
        for a in anc {
            let m = fs::symlink_metadata(join(self.root, a))
                .map_err(|e| format!("parent directory {a:?} is not there: {e}"))?;
            if !m.file_type().is_dir() {
                return Err(format!(
                    "parent {a:?} is not a directory (a symlink or a file); not written"
                ));
            }
        }
        Ok(())
    }

    fn remove(&self, op: &Op) -> Result<(), String> {
        self.check_parents(&op.path)?;
        let full = join(self.root, &op.path);
        let meta = match fs::symlink_metadata(&full) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_msg("cannot stat", e)),
        };
        let Some(c) = &op.current else {
            return Ok(());
        };
        match &c.entry.object {
            Object::File { content, .. } => {
                if !meta.file_type().is_file() || !c.stat.is_some_and(|s| same_stat(&meta, &s)) {
                    return Err(CHANGED.into());
                }
                let dest = self.trash_slot(&op.path, &c.entry, true)?;
                match fs::rename(&full, &dest) {
                    Ok(()) => {
                        self.trashed.lock().unwrap().insert(*content, dest.clone());
                        self.note_replaced(&op.path, c, dest, true);
                        Ok(())
                    }
                    // Another filesystem mounted inside the replica: the
                    // trash cannot take it, so it is simply removed.
                    Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
                        fs::remove_file(&full).map_err(|e| io_msg("cannot remove", e))
                    }
                    Err(e) => Err(io_msg("cannot remove", e)),
                }
            }
            Object::Symlink { target } => {
                let t = fs::read_link(&full).map_err(|e| io_msg("cannot read symlink", e))?;
                if !meta.file_type().is_symlink() || t.to_str() != Some(target.as_str()) {
                    return Err(CHANGED.into());
                }
                fs::remove_file(&full).map_err(|e| io_msg("cannot remove", e))
            }
            Object::Dir => {
                if !meta.file_type().is_dir() {
                    return Err(CHANGED.into());
                }
                fs::remove_dir(&full).map_err(|e| {
                    if e.raw_os_error() == Some(rustix::io::Errno::NOTEMPTY.raw_os_error()) {
                        "directory not removed: it still holds ignored files or files created during the sync".to_string()
                    } else {
                        io_msg("cannot remove directory", e)
                    }
                })
            }
            _ => Ok(()),
        }
    }

    fn make_dir(&self, op: &Op) -> Result<(), String> {
        self.check_parents(&op.path)?;
        let full = join(self.root, &op.path);
        match fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_dir() => Ok(()),
            Ok(_) => {
                Err("something else appeared at this path during the sync; left as it is".into())
            }
            Err(_) => fs::DirBuilder::new()
                .mode(op.target.mode | 0o700)
                .create(&full)
                .map_err(|e| io_msg("cannot create directory", e)),
        }
    }

    /// Whether this replica's file system takes unnamed files and this
    /// process can link them: one is made and linked in the state
    /// directory (or the root), then removed.
    fn unnamed_ok(&self) -> bool {
        *self.unnamed.get_or_init(|| {
            let state = self.root.join(STATE_DIR);
            let dir = if state.is_dir() {
                state
            } else {
                self.root.to_path_buf()
            };
            let probe = dir.join(temp_name());
            let ok = create_unnamed(&dir)
                .and_then(|f| link_unnamed(&f, rustix::fs::CWD, &probe))
                .is_ok();
            let _ = fs::remove_file(&probe);
            ok
        })
    }

    /// Builds the new content of `op` (a new file without a name if
    /// `unnamed` allows and it can be made).
    fn build(
        &self,
        op: &Op,
        flusher: &std::sync::mpsc::SyncSender<File>,
        unnamed: bool,
    ) -> Result<Built, String> {
        self.check_parents(&op.path)?;
        let full = join(self.root, &op.path);
        let dir = full.parent().ok_or("no parent directory")?;
        let temp = dir.join(temp_name());
        match &op.target.object {
            Object::Symlink { target } => {
                std::os::unix::fs::symlink(target, &temp)
                    .map_err(|e| io_msg("cannot create symlink", e))?;
                Ok(Built {
                    temp,
                    unnamed: None,
                    list: None,
                    bytes_local: 0,
                    bytes_remote: 0,
                    part: None,
                    committed: false,
                })
            }
            Object::File { content, size } => {
                let list = self.source.chunk_list(content).ok_or_else(|| {
                    format!(
                        "no replica knows the chunks of content {}",
                        content.short_hex()
                    )
                })?;
                if list.size() != *size || list.content_id() != *content {
                    return Err(format!(
                        "chunk list of content {} is inconsistent",
                        content.short_hex()
                    ));
                }
                let (f, mut built) = match self.take_part(content, &temp, &full) {
                    Some((f, built)) => (Arc::new(f), built),
                    None => {
                        // A new path's file is made without a name where
                        // that can be done; a replacement needs a named
                        // temporary, to be renamed over the old file.
                        let creates = op.current.as_ref().is_none_or(|c| !c.entry.is_live());
                        let unnamed = (unnamed && creates && self.unnamed_ok())
                            .then(|| create_unnamed(dir).ok().map(Arc::new))
                            .flatten();
                        let (f, temp) = match &unnamed {
                            Some(u) => (u.clone(), PathBuf::new()),
                            None => (
                                Arc::new(
                                    fs::OpenOptions::new()
                                        .write(true)
                                        .create_new(true)
                                        .mode(0o600)
                                        .custom_flags(nofollow())
                                        .open(&temp)
                                        .map_err(|e| io_msg("cannot create temporary file", e))?,
                                ),
                                temp,
                            ),
                        };
                        let mut built = Built {
                            temp,
                            unnamed,
                            list: None,
                            bytes_local: 0,
                            bytes_remote: 0,
                            part: None,
                            committed: false,
                        };
                        self.fill(&f, op, content, &list, &mut built)?;
                        (f, built)
                    }
                };
                f.set_permissions(fs::Permissions::from_mode(op.target.mode))
                    .map_err(|e| io_msg("cannot set permissions", e))?;
                let mtime = UNIX_EPOCH
                    .checked_add(Duration::from_nanos(op.target.mtime_ns.max(0) as u64))
                    .unwrap_or(UNIX_EPOCH);
                f.set_times(fs::FileTimes::new().set_modified(mtime))
                    .map_err(|e| io_msg("cannot set mtime", e))?;
                if *size >= EARLY_WRITEBACK {
                    if let Ok(dup) = f.try_clone() {
                        let _ = flusher.send(dup);
                    }
                }
                built.list = Some(list);
                Ok(built)
            }
            other => Err(format!("cannot write a {}", other.kind_name())),
        }
    }

    /// The part file of `content` as the temporary `temp`, moved there
    /// by a rename, if one is complete and no other write took it.
    fn take_part(&self, content: &Hash, temp: &Path, target: &Path) -> Option<(File, Built)> {
        let part = self.source.part(content)?;
        let mut taken = self.parts.lock().unwrap();
        if taken.contains_key(content) {
            return None;
        }
        // Across filesystems (a mount inside the replica) it is copied.
        fs::rename(&part, temp).ok()?;
        taken.insert(*content, (temp.to_path_buf(), target.to_path_buf()));
        drop(taken);
        // Dropped on any failure below: the part goes back.
        let mut built = Built {
            temp: temp.to_path_buf(),
            unnamed: None,
            list: None,
            bytes_local: 0,
            bytes_remote: 0,
            part: Some(part),
            committed: false,
        };
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nofollow())
            .open(temp)
            .ok()?;
        built.bytes_remote = f.metadata().ok()?.len();
        (self.progress)(built.bytes_remote);
        Some((f, built))
    }

    /// Writes the chunks of `list` into `f`, each from the first source
    /// that holds it and verifies: the replica's own files (including what
    /// this run moved to the trash and the old version at the same path)
    /// before other replicas.
    fn fill(
        &self,
        f: &File,
        op: &Op,
        content: &Hash,
        list: &ChunkList,
        built: &mut Built,
    ) -> Result<(), String> {
        let before = (built.bytes_local, built.bytes_remote);
        if self.fill_from(f, op, content, list, built, true)? {
            return Ok(());
        }
        // The old version changed while the kernel copied from it: what
        // was copied is not trusted; start again, verifying every chunk.
        (built.bytes_local, built.bytes_remote) = before;
        f.set_len(0).map_err(|e| io_msg("cannot truncate", e))?;
        self.fill_from(f, op, content, list, built, false)
            .map(|_| ())
    }

    /// One attempt of [`Ctx::fill`]. With `trust_old`, runs of chunks
    /// that the old version at the same path holds are copied by the
    /// kernel without being read here, if the old file's stat proves it
    /// still holds what was hashed; false if that proof failed after the
    /// copy (the caller starts again without it).
    fn fill_from(
        &self,
        f: &File,
        op: &Op,
        content: &Hash,
        list: &ChunkList,
        built: &mut Built,
        trust_old: bool,
    ) -> Result<bool, String> {
        struct Src {
            path: PathBuf,
            local: bool,
            stat: Option<Stat>,
            /// None: holds exactly this content. Some: chunk → offset.
            map: Option<Arc<HashMap<Hash, u64>>>,
            file: Option<Option<Arc<File>>>,
            failed: bool,
        }
        let mut srcs: Vec<Src> = Vec::new();
        let whole = |path: PathBuf, local: bool, stat: Option<Stat>| Src {
            path,
            local,
            stat,
            map: None,
            file: None,
            failed: false,
        };
        if let Some(p) = self.trashed.lock().unwrap().get(content) {
            srcs.push(whole(p.clone(), true, None));
        }
        let locs = self.source.locations(content);
        for l in locs.iter().filter(|l| l.local) {
            srcs.push(whole(l.path.clone(), true, l.stat));
        }
        // The old version at the same path: most of an edited file's chunks.
        let mut trusted: Option<Trusted> = None;
        if let Some(Object::File { content: old, .. }) =
            op.current.as_ref().map(|c| &c.entry.object)
        {
            if old != content {
                if let Some(old_list) = self.source.chunk_list(old) {
                    let map: Arc<HashMap<Hash, u64>> =
                        Arc::new(old_list.with_offsets().map(|(o, c)| (c.hash, o)).collect());
                    let path = join(self.root, &op.path);
                    let stat = op.current.as_ref().and_then(|c| c.stat);
                    if let (true, Some(stat)) = (trust_old, stat) {
                        trusted = Trusted::open(&path, stat, map.clone());
                    }
                    srcs.push(Src {
                        path,
                        local: true,
                        stat: None,
                        map: Some(map),
                        file: None,
                        failed: false,
                    });
                }
            }
        }
        for l in locs.iter().filter(|l| !l.local) {
            srcs.push(whole(l.path.clone(), false, l.stat));
        }
        // A part file, or where the write that took it put it.
        if let Some(part) = self.source.part(content) {
            srcs.push(whole(part, false, None));
        }
        if let Some((temp, target)) = self.parts.lock().unwrap().get(content) {
            srcs.push(whole(temp.clone(), false, None));
            srcs.push(whole(target.clone(), false, None));
        }
        // Chunks another replica sent.
        if let Some(v) = self.source.staged() {
            srcs.push(Src {
                path: v.path.clone(),
                local: false,
                stat: None,
                map: Some(v.map.clone()),
                file: Some(Some(v.file.clone())),
                failed: false,
            });
        }
        // Fast path: a whole file whose stat proves it still holds the
        // content hashed earlier is copied by the kernel.
        let size = list.size();
        for s in srcs.iter().filter(|s| s.map.is_none() && s.stat.is_some()) {
            if fast_copy(f, &s.path, s.stat.as_ref().expect("filtered"), size) {
                if s.local {
                    built.bytes_local += size;
                } else {
                    built.bytes_remote += size;
                }
                (self.progress)(size);
                return Ok(true);
            }
            // A failed attempt may have written part of the file.
            f.set_len(0).map_err(|e| io_msg("cannot truncate", e))?;
        }
        // One buffer of this list's largest chunk, never zeroed again (a
        // small file's is small: a chunker-maximum buffer per file is a
        // large allocation, zeroed through the kernel every time).
        let largest = list.chunks.iter().map(|c| c.len).max().unwrap_or(0);
        let mut buf = vec![0u8; largest.min(weave_chunk::CHUNK_MAX) as usize];
        let mut pos = 0u64;
        let mut out = Out::new(f, built.unnamed.is_none().then(|| built.temp.clone()));
        // A run of the trusted old version's chunks not copied yet:
        // (offset in the old file, length).
        let mut run: Option<(u64, u64)> = None;
        for (off, c) in list.with_offsets() {
            if c.len as usize > buf.len() {
                return Err(format!(
                    "chunk {} is larger than the chunker allows",
                    c.hash.short_hex()
                ));
            }
            if let Some(t) = &trusted {
                if let Some(&at) = t.map.get(&c.hash) {
                    match &mut run {
                        Some((start, len)) if *start + *len == at => *len += c.len as u64,
                        _ => {
                            if let Some((start, len)) = run.take() {
                                if !out.copy(&t.file, start, len) {
                                    return Ok(false);
                                }
                            }
                            run = Some((at, c.len as u64));
                        }
                    }
                    built.bytes_local += c.len as u64;
                    pos += c.len as u64;
                    (self.progress)(c.len as u64);
                    continue;
                }
            }
            if let (Some((start, len)), Some(t)) = (run.take(), &trusted) {
                if !out.copy(&t.file, start, len) {
                    return Ok(false);
                }
            }
            let buf = &mut buf[..c.len as usize];
            let mut ok = false;
            for s in srcs.iter_mut() {
                if s.failed {
                    continue;
                }
                let at = match &s.map {
                    None => off,
                    Some(m) => match m.get(&c.hash) {
                        Some(&o) => o,
                        None => continue,
                    },
                };
                let file = s.file.get_or_insert_with(|| {
                    fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(nofollow())
                        .open(&s.path)
                        .ok()
                        .map(Arc::new)
                });
                let Some(file) = file else {
                    s.failed = true;
                    continue;
                };
                if file.read_exact_at(buf, at).is_ok() && weave_chunk::verify(buf, &c.hash) {
                    ok = true;
                    if s.local {
                        built.bytes_local += c.len as u64;
                    } else {
                        built.bytes_remote += c.len as u64;
                    }
                    break;
                }
                // A source that no longer holds what it should is dropped.
                if s.map.is_none() {
                    s.failed = true;
                }
            }
            if !ok {
                return Err(format!(
                    "no source holds chunk {} at offset {pos} any more (a file changed during the sync); it will be retried next time",
                    c.hash.short_hex()
                ));
            }
            out.write(buf).map_err(|e| io_msg("cannot write", e))?;
            pos += c.len as u64;
            (self.progress)(c.len as u64);
        }
        if let Some(t) = &trusted {
            if let Some((start, len)) = run.take() {
                if !out.copy(&t.file, start, len) {
                    return Ok(false);
                }
            }
        }
        out.flush().map_err(|e| io_msg("cannot write", e))?;
        Ok(trusted.is_none_or(|t| t.unchanged()))
    }

    /// Replaces the target with a built temporary, after checking that the
    /// target is still what the index says (I-5).
    fn commit(&self, op: &Op, b: &mut Built) -> Result<Option<Stat>, String> {
        hooks::note("commit");
        let full = join(self.root, &op.path);
        self.check_parents(&op.path)?;
        hooks::before_commit(&full);
        // An unnamed file's stat while nobody else can reach it: what the
        // sync wrote (see the end).
        let written = match &b.unnamed {
            Some(f) => Some(
                f.metadata()
                    .map_err(|e| io_msg("cannot stat after writing", e))?,
            ),
            None => None,
        };
        let cur = op.current.as_ref().filter(|c| c.entry.is_live());
        match cur {
            None => {
                match &b.unnamed {
                    Some(f) => {
                        hooks::note("link");
                        // Into the directory reached from the root without
                        // a symlink on the way: one swapped in since the
                        // check above cannot turn the link elsewhere.
                        let (parent, name) = op.path.rsplit_once('/').unwrap_or(("", &op.path));
                        let dir = match &self.root_fd {
                            Some(r) => open_dir_beneath(r.as_fd(), parent).map_err(|e| {
                                format!("parent directory {parent:?} is no longer a directory inside the replica ({e}); not written")
                            })?,
                            None => None,
                        };
                        match &dir {
                            Some(d) => link_unnamed(f, d, Path::new(name)),
                            None => link_unnamed(f, rustix::fs::CWD, &full),
                        }
                        .map_err(|e| {
                            if e.kind() == std::io::ErrorKind::AlreadyExists {
                                APPEARED.to_string()
                            } else {
                                io_msg("cannot link the new file into place", e)
                            }
                        })?;
                        hooks::after_link(&full);
                    }
                    None => rustix::fs::renameat_with(
                        rustix::fs::CWD,
                        &b.temp,
                        rustix::fs::CWD,
                        &full,
                        rustix::fs::RenameFlags::NOREPLACE,
                    )
                    .map_err(|e| {
                        if e == rustix::io::Errno::EXIST {
                            APPEARED.to_string()
                        } else {
                            format!("cannot rename into place: {e}")
                        }
                    })?,
                }
                b.committed = true;
            }
            Some(c) => {
                let mut kept = None;
                let meta = fs::symlink_metadata(&full).map_err(|_| CHANGED.to_string())?;
                match &c.entry.object {
                    Object::File { content, .. } => {
                        if !meta.file_type().is_file()
                            || !c.stat.is_some_and(|s| same_stat(&meta, &s))
                        {
                            return Err(CHANGED.into());
                        }
                        // Keep the old content reachable for the rest of
                        // this run (other writes may need its chunks) and
                        // for the version store.
                        let keep = self.trash_slot(&op.path, &c.entry, false)?;
                        if fs::hard_link(&full, &keep).is_ok() {
                            self.trashed
                                .lock()
                                .unwrap()
                                .entry(*content)
                                .or_insert(keep.clone());
                            kept = Some(keep);
                        }
                    }
                    Object::Symlink { target } => {
                        let t = fs::read_link(&full).map_err(|_| CHANGED.to_string())?;
                        if t.to_str() != Some(target.as_str()) {
                            return Err(CHANGED.into());
                        }
                    }
                    _ => return Err(CHANGED.into()),
                }
                fs::rename(&b.temp, &full).map_err(|e| {
                    if let Some(k) = &kept {
                        let _ = fs::remove_file(k);
                    }
                    io_msg("cannot rename into place", e)
                })?;
                b.committed = true;
                if let Some(file) = kept {
                    self.note_replaced(&op.path, c, file, false);
                }
            }
        }
        if op.target.object.is_live() && matches!(op.target.object, Object::File { .. }) {
            // A linked file's own descriptor: no lookup, and what is
            // recorded is the file written, whatever the path holds now.
            // The link changed its ctime only; if its size or mtime
            // changed too, someone wrote to it since: the stat from
            // before the link is recorded, so that the next scan sees
            // that change.
            let m = match (&b.unnamed, written) {
                (Some(f), Some(before)) => {
                    let after = f
                        .metadata()
                        .map_err(|e| io_msg("cannot stat after writing", e))?;
                    let same = after.len() == before.len()
                        && crate::util::mtime_ns(&after) == crate::util::mtime_ns(&before);
                    hooks::note(if same {
                        "stat after link"
                    } else {
                        "stat before link"
                    });
                    if same {
                        after
                    } else {
                        before
                    }
                }
                _ => fs::symlink_metadata(&full)
                    .map_err(|e| io_msg("cannot stat after writing", e))?,
            };
            Ok(Some(stat_of(&m)))
        } else {
            Ok(None)
        }
    }

    fn set_meta(&self, op: &Op) -> Result<Option<Stat>, String> {
        self.check_parents(&op.path)?;
        let full = join(self.root, &op.path);
        let meta = fs::symlink_metadata(&full).map_err(|_| CHANGED.to_string())?;
        match &op.target.object {
            Object::Dir => {
                if !meta.file_type().is_dir() {
                    return Err(CHANGED.into());
                }
                Ok(None)
            }
            Object::File { .. } => {
                let st = op.current.as_ref().and_then(|c| c.stat);
                if !meta.file_type().is_file() || !st.is_some_and(|s| same_stat(&meta, &s)) {
                    return Err(CHANGED.into());
                }
                let f = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(nofollow())
                    .open(&full)
                    .map_err(|e| io_msg("cannot open", e))?;
                f.set_permissions(fs::Permissions::from_mode(op.target.mode))
                    .map_err(|e| io_msg("cannot set permissions", e))?;
                let mtime = UNIX_EPOCH
                    .checked_add(Duration::from_nanos(op.target.mtime_ns.max(0) as u64))
                    .unwrap_or(UNIX_EPOCH);
                f.set_times(fs::FileTimes::new().set_modified(mtime))
                    .map_err(|e| io_msg("cannot set mtime", e))?;
                let m = f.metadata().map_err(|e| io_msg("cannot stat", e))?;
                Ok(Some(stat_of(&m)))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use std::io::Write;
    use weave_core::{ReplicaId, VersionVector};

    /// I-4: each batch's temporaries are flushed before its renames, and
    /// the renames are flushed before `apply` returns (by the next batch's
    /// flush, and one more after the last batch): one flush per batch
    /// plus one, none after the last commit missing.
    #[test]
    fn every_batch_is_flushed_before_its_renames_and_the_renames_before_the_end() {
        let data = b"the same small content everywhere";
        let n = BATCH_FILES + 1;
        let (t, _other, source, ops) = new_files(n, data);
        let root = t.path();
        hooks::EVENTS.with(|v| v.borrow_mut().clear());
        let out = apply(root, &ops, &source, &|_| {});
        assert!(out.issues.is_empty(), "{:?}", out.issues);
        assert_eq!(out.done.len(), n);
        let mut events: Vec<&str> = hooks::EVENTS.with(|v| v.borrow().clone());
        events.retain(|e| matches!(*e, "flush" | "commit"));
        events.dedup_by(|a, b| a == b && *a == "commit");
        assert_eq!(
            events,
            ["flush", "commit", "flush", "commit", "flush"],
            "two batches: flush, renames, flush (the second batch and the first renames), renames, flush"
        );
        assert_eq!(fs::read(root.join(format!("f{}", n - 1))).unwrap(), data);
    }

    /// New files (no name before they are whole and flushed) land with
    /// their content, mode and mtime, and the stat recorded is the file's;
    /// with unnamed files where the file system takes them, named
    /// temporaries where not. Nothing else is left in the directory.
    #[test]
    fn new_files_land_whole_with_or_without_unnamed_temporaries() {
        for no_unnamed in [false, true] {
            let t = replica();
            let other = tempfile::tempdir().unwrap();
            let root = t.path();
            fs::create_dir(root.join("d")).unwrap();
            let mut ops = Vec::new();
            let mut src = Vec::new();
            let datas: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 + i as usize]).collect();
            for (i, data) in datas.iter().enumerate() {
                fs::write(other.path().join(format!("s{i}")), data).unwrap();
                src.push((
                    data.as_slice(),
                    other.path().join(format!("s{i}")),
                    false,
                    None,
                ));
                let mut op = write_op(&format!("d/f{i}"), None, data, 1);
                op.target.mode = 0o640;
                ops.push(op);
            }
            let source = Src::new(src);
            hooks::NO_UNNAMED.with(|n| n.set(no_unnamed));
            hooks::EVENTS.with(|v| v.borrow_mut().clear());
            let out = apply(root, &ops, &source, &|_| {});
            hooks::NO_UNNAMED.with(|n| n.set(false));
            assert!(out.issues.is_empty(), "{:?}", out.issues);
            assert_eq!(out.done.len(), 5);
            for d in &out.done {
                let p = join(root, &ops[d.op].path);
                let m = fs::symlink_metadata(&p).unwrap();
                assert_eq!(fs::read(&p).unwrap(), datas[d.op]);
                assert_eq!(m.permissions().mode() & 0o777, 0o640);
                assert_eq!(crate::util::mtime_ns(&m), ops[d.op].target.mtime_ns);
                assert_eq!(d.stat, Some(stat_of(&m)), "the stat recorded is the file's");
            }
            let mut names: Vec<String> = fs::read_dir(root.join("d"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            assert_eq!(names, ["f0", "f1", "f2", "f3", "f4"]);
            let links = hooks::EVENTS.with(|v| v.borrow().iter().filter(|e| **e == "link").count());
            let expect = if !no_unnamed && unnamed_here(other.path()) {
                5
            } else {
                0
            };
            assert_eq!(links, expect, "no_unnamed={no_unnamed}");
        }
    }

    /// I-4 across file systems: files written into another file system
    /// mounted inside the replica (here a directory the test says is
    /// one) are flushed there too, before their renames and before the
    /// end; a directory on the root's file system adds no flush.
    #[test]
    fn another_file_system_inside_the_replica_is_flushed_too() {
        for (other, expect) in [
            (
                true,
                vec!["flush", "flush other", "commit", "flush", "flush other"],
            ),
            (false, vec!["flush", "commit", "flush"]),
        ] {
            let (t, _src, source, mut ops) = new_files(2, b"on two file systems");
            let root = t.path();
            fs::create_dir(root.join("m")).unwrap();
            ops[1] = write_op("m/f1", None, b"on two file systems", 1);
            hooks::OTHER_FS.with(|o| *o.borrow_mut() = other.then(|| "m".to_string()));
            hooks::EVENTS.with(|v| v.borrow_mut().clear());
            let out = apply(root, &ops, &source, &|_| {});
            hooks::OTHER_FS.with(|o| *o.borrow_mut() = None);
            assert!(out.issues.is_empty(), "{:?}", out.issues);
            assert_eq!(out.done.len(), 2);
            let mut events: Vec<&str> = hooks::EVENTS.with(|v| v.borrow().clone());
            events.retain(|e| matches!(*e, "flush" | "flush other" | "commit"));
            events.dedup_by(|a, b| a == b && *a == "commit");
            assert_eq!(events, expect, "other={other}");
        }
    }

    /// A user's write to a new file between its link and the stat taken
    /// for the index is not recorded as the synced content: the stat
    /// recorded is the one from before the link, which the file no longer
    /// has (the next scan sees the change). Without such a write, the
    /// recorded stat is the file's.
    #[test]
    fn a_write_right_after_the_link_is_seen_by_the_next_scan() {
        for write in [true, false] {
            let (t, _src, source, ops) = new_files(1, b"the synced content");
            let root = t.path().to_path_buf();
            if !unnamed_here(&root) {
                return; // the named path records the path's stat, tested elsewhere
            }
            hooks::EVENTS.with(|v| v.borrow_mut().clear());
            hooks::AFTER_LINK.with(|f| {
                *f.borrow_mut() = write.then(|| -> hooks::Hook {
                    Box::new(|p: &Path| {
                        let mut f = fs::OpenOptions::new().append(true).open(p).unwrap();
                        f.write_all(b" and the user's words").unwrap();
                    })
                })
            });
            let out = apply(&root, &ops, &source, &|_| {});
            hooks::AFTER_LINK.with(|f| *f.borrow_mut() = None);
            assert!(out.issues.is_empty(), "{:?}", out.issues);
            let now = stat_of(&fs::symlink_metadata(root.join("f0")).unwrap());
            assert_eq!(out.done[0].stat == Some(now), !write, "write={write}");
            let noted = hooks::EVENTS.with(|v| v.borrow().contains(&"stat before link"));
            assert_eq!(noted, write);
        }
    }

    /// A batch of more new files than the process may keep open uses
    /// named temporaries (which are closed once written).
    #[test]
    fn a_batch_over_the_descriptor_budget_uses_named_temporaries() {
        let data = b"one content, five paths";
        let (t, _other, source, ops) = new_files(5, data);
        let root = t.path();
        hooks::FD_BUDGET.with(|n| n.set(Some(4)));
        hooks::EVENTS.with(|v| v.borrow_mut().clear());
        let out = apply(root, &ops, &source, &|_| {});
        hooks::FD_BUDGET.with(|n| n.set(None));
        assert!(out.issues.is_empty(), "{:?}", out.issues);
        assert_eq!(out.done.len(), 5);
        let links = hooks::EVENTS.with(|v| v.borrow().iter().filter(|e| **e == "link").count());
        assert_eq!(links, 0);
        for i in 0..5 {
            assert_eq!(fs::read(root.join(format!("f{i}"))).unwrap(), data);
        }
    }

    /// A parent directory swapped for a symlink to elsewhere after the
    /// executor checked it, just before the new file is put in place: the
    /// file is not written through it (neither linked nor renamed there),
    /// and it is reported.
    #[test]
    fn a_parent_swapped_for_a_symlink_is_not_written_through() {
        for no_unnamed in [false, true] {
            let t = replica();
            let other = tempfile::tempdir().unwrap();
            let root = t.path().to_path_buf();
            fs::create_dir(root.join("d")).unwrap();
            let outside = other.path().join("outside");
            fs::create_dir(&outside).unwrap();
            let data = b"for d/new only";
            fs::write(other.path().join("s"), data).unwrap();
            let source = Src::new(vec![(data, other.path().join("s"), false, None)]);
            let ops = vec![write_op("d/new", None, data, 1)];
            hooks::NO_UNNAMED.with(|n| n.set(no_unnamed));
            let (r, o) = (root.clone(), outside.clone());
            hooks::BEFORE_COMMIT.with(|f| {
                *f.borrow_mut() = Some(Box::new(move |_: &Path| {
                    fs::rename(r.join("d"), r.join("d-moved")).unwrap();
                    std::os::unix::fs::symlink(&o, r.join("d")).unwrap();
                }))
            });
            let out = apply(&root, &ops, &source, &|_| {});
            hooks::BEFORE_COMMIT.with(|f| *f.borrow_mut() = None);
            hooks::NO_UNNAMED.with(|n| n.set(false));
            assert!(out.done.is_empty(), "no_unnamed={no_unnamed}");
            assert_eq!(out.issues.len(), 1, "{:?}", out.issues);
            let there: Vec<_> = fs::read_dir(&outside).unwrap().collect();
            assert!(
                there.is_empty(),
                "no_unnamed={no_unnamed}: written outside: {there:?}"
            );
        }
    }

    /// A file that appears at a new path while the sync writes it (after
    /// the new content is built, before it is put in place) is left as
    /// it is and reported, whether the new content was unnamed or a
    /// named temporary; no temporary is left behind.
    #[test]
    fn a_file_that_appears_at_a_new_path_is_never_replaced() {
        for no_unnamed in [false, true] {
            let t = replica();
            let other = tempfile::tempdir().unwrap();
            let root = t.path();
            let data = b"from the other replica";
            fs::write(other.path().join("s"), data).unwrap();
            let source = Src::new(vec![(data, other.path().join("s"), false, None)]);
            let ops = vec![write_op("new", None, data, 1)];
            hooks::NO_UNNAMED.with(|n| n.set(no_unnamed));
            hooks::BEFORE_COMMIT.with(|f| {
                *f.borrow_mut() = Some(Box::new(|p: &Path| fs::write(p, b"the user's").unwrap()))
            });
            let out = apply(root, &ops, &source, &|_| {});
            hooks::BEFORE_COMMIT.with(|f| *f.borrow_mut() = None);
            hooks::NO_UNNAMED.with(|n| n.set(false));
            assert!(out.done.is_empty(), "no_unnamed={no_unnamed}");
            assert_eq!(out.issues.len(), 1, "{:?}", out.issues);
            assert!(
                out.issues[0].message.contains("appeared"),
                "{:?}",
                out.issues
            );
            assert_eq!(fs::read(root.join("new")).unwrap(), b"the user's");
            let names: Vec<String> = fs::read_dir(root)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != STATE_DIR)
                .collect();
            assert_eq!(names, ["new"], "no_unnamed={no_unnamed}");
        }
    }

    /// I-5: a file that changed after the scan is never overwritten or
    /// deleted by the sync.
    #[test]
    fn files_changed_after_the_scan_are_left_alone() {
        let t = replica();
        let other = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::write(root.join("edit"), b"old").unwrap();
        fs::write(root.join("gone"), b"old too").unwrap();
        let cur_edit = local(root, file_entry("edit", b"old", 1));
        let cur_gone = local(root, file_entry("gone", b"old too", 1));
        let new = b"new content from elsewhere";
        fs::write(other.path().join("n"), new).unwrap();
        let source = Src::new(vec![(new, other.path().join("n"), false, None)]);

        // The user edits both files after the scan.
        std::thread::sleep(Duration::from_millis(5));
        fs::write(root.join("edit"), b"user's edit").unwrap();
        fs::write(root.join("gone"), b"user's other edit").unwrap();

        let ops = vec![
            write_op("edit", Some(cur_edit), new, 2),
            Op {
                kind: OpKind::Remove,
                path: "gone".into(),
                current: Some(cur_gone.clone()),
                target: Entry {
                    object: Object::Deleted,
                    mode: 0,
                    mtime_ns: 0,
                    vv: VersionVector::from_pairs(vec![(ReplicaId(1), 2)]),
                    ..cur_gone.entry.clone()
                },
            },
        ];
        let out = apply(root, &ops, &source, &|_| {});
        assert_eq!(out.issues.len(), 2, "{:?}", out.issues);
        assert!(out.done.is_empty());
        assert_eq!(fs::read(root.join("edit")).unwrap(), b"user's edit");
        assert_eq!(fs::read(root.join("gone")).unwrap(), b"user's other edit");
        assert!(out
            .issues
            .iter()
            .all(|i| i.message.contains("changed on disk during the sync")));
        // No temporary file is left behind.
        let names: Vec<String> = fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with(crate::TEMP_PREFIX)),
            "{names:?}"
        );
    }

    /// I-3: a source whose bytes do not match the chunk hashes is never
    /// written into a user file.
    #[test]
    fn corrupt_sources_are_rejected() {
        let t = replica();
        let other = tempfile::tempdir().unwrap();
        let good = b"the real content";
        fs::write(other.path().join("n"), b"the fake content").unwrap();
        let source = Src::new(vec![(good, other.path().join("n"), false, None)]);
        let out = apply(t.path(), &[write_op("f", None, good, 1)], &source, &|_| {});
        assert_eq!(out.issues.len(), 1);
        assert!(!t.path().join("f").exists());
    }

    #[test]
    fn an_unchanged_source_is_copied_whole() {
        let (t, other) = (replica(), tempfile::tempdir().unwrap());
        let data = patterned(300_000);
        let (src, stat) = old_source(other.path(), &data);
        let source = Src::new(vec![(&data, src, false, Some(stat))]);
        let out = apply(t.path(), &[write_op("f", None, &data, 1)], &source, &|_| {});
        assert!(out.issues.is_empty(), "{:?}", out.issues);
        assert_eq!(out.bytes_remote, data.len() as u64);
        assert_eq!(fs::read(t.path().join("f")).unwrap(), data);
    }

    #[test]
    fn a_source_changed_since_it_was_hashed_is_not_trusted() {
        let (t, other) = (replica(), tempfile::tempdir().unwrap());
        let data = patterned(300_000);
        let (src, stat) = old_source(other.path(), &data);
        // Same size, different bytes, written after the stat was taken.
        let mut changed = data.clone();
        changed[1000] ^= 0xff;
        fs::write(&src, &changed).unwrap();
        let source = Src::new(vec![(&data, src, false, Some(stat))]);
        let out = apply(t.path(), &[write_op("f", None, &data, 1)], &source, &|_| {});
        // Neither the fast path nor the verified path accepts it.
        assert_eq!(out.issues.len(), 1, "{:?}", out.issues);
        assert!(!t.path().join("f").exists());
    }

    #[test]
    fn an_edit_copies_the_unchanged_runs_of_the_old_version() {
        let (t, other, old, new, op) = edit_case();
        let source = Src::new(vec![
            (&old, t.path().join("f"), true, None),
            (&new, other.path().join("n"), false, None),
        ]);
        let out = apply(t.path(), &[op], &source, &|_| {});
        assert!(out.issues.is_empty(), "{:?}", out.issues);
        assert_eq!(fs::read(t.path().join("f")).unwrap(), new);
        // Only the changed chunk came from the other replica.
        assert!(
            out.bytes_remote <= weave_chunk::CHUNK_MAX as u64,
            "{}",
            out.bytes_remote
        );
        assert_eq!(out.bytes_local + out.bytes_remote, new.len() as u64);
    }

    #[test]
    fn long_unchanged_runs_are_copied_with_direct_io_and_land_whole() {
        // Runs of 10 MiB on either side of the change: their whole blocks
        // go through direct I/O, their ends through the kernel's copy.
        let (t, other, old, new, op) = edit_case_of(20 << 20);
        let source = Src::new(vec![
            (&old, t.path().join("f"), true, None),
            (&new, other.path().join("n"), false, None),
        ]);
        let out = apply(t.path(), &[op], &source, &|_| {});
        assert!(out.issues.is_empty(), "{:?}", out.issues);
        assert!(fs::read(t.path().join("f")).unwrap() == new);
        assert!(
            out.bytes_remote <= weave_chunk::CHUNK_MAX as u64,
            "{}",
            out.bytes_remote
        );
    }

    #[test]
    fn an_old_version_changed_since_its_scan_is_read_and_verified() {
        let (t, other, old, new, op) = edit_case();
        // Changed in place after the scan, in a range the edit kept.
        let f = File::options()
            .write(true)
            .open(t.path().join("f"))
            .unwrap();
        f.write_all_at(b"XXXX", 10).unwrap();
        drop(f);
        let source = Src::new(vec![
            (&old, t.path().join("f"), true, None),
            (&new, other.path().join("n"), false, None),
        ]);
        let out = apply(t.path(), std::slice::from_ref(&op), &source, &|_| {});
        // I-5 keeps the user's change; nothing of it went into a build
        // either (the chunk that changed came from the other replica).
        assert_eq!(out.issues.len(), 1, "{:?}", out.issues);
        // Read and verified: the chunks at offsets 10 and 300,000 failed
        // there and came from the other replica.
        let list = weave_chunk::chunk_bytes(&new);
        let at = |x: u64| {
            list.with_offsets()
                .find(|(o, c)| *o <= x && x < o + c.len as u64)
                .map(|(_, c)| c.len as u64)
                .unwrap()
        };
        assert_eq!(out.bytes_remote, at(10) + at(300_000));
        let mut kept = old.clone();
        kept[10..14].copy_from_slice(b"XXXX");
        assert_eq!(fs::read(t.path().join("f")).unwrap(), kept);
    }

    /// A complete part file becomes the first file with its content by a
    /// rename (no copy); another file with the same content is copied
    /// from it, verified.
    #[test]
    fn a_part_file_lands_by_a_rename_and_serves_other_copies() {
        use std::os::unix::fs::MetadataExt;
        struct PartSrc(ChunkList, PathBuf);
        impl ContentSource for PartSrc {
            fn chunk_list(&self, content: &Hash) -> Option<ChunkList> {
                (self.0.content_id() == *content).then(|| self.0.clone())
            }
            fn locations(&self, _: &Hash) -> Vec<Location> {
                Vec::new()
            }
            fn part(&self, _: &Hash) -> Option<PathBuf> {
                Some(self.1.clone()).filter(|p| p.exists())
            }
        }
        let t = replica();
        let data = noise(2_000_000, 3);
        let list = weave_chunk::chunk_bytes(&data);
        let stage = crate::Stage::open(&t.path().join(STATE_DIR)).unwrap();
        let mut part = stage.part(&list).unwrap();
        for (off, c) in list.with_offsets() {
            part.put(&c.hash, &data[off as usize..(off + c.len as u64) as usize])
                .unwrap();
        }
        assert!(part.complete());
        let path = part.path().to_path_buf();
        drop(part);
        let ino = fs::metadata(&path).unwrap().ino();
        let source = PartSrc(list, path.clone());
        let ops = [write_op("a", None, &data, 1), write_op("b", None, &data, 1)];
        let out = apply(t.path(), &ops, &source, &|_| {});
        assert!(out.issues.is_empty(), "{:?}", out.issues);
        assert_eq!(out.done.len(), 2);
        assert!(!path.exists());
        let inos: Vec<u64> = ["a", "b"]
            .iter()
            .map(|n| {
                assert_eq!(fs::read(t.path().join(n)).unwrap(), data);
                fs::metadata(t.path().join(n)).unwrap().ino()
            })
            .collect();
        assert_eq!(inos.iter().filter(|i| **i == ino).count(), 1, "{inos:?}");
    }

    /// I-2: when the conflict copy of the losing version cannot be written,
    /// the loser is not overwritten by the winner (nor removed).
    #[test]
    fn a_loser_whose_copy_failed_is_not_overwritten() {
        let (t, other) = (replica(), tempfile::tempdir().unwrap());
        let root = t.path();
        let loser = b"the losing version, not saved anywhere else";
        let winner = b"the winning version";
        fs::write(root.join("x"), loser).unwrap();
        // The copy's directory is a file: the copy cannot be written.
        fs::write(root.join("blocker"), b"a file").unwrap();
        fs::write(other.path().join("w"), winner).unwrap();
        let source = Src::new(vec![
            (winner, other.path().join("w"), false, None),
            (loser, root.join("x"), true, None),
        ]);
        let cur = local(root, file_entry("x", loser, 1));
        let ops = vec![
            write_op("x", Some(cur), winner, 2),
            write_op("blocker/x.weave-conflict-copy", None, loser, 1),
        ];
        let out = apply(root, &ops, &source, &|_| {});
        assert_eq!(out.issues.len(), 2, "{:?}", out.issues);
        assert!(out.done.is_empty());
        assert_eq!(fs::read(root.join("x")).unwrap(), loser);
    }
}
