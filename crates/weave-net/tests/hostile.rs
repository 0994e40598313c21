//! A hostile or broken remote: a fake `weave serve` that sends bad paths,
//! writes through symlinks, chunks that fail their hash, oversized and
//! truncated frames, or speaks another protocol version. Every case ends
//! with a clear error (or the bad part refused), nothing written outside
//! the local replica, and no bad byte in a user file.

use std::fs;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use weave_core::{Entry, Hash, Object, ReplicaId, VersionVector};
use weave_engine::{NoProgress, Replica, SyncOptions};
use weave_fs::LocalReplica;
use weave_net::{Conn, RemoteReplica};
use weave_proto::msg::{Body, ChunkData, Envelope, Hello, IndexBatch, Opened, Scanned, WireEntry};
use weave_proto::validate::entry_to_wire;

const FAKE_ID: u64 = 0xfeed;

/// Answers the handshake and the open request like a real server.
fn open_like_a_server(c: &Conn) {
    match c.recv().unwrap().body {
        Some(Body::Hello(_)) => {}
        other => panic!("expected a hello, got {other:?}"),
    }
    c.send(Body::Hello(weave_proto::handshake::hello(
        ReplicaId(0),
        &[],
    )))
    .unwrap();
    assert!(matches!(c.recv().unwrap().body, Some(Body::Open(_))));
    c.send(Body::Opened(Opened {
        replica_id: FAKE_ID,
        seq: 5,
        clock: 5,
        root: "/fake".into(),
        ..Default::default()
    }))
    .unwrap();
}

/// Answers the scan and the index request with `entries`.
fn offer(c: &Conn, entries: Vec<WireEntry>) {
    assert!(matches!(c.recv().unwrap().body, Some(Body::Scan(_))));
    c.send(Body::Scanned(Scanned { seq: 5, clock: 5 })).unwrap();
    assert!(matches!(c.recv().unwrap().body, Some(Body::GetEntries(_))));
    c.send(Body::IndexBatch(IndexBatch {
        entries,
        up_to_seq: 5,
        last: true,
        ..Default::default()
    }))
    .unwrap();
}

/// Plays the rest of a session: chunk requests are answered by `answer`
/// (hash, is a tree node → data or None); as a destination it reports
/// nothing done.
fn play_rest(c: &Conn, answer: &dyn Fn(Hash, bool) -> Option<Vec<u8>>) {
    while let Ok(m) = c.recv() {
        match m.body {
            Some(Body::ChunkRequest(r)) => {
                for h in r.hashes {
                    let h = Hash(h.try_into().unwrap());
                    let data = answer(h, r.nodes);
                    c.send(Body::ChunkData(ChunkData {
                        hash: h.0.to_vec(),
                        missing: data.is_none(),
                        data: data.unwrap_or_default(),
                        ..Default::default()
                    }))
                    .unwrap();
                }
            }
            Some(Body::Ops(_)) => {}
            Some(Body::Run(_)) => {
                c.send(Body::IndexBatch(IndexBatch {
                    last: true,
                    ..Default::default()
                }))
                .unwrap();
                c.send(Body::Applied(Default::default())).unwrap();
            }
            Some(Body::Finish(_)) => c.send(Body::Finished(Default::default())).unwrap(),
            _ => break,
        }
    }
}

fn entry(path: &str, object: Object) -> Entry {
    let mode = match object {
        Object::Symlink { .. } => 0,
        Object::Dir => 0o755,
        _ => 0o644,
    };
    Entry {
        path: path.into(),
        object,
        mode,
        mtime_ns: 1_600_000_000_000_000_000,
        vv: VersionVector::from_pairs(vec![(ReplicaId(FAKE_ID), 3)]),
        origin: ReplicaId(FAKE_ID),
        meta: None,
    }
}

fn file(path: &str, data: &[u8]) -> WireEntry {
    let list = weave_chunk::chunk_bytes(data);
    entry_to_wire(
        &entry(
            path,
            Object::File {
                size: data.len() as u64,
                content: list.content_id(),
            },
        ),
        4,
    )
}

/// Syncs a fresh local replica (in `dir`/A) with the fake remote that
/// `fake` plays; returns the sync's result as text (Ok: the report's
/// errors) and what the fake returned.
fn sync_with<F>(dir: &Path, fake: F) -> Result<Vec<String>, String>
where
    F: FnOnce(&Conn) + Send + 'static,
{
    let a = dir.join("A");
    fs::create_dir_all(&a).unwrap();
    fs::write(a.join("mine.txt"), b"mine\n").unwrap();
    let (x, y) = UnixStream::pair().unwrap();
    let fake_conn = Conn::over_unix(y, "coordinator", None).unwrap();
    let fake = std::thread::spawn(move || {
        fake(&fake_conn);
        drop(fake_conn);
    });
    let result = (|| {
        let remote = RemoteReplica::open(
            Conn::over_unix(x, "fakehost", None).unwrap(),
            "fakehost:/x",
            "/x",
            false,
        )?;
        let canon = fs::canonicalize(&a).unwrap();
        let mut reps: Vec<Box<dyn Replica>> = vec![
            Box::new(LocalReplica::open(&canon, "A", false)?),
            Box::new(remote),
        ];
        weave_engine::run(
            &mut reps,
            &SyncOptions::default(),
            &Default::default(),
            &NoProgress,
        )
    })();
    let _ = fake.join();
    result
        .map(|r| {
            r.errors
                .iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect()
        })
        .map_err(|e| e.to_string())
}

/// Nothing but A (with weave's state and what the fake legitimately sent)
/// exists in `dir`, and A still holds its own file.
fn nothing_escaped(dir: &Path) {
    let names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["A".to_string()],
        "something was written beside A"
    );
    assert_eq!(fs::read(dir.join("A/mine.txt")).unwrap(), b"mine\n");
}

#[test]
fn paths_that_escape_are_refused() {
    for bad in [
        "../escape",
        "/tmp/abs",
        "a/../../escape",
        ".weave/index.redb",
        "x/.weave/y",
        "",
    ] {
        let t = tempfile::tempdir().unwrap();
        let r = sync_with(t.path(), move |c| {
            open_like_a_server(c);
            offer(c, vec![file(bad, b"evil")]);
        });
        let e = r.expect_err(bad);
        assert!(
            e.contains("fakehost") && e.contains("invalid"),
            "{bad}: {e}"
        );
        nothing_escaped(t.path());
        assert!(!t.path().join("escape").exists());
    }
}

/// Extended attributes too many, too large, unnamed or out of order, and
/// an owner name too long: the session is refused naming the peer, and
/// nothing of it is written.
#[test]
fn hostile_attributes_are_refused() {
    use weave_proto::msg::{WireOwner, WireXattr};
    let x = |name: &str, len: usize| WireXattr {
        name: name.into(),
        value: vec![7; len],
    };
    let cases: Vec<(&str, Vec<WireXattr>, Option<WireOwner>)> = vec![
        ("a value over 64 KiB", vec![x("user.big", 70_000)], None),
        ("no name", vec![x("", 1)], None),
        ("unsorted", vec![x("user.b", 1), x("user.a", 1)], None),
        (
            "too many",
            (0..2000).map(|i| x(&format!("user.{i:05}"), 0)).collect(),
            None,
        ),
        (
            "a long owner name",
            vec![],
            Some(WireOwner {
                uid: 0,
                gid: 0,
                user: Some("r".repeat(300)),
                group: None,
            }),
        ),
    ];
    for (what, xattrs, owner) in cases {
        let t = tempfile::tempdir().unwrap();
        let r = sync_with(t.path(), move |c| {
            open_like_a_server(c);
            let mut f = file("f", b"evil");
            f.xattrs = xattrs;
            f.owner = owner;
            offer(c, vec![f]);
        });
        let e = r.expect_err(what);
        assert!(
            e.contains("fakehost") && e.contains("invalid"),
            "{what}: {e}"
        );
        assert!(!t.path().join("A/f").exists(), "{what}");
        nothing_escaped(t.path());
    }
}

#[test]
fn writes_through_a_symlink_never_leave_the_replica() {
    let t = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap().to_string();
    let data = b"evil through a link".to_vec();
    let d2 = data.clone();
    let r = sync_with(t.path(), move |c| {
        open_like_a_server(c);
        offer(
            c,
            vec![
                entry_to_wire(&entry("link", Object::Symlink { target }), 1),
                file("link/evil", &d2),
            ],
        );
        // Serve whatever is asked, correctly: the defence must not rely
        // on the data being bad.
        let list = weave_chunk::chunk_bytes(&d2);
        let (_, nodes) = weave_chunk::tree(&list.chunks);
        play_rest(c, &|h, node| {
            if node {
                nodes.get(&h).map(|n| n.encode())
            } else {
                Some(d2.clone())
            }
        });
    });
    // A tree cannot hold a file under a symlink: the planner makes `link`
    // a real directory for the file and keeps the symlink as a conflict
    // copy, so the file lands inside the replica.
    r.expect("the sync goes on");
    assert!(fs::symlink_metadata(t.path().join("A/link"))
        .unwrap()
        .is_dir());
    assert_eq!(fs::read(t.path().join("A/link/evil")).unwrap(), data);
    assert!(
        fs::read_dir(outside.path()).unwrap().next().is_none(),
        "a file was written through the symlink"
    );
}

#[test]
fn chunks_that_fail_their_hash_never_reach_a_file() {
    let t = tempfile::tempdir().unwrap();
    let good = vec![42u8; 100_000];
    let g2 = good.clone();
    let r = sync_with(t.path(), move |c| {
        open_like_a_server(c);
        offer(c, vec![file("f.bin", &g2)]);
        let list = weave_chunk::chunk_bytes(&g2);
        let (_, nodes) = weave_chunk::tree(&list.chunks);
        // Tree nodes are honest; chunk data is not.
        play_rest(c, &|h, node| {
            Some(if node {
                nodes[&h].encode()
            } else {
                vec![7u8; 16 * 1024]
            })
        });
    });
    let e = r.expect_err("bad chunks end the session");
    assert!(e.contains("do not match its hash"), "{e}");
    assert!(!t.path().join("A/f.bin").exists());
    nothing_escaped(t.path());
}

#[test]
fn tree_nodes_that_fail_their_hash_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let data = vec![9u8; 300_000];
    let d2 = data.clone();
    let r = sync_with(t.path(), move |c| {
        open_like_a_server(c);
        offer(c, vec![file("g.bin", &d2)]);
        play_rest(c, &|_, _| Some(vec![1, 2, 3]));
    });
    // The file is reported and not written; the rest of the sync goes on.
    let errors = r.expect("a bad node costs only its file");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("g.bin") && e.contains("failed its hash")),
        "{errors:?}"
    );
    assert!(!t.path().join("A/g.bin").exists());
}

fn raw_fake(bytes: Vec<u8>) -> String {
    let t = tempfile::tempdir().unwrap();
    let (x, mut y) = UnixStream::pair().unwrap();
    let w = std::thread::spawn(move || {
        let _ = y.write_all(&bytes);
        let _ = y.shutdown(std::net::Shutdown::Write);
        // Read what the other side sends until it ends the session, so it
        // sees the bytes above rather than a reset connection.
        y.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut y, &mut sink);
    });
    let r = RemoteReplica::open(
        Conn::over_unix(x, "fakehost", None).unwrap(),
        "fakehost:/x",
        "/x",
        false,
    );
    w.join().unwrap();
    let _ = t;
    match r {
        Ok(_) => panic!("a broken peer was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn oversized_and_truncated_frames_end_the_session() {
    let e = raw_fake(u32::MAX.to_be_bytes().to_vec());
    assert!(
        e.contains("fakehost") && e.contains("over the limit"),
        "{e}"
    );
    let mut b = 100u32.to_be_bytes().to_vec();
    b.extend_from_slice(b"abc");
    let e = raw_fake(b);
    assert!(e.contains("ended inside a frame"), "{e}");
    let mut b = 5u32.to_be_bytes().to_vec();
    b.extend_from_slice(&[0xff; 5]);
    let e = raw_fake(b);
    assert!(e.contains("does not decode"), "{e}");
}

#[test]
fn another_protocol_version_is_named() {
    let t = tempfile::tempdir().unwrap();
    let r = sync_with(t.path(), |c| {
        let _ = c.recv();
        let mut h: Hello = weave_proto::handshake::hello(ReplicaId(0), &[]);
        h.protocol_version = 99;
        h.min_version = 99;
        h.software = "weave 9.0".into();
        c.send(Body::Hello(h)).unwrap();
        let _ = c.recv();
    });
    let e = r.expect_err("incompatible");
    assert!(
        e.contains("99") && e.contains(&weave_proto::PROTOCOL_VERSION.to_string()),
        "{e}"
    );
    assert!(e.contains("same weave version"), "{e}");
}

/// A server session's thread.
type ServerThread = std::thread::JoinHandle<Result<(), weave_engine::SyncError>>;

/// A real server on a socket, with the handshake done: the connection to
/// it, and its thread.
fn greeted_server(capabilities: &[&str]) -> (Conn, ServerThread) {
    let (x, y) = UnixStream::pair().unwrap();
    let server = std::thread::spawn(move || {
        weave_net::server::serve(Conn::over_unix(y, "coordinator", None).unwrap())
    });
    let c = Conn::over_unix(x, "server", None).unwrap();
    c.send(Body::Hello(weave_proto::handshake::hello(
        ReplicaId(0),
        capabilities,
    )))
    .unwrap();
    assert!(matches!(c.recv().unwrap().body, Some(Body::Hello(_))));
    (c, server)
}

#[test]
fn a_server_answers_unknown_messages_instead_of_crashing() {
    let (c, server) = greeted_server(&[]);
    // A message kind from a newer weave: a body this version cannot decode.
    let mut raw = Envelope {
        kind: 99,
        body: None,
    };
    raw.kind = 99;
    // Send through the typed API is not possible for an unknown body; an
    // Unsupported reply to an empty envelope is what a newer peer sees.
    let sender = c.sender().unwrap();
    sender.send(raw).unwrap();
    match c.recv().unwrap().body {
        Some(Body::Unsupported(u)) => assert_eq!(u.kind, 99),
        other => panic!("expected an unsupported notice, got {other:?}"),
    }
    drop(sender);
    drop(c);
    let _ = server.join();
}

/// A fake coordinator's session with a real server on `dir`: handshake,
/// open, scan. Returns the connection and the server's thread.
fn coordinate(dir: &Path, capabilities: &[&str]) -> (Conn, ServerThread) {
    let (c, server) = greeted_server(capabilities);
    c.send(Body::Open(weave_proto::msg::Open {
        path: dir.to_str().unwrap().into(),
        ..Default::default()
    }))
    .unwrap();
    assert!(matches!(c.recv().unwrap().body, Some(Body::Opened(_))));
    c.send(Body::Scan(Default::default())).unwrap();
    assert!(matches!(c.recv().unwrap().body, Some(Body::Scanned(_))));
    (c, server)
}

/// An operation writing `data` at `path`, with its chunk tree's root
/// sent along as `root`.
fn write_op(path: &str, data: &[u8], root: Vec<u8>) -> weave_proto::msg::WireOp {
    weave_proto::msg::WireOp {
        kind: 3, // write a file (the protocol's number)
        target: Some(file(path, data)),
        on_current: false,
        root,
    }
}

fn root_of(data: &[u8]) -> Vec<u8> {
    let list = weave_chunk::chunk_bytes(data);
    let (id, nodes) = weave_chunk::tree(&list.chunks);
    nodes[&id].encode()
}

/// The roots of small files' chunk trees come with their operations: the
/// server asks only for their chunks, never for a tree node.
///
/// A coordinator whose hello lists "done-ops" gets the operations done as
/// sent back by index; any other gets their entries, as before.
#[test]
fn a_server_takes_the_roots_sent_with_the_operations() {
    for by_index in [false, true] {
        takes_roots(by_index);
    }
}

fn takes_roots(by_index: bool) {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..20u32)
        .map(|i| {
            (
                format!("f{i}"),
                format!("small file {i}")
                    .repeat(i as usize + 1)
                    .into_bytes(),
            )
        })
        .collect();
    let caps: &[&str] = if by_index { &["done-ops"] } else { &[] };
    let (c, server) = coordinate(dir.path(), caps);
    c.send(Body::Ops(weave_proto::msg::Ops {
        ops: files
            .iter()
            .map(|(p, d)| write_op(p, d, root_of(d)))
            .collect(),
    }))
    .unwrap();
    c.send(Body::Run(Default::default())).unwrap();
    let by_hash: std::collections::HashMap<Hash, Vec<u8>> = files
        .iter()
        .map(|(_, d)| (Hash::of(d), d.clone()))
        .collect();
    let mut done = 0;
    loop {
        match c.recv().unwrap().body {
            Some(Body::ChunkRequest(r)) => {
                assert!(!r.nodes, "the server asked for a tree node it was sent");
                for h in r.hashes {
                    let h = Hash(h.try_into().unwrap());
                    c.send(Body::ChunkData(ChunkData {
                        hash: h.0.to_vec(),
                        data: by_hash[&h].clone(),
                        ..Default::default()
                    }))
                    .unwrap();
                }
            }
            Some(Body::IndexBatch(b)) => {
                let (entries, ops) = (b.entries.len(), b.done_ops.len());
                assert!(
                    if by_index { entries == 0 } else { ops == 0 },
                    "{entries} entries, {ops} by index"
                );
                done += entries + ops;
            }
            Some(Body::Applied(_)) => break,
            Some(Body::Progress(_)) | Some(Body::Issue(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(done, files.len());
    for (p, d) in &files {
        assert_eq!(&fs::read(dir.path().join(p)).unwrap(), d);
    }
    drop(c);
    let _ = server.join();
}

/// A root that is not the root of the operation's content ends the
/// session with a clear error, and nothing is written.
#[test]
fn a_root_that_is_not_the_contents_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (c, server) = coordinate(dir.path(), &[]);
    c.send(Body::Ops(weave_proto::msg::Ops {
        ops: vec![
            write_op("good", b"good data", root_of(b"good data")),
            write_op("bad", b"what the entry says", root_of(b"something else")),
        ],
    }))
    .unwrap();
    c.send(Body::Run(Default::default())).unwrap();
    let e = match c.recv().unwrap().body {
        Some(Body::Error(e)) => e.message,
        other => panic!("expected an error, got {other:?}"),
    };
    assert!(
        e.contains("\"bad\"") && e.contains("chunk tree root"),
        "{e}"
    );
    drop(c);
    let r = server.join().unwrap();
    assert!(r.is_err());
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != ".weave")
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

/// A server's results by index must name operations that were sent, each
/// once.
#[test]
fn results_for_operations_not_sent_or_twice_are_refused() {
    for bad in [vec![7u64], vec![0, 0]] {
        let t = tempfile::tempdir().unwrap();
        let r = sync_with(t.path(), move |c| {
            open_like_a_server(c);
            offer(c, vec![]);
            while let Ok(m) = c.recv() {
                match m.body {
                    Some(Body::Ops(_)) => {}
                    Some(Body::Run(_)) => {
                        c.send(Body::IndexBatch(IndexBatch {
                            done_ops: bad.clone(),
                            ..Default::default()
                        }))
                        .unwrap();
                        c.send(Body::Applied(Default::default())).unwrap();
                    }
                    _ => break,
                }
            }
        });
        let e = r.expect_err("a bad result was taken");
        assert!(
            e.contains("fakehost") && e.contains("answered already"),
            "{e}"
        );
        nothing_escaped(t.path());
    }
}
