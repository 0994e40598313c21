//! Kinds of replica, and how a kind merges concurrent versions.
//!
//! A sync's replicas are all of one kind: directory trees (`files`, the
//! default, `weave_fs::Files`) or stores of named objects such as the
//! key/value store of `weave-kv` (`weave sync --kind kv`). The engine, the planner and the
//! sessions see every kind through [`crate::Replica`]; a [`Kind`] says how
//! to check and open a replica of it at a path, and whether it merges
//! concurrent versions ([`Merge`]) instead of keeping both.

use crate::{Prehashed, Replica, SyncError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weave_core::path::STATE_DIR;

/// Merges two concurrent versions of one object into one.
///
/// Called by the replica that coordinates a sync when two replicas changed
/// the same object concurrently (neither version has seen the other). The
/// merged version replaces both everywhere, with a version that dominates
/// both; returning `None` keeps both versions instead, the older one as a
/// conflict copy (the default without a merge).
///
/// A merge must be deterministic: every coordinator that merges the same
/// two versions must produce the same bytes, so that replicas that merged
/// independently agree when they meet. weave passes the versions in a
/// fixed order (by content id), so the function need not be symmetric.
/// There is no common ancestor: a merge suits data that can be combined
/// from its two versions alone (sets, counters, records of fields).
///
/// ```
/// use weave_engine::Merge;
///
/// /// Lines of text as a set: the merge is their sorted union.
/// struct LineSet;
/// impl Merge for LineSet {
///     fn merge(&self, _name: &str, a: &[u8], b: &[u8]) -> Option<Vec<u8>> {
///         let a = std::str::from_utf8(a).ok()?;
///         let b = std::str::from_utf8(b).ok()?;
///         let mut lines: Vec<&str> = a.lines().chain(b.lines()).collect();
///         lines.sort();
///         lines.dedup();
///         Some(lines.iter().map(|l| format!("{l}\n")).collect::<String>().into_bytes())
///     }
/// }
/// let m = LineSet.merge("tags", b"red\nblue\n", b"blue\ngreen\n");
/// assert_eq!(m.as_deref(), Some(&b"blue\ngreen\nred\n"[..]));
/// ```
pub trait Merge: Send + Sync {
    /// The merged content of `a` and `b`, two versions of the object
    /// `name`, or `None` to keep both.
    fn merge(&self, name: &str, a: &[u8], b: &[u8]) -> Option<Vec<u8>>;
}

impl std::fmt::Debug for dyn Merge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<merge>")
    }
}

/// Objects larger than this are never merged (both versions are kept).
pub const MERGE_MAX: u64 = 64 << 20;

/// A kind of replica: how a replica of it is checked and opened at a path.
pub trait Kind: Send + Sync {
    /// Its name, as `weave sync --kind NAME` and the protocol give it.
    fn name(&self) -> &str;
    /// Checks the local replica paths of a sync (they exist, are distinct,
    /// none inside another, …) before anything is created, and returns
    /// their canonical forms.
    fn check(&self, paths: &[PathBuf], ignore: &[String]) -> Result<Vec<PathBuf>, SyncError>;
    /// Where the replica at `root` (canonical) keeps its state.
    fn state_dir(&self, root: &Path) -> PathBuf {
        root.join(STATE_DIR)
    }
    /// Opens the replica at `root` (canonical, checked). On a dry run
    /// nothing may be created.
    fn open(
        &self,
        root: &Path,
        display: &str,
        dry_run: bool,
    ) -> Result<Box<dyn Replica>, SyncError>;
    /// How this kind merges concurrent versions (None: it keeps both).
    fn merge(&self) -> Option<Arc<dyn Merge>> {
        None
    }
    /// For a replica at `root` with no state yet (not opened, so nothing
    /// is created): hashes, recording nothing, what its first scan would
    /// hash, to be given to it with [`crate::LocalTree::adopt_prehashed`]
    /// once it is opened. Stops hashing once `stop` is set.
    fn prehash(
        &self,
        _root: &Path,
        _patterns: &[String],
        _stop: &std::sync::atomic::AtomicBool,
    ) -> Option<Prehashed> {
        None
    }
}

/// The kinds a program knows, by name.
#[derive(Clone)]
pub struct Kinds(Vec<Arc<dyn Kind>>);

impl Kinds {
    /// A program's kinds, starting with `first`.
    pub fn new(first: Arc<dyn Kind>) -> Kinds {
        Kinds(vec![first])
    }

    /// Adds a kind (replacing one of the same name).
    pub fn with(mut self, k: Arc<dyn Kind>) -> Kinds {
        self.0.retain(|o| o.name() != k.name());
        self.0.push(k);
        self
    }

    /// The kind called `name` (`""` is files).
    pub fn get(&self, name: &str) -> Result<Arc<dyn Kind>, SyncError> {
        let name = if name.is_empty() { "files" } else { name };
        self.0
            .iter()
            .find(|k| k.name() == name)
            .cloned()
            .ok_or_else(|| {
                SyncError::Usage(format!(
                    "unknown kind of replica {name:?}; this weave knows {}",
                    self.names().join(", ")
                ))
            })
    }

    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|k| k.name().to_string()).collect()
    }
}
