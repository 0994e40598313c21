//! A bucket as a replica of a sync: its index is the view merged from
//! every record; what a sync writes to it is a new record, after the
//! packs of the chunks it did not hold.

use crate::pool::{Pack, Pool};
use crate::record::{Record, View};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use weave_chunk::ChunkList;
use weave_core::{Hash, LocalEntry, Op};
use weave_engine::{
    Applied, Entries, Finish, Foreign, IgnoreSpec, Issue, Provider, Replica, ReplicaInfo,
    ScanSummary, ServedNodes, SyncError, Wants,
};

/// The size a pack is uploaded at once it holds this much.
pub const PACK_TARGET: usize = 16 << 20;

/// A bucket replica of one sync.
pub struct BucketReplica {
    pool: Pool,
    view: View,
    entries: Entries,
    info: ReplicaInfo,
    dry_run: bool,
    /// The records read when it was opened.
    read: HashSet<String>,
    /// Bytes uploaded and downloaded.
    sent: u64,
    received: u64,
}

impl BucketReplica {
    /// The replica of the bucket `pool` (its records read now).
    pub fn new(pool: Pool, dry_run: bool) -> Result<BucketReplica, SyncError> {
        let live = pool.live_records().map_err(err)?;
        let read = live.iter().map(|(n, _)| n.clone()).collect();
        let mut view = View::default();
        for (name, r) in live {
            view.add(&name, r);
        }
        let mut r = BucketReplica {
            read,
            info: ReplicaInfo {
                id: pool.id,
                seq: 0,
                clock: 0,
                peers: HashMap::new(),
                ignore_fingerprint: None,
                rekeyed: false,
                ignore_file: None,
            },
            pool,
            view,
            entries: Arc::new(BTreeMap::new()),
            dry_run,
            sent: 0,
            received: 0,
        };
        r.refresh();
        Ok(r)
    }

    /// The index and facts the engine sees, from the view.
    fn refresh(&mut self) {
        let seq = self.view.seq();
        self.entries = Arc::new(
            self.view
                .all()
                .map(|e| {
                    (
                        e.path.clone(),
                        LocalEntry {
                            entry: e.clone(),
                            seq,
                            stat: None,
                        },
                    )
                })
                .collect(),
        );
        self.info.seq = seq;
        self.info.peers = self.view.integrated();
        self.info.ignore_fingerprint = self.view.ignore_fingerprint();
    }

    /// Uploads a pack, then a record of where its chunks are (a record
    /// of no versions): a push killed later leaves them found, and the
    /// next one does not upload them again.
    fn upload(&mut self, pack: Pack) -> Result<(), SyncError> {
        if pack.chunks.is_empty() {
            return Ok(());
        }
        let (id, bytes, chunks) = pack.finish();
        let bytes_len = bytes.len() as u64;
        self.sent += bytes_len;
        self.pool
            .store
            .put(&format!("packs/{id}"), bytes)
            .map_err(err)?;
        let rec = Record {
            time_ms: now_ms(),
            at: self.view.max_at,
            ..Record::of_pack(id, bytes_len, chunks)
        };
        let name = self.pool.write(&rec).map_err(err)?;
        self.view.add(&name, rec);
        Ok(())
    }

    /// When a prune swept records this sync read (they are gone), the
    /// records are read again, and the versions of `rec` whose content
    /// the bucket no longer holds whole are left out (the next sync
    /// uploads them again).
    fn not_swept_under(
        &mut self,
        rec: &mut Record,
        done: &mut Vec<(usize, weave_core::Entry)>,
        errors: &mut Vec<Issue>,
    ) -> Result<(), SyncError> {
        let now: HashSet<String> = self
            .pool
            .store
            .list("logs/")
            .map_err(err)?
            .into_iter()
            .collect();
        if self.read.is_subset(&now) {
            return Ok(());
        }
        self.read = now;
        self.view = self.pool.view().map_err(err)?;
        let view = &self.view;
        let nodes: HashMap<Hash, weave_chunk::Node> = rec
            .nodes
            .iter()
            .filter_map(|(h, b)| Some((*h, weave_chunk::Node::decode(b, h)?)))
            .collect();
        let whole = |content: &Hash| {
            let known = |h: &Hash| view.nodes.get(h).or_else(|| nodes.get(h)).cloned();
            let r = crate::prune::reach(std::iter::once(*content), &known);
            r.missing.is_empty()
                && r.chunks
                    .iter()
                    .all(|c| *c == weave_chunk::zero_chunk() || view.chunks.contains_key(c))
        };
        let lost: HashSet<String> = rec
            .entries
            .iter()
            .filter(|e| e.object.content().is_some_and(|c| !whole(&c)))
            .map(|e| e.path.clone())
            .collect();
        for path in &lost {
            errors.push(Issue {
                path: path.clone(),
                message: "a prune of the bucket deleted chunks it reused while this sync ran; the next sync uploads it again".into(),
            });
        }
        rec.entries.retain(|e| !lost.contains(&e.path));
        done.retain(|(_, e)| !lost.contains(&e.path));
        Ok(())
    }

    /// Brings the chunks of `lists` the bucket does not hold from
    /// `provider` into packs; returns the contents all of whose chunks
    /// it now holds.
    fn take_chunks(
        &mut self,
        lists: &HashMap<Hash, ChunkList>,
        provider: &mut dyn Provider,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<HashSet<Hash>, SyncError> {
        let mut asked = HashSet::new();
        let mut wants: Vec<(Hash, Vec<Hash>)> = Vec::new();
        for (content, list) in lists {
            let missing: Vec<Hash> = list
                .chunks
                .iter()
                .filter(|c| !c.is_zero() && !self.view.chunks.contains_key(&c.hash))
                .map(|c| c.hash)
                .filter(|h| asked.insert(*h))
                .collect();
            if !missing.is_empty() {
                wants.push((*content, missing));
            }
        }
        let verified = provider.verified();
        let mut have: HashSet<Hash> = HashSet::new();
        let mut pack = Pack::new();
        let mut failed: Option<SyncError> = None;
        provider
            .chunks(&wants, &mut |h, data| {
                if !asked.contains(&h) || have.contains(&h) {
                    return Ok(());
                }
                if !verified && !weave_chunk::verify(&data, &h) {
                    return Ok(());
                }
                progress(data.len() as u64);
                pack.add(&self.pool.keys, h, &data);
                have.insert(h);
                if pack.bytes.len() >= PACK_TARGET {
                    let full = std::mem::replace(&mut pack, Pack::new());
                    if let Err(e) = self.upload(full) {
                        failed = Some(e);
                        return Err(SyncError::from(weave_engine::TransferError::Stopped));
                    }
                }
                Ok(())
            })
            .map_err(|e| failed.take().unwrap_or(e))?;
        // A provider that let the sink's error pass: the upload failed all
        // the same.
        if let Some(e) = failed {
            return Err(e);
        }
        self.upload(pack)?;
        Ok(lists
            .iter()
            .filter(|(_, l)| {
                l.chunks.iter().all(|c| {
                    c.is_zero() || have.contains(&c.hash) || self.view.chunks.contains_key(&c.hash)
                })
            })
            .map(|(c, _)| *c)
            .collect())
    }
}

fn err(e: crate::BucketError) -> SyncError {
    SyncError::Replica(Box::new(e))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Replica for BucketReplica {
    fn display(&self) -> &str {
        &self.pool.display
    }

    fn is_local(&self) -> bool {
        false
    }

    fn traffic(&self) -> Option<(u64, u64)> {
        Some((self.sent, self.received))
    }

    fn info(&self) -> &ReplicaInfo {
        &self.info
    }

    /// Nothing changes in a bucket but by syncs: its records were read
    /// when it was opened.
    fn scan(&mut self, _: &IgnoreSpec, _: bool) -> Result<ScanSummary, SyncError> {
        Ok(ScanSummary::default())
    }

    fn entries(&mut self) -> Result<Entries, SyncError> {
        Ok(self.entries.clone())
    }

    /// Every version, unless the bucket holds the records it held at
    /// `seq` (records carry no order across writers, so "since" is all
    /// or nothing).
    fn changed_since(&mut self, seq: u64) -> Result<Entries, SyncError> {
        if seq == self.view.seq() {
            return Ok(Arc::new(BTreeMap::new()));
        }
        Ok(self.entries.clone())
    }

    fn chunk_list(&mut self, content: &Hash) -> Option<ChunkList> {
        self.view.list(content)
    }

    fn serve_nodes(&mut self, wants: &Wants) -> Result<ServedNodes, SyncError> {
        Ok(wants
            .iter()
            .map(|(_, hashes)| {
                hashes
                    .iter()
                    .map(|h| self.view.nodes.get(h).map(|n| n.encode()))
                    .collect()
            })
            .collect())
    }

    fn serve_chunks(
        &mut self,
        wants: &Wants,
        sink: &mut dyn FnMut(Hash, Option<Vec<u8>>) -> Result<(), SyncError>,
    ) -> Result<(), SyncError> {
        let mut at = Vec::new();
        for h in wants.iter().flat_map(|(_, hs)| hs) {
            match self.view.chunks.get(h) {
                Some(l) => at.push((*h, l.clone())),
                None => sink(*h, None)?,
            }
        }
        let mut received = 0u64;
        self.pool.read_chunks(&at, &mut |h, d| {
            received += d.as_ref().map_or(0, |d| d.len() as u64);
            sink(h, d)
        })?;
        self.received += received;
        Ok(())
    }

    fn apply(
        &mut self,
        ops: Vec<Op>,
        foreign: &Foreign,
        provider: &mut dyn Provider,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Applied, SyncError> {
        if self.dry_run {
            return Ok(Applied::default());
        }
        let view = &self.view;
        let (lists, mut errors) =
            weave_engine::lists_for(&ops, &|c| view.list(c), foreign, provider)?;
        let mut rec = Record {
            time_ms: now_ms(),
            ..Default::default()
        };
        let whole = self.take_chunks(&lists, provider, progress)?;
        let mut done = Vec::new();
        let mut new_nodes: HashSet<Hash> = HashSet::new();
        for (i, op) in ops.iter().enumerate() {
            if let Some((content, _)) = op.writes() {
                if !whole.contains(&content) {
                    if lists.contains_key(&content) {
                        errors.push(Issue {
                            path: op.path.clone(),
                            message: "not all of its content came from the other replicas; it is tried again next time".into(),
                        });
                    }
                    continue;
                }
                if self.view.list(&content).is_none() {
                    // The nodes of its tree the bucket does not hold.
                    let (_, nodes) = weave_chunk::tree(&lists[&content].chunks);
                    for (h, n) in nodes {
                        if !self.view.nodes.contains_key(&h) && new_nodes.insert(h) {
                            rec.nodes.push((h, n.encode()));
                        }
                    }
                }
            }
            rec.entries.push(op.target.clone());
            done.push((i, op.target.clone()));
        }
        if !rec.entries.is_empty() {
            self.not_swept_under(&mut rec, &mut done, &mut errors)?;
        }
        if !rec.entries.is_empty() {
            rec.at = self.view.max_at + 1;
            let name = self.pool.write(&rec).map_err(err)?;
            // What this sync wrote is the bucket's now, for the rest of
            // it, merged as any reader merges it: a version another
            // device pushed concurrently may stay the one readers take,
            // and then this sync did not settle that path (the next one
            // plans every path, and meets the conflict).
            self.view.add(&name, rec);
            // Of several operations on one path (a file replaced by a
            // directory, say), the last one's version is the one to find.
            let mut last: HashMap<&str, usize> = HashMap::new();
            for (k, (_, target)) in done.iter().enumerate() {
                last.insert(target.path.as_str(), k);
            }
            let lost: HashSet<usize> = last
                .values()
                .copied()
                .filter(|&k| self.view.chosen(&done[k].1.path) != Some(&done[k].1))
                .collect();
            for &k in &lost {
                errors.push(Issue {
                    path: done[k].1.path.clone(),
                    message: "another device pushed a concurrent version of it to the bucket; the next sync settles the two".into(),
                });
            }
            let mut k = 0;
            done.retain(|_| {
                k += 1;
                !lost.contains(&(k - 1))
            });
            self.refresh();
        }
        Ok(Applied {
            done,
            errors,
            bytes_local: 0,
            // What came from the other replicas: they count it.
            bytes_remote: 0,
        })
    }

    fn finish(&mut self, fin: &Finish) -> Result<(), SyncError> {
        let Some(i) = fin.integrated.as_ref().filter(|_| !self.dry_run) else {
            return Ok(());
        };
        let said = self.view.integrated();
        let news = i.peers.iter().any(|(id, seq)| said.get(id) != Some(seq))
            || self.view.ignore_fingerprint() != Some(i.ignore_fingerprint);
        if !news {
            return Ok(());
        }
        let rec = Record {
            integrated: i.peers.clone(),
            ignore_fingerprint: Some(i.ignore_fingerprint),
            time_ms: now_ms(),
            at: self.view.max_at,
            ..Default::default()
        };
        let name = self.pool.write(&rec).map_err(err)?;
        self.view.add(&name, rec);
        self.info.peers = self.view.integrated();
        self.info.ignore_fingerprint = self.view.ignore_fingerprint();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::tests::{entry, pool, push};
    use crate::store::Memory;
    use weave_store::Policy;

    #[test]
    fn a_sync_that_meets_a_sweep_leaves_out_the_versions_whose_chunks_went() {
        let mem = Arc::new(Memory::default());
        let mut p = pool(&mem);
        let old = push(&mut p, "f", 1, &[1; 5000], 1000);
        let new = push(&mut p, "f", 2, &[2; 5000], 2000);
        let drop_old = Policy {
            keep_last: Some(0),
            ..Policy::keep_all()
        };
        // A sync reads the records before a prune marks...
        let mut r = BucketReplica::new(pool(&mem), false).unwrap();
        crate::prune::prune(&mut p, &drop_old, 0, 10_000, false).unwrap();
        // ...and before it writes, the sweep deletes the old version's pack.
        let s = crate::prune::prune(&mut p, &drop_old, 0, 20_000, false).unwrap();
        assert_eq!(s.packs_deleted, 1);
        let content = |e: &weave_core::Entry| e.object.content().unwrap();
        let mut rec = Record {
            entries: vec![
                entry("reuses-old", 1, content(&old), 5000),
                entry("reuses-new", 1, content(&new), 5000),
            ],
            ..Default::default()
        };
        let mut done: Vec<(usize, weave_core::Entry)> =
            rec.entries.iter().cloned().enumerate().collect();
        let mut errors = Vec::new();
        r.not_swept_under(&mut rec, &mut done, &mut errors).unwrap();
        let paths =
            |es: &[weave_core::Entry]| es.iter().map(|e| e.path.clone()).collect::<Vec<_>>();
        assert_eq!(paths(&rec.entries), vec!["reuses-new"]);
        assert_eq!(done.len(), 1);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "reuses-old");
        assert!(errors[0].message.contains("next sync uploads it again"));
    }

    fn drop_old() -> Policy {
        Policy {
            keep_last: Some(0),
            ..Policy::keep_all()
        }
    }

    #[test]
    fn a_sync_that_opens_while_a_mark_waits_reuses_nothing_it_retired() {
        let mem = Arc::new(Memory::default());
        let mut p = pool(&mem);
        let old = push(&mut p, "f", 1, &[1; 5000], 1000);
        let new = push(&mut p, "f", 2, &[2; 5000], 2000);
        crate::prune::prune(&mut p, &drop_old(), 10_000, 20_000, false).unwrap();
        let r = BucketReplica::new(pool(&mem), false).unwrap();
        let content = |e: &weave_core::Entry| e.object.content().unwrap();
        // The dropped version's tree and chunk are not the bucket's for
        // it: a version of that content is uploaded again.
        assert!(r.view.list(&content(&old)).is_none());
        assert!(!r.view.chunks.contains_key(&Hash::of(&[1; 5000])));
        assert!(r.view.list(&content(&new)).is_some());
        assert_eq!(r.view.chosen("f"), Some(&new));
    }

    #[test]
    fn a_tree_missing_an_inner_node_after_a_sweep_is_not_whole() {
        use crate::pool::Pack;
        use weave_chunk::Node;
        let mem = Arc::new(Memory::default());
        let mut p = pool(&mem);
        // The old version: a two-level tree over chunk c.
        let c = vec![1u8; 5000];
        let hc = Hash::of(&c);
        let l = Node {
            level: 1,
            children: vec![(hc, 5000)],
        };
        let r1 = Node {
            level: 2,
            children: vec![(l.hash(), 5000)],
        };
        let mut pack = Pack::new();
        pack.add(&p.keys, hc, &c);
        let (id, bytes, chunks) = pack.finish();
        let size = bytes.len() as u64;
        p.store.put(&format!("packs/{id}"), bytes).unwrap();
        p.write(&Record {
            entries: vec![entry("f", 1, r1.hash(), 5000)],
            nodes: vec![(l.hash(), l.encode()), (r1.hash(), r1.encode())],
            at: 1,
            time_ms: 1000,
            ..Record::of_pack(id, size, chunks)
        })
        .unwrap();
        push(&mut p, "f", 2, &[2; 5000], 2000);
        // A sync opens before the mark, and writes after the sweep.
        let mut r = BucketReplica::new(pool(&mem), false).unwrap();
        crate::prune::prune(&mut p, &drop_old(), 0, 10_000, false).unwrap();
        crate::prune::prune(&mut p, &drop_old(), 0, 20_000, false).unwrap();
        // Its new content shares subtree `l` (the bucket had it, so it
        // wrote only the new root) and adds chunk d in a pack of its own.
        let d = vec![3u8; 5000];
        let l2 = Node {
            level: 1,
            children: vec![(Hash::of(&d), 5000)],
        };
        let r2 = Node {
            level: 2,
            children: vec![(l.hash(), 5000), (l2.hash(), 5000)],
        };
        let mut pk = Pack::new();
        pk.add(&r.pool.keys, Hash::of(&d), &d);
        r.upload(pk).unwrap();
        let g = entry("g", 1, r2.hash(), 10000);
        let mut rec = Record {
            entries: vec![g.clone()],
            nodes: vec![(r2.hash(), r2.encode()), (l2.hash(), l2.encode())],
            ..Default::default()
        };
        let (mut done, mut errors) = (vec![(0, g.clone())], vec![]);
        r.not_swept_under(&mut rec, &mut done, &mut errors).unwrap();
        assert!(
            rec.entries.is_empty(),
            "g kept though node l and chunk c are gone"
        );
        assert_eq!(errors.len(), 1);
    }

    #[test]
    fn a_compaction_keeps_what_was_integrated_as_it_was_said() {
        let mem = Arc::new(Memory::default());
        let mut p = pool(&mem);
        let x = weave_core::ReplicaId(42);
        push(&mut p, "f", 1, &[1; 5000], 1000);
        p.write(&Record {
            integrated: vec![(x, 100)],
            at: 1,
            time_ms: 1100,
            ..Default::default()
        })
        .unwrap();
        // X was restored (its seq is 60 now); its sync reads the records...
        let mut sx = BucketReplica::new(pool(&mem), false).unwrap();
        // ...another device writes, a prune compacts...
        push(&mut p, "f", 2, &[2; 5000], 2000);
        crate::prune::prune(&mut p, &drop_old(), 0, 10_000, false).unwrap();
        // ...and X's sync finishes: it integrated X up to 70, said last.
        let fin = weave_engine::Finish {
            observe: 0,
            integrated: Some(weave_engine::Integrated {
                peers: vec![(x, 70)],
                ignore_fingerprint: 0,
            }),
            went_through: None,
        };
        sx.finish(&fin).unwrap();
        assert_eq!(p.view().unwrap().integrated()[&x], 70);
    }
}
