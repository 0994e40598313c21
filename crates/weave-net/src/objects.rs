//! A bucket kept by an untrusted device: a folder's encrypted objects
//! (the bucket format of `weave_bucket`) on a peer that stores and
//! serves them and can read none of them.
//!
//! The trusted side reaches them through [`PeerStore`], a
//! [`weave_bucket::store::Store`] whose every call is one request and its
//! answer on a session (`ObjectsOpen`, then `ObjectOp`s, each answered by
//! `ObjectReply`s). The untrusted side answers them with [`Answerer`],
//! from a store of its own (a directory), taking only names of the
//! bucket format.

use crate::wire::proto;
use crate::{Conn, SessionError};
use std::ops::Range;
use std::sync::Mutex;
use weave_bucket::store::Store;
use weave_bucket::BucketError;
use weave_core::ReplicaId;
use weave_engine::SyncError;
use weave_proto::msg::{object_op, Body, ErrorMsg, ObjectOp, ObjectReply, ObjectsOpen};

/// The capability of a server that keeps objects for untrusted folders.
pub const OBJECTS: &str = "objects";

/// The most data one message carries (well under a frame).
const PIECE: usize = 512 << 10;

/// The largest object taken in (a record of a very large tree).
const OBJECT_MAX: usize = weave_bucket::record::RECORD_MAX;

/// Names listed in one reply.
const NAMES_PER_REPLY: usize = 4096;

/// The most names a listing may hold (a keeper that lists more is not
/// believed).
const NAMES_MAX: usize = 16 << 20;

/// How long a keeper may take to answer a request (the link's pings do
/// not tell a keeper that stalls).
const REPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The most an object of `name` may hold: a config is small, a pack at
/// most about twice the pack target, a record or mark up to
/// [`weave_bucket::record::RECORD_MAX`].
fn size_max(name: &str) -> usize {
    if name == weave_bucket::pool::CONFIG {
        64 << 10
    } else if name.starts_with("packs/") {
        64 << 20
    } else {
        OBJECT_MAX
    }
}

/// Whether `name` is one the bucket format writes (the untrusted side
/// takes no other), or, for a list, a prefix of them.
pub fn valid_name(name: &str, prefix: bool) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if prefix {
        return matches!(
            name,
            "logs/" | "packs/" | "marks/" | weave_bucket::pool::CONFIG
        );
    }
    if name == weave_bucket::pool::CONFIG {
        return true;
    }
    match name.split('/').collect::<Vec<_>>()[..] {
        ["logs", w, n] => hex(w, 32) && n.len() == 10 && n.bytes().all(|b| b.is_ascii_digit()),
        ["packs", id] | ["marks", id] => hex(id, 32),
        _ => false,
    }
}

/// The objects of folder `folder` kept by the peer at the other end of
/// `conn` (shown as `shown`).
pub struct PeerStore {
    conn: Mutex<Conn>,
    shown: String,
    /// How long an answer may take.
    wait: std::time::Duration,
}

impl PeerStore {
    /// Opens the objects of `folder` over an established connection.
    pub fn open(conn: Conn, shown: &str, folder: &str) -> Result<PeerStore, SyncError> {
        let ours = weave_proto::handshake::hello(ReplicaId(0), &["v1", OBJECTS]);
        conn.send(Body::Hello(ours.clone())).map_err(proto)?;
        let theirs = match conn.recv().map_err(proto)?.body {
            Some(Body::Hello(h)) => h,
            other => return Err(unexpected(shown, other, "a hello")),
        };
        weave_proto::handshake::negotiate(&ours, &theirs, shown).map_err(proto)?;
        if !theirs.capabilities.iter().any(|c| c == OBJECTS) {
            return Err(SessionError::Peer {
                peer: shown.to_string(),
                message: format!(
                    "its weave ({}) cannot keep encrypted data for untrusted folders; upgrade it",
                    theirs.software
                ),
            }
            .into());
        }
        conn.send(Body::ObjectsOpen(ObjectsOpen {
            folder: folder.to_string(),
        }))
        .map_err(proto)?;
        match conn.recv().map_err(proto)?.body {
            Some(Body::ObjectsOpened(_)) => {}
            other => return Err(unexpected(shown, other, "an objects open reply")),
        }
        Ok(PeerStore {
            conn: Mutex::new(conn),
            shown: shown.to_string(),
            wait: REPLY_WAIT,
        })
    }

    fn failed(&self, problem: String) -> BucketError {
        BucketError::Store {
            bucket: self.shown.clone(),
            problem,
        }
    }

    /// Sends `op` (its data in pieces) and gathers the answer: no more
    /// data than the object can hold (than asked for, for a range).
    fn ask(&self, op: ObjectOp) -> Result<ObjectReply, BucketError> {
        let most = match op.op {
            object_op::GET_RANGE => op.end.saturating_sub(op.start) as usize,
            _ => size_max(&op.name),
        };
        self.ask_at_most(op, most)
    }

    fn ask_at_most(&self, mut op: ObjectOp, most: usize) -> Result<ObjectReply, BucketError> {
        let conn = self.conn.lock().expect("peer store");
        let lost = |e: weave_proto::ProtoError| {
            self.failed(format!(
                "{}: the connection failed ({e}); tried again later",
                op.name
            ))
        };
        let data = std::mem::take(&mut op.data);
        let mut pieces = data.chunks(PIECE).peekable();
        if pieces.peek().is_none() {
            conn.send(Body::ObjectOp(op.clone())).map_err(lost)?;
        }
        while let Some(piece) = pieces.next() {
            conn.send(Body::ObjectOp(ObjectOp {
                data: piece.to_vec(),
                more: pieces.peek().is_some(),
                ..op.clone()
            }))
            .map_err(lost)?;
        }
        let mut whole = ObjectReply::default();
        loop {
            let got = conn.recv_timeout(self.wait).ok_or_else(|| {
                self.failed(format!(
                    "{}: no answer in {} s; tried again later",
                    op.name,
                    self.wait.as_secs()
                ))
            })?;
            let r = match got.map_err(lost)?.body {
                Some(Body::ObjectReply(r)) => r,
                Some(Body::Error(e)) => {
                    return Err(self.failed(format!("{}: {}", op.name, e.message)));
                }
                other => {
                    let got = other.as_ref().map_or("an unknown message", Body::name);
                    return Err(self.failed(format!("{}: it answered {got}", op.name)));
                }
            };
            if !r.error.is_empty() {
                return Err(self.failed(format!("{}: {}", op.name, r.error)));
            }
            whole.found |= r.found;
            if whole.data.len() + r.data.len() > most
                || whole.names.len() + r.names.len() > NAMES_MAX
            {
                return Err(
                    self.failed(format!("{}: the answer is larger than it can be", op.name))
                );
            }
            whole.data.extend(r.data);
            if op.op == object_op::LIST {
                // Only names of the bucket's, under the prefix asked for.
                let mut times = r.times.into_iter().chain(std::iter::repeat(0));
                for n in r.names {
                    let t = times.next().unwrap_or(0);
                    if n.starts_with(&op.name) && valid_name(&n, false) {
                        whole.names.push(n);
                        whole.times.push(t);
                    }
                }
            }
            if !r.more {
                return Ok(whole);
            }
        }
    }

    fn op(kind: u32, name: &str) -> ObjectOp {
        ObjectOp {
            op: kind,
            name: name.to_string(),
            ..Default::default()
        }
    }
}

impl Store for PeerStore {
    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, BucketError> {
        let r = self.ask(Self::op(object_op::GET, name))?;
        Ok(r.found.then_some(r.data))
    }

    fn get_range(&self, name: &str, range: Range<u64>) -> Result<Vec<u8>, BucketError> {
        let want = range.end.saturating_sub(range.start);
        let r = self.ask(ObjectOp {
            start: range.start,
            end: range.end,
            ..Self::op(object_op::GET_RANGE, name)
        })?;
        if r.data.len() as u64 != want {
            return Err(self.failed(format!(
                "{name}: asked for {want} bytes, got {}",
                r.data.len()
            )));
        }
        Ok(r.data)
    }

    fn put(&self, name: &str, data: Vec<u8>) -> Result<(), BucketError> {
        self.ask(ObjectOp {
            data,
            ..Self::op(object_op::PUT, name)
        })
        .map(|_| ())
    }

    fn put_new(&self, name: &str, data: Vec<u8>) -> Result<bool, BucketError> {
        let r = self.ask(ObjectOp {
            data,
            ..Self::op(object_op::PUT_NEW, name)
        })?;
        Ok(r.found)
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, BucketError> {
        Ok(self.ask(Self::op(object_op::LIST, prefix))?.names)
    }

    fn list_modified(&self, prefix: &str) -> Result<Vec<(String, u64)>, BucketError> {
        let r = self.ask(Self::op(object_op::LIST, prefix))?;
        Ok(r.names.into_iter().zip(r.times).collect())
    }

    fn delete(&self, name: &str) -> Result<(), BucketError> {
        self.ask(Self::op(object_op::DELETE, name)).map(|_| ())
    }
}

fn unexpected(shown: &str, got: Option<Body>, expected: &'static str) -> SyncError {
    match got {
        Some(Body::Error(e)) => SessionError::from_peer(shown, e).into(),
        other => proto(weave_proto::ProtoError::Unexpected {
            peer: shown.to_string(),
            got: other.as_ref().map_or("an unknown message", Body::name),
            expected,
        }),
    }
}

/// The untrusted side of an objects session: answers requests from its
/// store, gathering a put's pieces.
pub struct Answerer {
    store: Box<dyn Store>,
    /// A put whose pieces are arriving: its op, name and data so far.
    put: Option<(u32, String, Vec<u8>)>,
}

impl Answerer {
    pub fn new(store: Box<dyn Store>) -> Answerer {
        Answerer { store, put: None }
    }

    /// Answers `op` on `conn`. A request the bucket format never makes
    /// ends the session.
    pub fn answer(&mut self, conn: &Conn, op: ObjectOp) -> Result<(), SyncError> {
        let refuse = |why: &str| -> SyncError {
            let _ = conn.send(Body::Error(ErrorMsg {
                message: format!("object request refused: {why}"),
                ..Default::default()
            }));
            SessionError::Peer {
                peer: conn.peer().to_string(),
                message: format!("sent an object request that is refused: {why}"),
            }
            .into()
        };
        let list = op.op == object_op::LIST;
        if !valid_name(&op.name, list) {
            return Err(refuse(&format!(
                "{:?} is not an object name of a bucket",
                op.name
            )));
        }
        let reply = |r: ObjectReply| conn.send(Body::ObjectReply(r)).map_err(proto);
        let failed = |e: BucketError| ObjectReply {
            error: e.to_string(),
            ..Default::default()
        };
        match op.op {
            object_op::PUT | object_op::PUT_NEW => {
                let (kind, name, mut data) =
                    self.put
                        .take()
                        .unwrap_or((op.op, op.name.clone(), Vec::new()));
                if (kind, &name) != (op.op, &op.name)
                    || data.len() + op.data.len() > size_max(&name)
                {
                    return Err(refuse("a put's pieces do not belong together"));
                }
                data.extend(op.data);
                if op.more {
                    self.put = Some((kind, name, data));
                    return Ok(());
                }
                let r = if kind == object_op::PUT {
                    self.store.put(&name, data).map(|()| true)
                } else {
                    self.store.put_new(&name, data)
                };
                reply(match r {
                    Ok(found) => ObjectReply {
                        found,
                        ..Default::default()
                    },
                    Err(e) => failed(e),
                })
            }
            _ if self.put.is_some() => Err(refuse("a put's pieces were cut short")),
            object_op::GET => match self.store.get(&op.name) {
                Ok(Some(data)) => send_data(conn, data),
                Ok(None) => reply(ObjectReply::default()),
                Err(e) => reply(failed(e)),
            },
            object_op::GET_RANGE => {
                if op.end < op.start || op.end - op.start > size_max(&op.name) as u64 {
                    return Err(refuse("a range that is backwards or too large"));
                }
                match self.store.get_range(&op.name, op.start..op.end) {
                    Ok(data) => send_data(conn, data),
                    Err(e) => reply(failed(e)),
                }
            }
            object_op::LIST => match self.store.list_modified(&op.name) {
                Ok(listed) => {
                    let mut parts = listed.chunks(NAMES_PER_REPLY).peekable();
                    if parts.peek().is_none() {
                        return reply(ObjectReply::default());
                    }
                    while let Some(part) = parts.next() {
                        reply(ObjectReply {
                            names: part.iter().map(|(n, _)| n.clone()).collect(),
                            times: part.iter().map(|(_, t)| *t).collect(),
                            more: parts.peek().is_some(),
                            ..Default::default()
                        })?;
                    }
                    Ok(())
                }
                Err(e) => reply(failed(e)),
            },
            object_op::DELETE if op.name != weave_bucket::pool::CONFIG => {
                match self.store.delete(&op.name) {
                    Ok(()) => reply(ObjectReply::default()),
                    Err(e) => reply(failed(e)),
                }
            }
            _ => Err(refuse("an operation it does not know")),
        }
    }
}

/// An object's bytes, found, in pieces.
fn send_data(conn: &Conn, data: Vec<u8>) -> Result<(), SyncError> {
    let mut pieces = data.chunks(PIECE).peekable();
    if pieces.peek().is_none() {
        return conn
            .send(Body::ObjectReply(ObjectReply {
                found: true,
                ..Default::default()
            }))
            .map_err(proto);
    }
    while let Some(p) = pieces.next() {
        conn.send(Body::ObjectReply(ObjectReply {
            found: true,
            data: p.to_vec(),
            more: pieces.peek().is_some(),
            ..Default::default()
        }))
        .map_err(proto)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use weave_bucket::store::Memory;

    /// Keeps the objects of folder "docs" in memory.
    struct Keeper(Arc<Memory>);

    impl crate::server::Host for Keeper {
        fn open(
            &mut self,
            name: &str,
            _: &str,
            _: bool,
        ) -> Result<(Box<dyn weave_engine::Replica>, String), SyncError> {
            Err(SessionError::Refused {
                code: crate::NOT_SHARED,
                message: format!("{name}: encrypted only"),
            }
            .into())
        }
        fn objects(&mut self, name: &str) -> Result<Box<dyn Store>, SyncError> {
            match name {
                "docs" => Ok(Box::new(self.0.clone())),
                _ => Err(SessionError::Refused {
                    code: crate::NOT_SHARED,
                    message: format!("{name}: not shared"),
                }
                .into()),
            }
        }
    }

    /// A session with a keeper of `mem` in a thread; the client's end.
    fn session(mem: &Arc<Memory>) -> (Conn, std::thread::JoinHandle<Result<(), String>>) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mem = mem.clone();
        let server = std::thread::spawn(move || {
            let conn = Conn::over_unix(b, "laptop", None).unwrap();
            crate::server::serve_host(conn, &mut Keeper(mem))
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        (Conn::over_unix(a, "server", None).unwrap(), server)
    }

    #[test]
    fn a_peer_keeps_a_bucket_it_cannot_read() {
        let mem = Arc::new(Memory::default());
        let (conn, server) = session(&mem);
        let store = PeerStore::open(conn, "server", "docs").unwrap();
        let w = "0123456789abcdef0123456789abcdef";
        let pack = format!("packs/{w}");
        // Larger than a piece: it goes in several and comes back whole.
        let big: Vec<u8> = (0..PIECE * 3 + 17).map(|i| (i % 253) as u8).collect();
        store.put(&pack, big.clone()).unwrap();
        assert_eq!(mem.get(&pack).unwrap().as_deref(), Some(&big[..]));
        assert_eq!(store.get(&pack).unwrap().as_deref(), Some(&big[..]));
        assert_eq!(
            store.get_range(&pack, 5..PIECE as u64 + 9).unwrap(),
            big[5..PIECE + 9]
        );
        assert_eq!(store.get(&format!("marks/{w}")).unwrap(), None);
        assert!(store.put_new("weave-bucket.json", b"{}".to_vec()).unwrap());
        assert!(!store.put_new("weave-bucket.json", b"[]".to_vec()).unwrap());
        assert_eq!(store.list("packs/").unwrap(), vec![pack.clone()]);
        store.delete(&pack).unwrap();
        assert!(store.list("packs/").unwrap().is_empty());
        // A range of an object that is not there: an error, and the
        // session goes on.
        assert!(store.get_range(&pack, 0..4).is_err());
        assert!(store.list("logs/").unwrap().is_empty());
        drop(store);
        server.join().unwrap().unwrap();
    }

    #[test]
    fn a_whole_bucket_works_through_a_peer() {
        let mem = Arc::new(Memory::default());
        let (conn, server) = session(&mem);
        let store = PeerStore::open(conn, "server", "docs").unwrap();
        let mut pool = weave_bucket::Pool::open(Box::new(store), "server", b"pw", true)
            .unwrap()
            .unwrap();
        let rec = weave_bucket::record::Record {
            time_ms: 5,
            ..Default::default()
        };
        pool.write(&rec).unwrap();
        assert_eq!(pool.records().unwrap().len(), 1);
        drop(pool);
        server.join().unwrap().unwrap();
        // What the keeper holds is sealed.
        let held = mem.objects.lock().unwrap();
        assert_eq!(held.len(), 2);
    }

    /// A keeper that lists names not of a bucket's and without end,
    /// answers a range with more than asked, then stalls: each is an
    /// error, with nothing taken in beyond the bounds.
    #[test]
    fn a_hostile_keeper_is_not_believed_and_cannot_stall_a_sync() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let keeper = std::thread::spawn(move || {
            let conn = Conn::over_unix(b, "trusted", None).unwrap();
            let Some(Body::Hello(_)) = conn.recv().unwrap().body else {
                panic!("no hello")
            };
            let hello = weave_proto::handshake::hello(ReplicaId(0), &["v1", OBJECTS]);
            conn.send(Body::Hello(hello)).unwrap();
            let Some(Body::ObjectsOpen(_)) = conn.recv().unwrap().body else {
                panic!("no open")
            };
            conn.send(Body::ObjectsOpened(Default::default())).unwrap();
            let w = "0123456789abcdef0123456789abcdef";
            // A list: bad names dropped, good ones kept with their times.
            let _ = conn.recv().unwrap();
            conn.send(Body::ObjectReply(ObjectReply {
                names: vec![
                    format!("packs/{w}"),
                    "../../etc/passwd".into(),
                    format!("logs/{w}/0000000001"),
                ],
                times: vec![5, 6, 7],
                ..Default::default()
            }))
            .unwrap();
            // A range: more than asked.
            let _ = conn.recv().unwrap();
            conn.send(Body::ObjectReply(ObjectReply {
                found: true,
                data: vec![0; 100],
                more: true,
                ..Default::default()
            }))
            .unwrap();
            // Then silence, the connection kept open.
            let _ = conn.recv();
            std::thread::sleep(std::time::Duration::from_millis(1500));
        });
        let mut store = PeerStore::open(
            Conn::over_unix(a, "keeper", None).unwrap(),
            "keeper",
            "docs",
        )
        .unwrap();
        store.wait = std::time::Duration::from_millis(500);
        let w = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            store.list_modified("packs/").unwrap(),
            vec![(format!("packs/{w}"), 5)]
        );
        let e = store.get_range(&format!("packs/{w}"), 0..10).unwrap_err();
        assert!(e.to_string().contains("larger than it can be"), "{e}");
        let t = std::time::Instant::now();
        let e = store.get(&format!("packs/{w}")).unwrap_err();
        assert!(e.to_string().contains("no answer"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        drop(store);
        keeper.join().unwrap();
    }

    #[test]
    fn a_folder_not_kept_and_a_name_not_of_a_bucket_are_refused() {
        let mem = Arc::new(Memory::default());
        let (conn, server) = session(&mem);
        let e = PeerStore::open(conn, "server", "other").err().unwrap();
        assert!(e.to_string().contains("not shared"), "{e}");
        assert!(server.join().unwrap().is_err());
        let (conn, server) = session(&mem);
        let store = PeerStore::open(conn, "server", "docs").unwrap();
        let e = store.put("../outside", b"x".to_vec()).unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
        drop(store);
        assert!(server.join().unwrap().unwrap_err().contains("refused"));
        assert!(mem.objects.lock().unwrap().is_empty());
    }

    #[test]
    fn only_the_bucket_formats_names_are_taken() {
        let w = "0123456789abcdef0123456789abcdef";
        for ok in [
            "weave-bucket.json".to_string(),
            format!("logs/{w}/0000000001"),
            format!("packs/{w}"),
            format!("marks/{w}"),
        ] {
            assert!(valid_name(&ok, false), "{ok}");
        }
        for bad in [
            "../etc/passwd".to_string(),
            format!("logs/{w}/1"),
            format!("packs/{w}/x"),
            format!("packs/../{w}"),
            "packs/xyz".into(),
            ".weave/x".into(),
            "".into(),
        ] {
            assert!(!valid_name(&bad, false), "{bad}");
        }
        assert!(valid_name("logs/", true));
        assert!(!valid_name("", true));
        assert!(!valid_name("../", true));
    }
}
