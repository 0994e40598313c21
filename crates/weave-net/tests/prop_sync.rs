//! Property tests of the whole engine on real temporary directories:
//! random operation sequences on 2 and 3 replicas, interleaved with syncs
//! of random pairs. Checks:
//! - convergence: once every pair has synced, all replicas are identical;
//! - no lost update: every content a replica held at one of its syncs is
//!   still somewhere (as the file or a conflict copy), unless a user
//!   knowingly replaced or deleted it afterwards;
//! - idempotence: one more sync changes nothing;
//! - versions: every content a sync replaced or deleted on a replica can be
//!   restored from that replica's version store byte for byte (or lives on
//!   there at another path: a rename, a conflict copy).
//!
//! With a backup replica (the last one, a backup in every sync it takes
//! part in), the sources converge and the backup mirrors them; nothing a
//! user made on the backup ever reaches a source, and what its syncs
//! replace there is in its version store.
//!
//! The same runs also go with one replica remote: reached through a
//! session (weave-net's protocol over a socket pair) to `serve` running in
//! a thread, exactly as `weave serve --stdio` runs it on another machine.

use proptest::prelude::*;
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use weave_engine::{NoProgress, PolicySpec, Replica, SyncOptions};
use weave_fs::LocalReplica;
use weave_net::{Conn, RemoteReplica};

/// The size of a written file with a hole in it (see `World::content`).
const SPARSE: usize = 300_000;

/// The paths operations pick from: few enough to collide often.
const PATHS: &[&str] = &[
    "a", "b", "d", "d/a", "d/b", "d/e", "d/e/c", "d.x", "d-y", "d-y/a", "d/e.c", "f", "f/a",
];

#[derive(Debug, Clone)]
enum UserOp {
    Write {
        rep: usize,
        path: usize,
        size: usize,
    },
    Delete {
        rep: usize,
        path: usize,
    },
    Rename {
        rep: usize,
        from: usize,
        to: usize,
    },
    Mkdir {
        rep: usize,
        path: usize,
    },
    RemoveTree {
        rep: usize,
        path: usize,
    },
    /// Replace a file by a directory or a directory by a file.
    Swap {
        rep: usize,
        path: usize,
    },
    Chmod {
        rep: usize,
        path: usize,
        exec: bool,
    },
    Symlink {
        rep: usize,
        path: usize,
        target: usize,
    },
    /// Set (or, for 0, remove) the extended attribute `user.tag` of a file
    /// or directory: a change of metadata alone.
    Tag {
        rep: usize,
        path: usize,
        value: u8,
    },
    Sync {
        a: usize,
        b: usize,
    },
    SyncAll,
}

fn arb_op(n: usize) -> impl Strategy<Value = UserOp> {
    let rep = 0..n;
    let p = 0..PATHS.len();
    prop_oneof![
        4 => (rep.clone(), p.clone(), prop_oneof![6 => 0usize..200, 2 => 20_000usize..90_000, 1 => Just(SPARSE)]).prop_map(|(rep, path, size)| UserOp::Write { rep, path, size }),
        2 => (rep.clone(), p.clone()).prop_map(|(rep, path)| UserOp::Delete { rep, path }),
        1 => (rep.clone(), p.clone(), p.clone()).prop_map(|(rep, from, to)| UserOp::Rename { rep, from, to }),
        1 => (rep.clone(), p.clone()).prop_map(|(rep, path)| UserOp::Mkdir { rep, path }),
        1 => (rep.clone(), p.clone()).prop_map(|(rep, path)| UserOp::RemoveTree { rep, path }),
        1 => (rep.clone(), p.clone()).prop_map(|(rep, path)| UserOp::Swap { rep, path }),
        1 => (rep.clone(), p.clone(), any::<bool>()).prop_map(|(rep, path, exec)| UserOp::Chmod { rep, path, exec }),
        1 => (rep.clone(), p.clone(), 0usize..3).prop_map(|(rep, path, target)| UserOp::Symlink { rep, path, target }),
        1 => (rep.clone(), p.clone(), 0u8..3).prop_map(|(rep, path, value)| UserOp::Tag { rep, path, value }),
        3 => (rep.clone(), rep.clone()).prop_map(|(a, b)| UserOp::Sync { a, b }),
        1 => Just(UserOp::SyncAll),
    ]
}

struct World {
    _tmp: tempfile::TempDir,
    reps: Vec<PathBuf>,
    counter: u64,
    /// Contents some replica held at one of its syncs.
    held: HashSet<Vec<u8>>,
    /// Contents a user replaced or deleted after seeing them.
    superseded: HashSet<Vec<u8>>,
    /// The conflict policy of every sync (keep-both, newest, or prefer the
    /// first replica).
    policy: Policy,
    /// The replica reached through a session, if any.
    remote: Option<usize>,
    /// The backup replica, if any.
    backup: Option<usize>,
    /// Contents users wrote on the backup.
    backup_made: HashSet<Vec<u8>>,
    /// An encrypted bucket (`file://…`) the replicas sync through, each
    /// on its own, as devices that are never on together: what is a sync
    /// of replicas elsewhere is each of them syncing with the bucket in
    /// turn, the first again at the end.
    bucket: Option<String>,
    /// After each sync with the bucket, a prune that keeps no old version
    /// and no grace period: it sweeps what the one before marked, and
    /// marks again.
    prune: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    KeepBoth,
    Newest,
    PreferFirst,
}

fn is_file(p: &Path) -> bool {
    fs::symlink_metadata(p)
        .map(|m| m.file_type().is_file())
        .unwrap_or(false)
}
fn is_dir(p: &Path) -> bool {
    fs::symlink_metadata(p)
        .map(|m| m.file_type().is_dir())
        .unwrap_or(false)
}
fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

impl World {
    fn new(n: usize, policy: Policy) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let reps = (0..n)
            .map(|i| {
                let p = tmp.path().join(format!("r{i}"));
                fs::create_dir(&p).unwrap();
                p
            })
            .collect();
        World {
            _tmp: tmp,
            reps,
            counter: 0,
            held: HashSet::new(),
            superseded: HashSet::new(),
            policy,
            remote: None,
            backup: None,
            backup_made: HashSet::new(),
            bucket: None,
            prune: false,
        }
    }

    fn content(&mut self, size: usize) -> Vec<u8> {
        self.counter += 1;
        let mut v = format!("content #{} ", self.counter).into_bytes();
        let mut x = self.counter.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        while v.len() < size {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.push(x as u8);
        }
        // A file with a hole: a run of zeros whole chunks long.
        if size == SPARSE {
            v[20_000..SPARSE - 20_000].fill(0);
        }
        v
    }

    /// Everything under `p` that a user is about to destroy.
    fn supersede_tree(&mut self, p: &Path) {
        if is_file(p) {
            self.superseded.insert(fs::read(p).unwrap());
        } else if is_dir(p) {
            for e in fs::read_dir(p).unwrap() {
                self.supersede_tree(&e.unwrap().path());
            }
        }
    }

    /// Makes sure the parent of `rel` is a directory; false if a
    /// non-directory is in the way.
    fn parents(&self, root: &Path, rel: &str) -> bool {
        let full = root.join(rel);
        let parent = full.parent().unwrap();
        let mut cur = root.to_path_buf();
        for c in parent.strip_prefix(root).unwrap().components() {
            cur.push(c);
            if exists(&cur) && !is_dir(&cur) {
                return false;
            }
        }
        fs::create_dir_all(parent).unwrap();
        true
    }

    fn apply(&mut self, op: &UserOp) {
        match *op {
            UserOp::Write { rep, path, size } => {
                let root = self.reps[rep].clone();
                let full = root.join(PATHS[path]);
                if !self.parents(&root, PATHS[path]) || (exists(&full) && !is_file(&full)) {
                    return;
                }
                if is_file(&full) {
                    self.superseded.insert(fs::read(&full).unwrap());
                }
                let c = self.content(size);
                if Some(rep) == self.backup {
                    self.backup_made.insert(c.clone());
                }
                fs::write(&full, c).unwrap();
            }
            UserOp::Delete { rep, path } => {
                let full = self.reps[rep].join(PATHS[path]);
                if is_file(&full) {
                    self.superseded.insert(fs::read(&full).unwrap());
                    fs::remove_file(&full).unwrap();
                } else if exists(&full) && !is_dir(&full) {
                    fs::remove_file(&full).unwrap();
                }
            }
            UserOp::Rename { rep, from, to } => {
                let root = self.reps[rep].clone();
                let (f, t) = (root.join(PATHS[from]), root.join(PATHS[to]));
                if from == to
                    || !is_file(&f)
                    || (exists(&t) && !is_file(&t))
                    || !self.parents(&root, PATHS[to])
                {
                    return;
                }
                if is_file(&t) {
                    self.superseded.insert(fs::read(&t).unwrap());
                }
                fs::rename(&f, &t).unwrap();
            }
            UserOp::Mkdir { rep, path } => {
                let root = self.reps[rep].clone();
                let full = root.join(PATHS[path]);
                if self.parents(&root, PATHS[path]) && !exists(&full) {
                    fs::create_dir(&full).unwrap();
                }
            }
            UserOp::RemoveTree { rep, path } => {
                let full = self.reps[rep].join(PATHS[path]);
                if is_dir(&full) {
                    self.supersede_tree(&full);
                    fs::remove_dir_all(&full).unwrap();
                }
            }
            UserOp::Swap { rep, path } => {
                let full = self.reps[rep].join(PATHS[path]);
                if is_dir(&full) {
                    self.supersede_tree(&full);
                    fs::remove_dir_all(&full).unwrap();
                    let c = self.content(10);
                    if Some(rep) == self.backup {
                        self.backup_made.insert(c.clone());
                    }
                    fs::write(&full, c).unwrap();
                } else if is_file(&full) {
                    self.superseded.insert(fs::read(&full).unwrap());
                    fs::remove_file(&full).unwrap();
                    fs::create_dir(&full).unwrap();
                    let c = self.content(10);
                    if Some(rep) == self.backup {
                        self.backup_made.insert(c.clone());
                    }
                    fs::write(full.join("a"), c).unwrap();
                }
            }
            UserOp::Chmod { rep, path, exec } => {
                let full = self.reps[rep].join(PATHS[path]);
                if is_file(&full) {
                    let mode = if exec { 0o755 } else { 0o640 };
                    fs::set_permissions(&full, fs::Permissions::from_mode(mode)).unwrap();
                } else if is_dir(&full) {
                    let mode = if exec { 0o755 } else { 0o750 };
                    fs::set_permissions(&full, fs::Permissions::from_mode(mode)).unwrap();
                }
            }
            UserOp::Tag { rep, path, value } => {
                let full = self.reps[rep].join(PATHS[path]);
                if is_file(&full) || is_dir(&full) {
                    // A file system without user attributes: nothing to do.
                    let _ = match value {
                        0 => rustix::fs::lremovexattr(&full, "user.tag"),
                        v => rustix::fs::lsetxattr(
                            &full,
                            "user.tag",
                            &[v],
                            rustix::fs::XattrFlags::empty(),
                        ),
                    };
                }
            }
            UserOp::Symlink { rep, path, target } => {
                let root = self.reps[rep].clone();
                let full = root.join(PATHS[path]);
                if !self.parents(&root, PATHS[path]) || exists(&full) {
                    return;
                }
                let t = ["a", "../outside", "no/such/target"][target];
                std::os::unix::fs::symlink(t, &full).unwrap();
            }
            UserOp::Sync { a, b } => {
                if a != b {
                    self.sync(&[a, b]);
                }
            }
            UserOp::SyncAll => {
                let all: Vec<usize> = (0..self.reps.len()).collect();
                self.sync(&all);
            }
        }
    }

    fn sync(&mut self, which: &[usize]) -> weave_engine::Report {
        let Some(bucket) = self.bucket.clone() else {
            return self.sync_with(which, None);
        };
        let mut order = which.to_vec();
        order.push(which[0]);
        let mut total: Option<weave_engine::Report> = None;
        for i in order {
            let r = self.sync_with(&[i], Some(&bucket));
            if self.prune {
                prune_all_old(&bucket);
            }
            total = Some(match total {
                None => r,
                Some(mut t) => {
                    t.created += r.created;
                    t.updated += r.updated;
                    t.deleted += r.deleted;
                    t.conflicts.extend(r.conflicts);
                    t
                }
            });
        }
        total.expect("a replica synced")
    }

    /// Syncs replicas `which`, and the bucket at `bucket` if given.
    fn sync_with(&mut self, which: &[usize], bucket: Option<&str>) -> weave_engine::Report {
        for &i in which {
            // What a backup holds is not kept by syncing: only in its store.
            if Some(i) == self.backup {
                continue;
            }
            for (_, node) in tree(&self.reps[i]) {
                if let Node::File(c, ..) = node {
                    self.held.insert(c);
                }
            }
        }
        let before: Vec<(usize, BTreeMap<String, Node>)> =
            which.iter().map(|&i| (i, tree(&self.reps[i]))).collect();
        let mut paths: Vec<String> = which
            .iter()
            .map(|&i| self.reps[i].to_str().expect("a UTF-8 path").to_string())
            .collect();
        paths.extend(bucket.map(str::to_string));
        let net = weave_net::NetOptions {
            passphrase: bucket.map(|_| b"prop".to_vec()),
            ..Default::default()
        };
        let policy = match self.policy {
            Policy::KeepBoth => PolicySpec::KeepBoth,
            Policy::Newest => PolicySpec::Newest,
            // The first replica of the sync; the policy only applies when
            // it takes part (otherwise keep-both).
            Policy::PreferFirst if which.contains(&0) => {
                PolicySpec::Prefer(self.reps[0].display().to_string())
            }
            Policy::PreferFirst => PolicySpec::KeepBoth,
        };
        let backup = self.backup.filter(|b| which.contains(b));
        let opts = SyncOptions {
            policy,
            backup: backup.map(|b| self.reps[b].clone()).into_iter().collect(),
            ..SyncOptions::default()
        };
        let report = match self.remote.filter(|r| which.contains(r)) {
            None => weave_net::sync(&paths, &opts, &net, &NoProgress).expect("sync failed"),
            Some(r) => {
                let mut reps: Vec<Box<dyn Replica>> = Vec::new();
                let mut servers = Vec::new();
                for &i in which {
                    let canon = fs::canonicalize(&self.reps[i]).unwrap();
                    let shown = self.reps[i].display().to_string();
                    if i == r {
                        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
                        let server = Conn::over_unix(b, "coordinator", None).unwrap();
                        servers.push(std::thread::spawn(move || weave_net::server::serve(server)));
                        let conn = Conn::over_unix(a, "remote", None).unwrap();
                        let mut rr =
                            RemoteReplica::open(conn, &shown, canon.to_str().unwrap(), false)
                                .expect("remote open");
                        // The coordinator remembers the remote's index, as
                        // `weave sync` does in its first local replica.
                        let first_local = which.iter().find(|&&j| j != r).expect("a local");
                        rr.cache_index_in(&self.reps[*first_local].join(".weave"));
                        reps.push(Box::new(rr));
                    } else {
                        reps.push(Box::new(LocalReplica::open(&canon, &shown, false).unwrap()));
                    }
                }
                let preferred = match opts.policy {
                    PolicySpec::Prefer(_) => which.iter().position(|&i| i == 0),
                    _ => None,
                };
                let roles = weave_engine::Roles {
                    preferred,
                    backups: backup
                        .and_then(|b| which.iter().position(|&i| i == b))
                        .into_iter()
                        .collect(),
                };
                let report =
                    weave_engine::run(&mut reps, &opts, &roles, &NoProgress).expect("sync failed");
                drop(reps);
                for s in servers {
                    s.join().unwrap().expect("server failed");
                }
                report
            }
        };
        assert!(report.errors.is_empty(), "errors: {:?}", report.errors);
        for (i, old) in &before {
            self.check_versions(*i, old);
        }
        // A sync of one source with the backup leaves the source alone.
        if backup.is_some() && which.len() == 2 {
            for (i, old) in &before {
                if Some(*i) != backup {
                    assert_eq!(&tree(&self.reps[*i]), old, "a backup changed replica {i}");
                }
            }
        }
        report
    }

    /// What this sync took away from replica `i` can be restored there.
    fn check_versions(&self, i: usize, old: &BTreeMap<String, Node>) {
        let now = tree(&self.reps[i]);
        let live: HashSet<&Vec<u8>> = now
            .values()
            .filter_map(|n| match n {
                Node::File(c, ..) => Some(c),
                _ => None,
            })
            .collect();
        let root = fs::canonicalize(&self.reps[i]).unwrap();
        for (path, node) in old {
            let Node::File(c, ..) = node else { continue };
            if live.contains(c) {
                continue;
            }
            let at = weave_store::history::Located {
                root: root.clone(),
                rel: path.clone(),
            };
            let id = weave_chunk::chunk_bytes(c).content_id();
            let v = weave_store::history::history(&at)
                .unwrap()
                .into_iter()
                .rev()
                .find(|v| v.content == id)
                .unwrap_or_else(|| panic!("replica {i}: {path}'s old content was not kept"));
            let out = tempfile::tempdir().unwrap();
            let dest = out.path().join("restored");
            weave_store::history::restore(
                &at,
                weave_store::history::Pick::Version(v.id),
                Some(&dest),
                &|_, _, _| Ok(()),
            )
            .unwrap();
            assert_eq!(
                &fs::read(&dest).unwrap(),
                c,
                "replica {i}: {path} restored wrong"
            );
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    /// Content, mode, mtime, `user.tag`.
    File(Vec<u8>, u32, std::time::SystemTime, Option<Vec<u8>>),
    Dir(u32, Option<Vec<u8>>),
    Link(PathBuf),
}

/// The extended attribute `user.tag` of a path, if it has one.
fn tag(p: &Path) -> Option<Vec<u8>> {
    let mut buf = [0u8; 16];
    rustix::fs::lgetxattr(p, "user.tag", &mut buf[..])
        .ok()
        .map(|n| buf[..n].to_vec())
}

/// Everything in a replica but its state directory.
fn tree(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == ".weave" {
                continue;
            }
            let m = fs::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode() & 0o777;
            let node = if m.file_type().is_symlink() {
                Node::Link(fs::read_link(&p).unwrap())
            } else if m.is_dir() {
                stack.push(p.clone());
                Node::Dir(mode, tag(&p))
            } else {
                Node::File(fs::read(&p).unwrap(), mode, m.modified().unwrap(), tag(&p))
            };
            out.insert(rel, node);
        }
    }
    out
}

fn check(n: usize, ops: &[UserOp]) -> Result<(), TestCaseError> {
    check_with(n, ops, Policy::KeepBoth)
}

/// Under `newest` and `prefer`, losing versions are dropped by design: the
/// no-lost-update check applies to keep-both only; convergence and
/// idempotence hold for every policy.
fn check_with(n: usize, ops: &[UserOp], policy: Policy) -> Result<(), TestCaseError> {
    check_remote(n, ops, policy, None)
}

fn check_remote(
    n: usize,
    ops: &[UserOp],
    policy: Policy,
    remote: Option<usize>,
) -> Result<(), TestCaseError> {
    check_all(n, ops, policy, remote, None)
}

fn check_all(
    n: usize,
    ops: &[UserOp],
    policy: Policy,
    remote: Option<usize>,
    backup: Option<usize>,
) -> Result<(), TestCaseError> {
    let mut w = World::new(n, policy);
    w.remote = remote;
    w.backup = backup;
    run_world(w, n, ops, policy, backup)
}

fn run_world(
    mut w: World,
    n: usize,
    ops: &[UserOp],
    policy: Policy,
    backup: Option<usize>,
) -> Result<(), TestCaseError> {
    for op in ops {
        w.apply(op);
    }
    // Every pair syncs, as a chain there and back.
    for i in 0..n - 1 {
        w.sync(&[i, i + 1]);
    }
    for i in (0..n - 1).rev() {
        w.sync(&[i, i + 1]);
    }
    let first = tree(&w.reps[0]);
    for i in 1..n {
        let t = tree(&w.reps[i]);
        prop_assert_eq!(&first, &t, "replica {} differs from replica 0", i);
    }
    // No lost update.
    let present: HashSet<Vec<u8>> = first
        .values()
        .filter_map(|n| match n {
            Node::File(c, ..) => Some(c.clone()),
            _ => None,
        })
        .collect();
    for c in w.held.iter().filter(|_| policy == Policy::KeepBoth) {
        prop_assert!(
            present.contains(c) || w.superseded.contains(c),
            "lost content {:?}",
            String::from_utf8_lossy(&c[..c.len().min(20)])
        );
    }
    // Nothing a user made on the backup reached a source.
    for i in (0..n).filter(|&i| Some(i) != backup) {
        for (p, node) in tree(&w.reps[i]) {
            if let Node::File(c, ..) = node {
                prop_assert!(
                    !w.backup_made.contains(&c),
                    "replica {} holds {} made on the backup",
                    i,
                    p
                );
            }
        }
    }
    // Idempotence: another sync of everyone changes nothing.
    let all: Vec<usize> = (0..n).collect();
    let r = w.sync(&all);
    prop_assert_eq!(
        r.created + r.updated + r.deleted,
        0,
        "second sync changed something: {:?}",
        r
    );
    prop_assert!(r.conflicts.is_empty());
    prop_assert_eq!(tree(&w.reps[0]), first);
    Ok(())
}

/// Every sync goes through an encrypted bucket: the replicas never sync
/// with each other.
fn check_bucket(n: usize, ops: &[UserOp]) -> Result<(), TestCaseError> {
    let mut w = World::new(n, Policy::KeepBoth);
    w.bucket = Some(format!("file://{}", w._tmp.path().join("bucket").display()));
    run_world(w, n, ops, Policy::KeepBoth, None)
}

/// Prunes the bucket at `address` of every old version, at once.
fn prune_all_old(address: &str) {
    let a = weave_bucket::BucketAddress::parse(address)
        .unwrap()
        .unwrap();
    let mut pool = weave_bucket::open_existing(&a, b"prop").unwrap();
    let none = weave_store::Policy {
        keep_last: Some(0),
        ..weave_store::Policy::keep_all()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    weave_bucket::prune::prune(&mut pool, &none, 0, now, false).unwrap();
}

/// As [`check_bucket`], with the bucket pruned after every sync.
fn check_bucket_pruned(n: usize, ops: &[UserOp]) -> Result<(), TestCaseError> {
    let mut w = World::new(n, Policy::KeepBoth);
    w.bucket = Some(format!("file://{}", w._tmp.path().join("bucket").display()));
    w.prune = true;
    run_world(w, n, ops, Policy::KeepBoth, None)
}

fn cases() -> u32 {
    std::env::var("WEAVE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn two_replicas_converge_without_losing_updates(ops in proptest::collection::vec(arb_op(2), 1..30)) {
        check(2, &ops)?;
    }

    #[test]
    fn three_replicas_converge_without_losing_updates(ops in proptest::collection::vec(arb_op(3), 1..40)) {
        check(3, &ops)?;
    }

    #[test]
    fn replicas_converge_under_the_newest_policy(ops in proptest::collection::vec(arb_op(3), 1..40)) {
        check_with(3, &ops, Policy::Newest)?;
    }

    #[test]
    fn one_remote_of_two_converges_without_losing_updates(ops in proptest::collection::vec(arb_op(2), 1..30)) {
        check_remote(2, &ops, Policy::KeepBoth, Some(1))?;
    }

    #[test]
    fn one_remote_of_three_converges_without_losing_updates(ops in proptest::collection::vec(arb_op(3), 1..40)) {
        check_remote(3, &ops, Policy::KeepBoth, Some(0))?;
    }

    #[test]
    fn a_backup_mirrors_its_sources_and_sends_nothing(ops in proptest::collection::vec(arb_op(3), 1..40)) {
        check_all(3, &ops, Policy::KeepBoth, None, Some(2))?;
    }

    #[test]
    fn a_remote_backup_mirrors_its_source_and_sends_nothing(ops in proptest::collection::vec(arb_op(2), 1..30)) {
        check_all(2, &ops, Policy::KeepBoth, Some(1), Some(1))?;
    }

    #[test]
    fn replicas_converge_under_a_prefer_policy(ops in proptest::collection::vec(arb_op(3), 1..40)) {
        check_with(3, &ops, Policy::PreferFirst)?;
    }
}

proptest! {
    // Each sync through a bucket opens it (a key derivation of 64 MiB):
    // fewer cases unless WEAVE_PROPTEST_CASES asks.
    #![proptest_config(ProptestConfig { cases: if std::env::var_os("WEAVE_PROPTEST_CASES").is_some() { cases() } else { 16 }, max_shrink_iters: 500, ..ProptestConfig::default() })]

    #[test]
    fn replicas_syncing_only_through_a_bucket_converge_without_losing_updates(ops in proptest::collection::vec(arb_op(2), 1..30)) {
        check_bucket(2, &ops)?;
    }

}

proptest! {
    // And a prune after each of those syncs (another key derivation each).
    #![proptest_config(ProptestConfig { cases: if std::env::var_os("WEAVE_PROPTEST_CASES").is_some() { cases() } else { 8 }, max_shrink_iters: 300, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge_through_a_bucket_pruned_after_every_sync(ops in proptest::collection::vec(arb_op(2), 1..30)) {
        check_bucket_pruned(2, &ops)?;
    }
}
