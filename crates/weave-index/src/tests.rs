use super::*;

fn entry(path: &str) -> LocalEntry {
    LocalEntry {
        entry: Entry {
            path: path.into(),
            object: Object::Dir,
            mode: 0o755,
            mtime_ns: 0,
            vv: VersionVector::from_pairs(vec![(ReplicaId(5), 3)]),
            origin: ReplicaId(5),
            meta: None,
        },
        seq: 1,
        stat: None,
    }
}

#[test]
fn roundtrip_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join(".weave");
    let id;
    {
        let mut idx = Index::open(&state).unwrap();
        id = idx.id();
        idx.tick();
        idx.next_seq();
        let list = weave_chunk::chunk_bytes(b"hello");
        let batch = Batch {
            entries: vec![entry("a"), entry("a/b")],
            contents: vec![list.clone()],
            peers: vec![(ReplicaId(9), 4)],
            ..Default::default()
        };
        idx.write(&batch).unwrap();
        assert_eq!(idx.chunk_list(&list.content_id()).unwrap(), Some(list));
    }
    let idx = Index::open(&state).unwrap();
    assert_eq!(idx.id(), id);
    assert_eq!(idx.seq(), 1);
    let e = idx.load_entries().unwrap();
    assert_eq!(e.len(), 2);
    assert_eq!(idx.entry("a/b").unwrap(), Some(entry("a/b")));
    assert_eq!(idx.entry("nope").unwrap(), None);
    let mut recs = Vec::new();
    idx.for_each_scan_record(|p, r| recs.push((p.to_string(), r)))
        .unwrap();
    assert_eq!(
        recs,
        vec![
            ("a".to_string(), ScanRecord::Dir { mode: 0o755 }),
            ("a/b".to_string(), ScanRecord::Dir { mode: 0o755 })
        ]
    );
    assert_eq!(e["a/b"], entry("a/b"));
    assert_eq!(idx.load_peers().unwrap()[&ReplicaId(9)], 4);
}

#[test]
fn the_id_is_read_where_the_index_is() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join(".weave");
    let id = Index::open(&state).unwrap().id();
    assert_ne!(id, ReplicaId(0));
    assert_eq!(Index::id_at(&state), id);
    std::fs::write(state.join(INDEX_FILE), vec![0x5a; 8192]).unwrap();
    assert_eq!(Index::id_at(&state), ReplicaId(0));
}

#[test]
fn unreferenced_chunk_lists_are_collected() {
    let dir = tempfile::tempdir().unwrap();
    let mut idx = Index::open(&dir.path().join(".weave")).unwrap();
    let a = weave_chunk::chunk_bytes(b"a");
    let b = weave_chunk::chunk_bytes(b"b");
    let batch = Batch {
        contents: vec![a.clone(), b.clone()],
        ..Default::default()
    };
    idx.write(&batch).unwrap();
    let live: std::collections::HashSet<Hash> = [a.content_id()].into_iter().collect();
    assert_eq!(idx.gc_contents(&live).unwrap(), 1);
    assert_eq!(idx.content_count().unwrap(), 1);
    assert!(idx.chunk_list(&a.content_id()).unwrap().is_some());
    assert!(idx.chunk_list(&b.content_id()).unwrap().is_none());
}

#[test]
fn a_copied_state_directory_gets_a_new_identity() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(a.join(".weave")).unwrap();
    std::fs::create_dir_all(b.join(".weave")).unwrap();
    let id_a = {
        let mut idx = Index::open(&a.join(".weave")).unwrap();
        idx.write(&Batch {
            entries: vec![entry("x")],
            peers: vec![(ReplicaId(9), 4)],
            ..Default::default()
        })
        .unwrap();
        idx.id()
    };
    std::fs::copy(
        a.join(".weave").join(INDEX_FILE),
        b.join(".weave").join(INDEX_FILE),
    )
    .unwrap();
    let idx_b = Index::open(&b.join(".weave")).unwrap();
    assert!(idx_b.rekeyed());
    assert_ne!(idx_b.id(), id_a);
    assert_eq!(idx_b.load_entries().unwrap().len(), 1, "history is kept");
    assert!(idx_b.load_peers().unwrap().is_empty());
    let idx_a = Index::open(&a.join(".weave")).unwrap();
    assert!(!idx_a.rekeyed());
    assert_eq!(idx_a.id(), id_a);
}

#[test]
fn second_open_is_refused_while_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join(".weave");
    let _a = Index::open(&state).unwrap();
    assert!(matches!(Index::open(&state), Err(IndexError::InUse { .. })));
}

#[test]
fn garbage_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join(".weave");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join(INDEX_FILE), vec![0x5a; 8192]).unwrap();
    let err = Index::open(&state).err().expect("must fail");
    assert!(matches!(err, IndexError::Corrupt { .. }), "{err}");
    assert!(err
        .to_string()
        .contains("move the state directory out of the replica"));
}

#[test]
fn newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join(".weave");
    {
        let idx = Index::open(&state).unwrap();
        let db = idx.db.as_ref().unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(META)
            .unwrap()
            .insert("format", FORMAT_VERSION + 1)
            .unwrap();
        tx.commit().unwrap();
    }
    let err = Index::open(&state).err().expect("must fail");
    assert!(
        matches!(err, IndexError::NewerFormat { found, .. } if found == FORMAT_VERSION + 1),
        "{err}"
    );
}

fn at(path: &str, seq: u64) -> LocalEntry {
    LocalEntry { seq, ..entry(path) }
}

fn write(idx: &mut Index, entries: Vec<LocalEntry>) {
    let top = entries.iter().map(|e| e.seq).max().unwrap_or(0);
    idx.take_seqs_to(top);
    idx.write(&Batch {
        entries,
        ..Default::default()
    })
    .unwrap();
}

fn keys(m: &EntryMap) -> Vec<&str> {
    m.keys().map(|k| k.as_str()).collect()
}

#[test]
fn changed_entries_are_found_by_sequence_number() {
    let dir = tempfile::tempdir().unwrap();
    let mut idx = Index::open(&dir.path().join(".weave")).unwrap();
    write(
        &mut idx,
        vec![at("a", 1), at("b", 2), at("b/c", 3), at("d", 4)],
    );
    assert_eq!(keys(&idx.changed_since(0).unwrap()), ["a", "b", "b/c", "d"]);
    assert_eq!(keys(&idx.changed_since(2).unwrap()), ["b/c", "d"]);
    // Rewritten entries move to their new number and leave the old one.
    write(&mut idx, vec![at("a", 5), at("b/c", 6)]);
    assert_eq!(keys(&idx.changed_since(4).unwrap()), ["a", "b/c"]);
    assert_eq!(keys(&idx.changed_since(1).unwrap()), ["a", "b", "b/c", "d"]);
    assert_eq!(idx.changed_since(5).unwrap()["b/c"].seq, 6);
    assert!(idx.changed_since(6).unwrap().is_empty());
    assert!(idx.changed_since(u64::MAX).unwrap().is_empty());
    // What is asked for by path, and what is under a directory.
    assert_eq!(
        keys(&idx.entries_at(["d", "nope", "a"]).unwrap()),
        ["a", "d"]
    );
    write(&mut idx, vec![at("b0", 7), at("b.x", 8), at("b/c/e", 9)]);
    assert_eq!(keys(&idx.entries_under("b").unwrap()), ["b/c", "b/c/e"]);
    assert_eq!(idx.entries_under("").unwrap().len(), 7);
    assert!(idx.entries_under("zz").unwrap().is_empty());
}

#[test]
fn an_index_of_format_1_gets_its_table_of_changes_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join(".weave");
    {
        let mut idx = Index::open(&state).unwrap();
        write(&mut idx, vec![at("a", 1), at("b", 2)]);
        // Make it what format 1 wrote: no by_seq table.
        let db = idx.db.as_ref().unwrap();
        let tx = db.begin_write().unwrap();
        tx.delete_table(changes::BY_SEQ).unwrap();
        tx.open_table(META).unwrap().insert("format", 1).unwrap();
        tx.commit().unwrap();
    }
    // Read-only, it is asked the slow way and left as it is.
    let ro = Index::open_for_dry_run(&state).unwrap();
    assert_eq!(keys(&ro.changed_since(1).unwrap()), ["b"]);
    drop(ro);
    let idx = Index::open(&state).unwrap();
    assert_eq!(idx.read_meta().unwrap()["format"], FORMAT_VERSION);
    assert_eq!(keys(&idx.changed_since(0).unwrap()), ["a", "b"]);
    assert_eq!(keys(&idx.changed_since(1).unwrap()), ["b"]);
}

/// Entries carry their owner and extended attributes; entries an index of
/// format 2 wrote (without them) are read as they are, and the index takes
/// format 3 when opened for writing.
#[test]
fn metadata_is_kept_and_entries_of_format_2_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join(".weave");
    let mut with_meta = entry("m");
    with_meta.entry.meta = Some(Box::new(Meta {
        owner: Some(weave_core::Owner {
            uid: 7,
            gid: 8,
            user: Some("ann".into()),
            group: None,
        }),
        xattrs: vec![weave_core::Xattr {
            name: "user.color".into(),
            value: b"blue".to_vec(),
        }],
        link: None,
    }));
    {
        let mut idx = Index::open(&state).unwrap();
        write(&mut idx, vec![with_meta.clone()]);
        // An entry as format 2 wrote it, and that format's number.
        let old = entry("old");
        let bytes = postcard::to_stdvec(&StoredEntryV2 {
            object: old.entry.object.clone(),
            mode: old.entry.mode,
            mtime_ns: old.entry.mtime_ns,
            vv: old.entry.vv.clone(),
            origin: old.entry.origin,
            seq: old.seq,
            stat: old.stat,
        })
        .unwrap();
        let db = idx.db.as_ref().unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(ENTRIES)
            .unwrap()
            .insert("old", bytes.as_slice())
            .unwrap();
        tx.open_table(META).unwrap().insert("format", 2).unwrap();
        tx.commit().unwrap();
    }
    let idx = Index::open(&state).unwrap();
    assert_eq!(idx.read_meta().unwrap()["format"], FORMAT_VERSION);
    assert_eq!(idx.entry("m").unwrap(), Some(with_meta));
    assert_eq!(idx.entry("old").unwrap(), Some(entry("old")));
}

/// A format-3 record whose metadata does not decode is reported as
/// damaged, not read as a format-2 record with its metadata dropped
/// (postcard leaves the bytes over unread).
#[test]
fn a_damaged_format_3_record_is_not_read_as_format_2() {
    let mut le = entry("m");
    le.entry.meta = Some(Box::new(Meta {
        owner: None,
        xattrs: vec![weave_core::Xattr {
            name: "user.color".into(),
            value: b"blue".to_vec(),
        }],
        link: None,
    }));
    let s = StoredEntry {
        object: le.entry.object.clone(),
        mode: le.entry.mode,
        mtime_ns: le.entry.mtime_ns,
        vv: le.entry.vv.clone(),
        origin: le.entry.origin,
        seq: le.seq,
        stat: le.stat,
        meta: le.entry.meta.clone(),
    };
    let mut bytes = postcard::to_stdvec(&s).unwrap();
    bytes.pop(); // cut short inside the metadata
    let got = StoredEntry::decode(&bytes);
    assert!(
        got.is_err(),
        "decoded as format 2, meta = {:?}",
        got.map(|s| s.meta)
    );
}
