//! What the engine needs from a replica, wherever it is.
//!
//! The engine plans with every replica's index and then asks each replica
//! to carry out its part. A [`crate::LocalReplica`] does the work in this
//! process; a remote replica (weave-net) forwards each call over a session
//! to `weave serve` on another machine, which runs a `LocalReplica` there.
//! Chunks a replica lacks come through a [`Provider`]: from the other
//! replicas of the sync, whichever holds them.

use crate::SyncError;
use std::collections::{BTreeMap, HashMap};
use weave_chunk::ChunkList;
use weave_core::{Entry, Hash, ReplicaId};
use weave_fs::{Location, Op};
use weave_index::LocalEntry;

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
    /// Its `.weaveignore`: (where it is, text).
    pub ignore_file: Option<(String, String)>,
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
    pub files: Vec<(String, String)>,
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
    /// Everything the other replicas hold is integrated: their sequence
    /// numbers, and the ignore fingerprint this was true under.
    pub integrated: Option<(Vec<(ReplicaId, u64)>, u64)>,
}

/// Per content: the hashes wanted (tree nodes or chunks).
pub type Wants = [(Hash, Vec<Hash>)];

/// Where a replica gets what it does not hold itself.
pub trait Provider {
    /// Encoded tree nodes, per content, in the order asked (None: nobody
    /// has it). The caller verifies every node.
    fn nodes(&mut self, wants: &Wants) -> Result<Vec<Vec<Option<Vec<u8>>>>, SyncError>;
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
    ops: &[weave_fs::Op],
    own: &dyn Fn(&Hash) -> Option<ChunkList>,
    foreign: &Foreign,
    provider: &mut dyn Provider,
) -> Result<(HashMap<Hash, ChunkList>, Vec<Issue>), SyncError> {
    use weave_core::Object;
    let mut lists: HashMap<Hash, ChunkList> = HashMap::new();
    let mut unresolved: Vec<(Hash, u64, String)> = Vec::new();
    let mut pending: std::collections::HashSet<Hash> = std::collections::HashSet::new();
    let mut known: HashMap<Hash, weave_chunk::Node> = foreign.nodes.clone();
    for op in ops.iter().filter(|o| o.kind == weave_fs::OpKind::WriteFile) {
        let Object::File { content, size } = &op.target.object else {
            continue;
        };
        if lists.contains_key(content) || !pending.insert(*content) {
            continue;
        }
        if let Some(l) = own(content).or_else(|| foreign.lists.get(content).cloned()) {
            lists.insert(*content, l);
            continue;
        }
        unresolved.push((*content, *size, op.path.clone()));
        // The old version at the same path: its subtrees need not travel.
        if let Some(Object::File { content: old, .. }) =
            op.current.as_ref().map(|c| &c.entry.object)
        {
            if let Some(l) = own(old) {
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
    for (c, size, path) in unresolved {
        let r = weave_chunk::resolve(c, *size, known, |want| {
            let got = provider
                .nodes(&[(*c, want.to_vec())])
                .map_err(|e| e.to_string())?;
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

/// Opens a replica's index in `state` (created if need be, unless
/// `dry_run`: then a replica without state gets a throw-away index and
/// nothing is written), and what the replica says about itself (without
/// an ignore file).
pub fn open_index(
    state: &std::path::Path,
    dry_run: bool,
) -> Result<(weave_index::Index, ReplicaInfo), SyncError> {
    use weave_index::Index;
    let exists = state.join(weave_index::INDEX_FILE).exists();
    let index = match (dry_run, exists) {
        (true, false) => Index::ephemeral(state),
        (true, true) => Index::open_for_dry_run(state)?,
        (false, _) => Index::open(state)?,
    };
    let info = ReplicaInfo {
        id: index.id(),
        seq: index.seq(),
        clock: index.clock(),
        peers: index.load_peers()?,
        ignore_fingerprint: index.ignore_fingerprint(),
        rekeyed: index.rekeyed(),
        ignore_file: None,
    };
    Ok((index, info))
}

/// Records the end of a sync in a replica's index: the coordinator's
/// clock, what the replica has integrated of each peer, and drops the
/// chunk lists of contents none of its `entries` holds any more.
pub fn finish_index(
    index: &mut weave_index::Index,
    entries: &BTreeMap<String, LocalEntry>,
    fin: &Finish,
) -> Result<(), SyncError> {
    index.observe(fin.observe);
    let live: std::collections::HashSet<Hash> = entries
        .values()
        .filter_map(|le| match &le.entry.object {
            weave_core::Object::File { content, .. } => Some(*content),
            _ => None,
        })
        .collect();
    index.gc_contents(&live)?;
    let mut batch = weave_index::Batch::default();
    if let Some((peers, fp)) = &fin.integrated {
        batch.peers = peers.clone();
        batch.ignore_fingerprint = Some(*fp);
    }
    index.write(&batch)?;
    Ok(())
}

/// A provider with nothing to give.
pub struct NoProvider;
impl Provider for NoProvider {
    fn nodes(&mut self, wants: &Wants) -> Result<Vec<Vec<Option<Vec<u8>>>>, SyncError> {
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
    pub lists: HashMap<Hash, ChunkList>,
    pub locations: HashMap<Hash, Vec<Location>>,
    /// Verified tree nodes, by hash, that came with the operations (the
    /// roots of small files' chunk trees): not asked for again.
    pub nodes: HashMap<Hash, weave_chunk::Node>,
}

/// One replica of a sync.
pub trait Replica: Send {
    /// As the user gave it.
    fn display(&self) -> &str;
    /// On this machine (its files can be read directly by others).
    fn is_local(&self) -> bool;
    /// The directory, for a replica on this machine.
    fn local_root(&self) -> Option<std::path::PathBuf> {
        None
    }
    /// For a remote replica: bytes sent to it and received from it so far.
    fn traffic(&self) -> Option<(u64, u64)> {
        None
    }
    fn info(&self) -> &ReplicaInfo;
    /// Limits the next scan to these paths, each with its subtree: what a
    /// file-system watcher saw change since the last scan. Replicas that
    /// do not scan a disk here ignore it.
    fn limit_scan(&mut self, _paths: Vec<String>) {}
    /// Hashes ahead, recording nothing, what the next scan would hash
    /// (under the replica's own ignore file and `patterns`): work that can
    /// run while other replicas connect. Stops hashing once `stop` is set.
    /// Replicas that do not scan a disk here ignore it.
    fn prehash(&mut self, _patterns: &[String], _stop: &std::sync::atomic::AtomicBool) {}
    /// Takes what [`crate::Kind::prehash`] hashed before this replica was
    /// opened, for its next scan.
    fn adopt_prehashed(&mut self, _hashed: weave_fs::Prehashed) {}
    /// Turns the disk into index entries (recorded unless `dry_run`).
    fn scan(&mut self, ignore: &IgnoreSpec, dry_run: bool) -> Result<ScanSummary, SyncError>;
    /// The full index, with this run's scan.
    fn entries(&mut self) -> Result<BTreeMap<String, LocalEntry>, SyncError>;
    /// A content's chunk list, if known here without asking anyone.
    fn chunk_list(&mut self, content: &Hash) -> Option<ChunkList>;
    /// Serves tree nodes of contents it holds.
    fn serve_nodes(&mut self, wants: &Wants) -> Result<Vec<Vec<Option<Vec<u8>>>>, SyncError>;
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
