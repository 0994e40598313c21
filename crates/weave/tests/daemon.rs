//! `weave daemon`: real daemons on 127.0.0.1, each with its own config
//! directory, syncing over TLS while their folders change.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::daemon::{
    conflict_copies, read, synced_pair, two, wait_for, wait_within, weave, Device, WAIT,
};
use common::free_port;

#[test]
fn changes_reach_every_daemon_along_a_chain_and_deletes_follow() {
    let (a, b, c) = (Device::new("a"), Device::new("b"), Device::new("c"));
    // A and C do not know each other: B relays.
    a.knows(&b);
    b.knows(&a);
    b.knows(&c);
    c.knows(&b);
    let fa = a.folder("docs", "docs", &[&b], &[]);
    let fb = b.folder("docs", "docs", &[&a, &c], &[]);
    let fc = c.folder("docs", "docs", &[&b], &[]);
    std::fs::write(fa.join("before.txt"), "made before any daemon ran").unwrap();
    a.start();
    b.start();
    c.start();
    let all = [&a, &b, &c];
    wait_for("a's old file to reach c", &all, || {
        read(&fc.join("before.txt")).as_deref() == Some("made before any daemon ran")
    });
    std::fs::create_dir_all(fa.join("sub/deeper")).unwrap();
    std::fs::write(fa.join("sub/deeper/new.txt"), "from a").unwrap();
    wait_for("a's new file to reach c through b", &all, || {
        read(&fc.join("sub/deeper/new.txt")).as_deref() == Some("from a")
    });
    std::fs::write(fc.join("reply.txt"), "from c").unwrap();
    wait_for("c's file to reach a through b", &all, || {
        read(&fa.join("reply.txt")).as_deref() == Some("from c")
    });
    assert_eq!(read(&fb.join("reply.txt")).as_deref(), Some("from c"));
    std::fs::remove_file(fb.join("before.txt")).unwrap();
    wait_for("b's delete to reach a and c", &all, || {
        !fa.join("before.txt").exists() && !fc.join("before.txt").exists()
    });
    // An edit of an existing file.
    std::fs::write(fc.join("sub/deeper/new.txt"), "edited on c").unwrap();
    wait_for("c's edit to reach a", &all, || {
        read(&fa.join("sub/deeper/new.txt")).as_deref() == Some("edited on c")
    });
    // Nothing else moved: no conflict copies anywhere.
    for f in [&fa, &fb, &fc] {
        assert!(conflict_copies(f).is_empty());
    }
    // SIGTERM stops a daemon cleanly.
    assert!(a.term().success(), "{}", a.log());
    assert!(a.log().contains("stopped"), "{}", a.log());
    b.kill9();
    c.kill9();
}

#[test]
fn concurrent_edits_end_with_the_same_conflict_copies_and_a_killed_daemon_catches_up() {
    let (a, b, c) = (Device::new("a"), Device::new("b"), Device::new("c"));
    for (x, y) in [(&a, &b), (&a, &c), (&b, &a), (&b, &c), (&c, &a), (&c, &b)] {
        x.knows(y);
    }
    let fa = a.folder("docs", "docs", &[&b, &c], &[]);
    let fb = b.folder("docs", "docs", &[&a, &c], &[]);
    let fc = c.folder("docs", "docs", &[&a, &b], &[]);
    std::fs::write(fa.join("shared.txt"), "v0").unwrap();
    a.start();
    b.start();
    c.start();
    let all = [&a, &b, &c];
    wait_for("the first version everywhere", &all, || {
        read(&fb.join("shared.txt")).as_deref() == Some("v0")
            && read(&fc.join("shared.txt")).as_deref() == Some("v0")
    });
    // b is killed; a and b edit the same file meanwhile.
    b.kill9();
    std::fs::write(fb.join("shared.txt"), "edited on b while it was down").unwrap();
    std::fs::write(fb.join("only-b.txt"), "made on b while it was down").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    std::fs::write(fa.join("shared.txt"), "edited on a").unwrap();
    wait_for("a's edit to reach c", &all, || {
        read(&fc.join("shared.txt")).as_deref() == Some("edited on a")
    });
    b.start();
    wait_for("the same conflict copy on all three", &all, || {
        let ca = conflict_copies(&fa);
        ca.len() == 1 && conflict_copies(&fb) == ca && conflict_copies(&fc) == ca
    });
    wait_for("b's new file everywhere", &all, || {
        fa.join("only-b.txt").exists() && fc.join("only-b.txt").exists()
    });
    // Both versions survive, the same on every device.
    let copy = conflict_copies(&fa).remove(0);
    let mut versions: Vec<String> = vec![
        read(&fa.join("shared.txt")).unwrap(),
        read(&fa.join(&copy)).unwrap(),
    ];
    for f in [&fb, &fc] {
        wait_for("the same versions everywhere", &all, || {
            read(&f.join("shared.txt")) == Some(versions[0].clone())
                && read(&f.join(&copy)) == Some(versions[1].clone())
        });
    }
    versions.sort();
    assert_eq!(
        versions,
        vec!["edited on a", "edited on b while it was down"]
    );
    // `weave conflicts` lists it (exit 1: there are some), with the
    // device that made the losing version (its replica's short id is in
    // the copy's name; status shows each device's).
    let loser = if read(&fa.join(&copy)).unwrap().contains("on b") {
        "b"
    } else {
        "a"
    };
    let out = a.run(&["conflicts"]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains(&copy), "{said}");
    assert!(
        said.contains(&format!("(the losing version was made on {loser})")),
        "{said}"
    );
    let s = a.status().expect("status");
    let ids = &s["folders"][0]["replicas"];
    let id = ids[loser].as_str().expect("the loser's replica id");
    assert!(copy.contains(&format!("-{id}")), "{copy} {ids}");
    // `weave peer list` shows it beside the peer's name too.
    let listed = a.ok(&["peer", "list"]);
    let line = listed
        .lines()
        .find(|l| l.starts_with("b\t"))
        .unwrap_or_else(|| panic!("{listed}"));
    let b_id = ids["b"].as_str().expect("b's replica id");
    assert!(line.ends_with(&format!("docs:{b_id}")), "{line}");
    let json: serde_json::Value = serde_json::from_str(&a.ok(&["peer", "list", "--json"])).unwrap();
    assert_eq!(json[0]["replicas"]["docs"], b_id);
}

#[test]
fn an_unknown_device_is_refused_and_learns_nothing() {
    let (a, b, stranger) = (Device::new("a"), Device::new("b"), Device::new("x"));
    a.knows(&b);
    b.knows(&a);
    // The stranger knows a (its id and address), but a does not know it.
    stranger.knows(&a);
    let fa = a.folder("docs", "docs", &[&b], &[]);
    let fb = b.folder("docs", "docs", &[&a], &[]);
    let fx = stranger.folder("docs", "docs", &[&a], &[]);
    std::fs::write(fa.join("secret.txt"), "for b only").unwrap();
    std::fs::write(fx.join("junk.txt"), "from the stranger").unwrap();
    a.start();
    b.start();
    stranger.start();
    let all = [&a, &b, &stranger];
    wait_for("a's file to reach b", &all, || {
        fb.join("secret.txt").exists()
    });
    wait_for("a to report the refused device", &all, || {
        a.status().is_some_and(|s| {
            s["device"]["refused"]
                .as_array()
                .is_some_and(|r| r.iter().any(|i| i == stranger.id.as_str()))
        })
    });
    assert!(!fx.join("secret.txt").exists());
    assert!(!fa.join("junk.txt").exists());
    assert!(!fb.join("junk.txt").exists());
    assert!(a.log().contains("refused"), "{}", a.log());
    // The stranger's own log says it could not get in.
    wait_for("the stranger to log its failure", &all, || {
        stranger.log().contains("refused this device")
    });
}

#[test]
fn a_send_only_folder_never_takes_a_remote_change() {
    let (a, b, fa, fb) = send_only_pair("from the send-only side");
    let all = [&a, &b];
    std::fs::write(fb.join("out.txt"), "b's edit").unwrap();
    std::fs::write(fb.join("in.txt"), "b's new file").unwrap();
    // b's next sync with a (its edit) is refused by a; later changes on
    // a still go out.
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(fa.join("later.txt"), "a goes on sending").unwrap();
    wait_for("a's later file to reach b", &all, || {
        fb.join("later.txt").exists()
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        read(&fa.join("out.txt")).as_deref(),
        Some("from the send-only side")
    );
    assert!(!fa.join("in.txt").exists());
    assert!(conflict_copies(&fa).is_empty());
    // What a refused is no failure: both settle in sync and stay so, with
    // no sync started back and forth.
    let settled = |d: &Device| {
        let s = d.status();
        let f = s.as_ref().map(|s| &s["folders"][0]);
        f.is_some_and(|f| f["state"] == "idle" && f["in_sync_percent"].as_f64() == Some(100.0))
    };
    for d in all {
        wait_for("both in sync", &all, || settled(d));
    }
    let started = || peer_figure(&a, "b", "syncs_started") + peer_figure(&b, "a", "syncs_started");
    let before = started();
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        for d in all {
            let s = d.status().expect("status");
            let f = &s["folders"][0];
            assert!(
                f["state"] == "syncing" || f["in_sync_percent"].as_f64() == Some(100.0),
                "{} no longer in sync: {f}",
                d.name
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        started() - before < 3,
        "syncs went on: {}",
        started() - before
    );
}

#[test]
fn a_subfolder_reaches_only_its_own_peers_and_status_reports_a_real_sync() {
    let (a, b, c) = (Device::new("a"), Device::new("b"), Device::new("c"));
    for (x, y) in [(&a, &b), (&a, &c), (&b, &a), (&c, &a)] {
        x.knows(y);
    }
    // a: docs with b and c; docs/private, a folder of its own, with b only.
    let fa = a.folder("docs", "docs", &[&b, &c], &[]);
    let pa = a.folder("private", "docs/private", &[&b], &[]);
    let fb = b.folder("docs", "docs", &[&a], &[]);
    let pb = b.folder("private", "private-elsewhere", &[&a], &[]);
    let fc = c.folder("docs", "docs", &[&a], &[]);
    std::fs::write(pa.join("secret.txt"), "b may see this").unwrap();
    std::fs::write(fa.join("public.txt"), "everyone").unwrap();
    // Something large enough to watch a sync happen.
    let big: Vec<u8> = (0..48u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    a.start();
    b.start();
    let all = [&a, &b, &c];
    wait_for("the public file on b", &all, || {
        fb.join("public.txt").exists()
    });
    wait_for("a's status", &all, || a.status().is_some());
    std::fs::write(fa.join("big.bin"), &big).unwrap();
    // While b takes the large file, a's status shows the sync.
    let mut seen_syncing = false;
    let mut seen_peer = false;
    wait_for("the large file on b", &all, || {
        if let Some(s) = a.status() {
            let docs = s["folders"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["id"] == "docs")
                .cloned();
            if let Some(d) = docs {
                if d["state"] == "syncing" || d["bytes_to_go"].as_u64().unwrap_or(0) > 0 {
                    seen_syncing = true;
                }
            }
            if s["peers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "b" && p["state"] == "connected")
            {
                seen_peer = true;
            }
        }
        std::fs::metadata(fb.join("big.bin")).map(|m| m.len()).ok() == Some(big.len() as u64)
    });
    assert!(seen_syncing, "the status never showed the sync under way");
    c.start();
    wait_for("the public file on c", &all, || {
        fc.join("public.txt").exists()
    });
    wait_for("the private file in b's own folder", &all, || {
        read(&pb.join("secret.txt")).as_deref() == Some("b may see this")
    });
    // The parent folder never carries the sub-folder's content.
    assert!(!fb.join("private").exists());
    assert!(!fc.join("private").exists());
    // A file b drops into its docs/private (a plain directory there) does
    // not reach a's sub-folder.
    std::fs::create_dir_all(fb.join("private")).unwrap();
    std::fs::write(fb.join("private/intruder.txt"), "not for the sub-folder").unwrap();
    std::fs::write(fb.join("marker.txt"), "after the intruder").unwrap();
    wait_for("b's marker on a", &all, || fa.join("marker.txt").exists());
    std::thread::sleep(Duration::from_millis(300));
    assert!(!pa.join("intruder.txt").exists());
    // The status, once idle: both folders in sync, peers connected, recent
    // changes listed.
    wait_for("a's status to settle", &all, || {
        let Some(s) = a.status() else { return false };
        let folders = s["folders"].as_array().unwrap();
        folders.len() == 2
            && folders
                .iter()
                .all(|f| f["state"] == "idle" && f["in_sync_percent"] == 100.0)
            && !s["recent"].as_array().unwrap().is_empty()
    });
    assert!(seen_peer);
    let s = a.status().unwrap();
    assert_eq!(s["device"]["id"], a.id.as_str());
    let docs = s["folders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "docs")
        .unwrap()
        .clone();
    assert_eq!(docs["peers"], serde_json::json!(["b", "c"]));
    // The human form says the same.
    let text = a.ok(&["status"]);
    assert!(
        text.contains("folder docs") && text.contains("peer b  connected"),
        "{text}"
    );
}

#[test]
fn local_edits_in_a_receive_only_folder_never_leave_it() {
    let (a, b) = two();
    let fa = a.folder("docs", "docs", &[&b], &[]);
    let fb = b.folder("docs", "docs", &[&a], &["--mode", "receive-only"]);
    std::fs::write(fa.join("x.txt"), "a's x").unwrap();
    std::fs::write(fb.join("mine-before.txt"), "b had this before").unwrap();
    a.start();
    b.start();
    let all = [&a, &b];
    wait_for("a's file on the receive-only side", &all, || {
        read(&fb.join("x.txt")).as_deref() == Some("a's x")
    });
    // b edits a's file and makes a new one: neither leaves b.
    std::fs::write(fb.join("x.txt"), "b's local edit").unwrap();
    std::fs::write(fb.join("mine.txt"), "b's local file").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Later changes on a still arrive.
    std::fs::write(fa.join("y.txt"), "a's y").unwrap();
    wait_for("a's later file on b", &all, || fb.join("y.txt").exists());
    // a edits x too: b keeps its own change (nothing lost), a keeps a's.
    std::fs::write(fa.join("x.txt"), "a's second x").unwrap();
    std::fs::write(fa.join("z.txt"), "a's z").unwrap();
    wait_for("a's z on b", &all, || fb.join("z.txt").exists());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read(&fa.join("x.txt")).as_deref(), Some("a's second x"));
    assert_eq!(read(&fb.join("x.txt")).as_deref(), Some("b's local edit"));
    assert!(!fa.join("mine.txt").exists());
    assert!(!fa.join("mine-before.txt").exists());
    assert!(conflict_copies(&fa).is_empty());
    // b reports that it diverged.
    wait_for("b's status to report the divergence", &all, || {
        b.status().is_some_and(|s| {
            s["folders"][0]["notices"].as_array().is_some_and(|n| {
                n.iter()
                    .any(|n| n.as_str().unwrap_or("").contains("receive-only"))
            })
        })
    });
}

/// Bytes this device's own syncs exchanged with `peer` so far.
/// `d`'s status of its peer `peer`: field `field`, a number.
fn peer_figure(d: &Device, peer: &str, field: &str) -> u64 {
    peer_field(d, peer, field).as_u64().unwrap()
}

/// `d`'s status of its peer `peer`: field `field`.
fn peer_field(d: &Device, peer: &str, field: &str) -> serde_json::Value {
    let s = d.status().expect("status");
    s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == peer)
        .map(|p| p[field].clone())
        .unwrap()
}

/// a (send-only) and b share folder docs, running, with a's file
/// `out.txt` (holding `text`) on b; their folders.
fn send_only_pair(text: &str) -> (Device, Device, PathBuf, PathBuf) {
    let (a, b) = two();
    let fa = a.folder("docs", "docs", &[&b], &["--mode", "send-only"]);
    let fb = b.folder("docs", "docs", &[&a], &[]);
    std::fs::write(fa.join("out.txt"), text).unwrap();
    a.start();
    b.start();
    wait_for("the send-only folder's file to reach b", &[&a, &b], || {
        read(&fb.join("out.txt")).as_deref() == Some(text)
    });
    (a, b, fa, fb)
}

#[test]
fn files_a_daemon_wrote_itself_are_not_sent_back() {
    let (a, b) = two();
    let fa = a.folder("docs", "docs", &[&b], &[]);
    let fb = b.folder("docs", "docs", &[&a], &[]);
    std::fs::write(fa.join("first.txt"), "1").unwrap();
    a.start();
    b.start();
    let all = [&a, &b];
    wait_for("the first file on b", &all, || {
        fb.join("first.txt").exists()
    });
    wait_for("both in sync", &all, || {
        [(&a, "b"), (&b, "a")].iter().all(|(d, p)| {
            d.status().is_some_and(|s| {
                s["folders"][0]["in_sync_with"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|x| x == p))
                    && s["folders"][0]["state"] == "idle"
            })
        })
    });
    std::thread::sleep(Duration::from_millis(500));
    let (a0, b0) = (
        peer_figure(&a, "b", "syncs_started"),
        peer_figure(&b, "a", "syncs_started"),
    );
    let (sent0, received0) = (
        peer_figure(&a, "b", "bytes_sent"),
        peer_figure(&b, "a", "bytes_received"),
    );
    for i in 0..20 {
        let d = fa.join(format!("d{}", i % 3));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("f{i}.txt")), format!("file {i}")).unwrap();
    }
    wait_for("the 20 files on b", &all, || {
        (0..20).all(|i| {
            read(&fb.join(format!("d{}/f{i}.txt", i % 3))).as_deref() == Some(&format!("file {i}"))
        })
    });
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        peer_figure(&a, "b", "syncs_started") > a0,
        "a sent its new files"
    );
    // b's watcher saw every file weave wrote there; none of them is news
    // to b, so b never began a sync with a about them.
    assert_eq!(peer_figure(&b, "a", "syncs_started"), b0, "{}", b.log());
    // Bytes and rates count the link, in both directions, on both sides.
    wait_for("the bytes counted on both sides", &all, || {
        peer_figure(&a, "b", "bytes_sent") > sent0 + 20 * 6
            && peer_figure(&b, "a", "bytes_received") > received0 + 20 * 6
    });
}

#[test]
fn an_ignore_file_edit_brings_files_it_no_longer_ignores() {
    let (a, b) = two();
    let fa = a.folder("docs", "docs", &[&b], &[]);
    let fb = b.folder("docs", "docs", &[&a], &[]);
    std::fs::write(fa.join(".weaveignore"), "*.log\n").unwrap();
    std::fs::write(fa.join("build.log"), "was ignored").unwrap();
    std::fs::write(fa.join("kept.txt"), "synced").unwrap();
    a.start();
    b.start();
    let all = [&a, &b];
    wait_for("kept.txt on b", &all, || fb.join("kept.txt").exists());
    std::thread::sleep(Duration::from_millis(300));
    assert!(!fb.join("build.log").exists());
    // Only the ignore file changes on disk; the file it stops ignoring
    // raises no event of its own.
    std::fs::write(fa.join(".weaveignore"), "").unwrap();
    wait_for("build.log on b once no longer ignored", &all, || {
        read(&fb.join("build.log")).as_deref() == Some("was ignored")
    });
}

/// The established TCP connections to a daemon listening on one of
/// `ports` (its port, and the other end's port), from /proc/net/tcp.
fn accepted_on(ports: &[u16]) -> Vec<(u16, u16)> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = |a: &str| u16::from_str_radix(a.rsplit(':').next().unwrap(), 16).unwrap();
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<&str>>())
        .filter(|f| f[3] == "01" && ports.contains(&port(f[1])))
        .map(|f| (port(f[1]), port(f[2])))
        .collect()
}

fn port_of(d: &Device) -> u16 {
    d.addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// Two folders, changes both ways, many syncs: one TCP connection
/// between the two daemons carries all of them.
#[test]
fn one_lasting_connection_carries_every_folder_both_ways() {
    let (a, b) = two();
    let (a1, b1) = (
        a.folder("one", "one", &[&b], &[]),
        b.folder("one", "one", &[&a], &[]),
    );
    let (a2, b2) = (
        a.folder("two", "two", &[&b], &[]),
        b.folder("two", "two", &[&a], &[]),
    );
    a.start();
    b.start();
    // Both daemons may dial at once when they start; one of the two
    // connections is dropped. From then on, every connection seen while
    // the syncs run is that one.
    let ports = [port_of(&a), port_of(&b)];
    wait_for("one connection between the daemons", &[&a, &b], || {
        accepted_on(&ports).len() == 1
    });
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..4 {
        std::fs::write(a1.join(format!("a{i}")), format!("{i}")).unwrap();
        std::fs::write(b2.join(format!("b{i}")), format!("{i}")).unwrap();
        wait_for("both changes", &[&a, &b], || {
            seen.extend(accepted_on(&ports));
            read(&b1.join(format!("a{i}"))).is_some() && read(&a2.join(format!("b{i}"))).is_some()
        });
        if i == 0 {
            // Settled by the first syncs both ways.
            seen.clear();
        }
    }
    seen.extend(accepted_on(&ports));
    assert_eq!(seen.len(), 1, "connections between the daemons: {seen:?}");
    assert_eq!(accepted_on(&ports).len(), 1, "the connection lasts");
    // Recent changes name each file, what happened to it, the peer, and
    // the device that made the change (once the sync that brought it has
    // ended: the file lands before that).
    wait_for("b3 among a's recent changes", &[&a, &b], || {
        let recent = a.status().map(|s| s["recent"].clone()).unwrap_or_default();
        recent.as_array().is_some_and(|r| {
            r.iter().any(|c| {
                c["folder"] == "two"
                    && c["path"] == "b3"
                    && c["action"] == "create"
                    && c["peer"] == "b"
                    && c["by"] == "b"
            })
        })
    });
}

/// A peer that stops answering (SIGSTOP) in the middle of a transfer is
/// seen as disconnected by the keep-alives, with no rate left to it;
/// once it runs again, changes reach it.
#[test]
fn a_stopped_peer_is_seen_down_and_comes_back() {
    let (a, b, fa, fb) = synced_pair();
    let pid = b.pid().to_string();
    let big: Vec<u8> = (0..128u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(fa.join("big.bin"), &big).unwrap();
    wait_for("a rate to b", &[&a, &b], || {
        peer_figure(&a, "b", "rate_out") > 0
    });
    let whole = || std::fs::metadata(fb.join("big.bin")).is_ok_and(|m| m.len() == big.len() as u64);
    if whole() {
        eprintln!("note: the large file was whole on b before b was stopped");
    }
    let signal = |s: &str| {
        assert!(Command::new("kill")
            .args([s, &pid])
            .status()
            .unwrap()
            .success());
    };
    signal("-STOP");
    let state_of_b = || {
        a.status().and_then(|s| {
            s["peers"]
                .as_array()?
                .iter()
                .find(|p| p["name"] == "b")
                .map(|p| p["state"].as_str().unwrap_or("").to_string())
        })
    };
    // Keep-alives take b as down after 20 s of silence; a connection b
    // began just before it stopped may need as long again.
    wait_within(
        Duration::from_secs(75),
        "a to see b disconnected",
        &[&a],
        || state_of_b().as_deref() == Some("disconnected"),
    );
    // Nothing moves to a peer that is down.
    wait_for("no rate to b", &[&a], || {
        peer_figure(&a, "b", "rate_in") + peer_figure(&a, "b", "rate_out") == 0
    });
    signal("-CONT");
    std::fs::write(fa.join("second"), "2").unwrap();
    wait_for("the second file", &[&a, &b], || {
        read(&fb.join("second")).is_some()
    });
    wait_for("the large file", &[&a, &b], whole);
}

/// A peer's address fixed in the config is dialled at once, not after
/// the back-off its failures had built up.
#[test]
fn a_peer_address_fixed_in_the_config_is_dialled_at_once() {
    let (a, b) = (Device::new("a"), Device::new("b"));
    let wrong = format!("127.0.0.1:{}", free_port());
    a.ok(&["peer", "add", "b", &b.id, &wrong]);
    // b has no address for a: only a can dial.
    b.ok(&["peer", "add", "a", &a.id]);
    let fa = a.folder("docs", "docs", &[&b], &[]);
    let fb = b.folder("docs", "docs", &[&a], &[]);
    a.start();
    b.start();
    std::fs::write(fa.join("f"), "x").unwrap();
    // Failures back off: 1, 2, 4, 8 s... so after 16 s the next try is
    // 8 to 16 s away.
    std::thread::sleep(Duration::from_secs(16));
    assert!(read(&fb.join("f")).is_none());
    let cfg = a.cfg.join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains(&wrong));
    std::fs::write(&cfg, text.replace(&wrong, &b.addr)).unwrap();
    let t = Instant::now();
    wait_for("the file after the fix", &[&a, &b], || {
        read(&fb.join("f")).is_some()
    });
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "reached b {:?} after the fix",
        t.elapsed()
    );
}

/// Runs `weave daemon` on `d`'s config directory in the foreground,
/// waiting a bounded time for it to end; returns its exit code and
/// stderr. A daemon that does not end is killed (by its PID) and fails
/// the test.
fn second_daemon(d: &Device) -> (Option<i32>, String) {
    let mut c = weave()
        .arg("--config-dir")
        .arg(&d.cfg)
        .arg("daemon")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = c.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > WAIT {
            let _ = c.kill();
            let _ = c.wait();
            panic!("a second daemon on one config directory kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut c.stderr.take().unwrap(), &mut err).unwrap();
    (status.code(), err)
}

#[test]
fn a_second_daemon_on_one_config_dir_is_refused_and_a_killed_one_blocks_nothing() {
    // Any port: two daemons would not even collide on it.
    let a = Device::listening("a", "127.0.0.1:0");
    a.folder("docs", "docs", &[], &[]);
    a.start();
    wait_for("the daemon to answer", &[&a], || a.status().is_some());
    let api = std::fs::read_to_string(a.cfg.join("api-address")).unwrap();
    let first = a.pid();
    let (code, err) = second_daemon(&a);
    assert_eq!(code, Some(2), "{err}");
    for said in [
        format!("another weave daemon (pid {first}) is already running"),
        format!("`kill {first}`"),
        "--config-dir".to_string(),
        a.cfg.display().to_string(),
    ] {
        assert!(err.contains(&said), "{said:?} not in: {err}");
    }
    // The first daemon runs on, still found where it was.
    assert!(!a.exited());
    assert_eq!(
        std::fs::read_to_string(a.cfg.join("api-address")).unwrap(),
        api
    );
    assert!(a.status().is_some());
    // Killed outright, it leaves its lock file, which blocks nothing.
    a.kill9();
    assert!(a.cfg.join("daemon.lock").exists());
    a.start();
    wait_for("a new daemon to answer", &[&a], || {
        a.status().is_some_and(|s| s["device"]["name"] == "a")
            && std::fs::read_to_string(a.cfg.join("daemon.lock")).ok() == Some(a.pid().to_string())
    });
    assert!(a.term().success());
}

#[test]
fn a_log_written_to_a_file_has_no_colour_codes() {
    let a = Device::listening("a", "127.0.0.1:0");
    a.folder("docs", "docs", &[], &[]);
    a.start();
    wait_for("the daemon to log its start", &[&a], || {
        a.log().contains("listening on")
    });
    assert!(a.term().success());
    let log = a.log();
    assert!(log.contains("INFO"), "{log}");
    assert!(!log.contains('\x1b'), "colour codes in a log file: {log:?}");
}

/// The nice value in a `/proc/…/stat` file (its field 19).
fn nice_in(stat: &str) -> i64 {
    let stat = std::fs::read_to_string(stat).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split_whitespace().nth(16).unwrap().parse().unwrap()
}

/// The nice value of process `pid`.
fn nice_of(pid: u32) -> i64 {
    nice_in(&format!("/proc/{pid}/stat"))
}

/// The daemon lowers its CPU priority (as Syncthing does), every thread
/// of it, unless told not to.
#[test]
fn the_daemon_runs_at_a_low_priority_unless_told_not_to() {
    let a = Device::listening("a", "127.0.0.1:0");
    a.folder("docs", "docs", &[], &[]);
    a.start();
    wait_for("the daemon to answer", &[&a], || a.status().is_some());
    let pid = a.pid();
    let base = nice_of(std::process::id());
    assert_eq!(nice_of(pid), base.max(9));
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid = task.unwrap().file_name();
        let tid = tid.to_str().unwrap();
        let nice = nice_in(&format!("/proc/{pid}/task/{tid}/stat"));
        assert_eq!(nice, base.max(9), "thread {tid}");
    }
    assert!(a.term().success());
    let out = weave()
        .arg("--config-dir")
        .arg(&a.cfg)
        .args(["daemon", "--normal-priority"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = out;
    let t = Instant::now();
    while nice_of(child.id()) != base && t.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(20));
    }
    let nice = nice_of(child.id());
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(nice, base);
}

/// A folder the peer does not share is said once, as a notice (the peer
/// is up, nothing is wrong here), and the peer shows what was asked;
/// both go once it shares the folder, and the files come.
#[test]
fn a_folder_the_peer_does_not_share_is_said_once() {
    let (a, b) = two();
    let fa = a.folder("docs", "docs", &[&b], &[]);
    std::fs::write(fa.join("f"), "x").unwrap();
    a.start();
    b.start();
    let all = [&a, &b];
    let notices = |d: &Device| -> Vec<String> {
        d.status()
            .and_then(|s| {
                s["folders"][0]["notices"]
                    .as_array()
                    .map(|v| v.iter().map(|n| n.as_str().unwrap().to_string()).collect())
            })
            .unwrap_or_default()
    };
    let unshared = |n: &String| n.contains("b does not share folder \"docs\" with this device");
    wait_for("a's notice", &all, || notices(&a).iter().any(unshared));
    wait_for("b's ask", &all, || {
        b.status().is_some_and(|s| {
            s["device"]["unshared_asks"]
                .as_array()
                .is_some_and(|v| v.iter().any(|x| x["peer"] == "a" && x["folder"] == "docs"))
        })
    });
    // Retries (1, 2, 4 s...) say it no more.
    std::thread::sleep(Duration::from_secs(8));
    let s = a.status().unwrap();
    assert_eq!(notices(&a).iter().filter(|n| unshared(n)).count(), 1);
    assert_ne!(s["folders"][0]["state"], "error", "{s:#}");
    let said = s["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["message"].as_str().unwrap().contains("does not share"))
        .count();
    assert_eq!(said, 1, "{s:#}");
    assert_eq!(peer_field(&a, "b", "state"), "connected", "{s:#}");
    assert!(
        b.ok(&["status"])
            .contains("a shares folder docs with this device"),
        "{}",
        b.ok(&["status"])
    );
    // b shares it: the file comes, and both sides stop saying it.
    let fb = b.folder("docs", "docs", &[&a], &[]);
    wait_for("the file on b", &all, || read(&fb.join("f")).is_some());
    wait_for("a's notice gone", &all, || {
        !notices(&a).iter().any(unshared)
    });
    wait_for("b's ask gone", &all, || {
        b.status().is_some_and(|s| {
            s["device"]["unshared_asks"]
                .as_array()
                .is_some_and(|v| v.is_empty())
        })
    });
}

/// An ignore file a peer refuses (its folder is send-only) is no change
/// of patterns: no rescan and resync follow, let alone one after another.
#[test]
fn an_ignore_file_a_peer_refuses_starts_no_resync_loop() {
    let (a, b, _, fb) = send_only_pair("x");
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(fb.join(".weaveignore"), "*.log\n").unwrap();
    std::thread::sleep(Duration::from_millis(3000));
    let started = || {
        (
            peer_figure(&a, "b", "syncs_started"),
            peer_figure(&b, "a", "syncs_started"),
        )
    };
    let (a0, b0) = started();
    std::thread::sleep(Duration::from_millis(5000));
    let (a1, b1) = started();
    assert!(
        a1 - a0 < 5 && b1 - b0 < 5,
        "syncs in 5 s: a {} b {}",
        a1 - a0,
        b1 - b0
    );
}

/// A change of a file's extended attributes alone reaches the peer live,
/// both ways (the watcher sees it; the data is not sent again).
#[test]
fn an_attribute_change_alone_reaches_the_peer() {
    let (a, b, fa, fb) = synced_pair();
    let get = |p: &std::path::Path| {
        let mut buf = [0u8; 32];
        rustix::fs::lgetxattr(p, "user.color", &mut buf[..])
            .ok()
            .map(|n| buf[..n].to_vec())
    };
    let set = |p: &std::path::Path, v: &[u8]| {
        rustix::fs::lsetxattr(p, "user.color", v, rustix::fs::XattrFlags::empty())
    };
    if set(&fa.join("first"), b"blue").is_err() {
        eprintln!("skipped: no user extended attributes on this file system");
        return;
    }
    wait_for("the attribute on b", &[&a, &b], || {
        get(&fb.join("first")).as_deref() == Some(&b"blue"[..])
    });
    set(&fb.join("first"), b"red").unwrap();
    wait_for("the attribute back on a", &[&a, &b], || {
        get(&fa.join("first")).as_deref() == Some(&b"red"[..])
    });
    assert_eq!(read(&fa.join("first")).as_deref(), Some("1"));
}

/// `weave daemon -H`: a hard link made in a watched folder reaches the
/// peer as one file with two names (the scan of the watched paths sees a
/// file with several names and looks at the whole tree).
#[test]
fn daemons_keep_hard_links_when_asked() {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = two();
    let fa = a.folder("docs", "docs", &[&b], &[]);
    let fb = b.folder("docs", "docs", &[&a], &[]);
    a.start_with(&["-H"]);
    b.start_with(&["-H"]);
    std::fs::write(fa.join("one"), "one file").unwrap();
    wait_for("the first name", &[&a, &b], || {
        read(&fb.join("one")).is_some()
    });
    std::fs::hard_link(fa.join("one"), fa.join("two")).unwrap();
    let ino = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.ino()).ok();
    wait_for("two names of one file on b", &[&a, &b], || {
        ino(&fb.join("two")).is_some() && ino(&fb.join("one")) == ino(&fb.join("two"))
    });
}
