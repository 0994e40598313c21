//! Integration tests of key/value stores: `weave kv` and `weave sync
//! --kind kv` on real directories (the remote case is in remote.rs).

mod common;

use common::*;
use std::path::Path;

fn kv(root: &Path, args: &[&str]) -> Run {
    let mut v = vec!["kv"];
    v.extend_from_slice(args);
    weave(root, v)
}

/// key → value, as `weave kv list --json` shows the store.
fn records(root: &Path, store: &str) -> std::collections::BTreeMap<String, String> {
    let j = kv(root, &["list", store, "--json"]).expect_code(0).json();
    j.as_array()
        .expect("a list")
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_string(),
                r["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn kv_stores_sync_both_ways_and_keep_concurrent_edits() {
    let t = setup(&["a", "b"]);
    let root = t.path();
    kv(root, &["put", "a", "alice", "alice@example.org"]).expect_code(0);
    kv(root, &["put", "b", "bob", "bob@example.org"]).expect_code(0);
    let (_, j) = sync_json(root, &["--kind", "kv", "a", "b"]);
    assert_eq!(j["created"], 2);
    assert_eq!(records(root, "a"), records(root, "b"));
    assert_eq!(records(root, "b")["alice"], "alice@example.org");
    kv(root, &["get", "b", "alice"])
        .expect_code(0)
        .stdout_has(&["alice@example.org"]);

    // Concurrent edits of one key: both kept, the older as a conflict copy.
    kv(root, &["put", "a", "alice", "alice@home.example"]).expect_code(0);
    std::thread::sleep(std::time::Duration::from_millis(20));
    kv(root, &["put", "b", "alice", "alice@work.example"]).expect_code(0);
    let r = sync(root, &["--kind", "kv", "a", "b"]);
    r.expect_code(1).stderr_has(&["conflict", "alice"]);
    let a = records(root, "a");
    assert_eq!(a, records(root, "b"));
    assert_eq!(a["alice"], "alice@work.example", "the newer keeps the key");
    let copies: Vec<&String> = a
        .keys()
        .filter(|k| k.contains(".weave-conflict-"))
        .collect();
    assert_eq!(copies.len(), 1, "{a:?}");
    assert_eq!(a[copies[0]], "alice@home.example");
    let listed = kv(root, &["list", "a"]);
    listed.expect_code(0).stdout_has(&["(conflict copy)"]);

    // A delete reaches the other store; then nothing is left to do.
    kv(root, &["del", "b", "bob"]).expect_code(0);
    sync(root, &["--kind", "kv", "a", "b"]).expect_code(0);
    assert!(!records(root, "a").contains_key("bob"));
    sync(root, &["--kind", "kv", "a", "b"])
        .expect_code(0)
        .stdout_has(&["already in sync"]);
}

#[test]
fn a_kv_dry_run_changes_nothing() {
    let t = setup(&["a", "b"]);
    let root = t.path();
    kv(root, &["put", "a", "k", "v"]).expect_code(0);
    sync(root, &["--kind", "kv", "-n", "a", "b"])
        .expect_code(0)
        .stdout_has(&["would create", "k"]);
    assert!(std::fs::read_dir(root.join("b")).unwrap().next().is_none());
    assert!(!root.join("a/.weave/index.redb").exists());
}

#[test]
fn kv_mistakes_are_explained() {
    let t = setup(&["a", "b", "tree"]);
    let root = t.path();
    kv(root, &["put", "a", "x/y", "1"])
        .expect_code(2)
        .stderr_has(&["bad key", "'/'"]);
    kv(root, &["put", "nope", "k", "1"])
        .expect_code(2)
        .stderr_has(&["nope", "mkdir -p"]);
    kv(root, &["get", "a", "missing"])
        .expect_code(1)
        .stderr_has(&["no record", "missing"]);
    kv(root, &["del", "a", "missing"]).expect_code(1);
    sync(root, &["--kind", "mail", "a", "b"])
        .expect_code(2)
        .stderr_has(&["unknown kind", "mail", "files, kv"]);
    sync(root, &["--kind", "kv", "a", "missing"])
        .expect_code(2)
        .stderr_has(&["missing", "mkdir -p"]);

    // A store is never synced as another kind, either way round.
    kv(root, &["put", "a", "k", "v"]).expect_code(0);
    sync(root, &["--kind", "kv", "a", "b"]).expect_code(0);
    write(root.join("tree/file"), "text");
    sync(root, &["tree", "b"])
        .expect_code(2)
        .stderr_has(&["b", "kind kv", "--kind kv"]);
    sync(root, &["tree", root.join("c").to_str().unwrap()]).expect_code(2);
    std::fs::create_dir(root.join("c")).unwrap();
    sync(root, &["tree", "c"]).expect_code(0);
    sync(root, &["--kind", "kv", "a", "c"])
        .expect_code(2)
        .stderr_has(&["c", "kind files", "without --kind"]);
    assert_eq!(records(root, "a")["k"], "v");
    assert!(!root.join("c/records.redb").exists());
}
