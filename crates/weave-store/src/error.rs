//! What can go wrong in the version store, and where.
//!
//! The messages are what a user reads (after "weave: "); the fields say
//! where it happened for a caller that wants to know. An `error` field
//! holds the system's error, shown in the message (it is not a `source`,
//! so that a chain printed with `{:#}` does not repeat it).

use std::path::{Path, PathBuf};
use weave_core::Hash;

/// A failure of the store itself: the operation did not happen (for a
/// save: nothing of it is recorded).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A directory or file of the store at `path` (a pack file when one
    /// cannot be opened) could not be created, listed, opened, removed or
    /// flushed.
    #[error("version store {path}: {what}: {error}")]
    Io {
        path: PathBuf,
        what: &'static str,
        error: std::io::Error,
    },
    /// Pack `pack` of the store in `dir` could not be sized, written or
    /// flushed.
    #[error("version store {dir}: {what}: {error}")]
    Pack {
        dir: PathBuf,
        pack: u32,
        what: &'static str,
        error: std::io::Error,
    },
    /// The catalog at `path` could not be opened, read or written.
    #[error("version store {path}: catalog: {problem}")]
    Catalog { path: PathBuf, problem: String },
    /// Version `version`'s record in the catalog at `path` does not decode.
    #[error("version store {path}: catalog: a damaged version record: {problem}")]
    DamagedRecord {
        path: PathBuf,
        version: u64,
        problem: String,
    },
}

impl StoreError {
    pub(crate) fn io(path: &Path, what: &'static str, error: std::io::Error) -> StoreError {
        StoreError::Io {
            path: path.to_path_buf(),
            what,
            error,
        }
    }

    pub(crate) fn catalog(path: &Path, e: impl std::fmt::Display) -> StoreError {
        StoreError::Catalog {
            path: path.to_path_buf(),
            problem: e.to_string(),
        }
    }
}

/// Catalog errors (redb's, postcard's) as [`StoreError::Catalog`] of the
/// catalog at a path.
pub(crate) trait OrCatalog<T> {
    fn or_catalog(self, path: &Path) -> Result<T, StoreError>;
}

impl<T, E: std::fmt::Display> OrCatalog<T> for Result<T, E> {
    fn or_catalog(self, path: &Path) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::catalog(path, e))
    }
}

/// Why a version could not be read back whole. The store is not changed;
/// other versions are not affected.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The catalog could not be read (redb's message).
    #[error("{0}")]
    Catalog(String),
    #[error("chunk {} is missing from the store", .chunk.short_hex())]
    Missing { chunk: Hash },
    #[error("chunk {} has the wrong length in the store", .chunk.short_hex())]
    WrongLength { chunk: Hash },
    /// Pack `pack`, which holds `chunk`, cannot be opened.
    #[error("pack {pack} of chunk {}: {error}", .chunk.short_hex())]
    NoPack {
        pack: u32,
        chunk: Hash,
        error: std::io::Error,
    },
    /// Pack `pack` ends before `chunk` does, or cannot be read.
    #[error("chunk {}: cannot read pack {pack}: {error}", .chunk.short_hex())]
    CutShort {
        pack: u32,
        chunk: Hash,
        error: std::io::Error,
    },
    /// `chunk` in pack `pack` does not match its hash.
    #[error("chunk {} is damaged in pack {pack}", .chunk.short_hex())]
    Damaged { pack: u32, chunk: Hash },
    /// The content could not be written where it was asked for.
    #[error("cannot write: {error}")]
    Write { error: std::io::Error },
}
