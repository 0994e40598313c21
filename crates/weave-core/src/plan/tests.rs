use super::*;
use crate::id::Hash;
use proptest::prelude::*;

const A: ReplicaId = ReplicaId(1 << 60);
const B: ReplicaId = ReplicaId(2 << 60);
const C: ReplicaId = ReplicaId(3 << 60);

fn vv(p: &[(ReplicaId, u64)]) -> VersionVector {
    VersionVector::from_pairs(p.to_vec())
}

fn file(path: &str, content: u8, mtime: i64, origin: ReplicaId, v: VersionVector) -> Entry {
    Entry {
        path: path.into(),
        object: Object::File {
            size: 1,
            content: Hash([content; 32]),
        },
        mode: 0o644,
        mtime_ns: mtime,
        vv: v,
        origin,
        meta: None,
    }
}

fn with(e: &Entry, object: Object) -> Entry {
    let mode = if object.is_deleted() { 0 } else { e.mode };
    Entry {
        object,
        mode,
        ..e.clone()
    }
}

#[test]
fn newer_version_wins_without_conflict() {
    let old = file("f", 1, 10, A, vv(&[(A, 1)]));
    let new = file("f", 2, 5, B, vv(&[(A, 1), (B, 2)]));
    let d = decide("f", &[(A, &old), (B, &new)], ConflictPolicy::KeepBoth).unwrap();
    assert_eq!(d.result, new);
    assert!(d.conflict.is_none() && d.copies.is_empty());
}

#[test]
fn identical_concurrent_content_is_joined() {
    let a = file("f", 7, 10, A, vv(&[(A, 1)]));
    let b = file("f", 7, 20, B, vv(&[(B, 1)]));
    let d = decide("f", &[(A, &a), (B, &b)], ConflictPolicy::KeepBoth).unwrap();
    assert!(d.conflict.is_none());
    assert_eq!(d.result.mtime_ns, 20, "newest metadata wins");
    assert_eq!(d.result.vv, vv(&[(A, 1), (B, 1)]));
}

#[test]
fn keep_both_makes_a_copy_of_the_older_version() {
    let a = file("d/r.txt", 1, 10_000_000_000, A, vv(&[(A, 1)]));
    let b = file("d/r.txt", 2, 20_000_000_000, B, vv(&[(B, 1)]));
    let d = decide("d/r.txt", &[(A, &a), (B, &b)], ConflictPolicy::KeepBoth).unwrap();
    assert_eq!(d.result.object, b.object);
    assert_eq!(d.copies.len(), 1);
    assert_eq!(d.copies[0].object, a.object);
    assert_eq!(
        d.copies[0].path,
        format!("d/r.weave-conflict-19700101-000010-{}.txt", A.short())
    );
    assert_eq!(d.conflict.unwrap().kind, ConflictKind::KeptBoth);
}

#[test]
fn equal_mtimes_are_broken_by_replica_id() {
    let a = file("f", 1, 10, A, vv(&[(A, 1)]));
    let b = file("f", 2, 10, B, vv(&[(B, 1)]));
    let d = decide("f", &[(A, &a), (B, &b)], ConflictPolicy::KeepBoth).unwrap();
    assert_eq!(d.result.origin, B);
}

#[test]
fn newest_and_prefer_policies_drop_the_loser() {
    let a = file("f", 1, 10, A, vv(&[(A, 1)]));
    let b = file("f", 2, 20, B, vv(&[(B, 1)]));
    let d = decide("f", &[(A, &a), (B, &b)], ConflictPolicy::Newest).unwrap();
    assert_eq!(d.result.origin, B);
    assert!(d.copies.is_empty());
    let d = decide("f", &[(A, &a), (B, &b)], ConflictPolicy::Prefer(A)).unwrap();
    assert_eq!(d.result.object, a.object);
    assert!(d.copies.is_empty());
    assert_eq!(d.conflict.unwrap().dropped, vec![B]);
    // The preferred replica holds nothing concurrent: keep both.
    let d = decide("f", &[(A, &a), (B, &b)], ConflictPolicy::Prefer(C)).unwrap();
    assert_eq!(d.copies.len(), 1);
}

#[test]
fn modify_beats_delete_under_every_policy() {
    let base = file("f", 1, 10, A, vv(&[(A, 1)]));
    let deleted = Entry {
        vv: vv(&[(A, 2)]),
        ..with(&base, Object::Deleted)
    };
    let modified = file("f", 2, 5, B, vv(&[(A, 1), (B, 1)]));
    for policy in [
        ConflictPolicy::KeepBoth,
        ConflictPolicy::Newest,
        ConflictPolicy::Prefer(A),
    ] {
        let d = decide("f", &[(A, &deleted), (B, &modified)], policy).unwrap();
        assert_eq!(d.result.object, modified.object);
        assert!(d.result.vv.covers(&deleted.vv));
        assert_eq!(d.conflict.unwrap().kind, ConflictKind::ModifyDelete);
    }
}

#[test]
fn directory_beats_file_and_the_file_is_kept() {
    let f = file("x", 1, 10, A, vv(&[(A, 2)]));
    let d_entry = Entry {
        mtime_ns: 0,
        vv: vv(&[(A, 1), (B, 1)]),
        origin: B,
        ..with(&f, Object::Dir)
    };
    let d = decide("x", &[(A, &f), (B, &d_entry)], ConflictPolicy::Newest).unwrap();
    assert!(d.result.object.is_dir());
    assert_eq!(d.copies.len(), 1);
    assert_eq!(d.copies[0].object, f.object);
}

struct Clock(u64);
impl Bumper for Clock {
    fn bump(&mut self) -> (ReplicaId, u64) {
        self.0 += 1;
        (C, self.0)
    }
}

#[test]
fn deleted_directory_is_restored_when_a_child_was_modified() {
    let dir_b = Entry {
        path: "d".into(),
        object: Object::Dir,
        mode: 0o750,
        mtime_ns: 0,
        vv: vv(&[(A, 1)]),
        origin: A,
        meta: None,
    };
    let dir_a = Entry {
        vv: vv(&[(A, 3)]),
        mode: 0,
        ..with(&dir_b, Object::Deleted)
    };
    let child_b = file("d/f", 2, 10, B, vv(&[(A, 2), (B, 1)]));
    let child_a = Entry {
        vv: vv(&[(A, 3)]),
        ..with(&file("d/f", 1, 10, A, vv(&[])), Object::Deleted)
    };
    let mut by_path: BTreeMap<&str, Vec<(ReplicaId, &Entry)>> = BTreeMap::new();
    by_path.insert("d", vec![(A, &dir_a), (B, &dir_b)]);
    by_path.insert("d/f", vec![(A, &child_a), (B, &child_b)]);
    let plan = plan_tree(&by_path, ConflictPolicy::KeepBoth, &mut Clock(100));
    let d = &plan.finals["d"];
    assert!(d.object.is_dir());
    assert_eq!(d.mode, 0o750);
    assert!(d.vv.compare(&dir_a.vv) == Causality::Dominates);
    assert_eq!(plan.finals["d/f"].object, child_b.object);
}

#[test]
fn file_replacing_a_directory_is_kept_beside_it_when_a_child_changed() {
    let dir_b = Entry {
        path: "d".into(),
        object: Object::Dir,
        mode: 0o755,
        mtime_ns: 0,
        vv: vv(&[(A, 1)]),
        origin: A,
        meta: None,
    };
    let file_a = file("d", 9, 50, A, vv(&[(A, 3)]));
    let child_b = file("d/f", 2, 10, B, vv(&[(A, 2), (B, 1)]));
    let child_a = Entry {
        vv: vv(&[(A, 3)]),
        ..with(&file("d/f", 1, 10, A, vv(&[])), Object::Deleted)
    };
    let mut by_path: BTreeMap<&str, Vec<(ReplicaId, &Entry)>> = BTreeMap::new();
    by_path.insert("d", vec![(A, &file_a), (B, &dir_b)]);
    by_path.insert("d/f", vec![(A, &child_a), (B, &child_b)]);
    let plan = plan_tree(&by_path, ConflictPolicy::KeepBoth, &mut Clock(0));
    assert!(plan.finals["d"].object.is_dir());
    let copy = conflict_name("d", 50, A);
    assert_eq!(plan.finals[&copy].object, file_a.object);
    assert_eq!(plan.finals["d/f"].object, child_b.object);
}

// ---- properties ----

fn arb_object() -> impl Strategy<Value = Object> {
    prop_oneof![
        (0u8..4).prop_map(|c| Object::File {
            size: c as u64,
            content: Hash([c; 32])
        }),
        Just(Object::Dir),
        (0u8..2).prop_map(|t| Object::Symlink {
            target: format!("t{t}")
        }),
        Just(Object::Deleted),
    ]
}

fn arb_entry() -> impl Strategy<Value = Entry> {
    let rid = prop_oneof![Just(A), Just(B), Just(C)];
    (
        arb_object(),
        0i64..3,
        rid,
        proptest::collection::vec((prop_oneof![Just(A), Just(B), Just(C)], 1u64..4), 0..3),
    )
        .prop_map(|(object, mtime, origin, pairs)| Entry {
            path: "p".into(),
            mode: if object.is_deleted() { 0 } else { 0o644 },
            object,
            mtime_ns: mtime,
            vv: VersionVector::from_pairs(pairs),
            origin,
            meta: None,
        })
}

fn arb_holders() -> impl Strategy<Value = Vec<Entry>> {
    proptest::collection::vec(arb_entry(), 1..4)
}

fn ids(n: usize) -> Vec<ReplicaId> {
    (0..n).map(|i| ReplicaId(i as u64 + 10)).collect()
}

proptest! {
    /// I-1: the verdict does not depend on the order of the holders.
    #[test]
    fn decision_is_order_independent(es in arb_holders(), policy in prop_oneof![Just(ConflictPolicy::KeepBoth), Just(ConflictPolicy::Newest)]) {
        let rs = ids(es.len());
        let h1: Vec<_> = rs.iter().copied().zip(es.iter()).collect();
        let mut h2 = h1.clone();
        h2.reverse();
        let d1 = decide("p", &h1, policy).unwrap();
        let d2 = decide("p", &h2, policy).unwrap();
        prop_assert_eq!(&d1.result, &d2.result);
        let mut c1: Vec<_> = d1.copies.iter().map(|c| c.path.clone()).collect();
        let mut c2: Vec<_> = d2.copies.iter().map(|c| c.path.clone()).collect();
        c1.sort(); c2.sort();
        prop_assert_eq!(c1, c2);
    }

    /// The result has seen every input; with keep-both every concurrent
    /// live content survives in the result or a copy; deciding again once
    /// everyone holds the result changes nothing.
    #[test]
    fn no_lost_update_and_idempotent(es in arb_holders()) {
        let rs = ids(es.len());
        let holders: Vec<_> = rs.iter().copied().zip(es.iter()).collect();
        let d = decide("p", &holders, ConflictPolicy::KeepBoth).unwrap();
        for e in &es {
            prop_assert!(d.result.vv.covers(&e.vv), "{:?} does not cover {:?}", d.result.vv, e.vv);
            let dominated = es.iter().any(|o| o.vv.compare(&e.vv) == Causality::Dominates);
            if !dominated && e.is_live() && !e.object.is_dir() {
                let kept = d.result.object == e.object || d.copies.iter().any(|c| c.object == e.object);
                prop_assert!(kept, "lost {:?}", e.object);
            }
        }
        let again: Vec<_> = rs.iter().map(|&r| (r, &d.result)).collect();
        let d2 = decide("p", &again, ConflictPolicy::KeepBoth).unwrap();
        prop_assert_eq!(d2.result, d.result.clone());
        prop_assert!(d2.conflict.is_none());
        // A replica that took part and one that holds the result agree.
        let mut mixed = holders.clone();
        mixed.push((ReplicaId(99), &d.result));
        let d3 = decide("p", &mixed, ConflictPolicy::KeepBoth).unwrap();
        prop_assert_eq!(d3.result, d.result);
    }
}

#[test]
fn numbered_conflict_names() {
    let name = conflict_name("d/r.txt", 0, A);
    assert_eq!(
        numbered(&name, 2),
        format!("d/r.weave-conflict-19700101-000000-{}-2.txt", A.short())
    );
    let name = conflict_name("d/Makefile", 0, A);
    assert_eq!(
        numbered(&name, 3),
        format!("d/Makefile.weave-conflict-19700101-000000-{}-3", A.short())
    );
}

#[test]
fn a_second_copy_with_the_same_name_does_not_replace_the_first() {
    // Two conflicts of "d" lost by the same replica within one second.
    let first_copy = Entry {
        path: conflict_name("d", 0, A),
        ..file("x", 1, 0, A, vv(&[(C, 1)]))
    };
    let dir_b = Entry {
        path: "d".into(),
        object: Object::Dir,
        mode: 0o755,
        mtime_ns: 0,
        vv: vv(&[(B, 1)]),
        origin: B,
        meta: None,
    };
    let file_a = file("d", 2, 0, A, vv(&[(A, 5)]));
    let mut by_path: BTreeMap<&str, Vec<(ReplicaId, &Entry)>> = BTreeMap::new();
    by_path.insert(&first_copy.path, vec![(A, &first_copy), (B, &first_copy)]);
    by_path.insert("d", vec![(A, &file_a), (B, &dir_b)]);
    let plan = plan_tree(&by_path, ConflictPolicy::Newest, &mut Clock(100));
    assert_eq!(plan.finals[&first_copy.path].object, first_copy.object);
    let second = numbered(&first_copy.path, 2);
    assert_eq!(plan.finals[&second].object, file_a.object);
    assert!(plan.finals["d"].object.is_dir());
}
