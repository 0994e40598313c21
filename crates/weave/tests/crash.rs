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
