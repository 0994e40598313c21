//! An object store with weave's index beside it: a replica.

use crate::observed::{Observed, MODE};
use crate::{check_name, ObjectStore};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use weave_chunk::ChunkList;
use weave_core::ignore::Matcher;
use weave_core::Op;
use weave_core::{Entry, Hash, Object};
use weave_core::{LocalEntry, Stat};
use weave_engine::{
    Applied, Finish, Foreign, IgnoreSpec, Issue, Provider, Replica, ReplicaInfo, ScanSummary,
    SyncError, Wants,
};
use weave_index::{Batch, Index};

mod apply;

/// A store of named objects as a replica of a sync: its index (version
/// vectors, sequence numbers, chunk lists, what it has integrated of each
/// peer) lives in a state directory of the caller's choosing.
///
/// A scan lists the store and compares each object's revision with the
/// one recorded: a new or changed object is read, chunked and hashed, and
/// gets a new version; an object gone from the store gets a tombstone.
/// Applying the plan fetches the chunks the replica lacks (its own objects
/// first, then the other replicas), verifies each, and commits all puts
/// and deletes in one [`ObjectStore::commit`], each conditional on the
/// revision the scan saw (I-5).
pub struct ObjectReplica<S: ObjectStore> {
    display: String,
    store: S,
    index: Index,
    info: ReplicaInfo,
    /// Changes found by this run's scan (not yet in the index on a dry run).
    scanned: Vec<LocalEntry>,
    scanned_contents: HashMap<Hash, ChunkList>,
    entries: Option<BTreeMap<String, LocalEntry>>,
    /// The last content read for serving: (content, bytes).
    last: Option<(Hash, Vec<u8>)>,
}

fn store_error(display: &str, what: &str, e: crate::StoreError) -> SyncError {
    SyncError::State {
        path: display.into(),
        problem: format!("the object store failed to {what}: {e}"),
    }
}

impl<S: ObjectStore> ObjectReplica<S> {
    /// Opens the replica of `store`, with its index in `state_dir`
    /// (created if need be, unless `dry_run`: then a replica without state
    /// gets a throw-away index and nothing is written).
    pub fn open(
        store: S,
        state_dir: &Path,
        display: &str,
        dry_run: bool,
    ) -> Result<ObjectReplica<S>, SyncError> {
        let index = weave_index::Index::open_for_sync(state_dir, dry_run)?;
        let info = weave_engine::ReplicaInfo::of(&index)?;
        Ok(ObjectReplica {
            display: display.to_string(),
            store,
            index,
            info,
            scanned: Vec::new(),
            scanned_contents: HashMap::new(),
            entries: None,
            last: None,
        })
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, to change it between syncs.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Closes the replica and gives the store back.
    pub fn into_store(self) -> S {
        self.store
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

    /// The bytes of `content`, read from an object that holds it (checked
    /// against its chunk list, so an object changed since the scan is not
    /// taken for it).
    fn content(&mut self, content: &Hash) -> Result<Option<Vec<u8>>, SyncError> {
        if let Some((c, d)) = &self.last {
            if c == content {
                return Ok(Some(d.clone()));
            }
        }
        let Some(list) = self.list(content) else {
            return Ok(None);
        };
        let names: Vec<String> = self
            .load()?
            .iter()
            .filter(|(_, le)| le.entry.object.content() == Some(*content))
            .map(|(p, _)| p.clone())
            .collect();
        for name in names {
            let Some(data) = self
                .store
                .read(&name)
                .map_err(|e| store_error(&self.display, &format!("read {name}"), e))?
            else {
                continue;
            };
            if holds(&data, &list) {
                self.last = Some((*content, data.clone()));
                return Ok(Some(data));
            }
        }
        Ok(None)
    }
}

/// True if `data` is exactly the content `list` describes (every chunk
/// verified).
fn holds(data: &[u8], list: &ChunkList) -> bool {
    data.len() as u64 == list.size()
        && list.with_offsets().all(|(o, c)| {
            let o = o as usize;
            weave_chunk::verify(&data[o..o + c.len as usize], &c.hash)
        })
}

impl<S: ObjectStore> Replica for ObjectReplica<S> {
    fn display(&self) -> &str {
        &self.display
    }

    fn is_local(&self) -> bool {
        // Its objects are not files other replicas could read directly.
        false
    }

    fn info(&self) -> &ReplicaInfo {
        &self.info
    }

    fn scan(&mut self, ignore: &IgnoreSpec, dry_run: bool) -> Result<ScanSummary, SyncError> {
        let matcher = Matcher::from_files(&ignore.files, &ignore.patterns)?;
        let mut summary = ScanSummary::default();
        let listed = self
            .store
            .list()
            .map_err(|e| store_error(&self.display, "list its objects", e))?;
        let known = self.index.load_entries()?;
        let id = self.index.id();
        let mut seen: HashSet<String> = HashSet::new();
        let mut changed: Vec<LocalEntry> = Vec::new();
        let mut contents: Vec<ChunkList> = Vec::new();
        // (name, new object, mtime, stat)
        let mut updates: Vec<(String, Object, i64, Option<Stat>)> = Vec::new();
        for l in listed {
            if let Err(why) = check_name(&l.name) {
                summary.errors.push(Issue {
                    path: l.name.clone(),
                    message: format!("not synced: {why}"),
                });
                continue;
            }
            if matcher.is_ignored(&l.name, false) || !seen.insert(l.name.clone()) {
                continue;
            }
            let old = known.get(&l.name);
            let unchanged = old.and_then(Observed::revision) == Some(l.revision);
            if unchanged {
                continue;
            }
            let Some(data) = self
                .store
                .read(&l.name)
                .map_err(|e| store_error(&self.display, &format!("read {}", l.name), e))?
            else {
                // Gone between the listing and the read: the next scan.
                continue;
            };
            let list = weave_chunk::chunk_bytes(&data);
            let content = list.content_id();
            let size = data.len() as u64;
            let st = Observed {
                revision: l.revision,
                size,
                mtime_ns: l.mtime_ns,
            }
            .stat();
            match old.filter(|le| le.entry.object.content() == Some(content)) {
                Some(le) => {
                    // Same content under a new revision: nothing to sync.
                    let mut le = le.clone();
                    le.stat = Some(st);
                    changed.push(le);
                }
                None => {
                    updates.push((
                        l.name.clone(),
                        Object::File { size, content },
                        l.mtime_ns,
                        Some(st),
                    ));
                    contents.push(list);
                }
            }
        }
        for (name, le) in &known {
            if le.entry.is_live() && !seen.contains(name) && !matcher.is_ignored(name, false) {
                updates.push((name.clone(), Object::Deleted, 0, None));
            }
        }
        for (name, object, mtime_ns, stat) in updates {
            let mut vv = known
                .get(&name)
                .map(|le| le.entry.vv.clone())
                .unwrap_or_default();
            self.index.observe(vv.get(id));
            vv.bump(id, self.index.tick());
            let live = object.is_live();
            changed.push(LocalEntry {
                entry: Entry {
                    path: name,
                    object,
                    mode: if live { MODE } else { 0 },
                    mtime_ns,
                    vv,
                    origin: id,
                    meta: None,
                },
                seq: self.index.next_seq(),
                stat,
            });
        }
        if !dry_run && (!changed.is_empty() || !contents.is_empty()) {
            self.index.write(&Batch {
                entries: changed.clone(),
                contents: contents.clone(),
                ..Default::default()
            })?;
        }
        self.info.seq = self.index.seq();
        self.info.clock = self.index.clock();
        self.scanned = changed;
        for l in contents {
            self.scanned_contents.insert(l.content_id(), l);
        }
        self.entries = None;
        self.last = None;
        Ok(summary)
    }

    fn entries(&mut self) -> Result<weave_engine::Entries, SyncError> {
        Ok(std::sync::Arc::new(self.load()?.clone()))
    }

    fn chunk_list(&mut self, content: &Hash) -> Option<ChunkList> {
        self.list(content)
    }

    fn serve_nodes(&mut self, wants: &Wants) -> Result<Vec<Vec<Option<Vec<u8>>>>, SyncError> {
        Ok(wants
            .iter()
            .map(|(content, hashes)| match self.list(content) {
                Some(l) => {
                    let nodes = weave_chunk::tree(&l.chunks).1;
                    hashes
                        .iter()
                        .map(|h| nodes.get(h).map(|n| n.encode()))
                        .collect()
                }
                None => vec![None; hashes.len()],
            })
            .collect())
    }

    fn serve_chunks(
        &mut self,
        wants: &Wants,
        sink: &mut dyn FnMut(Hash, Option<Vec<u8>>) -> Result<(), SyncError>,
    ) -> Result<(), SyncError> {
        for (content, hashes) in wants {
            let data = self.content(content)?;
            let at: HashMap<Hash, (usize, usize)> = self
                .list(content)
                .map(|l| {
                    l.with_offsets()
                        .map(|(o, c)| (c.hash, (o as usize, c.len as usize)))
                        .collect()
                })
                .unwrap_or_default();
            for h in hashes {
                let chunk = match (&data, at.get(h)) {
                    (Some(d), Some(&(o, len))) => Some(d[o..o + len].to_vec()),
                    _ => None,
                };
                sink(*h, chunk)?;
            }
        }
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
        let received = self.receive(&ops, foreign, provider, progress)?;
        self.write(&ops, received)
    }

    fn finish(&mut self, fin: &Finish) -> Result<(), SyncError> {
        self.load()?;
        let entries = self.entries.as_ref().expect("loaded above");
        weave_engine::finish_index(&mut self.index, Some(entries), fin)
    }
}
