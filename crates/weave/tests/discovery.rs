//! LAN discovery between two network namespaces the test makes, joined
//! by a veth pair: two daemons that know each other by device id alone
//! find each other and sync; packets that are not announcements are
//! counted and dropped. Needs root (network namespaces); skipped, saying
//! so, without it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Two namespaces joined by a veth pair, removed on drop.
struct Lan {
    ns: [String; 2],
    /// The veth's first end (deleting it deletes the pair).
    veth: String,
}

impl Lan {
    /// None when namespaces cannot be made here (root without network
    /// admin rights, in a container).
    fn new() -> Option<Lan> {
        let id = std::process::id() % 100_000;
        let ns = [format!("wva{id}"), format!("wvb{id}")];
        let veth = [format!("va{id}"), format!("vb{id}")];
        let made = Command::new("ip")
            .args(["netns", "add", &ns[0]])
            .status()
            .is_ok_and(|s| s.success());
        if !made {
            return None;
        }
        let lan = Lan {
            ns: ns.clone(),
            veth: veth[0].clone(),
        };
        let ip = |args: &[&str]| {
            let ok = Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "ip {args:?} failed");
        };
        ip(&["netns", "add", &ns[1]]);
        ip(&[
            "link", "add", &veth[0], "type", "veth", "peer", "name", &veth[1],
        ]);
        for i in 0..2 {
            ip(&["link", "set", &veth[i], "netns", &ns[i]]);
            let addr = format!("10.213.1.{}/24", i + 1);
            ip(&["-n", &ns[i], "addr", "add", &addr, "dev", &veth[i]]);
            ip(&["-n", &ns[i], "link", "set", &veth[i], "up"]);
            ip(&["-n", &ns[i], "link", "set", "lo", "up"]);
            // Broadcasts to 255.255.255.255 leave by the default route.
            ip(&["-n", &ns[i], "route", "add", "default", "dev", &veth[i]]);
        }
        Some(lan)
    }

    /// `weave ARGS` run in namespace `i`.
    fn weave(&self, i: usize, cfg: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns[i]])
            .arg(env!("CARGO_BIN_EXE_weave"))
            .arg("--config-dir")
            .arg(cfg)
            .args(args)
            .env_remove("RUST_LOG");
        c
    }

    fn ok(&self, i: usize, cfg: &Path, args: &[&str]) -> String {
        let out = self.weave(i, cfg, args).output().unwrap();
        assert!(
            out.status.success(),
            "weave {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // (Already gone with its namespace, once moved there.)
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .stderr(Stdio::null())
            .status();
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A daemon, stopped by its PID on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[test]
fn devices_known_by_id_alone_find_each_other_on_the_lan() {
    if !is_root() || Command::new("ip").arg("-V").output().is_err() {
        eprintln!("skipped: LAN discovery is tested between network namespaces, which needs root and `ip` (iproute2)");
        return;
    }
    let Some(lan) = Lan::new() else {
        eprintln!(
            "skipped: cannot make a network namespace here (root without network admin rights?)"
        );
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let cfg = [t.path().join("a/cfg"), t.path().join("b/cfg")];
    let dirs = [t.path().join("a/docs"), t.path().join("b/docs")];
    let names = ["a", "b"];
    let ids: Vec<String> = (0..2)
        .map(|i| {
            lan.ok(
                i,
                &cfg[i],
                &[
                    "init",
                    "--listen",
                    "0.0.0.0:22100",
                    "--name",
                    names[i],
                    "--discovery",
                    "22027",
                ],
            )
        })
        .collect();
    for i in 0..2 {
        let other = 1 - i;
        // By id alone: no address.
        lan.ok(i, &cfg[i], &["peer", "add", names[other], &ids[other]]);
        lan.ok(
            i,
            &cfg[i],
            &[
                "folder",
                "add",
                "docs",
                dirs[i].to_str().unwrap(),
                "--peer",
                names[other],
            ],
        );
    }
    std::fs::write(dirs[0].join("hello.txt"), "found by id alone").unwrap();
    let start = Instant::now();
    let _daemons: Vec<Daemon> = (0..2)
        .map(|i| {
            let log = std::fs::File::create(t.path().join(format!("{}.log", names[i]))).unwrap();
            let child = lan
                .weave(i, &cfg[i], &["daemon"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            Daemon(child)
        })
        .collect();
    let status = |i: usize| -> Option<serde_json::Value> {
        let out = lan.weave(i, &cfg[i], &["status", "--json"]).output().ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    let connected = |i: usize| {
        status(i).is_some_and(|s| {
            s["peers"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["state"] == "connected"))
        })
    };
    let mut took = None;
    while start.elapsed() < Duration::from_secs(60) {
        if connected(0) && connected(1) {
            took = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs = || {
        names
            .iter()
            .map(|n| std::fs::read_to_string(t.path().join(format!("{n}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    let took =
        took.unwrap_or_else(|| panic!("the daemons did not find each other in 60 s\n{}", logs()));
    eprintln!(
        "discovery: connected {:.2} s after the daemons started",
        took.as_secs_f64()
    );
    let t0 = Instant::now();
    while std::fs::read_to_string(dirs[1].join("hello.txt"))
        .ok()
        .as_deref()
        != Some("found by id alone")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "hello.txt did not reach b\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Packets that are not announcements (or too many) are dropped and
    // counted.
    let send =
        "for i in 1 2 3 4 5; do printf 'not an announcement' > /dev/udp/10.213.1.2/22027; done";
    let sent = Command::new("ip")
        .args(["netns", "exec", &lan.ns[0], "bash", "-c", send])
        .status()
        .is_ok_and(|s| s.success());
    assert!(sent, "could not send test packets");
    let t0 = Instant::now();
    loop {
        let malformed = status(1)
            .and_then(|s| s["device"]["discovery"]["malformed"].as_u64())
            .unwrap_or(0);
        if malformed >= 5 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "malformed packets not counted: {:?}",
            status(1)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let d = status(0).unwrap()["device"]["discovery"].clone();
    assert!(d["sent"].as_u64().unwrap_or(0) >= 1, "{d}");
}
