//! What a coordinator remembers of a remote replica's index between syncs,
//! so the next sync asks only for the entries that changed since (by
//! sequence number) instead of the whole index.
//!
//! The cache lives in the state directory of a local replica of the sync
//! (`.weave/remotes/<replica id>`). It is only a shortcut: when it is
//! missing, unreadable, made for another replica, or ahead of the remote
//! (whose index was replaced), the whole index is asked for again.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use weave_core::LocalEntry;
use weave_core::{Entry, ReplicaId};

/// The format of the cache file; a file of another version is ignored.
/// (2: entries carry their owner and extended attributes.)
const VERSION: u32 = 2;

#[derive(Serialize, Deserialize)]
struct Cached {
    version: u32,
    id: ReplicaId,
    /// Every entry of the remote index with a sequence number up to this
    /// one is in `entries` (as it was when last fetched).
    seq: u64,
    entries: Vec<(Entry, u64)>,
}

/// A remote replica's index as last fetched.
pub struct IndexCache {
    path: PathBuf,
    id: ReplicaId,
}

impl IndexCache {
    /// The cache of replica `id`, kept in the state directory `state`.
    pub fn new(state: &Path, id: ReplicaId) -> IndexCache {
        IndexCache {
            path: state.join("remotes").join(id.to_string()),
            id,
        }
    }

    /// True if something is remembered (usable or not: [`IndexCache::load`]
    /// tells).
    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// The entries known up to some sequence number, if the cache holds a
    /// usable copy for a remote whose latest sequence number is `remote_seq`.
    pub fn load(&self, remote_seq: u64) -> Option<(u64, BTreeMap<String, LocalEntry>)> {
        let data = std::fs::read(&self.path).ok()?;
        let c: Cached = postcard::from_bytes(&data).ok()?;
        if c.version != VERSION || c.id != self.id || c.seq > remote_seq {
            return None;
        }
        let entries = c
            .entries
            .into_iter()
            .map(|(entry, seq)| {
                (
                    entry.path.clone(),
                    LocalEntry {
                        entry,
                        seq,
                        stat: None,
                    },
                )
            })
            .collect();
        Some((c.seq, entries))
    }

    /// Remembers `entries`: the whole remote index as it is up to sequence
    /// number `seq`. Failing to write is not an error: the next sync
    /// fetches the whole index.
    pub fn save(&self, entries: &BTreeMap<String, LocalEntry>, seq: u64) {
        let c = Cached {
            version: VERSION,
            id: self.id,
            seq,
            entries: entries
                .values()
                .map(|le| (le.entry.clone(), le.seq))
                .collect(),
        };
        let Ok(bytes) = postcard::to_stdvec(&c) else {
            return;
        };
        let Some(dir) = self.path.parent() else {
            return;
        };
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        let tmp = self.path.with_extension("tmp");
        let written = std::fs::File::create(&tmp).and_then(|mut f| f.write_all(&bytes));
        if written.is_err() || std::fs::rename(&tmp, &self.path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}
