//! The replicated record: one entry per path.

use crate::id::{Hash, ReplicaId};
use crate::meta::Meta;
use crate::vv::VersionVector;
use serde::{Deserialize, Serialize};

/// What a path holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Object {
    /// A regular file: its size and content id (the root of its chunk tree).
    File {
        size: u64,
        content: Hash,
    },
    Dir,
    /// A symbolic link, synced as a link and never followed.
    Symlink {
        target: String,
    },
    /// A tombstone: the path was deleted.
    Deleted,
}

impl Object {
    pub fn is_deleted(&self) -> bool {
        matches!(self, Object::Deleted)
    }
    pub fn is_dir(&self) -> bool {
        matches!(self, Object::Dir)
    }
    pub fn is_live(&self) -> bool {
        !self.is_deleted()
    }
    /// A file's content id.
    pub fn content(&self) -> Option<Hash> {
        match self {
            Object::File { content, .. } => Some(*content),
            _ => None,
        }
    }
    pub fn kind_name(&self) -> &'static str {
        match self {
            Object::File { .. } => "file",
            Object::Dir => "directory",
            Object::Symlink { .. } => "symlink",
            Object::Deleted => "deleted",
        }
    }
}

/// One version of one path, as every replica sees it. Local details (the
/// sequence number, the on-disk stat) live beside it in the index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative, normalized, '/'-separated UTF-8 path.
    pub path: String,
    pub object: Object,
    /// Permission bits (`0o777` mask). 0 for symlinks and tombstones.
    pub mode: u32,
    /// Modification time in nanoseconds since the Unix epoch (files only;
    /// 0 for directories, symlinks and tombstones).
    pub mtime_ns: i64,
    pub vv: VersionVector,
    /// The replica whose change produced this version.
    pub origin: ReplicaId,
    /// Owner and extended attributes, where any are kept (see
    /// [`crate::meta`]); None: nothing beyond mode and mtime.
    pub meta: Option<Box<Meta>>,
}

impl Entry {
    /// Same object and same metadata (the version vector aside).
    pub fn same_state(&self, other: &Entry) -> bool {
        self.object == other.object
            && self.mode == other.mode
            && self.mtime_ns == other.mtime_ns
            && self.meta == other.meta
    }

    /// Identical in every replicated field.
    pub fn identical(&self, other: &Entry) -> bool {
        self.same_state(other) && self.vv == other.vv && self.origin == other.origin
    }

    pub fn is_live(&self) -> bool {
        self.object.is_live()
    }

    /// The order used to pick a winner among concurrent versions: newer
    /// mtime first, then the larger replica id, then the object itself so
    /// that the order is total. It depends only on the versions, never on
    /// which replica computes it (I-1).
    pub fn precedence_key(&self) -> (i64, ReplicaId, u8, Vec<u8>) {
        let (tag, bytes) = match &self.object {
            Object::Deleted => (0u8, Vec::new()),
            Object::Dir => (1, Vec::new()),
            Object::Symlink { target } => (2, target.as_bytes().to_vec()),
            Object::File { content, size } => {
                let mut v = content.0.to_vec();
                v.extend_from_slice(&size.to_be_bytes());
                (3, v)
            }
        };
        (self.mtime_ns, self.origin, tag, bytes)
    }
}

/// What this replica saw on disk when it last recorded a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub mode: u32,
    /// Recorded so close to the file's last change that a later change
    /// could keep the same timestamps: the next scan reads the file again.
    pub racy: bool,
}

/// An index entry: the replicated record plus local bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEntry {
    pub entry: Entry,
    /// This replica's sequence number of the change that produced it.
    pub seq: u64,
    /// None for tombstones and for entries not yet on disk.
    pub stat: Option<Stat>,
}
