//! A seeded chaos test of `weave daemon` (issue 23): real daemons on
//! 127.0.0.1 in a mesh (every pair peers) and in a chain (a–b–c–d) share
//! one folder; a schedule drawn from a seed edits, creates, renames and
//! deletes files and directories on every device, SIGKILLs and restarts
//! daemons, SIGSTOPs and SIGCONTs them, and cuts and restores links (each
//! device dials each peer through a TCP proxy of this test). Then
//! everything is healed, and every device must come to hold the same tree
//! with nothing a user wrote lost.
//!
//! "Lost" is judged exactly: every user operation is atomic and sees what
//! it replaces (a write is a `renameat2` NOREPLACE of a new file, or an
//! EXCHANGE with what is at the path; a delete moves the file or tree out
//! of the folder). Content a user's operation took off the disk is
//! superseded, by that user; every other content written must end up in
//! the tree (under its name, another name, or a conflict copy) or in the
//! version history of some device (`weave history`/`weave restore`).
//!
//! By default a few seeds run; `WEAVE_CHAOS_SEEDS=N` runs seeds 1..=N (or
//! `A..B`, B excluded), `WEAVE_CHAOS_SEED=S` runs one, `WEAVE_CHAOS_STEPS`
//! sets the schedule's length and `WEAVE_CHAOS_PAUSE_MS` the longest pause
//! between steps (250 ms). A failure prints the seed, the schedule
//! with what each step did, the differences, and the daemons' logs (whole
//! logs are kept under the temp dir, in weave-chaos/).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::fs::{renameat_with, RenameFlags, CWD};
use rustix::io::Errno;

mod common;

use common::daemon::Device;
use common::Node;

/// The seeds CI runs, per topology.
const CI_SEEDS: &[u64] = &[1, 2];
/// Steps of a schedule, by default.
const STEPS: usize = 60;
/// The longest pause between two steps, in ms, by default.
const PAUSE_MS: usize = 250;
/// How long the devices have to agree once everything is healed.
const CONVERGE: Duration = Duration::from_secs(90);

const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];
/// The files a schedule touches; directories are `d0` and `d1` (and
/// `d0/e`; a directory renamed may also be `d2`, `d1/e`, `d2/e`), never a
/// file's name.
const FILES: &[&str] = &[
    "f0.txt",
    "f1.txt",
    "f2.txt",
    "f3.txt",
    "f4.txt",
    "d0/g0.txt",
    "d0/g1.txt",
    "d0/e/h0.txt",
    "d1/g0.txt",
    "d1/g1.txt",
];
const DIRS: &[&str] = &["d0", "d1", "d0/e"];

// ---------------------------------------------------------------------
// The schedule.

/// splitmix64: a tiny PRNG, so a seed means the same schedule everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())]
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Topo {
    Mesh(usize),
    Chain(usize),
}

impl Topo {
    fn devices(self) -> usize {
        match self {
            Topo::Mesh(n) | Topo::Chain(n) => n,
        }
    }

    /// The pairs that peer, (i, j) with i < j.
    fn links(self) -> Vec<(usize, usize)> {
        match self {
            Topo::Mesh(n) => (0..n)
                .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
                .collect(),
            Topo::Chain(n) => (0..n - 1).map(|i| (i, i + 1)).collect(),
        }
    }
}

#[derive(Debug, Clone)]
enum Ev {
    /// Writes content number `n` at `path` (made or replaced), of `kib`
    /// KiB more than its first line.
    Write {
        dev: usize,
        path: &'static str,
        n: usize,
        kib: usize,
    },
    Delete {
        dev: usize,
        path: &'static str,
    },
    Rename {
        dev: usize,
        from: &'static str,
        to: &'static str,
    },
    /// Renames a directory (not over anything).
    RenameDir {
        dev: usize,
        from: &'static str,
        to: &'static str,
    },
    /// Deletes a directory's whole tree.
    RmDir {
        dev: usize,
        dir: &'static str,
    },
    Kill(usize),
    Restart(usize),
    Stop(usize),
    Cont(usize),
    Cut(usize, usize),
    Restore(usize, usize),
    Sleep(u64),
}

/// Content number `n`: a first line that names it, and `kib` KiB of
/// lines of letters after it (a large file takes a while to send, so a
/// kill or a cut lands in the middle of its transfer).
fn content(seed: u64, dev: usize, n: usize, kib: usize) -> String {
    let mut s = format!("seed-{seed} dev-{} n-{n}\n", NAMES[dev]);
    let mut r = Rng(seed ^ (n as u64).wrapping_mul(0x1000_0001));
    for _ in 0..kib * 16 {
        let line: String = (0..63)
            .map(|_| (b'a' + r.below(26) as u8) as char)
            .collect();
        s += &line;
        s.push('\n');
    }
    s
}

/// A content's first line, to name it.
fn head(c: &str) -> &str {
    c.lines().next().unwrap_or("")
}

/// The schedule of `seed`: user operations on every device, faults, and
/// pauses; at most two daemons are down (killed or stopped) at once.
fn schedule(seed: u64, topo: Topo, steps: usize, pause: usize) -> Vec<Ev> {
    let n = topo.devices();
    let links = topo.links();
    let mut r = Rng(seed.wrapping_mul(31).wrapping_add(n as u64));
    let (mut killed, mut stopped) = (vec![false; n], vec![false; n]);
    let mut cut: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut next = 0;
    let mut out = Vec::new();
    for _ in 0..steps {
        let down = (0..n).filter(|&i| killed[i] || stopped[i]).count();
        let running: Vec<usize> = (0..n).filter(|&i| !killed[i] && !stopped[i]).collect();
        let dead: Vec<usize> = (0..n).filter(|&i| killed[i]).collect();
        let paused: Vec<usize> = (0..n).filter(|&i| stopped[i]).collect();
        let up: Vec<(usize, usize)> = links.iter().copied().filter(|l| !cut.contains(l)).collect();
        let dev = r.below(n);
        let roll = r.below(100);
        let ev = match roll {
            63..=69 if down < 2 => {
                let d = r.pick(&running);
                killed[d] = true;
                Ev::Kill(d)
            }
            70..=77 if !dead.is_empty() => {
                let d = r.pick(&dead);
                killed[d] = false;
                Ev::Restart(d)
            }
            78..=82 if down < 2 => {
                let d = r.pick(&running);
                stopped[d] = true;
                Ev::Stop(d)
            }
            83..=89 if !paused.is_empty() => {
                let d = r.pick(&paused);
                stopped[d] = false;
                Ev::Cont(d)
            }
            90..=94 if !up.is_empty() => {
                let l = r.pick(&up);
                cut.insert(l);
                Ev::Cut(l.0, l.1)
            }
            95..=99 if !cut.is_empty() => {
                let v: Vec<_> = cut.iter().copied().collect();
                let l = r.pick(&v);
                cut.remove(&l);
                Ev::Restore(l.0, l.1)
            }
            40..=49 => Ev::Delete {
                dev,
                path: r.pick(FILES),
            },
            58..=59 => {
                let from = r.pick(DIRS);
                let to = r.pick(&["d0", "d1", "d2", "d1/e", "d2/e"]);
                Ev::RenameDir { dev, from, to }
            }
            50..=57 => {
                let from = r.pick(FILES);
                let mut to = r.pick(FILES);
                if to == from {
                    to = FILES[(FILES.iter().position(|f| *f == from).unwrap() + 1) % FILES.len()];
                }
                Ev::Rename { dev, from, to }
            }
            60..=62 => Ev::RmDir {
                dev,
                dir: r.pick(DIRS),
            },
            _ => {
                next += 1;
                // One write in eight is of 256 KiB to 2 MiB.
                let kib = if r.below(8) == 0 {
                    256 + r.below(1792)
                } else {
                    0
                };
                Ev::Write {
                    dev,
                    path: r.pick(FILES),
                    n: next,
                    kib,
                }
            }
        };
        out.push(ev);
        out.push(Ev::Sleep(r.below(pause.max(1)) as u64));
    }
    out
}

// ---------------------------------------------------------------------
// Links: a proxy per direction of each link.

struct ProxyState {
    stop: AtomicBool,
    /// Whether it forwards, and the sockets of the connections it carries.
    inner: Mutex<(bool, Vec<TcpStream>)>,
}

/// Forwards connections made to `port` to a device's listen address while
/// up; cut, it drops every live connection and closes new ones at once.
struct Proxy {
    port: u16,
    state: Arc<ProxyState>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    fn new(target: &str) -> Proxy {
        let target: SocketAddr = target.parse().unwrap();
        // Port 0, kept bound: no other process (a test run beside this
        // one, whose `free_port` checks a port and binds it later) can take
        // it, and no outgoing connection gets a port that is bound.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let state = Arc::new(ProxyState {
            stop: AtomicBool::new(false),
            inner: Mutex::new((true, Vec::new())),
        });
        let s = state.clone();
        let thread = std::thread::spawn(move || {
            while !s.stop.load(Ordering::SeqCst) {
                let c = match l.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                let _ = c.set_nonblocking(false);
                let Ok(t) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
                    continue;
                };
                let mut g = s.inner.lock().unwrap();
                if !g.0 {
                    let _ = c.shutdown(Shutdown::Both);
                    let _ = t.shutdown(Shutdown::Both);
                    continue;
                }
                let (Ok(c2), Ok(t2), Ok(c3), Ok(t3)) =
                    (c.try_clone(), t.try_clone(), c.try_clone(), t.try_clone())
                else {
                    continue;
                };
                g.1.push(c3);
                g.1.push(t3);
                drop(g);
                std::thread::spawn(move || pump(c, t));
                std::thread::spawn(move || pump(t2, c2));
            }
        });
        Proxy {
            port,
            state,
            thread: Some(thread),
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn set_up(&self, up: bool) {
        let mut g = self.state.inner.lock().unwrap();
        g.0 = up;
        if !up {
            for s in g.1.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.set_up(false);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

// ---------------------------------------------------------------------
// The devices.

#[derive(Debug, Clone, Copy, PartialEq)]
enum Proc {
    Running,
    Stopped,
    Killed,
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

struct Net {
    seed: u64,
    topo: Topo,
    devs: Vec<Device>,
    folders: Vec<PathBuf>,
    /// Per device: where its operations stage new files and put what they
    /// take away (outside the folder, on the same file system).
    scratch: Vec<PathBuf>,
    procs: Vec<Proc>,
    /// (i, j) → the proxies i→j and j→i.
    links: BTreeMap<(usize, usize), (Proxy, Proxy)>,
    /// Every content a user wrote: content → (device, path, step).
    written: BTreeMap<String, (usize, String, usize)>,
    /// Content a user's operation took off the disk: content → step.
    superseded: BTreeMap<String, usize>,
    /// What each step did, for the report.
    log: Vec<String>,
    tmp_n: usize,
}

impl Drop for Net {
    fn drop(&mut self) {
        // A stopped daemon is woken before the devices kill their daemons,
        // even when the test panicked.
        for (d, p) in self.devs.iter().zip(&self.procs) {
            if *p == Proc::Stopped {
                signal(d.pid(), "-CONT");
            }
        }
    }
}

impl Net {
    fn new(seed: u64, topo: Topo) -> Net {
        let n = topo.devices();
        let devs: Vec<Device> = (0..n).map(|i| Device::new(NAMES[i])).collect();
        let mut links = BTreeMap::new();
        for (i, j) in topo.links() {
            let ij = Proxy::new(&devs[j].addr);
            let ji = Proxy::new(&devs[i].addr);
            devs[i].knows_at(&devs[j], &ij.addr());
            devs[j].knows_at(&devs[i], &ji.addr());
            links.insert((i, j), (ij, ji));
        }
        let mut folders = Vec::new();
        let mut scratch = Vec::new();
        for (i, d) in devs.iter().enumerate() {
            let peers: Vec<&Device> = topo
                .links()
                .iter()
                .filter_map(|&(x, y)| {
                    if x == i {
                        Some(&devs[y])
                    } else if y == i {
                        Some(&devs[x])
                    } else {
                        None
                    }
                })
                .collect();
            let f = d.folder("docs", "docs", &peers, &[]);
            std::fs::create_dir_all(&f).unwrap();
            folders.push(f);
            let s = d.root.join("chaos-scratch");
            std::fs::create_dir_all(&s).unwrap();
            scratch.push(s);
        }
        Net {
            seed,
            topo,
            devs,
            folders,
            scratch,
            procs: vec![Proc::Killed; n],
            links,
            written: BTreeMap::new(),
            superseded: BTreeMap::new(),
            log: Vec::new(),
            tmp_n: 0,
        }
    }

    fn scratch_path(&mut self, dev: usize) -> PathBuf {
        self.tmp_n += 1;
        self.scratch[dev].join(format!("x{}", self.tmp_n))
    }

    /// Marks every file under `p` (taken off the disk by a user at `step`)
    /// superseded, and removes it.
    fn take_away(&mut self, p: &Path, step: usize) -> Vec<String> {
        let mut seen = Vec::new();
        let mut stack = vec![p.to_path_buf()];
        while let Some(x) = stack.pop() {
            let Ok(m) = std::fs::symlink_metadata(&x) else {
                continue;
            };
            if m.is_dir() {
                for e in std::fs::read_dir(&x).unwrap().flatten() {
                    stack.push(e.path());
                }
            } else if let Ok(c) = std::fs::read_to_string(&x) {
                if self.written.contains_key(&c) {
                    self.superseded.entry(c.clone()).or_insert(step);
                }
                seen.push(head(&c).to_string());
            }
        }
        if std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
            std::fs::remove_dir_all(p).unwrap();
        } else {
            let _ = std::fs::remove_file(p);
        }
        seen
    }

    /// The first of FILES from `from` on (round) that exists on `dev` (or
    /// that does not, when `there` is false).
    fn nth_file(&self, dev: usize, from: &str, there: bool) -> Option<&'static str> {
        let at = FILES.iter().position(|f| *f == from)?;
        (0..FILES.len())
            .map(|k| FILES[(at + k) % FILES.len()])
            .find(|f| std::fs::symlink_metadata(self.folders[dev].join(f)).is_ok() == there)
    }

    fn delete(&mut self, dev: usize, p: &str, step: usize) -> String {
        let to = self.scratch_path(dev);
        match std::fs::rename(self.folders[dev].join(p), &to) {
            Ok(()) => format!("deleted {p} {:?}", self.take_away(&to, step)),
            Err(e) => format!("nothing to delete at {p} ({e})"),
        }
    }

    fn rename(&mut self, dev: usize, from: &str, to: &str) -> String {
        let (a, b) = (self.folders[dev].join(from), self.folders[dev].join(to));
        let _ = std::fs::create_dir_all(b.parent().unwrap());
        match renameat_with(CWD, &a, CWD, &b, RenameFlags::NOREPLACE) {
            Ok(()) => format!("renamed {from} to {to}"),
            Err(e) => format!("not renamed {from} to {to} ({e})"),
        }
    }

    /// Runs one event; returns what it did.
    fn apply(&mut self, step: usize, ev: &Ev) -> String {
        match *ev {
            Ev::Write { dev, path, n, kib } => {
                let c = content(self.seed, dev, n, kib);
                let tmp = self.scratch_path(dev);
                std::fs::write(&tmp, &c).unwrap();
                let target = self.folders[dev].join(path);
                for _ in 0..5 {
                    let _ = std::fs::create_dir_all(target.parent().unwrap());
                    match renameat_with(CWD, &tmp, CWD, &target, RenameFlags::NOREPLACE) {
                        Ok(()) => {
                            self.written.insert(c, (dev, path.to_string(), step));
                            return "made".into();
                        }
                        Err(Errno::EXIST) => {
                            match renameat_with(CWD, &tmp, CWD, &target, RenameFlags::EXCHANGE) {
                                Ok(()) => {
                                    self.written.insert(c, (dev, path.to_string(), step));
                                    let old = self.take_away(&tmp, step);
                                    return format!("replaced {old:?}");
                                }
                                Err(Errno::NOENT) => continue,
                                Err(e) => panic!("exchange {}: {e}", target.display()),
                            }
                        }
                        Err(Errno::NOENT) => continue,
                        Err(e) => panic!("rename to {}: {e}", target.display()),
                    }
                }
                let _ = std::fs::remove_file(&tmp);
                "gave up (the path kept changing)".into()
            }
            // A file to delete or rename is the first of FILES from the
            // one drawn on that is there, and a new name the first that is
            // free, so that most of them do something.
            Ev::Delete { dev, path } => {
                let p = self.nth_file(dev, path, true).unwrap_or(path);
                self.delete(dev, p, step)
            }
            Ev::RmDir { dev, dir } => self.delete(dev, dir, step),
            Ev::Rename { dev, from, to } => {
                let from = self.nth_file(dev, from, true).unwrap_or(from);
                let to = self.nth_file(dev, to, false).unwrap_or(to);
                self.rename(dev, from, to)
            }
            Ev::RenameDir { dev, from, to } => self.rename(dev, from, to),
            Ev::Kill(d) => {
                self.devs[d].kill9();
                self.procs[d] = Proc::Killed;
                "killed".into()
            }
            Ev::Restart(d) => {
                self.devs[d].start();
                self.procs[d] = Proc::Running;
                format!("started, pid {}", self.devs[d].pid())
            }
            Ev::Stop(d) => {
                signal(self.devs[d].pid(), "-STOP");
                self.procs[d] = Proc::Stopped;
                "stopped".into()
            }
            Ev::Cont(d) => {
                signal(self.devs[d].pid(), "-CONT");
                self.procs[d] = Proc::Running;
                "continued".into()
            }
            Ev::Cut(i, j) | Ev::Restore(i, j) => {
                let up = matches!(ev, Ev::Restore(..));
                let (x, y) = &self.links[&(i, j)];
                x.set_up(up);
                y.set_up(up);
                String::new()
            }
            Ev::Sleep(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                String::new()
            }
        }
    }

    /// A daemon that should be running and has exited.
    fn crashed(&self) -> Option<String> {
        self.devs
            .iter()
            .zip(&self.procs)
            .find(|(d, p)| **p != Proc::Killed && d.exited())
            .map(|(d, _)| format!("the daemon of {} exited by itself", d.name))
    }

    fn heal(&mut self) {
        for i in 0..self.devs.len() {
            match self.procs[i] {
                Proc::Stopped => signal(self.devs[i].pid(), "-CONT"),
                Proc::Killed => self.devs[i].start(),
                Proc::Running => {}
            }
            self.procs[i] = Proc::Running;
        }
        for (x, y) in self.links.values() {
            x.set_up(true);
            y.set_up(true);
        }
    }

    fn trees(&self) -> Vec<BTreeMap<Vec<u8>, Node>> {
        self.folders.iter().map(|f| snapshot(f)).collect()
    }

    /// Waits until every device holds the same tree (twice in a row, a
    /// second apart), or says how they differ.
    fn converge(&self, limit: Duration) -> Result<BTreeMap<Vec<u8>, Node>, String> {
        let t = Instant::now();
        let mut last: Option<BTreeMap<Vec<u8>, Node>> = None;
        loop {
            if let Some(c) = self.crashed() {
                return Err(c);
            }
            let trees = self.trees();
            let same = trees.iter().all(|x| *x == trees[0]);
            if same && last.as_ref() == Some(&trees[0]) {
                return Ok(trees[0].clone());
            }
            last = same.then(|| trees[0].clone());
            if t.elapsed() > limit {
                return Err(format!(
                    "the devices did not come to hold the same tree in {limit:?}:\n{}",
                    diff_trees(&trees)
                ));
            }
            std::thread::sleep(Duration::from_millis(if same { 1000 } else { 300 }));
        }
    }

    /// Content (of `missing`) found in some device's version history:
    /// content → where.
    fn in_history(&self, missing: &BTreeSet<String>) -> BTreeMap<String, String> {
        let mut found = BTreeMap::new();
        for (i, d) in self.devs.iter().enumerate() {
            let f = &self.folders[i];
            let mut paths: BTreeSet<String> = FILES.iter().map(|s| s.to_string()).collect();
            for k in snapshot(f).keys() {
                paths.insert(String::from_utf8_lossy(k).into_owned());
            }
            let out = d.run(&["history", "--deleted", "--json", f.to_str().unwrap()]);
            if let Ok(j) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                for v in j["versions"].as_array().into_iter().flatten() {
                    if let Some(p) = v["path"].as_str() {
                        paths.insert(p.to_string());
                    }
                }
            }
            for p in paths {
                let at = f.join(&p);
                let out = d.run(&["history", "--json", at.to_str().unwrap()]);
                let Ok(j) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
                    continue;
                };
                for v in j["versions"].as_array().into_iter().flatten() {
                    let Some(id) = v["version"].as_u64() else {
                        continue;
                    };
                    let to = self.scratch[i].join(format!("restored-{id}"));
                    let _ = std::fs::remove_file(&to);
                    d.run(&[
                        "restore",
                        at.to_str().unwrap(),
                        "--version",
                        &id.to_string(),
                        "--to",
                        to.to_str().unwrap(),
                    ]);
                    if let Ok(c) = std::fs::read_to_string(&to) {
                        if missing.contains(&c) {
                            found
                                .entry(c)
                                .or_insert_with(|| format!("{}: {p} version {id}", d.name));
                        }
                    }
                    let _ = std::fs::remove_file(&to);
                }
            }
        }
        found
    }

    fn report(&self, sched: &[Ev], why: &str) -> String {
        let keep = std::env::temp_dir()
            .join("weave-chaos")
            .join(format!("{:?}-{}", self.topo, self.seed));
        let _ = std::fs::create_dir_all(&keep);
        let mut s = format!(
            "chaos {:?} seed {} failed: {why}\n(rerun: WEAVE_CHAOS_SEED={} cargo test -p weave --test chaos)\n--- schedule ---\n",
            self.topo, self.seed, self.seed
        );
        for (i, e) in sched.iter().enumerate() {
            if matches!(e, Ev::Sleep(_)) {
                continue;
            }
            let did = self.log.get(i).map(String::as_str).unwrap_or("(not run)");
            s += &format!("{i:4} {e:?} {did}\n");
        }
        for d in &self.devs {
            let log = d.log();
            let _ = std::fs::write(keep.join(format!("{}.log", d.name)), &log);
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            s += &format!(
                "--- {} (last {} lines) ---\n{}\n",
                d.name,
                tail.len(),
                tail.join("\n")
            );
        }
        // The sockets on this net's ports (a port that cannot be bound
        // again is explained here).
        let mut ports: Vec<String> = self.devs.iter().map(|d| d.addr.clone()).collect();
        for (x, y) in self.links.values() {
            ports.push(x.addr());
            ports.push(y.addr());
        }
        if let Ok(o) = Command::new("ss").args(["-tanpe"]).output() {
            let o = String::from_utf8_lossy(&o.stdout);
            let mine: Vec<&str> = o
                .lines()
                .filter(|l| ports.iter().any(|p| l.contains(&format!("{p} "))))
                .collect();
            s += &format!("--- sockets ---\n{}\n", mine.join("\n"));
        }
        s += &format!("whole logs: {}\n", keep.display());
        s
    }
}

/// The tree of a folder like `common::snapshot` (its `.weave` left out),
/// but a file the daemon moves while it is read is left out, not an error.
fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            if prefix.is_empty() && name == ".weave" {
                continue;
            }
            let mut rel: Vec<u8> = prefix.clone();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name.as_bytes());
            let full = dir.join(&name);
            let Ok(m) = std::fs::symlink_metadata(&full) else {
                continue;
            };
            let mode = m.permissions().mode() & 0o777;
            let node = if m.is_dir() {
                stack.push((full, rel.clone()));
                Node::Dir { mode }
            } else if m.is_file() {
                let (Ok(content), Ok(mtime)) = (std::fs::read(&full), m.modified()) else {
                    continue;
                };
                Node::File {
                    content,
                    mode,
                    mtime,
                }
            } else if m.file_type().is_symlink() {
                Node::Symlink {
                    target: std::fs::read_link(&full).unwrap_or_default(),
                }
            } else {
                Node::Other
            };
            out.insert(rel, node);
        }
    }
    out
}

fn diff_trees(trees: &[BTreeMap<Vec<u8>, Node>]) -> String {
    let mut all: BTreeSet<&Vec<u8>> = BTreeSet::new();
    for t in trees {
        all.extend(t.keys());
    }
    let mut out = String::new();
    for k in all {
        let vs: Vec<Option<&Node>> = trees.iter().map(|t| t.get(k)).collect();
        if vs.iter().all(|v| *v == vs[0]) {
            continue;
        }
        out += &format!("  {}:\n", String::from_utf8_lossy(k));
        for (i, v) in vs.iter().enumerate() {
            let v = match v {
                None => "-".to_string(),
                Some(Node::File {
                    content,
                    mode,
                    mtime,
                }) => format!(
                    "{:?} {mode:o} {:?}",
                    head(&String::from_utf8_lossy(content)),
                    mtime
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                ),
                Some(n) => format!("{n:?}"),
            };
            out += &format!("    {}: {v}\n", NAMES[i]);
        }
    }
    out
}

/// One seed on one topology.
/// Ok: what the schedule did, in a line.
fn run_seed(topo: Topo, seed: u64, steps: usize, pause: usize) -> Result<String, String> {
    let sched = schedule(seed, topo, steps, pause);
    let mut net = Net::new(seed, topo);
    for i in 0..net.devs.len() {
        net.devs[i].start();
        net.procs[i] = Proc::Running;
    }
    // A first file everywhere: every link has been up.
    net.apply(
        0,
        &Ev::Write {
            dev: 0,
            path: "f0.txt",
            n: 0,
            kib: 0,
        },
    );
    let first = content(seed, 0, 0, 0);
    let t = Instant::now();
    while !net
        .folders
        .iter()
        .all(|f| std::fs::read_to_string(f.join("f0.txt")).ok().as_ref() == Some(&first))
    {
        if t.elapsed() > Duration::from_secs(40) {
            return Err(net.report(&sched, "the first file did not reach every device"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let t = Instant::now();
    for (i, ev) in sched.iter().enumerate() {
        if let Some(c) = net.crashed() {
            return Err(net.report(&sched, &c));
        }
        let did = net.apply(i + 1, ev);
        net.log.push(did);
        if t.elapsed() > Duration::from_secs(120) {
            return Err(net.report(&sched, "the schedule took over 2 minutes"));
        }
    }
    net.heal();
    let healed = Instant::now();
    let tree = match net.converge(CONVERGE) {
        Ok(t) => t,
        Err(e) => return Err(net.report(&sched, &e)),
    };
    let done = {
        let count = |p: &str| net.log.iter().filter(|l| l.starts_with(p)).count();
        let copies = tree
            .keys()
            .filter(|k| String::from_utf8_lossy(k).contains(".weave-conflict-"))
            .count();
        format!(
            "{} made, {} replaced, {} deletes, {} renames, {} kills, {} stops; same tree {:.1?} after healing, {} files, {copies} conflict copies",
            count("made"),
            count("replaced"),
            count("deleted"),
            count("renamed"),
            count("killed"),
            count("stopped"),
            healed.elapsed(),
            tree.values().filter(|n| matches!(n, Node::File { .. })).count(),
        )
    };
    let present: BTreeSet<String> = tree
        .values()
        .filter_map(|n| match n {
            Node::File { content, .. } => Some(String::from_utf8_lossy(content).into_owned()),
            _ => None,
        })
        .collect();
    let missing: BTreeSet<String> = net
        .written
        .keys()
        .filter(|c| !present.contains(*c) && !net.superseded.contains_key(*c))
        .cloned()
        .collect();
    if missing.is_empty() {
        return Ok(done);
    }
    let found = net.in_history(&missing);
    let lost: Vec<String> = missing
        .iter()
        .filter(|c| !found.contains_key(*c))
        .map(|c| {
            let (d, p, s) = &net.written[c];
            format!(
                "  {:?} (written on {} at {p}, step {s})",
                head(c),
                NAMES[*d]
            )
        })
        .collect();
    if lost.is_empty() {
        return Ok(done);
    }
    let names: Vec<String> = tree
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    Err(net.report(
        &sched,
        &format!(
            "content a user wrote is lost (in no file and no version history):\n{}\nthe tree: {names:?}\nin history: {:?}",
            lost.join("\n"),
            found.iter().map(|(c, w)| (head(c), w)).collect::<Vec<_>>()
        ),
    ))
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("WEAVE_CHAOS_SEED") {
        return vec![s.trim().parse().expect("WEAVE_CHAOS_SEED: a number")];
    }
    if let Ok(s) = std::env::var("WEAVE_CHAOS_SEEDS") {
        if let Some((a, b)) = s.split_once("..") {
            let (a, b): (u64, u64) = (a.trim().parse().unwrap(), b.trim().parse().unwrap());
            return (a..b).collect();
        }
        let n: u64 = s.trim().parse().expect("WEAVE_CHAOS_SEEDS: N or A..B");
        return (1..=n).collect();
    }
    CI_SEEDS.to_vec()
}

fn run(topo: Topo) {
    let steps = std::env::var("WEAVE_CHAOS_STEPS")
        .ok()
        .map(|s| s.parse().expect("WEAVE_CHAOS_STEPS: a number"))
        .unwrap_or(STEPS);
    let pause = std::env::var("WEAVE_CHAOS_PAUSE_MS")
        .ok()
        .map(|s| s.parse().expect("WEAVE_CHAOS_PAUSE_MS: a number"))
        .unwrap_or(PAUSE_MS);
    let mut failed = Vec::new();
    for seed in seeds() {
        let t = Instant::now();
        let r =
            std::panic::catch_unwind(|| run_seed(topo, seed, steps, pause)).unwrap_or_else(|p| {
                let why = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let sched: Vec<String> = schedule(seed, topo, steps, pause)
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| !matches!(e, Ev::Sleep(_)))
                    .map(|(i, e)| format!("{i:4} {e:?}"))
                    .collect();
                Err(format!(
                    "chaos {topo:?} seed {seed} panicked: {why}\n--- schedule ---\n{}",
                    sched.join("\n")
                ))
            });
        match r {
            Ok(done) => eprintln!(
                "chaos {topo:?} seed {seed}: ok in {:.1?} ({done})",
                t.elapsed()
            ),
            Err(e) => {
                eprintln!("{e}");
                eprintln!("chaos {topo:?} seed {seed}: FAILED in {:.1?}", t.elapsed());
                failed.push(seed);
            }
        }
    }
    assert!(failed.is_empty(), "chaos {topo:?}: seeds {failed:?} failed");
}

#[test]
fn chaos_mesh_of_five() {
    run(Topo::Mesh(5));
}

#[test]
fn chaos_chain_of_four() {
    run(Topo::Chain(4));
}
