//! The scanner: compares the disk with the index and records what changed.
//!
//! Files whose (size, mtime, ctime, inode) match the index are not read
//! again. Changed files are chunked and hashed in parallel. A file that
//! changes while it is being read is left for the next scan.

use crate::util::{is_temp_name, join, same_stat, stat_of, stat_of_raw, FsIssue};
use rayon::prelude::*;
use rustix::fs::{AtFlags, Dir, Mode, OFlags};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use weave_chunk::{chunk_reader_with, ChunkList};
use weave_core::ignore::Matcher;
use weave_core::path::STATE_DIR;
use weave_core::{LocalEntry, Stat};
use weave_core::{Meta, Object};
use weave_index::{Index, IndexError, ScanCursor, ScanRecord};

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("cannot read the replica {path}: {message}. Nothing was changed; check that the directory exists and is readable")]
    Root { path: PathBuf, message: String },
}

#[derive(Default, Debug)]
pub struct ScanOutcome {
    /// Entries that changed, to be written to the index (those not
    /// already recorded, see `recorded`).
    pub changed: Vec<LocalEntry>,
    /// Chunk lists of the files that were read.
    pub contents: Vec<ChunkList>,
    /// Paths that could not be scanned: reported, and left as they were.
    pub issues: Vec<FsIssue>,
    /// Things skipped on purpose (special files), worth a mention.
    pub notices: Vec<FsIssue>,
    pub files_hashed: u64,
    pub bytes_hashed: u64,
    /// The scope of metadata the entries now agree with, when this scan
    /// checked every path's (see [`scan`]), to be recorded with them.
    pub meta_scope: Option<u64>,
    /// Entries (and their chunk lists) this scan already recorded in the
    /// index, a part at a time, rather than hold all of them (a large
    /// scan that is not a dry run): not in `changed`.
    pub recorded: usize,
}

/// Entries a scan that records (not a dry run) holds before it writes
/// them to the index.
const RECORD_PART: usize = 65_536;

pub struct ScanOptions<'a> {
    pub matcher: &'a Matcher,
    /// Remove leftover temporary files of an interrupted sync.
    pub remove_temps: bool,
    /// Change nothing on disk (a dry run): what a widened scope would give
    /// back to the tree (see [`scan`]) is not written.
    pub dry_run: bool,
    /// Look only at these paths (relative to the root; each with its
    /// subtree and its ancestor directories) instead of the whole tree:
    /// what a file-system watcher saw change. None for a full scan.
    pub only: Option<&'a [String]>,
    /// Files already hashed by [`prehash`]: one whose stat is still the
    /// one it was hashed with is not read again.
    pub prehashed: Option<&'a Prehashed>,
    /// Record a large scan's entries in the index a part at a time as
    /// they are made (not on a dry run), rather than hold them all for
    /// the caller to write at once.
    pub record_parts: bool,
}

/// Chunk lists of files hashed ahead of a scan (by [`prehash`], while
/// other replicas connect), with the stat each was hashed at.
#[derive(Default, Debug)]
pub struct Prehashed {
    /// Taken out by the scan that uses them (no second copy of every list
    /// while a large tree is scanned).
    files: std::sync::Mutex<std::collections::HashMap<String, (Stat, ChunkList)>>,
    /// The bytes of small files, by content id, as they were hashed: a
    /// replica that then sends them to another need not open, stat and
    /// read each file again (see [`Prehashed::into_kept`]).
    kept: std::collections::HashMap<weave_core::Hash, Vec<u8>>,
}

/// Files up to this size have their bytes kept by [`prehash`]...
pub const KEEP_FILE_MAX: u64 = 64 * 1024;
/// ...up to this many bytes in all.
pub const KEEP_TOTAL_MAX: u64 = 64 << 20;
/// What keeping a file's bytes costs besides them (its place in the map,
/// the buffer's header and rounding), counted against
/// [`KEEP_TOTAL_MAX`]: a million tiny files must not keep a million
/// buffers.
const KEEP_FILE_OVERHEAD: u64 = 128;

impl Prehashed {
    /// The chunk list of `rel` and its stat, if it was hashed and `st` (its
    /// stat now) is the one it was hashed at. A file hashed within the
    /// racy window is never taken: it may have changed since, keeping its
    /// timestamps.
    fn take(&self, rel: &str, st: &Stat) -> Option<(ChunkList, Stat)> {
        let (at, list) = self.files.lock().ok()?.remove(rel)?;
        let same = at.size == st.size
            && at.mtime_ns == st.mtime_ns
            && at.ctime_ns == st.ctime_ns
            && at.ino == st.ino
            && at.mode == st.mode;
        (same && !at.racy).then_some((list, at))
    }

    /// Files hashed (and not taken yet).
    pub fn len(&self) -> usize {
        self.files.lock().map_or(0, |f| f.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of the small files hashed, by content id (each is the
    /// content its id names: they are the bytes that were hashed).
    pub fn into_kept(self) -> std::collections::HashMap<weave_core::Hash, Vec<u8>> {
        self.kept
    }
}

/// Hashes, without recording anything, the files a scan of `root` would
/// hash: those whose stat differs from `index`'s record (every file when
/// there is no index yet). Meant to run while other replicas connect; the
/// scan that follows then only looks at the stats. Best effort: what
/// cannot be read here is left to the scan (which reports it), and once
/// `stop` is set no more files are started (those being read are
/// finished).
pub fn prehash(
    root: &Path,
    index: Option<&Index>,
    matcher: &Matcher,
    stop: &std::sync::atomic::AtomicBool,
) -> Prehashed {
    use std::sync::atomic::Ordering;
    let opts = ScanOptions {
        matcher,
        remove_temps: false,
        dry_run: false,
        only: None,
        prehashed: None,
        record_parts: false,
    };
    let cursor = match index.map(|i| i.scan_cursor()) {
        Some(Ok(c)) => c,
        Some(Err(_)) => return Prehashed::default(),
        None => ScanCursor::empty(),
    };
    let mut w = Walker::new(&opts, cursor);
    if w.walk_dir(root.to_path_buf(), "").is_err() {
        return Prehashed::default();
    }
    // Largest first, as the scan does.
    let mut to_hash = w.to_hash;
    to_hash.sort_by_key(|(_, st)| std::cmp::Reverse(st.size));
    let budget = std::sync::atomic::AtomicU64::new(KEEP_TOTAL_MAX);
    let hashed: Vec<(String, Stat, ChunkList, Option<Vec<u8>>)> = to_hash
        .into_par_iter()
        .with_max_len(1)
        .filter(|_| !stop.load(Ordering::Relaxed))
        .filter_map(|(rel, st)| {
            let path = join(root, &rel);
            let keep = st.size <= KEEP_FILE_MAX
                && budget
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                        b.checked_sub(st.size + KEEP_FILE_OVERHEAD)
                    })
                    .is_ok();
            let (list, st, data) = if keep {
                let (list, st, data) = hash_small_file(&path, &st).ok()?;
                (list, st, Some(data))
            } else {
                let (list, st) = hash_file(&path, &st).ok()?;
                (list, st, None)
            };
            Some((rel, st, list, data))
        })
        .collect();
    let mut files = std::collections::HashMap::with_capacity(hashed.len());
    let mut kept = std::collections::HashMap::new();
    for (rel, st, list, data) in hashed {
        if let Some(d) = data {
            kept.insert(list.content_id(), d);
        }
        files.insert(rel, (st, list));
    }
    Prehashed {
        files: std::sync::Mutex::new(files),
        kept,
    }
}

/// Scans the replica at `root` against its index.
///
/// The tree is walked in path order (each directory's entries sorted, a
/// directory's subtree visited where `name/` sorts) and joined with a
/// cursor over the index's scan records, which are kept in the same
/// order: no per-file map, and memory bounded by the widest directory.
/// Full entries are read only for paths that changed. Version-vector
/// counters and sequence numbers come from `index`. With
/// [`ScanOptions::record_parts`], a large scan's entries are recorded as
/// they are made, 65,536 (`RECORD_PART`) at a time; the caller writes the rest
/// ([`ScanOutcome::changed`]), and with it what completes the scan (its
/// `meta_scope`).
pub fn scan(root: &Path, index: &mut Index, opts: &ScanOptions) -> Result<ScanOutcome, ScanError> {
    let mut w = Walker::new(opts, index.scan_cursor()?);
    let units = opts.only.and_then(scope_units);
    match &units {
        Some(units) => {
            if let Err(e) = fs::read_dir(root) {
                return Err(ScanError::Root {
                    path: root.to_path_buf(),
                    message: e.to_string(),
                });
            }
            w.walk_units(root, units)?;
        }
        None => w.walk_dir(root.to_path_buf(), "")?,
    }
    if w.blocked.contains("") {
        // The root itself could not be read: nothing can be concluded
        // about this replica (certainly not that everything was deleted).
        let msg = w
            .out
            .issues
            .first()
            .map(|i| i.message.clone())
            .unwrap_or_default();
        return Err(ScanError::Root {
            path: root.to_path_buf(),
            message: msg,
        });
    }
    if units.is_none() {
        w.advance_to(None)?;
    } else if !w.links.is_empty() {
        // A file with several names among the watched paths: only a scan
        // of the whole tree sees all of its names (hard links kept).
        let whole = ScanOptions {
            only: None,
            ..*opts
        };
        return scan(root, index, &whole);
    }
    let Walker {
        cursor,
        mut out,
        blocked,
        gone,
        to_hash,
        updates,
        dirs_kept,
        links,
        ..
    } = w;
    // (Its read transaction would keep redb from reusing the pages the
    // parts recorded below free.)
    drop(cursor);
    let leaders = units.is_none().then(|| first_names(links));
    let names = crate::meta::Names::default();
    // What this replica keeps of owners and attributes changed since its
    // entries were recorded (or was never recorded: a new index, or one
    // from before metadata was kept): what it keeps now and did not before
    // is first given back to the tree from its entries, where the tree
    // lacks it (under the narrower scope those values were passed through,
    // never set: reading the tree now would take them as removed and strip
    // them everywhere); then every path is checked once (`Sweep`). Not on
    // a dry run, which would read what it cannot give back as removed.
    let scope = crate::meta::scope();
    let sweeping = !opts.dry_run && index.meta_scope() != Some(scope.bits());
    let widened = scope.widened_from(index.meta_scope());
    let unfilled = match sweeping && widened.any() {
        true => give_back(root, index, &widened, &names)?,
        false => HashMap::new(),
    };
    // What this replica keeps of a path's owner and attributes, over what
    // its index had (the rest passes through; what could not be given
    // back stays as recorded).
    let meta_of = |rel: &str, before: Option<&Meta>| -> Option<Box<Meta>> {
        let link = leaders.as_ref().map(|l| l.get(rel).cloned());
        let seen = extra_of(&join(root, rel), link, before, &names);
        match unfilled.get(rel) {
            Some(u) => keep_unfilled(seen, before, u),
            None => seen,
        }
    };
    let mut ch = Changes {
        updates,
        blocked,
        ..Changes::default()
    };
    take_hashed(root, index, opts, to_hash, &meta_of, &mut out, &mut ch)?;
    let Changes {
        mut updates,
        blocked,
        mut stat_only,
    } = ch;

    // Deletions: indexed paths not found on disk, unless something that
    // could not be read hides them.
    let gone: Vec<String> = gone
        .into_iter()
        .filter(|p| {
            blocked.is_empty()
                || !(blocked.contains(p)
                    || weave_core::path::ancestors(p).any(|a| blocked.contains(a)))
        })
        .collect();
    for p in gone {
        updates.push((p, Object::Deleted, 0, 0, None, None));
    }

    let mut dirs_kept = dirs_kept;
    if sweeping {
        // (It checks the directories too.)
        dirs_kept.clear();
        let handled: HashSet<String> = updates
            .iter()
            .map(|u| u.0.clone())
            .chain(stat_only.iter().map(|s| s.0.clone()))
            .chain(blocked.iter().cloned())
            .collect();
        let sweep = Sweep {
            root,
            meta_of: &meta_of,
        };
        sweep.run(index, &handled, &mut updates, &mut stat_only)?;
        // What could not be looked at is checked again next time.
        out.meta_scope = blocked.is_empty().then(|| scope.bits());
    }
    // Directories whose owner or attributes alone changed.
    for rel in dirs_kept {
        if let Some(prev) = index.entry(&rel)? {
            let meta = meta_of(&rel, prev.entry.meta.as_deref());
            if meta != prev.entry.meta {
                updates.push((rel, Object::Dir, prev.entry.mode, 0, None, None));
            }
        }
    }
    let ch = Changes {
        updates,
        blocked,
        stat_only,
    };
    make_entries(
        index,
        ch,
        &meta_of,
        opts.record_parts && !opts.dry_run,
        &mut out,
    )?;
    Ok(out)
}

/// A path's new state: (path, object, mode, mtime, stat, and its owner
/// and attributes when they were already read: None to read them when
/// its entry is made).
type Update = (
    String,
    Object,
    u32,
    i64,
    Option<Stat>,
    Option<Option<Box<Meta>>>,
);

mod entries;
mod sweep;
use entries::{make_entries, take_hashed};
use sweep::{extra_of, give_back, keep_unfilled, MetaOf, Sweep};
/// Each name of a file with several (its names the walk saw, by device
/// and inode): the first of them in path order. Known only to a scan of
/// the whole tree.
fn first_names(links: HashMap<(u64, u64), Vec<String>>) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for mut names in links.into_values().filter(|n| n.len() > 1) {
        names.sort();
        for n in &names {
            m.insert(n.clone(), names[0].clone());
        }
    }
    m
}

/// What a scan found changed, on its way to entries.
#[derive(Default)]
struct Changes {
    /// Paths whose entry changes (see [`Update`]).
    updates: Vec<Update>,
    /// Paths that exist but could not be looked at.
    blocked: HashSet<String>,
    /// Files read again and found as recorded: only their stat is new.
    stat_only: Vec<(String, Stat)>,
}

/// What a scan limited to `paths` looks at, in path order: each path with
/// its subtree (true), and each of its ancestors alone (false). None when
/// that is the whole tree (the root itself changed) or a path is not a
/// plain relative path.
fn scope_units(paths: &[String]) -> Option<Vec<(String, bool)>> {
    let mut units: std::collections::BTreeMap<String, bool> = Default::default();
    for p in paths {
        let p = p.trim_matches('/');
        if p.is_empty() {
            return None;
        }
        if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return None;
        }
        units.insert(p.to_string(), true);
        for a in weave_core::path::ancestors(p) {
            units.entry(a.to_string()).or_insert(false);
        }
    }
    // A path inside a subtree already walked is not looked at again.
    let deep: HashSet<String> = units
        .iter()
        .filter(|(_, d)| **d)
        .map(|(p, _)| p.clone())
        .collect();
    Some(
        units
            .into_iter()
            .filter(|(p, _)| !weave_core::path::ancestors(p).any(|a| deep.contains(a)))
            .collect(),
    )
}

struct Walker<'a> {
    opts: &'a ScanOptions<'a>,
    cursor: ScanCursor,
    out: ScanOutcome,
    /// Paths that exist but could not be looked at: never taken as deleted.
    blocked: HashSet<String>,
    /// Indexed paths not found on disk (ignored ones left out).
    gone: Vec<String>,
    to_hash: Vec<(String, Stat)>,
    updates: Vec<Update>,
    /// Directories whose mode did not change: their owner and extended
    /// attributes are compared with the index's once the walk is done.
    dirs_kept: Vec<String>,
    /// Files with more than one name, by (device, inode), when hard links
    /// are kept: their names seen by the walk.
    links: HashMap<(u64, u64), Vec<String>>,
}

/// One directory entry, as read.
struct Child {
    name: String,
    raw: rustix::fs::Stat,
}

impl<'a> Walker<'a> {
    fn new(opts: &'a ScanOptions<'a>, cursor: ScanCursor) -> Walker<'a> {
        Walker {
            opts,
            cursor,
            out: ScanOutcome::default(),
            blocked: HashSet::new(),
            gone: Vec::new(),
            to_hash: Vec::new(),
            updates: Vec::new(),
            dirs_kept: Vec::new(),
            links: HashMap::new(),
        }
    }

    /// Takes the index records that sort before `rel` (all of them for
    /// None): they were not found on disk.
    fn advance_to(&mut self, rel: Option<&str>) -> Result<(), IndexError> {
        while let Some((p, _)) = self.cursor.peek()? {
            if rel.is_some_and(|r| p.as_str() >= r) {
                break;
            }
            let (p, r) = self.cursor.take()?.expect("peeked");
            if !self
                .opts
                .matcher
                .is_ignored(&p, matches!(r, ScanRecord::Dir { .. }))
            {
                self.gone.push(p);
            }
        }
        Ok(())
    }

    /// The index record of `rel`, if the cursor is on it.
    fn known(&mut self, rel: &str) -> Result<Option<ScanRecord>, IndexError> {
        self.advance_to(Some(rel))?;
        if self.cursor.peek()?.is_some_and(|(p, _)| p == rel) {
            return Ok(self.cursor.take()?.map(|(_, r)| r));
        }
        Ok(None)
    }

    /// A limited scan (see [`scope_units`]).
    fn walk_units(&mut self, root: &Path, units: &[(String, bool)]) -> Result<(), IndexError> {
        for (rel, subtree) in units {
            let is_dir = self.visit_one(root, rel)?;
            if !subtree {
                continue;
            }
            let (start, end) = (format!("{rel}/"), format!("{rel}0"));
            self.cursor.seek(&start, Some(&end))?;
            if is_dir {
                self.walk_dir(join(root, rel), rel)?;
            }
            // Whatever is left under it was not found.
            self.advance_to(None)?;
        }
        Ok(())
    }

    /// Looks at the one path `rel` as a full scan would. Returns whether
    /// it is a directory to walk.
    fn visit_one(&mut self, root: &Path, rel: &str) -> Result<bool, IndexError> {
        if rel.split('/').any(|c| c == STATE_DIR)
            || weave_core::path::ancestors(rel).any(|a| self.opts.matcher.is_ignored(a, true))
        {
            // Never walked by a full scan either.
            return Ok(false);
        }
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let dir = join(root, parent);
        self.cursor.seek(rel, None)?;
        let child = match open_dir_beneath(root, parent) {
            Ok(fd) => match std::ffi::CString::new(name) {
                Ok(cname) => self.child(&fd, &dir, parent, &cname),
                Err(_) => None,
            },
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => {
                None
            }
            Err(e) => {
                self.out
                    .issues
                    .push(FsIssue::new(&dir, format!("cannot read directory: {e}")));
                self.blocked.insert(rel.to_string());
                return Ok(false);
            }
        };
        match child {
            Some(c) => {
                let is_dir = rustix::fs::FileType::from_raw_mode(c.raw.st_mode).is_dir();
                self.visit(&dir, rel.to_string(), &c)?;
                Ok(is_dir)
            }
            None => {
                // Not there (or not synced): its record, if any, is gone
                // unless it is ignored or could not be looked at.
                if let Some(r) = self.known(rel)? {
                    if !self
                        .opts
                        .matcher
                        .is_ignored(rel, matches!(r, ScanRecord::Dir { .. }))
                    {
                        self.gone.push(rel.to_string());
                    }
                }
                Ok(false)
            }
        }
    }

    fn walk_dir(&mut self, dir: PathBuf, prefix: &str) -> Result<(), IndexError> {
        let children = match self.read_dir(&dir, prefix) {
            Some(c) => c,
            None => {
                self.blocked.insert(prefix.to_string());
                return Ok(());
            }
        };
        // Path order: "x" < "x.txt" < "x/…" — a directory's own entry
        // sorts under its name, its subtree under "name/".
        let mut items: Vec<(String, usize, bool)> = Vec::with_capacity(children.len() + 8);
        for (i, c) in children.iter().enumerate() {
            items.push((c.name.clone(), i, false));
            if rustix::fs::FileType::from_raw_mode(c.raw.st_mode).is_dir() {
                items.push((format!("{}/", c.name), i, true));
            }
        }
        items.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (_, i, subtree) in items {
            let c = &children[i];
            let mut rel = String::with_capacity(prefix.len() + 1 + c.name.len());
            if !prefix.is_empty() {
                rel.push_str(prefix);
                rel.push('/');
            }
            rel.push_str(&c.name);
            if subtree {
                self.walk_dir(dir.join(&c.name), &rel)?;
            } else {
                self.visit(&dir, rel, c)?;
            }
        }
        Ok(())
    }

    /// Reads a directory (through a descriptor; entries are stat'ed
    /// relative to it, without a path walk per file). None if it cannot
    /// be read.
    fn read_dir(&mut self, dir: &Path, prefix: &str) -> Option<Vec<Child>> {
        let opened = rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(std::io::Error::from)
        .and_then(|fd| {
            let dup = fd.try_clone()?;
            Ok((dup, Dir::new(fd)?))
        });
        let (dirfd, mut rd) = match opened {
            Ok(x) => x,
            Err(e) => {
                self.out
                    .issues
                    .push(FsIssue::new(dir, format!("cannot read directory: {e}")));
                return None;
            }
        };
        let mut children = Vec::new();
        while let Some(de) = rd.read() {
            let de = match de {
                Ok(de) => de,
                Err(e) => {
                    self.out
                        .issues
                        .push(FsIssue::new(dir, format!("cannot list directory: {e}")));
                    return None;
                }
            };
            let raw_name = de.file_name();
            let name_bytes = raw_name.to_bytes();
            if name_bytes == b"." || name_bytes == b".." {
                continue;
            }
            if let Some(c) = self.child(&dirfd, dir, prefix, raw_name) {
                children.push(c);
            }
        }
        Some(children)
    }

    /// Looks at one entry of the directory `dir` (open as `dirfd`): None
    /// if it is not synced (weave's state, a temporary, an ignored or
    /// unreadable entry, one that is gone).
    fn child(
        &mut self,
        dirfd: &rustix::fd::OwnedFd,
        dir: &Path,
        prefix: &str,
        raw_name: &std::ffi::CStr,
    ) -> Option<Child> {
        let name_bytes = raw_name.to_bytes();
        {
            let entry_path = || dir.join(OsStr::from_bytes(name_bytes));
            let Ok(name) = std::str::from_utf8(name_bytes) else {
                self.out.issues.push(FsIssue::new(
                    entry_path(),
                    "name is not valid UTF-8; skipped (rename it to sync it)",
                ));
                return None;
            };
            // weave's state is never synced, at any depth (a nested
            // replica's state must not be copied into other replicas).
            if name == STATE_DIR {
                if !prefix.is_empty() {
                    self.out.notices.push(FsIssue::new(
                        entry_path(),
                        "weave state (.weave) is never synced, at any depth; skipped",
                    ));
                }
                return None;
            }
            // Does not follow symlinks.
            let raw = match rustix::fs::statat(dirfd, raw_name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(m) => m,
                Err(e) => {
                    if e != rustix::io::Errno::NOENT {
                        self.out
                            .issues
                            .push(FsIssue::new(entry_path(), format!("cannot stat: {e}")));
                        self.blocked.insert(join_rel(prefix, name));
                    }
                    return None;
                }
            };
            let ft = rustix::fs::FileType::from_raw_mode(raw.st_mode);
            if (ft.is_file() || ft.is_symlink()) && is_temp_name(name) {
                if self.opts.remove_temps {
                    let _ = fs::remove_file(entry_path());
                }
                return None;
            }
            if !self.opts.matcher.is_empty()
                && self
                    .opts
                    .matcher
                    .is_ignored(&join_rel(prefix, name), ft.is_dir())
            {
                return None;
            }
            Some(Child {
                name: name.to_string(),
                raw,
            })
        }
    }

    /// Compares one path on disk with its index record.
    fn visit(&mut self, dir: &Path, rel: String, c: &Child) -> Result<(), IndexError> {
        let prev = self.known(&rel)?;
        let ft = rustix::fs::FileType::from_raw_mode(c.raw.st_mode);
        if ft.is_dir() {
            let mode = c.raw.st_mode & 0o777;
            if !matches!(prev, Some(ScanRecord::Dir { mode: m }) if m == mode) {
                self.updates.push((rel, Object::Dir, mode, 0, None, None));
            } else if crate::meta::scope().any() {
                self.dirs_kept.push(rel);
            }
        } else if ft.is_file() {
            if c.raw.st_nlink > 1 && crate::meta::scope().links {
                let key = (c.raw.st_dev, c.raw.st_ino);
                self.links.entry(key).or_default().push(rel.clone());
            }
            let st = stat_of_raw(&c.raw);
            let unchanged = matches!(prev, Some(ScanRecord::File(ps)) if
                !ps.racy
                    && ps.size == st.size
                    && ps.mtime_ns == st.mtime_ns
                    && ps.ctime_ns == st.ctime_ns
                    && ps.ino == st.ino
                    && ps.mode == st.mode);
            if !unchanged {
                self.to_hash.push((rel, st));
            }
        } else if ft.is_symlink() {
            let path = dir.join(&c.name);
            match fs::read_link(&path) {
                Ok(t) => match t.to_str() {
                    Some(t) => {
                        if !matches!(&prev, Some(ScanRecord::Symlink { target }) if target == t) {
                            let object = Object::Symlink {
                                target: t.to_string(),
                            };
                            self.updates.push((rel, object, 0, 0, None, None));
                        }
                    }
                    None => {
                        self.out.issues.push(FsIssue::new(
                            path,
                            "symlink target is not valid UTF-8; skipped",
                        ));
                        self.blocked.insert(rel);
                    }
                },
                Err(e) => {
                    self.out
                        .issues
                        .push(FsIssue::new(path, format!("cannot read symlink: {e}")));
                    self.blocked.insert(rel);
                }
            }
        } else {
            self.out.notices.push(FsIssue::new(
                dir.join(&c.name),
                "not a regular file, directory or symlink; skipped",
            ));
            self.blocked.insert(rel);
        }
        Ok(())
    }
}

/// Opens the directory `rel` under `root` one component at a time without
/// following a symlink anywhere on the way (a full scan never walks
/// through one either).
fn open_dir_beneath(root: &Path, rel: &str) -> rustix::io::Result<rustix::fd::OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let mut fd = rustix::fs::open(root, flags, Mode::empty())?;
    for c in rel.split('/').filter(|c| !c.is_empty()) {
        fd = rustix::fs::openat(&fd, c, flags, Mode::empty())?;
    }
    Ok(fd)
}

fn join_rel(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

type HashResult = Result<(ChunkList, Stat), HashError>;

/// Why a file could not be hashed: reported as an [`FsIssue`] for it (its
/// message is the error's text), and the file is left as the index has it.
#[derive(Debug, thiserror::Error)]
enum HashError {
    #[error("cannot read: {0}")]
    Open(std::io::Error),
    #[error("cannot stat: {0}")]
    Stat(std::io::Error),
    #[error("read error: {0}")]
    Read(std::io::Error),
    /// The file changed while it was read.
    #[error("changed while being scanned; it will be picked up by the next sync")]
    Changed,
}

/// Opens a file to hash (never through a symlink), if it is still the
/// file `before` describes: the file and its stat now.
fn open_unchanged(path: &Path, before: &Stat) -> Result<(fs::File, fs::Metadata), HashError> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(HashError::Open)?;
    let m1 = f.metadata().map_err(HashError::Stat)?;
    if m1.ino() != before.ino || m1.len() != before.size {
        return Err(HashError::Changed);
    }
    Ok((f, m1))
}

/// [`hash_file`] for a small file, read whole into memory: its chunk list,
/// its stat, and the bytes hashed.
fn hash_small_file(path: &Path, before: &Stat) -> Result<(ChunkList, Stat, Vec<u8>), HashError> {
    use std::io::Read;
    let (f, m1) = open_unchanged(path, before)?;
    // One byte more than the size: a file that grew is seen at once.
    let mut data = Vec::with_capacity(m1.len() as usize + 1);
    (&f).take(m1.len() + 1)
        .read_to_end(&mut data)
        .map_err(HashError::Read)?;
    let m2 = f.metadata().map_err(HashError::Stat)?;
    if !same_stat(&m2, &stat_of(&m1)) || data.len() as u64 != m2.len() {
        return Err(HashError::Changed);
    }
    Ok((weave_chunk::chunk_bytes(&data), stat_of(&m2), data))
}

/// Reads and chunks one file, making sure it did not change meanwhile.
fn hash_file(path: &Path, before: &Stat) -> HashResult {
    let (f, m1) = open_unchanged(path, before)?;
    thread_local! {
        static WINDOW: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    // Taken out while in use, not borrowed: the chunker waits on a rayon
    // join, and meanwhile this thread may hash another file (which then
    // finds no buffer here and makes its own).
    let mut window = WINDOW.with(|w| std::mem::take(&mut *w.borrow_mut()));
    let list = chunk_reader_with(&f, &mut window);
    WINDOW.with(|w| *w.borrow_mut() = window);
    let list = list.map_err(HashError::Read)?;
    let m2 = f.metadata().map_err(HashError::Stat)?;
    if !same_stat(&m2, &stat_of(&m1)) || list.size() != m2.len() {
        return Err(HashError::Changed);
    }
    Ok((list, stat_of(&m2)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, SystemTime};

    /// A file with an mtime well outside the racy window.
    fn old_file(path: &Path, data: &[u8]) {
        fs::write(path, data).unwrap();
        let f = fs::File::options().write(true).open(path).unwrap();
        f.set_times(
            fs::FileTimes::new().set_modified(SystemTime::now() - Duration::from_secs(3600)),
        )
        .unwrap();
    }

    fn scan_with(root: &Path, state: &Path, prehashed: Option<&Prehashed>) -> ScanOutcome {
        let matcher = Matcher::none();
        let opts = ScanOptions {
            matcher: &matcher,
            remove_temps: false,
            dry_run: false,
            only: None,
            prehashed,
            record_parts: false,
        };
        let mut index = Index::open(state).unwrap();
        scan(root, &mut index, &opts).unwrap()
    }

    /// A large scan records its entries a part at a time and keeps only
    /// the rest; the index then holds all of them once the rest is
    /// written, with their chunk lists. A dry run keeps everything.
    #[test]
    fn a_large_scan_is_recorded_in_parts() {
        let t = tempfile::tempdir().unwrap();
        let (root, state) = (t.path().join("r"), t.path().join("s"));
        let files = RECORD_PART + 10;
        for d in 0..8 {
            fs::create_dir_all(root.join(format!("d{d}"))).unwrap();
        }
        for i in 0..files {
            fs::write(root.join(format!("d{}/f{i}", i % 8)), i.to_le_bytes()).unwrap();
        }
        let matcher = Matcher::none();
        let opts = |dry_run| ScanOptions {
            matcher: &matcher,
            remove_temps: false,
            dry_run,
            only: None,
            prehashed: None,
            record_parts: true,
        };
        let mut index = Index::open(&state).unwrap();
        let dry = scan(&root, &mut index, &opts(true)).unwrap();
        assert_eq!((dry.recorded, dry.changed.len()), (0, files + 8));
        assert!(!index.has_entries().unwrap(), "a dry run records nothing");
        let o = scan(&root, &mut index, &opts(false)).unwrap();
        assert_eq!(o.recorded, RECORD_PART);
        assert_eq!(o.changed.len(), files + 8 - RECORD_PART);
        let rest = weave_index::Batch {
            entries: o.changed,
            contents: o.contents,
            ..Default::default()
        };
        index.write(&rest).unwrap();
        let all = index.load_entries().unwrap();
        assert_eq!(all.len(), files + 8);
        let seqs: std::collections::HashSet<u64> = all.values().map(|le| le.seq).collect();
        assert_eq!(
            seqs.len(),
            all.len(),
            "every entry has its own sequence number"
        );
        let le = &all["d3/f3"];
        let content = le.entry.object.content().unwrap();
        assert!(index.chunk_list(&content).unwrap().is_some());
        let again = scan(&root, &mut index, &opts(false)).unwrap();
        assert_eq!((again.recorded, again.changed.len()), (0, 0));
    }

    /// The messages of a file that could not be hashed, word for word.
    #[test]
    fn hash_error_messages_are_fixed() {
        let io = || std::io::Error::from_raw_os_error(13);
        let denied = "Permission denied (os error 13)";
        assert_eq!(
            HashError::Open(io()).to_string(),
            format!("cannot read: {denied}")
        );
        assert_eq!(
            HashError::Stat(io()).to_string(),
            format!("cannot stat: {denied}")
        );
        assert_eq!(
            HashError::Read(io()).to_string(),
            format!("read error: {denied}")
        );
        assert_eq!(
            HashError::Changed.to_string(),
            "changed while being scanned; it will be picked up by the next sync"
        );
    }

    fn content_of(o: &ScanOutcome, path: &str) -> weave_core::Hash {
        match o
            .changed
            .iter()
            .find(|le| le.entry.path == path)
            .map(|le| &le.entry.object)
        {
            Some(Object::File { content, .. }) => *content,
            other => panic!("{path}: {other:?}"),
        }
    }

    /// What was hashed ahead is what a scan would have found, and a file
    /// whose stat changed since is read again.
    #[test]
    fn the_bytes_of_small_files_hashed_ahead_are_kept_by_content() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("r");
        fs::create_dir_all(&root).unwrap();
        let small = b"a small file".to_vec();
        let edge = vec![5u8; KEEP_FILE_MAX as usize];
        let large = vec![6u8; KEEP_FILE_MAX as usize + 1];
        old_file(&root.join("small"), &small);
        old_file(&root.join("same"), &small);
        old_file(&root.join("edge"), &edge);
        old_file(&root.join("large"), &large);
        let pre = prehash(&root, None, &Matcher::none(), &AtomicBool::new(false));
        assert_eq!(pre.len(), 4);
        let kept = pre.into_kept();
        let id = |d: &[u8]| weave_chunk::chunk_bytes(d).content_id();
        assert_eq!(kept.len(), 2, "one entry per content");
        assert_eq!(kept[&id(&small)], small);
        assert_eq!(kept[&id(&edge)], edge);
        assert!(!kept.contains_key(&id(&large)));
    }

    #[test]
    fn a_scan_takes_prehashed_files_only_while_their_stat_holds() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("r");
        fs::create_dir_all(root.join("d")).unwrap();
        old_file(&root.join("a"), b"alpha");
        old_file(&root.join("d/b"), &vec![7u8; 300_000]);
        old_file(&root.join("c"), b"gamma");
        let stop = AtomicBool::new(false);
        let pre = prehash(&root, None, &Matcher::none(), &stop);
        assert_eq!(pre.len(), 3);
        // The same as a plain scan's.
        let plain = scan_with(&root, &t.path().join("s1"), None);
        let ahead = scan_with(&root, &t.path().join("s2"), Some(&pre));
        for p in ["a", "d/b", "c"] {
            assert_eq!(content_of(&plain, p), content_of(&ahead, p), "{p}");
        }
        assert_eq!(plain.contents.len(), ahead.contents.len());

        // A prehashed list is taken as it is while the stat holds (here a
        // made-up one, to see that it is the one used)...
        let fake = Prehashed::default();
        let put = |st: Stat, list: &ChunkList| {
            fake.files
                .lock()
                .unwrap()
                .insert("a".into(), (st, list.clone()));
        };
        let st = stat_of(&fs::metadata(root.join("a")).unwrap());
        let made_up = weave_chunk::chunk_bytes(b"not what is in a");
        put(st, &made_up);
        let o = scan_with(&root, &t.path().join("s3"), Some(&fake));
        assert_eq!(content_of(&o, "a"), made_up.content_id());
        assert!(fake.is_empty(), "taken by the scan");
        // ... and not once the file changed since (same size, new bytes)...
        put(st, &made_up);
        old_file(&root.join("a"), b"ALPHA");
        let o = scan_with(&root, &t.path().join("s4"), Some(&fake));
        assert_eq!(
            content_of(&o, "a"),
            weave_chunk::chunk_bytes(b"ALPHA").content_id()
        );
        // ... nor if it was hashed within the racy window.
        let st = stat_of(&fs::metadata(root.join("a")).unwrap());
        put(Stat { racy: true, ..st }, &made_up);
        let o = scan_with(&root, &t.path().join("s5"), Some(&fake));
        assert_eq!(
            content_of(&o, "a"),
            weave_chunk::chunk_bytes(b"ALPHA").content_id()
        );
    }

    /// Files the index already has at their stat are not hashed ahead,
    /// ignored ones neither, and nothing is hashed once stopped.
    #[test]
    fn prehash_hashes_only_what_the_scan_would() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("r");
        fs::create_dir_all(&root).unwrap();
        old_file(&root.join("kept"), b"kept");
        let state = t.path().join("s");
        let o = scan_with(&root, &state, None);
        let mut index = Index::open(&state).unwrap();
        index
            .write(&weave_index::Batch {
                entries: o.changed,
                contents: o.contents,
                ..Default::default()
            })
            .unwrap();
        old_file(&root.join("new"), b"new");
        old_file(&root.join("skip.log"), b"ignored");
        let matcher = Matcher::from_files(&[], &["*.log".to_string()]).unwrap();
        let stop = AtomicBool::new(false);
        let pre = prehash(&root, Some(&index), &matcher, &stop);
        let mut names: Vec<String> = pre.files.lock().unwrap().keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["new"]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(prehash(&root, None, &matcher, &stop).is_empty());
    }
}
