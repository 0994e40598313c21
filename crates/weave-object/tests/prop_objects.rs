//! Property tests of the object library, over random operation sequences
//! on three replicas of a test-only object type (a store kept in memory),
//! one of them reached through a session (`serve_kinds` and
//! `RemoteReplica`, over a socket pair), as any remote replica is:
//!
//! - a type without a merge: after a sync of all replicas they are
//!   identical; one more sync changes nothing; no value is lost unless a
//!   replica that held it overwrote or deleted it (concurrent versions are
//!   kept as conflict copies);
//! - a type whose values are sets, merged by union: after a sync of all,
//!   every key holds exactly the union of everything ever added to it on
//!   any replica, and there is no conflict copy.

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use weave_engine::{Kinds, Merge, Replica, SyncOptions};
use weave_net::{Conn, RemoteReplica};
use weave_object::{
    Change, Listed, ObjectKind, ObjectReplica, ObjectStore, ObjectType, Outcome, StoreError,
};

/// name → (revision, mtime, content)
type Objects = BTreeMap<String, (u64, i64, Vec<u8>)>;

/// A store kept in memory, shared between the test (which edits it as a
/// user would) and the replica a sync opens on it.
#[derive(Clone, Default)]
struct MemStore {
    inner: Arc<Mutex<(Objects, u64)>>,
    /// Names weave wrote as conflict copies.
    copies: Arc<Mutex<BTreeSet<String>>>,
}

impl MemStore {
    fn put(&self, name: &str, data: Vec<u8>, mtime_ns: i64) {
        let mut g = self.inner.lock().unwrap();
        g.1 += 1;
        let rev = g.1;
        g.0.insert(name.to_string(), (rev, mtime_ns, data));
    }
    fn delete(&self, name: &str) {
        self.inner.lock().unwrap().0.remove(name);
    }
    fn get(&self, name: &str) -> Option<Vec<u8>> {
        self.inner.lock().unwrap().0.get(name).map(|o| o.2.clone())
    }
    fn contents(&self) -> BTreeMap<String, Vec<u8>> {
        let g = self.inner.lock().unwrap();
        g.0.iter().map(|(k, v)| (k.clone(), v.2.clone())).collect()
    }
}

impl ObjectStore for MemStore {
    fn list(&mut self) -> Result<Vec<Listed>, StoreError> {
        let g = self.inner.lock().unwrap();
        Ok(g.0
            .iter()
            .map(|(name, (revision, mtime_ns, _))| Listed {
                name: name.clone(),
                revision: *revision,
                mtime_ns: *mtime_ns,
            })
            .collect())
    }
    fn read(&mut self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.get(name))
    }
    fn commit(&mut self, changes: &[Change]) -> Result<Vec<Outcome>, StoreError> {
        // Under one lock: atomic for anyone else.
        let mut g = self.inner.lock().unwrap();
        let mut out = Vec::new();
        for c in changes {
            if g.0.get(c.name()).map(|o| o.0) != c.expect() {
                out.push(Outcome::Stale);
                continue;
            }
            match c {
                Change::Put {
                    name,
                    data,
                    mtime_ns,
                    conflict_copy,
                    ..
                } => {
                    if *conflict_copy {
                        self.copies.lock().unwrap().insert(name.clone());
                    }
                    g.1 += 1;
                    let rev = g.1;
                    g.0.insert(name.clone(), (rev, *mtime_ns, data.clone()));
                    out.push(Outcome::Done {
                        revision: Some(rev),
                    });
                }
                Change::Delete { name, .. } => {
                    g.0.remove(name);
                    out.push(Outcome::Done { revision: None });
                }
            }
        }
        Ok(out)
    }
}

/// Stores by the directory that stands for them (for the server side).
fn registry() -> &'static Mutex<HashMap<PathBuf, MemStore>> {
    static R: OnceLock<Mutex<HashMap<PathBuf, MemStore>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// Values as sets of lines, merged by union.
struct Union;
impl Merge for Union {
    fn merge(&self, _name: &str, a: &[u8], b: &[u8]) -> Option<Vec<u8>> {
        Some(set_bytes(&set_of(a).union(&set_of(b)).cloned().collect()))
    }
}

fn set_of(v: &[u8]) -> BTreeSet<String> {
    String::from_utf8_lossy(v)
        .lines()
        .map(|l| l.to_string())
        .collect()
}

fn set_bytes(s: &BTreeSet<String>) -> Vec<u8> {
    s.iter()
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .into_bytes()
}

/// The test object type: a store from the registry, with or without the
/// union merge.
struct TestType {
    merge: bool,
}

impl ObjectType for TestType {
    type Store = MemStore;
    fn name(&self) -> &str {
        "test-objects"
    }
    fn open(&self, root: &Path, _dry_run: bool) -> Result<MemStore, StoreError> {
        registry()
            .lock()
            .unwrap()
            .get(root)
            .cloned()
            .ok_or_else(|| StoreError::new(format!("no test store at {}", root.display())))
    }
    fn merge(&self) -> Option<Arc<dyn Merge>> {
        self.merge.then(|| Arc::new(Union) as Arc<dyn Merge>)
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// Write a new value (unique) to a key; `big` makes it several chunks.
    Put {
        r: usize,
        key: u8,
        big: bool,
    },
    Delete {
        r: usize,
        key: u8,
    },
    /// Add an element to the set at a key (the merging type).
    Add {
        r: usize,
        key: u8,
    },
    /// Sync these replicas (2 or 3).
    Sync {
        which: Vec<usize>,
    },
}

fn plain_steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        4 => (0..3usize, 0..4u8, prop::bool::weighted(0.15)).prop_map(|(r, key, big)| Step::Put { r, key, big }),
        1 => (0..3usize, 0..4u8).prop_map(|(r, key)| Step::Delete { r, key }),
        3 => sync_step(),
    ];
    prop::collection::vec(step, 1..14)
}

fn merge_steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        3 => (0..3usize, 0..3u8).prop_map(|(r, key)| Step::Add { r, key }),
        2 => sync_step(),
    ];
    prop::collection::vec(step, 1..14)
}

fn sync_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        Just(vec![0, 1]),
        Just(vec![1, 2]),
        Just(vec![0, 2]),
        Just(vec![2, 0]),
        Just(vec![0, 1, 2]),
    ]
    .prop_map(|which| Step::Sync { which })
}

struct World {
    _dir: tempfile::TempDir,
    roots: Vec<PathBuf>,
    stores: Vec<MemStore>,
    /// This replica is reached through a session.
    remote: usize,
    merge: bool,
}

impl World {
    fn new(merge: bool, remote: usize) -> World {
        let dir = tempfile::tempdir().unwrap();
        let mut roots = Vec::new();
        let mut stores = Vec::new();
        for i in 0..3 {
            let root = dir.path().join(format!("r{i}"));
            std::fs::create_dir(&root).unwrap();
            let root = std::fs::canonicalize(&root).unwrap();
            let s = MemStore::default();
            registry().lock().unwrap().insert(root.clone(), s.clone());
            roots.push(root);
            stores.push(s);
        }
        World {
            _dir: dir,
            roots,
            stores,
            remote,
            merge,
        }
    }

    fn sync(&self, which: &[usize]) -> weave_engine::Report {
        let kind = ObjectKind(TestType { merge: self.merge });
        let mut reps: Vec<Box<dyn Replica>> = Vec::new();
        let mut servers = Vec::new();
        for &i in which {
            let shown = format!("r{i}");
            if i == self.remote {
                let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
                let server = Conn::over_unix(b, "coordinator", None).unwrap();
                let kinds = Kinds::new(Arc::new(ObjectKind(TestType { merge: self.merge })));
                servers.push(std::thread::spawn(move || {
                    weave_net::server::serve_kinds(server, &kinds)
                }));
                let conn = Conn::over_unix(a, "remote", None).unwrap();
                let r = RemoteReplica::open_kind(
                    conn,
                    &shown,
                    self.roots[i].to_str().unwrap(),
                    "test-objects",
                    false,
                )
                .expect("remote open");
                reps.push(Box::new(r));
            } else {
                let r = ObjectReplica::open(
                    self.stores[i].clone(),
                    &self.roots[i].join(".weave"),
                    &shown,
                    false,
                )
                .unwrap();
                reps.push(Box::new(r));
            }
        }
        let opts = SyncOptions {
            merge: weave_engine::Kind::merge(&kind),
            ..SyncOptions::default()
        };
        let report = weave_object::sync(&mut reps, &opts).expect("sync");
        drop(reps);
        for s in servers {
            s.join().unwrap().expect("server");
        }
        assert!(report.errors.is_empty(), "errors: {:?}", report.errors);
        report
    }
}

fn big_value(id: u64) -> Vec<u8> {
    let mut v = format!("value {id}\n").into_bytes();
    let mut x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while v.len() < 150_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

fn key(k: u8) -> String {
    format!("k{k}")
}

fn run_plain(steps: Vec<Step>, remote: usize) {
    let w = World::new(false, remote);
    // Every value written, and whether a replica that held it replaced or
    // deleted it since (then it may be gone).
    let mut values: BTreeMap<Vec<u8>, bool> = BTreeMap::new();
    let mut next = 1u64;
    for s in &steps {
        match s {
            Step::Put { r, key: k, big } => {
                let id = next;
                next += 1;
                let v = if *big {
                    big_value(id)
                } else {
                    format!("value {id}").into_bytes()
                };
                if let Some(old) = w.stores[*r].get(&key(*k)) {
                    values.insert(old, true);
                }
                w.stores[*r].put(&key(*k), v.clone(), id as i64 * 1_000_000_000);
                values.insert(v, false);
            }
            Step::Delete { r, key: k } => {
                if let Some(old) = w.stores[*r].get(&key(*k)) {
                    values.insert(old, true);
                }
                w.stores[*r].delete(&key(*k));
            }
            Step::Sync { which } => {
                w.sync(which);
            }
            Step::Add { .. } => unreachable!(),
        }
    }
    w.sync(&[0, 1, 2]);
    let end: Vec<BTreeMap<String, Vec<u8>>> = w.stores.iter().map(|s| s.contents()).collect();
    assert_eq!(end[0], end[1], "replicas 0 and 1 differ");
    assert_eq!(end[0], end[2], "replicas 0 and 2 differ");
    for (v, superseded) in &values {
        if !superseded {
            assert!(
                end[0].values().any(|x| x == v),
                "a value nobody replaced was lost: {:?}",
                String::from_utf8_lossy(&v[..v.len().min(20)])
            );
        }
    }
    // Idempotent: one more sync changes nothing.
    let again = w.sync(&[0, 1, 2]);
    assert_eq!(again.created + again.updated + again.deleted, 0);
    assert_eq!(w.stores[0].contents(), end[0]);
    // Now in step: a delete and a new value on one replica reach all.
    let gone = end[0].keys().next().cloned();
    if let Some(k) = &gone {
        w.stores[remote].delete(k);
    }
    w.stores[(remote + 1) % 3].put("fresh", b"fresh".to_vec(), 1);
    w.sync(&[0, 1, 2]);
    for s in &w.stores {
        let c = s.contents();
        assert!(
            gone.as_ref().is_none_or(|k| !c.contains_key(k)),
            "a delete did not propagate"
        );
        assert_eq!(c.get("fresh").map(|v| v.as_slice()), Some(&b"fresh"[..]));
    }
}

fn run_merge(steps: Vec<Step>, remote: usize) {
    let w = World::new(true, remote);
    let mut added: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut next = 1u64;
    for s in &steps {
        match s {
            Step::Add { r, key: k } => {
                let e = format!("e{next}");
                let mut set = w.stores[*r]
                    .get(&key(*k))
                    .map(|v| set_of(&v))
                    .unwrap_or_default();
                set.insert(e.clone());
                w.stores[*r].put(&key(*k), set_bytes(&set), next as i64 * 1_000_000_000);
                next += 1;
                added.entry(key(*k)).or_default().insert(e);
            }
            Step::Sync { which } => {
                let rep = w.sync(which);
                assert!(rep.conflicts.is_empty(), "{:?}", rep.conflicts);
            }
            _ => unreachable!(),
        }
    }
    let rep = w.sync(&[0, 1, 2]);
    assert!(rep.conflicts.is_empty(), "{:?}", rep.conflicts);
    for s in &w.stores {
        let c = s.contents();
        assert_eq!(
            c.keys().cloned().collect::<BTreeSet<_>>(),
            added.keys().cloned().collect::<BTreeSet<_>>(),
            "keys (no conflict copies)"
        );
        for (k, want) in &added {
            assert_eq!(&set_of(&c[k]), want, "the set at {k}");
        }
    }
    let again = w.sync(&[0, 1, 2]);
    assert_eq!(again.created + again.updated + again.deleted, 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn objects_converge_and_no_update_is_lost(steps in plain_steps(), remote in 0..3usize) {
        run_plain(steps, remote);
    }

    #[test]
    fn merged_objects_converge_to_the_union_of_every_change(steps in merge_steps(), remote in 0..3usize) {
        run_merge(steps, remote);
    }
}

/// A fixed case: concurrent edits of one key are kept both without a
/// merge, and merged with one.
#[test]
fn concurrent_edits_are_kept_both_or_merged() {
    let w = World::new(false, 1);
    w.stores[0].put("k", b"from 0\n".to_vec(), 1_000_000_000);
    w.stores[1].put("k", b"from 1\n".to_vec(), 2_000_000_000);
    let rep = w.sync(&[0, 1]);
    assert_eq!(rep.conflicts.len(), 1);
    let c = w.stores[0].contents();
    assert_eq!(c.len(), 2, "{c:?}");
    assert_eq!(c["k"], b"from 1\n", "the newer keeps the name");
    assert_eq!(w.stores[1].contents(), c);
    // Both stores wrote the copy, and were told it is one.
    let copy = c.keys().find(|k| *k != "k").unwrap();
    for s in &w.stores[..2] {
        assert_eq!(*s.copies.lock().unwrap(), BTreeSet::from([copy.clone()]));
    }

    let w = World::new(true, 1);
    w.stores[0].put("k", b"from 0\n".to_vec(), 1_000_000_000);
    w.stores[1].put("k", b"from 1\n".to_vec(), 2_000_000_000);
    let rep = w.sync(&[0, 1]);
    assert!(rep.conflicts.is_empty());
    assert_eq!(rep.merged.len(), 1);
    assert_eq!(w.stores[0].contents()["k"], b"from 0\nfrom 1\n");
    assert_eq!(w.stores[1].contents(), w.stores[0].contents());
}

/// An operation for a name a store cannot hold (as a hostile peer could
/// send) is refused, and nothing is written.
#[test]
fn names_that_are_not_one_component_are_never_written() {
    use weave_core::{Entry, Object, ReplicaId, VersionVector};
    let w = World::new(false, 9);
    let mut rep =
        ObjectReplica::open(w.stores[0].clone(), &w.roots[0].join(".weave"), "r0", false).unwrap();
    rep.scan(&Default::default(), false).unwrap();
    let mut vv = VersionVector::new();
    vv.bump(ReplicaId(7), 1);
    let op = |path: &str| weave_core::Op {
        kind: weave_core::OpKind::Remove,
        path: path.into(),
        current: None,
        target: Entry {
            path: path.into(),
            object: Object::Deleted,
            mode: 0,
            mtime_ns: 0,
            vv: vv.clone(),
            origin: ReplicaId(7),
            meta: None,
        },
    };
    let applied = rep
        .apply(
            vec![op("a/b"), op(".weave")],
            &Default::default(),
            &mut weave_engine::NoProvider,
            &|_| {},
        )
        .unwrap();
    assert!(applied.done.is_empty());
    assert_eq!(applied.errors.len(), 2, "{:?}", applied.errors);
}
