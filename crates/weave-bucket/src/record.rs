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
    /// The packs the chunks of this record are in (their object ids),
    /// and their sizes.
    pub packs: Vec<String>,
    pub pack_sizes: Vec<u64>,
    /// Where the new chunks are.
    pub chunks: Vec<ChunkAt>,
    /// What the bucket replica integrated of other replicas: their
    /// sequence numbers.
    pub integrated: Vec<(ReplicaId, u64)>,
    /// The fingerprint of the ignore patterns that integration was under.
    pub ignore_fingerprint: Option<u64>,
    /// The count of records with versions its writer had read and
    /// written when it wrote this one: which of two records saying what
    /// was integrated is the later.
    pub at: u64,
    /// When it was written (milliseconds since the epoch).
    pub time_ms: u64,
    /// When each of `entries` was first recorded, where that is not
    /// `time_ms` (a prune's compaction keeps them): empty, or one per
    /// entry. Sealed after the record's own encoding, so a record
    /// without it is read as before.
    #[serde(skip)]
    pub entry_times: Vec<u64>,
}

impl Record {
    /// A record of where the chunks of one pack are: the pack `id`, its
    /// `size`, and its chunks as [`crate::pool::Pack::finish`] gives them.
    pub fn of_pack(id: String, size: u64, framed: Vec<(Hash, u64, u32)>) -> Record {
        Record {
            packs: vec![id],
            pack_sizes: vec![size],
            chunks: framed
                .into_iter()
                .map(|(hash, offset, len)| ChunkAt {
                    hash,
                    pack: 0,
                    offset,
                    len,
                })
                .collect(),
            ..Default::default()
        }
    }

    /// The record, sealed for object `name`: postcard, zstd, padded.
    pub fn seal(&self, keys: &Keys, name: &str) -> Vec<u8> {
        let mut plain = postcard::to_allocvec(self).expect("a record encodes");
        if !self.entry_times.is_empty() {
            plain.extend(postcard::to_allocvec(&self.entry_times).expect("times encode"));
        }
        seal_bytes(keys, "record", name, &plain)
    }

    /// When entry `i` was first recorded.
    pub fn entry_time(&self, i: usize) -> u64 {
        self.entry_times.get(i).copied().unwrap_or(self.time_ms)
    }

    /// The record sealed in object `name`: refused, with the object
    /// named, when it was changed, cut short or sealed for another name.
    pub fn open(keys: &Keys, name: &str, sealed: &[u8]) -> Result<Record, BucketError> {
        let plain = open_bytes(keys, "record", name, sealed)?;
        let damaged = |problem: &str| BucketError::Damaged {
            object: name.to_string(),
            problem: problem.to_string(),
        };
        let (mut r, rest): (Record, _) =
            postcard::take_from_bytes(&plain).map_err(|_| damaged("it does not decode"))?;
        if !rest.is_empty() {
            r.entry_times = postcard::from_bytes(rest)
                .ok()
                .filter(|t: &Vec<u64>| t.len() == r.entries.len())
                .ok_or_else(|| damaged("its entries' times do not decode"))?;
        }
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

/// `value` sealed as object `name` of kind `kind` (a mark, say).
pub(crate) fn seal_value<T: Serialize>(keys: &Keys, kind: &str, name: &str, value: &T) -> Vec<u8> {
    let plain = postcard::to_allocvec(value).expect("a bucket object encodes");
    seal_bytes(keys, kind, name, &plain)
}

/// `plain` zstd-compressed, padded, then sealed bound to the kind and
/// the name of the object it goes in.
fn seal_bytes(keys: &Keys, kind: &str, name: &str, plain: &[u8]) -> Vec<u8> {
    let packed = zstd::bulk::compress(plain, 3).expect("zstd compresses in memory");
    keys.seal(&aad(kind, name), &crypto::pad(&packed))
}

/// The value of kind `kind` sealed in object `name`.
pub(crate) fn open_value<T: serde::de::DeserializeOwned>(
    keys: &Keys,
    kind: &str,
    name: &str,
    sealed: &[u8],
) -> Result<T, BucketError> {
    let plain = open_bytes(keys, kind, name, sealed)?;
    postcard::from_bytes(&plain).map_err(|_| BucketError::Damaged {
        object: name.to_string(),
        problem: "it does not decode".into(),
    })
}

/// What [`seal_bytes`] sealed: refused, with the object named, when it
/// was changed, cut short or sealed for another name or kind.
fn open_bytes(keys: &Keys, kind: &str, name: &str, sealed: &[u8]) -> Result<Vec<u8>, BucketError> {
    let damaged = |problem: &str| BucketError::Damaged {
        object: name.to_string(),
        problem: problem.to_string(),
    };
    let padded = keys.open(&aad(kind, name), sealed).ok_or_else(|| {
        damaged(
            "it does not authenticate (changed, cut short, or not written with this bucket's key)",
        )
    })?;
    let packed = crypto::unpad(&padded).ok_or_else(|| damaged("its padding is wrong"))?;
    zstd::bulk::decompress(packed, RECORD_MAX).map_err(|_| damaged("it does not decompress"))
}

fn aad(kind: &str, name: &str) -> Vec<u8> {
    format!("weave-bucket v1 {kind} {name}").into_bytes()
}

/// Where a chunk is, in the merged view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    pub pack: Arc<str>,
    /// The pack's size (reads are widened to whole 64 KiB blocks of it).
    pub pack_size: u64,
    pub offset: u64,
    pub len: u32,
}

/// A statement of what the bucket integrated of a replica: the `at` of
/// the record saying it, the replica, its sequence number.
pub type Said = (u64, ReplicaId, u64);

/// Everything a bucket holds, merged from all its records.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// Per path, the versions no other version has seen; one of them is
    /// the path's version ([`View::chosen`]).
    maximal: BTreeMap<String, Vec<Entry>>,
    /// Chunk-tree nodes, by hash: a content's list is its tree from the
    /// node that is its id.
    pub nodes: HashMap<Hash, Node>,
    pub chunks: HashMap<Hash, Located>,
    /// Per replica, what the bucket integrated of it: (the count of
    /// records with versions the record saying it was written against,
    /// its sequence number). The latest such record says; of records
    /// written against one count, the least.
    integrated: HashMap<ReplicaId, (u64, u64)>,
    /// The ignore fingerprint, chosen the same way.
    ignore_fingerprint: Option<(u64, u64)>,
    /// How many records hold versions.
    pub changes: u64,
    /// The largest `at` of the records: a writer's next record says one
    /// more (so records written after a prune's compaction, which holds
    /// fewer records, are still the later ones).
    pub max_at: u64,
    /// The XOR of the hashes of their names.
    names: u64,
}

impl View {
    /// Takes in record `name`.
    pub fn add(&mut self, name: &str, r: Record) {
        self.max_at = self.max_at.max(r.at);
        if !r.entries.is_empty() {
            self.changes += 1;
            let h = blake3::hash(name.as_bytes());
            self.names ^= u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"));
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
        let packs: Vec<(Arc<str>, u64)> = r
            .packs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                (
                    Arc::from(p.as_str()),
                    r.pack_sizes.get(i).copied().unwrap_or(0),
                )
            })
            .collect();
        for c in r.chunks {
            let (pack, pack_size) = packs[c.pack as usize].clone();
            self.chunks.entry(c.hash).or_insert(Located {
                pack,
                pack_size,
                offset: c.offset,
                len: c.len,
            });
        }
        for (id, seq) in r.integrated {
            let s = self.integrated.entry(id).or_insert((r.at, seq));
            if r.at > s.0 || (r.at == s.0 && seq < s.1) {
                *s = (r.at, seq);
            }
        }
        if let Some(fp) = r.ignore_fingerprint {
            match self.ignore_fingerprint {
                Some((at, have)) if at > r.at || (at == r.at && have <= fp) => {}
                _ => self.ignore_fingerprint = Some((r.at, fp)),
            }
        }
    }

    /// The bucket replica's sequence number: the count of records with
    /// versions, and in its low 32 bits a digest of their names, so that
    /// two sets of records of one count (one removed, another added) are
    /// told apart.
    pub fn seq(&self) -> u64 {
        (self.changes << 32) | (self.names & 0xffff_ffff)
    }

    /// What the bucket integrated of each replica.
    pub fn integrated(&self) -> HashMap<ReplicaId, u64> {
        self.integrated
            .iter()
            .map(|(id, (_, s))| (*id, *s))
            .collect()
    }

    /// What the bucket integrated of each replica, and the ignore
    /// fingerprint, each with the `at` of the record that says it: what
    /// a prune's compaction keeps as it was said.
    pub fn statements(&self) -> (Vec<Said>, Option<(u64, u64)>) {
        let mut said: Vec<Said> = self
            .integrated
            .iter()
            .map(|(id, (at, seq))| (*at, *id, *seq))
            .collect();
        said.sort();
        (said, self.ignore_fingerprint)
    }

    pub fn ignore_fingerprint(&self) -> Option<u64> {
        self.ignore_fingerprint.map(|(_, fp)| fp)
    }

    /// The version of `path` every reader takes: of versions no other
    /// has seen (concurrent ones, pushed by two devices at the same
    /// moment), the first in an order every reader shares (the newer
    /// mtime, then the version vector, then the content). The device
    /// that made another still holds it, and meets the conflict at its
    /// next sync.
    pub fn chosen(&self, path: &str) -> Option<&Entry> {
        self.maximal.get(path).and_then(|v| pick(v))
    }

    /// The versions of `path` no other version has seen.
    pub fn maximal(&self, path: &str) -> &[Entry] {
        self.maximal.get(path).map_or(&[], Vec::as_slice)
    }

    /// Every path's version, as [`View::chosen`].
    pub fn all(&self) -> impl Iterator<Item = &Entry> {
        self.maximal.values().filter_map(|v| pick(v))
    }

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
}

fn pick(versions: &[Entry]) -> Option<&Entry> {
    versions.iter().max_by(|a, b| key(a).cmp(&key(b)))
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
            for (i, e) in order.into_iter().enumerate() {
                v.add(
                    &format!("logs/w/{i}"),
                    Record {
                        entries: vec![e.clone()],
                        ..Default::default()
                    },
                );
            }
            // `other` and `new` are concurrent: the newer mtime is kept,
            // by every reader; `old` never comes back.
            assert_eq!(v.chosen("f"), Some(&other));
            assert_eq!(v.changes, 3);
        }
    }

    #[test]
    fn the_sequence_number_tells_apart_sets_of_one_size() {
        let rec = || Record {
            entries: vec![entry("f", &[(1, 1)], 1, 1)],
            ..Default::default()
        };
        let mut a = View::default();
        a.add("logs/x/1", rec());
        a.add("logs/y/1", rec());
        let mut b = View::default();
        b.add("logs/x/1", rec());
        b.add("logs/z/1", rec());
        assert_eq!(a.changes, b.changes);
        assert_ne!(a.seq(), b.seq());
        assert!(a.seq() >> 32 == 2);
    }

    #[test]
    fn what_was_integrated_is_said_by_the_latest_record() {
        let said = |at: u64, seq: u64| Record {
            integrated: vec![(ReplicaId(5), seq)],
            at,
            ..Default::default()
        };
        let mut v = View::default();
        v.add("logs/a/1", said(3, 90));
        v.add("logs/b/1", said(4, 20)); // later: the replica was restored
        v.add("logs/c/1", said(4, 30));
        v.add("logs/d/1", said(2, 100));
        assert_eq!(v.integrated()[&ReplicaId(5)], 20);
    }
}
