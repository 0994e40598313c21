//! Integration tests that drive the real `weave` binary.
//!
//! Every test works in its own temporary directory, with replicas named
//! `A`, `B`, `C` given as paths relative to it.

mod common;

use common::*;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

// ---------------------------------------------------------------------------
// Bad input: exit 2, a clear message, nothing changed on disk.
// ---------------------------------------------------------------------------

/// Runs `weave sync ARGS` in `root` and checks that it is refused with exit
/// status 2, that stderr mentions every one of `words`, and that nothing
/// changed under `root` (no `.weave` created anywhere, files untouched).
fn assert_refused(root: &Path, args: &[&str], words: &[&str]) -> Run {
    let before = snapshot_all(root);
    let r = sync(root, args);
    r.expect_code(2).stderr_has(words);
    let after = snapshot_all(root);
    assert_eq!(
        names(&before),
        names(&after),
        "weave sync {args:?} changed what is on disk"
    );
    assert_eq!(before, after, "weave sync {args:?} changed files");
    r
}

/// A tree with some content in A, and an empty B.
fn some_content(root: &Path) {
    write_at(root.join("A/hello.txt"), "hello\n", at(1_600_000_000, 0));
    write(root.join("A/sub/inner.txt"), "inner\n");
}

#[test]
fn missing_directory_is_refused() {
    let t = setup(&["A", "B"]);
    some_content(t.path());
    let r = assert_refused(
        t.path(),
        &["A", "Missing"],
        &["no such directory", "Missing"],
    );
    assert!(
        r.stderr.contains("mkdir -p"),
        "suggests a fix: {}",
        r.stderr
    );
    assert_refused(
        t.path(),
        &["Missing", "A"],
        &["no such directory", "Missing"],
    );
    assert_refused(
        t.path(),
        &["A", "B", "Missing/deeper"],
        &["no such directory", "Missing/deeper"],
    );
    assert!(!t.path().join("Missing").exists());
}

#[test]
fn file_instead_of_directory_is_refused() {
    let t = setup(&["A"]);
    some_content(t.path());
    write(t.path().join("plain.txt"), "just a file\n");
    assert_refused(
        t.path(),
        &["A", "plain.txt"],
        &["not a directory", "plain.txt"],
    );
    assert_refused(
        t.path(),
        &["A/hello.txt", "A"],
        &["not a directory", "hello.txt"],
    );
}

#[test]
fn same_directory_twice_is_refused() {
    let t = setup(&["A", "B"]);
    some_content(t.path());
    let abs = t.path().join("A").display().to_string();
    std::os::unix::fs::symlink("A", t.path().join("alias")).unwrap();
    for pair in [
        ["A", "A"],
        ["A", "A/../A"],
        ["A", "./A"],
        ["./A/", "A"],
        ["A", abs.as_str()],
        ["A", "alias"],
    ] {
        assert_refused(t.path(), &pair, &["same directory"]);
    }
    // Also among more than two replicas.
    assert_refused(t.path(), &["A", "B", "B/."], &["same directory"]);
}

#[test]
fn replica_inside_another_is_refused() {
    let t = setup(&["A"]);
    some_content(t.path());
    assert_refused(t.path(), &["A", "A/sub"], &["inside"]);
    assert_refused(t.path(), &["A/sub", "A"], &["inside"]);
    fs::create_dir_all(t.path().join("A/sub/deeper")).unwrap();
    assert_refused(t.path(), &["A/sub/deeper", "A"], &["inside"]);
}

#[test]
fn a_single_replica_is_a_usage_error() {
    let t = setup(&["A"]);
    some_content(t.path());
    let r = assert_refused(t.path(), &["A"], &["usage"]);
    assert!(r.stderr.contains("REPLICA"), "{}", r.stderr);
    assert_refused(t.path(), &[], &["usage"]);
}

#[test]
fn unknown_conflict_policy_is_refused() {
    let t = setup(&["A", "B"]);
    some_content(t.path());
    assert_refused(
        t.path(),
        &["--conflict", "bogus", "A", "B"],
        &["unknown conflict policy", "bogus", "keep-both"],
    );
    assert_refused(
        t.path(),
        &["--conflict", "prefer=", "A", "B"],
        &["unknown conflict policy"],
    );
    assert_refused(
        t.path(),
        &["--conflict=newer", "A", "B"],
        &["unknown conflict policy"],
    );
}

#[test]
fn prefer_naming_no_replica_is_refused() {
    let t = setup(&["A", "B", "C"]);
    some_content(t.path());
    for prefer in ["prefer=C", "prefer=Nowhere", "prefer=A/sub"] {
        let r = sync(t.path(), &["--conflict", prefer, "A", "B"]);
        r.expect_code(2)
            .stderr_has(&["prefer=", "names no replica"]);
        // Nothing was synced.
        assert!(!t.path().join("B/hello.txt").exists());
        assert!(!t.path().join("B/sub").exists());
    }
}

#[test]
fn prefer_naming_no_replica_creates_no_state() {
    let t = setup(&["A", "B", "C"]);
    some_content(t.path());
    assert_refused(
        t.path(),
        &["--conflict", "prefer=C", "A", "B"],
        &["names no replica"],
    );
}

#[test]
fn bad_ignore_pattern_is_refused() {
    let t = setup(&["A", "B"]);
    some_content(t.path());
    assert_refused(
        t.path(),
        &["--ignore", "[z-a]", "A", "B"],
        &["bad ignore pattern", "[z-a]", "--ignore"],
    );
    // The same in a .weaveignore file: the message names the file.
    write(t.path().join("B/.weaveignore"), "*.log\n{a,b\n");
    assert_refused(
        t.path(),
        &["A", "B"],
        &["bad ignore pattern", "{a,b", ".weaveignore"],
    );
}

#[test]
fn state_dir_that_is_a_file_is_refused() {
    let t = setup(&["A", "B"]);
    some_content(t.path());
    write(t.path().join("B/.weave"), "not weave's\n");
    assert_refused(t.path(), &["A", "B"], &[".weave", "not a directory", "mv"]);
    assert_refused(t.path(), &["B", "A"], &[".weave", "not a directory"]);
    assert_eq!(read_str(t.path().join("B/.weave")), "not weave's\n");
}

#[test]
fn unreachable_remotes_change_nothing() {
    let t = setup(&["A"]);
    some_content(t.path());
    for remote in ["host:path", "user@host:/srv/x", "ssh://host/path"] {
        assert_refused(
            t.path(),
            &["--rsh", "/nonexistent/ssh", "A", remote],
            &["cannot run", "/nonexistent/ssh", remote],
        );
        assert_refused(
            t.path(),
            &["--rsh", "/nonexistent/ssh", remote, "A"],
            &["cannot run"],
        );
    }
}

#[test]
fn unknown_schemes_are_refused_by_name() {
    let t = setup(&["A"]);
    some_content(t.path());
    for args in [["A", "gs://bucket/x"], ["gs://bucket/x", "A"]] {
        let r = assert_refused(
            t.path(),
            &args,
            &["gs://bucket/x", "gs://", "local directory", "host:path"],
        );
        assert!(
            r.stderr.contains(
                "gs://bucket/x: weave does not know replicas of the form gs:// (yet); give a local directory, host:path, ssh://[user@]host[:port]/path, s3://bucket/prefix or file:///dir"
            ),
            "{}",
            r.stderr
        );
        assert!(!t.path().join("A/.weave").exists());
    }
    // Not even ssh is tried.
    assert_refused(
        t.path(),
        &["--rsh", "/nonexistent/ssh", "A", "webdav://host/x"],
        &["webdav://"],
    );
    // A directory of that name is a directory.
    fs::create_dir_all(t.path().join("s3:/bucket")).unwrap();
    sync(t.path(), &["A", "s3://bucket"]).expect_code(0);
    assert_same_tree(&t.path().join("A"), &t.path().join("s3:/bucket"));
}

#[test]
fn local_directory_with_a_colon_syncs() {
    let t = setup(&["A", "x:y"]);
    some_content(t.path());
    sync(t.path(), &["A", "./x:y"]).expect_code(0);
    assert_same_tree(&t.path().join("A"), &t.path().join("x:y"));
    // An existing directory is never taken for a remote.
    write(t.path().join("A/more.txt"), "more\n");
    sync(t.path(), &["A", "x:y"]).expect_code(0);
    assert_same_tree(&t.path().join("A"), &t.path().join("x:y"));
}

/// A and B synced once, with some content.
fn synced_pair() -> tempfile::TempDir {
    let t = setup(&["A", "B"]);
    some_content(t.path());
    sync(t.path(), &["A", "B"]).expect_code(0);
    assert_same_tree(&t.path().join("A"), &t.path().join("B"));
    t
}

#[test]
fn corrupt_index_is_refused_with_recovery_advice() {
    for damaged in ["A", "B"] {
        let t = synced_pair();
        let index = t.path().join(damaged).join(".weave/index.redb");
        assert!(index.is_file());
        let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 13) as u8).collect();
        fs::write(&index, &garbage).unwrap();
        // A change that must not propagate.
        write(t.path().join("A/new.txt"), "new\n");
        let before_a = snapshot(&t.path().join("A"));
        let before_b = snapshot(&t.path().join("B"));
        let r = sync(t.path(), &["A", "B"]);
        r.expect_code(2).stderr_has(&[
            "damaged",
            "move the state directory out of the replica",
            "index.redb",
        ]);
        assert_eq!(before_a, snapshot(&t.path().join("A")));
        assert_eq!(before_b, snapshot(&t.path().join("B")));
        assert!(!t.path().join("B/new.txt").exists());
        // The damaged index is left for inspection, never rewritten.
        assert_eq!(
            read(&index),
            garbage,
            "damaged index of {damaged} was rewritten"
        );
    }
}

#[test]
fn corrupt_index_leaves_a_fresh_replica_untouched() {
    let t = setup(&["A", "B", "C"]);
    some_content(t.path());
    sync(t.path(), &["B", "C"]).expect_code(0);
    fs::write(
        t.path().join("C/.weave/index.redb"),
        b"garbage, not redb at all",
    )
    .unwrap();
    // A has never been synced: it must not get any state from a sync that
    // cannot even start.
    write(t.path().join("A/only-a.txt"), "a\n");
    let r = sync(t.path(), &["A", "C"]);
    r.expect_code(2).stderr_has(&["damaged"]);
    assert!(
        !t.path().join("A/.weave").exists(),
        "A/.weave was created by a refused sync"
    );
}

#[test]
fn following_the_corrupt_index_advice_recovers() {
    let t = synced_pair();
    let b_state = t.path().join("B/.weave");
    fs::write(b_state.join("index.redb"), b"garbage, not redb at all").unwrap();
    let r = sync(t.path(), &["A", "B"]);
    r.expect_code(2);
    // Take the `mv X Y` suggested on stderr, literally.
    let mv = r
        .stderr
        .split("(mv ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("stderr suggests a mv command")
        .to_string();
    let mut parts = mv.split_whitespace();
    let (from, to) = (parts.next().unwrap(), parts.next().unwrap());
    assert_eq!(Path::new(from), b_state.canonicalize().unwrap());
    fs::rename(from, to).unwrap();
    let r = sync(t.path(), &["A", "B"]);
    r.expect_code(0);
    assert!(t.path().join("B/.weave/index.redb").is_file());
    // The moved-aside state is the user's business on B; it must not be
    // spread to the other replicas.
    assert!(
        !Path::new(to).starts_with(t.path().join("B")),
        "the advice keeps the broken state inside the replica: {to}"
    );
    let in_a: Vec<_> = fs::read_dir(t.path().join("A"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("broken"))
        .collect();
    assert!(
        in_a.is_empty(),
        "B's broken state was copied into A: {in_a:?}"
    );
}

// ---------------------------------------------------------------------------
// Basic behaviour.
// ---------------------------------------------------------------------------

#[test]
fn first_sync_copies_everything_faithfully() {
    let t = setup(&["A", "B"]);
    let a = t.path().join("A");
    let b = t.path().join("B");
    let sample = SampleTree::make(&a);
    let (big, t1, t2) = (&sample.big, sample.t1, sample.t2);
    std::os::unix::fs::symlink("/etc/hostname", a.join("nested/abslink")).unwrap();
    fs::create_dir_all(a.join("ro-dir")).unwrap();
    write_at(a.join("ro-dir/in.txt"), "in\n", t2);
    chmod(a.join("ro-dir"), 0o555);

    let (r, j) = sync_json(t.path(), &["A", "B"]);
    r.expect_code(0);
    assert_eq!(j["in_sync"], true, "{}", r.stdout);
    assert!(j["conflicts"].as_array().unwrap().is_empty());
    assert!(j["errors"].as_array().unwrap().is_empty());
    assert!(j["bytes_copied"].as_u64().unwrap() >= big.len() as u64);

    assert_same_tree(&a, &b);
    // And the details, explicitly.
    sample.check(&b);
    assert_eq!(
        fs::read_link(b.join("nested/abslink")).unwrap(),
        Path::new("/etc/hostname")
    );
    assert_eq!(mode(b.join("ro-dir")), 0o555);
    assert_eq!(read_str(b.join("ro-dir/in.txt")), "in\n");
    // A is as it was.
    assert_eq!(&read(a.join("nested/deeper/deepest/big.bin")), big);
    assert_eq!(mtime(a.join("top.txt")), t1);
    chmod(a.join("ro-dir"), 0o755);
    chmod(b.join("ro-dir"), 0o755);
}

#[test]
fn second_sync_is_already_in_sync() {
    let t = synced_pair();
    let r = sync(t.path(), &["A", "B"]);
    r.expect_code(0).stdout_has(&["already in sync"]);
    let (r, j) = sync_json(t.path(), &["A", "B"]);
    r.expect_code(0);
    assert_eq!(j["created"], 0);
    assert_eq!(j["updated"], 0);
    assert_eq!(j["deleted"], 0);
    assert_eq!(j["bytes_copied"], 0);
    assert_eq!(j["in_sync"], true);
    assert_eq!(j["dry_run"], false);
    assert!(j["conflicts"].as_array().unwrap().is_empty());
    assert!(j["errors"].as_array().unwrap().is_empty());
    assert_eq!(j["replicas"].as_array().unwrap().len(), 2);
    // Replica ids are stable from one sync to the next.
    let (_, j2) = sync_json(t.path(), &["B", "A"]);
    let (ids, ids2) = (replica_ids(&j), replica_ids(&j2));
    assert_eq!(ids[0], ids2[1]);
    assert_eq!(ids[1], ids2[0]);
    assert_ne!(ids[0], ids[1]);
    // Quiet: nothing on stdout.
    let r = sync(t.path(), &["-q", "A", "B"]);
    r.expect_code(0);
    assert!(r.stdout.trim().is_empty(), "{}", r.stdout);
}

#[test]
fn changes_propagate_both_ways() {
    let t = setup(&["A", "B"]);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    write(a.join("a.txt"), "a\n");
    write(a.join("dir1/x.txt"), "x\n");
    write(a.join("dir1/sub/y.txt"), "y\n");
    write(b.join("dir2/z.txt"), "z\n");
    write(b.join("dir2/deep/w.txt"), "w\n");
    write(b.join("old.txt"), "old name\n");
    sync(t.path(), &["A", "B"]).expect_code(0);
    assert_same_tree(&a, &b);
    assert_eq!(read_str(a.join("dir2/deep/w.txt")), "w\n");

    // Deleted file on A, deleted directory tree on B.
    fs::remove_file(a.join("a.txt")).unwrap();
    fs::remove_dir_all(b.join("dir2")).unwrap();
    let (r, j) = sync_json(t.path(), &["A", "B"]);
    r.expect_code(0);
    assert!(!b.join("a.txt").exists());
    assert!(!a.join("dir2").exists());
    assert!(j["deleted"].as_u64().unwrap() >= 4, "{}", r.stdout);
    assert_same_tree(&a, &b);

    // New empty directory on B, modified file on A.
    fs::create_dir(b.join("newdir")).unwrap();
    write_at(
        a.join("dir1/x.txt"),
        "x, modified on A\n",
        at(1_700_000_000, 5),
    );
    let (r, j) = sync_json(t.path(), &["A", "B"]);
    r.expect_code(0);
    assert!(a.join("newdir").is_dir());
    assert_eq!(read_str(b.join("dir1/x.txt")), "x, modified on A\n");
    assert_eq!(mtime(b.join("dir1/x.txt")), at(1_700_000_000, 5));
    assert_eq!(j["updated"], 1, "{}", r.stdout);
    assert_eq!(j["created"], 1, "{}", r.stdout);
    assert_same_tree(&a, &b);

    // Modified file on B, same size.
    write(b.join("dir1/sub/y.txt"), "Y\n");
    sync(t.path(), &["A", "B"]).expect_code(0);
    assert_eq!(read_str(a.join("dir1/sub/y.txt")), "Y\n");
    assert_same_tree(&a, &b);

    // Renames: a file on A, a directory on B.
    fs::rename(a.join("old.txt"), a.join("renamed.txt")).unwrap();
    fs::rename(b.join("dir1/sub"), b.join("dir1/sub2")).unwrap();
    let (r, j) = sync_json(t.path(), &["A", "B"]);
    r.expect_code(0);
    assert!(!b.join("old.txt").exists());
    assert_eq!(read_str(b.join("renamed.txt")), "old name\n");
    assert!(!a.join("dir1/sub").exists());
    assert_eq!(read_str(a.join("dir1/sub2/y.txt")), "Y\n");
    // Renamed content is found locally, not copied again.
    assert_eq!(j["bytes_copied"], 0, "{}", r.stdout);
    assert_same_tree(&a, &b);

    // Replace a file by a directory and a directory by a file.
    fs::remove_file(a.join("renamed.txt")).unwrap();
    write(a.join("renamed.txt/inside.txt"), "now a dir\n");
    fs::remove_dir_all(b.join("newdir")).unwrap();
    write(b.join("newdir"), "now a file\n");
    sync(t.path(), &["A", "B"]).expect_code(0);
    assert_eq!(read_str(b.join("renamed.txt/inside.txt")), "now a dir\n");
    assert_eq!(read_str(a.join("newdir")), "now a file\n");
    assert_same_tree(&a, &b);

    sync(t.path(), &["A", "B"])
        .expect_code(0)
        .stdout_has(&["already in sync"]);
}

#[test]
fn directories_that_already_agree_copy_nothing() {
    let t = setup(&["A", "B"]);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    let big = random_bytes(200_000, 7);
    for r in [&a, &b] {
        write_at(r.join("same.txt"), "same content\n", at(1_500_000_000, 42));
        write_at(r.join("deep/er/big.bin"), &big, at(1_500_000_001, 0));
        fs::create_dir_all(r.join("empty")).unwrap();
        std::os::unix::fs::symlink("same.txt", r.join("link")).unwrap();
    }
    // Same content, different mtimes: still no conflict.
    write_at(a.join("touched.txt"), "touched\n", at(1_500_000_000, 0));
    write_at(b.join("touched.txt"), "touched\n", at(1_600_000_000, 0));
    let (r, j) = sync_json(t.path(), &["A", "B"]);
    r.expect_code(0);
    assert_eq!(j["bytes_copied"], 0, "{}", r.stdout);
    assert!(
        j["conflicts"].as_array().unwrap().is_empty(),
        "{}",
        r.stdout
    );
    assert_eq!(j["created"], 0, "{}", r.stdout);
    assert_eq!(j["deleted"], 0, "{}", r.stdout);
    assert!(!r.stderr.contains("conflict"), "{}", r.stderr);
    assert_eq!(names(&snapshot(&a)).len(), 7, "{:?}", names(&snapshot(&a)));
    assert_same_tree(&a, &b);
    sync(t.path(), &["A", "B"])
        .expect_code(0)
        .stdout_has(&["already in sync"]);
}

/// A and B synced with `doc.txt`, then edited on both: A's edit at `ta`,
/// B's at `tb`.
fn concurrent_edits(ta: u64, tb: u64) -> tempfile::TempDir {
    let t = setup(&["A", "B"]);
    write_at(t.path().join("A/doc.txt"), "base\n", at(1_000_000_000, 0));
    write(t.path().join("A/other.txt"), "other\n");
    sync(t.path(), &["A", "B"]).expect_code(0);
    write_at(t.path().join("A/doc.txt"), "edited on A\n", at(ta, 0));
    write_at(t.path().join("B/doc.txt"), "edited on B!\n", at(tb, 0));
    t
}

const T_OLD: u64 = 1_700_000_000; // 2023-11-14 22:13:20 UTC
const T_NEW: u64 = 1_700_003_600;

#[test]
fn concurrent_edits_keep_both_versions() {
    let t = concurrent_edits(T_OLD, T_NEW);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    let (r, j) = sync_json(t.path(), &["A", "B"]);
    r.expect_code(1).stderr_has(&["conflict", "doc.txt"]);
    let ids = replica_ids(&j);
    let expected_copy = format!(
        "doc.weave-conflict-{}-{}.txt",
        utc_stamp(T_OLD as i64),
        &ids[0][..7]
    );
    assert_eq!(
        expected_copy,
        "doc.weave-conflict-20231114-221320-".to_string() + &ids[0][..7] + ".txt"
    );
    let conflicts = j["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{}", r.stdout);
    assert_eq!(conflicts[0]["kind"], "keep-both");
    assert_eq!(conflicts[0]["path"], "doc.txt");
    assert_eq!(conflicts[0]["copies"], serde_json::json!([expected_copy]));
    assert_eq!(j["in_sync"], false);
    assert!(r.stderr.contains(&expected_copy), "{}", r.stderr);
    for rep in [&a, &b] {
        assert_eq!(read_str(rep.join("doc.txt")), "edited on B!\n");
        assert_eq!(mtime(rep.join("doc.txt")), at(T_NEW, 0));
        let copies = conflict_copies(rep, "doc", ".txt");
        assert_eq!(copies, vec![expected_copy.clone()], "in {}", rep.display());
        assert_eq!(read_str(rep.join(&copies[0])), "edited on A\n");
        assert_eq!(mtime(rep.join(&copies[0])), at(T_OLD, 0));
    }
    assert_same_tree(&a, &b);
    let (r, j) = sync_json(t.path(), &["A", "B"]);
    r.expect_code(0);
    assert_eq!(j["in_sync"], true);
    assert_eq!(j["created"], 0);
    assert_eq!(j["updated"], 0);
    assert_eq!(j["deleted"], 0);
    assert!(j["conflicts"].as_array().unwrap().is_empty());
    sync(t.path(), &["A", "B"])
        .expect_code(0)
        .stdout_has(&["already in sync"]);
}

#[test]
fn concurrent_edits_keep_both_when_a_is_newer() {
    // The same, mirrored: the winner is decided by mtime, not by position.
    let t = concurrent_edits(T_NEW, T_OLD);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    let (r, j) = sync_json(t.path(), &["A", "B"]);
    r.expect_code(1).stderr_has(&["conflict"]);
    let ids = replica_ids(&j);
    let expected_copy = format!(
        "doc.weave-conflict-{}-{}.txt",
        utc_stamp(T_OLD as i64),
        &ids[1][..7]
    );
    for rep in [&a, &b] {
        assert_eq!(read_str(rep.join("doc.txt")), "edited on A\n");
        assert_eq!(
            conflict_copies(rep, "doc", ".txt"),
            vec![expected_copy.clone()]
        );
        assert_eq!(read_str(rep.join(&expected_copy)), "edited on B!\n");
    }
    assert_same_tree(&a, &b);
    sync(t.path(), &["A", "B"]).expect_code(0);
}

#[test]
fn conflict_newest_leaves_no_copy() {
    let t = concurrent_edits(T_OLD, T_NEW);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    let (r, j) = sync_json(t.path(), &["--conflict", "newest", "A", "B"]);
    assert!(r.code == 0 || r.code == 1, "exit {}: {}", r.code, r.stderr);
    for rep in [&a, &b] {
        assert_eq!(read_str(rep.join("doc.txt")), "edited on B!\n");
        assert!(conflict_copies(rep, "doc", ".txt").is_empty());
    }
    for c in j["conflicts"].as_array().unwrap() {
        assert!(c["copies"].as_array().unwrap().is_empty(), "{c}");
    }
    assert_same_tree(&a, &b);
    sync(t.path(), &["A", "B"])
        .expect_code(0)
        .stdout_has(&["already in sync"]);
}

#[test]
fn conflict_prefer_makes_that_replica_win() {
    let t = concurrent_edits(T_OLD, T_NEW);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    // A's version is the older one, and wins anyway. The path is spelled
    // differently from the replica argument.
    let r = sync(t.path(), &["--conflict", "prefer=./A/", "A", "B"]);
    assert!(r.code == 0 || r.code == 1, "exit {}: {}", r.code, r.stderr);
    for rep in [&a, &b] {
        assert_eq!(read_str(rep.join("doc.txt")), "edited on A\n");
        assert_eq!(mtime(rep.join("doc.txt")), at(T_OLD, 0));
        assert!(conflict_copies(rep, "doc", ".txt").is_empty());
    }
    assert_same_tree(&a, &b);
    sync(t.path(), &["A", "B"])
        .expect_code(0)
        .stdout_has(&["already in sync"]);

    // And the other way round, with an absolute path.
    let t = concurrent_edits(T_NEW, T_OLD);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    let prefer = format!("prefer={}", b.display());
    let r = sync(t.path(), &["--conflict", &prefer, "A", "B"]);
    assert!(r.code == 0 || r.code == 1, "exit {}: {}", r.code, r.stderr);
    for rep in [&a, &b] {
        assert_eq!(read_str(rep.join("doc.txt")), "edited on B!\n");
        assert!(conflict_copies(rep, "doc", ".txt").is_empty());
    }
    assert_same_tree(&a, &b);
}

#[test]
fn modify_beats_delete() {
    let t = setup(&["A", "B"]);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    write(a.join("f.txt"), "base f\n");
    write(a.join("g.txt"), "base g\n");
    sync(t.path(), &["A", "B"]).expect_code(0);
    // f: deleted on A, modified on B. g: modified on A, deleted on B.
    fs::remove_file(a.join("f.txt")).unwrap();
    write_at(b.join("f.txt"), "f modified on B\n", at(1_650_000_000, 0));
    write_at(a.join("g.txt"), "g modified on A\n", at(1_650_000_000, 0));
    fs::remove_file(b.join("g.txt")).unwrap();
    let r = sync(t.path(), &["A", "B"]);
    assert!(r.code == 0 || r.code == 1, "exit {}: {}", r.code, r.stderr);
    for rep in [&a, &b] {
        assert_eq!(read_str(rep.join("f.txt")), "f modified on B\n");
        assert_eq!(read_str(rep.join("g.txt")), "g modified on A\n");
    }
    assert_same_tree(&a, &b);
    sync(t.path(), &["A", "B"]).expect_code(0);
    assert!(a.join("f.txt").exists() && b.join("g.txt").exists());
}

#[test]
fn identical_concurrent_changes_are_no_conflict() {
    let t = setup(&["A", "B"]);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    write(a.join("f.txt"), "base\n");
    sync(t.path(), &["A", "B"]).expect_code(0);
    write_at(
        a.join("f.txt"),
        "the same new content\n",
        at(1_650_000_000, 0),
    );
    write_at(
        b.join("f.txt"),
        "the same new content\n",
        at(1_650_000_100, 0),
    );
    // A new file created on both sides with the same content.
    write(a.join("new.txt"), "new on both\n");
    write(b.join("new.txt"), "new on both\n");
    let (r, j) = sync_json(t.path(), &["A", "B"]);
    r.expect_code(0);
    assert!(
        j["conflicts"].as_array().unwrap().is_empty(),
        "{}",
        r.stdout
    );
    assert_eq!(j["bytes_copied"], 0);
    assert!(!r.stderr.contains("conflict"), "{}", r.stderr);
    for rep in [&a, &b] {
        assert_eq!(read_str(rep.join("f.txt")), "the same new content\n");
        assert!(conflict_copies(rep, "f", ".txt").is_empty());
        assert!(conflict_copies(rep, "new", ".txt").is_empty());
    }
    assert_same_tree(&a, &b);
}

#[test]
fn dry_run_changes_nothing() {
    let t = setup(&["A", "B"]);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    some_content(t.path());
    write(b.join("only-b.txt"), "b\n");
    let (before_a, before_b) = (snapshot_all(&a), snapshot_all(&b));
    let r = sync(t.path(), &["--dry-run", "A", "B"]);
    r.expect_code(0)
        .stdout_has(&["would", "hello.txt", "only-b.txt"]);
    assert_eq!(snapshot_all(&a), before_a);
    assert_eq!(snapshot_all(&b), before_b);
    assert!(!a.join(".weave").exists() && !b.join(".weave").exists());
    // -n and --json: the plan, and nothing done.
    let (r, j) = sync_json(t.path(), &["-n", "A", "B"]);
    r.expect_code(0);
    assert_eq!(j["dry_run"], true);
    assert_eq!(j["in_sync"], false);
    let planned = j["planned"].as_array().expect("planned actions");
    assert!(
        planned
            .iter()
            .any(|p| p["path"] == "hello.txt" && p["action"] == "create"),
        "{}",
        r.stdout
    );
    assert_eq!(snapshot_all(&a), before_a);
    assert_eq!(snapshot_all(&b), before_b);

    // After a real sync, a change is shown by a dry run, not carried out,
    // and still carried out by the next real sync.
    sync(t.path(), &["A", "B"]).expect_code(0);
    write_at(a.join("hello.txt"), "hello again\n", at(1_650_000_000, 0));
    fs::remove_file(b.join("only-b.txt")).unwrap();
    let (before_a, before_b) = (snapshot(&a), snapshot(&b));
    let r = sync(t.path(), &["-n", "A", "B"]);
    r.expect_code(0).stdout_has(&["would", "update", "delete"]);
    assert_eq!(snapshot(&a), before_a);
    assert_eq!(snapshot(&b), before_b);
    assert_eq!(read_str(b.join("hello.txt")), "hello\n");
    sync(t.path(), &["A", "B"]).expect_code(0);
    assert_eq!(read_str(b.join("hello.txt")), "hello again\n");
    assert!(!a.join("only-b.txt").exists());
    assert_same_tree(&a, &b);
    let r = sync(t.path(), &["-n", "A", "B"]);
    r.expect_code(0).stdout_has(&["nothing to do"]);
}

#[test]
fn weaveignore_paths_are_never_copied_nor_deleted() {
    let t = setup(&["A", "B"]);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    write(a.join(".weaveignore"), "*.log\nbuild/\n");
    write(a.join("keep.txt"), "keep\n");
    write(a.join("a.log"), "a log\n");
    write(a.join("sub/b.log"), "b log\n");
    write(a.join("sub/code.rs"), "fn main() {}\n");
    write(a.join("build/out.o"), "object\n");
    write(b.join("c.log"), "B's own log\n");
    write(b.join("build/local.o"), "B's object\n");
    write(b.join("sub/d.log"), "B's nested log\n");
    sync(t.path(), &["A", "B"]).expect_code(0);
    assert_eq!(read_str(b.join("keep.txt")), "keep\n");
    assert_eq!(read_str(b.join("sub/code.rs")), "fn main() {}\n");
    assert_eq!(read_str(b.join(".weaveignore")), "*.log\nbuild/\n");
    for p in ["a.log", "sub/b.log", "build/out.o"] {
        assert!(!b.join(p).exists(), "ignored {p} copied to B");
    }
    for p in ["c.log", "build/local.o", "sub/d.log"] {
        assert!(!a.join(p).exists(), "ignored {p} copied to A");
    }
    // Ignored files stay exactly as they were.
    assert_eq!(read_str(a.join("a.log")), "a log\n");
    assert_eq!(read_str(b.join("c.log")), "B's own log\n");
    assert_eq!(read_str(b.join("build/local.o")), "B's object\n");

    // Deleting or changing ignored files on one side touches nothing on
    // the other, even when their parent directory goes away.
    fs::remove_file(a.join("a.log")).unwrap();
    fs::remove_dir_all(a.join("build")).unwrap();
    write(b.join("c.log"), "B's log, longer now\n");
    write(a.join("a.log"), "recreated\n");
    let r = sync(t.path(), &["A", "B"]);
    r.expect_code(0);
    assert_eq!(read_str(b.join("c.log")), "B's log, longer now\n");
    assert_eq!(read_str(b.join("build/local.o")), "B's object\n");
    assert_eq!(read_str(b.join("sub/d.log")), "B's nested log\n");
    assert!(!a.join("c.log").exists() && !b.join("a.log").exists());
    sync(t.path(), &["A", "B"])
        .expect_code(0)
        .stdout_has(&["already in sync"]);
}

#[test]
fn ignore_option_works_like_weaveignore() {
    let t = setup(&["A", "B"]);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    write(a.join("x.tmp"), "a tmp\n");
    write(a.join("dir/y.tmp"), "a nested tmp\n");
    write(a.join("y.txt"), "y\n");
    write(b.join("z.tmp"), "b tmp\n");
    sync(t.path(), &["--ignore", "*.tmp", "A", "B"]).expect_code(0);
    assert_eq!(read_str(b.join("y.txt")), "y\n");
    assert!(b.join("dir").is_dir());
    assert!(!b.join("x.tmp").exists() && !b.join("dir/y.tmp").exists());
    assert!(!a.join("z.tmp").exists());
    fs::remove_file(a.join("x.tmp")).unwrap();
    write(b.join("x.tmp"), "b's own x\n");
    let r = sync(t.path(), &["--ignore", "*.tmp", "A", "B"]);
    r.expect_code(0);
    assert_eq!(read_str(b.join("z.tmp")), "b tmp\n");
    assert_eq!(read_str(b.join("x.tmp")), "b's own x\n");
    assert_eq!(read_str(a.join("dir/y.tmp")), "a nested tmp\n");
    assert!(!a.join("x.tmp").exists());
    // Several patterns.
    write(a.join("skip.me"), "skip\n");
    write(a.join("take.me"), "take\n");
    sync(
        t.path(),
        &["--ignore", "*.tmp", "--ignore", "skip.*", "A", "B"],
    )
    .expect_code(0);
    assert!(!b.join("skip.me").exists());
    assert_eq!(read_str(b.join("take.me")), "take\n");
}

#[test]
fn three_replicas_converge() {
    let t = setup(&["A", "B", "C"]);
    let (a, b, c) = (t.path().join("A"), t.path().join("B"), t.path().join("C"));
    write(a.join("a.txt"), "from A\n");
    write(b.join("b.txt"), "from B\n");
    write(b.join("sub/b2.txt"), "from B, nested\n");
    fs::create_dir_all(c.join("c-empty")).unwrap();
    let (r, j) = sync_json(t.path(), &["A", "B", "C"]);
    r.expect_code(0);
    assert_eq!(j["replicas"].as_array().unwrap().len(), 3);
    assert_same_tree(&a, &b);
    assert_same_tree(&a, &c);
    assert_eq!(read_str(c.join("sub/b2.txt")), "from B, nested\n");
    assert!(a.join("c-empty").is_dir());

    write(c.join("a.txt"), "changed on C\n");
    fs::remove_file(b.join("b.txt")).unwrap();
    write(a.join("sub/new.txt"), "new on A\n");
    sync(t.path(), &["C", "A", "B"]).expect_code(0);
    assert_same_tree(&a, &b);
    assert_same_tree(&a, &c);
    assert_eq!(read_str(b.join("a.txt")), "changed on C\n");
    assert!(!c.join("b.txt").exists());
    assert_eq!(read_str(c.join("sub/new.txt")), "new on A\n");

    // A pair sync, then the three again: still converges.
    write(a.join("pair.txt"), "A and B only\n");
    sync(t.path(), &["A", "B"]).expect_code(0);
    assert!(!c.join("pair.txt").exists());
    sync(t.path(), &["A", "B", "C"]).expect_code(0);
    assert_eq!(read_str(c.join("pair.txt")), "A and B only\n");
    assert_same_tree(&a, &c);
    sync(t.path(), &["A", "B", "C"])
        .expect_code(0)
        .stdout_has(&["already in sync"]);
}

#[test]
fn unreadable_file_is_reported_and_the_rest_syncs() {
    if can_read_unreadable_files() {
        eprintln!("skipped: this user can read files with mode 000 (root?)");
        return;
    }
    let t = setup(&["A", "B"]);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    write(a.join("good.txt"), "good\n");
    write(a.join("secret.txt"), "secret\n");
    chmod(a.join("secret.txt"), 0o000);
    let r = sync(t.path(), &["A", "B"]);
    chmod(a.join("secret.txt"), 0o600);
    r.expect_code(1).stderr_has(&["secret.txt"]);
    assert_eq!(read_str(b.join("good.txt")), "good\n");
    assert!(!b.join("secret.txt").exists());
    assert_eq!(read_str(a.join("secret.txt")), "secret\n");
    // Readable again: it syncs.
    sync(t.path(), &["A", "B"]).expect_code(0);
    assert_eq!(read_str(b.join("secret.txt")), "secret\n");
}

#[test]
fn non_utf8_names_are_reported_and_left_alone() {
    use std::ffi::OsStr;
    let t = setup(&["A", "B"]);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    let bad_file = a.join(OsStr::from_bytes(b"bad\xff.txt"));
    let bad_dir = a.join(OsStr::from_bytes(b"dir\xfe"));
    write(&bad_file, "bad name\n");
    write(bad_dir.join("inner.txt"), "inside a badly named dir\n");
    write(a.join("good.txt"), "good\n");
    write(a.join("sub/good2.txt"), "good too\n");
    for round in 0..2 {
        let r = sync(t.path(), &["A", "B"]);
        r.expect_code(1).stderr_has(&["not valid UTF-8", "bad"]);
        assert_eq!(read_str(b.join("good.txt")), "good\n", "round {round}");
        assert_eq!(read_str(b.join("sub/good2.txt")), "good too\n");
        assert_eq!(
            names(&snapshot(&b)),
            vec!["good.txt", "sub", "sub/good2.txt"],
            "round {round}"
        );
        // The bad names are still there, untouched.
        assert_eq!(read_str(&bad_file), "bad name\n");
        assert_eq!(
            read_str(bad_dir.join("inner.txt")),
            "inside a badly named dir\n"
        );
        assert_eq!(snapshot(&a).len(), 6, "{:?}", names(&snapshot(&a)));
    }
}

#[test]
fn first_sync_of_differing_directories_keeps_both() {
    let t = setup(&["A", "B"]);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    write_at(a.join("notes.txt"), "A's notes\n", at(T_OLD, 0));
    write_at(b.join("notes.txt"), "B's notes\n", at(T_NEW, 0));
    write_at(a.join(".bashrc"), "A rc\n", at(T_NEW, 0));
    write_at(b.join(".bashrc"), "B rc\n", at(T_OLD, 0));
    write_at(a.join("src/Makefile"), "all: a\n", at(T_OLD, 0));
    write_at(b.join("src/Makefile"), "all: b\n", at(T_NEW, 0));
    let (r, j) = sync_json(t.path(), &["A", "B"]);
    r.expect_code(1).stderr_has(&["conflict"]);
    let ids = replica_ids(&j);
    let (ida, idb) = (&ids[0][..7], &ids[1][..7]);
    let stamp = utc_stamp(T_OLD as i64);
    assert_eq!(j["conflicts"].as_array().unwrap().len(), 3, "{}", r.stdout);
    for rep in [&a, &b] {
        assert_eq!(read_str(rep.join("notes.txt")), "B's notes\n");
        let c = format!("notes.weave-conflict-{stamp}-{ida}.txt");
        assert_eq!(read_str(rep.join(&c)), "A's notes\n");
        assert_eq!(read_str(rep.join(".bashrc")), "A rc\n");
        let c = format!(".bashrc.weave-conflict-{stamp}-{idb}");
        assert_eq!(read_str(rep.join(&c)), "B rc\n");
        assert_eq!(read_str(rep.join("src/Makefile")), "all: b\n");
        let c = format!("src/Makefile.weave-conflict-{stamp}-{ida}");
        assert_eq!(read_str(rep.join(&c)), "all: a\n");
    }
    assert_same_tree(&a, &b);
    sync(t.path(), &["A", "B"])
        .expect_code(0)
        .stdout_has(&["already in sync"]);
}

#[test]
fn three_way_conflict_keeps_every_version() {
    let t = setup(&["A", "B", "C"]);
    let (a, b, c) = (t.path().join("A"), t.path().join("B"), t.path().join("C"));
    write(a.join("f.txt"), "base\n");
    sync(t.path(), &["A", "B", "C"]).expect_code(0);
    write_at(a.join("f.txt"), "one\n", at(T_OLD, 0));
    write_at(b.join("f.txt"), "two\n", at(T_OLD + 100, 0));
    write_at(c.join("f.txt"), "three\n", at(T_NEW, 0));
    let (r, j) = sync_json(t.path(), &["A", "B", "C"]);
    r.expect_code(1).stderr_has(&["conflict", "f.txt"]);
    let conflicts = j["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{}", r.stdout);
    assert_eq!(conflicts[0]["copies"].as_array().unwrap().len(), 2);
    for rep in [&a, &b, &c] {
        assert_eq!(read_str(rep.join("f.txt")), "three\n");
        let copies = conflict_copies(rep, "f", ".txt");
        assert_eq!(copies.len(), 2, "{copies:?}");
        let mut contents: Vec<String> = copies.iter().map(|n| read_str(rep.join(n))).collect();
        contents.sort();
        assert_eq!(contents, vec!["one\n", "two\n"]);
    }
    assert_same_tree(&a, &b);
    assert_same_tree(&a, &c);
    sync(t.path(), &["A", "B", "C"]).expect_code(0);
}

#[test]
fn deleted_directory_is_kept_for_a_concurrent_addition() {
    let t = setup(&["A", "B"]);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    write(a.join("d/old.txt"), "old\n");
    write(a.join("d/e/deep.txt"), "deep\n");
    sync(t.path(), &["A", "B"]).expect_code(0);
    fs::remove_dir_all(a.join("d")).unwrap();
    write(b.join("d/e/new.txt"), "added on B\n");
    let r = sync(t.path(), &["A", "B"]);
    assert!(r.code == 0 || r.code == 1, "exit {}: {}", r.code, r.stderr);
    for rep in [&a, &b] {
        assert_eq!(read_str(rep.join("d/e/new.txt")), "added on B\n");
        assert!(!rep.join("d/old.txt").exists());
        assert!(!rep.join("d/e/deep.txt").exists());
    }
    assert_same_tree(&a, &b);
    sync(t.path(), &["A", "B"]).expect_code(0);
}

#[test]
fn metadata_only_changes_propagate() {
    let t = setup(&["A", "B"]);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    write_at(a.join("f.txt"), "f\n", at(T_OLD, 0));
    write_at(a.join("g.txt"), "g\n", at(T_OLD, 0));
    fs::create_dir(a.join("d")).unwrap();
    sync(t.path(), &["A", "B"]).expect_code(0);
    chmod(b.join("f.txt"), 0o600);
    set_mtime(a.join("g.txt"), at(T_NEW, 999));
    chmod(a.join("d"), 0o711);
    let (r, j) = sync_json(t.path(), &["A", "B"]);
    r.expect_code(0);
    assert_eq!(j["bytes_copied"], 0, "{}", r.stdout);
    assert_eq!(j["updated"], 3, "{}", r.stdout);
    assert_eq!(mode(a.join("f.txt")), 0o600);
    assert_eq!(mtime(b.join("g.txt")), at(T_NEW, 999));
    assert_eq!(mode(b.join("d")), 0o711);
    assert_same_tree(&a, &b);
}

/// Runs `weave sync A B` in `root` with standard output `out`, bounded in
/// time: (exit status, standard error).
fn sync_into(root: &Path, out: std::process::Stdio) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weave"))
        .current_dir(root)
        .env_remove("RUST_LOG")
        .args(["sync", "A", "B"])
        .stdout(out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("weave runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().expect("weave is waited for").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("weave sync did not end within 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("weave ends");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A reader of weave's output that goes away (`weave sync A B | head -c 0`)
/// ends it as SIGPIPE would (status 141, nothing on standard error); output
/// that cannot be written for another reason (a full disk) ends it with
/// status 1 and one line naming the problem. Never a panic's report; the
/// sync itself was done before its summary was printed.
#[test]
fn output_that_cannot_be_written_ends_weave_without_a_panic() {
    let t = setup(&["A", "B"]);
    some_content(t.path());
    let (reader, writer) = rustix::pipe::pipe().expect("a pipe");
    drop(reader);
    let (code, stderr) = sync_into(t.path(), writer.into());
    assert_eq!(code, Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_same_tree(&t.path().join("A"), &t.path().join("B"));

    write(t.path().join("A/more.txt"), "more\n");
    let full = fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let (code, stderr) = sync_into(t.path(), full.into());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot write to standard output") && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert_same_tree(&t.path().join("A"), &t.path().join("B"));
}
