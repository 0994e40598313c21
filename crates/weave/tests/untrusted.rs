//! Untrusted devices in the mesh, through real daemons on 127.0.0.1: a
//! device whose folder is receive-encrypted keeps the encrypted bucket of
//! its peers that mark it untrusted (`--untrusted`), and can read none of
//! it; two trusted devices that are never on together converge through
//! it; and nothing in clear ever reaches it, whichever side is set up
//! wrong.

mod common;

use common::daemon::*;
use std::path::Path;

/// The folder `id`'s status on `d`.
fn folder(d: &Device, id: &str) -> Option<serde_json::Value> {
    d.folder_status(id)
}

fn write(p: &Path, s: &str) {
    common::write(p, s);
}

/// Every file under `dir`, with its bytes.
fn all_files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap_or_default();
                out.push((p, bytes));
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The options of `weave folder add` that mark `peer` untrusted, with
/// passphrase file `pass`, polled every second.
fn trusting<'a>(peer: &'a str, pass: &'a str) -> [&'a str; 6] {
    [
        "--untrusted",
        peer,
        "--poll",
        "1",
        "--passphrase-file",
        pass,
    ]
}

/// A passphrase file in `dir`.
fn passphrase(dir: &Path) -> String {
    let p = dir.join("pass");
    std::fs::write(&p, "the folder's passphrase\n").unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn devices_never_on_together_sync_through_an_untrusted_peer_that_reads_nothing() {
    let (a, u, b) = (Device::new("a"), Device::new("u"), Device::new("b"));
    a.knows(&u);
    b.knows(&u);
    u.knows(&a);
    u.knows(&b);
    let pass = passphrase(&a.root);
    let trusted = trusting("u", &pass);
    let fu = u.folder("docs", "kept", &[&a, &b], &["--mode", "receive-encrypted"]);
    let fa = a.folder("docs", "docs", &[], &trusted);
    let fb = b.folder("docs", "docs", &[], &trusted);
    let listed = a.ok(&["folder", "list"]);
    assert!(listed.contains("u (untrusted)"), "{listed}");
    u.start();
    a.start();
    let secret = "the plaintext of a secret file";
    write(&fa.join("secret-name.txt"), secret);
    std::fs::create_dir_all(fa.join("private-dir")).unwrap();
    write(&fa.join("private-dir/inner.txt"), "inner words");
    let since = |d: &Device, t: u64| d.remote_synced_after("docs", t);
    let t = now_ms() + 200;
    wait_for("a to push to u", &[&a, &u], || {
        std::thread::sleep(std::time::Duration::from_millis(100));
        since(&a, t) && fu.join("weave-bucket.json").exists()
    });
    a.term();
    b.start();
    wait_for("a's files on b, through u", &[&b, &u], || {
        read(&fb.join("secret-name.txt")).as_deref() == Some(secret)
            && read(&fb.join("private-dir/inner.txt")).as_deref() == Some("inner words")
    });
    write(&fb.join("from-b.txt"), "written on b");
    std::fs::remove_file(fb.join("private-dir/inner.txt")).unwrap();
    let t = now_ms() + 200;
    wait_for("b to push to u", &[&b, &u], || {
        std::thread::sleep(std::time::Duration::from_millis(100));
        since(&b, t)
    });
    b.term();
    a.start();
    wait_for("b's changes on a, through u", &[&a, &u], || {
        read(&fa.join("from-b.txt")).as_deref() == Some("written on b")
            && !fa.join("private-dir/inner.txt").exists()
    });
    // u's status: the folder is there, receive-encrypted, with no error.
    let s = folder(&u, "docs").expect("u shows the folder");
    assert_eq!(s["mode"], "receive-encrypted", "{s}");
    assert!(s["error"].is_null(), "{s}");
    // a counts only its trusted peers in "in sync": u is listed apart.
    let s = folder(&a, "docs").unwrap();
    assert_eq!(s["untrusted"], serde_json::json!(["u"]), "{s}");
    a.term();
    u.term();
    // What u holds: sealed objects, no name, no content, no index.
    assert!(!fu.join(".weave").exists());
    let held = all_files(&fu);
    assert!(held.len() >= 3, "{held:?}");
    for (p, bytes) in &held {
        let name = p.strip_prefix(&fu).unwrap().to_string_lossy().into_owned();
        for word in ["secret", "private", "inner", "from-b"] {
            assert!(!name.contains(word), "{name}");
            assert!(!contains(bytes, word.as_bytes()), "{name} holds {word:?}");
        }
        assert!(!contains(bytes, secret.as_bytes()));
    }
}

/// Set up wrong on either side, nothing in clear reaches the untrusted
/// device: a folder shared with it plainly is refused by it (it keeps
/// encrypted data only), and a device that marks it untrusted refuses
/// its plain sessions; each side says what to do.
#[test]
fn nothing_in_clear_reaches_an_untrusted_device_whichever_side_is_set_up_wrong() {
    let (a, u) = (Device::new("a"), Device::new("u"));
    a.knows(&u);
    u.knows(&a);
    let pass = passphrase(&a.root);
    // a shares "plain" with u in clear; u keeps it encrypted only.
    let fu_plain = u.folder("plain", "plain", &[&a], &["--mode", "receive-encrypted"]);
    let fa_plain = a.folder("plain", "plain", &[&u], &[]);
    // a marks u untrusted for "docs"; u has it as a plain two-way folder.
    let fu_docs = u.folder("docs", "docs", &[&a], &[]);
    let fa_docs = a.folder("docs", "docs", &[], &trusting("u", &pass));
    write(&fa_plain.join("one.txt"), "not for u");
    write(&fa_docs.join("two.txt"), "not for u either");
    u.start();
    a.start();
    let error = |d: &Device, id: &str, words: &[&str]| {
        folder(d, id).is_some_and(|f| {
            f["error"]
                .as_str()
                .is_some_and(|e| words.iter().all(|w| e.contains(w)))
        })
    };
    wait_for("a to show u refusing files in clear", &[&a, &u], || {
        error(&a, "plain", &["encrypted only", "--untrusted"])
    });
    wait_for("a to show u keeps no encrypted docs", &[&a, &u], || {
        error(
            &a,
            "docs",
            &["keeps no encrypted folder docs", "receive-encrypted"],
        )
    });
    // u's own sync of docs with a is refused: a shares nothing in clear
    // with it (and says no more than for a folder it does not have).
    wait_for("u to be refused by a", &[&a, &u], || {
        folder(&u, "docs")
            .is_some_and(|f| f["notices"].to_string().contains("does not share folder"))
    });
    a.term();
    u.term();
    assert!(
        all_files(&fu_plain).is_empty(),
        "{:?}",
        all_files(&fu_plain)
    );
    for (p, bytes) in all_files(&fu_docs) {
        assert!(!contains(&bytes, b"not for u"), "{}", p.display());
    }
    assert!(!fu_docs.join("two.txt").exists());
}

/// A peer made untrusted while a sync with it is under way gets nothing
/// more in clear: its link ends at once, and its own plain sessions are
/// refused from then on.
#[test]
fn a_peer_made_untrusted_during_a_sync_gets_nothing_more() {
    let (a, b, fa, fb) = synced_pair();
    let pid = b.pid().to_string();
    let signal = |s: &str| {
        let ok = std::process::Command::new("kill")
            .args([s, &pid])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    // b stops answering; a's sync of a new file with it waits on it.
    signal("-STOP");
    let big: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(fa.join("big.bin"), &big).unwrap();
    // (Its session waits for b's answer to the open; the status still
    // says scanning.)
    std::thread::sleep(std::time::Duration::from_secs(1));
    a.ok(&["folder", "share", "docs", "b", "--untrusted"]);
    wait_for("a to end its link to b", &[&a], || {
        a.log()
            .contains("no longer shared in clear with it; its link ends")
    });
    signal("-CONT");
    // b's own change: its sync with a is refused; a never syncs with it
    // in clear.
    std::fs::write(fb.join("from-b.txt"), "b's").unwrap();
    wait_for("b to be refused", &[&a, &b], || {
        folder(&b, "docs")
            .is_some_and(|f| f["notices"].to_string().contains("does not share folder"))
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(!fb.join("big.bin").exists(), "big.bin reached b in clear");
    assert!(!fa.join("from-b.txt").exists(), "a took b's file in clear");
}

/// `weave folder add` refuses what cannot work, and writes nothing.
#[test]
fn untrusted_settings_that_cannot_work_are_refused() {
    let (a, u) = (Device::new("a"), Device::new("u"));
    a.knows(&u);
    let bad = |args: &[&str], words: &[&str]| {
        let out = a.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let e = String::from_utf8_lossy(&out.stderr).to_lowercase();
        for w in words {
            assert!(e.contains(&w.to_lowercase()), "{args:?}: {e}");
        }
    };
    let dir = a.root.join("x");
    let d = dir.to_str().unwrap();
    bad(
        &["folder", "add", "x", d, "--untrusted", "nobody"],
        &["not a peer"],
    );
    bad(
        &[
            "folder",
            "add",
            "x",
            d,
            "--passphrase-file",
            "/etc/hostname",
        ],
        &["--remote", "--untrusted"],
    );
    bad(
        &[
            "folder",
            "add",
            "x",
            d,
            "--mode",
            "receive-encrypted",
            "--untrusted",
            "u",
        ],
        &["receive-encrypted", "no remote and no untrusted"],
    );
    let full = a.root.join("full");
    std::fs::create_dir_all(&full).unwrap();
    write(&full.join("mine.txt"), "mine");
    bad(
        &[
            "folder",
            "add",
            "x",
            full.to_str().unwrap(),
            "--mode",
            "receive-encrypted",
            "--peer",
            "u",
        ],
        &["holds files", "empty"],
    );
    assert!(!dir.exists());
    let listed = a.ok(&["folder", "list"]);
    assert!(!listed.contains('x'), "{listed}");
    // A peer untrusted with a folder can be removed (revoked).
    let pass = passphrase(&a.root);
    a.folder(
        "docs",
        "docs",
        &[],
        &[
            "--untrusted",
            "u",
            "--untrusted",
            "u",
            "--passphrase-file",
            &pass,
        ],
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&a.ok(&["folder", "list", "--json"])).unwrap();
    assert_eq!(cfg[0]["untrusted"], serde_json::json!(["u"]), "{cfg}");
    a.ok(&["peer", "remove", "u"]);
    let cfg: serde_json::Value =
        serde_json::from_str(&a.ok(&["folder", "list", "--json"])).unwrap();
    assert!(cfg[0].get("untrusted").is_none(), "{cfg}");
}
