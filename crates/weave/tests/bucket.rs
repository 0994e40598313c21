//! Encrypted bucket replicas through the real binary: a directory as a
//! bucket (`file:///…`) here, an S3 server where one runs
//! (`WEAVE_TEST_S3_ENDPOINT`, which `.ci/run` starts): devices that are
//! never on together converge through it, it holds nothing in clear,
//! and a wrong passphrase, a damaged object or a newer format is refused
//! with nothing written.

mod common;

use common::*;
use std::fs;
use std::path::Path;

const PASS: &str = "correct horse battery staple";

/// `weave sync ARGS` in `cwd` with the passphrase in the environment.
fn bsync(cwd: &Path, args: &[&str]) -> Run {
    bsync_with(cwd, args, Some(PASS))
}

/// `weave sync ARGS` in `cwd`, with passphrase `pass` if any.
fn bsync_with(cwd: &Path, args: &[&str], pass: Option<&str>) -> Run {
    let mut v = vec!["sync"];
    v.extend_from_slice(args);
    let env: Vec<(&str, String)> = pass
        .map(|p| ("WEAVE_PASSPHRASE", p.to_string()))
        .into_iter()
        .collect();
    run_weave(cwd, &env, &v)
}

/// `weave ARGS` in `cwd`, bounded in time, with none of the AWS and
/// weave variables of the test's own environment but those of `env`.
fn run_weave(cwd: &Path, env: &[(&str, String)], args: &[&str]) -> Run {
    let mut cmd = assert_cmd::Command::cargo_bin("weave").unwrap();
    cmd.current_dir(cwd)
        .timeout(std::time::Duration::from_secs(120))
        .args(args);
    for k in [
        "RUST_LOG",
        "WEAVE_PASSPHRASE",
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "AWS_PROFILE",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn bucket_url(p: &Path) -> String {
    format!("file://{}", p.join("bucket").display())
}

/// Every file under `dir` (not `.weave`), by relative path.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if rel == ".weave" {
                continue;
            }
            let t = e.file_type().unwrap();
            if t.is_dir() {
                out.push((rel + "/", Vec::new()));
                stack.push(p);
            } else if t.is_symlink() {
                out.push((
                    rel,
                    fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                ));
            } else {
                out.push((rel, fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Every object of the bucket directory, bytes and names.
fn objects(bucket: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![bucket.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((
                    p.strip_prefix(bucket).unwrap().display().to_string(),
                    fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out
}

/// Two devices that are never on together: a laptop and a desktop, each
/// syncing its folder with the bucket in turn. New files, edits, a
/// deletion, a rename and a symlink go both ways; the trees end equal.
#[test]
fn two_devices_never_on_together_converge_through_a_bucket() {
    let t = setup(&["laptop", "desktop"]);
    let p = t.path();
    let b = bucket_url(p);
    write(p.join("laptop/notes.txt"), "from the laptop");
    write(p.join("laptop/photos/cat.jpg"), vec![7u8; 300_000]);
    std::os::unix::fs::symlink("notes.txt", p.join("laptop/latest")).unwrap();
    bsync(p, &["laptop", &b]).expect_code(0);
    bsync(p, &["desktop", &b]).expect_code(0);
    assert_eq!(tree(&p.join("laptop")), tree(&p.join("desktop")));
    // The desktop edits, deletes and renames; the laptop takes it.
    write(p.join("desktop/notes.txt"), "edited on the desktop");
    fs::remove_file(p.join("desktop/latest")).unwrap();
    fs::rename(p.join("desktop/photos"), p.join("desktop/pictures")).unwrap();
    bsync(p, &["desktop", &b]).expect_code(0);
    bsync(p, &["laptop", &b]).expect_code(0);
    assert_eq!(tree(&p.join("laptop")), tree(&p.join("desktop")));
    assert_eq!(
        read_str(p.join("laptop/notes.txt")),
        "edited on the desktop"
    );
    assert!(!p.join("laptop/latest").exists());
    assert_eq!(read(p.join("laptop/pictures/cat.jpg")).len(), 300_000);
    // Nothing changed: nothing to do.
    bsync(p, &["laptop", &b])
        .expect_code(0)
        .stdout_has(&["already in sync"]);
}

/// Both devices edit one file between their syncs: the second to sync
/// meets the conflict, and both versions end on both devices.
#[test]
fn concurrent_edits_through_a_bucket_keep_both_versions() {
    let t = setup(&["laptop", "desktop"]);
    let p = t.path();
    let b = bucket_url(p);
    write(p.join("laptop/f.txt"), "one");
    bsync(p, &["laptop", &b]).expect_code(0);
    bsync(p, &["desktop", &b]).expect_code(0);
    write(p.join("laptop/f.txt"), "laptop's edit");
    write(p.join("desktop/f.txt"), "desktop's edit");
    bsync(p, &["laptop", &b]).expect_code(0);
    // The desktop meets the laptop's edit: a conflict (exit 1).
    bsync(p, &["desktop", &b])
        .expect_code(1)
        .stderr_has(&["conflict", "f.txt"]);
    bsync(p, &["laptop", &b]).expect_code(0);
    let l = tree(&p.join("laptop"));
    assert_eq!(l, tree(&p.join("desktop")));
    let contents: Vec<&[u8]> = l.iter().map(|(_, c)| c.as_slice()).collect();
    assert!(contents.contains(&&b"laptop's edit"[..]), "{l:?}");
    assert!(contents.contains(&&b"desktop's edit"[..]), "{l:?}");
}

/// Two devices push to one bucket at the same moment: both succeed (no
/// lock, no object written twice), and their next syncs converge.
#[test]
fn concurrent_pushes_both_go_through_and_converge() {
    let t = setup(&["a", "b"]);
    let p = t.path();
    let b = bucket_url(p);
    for i in 0..40 {
        write(p.join(format!("a/a{i}.txt")), format!("a {i}"));
        write(p.join(format!("b/b{i}.txt")), format!("b {i}"));
    }
    write(p.join("a/same.txt"), "a's");
    write(p.join("b/same.txt"), "b's");
    // The bucket exists before both start.
    bsync(p, &["a", &b]).expect_code(0);
    write(p.join("a/more.txt"), "more");
    let spawn = |dir: &str| {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("weave"))
            .current_dir(p)
            .env("WEAVE_PASSPHRASE", PASS)
            .args(["sync", "--quiet", dir, &b])
            .spawn()
            .unwrap()
    };
    let (mut x, mut y) = (spawn("a"), spawn("b"));
    // b meets a's same.txt: a conflict (exit 1), no failure.
    assert_eq!(x.wait().unwrap().code(), Some(0));
    assert!(matches!(y.wait().unwrap().code(), Some(0 | 1)));
    for _ in 0..2 {
        assert!(matches!(bsync(p, &["a", &b]).code, 0 | 1));
        assert!(matches!(bsync(p, &["b", &b]).code, 0 | 1));
    }
    bsync(p, &["a", &b])
        .expect_code(0)
        .stdout_has(&["already in sync"]);
    let a = tree(&p.join("a"));
    assert_eq!(a, tree(&p.join("b")));
    let names: Vec<&str> = a.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"a39.txt") && names.contains(&"b39.txt") && names.contains(&"more.txt")
    );
    let contents: Vec<&[u8]> = a.iter().map(|(_, c)| c.as_slice()).collect();
    assert!(contents.contains(&&b"a's"[..]) && contents.contains(&&b"b's"[..]));
}

/// What the storage sees: no file name, directory name, symlink target
/// or content, in any object; small objects padded to one size.
#[test]
fn the_bucket_holds_no_name_or_content_in_clear() {
    let t = setup(&["a"]);
    let p = t.path();
    let secrets = [
        "quarterly-report-secret",
        "directory-name-secret",
        "link-target-secret",
        "the content of a small secret file",
    ];
    write(
        p.join("a/directory-name-secret/quarterly-report-secret.txt"),
        secrets[3],
    );
    std::os::unix::fs::symlink("link-target-secret", p.join("a/l")).unwrap();
    write(p.join("a/compressible.txt"), "secret text ".repeat(20_000));
    bsync(p, &["a", &bucket_url(p)]).expect_code(0);
    let objs = objects(&p.join("bucket"));
    assert!(
        objs.len() >= 3,
        "{:?}",
        objs.iter().map(|o| &o.0).collect::<Vec<_>>()
    );
    for (name, bytes) in &objs {
        for s in secrets.iter().chain(&["secret text"]) {
            assert!(!name.contains(s), "{name}");
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "{s:?} in clear in {name}"
            );
        }
        if name.starts_with("logs/") {
            assert_eq!(bytes.len(), 4096 + 40, "{name}: a small record is padded");
        }
    }
}

/// A wrong passphrase, no passphrase, a newer format: refused, named,
/// exit 2, nothing written on either side.
#[test]
fn bad_passphrases_and_formats_are_refused_with_nothing_written() {
    let t = setup(&["a", "c"]);
    let p = t.path();
    let b = bucket_url(p);
    write(p.join("a/f"), "x");
    bsync(p, &["a", &b]).expect_code(0);
    let before = objects(&p.join("bucket"));
    write(p.join("c/local"), "mine");
    bsync_with(p, &["c", &b], Some("not it"))
        .expect_code(2)
        .stderr_has(&["wrong passphrase", "nothing was read or written"]);
    bsync_with(p, &["c", &b], None).expect_code(2).stderr_has(&[
        "needs a passphrase",
        "WEAVE_PASSPHRASE",
        "--passphrase-file",
    ]);
    let file = p.join("pass");
    fs::write(&file, format!("{PASS}\n")).unwrap();
    // The right one from a file (WEAVE_PASSPHRASE unset) opens it.
    bsync_with(
        p,
        &[
            "--dry-run",
            "--passphrase-file",
            file.to_str().unwrap(),
            "c",
            &b,
        ],
        None,
    )
    .expect_code(0);
    assert_eq!(objects(&p.join("bucket")).len(), before.len());
    assert!(!p.join("c/f").exists());
    // A bucket of a format this weave does not know.
    let cfg = p.join("bucket/weave-bucket.json");
    let text = fs::read_to_string(&cfg).unwrap();
    fs::write(
        &cfg,
        text.replace("\"weave_bucket\": 1", "\"weave_bucket\": 2"),
    )
    .unwrap();
    bsync(p, &["c", &b])
        .expect_code(2)
        .stderr_has(&["format 2", "this weave reads format 1"]);
    assert!(!p.join("c/f").exists());
    // An address that is no bucket.
    bsync(p, &["c", "file://relative/dir"])
        .expect_code(2)
        .stderr_has(&["absolute path"]);
}

/// A record or a chunk changed in the bucket (by whoever runs the
/// storage) is detected and named, and never written into a replica.
#[test]
fn a_tampered_object_is_named_and_never_written_into_a_replica() {
    let t = setup(&["a", "c", "d"]);
    let p = t.path();
    let b = bucket_url(p);
    write(p.join("a/big.bin"), vec![42u8; 200_000]);
    write(p.join("a/small.txt"), "small");
    bsync(p, &["a", &b]).expect_code(0);
    let objs = objects(&p.join("bucket"));
    // A chunk in a pack: the sync stops, naming the pack; the file that
    // needs it is not written.
    let (pack, bytes) = objs.iter().find(|(n, _)| n.starts_with("packs/")).unwrap();
    let mut changed = bytes.clone();
    changed[100] ^= 0xff;
    fs::write(p.join("bucket").join(pack), &changed).unwrap();
    bsync(p, &["c", &b]).expect_code(2).stderr_has(&[
        pack.as_str(),
        "damaged",
        "does not authenticate",
    ]);
    assert!(!p.join("c/big.bin").exists());
    fs::write(p.join("bucket").join(pack), bytes).unwrap();
    bsync(p, &["c", &b]).expect_code(0);
    assert_eq!(read(p.join("c/big.bin")), vec![42u8; 200_000]);
    // A record: the sync stops before anything is planned, naming it.
    let (rec, bytes) = objs.iter().find(|(n, _)| n.starts_with("logs/")).unwrap();
    let mut changed = bytes.clone();
    changed[50] ^= 1;
    fs::write(p.join("bucket").join(rec), &changed).unwrap();
    bsync(p, &["d", &b]).expect_code(2).stderr_has(&[
        rec.as_str(),
        "damaged",
        "does not authenticate",
    ]);
    assert!(fs::read_dir(p.join("d"))
        .unwrap()
        .all(|e| e.unwrap().file_name() == ".weave"));
}

/// The S3 server the tests may use: `WEAVE_TEST_S3_ENDPOINT`, with
/// `WEAVE_TEST_S3_KEY` and `WEAVE_TEST_S3_SECRET` (`.ci/run` starts
/// SeaweedFS on 127.0.0.1 and sets them).
fn s3() -> Option<[(&'static str, String); 4]> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    Some([
        ("AWS_ENDPOINT_URL", get("WEAVE_TEST_S3_ENDPOINT")?),
        ("AWS_ACCESS_KEY_ID", get("WEAVE_TEST_S3_KEY")?),
        ("AWS_SECRET_ACCESS_KEY", get("WEAVE_TEST_S3_SECRET")?),
        ("AWS_REGION", "us-east-1".into()),
    ])
}

/// `weave sync ARGS` with the passphrase and the S3 variables `env`
/// (and HOME at `cwd`, for a credentials file of the test's own).
fn s3sync(cwd: &Path, env: &[(&str, String)], args: &[&str]) -> Run {
    let mut all: Vec<(&str, String)> = env.to_vec();
    all.push(("WEAVE_PASSPHRASE", PASS.to_string()));
    all.push(("HOME", cwd.display().to_string()));
    let mut v = vec!["sync"];
    v.extend_from_slice(args);
    run_weave(cwd, &all, &v)
}

/// A prefix of its own in the test bucket, for one test.
fn s3_prefix(test: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("s3://weave-test/{test}-{n}-{}", std::process::id())
}

/// Two devices converge through a real S3 server; bad credentials and an
/// endpoint nobody answers at are named, with what to check.
#[test]
fn devices_converge_through_an_s3_bucket_and_bad_settings_are_named() {
    let Some(env) = s3() else {
        eprintln!(
            "skipped: no S3 server (set WEAVE_TEST_S3_ENDPOINT, _KEY, _SECRET; .ci/run does)"
        );
        return;
    };
    let t = setup(&["laptop", "desktop", "other"]);
    let p = t.path();
    let b = s3_prefix("converge");
    write(p.join("laptop/notes.txt"), "from the laptop");
    write(
        p.join("laptop/big.bin"),
        (0..3_000_000u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    // Incompressible and larger than a pack: packs go up in parts.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..20 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    write(p.join("laptop/noise.bin"), &noise);
    s3sync(p, &env, &["laptop", &b]).expect_code(0);
    s3sync(p, &env, &["desktop", &b]).expect_code(0);
    assert_eq!(tree(&p.join("laptop")), tree(&p.join("desktop")));
    fs::remove_file(p.join("desktop/notes.txt")).unwrap();
    write(p.join("desktop/new.txt"), "from the desktop");
    s3sync(p, &env, &["desktop", &b]).expect_code(0);
    s3sync(p, &env, &["laptop", &b]).expect_code(0);
    assert_eq!(tree(&p.join("laptop")), tree(&p.join("desktop")));
    assert!(!p.join("laptop/notes.txt").exists());
    // Credentials from ~/.aws/credentials when the variables are unset.
    fs::create_dir_all(p.join(".aws")).unwrap();
    fs::write(
        p.join(".aws/credentials"),
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            env[1].1, env[2].1
        ),
    )
    .unwrap();
    let from_file = [env[0].clone(), env[3].clone()];
    s3sync(p, &from_file, &["other", &b]).expect_code(0);
    assert_eq!(tree(&p.join("other")), tree(&p.join("laptop")));
    fs::remove_file(p.join(".aws/credentials")).unwrap();
    s3sync(p, &from_file, &["other", &b])
        .expect_code(2)
        .stderr_has(&["no credentials", "AWS_ACCESS_KEY_ID"]);
    let mut wrong = env.clone();
    wrong[2].1 = "not-the-secret".into();
    s3sync(p, &wrong, &["other", &b])
        .expect_code(2)
        .stderr_has(&["access denied", "AWS_SECRET_ACCESS_KEY"]);
    // A bucket that is not there is said, and not made by the write.
    let missing = format!(
        "{}/docs",
        s3_prefix("missing").replace("weave-test/", "weave-missing-")
    );
    for _ in 0..2 {
        s3sync(p, &env, &["other", &missing])
            .expect_code(2)
            .stderr_has(&["does not exist", "aws s3 mb"]);
    }
    let mut nobody = env.clone();
    nobody[0].1 = format!("http://127.0.0.1:{}", free_port());
    s3sync(p, &nobody, &["other", &b])
        .expect_code(2)
        .stderr_has(&["cannot reach the storage", "AWS_ENDPOINT_URL"]);
}

/// Copies every object of bucket `from` that `to` lacks into `to` (the
/// union of what two devices pushed, each to its own copy: as if they had
/// pushed at the same moment).
fn union(from: &Path, to: &Path) {
    for (name, bytes) in objects(from) {
        let dest = to.join(&name);
        if !dest.exists() {
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            fs::write(dest, bytes).unwrap();
        }
    }
}

/// A version another device pushed concurrently stays in the bucket even
/// when this device's later change (a deletion, whose mtime is 0) does not
/// win over it there: the sync says so, and the next syncs settle it on
/// both devices (the edit beats the deletion), never leaving them apart.
#[test]
fn a_concurrent_version_in_the_bucket_is_not_hidden_by_a_later_change() {
    let t = setup(&["a", "b"]);
    let p = t.path();
    let b = bucket_url(p);
    write(p.join("a/f"), "one");
    bsync(p, &["a", &b]).expect_code(0);
    bsync(p, &["b", &b]).expect_code(0);
    // b pushes its edit to a copy of the bucket, a to the bucket; then
    // the two are one: they pushed at the same moment.
    copy_dir(&p.join("bucket"), &p.join("copy"));
    write_at(p.join("b/f"), "B", at(1_700_000_000, 0));
    bsync(p, &["b", &format!("file://{}", p.join("copy").display())]).expect_code(0);
    write_at(p.join("a/f"), "A", at(1_800_000_000, 0));
    bsync(p, &["a", &b]).expect_code(0);
    union(&p.join("copy"), &p.join("bucket"));
    // a deletes f: its deletion supersedes its own edit, not b's.
    fs::remove_file(p.join("a/f")).unwrap();
    let r = bsync(p, &["a", &b]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    r.stderr_has(&["concurrent version"]);
    for _ in 0..2 {
        assert!(matches!(bsync(p, &["a", &b]).code, 0 | 1));
        assert!(matches!(bsync(p, &["b", &b]).code, 0 | 1));
    }
    assert_eq!(tree(&p.join("a")), tree(&p.join("b")));
    assert_eq!(read_str(p.join("a/f")), "B");
}

fn copy_dir(from: &Path, to: &Path) {
    union(from, to);
}

/// Bytes of the packs in bucket directory `bucket`.
fn pack_bytes(bucket: &Path) -> u64 {
    objects(bucket)
        .iter()
        .filter(|(n, _)| n.starts_with("packs/"))
        .map(|(_, b)| b.len() as u64)
        .sum()
}

/// A push killed (SIGKILL) while it uploads leaves the bucket consistent,
/// and the next push resumes it: what was uploaded is not uploaded again.
/// Another device then gets every file whole.
#[test]
fn a_push_killed_midway_leaves_the_bucket_consistent_and_the_next_resumes() {
    let t = setup(&["a", "b"]);
    let p = t.path();
    let b = bucket_url(p);
    let mut total = 0u64;
    for i in 0..5 {
        // Data that does not compress: packs as large as what they hold.
        let mut data = vec![0u8; 16 << 20];
        rand::RngCore::fill_bytes(
            &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(i),
            &mut data,
        );
        total += data.len() as u64;
        write(p.join(format!("a/big{i}.bin")), data);
    }
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("weave"))
        .current_dir(p)
        .env("WEAVE_PASSPHRASE", PASS)
        .args(["sync", "--quiet", "a", &b])
        .spawn()
        .unwrap();
    // Killed once it has uploaded two packs (bounded: 60 s).
    let packs = p.join("bucket/packs");
    let t0 = std::time::Instant::now();
    while fs::read_dir(&packs).map_or(0, |d| d.count()) < 2 && t0.elapsed().as_secs() < 60 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the push ended before it was killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = pack_bytes(&p.join("bucket"));
    assert!(before > 0 && before < total, "{before} of {total}");
    // The bucket opens; the next push uploads what is missing, about.
    bsync(p, &["a", &b]).expect_code(0);
    let again = pack_bytes(&p.join("bucket")) - before;
    assert!(
        again + before / 2 < total,
        "the resumed push uploaded {again} bytes again, of {total}, with {before} there"
    );
    bsync(p, &["b", &b]).expect_code(0);
    assert_eq!(tree(&p.join("a")), tree(&p.join("b")));
}

/// `weave history --bucket` lists a file's versions kept in the bucket
/// (and the deleted files), `weave restore --bucket` writes one out,
/// byte for byte, verified; asking for what is not there is refused.
#[test]
fn old_versions_are_listed_and_restored_from_a_bucket() {
    let t = setup(&["a"]);
    let p = t.path();
    let b = bucket_url(p);
    // Data, a run of zeros (a hole when restored), data.
    let big: Vec<u8> = (0..400_000u32)
        .map(|i| (i % 251) as u8)
        .chain(std::iter::repeat_n(0, 1 << 20))
        .chain((0..100_000u32).map(|i| (i % 13) as u8))
        .collect();
    for v in ["one", "two!", "three"] {
        write(p.join("a/notes.txt"), v);
        write(p.join("a/d/big.bin"), [&big[..], v.as_bytes()].concat());
        bsync(p, &["a", &b]).expect_code(0);
    }
    fs::remove_dir_all(p.join("a/d")).unwrap();
    bsync(p, &["a", &b]).expect_code(0);
    // `weave CMD --bucket B ARGS`.
    let weave_b = |cmd: &str, args: &[&str]| {
        let mut v = vec![cmd, "--bucket", b.as_str()];
        v.extend_from_slice(args);
        run_weave(p, &[("WEAVE_PASSPHRASE", PASS.to_string())], &v)
    };
    let listed = weave_b("history", &["--json", "notes.txt"]);
    listed.expect_code(0);
    let j: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    let vs = j["versions"].as_array().unwrap();
    assert_eq!(vs.len(), 3, "{j}");
    assert_eq!(vs[1]["size"], 4);
    assert_eq!(vs[2]["current"], true);
    weave_b("history", &["--deleted"])
        .expect_code(0)
        .stdout_has(&["d/big.bin"]);
    let out = p.join("two.txt");
    weave_b(
        "restore",
        &["notes.txt", "--version", "2", "--to", out.to_str().unwrap()],
    )
    .expect_code(0)
    .stdout_has(&["restored notes.txt version 2"]);
    assert_eq!(read_str(&out), "two!");
    let gone = p.join("big.bin");
    weave_b("restore", &["d/big.bin", "--to", gone.to_str().unwrap()]).expect_code(0);
    assert_eq!(read(&gone), [&big[..], b"three"].concat());
    // Not over a file that is there; no such version; no --to.
    weave_b("restore", &["notes.txt", "--to", out.to_str().unwrap()])
        .expect_code(2)
        .stderr_has(&["exists"]);
    weave_b("restore", &["notes.txt", "--version", "9", "--to", "x"])
        .expect_code(2)
        .stderr_has(&["no version 9"]);
    weave_b("restore", &["notes.txt"])
        .expect_code(2)
        .stderr_has(&["--to"]);
    weave_b("restore", &["notes.txt", "--at", "2h", "--to", "y"])
        .expect_code(2)
        .stderr_has(&["--at", "--version"]);
    // With no --version, the current one.
    let now = p.join("now.txt");
    weave_b("restore", &["notes.txt", "--to", now.to_str().unwrap()]).expect_code(0);
    assert_eq!(read_str(&now), "three");
}

/// Four versions of a file, then `weave gc --bucket B ARGS` as a user
/// runs it: a policy is needed; a dry run writes nothing; a gc marks and
/// the next (past the grace period) deletes; the current versions and
/// the old ones kept still read, and another device still converges.
fn prune_round(p: &Path, env: &[(&str, String)], b: &str, pack_bytes: &dyn Fn() -> u64) {
    let push = |dir: &str| {
        let mut all = env.to_vec();
        all.push(("WEAVE_PASSPHRASE", PASS.to_string()));
        run_weave(p, &all, &["sync", dir, b]).expect_code(0);
    };
    for i in 0..4 {
        write(p.join("laptop/f.bin"), random_bytes(300_000, i));
        push("laptop");
    }
    let weave_b = |args: &[&str]| {
        let mut all = env.to_vec();
        all.push(("WEAVE_PASSPHRASE", PASS.to_string()));
        let mut v = vec![args[0], "--bucket", b];
        v.extend_from_slice(&args[1..]);
        run_weave(p, &all, &v)
    };
    let versions = || {
        let out = weave_b(&["history", "--json", "f.bin"]);
        out.expect_code(0);
        let j: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        j["versions"].as_array().unwrap().len()
    };
    assert_eq!(versions(), 4);
    let before = pack_bytes();
    weave_b(&["gc"])
        .expect_code(2)
        .stderr_has(&["needs a policy", "--keep-last"]);
    weave_b(&["gc", "--keep-last", "1", "--grace", "0s", "--dry-run"])
        .expect_code(0)
        .stdout_has(&["2 dropped", "would be marked"]);
    weave_b(&["gc", "--keep-last", "1", "--grace", "0s"])
        .expect_code(0)
        .stdout_has(&["2 dropped", "marked", "the next gc deletes them"]);
    // Marked, not deleted: every version still there.
    assert_eq!(pack_bytes(), before);
    weave_b(&["gc", "--keep-last", "1", "--grace", "0s"])
        .expect_code(0)
        .stdout_has(&["2 packs", "deleted"]);
    let after = pack_bytes();
    assert!(after * 2 <= before + 300_000, "{after} of {before} left");
    assert_eq!(versions(), 2);
    let out = p.join("kept.bin");
    weave_b(&[
        "restore",
        "f.bin",
        "--version",
        "1",
        "--to",
        out.to_str().unwrap(),
    ])
    .expect_code(0);
    assert_eq!(read(&out), random_bytes(300_000, 2));
    push("desktop");
    assert_eq!(tree(&p.join("laptop")), tree(&p.join("desktop")));
    // A change after the prune reaches the other device.
    write(p.join("desktop/f.bin"), "after the prune");
    push("desktop");
    push("laptop");
    assert_eq!(read_str(p.join("laptop/f.bin")), "after the prune");
}

#[test]
fn gc_prunes_a_bucket_in_two_phases_and_devices_still_converge() {
    let t = setup(&["laptop", "desktop"]);
    let p = t.path();
    let b = bucket_url(p);
    let dir = p.join("bucket");
    prune_round(p, &[], &b, &|| pack_bytes(&dir));
    // The policy flags belong to --bucket.
    run_weave(p, &[], &["gc", "laptop", "--keep-last", "1"])
        .expect_code(2)
        .stderr_has(&["--bucket"]);
}

#[test]
fn gc_prunes_an_s3_bucket() {
    let Some(env) = s3() else {
        eprintln!(
            "skipped: no S3 server (set WEAVE_TEST_S3_ENDPOINT, _KEY, _SECRET; .ci/run does)"
        );
        return;
    };
    let t = setup(&["laptop", "desktop"]);
    let p = t.path();
    let b = s3_prefix("gc");
    // The packs' bytes, as gc says the records name them.
    let bytes = || -> u64 {
        let mut all = env.to_vec();
        all.push(("WEAVE_PASSPHRASE", PASS.to_string()));
        let out = run_weave(
            p,
            &all,
            &[
                "gc",
                "--bucket",
                &b,
                "--keep-last",
                "1000000",
                "--dry-run",
                "--json",
            ],
        );
        out.expect_code(0);
        let j: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        j["pruned"]["pack_bytes"].as_u64().unwrap()
    };
    prune_round(p, &env, &b, &bytes);
}

/// A daemon prunes its folder's bucket remote by the folder's retention
/// policy (as its local version history): after its first sync that goes
/// through, it marks the versions the policy drops, and they are no
/// longer listed.
#[test]
fn a_daemon_prunes_its_remote_by_the_folders_retention_policy() {
    use common::daemon::{wait_for, Device};
    let a = Device::new("a");
    let dir = a.root.join("docs");
    fs::create_dir_all(&dir).unwrap();
    let b = bucket_url(&a.root);
    let pass = a.root.join("pass");
    fs::write(&pass, format!("{PASS}\n")).unwrap();
    let pass = pass.to_str().unwrap();
    for v in ["one", "two", "three", "four"] {
        write(dir.join("notes.txt"), v);
        bsync(&a.root, &["docs", &b]).expect_code(0);
    }
    let versions = || {
        let out = run_weave(
            &a.root,
            &[("WEAVE_PASSPHRASE", PASS.to_string())],
            &["history", "--json", "--bucket", &b, "notes.txt"],
        );
        out.expect_code(0);
        let j: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        j["versions"].as_array().unwrap().len()
    };
    assert_eq!(versions(), 4);
    a.ok(&[
        "retention",
        dir.to_str().unwrap(),
        "--keep-all",
        "--keep-last",
        "1",
    ]);
    a.folder(
        "docs",
        "docs",
        &[],
        &["--remote", &b, "--poll", "1", "--passphrase-file", pass],
    );
    a.start();
    let marks = a.root.join("bucket/marks");
    wait_for("a mark in the bucket", &[&a], || {
        fs::read_dir(&marks).is_ok_and(|mut d| d.next().is_some())
    });
    a.term();
    // The current version and one old one are left; nothing is deleted
    // before the grace period.
    assert_eq!(versions(), 2);
    assert_eq!(read_str(dir.join("notes.txt")), "four");
}
