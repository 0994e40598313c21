//! The executor: carries out one replica's part of a plan on disk.
//!
//! [`apply`] runs these steps, in this order:
//!
//! 1. directories at free paths, shallowest first (made writable by their
//!    owner; their modes are set at the end);
//! 2. file and symlink writes to new paths whose directory is there
//!    (conflict copies, rename targets, new files), largest first;
//! 3. removals, deepest first (files go to `.weave/trash`, so their
//!    chunks stay available and the old versions can be saved);
//! 4. directories that replace something removed;
//! 5. the writes that had to wait for a directory or a removal, then
//!    overwrites;
//! 6. metadata changes, 7. index-only changes; then directory modes,
//!    deepest first.
//!
//! Nothing is destroyed before what must survive it has landed: a removal
//! or overwrite that would destroy the only copy of a content that failed
//! to land at its new place is held back (`order.rs`). Writes go in
//! durability batches (`batch.rs`): every new content is built in a
//! temporary file next to its target from verified chunks (I-3,
//! `build.rs`, `copy.rs`), the batch is made durable, and only then is
//! each temporary put in place, after its target was checked against the
//! index once more (I-4, I-5, `commit.rs`); a file at a new path is built
//! without a name where the file system allows it and linked into place,
//! which never replaces anything. `trash.rs` keeps the old versions and
//! their journal, `modes.rs` opens up read-only directories for the run,
//! `hooks.rs` lets tests watch and steer the executor.

mod batch;
mod build;
mod commit;
mod copy;
mod error;
mod hooks;
pub(crate) mod links;
mod modes;
mod order;
#[cfg(test)]
pub(crate) mod test_support;
mod trash;

pub use modes::restore_modes;
pub use trash::{clear_trash, trash_leftovers};

use crate::util::{join, FsIssue};
use error::PathError;
use order::Unlanded;
use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use weave_chunk::ChunkList;
use weave_core::path::ancestors;
use weave_core::{Entry, Hash, Op, Stat};

/// An operation that was carried out.
#[derive(Debug, Clone)]
pub struct Done {
    pub op: usize,
    pub entry: Entry,
    pub stat: Option<Stat>,
    /// The chunk list of a file that was written.
    pub content: Option<ChunkList>,
}

impl Done {
    /// Operation `op`, number `i` of the plan, carried out.
    fn of(i: usize, op: &Op, stat: Option<Stat>, content: Option<ChunkList>) -> Done {
        Done {
            op: i,
            entry: op.target.clone(),
            stat,
            content,
        }
    }
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

/// What the steps of one run share.
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
    /// place ([`create_unnamed`](crate::util::create_unnamed)), tried
    /// once on first use.
    unnamed: std::sync::OnceLock<bool>,
    /// Unnamed files a batch may hold open until its commit: a quarter of
    /// what this process may open (a batch over it uses named
    /// temporaries, which are closed once written).
    fd_budget: usize,
    /// The replica's root, to reach a new file's directory without
    /// following a symlink
    /// ([`open_dir_beneath`](crate::util::open_dir_beneath)).
    root_fd: Option<std::os::fd::OwnedFd>,
    /// The root's device: files on another one are flushed there too.
    root_dev: Option<u64>,
    /// Owner and group names, for the owners this run gives.
    names: crate::meta::Names,
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
    let ctx = match Ctx::new(root, source, progress) {
        Ok(ctx) => ctx,
        Err(issue) => {
            out.issues.push(issue);
            return out;
        }
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
    let mut unlanded = Unlanded::default();

    // 1. Directories at free paths, shallowest first. Created writable by
    // their owner; final modes are set at the end.
    let (free_dirs, blocked_dirs) = ctx.split_dirs(ops);
    ctx.make_dirs(&free_dirs, &mut out, &mut final_modes);

    // 2. Writes to free paths whose directory is already there, largest
    // first.
    let (early, late) = ctx.split_writes(ops);
    let retry = ctx.write_batches(ops, &early, &mut out, &mut unlanded, true);

    // 3. Removals, deepest first, unless they would destroy content that
    // failed to land at its new place.
    ctx.remove_all(&order::removals(ops), &unlanded, &mut out);

    // 4. Directories that replace something removed above.
    ctx.make_dirs(&blocked_dirs, &mut out, &mut final_modes);

    // 5. Writes that had to wait for a directory or for a removal, then
    // overwrites.
    let late = ctx.late_writes(late, retry, &unlanded, &mut out);
    ctx.write_batches(ops, &late, &mut out, &mut unlanded, false);

    // 6. Metadata.
    ctx.set_metas(ops, &mut out, &mut final_modes);
    // 7. Index-only changes.
    commit::record(ops, &mut out);

    // Directory modes last, deepest first; then the old versions kept.
    ctx.settle_modes(final_modes, locked, &mut out);
    out.replaced = ctx.into_replaced();
    out
}

impl<'a> Ctx<'a> {
    /// Gives `to` the owner and extended attributes of `target`, as far
    /// as this replica keeps them (a symlink: its owner only).
    fn set_extra(&self, to: crate::meta::Target, target: &Entry) -> Result<(), PathError> {
        let scope = crate::meta::scope();
        if !scope.any() {
            return Ok(());
        }
        let link_scope;
        let scope = match target.object {
            weave_core::Object::Symlink { .. } => {
                link_scope = weave_core::MetaScope {
                    namespaces: Vec::new(),
                    ..scope.clone()
                };
                &link_scope
            }
            _ => scope,
        };
        crate::meta::apply(to, target.meta.as_deref(), scope, &self.names)
            .map_err(PathError::io("cannot set the owner or extended attributes"))
    }

    /// The context of a run at `root`, with an empty trash.
    fn new(
        root: &'a Path,
        source: &'a dyn ContentSource,
        progress: &'a (dyn Fn(u64) + Sync),
    ) -> Result<Ctx<'a>, FsIssue> {
        let trash = trash::empty_trash(root)?;
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
            fd_budget: batch::fd_budget(),
            root_fd: rustix::fs::open(
                root,
                rustix::fs::OFlags::PATH
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .ok(),
            root_dev: fs::metadata(root).ok().map(|m| m.dev()),
            names: crate::meta::Names::default(),
            #[cfg(test)]
            test_other_fs: hooks::OTHER_FS.with(|o| o.borrow().clone()),
        };
        #[cfg(test)]
        if hooks::NO_UNNAMED.with(|n| n.get()) {
            let _ = ctx.unnamed.set(false);
        }
        Ok(ctx)
    }
}

fn nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// Opens `path` for reading, never through a symlink.
fn open_read(path: &Path) -> std::io::Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(nofollow())
        .open(path)
}

impl Ctx<'_> {
    /// The issue reported for `op`'s path, which failed with `e`: its
    /// message is the error's text.
    fn issue(&self, op: &Op, e: PathError) -> FsIssue {
        FsIssue::new(join(self.root, &op.path), e.to_string())
    }

    /// Checks that every directory above `rel` is a real directory inside
    /// the replica, never a symlink (no write passes through a symlink).
    fn check_parents(&self, rel: &str) -> Result<(), PathError> {
        let mut anc: Vec<&str> = ancestors(rel).collect();
        anc.reverse();
        for a in anc {
            let m = fs::symlink_metadata(join(self.root, a)).map_err(|source| {
                PathError::ParentMissing {
                    dir: a.to_string(),
                    source,
                }
            })?;
            if !m.file_type().is_dir() {
                return Err(PathError::ParentNotDir { dir: a.to_string() });
            }
        }
        Ok(())
    }
}
