//! A replica on another machine, reached through `weave serve --stdio`
//! (started over ssh or any command given with --rsh).

use crate::address::SshAddress;
use crate::conn::{Conn, RateLimit};
use crate::error::SessionError;
use crate::server::Compress;
use crate::transfer;
use crate::wire::{self, proto};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use weave_chunk::ChunkList;
use weave_core::LocalEntry;
use weave_core::Op;
use weave_core::{Hash, ReplicaId};
use weave_engine::{
    Applied, Finish, Foreign, IgnoreSpec, Issue, Provider, Replica, ReplicaInfo, ScanSummary,
    SyncError, Wants,
};
use weave_proto::msg::{
    Body, ChunkRequest, ErrorMsg, GetEntries, IgnoreFile, Open, Ops, Run, Scan,
};
use weave_proto::validate::batch_from_wire;
use weave_proto::ProtoError;

/// Issues accepted from one remote per run.
const MAX_ISSUES: usize = 100_000;
/// Bytes kept of an issue's path and of its message.
const MAX_ISSUE_TEXT: usize = 4096;

/// How remote replicas are reached.
#[derive(Debug, Clone, Default)]
pub struct NetOptions {
    /// The command that runs a command on the remote host (default: ssh).
    pub rsh: Option<String>,
    /// The weave binary on the remote host (default: weave).
    pub remote_weave: Option<String>,
    /// Bytes per second, per remote.
    pub bwlimit: Option<u64>,
    /// Options for the remote `weave serve` (what it keeps of owners and
    /// extended attributes), each a shell-safe word.
    pub serve_args: Vec<String>,
    /// The passphrase of bucket replicas.
    pub passphrase: Option<Vec<u8>>,
}

pub struct RemoteReplica {
    display: String,
    conn: Conn,
    info: ReplicaInfo,
    child: Option<Child>,
    compress: Compress,
    dry_run: bool,
    /// Where its index is remembered between syncs, if anywhere.
    cache: Option<crate::cache::IndexCache>,
    /// Its index as fetched this sync, while it is remembered, and the
    /// sequence number it is complete up to: updated with what this sync
    /// records there, written to the cache once, at the end.
    known: Option<(BTreeMap<String, LocalEntry>, u64)>,
    /// The server answers requests for entries by path (an older one
    /// sends its whole index instead).
    entries_at: bool,
    /// The server gives its index in pages (a tree replica of a server
    /// whose hello lists "entries-from").
    entries_from: bool,
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-~+=:,@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

impl RemoteReplica {
    /// Starts `weave serve --stdio` on the remote host and opens the replica.
    pub fn spawn(
        spec: &SshAddress,
        net: &NetOptions,
        kind: &str,
        dry_run: bool,
    ) -> Result<RemoteReplica, SyncError> {
        let rsh = net.rsh.clone().unwrap_or_else(|| "ssh".into());
        let words: Vec<&str> = rsh.split_whitespace().collect();
        let Some((prog, args)) = words.split_first() else {
            return Err(SyncError::Usage(
                "--rsh needs a command, e.g. --rsh 'ssh -p 2222'".into(),
            ));
        };
        let remote_weave = net.remote_weave.clone().unwrap_or_else(|| "weave".into());
        let serve: String = std::iter::once("serve --stdio".to_string())
            .chain(net.serve_args.iter().map(|a| shell_quote(a)))
            .collect::<Vec<_>>()
            .join(" ");
        let mut cmd = Command::new(prog);
        cmd.args(args);
        if let Some(p) = spec.port {
            cmd.arg("-p").arg(p.to_string());
        }
        cmd.arg(&spec.host)
            .arg(format!("{} {serve}", shell_quote(&remote_weave)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let shown = format!("{rsh} {} {} {serve}", spec.host, shell_quote(&remote_weave));
        let mut child = cmd.spawn().map_err(|why| SessionError::CannotRun {
            display: spec.display.clone(),
            shown: shown.clone(),
            why,
        })?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        crate::conn::grow_pipe(&stdin);
        crate::conn::grow_pipe(&stdout);
        let mut stderr = child.stderr.take().expect("piped");
        // The remote side's messages, kept for errors and shown on ours.
        let errbuf = Arc::new(Mutex::new(Vec::<u8>::new()));
        {
            let errbuf = errbuf.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stderr.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut b = errbuf.lock().expect("stderr buffer");
                    b.extend_from_slice(&buf[..n]);
                    let over = b.len().saturating_sub(64 * 1024);
                    b.drain(..over);
                }
            });
        }
        let limit = net.bwlimit.map(RateLimit::new);
        let conn = Conn::new(stdout, stdin, &spec.host, limit);
        match RemoteReplica::open_kind(conn, &spec.display, &spec.path, kind, dry_run) {
            Ok(mut r) => {
                r.child = Some(child);
                Ok(r)
            }
            Err(e) => {
                // Why the session failed is usually in how the command ended.
                let status = wait_a_little(&mut child);
                std::thread::sleep(std::time::Duration::from_millis(50));
                let text = String::from_utf8_lossy(&errbuf.lock().expect("stderr buffer"))
                    .trim()
                    .to_string();
                let tail: Vec<&str> = text
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                let said = if tail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", tail.join(" / "))
                };
                let code = status.and_then(|s| s.code());
                let not_found = code == Some(127)
                    || text.contains("command not found")
                    || (text.contains("No such file") && text.contains(&remote_weave));
                let display = spec.display.clone();
                let closed = e
                    .session::<SessionError>()
                    .is_some_and(SessionError::is_closed);
                Err(match (code, not_found) {
                    (_, true) => SessionError::NotInstalled {
                        display,
                        host: spec.host.clone(),
                        remote_weave,
                        said,
                    }
                    .into(),
                    (Some(255), _) => SessionError::Unreachable {
                        display,
                        host: spec.host.clone(),
                        rsh: rsh.to_string(),
                        said,
                    }
                    .into(),
                    (Some(code), _) if closed => SessionError::EndedEarly {
                        display,
                        shown,
                        code,
                        said,
                    }
                    .into(),
                    _ => e,
                })
            }
        }
    }

    /// Opens the directory tree at `path` over an established connection.
    pub fn open(
        conn: Conn,
        display: &str,
        path: &str,
        dry_run: bool,
    ) -> Result<RemoteReplica, SyncError> {
        Self::open_kind(conn, display, path, "files", dry_run)
    }

    /// Opens the replica of `kind` (see [`weave_engine::Kind`]) at `path`
    /// over an established connection.
    pub fn open_kind(
        conn: Conn,
        display: &str,
        path: &str,
        kind: &str,
        dry_run: bool,
    ) -> Result<RemoteReplica, SyncError> {
        let peer = conn.peer().to_string();
        let ours = weave_proto::handshake::hello(ReplicaId(0), &["v1", wire::DONE_OPS]);
        conn.send(Body::Hello(ours.clone())).map_err(proto)?;
        let theirs = match conn.recv().map_err(proto)?.body {
            Some(Body::Hello(h)) => h,
            other => return Err(unexpected(display, other.as_ref(), "a hello")),
        };
        weave_proto::handshake::negotiate(&ours, &theirs, display).map_err(|e| {
            let _ = conn.send(Body::Error(ErrorMsg {
                message: e.to_string(),
                ..Default::default()
            }));
            proto(e)
        })?;
        let files = kind.is_empty() || kind == "files";
        if !files && !theirs.capabilities.iter().any(|c| c == "kinds") {
            return Err(SessionError::NoKinds {
                display: display.to_string(),
                software: theirs.software,
                kind: kind.to_string(),
            }
            .into());
        }
        conn.send(Body::Open(Open {
            path: path.to_string(),
            dry_run,
            kind: if files {
                String::new()
            } else {
                kind.to_string()
            },
        }))
        .map_err(proto)?;
        let o = match conn.recv().map_err(proto)?.body {
            Some(Body::Opened(o)) => o,
            other => return Err(unexpected(display, other.as_ref(), "an open reply")),
        };
        if o.peers.len() > weave_proto::limits::MAX_VV {
            return Err(SessionError::TooManyPeers {
                display: display.to_string(),
                count: o.peers.len(),
            }
            .into());
        }
        let info = ReplicaInfo {
            id: ReplicaId(o.replica_id),
            seq: o.seq,
            clock: o.clock,
            peers: o
                .peers
                .iter()
                .map(|p| (ReplicaId(p.replica), p.counter))
                .collect(),
            ignore_fingerprint: o.ignore_fingerprint,
            rekeyed: o.rekeyed,
            ignore_file: o.ignore_file.map(|f| weave_core::ignore::IgnoreFile {
                origin: format!("{}:{}", peer, f.origin),
                text: f.text,
            }),
        };
        Ok(RemoteReplica {
            display: display.to_string(),
            conn,
            info,
            child: None,
            compress: Compress::default(),
            dry_run,
            cache: None,
            known: None,
            entries_at: theirs.capabilities.iter().any(|c| c == wire::ENTRIES_AT),
            entries_from: files && theirs.capabilities.iter().any(|c| c == wire::ENTRIES_FROM),
        })
    }

    /// Remembers this replica's index in the state directory `state` (of
    /// a local replica of the sync), so later syncs ask only for the
    /// entries that changed.
    pub fn cache_index_in(&mut self, state: &std::path::Path) {
        self.cache = Some(crate::cache::IndexCache::new(state, self.info.id));
    }

    /// Index batches, up to the last one, into `out`.
    /// Keeps `out`, the whole index (up to its newest sequence number, and
    /// at least `since`), to remember at the end of the sync (see
    /// [`RemoteReplica::cache_index_in`]); nothing on a dry run.
    fn remember(&mut self, out: &BTreeMap<String, LocalEntry>, since: u64) {
        if self.cache.is_some() && !self.dry_run {
            let seq = out.values().map(|le| le.seq).max().unwrap_or(0);
            self.known = Some((out.clone(), seq.max(since)));
        }
    }

    /// Receives index batches into `out`, up to the last; returns where
    /// the page they answer ends (see [`wire::send_page`]).
    fn receive_entries(
        &mut self,
        out: &mut BTreeMap<String, LocalEntry>,
    ) -> Result<Option<String>, SyncError> {
        loop {
            let m = self.conn.recv().map_err(proto)?;
            match m.body {
                Some(Body::IndexBatch(b)) => {
                    let b = batch_from_wire(b, &self.display).map_err(proto)?;
                    for (entry, seq) in b.entries {
                        let le = LocalEntry {
                            entry,
                            seq,
                            stat: None,
                        };
                        out.insert(le.entry.path.clone(), le);
                    }
                    if b.last {
                        return Ok(b.page_end);
                    }
                }
                other => return Err(self.unexpected(other.as_ref(), "index entries")),
            }
        }
    }

    fn unexpected(&self, got: Option<&Body>, expected: &'static str) -> SyncError {
        unexpected(&self.display, got, expected)
    }

    fn issue(&self, path: String, message: String) -> Issue {
        let mut message = message;
        message.truncate(MAX_ISSUE_TEXT);
        let mut path = path;
        path.truncate(MAX_ISSUE_TEXT);
        Issue { path, message }
    }

    /// Sends the operations of `plan`, then asks for them to be run.
    fn send_ops(&self, plan: impl Iterator<Item = Ops>) -> Result<(), SyncError> {
        for m in plan {
            self.conn.send(Body::Ops(m)).map_err(proto)?;
        }
        self.conn.send(Body::Run(Run {})).map_err(proto)
    }

    /// Takes the results of `ops` until the remote says they are applied,
    /// answering its requests for tree nodes and chunks from `provider`
    /// meanwhile.
    fn receive_results(
        &mut self,
        ops: &[Op],
        provider: &mut dyn Provider,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Applied, SyncError> {
        let mut out = Applied::default();
        // Operations acknowledged by index (each once).
        let mut acked = vec![false; ops.len()];
        // Answers to the requests that arrived together, queued as one:
        // they leave in a few large writes, not one small write (and a
        // wake-up of every process on the way) per small file.
        let mut reply: Vec<Body> = Vec::new();
        loop {
            let m = match self.conn.try_recv() {
                Some(m) => m,
                None => {
                    self.conn
                        .send_paced(std::mem::take(&mut reply))
                        .map_err(proto)?;
                    self.conn.recv()
                }
            }
            .map_err(proto)?;
            match m.body {
                Some(Body::ChunkRequest(r)) => self.answer_request(&r, provider, &mut reply)?,
                Some(Body::Progress(p)) => progress(p.bytes_done),
                Some(Body::IndexBatch(b)) => out.done.extend(
                    transfer::results_of(ops, &mut acked, b, &self.display).map_err(proto)?,
                ),
                Some(Body::Issue(i)) => {
                    if out.errors.len() < MAX_ISSUES {
                        let is = self.issue(i.path, i.message);
                        out.errors.push(is);
                    }
                }
                Some(Body::Applied(a)) => {
                    self.take_applied(&a, &mut out);
                    return Ok(out);
                }
                other => return Err(self.unexpected(other.as_ref(), "results of the operations")),
            }
        }
    }

    /// Answers the remote's request for tree nodes or chunks of one
    /// content from `provider`, queued in `reply`.
    fn answer_request(
        &mut self,
        r: &ChunkRequest,
        provider: &mut dyn Provider,
        reply: &mut Vec<Body>,
    ) -> Result<(), SyncError> {
        let wants = wire::request_wants(r, &self.display).map_err(proto)?;
        if r.nodes {
            let got = provider.nodes(&wants)?;
            wire::reply_nodes(&wants, got, reply);
        } else {
            let mut left: HashMap<Hash, usize> = HashMap::new();
            for h in &wants[0].1 {
                *left.entry(*h).or_default() += 1;
            }
            let compress = &mut self.compress;
            provider.chunks(&wants, &mut |h, data| {
                match left.get_mut(&h) {
                    Some(n) if *n > 0 => *n -= 1,
                    _ => return Ok(()),
                }
                reply.push(Body::ChunkData(compress.encode(&h, Some(data))));
                Ok(())
            })?;
            for (h, n) in left {
                for _ in 0..n {
                    reply.push(Body::ChunkData(self.compress.encode(&h, None)));
                }
            }
        }
        wire::send_if_full(&self.conn, reply).map_err(proto)
    }

    /// Takes the remote's word that the operations are applied (with
    /// what moved), into `out`.
    fn take_applied(&mut self, a: &weave_proto::msg::Applied, out: &mut Applied) {
        out.bytes_local = a.bytes_local;
        out.bytes_remote = a.bytes_remote;
        self.info.seq = a.seq;
        // The session holds the remote's index: everything it recorded
        // since the fetch is in `done`, so the remembered index is
        // complete up to its new seq.
        if let Some((known, seq)) = &mut self.known {
            *seq = a.seq;
            for (_, e) in &out.done {
                known.insert(
                    e.path.clone(),
                    LocalEntry {
                        entry: e.clone(),
                        seq: a.seq,
                        stat: None,
                    },
                );
            }
        }
    }
}

/// The error for a reply that is not the one expected: the remote's own
/// error message if it sent one.
fn unexpected(display: &str, got: Option<&Body>, expected: &'static str) -> SyncError {
    match got {
        Some(Body::Error(e)) => SessionError::from_peer(display, e.clone()).into(),
        other => proto(ProtoError::Unexpected {
            peer: display.to_string(),
            got: other.map(|b| b.name()).unwrap_or("an unknown message"),
            expected,
        }),
    }
}

fn wait_a_little(child: &mut Child) -> Option<std::process::ExitStatus> {
    for _ in 0..100 {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok()
}

impl Drop for RemoteReplica {
    fn drop(&mut self) {
        self.conn.close();
        if let Some(mut c) = self.child.take() {
            wait_a_little(&mut c);
        }
    }
}

impl Replica for RemoteReplica {
    fn display(&self) -> &str {
        &self.display
    }

    fn is_local(&self) -> bool {
        false
    }

    fn traffic(&self) -> Option<(u64, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        Some((
            self.conn.traffic.sent.load(Relaxed),
            self.conn.traffic.received.load(Relaxed),
        ))
    }

    fn info(&self) -> &ReplicaInfo {
        &self.info
    }

    fn scan(&mut self, ignore: &IgnoreSpec, dry_run: bool) -> Result<ScanSummary, SyncError> {
        self.conn
            .send(Body::Scan(Scan {
                files: ignore
                    .files
                    .iter()
                    .map(|f| IgnoreFile {
                        origin: f.origin.clone(),
                        text: f.text.clone(),
                    })
                    .collect(),
                patterns: ignore.patterns.clone(),
                dry_run,
            }))
            .map_err(proto)?;
        let mut out = ScanSummary::default();
        loop {
            let m = self.conn.recv().map_err(proto)?;
            match m.body {
                Some(Body::Issue(i)) => {
                    if out.errors.len() + out.notices.len() < MAX_ISSUES {
                        let is = self.issue(i.path, i.message);
                        if i.notice {
                            out.notices.push(is);
                        } else {
                            out.errors.push(is);
                        }
                    }
                }
                Some(Body::Scanned(s)) => {
                    self.info.seq = s.seq;
                    self.info.clock = s.clock;
                    return Ok(out);
                }
                other => return Err(self.unexpected(other.as_ref(), "a scan reply")),
            }
        }
    }

    fn entries(&mut self) -> Result<weave_engine::Entries, SyncError> {
        // What is remembered of its index, up to some sequence number: only
        // newer entries are asked for. (On a dry run the remote's scan is
        // not recorded, so its changes have no sequence numbers yet.)
        let (since_seq, mut out) = match &self.cache {
            Some(c) if !self.dry_run => c.load(self.info.seq).unwrap_or_default(),
            _ => (0, BTreeMap::new()),
        };
        self.conn
            .send(Body::GetEntries(GetEntries { since_seq }))
            .map_err(proto)?;
        self.receive_entries(&mut out)?;
        self.remember(&out, since_seq);
        Ok(std::sync::Arc::new(out))
    }

    fn changed_since(&mut self, seq: u64) -> Result<weave_engine::Entries, SyncError> {
        self.conn
            .send(Body::GetEntries(GetEntries { since_seq: seq }))
            .map_err(proto)?;
        let mut out = BTreeMap::new();
        self.receive_entries(&mut out)?;
        Ok(std::sync::Arc::new(out))
    }

    fn entries_at(
        &mut self,
        paths: &[String],
        subtrees: &[String],
    ) -> Result<weave_engine::Entries, SyncError> {
        if !self.entries_at {
            let all = self.entries()?;
            return Ok(std::sync::Arc::new(weave_engine::select(
                &all, paths, subtrees,
            )));
        }
        wire::ask_entries_at(&self.conn, paths, subtrees).map_err(proto)?;
        let mut out = BTreeMap::new();
        self.receive_entries(&mut out)?;
        Ok(std::sync::Arc::new(out))
    }

    fn entries_from(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<weave_engine::Page>, SyncError> {
        if !self.entries_from {
            return Ok(None);
        }
        // With its index remembered, the whole of it costs only what
        // changed on the wire: planned at once from that.
        if self.cache.as_ref().is_some_and(|c| c.exists()) && !self.dry_run {
            return Ok(None);
        }
        let ask = weave_proto::msg::GetEntriesFrom {
            after: after.map(str::to_string),
            limit: limit.min(weave_proto::limits::MAX_PAGE) as u32,
        };
        self.conn.send(Body::GetEntriesFrom(ask)).map_err(proto)?;
        let mut out = BTreeMap::new();
        let end = self.receive_entries(&mut out)?;
        // A page cannot end before the entries it holds.
        let end = end.map(|e| match out.last_key_value() {
            Some((k, _)) if *k > e => k.clone(),
            _ => e,
        });
        // A first page that is the whole index is remembered, as a whole
        // index fetched is (see `entries`).
        if after.is_none() && end.is_none() {
            self.remember(&out, 0);
        }
        Ok(Some(weave_engine::Page {
            entries: std::sync::Arc::new(out),
            end,
        }))
    }

    fn chunk_list(&mut self, _content: &Hash) -> Option<ChunkList> {
        None
    }

    fn serve_nodes(&mut self, wants: &Wants) -> Result<Vec<Vec<Option<Vec<u8>>>>, SyncError> {
        wire::request_nodes(&self.conn, wants, &mut |_| Ok(false))
    }

    fn serve_chunks(
        &mut self,
        wants: &Wants,
        sink: &mut dyn FnMut(Hash, Option<Vec<u8>>) -> Result<(), SyncError>,
    ) -> Result<(), SyncError> {
        wire::request(
            &self.conn,
            wants,
            false,
            &mut |_, h, d| sink(h, d),
            &mut |_| Ok(false),
        )
    }

    fn apply(
        &mut self,
        ops: Vec<Op>,
        _foreign: &Foreign,
        provider: &mut dyn Provider,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Applied, SyncError> {
        // Only a shortcut: without them, the server asks for what it needs
        // (and reports what nobody has, file by file).
        let roots = transfer::small_roots(&ops, provider).unwrap_or_default();
        self.send_ops(transfer::transfer_plan(&ops, roots))?;
        self.receive_results(&ops, provider, progress)
    }

    fn finish(&mut self, fin: &Finish) -> Result<(), SyncError> {
        let (peers, fp) = match &fin.integrated {
            Some(i) => (
                wire::pairs_to_wire(i.peers.iter().copied()),
                Some(i.ignore_fingerprint),
            ),
            None => (Vec::new(), None),
        };
        self.conn
            .send(Body::Finish(weave_proto::msg::Finish {
                observe: fin.observe,
                peers,
                integrated_fingerprint: fp,
                went_through: fin.went_through.iter().flatten().map(|r| r.0).collect(),
                through_said: fin.went_through.is_some(),
            }))
            .map_err(proto)?;
        match self.conn.recv().map_err(proto)?.body {
            Some(Body::Finished(_)) => {}
            other => return Err(self.unexpected(other.as_ref(), "a finish reply")),
        }
        if let (Some(c), Some((known, seq))) = (&self.cache, self.known.take()) {
            c.save(&known, seq);
        }
        Ok(())
    }
}
