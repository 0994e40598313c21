//! `weave serve --stdio`: one replica on this machine, driven by a
//! coordinator (`weave sync` elsewhere) over a session.

use crate::conn::Conn;
use crate::error::SessionError;
use crate::wire::{self, proto};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use weave_core::Op;
use weave_core::{Entry, Hash, Object};
use weave_engine::{Foreign, IgnoreSpec, Kinds, Provider, Replica, SyncError, Wants};
use weave_proto::msg::{
    Applied, Body, ChunkRequest, ErrorMsg, Finished, IgnoreFile, IssueMsg, Opened, Progress,
    Scanned, Unsupported,
};
use weave_proto::validate::entry_from_wire;
use weave_proto::ProtoError;

/// Serves one session (directory trees only) until the coordinator
/// closes it.
pub fn serve(conn: Conn) -> Result<(), SyncError> {
    serve_kinds(conn, &Kinds::new(std::sync::Arc::new(weave_fs::Files)))
}

/// Serves one session until the coordinator closes it, opening replicas
/// of any of `kinds`.
pub fn serve_kinds(conn: Conn, kinds: &Kinds) -> Result<(), SyncError> {
    serve_host(
        conn,
        &mut PathHost {
            kinds: kinds.clone(),
        },
    )
    .map(|_| ())
}

/// Where a server gets the replica a coordinator asks for: by path on
/// this machine ([`serve_kinds`]), or by some other name (the daemon's
/// folder ids), refusing what the peer may not open.
pub trait Host {
    /// Opens the replica of `kind` that the coordinator named `name`;
    /// returns it with its root, as the coordinator is to show it.
    fn open(
        &mut self,
        name: &str,
        kind: &str,
        dry_run: bool,
    ) -> Result<(Box<dyn Replica>, String), SyncError>;
    /// Where the replica opened shows the progress of the operations it
    /// carries out (the bytes it is to write, and as they are written),
    /// if anywhere.
    fn progress(&mut self) -> Option<std::sync::Arc<dyn weave_engine::Progress + Send>> {
        None
    }
    /// The store of the encrypted objects this device keeps for folder
    /// `name`, untrusted with it (refused by default).
    fn objects(&mut self, name: &str) -> Result<Box<dyn weave_bucket::store::Store>, SyncError> {
        Err(SessionError::Refused {
            code: crate::NOT_SHARED,
            message: format!("{name}: this end keeps no encrypted objects for it"),
        }
        .into())
    }
}

/// Opens replicas by path (`~/` is the home directory).
pub struct PathHost {
    pub kinds: Kinds,
}

impl Host for PathHost {
    fn open(
        &mut self,
        name: &str,
        kind: &str,
        dry_run: bool,
    ) -> Result<(Box<dyn Replica>, String), SyncError> {
        let path = expand(name);
        let kind = self.kinds.get(kind)?;
        let canon = kind.check(std::slice::from_ref(&path), &[])?;
        let rep = kind.open(&canon[0], name, dry_run)?;
        Ok((rep, canon[0].display().to_string()))
    }
}

/// What a served session did to its replica.
#[derive(Debug, Default, Clone)]
pub struct Served {
    /// Operations carried out.
    pub applied: usize,
    /// The replica's sequence number at the end, if one was opened.
    pub seq: Option<u64>,
    /// The replica was scanned (its changes on disk recorded).
    pub scanned: bool,
    /// The coordinator finished the sync (the replica knows it is in
    /// sync with it).
    pub finished: bool,
    /// Paths whose operations did not go through here (a full disk, say),
    /// the first few, with why; refusals by the folder's own rules ("not
    /// taken: …") are not counted.
    pub failed: Vec<(String, String)>,
    /// How many did not go through.
    pub failed_count: usize,
    /// Paths whose operations the folder's own rules did not take ("not
    /// taken: …"), the first few, with why.
    pub refused: Vec<(String, String)>,
    /// How many it did not take.
    pub refused_count: usize,
    /// The session changed the replica's ignore file.
    pub ignore_file_changed: bool,
    /// The paths changed here, and how (the first
    /// [`weave_engine::CHANGED_SHOWN`]).
    pub changed: Vec<weave_engine::ChangedPath>,
    /// How many paths changed here.
    pub changed_count: usize,
    /// The replica opened here, and the replicas the coordinator said
    /// this one integrated (its own, in a pair sync).
    pub replica: Option<weave_core::ReplicaId>,
    pub peer_replicas: Vec<weave_core::ReplicaId>,
    /// The replicas of the sync on which nothing failed but what their
    /// own rules refused, as the coordinator said (None: it did not say).
    pub went_through: Option<Vec<weave_core::ReplicaId>>,
}

/// Serves one session until the coordinator closes it, opening replicas
/// through `host`.
pub fn serve_host(conn: Conn, host: &mut dyn Host) -> Result<Served, SyncError> {
    let peer = conn.peer().to_string();
    // The session's hello names no replica: one is opened by path later.
    let ours = weave_proto::handshake::hello(
        weave_core::ReplicaId(0),
        &[
            "v1",
            "kinds",
            wire::ENTRIES_AT,
            wire::ENTRIES_FROM,
            crate::objects::OBJECTS,
        ],
    );
    conn.send(Body::Hello(ours.clone())).map_err(proto)?;
    let theirs = match conn.recv().map_err(proto)?.body {
        Some(Body::Hello(h)) => h,
        _ => return Err(SessionError::NoHello { peer }.into()),
    };
    if let Err(e) = weave_proto::handshake::negotiate(&ours, &theirs, &peer) {
        let _ = conn.send(Body::Error(ErrorMsg {
            message: e.to_string(),
            ..Default::default()
        }));
        return Err(proto(e));
    }
    let done_ops = theirs.capabilities.iter().any(|c| c == wire::DONE_OPS);
    let mut s = Server {
        conn,
        host,
        done_ops,
        served: Served::default(),
        rep: None,
        ops: Vec::new(),
        on_current: Vec::new(),
        roots: HashMap::new(),
        compress: Compress::default(),
        reply: Vec::new(),
        asked: Default::default(),
        objects: None,
    };
    loop {
        // Answers to chunk requests that arrived together leave as one
        // write (see `Server::reply`), before anything else is answered.
        let m = match s.conn.try_recv() {
            Some(m) => m,
            None => {
                s.flush_reply()?;
                s.conn.recv()
            }
        };
        match &m {
            Ok(m) if matches!(m.body, Some(Body::ChunkRequest(_))) => {}
            Ok(_) => s.flush_reply()?,
            // The session is over: what is left to send may not get there.
            Err(_) => {
                let _ = s.flush_reply();
            }
        }
        let m = match m {
            Ok(m) => m,
            Err(ProtoError::Closed { .. }) => {
                s.served.seq = s.rep.as_ref().map(|r| r.info().seq);
                s.served.replica = s.rep.as_ref().map(|r| r.info().id);
                return Ok(s.served);
            }
            Err(e) => return Err(proto(e)),
        };
        if let Err(e) = s.handle(m) {
            let _ = s.conn.send(Body::Error(ErrorMsg {
                message: e.to_string(),
                code: e
                    .session::<SessionError>()
                    .and_then(SessionError::code)
                    .unwrap_or_default()
                    .to_string(),
            }));
            return Err(e);
        }
    }
}

struct Server<'h> {
    conn: Conn,
    host: &'h mut dyn Host,
    served: Served,
    rep: Option<Box<dyn Replica>>,
    ops: Vec<Op>,
    on_current: Vec<bool>,
    /// The coordinator takes operations done as sent by their index.
    done_ops: bool,
    /// Root nodes that came with the operations, verified.
    roots: HashMap<Hash, weave_chunk::Node>,
    compress: Compress,
    /// Chunks answered and not yet queued on the connection.
    reply: Vec<Body>,
    /// The paths and directories asked for by the parts of a
    /// `GetEntriesAt` received so far.
    asked: (Vec<String>, Vec<String>),
    /// The encrypted objects opened, in an objects session.
    objects: Option<crate::objects::Answerer>,
}

/// Paths one `GetEntriesAt` (all its parts) may ask for, and their bytes.
const MAX_ASKED: usize = 16 << 20;
const MAX_ASKED_BYTES: usize = 1 << 30;

/// Compresses chunks while that pays: after 16 chunks in a row that did
/// not shrink, only every 16th is tried.
#[derive(Default)]
pub struct Compress {
    misses: u32,
    n: u64,
    packer: weave_proto::validate::ChunkPacker,
}

impl Compress {
    pub fn encode(&mut self, h: &Hash, data: Option<Vec<u8>>) -> weave_proto::msg::ChunkData {
        self.n += 1;
        let try_it = self.misses < 16 || self.n.is_multiple_of(16);
        let some = data.is_some();
        let (c, packed) = self.packer.pack(h, data, try_it);
        if try_it && some {
            self.misses = if packed { 0 } else { self.misses + 1 };
        }
        c
    }
}

/// The session's replica, once one is open.
fn open_replica(rep: &mut Option<Box<dyn Replica>>) -> Result<&mut Box<dyn Replica>, SyncError> {
    rep.as_mut().ok_or_else(|| SessionError::NoReplica.into())
}

fn expand(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ if path == "~" => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default(),
        _ => PathBuf::from(path),
    }
}

impl Server<'_> {
    fn flush_reply(&mut self) -> Result<(), SyncError> {
        self.conn
            .send_paced(std::mem::take(&mut self.reply))
            .map_err(proto)
    }

    /// The end of the sync: what the replica records, and what the
    /// session tells its host.
    fn finish(&mut self, f: weave_proto::msg::Finish) -> Result<(), SyncError> {
        let fin = weave_engine::Finish {
            observe: f.observe,
            integrated: f.integrated_fingerprint.map(|fp| weave_engine::Integrated {
                peers: f
                    .peers
                    .iter()
                    .map(|p| (weave_core::ReplicaId(p.replica), p.counter))
                    .collect(),
                ignore_fingerprint: fp,
            }),
            went_through: f.through_said.then(|| {
                f.went_through
                    .iter()
                    .map(|&r| weave_core::ReplicaId(r))
                    .collect()
            }),
        };
        self.rep()?.finish(&fin)?;
        self.served.finished = true;
        self.served.went_through = fin.went_through.clone();
        self.served.peer_replicas = f
            .peers
            .iter()
            .map(|p| weave_core::ReplicaId(p.replica))
            .collect();
        self.conn.send(Body::Finished(Finished {})).map_err(proto)
    }

    fn rep(&mut self) -> Result<&mut Box<dyn Replica>, SyncError> {
        open_replica(&mut self.rep)
    }

    fn handle(&mut self, m: weave_proto::msg::Envelope) -> Result<(), SyncError> {
        let peer = self.conn.peer().to_string();
        let Some(b) = m.body else {
            // A newer coordinator's message: say so, and go on.
            return self
                .conn
                .send(Body::Unsupported(Unsupported { kind: m.kind }))
                .map_err(proto);
        };
        match b {
            Body::ObjectsOpen(o) if self.rep.is_none() && self.objects.is_none() => {
                let store = self.host.objects(&o.folder)?;
                self.objects = Some(crate::objects::Answerer::new(store));
                self.conn
                    .send(Body::ObjectsOpened(Default::default()))
                    .map_err(proto)
            }
            Body::ObjectOp(op) => match self.objects.as_mut() {
                Some(a) => a.answer(&self.conn, op),
                None => Err(SessionError::NoReplica.into()),
            },
            Body::Open(_) if self.objects.is_some() => Err(SessionError::NoReplica.into()),
            Body::Open(o) => {
                let t = std::time::Instant::now();
                let (rep, root) = self.host.open(&o.path, &o.kind, o.dry_run)?;
                tracing::debug!(elapsed = ?t.elapsed(), "opened");
                let info = rep.info().clone();
                self.rep = Some(rep);
                self.conn
                    .send(Body::Opened(Opened {
                        replica_id: info.id.0,
                        seq: info.seq,
                        clock: info.clock,
                        peers: wire::pairs_to_wire(info.peers.iter().map(|(r, s)| (*r, *s))),
                        ignore_fingerprint: info.ignore_fingerprint,
                        rekeyed: info.rekeyed,
                        ignore_file: info.ignore_file.map(|f| IgnoreFile {
                            origin: f.origin,
                            text: f.text,
                        }),
                        root,
                    }))
                    .map_err(proto)
            }
            Body::Scan(sc) => {
                let spec = IgnoreSpec {
                    files: sc
                        .files
                        .into_iter()
                        .map(|f| weave_core::ignore::IgnoreFile {
                            origin: f.origin,
                            text: f.text,
                        })
                        .collect(),
                    patterns: sc.patterns,
                };
                let t = std::time::Instant::now();
                let summary = self.rep()?.scan(&spec, sc.dry_run)?;
                tracing::debug!(elapsed = ?t.elapsed(), "scanned");
                self.served.scanned = !sc.dry_run;
                for (i, notice) in summary
                    .errors
                    .iter()
                    .map(|i| (i, false))
                    .chain(summary.notices.iter().map(|i| (i, true)))
                {
                    self.conn
                        .send(Body::Issue(IssueMsg {
                            path: i.path.clone(),
                            message: i.message.clone(),
                            notice,
                        }))
                        .map_err(proto)?;
                }
                let info = self.rep()?.info().clone();
                self.conn
                    .send(Body::Scanned(Scanned {
                        seq: info.seq,
                        clock: info.clock,
                    }))
                    .map_err(proto)
            }
            Body::GetEntries(g) => {
                let entries = self.rep()?.changed_since(g.since_seq)?;
                wire::send_entries(&self.conn, entries.values().map(|le| (&le.entry, le.seq)))
                    .map_err(proto)
            }
            Body::GetEntriesAt(g) => self.entries_at(g),
            Body::GetEntriesFrom(g) => self.entries_from(&g),
            Body::ChunkRequest(r) => self.serve_request(&r),
            Body::Ops(o) => {
                for w in o.ops {
                    let kind =
                        wire::op_kind_from_wire(w.kind).ok_or_else(|| SessionError::UnknownOp {
                            peer: peer.clone(),
                            kind: w.kind,
                        })?;
                    let target = w
                        .target
                        .ok_or_else(|| SessionError::NoTarget { peer: peer.clone() })?;
                    let (target, _) = entry_from_wire(target, &peer).map_err(proto)?;
                    if !w.root.is_empty() {
                        let node = match &target.object {
                            Object::File { content, .. } => {
                                weave_chunk::Node::decode(&w.root, content)
                            }
                            _ => None,
                        };
                        let Some(node) = node else {
                            return Err(proto(ProtoError::Invalid {
                                peer: peer.clone(),
                                detail: format!(
                                    "the chunk tree root sent with {:?} is not its content's",
                                    target.path
                                ),
                            }));
                        };
                        self.roots.insert(node.hash(), node);
                    }
                    self.ops.push(Op {
                        kind,
                        path: target.path.clone(),
                        // Filled in from this replica's own index at Run.
                        current: None,
                        target,
                    });
                    self.on_current.push(w.on_current);
                }
                Ok(())
            }
            Body::Run(_) => {
                tracing::debug!(ops = self.ops.len(), "operations received; running them");
                self.run()
            }
            Body::Finish(f) => self.finish(f),
            other => Err(SessionError::NotARequest {
                peer,
                got: other.name(),
            }
            .into()),
        }
    }

    /// One part of a request for entries by path; the last is answered.
    fn entries_at(&mut self, g: weave_proto::msg::GetEntriesAt) -> Result<(), SyncError> {
        let peer = self.conn.peer().to_string();
        weave_proto::validate::names_from_wire(&g, &peer).map_err(proto)?;
        let bytes: usize = self
            .asked
            .0
            .iter()
            .chain(&self.asked.1)
            .map(String::len)
            .sum();
        if self.asked.0.len() + self.asked.1.len() > MAX_ASKED || bytes > MAX_ASKED_BYTES {
            return Err(proto(weave_proto::ProtoError::Invalid {
                peer,
                detail: format!("a request for more than {MAX_ASKED} paths"),
            }));
        }
        self.asked.0.extend(g.paths);
        self.asked.1.extend(g.subtrees);
        if !g.last {
            return Ok(());
        }
        let (paths, subtrees) = std::mem::take(&mut self.asked);
        let entries = self.rep()?.entries_at(&paths, &subtrees)?;
        wire::send_entries(&self.conn, entries.values().map(|le| (&le.entry, le.seq)))
            .map_err(proto)
    }

    /// A page of the index.
    fn entries_from(&mut self, g: &weave_proto::msg::GetEntriesFrom) -> Result<(), SyncError> {
        let peer = self.conn.peer().to_string();
        let (after, limit) =
            weave_proto::validate::page_request_from_wire(g, &peer).map_err(proto)?;
        let rep = self.rep()?;
        let page = match rep.entries_from(after.as_deref(), limit)? {
            Some(p) => p,
            // A replica that cannot page: its page of the whole.
            None => weave_engine::page(rep.entries()?.as_ref(), after.as_deref(), limit),
        };
        let entries = page.entries.values().map(|le| (&le.entry, le.seq));
        wire::send_page(&self.conn, entries, page.end).map_err(proto)
    }

    /// Tree nodes or chunks of a content this replica holds.
    fn serve_request(&mut self, r: &ChunkRequest) -> Result<(), SyncError> {
        let wants = crate::wire::request_wants(r, self.conn.peer()).map_err(proto)?;
        let rep = open_replica(&mut self.rep)?;
        let reply = &mut self.reply;
        if r.nodes {
            let got = rep.serve_nodes(&wants)?;
            crate::wire::reply_nodes(&wants, got, reply);
        } else {
            let compress = &mut self.compress;
            rep.serve_chunks(&wants, &mut |h, data| {
                reply.push(Body::ChunkData(compress.encode(&h, data)));
                Ok(())
            })?;
        }
        crate::wire::send_if_full(&self.conn, &mut self.reply).map_err(proto)
    }

    fn run(&mut self) -> Result<(), SyncError> {
        let mut ops = std::mem::take(&mut self.ops);
        let on_current = std::mem::take(&mut self.on_current);
        let foreign = Foreign {
            nodes: std::mem::take(&mut self.roots),
            ..Foreign::default()
        };
        let rep = open_replica(&mut self.rep)?;
        let current: Vec<String> = ops
            .iter()
            .zip(&on_current)
            .filter(|(_, on)| **on)
            .map(|(op, _)| op.path.clone())
            .collect();
        let entries = rep.entries_at(&current, &[])?;
        for (op, on) in ops.iter_mut().zip(on_current) {
            if on {
                op.current = entries.get(&op.path).cloned();
            }
        }
        drop(entries);
        // What was asked, to tell which results are exactly that.
        let asked: Vec<Entry> = match self.done_ops {
            true => ops.iter().map(|o| o.target.clone()).collect(),
            false => Vec::new(),
        };
        let shown = self.host.progress();
        if let Some(p) = &shown {
            p.set_total(
                ops.iter()
                    .filter_map(|o| o.writes().map(|(_, size)| size))
                    .sum(),
            );
        }
        let conn = &self.conn;
        let sender = conn.sender();
        let pending = AtomicU64::new(0);
        let progress = |n: u64| {
            if let Some(p) = &shown {
                p.advance(n);
            }
            let total = pending.fetch_add(n, Ordering::Relaxed) + n;
            if total >= 1 << 20 {
                let n = pending.swap(0, Ordering::Relaxed);
                if let Some(s) = &sender {
                    let _ = s.send(weave_proto::msg::body(Body::Progress(Progress {
                        bytes_done: n,
                        ..Default::default()
                    })));
                }
            }
        };
        let mut provider = PipeProvider { conn };
        let actions: Vec<Option<&'static str>> = (0..ops.len())
            .map(|k| weave_engine::op_action(&ops, k))
            .collect();
        let applied = rep.apply(ops, &foreign, &mut provider, &progress)?;
        self.served.applied += applied.done.len();
        for (k, e) in &applied.done {
            if let Some(action) = actions.get(*k).copied().flatten() {
                self.served.changed_count += 1;
                self.served.ignore_file_changed |= e.path == weave_core::ignore::IGNORE_FILE;
                if self.served.changed.len() < weave_engine::CHANGED_SHOWN {
                    self.served
                        .changed
                        .push(weave_engine::ChangedPath::of(e, action));
                }
            }
        }
        for e in &applied.errors {
            let (count, list) = match weave_engine::is_refusal(&e.message) {
                true => (&mut self.served.refused_count, &mut self.served.refused),
                false => (&mut self.served.failed_count, &mut self.served.failed),
            };
            *count += 1;
            if list.len() < 10 {
                list.push((e.path.clone(), e.message.clone()));
            }
        }
        let rest = pending.swap(0, Ordering::Relaxed);
        if rest > 0 {
            conn.send(Body::Progress(Progress {
                bytes_done: rest,
                ..Default::default()
            }))
            .map_err(proto)?;
        }
        let (as_asked, other): (Vec<_>, Vec<_>) = applied
            .done
            .iter()
            .partition(|(k, e)| asked.get(*k) == Some(e));
        wire::send_done_ops(
            conn,
            &as_asked.iter().map(|(k, _)| *k as u64).collect::<Vec<_>>(),
        )
        .map_err(proto)?;
        wire::send_entries(conn, other.iter().map(|(k, e)| (e, *k as u64))).map_err(proto)?;
        for i in &applied.errors {
            conn.send(Body::Issue(IssueMsg {
                path: i.path.clone(),
                message: i.message.clone(),
                notice: false,
            }))
            .map_err(proto)?;
        }
        let seq = rep.info().seq;
        conn.send(Body::Applied(Applied {
            bytes_local: applied.bytes_local,
            bytes_remote: applied.bytes_remote,
            seq,
        }))
        .map_err(proto)
    }
}

/// The coordinator, as the source of what this replica lacks.
struct PipeProvider<'a> {
    conn: &'a Conn,
}

impl Provider for PipeProvider<'_> {
    fn nodes(&mut self, wants: &Wants) -> Result<Vec<Vec<Option<Vec<u8>>>>, SyncError> {
        wire::request_nodes(self.conn, wants, &mut |_| Ok(false))
    }

    fn chunks(
        &mut self,
        wants: &Wants,
        sink: &mut dyn FnMut(Hash, Vec<u8>) -> Result<(), SyncError>,
    ) -> Result<(), SyncError> {
        wire::request(
            self.conn,
            wants,
            false,
            &mut |_, h, data| match data {
                Some(d) => sink(h, d),
                None => Ok(()),
            },
            &mut |_| Ok(false),
        )
    }

    /// [`wire::request`] checks every chunk against its hash as it is
    /// decoded; a mismatch ends the session.
    fn verified(&self) -> bool {
        true
    }
}
