//! The running daemon.
//!
//! - **Sessions.** Every sync is a pair sync between a local folder and
//!   one peer, over its own TLS connection, run by either side with the
//!   engine (`weave_engine::run`) exactly as `weave sync` runs it; the
//!   other side serves its folder with `weave_net::server::serve_host`,
//!   opening it by folder id and only for a peer the folder is shared with.
//! - **Locks.** A folder's replica is open in one sync at a time (a lock
//!   per folder). A pair sync takes both devices' locks in the order of
//!   their device ids (the lower id's first), so two daemons that start
//!   syncing with each other at the same moment never wait on each other.
//! - **What starts a sync.** The watcher (after the folder's watch
//!   delay), a sync served for a peer that changed the folder (the other
//!   peers hear of it), the periodic rescan, a retry after a failure (with
//!   back-off), a config change, and the start of the daemon (catch-up).
//!   Which peers a sync is needed with: those whose last sync with the
//!   folder did not end at its current sequence number.
//! - **Scans.** A folder's scan looks only at the paths the watcher saw
//!   change (each with its subtree), see [`crate::touched`]; a full scan
//!   runs at the start, when the watch is set up, on a config change, on
//!   the rescan interval and when the watcher lost events. A changed
//!   folder is scanned on its own first, peers or not: its sequence number
//!   then says which peers need a sync.
//! - **Echoes.** Files weave wrote itself are in the index as written, so
//!   the watcher's events for them find nothing new: the folder's sequence
//!   number stays, and no peer is contacted for them.

use crate::config::{Config, Conflict, Folder, Mode, Peer};
use crate::guard::Guarded;
use crate::id::DeviceId;
use crate::identity::Identity;
use crate::status::{self, Board, Change};
use crate::touched::Touched;
use crate::{tls, DaemonError};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tracing::{debug, info, warn};
use weave_engine::{IgnoreSpec, Kind, Replica, SyncError, SyncOptions};
use weave_fs::Files;
use weave_net::server::{serve_host, Host};
use weave_net::{Conn, RemoteReplica};

/// How long a dial or a TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Back-off after a failed sync with a peer: doubling up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often the config file is looked at.
const CONFIG_POLL: Duration = Duration::from_millis(500);
/// Fallback rescan when the watcher cannot watch a folder.
const UNWATCHED_RESCAN: Duration = Duration::from_secs(60);

struct Shared {
    dir: PathBuf,
    me: Identity,
    cfg: RwLock<Arc<Config>>,
    allowed: tls::Allowed,
    refused: tls::Refused,
    folders: Mutex<HashMap<String, Arc<FolderRt>>>,
    board: Board,
    rt: Handle,
    stopping: AtomicBool,
}

/// A folder while the daemon runs.
struct FolderRt {
    id: String,
    /// Its replica is open in one sync at a time.
    lock: Arc<tokio::sync::Mutex<()>>,
    wake: Notify,
    /// Something may have changed on disk: the next check scans.
    dirty: AtomicBool,
    /// What the next scan looks at.
    touched: Touched,
    /// The next check syncs with every peer (the ignore file changed).
    resync: AtomicBool,
    /// After a scan of the folder failed: when to try again, and the wait.
    scan_retry: Mutex<Option<(Instant, Duration)>>,
    /// A watcher batch is being gathered.
    gathering: AtomicBool,
    /// The folder's sequence number after its last sync with each peer.
    synced: Mutex<HashMap<DeviceId, u64>>,
    /// Peers to leave alone until then (after failures).
    backoff: Mutex<HashMap<DeviceId, (Instant, Duration)>>,
    /// The watcher could not watch it: rescan often.
    unwatched: AtomicBool,
    stopped: AtomicBool,
    bytes_total: AtomicU64,
    bytes_done: AtomicU64,
}

impl FolderRt {
    fn new(id: &str) -> FolderRt {
        FolderRt {
            id: id.to_string(),
            lock: Arc::new(tokio::sync::Mutex::new(())),
            wake: Notify::new(),
            dirty: AtomicBool::new(true),
            touched: Touched::new(),
            resync: AtomicBool::new(false),
            scan_retry: Mutex::new(None),
            gathering: AtomicBool::new(false),
            synced: Mutex::new(HashMap::new()),
            backoff: Mutex::new(HashMap::new()),
            unwatched: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            bytes_total: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
        }
    }

    /// Gives back what a scan that did not happen took.
    fn give_back(&self, taken: Taken) {
        self.touched.untake(taken);
        self.dirty.store(true, Ordering::SeqCst);
    }

    /// Wakes the folder's loop; `rescan`: after a full scan.
    fn poke(&self, rescan: bool) {
        if rescan {
            self.touched.everything();
            self.dirty.store(true, Ordering::SeqCst);
        }
        self.wake.notify_one();
    }
}

impl Shared {
    fn cfg(&self) -> Arc<Config> {
        self.cfg.read().expect("config").clone()
    }

    fn all_folders(&self) -> Vec<Arc<FolderRt>> {
        self.folders
            .lock()
            .expect("folders")
            .values()
            .cloned()
            .collect()
    }

    fn folder_rt(&self, id: &str) -> Option<Arc<FolderRt>> {
        self.folders.lock().expect("folders").get(id).cloned()
    }
}

/// The sync options a folder's syncs use.
fn sync_options(cfg: &Config, f: &Folder) -> SyncOptions {
    SyncOptions {
        policy: match f.conflict {
            Conflict::KeepBoth => weave_engine::PolicySpec::KeepBoth,
            Conflict::Newest => weave_engine::PolicySpec::Newest,
        },
        ignore: f
            .ignore
            .iter()
            .cloned()
            .chain(Guarded::exclusion_patterns(&cfg.subfolders(f)))
            .collect(),
        ..SyncOptions::default()
    }
}

/// What an open folder's scan took from its touched paths (None: it scans
/// everything), to give back if the sync fails.
type Taken = Option<Vec<String>>;

/// Opens the folder's replica, behind its own rules, its scan limited to
/// what the watcher saw change.
fn open_folder(
    cfg: &Config,
    f: &Folder,
    rt: &FolderRt,
) -> Result<(Box<dyn Replica>, Taken), SyncError> {
    if !f.path.is_dir() {
        return Err(SyncError::Usage(format!(
            "folder {}: {} is not a directory (unmounted? removed?); it is not synced until it is back, so that nothing is deleted on its peers",
            f.id,
            f.path.display()
        )));
    }
    let canon = Files.check(std::slice::from_ref(&f.path), &f.ignore)?;
    let rep = Files.open(&canon[0], &f.id, false)?;
    let mut g = Guarded::new(rep);
    g.send_only = f.mode == Mode::SendOnly;
    if f.mode == Mode::ReceiveOnly {
        g.receive_only(&Files.state_dir(&canon[0]));
    }
    g.excluded = cfg.subfolders(f);
    g.patterns = f.ignore.clone();
    let taken = rt
        .touched
        .take(Duration::from_millis(f.watch_delay_ms), Instant::now());
    if let (Some(paths), Some(tree)) = (&taken, g.local()) {
        tree.limit_scan(paths.clone());
    }
    Ok((Box::new(g), taken))
}

/// Scans the folder on its own (no peer needed), so that its sequence
/// number says whether any peer needs a sync. Returns it.
fn scan_local(sh: &Shared, rt: &FolderRt, cfg: &Config, f: &Folder) -> Result<u64, SyncError> {
    let _guard = rt.lock.clone().blocking_lock_owned();
    let (mut rep, taken) = open_folder(cfg, f, rt)?;
    sh.board.folder(&f.id, |s| s.state = "scanning".into());
    let ignore = IgnoreSpec {
        files: rep.info().ignore_file.clone().into_iter().collect(),
        patterns: f.ignore.clone(),
    };
    match rep.scan(&ignore, false) {
        Ok(summary) => {
            for e in &summary.errors {
                warn!("folder {}: {}: {}", f.id, e.path, e.message);
                sh.board
                    .error(Some(&f.id), None, format!("{}: {}", e.path, e.message));
            }
            Ok(rep.info().seq)
        }
        Err(e) => {
            rt.give_back(taken);
            Err(e)
        }
    }
}

/// A weave session over a TLS stream: the connection's reader and writer
/// threads use the stream through the runtime.
fn conn_over<S>(stream: S, peer: &str, rt: &Handle) -> Conn
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (r, w) = tokio::io::split(stream);
    let r = tokio_util::io::SyncIoBridge::new_with_handle(r, rt.clone());
    let w = tokio_util::io::SyncIoBridge::new_with_handle(w, rt.clone());
    Conn::new(r, CloseOnDrop(w), peer, None)
}

/// The writing half of a session: dropping it ends the TLS stream cleanly
/// (close_notify), so the other side sees the end of the session.
struct CloseOnDrop<W: AsyncWrite + Unpin>(tokio_util::io::SyncIoBridge<W>);

impl<W: AsyncWrite + Unpin> std::io::Write for CloseOnDrop<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<W: AsyncWrite + Unpin> Drop for CloseOnDrop<W> {
    fn drop(&mut self) {
        let _ = self.0.shutdown();
    }
}

/// Dials `peer` (each of its addresses in turn) and checks it is who it
/// should be.
fn dial(sh: &Shared, peer: &Peer) -> Result<(Conn, String), DaemonError> {
    let perr = |message: String| DaemonError::Peer {
        peer: peer.name.clone(),
        message,
    };
    if peer.addresses.is_empty() {
        return Err(perr(
            "it has no address to dial; it dials this device (add one with `weave peer add NAME ID ADDRESS`)".into(),
        ));
    }
    let cc = tls::client_config(&sh.me, peer.id)?;
    let mut last = String::new();
    for addr in &peer.addresses {
        let cc = cc.clone();
        let got = sh.rt.block_on(async {
            let s = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| e.to_string())?;
            let _ = s.set_nodelay(true);
            let name = rustls::pki_types::ServerName::try_from("weave").expect("a name");
            tokio::time::timeout(
                CONNECT_TIMEOUT,
                tokio_rustls::TlsConnector::from(cc).connect(name, s),
            )
            .await
            .map_err(|_| "the TLS handshake timed out".to_string())?
            .map_err(|e| format!("TLS: {e}"))
        });
        match got {
            Ok(t) => return Ok((conn_over(t, &peer.name, &sh.rt), addr.clone())),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(perr(format!("cannot connect ({last})")))
}

struct Progress<'a>(&'a FolderRt);

impl weave_engine::Progress for Progress<'_> {
    fn set_total(&self, bytes: u64) {
        self.0.bytes_total.store(bytes, Ordering::Relaxed);
        self.0.bytes_done.store(0, Ordering::Relaxed);
    }
    fn advance(&self, bytes: u64) {
        self.0.bytes_done.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// One pair sync of folder `f` with `peer`, run by this device. Returns
/// the folder's sequence number after it.
fn sync_pair(
    sh: &Shared,
    rt: &FolderRt,
    cfg: &Config,
    f: &Folder,
    peer: &Peer,
) -> Result<u64, DaemonError> {
    // Locks in device-id order: the lower id's folder first.
    let local_first = sh.me.id < peer.id;
    let mut guard = None;
    if local_first {
        guard = Some(rt.lock.clone().blocking_lock_owned());
    }
    let started = Instant::now();
    let (conn, addr) = dial(sh, peer)?;
    let mut remote = RemoteReplica::open_kind(conn, &peer.name, &f.id, "files", false)
        .map_err(|e| {
            let mut message = e.to_string();
            if message.contains("fatal alert") {
                // TLS 1.3: a server refuses a client's certificate after
                // the client's side of the handshake is done.
                message = format!(
                    "{} refused this device ({message}); on {}, add it with `weave peer add NAME {} ADDRESS`",
                    peer.name, peer.name, sh.me.id
                );
            }
            DaemonError::Peer {
                peer: peer.name.clone(),
                message,
            }
        })?;
    if guard.is_none() {
        guard = Some(rt.lock.clone().blocking_lock_owned());
    }
    let (mut local, taken) = open_folder(cfg, f, rt)?;
    if let Some(tree) = local.local() {
        remote.cache_index_in(&Files.state_dir(tree.root()));
    }
    let mut reps: Vec<Box<dyn Replica>> = vec![local, Box::new(remote)];
    sh.board.folder(&f.id, |s| s.state = "syncing".into());
    let opts = sync_options(cfg, f);
    let result = weave_engine::run(
        &mut reps,
        &opts,
        &weave_engine::Roles::default(),
        &Progress(rt),
    );
    let seq = reps[0].info().seq;
    let traffic = reps[1].traffic();
    drop(reps);
    if result.is_err() {
        rt.give_back(taken);
    }
    drop(guard);
    rt.bytes_total.store(0, Ordering::Relaxed);
    rt.bytes_done.store(0, Ordering::Relaxed);
    let report = result?;
    let secs = started.elapsed().as_secs_f64().max(0.001);
    sh.board.peer(&peer.name, |p| {
        p.state = "connected".into();
        p.address = Some(addr.clone());
        p.last_seen_ms = Some(status::now_ms());
        p.last_error = None;
        if let Some((sent, recv)) = traffic {
            p.bytes_sent += sent;
            p.bytes_received += recv;
            p.rate_out = (sent as f64 / secs) as u64;
            p.rate_in = (recv as f64 / secs) as u64;
        }
    });
    record_report(sh, &f.id, &peer.name, &report);
    Ok(seq)
}

/// Puts what a sync did on the board and in the log.
fn record_report(sh: &Shared, folder: &str, peer: &str, r: &weave_engine::Report) {
    let now = status::now_ms();
    if let Some(l) = r.replicas.first() {
        // The local replica is first: what it took came from the peer.
        record_changes(sh, folder, peer, l.created, l.updated, l.deleted);
    }
    if !r.unchanged && (r.created + r.updated + r.deleted) > 0 {
        info!(
            "folder {folder} with {peer}: {} created, {} updated, {} deleted, {} bytes copied",
            r.created, r.updated, r.deleted, r.bytes_copied
        );
    }
    for c in &r.conflicts {
        info!(
            "folder {folder} with {peer}: conflict at {} ({})",
            c.path, c.description
        );
        sh.board.change(Change {
            time_ms: now,
            folder: folder.to_string(),
            path: c.path.clone(),
            action: "conflict".into(),
            peer: peer.to_string(),
        });
    }
    let notices: Vec<String> = r
        .errors
        .iter()
        .filter(|e| e.message.starts_with("not taken"))
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect();
    for e in r
        .errors
        .iter()
        .filter(|e| !e.message.starts_with("not taken"))
    {
        warn!("folder {folder} with {peer}: {}: {}", e.path, e.message);
        sh.board.error(
            Some(folder),
            Some(peer),
            format!("{}: {}", e.path, e.message),
        );
    }
    sh.board.folder(folder, |s| {
        s.last_sync_ms = Some(now);
        s.notices = notices;
    });
}

/// Records the ops of a report as recent changes.
fn record_changes(sh: &Shared, folder: &str, peer: &str, created: u64, updated: u64, deleted: u64) {
    if created + updated + deleted == 0 {
        return;
    }
    sh.board.change(Change {
        time_ms: status::now_ms(),
        folder: folder.to_string(),
        path: String::new(),
        action: format!("took {created} new, {updated} changed, {deleted} deleted"),
        peer: peer.to_string(),
    });
}

/// Brings folder `rt` in sync with every peer it may differ from.
fn check(sh: &Shared, rt: &FolderRt) {
    let cfg = sh.cfg();
    let Some(f) = cfg.folder(&rt.id).cloned() else {
        return;
    };
    let dirty = rt.dirty.swap(false, Ordering::SeqCst);
    let mut forced: HashSet<DeviceId> = if rt.resync.swap(false, Ordering::SeqCst) {
        f.peers
            .iter()
            .filter_map(|n| cfg.peer(n).map(|p| p.id))
            .collect()
    } else {
        HashSet::new()
    };
    let peers: Vec<Peer> = f
        .peers
        .iter()
        .filter_map(|n| cfg.peer(n).cloned())
        .collect();
    sh.board.folder(&f.id, |s| s.state = "scanning".into());
    // What the folder's sequence number is now, once known: after a look
    // at what changed on disk, or without one, the last one any sync
    // ended at. Changes weave wrote itself leave it as it was: no peer
    // hears of them again.
    let mut now: Option<u64> = if dirty {
        match scan_local(sh, rt, &cfg, &f) {
            Ok(seq) => {
                *rt.scan_retry.lock().expect("retry") = None;
                Some(seq)
            }
            Err(e) => {
                let msg = e.to_string();
                let mut retry = rt.scan_retry.lock().expect("retry");
                let wait = retry
                    .map(|(_, d)| (d * 2).min(MAX_BACKOFF))
                    .unwrap_or(Duration::from_secs(1));
                *retry = Some((Instant::now() + wait, wait));
                drop(retry);
                if wait == Duration::from_secs(1) {
                    warn!("folder {}: {msg} (retrying)", f.id);
                    sh.board.error(Some(&f.id), None, msg.clone());
                }
                sh.board.folder(&f.id, |s| {
                    s.state = "error".into();
                    s.error = Some(msg);
                });
                rt.dirty.store(true, Ordering::SeqCst);
                return;
            }
        }
    } else {
        rt.synced.lock().expect("synced").values().max().copied()
    };
    let mut deferred = false;
    let mut error = None;
    // A sync may bring changes the peers before it need: a few passes.
    for _pass in 0..3 {
        let mut any = false;
        for p in &peers {
            if sh.stopping.load(Ordering::SeqCst) || rt.stopped.load(Ordering::SeqCst) {
                return;
            }
            if let Some((until, _)) = rt.backoff.lock().expect("backoff").get(&p.id) {
                if Instant::now() < *until {
                    deferred = true;
                    continue;
                }
            }
            let last = rt.synced.lock().expect("synced").get(&p.id).copied();
            if now.is_some() && last == now && !forced.remove(&p.id) {
                continue;
            }
            forced.remove(&p.id);
            any = true;
            match sync_pair(sh, rt, &cfg, &f, p) {
                Ok(seq) => {
                    now = Some(seq);
                    rt.synced.lock().expect("synced").insert(p.id, seq);
                    rt.backoff.lock().expect("backoff").remove(&p.id);
                }
                Err(e) => {
                    deferred = true;
                    let msg = e.to_string();
                    debug!("folder {} with {}: {msg}", f.id, p.name);
                    rt.synced.lock().expect("synced").remove(&p.id);
                    let mut b = rt.backoff.lock().expect("backoff");
                    let wait = b
                        .get(&p.id)
                        .map(|(_, d)| (*d * 2).min(MAX_BACKOFF))
                        .unwrap_or(Duration::from_secs(1));
                    let first = wait == Duration::from_secs(1);
                    b.insert(p.id, (Instant::now() + wait, wait));
                    drop(b);
                    let peer_down = matches!(e, DaemonError::Peer { .. });
                    if first || !peer_down {
                        warn!("folder {} with {}: {msg} (retrying)", f.id, p.name);
                    }
                    sh.board.peer(&p.name, |s| {
                        if peer_down {
                            s.state = "disconnected".into();
                        }
                        s.last_error = Some(msg.clone());
                    });
                    if !peer_down {
                        // A peer that is down shows in its own status;
                        // anything else is the folder's error.
                        error = Some(msg.clone());
                        sh.board.error(Some(&f.id), Some(&p.name), msg);
                    }
                }
            }
        }
        if !any {
            break;
        }
    }
    let synced = rt.synced.lock().expect("synced").clone();
    let in_sync: Vec<String> = peers
        .iter()
        .filter(|p| now.is_some() && synced.get(&p.id) == now.as_ref())
        .map(|p| p.name.clone())
        .collect();
    let pct = if peers.is_empty() {
        100.0
    } else {
        100.0 * in_sync.len() as f64 / peers.len() as f64
    };
    let kept = if f.mode == Mode::ReceiveOnly {
        crate::guard::local_changes(&Files.state_dir(&f.path)).len()
    } else {
        0
    };
    sh.board.folder(&f.id, |s| {
        s.notices.retain(|n| !n.starts_with("receive-only:"));
        if kept > 0 {
            s.notices.insert(
                0,
                format!("receive-only: {kept} local changes kept here and not sent (diverged)"),
            );
        }
        s.state = if error.is_some() { "error" } else { "idle" }.into();
        s.error = error;
        s.in_sync_with = in_sync;
        s.in_sync_percent = pct;
        s.bytes_to_go = 0;
    });
    if deferred && dirty {
        // A change on disk not yet sent to every peer: the retry after the
        // back-off looks again.
        rt.dirty.store(true, Ordering::SeqCst);
    }
}

/// A folder's loop: checks when woken, on its rescan interval, and when a
/// back-off ends.
async fn folder_task(sh: Arc<Shared>, rt: Arc<FolderRt>) {
    let mut last_full = Instant::now();
    loop {
        if rt.stopped.load(Ordering::SeqCst) || sh.stopping.load(Ordering::SeqCst) {
            return;
        }
        let (s2, r2) = (sh.clone(), rt.clone());
        if tokio::task::spawn_blocking(move || check(&s2, &r2))
            .await
            .is_err()
        {
            warn!("folder {}: a sync stopped abnormally", rt.id);
        }
        let rescan = sh
            .cfg()
            .folder(&rt.id)
            .map(|f| Duration::from_secs(f.rescan_secs.max(1)))
            .unwrap_or(Duration::from_secs(3600));
        let rescan = if rt.unwatched.load(Ordering::SeqCst) {
            rescan.min(UNWATCHED_RESCAN)
        } else {
            rescan
        };
        if last_full.elapsed() >= rescan {
            last_full = Instant::now();
        }
        let mut due = last_full + rescan;
        if let Some(b) = rt
            .backoff
            .lock()
            .expect("backoff")
            .values()
            .map(|b| b.0)
            .min()
        {
            due = due.min(b);
        }
        let delay = sh
            .cfg()
            .folder(&rt.id)
            .map(|f| Duration::from_millis(f.watch_delay_ms))
            .unwrap_or_default();
        if let Some((at, _)) = *rt.scan_retry.lock().expect("retry") {
            due = due.min(at);
        }
        // Held-back files: never sooner than 10 ms from now, so that
        // nothing can make this loop spin.
        let held = rt
            .touched
            .next_ready(delay, Instant::now())
            .map(|h| h.max(Instant::now() + Duration::from_millis(10)));
        if let Some(h) = held {
            due = due.min(h);
        }
        tokio::select! {
            _ = rt.wake.notified() => {}
            _ = tokio::time::sleep_until(due.into()) => {
                if last_full.elapsed() >= rescan {
                    rt.poke(true);
                    last_full = Instant::now();
                } else if held.is_some_and(|h| Instant::now() >= h) {
                    // A file held back while it was written is ready.
                    rt.dirty.store(true, Ordering::SeqCst);
                }
            }
        }
    }
}

/// Serves a peer's session: it may open the folders shared with it.
struct DaemonHost {
    sh: Arc<Shared>,
    peer: Peer,
    opened: Option<(Arc<FolderRt>, tokio::sync::OwnedMutexGuard<()>, Taken)>,
}

impl Host for DaemonHost {
    fn open(
        &mut self,
        name: &str,
        kind: &str,
        dry_run: bool,
    ) -> Result<(Box<dyn Replica>, String), SyncError> {
        let cfg = self.sh.cfg();
        // An unknown folder and one not shared with this peer get the
        // same answer: a peer never learns of a folder not shared with it.
        let f = cfg
            .folder(name)
            .filter(|f| f.peers.contains(&self.peer.name))
            .cloned()
            .ok_or_else(|| {
                SyncError::Remote(format!(
                    "this device shares no folder {name:?} with you ({})",
                    self.sh.me.id
                ))
            })?;
        if !kind.is_empty() && kind != "files" {
            return Err(SyncError::Remote(format!(
                "folder {name:?} holds files, not {kind}"
            )));
        }
        if dry_run {
            return Err(SyncError::Remote(
                "a daemon's folders take no dry run".into(),
            ));
        }
        if self.opened.is_some() {
            return Err(SyncError::Remote(
                "a session opens one folder; open another in a session of its own".into(),
            ));
        }
        let rt = self
            .sh
            .folder_rt(&f.id)
            .ok_or_else(|| SyncError::Remote(format!("folder {name:?} is not running yet")))?;
        let guard = rt.lock.clone().blocking_lock_owned();
        let (rep, taken) = open_folder(&cfg, &f, &rt)?;
        self.opened = Some((rt, guard, taken));
        Ok((rep, f.id.clone()))
    }
}

/// One accepted connection: TLS, then a session.
async fn accept(sh: Arc<Shared>, acceptor: tokio_rustls::TlsAcceptor, s: tokio::net::TcpStream) {
    let from = s
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let _ = s.set_nodelay(true);
    let t = match tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(s)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            let refused: Vec<String> = sh
                .refused
                .lock()
                .expect("refused")
                .iter()
                .map(|i| i.to_string())
                .collect();
            warn!("refused a connection from {from}: {e}");
            sh.board.refused(refused);
            return;
        }
        Err(_) => {
            warn!("a connection from {from} did not finish its TLS handshake in time");
            return;
        }
    };
    let Some(id) = tls::peer_id(t.get_ref().1.peer_certificates()) else {
        return;
    };
    let Some(peer) = sh.cfg().peer_by_id(id).cloned() else {
        warn!("refused {id} from {from}: it is no longer a peer");
        return;
    };
    let conn = conn_over(t, &peer.name, &sh.rt);
    let sh2 = sh.clone();
    let name = peer.name.clone();
    let res = tokio::task::spawn_blocking(move || {
        let mut host = DaemonHost {
            sh: sh2,
            peer,
            opened: None,
        };
        let served = serve_host(conn, &mut host);
        let opened = host.opened.take().map(|(rt, guard, taken)| {
            // What the peer's session did not scan is looked at later.
            if !served.as_ref().is_ok_and(|s| s.scanned) {
                rt.give_back(taken);
            }
            drop(guard);
            rt
        });
        (served, opened)
    })
    .await;
    let Ok((served, opened)) = res else {
        return;
    };
    sh.board.peer(&name, |p| {
        p.state = "connected".into();
        p.last_seen_ms = Some(status::now_ms());
        p.last_error = None;
    });
    match served {
        Ok(served) => {
            if let Some(rt) = opened {
                debug!(
                    "folder {}: served {name}, {} operations",
                    rt.id, served.applied
                );
                if let Some(seq) = served.seq.filter(|_| served.finished) {
                    rt.synced.lock().expect("synced").insert(id, seq);
                }
                // It is up: no need to wait before dialling it.
                rt.backoff.lock().expect("backoff").remove(&id);
                if served.applied > 0 {
                    sh.board.change(Change {
                        time_ms: status::now_ms(),
                        folder: rt.id.clone(),
                        path: String::new(),
                        action: format!("took {} changes", served.applied),
                        peer: name.clone(),
                    });
                }
                if served.applied > 0 || !served.finished {
                    // The other peers hear of it; what the session did
                    // not finish is looked at again.
                    rt.poke(false);
                }
            }
        }
        Err(e) => {
            if let Some(rt) = opened {
                rt.synced.lock().expect("synced").remove(&id);
                rt.poke(false);
            }
            warn!("session with {name} ({from}): {e}");
        }
    }
}

/// Which folder a changed path belongs to (the deepest folder holding
/// it), and the path relative to it ("/"-separated; None when it is not
/// UTF-8, which no scan syncs).
fn folder_of(folders: &[(String, PathBuf)], path: &Path) -> Option<(String, Option<String>)> {
    if path.components().any(|c| c.as_os_str() == ".weave") {
        return None;
    }
    let (id, root) = folders
        .iter()
        .filter(|(_, root)| path.starts_with(root))
        .max_by_key(|(_, root)| root.as_os_str().len())?;
    let rel = path.strip_prefix(root).ok().and_then(|r| {
        let parts: Option<Vec<&str>> = r.components().map(|c| c.as_os_str().to_str()).collect();
        parts.map(|p| p.join("/"))
    });
    Some((id.clone(), rel))
}

/// What to do when the inotify watch limit is reached.
fn limit_hint() -> String {
    format!(
        "the inotify watch limit is reached; it is rescanned every {}s instead. Raise the limit with `sudo sysctl fs.inotify.max_user_watches=1048576` (and in /etc/sysctl.d to keep it)",
        UNWATCHED_RESCAN.as_secs()
    )
}

/// Whether a watcher event wrote a file's data (its size is looked up).
fn writes_data(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
    use notify::EventKind;
    matches!(
        kind,
        EventKind::Create(CreateKind::File | CreateKind::Any)
            | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any)
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    )
}

/// Reads the config again and makes the daemon follow it.
fn apply_config(sh: &Arc<Shared>, cfg: Config, watcher: &mut Watcher) {
    {
        let mut a = sh.allowed.write().expect("allowed");
        *a = cfg.peers.iter().map(|p| p.id).collect::<HashSet<_>>();
    }
    sh.board.configure(&cfg);
    *sh.cfg.write().expect("config") = Arc::new(cfg.clone());
    let mut folders = sh.folders.lock().expect("folders");
    folders.retain(|id, rt| {
        let keep = cfg.folder(id).is_some();
        if !keep {
            rt.stopped.store(true, Ordering::SeqCst);
            rt.wake.notify_one();
            info!("folder {id}: no longer configured; stopped");
        }
        keep
    });
    for f in &cfg.folders {
        let rt = match folders.get(&f.id) {
            Some(rt) => rt.clone(),
            None => {
                let rt = Arc::new(FolderRt::new(&f.id));
                folders.insert(f.id.clone(), rt.clone());
                info!(
                    "folder {} at {}: shared with {:?}",
                    f.id,
                    f.path.display(),
                    f.peers
                );
                sh.rt.spawn(folder_task(sh.clone(), rt.clone()));
                rt
            }
        };
        rt.poke(true);
    }
    drop(folders);
    watcher.follow(sh, &cfg);
}

/// The file-system watcher (notify), one for every folder.
struct Watcher {
    inner: Option<notify::RecommendedWatcher>,
    watched: HashMap<PathBuf, String>,
    roots: Arc<RwLock<Vec<(String, PathBuf)>>>,
}

impl Watcher {
    fn new(sh: &Arc<Shared>) -> Watcher {
        let roots: Arc<RwLock<Vec<(String, PathBuf)>>> = Arc::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<notify::Result<notify::Event>>();
        // Symlinks are not followed: a scan never looks through them.
        let inner = <notify::RecommendedWatcher as notify::Watcher>::new(
            move |ev| {
                let _ = tx.send(ev);
            },
            notify::Config::default().with_follow_symlinks(false),
        );
        let inner = match inner {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(
                    "cannot watch files ({e}); folders are rescanned every {}s instead",
                    UNWATCHED_RESCAN.as_secs()
                );
                None
            }
        };
        let sh2 = sh.clone();
        let roots2 = roots.clone();
        sh.rt.spawn(async move {
            while let Some(ev) = rx.recv().await {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        // A directory that could not be watched (the watch
                        // limit, most likely): its folder goes back to full
                        // rescans.
                        let roots = roots2.read().expect("roots").clone();
                        let mut ids: Vec<String> = e
                            .paths
                            .iter()
                            .filter_map(|p| folder_of(&roots, p).map(|(id, _)| id))
                            .collect();
                        if ids.is_empty() {
                            ids = roots.iter().map(|(id, _)| id.clone()).collect();
                        }
                        ids.dedup();
                        let limit = matches!(e.kind, notify::ErrorKind::MaxFilesWatch);
                        for id in ids {
                            let Some(rt) = sh2.folder_rt(&id) else {
                                continue;
                            };
                            if !rt.unwatched.swap(true, Ordering::SeqCst) {
                                if limit {
                                    warn!("folder {id}: {}", limit_hint());
                                } else {
                                    warn!(
                                        "folder {id}: the watcher failed ({e}); it is rescanned every {}s instead",
                                        UNWATCHED_RESCAN.as_secs()
                                    );
                                }
                            }
                            rt.poke(true);
                        }
                        continue;
                    }
                };
                if matches!(ev.kind, notify::EventKind::Access(_)) && !writes_data(&ev.kind) {
                    continue;
                }
                let roots = roots2.read().expect("roots").clone();
                let now = Instant::now();
                let mut hit: Vec<String> = Vec::new();
                for p in &ev.paths {
                    let Some((id, rel)) = folder_of(&roots, p) else {
                        continue;
                    };
                    let Some(rt) = sh2.folder_rt(&id) else {
                        continue;
                    };
                    if ev.need_rescan() {
                        // The watcher lost events: only a full scan knows.
                        rt.touched.everything();
                    } else if let Some(rel) = rel {
                        let meta = std::fs::symlink_metadata(p).ok();
                        let appeared = matches!(
                            ev.kind,
                            notify::EventKind::Create(_)
                                | notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
                        );
                        if rel == weave_core::ignore::IGNORE_FILE {
                            // What is ignored changed: only a full scan knows,
                            // and every peer syncs again (a sync plans with
                            // both sides' ignore files, so the first one
                            // after a change may still have used the old).
                            rt.touched.everything();
                            rt.resync.store(true, Ordering::SeqCst);
                        } else if appeared && meta.as_ref().is_some_and(|m| m.is_dir()) {
                            rt.touched.add_dir(rel, now);
                        } else {
                            let written = meta
                                .filter(|m| writes_data(&ev.kind) && m.is_file())
                                .map(|m| m.len());
                            rt.touched.add(rel, written, now);
                        }
                    }
                    if !hit.contains(&id) {
                        hit.push(id);
                    }
                }
                if ev.paths.is_empty() && ev.need_rescan() {
                    for rt in sh2.all_folders() {
                        rt.poke(true);
                    }
                }
                for id in hit {
                    let Some(rt) = sh2.folder_rt(&id) else {
                        continue;
                    };
                    let delay = sh2
                        .cfg()
                        .folder(&id)
                        .map(|f| f.watch_delay_ms)
                        .unwrap_or(50);
                    rt.dirty.store(true, Ordering::SeqCst);
                    if delay == 0 {
                        rt.wake.notify_one();
                    } else if !rt.gathering.swap(true, Ordering::SeqCst) {
                        let rt = rt.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(delay)).await;
                            rt.gathering.store(false, Ordering::SeqCst);
                            rt.wake.notify_one();
                        });
                    }
                }
            }
        });
        Watcher {
            inner,
            watched: HashMap::new(),
            roots,
        }
    }

    fn follow(&mut self, sh: &Arc<Shared>, cfg: &Config) {
        use notify::Watcher as _;
        let want: HashMap<PathBuf, String> = cfg
            .folders
            .iter()
            .map(|f| {
                (
                    std::fs::canonicalize(&f.path).unwrap_or_else(|_| f.path.clone()),
                    f.id.clone(),
                )
            })
            .collect();
        *self.roots.write().expect("roots") =
            want.iter().map(|(p, id)| (id.clone(), p.clone())).collect();
        let Some(w) = self.inner.as_mut() else {
            for id in want.values() {
                if let Some(rt) = sh.folder_rt(id) {
                    rt.unwatched.store(true, Ordering::SeqCst);
                }
            }
            return;
        };
        for p in self.watched.keys().cloned().collect::<Vec<_>>() {
            if !want.contains_key(&p) {
                let _ = w.unwatch(&p);
                self.watched.remove(&p);
            }
        }
        for (p, id) in &want {
            if self.watched.contains_key(p) {
                continue;
            }
            match w.watch(p, notify::RecursiveMode::Recursive) {
                Ok(()) => {
                    self.watched.insert(p.clone(), id.clone());
                    if let Some(rt) = sh.folder_rt(id) {
                        rt.unwatched.store(false, Ordering::SeqCst);
                        // What changed before the watch was there is found
                        // by a full scan after it.
                        rt.poke(true);
                    }
                }
                Err(e) => {
                    let limit = matches!(e.kind, notify::ErrorKind::MaxFilesWatch);
                    if limit {
                        warn!("folder {id}: {}", limit_hint());
                    } else {
                        warn!(
                            "folder {id}: cannot watch {} ({e}); it is rescanned every {}s instead",
                            p.display(),
                            UNWATCHED_RESCAN.as_secs()
                        );
                    }
                    if let Some(rt) = sh.folder_rt(id) {
                        rt.unwatched.store(true, Ordering::SeqCst);
                    }
                }
            }
        }
    }
}

fn file_stamp(p: &Path) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Runs the daemon of the config directory `dir` until SIGINT or SIGTERM.
pub async fn run(dir: &Path) -> Result<(), DaemonError> {
    let me = crate::identity::load(dir)?;
    let cfg = Config::load(dir, me.id)?;
    let allowed: tls::Allowed = Arc::default();
    let refused: tls::Refused = Arc::default();
    let server_tls = tls::server_config(&me, allowed.clone(), refused.clone())?;
    let listener = tokio::net::TcpListener::bind(&cfg.device.listen)
        .await
        .map_err(|e| DaemonError::Listen {
            addr: cfg.device.listen.clone(),
            source: e,
        })?;
    let api = tokio::net::TcpListener::bind(&cfg.device.api)
        .await
        .map_err(|e| DaemonError::Listen {
            addr: cfg.device.api.clone(),
            source: e,
        })?;
    let api_addr = api.local_addr().map_err(|e| DaemonError::Listen {
        addr: cfg.device.api.clone(),
        source: e,
    })?;
    let token = status::token(dir)?;
    crate::identity::write_atomic(
        &dir.join(status::ADDR_FILE),
        api_addr.to_string().as_bytes(),
        false,
    )?;
    let board = Board::default();
    board.set_device(status::DeviceStatus {
        name: cfg.device.name.clone(),
        id: me.id.to_string(),
        listen: cfg.device.listen.clone(),
        started_ms: status::now_ms(),
        refused: Vec::new(),
    });
    let sh = Arc::new(Shared {
        dir: dir.to_path_buf(),
        me,
        cfg: RwLock::new(Arc::new(cfg.clone())),
        allowed,
        refused,
        folders: Mutex::new(HashMap::new()),
        board: board.clone(),
        rt: Handle::current(),
        stopping: AtomicBool::new(false),
    });
    info!(
        "weave daemon {} ({}) listening on {}, status API on {}",
        sh.cfg().device.name,
        sh.me.id,
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        api_addr
    );
    let mut watcher = Watcher::new(&sh);
    apply_config(&sh, cfg, &mut watcher);
    {
        let sh = sh.clone();
        let roots = Arc::new(move || {
            let cfg = sh.cfg();
            cfg.folders
                .iter()
                .map(|f| (f.id.clone(), f.path.clone(), cfg.subfolders(f)))
                .collect::<Vec<_>>()
        });
        tokio::spawn(status::serve(api, board.clone(), token, roots));
    }
    {
        let sh = sh.clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(server_tls);
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((s, _)) => {
                        tokio::spawn(accept(sh.clone(), acceptor.clone(), s));
                    }
                    Err(e) => {
                        warn!("accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }
    // Bytes to go, for the board, while syncs run.
    {
        let sh = sh.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let folders = sh.all_folders();
                for rt in folders {
                    let total = rt.bytes_total.load(Ordering::Relaxed);
                    let done = rt.bytes_done.load(Ordering::Relaxed);
                    if total > 0 {
                        sh.board.folder(&rt.id, |s| {
                            s.bytes_to_go = total.saturating_sub(done);
                        });
                    }
                }
            }
        });
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| DaemonError::Usage(format!("cannot handle SIGTERM: {e}")))?;
    let cfg_path = Config::path(&sh.dir);
    let mut stamp = file_stamp(&cfg_path);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = tokio::time::sleep(CONFIG_POLL) => {
                let now = file_stamp(&cfg_path);
                if now != stamp {
                    stamp = now;
                    match Config::load(&sh.dir, sh.me.id) {
                        Ok(c) if c != *sh.cfg() => {
                            info!("the config changed; following it");
                            apply_config(&sh, c, &mut watcher);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            warn!("the config changed but cannot be used, so the old one stays: {e}");
                            sh.board.error(None, None, e.to_string());
                        }
                    }
                }
            }
        }
    }
    info!("stopping: letting syncs under way finish");
    sh.stopping.store(true, Ordering::SeqCst);
    let folders = sh.all_folders();
    for rt in &folders {
        rt.stopped.store(true, Ordering::SeqCst);
        rt.wake.notify_one();
    }
    let wait = async {
        for rt in &folders {
            let _g = rt.lock.lock().await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .is_err()
    {
        warn!("a sync did not finish in 30s; stopping anyway (a rerun resumes it)");
    }
    let _ = std::fs::remove_file(sh.dir.join(status::ADDR_FILE));
    info!("stopped");
    Ok(())
}
