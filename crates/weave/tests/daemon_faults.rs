//! `weave daemon` under a new user's faults, with real daemons on
//! 127.0.0.1: a folder's directory removed and made again while the
//! daemon runs.

use std::path::Path;
use std::time::Duration;

mod common;

use common::daemon::{conflict_copies, read, wait_for, Device};

/// Folder `id`'s status on `d`, when its daemon answers.
fn folder(d: &Device, id: &str) -> Option<serde_json::Value> {
    d.status()?["folders"]
        .as_array()?
        .iter()
        .find(|f| f["id"] == id)
        .cloned()
}

/// Two devices that know each other.
fn two() -> (Device, Device) {
    let (a, b) = (Device::new("a"), Device::new("b"));
    a.knows(&b);
    b.knows(&a);
    (a, b)
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
