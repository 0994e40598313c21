//! Applying operations to an object replica, in three steps: the transfer
//! plan ([`plan_transfer`], pure), [`ObjectReplica::receive`] (chunk
//! lists and chunks, own and fetched, each verified) and
//! [`ObjectReplica::write`] (the objects built, one conditional commit,
//! the index).

use super::{store_error, ObjectReplica};
use crate::observed::Observed;
use crate::plan::{own_sources, plan_transfer, Step, TransferPlan};
use crate::{Change, ObjectStore, Outcome};
use std::collections::HashMap;
use weave_chunk::ChunkList;
use weave_core::{Entry, Hash, LocalEntry, Op, Stat};
use weave_engine::{Applied, Foreign, Issue, Provider, SyncError};
use weave_index::Batch;

/// What [`ObjectReplica::receive`] brings together for
/// [`ObjectReplica::write`].
pub(super) struct Received {
    /// The chunk list of every content to write that could be had.
    lists: HashMap<Hash, ChunkList>,
    plan: TransferPlan,
    /// Chunk data, every chunk verified.
    chunks: HashMap<Hash, Vec<u8>>,
    bytes_local: u64,
    bytes_remote: u64,
    errors: Vec<Issue>,
}

/// A version to record in the index once its operation is done.
struct Recorded {
    op: usize,
    entry: Entry,
    stat: Option<Stat>,
    /// The chunk list of the content it holds, to keep.
    list: Option<ChunkList>,
}

impl<S: ObjectStore> ObjectReplica<S> {
    /// Receives what the writes of `ops` need: the chunk list of each
    /// content (its own, another local replica's, or fetched as a tree),
    /// then, as [`plan_transfer`] says, the chunks it cuts from its own
    /// objects and those it fetches from `provider`, each verified on
    /// arrival (I-3).
    pub(super) fn receive(
        &mut self,
        ops: &[Op],
        foreign: &Foreign,
        provider: &mut dyn Provider,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Received, SyncError> {
        let (lists, mut errors) =
            weave_engine::lists_for(ops, &|c| self.list(c), foreign, provider)?;
        let mut chunks: HashMap<Hash, Vec<u8>> = HashMap::new();
        let plan = self.cut_own(ops, &lists, &mut chunks)?;
        let bytes_local: u64 = chunks.values().map(|d| d.len() as u64).sum();
        let (bytes_remote, bad) = fetch(provider, &plan, &mut chunks, progress)?;
        if bad > 0 {
            errors.push(Issue {
                path: String::new(),
                message: format!(
                    "{bad} chunks received failed their hash and were dropped; the objects that need them are retried next time"
                ),
            });
        }
        Ok(Received {
            lists,
            plan,
            chunks,
            bytes_local,
            bytes_remote,
            errors,
        })
    }

    /// Plans the transfer of `ops` with the contents this replica holds,
    /// and cuts the chunks the plan takes from its own objects into
    /// `chunks`. A content no object holds any more (one changed since the
    /// scan) is left out and the transfer planned again, so its chunks
    /// come from the next source or are fetched.
    fn cut_own(
        &mut self,
        ops: &[Op],
        lists: &HashMap<Hash, ChunkList>,
        chunks: &mut HashMap<Hash, Vec<u8>>,
    ) -> Result<TransferPlan, SyncError> {
        let mut held: HashMap<Hash, ChunkList> = own_sources(ops, lists)
            .into_iter()
            .filter_map(|c| Some((c, self.list(&c)?)))
            .collect();
        loop {
            let plan = plan_transfer(ops, lists, &held);
            let mut unread: Vec<Hash> = Vec::new();
            for cut in &plan.local {
                if cut.chunks.iter().all(|(h, ..)| chunks.contains_key(h)) {
                    continue;
                }
                let Some(data) = self.content(&cut.content)? else {
                    unread.push(cut.content);
                    continue;
                };
                for &(h, o, len) in &cut.chunks {
                    chunks.entry(h).or_insert_with(|| data[o..o + len].to_vec());
                }
            }
            if unread.is_empty() {
                return Ok(plan);
            }
            for c in unread {
                held.remove(&c);
            }
        }
    }

    /// Writes what was received: builds each object, commits every put
    /// and delete in one [`ObjectStore::commit`], each conditional on the
    /// revision the index recorded (I-5), and records what was done.
    pub(super) fn write(&mut self, ops: &[Op], got: Received) -> Result<Applied, SyncError> {
        let Received {
            lists,
            plan,
            chunks,
            bytes_local,
            bytes_remote,
            mut errors,
        } = got;
        let mut done: Vec<Recorded> = Vec::new();
        let mut changes: Vec<Change> = Vec::new();
        // Per change: the operation it carries out.
        let mut change_op: Vec<usize> = Vec::new();
        for (k, step) in plan.steps {
            let op = &ops[k];
            let change = match step {
                Step::Refuse(message) => {
                    errors.push(Issue {
                        path: op.path.clone(),
                        message,
                    });
                    continue;
                }
                Step::Record => {
                    done.push(Recorded {
                        op: k,
                        entry: op.target.clone(),
                        stat: op.current.as_ref().and_then(|c| c.stat),
                        list: None,
                    });
                    continue;
                }
                Step::Delete { expect } => Change::Delete {
                    name: op.path.clone(),
                    expect,
                },
                Step::Put { content, expect } => {
                    let Some(data) = lists.get(&content).and_then(|l| assemble(l, &chunks)) else {
                        errors.push(Issue {
                            path: op.path.clone(),
                            message: "not written: some of its content could not be had from any replica; retried next time".into(),
                        });
                        continue;
                    };
                    Change::Put {
                        name: op.path.clone(),
                        data,
                        mtime_ns: op.target.mtime_ns,
                        expect,
                        conflict_copy: weave_core::path::is_conflict_name(&op.path),
                    }
                }
            };
            changes.push(change);
            change_op.push(k);
        }
        let outcomes = self.commit(&changes)?;
        for ((c, k), out) in changes.iter().zip(change_op).zip(outcomes) {
            let op = &ops[k];
            match (out, c) {
                (Outcome::Stale, _) => errors.push(Issue {
                    path: op.path.clone(),
                    message: "changed in the store since it was scanned; left for the next sync"
                        .into(),
                }),
                (Outcome::Done { revision }, Change::Put { data, .. }) => {
                    let Some(content) = op.target.object.content() else {
                        continue;
                    };
                    let seen = Observed {
                        revision: revision.unwrap_or(0),
                        size: data.len() as u64,
                        mtime_ns: op.target.mtime_ns,
                    };
                    done.push(Recorded {
                        op: k,
                        entry: op.target.clone(),
                        stat: Some(seen.stat()),
                        list: lists.get(&content).cloned(),
                    });
                }
                (Outcome::Done { .. }, Change::Delete { .. }) => done.push(Recorded {
                    op: k,
                    entry: op.target.clone(),
                    stat: None,
                    list: None,
                }),
            }
        }
        done.sort_by_key(|d| d.op);
        Ok(Applied {
            done: self.record(done)?,
            errors,
            bytes_local,
            bytes_remote,
        })
    }

    /// Commits `changes` to the store as one atomic step: one outcome per
    /// change.
    fn commit(&mut self, changes: &[Change]) -> Result<Vec<Outcome>, SyncError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let outcomes = self
            .store
            .commit(changes)
            .map_err(|e| store_error(&self.display, "commit the changes", e))?;
        if outcomes.len() != changes.len() {
            return Err(SyncError::State {
                path: self.display.clone().into(),
                problem: format!(
                    "the object store answered {} outcomes for {} changes",
                    outcomes.len(),
                    changes.len()
                ),
            });
        }
        Ok(outcomes)
    }

    /// Records `done` (in operation order) in the index, in one batch.
    /// Returns (operation, version recorded) for each.
    fn record(&mut self, done: Vec<Recorded>) -> Result<Vec<(usize, Entry)>, SyncError> {
        let id = self.index.id();
        let mut batch = Batch::default();
        let mut out = Vec::with_capacity(done.len());
        let entries = self.entries.as_mut().expect("loaded by apply");
        for d in done {
            self.index.observe(d.entry.vv.get(id));
            let le = LocalEntry {
                entry: d.entry.clone(),
                seq: self.index.next_seq(),
                stat: d.stat,
            };
            entries.insert(le.entry.path.clone(), le.clone());
            batch.entries.push(le);
            if let Some(l) = d.list {
                batch.contents.push(l);
            }
            out.push((d.op, d.entry));
        }
        self.index.write(&batch)?;
        self.info.seq = self.index.seq();
        self.last = None;
        Ok(out)
    }
}

/// Fetches the chunks `plan` wants from `provider` into `chunks`,
/// verifying each on arrival (I-3). Returns the bytes received, and how
/// many chunks failed their hash (or were not asked for) and were dropped.
fn fetch(
    provider: &mut dyn Provider,
    plan: &TransferPlan,
    chunks: &mut HashMap<Hash, Vec<u8>>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(u64, u64), SyncError> {
    let mut bytes = 0u64;
    let mut bad = 0u64;
    if !plan.fetch.is_empty() {
        provider.chunks(&plan.fetch, &mut |h, data| {
            if plan.needed.contains(&h) && weave_chunk::verify(&data, &h) {
                bytes += data.len() as u64;
                progress(data.len() as u64);
                chunks.insert(h, data);
            } else {
                bad += 1;
            }
            Ok(())
        })?;
    }
    Ok((bytes, bad))
}

/// The content `list` describes, from `chunks` (None if one is missing).
fn assemble(list: &ChunkList, chunks: &HashMap<Hash, Vec<u8>>) -> Option<Vec<u8>> {
    let mut data = Vec::with_capacity(list.size() as usize);
    for c in &list.chunks {
        match c.is_zero() {
            true => data.resize(data.len() + c.len as usize, 0),
            false => data.extend_from_slice(chunks.get(&c.hash)?),
        }
    }
    Some(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observed::MODE;
    use crate::{Listed, StoreError};
    use std::collections::BTreeMap;
    use weave_core::{Object, OpKind, ReplicaId, VersionVector};
    use weave_engine::{IgnoreSpec, Replica, Wants};

    /// A store in memory: name → (revision, content).
    #[derive(Default)]
    struct Memory {
        objects: BTreeMap<String, (u64, Vec<u8>)>,
        next: u64,
    }

    impl Memory {
        fn put(&mut self, name: &str, data: &[u8]) -> u64 {
            self.next += 1;
            self.objects.insert(name.into(), (self.next, data.to_vec()));
            self.next
        }
    }

    impl ObjectStore for Memory {
        fn list(&mut self) -> Result<Vec<Listed>, StoreError> {
            Ok(self
                .objects
                .iter()
                .map(|(name, (revision, _))| Listed {
                    name: name.clone(),
                    revision: *revision,
                    mtime_ns: 1,
                })
                .collect())
        }
        fn read(&mut self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(self.objects.get(name).map(|o| o.1.clone()))
        }
        fn commit(&mut self, changes: &[Change]) -> Result<Vec<Outcome>, StoreError> {
            let mut out = Vec::new();
            for c in changes {
                if self.objects.get(c.name()).map(|o| o.0) != c.expect() {
                    out.push(Outcome::Stale);
                    continue;
                }
                out.push(match c {
                    Change::Put { name, data, .. } => Outcome::Done {
                        revision: Some(self.put(name, data)),
                    },
                    Change::Delete { name, .. } => {
                        self.objects.remove(name);
                        Outcome::Done { revision: None }
                    }
                });
            }
            Ok(out)
        }
    }

    /// Another replica: serves chunks by hash (damaged, if `corrupt`),
    /// and no tree nodes.
    struct Peer {
        chunks: HashMap<Hash, Vec<u8>>,
        corrupt: bool,
    }

    impl Provider for Peer {
        fn nodes(&mut self, wants: &Wants) -> Result<Vec<Vec<Option<Vec<u8>>>>, SyncError> {
            Ok(wants.iter().map(|(_, hs)| vec![None; hs.len()]).collect())
        }
        fn chunks(
            &mut self,
            wants: &Wants,
            sink: &mut dyn FnMut(Hash, Vec<u8>) -> Result<(), SyncError>,
        ) -> Result<(), SyncError> {
            for h in wants.iter().flat_map(|(_, hs)| hs) {
                if let Some(d) = self.chunks.get(h) {
                    let mut d = d.clone();
                    if self.corrupt {
                        d[0] ^= 1;
                    }
                    sink(*h, d)?;
                }
            }
            Ok(())
        }
    }

    /// `len` bytes of noise (they cut into several chunks).
    fn bytes(seed: u8, len: usize) -> Vec<u8> {
        (0..len.div_ceil(32) as u64)
            .flat_map(|i| Hash::of(&[&[seed][..], &i.to_le_bytes()].concat()).0)
            .take(len)
            .collect()
    }

    /// An object whose end changed: (old, new).
    fn versions() -> (Vec<u8>, Vec<u8>) {
        let old = bytes(1, 300_000);
        let mut new = old[..280_000].to_vec();
        new.extend(bytes(2, 30_000));
        (old, new)
    }

    /// A replica whose store holds `old` at "a" (scanned), and a peer
    /// that has `new`; with the operation that writes `new` at "a", and
    /// what the sync knows of `new` (its chunk list).
    fn setup(
        dir: &std::path::Path,
        old: &[u8],
        new: &[u8],
    ) -> (ObjectReplica<Memory>, Peer, Op, Foreign) {
        let mut store = Memory::default();
        store.put("a", old);
        let mut rep = ObjectReplica::open(store, dir, "r", false).unwrap();
        rep.scan(&IgnoreSpec::default(), false).unwrap();
        let current = rep.entries().unwrap().get("a").cloned();
        let list = weave_chunk::chunk_bytes(new);
        assert!(list.chunks.len() > 4);
        let chunks = list
            .with_offsets()
            .map(|(o, c)| (c.hash, new[o as usize..][..c.len as usize].to_vec()))
            .collect();
        let mut vv = VersionVector::default();
        vv.bump(ReplicaId(99), 1);
        let op = Op {
            kind: OpKind::WriteFile,
            path: "a".into(),
            current,
            target: Entry {
                path: "a".into(),
                object: Object::File {
                    size: new.len() as u64,
                    content: list.content_id(),
                },
                mode: MODE,
                mtime_ns: 9,
                vv,
                origin: ReplicaId(99),
                meta: None,
            },
        };
        let foreign = Foreign {
            lists: [(list.content_id(), list)].into(),
            ..Default::default()
        };
        let peer = Peer {
            chunks,
            corrupt: false,
        };
        (rep, peer, op, foreign)
    }

    fn messages(a: &Applied) -> Vec<&str> {
        a.errors.iter().map(|i| i.message.as_str()).collect()
    }

    #[test]
    fn a_write_cuts_what_the_old_version_shares_and_fetches_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let (old, new) = versions();
        let (mut rep, mut peer, op, foreign) = setup(d.path(), &old, &new);
        let a = rep.apply(vec![op], &foreign, &mut peer, &|_| {}).unwrap();
        assert!(a.errors.is_empty(), "{:?}", messages(&a));
        assert_eq!(a.bytes_local + a.bytes_remote, new.len() as u64);
        assert!(a.bytes_local > 200_000 && a.bytes_remote < 100_000, "{a:?}");
        assert_eq!(a.done.len(), 1);
        let (revision, data) = rep.store().objects["a"].clone();
        assert_eq!(data, new);
        // The index records the revision the commit made.
        let le = rep.entries().unwrap()["a"].clone();
        assert_eq!(Observed::revision(&le), Some(revision));
    }

    #[test]
    fn an_object_changed_since_the_scan_lends_nothing_and_is_not_overwritten() {
        let d = tempfile::tempdir().unwrap();
        let (old, new) = versions();
        let (mut rep, mut peer, op, foreign) = setup(d.path(), &old, &new);
        let edited = bytes(3, 1000);
        rep.store_mut().put("a", &edited);
        let a = rep.apply(vec![op], &foreign, &mut peer, &|_| {}).unwrap();
        // Every chunk came from the peer: the object no longer holds the
        // content the index says it does.
        assert_eq!((a.bytes_local, a.bytes_remote), (0, new.len() as u64));
        // The commit expected the revision the scan saw (I-5).
        assert_eq!(
            messages(&a),
            ["changed in the store since it was scanned; left for the next sync"]
        );
        assert!(a.done.is_empty());
        assert_eq!(rep.store().objects["a"].1, edited);
    }

    #[test]
    fn a_chunk_that_fails_its_hash_is_dropped_and_its_object_not_written() {
        let d = tempfile::tempdir().unwrap();
        let (old, new) = versions();
        let (mut rep, mut peer, op, foreign) = setup(d.path(), &old, &new);
        peer.corrupt = true;
        let a = rep.apply(vec![op], &foreign, &mut peer, &|_| {}).unwrap();
        assert_eq!(a.bytes_remote, 0);
        let m = messages(&a);
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m[0].contains("chunks received failed their hash"), "{m:?}");
        assert!(
            m[1].starts_with("not written: some of its content"),
            "{m:?}"
        );
        assert!(a.done.is_empty());
        assert_eq!(rep.store().objects["a"].1, old);
    }

    /// A content with a run of zeros: its zero chunks are not asked of
    /// the other replica, and the object arrives whole.
    #[test]
    fn runs_of_zeros_are_never_asked_for() {
        struct Asking(Peer, Vec<Hash>);
        impl Provider for Asking {
            fn nodes(&mut self, w: &Wants) -> Result<Vec<Vec<Option<Vec<u8>>>>, SyncError> {
                self.0.nodes(w)
            }
            fn chunks(
                &mut self,
                wants: &Wants,
                sink: &mut dyn FnMut(Hash, Vec<u8>) -> Result<(), SyncError>,
            ) -> Result<(), SyncError> {
                self.1
                    .extend(wants.iter().flat_map(|(_, hs)| hs.iter().copied()));
                self.0.chunks(wants, sink)
            }
        }
        let d = tempfile::tempdir().unwrap();
        let old = bytes(1, 300_000);
        let mut new = bytes(4, 100_000);
        new.resize(100_000 + (1 << 20), 0);
        new.extend(bytes(5, 50_000));
        let (mut rep, peer, op, foreign) = setup(d.path(), &old, &new);
        let mut asking = Asking(peer, Vec::new());
        let a = rep.apply(vec![op], &foreign, &mut asking, &|_| {}).unwrap();
        assert!(a.errors.is_empty(), "{:?}", messages(&a));
        assert_eq!(rep.store().objects["a"].1, new);
        let zero = weave_chunk::zero_chunk();
        assert!(
            !asking.1.contains(&zero),
            "the zero chunk was asked for; {} bytes received",
            a.bytes_remote
        );
    }
}
