//! A replica on this machine: a directory with its index.

use crate::replica::{
    Applied, Entries, Finish, Foreign, IgnoreSpec, Issue, LocalTree, Prehashed, Provider, Replica,
    ReplicaInfo, ScanSummary, ServedNodes, Wants,
};
use crate::SyncError;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weave_chunk::{ChunkList, Node};
use weave_core::ignore::Matcher;
use weave_core::path::STATE_DIR;
use weave_core::LocalEntry;
use weave_core::{Entry, Hash, Object, ReplicaId};
use weave_core::{Op, OpKind};
use weave_fs::scan::ScanOptions;
use weave_fs::{join, ContentSource, FsIssue, Location, Part, PartWriter, Stage};
use weave_index::{Batch, Index};

/// Contents at least this large with nothing of them on this machine are
/// received into a part file of their own (see [`weave_fs::Part`]).
const PART_MIN: u64 = 1 << 20;

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
    /// Tree nodes built for serving, per content (the last few).
    trees: Vec<(Hash, HashMap<Hash, Node>)>,
    /// Where each content is, built once per state of `entries` (serving
    /// chunks asks for it once per content).
    locations: Option<HashMap<Hash, Vec<Location>>>,
    /// The next scan looks only at these paths (see [`LocalTree::limit_scan`]).
    scan_only: Option<Vec<String>>,
    /// Files hashed ahead of the next scan (see [`LocalTree::prehash`]).
    prehashed: Option<weave_fs::Prehashed>,
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
        crate::kind::claim_kind(&state, "files", display, dry_run)?;
        let (index, mut info) = crate::replica::open_index(&state, dry_run)?;
        info.ignore_file = weave_fs::ignore::read_file(root);
        Ok(LocalReplica {
            display: display.to_string(),
            root: root.to_path_buf(),
            index,
            info,
            scanned: Vec::new(),
            scanned_contents: HashMap::new(),
            entries: None,
            trees: Vec::new(),
            locations: None,
            scan_only: None,
            prehashed: None,
            kept: HashMap::new(),
            serving: None,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Saves the versions a run replaced or removed (still in the trash)
    /// in the version store, then applies its retention policy. A removed
    /// file whose content this run wrote elsewhere (a rename) lives on and
    /// is not saved. Returns what could not be kept.
    fn keep_versions(
        &self,
        replaced: &[weave_fs::Replaced],
        written: &HashSet<Hash>,
    ) -> Vec<Issue> {
        let mut issues = Vec::new();
        let mut picked = Vec::new();
        for r in replaced {
            let Object::File { content, .. } = &r.old.object else {
                continue;
            };
            if r.deleted && written.contains(content) {
                continue;
            }
            match self.list(content) {
                Some(l) => picked.push((r, l)),
                None => issues.push(Issue {
                    path: r.path.clone(),
                    message: "its old version was not kept: its chunk list is unknown".into(),
                }),
            }
        }
        issues.extend(self.save_versions(&picked));
        issues
    }

    /// Saves old versions (each with its chunk list) in the version store
    /// and applies the retention policy. Returns what could not be kept.
    fn save_versions(&self, picked: &[(&weave_fs::Replaced, ChunkList)]) -> Vec<Issue> {
        if picked.is_empty() {
            return Vec::new();
        }
        let state = self.root.join(STATE_DIR);
        let store = match weave_store::Store::open(&state) {
            Ok(s) => s,
            Err(e) => {
                return vec![Issue {
                    path: String::new(),
                    message: format!("old versions were not kept: {e}"),
                }]
            }
        };
        let mut issues = Vec::new();
        let items: Vec<weave_store::ToSave> = picked
            .iter()
            .map(|(r, l)| weave_store::ToSave {
                path: &r.path,
                file: &r.file,
                chunks: l,
                mode: r.old.mode,
                mtime_ns: r.old.mtime_ns,
                origin: r.old.origin,
                reason: if r.deleted {
                    weave_store::Reason::Deleted
                } else {
                    weave_store::Reason::Replaced
                },
                trusted: r.stat.is_some_and(|s| !s.racy),
                movable: true,
            })
            .collect();
        let t = std::time::Instant::now();
        match store.save(&items) {
            Ok(results) => {
                for ((r, _), res) in picked.iter().zip(results) {
                    if let Err(m) = res {
                        issues.push(Issue {
                            path: r.path.clone(),
                            message: format!("its old version was not kept: {m}"),
                        });
                    }
                }
            }
            Err(e) => issues.push(Issue {
                path: String::new(),
                message: format!("old versions were not kept: {e}"),
            }),
        }
        if let Err(e) = store.prune(weave_store::now_ns()) {
            issues.push(Issue {
                path: String::new(),
                message: format!("old versions were not pruned: {e}"),
            });
        }
        tracing::debug!(versions = items.len(), elapsed = ?t.elapsed(), "kept old versions");
        issues
    }

    /// Saves the old versions an interrupted run moved to the trash and
    /// did not get to save (read again and hashed: nothing vouches for
    /// them now), then empties the trash. Returns how many were kept and
    /// what could not be.
    fn keep_leftovers(&self) -> (usize, Vec<Issue>) {
        let left = weave_fs::trash_leftovers(&self.root);
        if left.is_empty() {
            return (0, Vec::new());
        }
        let state = self.root.join(STATE_DIR);
        let known = weave_store::Store::open(&state).ok();
        let mut issues = Vec::new();
        let mut picked = Vec::new();
        for r in &left {
            let list = match std::fs::File::open(&r.file).and_then(weave_chunk::chunk_reader) {
                Ok(l) => l,
                Err(e) => {
                    issues.push(Issue {
                        path: r.path.clone(),
                        message: format!(
                            "an interrupted sync's old version of it was not kept: cannot read {}: {e}",
                            r.file.display()
                        ),
                    });
                    continue;
                }
            };
            // Saved already (the run was killed while saving)?
            let content = list.content_id();
            let saved = known.as_ref().is_some_and(|s| {
                s.versions(&r.path).is_ok_and(|vs| {
                    vs.iter()
                        .any(|v| v.content == content && v.mtime_ns == r.old.mtime_ns)
                })
            });
            if !saved {
                picked.push((r, list));
            }
        }
        drop(known);
        let n = picked.len();
        issues.extend(self.save_versions(&picked));
        if issues.is_empty() {
            weave_fs::clear_trash(&self.root);
        }
        (n, issues)
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

    fn list(&self, content: &Hash) -> Option<ChunkList> {
        if let Some(l) = self.scanned_contents.get(content) {
            return Some(l.clone());
        }
        self.index.chunk_list(content).ok().flatten()
    }

    /// Files of this replica that hold each content, with their stats.
    fn own_locations(&self) -> HashMap<Hash, Vec<Location>> {
        let mut m: HashMap<Hash, Vec<Location>> = HashMap::new();
        if let Some(entries) = &self.entries {
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

impl LocalTree for LocalReplica {
    fn root(&self) -> &Path {
        &self.root
    }

    fn limit_scan(&mut self, paths: Vec<String>) {
        self.scan_only = Some(paths);
    }

    fn prehash(&mut self, patterns: &[String], stop: &std::sync::atomic::AtomicBool) {
        let Ok(matcher) = weave_fs::ignore::build(&[self.root.as_path()], patterns) else {
            return;
        };
        let t = std::time::Instant::now();
        let hashed = weave_fs::prehash(&self.root, Some(&self.index), &matcher, stop);
        tracing::debug!(files = hashed.len(), elapsed = ?t.elapsed(), "hashed ahead of the scan");
        self.prehashed = Some(hashed);
    }

    fn adopt_prehashed(&mut self, hashed: Prehashed) {
        // Only the files kind makes these for a tree; anything else is
        // not work done for this replica.
        if let Ok(h) = hashed.0.downcast::<weave_fs::Prehashed>() {
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
            weave_fs::restore_modes(&self.root);
        }
        let (rescued, rescue_issues) = if dry_run {
            (0, Vec::new())
        } else {
            self.keep_leftovers()
        };
        let opts = ScanOptions {
            matcher: &matcher,
            remove_temps: !dry_run,
            only: self.scan_only.as_deref(),
            prehashed: prehashed.as_ref(),
        };
        // The index after this scan is what was loaded of it (nothing, if
        // it had no entries) with the scan's changes: not read back.
        let known = match self.entries.take() {
            Some(m) => Some(m),
            None if !self.index.has_entries()? => Some(Entries::default()),
            None => None,
        };
        let t = std::time::Instant::now();
        let o = weave_fs::scan(&self.root, &mut self.index, &opts)?;
        tracing::debug!(changed = o.changed.len(), elapsed = ?t.elapsed(), "walked and hashed");
        if let Some(p) = prehashed {
            self.kept.extend(p.into_kept());
            tracing::debug!(
                contents = self.kept.len(),
                "small files' bytes kept from hashing ahead"
            );
        }
        self.scan_only = None;
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
            ..Default::default()
        };
        if !dry_run && !batch.is_empty() {
            let t = std::time::Instant::now();
            self.index.write(&batch)?;
            tracing::debug!(elapsed = ?t.elapsed(), "scan recorded");
        }
        self.info.seq = self.index.seq();
        self.info.clock = self.index.clock();
        self.entries = known.map(|mut m| {
            let map = Arc::make_mut(&mut m);
            for le in &batch.entries {
                map.insert(le.entry.path.clone(), le.clone());
            }
            m
        });
        self.scanned = batch.entries;
        for l in batch.contents {
            self.scanned_contents.insert(l.content_id(), l);
        }
        self.locations = None;
        Ok(summary)
    }

    fn entries(&mut self) -> Result<Entries, SyncError> {
        Ok(self.load()?.clone())
    }

    fn chunk_list(&mut self, content: &Hash) -> Option<ChunkList> {
        self.list(content)
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
        self.load()?;
        if self.locations.is_none() {
            self.locations = Some(self.own_locations());
        }
        let locations = self.locations.take().expect("built above");
        for (content, hashes) in wants {
            // A small file hashed ahead: its bytes are at hand (they are
            // the bytes its chunks were hashed from).
            if let Some(list) = self
                .kept
                .contains_key(content)
                .then(|| self.list(content))
                .flatten()
            {
                let bytes = &self.kept[content];
                let read: Vec<(Hash, Option<Vec<u8>>)> = hashes
                    .iter()
                    .map(|h| {
                        let data = list
                            .with_offsets()
                            .find(|(_, c)| c.hash == *h)
                            .and_then(|(o, c)| bytes.get(o as usize..o as usize + c.len as usize));
                        (*h, data.map(<[u8]>::to_vec))
                    })
                    .collect();
                for (h, data) in read {
                    if let Err(e) = sink(h, data) {
                        self.locations = Some(locations);
                        return Err(e);
                    }
                }
                continue;
            }
            // The file, and the stat recorded when it was hashed (if that
            // was not racy).
            let src = locations.get(content).and_then(|ls| {
                ls.iter().find_map(|l| {
                    std::fs::File::open(&l.path)
                        .ok()
                        .map(|f| (f, l.stat.filter(|s| !s.racy)))
                })
            });
            let offsets = match self.serving.take() {
                Some((c, offsets)) if c == *content => offsets,
                _ => self
                    .list(content)
                    .map(|l| {
                        l.with_offsets()
                            .map(|(o, c)| (c.hash, (o, c.len)))
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            // Chunks read from a file whose stat is the recorded one before
            // and after the reads are the hashed bytes; any other chunk read
            // is verified before it is sent, so a file changed since the
            // scan cannot leak other bytes (a chunk that fails is reported
            // missing rather than sent wrong).
            let unchanged = || {
                src.as_ref().is_some_and(|(f, st)| {
                    st.is_some_and(|st| f.metadata().is_ok_and(|m| weave_fs::same_stat(&m, &st)))
                })
            };
            for group in hashes.chunks(64) {
                let before = unchanged();
                let read: Vec<(Hash, Option<Vec<u8>>)> = group
                    .iter()
                    .map(|h| {
                        let data = match (&src, offsets.get(h)) {
                            (Some((f, _)), Some(&(off, len))) => {
                                weave_fs::read_at(f, off, len as usize).ok()
                            }
                            _ => None,
                        };
                        (*h, data)
                    })
                    .collect();
                let trusted = before && unchanged();
                for (h, data) in read {
                    let data = data.filter(|d| trusted || weave_chunk::verify(d, &h));
                    if let Err(e) = sink(h, data) {
                        self.locations = Some(locations);
                        return Err(e);
                    }
                }
            }
            self.serving = Some((*content, offsets));
        }
        self.locations = Some(locations);
        Ok(())
    }

    fn apply(
        &mut self,
        ops: Vec<Op>,
        foreign: &Foreign,
        provider: &mut dyn Provider,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Applied, SyncError> {
        self.load()?;
        let own = self.own_locations();
        self.locations = None;
        let siblings = sibling_locations(foreign);
        let mut errors: Vec<Issue> = Vec::new();
        // 1. The chunk list of every content to write: known here, known
        //    to another local replica, or fetched as a tree.
        let (lists, issues) =
            crate::replica::lists_for(&ops, &|c| self.list(c), foreign, provider)?;
        errors.extend(issues);
        tracing::debug!(contents = lists.len(), "chunk lists known");
        // 2. Chunks found nowhere on this machine come from the provider
        //    into the stage (kept if the run is interrupted).
        let state = self.root.join(STATE_DIR);
        let mut stage = Stage::open(&state).map_err(|e| SyncError::State {
            path: state.clone(),
            problem: format!("cannot open the transfer stage: {e}"),
        })?;
        let stage_error = |e: std::io::Error| SyncError::State {
            path: state.clone(),
            problem: format!("cannot write the transfer stage: {e}"),
        };
        let mut wants: Vec<(Hash, Vec<Hash>)> = Vec::new();
        let mut asked: HashSet<Hash> = HashSet::new();
        // Chunks for the pack, and for part files (large contents with
        // nothing of them here: they land by a rename, not a copy).
        let mut to_stage: HashSet<Hash> = HashSet::new();
        let mut parts: Vec<Part> = Vec::new();
        // Writes the parts (straight to the disk where it can) and flushes
        // them as they fill, while the receiving thread goes on.
        let mut writer: Option<Arc<PartWriter>> = None;
        let mut routes: HashMap<Hash, Vec<usize>> = HashMap::new();
        // Asked for after the chunks for the stage, so that the files
        // built from the stage can be written while they arrive.
        let mut part_wants: Vec<(Hash, Vec<Hash>)> = Vec::new();
        for op in ops.iter().filter(|o| o.kind == OpKind::WriteFile) {
            let Object::File { content, .. } = &op.target.object else {
                continue;
            };
            let Some(list) = lists.get(content) else {
                continue;
            };
            if own.contains_key(content) || siblings.contains_key(content) {
                continue;
            }
            let old: HashSet<Hash> = match op.current.as_ref().map(|c| &c.entry.object) {
                Some(Object::File { content: old, .. }) => self
                    .list(old)
                    .map(|l| l.chunks.iter().map(|c| c.hash).collect())
                    .unwrap_or_default(),
                _ => HashSet::new(),
            };
            if list.size() >= PART_MIN && old.is_empty() {
                if parts.iter().any(|p| p.content() == *content) {
                    continue;
                }
                // Without a part file (it cannot be made), the pack.
                if let Ok(mut part) = stage.part(list) {
                    part.write_with(writer.get_or_insert_with(|| PartWriter::start(true)));
                    let missing = part.missing();
                    for h in &missing {
                        routes.entry(*h).or_default().push(parts.len());
                    }
                    let ask: Vec<Hash> = missing.into_iter().filter(|h| asked.insert(*h)).collect();
                    if !ask.is_empty() {
                        part_wants.push((*content, ask));
                    }
                    parts.push(part);
                    continue;
                }
            }
            let missing: Vec<Hash> = list
                .chunks
                .iter()
                .map(|c| c.hash)
                .filter(|h| !old.contains(h) && !stage.contains(h) && to_stage.insert(*h))
                .filter(|h| asked.insert(*h))
                .collect();
            if !missing.is_empty() {
                wants.push((*content, missing));
            }
        }
        // New files whose chunks all come into the stage are written (by
        // a thread of their own) as soon as the stage is complete, while
        // the chunks of the part files still arrive.
        let early_idx: Vec<usize> = if part_wants.is_empty() {
            Vec::new()
        } else {
            early_writes(&self.root, &ops, &|c: &Hash| {
                !own.contains_key(c)
                    && !siblings.contains_key(c)
                    && !parts.iter().any(|p| p.content() == *c)
                    && lists.get(c).is_some_and(|l| {
                        l.chunks
                            .iter()
                            .all(|ch| to_stage.contains(&ch.hash) || stage.contains(&ch.hash))
                    })
            })
        };
        let early_ops: Vec<Op> = early_idx.iter().map(|&i| ops[i].clone()).collect();
        wants.extend(part_wants);
        let mut locations = own;
        for (c, ls) in siblings {
            locations.entry(c).or_default().extend(ls);
        }
        let no_parts: HashMap<Hash, PathBuf> = HashMap::new();
        // The files written early are recorded as soon as they are written,
        // while the rest still arrives: numbered after this run's last
        // sequence number (nothing else takes one until the transfer ends).
        let (id, seq, clock) = (self.index.id(), self.index.seq(), self.index.clock());
        let early_idx = &early_idx;
        let this: &LocalReplica = self;
        tracing::debug!(wanted = wants.len(), "asking for chunks");
        let t = std::time::Instant::now();
        let (fetched, early) = std::thread::scope(|scope| {
            let (go_tx, go_rx) = std::sync::mpsc::channel::<Option<weave_fs::stage::StageView>>();
            let early = (!early_ops.is_empty()).then(|| {
                let (lists, locations, no_parts, early_ops) =
                    (&lists, &locations, &no_parts, &early_ops);
                scope.spawn(move || {
                    let staged = go_rx.recv().ok().flatten()?;
                    tracing::debug!(
                        files = early_ops.len(),
                        "writing files from the stage while the rest arrives"
                    );
                    let src = Source {
                        rep: this,
                        lists,
                        locations,
                        staged: Some(&staged),
                        parts: no_parts,
                    };
                    let mut e = weave_fs::apply(&this.root, early_ops, &src, progress);
                    for d in &mut e.done {
                        d.op = early_idx[d.op];
                    }
                    let t = std::time::Instant::now();
                    let r = Record::of(id, std::mem::take(&mut e.done), seq, clock);
                    let written = match r.out.is_empty() {
                        true => Ok(()),
                        false => this.index.write_as(&r.batch, r.clock, r.seq),
                    };
                    tracing::debug!(entries = r.out.len(), elapsed = ?t.elapsed(), "recorded the files written early");
                    Some((e, r, written))
                })
            });
            let mut go = early.as_ref().map(|_| go_tx);
            let mut fetched = Ok(());
            if !wants.is_empty() {
                let mut bad = 0u64;
                // Verified once, on arrival (I-3): here, unless the provider
                // already did.
                let verified = provider.verified();
                let staged_all = stage.len() + to_stage.len();
                let mut sink = |h: Hash, data: Vec<u8>| -> Result<(), SyncError> {
                    let good = verified || weave_chunk::verify(&data, &h);
                    let good = good
                        && (!to_stage.contains(&h)
                            || stage.add_verified(&h, &data).map_err(stage_error)?);
                    if !good {
                        bad += 1;
                        return Ok(());
                    }
                    if go.is_some() && stage.len() >= staged_all {
                        tracing::debug!(chunks = staged_all, elapsed = ?t.elapsed(), "stage complete");
                        let view = stage.view().map_err(stage_error)?;
                        let _ = go.take().expect("checked").send(view);
                    }
                    for &i in routes.get(&h).into_iter().flatten() {
                        parts[i].put(&h, &data).map_err(stage_error)?;
                        // Made durable while the rest arrives, every few MiB
                        // and when complete (the writes are made durable
                        // before they land in any case).
                        if parts[i].flush_due() {
                            parts[i].flush();
                        }
                    }
                    Ok(())
                };
                fetched = provider.chunks(&wants, &mut sink);
                tracing::debug!(elapsed = ?t.elapsed(), "transfer ended");
                if bad > 0 {
                    errors.push(Issue {
                        path: String::new(),
                        message: format!(
                            "{bad} chunks received failed their hash and were dropped; the files that need them are retried next time"
                        ),
                    });
                }
            }
            // The files written early still get what did arrive (and
            // nothing at all if the transfer failed).
            if let Some(go) = go {
                let view = match fetched {
                    Ok(()) => stage.view().map_err(stage_error),
                    Err(_) => Ok(None),
                };
                let _ = go.send(view.unwrap_or_else(|e| {
                    fetched = Err(e);
                    None
                }));
            }
            let early = early.and_then(|h| h.join().expect("early writer panicked"));
            tracing::debug!(elapsed = ?t.elapsed(), "files from the stage written");
            (fetched, early)
        });
        // Everything handed to the part writer is written (and what it
        // could not write is not whole).
        let unwritten = writer.map(|w| w.finish()).unwrap_or_default();
        if !unwritten.is_empty() {
            errors.push(Issue {
                path: String::new(),
                message: format!(
                    "could not write what arrived for {} large file(s) in {}; they are retried next time (is the disk full?)",
                    unwritten.len(),
                    state.join(weave_fs::stage::PARTS_DIR).display()
                ),
            });
        }
        // What was written early is recorded whatever happens next.
        let mut outcome = weave_fs::ApplyOutcome::default();
        let mut done = Vec::new();
        if let Some((e, r, written)) = early {
            outcome.bytes_local += e.bytes_local;
            outcome.bytes_remote += e.bytes_remote;
            outcome.issues.extend(e.issues);
            written?;
            done = self.remember(r);
        }
        fetched?;
        // 3. Carry the (other) operations out.
        let staged = stage.view().map_err(stage_error)?;
        let parts: HashMap<Hash, PathBuf> = parts
            .iter()
            .filter(|p| p.complete() && !unwritten.contains(p.path()))
            .map(|p| (p.content(), p.path().to_path_buf()))
            .collect();
        tracing::debug!(elapsed = ?t.elapsed(), stage = staged.as_ref().map_or(0, |s| s.map.len()), parts = parts.len(), "received chunks");
        {
            let src = Source {
                rep: self,
                lists: &lists,
                locations: &locations,
                staged: staged.as_ref(),
                parts: &parts,
            };
            let rest = if early_idx.is_empty() {
                weave_fs::apply(&self.root, &ops, &src, progress)
            } else {
                let early: HashSet<usize> = early_idx.iter().copied().collect();
                let rest_idx: Vec<usize> = (0..ops.len()).filter(|i| !early.contains(i)).collect();
                let rest_ops: Vec<Op> = rest_idx.iter().map(|&i| ops[i].clone()).collect();
                let mut r = weave_fs::apply(&self.root, &rest_ops, &src, progress);
                for d in &mut r.done {
                    d.op = rest_idx[d.op];
                }
                r
            };
            outcome.bytes_local += rest.bytes_local;
            outcome.bytes_remote += rest.bytes_remote;
            outcome.issues.extend(rest.issues);
            outcome.done.extend(rest.done);
            outcome.replaced = rest.replaced;
        }
        errors.extend(outcome.issues.iter().map(|i| self.issue(i)));
        // 4. Record what was done.
        let t = std::time::Instant::now();
        done.extend(self.record(outcome.done)?);
        tracing::debug!(entries = done.len(), elapsed = ?t.elapsed(), "recorded");
        if errors.is_empty() {
            stage.clear();
        }
        // 5. What this run replaced or removed goes to the version store.
        if !outcome.replaced.is_empty() {
            let written: HashSet<Hash> = done
                .iter()
                .filter_map(|(_, e)| match &e.object {
                    Object::File { content, .. } => Some(*content),
                    _ => None,
                })
                .collect();
            errors.extend(self.keep_versions(&outcome.replaced, &written));
        }
        weave_fs::clear_trash(&self.root);
        Ok(Applied {
            done,
            errors,
            bytes_local: outcome.bytes_local,
            bytes_remote: outcome.bytes_remote,
        })
    }

    fn finish(&mut self, fin: &Finish) -> Result<(), SyncError> {
        self.kept = HashMap::new();
        self.load()?;
        let entries = self.entries.as_ref().expect("loaded above");
        crate::replica::finish_index(&mut self.index, entries, fin)
    }
}

impl LocalReplica {
    /// Records in the index what the executor did: (operation index, the
    /// version now recorded) for each.
    fn record(&mut self, done: Vec<weave_fs::Done>) -> Result<Vec<(usize, Entry)>, SyncError> {
        let r = Record::of(self.index.id(), done, self.index.seq(), self.index.clock());
        self.index.write_as(&r.batch, r.clock, r.seq)?;
        Ok(self.remember(r))
    }

    /// Takes a record another thread wrote with [`Index::write_as`] (its
    /// sequence numbers and clock, and its entries).
    fn remember(&mut self, r: Record) -> Vec<(usize, Entry)> {
        self.index.observe(r.clock);
        self.index.take_seqs_to(r.seq);
        self.info.seq = self.index.seq();
        let entries = Arc::make_mut(self.entries.as_mut().expect("loaded before any apply"));
        for le in r.batch.entries {
            entries.insert(le.entry.path.clone(), le);
        }
        r.out
    }
}

/// What recording an executor's results writes to the index.
struct Record {
    batch: Batch,
    /// (operation index, the version now recorded) for each.
    out: Vec<(usize, Entry)>,
    /// The last sequence number taken.
    seq: u64,
    /// The clock once this replica's counters in the entries are seen.
    clock: u64,
}

impl Record {
    /// The record of `done`, numbered after sequence number `seq`, for an
    /// index whose clock is `clock`.
    fn of(id: ReplicaId, done: Vec<weave_fs::Done>, mut seq: u64, mut clock: u64) -> Record {
        let mut batch = Batch::default();
        let mut out = Vec::with_capacity(done.len());
        for d in done {
            clock = clock.max(d.entry.vv.get(id));
            seq += 1;
            batch.entries.push(LocalEntry {
                entry: d.entry.clone(),
                seq,
                stat: d.stat,
            });
            if let Some(list) = d.content {
                batch.contents.push(list);
            }
            out.push((d.op, d.entry));
        }
        Record {
            batch,
            out,
            seq,
            clock,
        }
    }
}

/// The operations that can be carried out on their own, before the others:
/// new files at free paths (nothing there, nothing removed there) whose
/// content `ready` says will be in the stage, and the new directories they
/// need, with nothing in their way either. Nothing they do depends on, or
/// is undone by, the other operations. Indices into `ops`; empty when too
/// few to be worth it.
fn early_writes(root: &Path, ops: &[Op], ready: &dyn Fn(&Hash) -> bool) -> Vec<usize> {
    let cleared: HashSet<&str> = ops
        .iter()
        .filter(|o| o.kind == OpKind::Remove)
        .map(|o| o.path.as_str())
        .collect();
    let live = |o: &Op| o.current.as_ref().is_some_and(|c| c.entry.is_live());
    // A path is usable as a parent if it is a real directory now (not
    // through a symlink: every ancestor checked) and nothing removes it,
    // or if an early directory makes it.
    let mut dir_ok: HashMap<String, bool> = HashMap::new();
    fn usable(
        root: &Path,
        p: &str,
        cleared: &HashSet<&str>,
        dir_ok: &mut HashMap<String, bool>,
    ) -> bool {
        if p.is_empty() {
            return true;
        }
        if let Some(&ok) = dir_ok.get(p) {
            return ok;
        }
        let parent = weave_core::path::parent(p).unwrap_or("");
        let ok = !cleared.contains(p)
            && usable(root, parent, cleared, dir_ok)
            && std::fs::symlink_metadata(join(root, p)).is_ok_and(|m| m.file_type().is_dir());
        dir_ok.insert(p.to_string(), ok);
        ok
    }
    let mut out = Vec::new();
    // The early directories: nothing is there, so nothing is in them (no
    // need to look for each of their files).
    let mut made: HashSet<&str> = HashSet::new();
    let mut dirs: Vec<(usize, &Op)> = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| o.kind == OpKind::MakeDir)
        .collect();
    dirs.sort_by_key(|(_, o)| o.path.matches('/').count());
    for (i, o) in dirs {
        let parent = weave_core::path::parent(&o.path).unwrap_or("");
        if live(o)
            || cleared.contains(o.path.as_str())
            || !usable(root, parent, &cleared, &mut dir_ok)
            || std::fs::symlink_metadata(join(root, &o.path)).is_ok()
        {
            continue;
        }
        dir_ok.insert(o.path.clone(), true);
        made.insert(o.path.as_str());
        out.push(i);
    }
    let dirs = out.len();
    for (i, o) in ops.iter().enumerate() {
        let Object::File { content, .. } = &o.target.object else {
            continue;
        };
        let parent = weave_core::path::parent(&o.path).unwrap_or("");
        if o.kind == OpKind::WriteFile
            && !live(o)
            && !cleared.contains(o.path.as_str())
            && ready(content)
            && usable(root, parent, &cleared, &mut dir_ok)
            && (made.contains(parent) || std::fs::symlink_metadata(join(root, &o.path)).is_err())
        {
            out.push(i);
        }
    }
    if out.len() - dirs < 32 {
        return Vec::new();
    }
    out.sort_unstable();
    out
}

/// Content lookups for this replica's executor.
struct Source<'a> {
    rep: &'a LocalReplica,
    lists: &'a HashMap<Hash, ChunkList>,
    locations: &'a HashMap<Hash, Vec<Location>>,
    staged: Option<&'a weave_fs::stage::StageView>,
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

    fn staged(&self) -> Option<&weave_fs::stage::StageView> {
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
    use weave_core::VersionVector;

    fn op(kind: OpKind, path: &str, object: Object) -> Op {
        Op {
            kind,
            path: path.into(),
            current: None,
            target: Entry {
                path: path.into(),
                object,
                mode: 0o644,
                mtime_ns: 0,
                vv: VersionVector::from_pairs(vec![(ReplicaId(1), 1)]),
                origin: ReplicaId(1),
            },
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
        let large = vec![9u8; weave_fs::scan::KEEP_FILE_MAX as usize * 2];
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
