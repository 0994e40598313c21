//! weave-chunk: content-defined chunking, chunk hashing and chunk trees.
//!
//! A file is cut with FastCDC (the 2020 variant, normalization level 1) and
//! each chunk is hashed with BLAKE3. The list of chunks is grouped into a
//! tree whose node boundaries are themselves content-defined, so an edit
//! changes one leaf and the few nodes above it. The content id of a file is
//! the hash of the tree's root.
//!
//! The parameters below are part of the on-disk format and the protocol:
//! change them only together with [`CHUNKER_VERSION`].

use std::io::{self, Read};
use weave_core::Hash;

/// Version of the chunking parameters and tree layout.
pub const CHUNKER_VERSION: u32 = 1;
pub const CHUNK_MIN: u32 = 4 * 1024;
pub const CHUNK_AVG: u32 = 16 * 1024;
pub const CHUNK_MAX: u32 = 64 * 1024;
/// A node ends after a child whose hash has these low bits set (about 64
/// children per node on average) ...
const NODE_BOUNDARY_MASK: u8 = 0x3f;
/// ... or when it has this many children.
const NODE_MAX_CHILDREN: usize = 256;
/// Read window for streaming chunking.
const WINDOW: usize = 4 * 1024 * 1024;

/// One chunk of a file: its hash and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkRef {
    pub hash: Hash,
    pub len: u32,
}

/// A file's chunks in order, with the file's content id.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkList {
    pub chunks: Vec<ChunkRef>,
}

impl ChunkList {
    pub fn size(&self) -> u64 {
        self.chunks.iter().map(|c| c.len as u64).sum()
    }

    pub fn content_id(&self) -> Hash {
        content_id(&self.chunks)
    }

    /// (offset, chunk) for every chunk.
    pub fn with_offsets(&self) -> impl Iterator<Item = (u64, &ChunkRef)> {
        let mut off = 0u64;
        self.chunks.iter().map(move |c| {
            let o = off;
            off += c.len as u64;
            (o, c)
        })
    }
}

/// Cuts `data` into chunks (for data already in memory).
pub fn chunk_bytes(data: &[u8]) -> ChunkList {
    let mut chunks = Vec::new();
    for c in cdc(data) {
        let bytes = &data[c.offset..c.offset + c.length];
        chunks.push(ChunkRef {
            hash: Hash::of(bytes),
            len: c.length as u32,
        });
    }
    ChunkList { chunks }
}

fn cdc(data: &[u8]) -> fastcdc::v2020::FastCDC<'_> {
    fastcdc::v2020::FastCDC::with_level(
        data,
        CHUNK_MIN,
        CHUNK_AVG,
        CHUNK_MAX,
        fastcdc::v2020::Normalization::Level1,
    )
}

/// Cuts a stream into chunks, reading it once through a fixed window.
/// Gives the same cut points as [`chunk_bytes`] on the whole content.
pub fn chunk_reader<R: Read>(r: R) -> io::Result<ChunkList> {
    chunk_reader_with(r, &mut Vec::new())
}

/// [`chunk_reader`] with a caller-owned window buffer, reused across calls
/// (it is grown once, never cleared: scanning many small files must not
/// zero a fresh window per file).
pub fn chunk_reader_with<R: Read>(mut r: R, buf: &mut Vec<u8>) -> io::Result<ChunkList> {
    if buf.len() < WINDOW {
        buf.resize(WINDOW, 0);
    }
    let buf = &mut buf[..WINDOW];
    let mut filled = 0usize;
    let mut chunks = Vec::new();
    let mut eof = false;
    while !eof || filled > 0 {
        while !eof && filled < buf.len() {
            match r.read(&mut buf[filled..]) {
                Ok(0) => eof = true,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        let mut consumed = 0usize;
        let found: Vec<_> = cdc(&buf[..filled]).collect();
        let n = found.len();
        for (i, c) in found.into_iter().enumerate() {
            // The last chunk of a window that is not the end of the stream
            // may be cut short by the window: cut it again next round.
            if i + 1 == n && !eof {
                break;
            }
            chunks.push(ChunkRef {
                hash: Hash::of(&buf[c.offset..c.offset + c.length]),
                len: c.length as u32,
            });
            consumed = c.offset + c.length;
        }
        buf.copy_within(consumed..filled, 0);
        filled -= consumed;
        if eof && filled == 0 {
            break;
        }
    }
    Ok(ChunkList { chunks })
}

/// Hashes one tree node: its level and its children (hash, length).
fn node_hash(level: u8, children: &[(Hash, u64)]) -> Hash {
    let mut h = blake3::Hasher::new_derive_key("weave 2026-11 chunk tree node v1");
    h.update(&[level]);
    h.update(&(children.len() as u64).to_le_bytes());
    for (c, len) in children {
        h.update(&c.0);
        h.update(&len.to_le_bytes());
    }
    Hash(*h.finalize().as_bytes())
}

/// Groups one level of the tree into nodes: (node hash, bytes covered).
fn build_level(level: u8, items: &[(Hash, u64)]) -> Vec<(Hash, u64)> {
    if items.is_empty() {
        return vec![(node_hash(level, &[]), 0)];
    }
    let mut out = Vec::new();
    let mut start = 0;
    for i in 0..items.len() {
        let n = i + 1 - start;
        let boundary = items[i].0 .0[0] & NODE_BOUNDARY_MASK == NODE_BOUNDARY_MASK;
        // At least two children per node (unless at the end), so each
        // level is at most half as long as the one below.
        if (boundary && n >= 2) || n == NODE_MAX_CHILDREN || i + 1 == items.len() {
            let group = &items[start..=i];
            let len = group.iter().map(|g| g.1).sum();
            out.push((node_hash(level, group), len));
            start = i + 1;
        }
    }
    out
}

/// The content id of a file: the root hash of its chunk tree.
pub fn content_id(chunks: &[ChunkRef]) -> Hash {
    let mut items: Vec<(Hash, u64)> = chunks.iter().map(|c| (c.hash, c.len as u64)).collect();
    let mut level = 1u8;
    loop {
        let nodes = build_level(level, &items);
        if nodes.len() == 1 {
            return nodes[0].0;
        }
        items = nodes;
        level += 1;
    }
}

/// True if `data` is the chunk with hash `expected` (I-3).
pub fn verify(data: &[u8], expected: &Hash) -> bool {
    Hash::of(data) == *expected
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        let mut v = vec![0u8; n];
        r.fill(&mut v[..]);
        v
    }

    #[test]
    fn stream_and_slice_agree() {
        let data = random(WINDOW * 2 + 12345, 1);
        let a = chunk_bytes(&data);
        let b = chunk_reader(&data[..]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.size(), data.len() as u64);
        for (off, c) in a.with_offsets() {
            assert!(verify(
                &data[off as usize..off as usize + c.len as usize],
                &c.hash
            ));
            assert!(c.len <= CHUNK_MAX);
        }
    }

    #[test]
    fn empty_and_small_files() {
        let e = chunk_reader(&[][..]).unwrap();
        assert!(e.chunks.is_empty());
        let s = chunk_bytes(b"hello");
        assert_eq!(s.chunks.len(), 1);
        assert_ne!(e.content_id(), s.content_id());
        assert_ne!(s.content_id(), chunk_bytes(b"hellp").content_id());
    }

    #[test]
    fn an_insertion_changes_few_chunks() {
        let data = random(8 * 1024 * 1024, 2);
        let mut edited = vec![7u8; 100];
        edited.extend_from_slice(&data);
        let a = chunk_bytes(&data);
        let b = chunk_bytes(&edited);
        let old: std::collections::HashSet<_> = a.chunks.iter().map(|c| c.hash).collect();
        let new_chunks = b.chunks.iter().filter(|c| !old.contains(&c.hash)).count();
        assert!(new_chunks <= 2, "{new_chunks} new chunks");
        assert_ne!(a.content_id(), b.content_id());
    }

    #[test]
    fn tree_levels_shrink() {
        let items: Vec<(Hash, u64)> = (0..10_000u32)
            .map(|i| (Hash::of(&i.to_le_bytes()), 1))
            .collect();
        let l1 = build_level(1, &items);
        assert!(l1.len() <= items.len() / 2);
        assert_eq!(l1.iter().map(|x| x.1).sum::<u64>(), 10_000);
    }

    proptest::proptest! {
        #[test]
        fn chunking_is_deterministic_and_covers_input(seed in 0u64..1000, len in 0usize..300_000) {
            let data = random(len, seed);
            let a = chunk_bytes(&data);
            proptest::prop_assert_eq!(a.size(), len as u64);
            proptest::prop_assert_eq!(a.clone(), chunk_reader(&data[..]).unwrap());
        }
    }
}
