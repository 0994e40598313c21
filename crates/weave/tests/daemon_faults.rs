//! `weave daemon` under a new user's faults, with real daemons on
//! 127.0.0.1: a folder's directory removed and made again while the
//! daemon runs, local changes in a receive-only folder and `weave folder
//! revert`, and `weave folder override` of a send-only folder's peers.

use std::path::Path;
use std::time::Duration;

mod common;

use common::daemon::{conflict_copies, now_ms, read, synced_pair, two, wait_for, Device};

/// Folder `id`'s status on `d`, when its daemon answers.
fn folder(d: &Device, id: &str) -> Option<serde_json::Value> {
    d.folder_status(id)
}

fn write(p: &Path, s: &str) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(p, s).unwrap();
}

#[test]
fn a_folder_root_removed_and_made_again_is_watched_again_and_deletes_nothing() {
    let (a, b) = two();
    let fa = a.folder("docs", "docs", &[&b], &[]);
    let fb = b.folder("docs", "docs", &[&a], &[]);
    write(&fa.join("kept.txt"), "on both");
    write(&fa.join("sub/deep.txt"), "deep");
    a.start();
    b.start();
    let all = [&a, &b];
    wait_for("a's files on b", &all, || {
        read(&fb.join("sub/deep.txt")).as_deref() == Some("deep")
    });
    // The directory goes while a runs: a says so, and its peer loses
    // nothing.
    std::fs::remove_dir_all(&fa).unwrap();
    wait_for(
        "a's status to say the folder's directory is missing",
        &all,
        || {
            folder(&a, "docs").is_some_and(|f| {
                f["state"] == "error"
                    && f["error"]
                        .as_str()
                        .unwrap_or("")
                        .contains("not a directory")
            })
        },
    );
    // A change on b meanwhile: b's sync with a fails, and is retried.
    write(
        &fb.join("while-gone.txt"),
        "made on b while a's folder was gone",
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(read(&fb.join("kept.txt")).as_deref(), Some("on both"));
    assert_eq!(read(&fb.join("sub/deep.txt")).as_deref(), Some("deep"));
    // Made again: refilled from b, and watched: a new file goes out.
    std::fs::create_dir(&fa).unwrap();
    wait_for("a refilled from b", &all, || {
        read(&fa.join("kept.txt")).as_deref() == Some("on both")
            && read(&fa.join("sub/deep.txt")).as_deref() == Some("deep")
            && fa.join("while-gone.txt").exists()
    });
    write(&fa.join("after.txt"), "made after the directory came back");
    wait_for("a's new file on b", &all, || {
        read(&fb.join("after.txt")).as_deref() == Some("made after the directory came back")
    });
    // Removed and made again at once (the new directory may even get the
    // old one's inode number): still noticed, refilled and watched.
    std::fs::remove_dir_all(&fa).unwrap();
    std::fs::create_dir(&fa).unwrap();
    wait_for("a refilled again", &all, || {
        fa.join("after.txt").exists() && fa.join("sub/deep.txt").exists()
    });
    write(&fa.join("again.txt"), "made after the second time");
    wait_for("a's second new file on b", &all, || {
        fb.join("again.txt").exists()
    });
    // Nothing of b's was deleted on the way.
    for p in ["kept.txt", "sub/deep.txt", "while-gone.txt", "after.txt"] {
        assert!(fb.join(p).exists(), "{p} is gone from b\n{}", a.log());
    }
    assert!(conflict_copies(&fb).is_empty());
    wait_for("a's status to be fine again", &all, || {
        folder(&a, "docs").is_some_and(|f| f["state"] == "idle" && f["error"].is_null())
    });
}

#[test]
fn a_receive_only_folder_keeps_local_deletes_and_edits_until_reverted() {
    let (a, b) = two();
    let fa = a.folder("docs", "docs", &[&b], &[]);
    let fb = b.folder("docs", "docs", &[&a], &["--mode", "receive-only"]);
    write(&fa.join("one.txt"), "a's one");
    write(&fa.join("two.txt"), "a's two");
    write(&fa.join("dir/three.txt"), "a's three");
    // Without a daemon, revert says how to start one.
    let out = b.run(&["folder", "revert", "docs"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("start one with `weave daemon`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    a.start();
    b.start();
    let all = [&a, &b];
    wait_for("a's files on b", &all, || {
        fb.join("one.txt").exists()
            && fb.join("two.txt").exists()
            && fb.join("dir/three.txt").exists()
    });
    // b deletes a file and a directory, edits one, makes one.
    std::fs::remove_file(fb.join("one.txt")).unwrap();
    std::fs::remove_dir_all(fb.join("dir")).unwrap();
    write(&fb.join("two.txt"), "b's edit");
    write(&fb.join("mine.txt"), "b's own");
    let listed = |want: &[&str]| {
        folder(&b, "docs").is_some_and(|f| {
            let paths = f["local_change_paths"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            want.iter().all(|p| paths.iter().any(|x| x == p))
        })
    };
    wait_for("b's status to list its edit and new file", &all, || {
        listed(&["two.txt", "mine.txt"])
    });
    // a's later changes still arrive, but not into what b changed (its
    // deleted directory included).
    write(&fa.join("four.txt"), "a's four");
    write(&fa.join("one.txt"), "a's one, edited");
    write(&fa.join("dir/five.txt"), "a's five");
    wait_for("a's new file on b", &all, || fb.join("four.txt").exists());
    // A delete used to be undone within a second.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!fb.join("one.txt").exists(), "b's delete was undone");
    assert!(!fb.join("dir").exists(), "b's deleted directory came back");
    assert!(
        listed(&["one.txt", "two.txt", "mine.txt", "dir", "dir/three.txt"]),
        "{:?}",
        folder(&b, "docs")
    );
    assert_eq!(folder(&b, "docs").unwrap()["local_changes"], 5);
    assert_eq!(read(&fb.join("two.txt")).as_deref(), Some("b's edit"));
    assert_eq!(read(&fb.join("mine.txt")).as_deref(), Some("b's own"));
    // Nothing of b's reached a.
    assert_eq!(read(&fa.join("two.txt")).as_deref(), Some("a's two"));
    assert!(fa.join("dir/three.txt").exists());
    assert!(!fa.join("mine.txt").exists());
    let text = b.ok(&["status"]);
    assert!(text.contains("changed here: "), "{text}");
    // The wrong command for the mode says which one is meant.
    let out = b.run(&["folder", "override", "docs"]);
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        said.contains("folder docs is receive-only here") && said.contains("send-only"),
        "{said}"
    );
    // Revert: b holds a's versions again, and its own file is gone (into
    // its version history).
    let out = b.run(&["folder", "revert", "docs"]);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{said}");
    assert!(said.contains("local changes reverted"), "{said}");
    assert_eq!(
        read(&fb.join("one.txt")).as_deref(),
        Some("a's one, edited")
    );
    assert_eq!(read(&fb.join("two.txt")).as_deref(), Some("a's two"));
    assert_eq!(
        read(&fb.join("dir/three.txt")).as_deref(),
        Some("a's three")
    );
    assert_eq!(read(&fb.join("dir/five.txt")).as_deref(), Some("a's five"));
    assert!(!fb.join("mine.txt").exists());
    wait_for("b's status to list no local change", &all, || {
        folder(&b, "docs").is_some_and(|f| f["local_changes"] == 0)
    });
    // a never moved, and nobody made a conflict copy.
    assert_eq!(read(&fa.join("two.txt")).as_deref(), Some("a's two"));
    assert!(!fa.join("mine.txt").exists());
    assert!(conflict_copies(&fa).is_empty() && conflict_copies(&fb).is_empty());
    // Later changes on a arrive as before.
    write(&fa.join("two.txt"), "a's two, edited after the revert");
    wait_for("a's edit after the revert on b", &all, || {
        read(&fb.join("two.txt")).as_deref() == Some("a's two, edited after the revert")
    });
}

#[test]
fn override_makes_a_send_only_folders_versions_win_on_every_device() {
    // a (send-only) - b - c: what b changed has reached c too, so b's
    // versions must lose on c as well.
    let (a, b, c) = (Device::new("a"), Device::new("b"), Device::new("c"));
    for (x, y) in [(&a, &b), (&b, &a), (&b, &c), (&c, &b)] {
        x.knows(y);
    }
    let fa = a.folder("docs", "docs", &[&b], &["--mode", "send-only"]);
    let fb = b.folder("docs", "docs", &[&a, &c], &[]);
    let fc = c.folder("docs", "docs", &[&b], &[]);
    write(&fa.join("x.txt"), "a's x");
    write(&fa.join("y.txt"), "a's y");
    a.start();
    b.start();
    c.start();
    let all = [&a, &b, &c];
    wait_for("a's files on c", &all, || {
        fc.join("x.txt").exists() && fc.join("y.txt").exists()
    });
    write(&fb.join("x.txt"), "b's x");
    std::fs::remove_file(fb.join("y.txt")).unwrap();
    write(&fb.join("z/z.txt"), "b's z");
    wait_for("b's changes on c", &all, || {
        read(&fc.join("x.txt")).as_deref() == Some("b's x")
            && !fc.join("y.txt").exists()
            && fc.join("z/z.txt").exists()
    });
    assert_eq!(read(&fa.join("x.txt")).as_deref(), Some("a's x"));
    // Each device says what did not happen in its own words: a did not
    // take b's changes, by its rules (whichever ran the sync); b never
    // reads a's "here" as its own (it reads "a did not take" when it ran
    // the sync itself).
    let notices = |d: &Device| -> String { folder(d, "docs").unwrap()["notices"].to_string() };
    wait_for("the notice on a", &all, || {
        notices(&a).contains("not taken: this folder is send-only here")
    });
    assert!(!notices(&b).contains("send-only here"), "{}", notices(&b));
    // The wrong command for the mode says which one is meant.
    let out = a.run(&["folder", "revert", "docs"]);
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(said.contains("folder docs is send-only here"), "{said}");
    a.ok(&["folder", "override", "docs"]);
    // b holds a's versions at once, and c once b has passed them on.
    for (d, f) in [(&b, &fb), (&c, &fc)] {
        wait_for(&format!("a's versions on {}", d.name), &all, || {
            read(&f.join("x.txt")).as_deref() == Some("a's x")
                && read(&f.join("y.txt")).as_deref() == Some("a's y")
                && !f.join("z/z.txt").exists()
        });
    }
    // Resolved: the notices go.
    wait_for("the notices gone", &all, || {
        notices(&a) == "[]" && notices(&b) == "[]"
    });
    // It stays so: nothing brings b's versions back.
    std::thread::sleep(Duration::from_millis(1500));
    for f in [&fa, &fb, &fc] {
        assert_eq!(read(&f.join("x.txt")).as_deref(), Some("a's x"));
        assert_eq!(read(&f.join("y.txt")).as_deref(), Some("a's y"));
        assert!(!f.join("z/z.txt").exists());
        assert!(conflict_copies(f).is_empty());
    }
    // Later edits on b meet a's versions as ordinary changes.
    write(&fb.join("x.txt"), "b's x again");
    wait_for("b's new edit on c", &all, || {
        read(&fc.join("x.txt")).as_deref() == Some("b's x again")
    });
    assert_eq!(read(&fa.join("x.txt")).as_deref(), Some("a's x"));
}

/// A sync that goes through but for a path (here something in the way on
/// the receiver that weave does not replace: a FIFO) is not taken as done:
/// both folders show the error, the sync is tried again with back-off,
/// and once the path is free the file arrives and the error clears.
#[test]
fn a_path_that_fails_is_retried_and_shown_until_it_goes_through() {
    let (a, b) = (Device::new("a"), Device::new("b"));
    a.knows(&b);
    b.knows(&a);
    let fa = a.folder("docs", "docs", &[&b], &[]);
    let fb = b.folder("docs", "docs", &[&a], &[]);
    std::fs::create_dir_all(&fb).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(fb.join("x"))
        .status()
        .unwrap();
    assert!(made.success());
    a.start();
    b.start();
    std::fs::write(fa.join("ok"), "fine").unwrap();
    std::fs::write(fa.join("x"), "blocked on b").unwrap();
    wait_for("the other file on b", &[&a, &b], || {
        read(&fb.join("ok")).is_some()
    });
    let a_folder_error = || {
        folder(&a, "docs").and_then(|f| {
            (f["state"] == "error").then(|| f["error"].as_str().unwrap_or("").to_string())
        })
    };
    wait_for("a to show the failed path as an error", &[&a, &b], || {
        a_folder_error().is_some_and(|e| e.contains("x:") && e.contains("tried again"))
    });
    wait_for("b to show what was not done there", &[&a, &b], || {
        folder(&b, "docs").is_some_and(|f| {
            f["state"] == "error"
                && f["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("from a not done here") && e.contains("x:"))
        })
    });
    std::fs::remove_file(fb.join("x")).unwrap();
    wait_for("the file once the path is free", &[&a, &b], || {
        read(&fb.join("x")).as_deref() == Some("blocked on b")
    });
    for d in [&a, &b] {
        wait_for("the errors to clear", &[&a, &b], || {
            folder(d, "docs").is_some_and(|f| f["state"] == "idle" && f["error"].is_null())
        });
    }
}

/// The device receiving a large file shows that it is syncing, with the
/// bytes still to come, a rate and the time left, while the other one
/// sends it; neither says it is 100% in sync until the file is there.
#[test]
fn the_receiving_side_shows_it_is_syncing_and_the_bytes_to_go() {
    let (a, b, fa, fb) = synced_pair();
    let big: Vec<u8> = (0..96u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(fa.join("big.bin"), &big).unwrap();
    let mut seen = None;
    let mut moving = false;
    let mut receiving: Option<(std::time::Instant, std::time::Instant)> = None;
    wait_for("b to show it receives", &[&a, &b], || {
        if std::fs::metadata(fb.join("big.bin")).is_ok_and(|m| m.len() == big.len() as u64) {
            return true;
        }
        for d in [&a, &b] {
            let Some(f) = folder(d, "docs") else { continue };
            if f["state"] == "syncing" && f["bytes_to_go"].as_u64().unwrap_or(0) > 0 {
                let pct = f["in_sync_percent"].as_f64().unwrap_or(100.0);
                assert!(
                    pct < 100.0,
                    "{} shows {pct}% in sync while syncing: {f}",
                    d.name
                );
            }
        }
        if let Some(f) = folder(&b, "docs") {
            let to_go = f["bytes_to_go"].as_u64().unwrap_or(0);
            if f["state"] == "syncing" && to_go > 0 {
                seen = Some(to_go);
                let now = std::time::Instant::now();
                receiving = Some((receiving.map_or(now, |(first, _)| first), now));
                moving |= f["rate"].as_u64().unwrap_or(0) > 0 && f["eta_secs"].is_u64();
            }
        }
        false
    });
    let to_go = seen.expect("b never showed syncing with bytes to go while receiving");
    assert!(to_go <= big.len() as u64, "{to_go}");
    // A rate takes a few samples: it must show once b has been seen
    // receiving for over a second.
    let long = receiving.is_some_and(|(first, last)| last - first > Duration::from_secs(1));
    assert!(
        moving || !long,
        "b never showed a rate and time left while receiving"
    );
    wait_for("b idle once it has the file", &[&a, &b], || {
        folder(&b, "docs").is_some_and(|f| f["state"] == "idle" && f["bytes_to_go"] == 0)
    });
}

/// A small file system mounted for a test, unmounted (lazily: a daemon
/// may still hold it) when the test ends, however it ends.
struct Mounted(std::path::PathBuf);

impl Mounted {
    /// A tmpfs of `size` at `at`; `None` when this process may not mount.
    fn tmpfs(at: &Path, size: &str) -> Option<Mounted> {
        if !rustix::process::geteuid().is_root() {
            return None;
        }
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mounted(at.to_path_buf()))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Issue 23's third fault: the receiver's disk fills up. The file that
/// did not fit is not taken as synced on either side: both show the
/// error and less than 100% in sync, the sync is tried again by itself,
/// and once there is room the file arrives and both are in sync again.
#[test]
fn a_full_disk_on_the_receiver_is_shown_on_both_sides_until_the_file_fits() {
    let (a, b) = (Device::new("a"), Device::new("b"));
    let Some(_disk) = Mounted::tmpfs(&b.root.join("disk"), "8m") else {
        eprintln!("skipped: mounting a small file system needs root");
        return;
    };
    a.knows(&b);
    b.knows(&a);
    let fa = a.folder("docs", "docs", &[&b], &[]);
    let fb = b.folder("docs", "disk/docs", &[&a], &[]);
    std::fs::create_dir_all(&fa).unwrap();
    std::fs::create_dir_all(&fb).unwrap();
    a.start();
    b.start();
    std::fs::write(fa.join("first"), "fits").unwrap();
    wait_for("the first file on b", &[&a, &b], || {
        read(&fb.join("first")).as_deref() == Some("fits")
    });
    // Fill b's disk but for a little, then send it more than that.
    let filler = b.root.join("disk/filler");
    let room = rustix::fs::statvfs(b.root.join("disk")).unwrap();
    let free = room.f_bavail * room.f_frsize;
    std::fs::write(&filler, vec![1u8; free.saturating_sub(256 << 10) as usize]).unwrap();
    let big: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(fa.join("big.bin"), &big).unwrap();
    // Which device's sync meets the full disk first is a matter of
    // timing: the file it could not write, or the index it could not
    // record, is named.
    let shows_error = |d: &Device| {
        folder(d, "docs").is_some_and(|f| {
            f["state"] == "error"
                && f["error"].as_str().is_some_and(|e| {
                    e.contains("big.bin") || e.contains("No space left") || e.contains("disk full")
                })
                && f["in_sync_percent"].as_f64().is_some_and(|p| p < 100.0)
        })
    };
    wait_for(
        "a to show that b could not take the file",
        &[&a, &b],
        || shows_error(&a),
    );
    wait_for("b to show what did not fit there", &[&a, &b], || {
        shows_error(&b)
    });
    assert!(read(&fb.join("big.bin")).is_none());
    // Over a few retries, neither takes it as done meanwhile: no moment
    // of idle with no error, or of 100% in sync.
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        for d in [&a, &b] {
            if let Some(f) = folder(d, "docs") {
                let settled = f["state"] == "idle" && f["error"].is_null();
                let whole = f["state"] != "syncing" && f["in_sync_percent"].as_f64() == Some(100.0);
                assert!(!settled && !whole, "{} takes the sync as done: {f}", d.name);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::remove_file(&filler).unwrap();
    wait_for("the file once there is room", &[&a, &b], || {
        std::fs::read(fb.join("big.bin")).is_ok_and(|got| got == big)
    });
    for d in [&a, &b] {
        wait_for("both in sync again, with no error", &[&a, &b], || {
            folder(d, "docs").is_some_and(|f| {
                f["state"] == "idle"
                    && f["error"].is_null()
                    && f["in_sync_percent"].as_f64() == Some(100.0)
            })
        });
    }
}

/// `weave history` and `weave restore` on a folder whose daemon runs,
/// while it receives a large file (it keeps the store busy): they wait
/// for it rather than fail with "Database already open", and a restore
/// in place is a local change the daemon spreads.
#[test]
fn history_and_restore_work_while_the_daemon_syncs() {
    let (a, b, fa, fb) = synced_pair();
    std::fs::write(fa.join("notes.txt"), "version one").unwrap();
    wait_for("the first version on b", &[&a, &b], || {
        read(&fb.join("notes.txt")).as_deref() == Some("version one")
    });
    std::fs::write(fa.join("notes.txt"), "version two!").unwrap();
    wait_for("the second version on b", &[&a, &b], || {
        read(&fb.join("notes.txt")).as_deref() == Some("version two!")
    });
    // b receives a large file, and replaces a file it has kept versions
    // of, while history and restore run.
    let big: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(fa.join("big.bin"), &big).unwrap();
    std::fs::write(fa.join("notes.txt"), "version three").unwrap();
    let notes = fb.join("notes.txt");
    let notes = notes.to_str().unwrap();
    let listed = b.run(&["history", "--json", notes]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let first = listed["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["size"] == 11)
        .unwrap_or_else(|| panic!("no kept version of 11 bytes: {listed}"))["version"]
        .to_string();
    let copy = b.root.join("old-notes.txt");
    b.ok(&[
        "restore",
        notes,
        "--version",
        &first,
        "--to",
        copy.to_str().unwrap(),
    ]);
    assert_eq!(read(&copy).as_deref(), Some("version one"));
    wait_for(
        "the large file and the third version on b",
        &[&a, &b],
        || {
            read(&fb.join("notes.txt")).as_deref() == Some("version three")
                && std::fs::metadata(fb.join("big.bin")).is_ok_and(|m| m.len() == big.len() as u64)
        },
    );
    // Back in place: a change of b's, which the daemons carry to a.
    b.ok(&["restore", notes, "--version", &first]);
    wait_for("the restored version on a", &[&a, &b], || {
        read(&fa.join("notes.txt")).as_deref() == Some("version one")
    });
}

/// A bucket remote for daemon folders: a `file://` bucket in a directory
/// of its own, with a passphrase file, polled every second.
struct BucketRemote {
    dir: tempfile::TempDir,
    url: String,
    pass: String,
}

impl BucketRemote {
    fn new() -> BucketRemote {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("bucket").display());
        let pass = dir.path().join("pass");
        std::fs::write(&pass, "a passphrase\n").unwrap();
        let pass = pass.to_str().unwrap().to_string();
        BucketRemote { dir, url, pass }
    }

    /// The options of `weave folder add` that give a folder this remote.
    fn args(&self) -> [&str; 6] {
        [
            "--remote",
            &self.url,
            "--poll",
            "1",
            "--passphrase-file",
            &self.pass,
        ]
    }

    /// Whether the bucket holds a version of file `name` (as `weave
    /// history --bucket`, run by `d`, lists them).
    fn holds(&self, d: &Device, name: &str) -> bool {
        let out = d.run(&[
            "history",
            "--json",
            "--bucket",
            &self.url,
            "--passphrase-file",
            &self.pass,
            name,
        ]);
        out.status.success()
            && serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .is_ok_and(|j| j["versions"].as_array().is_some_and(|v| !v.is_empty()))
    }
}

/// Two devices that are never on together keep a folder in sync through
/// a bucket remote (`weave folder add … --remote file:///…`): each daemon
/// pushes its changes and takes the other's when it runs. A wrong
/// passphrase is the folder's error, and nothing is written.
#[test]
fn daemons_never_on_together_sync_through_a_bucket_remote() {
    let (a, b) = (Device::new("a"), Device::new("b"));
    let r = BucketRemote::new();
    let (shared, bucket, remote) = (&r.dir, r.url.clone(), r.args());
    let fa = a.folder("docs", "docs", &[], &remote);
    let fb = b.folder("docs", "docs", &[], &remote);
    std::fs::create_dir_all(&fa).unwrap();
    std::fs::create_dir_all(&fb).unwrap();
    let synced_after = |d: &Device, t: u64| d.remote_synced_after("docs", t);
    let in_bucket = |name: &str| r.holds(&a, name);
    a.start();
    write(&fa.join("from-a.txt"), "written on a");
    wait_for("a's file in the bucket", &[&a], || in_bucket("from-a.txt"));
    a.term();
    b.start();
    wait_for("a's file on b", &[&b], || {
        read(&fb.join("from-a.txt")).as_deref() == Some("written on a")
    });
    write(&fb.join("from-b.txt"), "written on b");
    wait_for("b's file in the bucket", &[&b], || in_bucket("from-b.txt"));
    let t = now_ms();
    wait_for("b's status to say so", &[&b], || {
        synced_after(&b, t.saturating_sub(5_000))
    });
    b.term();
    a.start();
    wait_for("b's file on a", &[&a], || {
        read(&fa.join("from-b.txt")).as_deref() == Some("written on b")
    });
    a.term();
    // A device with the wrong passphrase shows it and takes nothing.
    let c = Device::new("c");
    let wrong = shared.path().join("wrong");
    std::fs::write(&wrong, "not it\n").unwrap();
    let fc = c.folder(
        "docs",
        "docs",
        &[],
        &[
            "--remote",
            bucket.as_str(),
            "--passphrase-file",
            wrong.to_str().unwrap(),
        ],
    );
    std::fs::create_dir_all(&fc).unwrap();
    c.start();
    wait_for("c to show the wrong passphrase", &[&c], || {
        folder(&c, "docs").is_some_and(|f| {
            f["state"] == "error"
                && f["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("wrong passphrase"))
        })
    });
    assert!(read(&fc.join("from-a.txt")).is_none());
    let objects = |d: &std::path::Path| std::fs::read_dir(d.join("bucket/logs")).unwrap().count();
    let logs = objects(shared.path());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(objects(shared.path()), logs, "c wrote to the bucket");
}

/// What a folder's bucket remote brings reaches its peers too: c pushes
/// to the bucket (a device no peer knows), a takes it from there, and a's
/// peer b gets it from a.
#[test]
fn what_a_bucket_remote_brings_reaches_the_peers() {
    let (a, b) = (Device::new("a"), Device::new("b"));
    let c = Device::new("c");
    a.knows(&b);
    b.knows(&a);
    let r = BucketRemote::new();
    let remote = r.args();
    let fc = c.folder("docs", "docs", &[], &remote);
    let fa = a.folder("docs", "docs", &[&b], &remote);
    let fb = b.folder("docs", "docs", &[&a], &[]);
    for d in [&fa, &fb, &fc] {
        std::fs::create_dir_all(d).unwrap();
    }
    c.start();
    write(&fc.join("from-c.txt"), "written on c");
    wait_for("c's file on the bucket", &[&c], || {
        r.holds(&c, "from-c.txt")
    });
    c.term();
    a.start();
    b.start();
    wait_for("c's file on a", &[&a, &b], || {
        read(&fa.join("from-c.txt")).is_some()
    });
    wait_for("c's file on b, through a", &[&a, &b], || {
        read(&fb.join("from-c.txt")).as_deref() == Some("written on c")
    });
}
