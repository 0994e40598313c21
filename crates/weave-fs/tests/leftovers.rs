//! A sync killed after it moved old versions to the trash, and before it
//! saved them in the version store, loses nothing: the next sync saves
//! them (once) from the trash journal.

use std::fs;
use std::path::Path;
use weave_core::{Entry, Hash, Object};
use weave_core::{Op, OpKind};
use weave_engine::{NoProgress, Replica, SyncOptions};
use weave_fs::LocalReplica;
use weave_fs::{ContentSource, Location};
use weave_store::history::{history, locate, restore, Pick};

struct Nothing;
impl ContentSource for Nothing {
    fn chunk_list(&self, _: &Hash) -> Option<weave_chunk::ChunkList> {
        None
    }
    fn locations(&self, _: &Hash) -> Vec<Location> {
        Vec::new()
    }
}

fn sync_ab(a: &Path, b: &Path) -> weave_engine::Report {
    let mut reps: Vec<Box<dyn Replica>> = [a, b]
        .iter()
        .map(|p| {
            let canon = fs::canonicalize(p).unwrap();
            let r = LocalReplica::open(&canon, &p.display().to_string(), false).unwrap();
            Box::new(r) as Box<dyn Replica>
        })
        .collect();
    weave_engine::run(
        &mut reps,
        &SyncOptions::default(),
        &weave_engine::Roles::default(),
        &NoProgress,
    )
    .expect("sync")
}

#[test]
fn versions_left_in_the_trash_by_a_killed_sync_are_kept_by_the_next() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    fs::write(a.join("f"), b"the only copy of the old f").unwrap();
    sync_ab(&a, &b);
    fs::remove_file(a.join("f")).unwrap();

    // B's part of the next sync, killed right after its removal: the old
    // f is in B's trash, the index and the store know nothing of it.
    let cur = {
        let idx = weave_index::Index::open(&b.join(".weave")).unwrap();
        idx.entry("f").unwrap().expect("f is recorded")
    };
    let op = Op {
        kind: OpKind::Remove,
        path: "f".into(),
        current: Some(cur.clone()),
        target: Entry {
            object: Object::Deleted,
            ..cur.entry.clone()
        },
    };
    let out = weave_fs::apply(&b, &[op], &Nothing, &|_| {});
    assert!(out.issues.is_empty(), "{:?}", out.issues);
    assert_eq!(out.replaced.len(), 1);
    assert!(!b.join("f").exists());
    let at = locate(&b.join("f")).unwrap();
    assert!(history(&at).unwrap().is_empty());

    // The next sync saves it before anything else touches the trash.
    let r = sync_ab(&a, &b);
    assert!(
        r.notices
            .iter()
            .any(|n| n.message.contains("interrupted sync")),
        "{:?}",
        r.notices
    );
    let vs = history(&at).unwrap();
    assert_eq!(vs.len(), 1, "{vs:?}");
    assert_eq!(vs[0].mtime_ns, cur.entry.mtime_ns);
    let dest = t.path().join("back");
    restore(&at, Pick::Latest, Some(&dest), &|_, _, _| Ok(())).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), b"the only copy of the old f");
    assert!(!b.join(".weave/trash").exists());

    // Saved once: the trash is empty, the next sync adds nothing.
    fs::write(a.join("g"), b"something new").unwrap();
    let r = sync_ab(&a, &b);
    assert!(r.notices.is_empty(), "{:?}", r.notices);
    assert_eq!(history(&at).unwrap().len(), 1);
}
