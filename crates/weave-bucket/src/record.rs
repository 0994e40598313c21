//! The records of a bucket's pool, and the view a reader merges from all
//! of them.
//!
//! Each sync that changes a bucket adds records under a log of its own
//! (`logs/WRITER/N`, a new random writer for each sync that opens the
//! bucket): nobody ever writes an object another writer wrote, so there
//! is nothing to lock. A record holds versions of paths (weave's entries,
//! with their version vectors), the chunk-tree nodes of the contents
//! they hold that the bucket did not have (a new version of a large file
//! shares most of its tree with the old one), where each new chunk is (pack, offset, length), and what the
//! bucket replica integrated of other replicas. A reader merges every
//! record: of the versions of a path it keeps the one that has seen the
//! others; of versions that are concurrent (two devices pushed at the
//! same moment), one chosen the same way by every reader, while the
//! device that made the other still holds it and meets the conflict at
//! its next sync.

use crate::crypto::{self, Keys};
use crate::BucketError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use weave_chunk::{ChunkList, Node};
use weave_core::vv::Causality;
use weave_core::{Entry, Hash, ReplicaId};

/// The format of records and packs; a bucket says it in its config.
pub const FORMAT: u32 = 1;

/// The most a record may hold once opened (a damaged or hostile one is
/// refused rather than read into memory).
pub const RECORD_MAX: usize = 1 << 30;

/// Where a chunk is: the pack, and the sealed frame's offset and length.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ChunkAt {
    pub hash: Hash,
    /// Index into [`Record::packs`].
    pub pack: u32,
    pub offset: u64,
    pub len: u32,
}

/// One record of a writer's log.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Record {
    /// Versions of paths this record adds.
    pub entries: Vec<Entry>,
    /// Encoded chunk-tree nodes (see [`weave_chunk::Node`]) of contents
    /// those hold, by hash, not in the bucket before.
    pub nodes: Vec<(Hash, Vec<u8>)>,
    /// The packs the chunks of this record are in (their object ids).
    pub packs: Vec<String>,
    /// Where the new chunks are.
    pub chunks: Vec<ChunkAt>,
    /// What the bucket replica integrated of other replicas: their
    /// sequence numbers.
    pub integrated: Vec<(ReplicaId, u64)>,
    /// The fingerprint of the ignore patterns that integration was under.
    pub ignore_fingerprint: Option<u64>,
    /// When it was written (milliseconds since the epoch).
    pub time_ms: u64,
}

impl Record {
    /// The record, sealed for object `name`: postcard, zstd, padded.
    pub fn seal(&self, keys: &Keys, name: &str) -> Vec<u8> {
        let plain = postcard::to_allocvec(self).expect("a record encodes");
        let packed = zstd::bulk::compress(&plain, 3).expect("zstd compresses in memory");
        keys.seal(&aad(name), &crypto::pad(&packed))
    }

    /// The record sealed in object `name`: refused, with the object
    /// named, when it was changed, cut short or sealed for another name.
    pub fn open(keys: &Keys, name: &str, sealed: &[u8]) -> Result<Record, BucketError> {
        let damaged = |problem: &str| BucketError::Damaged {
            object: name.to_string(),
            problem: problem.to_string(),
        };
        let padded = keys
            .open(&aad(name), sealed)
            .ok_or_else(|| damaged("it does not authenticate (changed, cut short, or not written with this bucket's key)"))?;
        let packed = crypto::unpad(&padded).ok_or_else(|| damaged("its padding is wrong"))?;
        let plain = zstd::bulk::decompress(packed, RECORD_MAX)
            .map_err(|_| damaged("it does not decompress"))?;
        let r: Record = postcard::from_bytes(&plain).map_err(|_| damaged("it does not decode"))?;
        for e in &r.entries {
            weave_core::path::validate(&e.path)
                .map_err(|_| damaged(&format!("it holds a bad path {:?}", e.path)))?;
        }
        if r.chunks.iter().any(|c| c.pack as usize >= r.packs.len()) {
            return Err(damaged("a chunk names a pack it does not list"));
        }
        if r.nodes
            .iter()
            .any(|(h, b)| weave_chunk::Node::decode(b, h).is_none())
        {
            return Err(damaged("a chunk-tree node is not its hash"));
        }
        Ok(r)
    }
}

fn aad(name: &str) -> Vec<u8> {
    let mut a = b"weave-bucket v1 record ".to_vec();
    a.extend_from_slice(name.as_bytes());
    a
}

/// Where a chunk is, in the merged view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    pub pack: Arc<str>,
    pub offset: u64,
    pub len: u32,
}

/// Everything a bucket holds, merged from all its records.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// Per path, the version every reader takes (once [`View::settle`]d).
    pub entries: BTreeMap<String, Entry>,
    /// Per path, the versions no other version has seen, as records come.
    maximal: BTreeMap<String, Vec<Entry>>,
    /// Chunk-tree nodes, by hash: a content's list is its tree from the
    /// node that is its id.
    pub nodes: HashMap<Hash, Node>,
    pub chunks: HashMap<Hash, Located>,
    /// Per replica, the most the bucket integrated of it.
    pub integrated: HashMap<ReplicaId, u64>,
    /// The ignore fingerprint of the newest record that has one.
    pub ignore_fingerprint: Option<u64>,
    newest: u64,
    /// How many records hold versions: the bucket replica's sequence
    /// number (records are only ever added).
    pub changes: u64,
}

impl View {
    /// Takes in one record.
    pub fn add(&mut self, r: Record) {
        if !r.entries.is_empty() {
            self.changes += 1;
        }
        for e in r.entries {
            let versions = self.maximal.entry(e.path.clone()).or_default();
            if versions.iter().any(|have| {
                matches!(
                    have.vv.compare(&e.vv),
                    Causality::Dominates | Causality::Equal
                )
            }) {
                continue;
            }
            versions.retain(|have| e.vv.compare(&have.vv) != Causality::Dominates);
            versions.push(e);
        }
        for (h, b) in r.nodes {
            if let Some(n) = Node::decode(&b, &h) {
                self.nodes.insert(h, n);
            }
        }
        let packs: Vec<Arc<str>> = r.packs.iter().map(|p| Arc::from(p.as_str())).collect();
        for c in r.chunks {
            self.chunks.entry(c.hash).or_insert(Located {
                pack: packs[c.pack as usize].clone(),
                offset: c.offset,
                len: c.len,
            });
        }
        for (id, seq) in r.integrated {
            let s = self.integrated.entry(id).or_insert(0);
            *s = (*s).max(seq);
        }
        if r.ignore_fingerprint.is_some() && r.time_ms >= self.newest {
            self.newest = r.time_ms;
            self.ignore_fingerprint = r.ignore_fingerprint;
        }
    }

    /// Settles every path on one version: of versions no other has seen
    /// (concurrent ones, pushed by two devices at the same moment), the
    /// first in an order every reader shares (the newer mtime, then the
    /// version vector, then the content). The device that made another
    /// still holds it, and meets the conflict at its next sync.
    pub fn settle(&mut self) {
        for (path, versions) in std::mem::take(&mut self.maximal) {
            if let Some(e) = versions.into_iter().max_by(|a, b| key(a).cmp(&key(b))) {
                self.entries.insert(path, e);
            }
        }
    }
}

impl View {
    /// The chunk list of `content`, from its tree, if the bucket holds
    /// every node of it.
    pub fn list(&self, content: &Hash) -> Option<ChunkList> {
        let root = self.nodes.get(content)?;
        let size = root.children.iter().map(|c| c.1).sum();
        weave_chunk::resolve::<_, std::convert::Infallible>(content, size, &self.nodes, |want| {
            Ok(vec![None; want.len()])
        })
        .ok()
    }

    /// Whether the bucket holds `content`'s tree (its root node).
    pub fn has_list(&self, content: &Hash) -> bool {
        self.nodes.contains_key(content)
    }
}

fn key(e: &Entry) -> (i64, Vec<(ReplicaId, u64)>, Option<Hash>, u64) {
    (
        e.mtime_ns,
        e.vv.pairs().to_vec(),
        e.object.content(),
        e.origin.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use weave_core::{Object, VersionVector};

    fn entry(path: &str, vv: &[(u64, u64)], mtime: i64, c: u8) -> Entry {
        Entry {
            path: path.into(),
            object: Object::File {
                size: 1,
                content: Hash([c; 32]),
            },
            mode: 0o644,
            mtime_ns: mtime,
            vv: VersionVector::from_pairs(vv.iter().map(|&(r, n)| (ReplicaId(r), n)).collect()),
            origin: ReplicaId(vv[0].0),
            meta: None,
        }
    }

    #[test]
    fn a_record_opens_only_as_itself() {
        let keys = Keys::from_master(&Keys::new_master());
        let r = Record {
            entries: vec![entry("a/b", &[(1, 1)], 5, 1)],
            integrated: vec![(ReplicaId(1), 3)],
            time_ms: 9,
            ..Default::default()
        };
        let s = r.seal(&keys, "logs/w/1");
        assert_eq!(Record::open(&keys, "logs/w/1", &s).unwrap(), r);
        // Moved to another name, cut short, changed: each refused, named.
        for (name, bytes) in [
            ("logs/w/2", s.clone()),
            ("logs/w/1", s[..s.len() - 3].to_vec()),
            ("logs/w/1", {
                let mut b = s.clone();
                b[40] ^= 0x20;
                b
            }),
        ] {
            let e = Record::open(&keys, name, &bytes).unwrap_err();
            assert!(e.to_string().contains(name), "{e}");
        }
        // Small records are padded: their size says nothing.
        assert_eq!(
            s.len() as u64,
            crypto::PAD_MIN + crypto::SEAL_OVERHEAD as u64
        );
    }

    #[test]
    fn the_view_keeps_a_version_no_other_saw_whatever_the_order() {
        // `old` has the newest mtime, but `new` has seen it.
        let old = entry("f", &[(1, 1)], 30, 1);
        let new = entry("f", &[(1, 2)], 5, 2);
        let other = entry("f", &[(2, 1)], 20, 3); // concurrent with both
        for order in [
            vec![&old, &new, &other],
            vec![&other, &new, &old],
            vec![&new, &other, &old],
        ] {
            let mut v = View::default();
            for e in order {
                v.add(Record {
                    entries: vec![e.clone()],
                    ..Default::default()
                });
            }
            v.settle();
            // `other` and `new` are concurrent: the newer mtime is kept,
            // by every reader; `old` never comes back.
            assert_eq!(v.entries["f"], other);
            assert_eq!(v.changes, 3);
        }
    }
}
