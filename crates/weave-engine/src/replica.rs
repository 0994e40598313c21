//! What the engine needs from a replica, wherever it is.
//!
//! The engine plans with every replica's index and then asks each replica
//! to carry out its part. A directory tree on this machine
//! (`weave_fs::LocalReplica`) does the work in this process; a remote
//! replica (weave-net) forwards each call over a session to `weave serve`
//! on another machine, which runs one there; an object store
//! (weave-object) commits to its store. [`Replica`] holds only what every
//! kind of replica can do; what only a directory tree on this machine can
//! do is [`LocalTree`], reached through [`Replica::local`].
//! Chunks a replica lacks come through a [`Provider`]: from the other
//! replicas of the sync, whichever holds them.

use crate::SyncError;
use std::collections::{BTreeMap, HashMap};
use weave_chunk::ChunkList;
use weave_core::ignore::IgnoreFile;
use weave_core::LocalEntry;
use weave_core::Op;
use weave_core::{Entry, Hash, ReplicaId};

/// What a replica says about itself when it is opened.
#[derive(Debug, Clone)]
pub struct ReplicaInfo {
    pub id: ReplicaId,
    /// Its latest local sequence number.
    pub seq: u64,
    /// Its version-vector clock.
    pub clock: u64,
    /// What it has integrated of each other replica (their sequence numbers).
    pub peers: HashMap<ReplicaId, u64>,
    /// The ignore patterns it last synced with (fingerprint).
    pub ignore_fingerprint: Option<u64>,
    /// Its state directory was made for another directory; it got a new id.
    pub rekeyed: bool,
    /// Its `.weaveignore`, if it has one.
    pub ignore_file: Option<IgnoreFile>,
}

/// Something that went wrong (or is worth a note) at one path of a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Relative to the replica's root ("" for the root itself).
    pub path: String,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct ScanSummary {
    pub errors: Vec<Issue>,
    pub notices: Vec<Issue>,
}

/// The ignore rules of a sync: every replica's `.weaveignore` (in replica
/// order) and the command-line patterns.
#[derive(Debug, Clone, Default)]
pub struct IgnoreSpec {
    pub files: Vec<IgnoreFile>,
    pub patterns: Vec<String>,
}

/// What a replica did with its operations.
#[derive(Debug, Default)]
pub struct Applied {
    /// (operation index, the version now recorded).
    pub done: Vec<(usize, Entry)>,
    pub errors: Vec<Issue>,
    pub bytes_local: u64,
    pub bytes_remote: u64,
}

/// What a replica records at the end of a sync.
#[derive(Debug, Clone, Default)]
pub struct Finish {
    /// Counter values handed out by the planner on its behalf.
    pub observe: u64,
    /// Everything the other replicas hold is integrated (None when
    /// something failed on this replica).
    pub integrated: Option<Integrated>,
    /// The replicas on which nothing failed but what their own rules
    /// refused: they hold everything they take (None: not said, by an
    /// older coordinator).
    pub went_through: Option<Vec<ReplicaId>>,
}

/// What a replica integrated in a sync that went through on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Integrated {
    /// The other replicas' sequence numbers at the sync.
    pub peers: Vec<(ReplicaId, u64)>,
    /// The fingerprint of the ignore patterns this was true under.
    pub ignore_fingerprint: u64,
}

/// Per content: the hashes wanted (tree nodes or chunks).
pub type Wants = [(Hash, Vec<Hash>)];

/// Tree nodes served for [`Wants`]: per content asked, per hash asked (in
/// the order asked), the encoded node, or None when it is not had.
pub type ServedNodes = Vec<Vec<Option<Vec<u8>>>>;

/// Where a replica gets what it does not hold itself.
pub trait Provider {
    /// Encoded tree nodes, per content, in the order asked (None: nobody
    /// has it). The caller verifies every node.
    fn nodes(&mut self, wants: &Wants) -> Result<ServedNodes, SyncError>;
    /// Chunk data, handed to `sink` as it arrives (hash, data). The caller
    /// verifies every chunk, unless [`Provider::verified`] says this
    /// provider already did; chunks nobody has are simply not delivered.
    fn chunks(
        &mut self,
        wants: &Wants,
        sink: &mut dyn FnMut(Hash, Vec<u8>) -> Result<(), SyncError>,
    ) -> Result<(), SyncError>;
    /// True if every chunk this provider hands to a sink has already been
    /// checked against its hash (I-3), so the caller need not hash it again.
    fn verified(&self) -> bool {
        false
    }
}

/// The chunk list of every content `ops` write: known to the replica
/// (`own`), known to another local replica (`foreign`), or fetched from
/// `provider` as a tree, where the old version at the same path lends its
/// subtrees. Returns the lists, and an issue for each content whose list
/// could not be had.
pub fn lists_for(
    ops: &[weave_core::Op],
    own: &dyn Fn(&Hash) -> Option<ChunkList>,
    foreign: &Foreign,
    provider: &mut dyn Provider,
) -> Result<(HashMap<Hash, ChunkList>, Vec<Issue>), SyncError> {
    let mut lists: HashMap<Hash, ChunkList> = HashMap::new();
    let mut unresolved: Vec<(Hash, u64, String)> = Vec::new();
    let mut pending: std::collections::HashSet<Hash> = std::collections::HashSet::new();
    let mut known: HashMap<Hash, weave_chunk::Node> = foreign.nodes.clone();
    for op in ops {
        let Some((content, size)) = op.writes() else {
            continue;
        };
        if lists.contains_key(&content) || !pending.insert(content) {
            continue;
        }
        if let Some(l) = own(&content).or_else(|| foreign.lists.get(&content).cloned()) {
            lists.insert(content, l);
            continue;
        }
        unresolved.push((content, size, op.path.clone()));
        // The old version at the same path: its subtrees need not travel.
        if let Some(old) = op.old_content() {
            if let Some(l) = own(&old) {
                if l.chunks.len() > 1 {
                    known.extend(weave_chunk::tree(&l.chunks).1);
                }
            }
        }
    }
    let (fetched, issues) = fetch_lists(provider, &unresolved, &mut known)?;
    lists.extend(fetched);
    Ok((lists, issues))
}

/// The chunk lists of contents this replica does not know, `(content,
/// size, a path that needs it)`, fetched from `provider` as trees: the
/// roots of all of them in one round, then each tree a level at a time.
/// Nodes in `known` (an old version's tree, say) need not travel. Every
/// node is verified. Returns the lists, and an issue for each content
/// whose list could not be had.
pub fn fetch_lists(
    provider: &mut dyn Provider,
    unresolved: &[(Hash, u64, String)],
    known: &mut HashMap<Hash, weave_chunk::Node>,
) -> Result<(HashMap<Hash, ChunkList>, Vec<Issue>), SyncError> {
    let mut lists = HashMap::new();
    let mut issues = Vec::new();
    if unresolved.is_empty() {
        return Ok((lists, issues));
    }
    let wants: Vec<(Hash, Vec<Hash>)> = unresolved
        .iter()
        .filter(|u| !known.contains_key(&u.0))
        .map(|u| (u.0, vec![u.0]))
        .collect();
    let roots = provider.nodes(&wants)?;
    for ((c, _), got) in wants.iter().zip(roots) {
        if let Some(Some(bytes)) = got.into_iter().next() {
            if let Some(n) = weave_chunk::Node::decode(&bytes, c) {
                known.insert(*c, n);
            }
        }
    }
    prefetch_levels(provider, unresolved, known)?;
    for (c, size, path) in unresolved {
        let r = weave_chunk::resolve::<_, SyncError>(c, *size, known, |want| {
            let got = provider.nodes(&[(*c, want.to_vec())])?;
            Ok(got.into_iter().next().unwrap_or_default())
        });
        match r {
            Ok(l) => {
                lists.insert(*c, l);
            }
            Err(e) => issues.push(Issue {
                path: path.clone(),
                message: format!("cannot get the chunk list of its new content: {e}"),
            }),
        }
    }
    Ok((lists, issues))
}

/// Fetches the lower levels of all the trees of `unresolved` together,
/// one round per level for all of them (not one per level of each tree:
/// a thousand new large files would otherwise cost a thousand round
/// trips), into `known`. Every node is verified against its hash; each
/// tree is bounded as [`weave_chunk::resolve`] bounds it. A tree whose
/// nodes do not come is left alone: `resolve` then asks for them itself
/// and reports what is missing.
fn prefetch_levels(
    provider: &mut dyn Provider,
    unresolved: &[(Hash, u64, String)],
    known: &mut HashMap<Hash, weave_chunk::Node>,
) -> Result<(), SyncError> {
    // Per tree: the nodes of its next level, and the nodes it may still
    // fetch.
    let mut trees: Vec<(Hash, Vec<Hash>, u64)> = unresolved
        .iter()
        .map(|(c, size, _)| {
            let budget = (size / weave_chunk::CHUNK_MIN as u64 + 2) * 2 + 2;
            (*c, vec![*c], budget)
        })
        .collect();
    // A well-formed tree has a few levels; this bounds a hostile one.
    for _ in 0..16 {
        let mut wants: Vec<(Hash, Vec<Hash>)> = Vec::new();
        trees.retain_mut(|(c, frontier, budget)| {
            // Down through what is known, to the first nodes that are not.
            let mut missing = Vec::new();
            let mut next = Vec::new();
            // Each node once: a run of zeros makes many identical ones.
            let mut seen = std::collections::HashSet::new();
            for _ in 0..16 {
                for h in std::mem::take(frontier) {
                    if !seen.insert(h) {
                        continue;
                    }
                    match known.get(&h) {
                        Some(n) if n.level > 1 => next.extend(n.children.iter().map(|c| c.0)),
                        Some(_) => {}
                        None => missing.push(h),
                    }
                }
                if next.is_empty() {
                    break;
                }
                *frontier = std::mem::take(&mut next);
            }
            if missing.is_empty() || missing.len() as u64 > *budget {
                return false;
            }
            *budget -= missing.len() as u64;
            *frontier = missing.clone();
            wants.push((*c, missing));
            true
        });
        if wants.is_empty() {
            break;
        }
        let mut got = provider.nodes(&wants)?.into_iter();
        let mut failed = std::collections::HashSet::new();
        for (c, hashes) in &wants {
            let mut got = got.next().unwrap_or_default().into_iter();
            for h in hashes {
                match got
                    .next()
                    .flatten()
                    .and_then(|b| weave_chunk::Node::decode(&b, h))
                {
                    Some(n) => {
                        known.insert(*h, n);
                    }
                    None => {
                        failed.insert(*c);
                    }
                }
            }
        }
        trees.retain(|(c, _, _)| !failed.contains(c));
    }
    Ok(())
}

impl ReplicaInfo {
    /// What the replica whose index is `index` says about itself (without
    /// an ignore file).
    pub fn of(index: &weave_index::Index) -> Result<ReplicaInfo, SyncError> {
        Ok(ReplicaInfo {
            id: index.id(),
            seq: index.seq(),
            clock: index.clock(),
            peers: index.load_peers()?,
            ignore_fingerprint: index.ignore_fingerprint(),
            rekeyed: index.rekeyed(),
            ignore_file: None,
        })
    }
}

/// Records the end of a sync in a replica's index: the coordinator's
/// clock, what the replica has integrated of each peer, and, given all
/// its `entries`, drops the chunk lists of contents none of them holds
/// any more.
pub fn finish_index(
    index: &mut weave_index::Index,
    entries: Option<&BTreeMap<String, LocalEntry>>,
    fin: &Finish,
) -> Result<(), SyncError> {
    index.observe(fin.observe);
    if let Some(entries) = entries {
        let live: std::collections::HashSet<Hash> = entries
            .values()
            .filter_map(|le| le.entry.object.content())
            .collect();
        index.gc_contents(&live)?;
    }
    let mut batch = weave_index::Batch::default();
    if let Some(i) = &fin.integrated {
        batch.peers = i.peers.clone();
        batch.ignore_fingerprint = Some(i.ignore_fingerprint);
    }
    index.write(&batch)?;
    Ok(())
}

/// A provider with nothing to give.
pub struct NoProvider;
impl Provider for NoProvider {
    fn nodes(&mut self, wants: &Wants) -> Result<ServedNodes, SyncError> {
        Ok(wants.iter().map(|(_, h)| vec![None; h.len()]).collect())
    }
    fn chunks(
        &mut self,
        _: &Wants,
        _: &mut dyn FnMut(Hash, Vec<u8>) -> Result<(), SyncError>,
    ) -> Result<(), SyncError> {
        Ok(())
    }
}

/// What other replicas on this machine hold, usable directly.
#[derive(Default)]
pub struct Foreign {
    /// Chunk lists of contents the operations write, known to them.
    pub lists: HashMap<Hash, ChunkList>,
    /// The other directory trees on this machine, whose files a tree may
    /// read itself.
    pub siblings: Vec<Sibling>,
    /// Verified tree nodes, by hash, that came with the operations (the
    /// roots of small files' chunk trees): not asked for again.
    pub nodes: HashMap<Hash, weave_chunk::Node>,
}

/// The entries of `all` at `paths`, and those inside each directory of
/// `subtrees` (all of them for ""): what [`Replica::entries_at`] gives,
/// from an index in memory.
pub fn select(
    all: &BTreeMap<String, LocalEntry>,
    paths: &[String],
    subtrees: &[String],
) -> BTreeMap<String, LocalEntry> {
    let mut out = BTreeMap::new();
    for p in paths {
        if let Some(le) = all.get(p) {
            out.insert(p.clone(), le.clone());
        }
    }
    for d in subtrees {
        if d.is_empty() {
            return all.clone();
        }
        let (from, to) = (format!("{d}/"), format!("{d}0"));
        for (p, le) in all.range(from..to) {
            out.insert(p.clone(), le.clone());
        }
    }
    out
}

/// One page of a replica's index (see [`Replica::entries_from`]).
#[derive(Clone, Debug, Default)]
pub struct Page {
    /// The entries of the page's paths (a replica may hold back some of
    /// them: fewer than the paths it covers).
    pub entries: Entries,
    /// The last path the page covers; None when it covers the rest of
    /// the index.
    pub end: Option<String>,
}

impl Page {
    /// A page of `limit` paths from `entries`, in path order: it ends at
    /// the last of them when there are `limit`.
    pub fn of(entries: BTreeMap<String, LocalEntry>, limit: usize) -> Page {
        let end = (entries.len() >= limit)
            .then(|| entries.last_key_value().map(|(k, _)| k.clone()))
            .flatten();
        Page {
            entries: std::sync::Arc::new(entries),
            end,
        }
    }
}

/// The page of `limit` paths of `all` after `after` (from the first with
/// None): what [`Replica::entries_from`] gives, from an index in memory.
pub fn page(all: &BTreeMap<String, LocalEntry>, after: Option<&str>, limit: usize) -> Page {
    use std::ops::Bound;
    let from = match after {
        Some(a) => Bound::Excluded(a),
        None => Bound::Unbounded,
    };
    let m = all
        .range::<str, _>((from, Bound::Unbounded))
        .take(limit)
        .map(|(p, le)| (p.clone(), le.clone()))
        .collect();
    Page::of(m, limit)
}

/// A replica's whole index by path, as [`Replica::entries`] gives it.
pub type Entries = std::sync::Arc<BTreeMap<String, LocalEntry>>;

/// Another directory tree on this machine: where it is (see
/// [`LocalTree::root`]; the engine only passes it on) and its index.
#[derive(Clone)]
pub struct Sibling {
    pub root: std::path::PathBuf,
    pub entries: Entries,
}

/// Work done ahead for a replica before it was opened (see
/// [`crate::Kind::prehash`]), opaque to the engine: only the kind that
/// made it knows what is inside, and takes it back with
/// [`LocalTree::adopt_prehashed`].
pub struct Prehashed(pub Box<dyn std::any::Any + Send>);

/// What a directory tree on this machine can do beyond what every replica
/// can. The engine only asks for its root (to hand it to the other trees
/// of the sync); the programs that open and drive replicas (the opener of
/// `weave sync`, the daemon) use the rest.
pub trait LocalTree {
    /// The directory.
    fn root(&self) -> &std::path::Path;
    /// Limits the next scan to these paths, each with its subtree: what a
    /// file-system watcher saw change since the last scan.
    fn limit_scan(&mut self, paths: Vec<String>);
    /// Records each scan's changes in one write, as the scan ends, rather
    /// than a large scan's a part at a time as it goes: for a caller that
    /// reads what each scan recorded afterwards (a receive-only folder's
    /// own changes), which a scan that failed half way would hide.
    fn record_scans_whole(&mut self) {}
    /// Hashes ahead, recording nothing, what the next scan would hash
    /// (under the replica's own ignore file and `patterns`): work that can
    /// run while other replicas connect. Stops hashing once `stop` is set.
    fn prehash(&mut self, patterns: &[String], stop: &std::sync::atomic::AtomicBool);
    /// Takes what [`crate::Kind::prehash`] hashed before this replica was
    /// opened, for its next scan.
    fn adopt_prehashed(&mut self, hashed: Prehashed);
}

/// One replica of a sync.
pub trait Replica: Send {
    /// As the user gave it.
    fn display(&self) -> &str;
    /// On this machine (what it holds can be had without a network).
    fn is_local(&self) -> bool;
    /// This replica as a directory tree on this machine, if it is one.
    fn local(&mut self) -> Option<&mut dyn LocalTree> {
        None
    }
    /// For a remote replica: bytes sent to it and received from it so far.
    fn traffic(&self) -> Option<(u64, u64)> {
        None
    }
    fn info(&self) -> &ReplicaInfo;
    /// Turns the disk into index entries (recorded unless `dry_run`).
    fn scan(&mut self, ignore: &IgnoreSpec, dry_run: bool) -> Result<ScanSummary, SyncError>;
    /// The full index, with this run's scan (shared, not copied: a
    /// replica may keep it too).
    fn entries(&mut self) -> Result<Entries, SyncError>;
    /// The entries whose sequence numbers are above `seq`, with this
    /// run's scan: what changed since a peer integrated this replica up
    /// to `seq`. A replica that can find them without reading its whole
    /// index should (this default reads it).
    fn changed_since(&mut self, seq: u64) -> Result<Entries, SyncError> {
        let all = self.entries()?;
        Ok(std::sync::Arc::new(
            all.iter()
                .filter(|(_, le)| le.seq > seq)
                .map(|(p, le)| (p.clone(), le.clone()))
                .collect(),
        ))
    }
    /// The entries at `paths` (those it has), and every entry inside each
    /// directory of `subtrees`, with this run's scan. As for
    /// [`Replica::changed_since`], this default reads the whole index.
    fn entries_at(&mut self, paths: &[String], subtrees: &[String]) -> Result<Entries, SyncError> {
        let all = self.entries()?;
        Ok(std::sync::Arc::new(select(&all, paths, subtrees)))
    }
    /// The entries of up to `limit` paths in path order, from the first
    /// path after `after` (from the first of all with None), with this
    /// run's scan: one page of a sync planned in slices (see
    /// `slice.rs`). Asking starts a new slice: what the replica was given
    /// of its index before may be forgotten. None when this replica
    /// cannot list its index in pages (its whole index is then planned at
    /// once).
    fn entries_from(
        &mut self,
        _after: Option<&str>,
        _limit: usize,
    ) -> Result<Option<Page>, SyncError> {
        Ok(None)
    }
    /// A content's chunk list, if known here without asking anyone.
    fn chunk_list(&mut self, content: &Hash) -> Option<ChunkList>;
    /// The chunk lists of those of `contents` known here without asking
    /// anyone (a replica that can read many at once should).
    fn chunk_lists(&mut self, contents: &[Hash]) -> HashMap<Hash, ChunkList> {
        contents
            .iter()
            .filter_map(|c| self.chunk_list(c).map(|l| (*c, l)))
            .collect()
    }
    /// Serves tree nodes of contents it holds.
    fn serve_nodes(&mut self, wants: &Wants) -> Result<ServedNodes, SyncError>;
    /// Serves chunks of contents it holds: `sink` gets (hash, Some(data))
    /// or (hash, None) when it does not have that chunk any more.
    fn serve_chunks(
        &mut self,
        wants: &Wants,
        sink: &mut dyn FnMut(Hash, Option<Vec<u8>>) -> Result<(), SyncError>,
    ) -> Result<(), SyncError>;
    /// Carries out its operations.
    fn apply(
        &mut self,
        ops: Vec<Op>,
        foreign: &Foreign,
        provider: &mut dyn Provider,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Applied, SyncError>;
    /// Records the end of the sync.
    fn finish(&mut self, fin: &Finish) -> Result<(), SyncError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};
    use weave_chunk::{ChunkRef, Node};

    /// Serves the nodes of some trees, counting the rounds asked.
    struct Trees {
        nodes: HashMap<Hash, Node>,
        rounds: usize,
        /// Hashes not served (a peer that lacks them).
        withheld: std::collections::HashSet<Hash>,
    }

    impl Provider for Trees {
        fn nodes(&mut self, wants: &Wants) -> Result<ServedNodes, SyncError> {
            self.rounds += 1;
            Ok(wants
                .iter()
                .map(|(_, hs)| {
                    hs.iter()
                        .map(|h| {
                            (!self.withheld.contains(h))
                                .then(|| self.nodes.get(h).map(Node::encode))
                                .flatten()
                        })
                        .collect()
                })
                .collect())
        }
        fn chunks(
            &mut self,
            _: &Wants,
            _: &mut dyn FnMut(Hash, Vec<u8>) -> Result<(), SyncError>,
        ) -> Result<(), SyncError> {
            unreachable!()
        }
    }

    /// A list of `n` random chunks (a tree of several nodes when n is in
    /// the hundreds).
    fn list(n: usize, seed: u64) -> ChunkList {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        ChunkList {
            chunks: (0..n)
                .map(|_| {
                    let mut h = [0u8; 32];
                    r.fill_bytes(&mut h);
                    ChunkRef {
                        hash: Hash(h),
                        len: 16 * 1024,
                    }
                })
                .collect(),
        }
    }

    /// The trees of many new large files come level by level for all of
    /// them together: the rounds asked do not grow with the number of
    /// files (one per file per level would cost a WAN a round trip each).
    #[test]
    fn many_trees_are_fetched_in_one_round_per_level() {
        let lists: Vec<ChunkList> = (0..40).map(|i| list(3000, i)).collect();
        let mut nodes = HashMap::new();
        let mut unresolved = Vec::new();
        for (i, l) in lists.iter().enumerate() {
            let (root, ns) = weave_chunk::tree(&l.chunks);
            assert!(ns[&root].level >= 2, "a tree of one node tests nothing");
            nodes.extend(ns);
            unresolved.push((root, l.size(), format!("f{i}")));
        }
        let mut p = Trees {
            nodes,
            rounds: 0,
            withheld: Default::default(),
        };
        let (got, issues) = fetch_lists(&mut p, &unresolved, &mut HashMap::new()).unwrap();
        assert!(issues.is_empty(), "{issues:?}");
        for (l, (root, _, _)) in lists.iter().zip(&unresolved) {
            assert_eq!(&got[root], l);
        }
        let depth = unresolved
            .iter()
            .map(|(r, _, _)| p.nodes[r].level as usize)
            .max()
            .unwrap();
        assert!(
            p.rounds <= depth,
            "{} rounds for trees of depth {depth}",
            p.rounds
        );
    }

    /// A tree whose lower nodes nobody has is reported, and the others
    /// still resolve.
    #[test]
    fn a_tree_with_a_missing_node_is_reported_and_the_rest_resolve() {
        let (a, b) = (list(3000, 1), list(3000, 2));
        let (ra, na) = weave_chunk::tree(&a.chunks);
        let (rb, nb) = weave_chunk::tree(&b.chunks);
        let lost = *na[&ra].children.first().map(|(h, _)| h).unwrap();
        let mut nodes = na;
        nodes.extend(nb);
        let mut p = Trees {
            nodes,
            rounds: 0,
            withheld: [lost].into_iter().collect(),
        };
        let unresolved = vec![(ra, a.size(), "a".into()), (rb, b.size(), "b".into())];
        let (got, issues) = fetch_lists(&mut p, &unresolved, &mut HashMap::new()).unwrap();
        assert_eq!(got.get(&rb), Some(&b));
        assert!(!got.contains_key(&ra));
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].path, "a");
        assert!(
            issues[0].message.contains("no peer has tree node"),
            "{}",
            issues[0].message
        );
    }
}
