//! When what a replica keeps of owners and attributes widens: the sweep
//! gives values back without hiding a change, losing special mode bits,
//! recording what it could not give back as removed, or leaving files
//! writable.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use weave_core::ignore::Matcher;
use weave_core::{Meta, MetaScope, Object, Xattr};
use weave_fs::scan::{scan, ScanOptions, ScanOutcome};
use weave_index::{Batch, Index};

fn run(root: &Path, idx: &mut Index, only: Option<&[String]>) -> ScanOutcome {
    let matcher = Matcher::from_files(&[], &[]).unwrap();
    let opts = ScanOptions {
        matcher: &matcher,
        remove_temps: false,
        dry_run: false,
        only,
        prehashed: None,
        record_parts: false,
    };
    scan(root, idx, &opts).unwrap()
}

fn record(idx: &mut Index, o: ScanOutcome, meta_scope: Option<u64>) {
    idx.write(&Batch {
        entries: o.changed,
        contents: o.contents,
        meta_scope,
        ..Default::default()
    })
    .unwrap();
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The sweep never records a new stat for a file without reading its
/// content: a change the walk did not look at (outside a watcher's paths,
/// or made while the scan hashed) is still seen by the next scan.
#[test]
fn sweep_does_not_hide_a_content_change() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    fs::create_dir_all(root.join("a")).unwrap();
    fs::create_dir_all(root.join("b")).unwrap();
    fs::write(root.join("a/x"), b"1").unwrap();
    fs::write(root.join("b/y"), b"one").unwrap();
    let mut idx = Index::open(&tmp.path().join("state")).unwrap();
    // An index from before the scope was recorded.
    let o = run(&root, &mut idx, None);
    record(&mut idx, o, None);
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(root.join("a/x"), b"2").unwrap();
    fs::write(root.join("b/y"), b"changed, longer").unwrap();
    // Written a while before the sweep looks (or with its times kept, as
    // cp -p, tar, rsync -t do): not racy.
    let t = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(root.join("b/y"))
        .unwrap()
        .set_modified(t)
        .unwrap();
    // The watcher has reported a/x so far.
    let only = vec!["a/x".to_string()];
    let o = run(&root, &mut idx, Some(&only));
    assert!(o.meta_scope.is_some(), "the sweep ran");
    let ms = o.meta_scope;
    record(&mut idx, o, ms);
    // Now b/y is reported too (or the next full scan).
    let o = run(&root, &mut idx, None);
    let y = o.changed.iter().find(|le| le.entry.path == "b/y");
    assert!(
        matches!(
            y.map(|l| &l.entry.object),
            Some(Object::File { size: 15, .. })
        ),
        "the new content of b/y was never read: {:?}",
        y.map(|l| &l.entry.object)
    );
}

/// Giving an owner back never clears setuid/setgid (a chown does, even
/// to the same ids).
#[test]
fn sweep_keeps_setuid() {
    if !is_root() {
        eprintln!("skipped: not root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    fs::create_dir_all(&root).unwrap();
    let s = root.join("s");
    fs::write(&s, b"#!/bin/sh\n").unwrap();
    fs::set_permissions(&s, fs::Permissions::from_mode(0o4755)).unwrap();
    let t = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(&s)
        .unwrap()
        .set_modified(t)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut idx = Index::open(&tmp.path().join("state")).unwrap();
    let scope = weave_fs::meta::scope().clone();
    assert!(scope.owner);
    // Recorded while owners were not kept (--no-owner), the owner passed
    // through from a peer.
    let narrow = MetaScope {
        owner: false,
        ..scope.clone()
    };
    let o = run(&root, &mut idx, None);
    record(&mut idx, o, Some(narrow.bits()));

    let o = run(&root, &mut idx, None);

    let ms = o.meta_scope;
    assert!(ms.is_some(), "the sweep ran");
    record(&mut idx, o, ms);
    let mode = fs::symlink_metadata(&s).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o4755, "setuid bit stripped by the sweep's lchown");
}

/// An attribute that cannot be given back (too large for ext4's one block,
/// from an XFS peer) is not read as removed, and does not stop the
/// attributes after it.
#[test]
fn sweep_does_not_record_removal_of_what_it_could_not_give_back() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    fs::create_dir_all(&root).unwrap();
    let f = root.join("f");
    fs::write(&f, b"x").unwrap();
    let mut idx = Index::open(&tmp.path().join("state")).unwrap();
    let scope = weave_fs::meta::scope().clone();
    let narrow = MetaScope {
        namespaces: scope
            .namespaces
            .iter()
            .filter(|n| *n != "user")
            .cloned()
            .collect(),
        ..scope.clone()
    };
    let o = run(&root, &mut idx, None);
    let mut entries = o.changed;
    let le = entries.iter_mut().find(|l| l.entry.path == "f").unwrap();
    let mut meta = le.entry.meta.as_deref().cloned().unwrap_or(Meta {
        owner: None,
        xattrs: Vec::new(),
        link: None,
    });
    meta.xattrs.push(Xattr {
        name: "user.a".into(),
        value: vec![b'a'; 8000],
    });
    meta.xattrs.push(Xattr {
        name: "user.b".into(),
        value: b"small".to_vec(),
    });
    meta.xattrs.sort();
    le.entry.meta = Some(Box::new(meta));
    idx.write(&Batch {
        entries,
        contents: o.contents,
        meta_scope: Some(narrow.bits()),
        ..Default::default()
    })
    .unwrap();
    let o = run(&root, &mut idx, None);
    let small = rustix::fs::lgetxattr_query(&f, "user.b").is_ok();
    let dropped: Vec<String> = o
        .changed
        .iter()
        .filter(|l| l.entry.path == "f")
        .filter(|l| {
            !l.entry
                .meta
                .as_ref()
                .is_some_and(|m| m.xattrs.iter().any(|x| x.name == "user.a"))
        })
        .map(|l| l.entry.path.clone())
        .collect();
    assert!(
        dropped.is_empty() && small,
        "removal of user.a recorded: {dropped:?}; user.b given back: {small}"
    );
}

/// A file made writable for one attribute gets its mode back when a later
/// one fails. Needs a user other than root (skipped as root; run the test
/// binary with `setpriv --reuid=65534 ...`).
#[test]
fn apply_failure_leaves_no_write_permission() {
    if is_root() {
        eprintln!("skipped: root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("f");
    fs::write(&f, b"x").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o444)).unwrap();
    let want = Meta {
        owner: None,
        xattrs: vec![
            Xattr {
                name: "user.a".into(),
                value: b"1".to_vec(),
            },
            Xattr {
                name: "user.b".into(),
                value: vec![b'b'; 8000],
            },
        ],
        link: None,
    };
    let scope = MetaScope {
        owner: false,
        numeric_ids: false,
        namespaces: vec!["user".into()],
        links: false,
    };
    let names = weave_fs::meta::Names::default();
    let r = weave_fs::meta::apply(
        weave_fs::meta::Target::Path(&f),
        Some(&want),
        &scope,
        &names,
    );
    let mode = fs::symlink_metadata(&f).unwrap().permissions().mode() & 0o777;
    assert!(r.is_err(), "the large one fails on ext4");
    assert_eq!(mode, 0o444, "left writable after a failed attribute");
}
