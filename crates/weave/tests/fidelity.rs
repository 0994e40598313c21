//! Files as they are: what a sync keeps besides names, bytes, modes and
//! mtimes. Sparse files keep their holes: locally, in version history and
//! its restore. (Over a session: `remote.rs`.)

mod common;

use common::*;
use std::path::Path;

const MIB: u64 = 1 << 20;

/// A 256 MiB file holding 1 MiB of data and a few bytes; the rest holes.
fn disk_image(path: &Path) -> Vec<(u64, Vec<u8>)> {
    let pieces = vec![
        (0, b"header".to_vec()),
        (100 * MIB, random_bytes(MIB as usize, 27)),
    ];
    let refs: Vec<(u64, &[u8])> = pieces.iter().map(|(o, d)| (*o, &d[..])).collect();
    make_sparse(path, 256 * MIB, &refs);
    pieces
}

/// `b` holds what `a` holds and takes no more of the disk than `a` does
/// (within 1 %, and a block for each edge of a data run).
fn same_and_as_sparse(a: &Path, b: &Path) {
    assert!(
        read(a) == read(b),
        "{} differs from {}",
        b.display(),
        a.display()
    );
    let (ua, ub) = (allocated(a), allocated(b));
    assert!(
        ub <= ua + ua / 100 + 8 * 4096,
        "{} takes {ub} bytes on disk, {} takes {ua}",
        b.display(),
        a.display()
    );
}

#[test]
fn a_sparse_file_keeps_its_holes_when_copied_and_when_edited() {
    let t = setup(&["A", "B"]);
    let p = t.path();
    let pieces = disk_image(&p.join("A/disk.img"));
    assert!(
        allocated(p.join("A/disk.img")) < 2 * MIB,
        "this file system has holes"
    );
    sync(p, &["A", "B"]).expect_code(0);
    same_and_as_sparse(&p.join("A/disk.img"), &p.join("B/disk.img"));

    // Data written into a hole on B: A gets the edit, holes and all (the
    // unchanged runs are taken from A's old version).
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(p.join("B/disk.img"))
            .unwrap();
        f.write_all_at(&random_bytes(300_000, 28), 200 * MIB)
            .unwrap();
    }
    set_mtime(p.join("B/disk.img"), at(1_600_000_100, 0));
    sync(p, &["A", "B"]).expect_code(0);
    same_and_as_sparse(&p.join("B/disk.img"), &p.join("A/disk.img"));

    // The version the edit replaced on A is in its history; restored
    // elsewhere, it has its holes.
    weave(p, ["restore", "A/disk.img", "--to", "old.img"]).expect_code(0);
    let old = p.join("old.img");
    let mut want = vec![0u8; 256 * MIB as usize];
    for (at, data) in &pieces {
        want[*at as usize..*at as usize + data.len()].copy_from_slice(data);
    }
    assert!(read(&old) == want, "the restored version differs");
    assert!(allocated(&old) < 2 * MIB, "{} bytes", allocated(&old));
}

/// A file of zeros written out (no holes) arrives as holes: runs of zeros
/// are never written, as `cp --sparse=always` does.
#[test]
fn runs_of_written_zeros_arrive_as_holes() {
    let t = setup(&["A", "B"]);
    let p = t.path();
    let mut data = random_bytes(70_000, 3);
    data.resize(70_000 + 8 * MIB as usize, 0);
    data.extend(random_bytes(50_000, 4));
    write_at(p.join("A/zeros.bin"), &data, at(1_600_000_000, 0));
    assert!(allocated(p.join("A/zeros.bin")) > 8 * MIB);
    sync(p, &["A", "B"]).expect_code(0);
    assert!(read(p.join("B/zeros.bin")) == data);
    let used = allocated(p.join("B/zeros.bin"));
    assert!(used < MIB, "{used} bytes on disk for 120 kB of data");
}

// ---------------------------------------------------------------------------
// Extended attributes and owners.
// ---------------------------------------------------------------------------

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65_536];
    rustix::fs::lgetxattr(path, name, &mut buf[..])
        .ok()
        .map(|n| buf[..n].to_vec())
}

/// Whether the test's file system keeps user attributes.
fn xattrs_here(dir: &Path) -> bool {
    let p = dir.join("xattr-probe");
    write(&p, "");
    let ok = rustix::fs::lsetxattr(&p, "user.probe", b"1", rustix::fs::XattrFlags::empty()).is_ok();
    std::fs::remove_file(&p).unwrap();
    ok
}

#[test]
fn extended_attributes_sync_and_a_change_of_them_alone_is_a_change() {
    let t = setup(&["A", "B"]);
    let p = t.path();
    if !xattrs_here(p) {
        eprintln!("skipped: no user extended attributes on this file system");
        return;
    }
    write_at(p.join("A/f.txt"), "hello", at(1_600_000_000, 0));
    std::fs::create_dir(p.join("A/d")).unwrap();
    set_xattr(&p.join("A/f.txt"), "user.color", b"blue");
    set_xattr(&p.join("A/d"), "user.tag", b"\x00binary\xff");
    sync(p, &["A", "B"]).expect_code(0);
    assert_eq!(
        get_xattr(&p.join("B/f.txt"), "user.color").as_deref(),
        Some(&b"blue"[..])
    );
    assert_eq!(
        get_xattr(&p.join("B/d"), "user.tag").as_deref(),
        Some(&b"\x00binary\xff"[..])
    );

    // Only the attributes change, on B: A gets them, the content stays.
    set_xattr(&p.join("B/f.txt"), "user.color", b"green");
    set_xattr(&p.join("B/d"), "user.tag", b"two");
    let (r, j) = sync_json(p, &["A", "B"]);
    r.expect_code(0);
    assert!(
        j["conflicts"].as_array().unwrap().is_empty(),
        "{}",
        r.stdout
    );
    assert_eq!(
        get_xattr(&p.join("A/f.txt"), "user.color").as_deref(),
        Some(&b"green"[..])
    );
    assert_eq!(
        get_xattr(&p.join("A/d"), "user.tag").as_deref(),
        Some(&b"two"[..])
    );
    // A removed attribute is removed.
    rustix::fs::lremovexattr(p.join("A/f.txt"), "user.color").unwrap();
    sync(p, &["A", "B"]).expect_code(0);
    assert_eq!(get_xattr(&p.join("B/f.txt"), "user.color"), None);
    // Nothing left to do.
    let (_, j) = sync_json(p, &["A", "B"]);
    assert_eq!(j["in_sync"], true);
    assert_eq!(read_str(p.join("B/f.txt")), "hello");
}

/// Concurrent attribute edits of one file (its content the same): no
/// conflict copy; the newest version's metadata wins, as for modes.
#[test]
fn concurrent_attribute_edits_settle_on_the_newest() {
    let t = setup(&["A", "B"]);
    let p = t.path();
    if !xattrs_here(p) {
        eprintln!("skipped: no user extended attributes on this file system");
        return;
    }
    write_at(p.join("A/f"), "same", at(1_600_000_000, 0));
    sync(p, &["A", "B"]).expect_code(0);
    set_xattr(&p.join("A/f"), "user.who", b"a");
    set_mtime(p.join("A/f"), at(1_600_000_010, 0));
    set_xattr(&p.join("B/f"), "user.who", b"b");
    set_mtime(p.join("B/f"), at(1_600_000_020, 0));
    let (r, j) = sync_json(p, &["A", "B"]);
    r.expect_code(0);
    assert!(
        conflict_copies(&p.join("A"), "f", "").is_empty(),
        "{}",
        r.stdout
    );
    assert_eq!(j["in_sync"], true, "{}", r.stdout);
    for side in ["A", "B"] {
        assert_eq!(
            get_xattr(&p.join(side).join("f"), "user.who").as_deref(),
            Some(&b"b"[..])
        );
    }
}

/// Run as root, owners are kept (by name where the name exists); a
/// change of owner alone syncs. `--numeric-ids` keeps the numbers.
#[test]
fn owners_are_kept_when_run_as_root() {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: owners are kept only when run as root");
        return;
    }
    let t = setup(&["A", "B"]);
    let p = t.path();
    write_at(p.join("A/f"), "x", at(1_600_000_000, 0));
    std::os::unix::fs::symlink("f", p.join("A/l")).unwrap();
    std::os::unix::fs::chown(p.join("A/f"), Some(65534), Some(65534)).unwrap();
    std::os::unix::fs::lchown(p.join("A/l"), Some(4321), Some(4321)).unwrap();
    sync(p, &["A", "B"]).expect_code(0);
    let owner = |f: &str| {
        let m = std::fs::symlink_metadata(p.join(f)).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(owner("B/f"), (65534, 65534));
    assert_eq!(owner("B/l"), (4321, 4321));
    std::os::unix::fs::chown(p.join("B/f"), Some(1234), Some(4321)).unwrap();
    sync(p, &["A", "B"]).expect_code(0);
    assert_eq!(owner("A/f"), (1234, 4321));
}

/// `--xattrs none` keeps no attributes; `--no-owner` no owners.
#[test]
fn what_is_kept_can_be_turned_off() {
    use std::os::unix::fs::MetadataExt;
    let t = setup(&["A", "B"]);
    let p = t.path();
    if !xattrs_here(p) {
        eprintln!("skipped: no user extended attributes on this file system");
        return;
    }
    write_at(p.join("A/f"), "x", at(1_600_000_000, 0));
    set_xattr(&p.join("A/f"), "user.color", b"blue");
    let root = rustix::process::geteuid().is_root();
    if root {
        std::os::unix::fs::chown(p.join("A/f"), Some(65534), Some(65534)).unwrap();
    }
    sync(p, &["--xattrs", "none", "--no-owner", "A", "B"]).expect_code(0);
    assert_eq!(get_xattr(&p.join("B/f"), "user.color"), None);
    if root {
        assert_eq!(std::fs::metadata(p.join("B/f")).unwrap().uid(), 0);
    }
    weave(p, ["sync", "--xattrs", "user,bogus", "A", "B"])
        .expect_code(2)
        .stderr_has(&["unknown namespace", "bogus"]);
}

/// A version in history keeps the attributes it had, and a restore gives
/// them back.
#[test]
fn a_restored_version_has_its_attributes() {
    let t = setup(&["A", "B"]);
    let p = t.path();
    if !xattrs_here(p) {
        eprintln!("skipped: no user extended attributes on this file system");
        return;
    }
    write_at(p.join("A/f"), "one", at(1_600_000_000, 0));
    set_xattr(&p.join("A/f"), "user.color", b"blue");
    sync(p, &["A", "B"]).expect_code(0);
    // B writes new content (and a new colour): A keeps what it replaces.
    write_at(p.join("B/f"), "two", at(1_600_000_100, 0));
    set_xattr(&p.join("B/f"), "user.color", b"red");
    sync(p, &["A", "B"]).expect_code(0);
    assert_eq!(
        get_xattr(&p.join("A/f"), "user.color").as_deref(),
        Some(&b"red"[..])
    );
    weave(p, ["restore", "A/f", "--to", "old"]).expect_code(0);
    assert_eq!(read_str(p.join("old")), "one");
    assert_eq!(
        get_xattr(&p.join("old"), "user.color").as_deref(),
        Some(&b"blue"[..])
    );
}

// ---------------------------------------------------------------------------
// What must never strip attributes (found in review).
// ---------------------------------------------------------------------------

/// A replica that ran once with `--xattrs none` recorded the attributes
/// it was sent but did not set them; the next default run reads its
/// directories, finds them "removed", and strips them everywhere; its
/// files never get them (and the sync reports nothing to do).
#[test]
fn a_run_with_xattrs_none_then_a_default_run_strips_nothing() {
    let t = setup(&["A", "B", "C"]);
    let p = t.path();
    if !xattrs_here(p) {
        eprintln!("skipped: no user extended attributes on this file system");
        return;
    }
    std::fs::create_dir(p.join("A/d")).unwrap();
    write_at(p.join("A/d/f"), "x", at(1_600_000_000, 0));
    set_xattr(&p.join("A/d"), "user.tag", b"keep me");
    set_xattr(&p.join("A/d/f"), "user.color", b"blue");
    // A knows its attributes (a default sync with C)...
    sync(p, &["A", "C"]).expect_code(0);
    // ... then B joins once without attributes ...
    sync(p, &["--xattrs", "none", "A", "B"]).expect_code(0);
    assert_eq!(get_xattr(&p.join("B/d"), "user.tag"), None);
    // ... and the default again: nobody changed anything.
    let (r, _) = sync_json(p, &["A", "B"]);
    r.expect_code(0);
    assert_eq!(
        get_xattr(&p.join("A/d"), "user.tag").as_deref(),
        Some(&b"keep me"[..]),
        "A's directory lost its attribute\n{}",
        r.stdout
    );
    assert_eq!(
        get_xattr(&p.join("B/d/f"), "user.color").as_deref(),
        Some(&b"blue"[..]),
        "B's file never gets its attribute"
    );
}

/// A directory removed on A while a file in it changed on B comes back
/// (ParentRestored): it must keep its attributes on B (and get them on A).
#[test]
fn a_restored_parent_keeps_its_attributes() {
    let t = setup(&["A", "B"]);
    let p = t.path();
    if !xattrs_here(p) {
        eprintln!("skipped: no user extended attributes on this file system");
        return;
    }
    std::fs::create_dir(p.join("A/d")).unwrap();
    write_at(p.join("A/d/f"), "one", at(1_600_000_000, 0));
    set_xattr(&p.join("A/d"), "user.tag", b"keep me");
    sync(p, &["A", "B"]).expect_code(0);
    assert_eq!(
        get_xattr(&p.join("B/d"), "user.tag").as_deref(),
        Some(&b"keep me"[..])
    );
    std::fs::remove_dir_all(p.join("A/d")).unwrap();
    write_at(p.join("B/d/f"), "two, edited", at(1_600_000_100, 0));
    // Exit code 1: the conflicts (modify/delete, parent restored) are reported.
    let r = sync(p, &["A", "B"]);
    r.expect_code(1);
    assert_eq!(read_str(p.join("A/d/f")), "two, edited");
    assert_eq!(
        get_xattr(&p.join("B/d"), "user.tag").as_deref(),
        Some(&b"keep me"[..]),
        "the directory that was kept lost its attribute\n{}",
        r.stdout
    );
}

/// A restore in place must not make every replica lose the file's
/// attributes.
#[test]
fn a_restore_does_not_strip_attributes_everywhere() {
    let t = setup(&["A", "B"]);
    let p = t.path();
    if !xattrs_here(p) {
        eprintln!("skipped: no user extended attributes on this file system");
        return;
    }
    write_at(p.join("A/f"), "version one", at(1_600_000_000, 0));
    set_xattr(&p.join("A/f"), "user.color", b"blue");
    sync(p, &["A", "B"]).expect_code(0);
    // An edit in place keeps the attribute.
    write_at(p.join("A/f"), "version two!", at(1_600_000_100, 0));
    sync(p, &["A", "B"]).expect_code(0);
    assert_eq!(
        get_xattr(&p.join("B/f"), "user.color").as_deref(),
        Some(&b"blue"[..])
    );
    weave(p, ["restore", "B/f"]).expect_code(0);
    assert_eq!(read_str(p.join("B/f")), "version one");
    sync(p, &["A", "B"]).expect_code(0);
    assert_eq!(read_str(p.join("A/f")), "version one");
    assert_eq!(
        get_xattr(&p.join("A/f"), "user.color").as_deref(),
        Some(&b"blue"[..]),
        "the restore on B stripped A's attribute"
    );
}

/// Run as a user (not root): a read-only file (mode 0444, as git objects)
/// with a user attribute still takes a new mtime (attributes already
/// right are not set again, which would need write permission).
#[test]
fn a_read_only_file_with_attributes_takes_a_new_mtime_as_a_user() {
    use std::os::unix::fs::PermissionsExt;
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to run weave as another user");
        return;
    }
    let t = setup(&["A", "B"]);
    let p = t.path();
    if !xattrs_here(p) {
        eprintln!("skipped: no user extended attributes on this file system");
        return;
    }
    write_at(p.join("A/f"), "x", at(1_600_000_000, 0));
    set_xattr(&p.join("A/f"), "user.color", b"blue");
    std::fs::set_permissions(p.join("A/f"), std::fs::Permissions::from_mode(0o444)).unwrap();
    for d in [p, &p.join("A"), &p.join("B"), &p.join("A/f")] {
        std::os::unix::fs::chown(d, Some(65534), Some(65534)).unwrap();
    }
    let as_nobody = || {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_weave"))
            .args(["sync", "A", "B"])
            .current_dir(p)
            .output()
            .expect("setpriv runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = as_nobody();
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        get_xattr(&p.join("B/f"), "user.color").as_deref(),
        Some(&b"blue"[..])
    );
    // Only the mtime changes on A.
    set_mtime(p.join("A/f"), at(1_600_000_100, 0));
    let (code, out) = as_nobody();
    assert_eq!(code, 0, "a new mtime alone failed:\n{out}");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(p.join("B/f")).unwrap().mtime(),
        1_600_000_100
    );
}

/// On a file system without extended attributes (vfat, exfat,
/// ramfs: no listxattr of their own), listing attributes succeeds with an
/// empty list, only getting and setting them fail. Such a replica must
/// pass the attributes of the others through, not report them removed.
#[test]
fn a_replica_without_xattrs_passes_them_through() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to mount a ramfs");
        return;
    }
    let t = setup(&["A"]);
    let p = t.path();
    if !xattrs_here(p) {
        eprintln!("skipped: no user extended attributes on this file system");
        return;
    }
    let mnt = p.join("B");
    std::fs::create_dir(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "ramfs", "none"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: cannot mount a ramfs");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(mnt.clone());
    std::fs::create_dir(p.join("A/d")).unwrap();
    write_at(p.join("A/d/f"), "x", at(1_600_000_000, 0));
    set_xattr(&p.join("A/d"), "user.tag", b"keep me");
    set_xattr(&p.join("A/d/f"), "user.color", b"blue");
    sync(p, &["A", "B"]).expect_code(0);
    assert_eq!(read_str(p.join("B/d/f")), "x");
    // Nothing changed anywhere; and B's file is edited: neither may strip
    // A's attributes.
    sync(p, &["A", "B"]).expect_code(0);
    write_at(p.join("B/d/f"), "edited on B", at(1_600_000_100, 0));
    sync(p, &["A", "B"]).expect_code(0);
    assert_eq!(read_str(p.join("A/d/f")), "edited on B");
    assert_eq!(
        get_xattr(&p.join("A/d"), "user.tag").as_deref(),
        Some(&b"keep me"[..]),
        "B, which keeps no attributes, stripped A's directory"
    );
    assert_eq!(
        get_xattr(&p.join("A/d/f"), "user.color").as_deref(),
        Some(&b"blue"[..]),
        "B, which keeps no attributes, stripped A's file"
    );
}

// ---------------------------------------------------------------------------
// Hard links.
// ---------------------------------------------------------------------------

fn inode(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).unwrap().ino()
}

/// With `--hard-links`, names of one file stay one file on the other side;
/// renaming one name (the first one too) keeps the others linked; without
/// the option each name is a file of its own.
#[test]
fn hard_links_are_kept_and_survive_a_rename() {
    let t = setup(&["A", "B", "C"]);
    let p = t.path();
    std::fs::create_dir(p.join("A/d")).unwrap();
    write_at(p.join("A/a"), "linked content", at(1_600_000_000, 0));
    std::fs::hard_link(p.join("A/a"), p.join("A/d/b")).unwrap();
    std::fs::hard_link(p.join("A/a"), p.join("A/c")).unwrap();
    write_at(p.join("A/other"), "linked content", at(1_600_000_000, 0));
    sync(p, &["--hard-links", "A", "B"]).expect_code(0);
    let b = |f: &str| inode(&p.join("B").join(f));
    assert_eq!(b("a"), b("d/b"));
    assert_eq!(b("a"), b("c"));
    assert_ne!(b("a"), b("other"), "same content, but not a link on A");
    assert_eq!(read_str(p.join("B/d/b")), "linked content");
    // Nothing left to do, and nothing changes on a rerun.
    let (_, j) = sync_json(p, &["--hard-links", "A", "B"]);
    assert_eq!(j["in_sync"], true);
    assert_eq!(j["updated"], 0);

    // A name renamed, then the first name renamed.
    std::fs::rename(p.join("A/c"), p.join("A/e")).unwrap();
    sync(p, &["--hard-links", "A", "B"]).expect_code(0);
    assert!(!p.join("B/c").exists());
    assert_eq!(b("a"), b("e"));
    assert_eq!(b("a"), b("d/b"));
    std::fs::rename(p.join("A/a"), p.join("A/z")).unwrap();
    sync(p, &["--hard-links", "A", "B"]).expect_code(0);
    assert!(!p.join("B/a").exists());
    assert_eq!(b("z"), b("e"));
    assert_eq!(b("z"), b("d/b"));
    // An edit in place reaches every name.
    std::fs::write(p.join("A/e"), "edited through one name").unwrap();
    sync(p, &["--hard-links", "A", "B"]).expect_code(0);
    assert_eq!(read_str(p.join("B/z")), "edited through one name");
    assert_eq!(b("z"), b("e"));
    assert_eq!(b("z"), b("d/b"));

    // Without the option: each name a file of its own.
    sync(p, &["A", "C"]).expect_code(0);
    let c = |f: &str| inode(&p.join("C").join(f));
    assert_ne!(c("z"), c("e"));
    assert_eq!(read_str(p.join("C/d/b")), "edited through one name");
}

/// A link broken on A (same bytes, same mtime) is broken on B too: an
/// edit on B through one name no longer reaches the other.
#[test]
fn a_link_broken_on_one_side_is_broken_on_the_others() {
    let t = setup(&["A", "B"]);
    let p = t.path();
    write_at(p.join("A/a"), "shared", at(1_600_000_000, 0));
    std::fs::hard_link(p.join("A/a"), p.join("A/b")).unwrap();
    sync(p, &["-H", "A", "B"]).expect_code(0);
    let b = |f: &str| inode(&p.join("B").join(f));
    assert_eq!(b("a"), b("b"));
    // Break the link on A: b becomes a copy of its own.
    std::fs::copy(p.join("A/a"), p.join("A/tmp")).unwrap();
    set_mtime(p.join("A/tmp"), at(1_600_000_000, 0));
    std::fs::rename(p.join("A/tmp"), p.join("A/b")).unwrap();
    sync(p, &["-H", "A", "B"]).expect_code(0);
    let (_, j) = sync_json(p, &["-H", "A", "B"]);
    assert_eq!(j["in_sync"], true, "{j}");
    let still_linked = b("a") == b("b");
    // Edit B/a in place.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(p.join("B/a"))
        .unwrap();
    use std::io::Write;
    f.write_all(b" edited on B via a").unwrap();
    drop(f);
    sync(p, &["-H", "A", "B"]).expect_code(0);
    assert!(
        !still_linked,
        "B kept a and b linked after A broke the link; A/b is now {:?}",
        read_str(p.join("A/b"))
    );
    assert_eq!(read_str(p.join("A/b")), "shared");
}

/// The directory holding the first name renamed (the file's inode does
/// not change, so the other names' link goes stale): it settles, linked on
/// both sides.
#[test]
fn a_directory_holding_the_first_name_renamed() {
    let t = setup(&["A", "B"]);
    let p = t.path();
    std::fs::create_dir(p.join("A/a")).unwrap();
    write_at(p.join("A/a/1"), "shared", at(1_600_000_000, 0));
    std::fs::hard_link(p.join("A/a/1"), p.join("A/b")).unwrap();
    sync(p, &["-H", "A", "B"]).expect_code(0);
    std::fs::rename(p.join("A/a"), p.join("A/z")).unwrap();
    for i in 0..4 {
        let (r, j) = sync_json(p, &["-H", "A", "B"]);
        eprintln!(
            "run {i}: in_sync={} updated={} {}",
            j["in_sync"], j["updated"], r.stderr
        );
    }
    let (_, j) = sync_json(p, &["-H", "A", "B"]);
    assert_eq!(j["in_sync"], true, "{j}");
    let b = |f: &str| inode(&p.join("B").join(f));
    assert_eq!(b("z/1"), b("b"));
    assert_eq!(inode(&p.join("A/z/1")), inode(&p.join("A/b")));
}

/// Two names of one file edited differently on two replicas: both edits
/// are kept.
#[test]
fn two_names_of_one_file_edited_apart_keep_both() {
    let t = setup(&["A", "B"]);
    let p = t.path();
    write_at(p.join("A/a"), "shared", at(1_600_000_000, 0));
    std::fs::hard_link(p.join("A/a"), p.join("A/b")).unwrap();
    sync(p, &["-H", "A", "B"]).expect_code(0);
    std::fs::write(p.join("A/a"), "edit on A").unwrap();
    std::fs::write(p.join("B/b"), "edit on B!").unwrap();
    let (r, j) = sync_json(p, &["-H", "A", "B"]);
    eprintln!("{j}\n{}", r.stderr);
    for i in 0..3 {
        let (r, j) = sync_json(p, &["-H", "A", "B"]);
        eprintln!("run {i}: {j} {}", r.stderr);
    }
    for side in ["A", "B"] {
        for e in std::fs::read_dir(p.join(side)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                eprintln!(
                    "{side}/{:?} ino={} {:?}",
                    e.file_name(),
                    inode(&e.path()),
                    read_str(e.path())
                );
            }
        }
    }
    let (_, j) = sync_json(p, &["-H", "A", "B"]);
    assert_eq!(j["in_sync"], true, "{j}");
    let all: String = ["A", "B"]
        .iter()
        .flat_map(|s| std::fs::read_dir(p.join(s)).unwrap())
        .filter_map(|e| {
            let e = e.unwrap();
            e.file_type().unwrap().is_file().then(|| read_str(e.path()))
        })
        .collect();
    assert!(
        all.contains("edit on A") && all.contains("edit on B!"),
        "an edit was lost"
    );
}
