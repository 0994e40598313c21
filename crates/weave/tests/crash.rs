//! Fault test: kill `weave sync` (SIGKILL) at many points while it copies
//! large files; after every kill no file holds a mix of old and new bytes,
//! no state is corrupt, and a rerun converges.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn weave() -> PathBuf {
    assert_cmd::cargo::cargo_bin("weave")
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    v
}

fn hash(p: &Path) -> Option<blake3::Hash> {
    fs::read(p).ok().map(|d| blake3::hash(&d))
}

fn run_sync(a: &Path, b: &Path) -> std::process::Output {
    Command::new(weave())
        .arg("sync")
        .arg(a)
        .arg(b)
        .output()
        .expect("run weave")
}

/// Starts a sync and kills it after `delay`; true if it was killed before
/// it finished.
fn sync_killed_after(a: &Path, b: &Path, delay: Duration) -> bool {
    let mut child = Command::new(weave())
        .arg("sync")
        .arg(a)
        .arg(b)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn weave");
    let start = Instant::now();
    loop {
        if let Some(_status) = child.try_wait().unwrap() {
            return false;
        }
        if start.elapsed() >= delay {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

const FILES: usize = 6;
const SIZE: usize = 6 * 1024 * 1024;

fn name(i: usize) -> String {
    format!("dir{}/big{i}.bin", i % 2)
}

/// Every file in `b` must be absent or exactly one of its allowed versions.
fn check_whole(b: &Path, allowed: &BTreeMap<String, Vec<blake3::Hash>>) {
    for (n, versions) in allowed {
        if let Some(h) = hash(&b.join(n)) {
            assert!(
                versions.contains(&h),
                "{n} holds a mix of versions (or garbage) after a kill"
            );
        }
    }
}

fn no_temporaries(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let n = e.file_name().to_string_lossy().into_owned();
            assert!(
                !n.starts_with(".~weave-"),
                "stale temporary {} left",
                e.path().display()
            );
            if e.file_type().unwrap().is_dir() && n != ".weave" {
                stack.push(e.path());
            }
        }
    }
}

#[test]
fn killed_syncs_never_leave_mixed_files_and_a_rerun_converges() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    for d in [&a, &b] {
        fs::create_dir_all(d.join("dir0")).unwrap();
        fs::create_dir_all(d.join("dir1")).unwrap();
    }
    let mut allowed: BTreeMap<String, Vec<blake3::Hash>> = BTreeMap::new();
    for i in 0..FILES {
        let data = random_bytes(SIZE, i as u64);
        fs::write(a.join(name(i)), &data).unwrap();
        allowed
            .entry(name(i))
            .or_default()
            .push(blake3::hash(&data));
    }

    // Round 1: kills during the first copy into an empty replica.
    // Round 2: kills while every file is being replaced by a new version
    // (half of each file rewritten, so chunks are reused from the old one).
    let delays_ms = [3u64, 8, 15, 25, 40, 60, 90, 130, 180, 250, 400];
    let mut kills = 0;
    for round in 0..2 {
        if round == 1 {
            assert!(run_sync(&a, &b).status.success());
            for i in 0..FILES {
                let mut data = fs::read(a.join(name(i))).unwrap();
                let edit = random_bytes(SIZE / 2, 100 + i as u64);
                data[SIZE / 4..SIZE / 4 + edit.len()].copy_from_slice(&edit);
                fs::write(a.join(name(i)), &data).unwrap();
                allowed
                    .entry(name(i))
                    .or_default()
                    .push(blake3::hash(&data));
            }
        }
        for &d in &delays_ms {
            if sync_killed_after(&a, &b, Duration::from_millis(d)) {
                kills += 1;
            }
            check_whole(&b, &allowed);
            check_whole(&a, &allowed);
        }
        let out = run_sync(&a, &b);
        assert!(
            out.status.success(),
            "rerun after kills failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for i in 0..FILES {
            assert_eq!(
                hash(&a.join(name(i))),
                hash(&b.join(name(i))),
                "{} differs",
                name(i)
            );
            assert_eq!(hash(&b.join(name(i))).as_ref(), allowed[&name(i)].last());
        }
        no_temporaries(&a);
        no_temporaries(&b);
        let again = run_sync(&a, &b);
        assert!(again.status.success());
        assert!(
            String::from_utf8_lossy(&again.stdout).contains("already in sync"),
            "{}",
            String::from_utf8_lossy(&again.stdout)
        );
        // No conflict copy: a killed sync is never taken for a user's edit.
        for d in ["dir0", "dir1"] {
            for e in fs::read_dir(b.join(d)).unwrap() {
                let n = e.unwrap().file_name().to_string_lossy().into_owned();
                assert!(
                    !n.contains("weave-conflict"),
                    "unexpected conflict copy {n}"
                );
            }
        }
    }
    eprintln!("{kills} syncs interrupted");
    assert!(
        kills >= 6,
        "only {kills} syncs were interrupted; the test did not exercise crashes"
    );
}

/// `weave kv put STORE KEY` with the value on stdin.
fn kv_put(store: &Path, key: &str, value: &[u8]) {
    use std::io::Write as _;
    let mut child = Command::new(weave())
        .args(["kv", "put"])
        .arg(store)
        .arg(key)
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn weave kv put");
    child.stdin.take().unwrap().write_all(value).unwrap();
    assert!(child.wait().unwrap().success(), "kv put {key}");
}

/// key → blake3 of the value, as `weave kv list --values --json` shows it
/// (values here are random bytes: compared by their hash).
fn kv_records(store: &Path) -> BTreeMap<String, blake3::Hash> {
    let out = Command::new(weave())
        .args(["kv", "list", "--json"])
        .arg(store)
        .output()
        .expect("run weave kv list");
    assert!(
        out.status.success(),
        "kv list failed after a kill: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    j.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let key = r["key"].as_str().unwrap().to_string();
            let got = Command::new(weave())
                .args(["kv", "get"])
                .arg(store)
                .arg(&key)
                .output()
                .unwrap();
            (key, blake3::hash(&got.stdout))
        })
        .collect()
}

fn kv_sync(a: &Path, b: &Path) -> std::process::Output {
    Command::new(weave())
        .args(["sync", "--kind", "kv"])
        .arg(a)
        .arg(b)
        .output()
        .expect("run weave")
}

/// Kills `weave sync --kind kv` at many points; after every kill each
/// record of the receiving store is whole (one of its versions, never a
/// mix) and the store opens; a rerun converges without conflict copies.
#[test]
fn killed_kv_syncs_leave_whole_records_and_a_rerun_converges() {
    const RECORDS: usize = 8;
    const RECORD: usize = 3 * 1024 * 1024;
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    let mut allowed: BTreeMap<String, Vec<blake3::Hash>> = BTreeMap::new();
    let mut kills = 0;
    for round in 0..2u64 {
        for i in 0..RECORDS {
            let v = random_bytes(RECORD, round * 100 + i as u64);
            allowed
                .entry(format!("r{i}"))
                .or_default()
                .push(blake3::hash(&v));
            kv_put(&a, &format!("r{i}"), &v);
        }
        // How long an uninterrupted sync of this round takes, on a copy.
        let probe = t.path().join(format!("probe{round}"));
        let _ = fs::remove_dir_all(&probe);
        fs::create_dir(&probe).unwrap();
        let start = Instant::now();
        assert!(kv_sync(&a, &probe).status.success());
        let full = start.elapsed().as_millis().max(20) as u64;
        for k in 1..10u64 {
            let mut child = Command::new(weave())
                .args(["sync", "--kind", "kv"])
                .arg(&a)
                .arg(&b)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn weave");
            let start = Instant::now();
            let delay = Duration::from_millis(full * k / 10);
            let killed = loop {
                if child.try_wait().unwrap().is_some() {
                    break false;
                }
                if start.elapsed() >= delay {
                    child.kill().unwrap();
                    child.wait().unwrap();
                    break true;
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            if killed {
                kills += 1;
            }
            for (key, h) in kv_records(&b) {
                assert!(
                    allowed.get(&key).is_some_and(|ok| ok.contains(&h)),
                    "{key} holds a mix of versions (or is unknown) after a kill"
                );
            }
        }
        let out = kv_sync(&a, &b);
        assert!(
            out.status.success(),
            "rerun after kills failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (ra, rb) = (kv_records(&a), kv_records(&b));
        assert_eq!(ra, rb, "round {round}: the stores differ after the rerun");
        assert_eq!(ra.len(), RECORDS, "no conflict copies: {:?}", ra.keys());
    }
    eprintln!("{kills} kv syncs interrupted");
    assert!(
        kills >= 4,
        "only {kills} syncs were interrupted; the test did not exercise crashes"
    );
}
