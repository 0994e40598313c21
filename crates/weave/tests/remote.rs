//! Integration tests of remote replicas: the real `weave` binary syncing
//! with `weave serve --stdio` started through `--rsh`.
//!
//! Most tests use a stand-in for ssh, a shell script that drops the host
//! name and runs the remote command here, with `--remote-weave` naming the
//! binary under test: a "remote" `host:B` is then the directory `B` of the
//! test's temporary directory (the script runs in weave's working
//! directory). The last tests start a private OpenSSH server on 127.0.0.1
//! and go through the real ssh client; they are skipped when sshd or ssh
//! is not installed.

mod common;

use common::*;
use std::fs;
use std::io::Write as _;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The weave binary under test, also used as the "remote" weave.
fn weave_bin() -> &'static str {
    env!("CARGO_BIN_EXE_weave")
}

/// The stand-in for ssh: drops the host and runs the command locally.
const FAKE_RSH: &str = "#!/bin/sh\nshift\nexec sh -c \"$*\"\n";

/// An "ssh" that cannot reach its host, as OpenSSH says it.
const UNREACHABLE_RSH: &str = "#!/bin/sh\n\
    echo 'ssh: connect to host nohost port 22: Connection refused' >&2\n\
    exit 255\n";

/// Test scripts, written once per test process.
///
/// They live in one shared directory, written before any test runs them
/// and then never rewritten: running a script that was just written while
/// other test threads fork can fail with ETXTBSY (a forked child briefly
/// holds the write descriptor), so they are written to a temporary name,
/// renamed into place, and run once until that works.
struct Scripts {
    rsh: PathBuf,
    unreachable: PathBuf,
}

fn scripts() -> &'static Scripts {
    static S: OnceLock<Scripts> = OnceLock::new();
    S.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("weave-remote-tests");
        fs::create_dir_all(&dir).expect("mkdir for the test scripts");
        let s = Scripts {
            rsh: install_script(&dir, "fake-rsh.sh", FAKE_RSH),
            unreachable: install_script(&dir, "unreachable-rsh.sh", UNREACHABLE_RSH),
        };
        // Bounded: up to 100 tries, 10 ms apart.
        let mut ok = false;
        for _ in 0..100 {
            match Command::new(&s.rsh).args(["somehost", "true"]).status() {
                Ok(st) if st.success() => {
                    ok = true;
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        assert!(ok, "the fake rsh {} does not run", s.rsh.display());
        s
    })
}

/// Writes an executable script at `dir/name` (atomically, leaving an
/// identical existing one alone), and returns its path.
fn install_script(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    let same = fs::read(&path).is_ok_and(|b| b == text.as_bytes())
        && fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o111 == 0o111);
    if !same {
        let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
        {
            let mut f = fs::File::create(&tmp).expect("create script");
            f.write_all(text.as_bytes()).expect("write script");
            f.set_permissions(fs::Permissions::from_mode(0o755))
                .expect("chmod script");
        }
        fs::rename(&tmp, &path).expect("rename script into place");
    }
    path
}

/// `weave sync --rsh FAKE --remote-weave WEAVE ARGS` in `root`.
fn rsync(root: &Path, args: &[&str]) -> Run {
    let rsh = scripts().rsh.display().to_string();
    let mut v: Vec<&str> = vec!["sync", "--rsh", &rsh, "--remote-weave", weave_bin()];
    v.extend_from_slice(args);
    weave(root, v)
}

/// The same with `--json`, and its report.
fn rsync_json(root: &Path, args: &[&str]) -> (Run, serde_json::Value) {
    let mut v: Vec<&str> = vec!["--json"];
    v.extend_from_slice(args);
    let r = rsync(root, &v);
    let j = r.json();
    (r, j)
}

fn assert_clean(r: &Run, j: &serde_json::Value) {
    assert_eq!(j["in_sync"], true, "{}\n{}", r.stdout, r.stderr);
    assert!(
        j["conflicts"].as_array().expect("conflicts").is_empty(),
        "{}",
        r.stdout
    );
    assert!(
        j["errors"].as_array().expect("errors").is_empty(),
        "{}",
        r.stdout
    );
}

fn wire(j: &serde_json::Value) -> u64 {
    j["bytes_on_wire"].as_u64().expect("bytes_on_wire")
}

// ---------------------------------------------------------------------------
// Syncing with a remote replica.
// ---------------------------------------------------------------------------

#[test]
fn first_copy_to_a_remote_is_faithful() {
    let t = setup(&["A", "B"]);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    let sample = SampleTree::make(&a);
    let big = &sample.big;

    let (r, j) = rsync_json(t.path(), &["A", "host:B"]);
    r.expect_code(0);
    assert_clean(&r, &j);
    assert!(j["bytes_copied"].as_u64().unwrap() >= big.len() as u64);
    // Random content does not compress: all of it went over the session.
    assert!(wire(&j) >= big.len() as u64, "{}", r.stdout);
    let reps = j["replicas"].as_array().unwrap();
    assert_eq!(reps.len(), 2);
    assert_eq!(reps[1]["path"], "host:B");
    let sent = reps[1]["wire_sent"].as_u64().expect("wire_sent");
    let received = reps[1]["wire_received"].as_u64().expect("wire_received");
    assert!(sent >= big.len() as u64, "{}", r.stdout);
    assert!(received > 0);
    assert_eq!(sent + received, wire(&j));
    // A local replica has no wire counts.
    assert!(reps[0].get("wire_sent").is_none(), "{}", r.stdout);

    assert_same_tree(&a, &b);
    assert!(b.join(".weave").is_dir(), "the remote has its own state");
    sample.check(&b);
}

#[test]
fn first_copy_from_a_remote_to_an_empty_local() {
    let t = setup(&["A", "B"]);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    write_at(b.join("from-remote.txt"), "remote\n", at(1_500_000_000, 5));
    write(b.join("deep/er/file.txt"), "deep\n");
    fs::create_dir_all(b.join("empty")).unwrap();
    let (r, j) = rsync_json(t.path(), &["A", "host:B"]);
    r.expect_code(0);
    assert_clean(&r, &j);
    assert_eq!(j["replicas"][0]["created"].as_u64().unwrap(), 5);
    assert_same_tree(&a, &b);
    assert_eq!(mtime(a.join("from-remote.txt")), at(1_500_000_000, 5));
}

#[test]
fn changes_come_back_from_the_remote_both_ways() {
    let t = setup(&["A", "B"]);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    write(a.join("a.txt"), "a\n");
    write(a.join("dir1/x.txt"), "x\n");
    rsync(t.path(), &["A", "host:B"]).expect_code(0);
    assert_same_tree(&a, &b);

    // Changed on the remote side, and on the local side, in one sync.
    write_at(
        b.join("a.txt"),
        "a, edited remotely\n",
        at(1_700_000_000, 0),
    );
    write(b.join("dir2/new-remote.txt"), "new on B\n");
    chmod(b.join("dir1/x.txt"), 0o600);
    write(a.join("new-local.txt"), "new on A\n");
    let (r, j) = rsync_json(t.path(), &["A", "host:B"]);
    r.expect_code(0);
    assert_clean(&r, &j);
    assert_eq!(read_str(a.join("a.txt")), "a, edited remotely\n");
    assert_eq!(mtime(a.join("a.txt")), at(1_700_000_000, 0));
    assert_eq!(read_str(a.join("dir2/new-remote.txt")), "new on B\n");
    assert_eq!(mode(a.join("dir1/x.txt")), 0o600);
    assert_eq!(read_str(b.join("new-local.txt")), "new on A\n");
    assert_same_tree(&a, &b);

    // The remote named first works the same.
    write(b.join("dir2/second.txt"), "second\n");
    rsync(t.path(), &["host:B", "A"]).expect_code(0);
    assert_eq!(read_str(a.join("dir2/second.txt")), "second\n");
    assert_same_tree(&a, &b);
}

#[test]
fn deletes_propagate_over_the_session() {
    let t = setup(&["A", "B"]);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    write(a.join("gone-local.txt"), "1\n");
    write(a.join("gone-remote.txt"), "2\n");
    write(a.join("dir/inner/file.txt"), "3\n");
    write(a.join("keep.txt"), "4\n");
    rsync(t.path(), &["A", "host:B"]).expect_code(0);
    assert_same_tree(&a, &b);

    fs::remove_file(a.join("gone-local.txt")).unwrap();
    fs::remove_file(b.join("gone-remote.txt")).unwrap();
    fs::remove_dir_all(b.join("dir")).unwrap();
    let (r, j) = rsync_json(t.path(), &["A", "host:B"]);
    r.expect_code(0);
    assert_clean(&r, &j);
    assert!(j["deleted"].as_u64().unwrap() >= 2, "{}", r.stdout);
    for p in ["gone-local.txt", "gone-remote.txt", "dir"] {
        assert!(!a.join(p).exists(), "{p} still on A");
        assert!(!b.join(p).exists(), "{p} still on B");
    }
    assert_eq!(read_str(b.join("keep.txt")), "4\n");
    assert_same_tree(&a, &b);
}

const T_OLD: u64 = 1_700_000_000; // 2023-11-14 22:13:20 UTC
const T_NEW: u64 = 1_700_003_600;

#[test]
fn concurrent_edits_with_a_remote_keep_both_versions() {
    let t = setup(&["A", "B"]);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    write_at(a.join("doc.txt"), "base\n", at(1_000_000_000, 0));
    write(a.join("other.txt"), "other\n");
    rsync(t.path(), &["A", "host:B"]).expect_code(0);
    write_at(a.join("doc.txt"), "edited on A\n", at(T_OLD, 0));
    write_at(b.join("doc.txt"), "edited on B!\n", at(T_NEW, 0));

    let (r, j) = rsync_json(t.path(), &["A", "host:B"]);
    r.expect_code(1).stderr_has(&["conflict", "doc.txt"]);
    assert_eq!(j["in_sync"], false);
    let ids = replica_ids(&j);
    let expected_copy = format!(
        "doc.weave-conflict-{}-{}.txt",
        utc_stamp(T_OLD as i64),
        &ids[0][..7]
    );
    let conflicts = j["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{}", r.stdout);
    assert_eq!(conflicts[0]["path"], "doc.txt");
    assert_eq!(conflicts[0]["copies"], serde_json::json!([expected_copy]));
    for rep in [&a, &b] {
        assert_eq!(read_str(rep.join("doc.txt")), "edited on B!\n");
        assert_eq!(mtime(rep.join("doc.txt")), at(T_NEW, 0));
        let copies = conflict_copies(rep, "doc", ".txt");
        assert_eq!(copies, vec![expected_copy.clone()], "in {}", rep.display());
        assert_eq!(read_str(rep.join(&copies[0])), "edited on A\n");
    }
    assert_same_tree(&a, &b);
    let (r, j) = rsync_json(t.path(), &["A", "host:B"]);
    r.expect_code(0);
    assert_clean(&r, &j);
    assert_eq!(j["created"], 0);
    assert_eq!(j["updated"], 0);
    assert_eq!(j["deleted"], 0);
}

#[test]
fn second_sync_with_a_remote_is_unchanged() {
    let t = setup(&["A", "B"]);
    write(t.path().join("A/hello.txt"), "hello\n");
    write(t.path().join("A/sub/inner.txt"), "inner\n");
    write(t.path().join("B/remote.txt"), "remote\n");
    let (r, j) = rsync_json(t.path(), &["A", "host:B"]);
    r.expect_code(0);
    assert_eq!(j["unchanged"], false);
    let (r, j) = rsync_json(t.path(), &["A", "host:B"]);
    r.expect_code(0);
    assert_clean(&r, &j);
    assert_eq!(j["unchanged"], true, "{}", r.stdout);
    assert_eq!(j["created"], 0);
    assert_eq!(j["updated"], 0);
    assert_eq!(j["deleted"], 0);
    assert_eq!(j["bytes_copied"], 0);
    // Replica ids are stable over sessions.
    let (_, j2) = rsync_json(t.path(), &["host:B", "A"]);
    let (ids, ids2) = (replica_ids(&j), replica_ids(&j2));
    assert_eq!(ids[0], ids2[1]);
    assert_eq!(ids[1], ids2[0]);
    assert_ne!(ids[0], ids[1]);
    rsync(t.path(), &["A", "host:B"])
        .expect_code(0)
        .stdout_has(&["already in sync"]);
    assert_same_tree(&t.path().join("A"), &t.path().join("B"));
}

#[test]
fn other_remote_address_forms_work() {
    let t = setup(&["A", "B", "C"]);
    let (a, b, c) = (t.path().join("A"), t.path().join("B"), t.path().join("C"));
    write(a.join("one.txt"), "one\n");
    // ssh://host/ABSOLUTE and user@host:path.
    let url = format!("ssh://somehost{}", b.display());
    rsync(t.path(), &["A", &url]).expect_code(0);
    assert_same_tree(&a, &b);
    rsync(t.path(), &["A", "someone@somehost:C"]).expect_code(0);
    assert_same_tree(&a, &c);
}

#[test]
fn three_replicas_with_two_remotes_converge() {
    let t = setup(&["A", "B", "C"]);
    let (a, b, c) = (t.path().join("A"), t.path().join("B"), t.path().join("C"));
    write(a.join("a.txt"), "from A\n");
    write(b.join("b.txt"), "from B\n");
    write(b.join("sub/b2.txt"), "from B, nested\n");
    write(c.join("only-on-c.txt"), "from C\n");
    fs::create_dir_all(c.join("c-empty")).unwrap();
    let (r, j) = rsync_json(t.path(), &["A", "host:B", "host:C"]);
    r.expect_code(0);
    assert_clean(&r, &j);
    assert_eq!(j["replicas"].as_array().unwrap().len(), 3);
    assert_same_tree(&a, &b);
    assert_same_tree(&a, &c);
    for rep in [&a, &b] {
        assert_eq!(read_str(rep.join("only-on-c.txt")), "from C\n");
        assert!(rep.join("c-empty").is_dir());
    }
    assert_eq!(read_str(c.join("sub/b2.txt")), "from B, nested\n");
    assert_eq!(read_str(c.join("a.txt")), "from A\n");

    write(c.join("a.txt"), "changed on C\n");
    fs::remove_file(b.join("b.txt")).unwrap();
    write(a.join("sub/new.txt"), "new on A\n");
    rsync(t.path(), &["host:C", "A", "host:B"]).expect_code(0);
    assert_same_tree(&a, &b);
    assert_same_tree(&a, &c);
    assert_eq!(read_str(b.join("a.txt")), "changed on C\n");
    assert!(!a.join("b.txt").exists() && !c.join("b.txt").exists());
    assert_eq!(read_str(c.join("sub/new.txt")), "new on A\n");

    let (r, j) = rsync_json(t.path(), &["A", "host:B", "host:C"]);
    r.expect_code(0);
    assert_eq!(j["unchanged"], true, "{}", r.stdout);
}

#[test]
fn dry_run_with_a_remote_changes_nothing() {
    let t = setup(&["A", "B"]);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    write(a.join("hello.txt"), "hello\n");
    write(a.join("sub/inner.txt"), "inner\n");
    write(b.join("only-b.txt"), "b\n");
    let (before_a, before_b) = (snapshot_all(&a), snapshot_all(&b));
    let r = rsync(t.path(), &["--dry-run", "A", "host:B"]);
    r.expect_code(0)
        .stdout_has(&["would", "hello.txt", "only-b.txt"]);
    assert_eq!(snapshot_all(&a), before_a);
    assert_eq!(snapshot_all(&b), before_b);
    assert!(!a.join(".weave").exists(), "dry run made A's state");
    assert!(
        !b.join(".weave").exists(),
        "dry run made the remote's state"
    );
    let (r, j) = rsync_json(t.path(), &["-n", "A", "host:B"]);
    r.expect_code(0);
    assert_eq!(j["dry_run"], true);
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
    assert!(!b.join(".weave").exists());

    // After a real sync: a change is shown, not carried out.
    rsync(t.path(), &["A", "host:B"]).expect_code(0);
    write_at(b.join("hello.txt"), "hello again\n", at(1_650_000_000, 0));
    fs::remove_file(a.join("only-b.txt")).unwrap();
    let (before_a, before_b) = (snapshot(&a), snapshot(&b));
    rsync(t.path(), &["-n", "A", "host:B"])
        .expect_code(0)
        .stdout_has(&["would", "update", "delete"]);
    assert_eq!(snapshot(&a), before_a);
    assert_eq!(snapshot(&b), before_b);
    rsync(t.path(), &["A", "host:B"]).expect_code(0);
    assert_eq!(read_str(a.join("hello.txt")), "hello again\n");
    assert!(!b.join("only-b.txt").exists());
    assert_same_tree(&a, &b);
}

// ---------------------------------------------------------------------------
// What crosses the wire.
// ---------------------------------------------------------------------------

const EIGHT_MIB: usize = 8 << 20;

/// A and remote B synced with one 8 MiB random file, `big.bin`.
fn synced_big_file() -> (tempfile::TempDir, Vec<u8>) {
    let t = setup(&["A", "B"]);
    let big = random_bytes(EIGHT_MIB, 8);
    write_at(t.path().join("A/big.bin"), &big, at(1_600_000_000, 0));
    write(t.path().join("A/small.txt"), "small\n");
    let (r, j) = rsync_json(t.path(), &["A", "host:B"]);
    r.expect_code(0);
    assert_clean(&r, &j);
    assert!(wire(&j) >= EIGHT_MIB as u64, "{}", r.stdout);
    assert_same_tree(&t.path().join("A"), &t.path().join("B"));
    (t, big)
}

/// Flips one byte in the middle of `side/big.bin` (with a new mtime), syncs,
/// and checks that little went over the wire.
fn one_byte_change_sends_little(side: &str) {
    let (t, mut big) = synced_big_file();
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    big[EIGHT_MIB / 2] ^= 0x5a;
    write_at(
        t.path().join(side).join("big.bin"),
        &big,
        at(1_600_000_100, 0),
    );
    let (r, j) = rsync_json(t.path(), &["A", "host:B"]);
    r.expect_code(0);
    assert_clean(&r, &j);
    assert_eq!(j["updated"], 1, "{}", r.stdout);
    assert!(
        wire(&j) < 150_000,
        "a 1-byte change in 8 MiB sent {} bytes on the wire\n{}",
        wire(&j),
        r.stdout
    );
    assert_eq!(read(a.join("big.bin")), big);
    assert_eq!(read(b.join("big.bin")), big);
    assert_same_tree(&a, &b);
}

/// A sparse file's holes never cross the session, either way, and the
/// copy on the other side has them too (received into a part file, and
/// into the stage).
#[test]
fn a_sparse_file_crosses_the_session_as_its_data_only() {
    const MIB: u64 = 1 << 20;
    let t = setup(&["A", "B"]);
    let p = t.path();
    let data = random_bytes(MIB as usize, 31);
    make_sparse(
        p.join("A/disk.img"),
        512 * MIB,
        &[(0, b"hdr"), (300 * MIB, &data)],
    );
    make_sparse(p.join("A/small.img"), 900_000, &[(800_000, b"tail")]);
    let (r, j) = rsync_json(p, &["A", "host:B"]);
    r.expect_code(0);
    assert_clean(&r, &j);
    assert!(
        wire(&j) < 2 * MIB,
        "{} bytes on the wire\n{}",
        wire(&j),
        r.stdout
    );
    for f in ["disk.img", "small.img"] {
        let (a, b) = (p.join("A").join(f), p.join("B").join(f));
        assert!(read(&a) == read(&b), "{f} differs");
        assert!(
            allocated(&b) <= allocated(&a) + 8 * 4096,
            "{f}: {}",
            allocated(&b)
        );
    }
    // Back the other way, into an empty replica.
    fs::create_dir(p.join("C")).unwrap();
    let (r, j) = rsync_json(p, &["C", "host:B"]);
    r.expect_code(0);
    assert!(
        wire(&j) < 2 * MIB,
        "{} bytes on the wire\n{}",
        wire(&j),
        r.stdout
    );
    assert!(read(p.join("C/disk.img")) == read(p.join("A/disk.img")));
    assert!(allocated(p.join("C/disk.img")) < 2 * MIB);
}

/// Extended attributes cross the session both ways.
#[test]
fn extended_attributes_cross_the_session() {
    let t = setup(&["A", "B"]);
    let p = t.path();
    let set = |f: &Path, v: &[u8]| {
        rustix::fs::lsetxattr(f, "user.color", v, rustix::fs::XattrFlags::empty())
    };
    write(p.join("A/f"), "x");
    if set(&p.join("A/f"), b"blue").is_err() {
        eprintln!("skipped: no user extended attributes on this file system");
        return;
    }
    let get = |f: &Path| {
        let mut buf = [0u8; 64];
        rustix::fs::lgetxattr(f, "user.color", &mut buf[..]).map(|n| buf[..n].to_vec())
    };
    let (r, _) = rsync_json(p, &["A", "host:B"]);
    r.expect_code(0);
    assert_eq!(get(&p.join("B/f")).unwrap(), b"blue");
    set(&p.join("B/f"), b"red").unwrap();
    let (r, _) = rsync_json(p, &["A", "host:B"]);
    r.expect_code(0);
    assert_eq!(get(&p.join("A/f")).unwrap(), b"red");
}

/// New files that need nothing from the stage (empty, or only runs of
/// zeros), in a sync whose only other transfer fills a large file's part:
/// each is written, not left out as "written early" when nothing was.
#[test]
fn files_needing_nothing_land_beside_a_large_new_file() {
    let t = setup(&["A", "B"]);
    let p = t.path();
    write_at(
        p.join("A/big.bin"),
        random_bytes(3 << 20, 41),
        at(1_600_000_000, 0),
    );
    for i in 0..40 {
        write_at(
            p.join(format!("A/zeros{i}.bin")),
            vec![0u8; 256 << 10],
            at(1_600_000_000, 0),
        );
        write_at(p.join(format!("A/empty{i}")), b"", at(1_600_000_000, 0));
    }
    let (r, j) = rsync_json(p, &["A", "host:B"]);
    r.expect_code(0);
    assert_clean(&r, &j);
    assert_same_tree(&p.join("A"), &p.join("B"));
}

/// Large contents of zeros only: their parts are complete when opened.
#[test]
fn large_files_of_zeros_only_cross_as_nothing() {
    let t = setup(&["A", "B"]);
    let p = t.path();
    write_at(p.join("A/z1"), vec![0u8; 3 << 20], at(1_600_000_000, 0));
    write_at(
        p.join("A/z2"),
        vec![0u8; (3 << 20) + 777],
        at(1_600_000_000, 0),
    );
    let mut d = vec![0u8; 5 << 20];
    d[(5 << 20) - 1] = 1;
    write_at(p.join("A/z3"), &d, at(1_600_000_000, 0));
    let (r, j) = rsync_json(p, &["A", "host:B"]);
    r.expect_code(0);
    assert_clean(&r, &j);
    assert_same_tree(&p.join("A"), &p.join("B"));
    assert!(wire(&j) < 100_000, "{}", wire(&j));
}

/// `--hard-links` reaches the remote `weave serve`: names of one file stay
/// one file there.
#[test]
fn hard_links_are_kept_on_a_remote() {
    use std::os::unix::fs::MetadataExt;
    let t = setup(&["A", "B"]);
    let p = t.path();
    write(p.join("A/a"), "one file, two names");
    fs::hard_link(p.join("A/a"), p.join("A/b")).unwrap();
    let (r, j) = rsync_json(p, &["--hard-links", "A", "host:B"]);
    r.expect_code(0);
    assert_clean(&r, &j);
    let ino = |f: &str| fs::metadata(p.join("B").join(f)).unwrap().ino();
    assert_eq!(ino("a"), ino("b"));
}

#[test]
fn delta_transfer_of_a_local_change() {
    one_byte_change_sends_little("A");
}

#[test]
fn delta_transfer_of_a_remote_change() {
    one_byte_change_sends_little("B");
}

#[test]
fn rename_of_a_big_file_sends_little() {
    let (t, big) = synced_big_file();
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    fs::create_dir_all(a.join("moved")).unwrap();
    fs::rename(a.join("big.bin"), a.join("moved/renamed.bin")).unwrap();
    let (r, j) = rsync_json(t.path(), &["A", "host:B"]);
    r.expect_code(0);
    assert_clean(&r, &j);
    assert!(
        wire(&j) < 50_000,
        "renaming an 8 MiB file sent {} bytes on the wire\n{}",
        wire(&j),
        r.stdout
    );
    assert!(!b.join("big.bin").exists());
    assert_eq!(read(b.join("moved/renamed.bin")), big);
    assert_same_tree(&a, &b);
}

#[test]
fn bwlimit_slows_the_transfer_down() {
    let t = setup(&["A", "B"]);
    let data = random_bytes(4 << 20, 4);
    write(t.path().join("A/four.bin"), &data);
    let started = Instant::now();
    let (r, j) = rsync_json(t.path(), &["--bwlimit", "2M", "A", "host:B"]);
    let took = started.elapsed();
    r.expect_code(0);
    assert_clean(&r, &j);
    assert_eq!(read(t.path().join("B/four.bin")), data);
    // 4 MiB at 2 MiB/s: about 2 s. Only a lower bound is checked.
    assert!(
        took >= Duration::from_millis(1500),
        "4 MiB with --bwlimit 2M took only {took:?}"
    );
}

// ---------------------------------------------------------------------------
// Errors: exit 2 and a message that names the problem.
// ---------------------------------------------------------------------------

#[test]
fn missing_remote_directory_is_refused() {
    let t = setup(&["A"]);
    write(t.path().join("A/hello.txt"), "hello\n");
    let before = snapshot_all(t.path());
    let r = rsync(t.path(), &["A", "host:Missing"]);
    r.expect_code(2)
        .stderr_has(&["Missing", "no such directory"]);
    assert!(!t.path().join("Missing").exists());
    assert_eq!(
        snapshot_all(t.path()),
        before,
        "a refused sync changed files"
    );
}

#[test]
fn missing_remote_weave_is_explained() {
    let t = setup(&["A", "B"]);
    write(t.path().join("A/hello.txt"), "hello\n");
    let rsh = scripts().rsh.display().to_string();
    let r = weave(
        t.path(),
        [
            "sync",
            "--rsh",
            &rsh,
            "--remote-weave",
            "/nonexistent/weave",
            "A",
            "host:B",
        ],
    );
    r.expect_code(2)
        .stderr_has(&["not installed", "--remote-weave", "/nonexistent/weave"]);
    assert!(!t.path().join("B/hello.txt").exists());
    assert!(!t.path().join("B/.weave").exists());
}

#[test]
fn rsh_that_cannot_run_is_explained() {
    let t = setup(&["A", "B"]);
    write(t.path().join("A/hello.txt"), "hello\n");
    let r = weave(
        t.path(),
        [
            "sync",
            "--rsh",
            "/nonexistent-ssh",
            "--remote-weave",
            weave_bin(),
            "A",
            "host:B",
        ],
    );
    r.expect_code(2)
        .stderr_has(&["cannot run", "/nonexistent-ssh"]);
    assert!(!t.path().join("B/hello.txt").exists());
    // -e is the short form of --rsh.
    let r = weave(t.path(), ["sync", "-e", "/nonexistent-ssh", "A", "host:B"]);
    r.expect_code(2).stderr_has(&["cannot run"]);
}

#[test]
fn unreachable_host_is_explained() {
    let t = setup(&["A"]);
    write(t.path().join("A/hello.txt"), "hello\n");
    let rsh = scripts().unreachable.display().to_string();
    let r = weave(
        t.path(),
        [
            "sync",
            "--rsh",
            &rsh,
            "--remote-weave",
            weave_bin(),
            "A",
            "nohost:/srv/docs",
        ],
    );
    r.expect_code(2)
        .stderr_has(&["cannot reach", "nohost", "Connection refused"]);
    assert!(!t.path().join("A/.weave").exists());
}

#[test]
fn bad_bwlimit_is_a_usage_error() {
    let t = setup(&["A", "B"]);
    let r = rsync(t.path(), &["--bwlimit", "fast", "A", "host:B"]);
    r.expect_code(2).stderr_has(&["--bwlimit", "fast"]);
    assert!(!t.path().join("A/.weave").exists());
    assert!(!t.path().join("B/.weave").exists());
}

#[test]
fn the_same_remote_twice_is_refused() {
    let t = setup(&["A", "B"]);
    let r = rsync(t.path(), &["A", "host:B", "host:B"]);
    r.expect_code(2).stderr_has(&["twice"]);
    assert!(!t.path().join("B/.weave").exists());
}

// ---------------------------------------------------------------------------
// Through a real OpenSSH server on 127.0.0.1.
// ---------------------------------------------------------------------------

const SSHD: &str = "/usr/sbin/sshd";

/// True when the ssh client and ssh-keygen can be run.
fn have_ssh_client() -> bool {
    ["ssh", "ssh-keygen"].iter().all(|p| {
        Command::new(p)
            .arg("-?")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    })
}

/// A private sshd on 127.0.0.1 with key-only root login; killed on drop.
struct Sshd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("ssh-keygen runs");
    assert!(
        out.status.success(),
        "ssh-keygen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits (up to 5 s) until something listens on 127.0.0.1:`port`; false
/// if `child` exits first or time runs out.
fn wait_listening(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    let addr = ([127, 0, 0, 1], port).into();
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

impl Sshd {
    /// None (after saying so) when sshd or ssh is not installed.
    fn start() -> Option<Sshd> {
        if !Path::new(SSHD).exists() || !have_ssh_client() {
            eprintln!("skipped: {SSHD} or ssh is not installed (openssh-server, openssh-client)");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
        keygen(&d.join("hostkey"));
        keygen(&d.join("client"));
        fs::copy(d.join("client.pub"), d.join("authorized_keys")).expect("authorized_keys");
        chmod(d.join("authorized_keys"), 0o600);
        let mut last_log = String::new();
        // A port picked this way can be taken by someone else before sshd
        // binds it: a few tries, each bounded in time.
        for _attempt in 0..3 {
            let port = free_port();
            let config = d.join("sshd_config");
            let log = d.join("sshd.log");
            fs::write(
                &config,
                format!(
                    "ListenAddress 127.0.0.1\n\
                     Port {port}\n\
                     HostKey {d}/hostkey\n\
                     PidFile {d}/sshd.pid\n\
                     AuthorizedKeysFile {d}/authorized_keys\n\
                     StrictModes no\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     UsePAM no\n\
                     PermitRootLogin yes\n\
                     PrintMotd no\n",
                    d = d.display()
                ),
            )
            .expect("write sshd_config");
            let mut child = Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log).expect("sshd log"))
                .spawn()
                .expect("sshd starts");
            if wait_listening(&mut child, port) {
                return Some(Sshd { child, port, dir });
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("sshd did not start listening on 127.0.0.1 (3 tries); its log:\n{last_log}");
    }

    /// The --rsh value for this server (without the port).
    fn rsh(&self) -> String {
        format!(
            "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no \
             -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR",
            self.dir.path().join("client").display()
        )
    }
}

/// Syncs local A with `remote` (B under `root`) through ssh, both ways.
fn sync_both_ways_over_ssh(root: &Path, rsh: &str, remote: &str) {
    let (a, b) = (root.join("A"), root.join("B"));
    write(a.join("hello.txt"), "hello over ssh\n");
    write(a.join("sub/deeper/inner.txt"), "inner\n");
    let big = random_bytes(1 << 20, 22);
    write_at(a.join("sub/one-mib.bin"), &big, at(1_600_000_000, 0));
    fs::create_dir_all(a.join("empty")).unwrap();
    std::os::unix::fs::symlink("hello.txt", a.join("link")).unwrap();
    write(b.join("from-remote.txt"), "remote\n");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec![
            "sync".into(),
            "--json".into(),
            "--rsh".into(),
            rsh.into(),
            "--remote-weave".into(),
            weave_bin().into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let r = weave(root, args(&["A", remote]));
    r.expect_code(0);
    let j = r.json();
    assert_clean(&r, &j);
    assert!(wire(&j) >= big.len() as u64, "{}", r.stdout);
    assert_same_tree(&a, &b);
    assert_eq!(read_str(a.join("from-remote.txt")), "remote\n");
    assert_eq!(read(b.join("sub/one-mib.bin")), big);

    // A change on the remote side comes back, a local delete goes there.
    write_at(
        b.join("hello.txt"),
        "edited remotely\n",
        at(1_700_000_000, 0),
    );
    write(b.join("sub/new.txt"), "new on B\n");
    fs::remove_file(a.join("from-remote.txt")).unwrap();
    let r = weave(root, args(&[remote, "A"]));
    r.expect_code(0);
    assert_clean(&r, &r.json());
    assert_eq!(read_str(a.join("hello.txt")), "edited remotely\n");
    assert_eq!(read_str(a.join("sub/new.txt")), "new on B\n");
    assert!(!b.join("from-remote.txt").exists());
    assert_same_tree(&a, &b);

    let r = weave(root, args(&["A", remote]));
    r.expect_code(0);
    assert_eq!(r.json()["unchanged"], true, "{}", r.stdout);
}

#[test]
fn real_ssh_with_an_ssh_url_and_port() {
    let Some(sshd) = Sshd::start() else {
        return;
    };
    let t = setup(&["A", "B"]);
    let url = format!(
        "ssh://{}@127.0.0.1:{}{}",
        me(),
        sshd.port,
        t.path().join("B").display()
    );
    sync_both_ways_over_ssh(t.path(), &sshd.rsh(), &url);
}

#[test]
fn real_ssh_with_host_path_and_port_in_rsh() {
    let Some(sshd) = Sshd::start() else {
        return;
    };
    let t = setup(&["A", "B"]);
    let remote = format!("{}@127.0.0.1:{}", me(), t.path().join("B").display());
    let rsh = format!("{} -p {}", sshd.rsh(), sshd.port);
    sync_both_ways_over_ssh(t.path(), &rsh, &remote);
}

#[test]
fn real_ssh_to_a_closed_port_cannot_reach() {
    if !have_ssh_client() {
        eprintln!("skipped: ssh is not installed (openssh-client)");
        return;
    }
    let t = setup(&["A"]);
    write(t.path().join("A/hello.txt"), "hello\n");
    // A port nobody listens on (picked, then released).
    let url = format!("ssh://{}@127.0.0.1:{}/srv/none", me(), free_port());
    let r = weave(
        t.path(),
        [
            "sync",
            "--rsh",
            "ssh -F /dev/null -o BatchMode=yes -o ConnectTimeout=10",
            "--remote-weave",
            weave_bin(),
            "A",
            &url,
        ],
    );
    r.expect_code(2).stderr_has(&["cannot reach", "127.0.0.1"]);
    assert!(!t.path().join("A/.weave").exists());
}

/// The user the tests run as (the private sshd only lets that user in).
fn me() -> String {
    let out = std::process::Command::new("id")
        .arg("-un")
        .output()
        .expect("id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An interrupted transfer keeps what it received: weave is killed in the
/// middle of sending to a remote, and the rerun sends only the rest.
/// `received` tells how many bytes the receiving side kept so far.
fn interrupted_transfer_resumes(files: &[(String, Vec<u8>)], received: impl Fn(&Path) -> u64) {
    let t = setup(&["A", "B"]);
    let total: usize = files.iter().map(|f| f.1.len()).sum();
    assert_eq!(total, EIGHT_MIB);
    for (name, data) in files {
        write(t.path().join("A").join(name), data);
    }
    let rsh = scripts().rsh.display().to_string();
    // 1 MiB/s: about 8 s for everything; killed after about 3.
    let mut child = Command::new(weave_bin())
        .args(["sync", "--rsh", &rsh, "--remote-weave", weave_bin()])
        .args(["--bwlimit", "1M", "A", "host:B"])
        .current_dir(t.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state = t.path().join("B/.weave");
    let started = Instant::now();
    // Bounded: until a good part has arrived, at most 20 s.
    while started.elapsed() < Duration::from_secs(20) && received(&state) < 2 << 20 {
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let kept = received(&state);
    assert!(kept >= 2 << 20, "only {kept} bytes received after 20 s");
    assert!(
        kept < EIGHT_MIB as u64,
        "everything arrived before the kill"
    );
    assert!(files
        .iter()
        .all(|f| !t.path().join("B").join(&f.0).exists()));
    // The serving side ends when its session does (bounded wait).
    std::thread::sleep(Duration::from_millis(300));
    let (r, j) = rsync_json(t.path(), &["A", "host:B"]);
    r.expect_code(0);
    assert_clean(&r, &j);
    for (name, data) in files {
        assert_eq!(&read(t.path().join("B").join(name)), data);
    }
    let sent = wire(&j);
    // At least 2 MiB had arrived: the rerun sends at most the rest.
    assert!(
        sent < EIGHT_MIB as u64 - (3 << 19),
        "the rerun sent {sent} bytes with {kept} already received"
    );
    let left: Vec<_> = fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n == "stage.pack" || n == "parts")
        .collect();
    assert!(left.is_empty(), "dropped once everything landed: {left:?}");
}

/// Small files: what arrived is kept in the stage pack.
#[test]
fn an_interrupted_transfer_of_small_files_resumes() {
    let files: Vec<(String, Vec<u8>)> = (0..64)
        .map(|i| (format!("f{i:02}"), random_bytes(EIGHT_MIB / 64, 100 + i)))
        .collect();
    interrupted_transfer_resumes(&files, |state| {
        fs::metadata(state.join("stage.pack"))
            .map(|m| m.len())
            .unwrap_or(0)
    });
}

/// A large file: what arrived is kept in its part file (written in place,
/// so what it holds is counted by its allocated blocks).
#[test]
fn an_interrupted_transfer_of_a_large_file_resumes() {
    use std::os::unix::fs::MetadataExt;
    let files = vec![("big.bin".to_string(), random_bytes(EIGHT_MIB, 77))];
    interrupted_transfer_resumes(&files, |state| {
        fs::read_dir(state.join("parts"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.blocks() * 512)
            .sum()
    });
}

#[test]
fn a_remote_backup_takes_changes_in_and_sends_none() {
    let t = setup(&["A", "B"]);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    write(a.join("f"), "f from A\n");
    rsync(t.path(), &["--backup", "host:B", "A", "host:B"]).expect_code(0);
    assert_same_tree(&a, &b);
    write(b.join("f"), "edited on the backup\n");
    write(b.join("new"), "new on the backup\n");
    write(a.join("g"), "g from A\n");
    let (r, j) = rsync_json(t.path(), &["--backup", "host:B", "A", "host:B"]);
    r.expect_code(0);
    assert_clean(&r, &j);
    assert_eq!(read_str(a.join("f")), "f from A\n");
    assert!(!a.join("new").exists());
    assert_same_tree(&a, &b);
    // The backup's own edit is in its history.
    let h = weave(t.path(), ["history", "--json", "B/f"]);
    h.expect_code(0);
    assert_eq!(h.json()["versions"].as_array().unwrap().len(), 1);
}

/// A sync after a small change asks the remote only for the index entries
/// that changed since the last sync (by sequence number), not its whole
/// index: planning only what changed needs nothing else, and a sync that
/// plans every path (here: other ignore patterns) takes the rest from the
/// remembered index. Without it, that costs the whole index again.
#[test]
fn a_later_sync_fetches_only_the_changed_index_entries() {
    let t = setup(&["A", "B"]);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    for i in 0..2000 {
        write(
            a.join(format!("d{}/file-{i:05}.txt", i % 20)),
            format!("{i}\n"),
        );
    }
    rsync(t.path(), &["A", "host:B"]).expect_code(0);
    assert_same_tree(&a, &b);

    // Planning only what changed.
    write(b.join("d3/changed-remotely.txt"), "new on B\n");
    write(a.join("d4/changed-locally.txt"), "new on A\n");
    let (r, j) = rsync_json(t.path(), &["A", "host:B"]);
    r.expect_code(0);
    assert_clean(&r, &j);
    assert_same_tree(&a, &b);
    let changed_only = wire(&j);

    // Planning every path (the ignore patterns changed), with the
    // remembered index.
    write(b.join("d5/changed-remotely.txt"), "new on B\n");
    write(a.join("d6/changed-locally.txt"), "new on A\n");
    let (r, j) = rsync_json(t.path(), &["--ignore", "*.none", "A", "host:B"]);
    r.expect_code(0);
    assert_clean(&r, &j);
    assert_same_tree(&a, &b);
    let with_cache = wire(&j);

    // The same, with the remembered index gone.
    write(b.join("d7/changed-remotely.txt"), "new on B\n");
    write(a.join("d8/changed-locally.txt"), "new on A\n");
    fs::remove_dir_all(a.join(".weave/remotes")).unwrap();
    let (r, j) = rsync_json(t.path(), &["--ignore", "*.other", "A", "host:B"]);
    r.expect_code(0);
    assert_clean(&r, &j);
    assert_same_tree(&a, &b);
    let without = wire(&j);
    eprintln!(
        "index fetch: {changed_only} bytes planning what changed, {with_cache} planning everything with the remembered index, {without} without it"
    );
    assert!(
        changed_only * 5 < without && with_cache * 5 < without,
        "{changed_only} and {with_cache} bytes, {without} without the remembered index"
    );

    // A remembered index that is ahead of the remote (its state was
    // replaced) is not trusted: the whole index is fetched and the sync
    // is still right.
    fs::remove_dir_all(b.join(".weave")).unwrap();
    write(b.join("d7/after-reset.txt"), "new on B\n");
    let (r, j) = rsync_json(t.path(), &["A", "host:B"]);
    r.expect_code(0);
    assert_clean(&r, &j);
    assert_eq!(read_str(a.join("d7/after-reset.txt")), "new on B\n");
    assert_same_tree(&a, &b);
}

/// Key/value stores sync through sessions like directory trees: three
/// stores, two remote; then an edit in the middle of a large record
/// sends about one chunk (16 KiB on average), not the record (about
/// 90 KB compressed).
#[test]
fn kv_stores_sync_over_sessions_and_send_only_what_changed() {
    let t = setup(&["a", "b", "c"]);
    let root = t.path();
    // 120,000 characters of a 64-letter alphabet (an argument may hold
    // up to 128 KiB), poorly compressible.
    const LETTERS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+-";
    let big: String = random_bytes(120_000, 7)
        .iter()
        .map(|b| LETTERS[(b & 63) as usize] as char)
        .collect();
    weave(root, ["kv", "put", "a", "alice", "alice@example.org"]).expect_code(0);
    weave(root, ["kv", "put", "b", "bob", "bob@example.org"]).expect_code(0);
    weave(root, ["kv", "put", "c", "big", big.as_str()]).expect_code(0);
    let (r, j) = rsync_json(root, &["--kind", "kv", "a", "somehost:b", "otherhost:c"]);
    r.expect_code(0);
    assert_eq!(j["created"], 6, "{}", r.stdout);
    for s in ["a", "b", "c"] {
        let got = weave(root, ["kv", "get", s, "big"]);
        assert_eq!(got.expect_code(0).stdout, big, "the big record in {s}");
        weave(root, ["kv", "get", s, "alice"]).expect_code(0);
        weave(root, ["kv", "get", s, "bob"]).expect_code(0);
    }
    let mut edited = big.clone();
    edited.replace_range(60_000..60_001, "#");
    weave(root, ["kv", "put", "a", "big", edited.as_str()]).expect_code(0);
    let (r, j) = rsync_json(root, &["--kind", "kv", "a", "somehost:b"]);
    r.expect_code(0);
    assert_eq!(j["updated"], 1);
    let wire = j["bytes_on_wire"].as_u64().unwrap();
    eprintln!("kv: {wire} bytes on the wire for a 1-byte edit of a 120,000-byte record");
    assert!(
        wire < 40_000,
        "{wire} bytes on the wire for a 1-byte edit of a 120 KB record"
    );
    assert_eq!(weave(root, ["kv", "get", "b", "big"]).stdout, edited);
}

/// A first copy to a remote with many small new files (in new directories,
/// one of them read-only, next to a file already there) and large ones:
/// the small ones are written while the large ones still arrive, and the
/// result is the same tree.
#[test]
fn small_files_written_while_large_ones_arrive_land_faithfully() {
    let t = setup(&["A", "B"]);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    let sample = SampleTree::make(&a);
    for i in 0..60u64 {
        let dir = format!("many/d{}/e{}", i % 4, i % 3);
        write_at(
            a.join(format!("{dir}/f{i}.txt")),
            random_bytes(100 + i as usize * 37, i),
            at(1_500_000_000 + i, 7),
        );
    }
    write(
        a.join("second-big.bin"),
        random_bytes(2 * 1024 * 1024 + 5, 9),
    );
    chmod(a.join("many/d1"), 0o555);
    // Already on the remote, the same on both sides: left as it is.
    write(a.join("many/shared.txt"), "shared\n");
    write(b.join("many/shared.txt"), "shared\n");

    // The remote side logs what its engine does.
    let log = t.path().join("remote.log");
    let rsh = install_script(
        t.path(),
        "logging-rsh.sh",
        &format!(
            "#!/bin/sh\nshift\nRUST_LOG=weave_fs=debug exec sh -c \"$*\" 2>>{}\n",
            log.display()
        ),
    );
    // Run by sh rather than executed: a script just written can be busy
    // (ETXTBSY) while other test threads fork.
    let rsh = format!("sh {}", rsh.display());
    let r = weave(
        t.path(),
        [
            "sync",
            "--json",
            "--rsh",
            &rsh,
            "--remote-weave",
            weave_bin(),
            "A",
            "host:B",
        ],
    );
    r.expect_code(0);
    let j = r.json();
    assert_clean(&r, &j);
    let logged = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logged.contains("writing files from the stage while the rest arrives"),
        "the remote did not write early:\n{logged}"
    );
    assert_same_tree(&a, &b);
    sample.check(&b);
    assert_eq!(mode(b.join("many/d1")) & 0o777, 0o555);
    assert_eq!(mtime(b.join("many/d2/e2/f2.txt")), at(1_500_000_002, 7));
    // And the next sync finds nothing to do: the files written early were
    // recorded (while the rest arrived), with the others.
    let (r, j) = rsync_json(t.path(), &["A", "host:B"]);
    r.expect_code(0);
    assert_clean(&r, &j);
    assert_eq!(j["unchanged"], true, "{}", r.stdout);
    // A change on the remote after that comes back: its sequence number
    // follows all those the early record and the final one took.
    write(b.join("many/d0/e0/f0.txt"), "changed on B\n");
    let (r, j) = rsync_json(t.path(), &["A", "host:B"]);
    r.expect_code(0);
    assert_clean(&r, &j);
    assert_eq!(read_str(a.join("many/d0/e0/f0.txt")), "changed on B\n");
    // Only that entry crossed (640 bytes in all when written): the entries
    // recorded early are not numbered again after it, to be sent again
    // (60 of them cost about 7 KB).
    assert!(wire(&j) < 2_000, "{} bytes on the wire", wire(&j));
    chmod(a.join("many/d1"), 0o755);
    chmod(b.join("many/d1"), 0o755);
}

/// A first sync with a remote replica, planned two paths at a time: the
/// remote gives its index in pages (`GetEntriesFrom`), and both trees end
/// the same, with a second sync that has nothing to do.
#[test]
fn a_first_sync_with_a_remote_in_slices() {
    let t = setup(&["A", "B"]);
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    for i in 0..9 {
        write(a.join(format!("a/{i}.txt")), format!("a {i}\n"));
        write(b.join(format!("b/{i}.txt")), format!("b {i}\n"));
    }
    write(a.join("both.txt"), "from A\n");
    write(b.join("both.txt"), "from B\n");
    let (r, j) = rsync_json(t.path(), &["--slice", "2", "A", "host:B"]);
    r.expect_code(1);
    assert_eq!(j["conflicts"].as_array().unwrap().len(), 1, "{}", r.stdout);
    assert!(j["errors"].as_array().unwrap().is_empty(), "{}", r.stdout);
    assert_same_tree(&a, &b);
    let (r, j) = rsync_json(t.path(), &["--slice", "2", "A", "host:B"]);
    r.expect_code(0);
    assert_clean(&r, &j);
    assert_eq!(j["created"], 0, "{}", r.stdout);
}
