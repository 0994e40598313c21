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

impl ChunkRef {
    /// Whether this is a chunk of zeros in the middle of a run of them (a
    /// hole of a sparse file, say): FastCDC cuts a run of zeros into
    /// chunks of [`CHUNK_MAX`] bytes, all of one hash. Such a chunk is
    /// never sent, stored or written: a file gets a hole there. (The
    /// last chunk of a file ending in zeros may be shorter; it is data.)
    pub fn is_zero(&self) -> bool {
        self.len == CHUNK_MAX && self.hash == zero_chunk()
    }
}

/// The hash of a chunk of [`CHUNK_MAX`] zero bytes.
pub fn zero_chunk() -> Hash {
    static ZERO: std::sync::OnceLock<Hash> = std::sync::OnceLock::new();
    *ZERO.get_or_init(|| Hash::of(&[0u8; CHUNK_MAX as usize]))
}

/// Whether every byte of `data` is zero (whole words at a time: a scan of
/// a sparse file reads long runs of them).
pub fn all_zero(data: &[u8]) -> bool {
    // Blocks of 4 KiB, each folded without a branch (so the compiler can
    // use vector instructions): data that is not zero shows it at once.
    data.chunks(4096)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
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

    /// The bytes of the chunks that are not runs of zeros: what a copy
    /// of the file reads and writes.
    pub fn data_bytes(&self) -> u64 {
        self.chunks
            .iter()
            .filter(|c| !c.is_zero())
            .map(|c| c.len as u64)
            .sum()
    }

    /// Whether any chunk is a run of zeros (see [`ChunkRef::is_zero`]).
    pub fn has_zeros(&self) -> bool {
        self.chunks.iter().any(ChunkRef::is_zero)
    }

    /// The runs of consecutive chunks that are not zero runs, as (offset,
    /// length): what a copy of the file must write (the rest are holes).
    pub fn data_runs(&self) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (off, c) in self.with_offsets().filter(|(_, c)| !c.is_zero()) {
            match runs.last_mut() {
                Some((o, l)) if *o + *l == off => *l += c.len as u64,
                _ => runs.push((off, c.len as u64)),
            }
        }
        runs
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
            hash: hash_chunk(bytes),
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
pub fn chunk_reader<R: Read + Send>(r: R) -> io::Result<ChunkList> {
    chunk_reader_with(r, &mut Vec::new())
}

/// [`chunk_reader`] with a caller-owned buffer of two windows, reused
/// across calls (it is grown once, never cleared: scanning many small
/// files must not zero fresh windows per file).
///
/// A content larger than a window is read and cut one window ahead of
/// the hashing (`rayon::join`: in parallel when a worker is free), so a
/// large file is chunked at about the speed of the slower of the two.
pub fn chunk_reader_with<R: Read + Send>(mut r: R, buf: &mut Vec<u8>) -> io::Result<ChunkList> {
    if buf.len() < 2 * WINDOW {
        buf.resize(2 * WINDOW, 0);
    }
    let (mut cur, mut next) = buf[..2 * WINDOW].split_at_mut(WINDOW);
    let mut chunks = Vec::new();
    let (mut filled, mut eof) = fill(&mut r, cur, 0)?;
    let mut cuts = cut(&cur[..filled], eof);
    loop {
        let consumed = cuts.last().map_or(0, |&(o, l)| o + l);
        if eof || filled == 0 {
            chunks.extend(hash_cuts(cur, &cuts));
            return Ok(ChunkList { chunks });
        }
        // The uncut tail starts the next window (at most one chunk: a
        // window holds many, so there is always room to read more).
        let tail = filled - consumed;
        next[..tail].copy_from_slice(&cur[consumed..filled]);
        let (hashed, ahead) = rayon::join(
            || hash_cuts(cur, &cuts),
            || -> io::Result<_> {
                let (n, e) = fill(&mut r, next, tail)?;
                Ok((n, e, cut(&next[..n], e)))
            },
        );
        chunks.extend(hashed);
        (filled, eof, cuts) = ahead?;
        std::mem::swap(&mut cur, &mut next);
    }
}

/// Reads into `w` from `from` until it is full or the stream ends:
/// (bytes in `w`, stream ended).
fn fill<R: Read>(r: &mut R, w: &mut [u8], from: usize) -> io::Result<(usize, bool)> {
    let mut filled = from;
    while filled < w.len() {
        match r.read(&mut w[filled..]) {
            Ok(0) => return Ok((filled, true)),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((filled, false))
}

/// The chunks of a window, (offset, length); unless the stream ended
/// with it, without the last one, which the window may have cut short
/// (it is cut again from its start in the next window).
fn cut(window: &[u8], eof: bool) -> Vec<(usize, usize)> {
    let mut v: Vec<(usize, usize)> = cdc(window).map(|c| (c.offset, c.length)).collect();
    if !eof {
        v.pop();
    }
    v
}

fn hash_cuts(window: &[u8], cuts: &[(usize, usize)]) -> Vec<ChunkRef> {
    cuts.iter()
        .map(|&(o, l)| ChunkRef {
            hash: hash_chunk(&window[o..o + l]),
            len: l as u32,
        })
        .collect()
}

/// A chunk's hash; a run of zeros (a sparse file's hole) is not hashed
/// again.
fn hash_chunk(data: &[u8]) -> Hash {
    if data.len() == CHUNK_MAX as usize && all_zero(data) {
        return zero_chunk();
    }
    Hash::of(data)
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

/// Where one level of the tree is cut into nodes: the index ranges of
/// each node's children.
fn node_ranges(items: &[(Hash, u64)]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 0..items.len() {
        let n = i + 1 - start;
        let boundary = items[i].0 .0[0] & NODE_BOUNDARY_MASK == NODE_BOUNDARY_MASK;
        // At least two children per node (unless at the end), so each
        // level is at most half as long as the one below.
        if (boundary && n >= 2) || n == NODE_MAX_CHILDREN || i + 1 == items.len() {
            out.push(start..i + 1);
            start = i + 1;
        }
    }
    if out.is_empty() {
        out.push(0..0);
    }
    out
}

/// Groups one level of the tree into nodes: (node hash, bytes covered).
fn build_level(level: u8, items: &[(Hash, u64)]) -> Vec<(Hash, u64)> {
    node_ranges(items)
        .into_iter()
        .map(|r| {
            let group = &items[r];
            (node_hash(level, group), group.iter().map(|g| g.1).sum())
        })
        .collect()
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

/// One node of a chunk tree: its level (1: its children are chunks;
/// higher: its children are nodes of the level below) and its children
/// with the bytes each covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub level: u8,
    pub children: Vec<(Hash, u64)>,
}

/// Bytes of one encoded child: hash and length.
const CHILD_BYTES: usize = 32 + 8;

impl Node {
    pub fn hash(&self) -> Hash {
        node_hash(self.level, &self.children)
    }

    /// The wire form: level, then (hash, length little-endian) per child.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(1 + self.children.len() * CHILD_BYTES);
        v.push(self.level);
        for (h, len) in &self.children {
            v.extend_from_slice(&h.0);
            v.extend_from_slice(&len.to_le_bytes());
        }
        v
    }

    /// Decodes a node received from a peer and checks that it is the node
    /// `expected` names (I-3: a node that fails its hash is never used).
    pub fn decode(bytes: &[u8], expected: &Hash) -> Option<Node> {
        let (&level, rest) = bytes.split_first()?;
        if level == 0
            || rest.len() % CHILD_BYTES != 0
            || rest.len() / CHILD_BYTES > NODE_MAX_CHILDREN
        {
            return None;
        }
        let children = rest
            .chunks_exact(CHILD_BYTES)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(&c[..32]);
                let mut l = [0u8; 8];
                l.copy_from_slice(&c[32..]);
                (Hash(h), u64::from_le_bytes(l))
            })
            .collect();
        let n = Node { level, children };
        (n.hash() == *expected).then_some(n)
    }
}

/// Every node of a chunk list's tree, by hash, and the root (the content id).
pub fn tree(chunks: &[ChunkRef]) -> (Hash, std::collections::HashMap<Hash, Node>) {
    let mut nodes = std::collections::HashMap::new();
    let mut items: Vec<(Hash, u64)> = chunks.iter().map(|c| (c.hash, c.len as u64)).collect();
    let mut level = 1u8;
    loop {
        let mut next = Vec::new();
        for r in node_ranges(&items) {
            let group = &items[r];
            let n = Node {
                level,
                children: group.to_vec(),
            };
            let h = n.hash();
            nodes.insert(h, n);
            next.push((h, group.iter().map(|g| g.1).sum()));
        }
        if next.len() == 1 {
            return (next[0].0, nodes);
        }
        items = next;
        level += 1;
    }
}

/// Why a chunk list could not be rebuilt from its tree ([`resolve`]); `E`
/// is the error of fetching nodes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError<E: std::error::Error + 'static> {
    #[error("the chunk tree is larger than the file")]
    TooLarge,
    #[error("the peer answered a different number of tree nodes")]
    WrongCount,
    #[error("no peer has tree node {}", .0.short_hex())]
    Missing(Hash),
    #[error("tree node {} failed its hash", .0.short_hex())]
    BadNode(Hash),
    #[error("the chunk tree has uneven levels")]
    UnevenLevels,
    #[error("the chunk tree lists an impossible chunk")]
    ImpossibleChunk,
    #[error("the chunk tree does not add up to the file")]
    DoesNotAddUp,
    /// Fetching nodes failed.
    #[error(transparent)]
    Fetch(E),
}

/// Rebuilds a chunk list from its tree, fetching the nodes `known` lacks
/// one level at a time (so a deep tree costs one round per level, and a
/// subtree already known costs nothing). `fetch` gets the hashes wanted
/// and returns their encoded nodes in the same order (None: unavailable).
/// Fails when a node is missing, fails its hash, or the tree is not
/// well-formed; `size` bounds the work a hostile peer can cause.
pub fn resolve<F, E>(
    root: &Hash,
    size: u64,
    known: &std::collections::HashMap<Hash, Node>,
    mut fetch: F,
) -> Result<ChunkList, TreeError<E>>
where
    F: FnMut(&[Hash]) -> Result<Vec<Option<Vec<u8>>>, E>,
    E: std::error::Error + 'static,
{
    let mut got: std::collections::HashMap<Hash, Node> = std::collections::HashMap::new();
    // At most this many nodes in a well-formed tree of `size` bytes.
    let max_chunks = size / CHUNK_MIN as u64 + 2;
    let mut budget = max_chunks * 2 + 2;
    let mut level_wanted = vec![*root];
    let mut expect_level: Option<u8> = None;
    while !level_wanted.is_empty() {
        // Each node once: a run of zeros makes many identical ones.
        let mut seen = std::collections::HashSet::new();
        let missing: Vec<Hash> = level_wanted
            .iter()
            .filter(|h| !known.contains_key(h) && !got.contains_key(h) && seen.insert(**h))
            .copied()
            .collect();
        if missing.len() as u64 > budget {
            return Err(TreeError::TooLarge);
        }
        budget -= missing.len() as u64;
        if !missing.is_empty() {
            let data = fetch(&missing).map_err(TreeError::Fetch)?;
            if data.len() != missing.len() {
                return Err(TreeError::WrongCount);
            }
            for (h, d) in missing.iter().zip(data) {
                let d = d.ok_or(TreeError::Missing(*h))?;
                let n = Node::decode(&d, h).ok_or(TreeError::BadNode(*h))?;
                got.insert(*h, n);
            }
        }
        let mut next = Vec::new();
        let mut level = None;
        for h in &level_wanted {
            let n = known.get(h).or_else(|| got.get(h)).expect("fetched above");
            if level.is_some_and(|l| l != n.level) || expect_level.is_some_and(|l| l != n.level) {
                return Err(TreeError::UnevenLevels);
            }
            level = Some(n.level);
            if n.level > 1 {
                next.extend(n.children.iter().map(|c| c.0));
            }
        }
        if level == Some(1) {
            break;
        }
        expect_level = level.map(|l| l - 1);
        level_wanted = next;
    }
    // Flatten in order.
    let mut chunks = Vec::new();
    let mut stack = vec![*root];
    while let Some(h) = stack.pop() {
        let n = known.get(&h).or_else(|| got.get(&h)).expect("resolved");
        if n.level == 1 {
            for (c, len) in &n.children {
                if *len == 0 || *len > CHUNK_MAX as u64 || chunks.len() as u64 >= max_chunks {
                    return Err(TreeError::ImpossibleChunk);
                }
                chunks.push(ChunkRef {
                    hash: *c,
                    len: *len as u32,
                });
            }
        } else {
            stack.extend(n.children.iter().rev().map(|c| c.0));
        }
    }
    let list = ChunkList { chunks };
    if list.size() != size || list.content_id() != *root {
        return Err(TreeError::DoesNotAddUp);
    }
    Ok(list)
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
    fn streams_of_any_length_and_read_size_agree_with_slices() {
        /// Gives at most `step` bytes per read.
        struct Trickle<'a>(&'a [u8], usize);
        impl Read for Trickle<'_> {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let n = self.1.min(out.len()).min(self.0.len());
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let data = random(WINDOW * 3 + 1, 7);
        let mut scratch = Vec::new();
        for len in [
            0,
            1,
            WINDOW - 1,
            WINDOW,
            WINDOW + 1,
            2 * WINDOW,
            WINDOW * 3 + 1,
        ] {
            let want = chunk_bytes(&data[..len]);
            for step in [usize::MAX, 65_537, 4096] {
                let got = chunk_reader_with(Trickle(&data[..len], step), &mut scratch).unwrap();
                assert_eq!(got, want, "length {len}, reads of {step}");
            }
        }
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

    #[test]
    fn trees_resolve_with_few_nodes_after_an_edit() {
        let data = random(64 * 1024 * 1024, 3);
        let a = chunk_bytes(&data);
        let (root_a, nodes_a) = tree(&a.chunks);
        assert_eq!(root_a, a.content_id());
        // From nothing: every node is fetched.
        let mut fetched = 0usize;
        let list = resolve(&root_a, a.size(), &Default::default(), |want| {
            fetched += want.len();
            Ok::<_, io::Error>(
                want.iter()
                    .map(|h| nodes_a.get(h).map(|n| n.encode()))
                    .collect(),
            )
        })
        .unwrap();
        assert_eq!(list, a);
        assert_eq!(fetched, nodes_a.len());
        // One byte changed: only the nodes above the changed chunk.
        let mut edited = data.clone();
        edited[32 * 1024 * 1024] ^= 1;
        let b = chunk_bytes(&edited);
        let (root_b, nodes_b) = tree(&b.chunks);
        let mut fetched = 0usize;
        let list = resolve(&root_b, b.size(), &nodes_a, |want| {
            fetched += want.len();
            Ok::<_, io::Error>(
                want.iter()
                    .map(|h| nodes_b.get(h).map(|n| n.encode()))
                    .collect(),
            )
        })
        .unwrap();
        assert_eq!(list, b);
        assert!(fetched <= 4, "{fetched} nodes fetched");
    }

    /// A large run of zeros makes many identical nodes: each is fetched
    /// once (a sparse file's list costs little on the wire).
    #[test]
    fn identical_nodes_are_fetched_once() {
        let mut data = random(100_000, 9);
        data.resize(256 << 20, 0);
        let list = chunk_bytes(&data);
        let (root, nodes) = tree(&list.chunks);
        let mut fetched = 0usize;
        let back = resolve(&root, list.size(), &Default::default(), |want| {
            fetched += want.len();
            Ok::<_, io::Error>(
                want.iter()
                    .map(|h| nodes.get(h).map(|n| n.encode()))
                    .collect(),
            )
        })
        .unwrap();
        assert_eq!(back, list);
        // Each distinct node once (of thousands of chunks, a few nodes).
        assert_eq!(fetched, nodes.len());
        assert!(
            fetched < 10,
            "{fetched} nodes for {} chunks",
            list.chunks.len()
        );
    }

    #[test]
    fn bad_nodes_are_refused() {
        let a = chunk_bytes(&random(300_000, 4));
        let (root, nodes) = tree(&a.chunks);
        let good = nodes[&root].encode();
        let mut bad = good.clone();
        bad[5] ^= 1;
        assert!(Node::decode(&good, &root).is_some());
        assert!(Node::decode(&bad, &root).is_none());
        assert!(Node::decode(&[], &root).is_none());
        let r = resolve(&root, a.size(), &Default::default(), |w| {
            Ok::<_, io::Error>(vec![Some(bad.clone()); w.len()])
        });
        assert!(
            matches!(r, Err(TreeError::BadNode(h)) if h == root),
            "{r:?}"
        );
        // A node that claims another file's size.
        let r = resolve(&root, a.size() + 1, &Default::default(), |w| {
            Ok::<_, io::Error>(w.iter().map(|h| nodes.get(h).map(|n| n.encode())).collect())
        });
        assert!(r.is_err());
        // Empty content.
        let (e, en) = tree(&[]);
        assert_eq!(e, content_id(&[]));
        let l = resolve::<_, io::Error>(&e, 0, &en, |_| unreachable!()).unwrap();
        assert!(l.chunks.is_empty());
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

    #[test]
    fn a_run_of_zeros_is_cut_into_zero_chunks_of_one_hash() {
        let mut data = random(300_000, 3);
        data[40_000..].fill(0);
        data.resize(2_000_000, 0);
        data.extend(random(50_000, 4));
        let list = chunk_bytes(&data);
        let zeros: Vec<(u64, &ChunkRef)> =
            list.with_offsets().filter(|(_, c)| c.is_zero()).collect();
        // Everything but the edges of the runs of zeros.
        let zero_bytes: u64 = zeros.iter().map(|(_, c)| c.len as u64).sum();
        assert!(zero_bytes > 1_800_000, "{zero_bytes}");
        for (off, c) in &zeros {
            assert!(all_zero(
                &data[*off as usize..(*off + c.len as u64) as usize]
            ));
            assert_eq!(c.hash, Hash::of(&[0u8; CHUNK_MAX as usize]));
        }
        // The hash of a zero chunk is the one any chunk of those bytes has:
        // the content id does not change.
        let plain: Vec<ChunkRef> = list
            .with_offsets()
            .map(|(o, c)| ChunkRef {
                hash: Hash::of(&data[o as usize..o as usize + c.len as usize]),
                len: c.len,
            })
            .collect();
        assert_eq!(list.chunks, plain);
        assert_eq!(chunk_reader(&data[..]).unwrap(), list);
        // The data runs leave out exactly the zero chunks.
        let runs = list.data_runs();
        let covered: u64 = runs.iter().map(|r| r.1).sum();
        assert_eq!(covered + zero_bytes, list.size());
        assert!(runs.windows(2).all(|w| w[0].0 + w[0].1 < w[1].0));
        assert!(list.has_zeros());
        assert!(!chunk_bytes(&random(500_000, 5)).has_zeros());
    }

    #[test]
    fn all_zero_sees_one_set_bit_anywhere() {
        for len in [0usize, 1, 7, 4095, 4096, 4097, 65_536] {
            let mut d = vec![0u8; len];
            assert!(all_zero(&d));
            for at in [0, len / 2, len.saturating_sub(1)] {
                if len > 0 {
                    d[at] = 1;
                    assert!(!all_zero(&d), "len {len} at {at}");
                    d[at] = 0;
                }
            }
        }
    }
}
