//! I-7, incremental equals full: over random histories of replicas in
//! memory (local edits, deletes, renames and directory changes, and
//! syncs of random subsets under random policies, backups and ignore
//! patterns), every sync is also run planning every path, on a copy of
//! the replicas, and both must leave every replica exactly the same,
//! report the same conflicts, and hand out the same clock values; and in
//! slices of one to three paths (`slice.rs`), which must leave every
//! replica the same up to the order new clock values are handed out in.
//! Replicas apply operations as the file executor does (removals deepest
//! first, and only what a tree could do after what failed before).

use super::*;
use crate::replica::{Applied, Finish, Foreign, IgnoreSpec, ReplicaInfo, ScanSummary, ServedNodes};
use crate::{NoProgress, Provider, SyncOptions, Wants};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use weave_chunk::ChunkList;
use weave_core::{Entry, Hash, LocalEntry, Object, Op, PolicySpec, ReplicaId, VersionVector};

/// One replica's state.
#[derive(Clone, Debug)]
struct State {
    info: ReplicaInfo,
    entries: BTreeMap<String, LocalEntry>,
    /// Whole-index loads ([`Replica::entries`]) since the last sync.
    full_loads: usize,
}

/// A replica in memory, sharing its state with the test.
struct Mem {
    state: Arc<Mutex<State>>,
    info: ReplicaInfo,
    /// Operations whose (replica, path, seed) hash is 0 modulo 3 fail
    /// (a disk that is full, say): the same ones in every run of a sync.
    fail: Option<u64>,
}

/// Whether `path` fails on replica `id` under `seed`.
fn fails(id: ReplicaId, path: &str, seed: u64) -> bool {
    use std::hash::{Hash as _, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (id.0, path, seed).hash(&mut h);
    h.finish().is_multiple_of(3)
}

/// Whether a tree could carry `op` out after what failed before it: what
/// is not a directory cannot take the place of a directory that still
/// holds something, and nothing can be made inside what is not a
/// directory.
fn possible(st: &State, op: &Op) -> bool {
    if op.kind == weave_core::OpKind::Record {
        return true;
    }
    let p = &op.path;
    let holds = st
        .entries
        .range(format!("{p}/")..format!("{p}0"))
        .any(|(_, le)| le.entry.is_live());
    if holds && !op.target.object.is_dir() {
        return false;
    }
    let dir = |a: &str| {
        st.entries
            .get(a)
            .is_some_and(|le| le.entry.is_live() && le.entry.object.is_dir())
    };
    !op.target.is_live() || weave_core::path::ancestors(p).all(dir)
}

impl Mem {
    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
}

impl Replica for Mem {
    fn display(&self) -> &str {
        "mem"
    }
    fn is_local(&self) -> bool {
        false
    }
    fn info(&self) -> &ReplicaInfo {
        &self.info
    }
    fn scan(&mut self, _: &IgnoreSpec, _: bool) -> Result<ScanSummary, SyncError> {
        Ok(ScanSummary::default())
    }
    fn entries(&mut self) -> Result<Entries, SyncError> {
        let mut st = self.st();
        st.full_loads += 1;
        Ok(Arc::new(st.entries.clone()))
    }
    fn changed_since(&mut self, seq: u64) -> Result<Entries, SyncError> {
        let st = self.st();
        let m = st.entries.iter().filter(|(_, le)| le.seq > seq);
        Ok(Arc::new(m.map(|(p, le)| (p.clone(), le.clone())).collect()))
    }
    fn entries_at(&mut self, paths: &[String], subtrees: &[String]) -> Result<Entries, SyncError> {
        Ok(Arc::new(crate::select(&self.st().entries, paths, subtrees)))
    }
    fn entries_from(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<crate::Page>, SyncError> {
        Ok(Some(crate::page(&self.st().entries, after, limit)))
    }
    fn chunk_list(&mut self, _: &Hash) -> Option<ChunkList> {
        None
    }
    fn serve_nodes(&mut self, wants: &Wants) -> Result<ServedNodes, SyncError> {
        Ok(wants.iter().map(|(_, h)| vec![None; h.len()]).collect())
    }
    fn serve_chunks(
        &mut self,
        _: &Wants,
        _: &mut dyn FnMut(Hash, Option<Vec<u8>>) -> Result<(), SyncError>,
    ) -> Result<(), SyncError> {
        Ok(())
    }
    /// Records every operation's target, as a tree that had every
    /// content would: the removals first, deepest first, then the rest
    /// in their order (as the file executor does), each only if a tree could carry it
    /// out after what failed before it (see [`possible`]).
    fn apply(
        &mut self,
        ops: Vec<Op>,
        _: &Foreign,
        _: &mut dyn Provider,
        _: &(dyn Fn(u64) + Sync),
    ) -> Result<Applied, SyncError> {
        let mut done = Vec::new();
        let mut errors = Vec::new();
        let fail = self.fail;
        let info = {
            let mut st = self.st();
            let mut ops: Vec<(usize, Op)> = ops.into_iter().enumerate().collect();
            // Removals deepest first, then the rest in order.
            ops.sort_by_key(|(k, op)| match op.kind {
                weave_core::OpKind::Remove => {
                    (0, usize::MAX - weave_core::path::depth(&op.path), *k)
                }
                _ => (1, 0, *k),
            });
            for (k, op) in ops {
                let id = st.info.id;
                if fail.is_some_and(|seed| fails(id, &op.path, seed)) || !possible(&st, &op) {
                    errors.push(crate::Issue {
                        path: op.path.clone(),
                        message: "failed".into(),
                    });
                    continue;
                }
                st.info.seq += 1;
                st.info.clock = st.info.clock.max(op.target.vv.get(id));
                let le = LocalEntry {
                    entry: op.target.clone(),
                    seq: st.info.seq,
                    stat: None,
                };
                st.entries.insert(op.path.clone(), le);
                done.push((k, op.target));
            }
            st.info.clone()
        };
        self.info = info;
        Ok(Applied {
            done,
            errors,
            ..Default::default()
        })
    }
    fn finish(&mut self, fin: &Finish) -> Result<(), SyncError> {
        let mut st = self.st();
        st.info.clock = st.info.clock.max(fin.observe);
        if let Some(i) = &fin.integrated {
            st.info.peers.extend(i.peers.iter().copied());
            st.info.ignore_fingerprint = Some(i.ignore_fingerprint);
        }
        Ok(())
    }
}

const PATHS: &[&str] = &[
    "a",
    "a/x",
    "a/y",
    "a/y/z",
    "a/y/z.tmp",
    "b",
    "b/x",
    "c.tmp",
    "d",
];

#[derive(Debug, Clone)]
enum What {
    File(u8),
    Dir,
    Link,
    Delete,
}

#[derive(Debug, Clone)]
enum Step {
    /// A change on replica `r` at a path.
    Local { r: usize, path: usize, what: What },
    /// Replica `r` moves a file to another path.
    Rename { r: usize, from: usize, to: usize },
    /// A sync of the replicas in `mask` (at least two).
    Sync {
        mask: u8,
        policy: u8,
        backup: Option<usize>,
        ignore_tmp: bool,
        /// Some operations fail, chosen by this seed.
        fail: Option<u64>,
    },
}

struct World {
    states: Vec<State>,
    mtime: i64,
}

impl World {
    fn new(n: usize) -> World {
        let states = (0..n)
            .map(|i| State {
                info: ReplicaInfo {
                    id: ReplicaId(100 + i as u64),
                    seq: 0,
                    clock: 0,
                    peers: HashMap::new(),
                    ignore_fingerprint: None,
                    rekeyed: false,
                    ignore_file: None,
                },
                entries: BTreeMap::new(),
                full_loads: 0,
            })
            .collect();
        World { states, mtime: 1 }
    }

    /// Records a local change at `path` on replica `r`, as a scan would.
    fn record(&mut self, r: usize, path: &str, object: Object) {
        self.mtime += 1;
        let st = &mut self.states[r];
        let old = st.entries.get(path);
        if old.is_some_and(|o| o.entry.object == object) || (old.is_none() && object.is_deleted()) {
            return;
        }
        let mut vv = old.map(|o| o.entry.vv.clone()).unwrap_or_default();
        st.info.clock += 1;
        vv.bump(st.info.id, st.info.clock);
        st.info.seq += 1;
        let mode = if object.is_dir() { 0o755 } else { 0o644 };
        let le = LocalEntry {
            entry: Entry {
                path: path.into(),
                object,
                mode,
                mtime_ns: self.mtime,
                vv,
                origin: st.info.id,
                meta: None,
            },
            seq: st.info.seq,
            stat: None,
        };
        st.entries.insert(path.into(), le);
    }

    fn live(&self, r: usize, path: &str) -> Option<&Object> {
        self.states[r]
            .entries
            .get(path)
            .map(|le| &le.entry.object)
            .filter(|o| !o.is_deleted())
    }

    /// Deletes `path` on `r` with everything inside it.
    fn delete(&mut self, r: usize, path: &str) {
        let inside: Vec<String> = self.states[r]
            .entries
            .keys()
            .filter(|p| p.starts_with(&format!("{path}/")))
            .cloned()
            .collect();
        for p in inside.iter().rev() {
            self.record(r, p, Object::Deleted);
        }
        self.record(r, path, Object::Deleted);
    }

    /// Puts `object` at `path` on `r`, as a user could: ancestors become
    /// directories (a file in the way is deleted), and a directory
    /// replaced by something else goes with its inside.
    fn put(&mut self, r: usize, path: &str, object: Object) {
        let mut up: Vec<&str> = ancestors(path).collect();
        up.reverse();
        for a in up {
            if !self.live(r, a).is_some_and(|o| o.is_dir()) {
                if self.live(r, a).is_some() {
                    self.delete(r, a);
                }
                self.record(r, a, Object::Dir);
            }
        }
        if self.live(r, path).is_some_and(|o| o.is_dir()) && !object.is_dir() {
            self.delete(r, path);
        }
        self.record(r, path, object);
    }

    fn step(&mut self, s: &Step) {
        match s {
            Step::Local { r, path, what } => {
                let (r, path) = (*r % self.states.len(), PATHS[*path % PATHS.len()]);
                match what {
                    What::File(b) => self.put(r, path, file(*b)),
                    What::Dir => self.put(r, path, Object::Dir),
                    What::Link => self.put(r, path, Object::Symlink { target: "t".into() }),
                    What::Delete => self.delete(r, path),
                }
            }
            Step::Rename { r, from, to } => {
                let r = *r % self.states.len();
                let (from, to) = (PATHS[*from % PATHS.len()], PATHS[*to % PATHS.len()]);
                let moved = self.live(r, from).cloned();
                let is_file = matches!(moved, Some(Object::File { .. }));
                if is_file && !to.starts_with(&format!("{from}/")) && from != to {
                    self.delete(r, from);
                    self.put(r, to, moved.expect("a file"));
                }
            }
            Step::Sync { .. } => self.sync(s),
        }
    }

    fn sync(&mut self, s: &Step) {
        let Step::Sync {
            mask,
            policy,
            backup,
            ignore_tmp,
            fail,
        } = s
        else {
            return;
        };
        let which: Vec<usize> = (0..self.states.len())
            .filter(|i| mask & (1 << i) != 0)
            .collect();
        if which.len() < 2 {
            return;
        }
        let (policy, preferred) = match policy % 3 {
            0 => (PolicySpec::KeepBoth, None),
            1 => (PolicySpec::Newest, None),
            _ => (PolicySpec::Prefer("p".into()), Some(0)),
        };
        let backups: Vec<usize> = backup
            .map(|b| b % which.len())
            .filter(|b| Some(*b) != preferred && *b != 0)
            .into_iter()
            .collect();
        let opts = |full_plan, slice| SyncOptions {
            policy: policy.clone(),
            slice,
            ignore: if *ignore_tmp {
                vec!["*.tmp".into()]
            } else {
                Vec::new()
            },
            full_plan,
            ..SyncOptions::default()
        };
        let roles = crate::Roles { preferred, backups };
        let before = self.states.clone();
        let could = {
            let reps = self.boxed(&which, &before);
            let m = weave_core::ignore::Matcher::from_files(&[], &opts(false, 0).ignore).unwrap();
            floors(&reps, m.fingerprint()).is_some()
        };
        let (full, full_report) = run_on(&which, &before, &opts(true, 0), &roles, *fail);
        let (incr, incr_report) = run_on(&which, &before, &opts(false, 0), &roles, *fail);
        // Slices of one to three paths, when every path is planned.
        let slice = 1 + usize::from(*mask) % 3;
        let (sliced, sliced_report) = run_on(&which, &before, &opts(false, slice), &roles, *fail);
        // The coordinator (the first source) hands out new clock values in
        // the order it plans paths, which slices change: compare with the
        // new values renumbered in the order they appear.
        let coord = (0..which.len())
            .find(|k| !roles.backups.contains(k))
            .unwrap();
        let coord = (
            before[which[coord]].info.id,
            before[which[coord]].info.clock,
        );
        let (full_n, sliced_n) = (
            renumbered(&full, &which, coord),
            renumbered(&sliced, &which, coord),
        );
        for &i in &which {
            let (f, n) = (&full[i], &incr[i]);
            assert_eq!(
                view(&f.entries),
                view(&n.entries),
                "replica {i} after {s:?}"
            );
            assert_eq!(f.info.clock, n.info.clock, "clock of replica {i}");
            assert_eq!(f.info.peers, n.info.peers, "peers of replica {i}");
            if could && !incr_report.unchanged {
                assert_eq!(n.full_loads, 0, "replica {i} was loaded whole");
            }
            assert_eq!(
                full_n[i], sliced_n[i],
                "replica {i} after {s:?}, planned in slices of {slice}"
            );
            // (Sequence numbers and clock values may differ: a slice
            // plans again the ancestors of its paths, and a parent an earlier
            // slice recorded as deleted is put back when a later one meets a
            // child some replica holds; what every replica ends holding may
            // not differ.)
        }
        let conflicts = |r: &crate::Report| -> Vec<String> {
            r.conflicts.iter().map(|c| format!("{c:?}")).collect()
        };
        assert_eq!(conflicts(&full_report), conflicts(&incr_report));
        // What failed (or no tree could do) is the same both ways.
        let failed = |r: &crate::Report| -> Vec<String> {
            let mut e: Vec<String> = r
                .errors
                .iter()
                .map(|e| format!("{} {}", e.replica, e.path))
                .collect();
            e.sort();
            e
        };
        assert_eq!(
            failed(&full_report),
            failed(&incr_report),
            "failures after {s:?}"
        );
        let sorted = |r: &crate::Report| -> Vec<String> {
            let mut c = conflicts(r);
            c.sort();
            c
        };
        assert_eq!(sorted(&full_report), sorted(&sliced_report), "in slices");
        self.states = incr;
        for s in &mut self.states {
            s.full_loads = 0;
        }
    }

    fn boxed(&self, which: &[usize], states: &[State]) -> Vec<Box<dyn Replica>> {
        which
            .iter()
            .map(|&i| {
                Box::new(Mem {
                    info: states[i].info.clone(),
                    state: Arc::new(Mutex::new(states[i].clone())),
                    fail: None,
                }) as Box<dyn Replica>
            })
            .collect()
    }
}

/// Runs one sync of the replicas `which` from `states`; returns all the
/// states after it, and the report.
fn run_on(
    which: &[usize],
    states: &[State],
    opts: &SyncOptions,
    roles: &crate::Roles,
    fail: Option<u64>,
) -> (Vec<State>, crate::Report) {
    let shared: Vec<Arc<Mutex<State>>> = which
        .iter()
        .map(|&i| Arc::new(Mutex::new(states[i].clone())))
        .collect();
    let mut reps: Vec<Box<dyn Replica>> = which
        .iter()
        .zip(&shared)
        .map(|(&i, s)| {
            Box::new(Mem {
                info: states[i].info.clone(),
                state: s.clone(),
                fail,
            }) as Box<dyn Replica>
        })
        .collect();
    let report = crate::run(&mut reps, opts, roles, &NoProgress).expect("sync");
    drop(reps);
    let mut out = states.to_vec();
    for (&i, s) in which.iter().zip(shared) {
        out[i] = s.lock().unwrap().clone();
    }
    (out, report)
}

fn file(b: u8) -> Object {
    Object::File {
        size: 1,
        content: Hash([b; 32]),
    }
}

/// What a replica holds, without its own sequence numbers.
fn view(m: &BTreeMap<String, LocalEntry>) -> BTreeMap<String, (Object, u32, i64, VersionVector)> {
    m.iter()
        .map(|(p, le)| {
            let e = &le.entry;
            (
                p.clone(),
                (e.object.clone(), e.mode, e.mtime_ns, e.vv.clone()),
            )
        })
        .collect()
}

/// What each replica of `which` holds (as [`view`]), with the clock
/// values the coordinator `(id, clock before the sync)` handed out in the
/// sync numbered from 1 in the order they first appear.
fn renumbered(
    states: &[State],
    which: &[usize],
    (id, base): (ReplicaId, u64),
) -> Vec<BTreeMap<String, (Object, u32, i64, VersionVector)>> {
    let mut order: HashMap<u64, u64> = HashMap::new();
    let mut out = vec![BTreeMap::new(); states.len()];
    for &i in which {
        let mut v = view(&states[i].entries);
        for (_, _, _, vv) in v.values_mut() {
            let pairs = vv.pairs().iter().map(|&(r, c)| {
                if r != id || c <= base {
                    return (r, c);
                }
                let next = base + order.len() as u64 + 1;
                (r, *order.entry(c).or_insert(next))
            });
            *vv = VersionVector::from_pairs(pairs.collect());
        }
        out[i] = v;
    }
    out
}

fn step() -> impl Strategy<Value = Step> {
    let what = prop_oneof![
        4 => (0u8..3).prop_map(What::File),
        2 => Just(What::Dir),
        1 => Just(What::Link),
        3 => Just(What::Delete),
    ];
    prop_oneof![
        6 => (0usize..4, 0usize..PATHS.len(), what).prop_map(|(r, path, what)| Step::Local { r, path, what }),
        1 => (0usize..4, 0usize..PATHS.len(), 0usize..PATHS.len()).prop_map(|(r, from, to)| Step::Rename { r, from, to }),
        4 => (0u8..16, 0u8..3, proptest::option::weighted(0.15, 0usize..4), proptest::bool::weighted(0.9), proptest::option::weighted(0.2, 0u64..1000))
            .prop_map(|(mask, policy, backup, ignore_tmp, fail)| Step::Sync { mask, policy, backup, ignore_tmp, fail }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn incremental_planning_equals_full_planning(
        n in 2usize..5,
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        let mut w = World::new(n);
        for s in &steps {
            w.step(s);
        }
        // And a last round where everyone syncs with everyone.
        for _ in 0..2 {
            w.step(&Step::Sync { mask: 0xf, policy: 0, backup: None, ignore_tmp: true, fail: None });
        }
    }
}

/// A small change in a tree that synced before loads only that change
/// and its ancestors: nothing else of either replica.
#[test]
fn a_small_change_loads_only_what_it_touches() {
    let mut w = World::new(2);
    for i in 0..50 {
        w.put(0, &format!("dir/f{i}"), file(1));
    }
    let all = Step::Sync {
        mask: 3,
        policy: 0,
        backup: None,
        ignore_tmp: false,
        fail: None,
    };
    w.step(&all);
    w.step(&all);
    w.put(1, "dir/f7", file(2));
    let mut reps = w.boxed(&[0, 1], &w.states);
    let m = weave_core::ignore::Matcher::from_files(&[], &[]).unwrap();
    let fl = floors(&reps, m.fingerprint()).expect("they synced");
    let roles = crate::Roles::default();
    let how = Planning {
        roles: &roles,
        matcher: &m,
        policy: weave_core::ConflictPolicy::KeepBoth,
        full: false,
    };
    let mut clock = CoordinatorClock::for_test(ReplicaId(100), 1000);
    let g = incremental(&mut reps, &fl, &how, &mut clock)
        .unwrap()
        .expect("it settles");
    assert_eq!(
        g.scope,
        Scope::Changes {
            paths: 2,
            rounds: 1
        }
    );
    for v in &g.views {
        assert_eq!(v.keys().collect::<Vec<_>>(), ["dir", "dir/f7"]);
    }
    assert_eq!(g.plan.finals.len(), 2);
}

/// A directory the plan deletes, held as a directory by some replica,
/// has its whole inside loaded: a path inside it that no replica changed
/// (and that a full plan would see) cannot be missed.
#[test]
fn a_directory_the_plan_deletes_has_its_inside_loaded() {
    let mut w = World::new(2);
    w.put(1, "d/x", file(1));
    let deleted = {
        let mut e = w.states[1].entries["d"].clone();
        e.entry.object = Object::Deleted;
        e.entry.vv.bump(ReplicaId(100), 50);
        e
    };
    w.states[0].entries.insert("d".into(), deleted.clone());
    let views: Vec<Entries> = w
        .states
        .iter()
        .map(|s| Arc::new(s.entries.clone()))
        .collect();
    let mut plan = TreePlan::default();
    plan.finals.insert("d".into(), deleted.entry);
    let known = Known {
        paths: vec![["d".to_string()].into(); 2],
        subtrees: Vec::new(),
        range: None,
    };
    let none = weave_core::ignore::Matcher::none();
    let (paths, subtrees) = reached(&plan, &views, &known, &[], &none);
    assert!(paths.is_empty());
    assert_eq!(subtrees, ["d"]);
    let loaded = Known {
        subtrees: vec!["d".into()],
        ..known
    };
    assert_eq!(
        reached(&plan, &views, &loaded, &[], &none),
        (vec![], vec![])
    );
}

/// The history CI's run of the property test found: a backup that could
/// not undo its own change (an operation failed on it) was taken as
/// integrated by its source, so a later sync that planned only what
/// changed missed what the backup still held.
#[test]
fn a_backup_that_failed_is_not_taken_as_integrated() {
    let mut w = World::new(2);
    let steps = [
        Step::Local {
            r: 0,
            path: 1,
            what: What::File(2),
        },
        Step::Local {
            r: 0,
            path: 0,
            what: What::File(0),
        },
        Step::Sync {
            mask: 11,
            policy: 0,
            backup: None,
            ignore_tmp: true,
            fail: None,
        },
        Step::Local {
            r: 1,
            path: 1,
            what: What::File(0),
        },
        Step::Sync {
            mask: 3,
            policy: 0,
            backup: Some(1),
            ignore_tmp: true,
            fail: Some(234),
        },
        Step::Local {
            r: 0,
            path: 2,
            what: What::File(0),
        },
        Step::Sync {
            mask: 15,
            policy: 0,
            backup: None,
            ignore_tmp: true,
            fail: None,
        },
        Step::Sync {
            mask: 15,
            policy: 0,
            backup: None,
            ignore_tmp: true,
            fail: None,
        },
    ];
    for s in &steps {
        w.step(s);
    }
}
