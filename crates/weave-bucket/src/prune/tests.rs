//! Tests of pruning: the two phases, repacking, and what concurrent syncs
//! and prunes meet.
use super::*;
use crate::pool::Pack;
use crate::store::{Memory, Store};
use std::sync::Arc;
use weave_core::{Object, ReplicaId, VersionVector};

pub(crate) fn pool(mem: &Arc<Memory>) -> Pool {
    Pool::open(Box::new(mem.clone()), "b", b"pw", true)
        .unwrap()
        .unwrap()
}

pub(crate) fn entry(path: &str, n: u64, content: Hash, size: u64) -> Entry {
    Entry {
        path: path.into(),
        object: Object::File { size, content },
        mode: 0o644,
        mtime_ns: n as i64,
        vv: VersionVector::from_pairs(vec![(ReplicaId(7), n)]),
        origin: ReplicaId(7),
        meta: None,
    }
}

/// Writes version `n` of `path` holding `data` (one chunk, in a pack
/// of its own) as a sync would; returns the entry.
pub(crate) fn push(pool: &mut Pool, path: &str, n: u64, data: &[u8], time_ms: u64) -> Entry {
    let at = pool.view().unwrap().max_at + 1;
    pack_of(pool, &[(path, data)], n, at, time_ms).1.remove(0)
}

/// Writes version `n` of each of `files` (one chunk each), all in one
/// pack, and one record of them; returns the pack's id and the entries.
pub(crate) fn pack_of(
    pool: &mut Pool,
    files: &[(&str, &[u8])],
    n: u64,
    at: u64,
    time_ms: u64,
) -> (String, Vec<Entry>) {
    let mut pack = Pack::new();
    let (mut nodes, mut entries) = (Vec::new(), Vec::new());
    for (path, data) in files {
        let h = Hash::of(data);
        pack.add(&pool.keys, h, data);
        let node = Node {
            level: 1,
            children: vec![(h, data.len() as u64)],
        };
        nodes.push((node.hash(), node.encode()));
        entries.push(entry(path, n, node.hash(), data.len() as u64));
    }
    let (id, bytes, framed) = pack.finish();
    let size = bytes.len() as u64;
    pool.store.put(&format!("packs/{id}"), bytes).unwrap();
    pool.write(&Record {
        entries: entries.clone(),
        nodes,
        at,
        time_ms,
        ..Record::of_pack(id.clone(), size, framed)
    })
    .unwrap();
    (id, entries)
}

/// The bytes of `e`'s content, read from the bucket.
pub(crate) fn read(pool: &Pool, e: &Entry) -> Result<Vec<u8>, String> {
    let view = pool.view().map_err(|e| e.to_string())?;
    let content = e.object.content().unwrap();
    let list = view.list(&content).ok_or("no tree")?;
    let at: Vec<_> = list
        .chunks
        .iter()
        .map(|c| Some((c.hash, view.chunks.get(&c.hash)?.clone())))
        .collect::<Option<_>>()
        .ok_or("a chunk has no place")?;
    let mut out = Vec::new();
    pool.read_chunks(&at, &mut |_, d| {
        out.extend(d.unwrap());
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    Ok(out)
}

fn keep_last(n: u32) -> Policy {
    Policy {
        keep_last: Some(n),
        ..Policy::keep_all()
    }
}

fn packs(mem: &Memory) -> usize {
    mem.list("packs/").unwrap().len()
}

#[test]
fn old_versions_leave_in_two_phases_and_the_current_ones_stay() {
    let mem = Arc::new(Memory::default());
    let mut p = pool(&mem);
    push(&mut p, "f", 1, &[1; 5000], 1000);
    let g = push(&mut p, "g", 1, &[9; 5000], 1500);
    push(&mut p, "f", 2, &[2; 5000], 2000);
    let f3 = push(&mut p, "f", 3, &[3; 5000], 3000);
    let before = p.view().unwrap();
    // A dry run writes nothing.
    let dry = prune(&mut p, &keep_last(1), 10_000, 20_000, true).unwrap();
    assert_eq!((dry.versions_dropped, dry.packs_marked), (1, 1));
    assert_eq!(mem.list(MARKS).unwrap().len(), 0);
    // The mark: f's oldest version goes; nothing is deleted yet, and
    // readers see what they saw.
    let m = prune(&mut p, &keep_last(1), 10_000, 20_000, false).unwrap();
    assert_eq!((m.versions_kept, m.versions_dropped), (3, 1), "{m:?}");
    assert_eq!((m.records_marked, m.packs_marked), (4, 1));
    assert_eq!(packs(&mem), 4);
    let during = p.view().unwrap();
    assert_eq!(during.chosen("f"), before.chosen("f"));
    assert_eq!(during.chosen("g"), before.chosen("g"));
    // Within the grace period: nothing more to mark, nothing deleted.
    let w = prune(&mut p, &keep_last(1), 10_000, 21_000, false).unwrap();
    assert_eq!(
        (w.records_marked, w.records_deleted, w.marks_waiting),
        (0, 0, 1)
    );
    // After it: the sweep.
    let s = prune(&mut p, &keep_last(1), 10_000, 30_001, false).unwrap();
    assert_eq!((s.records_deleted, s.packs_deleted), (4, 1), "{s:?}");
    assert!(s.bytes_deleted >= 4096, "{s:?}");
    assert_eq!(packs(&mem), 3);
    assert!(mem.list(MARKS).unwrap().is_empty());
    let after = p.view().unwrap();
    assert_eq!(after.chosen("f"), Some(&f3));
    assert_eq!(read(&p, &f3).unwrap(), vec![3; 5000]);
    assert_eq!(read(&p, &g).unwrap(), vec![9; 5000]);
    let h = crate::history::history(&p, "f").unwrap();
    assert_eq!(h.len(), 2);
    // Each keeps when it was recorded, not when it was compacted.
    assert_eq!(
        h.iter().map(|v| v.recorded_ms).collect::<Vec<_>>(),
        vec![2000, 3000]
    );
}

#[test]
fn a_version_written_between_mark_and_sweep_keeps_the_chunks_it_reuses() {
    let mem = Arc::new(Memory::default());
    let mut p = pool(&mem);
    let old = push(&mut p, "f", 1, &[1; 5000], 1000);
    push(&mut p, "f", 2, &[2; 5000], 2000);
    // Another device read the records before the mark...
    let mut other = pool(&mem);
    let at = other.view().unwrap().max_at + 1;
    let m = prune(&mut p, &keep_last(0), 10_000, 20_000, false).unwrap();
    assert_eq!(m.packs_marked, 1);
    // ...and writes, after it, a new file with the old version's
    // content: it names no node or chunk (the bucket had them).
    let copy = Entry {
        path: "copy".into(),
        ..old.clone()
    };
    other
        .write(&Record {
            entries: vec![copy.clone()],
            at,
            time_ms: 21_000,
            ..Default::default()
        })
        .unwrap();
    let s = prune(&mut p, &keep_last(0), 10_000, 30_001, false).unwrap();
    assert_eq!(s.packs_deleted, 0, "{s:?}");
    assert_eq!(read(&p, &copy).unwrap(), vec![1; 5000]);
    // Later prunes keep it.
    prune(&mut p, &keep_last(0), 10_000, 31_000, false).unwrap();
    prune(&mut p, &keep_last(0), 10_000, 45_000, false).unwrap();
    assert_eq!(read(&p, &copy).unwrap(), vec![1; 5000]);
}

#[test]
fn a_sweep_killed_midway_is_finished_by_the_next_prune() {
    let mem = Arc::new(Memory::default());
    let mut p = pool(&mem);
    push(&mut p, "f", 1, &[1; 5000], 1000);
    let f2 = push(&mut p, "f", 2, &[2; 5000], 2000);
    prune(&mut p, &keep_last(0), 0, 5000, false).unwrap();
    // As if killed after deleting one retired record, before the rest.
    let marks = read_marks(&p).unwrap();
    mem.delete(&marks[0].1.retired[0]).unwrap();
    let s = prune(&mut p, &keep_last(0), 0, 6000, false).unwrap();
    assert_eq!((s.records_deleted, s.packs_deleted), (1, 1), "{s:?}");
    assert_eq!(read(&p, &f2).unwrap(), vec![2; 5000]);
    assert_eq!(packs(&mem), 1);
}

#[test]
fn a_clock_behind_makes_no_mark_ripe_early_and_orphan_packs_go() {
    let mem = Arc::new(Memory::default());
    let mut p = pool(&mem);
    push(&mut p, "f", 1, &[1; 5000], 1000);
    push(&mut p, "f", 2, &[2; 5000], 2000);
    // A pack no record names, written long ago by the storage's
    // clock; another just now.
    let (old_orphan, new_orphan) = ("a".repeat(32), "b".repeat(32));
    for o in [&old_orphan, &new_orphan] {
        mem.put(&format!("packs/{o}"), vec![0; 10]).unwrap();
    }
    let stamp = |name: &str, t: u64| {
        mem.times.lock().unwrap().insert(name.to_string(), t);
    };
    stamp(&format!("packs/{old_orphan}"), 5_000);
    stamp(&format!("packs/{new_orphan}"), 99_000);
    // The marking device's clock says 20 000; the storage's, 60 000.
    let m = prune(&mut p, &keep_last(0), 10_000, 20_000, false).unwrap();
    assert_eq!(m.packs_marked, 2, "{m:?}"); // f's first, the old orphan
    let mark = mem.list(MARKS).unwrap().pop().unwrap();
    stamp(&mark, 60_000);
    // By the mark's own time it is ripe at 30 001; by the storage's,
    // not before 70 000.
    let s = prune(&mut p, &keep_last(0), 10_000, 30_001, false).unwrap();
    assert_eq!((s.packs_deleted, s.marks_waiting), (0, 1), "{s:?}");
    let s = prune(&mut p, &keep_last(0), 10_000, 70_000, false).unwrap();
    assert_eq!(s.packs_deleted, 2, "{s:?}");
    assert!(mem.get(&format!("packs/{old_orphan}")).unwrap().is_none());
    assert!(mem.get(&format!("packs/{new_orphan}")).unwrap().is_some());
}

#[test]
fn a_marked_pack_a_later_record_names_is_kept() {
    let mem = Arc::new(Memory::default());
    let mut p = pool(&mem);
    push(&mut p, "f", 1, &[1; 5000], 1000);
    push(&mut p, "f", 2, &[2; 5000], 2000);
    let orphan = "c".repeat(32);
    mem.put(&format!("packs/{orphan}"), vec![0; 10]).unwrap();
    mem.times
        .lock()
        .unwrap()
        .insert(format!("packs/{orphan}"), 1);
    let m = prune(&mut p, &keep_last(1), 10_000, 20_000, false).unwrap();
    assert_eq!(m.packs_marked, 1, "{m:?}");
    // A slow push's record of where its chunks are lands after the
    // mark.
    p.write(&Record {
        packs: vec![orphan.clone()],
        pack_sizes: vec![10],
        time_ms: 25_000,
        ..Default::default()
    })
    .unwrap();
    let s = prune(&mut p, &keep_last(1), 10_000, 40_000, false).unwrap();
    assert_eq!(s.packs_deleted, 0, "{s:?}");
    assert!(mem.get(&format!("packs/{orphan}")).unwrap().is_some());
}

#[test]
fn a_pack_mostly_of_dropped_chunks_is_repacked_and_goes() {
    let mem = Arc::new(Memory::default());
    let mut p = pool(&mem);
    // One pack: f's first version (large) and g (small).
    let mut f1 = vec![0u8; 2_000_000];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut f1);
    let g1 = b"g's small content".to_vec();
    let (id, entries) = pack_of(&mut p, &[("f", &f1), ("g", &g1)], 1, 1, 1000);
    let f2 = push(&mut p, "f", 2, b"f's second version", 2000);
    let m = prune(&mut p, &keep_last(0), 0, 10_000, false).unwrap();
    assert_eq!((m.versions_dropped, m.packs_repacked), (1, 1), "{m:?}");
    assert!(m.bytes_repacked > 0 && m.bytes_repacked < 1000, "{m:?}");
    // Readers read g from its new pack already; the old one is still
    // there for syncs that read the records before the mark.
    assert_eq!(read(&p, &entries[1]).unwrap(), g1);
    assert!(mem.get(&format!("packs/{id}")).unwrap().is_some());
    // The sweep leaves a repacked pack one more grace period, for
    // syncs that read the records before the mark; the next takes it.
    prune(&mut p, &keep_last(0), 0, 20_000, false).unwrap();
    assert!(mem.get(&format!("packs/{id}")).unwrap().is_some());
    assert_eq!(read(&p, &entries[1]).unwrap(), g1);
    let s = prune(&mut p, &keep_last(0), 0, 30_000, false).unwrap();
    assert!(s.packs_deleted >= 1, "{s:?}");
    assert!(mem.get(&format!("packs/{id}")).unwrap().is_none());
    assert_eq!(read(&p, &entries[1]).unwrap(), g1);
    assert_eq!(read(&p, &f2).unwrap(), b"f's second version");
    // Nothing more to do.
    let again = prune(&mut p, &keep_last(0), 0, 40_000, false).unwrap();
    assert_eq!(
        (again.packs_marked, again.packs_repacked),
        (0, 0),
        "{again:?}"
    );
    assert!(mem.list(MARKS).unwrap().is_empty());
}

#[test]
fn a_pack_that_cannot_be_read_is_left_and_the_rest_is_pruned() {
    let mem = Arc::new(Memory::default());
    let mut p = pool(&mem);
    let mut big = vec![0u8; 2_000_000];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut big);
    let (id, _) = pack_of(&mut p, &[("big", &big), ("small", b"small")], 1, 1, 1000);
    // Cut short where the bucket is kept.
    let name = format!("packs/{id}");
    let whole = mem.get(&name).unwrap().unwrap();
    mem.put(&name, whole[..100].to_vec()).unwrap();
    push(&mut p, "big", 2, b"big, smaller now", 2000);
    push(&mut p, "f", 1, &[1; 5000], 2000);
    push(&mut p, "f", 2, &[2; 5000], 3000);
    let m = prune(&mut p, &keep_last(0), 0, 10_000, false).unwrap();
    assert_eq!((m.versions_dropped, m.packs_repacked), (2, 0), "{m:?}");
    assert_eq!(m.packs_marked, 1, "{m:?}"); // f's first version's pack
    let s = prune(&mut p, &keep_last(0), 0, 20_000, false).unwrap();
    assert_eq!(s.packs_deleted, 1, "{s:?}");
    assert!(mem.get(&format!("packs/{id}")).unwrap().is_some());
}
