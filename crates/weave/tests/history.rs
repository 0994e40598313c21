//! Version history through the real binary: what a sync replaces or
//! deletes is kept, listed by `weave history`, brought back by
//! `weave restore`, pruned by retention (`weave retention`, `weave gc`).

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ok(cwd: &Path, args: &[&str]) -> Run {
    let r = weave(cwd, args);
    r.expect_code(0);
    r
}

fn versions(cwd: &Path, path: &str) -> Vec<serde_json::Value> {
    let j = ok(cwd, &["history", "--json", path]).json();
    j["versions"].as_array().unwrap().clone()
}

/// A, B synced with f = v1; then v2 and a deletion on A, each synced.
fn history_of_f() -> tempfile::TempDir {
    let t = setup(&["A", "B"]);
    let p = t.path();
    write_at(p.join("A/f"), "version one", at(1_600_000_000, 0));
    sync(p, &["A", "B"]).expect_code(0);
    write_at(p.join("A/f"), "version two!", at(1_600_000_100, 0));
    sync(p, &["A", "B"]).expect_code(0);
    fs::remove_file(p.join("A/f")).unwrap();
    sync(p, &["A", "B"]).expect_code(0);
    assert!(!p.join("B/f").exists());
    t
}

#[test]
fn replaced_and_deleted_files_are_kept_and_come_back() {
    let t = history_of_f();
    let p = t.path();
    let vs = versions(p, "B/f");
    assert_eq!(vs.len(), 2, "{vs:?}");
    assert_eq!(vs[0]["why"], "replaced");
    assert_eq!(vs[0]["size"], 11);
    assert_eq!(vs[1]["why"], "deleted");
    // The replica that deleted it has nothing to keep: its user did it.
    assert!(versions(p, "A/f").is_empty());
    ok(p, &["history", "B/f"]).stdout_has(&["VERSION", "replaced", "deleted"]);
    let d = ok(p, &["history", "--deleted", "--json", "B"]).json();
    assert_eq!(d["versions"][0]["path"], "f");
    // The newest version comes back in place, then syncs like any change.
    ok(p, &["restore", "B/f"]).stdout_has(&["restored f"]);
    assert_eq!(read_str(p.join("B/f")), "version two!");
    sync(p, &["A", "B"]).expect_code(0);
    assert_eq!(read_str(p.join("A/f")), "version two!");
    // An older one by id, elsewhere.
    let id = vs[0]["version"].to_string();
    ok(p, &["restore", "B/f", "--version", &id, "--to", "old.txt"]);
    assert_eq!(read_str(p.join("old.txt")), "version one");
    // --to never overwrites.
    weave(p, ["restore", "B/f", "--version", &id, "--to", "old.txt"])
        .expect_code(2)
        .stderr_has(&["already exists"]);
}

#[test]
fn a_restore_in_place_keeps_what_it_replaces() {
    let t = history_of_f();
    let p = t.path();
    write(p.join("B/f"), "made after the delete");
    let id = versions(p, "B/f")[0]["version"].to_string();
    ok(p, &["restore", "B/f", "--version", &id]);
    assert_eq!(read_str(p.join("B/f")), "version one");
    let vs = versions(p, "B/f");
    assert_eq!(vs.last().unwrap()["why"], "replaced by a restore");
    let id = vs.last().unwrap()["version"].to_string();
    ok(p, &["restore", "B/f", "--version", &id, "--to", "kept"]);
    assert_eq!(read_str(p.join("kept")), "made after the delete");
}

#[test]
fn a_deleted_directory_comes_back_as_it_was() {
    let t = setup(&["A", "B"]);
    let p = t.path();
    let old = at(1_600_000_000, 0);
    write_at(p.join("A/docs/a"), "a", old);
    write_at(p.join("A/docs/sub/c"), random_bytes(300_000, 4), old);
    write_at(p.join("A/docs/gone-before"), "x", old);
    sync(p, &["A", "B"]).expect_code(0);
    fs::remove_file(p.join("A/docs/gone-before")).unwrap();
    sync(p, &["A", "B"]).expect_code(0);
    let before = snapshot(&p.join("B/docs"));
    fs::remove_dir_all(p.join("A/docs")).unwrap();
    sync(p, &["A", "B"]).expect_code(0);
    assert!(!p.join("B/docs").exists());
    // As it was just before it was deleted: without the file deleted earlier.
    ok(p, &["restore", "B/docs"]);
    assert_eq!(snapshot(&p.join("B/docs")), before);
    sync(p, &["A", "B"]).expect_code(0);
    assert_same_tree(&p.join("A"), &p.join("B"));
    // Or elsewhere.
    ok(p, &["restore", "B/docs", "--at", "1s", "--to", "copy"]);
    assert_eq!(read(p.join("copy/sub/c")), random_bytes(300_000, 4));
}

#[test]
fn bad_restore_requests_are_refused_clearly() {
    let t = history_of_f();
    let p = t.path();
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["restore", "B/nothing"],
            &["no old versions", "history --deleted"],
        ),
        (&["restore", "B/f", "--version", "999"], &["no version 999"]),
        (
            &["restore", "B/f", "--at", "2001-01-01 00:00"],
            &["before its oldest version"],
        ),
        (&["restore", "B/f", "--at", "yesterday"], &["not a time"]),
        (
            &["restore", "/", "--version", "1"],
            &["not inside a weave replica"],
        ),
        (&["history", "/"], &["not inside a weave replica"]),
        (&["retention", "B", "--max-age", "soon"], &["not an age"]),
    ];
    for (args, words) in cases {
        let r = weave(p, *args);
        r.expect_code(2).stderr_has(words);
    }
    write(p.join("A/g"), "other");
    sync(p, &["A", "B"]).expect_code(0);
    write(p.join("A/g"), "other, changed");
    sync(p, &["A", "B"]).expect_code(0);
    let g = versions(p, "B/g")[0]["version"].to_string();
    weave(p, ["restore", "B/f", "--version", &g])
        .expect_code(2)
        .stderr_has(&["is of", "not of"]);
}

#[test]
fn retention_prunes_and_damage_is_named() {
    let t = setup(&["A", "B"]);
    let p = t.path();
    for i in 0..4u64 {
        write_at(
            p.join("A/f"),
            random_bytes(50_000, i),
            at(1_600_000_000 + i, 0),
        );
        write_at(
            p.join("A/g"),
            random_bytes(50_000, 10 + i),
            at(1_600_000_000 + i, 0),
        );
        sync(p, &["A", "B"]).expect_code(0);
    }
    assert_eq!(versions(p, "B/f").len(), 3);
    let r = ok(p, &["retention", "B", "--keep-last", "1", "--json"]).json();
    assert_eq!(r["keep_last"], 1);
    ok(p, &["gc", "B"]).stdout_has(&["dropped 4 versions"]);
    let f = versions(p, "B/f");
    assert_eq!(f.len(), 1);
    ok(p, &["gc", "--check", "B"]).stdout_has(&["verifies"]);
    // Damage in the store is named with the versions it affects.
    let packs = p.join("B/.weave/versions/packs");
    let pack = fs::read_dir(&packs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = fs::read(&pack).unwrap();
    bytes[100] ^= 0xff;
    fs::write(&pack, bytes).unwrap();
    let r = weave(p, ["gc", "--check", "--json", "B"]);
    r.expect_code(1);
    let damaged = r.json()["damaged"].as_array().unwrap().clone();
    assert_eq!(damaged.len(), 1);
    let hit = damaged[0]["versions"][0].to_string();
    let of = if versions(p, "B/f")[0]["version"] == damaged[0]["versions"][0] {
        "B/f"
    } else {
        "B/g"
    };
    weave(p, ["restore", of, "--version", &hit, "--to", "x"])
        .expect_code(2)
        .stderr_has(&["damaged"]);
    assert!(!p.join("x").exists());
}

/// Killed at any point of a restore, the target holds the old or the new
/// content (never a mix) and the store is intact; the next restore works.
#[test]
fn a_killed_restore_leaves_old_or_new() {
    let t = setup(&["A", "B"]);
    let p = t.path();
    let one = random_bytes(24 << 20, 1);
    let two = random_bytes(24 << 20, 2);
    write_at(p.join("A/big"), &one, at(1_600_000_000, 0));
    sync(p, &["A", "B"]).expect_code(0);
    write_at(p.join("A/big"), &two, at(1_600_000_100, 0));
    sync(p, &["A", "B"]).expect_code(0);
    let id = versions(p, "B/big")[0]["version"].to_string();
    let bin = assert_cmd::cargo::cargo_bin("weave");
    for delay_ms in [5u64, 40, 120] {
        let mut child = Command::new(&bin)
            .args(["restore", "B/big", "--version", &id])
            .current_dir(p)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        assert!(started.elapsed() < Duration::from_secs(60));
        let now = read(p.join("B/big"));
        assert!(
            now == one || now == two,
            "a mix after a kill at {delay_ms} ms"
        );
        ok(p, &["gc", "--check", "B"]);
        // Back to version two for the next round.
        if now == one {
            write(p.join("B/big"), &two);
        }
    }
    ok(p, &["restore", "B/big", "--version", &id, "--to", "last"]);
    assert_eq!(read(p.join("last")), one);
    // Nothing half-written stays behind once a sync has scanned.
    let _ = sync(p, &["A", "B"]);
    let left: Vec<String> = fs::read_dir(p.join("B"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".~weave-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A replica reached over ssh keeps its versions too.
#[test]
fn a_remote_replica_keeps_versions() {
    let t = setup(&["A", "B"]);
    let p = t.path();
    let rsh = p.join("rsh.sh");
    fs::write(&rsh, "#!/bin/sh\nshift\nexec sh -c \"$*\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&rsh, fs::Permissions::from_mode(0o755)).unwrap();
    let bin = assert_cmd::cargo::cargo_bin("weave");
    let remote = format!("host:{}", p.join("B").display());
    let args = |x: &'static str| -> Vec<String> {
        vec![
            "sync".into(),
            "--rsh".into(),
            rsh.display().to_string(),
            "--remote-weave".into(),
            bin.display().to_string(),
            x.into(),
            remote.clone(),
        ]
    };
    write_at(p.join("A/f"), "first", at(1_600_000_000, 0));
    weave(p, args("A")).expect_code(0);
    write_at(p.join("A/f"), "second", at(1_600_000_100, 0));
    weave(p, args("A")).expect_code(0);
    let vs = versions(p, "B/f");
    assert_eq!(vs.len(), 1);
    ok(p, &["restore", "B/f", "--to", "back"]);
    assert_eq!(read_str(p.join("back")), "first");
}

/// A backup replica takes in every change of the others, sends none of its
/// own, and keeps in its history what it had that they replace.
#[test]
fn a_backup_takes_changes_in_and_sends_none() {
    let t = setup(&["A", "B"]);
    let p = t.path();
    write(p.join("A/f"), "f from A");
    write(p.join("A/g"), "g from A");
    // B already holds things of its own.
    write(p.join("B/g"), "g as B had it");
    write(p.join("B/only-on-b/x"), "x, only on B");
    let (r, j) = sync_json(p, &["--backup", "B", "A", "B"]);
    r.expect_code(0);
    assert_eq!(j["in_sync"], true, "{}", r.stdout);
    let notes = j["notices"].to_string();
    assert!(notes.contains("backup"), "{notes}");
    assert!(!p.join("A/only-on-b").exists());
    assert_eq!(read_str(p.join("A/g")), "g from A");
    assert_same_tree(&p.join("A"), &p.join("B"));
    // What B had is in its history.
    let vs = versions(p, "B/g");
    assert_eq!(vs.len(), 1, "{vs:?}");
    ok(p, &["restore", "B/g", "--to", "g-of-b"]);
    assert_eq!(read_str(p.join("g-of-b")), "g as B had it");
    ok(p, &["restore", "B/only-on-b", "--to", "dir-of-b"]);
    assert_eq!(read_str(p.join("dir-of-b/x")), "x, only on B");

    // Changes on A keep flowing in; a local edit and a delete on B are
    // undone and never reach A.
    write_at(p.join("A/f"), "f, second version", at(1_700_000_000, 0));
    write_at(
        p.join("B/g"),
        "g edited on the backup",
        at(1_700_000_100, 0),
    );
    fs::remove_file(p.join("B/f")).unwrap();
    write(p.join("B/new-on-b"), "new on B");
    sync(p, &["--backup", "B", "A", "B"]).expect_code(0);
    assert_eq!(read_str(p.join("A/g")), "g from A");
    assert!(!p.join("A/new-on-b").exists());
    assert_eq!(read_str(p.join("B/f")), "f, second version");
    assert_same_tree(&p.join("A"), &p.join("B"));
    let gs = versions(p, "B/g");
    assert_eq!(gs.len(), 2, "{gs:?}");
    assert_eq!(versions(p, "B/new-on-b").len(), 1);
    // Deletions on A reach the backup; it keeps the file's last content.
    fs::remove_file(p.join("A/f")).unwrap();
    sync(p, &["--backup", "B", "A", "B"]).expect_code(0);
    assert!(!p.join("B/f").exists());
    let fs_ = versions(p, "B/f");
    assert_eq!(fs_.last().unwrap()["why"], "deleted");
    ok(p, &["restore", "B/f", "--to", "last-f"]);
    assert_eq!(read_str(p.join("last-f")), "f, second version");
    // A second run has nothing to do.
    sync(p, &["--backup", "B", "A", "B"])
        .expect_code(0)
        .stdout_has(&["already in sync"]);
}

#[test]
fn bad_backup_requests_are_refused_clearly() {
    let t = setup(&["A", "B"]);
    let p = t.path();
    write(p.join("A/f"), "f");
    sync(p, &["--backup", "C", "A", "B"])
        .expect_code(2)
        .stderr_has(&["--backup C", "names no replica"]);
    sync(p, &["--backup", "A", "--backup", "B", "A", "B"])
        .expect_code(2)
        .stderr_has(&["every replica", "backup"]);
    sync(p, &["--backup", "B", "--conflict", "prefer=B", "A", "B"])
        .expect_code(2)
        .stderr_has(&["prefer=", "backup"]);
    // Nothing was created by the refused runs.
    assert!(!p.join("A/.weave").exists());
    assert!(!p.join("B/.weave").exists());
    assert!(!p.join("B/f").exists());
}

/// Killed at any point of a prune, the store stays consistent (every
/// version it lists reads back and verifies, the kept ones byte for byte);
/// the next gc clears what the killed one left and ends where an
/// uninterrupted gc ends.
#[test]
fn a_killed_prune_leaves_a_consistent_store_and_the_next_gc_repairs_it() {
    let t = setup(&["A", "B"]);
    let p = t.path();
    const FILES: usize = 3;
    const SIZE: usize = 6 << 20;
    let mut data: Vec<Vec<u8>> = (0..FILES).map(|i| random_bytes(SIZE, i as u64)).collect();
    for (i, d) in data.iter().enumerate() {
        write(p.join(format!("A/f{i}")), d);
    }
    sync(p, &["A", "B"]).expect_code(0);
    // Six rounds of 2 MiB rewritten in each file: B keeps every old version.
    let mut newest_old: Vec<Vec<u8>> = Vec::new();
    for round in 0..6u64 {
        newest_old = data.clone();
        for (i, d) in data.iter_mut().enumerate() {
            let at = (round as usize * 613_000 + i * 100_000) % (SIZE - (2 << 20));
            let edit = random_bytes(2 << 20, 100 + round * 10 + i as u64);
            d[at..at + edit.len()].copy_from_slice(&edit);
            write(p.join(format!("A/f{i}")), &*d);
        }
        sync(p, &["A", "B"]).expect_code(0);
    }
    assert_eq!(versions(p, "B/f0").len(), 6);
    ok(p, &["retention", "B", "--keep-last", "1"]);
    let pristine = p.join("pristine");
    copy_tree(&p.join("B/.weave"), &pristine);

    // An uninterrupted gc, for its duration and its result.
    let started = Instant::now();
    ok(p, &["gc", "B"]);
    let full = started.elapsed();
    let clean_size = dir_size(&p.join("B/.weave/versions/packs"));
    assert!(clean_size > 0);

    let bin = assert_cmd::cargo::cargo_bin("weave");
    let mut kills = 0;
    for tenth in 1..10u32 {
        fs::remove_dir_all(p.join("B/.weave")).unwrap();
        copy_tree(&pristine, &p.join("B/.weave"));
        let mut child = Command::new(&bin)
            .args(["gc", "B"])
            .current_dir(p)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(full * tenth / 10);
        if child.try_wait().unwrap().is_none() {
            kills += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        // Consistent: everything listed reads back; the kept versions are
        // still there whatever the kill interrupted.
        ok(p, &["gc", "--check", "B"]);
        for (i, want) in newest_old.iter().enumerate() {
            let vs = versions(p, &format!("B/f{i}"));
            let newest = vs.last().expect("the newest version is kept");
            let dest = p.join(format!("restored-{tenth}-{i}"));
            ok(
                p,
                &[
                    "restore",
                    &format!("B/f{i}"),
                    "--version",
                    &newest["version"].to_string(),
                    "--to",
                    dest.to_str().unwrap(),
                ],
            );
            assert!(read(&dest) == *want, "f{i} restored wrong after a kill");
            fs::remove_file(&dest).unwrap();
        }
        // The next gc repairs: it ends where an uninterrupted one ends.
        ok(p, &["gc", "B"]);
        ok(p, &["gc", "--check", "B"]);
        assert_eq!(versions(p, "B/f0").len(), 1);
        assert_eq!(
            dir_size(&p.join("B/.weave/versions/packs")),
            clean_size,
            "leftovers of a gc killed at {tenth}/10 of its run"
        );
    }
    eprintln!("{kills} of 9 prunes killed while running ({full:?} uninterrupted)");
    assert!(kills >= 3, "only {kills} prunes were interrupted");
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            fs::copy(e.path(), dest).unwrap();
        }
    }
}

fn dir_size(d: &Path) -> u64 {
    fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}
