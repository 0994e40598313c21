//! A kv store's index keeps each record's revision where the versions
//! before `weave_object`'s `Observed` kept it, in the entry's stat (`ino`):
//! what a sync records now is what they recorded, and an index they wrote
//! opens and syncs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use weave_core::{Entry, LocalEntry, Object, Stat, VersionVector};
use weave_engine::{IgnoreSpec, Kind, Replica, Report};
use weave_index::{Batch, Index};
use weave_kv::{Kv, KvStore, Record};
use weave_object::{Change, Listed, ObjectKind, ObjectReplica, ObjectStore, Outcome, StoreError};

/// The stat earlier versions recorded for a record, field by field.
fn old_stat(r: &Record) -> Stat {
    Stat {
        size: r.value.len() as u64,
        mtime_ns: r.mtime_ns,
        ctime_ns: 0,
        ino: r.revision,
        mode: 0o644,
        racy: false,
    }
}

fn state(dir: &Path) -> PathBuf {
    dir.join(".weave")
}

/// Writes the index of the kv store in `dir` as a first scan by an
/// earlier version wrote it: one version per record, its stat
/// [`old_stat`], and the record's chunk list.
fn write_old_index(dir: &Path) {
    let records = KvStore::open(dir).unwrap().list().unwrap();
    std::fs::create_dir_all(state(dir)).unwrap();
    std::fs::write(state(dir).join("kind"), "kv\n").unwrap();
    let mut index = Index::open(&state(dir)).unwrap();
    let id = index.id();
    let mut batch = Batch::default();
    for (key, r) in records {
        let list = weave_chunk::chunk_bytes(&r.value);
        let mut vv = VersionVector::default();
        vv.bump(id, index.tick());
        batch.entries.push(LocalEntry {
            entry: Entry {
                path: key,
                object: Object::File {
                    size: r.value.len() as u64,
                    content: list.content_id(),
                },
                mode: 0o644,
                mtime_ns: r.mtime_ns,
                vv,
                origin: id,
                meta: None,
            },
            seq: index.next_seq(),
            stat: Some(old_stat(&r)),
        });
        batch.contents.push(list);
    }
    index.write(&batch).unwrap();
}

/// Syncs the kv stores in `dirs`, opened as `weave sync --kind kv` does.
fn sync(dirs: &[&Path]) -> Report {
    let kind = ObjectKind(Kv::default());
    let mut reps: Vec<Box<dyn Replica>> = dirs
        .iter()
        .map(|d| kind.open(d, &d.display().to_string(), false).unwrap())
        .collect();
    weave_object::sync(&mut reps, &Default::default()).unwrap()
}

fn put(dir: &Path, key: &str, value: &[u8]) {
    KvStore::open(dir).unwrap().put(key, value).unwrap();
}

fn value(dir: &Path, key: &str) -> Option<Vec<u8>> {
    KvStore::open(dir)
        .unwrap()
        .get(key)
        .unwrap()
        .map(|r| r.value)
}

/// A kv store that counts its reads.
struct Counting {
    kv: KvStore,
    reads: Arc<AtomicUsize>,
}

impl ObjectStore for Counting {
    fn list(&mut self) -> Result<Vec<Listed>, StoreError> {
        ObjectStore::list(&mut self.kv)
    }
    fn read(&mut self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        ObjectStore::read(&mut self.kv, name)
    }
    fn commit(&mut self, changes: &[Change]) -> Result<Vec<Outcome>, StoreError> {
        self.kv.commit(changes)
    }
}

#[test]
fn a_sync_records_each_record_as_earlier_versions_did() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    put(a.path(), "alice", b"alice@example.org");
    put(b.path(), "bob", b"bob@example.org");
    let report = sync(&[a.path(), b.path()]);
    assert!(report.in_sync && report.errors.is_empty(), "{report:?}");
    // On each side one record its scan found, and one a sync wrote.
    for dir in [a.path(), b.path()] {
        let records = KvStore::open(dir).unwrap().list().unwrap();
        assert_eq!(records.len(), 2);
        let index = Index::open(&state(dir)).unwrap();
        for (key, r) in records {
            let le = index.entry(&key).unwrap().unwrap();
            assert_eq!(le.stat, Some(old_stat(&r)), "{key} in {}", dir.display());
        }
    }
}

#[test]
fn an_index_written_the_old_way_opens_and_syncs() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    {
        let kv = KvStore::open(a.path()).unwrap();
        kv.put("alice", b"alice@example.org").unwrap();
        kv.put("bob", b"bob@example.org").unwrap();
    }
    write_old_index(a.path());

    // Its scan takes every record to be at the revision the index
    // recorded: it reads none of them, and records nothing new.
    let reads = Arc::new(AtomicUsize::new(0));
    let store = Counting {
        kv: KvStore::open(a.path()).unwrap(),
        reads: reads.clone(),
    };
    let mut rep = ObjectReplica::open(store, &state(a.path()), "a", false).unwrap();
    let seq = rep.info().seq;
    rep.scan(&IgnoreSpec::default(), false).unwrap();
    assert_eq!(reads.load(Ordering::SeqCst), 0);
    assert_eq!(rep.info().seq, seq);
    drop(rep);

    let report = sync(&[a.path(), b.path()]);
    assert!(report.in_sync && report.errors.is_empty(), "{report:?}");
    assert_eq!(report.created, 2);
    assert_eq!(value(b.path(), "bob").unwrap(), b"bob@example.org");

    // A change from B is committed to A expecting the revision the old
    // index recorded (a wrong one would leave it stale), and a change in
    // A is found by its new revision.
    put(b.path(), "alice", b"alice@example.com");
    put(a.path(), "bob", b"bob@example.com");
    let report = sync(&[a.path(), b.path()]);
    assert!(report.in_sync && report.errors.is_empty(), "{report:?}");
    assert_eq!(report.updated, 2);
    assert_eq!(value(a.path(), "alice").unwrap(), b"alice@example.com");
    assert_eq!(value(b.path(), "bob").unwrap(), b"bob@example.com");
}
