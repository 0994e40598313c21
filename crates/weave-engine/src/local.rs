//! A replica on this machine: a directory with its index.

use crate::replica::{
    Applied, Finish, Foreign, IgnoreSpec, Issue, Provider, Replica, ReplicaInfo, ScanSummary, Wants,
};
use crate::SyncError;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weave_chunk::{ChunkList, Node};
use weave_core::path::STATE_DIR;
use weave_core::{Hash, Object};
use weave_fs::ignore::{Matcher, IGNORE_FILE};
use weave_fs::scan::ScanOptions;
use weave_fs::{join, ContentSource, FsIssue, Location, Op, OpKind, Part, Stage};
use weave_index::{Batch, Index, LocalEntry};

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
    /// The full index, once loaded.
    entries: Option<BTreeMap<String, LocalEntry>>,
    /// Tree nodes built for serving, per content (the last few).
    trees: Vec<(Hash, HashMap<Hash, Node>)>,
    /// Where each content is, built once per state of `entries` (serving
    /// chunks asks for it once per content).
    locations: Option<HashMap<Hash, Vec<Location>>>,
    /// The next scan looks only at these paths (see [`Replica::limit_scan`]).
    scan_only: Option<Vec<String>>,
}

impl LocalReplica {
    /// Opens the replica at `root` (already checked and canonical). On a
    /// dry run nothing is created: a replica without state gets a
    /// throw-away index.
    pub fn open(root: &Path, display: &str, dry_run: bool) -> Result<LocalReplica, SyncError> {
        let state = root.join(STATE_DIR);
        crate::kind::claim_kind(&state, "files", display, dry_run)?;
        let (index, mut info) = crate::replica::open_index(&state, dry_run)?;
        info.ignore_file = {
            let f = root.join(IGNORE_FILE);
            std::fs::read_to_string(&f)
                .ok()
                .map(|t| (f.display().to_string(), t))
        };
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

    fn load(&mut self) -> Result<&mut BTreeMap<String, LocalEntry>, SyncError> {
        if self.entries.is_none() {
            let mut m = self.index.load_entries()?;
            for le in &self.scanned {
                m.insert(le.entry.path.clone(), le.clone());
            }
            self.entries = Some(m);
        }
        Ok(self.entries.as_mut().expect("loaded above"))
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
            for (p, le) in entries {
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

impl Replica for LocalReplica {
    fn display(&self) -> &str {
        &self.display
    }

    fn is_local(&self) -> bool {
        true
    }

    fn local_root(&self) -> Option<PathBuf> {
        Some(self.root.clone())
    }

    fn info(&self) -> &ReplicaInfo {
        &self.info
    }

    fn limit_scan(&mut self, paths: Vec<String>) {
        self.scan_only = Some(paths);
    }

    fn scan(&mut self, ignore: &IgnoreSpec, dry_run: bool) -> Result<ScanSummary, SyncError> {
        let matcher = Matcher::from_files(&ignore.files, &ignore.patterns)?;
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
        };
        let o = weave_fs::scan(&self.root, &mut self.index, &opts)?;
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
        if !dry_run && (!o.changed.is_empty() || !o.contents.is_empty()) {
            self.index.write(&Batch {
                entries: o.changed.clone(),
                contents: o.contents.clone(),
                ..Default::default()
            })?;
        }
        self.info.seq = self.index.seq();
        self.info.clock = self.index.clock();
        self.scanned = o.changed;
        for l in o.contents {
            self.scanned_contents.insert(l.content_id(), l);
        }
        self.entries = None;
        self.locations = None;
        Ok(summary)
    }

    fn entries(&mut self) -> Result<BTreeMap<String, LocalEntry>, SyncError> {
        Ok(self.load()?.clone())
    }

    fn chunk_list(&mut self, content: &Hash) -> Option<ChunkList> {
        self.list(content)
    }

    fn serve_nodes(&mut self, wants: &Wants) -> Result<Vec<Vec<Option<Vec<u8>>>>, SyncError> {
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
            let list = self.list(content);
            let file = locations.get(content).and_then(|ls| {
                ls.iter().find_map(|l| {
                    // Every chunk read is verified before it is sent, so a
                    // file replaced since the scan cannot leak other bytes.
                    std::fs::File::open(&l.path).ok()
                })
            });
            let offsets: HashMap<Hash, (u64, u32)> = list
                .map(|l| {
                    l.with_offsets()
                        .map(|(o, c)| (c.hash, (o, c.len)))
                        .collect()
                })
                .unwrap_or_default();
            for h in hashes {
                let data = match (&file, offsets.get(h)) {
                    (Some(f), Some(&(off, len))) => {
                        let mut buf = vec![0u8; len as usize];
                        // A file changed since its scan no longer holds the
                        // chunk: say so rather than send wrong bytes.
                        (f.read_exact_at(&mut buf, off).is_ok() && weave_chunk::verify(&buf, h))
                            .then_some(buf)
                    }
                    _ => None,
                };
                if let Err(e) = sink(*h, data) {
                    self.locations = Some(locations);
                    return Err(e);
                }
            }
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
        let mut errors: Vec<Issue> = Vec::new();
        // 1. The chunk list of every content to write: known here, known
        //    to another local replica, or fetched as a tree.
        let (lists, issues) =
            crate::replica::lists_for(&ops, &|c| self.list(c), foreign, provider)?;
        errors.extend(issues);
        // 2. Chunks found nowhere on this machine come from the provider
        //    into the stage (kept if the run is interrupted).
        let state = self.root.join(STATE_DIR);
        let mut stage = Stage::open(&state).map_err(|e| SyncError::State {
            path: state.clone(),
            problem: format!("cannot open the transfer stage: {e}"),
        })?;
        let t = std::time::Instant::now();
        let mut wants: Vec<(Hash, Vec<Hash>)> = Vec::new();
        let mut asked: HashSet<Hash> = HashSet::new();
        // Chunks for the pack, and for part files (large contents with
        // nothing of them here: they land by a rename, not a copy).
        let mut to_stage: HashSet<Hash> = HashSet::new();
        let mut parts: Vec<Part> = Vec::new();
        let mut routes: HashMap<Hash, Vec<usize>> = HashMap::new();
        for op in ops.iter().filter(|o| o.kind == OpKind::WriteFile) {
            let Object::File { content, .. } = &op.target.object else {
                continue;
            };
            let Some(list) = lists.get(content) else {
                continue;
            };
            if own.contains_key(content) || foreign.locations.contains_key(content) {
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
                if let Ok(part) = stage.part(list) {
                    let missing = part.missing();
                    for h in &missing {
                        routes.entry(*h).or_default().push(parts.len());
                    }
                    let ask: Vec<Hash> = missing.into_iter().filter(|h| asked.insert(*h)).collect();
                    if !ask.is_empty() {
                        wants.push((*content, ask));
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
        let mut flusher = None;
        if !wants.is_empty() {
            let mut bad = 0u64;
            let stage_error = |e: std::io::Error| SyncError::State {
                path: state.clone(),
                problem: format!("cannot write the transfer stage: {e}"),
            };
            // A part that is complete goes to disk while the rest arrives
            // (the writes are made durable before they land in any case).
            let (flush_tx, flush_rx) = std::sync::mpsc::channel::<std::fs::File>();
            flusher = Some(std::thread::spawn(move || {
                for f in flush_rx {
                    let _ = f.sync_data();
                }
            }));
            // Verified once, on arrival (I-3): here, unless the provider
            // already did.
            let verified = provider.verified();
            let mut sink = |h: Hash, data: Vec<u8>| -> Result<(), SyncError> {
                let good = verified || weave_chunk::verify(&data, &h);
                let good = good
                    && (!to_stage.contains(&h)
                        || stage.add_verified(&h, &data).map_err(stage_error)?);
                if !good {
                    bad += 1;
                    return Ok(());
                }
                for &i in routes.get(&h).into_iter().flatten() {
                    parts[i].put(&h, &data).map_err(stage_error)?;
                    if parts[i].complete() {
                        if let Ok(f) = parts[i].handle() {
                            let _ = flush_tx.send(f);
                        }
                    }
                }
                Ok(())
            };
            provider.chunks(&wants, &mut sink)?;
            if bad > 0 {
                errors.push(Issue {
                    path: String::new(),
                    message: format!(
                        "{bad} chunks received failed their hash and were dropped; the files that need them are retried next time"
                    ),
                });
            }
        }
        // 3. Carry the operations out.
        let staged = stage.view();
        let parts: HashMap<Hash, PathBuf> = parts
            .iter()
            .filter(|p| p.complete())
            .map(|p| (p.content(), p.path().to_path_buf()))
            .collect();
        tracing::debug!(elapsed = ?t.elapsed(), stage = staged.as_ref().map_or(0, |s| s.1.len()), parts = parts.len(), "received chunks");
        let outcome = {
            let mut locations = own;
            for (c, ls) in &foreign.locations {
                locations.entry(*c).or_default().extend(ls.iter().cloned());
            }
            let src = Source {
                rep: self,
                lists: &lists,
                locations: &locations,
                staged: staged.as_ref(),
                parts: &parts,
            };
            weave_fs::apply(&self.root, &ops, &src, progress)
        };
        if let Some(f) = flusher {
            let _ = f.join();
        }
        errors.extend(outcome.issues.iter().map(|i| self.issue(i)));
        // 4. Record what was done.
        let id = self.index.id();
        let mut batch = Batch::default();
        let mut done = Vec::with_capacity(outcome.done.len());
        let entries = self.entries.as_mut().expect("loaded above");
        for d in outcome.done {
            self.index.observe(d.entry.vv.get(id));
            let le = LocalEntry {
                entry: d.entry.clone(),
                seq: self.index.next_seq(),
                stat: d.stat,
            };
            entries.insert(le.entry.path.clone(), le.clone());
            batch.entries.push(le);
            if let Some(list) = d.content {
                batch.contents.push(list);
            }
            done.push((d.op, d.entry));
        }
        self.index.write(&batch)?;
        self.info.seq = self.index.seq();
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
        self.load()?;
        let entries = self.entries.as_ref().expect("loaded above");
        crate::replica::finish_index(&mut self.index, entries, fin)
    }
}

/// Content lookups for this replica's executor.
struct Source<'a> {
    rep: &'a LocalReplica,
    lists: &'a HashMap<Hash, ChunkList>,
    locations: &'a HashMap<Hash, Vec<Location>>,
    staged: Option<&'a (PathBuf, Arc<HashMap<Hash, u64>>)>,
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

    fn staged(&self) -> Option<&(PathBuf, Arc<HashMap<Hash, u64>>)> {
        self.staged
    }

    fn part(&self, content: &Hash) -> Option<PathBuf> {
        // Gone once a write took it (then that write's files serve).
        self.parts.get(content).filter(|p| p.exists()).cloned()
    }
}
