//! Real daemons for the tests: each `Device` has its own config
//! directory and listens on 127.0.0.1; `wait_for` waits, bounded, and
//! shows the logs when it gives up.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub const WAIT: Duration = Duration::from_secs(40);

pub fn weave() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weave"))
}

pub struct Device {
    pub name: String,
    pub cfg: PathBuf,
    pub root: PathBuf,
    pub addr: String,
    pub id: String,
    child: std::cell::RefCell<Option<Child>>,
    _tmp: tempfile::TempDir,
}

impl Device {
    pub fn new(name: &str) -> Device {
        Device::listening(name, &format!("127.0.0.1:{}", free_port()))
    }

    /// A device whose daemon listens on `addr` (127.0.0.1:0: any port).
    pub fn listening(name: &str, addr: &str) -> Device {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("config");
        let addr = addr.to_string();
        let out = weave()
            .args(["--config-dir"])
            .arg(&cfg)
            // LAN discovery off: tests' daemons find each other by the
            // addresses they are given (tests of discovery turn it on).
            .args([
                "init",
                "--listen",
                &addr,
                "--name",
                name,
                "--discovery",
                "0",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Device {
            name: name.to_string(),
            root: tmp.path().to_path_buf(),
            cfg,
            addr,
            id,
            child: Default::default(),
            _tmp: tmp,
        }
    }

    pub fn run(&self, args: &[&str]) -> std::process::Output {
        weave()
            .arg("--config-dir")
            .arg(&self.cfg)
            .args(args)
            .output()
            .unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "weave {args:?} on {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Makes `other` a peer of this device.
    pub fn knows(&self, other: &Device) {
        self.ok(&["peer", "add", &other.name, &other.id, &other.addr]);
    }

    /// Makes `other` a peer of this device, dialled at `addr` (a proxy in
    /// front of it, say) instead of its own listen address.
    pub fn knows_at(&self, other: &Device, addr: &str) {
        self.ok(&["peer", "add", &other.name, &other.id, addr]);
    }

    /// A folder `id` at ROOT/`dir`, shared with `peers`; returns its path.
    pub fn folder(&self, id: &str, dir: &str, peers: &[&Device], extra: &[&str]) -> PathBuf {
        let path = self.root.join(dir);
        let p = path.to_str().unwrap().to_string();
        let mut args = vec!["folder", "add", id, &p];
        for q in peers {
            args.push("--peer");
            args.push(&q.name);
        }
        args.extend_from_slice(extra);
        self.ok(&args);
        path
    }

    pub fn start(&self) {
        self.start_with(&[]);
    }

    /// Starts the daemon with `args` after `weave daemon`.
    pub fn start_with(&self, args: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("daemon.log"))
            .unwrap();
        let child = weave()
            .arg("--config-dir")
            .arg(&self.cfg)
            .arg("daemon")
            .args(args)
            .env("RUST_LOG", "info,weave_daemon=debug")
            // Its log as it is by default (a test checks its colours).
            .env_remove("NO_COLOR")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        *self.child.borrow_mut() = Some(child);
    }

    pub fn kill9(&self) {
        if let Some(mut c) = self.child.borrow_mut().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and the exit status.
    pub fn term(&self) -> std::process::ExitStatus {
        let mut c = self.child.borrow_mut().take().expect("running");
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        let t = Instant::now();
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            assert!(t.elapsed() < WAIT, "the daemon did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the daemon was started and has exited since (not by
    /// `kill9` or `term`, which take it out).
    /// The running daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.borrow().as_ref().expect("running").id()
    }

    pub fn exited(&self) -> bool {
        match self.child.borrow_mut().as_mut() {
            Some(c) => c.try_wait().unwrap().is_some(),
            None => false,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("daemon.log")).unwrap_or_default()
    }

    /// Whether folder `id` shows a sync with an encrypted remote that
    /// went through after `t` (ms since the epoch), and no error.
    pub fn remote_synced_after(&self, id: &str, t: u64) -> bool {
        self.folder_status(id).is_some_and(|f| {
            f["remote_synced_ms"].as_u64().is_some_and(|s| s > t) && f["error"].is_null()
        })
    }

    /// Folder `id`'s status, when the daemon answers.
    pub fn folder_status(&self, id: &str) -> Option<serde_json::Value> {
        self.status()?["folders"]
            .as_array()?
            .iter()
            .find(|f| f["id"] == id)
            .cloned()
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        let out = self.run(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Two devices, a and b, that know each other (not started).
pub fn two() -> (Device, Device) {
    let (a, b) = (Device::new("a"), Device::new("b"));
    a.knows(&b);
    b.knows(&a);
    (a, b)
}

/// Two running devices that know each other, sharing folder `docs`
/// (returned with its path on each), a first file already synced.
pub fn synced_pair() -> (Device, Device, PathBuf, PathBuf) {
    let (a, b) = two();
    let fa = a.folder("docs", "docs", &[&b], &[]);
    let fb = b.folder("docs", "docs", &[&a], &[]);
    a.start();
    b.start();
    std::fs::write(fa.join("first"), "1").unwrap();
    wait_for("the first file", &[&a, &b], || {
        read(&fb.join("first")).is_some()
    });
    (a, b, fa, fb)
}

/// Waits (bounded) until `f` holds; on time-out, or as soon as a daemon
/// that should be running has exited, fails showing the logs.
pub fn wait_for(what: &str, devs: &[&Device], f: impl FnMut() -> bool) {
    wait_within(WAIT, what, devs, f)
}

/// [`wait_for`] with its own bound.
pub fn wait_within(bound: Duration, what: &str, devs: &[&Device], mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    let mut why = "timed out";
    'wait: while t.elapsed() < bound {
        if f() {
            return;
        }
        for d in devs {
            if d.exited() {
                why = "a daemon exited";
                break 'wait;
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let logs: Vec<String> = devs
        .iter()
        .map(|d| format!("--- {} ---\n{}", d.name, d.log()))
        .collect();
    panic!("{why} waiting for {what}\n{}", logs.join("\n"));
}

pub fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

pub fn conflict_copies(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".weave-conflict-"))
        .collect();
    v.sort();
    v
}

/// Now, in milliseconds since the epoch (as the status gives times).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
