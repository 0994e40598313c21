//! The version store through its public API: saving deduplicates by chunk,
//! what was saved reads back byte for byte, pruning keeps exactly what the
//! policy keeps, and damage is reported, never spread.

use std::fs::{self, File};
use std::path::Path;
use weave_core::ReplicaId;
use weave_store::{Policy, Reason, Store, ToSave};

fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn save(store: &Store, dir: &Path, path: &str, data: &[u8]) -> u64 {
    let f = dir.join("old");
    fs::write(&f, data).unwrap();
    let list = weave_chunk::chunk_bytes(data);
    let r = store
        .save(&[ToSave {
            path,
            file: &f,
            chunks: &list,
            mode: 0o644,
            mtime_ns: 7,
            origin: ReplicaId(3),
            reason: Reason::Replaced,
            meta: None,
            trusted: false,
            movable: false,
        }])
        .unwrap();
    *r[0].as_ref().unwrap()
}

fn restore(store: &Store, dir: &Path, id: u64) -> Vec<u8> {
    let v = store.get(id).unwrap().unwrap();
    let out = dir.join("restored");
    let f = File::create(&out).unwrap();
    store.read_into(&v, &f, &|_| {}).unwrap();
    fs::read(out).unwrap()
}

#[test]
fn versions_read_back_and_share_their_chunks() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path()).unwrap();
    let mut data = noise(4 << 20, 1);
    let mut ids = Vec::new();
    let mut versions = Vec::new();
    for i in 0..20u64 {
        // A few 1 KiB random edits each time.
        for k in 0..3u64 {
            let at = ((i * 7919 + k * 104_729) * 4099) as usize % (data.len() - 1024);
            data[at..at + 1024].copy_from_slice(&noise(1024, i * 10 + k + 2));
        }
        ids.push(save(&store, t.path(), "dir/f", &data));
        versions.push(data.clone());
    }
    for (id, want) in ids.iter().zip(&versions) {
        assert_eq!(&restore(&store, t.path(), *id), want);
    }
    let listed = store.versions("dir/f").unwrap();
    assert_eq!(listed.iter().map(|v| v.id).collect::<Vec<_>>(), ids);
    assert_eq!(store.versions_under("dir").unwrap().len(), 20);
    assert!(store.versions_under("di").unwrap().is_empty());
    assert!(store.versions("dir").unwrap().is_empty());
    // 20 versions take far less than 20 copies.
    let used = store.disk_usage();
    assert!(
        used < 3 * data.len() as u64,
        "{used} bytes for 20 versions of {}",
        data.len()
    );
}

/// Runs of zeros (a sparse file's holes) are not stored, and read back
/// as holes. Small enough not to be taken whole, then large enough to be.
#[test]
fn runs_of_zeros_are_not_stored_and_come_back_as_holes() {
    use std::os::unix::fs::MetadataExt;
    for data_len in [300_000usize, 3 << 20] {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path().join("store").as_path()).unwrap();
        let mut data = noise(data_len, 5);
        data.resize(data_len + (16 << 20), 0);
        data.extend(noise(70_000, 6));
        data.resize(data.len() + (1 << 20), 0);
        let id = save(&store, t.path(), "disk.img", &data);
        assert!(
            store.disk_usage() < data_len as u64 + (2 << 20),
            "{} bytes stored for {data_len} of data",
            store.disk_usage()
        );
        assert!(restore(&store, t.path(), id) == data);
        let used = fs::metadata(t.path().join("restored")).unwrap().blocks() * 512;
        assert!(used < data_len as u64 + (1 << 20), "{used} bytes on disk");
        assert!(store.check().unwrap().is_empty());
    }
}

#[test]
fn a_file_that_no_longer_holds_its_content_is_not_saved() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path()).unwrap();
    let data = noise(300_000, 5);
    let list = weave_chunk::chunk_bytes(&data);
    let f = t.path().join("old");
    let mut other = data.clone();
    other[200_000] ^= 1;
    fs::write(&f, &other).unwrap();
    let r = store
        .save(&[ToSave {
            path: "x",
            file: &f,
            chunks: &list,
            mode: 0o644,
            mtime_ns: 0,
            origin: ReplicaId(1),
            reason: Reason::Deleted,
            meta: None,
            trusted: false,
            movable: true,
        }])
        .unwrap();
    assert!(r[0].is_err());
    assert!(store.all().unwrap().is_empty());
}

#[test]
fn pruning_keeps_what_the_policy_keeps_and_frees_the_rest() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path()).unwrap();
    let ids: Vec<u64> = (0..6)
        .map(|i| save(&store, t.path(), "f", &noise(1 << 20, 100 + i)))
        .collect();
    let before = store.disk_usage();
    store
        .set_policy(&Policy {
            keep_last: Some(2),
            ..Policy::keep_all()
        })
        .unwrap();
    let p = store.prune(weave_store::now_ns()).unwrap();
    assert_eq!(p.versions_dropped, 4);
    let left: Vec<u64> = store.all().unwrap().iter().map(|v| v.id).collect();
    assert_eq!(left, ids[4..].to_vec());
    assert!(
        store.disk_usage() < before / 2,
        "{} of {before}",
        store.disk_usage()
    );
    for (i, id) in ids[4..].iter().enumerate() {
        assert_eq!(
            restore(&store, t.path(), *id),
            noise(1 << 20, 104 + i as u64)
        );
    }
    // A size cap drops the oldest of what is left.
    store
        .set_policy(&Policy {
            max_size: Some(1 << 20),
            ..Policy::keep_all()
        })
        .unwrap();
    store.prune(weave_store::now_ns()).unwrap();
    let left: Vec<u64> = store.all().unwrap().iter().map(|v| v.id).collect();
    assert_eq!(left, vec![ids[5]]);
    assert_eq!(restore(&store, t.path(), ids[5]), noise(1 << 20, 105));
}

#[test]
fn damage_is_reported_with_the_versions_it_affects() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path()).unwrap();
    let a = save(&store, t.path(), "a", &noise(200_000, 9));
    let b = save(&store, t.path(), "b", &noise(200_000, 10));
    assert!(store.check().unwrap().is_empty());
    // Flip a byte in the middle of the pack: one of the two is hit.
    let pack = t.path().join("versions/packs/00000000.pack");
    let mut bytes = fs::read(&pack).unwrap();
    let mid = bytes.len() / 4;
    bytes[mid] ^= 0xff;
    fs::write(&pack, bytes).unwrap();
    let damage = store.check().unwrap();
    assert_eq!(damage.len(), 1, "{damage:?}");
    assert_eq!(damage[0].versions, vec![a]);
    let v = store.get(a).unwrap().unwrap();
    let f = File::create(t.path().join("out")).unwrap();
    let err = store.read_into(&v, &f, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("damaged"), "{err}");
    // Pruning does not make it worse: the damaged pack is kept as it is.
    store
        .set_policy(&Policy {
            keep_last: Some(1),
            ..Policy::keep_all()
        })
        .unwrap();
    store.prune(weave_store::now_ns()).unwrap();
    assert_eq!(restore(&store, t.path(), b), noise(200_000, 10));
}

/// A large file whose chunks are new to the store is taken whole, by a
/// rename; later versions add only their new chunks.
#[test]
fn a_large_new_file_is_taken_whole_without_a_copy() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path()).unwrap();
    let data = noise(3 << 20, 11);
    let list = weave_chunk::chunk_bytes(&data);
    let f = t.path().join("old");
    fs::write(&f, &data).unwrap();
    let r = store
        .save(&[ToSave {
            path: "big",
            file: &f,
            chunks: &list,
            mode: 0o600,
            mtime_ns: 1,
            origin: ReplicaId(2),
            reason: Reason::Deleted,
            meta: None,
            trusted: false,
            movable: true,
        }])
        .unwrap();
    let id = *r[0].as_ref().unwrap();
    assert!(!f.exists(), "taken by a rename");
    assert_eq!(restore(&store, t.path(), id), data);
    let before = store.disk_usage();
    let mut edited = data.clone();
    edited[1_000_000..1_001_024].copy_from_slice(&noise(1024, 12));
    let id2 = save(&store, t.path(), "big", &edited);
    assert!(
        store.disk_usage() - before < 200_000,
        "{}",
        store.disk_usage() - before
    );
    assert_eq!(restore(&store, t.path(), id2), edited);
    assert_eq!(restore(&store, t.path(), id), data);
    // Only the edited version is kept: it still reads back.
    store
        .set_policy(&Policy {
            keep_last: Some(1),
            ..Policy::keep_all()
        })
        .unwrap();
    store.prune(weave_store::now_ns()).unwrap();
    assert_eq!(restore(&store, t.path(), id2), edited);
}

/// What a killed save or prune leaves (a pack no record refers to, a
/// garbage tail) is removed by the next prune; the store stays readable.
#[test]
fn leftovers_of_a_killed_run_are_cleared_by_the_next_prune() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path()).unwrap();
    let a = save(&store, t.path(), "a", &noise(300_000, 21));
    let packs = t.path().join("versions/packs");
    fs::write(packs.join("00000077.pack"), noise(5000, 1)).unwrap();
    let first = packs.join("00000000.pack");
    let mut f = fs::OpenOptions::new().append(true).open(&first).unwrap();
    std::io::Write::write_all(&mut f, &noise(777, 2)).unwrap();
    drop(f);
    store.prune(weave_store::now_ns()).unwrap();
    assert!(!packs.join("00000077.pack").exists());
    assert!(store.check().unwrap().is_empty());
    assert_eq!(restore(&store, t.path(), a), noise(300_000, 21));
    // And a save after it appends past the garbage.
    let b = save(&store, t.path(), "b", &noise(300_000, 22));
    assert_eq!(restore(&store, t.path(), b), noise(300_000, 22));
    assert_eq!(restore(&store, t.path(), a), noise(300_000, 21));
}

/// The catalog is created under a temporary name and renamed into place:
/// what a run killed while creating it leaves (the temporary, half made)
/// does not stop the next one.
#[test]
fn a_half_made_catalog_is_made_again() {
    let t = tempfile::tempdir().unwrap();
    let versions = t.path().join("versions");
    std::fs::create_dir_all(&versions).unwrap();
    std::fs::write(versions.join("catalog.redb.new"), b"half a header").unwrap();
    let s = weave_store::Store::open(t.path()).expect("opens");
    assert!(s.all().unwrap().is_empty());
    assert!(!versions.join("catalog.redb.new").exists());
}
