//! A sync that plans every path (replicas that never synced together)
//! plans and carries out a slice of paths at a time (`--slice`, hidden:
//! 4,096 by default). With slices of two paths, the trees must end as
//! they do when planned at once: the same names, the same conflicts,
//! and a second sync with nothing to do. (Over a session: `remote.rs`.)

mod common;

use common::*;
use std::fs;
use std::path::Path;

/// Two trees that never synced, with every kind of meeting: files only
/// one side has, in nested directories; the same path with different
/// contents on both; a directory on one side where the other has a file;
/// an empty directory; and the same file on both.
fn make_pair(a: &Path, b: &Path) {
    for i in 0..7 {
        write(a.join(format!("a{i}.txt")), format!("a {i}\n"));
        write(b.join(format!("deep/b/{i}.txt")), format!("b {i}\n"));
    }
    write(a.join("deep/a/x.txt"), "ax\n");
    write(a.join("both.txt"), "from A\n");
    write(b.join("both.txt"), "from B\n");
    write(a.join("kind/inside.txt"), "a directory on A\n");
    write(b.join("kind"), "a file on B\n");
    fs::create_dir_all(a.join("empty/dir")).unwrap();
    write(a.join("same.txt"), "same\n");
    write(b.join("same.txt"), "same\n");
}

fn sorted_names(dir: &Path) -> Vec<String> {
    let mut n = names(&snapshot(dir));
    n.sort();
    n
}

#[test]
fn a_first_sync_in_slices_ends_as_one_planned_at_once() {
    let mut outcomes = Vec::new();
    for slice in ["2", "100000"] {
        let t = setup(&["A", "B"]);
        let (a, b) = (t.path().join("A"), t.path().join("B"));
        make_pair(&a, &b);
        let (r, j) = sync_json(t.path(), &["--slice", slice, "A", "B"]);
        r.expect_code(1); // conflicts, kept both
        assert!(j["errors"].as_array().unwrap().is_empty(), "{}", r.stdout);
        assert_same_tree(&a, &b);
        let (r2, j2) = sync_json(t.path(), &["--slice", slice, "A", "B"]);
        r2.expect_code(0);
        assert_eq!(j2["in_sync"], true, "{}", r2.stdout);
        assert_eq!(j2["created"], 0, "{}", r2.stdout);
        let mut kinds: Vec<String> = j["conflicts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| format!("{} {}", c["path"], c["kind"]))
            .collect();
        kinds.sort();
        // Conflict copies are named after the replica ids, which differ
        // between the two runs: compared by count.
        let listed = sorted_names(&a);
        let copies = listed
            .iter()
            .filter(|n| n.contains("weave-conflict"))
            .count();
        let plain: Vec<String> = listed
            .into_iter()
            .filter(|n| !n.contains("weave-conflict"))
            .collect();
        outcomes.push((kinds, copies, plain));
    }
    assert_eq!(outcomes[0], outcomes[1]);
    let (kinds, copies, plain) = &outcomes[0];
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert_eq!(*copies, 2);
    for want in [
        "a6.txt",
        "deep/b/6.txt",
        "deep/a/x.txt",
        "kind/inside.txt",
        "empty/dir",
        "same.txt",
    ] {
        assert!(plain.iter().any(|n| n == want), "{want} in {plain:?}");
    }
}

#[test]
fn a_large_tree_is_copied_whole_in_slices() {
    let t = setup(&["A", "B"]);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    for d in 0..5 {
        for f in 0..40 {
            write(a.join(format!("d{d}/f{f:02}")), format!("{d} {f}\n"));
        }
    }
    let (r, j) = sync_json(t.path(), &["--slice", "7", "A", "B"]);
    r.expect_code(0);
    assert_eq!(j["created"], 205, "{}", r.stdout);
    assert_same_tree(&a, &b);
    let (r, j) = sync_json(t.path(), &["--slice", "7", "A", "B"]);
    r.expect_code(0);
    assert_eq!(j["in_sync"], true, "{}", r.stdout);
}

/// A directory only a backup holds, whose inside lies in later slices,
/// is removed whole by the slice that removes it (its inside is loaded
/// with it), with no error and nothing left behind.
#[test]
fn a_backup_loses_a_directory_only_it_has_across_slices() {
    let t = setup(&["A", "B"]);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    write(a.join("keep.txt"), "kept\n");
    for i in 0..6 {
        write(
            b.join(format!("extra/{i}.txt")),
            format!("only on the backup {i}\n"),
        );
    }
    let (r, j) = sync_json(t.path(), &["--slice", "2", "--backup", "B", "A", "B"]);
    r.expect_code(0);
    assert!(j["errors"].as_array().unwrap().is_empty(), "{}", r.stdout);
    assert!(!b.join("extra").exists(), "{}", r.stdout);
    assert_same_tree(&a, &b);
    let (r, j) = sync_json(t.path(), &["--slice", "2", "--backup", "B", "A", "B"]);
    r.expect_code(0);
    assert_eq!(j["in_sync"], true, "{}", r.stdout);
}
