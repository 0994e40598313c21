//! The version store: old versions of a replica's files, kept inside its
//! state directory (`.weave/versions/`) before a sync overwrites or
//! deletes them, deduplicated by chunk.
//!
//! - `catalog.redb` holds one record per version (path, content id, size,
//!   mode, mtime, the replica that made it, when it was saved, its chunk
//!   list), an index by path, and where each stored chunk is.
//! - `packs/NNNNNNNN.pack` hold the chunks, each record
//!   `hash (32) | length (u32 LE) | data`, appended and flushed before the
//!   catalog refers to them. Every chunk read back is verified.
//!
//! Crash safety: a pack is only appended to, and made durable before the
//! catalog transaction that refers to it commits; pruning commits the
//! catalog first and removes or rewrites packs after. Whatever a crash
//! leaves (pack tails, packs no record refers to) is garbage that the next
//! [`Store::prune`] removes; it is never read as data.

mod catalog;
mod error;
pub mod history;
mod pack;
mod prune;
mod read;
pub mod retention;
mod save;

use redb::Database;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use weave_chunk::ChunkList;
use weave_core::{Hash, Meta, ReplicaId};

use catalog::{create_catalog, CATALOG};
use error::OrCatalog;
pub use error::{ReadError, StoreError};
use pack::PACKS;
pub use retention::Policy;
pub use save::NotSaved;

/// The store's directory inside the state directory.
pub const VERSIONS_DIR: &str = "versions";

/// Why a version was saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    /// Another replica's version replaced it (or won a conflict over it).
    Replaced,
    /// Another replica deleted it.
    Deleted,
    /// `weave restore` put another version in its place.
    Restored,
}

impl Reason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Replaced => "replaced",
            Reason::Deleted => "deleted",
            Reason::Restored => "replaced by a restore",
        }
    }
}

/// One stored version of one path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub id: u64,
    pub path: String,
    pub content: Hash,
    pub size: u64,
    pub mode: u32,
    pub mtime_ns: i64,
    /// The replica whose change made this version.
    pub origin: ReplicaId,
    /// When it was saved (it was the path's content until then).
    pub saved_at_ns: i64,
    pub reason: Reason,
    pub chunks: ChunkList,
    /// Its owner and extended attributes, where its replica kept any
    /// (versions saved before weave kept them have none).
    pub meta: Option<Box<Meta>>,
}

/// A version as catalogs before metadata stored it.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
pub(crate) struct VersionV1 {
    id: u64,
    path: String,
    content: Hash,
    size: u64,
    mode: u32,
    mtime_ns: i64,
    origin: ReplicaId,
    saved_at_ns: i64,
    reason: Reason,
    chunks: ChunkList,
}

impl Version {
    /// A stored version record of either layout.
    pub(crate) fn decode(bytes: &[u8]) -> postcard::Result<Version> {
        match postcard::from_bytes::<Version>(bytes) {
            Ok(v) => Ok(v),
            Err(e) => match postcard::take_from_bytes::<VersionV1>(bytes) {
                Ok((o, [])) => Ok(Version {
                    id: o.id,
                    path: o.path,
                    content: o.content,
                    size: o.size,
                    mode: o.mode,
                    mtime_ns: o.mtime_ns,
                    origin: o.origin,
                    saved_at_ns: o.saved_at_ns,
                    reason: o.reason,
                    chunks: o.chunks,
                    meta: None,
                }),
                _ => Err(e),
            },
        }
    }
}

/// A file's old version to save, held in `file` (a link to the old inode).
pub struct ToSave<'a> {
    pub path: &'a str,
    pub file: &'a Path,
    pub chunks: &'a ChunkList,
    pub mode: u32,
    pub mtime_ns: i64,
    pub origin: ReplicaId,
    pub reason: Reason,
    /// Its owner and extended attributes, if any were kept.
    pub meta: Option<&'a Meta>,
    /// The file's stat proves it holds the recorded content (it was
    /// checked against the index just before it was moved aside, and was
    /// not racy): a file taken whole into the store is not read again.
    pub trusted: bool,
    /// The store may take the file itself (rename it into the store)
    /// when most of its chunks are new to the store.
    pub movable: bool,
}

/// What a prune did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Pruned {
    pub versions_dropped: u64,
    pub versions_kept: u64,
    /// Bytes of pack files removed or given back by rewriting.
    pub bytes_freed: u64,
    pub bytes_kept: u64,
}

/// A chunk that could not be read back, and the versions that need it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Damage {
    pub chunk: String,
    pub problem: String,
    pub versions: Vec<u64>,
}

pub struct Store {
    dir: PathBuf,
    /// The catalog's file (what its errors name).
    catalog: PathBuf,
    db: Database,
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens the store of the replica whose state directory is
    /// `state_dir`, creating it if it is not there yet.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let dir = state_dir.join(VERSIONS_DIR);
        std::fs::create_dir_all(dir.join(PACKS))
            .map_err(|e| StoreError::io(&dir, "cannot create", e))?;
        let catalog = dir.join(CATALOG);
        if !catalog.exists() {
            create_catalog(&dir)?;
        }
        let db = open_waiting(&catalog, IN_USE_WAIT)?;
        Ok(Store { dir, catalog, db })
    }

    /// Opens the store if the replica has one.
    pub fn open_existing(state_dir: &Path) -> Result<Option<Store>, StoreError> {
        if !state_dir.join(VERSIONS_DIR).join(CATALOG).exists() {
            return Ok(None);
        }
        Store::open(state_dir).map(Some)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes the store takes on disk (catalog and packs).
    pub fn disk_usage(&self) -> u64 {
        let cat = std::fs::metadata(&self.catalog)
            .map(|m| m.len())
            .unwrap_or(0);
        cat + self
            .packs()
            .map(|p| p.iter().map(|x| x.1).sum())
            .unwrap_or(0)
    }
}

/// How long an open waits for another process (a sync keeping old
/// versions, a `weave history` or `restore`) to let go of the catalog.
const IN_USE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Opens the catalog at `path`; while another process has it open (redb
/// allows one), tries again every 50 ms for up to `wait`.
fn open_waiting(path: &Path, wait: std::time::Duration) -> Result<Database, StoreError> {
    let t = std::time::Instant::now();
    loop {
        match Database::create(path) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if t.elapsed() < wait => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            r => return r.or_catalog(path),
        }
    }
}

/// The distinct chunks of a list.
pub(crate) fn unique(list: &ChunkList) -> HashSet<Hash> {
    // Runs of zeros are holes, not stored chunks.
    list.chunks
        .iter()
        .filter(|c| !c.is_zero())
        .map(|c| c.hash)
        .collect()
}

/// A chunk list for tests: (byte the hash is made of, length) per chunk.
#[cfg(test)]
pub(crate) fn test_list(chunks: &[(u8, u32)]) -> ChunkList {
    ChunkList {
        chunks: chunks
            .iter()
            .map(|&(h, len)| weave_chunk::ChunkRef {
                hash: Hash([h; 32]),
                len,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store another process (here: another handle) has open is waited
    /// for, not refused: `weave history` while a daemon's sync keeps old
    /// versions. A wait that runs out says the catalog is in use.
    #[test]
    fn a_store_in_use_is_waited_for() {
        let t = tempfile::tempdir().unwrap();
        let held = Store::open(t.path()).unwrap();
        let catalog = held.catalog.clone();
        let refused = open_waiting(&catalog, std::time::Duration::from_millis(200));
        assert!(refused.is_err(), "opened while in use");
        let state = t.path().to_path_buf();
        let opener = std::thread::spawn(move || Store::open(&state).map(|_| ()));
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(held);
        opener.join().unwrap().expect("opened once let go");
    }
}

#[cfg(test)]
mod version_tests {
    use super::*;

    /// Records of catalogs from before metadata was kept still read.
    #[test]
    fn versions_of_either_layout_decode() {
        let chunks = test_list(&[(1, 5)]);
        let old = postcard::to_stdvec(&VersionV1 {
            id: 3,
            path: "p".into(),
            content: Hash([2; 32]),
            size: 5,
            mode: 0o600,
            mtime_ns: 9,
            origin: ReplicaId(4),
            saved_at_ns: 10,
            reason: Reason::Deleted,
            chunks: chunks.clone(),
        })
        .unwrap();
        let v = Version::decode(&old).unwrap();
        assert_eq!((v.id, v.path.as_str(), v.size, v.meta), (3, "p", 5, None));
        let new = Version {
            meta: Some(Box::new(Meta {
                owner: None,
                xattrs: vec![weave_core::Xattr {
                    name: "user.a".into(),
                    value: b"1".to_vec(),
                }],
                link: None,
            })),
            ..v
        };
        let bytes = postcard::to_stdvec(&new).unwrap();
        assert_eq!(Version::decode(&bytes).unwrap(), new);
    }
}
