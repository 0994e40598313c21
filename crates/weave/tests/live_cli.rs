//! The commands that edit the daemon's config (`weave peer …`, `weave
//! folder …`): they refuse what would not work, saying what and how to
//! fix it, and change nothing when they refuse.

mod common;

use common::weave;
use std::path::PathBuf;

/// A config directory made by `weave init`, in a temporary directory.
struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        let d = Dir {
            tmp: tempfile::tempdir().unwrap(),
        };
        d.run(&["init", "--listen", "127.0.0.1:0", "--name", "laptop"])
            .expect_code(0);
        d
    }

    fn cfg(&self) -> PathBuf {
        self.tmp.path().join("config")
    }

    fn run(&self, args: &[&str]) -> common::Run {
        let cfg = self.cfg();
        let mut v: Vec<&str> = vec!["--config-dir", cfg.to_str().unwrap()];
        v.extend_from_slice(args);
        weave(self.tmp.path(), v)
    }

    fn config(&self) -> String {
        std::fs::read_to_string(self.cfg().join("config.toml")).unwrap()
    }

    /// A device id of another device.
    fn other_id(&self) -> String {
        let other = tempfile::tempdir().unwrap();
        let cfg = other.path().join("config");
        let r = weave(
            other.path(),
            ["--config-dir", cfg.to_str().unwrap(), "init", "--name", "x"],
        );
        r.expect_code(0);
        r.stdout.trim().to_string()
    }
}

fn peers(d: &Dir) -> serde_json::Value {
    d.run(&["peer", "list", "--json"]).json()
}

#[test]
fn peer_add_on_an_existing_name_refuses_and_says_how_to_change_addresses() {
    let d = Dir::new();
    let id = d.other_id();
    d.run(&["peer", "add", "nas", &id, "10.0.0.2:22100"])
        .expect_code(0);
    let before = d.config();
    d.run(&["peer", "add", "nas", &id, "10.0.0.3:22100"])
        .expect_code(2)
        .stderr_has(&[
            "a peer named \"nas\" exists already",
            "10.0.0.2:22100",
            "weave peer add-address nas",
            "weave peer remove-address nas",
        ]);
    assert_eq!(d.config(), before, "a refused command changed the config");
}

#[test]
fn peer_addresses_are_added_and_removed_one_by_one() {
    let d = Dir::new();
    let id = d.other_id();
    d.run(&["peer", "add", "nas", &id, "10.0.0.2:22100"])
        .expect_code(0);
    d.run(&[
        "peer",
        "add-address",
        "nas",
        "nas.lan:22100",
        "10.0.0.2:22100",
    ])
    .expect_code(0)
    .stderr_has(&["10.0.0.2:22100 nas.lan:22100"]);
    assert_eq!(
        peers(&d)[0]["addresses"],
        serde_json::json!(["10.0.0.2:22100", "nas.lan:22100"])
    );
    d.run(&["peer", "remove-address", "nas", "10.0.0.2:22100"])
        .expect_code(0);
    assert_eq!(
        peers(&d)[0]["addresses"],
        serde_json::json!(["nas.lan:22100"])
    );
    // An address it does not have: refused, naming the ones it has.
    let before = d.config();
    d.run(&["peer", "remove-address", "nas", "10.9.9.9:1"])
        .expect_code(2)
        .stderr_has(&["no address \"10.9.9.9:1\"", "nas.lan:22100"]);
    // Not an address: refused by the config's check.
    d.run(&["peer", "add-address", "nas", "nowhere"])
        .expect_code(2)
        .stderr_has(&["\"nowhere\" is not an address", "host:port"]);
    d.run(&["peer", "add-address", "ghost", "10.0.0.9:1"])
        .expect_code(2)
        .stderr_has(&["no peer is named \"ghost\"", "weave peer list"]);
    assert_eq!(d.config(), before);
    // The last one removed: the peer dials this device.
    d.run(&["peer", "remove-address", "nas", "nas.lan:22100"])
        .expect_code(0)
        .stderr_has(&["it dials this device"]);
    assert_eq!(peers(&d)[0]["addresses"], serde_json::json!([]));
}

#[test]
fn folder_add_refuses_a_bad_ignore_pattern_and_leaves_nothing_behind() {
    let d = Dir::new();
    let path = d.tmp.path().join("docs");
    let p = path.to_str().unwrap();
    let before = d.config();
    d.run(&[
        "folder", "add", "docs", p, "--ignore", "*.tmp", "--ignore", "[",
    ])
    .expect_code(2)
    .stderr_has(&[
        "folder \"docs\"",
        "bad ignore pattern \"[\"",
        "unclosed character class",
        "correct it or leave it out",
    ]);
    assert_eq!(d.config(), before);
    assert!(!path.exists(), "a refused folder's directory was made");
    // Intervals out of range are refused as well.
    d.run(&["folder", "add", "docs", p, "--rescan", "0"])
        .expect_code(2)
        .stderr_has(&["rescan every 0 s", "1 to"]);
    d.run(&["folder", "add", "docs", p, "--watch-delay", "86400000"])
        .expect_code(2)
        .stderr_has(&["watch delay", "at most 600000 ms"]);
    assert!(!path.exists());
    // Good patterns are kept as given.
    d.run(&[
        "folder", "add", "docs", p, "--ignore", "*.tmp", "--ignore", "\\[x]",
    ])
    .expect_code(0);
    let list = d.run(&["folder", "list", "--json"]).json();
    assert_eq!(list[0]["ignore"], serde_json::json!(["*.tmp", "\\[x]"]));
}

#[test]
fn folder_unshare_with_a_peer_it_is_not_shared_with_refuses() {
    let d = Dir::new();
    let id = d.other_id();
    d.run(&["peer", "add", "nas", &id, "10.0.0.2:22100"])
        .expect_code(0);
    let p = d.tmp.path().join("docs");
    d.run(&["folder", "add", "docs", p.to_str().unwrap()])
        .expect_code(0);
    let before = d.config();
    d.run(&["folder", "unshare", "docs", "nas"])
        .expect_code(2)
        .stderr_has(&[
            "folder docs is not shared with \"nas\"",
            "nothing was changed",
        ]);
    assert_eq!(d.config(), before);
    d.run(&["folder", "share", "docs", "nas"]).expect_code(0);
    d.run(&["folder", "unshare", "docs", "nas"]).expect_code(0);
}
