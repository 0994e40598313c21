//! weave-object: replicate any kind of named object, not only files.
//!
//! weave's engine syncs *replicas* through one trait,
//! [`weave_engine::Replica`]; directory trees are its first kind. This
//! crate makes any store of named objects — records of a small database,
//! messages of a mailbox, user accounts — a replica too, with the same
//! guarantees: version vectors, every replica deciding the same thing, no
//! lost update, concurrent changes kept visibly (a conflict copy beside the
//! object) or merged when the object type knows how, content-defined
//! chunks verified by hash, and only what changed on the wire.
//!
//! A store implements [`ObjectStore`]: list its objects (each with a
//! revision that changes whenever the object does), read one, and commit a
//! batch of puts and deletes atomically, each conditional on the object
//! being as weave last saw it. [`ObjectReplica`] puts weave's index (in a
//! state directory the caller chooses) beside the store and is a
//! [`weave_engine::Replica`]: [`weave_engine::run`] syncs any number of
//! them, in this process or over a session ([`weave_net`'s `serve_kinds`
//! and `RemoteReplica`), unchanged. To be opened by path (`weave sync
//! --kind NAME`, `weave serve`), an object type implements [`ObjectType`];
//! [`ObjectKind`] turns it into a [`weave_engine::Kind`].
//!
//! # Names, content, conflicts
//!
//! - An object's name is one component of a path: non-empty UTF-8, no
//!   `/`, no NUL, not `.`, `..` or `.weave`. A store that holds other
//!   names gets an error for each of them at scan time; they are not
//!   synced.
//! - Content is bytes, read and written whole (objects are held in memory
//!   while a sync moves them).
//! - Concurrent changes to one object are settled by the planner, as for
//!   files: modify beats delete; with the default keep-both policy the
//!   newer version keeps the name and the older one becomes a new object
//!   named `NAME.weave-conflict-YYYYMMDD-HHMMSS-<replica>` (listed in the
//!   sync's [`weave_engine::Report::conflicts`]; the store is told with
//!   [`Change::Put`]'s `conflict_copy`, to surface it as it sees fit). An
//!   object type that defines [`ObjectType::merge`] gets one merged
//!   version instead.
//! - An object's modification time (`mtime_ns`) is replicated with it and
//!   decides which concurrent version keeps the name.
//!
//! # Example
//!
//! A store kept in memory, two replicas of it, one sync:
//!
//! ```
//! use std::collections::BTreeMap;
//! use weave_object::{Change, Listed, ObjectReplica, ObjectStore, Outcome, StoreError};
//!
//! /// name → (revision, mtime, content)
//! #[derive(Default)]
//! struct Memory {
//!     objects: BTreeMap<String, (u64, i64, Vec<u8>)>,
//!     next_rev: u64,
//! }
//!
//! impl Memory {
//!     fn put(&mut self, name: &str, data: &[u8], mtime_ns: i64) -> u64 {
//!         self.next_rev += 1;
//!         self.objects.insert(name.into(), (self.next_rev, mtime_ns, data.to_vec()));
//!         self.next_rev
//!     }
//! }
//!
//! impl ObjectStore for Memory {
//!     fn list(&mut self) -> Result<Vec<Listed>, StoreError> {
//!         Ok(self.objects.iter().map(|(name, (rev, mtime_ns, _))| Listed {
//!             name: name.clone(),
//!             revision: *rev,
//!             mtime_ns: *mtime_ns,
//!         }).collect())
//!     }
//!     fn read(&mut self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
//!         Ok(self.objects.get(name).map(|o| o.2.clone()))
//!     }
//!     fn commit(&mut self, changes: &[Change]) -> Result<Vec<Outcome>, StoreError> {
//!         // One thread owns this store, so the batch is atomic as it is.
//!         let mut out = Vec::new();
//!         for c in changes {
//!             let now = self.objects.get(c.name()).map(|o| o.0);
//!             if now != c.expect() {
//!                 out.push(Outcome::Stale);
//!                 continue;
//!             }
//!             out.push(match c {
//!                 Change::Put { name, data, mtime_ns, .. } => Outcome::Done {
//!                     revision: Some(self.put(name, data, *mtime_ns)),
//!                 },
//!                 Change::Delete { name, .. } => {
//!                     self.objects.remove(name);
//!                     Outcome::Done { revision: None }
//!                 }
//!             });
//!         }
//!         Ok(out)
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let state = tempfile::tempdir()?;
//! let mut a = Memory::default();
//! a.put("alice", b"alice@example.org", 1_700_000_000_000_000_000);
//! let mut b = Memory::default();
//! b.put("bob", b"bob@example.org", 1_700_000_000_000_000_000);
//!
//! let mut reps: Vec<Box<dyn weave_engine::Replica>> = vec![
//!     Box::new(ObjectReplica::open(a, &state.path().join("a"), "a", false)?),
//!     Box::new(ObjectReplica::open(b, &state.path().join("b"), "b", false)?),
//! ];
//! let report = weave_object::sync(&mut reps, &weave_engine::SyncOptions::default())?;
//! assert!(report.in_sync);
//! assert_eq!(report.created, 2);
//! # Ok(())
//! # }
//! ```

mod observed;
mod plan;
mod replica;

pub use replica::ObjectReplica;
pub use weave_engine::{Kind, Merge, Replica};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;
use weave_engine::{Report, Roles, SyncError, SyncOptions};

/// An object as its store lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    /// Changes (to any value) whenever the object's content changes: a
    /// revision counter, or a hash of the content.
    pub revision: u64,
    /// When its content last changed (nanoseconds since the Unix epoch),
    /// as the store keeps it: the time given to the [`Change::Put`] that
    /// wrote it, or the time of a local edit. 0 if the store keeps none.
    pub mtime_ns: i64,
}

/// One change weave asks a store to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Make `name` hold `data`, with modification time `mtime_ns`.
    Put {
        name: String,
        data: Vec<u8>,
        mtime_ns: i64,
        /// The revision the object must have now (None: it must not exist).
        expect: Option<u64>,
        /// The object is a conflict copy: the losing version of concurrent
        /// edits of another object, kept under a name of the form
        /// `NAME.weave-conflict-…`. A store may surface it its own way
        /// (flag it, file it apart); it is still an ordinary object that
        /// syncs like any other.
        conflict_copy: bool,
    },
    /// Remove `name`.
    Delete {
        name: String,
        /// The revision the object must have now.
        expect: Option<u64>,
    },
}

impl Change {
    pub fn name(&self) -> &str {
        match self {
            Change::Put { name, .. } | Change::Delete { name, .. } => name,
        }
    }

    /// The revision the object must have for the change to be made
    /// (None: it must not exist).
    pub fn expect(&self) -> Option<u64> {
        match self {
            Change::Put { expect, .. } | Change::Delete { expect, .. } => *expect,
        }
    }
}

/// What a store did with one [`Change`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Made; the object's new revision (None after a delete).
    Done { revision: Option<u64> },
    /// Not made: the object is not at the expected revision (it changed
    /// since weave listed it). weave leaves it for the next sync.
    Stale,
}

/// An error of an object store, as its implementation words it.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct StoreError(pub String);

impl StoreError {
    pub fn new(message: impl Into<String>) -> StoreError {
        StoreError(message.into())
    }
}

/// A store of named objects that weave can replicate.
///
/// weave calls it from one thread at a time. See the crate documentation
/// for an example.
pub trait ObjectStore: Send {
    /// Every object the store holds now, in any order.
    fn list(&mut self) -> Result<Vec<Listed>, StoreError>;
    /// The content of `name`, or None if it does not exist.
    fn read(&mut self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Makes `changes`, in order, as one atomic step: a crash leaves all
    /// of them made or none. Each is made only if the object is at the
    /// revision it expects; otherwise its outcome is [`Outcome::Stale`]
    /// and the others are still made. Returns one outcome per change.
    fn commit(&mut self, changes: &[Change]) -> Result<Vec<Outcome>, StoreError>;
}

/// A type of object store that weave can open by path, as `weave sync
/// --kind NAME` and `weave serve` do. [`ObjectKind`] makes it a
/// [`weave_engine::Kind`].
pub trait ObjectType: Send + Sync + 'static {
    type Store: ObjectStore + 'static;
    /// Its name (`--kind NAME`).
    fn name(&self) -> &str;
    /// Opens the store in directory `root` (it exists), creating it when
    /// it is not there yet, unless `dry_run` (then an absent store is an
    /// empty one, and nothing is created).
    fn open(&self, root: &Path, dry_run: bool) -> Result<Self::Store, StoreError>;
    /// How two concurrent versions of an object merge into one. The
    /// default, None, keeps both (a conflict copy). See [`Merge`] for what
    /// a merge must guarantee.
    fn merge(&self) -> Option<Arc<dyn Merge>> {
        None
    }
}

/// An [`ObjectType`] as a [`weave_engine::Kind`]: each replica is a
/// directory holding the store and weave's state (`.weave/`).
pub struct ObjectKind<T: ObjectType>(pub T);

impl<T: ObjectType> Kind for ObjectKind<T> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn check(&self, paths: &[PathBuf], ignore: &[String]) -> Result<Vec<PathBuf>, SyncError> {
        let canon = weave_index::check_local_replicas(paths)?;
        weave_core::ignore::Matcher::from_files(&[], ignore)?;
        Ok(canon)
    }

    fn open(
        &self,
        root: &Path,
        display: &str,
        dry_run: bool,
    ) -> Result<Box<dyn Replica>, SyncError> {
        let state = self.state_dir(root);
        weave_index::claim_kind(&state, self.0.name(), display, dry_run)?;
        let store = self
            .0
            .open(root, dry_run)
            .map_err(|e| SyncError::BadReplica {
                path: display.to_string(),
                problem: format!("cannot open its {} store ({e})", self.0.name()),
                fix: "Check the path and its permissions.".into(),
            })?;
        Ok(Box::new(ObjectReplica::open(
            store, &state, display, dry_run,
        )?))
    }

    fn merge(&self) -> Option<Arc<dyn Merge>> {
        self.0.merge()
    }
}

/// Syncs opened replicas (of one kind) with each other: every replica
/// ends with every other's changes. A shorthand for
/// [`weave_engine::run`] without roles or progress.
pub fn sync(reps: &mut [Box<dyn Replica>], opts: &SyncOptions) -> Result<Report, SyncError> {
    weave_engine::run(reps, opts, &Roles::default(), &weave_engine::NoProgress)
}

/// Why a name cannot name an object.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{0:?} contains '/'; an object's name is one path component")]
    Slash(String),
    /// Not a valid path component (empty, `..`, `.weave`, …).
    #[error(transparent)]
    Path(#[from] weave_core::path::PathError),
}

/// Checks that `name` can name an object: one path component.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.contains('/') {
        return Err(NameError::Slash(name.to_string()));
    }
    Ok(weave_core::path::validate(name)?)
}
