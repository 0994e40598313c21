//! Regression tests for bugs found in review, each driving the real binary.

use std::fs;
use std::path::Path;
use std::process::Output;

fn weave(dir: &Path, args: &[&str]) -> Output {
    assert_cmd::Command::cargo_bin("weave")
        .unwrap()
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn setup() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    fs::create_dir(t.path().join("A")).unwrap();
    fs::create_dir(t.path().join("B")).unwrap();
    t
}

fn set_mtime(p: &Path, secs: u64) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(t))
        .unwrap();
}

fn all_contents(root: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for e in fs::read_dir(root).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            out.push(fs::read(e.path()).unwrap());
        }
    }
    out
}

/// A conflict on a file whose name is near the 255-byte limit keeps both
/// versions (the copy's name is shortened, never too long to be written).
#[test]
fn conflicts_on_long_names_keep_both_versions() {
    let t = setup();
    let name = format!("{}.txt", "n".repeat(220));
    fs::write(t.path().join("A").join(&name), "base").unwrap();
    ok(&weave(t.path(), &["sync", "A", "B"]));
    fs::write(t.path().join("A").join(&name), "A's precious edit").unwrap();
    set_mtime(&t.path().join("A").join(&name), 1_600_000_000);
    fs::write(t.path().join("B").join(&name), "B's edit").unwrap();
    let o = weave(t.path(), &["sync", "A", "B"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for r in ["A", "B"] {
        let c = all_contents(&t.path().join(r));
        assert!(
            c.contains(&b"A's precious edit".to_vec()),
            "{r} lost A's edit"
        );
        assert!(c.contains(&b"B's edit".to_vec()), "{r} lost B's edit");
    }
    ok(&weave(t.path(), &["sync", "A", "B"]));
}

/// A replica seeded with `cp -a` (state directory included) gets its own
/// identity, and changes on either side propagate.
#[test]
fn a_copied_replica_gets_its_own_identity() {
    let t = setup();
    fs::remove_dir(t.path().join("B")).unwrap();
    fs::write(t.path().join("A/x"), "v1").unwrap();
    fs::create_dir(t.path().join("Z")).unwrap();
    ok(&weave(t.path(), &["sync", "A", "Z"]));
    let st = std::process::Command::new("cp")
        .args(["-a", "A", "B"])
        .current_dir(t.path())
        .status()
        .unwrap();
    assert!(st.success());
    fs::write(t.path().join("B/x"), "B edit").unwrap();
    let o = weave(t.path(), &["sync", "A", "B"]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("new identity"));
    assert_eq!(fs::read_to_string(t.path().join("A/x")).unwrap(), "B edit");
}

/// A nested replica's state directory is never copied into other replicas.
#[test]
fn nested_state_directories_are_not_synced() {
    let t = setup();
    fs::create_dir_all(t.path().join("A/sub")).unwrap();
    fs::create_dir(t.path().join("C")).unwrap();
    fs::write(t.path().join("A/sub/x"), "x").unwrap();
    ok(&weave(t.path(), &["sync", "A/sub", "C"]));
    assert!(t.path().join("A/sub/.weave").is_dir());
    ok(&weave(t.path(), &["sync", "A", "B"]));
    assert!(t.path().join("B/sub/x").is_file());
    assert!(
        !t.path().join("B/sub/.weave").exists(),
        "A/sub's state was copied into B"
    );
}

/// Paths skipped by one sync's ignore patterns still sync later: the
/// "nothing changed" shortcut holds only for the same patterns.
#[test]
fn ignored_paths_sync_once_no_longer_ignored() {
    let t = setup();
    fs::create_dir(t.path().join("C")).unwrap();
    fs::write(t.path().join("A/x"), "v1").unwrap();
    ok(&weave(t.path(), &["sync", "A", "B", "C"]));
    fs::write(t.path().join("A/x"), "v2").unwrap();
    ok(&weave(t.path(), &["sync", "A", "C"]));
    ok(&weave(t.path(), &["sync", "--ignore", "x", "A", "B"]));
    assert_eq!(fs::read_to_string(t.path().join("B/x")).unwrap(), "v1");
    let o = weave(t.path(), &["sync", "--json", "A", "B"]);
    ok(&o);
    assert!(
        !unchanged(&o),
        "the shortcut hid a path the last sync ignored"
    );
    assert_eq!(fs::read_to_string(t.path().join("B/x")).unwrap(), "v2");
    // Now nothing changed, under the same patterns: nothing is planned.
    let o = weave(t.path(), &["sync", "--json", "A", "B"]);
    assert!(unchanged(&o));
}

fn unchanged(o: &Output) -> bool {
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["unchanged"].as_bool().unwrap()
}

/// The no-change shortcut is taken once replicas are in sync, and not
/// after any change on any side.
#[test]
fn unchanged_replicas_are_not_planned_again() {
    let t = setup();
    fs::create_dir(t.path().join("C")).unwrap();
    fs::write(t.path().join("A/x"), "v1").unwrap();
    let o = weave(t.path(), &["sync", "--json", "A", "B", "C"]);
    ok(&o);
    assert!(!unchanged(&o));
    let o = weave(t.path(), &["sync", "--json", "A", "B", "C"]);
    assert!(unchanged(&o));
    let o = weave(t.path(), &["sync", "--json", "A", "B"]);
    assert!(unchanged(&o), "a subset of replicas that synced together");
    fs::write(t.path().join("C/y"), "new").unwrap();
    let o = weave(t.path(), &["sync", "--json", "A", "B"]);
    assert!(unchanged(&o), "C is not part of this sync");
    let o = weave(t.path(), &["sync", "--json", "B", "C"]);
    assert!(!unchanged(&o));
    assert!(t.path().join("B/y").exists());
    let o = weave(t.path(), &["sync", "--json", "A", "B"]);
    assert!(!unchanged(&o), "B changed since A and B last synced");
    assert!(t.path().join("A/y").exists());
}

/// A state directory copied from another replica (over an existing one)
/// is recognised and the replica takes a new identity.
#[test]
fn a_state_copied_over_another_replica_is_rekeyed() {
    let t = setup();
    fs::write(t.path().join("A/x"), "x").unwrap();
    ok(&weave(t.path(), &["sync", "A", "B"]));
    fs::copy(
        t.path().join("A/.weave/index.redb"),
        t.path().join("B/.weave/index.redb"),
    )
    .unwrap();
    let o = weave(t.path(), &["sync", "A", "B"]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("new identity"));
}

/// Runs weave as an unprivileged user: as `nobody` through `setpriv` when
/// the tests run as root (root ignores permission bits), else as is.
/// None if that is not possible here.
fn weave_unprivileged(dir: &Path, args: &[&str]) -> Option<Output> {
    let bin = assert_cmd::cargo::cargo_bin("weave");
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let mut cmd = if is_root {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin);
        c
    } else {
        std::process::Command::new(&bin)
    };
    let out = cmd.current_dir(dir).args(args).output().ok()?;
    if is_root && out.status.code() == Some(127) {
        return None;
    }
    Some(out)
}

/// A tree the unprivileged user owns.
fn owned_setup() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o777)).unwrap();
    for r in ["A", "B"] {
        fs::create_dir(t.path().join(r)).unwrap();
    }
    t
}

fn chown_all(root: &Path) {
    // Best effort: only possible (and needed) as root.
    let _ = std::process::Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(root)
        .status();
}

/// A file that cannot be read is reported with its path, skipped, and
/// the rest of the sync goes on (exit 1); it syncs once readable.
#[test]
fn unreadable_files_are_reported_and_skipped_for_real() {
    use std::os::unix::fs::PermissionsExt;
    let t = owned_setup();
    fs::write(t.path().join("A/good.txt"), "good").unwrap();
    fs::write(t.path().join("A/secret.txt"), "secret").unwrap();
    chown_all(t.path());
    fs::set_permissions(
        t.path().join("A/secret.txt"),
        fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    let Some(o) = weave_unprivileged(t.path(), &["sync", "A", "B"]) else {
        eprintln!("skipped: cannot run weave as an unprivileged user here");
        return;
    };
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("secret.txt") && stderr.contains("cannot read"),
        "{stderr}"
    );
    assert_eq!(
        fs::read_to_string(t.path().join("B/good.txt")).unwrap(),
        "good"
    );
    assert!(!t.path().join("B/secret.txt").exists());
    fs::set_permissions(
        t.path().join("A/secret.txt"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let o = weave_unprivileged(t.path(), &["sync", "A", "B"]).unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        fs::read_to_string(t.path().join("B/secret.txt")).unwrap(),
        "secret"
    );
}

/// Files inside read-only directories are updated, created and removed,
/// and the directories stay read-only.
#[test]
fn read_only_directories_still_sync() {
    use std::os::unix::fs::PermissionsExt;
    let t = owned_setup();
    fs::create_dir(t.path().join("A/ro")).unwrap();
    fs::write(t.path().join("A/ro/f"), "1").unwrap();
    fs::write(t.path().join("A/ro/gone"), "x").unwrap();
    chown_all(t.path());
    let Some(o) = weave_unprivileged(t.path(), &["sync", "A", "B"]) else {
        eprintln!("skipped: cannot run weave as an unprivileged user here");
        return;
    };
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    fs::write(t.path().join("A/ro/f"), "2").unwrap();
    fs::write(t.path().join("A/ro/new"), "n").unwrap();
    fs::remove_file(t.path().join("A/ro/gone")).unwrap();
    chown_all(t.path());
    for r in ["A", "B"] {
        fs::set_permissions(
            t.path().join(r).join("ro"),
            fs::Permissions::from_mode(0o555),
        )
        .unwrap();
    }
    let o = weave_unprivileged(t.path(), &["sync", "A", "B"]).unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(fs::read_to_string(t.path().join("B/ro/f")).unwrap(), "2");
    assert_eq!(fs::read_to_string(t.path().join("B/ro/new")).unwrap(), "n");
    assert!(!t.path().join("B/ro/gone").exists());
    let mode = fs::metadata(t.path().join("B/ro"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o555);
    for r in ["A", "B"] {
        fs::set_permissions(
            t.path().join(r).join("ro"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// Directory modes are never changed through a symlink, even when the
/// path of a read-only directory became a symlink out of the replica.
#[test]
fn modes_are_never_set_through_symlinks() {
    let t = setup();
    fs::create_dir_all(t.path().join("outside/sub")).unwrap();
    set_mode(&t.path().join("outside/sub"), 0o755);
    fs::create_dir_all(t.path().join("A/p/sub")).unwrap();
    fs::write(t.path().join("A/p/sub/f"), "f").unwrap();
    set_mode(&t.path().join("A/p/sub"), 0o555);
    ok(&weave(t.path(), &["sync", "A", "B"]));
    assert_eq!(mode_of(&t.path().join("B/p/sub")), 0o555);
    set_mode(&t.path().join("A/p/sub"), 0o755);
    fs::remove_dir_all(t.path().join("A/p")).unwrap();
    std::os::unix::fs::symlink(t.path().join("outside"), t.path().join("A/p")).unwrap();
    let o = weave(t.path(), &["sync", "A", "B"]);
    ok(&o);
    assert!(fs::symlink_metadata(t.path().join("B/p"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        mode_of(&t.path().join("outside/sub")),
        0o755,
        "chmod went through the symlink"
    );
}

/// Ignore patterns are compared in order: `!keep.log` after `*.log`
/// un-ignores, before it does not.
#[test]
fn the_order_of_ignore_patterns_matters_to_the_shortcut() {
    let t = setup();
    fs::write(t.path().join("A/keep.log"), "k").unwrap();
    ok(&weave(
        t.path(),
        &[
            "sync",
            "--ignore",
            "!keep.log",
            "--ignore",
            "*.log",
            "A",
            "B",
        ],
    ));
    assert!(!t.path().join("B/keep.log").exists());
    let o = weave(
        t.path(),
        &[
            "sync",
            "--json",
            "--ignore",
            "*.log",
            "--ignore",
            "!keep.log",
            "A",
            "B",
        ],
    );
    ok(&o);
    assert!(!unchanged(&o));
    assert!(t.path().join("B/keep.log").exists());
}

/// A dry run writes nothing to weave's state, not even a new identity.
#[test]
fn dry_runs_persist_nothing() {
    let t = setup();
    fs::write(t.path().join("A/x"), "x").unwrap();
    ok(&weave(t.path(), &["sync", "A", "B"]));
    let st = std::process::Command::new("cp")
        .args(["-a", "B", "C"])
        .current_dir(t.path())
        .status()
        .unwrap();
    assert!(st.success());
    for _ in 0..2 {
        let o = weave(t.path(), &["sync", "-n", "A", "C"]);
        ok(&o);
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("new identity"),
            "the dry run re-keyed for good"
        );
    }
}
