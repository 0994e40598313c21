//! Helpers for the CLI integration tests: running the real `weave` binary,
//! building trees, and taking snapshots of what is on disk.

#![allow(dead_code)]

pub mod daemon;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What one run of `weave` did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The stdout parsed as JSON (for runs with `--json`).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n--- stdout\n{}\n--- stderr\n{}",
                self.stdout, self.stderr
            )
        })
    }

    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "unexpected exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Asserts that stderr contains every one of `words` (case-insensitive).
    pub fn stderr_has(&self, words: &[&str]) -> &Self {
        let low = self.stderr.to_lowercase();
        for w in words {
            assert!(
                low.contains(&w.to_lowercase()),
                "stderr does not mention {w:?}\n--- stderr\n{}\n--- stdout\n{}",
                self.stderr,
                self.stdout
            );
        }
        self
    }

    pub fn stdout_has(&self, words: &[&str]) -> &Self {
        let low = self.stdout.to_lowercase();
        for w in words {
            assert!(
                low.contains(&w.to_lowercase()),
                "stdout does not mention {w:?}\n--- stdout\n{}\n--- stderr\n{}",
                self.stdout,
                self.stderr
            );
        }
        self
    }
}

/// Runs `weave ARGS` in `cwd`, bounded in time.
pub fn weave<I, S>(cwd: &Path, args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = assert_cmd::Command::cargo_bin("weave")
        .expect("the weave binary is built")
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .timeout(Duration::from_secs(120))
        .args(args)
        .output()
        .expect("weave runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `weave sync ARGS` in `cwd`.
pub fn sync(cwd: &Path, args: &[&str]) -> Run {
    let mut v: Vec<&str> = vec!["sync"];
    v.extend_from_slice(args);
    weave(cwd, v)
}

/// `weave sync --json ARGS` in `cwd`, with its JSON summary.
pub fn sync_json(cwd: &Path, args: &[&str]) -> (Run, serde_json::Value) {
    let mut v: Vec<&str> = vec!["sync", "--json"];
    v.extend_from_slice(args);
    let r = weave(cwd, v);
    let j = r.json();
    (r, j)
}

/// A fresh temporary directory with empty replica directories `names`.
pub fn setup(names: &[&str]) -> tempfile::TempDir {
    let t = tempfile::tempdir().expect("tempdir");
    for n in names {
        fs::create_dir(t.path().join(n)).expect("mkdir replica");
    }
    t
}

/// Writes a file, creating its parents.
pub fn write(path: impl AsRef<Path>, content: impl AsRef<[u8]>) {
    let path = path.as_ref();
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).expect("create parents");
    }
    fs::write(path, content).expect("write file");
}

pub fn read(path: impl AsRef<Path>) -> Vec<u8> {
    let path = path.as_ref();
    fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

pub fn read_str(path: impl AsRef<Path>) -> String {
    String::from_utf8(read(path)).expect("utf-8 content")
}

/// A point in time from seconds and nanoseconds since the epoch.
pub fn at(secs: u64, nanos: u32) -> SystemTime {
    UNIX_EPOCH + Duration::new(secs, nanos)
}

/// Sets the mtime of a file (not following symlinks is not needed here).
pub fn set_mtime(path: impl AsRef<Path>, t: SystemTime) {
    let path = path.as_ref();
    let f = fs::File::options()
        .read(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap_or_else(|e| panic!("set_times {}: {e}", path.display()));
}

/// Writes a file and gives it the mtime `t`.
pub fn write_at(path: impl AsRef<Path>, content: impl AsRef<[u8]>, t: SystemTime) {
    write(path.as_ref(), content);
    set_mtime(path, t);
}

pub fn mtime(path: impl AsRef<Path>) -> SystemTime {
    fs::symlink_metadata(path.as_ref())
        .expect("stat")
        .modified()
        .expect("mtime")
}

pub fn mode(path: impl AsRef<Path>) -> u32 {
    fs::symlink_metadata(path.as_ref())
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777
}

pub fn chmod(path: impl AsRef<Path>, mode: u32) {
    fs::set_permissions(path.as_ref(), fs::Permissions::from_mode(mode)).expect("chmod");
}

/// One node of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File {
        content: Vec<u8>,
        mode: u32,
        mtime: SystemTime,
    },
    Dir {
        mode: u32,
    },
    Symlink {
        target: PathBuf,
    },
    Other,
}

/// Everything under `root`, by relative path (raw bytes, so names that are
/// not UTF-8 are kept). With `skip_state`, the top-level `.weave` is left
/// out. Bounded: at most 100 000 nodes.
pub fn snapshot_with(root: &Path, skip_state: bool) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<(PathBuf, Vec<u8>)> = vec![(root.to_path_buf(), Vec::new())];
    let mut budget = 100_000usize;
    while let Some((dir, prefix)) = stack.pop() {
        let mut names: Vec<OsString> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
            .map(|d| d.expect("dir entry").file_name())
            .collect();
        names.sort();
        for name in names {
            budget = budget
                .checked_sub(1)
                .expect("tree too large for a snapshot");
            if skip_state && prefix.is_empty() && name == ".weave" {
                continue;
            }
            let mut rel = prefix.clone();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name.as_bytes());
            let full = dir.join(&name);
            let m = fs::symlink_metadata(&full).expect("stat");
            let ft = m.file_type();
            let node = if ft.is_symlink() {
                Node::Symlink {
                    target: fs::read_link(&full).expect("readlink"),
                }
            } else if ft.is_dir() {
                stack.push((full.clone(), rel.clone()));
                Node::Dir {
                    mode: m.permissions().mode() & 0o777,
                }
            } else if ft.is_file() {
                Node::File {
                    content: fs::read(&full).expect("read"),
                    mode: m.permissions().mode() & 0o777,
                    mtime: m.modified().expect("mtime"),
                }
            } else {
                Node::Other
            };
            out.insert(rel, node);
        }
    }
    out
}

/// The synced content of a replica (its `.weave` left out).
pub fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    snapshot_with(root, true)
}

/// Everything under `root`, `.weave` included.
pub fn snapshot_all(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    snapshot_with(root, false)
}

/// Readable listing of a snapshot's paths, for failure messages.
pub fn names(s: &BTreeMap<Vec<u8>, Node>) -> Vec<String> {
    s.keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect()
}

/// Asserts that two replicas hold the same tree (content, kinds, modes,
/// file mtimes, link targets).
pub fn assert_same_tree(a: &Path, b: &Path) {
    let sa = snapshot(a);
    let sb = snapshot(b);
    if sa != sb {
        let ka = names(&sa);
        let kb = names(&sb);
        let mut diffs = Vec::new();
        for (k, v) in &sa {
            match sb.get(k) {
                None => diffs.push(format!(
                    "only in {}: {}",
                    a.display(),
                    String::from_utf8_lossy(k)
                )),
                Some(w) if w != v => diffs.push(format!(
                    "differs: {}: {v:?} vs {w:?}",
                    String::from_utf8_lossy(k)
                )),
                _ => {}
            }
        }
        for k in sb.keys() {
            if !sa.contains_key(k) {
                diffs.push(format!(
                    "only in {}: {}",
                    b.display(),
                    String::from_utf8_lossy(k)
                ));
            }
        }
        panic!(
            "replicas differ:\n  {}\n{} has {ka:?}\n{} has {kb:?}",
            diffs.join("\n  "),
            a.display(),
            b.display()
        );
    }
}

/// The names (relative to `dir`, not recursive) of the conflict copies of
/// `stem`…`ext` in `dir`.
pub fn conflict_copies(dir: &Path, stem: &str, ext: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .filter_map(|d| d.ok())
        .filter_map(|d| d.file_name().to_str().map(str::to_string))
        .filter(|n| is_conflict_copy_name(n, stem, ext))
        .collect();
    v.sort();
    v
}

const CROCKFORD: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// `STEM.weave-conflict-YYYYMMDD-HHMMSS-XXXXXXX EXT` (EXT with its dot, or
/// empty).
pub fn is_conflict_copy_name(name: &str, stem: &str, ext: &str) -> bool {
    let Some(rest) = name.strip_prefix(stem) else {
        return false;
    };
    let Some(rest) = rest.strip_suffix(ext) else {
        return false;
    };
    let Some(rest) = rest.strip_prefix(".weave-conflict-") else {
        return false;
    };
    let b = rest.as_bytes();
    b.len() == 8 + 1 + 6 + 1 + 7
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'-'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'-'
        && rest[16..].chars().all(|c| CROCKFORD.contains(c))
}

/// `YYYYMMDD-HHMMSS` of a Unix time, in UTC.
pub fn utc_stamp(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// True when the current user can read a file with mode 000 (root can), so
/// permission-based failures cannot be provoked.
pub fn can_read_unreadable_files() -> bool {
    let t = tempfile::tempdir().expect("tempdir");
    let p = t.path().join("probe");
    fs::write(&p, b"x").expect("write probe");
    chmod(&p, 0o000);
    let ok = fs::read(&p).is_ok();
    chmod(&p, 0o600);
    ok
}

/// The replica ids from a JSON report, in the order given on the command
/// line.
pub fn replica_ids(j: &serde_json::Value) -> Vec<String> {
    j["replicas"]
        .as_array()
        .expect("replicas array")
        .iter()
        .map(|r| r["id"].as_str().expect("replica id").to_string())
        .collect()
}

#[test]
fn utc_stamp_is_right() {
    assert_eq!(utc_stamp(1_795_256_100), "20261121-101500");
    assert_eq!(utc_stamp(0), "19700101-000000");
    assert_eq!(utc_stamp(951_782_400), "20000229-000000");
}

pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    v
}

/// A sparse file of `size` bytes at `path`: holes, with `pieces` of data
/// (offset, bytes) written into it, and an mtime in the past (its stat is
/// trusted at once).
pub fn make_sparse(path: impl AsRef<Path>, size: u64, pieces: &[(u64, &[u8])]) {
    use std::os::unix::fs::FileExt;
    let f = fs::File::create(path.as_ref()).unwrap();
    f.set_len(size).unwrap();
    for (at, data) in pieces {
        f.write_all_at(data, *at).unwrap();
    }
    drop(f);
    set_mtime(path, at(1_600_000_000, 0));
}

/// Bytes a file takes on disk (its blocks).
pub fn allocated(path: impl AsRef<Path>) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path.as_ref()).unwrap().blocks() * 512
}

/// A tree with a bit of everything a first copy must carry faithfully:
/// nested and empty directories, a multi-chunk file, an empty file,
/// symlinks (relative, dangling, to a directory), modes and exact mtimes.
pub struct SampleTree {
    pub big: Vec<u8>,
    pub t1: SystemTime,
    pub t2: SystemTime,
}

impl SampleTree {
    pub fn make(a: &Path) -> SampleTree {
        let t = SampleTree {
            big: random_bytes(3 * 1024 * 1024 + 17, 1),
            t1: at(1_600_000_000, 123_456_789),
            t2: at(1_234_567_890, 987_654_321),
        };
        write_at(a.join("top.txt"), "top\n", t.t1);
        write_at(a.join("nested/deeper/deepest/big.bin"), &t.big, t.t2);
        write_at(a.join("nested/small.txt"), "", t.t1);
        fs::create_dir_all(a.join("empty")).unwrap();
        fs::create_dir_all(a.join("nested/empty too")).unwrap();
        std::os::unix::fs::symlink("top.txt", a.join("link")).unwrap();
        std::os::unix::fs::symlink("does/not/exist", a.join("dangling")).unwrap();
        std::os::unix::fs::symlink("nested", a.join("dirlink")).unwrap();
        write_at(a.join("script.sh"), "#!/bin/sh\necho hi\n", t.t1);
        chmod(a.join("script.sh"), 0o750);
        write_at(a.join("private/secret.txt"), "s3cret\n", t.t2);
        chmod(a.join("private/secret.txt"), 0o600);
        chmod(a.join("private"), 0o700);
        write_at(a.join("readonly.txt"), "ro\n", t.t1);
        chmod(a.join("readonly.txt"), 0o444);
        t
    }

    /// `b` holds the tree, checked detail by detail.
    pub fn check(&self, b: &Path) {
        assert_eq!(read(b.join("nested/deeper/deepest/big.bin")), self.big);
        assert_eq!(mtime(b.join("top.txt")), self.t1);
        assert_eq!(mtime(b.join("nested/deeper/deepest/big.bin")), self.t2);
        assert_eq!(read_str(b.join("nested/small.txt")), "");
        assert!(fs::symlink_metadata(b.join("empty")).unwrap().is_dir());
        assert_eq!(fs::read_dir(b.join("empty")).unwrap().count(), 0);
        assert!(b.join("nested/empty too").is_dir());
        for (link, target) in [
            ("link", "top.txt"),
            ("dangling", "does/not/exist"),
            ("dirlink", "nested"),
        ] {
            let m = fs::symlink_metadata(b.join(link)).unwrap();
            assert!(m.file_type().is_symlink(), "{link} is not a symlink on B");
            assert_eq!(fs::read_link(b.join(link)).unwrap(), Path::new(target));
        }
        assert_eq!(mode(b.join("script.sh")), 0o750);
        assert_eq!(mode(b.join("private")), 0o700);
        assert_eq!(mode(b.join("private/secret.txt")), 0o600);
        assert_eq!(mode(b.join("readonly.txt")), 0o444);
    }
}

/// A loopback TCP port for a server a test starts (a daemon, sshd).
///
/// Asking the kernel for port 0 and closing it again races: the kernel
/// hands the same ephemeral port to the next `bind(0)` or outgoing
/// connection, so two daemons of tests running at once could end up on one
/// port. These ports come from below the ephemeral range, where the kernel
/// never picks by itself; each is handed out once in this process (the
/// start depends on the process id, so test binaries run side by side start
/// apart), and only if it can be bound right now.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (low, high) = if ephemeral_low > 12_000 {
        (10_000, ephemeral_low)
    } else {
        // An unusual ephemeral range: the ports above it.
        (ephemeral_low.max(1024) + 30_000, 65_000)
    };
    let span = high - low;
    let start = std::process::id() * 97 % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (low + (start + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {low}..{high}");
}
