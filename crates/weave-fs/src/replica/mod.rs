//! A directory tree on this machine as a replica: the directory, its
//! index and its state.
//!
//! - this module: opening, scanning (weave-fs's scanner), the index in
//!   memory, and the [`Replica`] and [`LocalTree`] traits;
//! - [`transfer`]: an apply's transfer plan (pure) and receiving;
//! - [`write`]: carrying the operations out, recording them;
//! - [`versions`]: keeping what was replaced in the version store;
//! - [`serve`]: serving chunks to other replicas.

mod serve;
mod transfer;
mod versions;
mod write;

use transfer::{early_writes, plan_transfer, EarlyOps, Holdings, Transfer};

use crate::scan::ScanOptions;
use crate::{join, ContentSource, FsIssue, Location, Part, PartWriter, Stage};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weave_chunk::{ChunkList, Node};
use weave_core::ignore::Matcher;
use weave_core::path::STATE_DIR;
use weave_core::LocalEntry;
use weave_core::Op;
use weave_core::{Hash, Object};
use weave_engine::{
    Applied, Entries, Finish, Foreign, IgnoreSpec, Issue, LocalTree, Prehashed, Provider, Replica,
    ReplicaInfo, ScanSummary, ServedNodes, SyncError, Wants,
};
use weave_index::{Batch, Index};

pub struct LocalReplica {
    display: String,
    root: PathBuf,
    index: Index,
    info: ReplicaInfo,
    /// Changes found by this run's scan (not yet in the index on a dry run).
    scanned: Vec<LocalEntry>,
    /// Chunk lists of the files this run's scan read.
    scanned_contents: HashMap<Hash, ChunkList>,
    /// The full index, once loaded (kept up to date by this replica's own
    /// writes, so it is read from the disk at most once).
    entries: Option<Entries>,
    /// What this replica gave of its index without loading all of it
    /// (an incremental sync: [`Replica::changed_since`] and
    /// [`Replica::entries_at`]), kept up to date by its own writes: the
    /// paths this sync is about.
    given: Option<Entries>,
    /// Each scan's changes recorded in one write (see
    /// [`LocalTree::record_scans_whole`]).
    whole_scans: bool,
    /// Tree nodes built for serving, per content (the last few).
    trees: Vec<(Hash, HashMap<Hash, Node>)>,
    /// Where each content is, built once per state of `entries` (serving
    /// chunks asks for it once per content).
    locations: Option<HashMap<Hash, Vec<Location>>>,
    /// The next scan looks only at these paths (see [`LocalTree::limit_scan`]).
    scan_only: Option<Vec<String>>,
    /// Files hashed ahead of the next scan (see [`LocalTree::prehash`]).
    prehashed: Option<crate::Prehashed>,
    /// The bytes of small files hashed ahead, by content id: served from
    /// here, not read again, until the sync ends.
    kept: HashMap<Hash, Vec<u8>>,
    /// The content served last, and where each of its chunks is in it: a
    /// large file is asked for in many requests, and building this for
    /// each cost more than reading the chunks.
    serving: Option<(Hash, ChunkPlaces)>,
}

/// Where the files of the other trees on this machine are, by content.
fn sibling_locations(foreign: &Foreign) -> HashMap<Hash, Vec<Location>> {
    let mut at: HashMap<Hash, Vec<Location>> = HashMap::new();
    for s in &foreign.siblings {
        for (p, le) in s.entries.iter() {
            if let Object::File { content, .. } = &le.entry.object {
                at.entry(*content).or_default().push(Location {
                    path: join(&s.root, p),
                    local: false,
                    stat: le.stat,
                });
            }
        }
    }
    at
}

/// Where each chunk of a content is in its file: (offset, length).
type ChunkPlaces = HashMap<Hash, (u64, u32)>;

impl LocalReplica {
    /// Opens the replica at `root` (already checked and canonical). On a
    /// dry run nothing is created: a replica without state gets a
    /// throw-away index.
    pub fn open(root: &Path, display: &str, dry_run: bool) -> Result<LocalReplica, SyncError> {
        let state = root.join(STATE_DIR);
        weave_index::claim_kind(&state, "files", display, dry_run)?;
        let index = Index::open_for_sync(&state, dry_run)?;
        let mut info = ReplicaInfo::of(&index)?;
        info.ignore_file = crate::ignore::read_file(root);
        Ok(LocalReplica {
            display: display.to_string(),
            root: root.to_path_buf(),
            index,
            info,
            scanned: Vec::new(),
            scanned_contents: HashMap::new(),
            entries: None,
            given: None,
            trees: Vec::new(),
            locations: None,
            scan_only: None,
            prehashed: None,
            kept: HashMap::new(),
            serving: None,
            whole_scans: false,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn issue(&self, i: &FsIssue) -> Issue {
        let rel = i.path.strip_prefix(&self.root).unwrap_or(&i.path);
        Issue {
            path: rel.to_string_lossy().into_owned(),
            message: i.message.clone(),
        }
    }

    fn load(&mut self) -> Result<&Entries, SyncError> {
        if self.entries.is_none() {
            let mut m = self.index.load_entries()?;
            for le in &self.scanned {
                m.insert(le.entry.path.clone(), le.clone());
            }
            self.entries = Some(Arc::new(m));
        }
        Ok(self.entries.as_ref().expect("loaded above"))
    }

    /// The entries this sync is about: the full index if it is loaded,
    /// else what was given of it, else (nothing asked yet) the full index.
    fn view(&mut self) -> Result<&Entries, SyncError> {
        if self.entries.is_none() && self.given.is_none() {
            self.load()?;
        }
        Ok(self
            .entries
            .as_ref()
            .or(self.given.as_ref())
            .expect("one of them is there"))
    }

    /// Takes what was given of the index into [`LocalReplica::given`].
    fn give(&mut self, m: BTreeMap<String, LocalEntry>) -> Entries {
        let given = Arc::make_mut(self.given.get_or_insert_with(Default::default));
        for (p, le) in &m {
            given.insert(p.clone(), le.clone());
        }
        Arc::new(m)
    }

    /// This run's scan's entries that `keep` selects, over `m`.
    fn with_scanned(
        &self,
        mut m: BTreeMap<String, LocalEntry>,
        keep: impl Fn(&LocalEntry) -> bool,
    ) -> BTreeMap<String, LocalEntry> {
        for le in self.scanned.iter().filter(|le| keep(le)) {
            m.insert(le.entry.path.clone(), le.clone());
        }
        m
    }

    fn list(&self, content: &Hash) -> Option<ChunkList> {
        if let Some(l) = self.scanned_contents.get(content) {
            return Some(l.clone());
        }
        self.index.chunk_list(content).ok().flatten()
    }

    /// Files of this replica that hold each content, with their stats
    /// (of the entries this sync is about: see [`LocalReplica::view`]).
    fn own_locations(&self) -> HashMap<Hash, Vec<Location>> {
        let mut m: HashMap<Hash, Vec<Location>> = HashMap::new();
        if let Some(entries) = self.entries.as_ref().or(self.given.as_ref()) {
            for (p, le) in entries.iter() {
                if let Object::File { content, .. } = &le.entry.object {
                    m.entry(*content).or_default().push(Location {
                        path: join(&self.root, p),
                        local: true,
                        stat: le.stat,
                    });
                }
            }
        }
        m
    }

    fn tree_of(&mut self, content: &Hash) -> Option<&HashMap<Hash, Node>> {
        if let Some(i) = self.trees.iter().position(|(c, _)| c == content) {
            return Some(&self.trees[i].1);
        }
        let list = self.list(content)?;
        let (_, nodes) = weave_chunk::tree(&list.chunks);
        if self.trees.len() >= 8 {
            self.trees.remove(0);
        }
        self.trees.push((*content, nodes));
        self.trees.last().map(|t| &t.1)
    }
}

/// The most entries a replica keeps in memory after a scan of an index
/// that had none (what the scan found, not read back): larger trees are
/// read from the index, a slice of a sync at a time.
const KEEP_ENTRIES_MAX: usize = 32_768;

impl LocalTree for LocalReplica {
    fn root(&self) -> &Path {
        &self.root
    }

    fn limit_scan(&mut self, paths: Vec<String>) {
        self.scan_only = Some(paths);
    }

    fn record_scans_whole(&mut self) {
        self.whole_scans = true;
    }

    fn prehash(&mut self, patterns: &[String], stop: &std::sync::atomic::AtomicBool) {
        let Ok(matcher) = crate::ignore::build(&[self.root.as_path()], patterns) else {
            return;
        };
        let t = std::time::Instant::now();
        let hashed = crate::prehash(&self.root, Some(&self.index), &matcher, stop);
        tracing::debug!(files = hashed.len(), elapsed = ?t.elapsed(), "hashed ahead of the scan");
        self.prehashed = Some(hashed);
    }

    fn adopt_prehashed(&mut self, hashed: Prehashed) {
        // Only the files kind makes these for a tree; anything else is
        // not work done for this replica.
        if let Ok(h) = hashed.0.downcast::<crate::Prehashed>() {
            self.prehashed = Some(*h);
        }
    }
}

impl Replica for LocalReplica {
    fn display(&self) -> &str {
        &self.display
    }

    fn is_local(&self) -> bool {
        true
    }

    fn local(&mut self) -> Option<&mut dyn LocalTree> {
        Some(self)
    }

    fn info(&self) -> &ReplicaInfo {
        &self.info
    }

    fn scan(&mut self, ignore: &IgnoreSpec, dry_run: bool) -> Result<ScanSummary, SyncError> {
        let matcher = Matcher::from_files(&ignore.files, &ignore.patterns)?;
        let prehashed = self.prehashed.take();
        if !dry_run {
            // Directories an interrupted run had opened up get their modes
            // back before they are scanned.
            crate::restore_modes(&self.root);
        }
        let (rescued, rescue_issues) = if dry_run {
            (0, Vec::new())
        } else {
            self.keep_leftovers()
        };
        let opts = ScanOptions {
            matcher: &matcher,
            remove_temps: !dry_run,
            dry_run,
            only: self.scan_only.as_deref(),
            prehashed: prehashed.as_ref(),
            record_parts: !self.whole_scans,
        };
        // The index after this scan is what was loaded of it (nothing, if
        // it had no entries) with the scan's changes: not read back.
        let known = match self.entries.take() {
            Some(m) => Some(m),
            None if !self.index.has_entries()? => Some(Entries::default()),
            None => None,
        };
        let t = std::time::Instant::now();
        let o = crate::scan(&self.root, &mut self.index, &opts)
            .map_err(|e| SyncError::Replica(Box::new(e)))?;
        tracing::debug!(changed = o.changed.len() + o.recorded, elapsed = ?t.elapsed(), "walked and hashed");
        if let Some(p) = prehashed {
            self.kept.extend(p.into_kept());
            tracing::debug!(
                contents = self.kept.len(),
                "small files' bytes kept from hashing ahead"
            );
        }
        self.scan_only = None;
        self.given = None;
        let mut summary = ScanSummary {
            errors: o.issues.iter().map(|i| self.issue(i)).collect(),
            notices: o.notices.iter().map(|i| self.issue(i)).collect(),
        };
        summary.errors.extend(rescue_issues);
        if rescued > 0 {
            summary.notices.push(Issue {
                path: String::new(),
                message: format!(
                    "kept {rescued} old version(s) that an interrupted sync had moved aside (see `weave history`)"
                ),
            });
        }
        let batch = Batch {
            entries: o.changed,
            contents: o.contents,
            meta_scope: o.meta_scope,
            ..Default::default()
        };
        if !dry_run && !batch.is_empty() {
            let t = std::time::Instant::now();
            self.index.write(&batch)?;
            tracing::debug!(elapsed = ?t.elapsed(), "scan recorded");
        }
        self.info.seq = self.index.seq();
        self.info.clock = self.index.clock();
        // A large index is read back in pages rather than kept whole (and
        // an empty one is read back for nothing: a map kept for it would
        // grow with everything a sync writes).
        let small = |m: &Entries| {
            let n = m.len() + batch.entries.len();
            n > 0 && n <= KEEP_ENTRIES_MAX && o.recorded == 0
        };
        self.entries = known.filter(small).map(|mut m| {
            let map = Arc::make_mut(&mut m);
            for le in &batch.entries {
                map.insert(le.entry.path.clone(), le.clone());
            }
            m
        });
        // What a recorded scan found is in the index: only a dry run's
        // is kept aside (laid over the index when it is read; a later
        // read after an apply must not bring back what the apply replaced).
        self.scanned = if dry_run { batch.entries } else { Vec::new() };
        // The chunk lists found are in the index (unless this is a dry
        // run): only a few are kept at hand.
        if dry_run || batch.contents.len() <= KEEP_ENTRIES_MAX {
            for l in batch.contents {
                self.scanned_contents.insert(l.content_id(), l);
            }
        }
        self.locations = None;
        Ok(summary)
    }

    fn entries(&mut self) -> Result<Entries, SyncError> {
        Ok(self.load()?.clone())
    }

    fn changed_since(&mut self, seq: u64) -> Result<Entries, SyncError> {
        if let Some(all) = &self.entries {
            let m = all.iter().filter(|(_, le)| le.seq > seq);
            return Ok(Arc::new(m.map(|(p, le)| (p.clone(), le.clone())).collect()));
        }
        let m = self.index.changed_since(seq)?;
        let m = self.with_scanned(m, |le| le.seq > seq);
        Ok(self.give(m))
    }

    fn entries_from(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<weave_engine::Page>, SyncError> {
        if let Some(all) = &self.entries {
            return Ok(Some(weave_engine::page(all, after, limit)));
        }
        if !self.scanned.is_empty() {
            // A dry run's scan, laid over the index: planned at once.
            return Ok(None);
        }
        let page = weave_engine::Page::of(self.index.entries_from(after, limit)?, limit);
        // A new slice: what was given for the one before is forgotten.
        self.given = Some(page.entries.clone());
        self.locations = None;
        Ok(Some(page))
    }

    fn entries_at(&mut self, paths: &[String], subtrees: &[String]) -> Result<Entries, SyncError> {
        if let Some(all) = &self.entries {
            return Ok(Arc::new(weave_engine::select(all, paths, subtrees)));
        }
        let mut m = self.index.entries_at(paths.iter().map(|p| p.as_str()))?;
        for d in subtrees {
            m.extend(self.index.entries_under(d)?);
        }
        let asked: std::collections::HashSet<&str> = if self.scanned.is_empty() {
            Default::default()
        } else {
            paths.iter().map(|p| p.as_str()).collect()
        };
        let inside = |p: &str| {
            subtrees.iter().any(|d| {
                d.is_empty()
                    || (p.starts_with(d.as_str()) && p.as_bytes().get(d.len()) == Some(&b'/'))
            })
        };
        let m = self.with_scanned(m, |le| {
            asked.contains(le.entry.path.as_str()) || inside(&le.entry.path)
        });
        Ok(self.give(m))
    }

    fn chunk_list(&mut self, content: &Hash) -> Option<ChunkList> {
        self.list(content)
    }

    fn chunk_lists(&mut self, contents: &[Hash]) -> HashMap<Hash, ChunkList> {
        let mut out: HashMap<Hash, ChunkList> = contents
            .iter()
            .filter_map(|c| self.scanned_contents.get(c).map(|l| (*c, l.clone())))
            .collect();
        let rest = contents.iter().filter(|c| !out.contains_key(*c));
        out.extend(self.index.chunk_lists(rest).unwrap_or_default());
        out
    }

    fn serve_nodes(&mut self, wants: &Wants) -> Result<ServedNodes, SyncError> {
        let mut out = Vec::with_capacity(wants.len());
        for (content, hashes) in wants {
            let v = match self.tree_of(content) {
                Some(nodes) => hashes
                    .iter()
                    .map(|h| nodes.get(h).map(|n| n.encode()))
                    .collect(),
                None => vec![None; hashes.len()],
            };
            out.push(v);
        }
        Ok(out)
    }

    fn serve_chunks(
        &mut self,
        wants: &Wants,
        sink: &mut dyn FnMut(Hash, Option<Vec<u8>>) -> Result<(), SyncError>,
    ) -> Result<(), SyncError> {
        self.serve(wants, sink)
    }

    fn apply(
        &mut self,
        ops: Vec<Op>,
        foreign: &Foreign,
        provider: &mut dyn Provider,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Applied, SyncError> {
        self.view()?;
        let own = self.own_locations();
        self.locations = None;
        let siblings = sibling_locations(foreign);
        let mut errors: Vec<Issue> = Vec::new();
        // 1. The chunk list of every content to write: known here, known
        //    to another local replica, or fetched as a tree.
        // This replica's own lists of what the operations write (and of
        // the old versions they replace), read at once.
        let mut mine: Vec<Hash> = Vec::new();
        for op in &ops {
            mine.extend(op.writes().map(|(c, _)| c));
            mine.extend(op.old_content());
        }
        let own_lists = self.chunk_lists(&mine);
        let (lists, issues) =
            weave_engine::lists_for(&ops, &|c| own_lists.get(c).cloned(), foreign, provider)?;
        errors.extend(issues);
        tracing::debug!(contents = lists.len(), "chunk lists known");
        // 2. The transfer plan: chunks found nowhere on this machine come
        //    from the provider into the stage (kept if the run is
        //    interrupted) or, for a large new content, a part file.
        let here = |c: &Hash| own.contains_key(c) || siblings.contains_key(c);
        let mut tx = self.plan(&ops, &lists, &here)?;
        let early_idx = self.early(&ops, &lists, &here, &tx);
        let mut locations = own;
        for (c, ls) in siblings {
            locations.entry(c).or_default().extend(ls);
        }
        // 3. Receive.
        let early = EarlyOps {
            ops: early_idx.iter().map(|&i| ops[i].clone()).collect(),
            idx: &early_idx,
        };
        let received = self.receive(&mut tx, early, (&lists, &locations), provider, progress);
        if received.bad > 0 {
            errors.push(Issue {
                path: String::new(),
                message: format!(
                    "{} chunks received failed their hash and were dropped; the files that need them are retried next time",
                    received.bad
                ),
            });
        }
        // 4. Write, record, keep old versions.
        let input = write::Inputs {
            tx,
            received,
            lists: &lists,
            locations: &locations,
            early_idx: &early_idx,
        };
        self.write(&ops, input, errors, progress)
    }

    fn finish(&mut self, fin: &Finish) -> Result<(), SyncError> {
        self.kept = HashMap::new();
        // Chunk lists no entry holds are dropped when the whole index is
        // in memory (a sync that planned every path), not after one that
        // read only what changed.
        let entries = self.entries.as_deref();
        weave_engine::finish_index(&mut self.index, entries, fin)
    }
}

impl LocalReplica {
    /// Opens the stage and makes the transfer plan of `ops` (see
    /// [`transfer::plan_transfer`]), opening the part files it uses.
    fn plan(
        &self,
        ops: &[Op],
        lists: &HashMap<Hash, ChunkList>,
        here: &dyn Fn(&Hash) -> bool,
    ) -> Result<Transfer, SyncError> {
        let state = self.root.join(STATE_DIR);
        let stage = Stage::open(&state).map_err(|e| SyncError::State {
            path: state.clone(),
            problem: format!("cannot open the transfer stage: {e}"),
        })?;
        // Writes the parts (straight to the disk where it can) and flushes
        // them as they fill, while the receiving thread goes on.
        let mut writer: Option<Arc<PartWriter>> = None;
        let mut parts: Vec<Part> = Vec::new();
        let old_chunks = |op: &Op| -> HashSet<Hash> {
            op.old_content()
                .and_then(|old| self.list(&old))
                .map(|l| l.chunks.iter().map(|c| c.hash).collect())
                .unwrap_or_default()
        };
        let has = Holdings {
            here,
            old_chunks: &old_chunks,
            staged: &|h| stage.contains(h),
        };
        // Without a part file (it cannot be made), the pack.
        let plan = plan_transfer(ops, lists, &has, &mut |list| {
            let mut part = stage.part(list).ok()?;
            part.write_with(writer.get_or_insert_with(|| PartWriter::start(true)));
            let missing = part.missing();
            parts.push(part);
            Some(missing)
        });
        Ok(Transfer {
            plan,
            stage,
            parts,
            writer,
            state,
        })
    }

    /// The operations written early (see [`transfer::early_writes`]): new
    /// files whose chunks all come into the stage, while part files'
    /// chunks still arrive.
    fn early(
        &self,
        ops: &[Op],
        lists: &HashMap<Hash, ChunkList>,
        here: &dyn Fn(&Hash) -> bool,
        tx: &Transfer,
    ) -> Vec<usize> {
        // (None when hard links are kept: every name goes through the
        // relinking after the rest.)
        if tx.plan.part_wants.is_empty() || crate::meta::scope().links {
            return Vec::new();
        }
        early_writes(&self.root, ops, &|c: &Hash| {
            !here(c)
                && !tx.plan.parts.contains(c)
                && lists.get(c).is_some_and(|l| {
                    l.chunks.iter().all(|ch| {
                        ch.is_zero()
                            || tx.plan.to_stage.contains(&ch.hash)
                            || tx.stage.contains(&ch.hash)
                    })
                })
        })
    }
}

/// Content lookups for this replica's executor.
struct Source<'a> {
    rep: &'a LocalReplica,
    lists: &'a HashMap<Hash, ChunkList>,
    locations: &'a HashMap<Hash, Vec<Location>>,
    staged: Option<&'a crate::stage::StageView>,
    parts: &'a HashMap<Hash, PathBuf>,
}

impl ContentSource for Source<'_> {
    fn chunk_list(&self, content: &Hash) -> Option<ChunkList> {
        self.rep
            .list(content)
            .or_else(|| self.lists.get(content).cloned())
    }

    fn locations(&self, content: &Hash) -> Vec<Location> {
        let mut v = self.locations.get(content).cloned().unwrap_or_default();
        // Own files first.
        v.sort_by_key(|l| !l.local);
        v
    }

    fn staged(&self) -> Option<&crate::stage::StageView> {
        self.staged
    }

    fn part(&self, content: &Hash) -> Option<PathBuf> {
        // Gone once a write took it (then that write's files serve).
        self.parts.get(content).filter(|p| p.exists()).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weave_core::OpKind;

    fn op(kind: OpKind, path: &str, object: Object) -> Op {
        Op {
            kind,
            path: path.into(),
            current: None,
            target: transfer::tests::entry(path, object),
        }
    }

    /// Files written early are new paths only: every file of a directory
    /// this run makes, and in an existing directory only those whose path
    /// is free now (not one that has an untracked file).
    #[test]
    fn early_writes_are_new_paths_in_new_or_existing_directories() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir(root.join("old")).unwrap();
        std::fs::write(root.join("old/taken"), b"untracked").unwrap();
        let file = Object::File {
            size: 1,
            content: Hash([7; 32]),
        };
        let mut ops = vec![op(OpKind::MakeDir, "new", Object::Dir)];
        for i in 0..40 {
            ops.push(op(OpKind::WriteFile, &format!("new/f{i}"), file.clone()));
        }
        ops.push(op(OpKind::WriteFile, "old/taken", file.clone()));
        ops.push(op(OpKind::WriteFile, "old/free", file.clone()));
        let chosen: Vec<&str> = early_writes(root, &ops, &|_| true)
            .into_iter()
            .map(|i| ops[i].path.as_str())
            .collect();
        assert!(chosen.contains(&"new"));
        assert!(chosen.contains(&"new/f0") && chosen.contains(&"new/f39"));
        assert!(chosen.contains(&"old/free"));
        assert!(!chosen.contains(&"old/taken"), "{chosen:?}");
        assert_eq!(chosen.len(), 1 + 40 + 1);
    }
    /// A small file hashed ahead is served from the bytes that were
    /// hashed, without reading it again: after the file is rewritten (same
    /// size, other bytes) the recorded content is still served, where a
    /// read of the file would fail its hash. A large file is read.
    #[test]
    fn small_files_hashed_ahead_are_served_from_memory() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let small = b"small, and hashed ahead".to_vec();
        let large = vec![9u8; crate::scan::KEEP_FILE_MAX as usize * 2];
        std::fs::write(root.join("s"), &small).unwrap();
        std::fs::write(root.join("l"), &large).unwrap();
        let mut rep = LocalReplica::open(root, "r", false).unwrap();
        let spec = IgnoreSpec {
            files: Vec::new(),
            patterns: Vec::new(),
        };
        rep.prehash(&[], &std::sync::atomic::AtomicBool::new(false));
        rep.scan(&spec, false).unwrap();
        let (s_list, l_list) = (
            weave_chunk::chunk_bytes(&small),
            weave_chunk::chunk_bytes(&large),
        );
        std::fs::write(root.join("s"), b"SMALL, AND HASHED AHEAD").unwrap();
        let wants: Vec<(Hash, Vec<Hash>)> = vec![
            (s_list.content_id(), vec![s_list.chunks[0].hash]),
            (l_list.content_id(), vec![l_list.chunks[0].hash]),
        ];
        let mut got = Vec::new();
        rep.serve_chunks(&wants, &mut |h, d| {
            got.push((h, d));
            Ok(())
        })
        .unwrap();
        assert_eq!(got[0], (s_list.chunks[0].hash, Some(small.clone())));
        let first = l_list.chunks[0].len as usize;
        assert_eq!(
            got[1],
            (l_list.chunks[0].hash, Some(large[..first].to_vec()))
        );
        // Once the sync is over, they are read from the files again.
        rep.finish(&Finish {
            observe: 0,
            integrated: None,
            went_through: None,
        })
        .unwrap();
        got.clear();
        rep.serve_chunks(&wants[..1], &mut |h, d| {
            got.push((h, d));
            Ok(())
        })
        .unwrap();
        assert_eq!(got[0], (s_list.chunks[0].hash, None), "the file changed");
    }

    /// A replica that gave only part of its index (what changed since a
    /// peer's remembered copy of it) still serves the content of a file
    /// outside that part: a peer that planned from its remembered copy
    /// may need it (its first sync had failed on that file, say).
    #[test]
    fn content_outside_what_was_given_is_still_served() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let data = vec![7u8; 100_000];
        std::fs::write(root.join("old"), &data).unwrap();
        let spec = IgnoreSpec::default();
        let mut rep = LocalReplica::open(root, "r", false).unwrap();
        rep.scan(&spec, false).unwrap();
        rep.finish(&Finish::default()).unwrap();
        drop(rep);
        let mut rep = LocalReplica::open(root, "r", false).unwrap();
        rep.scan(&spec, false).unwrap();
        let seq = rep.info().seq;
        assert!(rep.changed_since(seq).unwrap().is_empty());
        let list = weave_chunk::chunk_bytes(&data);
        let wants = vec![(list.content_id(), vec![list.chunks[0].hash])];
        let mut got = Vec::new();
        rep.serve_chunks(&wants, &mut |h, d| {
            got.push((h, d));
            Ok(())
        })
        .unwrap();
        let first = list.chunks[0].len as usize;
        assert_eq!(got, [(list.chunks[0].hash, Some(data[..first].to_vec()))]);
    }

    /// The entries a scan leaves in memory (not read back from the disk)
    /// are what the index holds: after the first scan of a replica, after
    /// a scan that updates what was loaded, and after one that loads it.
    #[test]
    fn entries_kept_in_memory_are_the_index() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir(root.join("d")).unwrap();
        for p in ["a", "d/b", "d/c"] {
            std::fs::write(root.join(p), p).unwrap();
        }
        let mut rep = LocalReplica::open(root, "r", false).unwrap();
        let spec = IgnoreSpec {
            files: Vec::new(),
            patterns: Vec::new(),
        };
        let on_disk = |rep: &LocalReplica| rep.index.load_entries().unwrap();
        rep.scan(&spec, false).unwrap();
        assert!(rep.entries.is_some(), "a first scan keeps what it found");
        assert_eq!(*rep.entries().unwrap(), on_disk(&rep));
        assert_eq!(rep.entries().unwrap().len(), 4);

        std::fs::write(root.join("a"), "changed, and longer").unwrap();
        std::fs::remove_file(root.join("d/b")).unwrap();
        std::fs::write(root.join("e"), "new").unwrap();
        rep.scan(&spec, false).unwrap();
        let kept = rep.entries().unwrap();
        assert_eq!(*kept, on_disk(&rep));
        assert!(!kept["d/b"].entry.is_live());
        assert!(kept.contains_key("e"));

        rep.entries = None;
        std::fs::write(root.join("f"), "another").unwrap();
        rep.scan(&spec, false).unwrap();
        assert_eq!(*rep.entries().unwrap(), on_disk(&rep));
        assert!(rep.entries().unwrap().contains_key("f"));
    }
}
