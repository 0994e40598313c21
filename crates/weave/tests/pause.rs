//! `weave pause` and `weave resume`, of a folder and of a peer, while
//! the daemons run: nothing moves while paused, everything converges
//! once resumed, and the status says paused.

mod common;

use common::daemon::*;
use std::time::Duration;

fn folder_state(d: &Device) -> String {
    d.status()
        .and_then(|s| s["folders"][0]["state"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn peer_state(d: &Device) -> String {
    d.status()
        .and_then(|s| s["peers"][0]["state"].as_str().map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn a_paused_folder_moves_nothing_until_resumed() {
    let (a, b, fa, fb) = synced_pair();
    a.ok(&["pause", "docs"]);
    wait_for("a's folder paused", &[&a, &b], || {
        folder_state(&a) == "paused"
    });
    std::fs::write(fa.join("from-a.txt"), "a").unwrap();
    std::fs::write(fb.join("from-b.txt"), "b").unwrap();
    // b's change is refused by a, and said so on b.
    wait_for("b told a's folder is paused", &[&a, &b], || {
        b.status().is_some_and(|s| {
            s["folders"][0]["notices"]
                .to_string()
                .contains("paused on a")
        })
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(read(&fb.join("from-a.txt")).is_none());
    assert!(read(&fa.join("from-b.txt")).is_none());
    a.run(&["pause", "docs"]); // already paused: said, not an error
    a.ok(&["resume", "docs"]);
    wait_for("both files on both", &[&a, &b], || {
        read(&fb.join("from-a.txt")).is_some() && read(&fa.join("from-b.txt")).is_some()
    });
    assert_ne!(folder_state(&a), "paused");
}

#[test]
fn a_paused_peer_is_cut_off_until_resumed() {
    let (a, b, fa, fb) = synced_pair();
    a.ok(&["pause", "--peer", "b"]);
    wait_for("b paused on a", &[&a, &b], || peer_state(&a) == "paused");
    std::fs::write(fa.join("from-a.txt"), "a").unwrap();
    std::fs::write(fb.join("from-b.txt"), "b").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(read(&fb.join("from-a.txt")).is_none());
    assert!(read(&fa.join("from-b.txt")).is_none());
    assert_eq!(peer_state(&a), "paused");
    a.ok(&["resume", "--peer", "b"]);
    wait_for("both files on both", &[&a, &b], || {
        read(&fb.join("from-a.txt")).is_some() && read(&fa.join("from-b.txt")).is_some()
    });
    // What cannot be paused is said.
    let out = a.run(&["pause", "nosuch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no folder has the id"));
    let out = a.run(&["pause"]);
    assert_eq!(out.status.code(), Some(2));
}
