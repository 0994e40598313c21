//! Operations: what one replica must do at one path to reach a plan's
//! final state. The engine derives them (final vs current entry); a
//! replica of any kind carries them out.

use crate::entry::{Entry, LocalEntry, Object};
use crate::id::Hash;

/// What one operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Remove what is at the path (file, symlink or empty directory).
    Remove,
    MakeDir,
    WriteFile,
    WriteSymlink,
    /// Change permissions (and, for files, the mtime) only.
    SetMeta,
    /// Nothing on disk: record the new version in the index.
    Record,
}

/// One operation on one path of one replica.
#[derive(Debug, Clone)]
pub struct Op {
    pub kind: OpKind,
    pub path: String,
    /// What the index says is at the path now (None: nothing).
    pub current: Option<LocalEntry>,
    /// The version to record once the operation is done.
    pub target: Entry,
}

impl Op {
    /// For a file write: the content it puts at the path, and its size.
    pub fn writes(&self) -> Option<(Hash, u64)> {
        match (&self.kind, &self.target.object) {
            (OpKind::WriteFile, Object::File { content, size }) => Some((*content, *size)),
            _ => None,
        }
    }

    /// The content of the file at the path now, as the index has it (the
    /// old version a write replaces).
    pub fn old_content(&self) -> Option<Hash> {
        self.current.as_ref().and_then(|c| c.entry.object.content())
    }
}
