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

/// CPU time (clock ticks) process `pid` has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command's closing parenthesis: utime is the
    // 12th of them, stime the 13th.
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// A folder paused while a sync with a peer that is down waits on its
/// back-off rests (its task does not loop), and a revert of it is
/// refused at once, saying to resume it first.
#[test]
fn a_paused_folder_rests_and_refuses_actions() {
    let (a, b, fa, _fb) = synced_pair();
    b.term();
    std::fs::write(fa.join("while-b-is-down.txt"), "x").unwrap();
    wait_for("a to see b down", &[&a], || {
        a.status()
            .is_some_and(|s| s["peers"][0]["state"] == "disconnected")
    });
    a.ok(&["pause", "docs"]);
    wait_for("docs paused", &[&a], || folder_state(&a) == "paused");
    std::thread::sleep(Duration::from_secs(1));
    let before = cpu_ticks(a.pid());
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_ticks(a.pid()) - before;
    // (A loop that does not wait uses all of a core: 300 ticks in 3 s.)
    assert!(
        used < 100,
        "the paused folder's daemon used {used} ticks in 3 s"
    );
    let out = a.run(&["folder", "revert", "docs"]);
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("paused") || e.contains("receive-only"), "{e}");
}
