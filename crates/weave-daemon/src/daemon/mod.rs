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
//!   change (each with its subtree), see `touched.rs`; a full scan
//!   runs at the start, when the watch is set up, on a config change, on
//!   the rescan interval and when the watcher lost events. A changed
//!   folder is scanned on its own first, peers or not: its sequence number
//!   then says which peers need a sync.
//! - **Echoes.** Files weave wrote itself are in the index as written, so
//!   the watcher's events for them find nothing new: the folder's sequence
//!   number stays, and no peer is contacted for them.
//!
//! The code, by concern: `shared` (what the tasks share: the config, each
//! folder's runtime state), `open` (a folder's replica, behind its rules),
//! `conn` (dialling a peer, accepting one, sessions over TLS), `pair` (a
//! pair sync this device runs, and its report), `folder` (a folder's task
//! and its check), `actions` (what a user asks of a folder: revert,
//! override), `host` (serving folders to peers), `link` (one lasting
//! connection per peer), `watcher` (the file-system watcher, and folder
//! roots removed and made again), `reload` (following the config file),
//! `backoff` (the wait after a failure) and `instance` (one daemon per
//! config directory).

// Log lines keep the target they had when the daemon was one file
// (`weave_daemon::daemon`), whichever module writes them.
macro_rules! debug {
    ($($t:tt)*) => { tracing::debug!(target: "weave_daemon::daemon", $($t)*) };
}
macro_rules! info {
    ($($t:tt)*) => { tracing::info!(target: "weave_daemon::daemon", $($t)*) };
}
macro_rules! warn {
    ($($t:tt)*) => { tracing::warn!(target: "weave_daemon::daemon", $($t)*) };
}

mod actions;
mod backoff;
mod conn;
mod discovery;
mod folder;
mod host;
mod instance;
mod link;
mod meter;
mod notices;
mod open;
mod pair;
mod reload;
mod remote;
mod shared;
mod watcher;

pub use conn::{DialError, PeerProblem};
pub use instance::LOCK_FILE;

use crate::config::Config;
use crate::status::{self, Board};
use crate::{tls, DaemonError};
use shared::Shared;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use watcher::Watcher;

/// Runs the daemon of the config directory `dir` until SIGINT or SIGTERM.
pub async fn run(dir: &Path) -> Result<(), DaemonError> {
    let me = crate::identity::load(dir)?;
    let cfg = Config::load(dir, me.id)?;
    // Held until the daemon ends: a second daemon on `dir` is refused.
    let _instance = instance::lock(dir)?;
    // From here on SIGTERM and SIGINT stop the daemon cleanly (one before
    // the handlers are in place would kill it outright).
    let stop_on = {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
        let int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
        (term, int)
    };
    let allowed: tls::Allowed = Arc::default();
    let refused: tls::Refused = Arc::default();
    let server_tls = tls::server_config(&me, allowed.clone(), refused.clone())?;
    let listener = bind(&cfg.device.listen).await?;
    let api = bind(&cfg.device.api).await?;
    let api_addr = api.local_addr().map_err(|e| DaemonError::Listen {
        addr: cfg.device.api.clone(),
        why: e,
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
        unshared_asks: Vec::new(),
        discovery: None,
    });
    let sh = Arc::new(Shared {
        dir: dir.to_path_buf(),
        me,
        cfg: RwLock::new(Arc::new(cfg.clone())),
        allowed,
        refused,
        folders: Mutex::new(HashMap::new()),
        links: Mutex::new(HashMap::new()),
        dialing: Mutex::new(HashMap::new()),
        board,
        seen: Mutex::new(Default::default()),
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
    reload::apply_config(&sh, cfg, &mut watcher);
    serve_api(&sh, api, token);
    let acceptor = tokio_rustls::TlsAcceptor::from(server_tls);
    let listen_port = listener.local_addr().map_or(0, |a| a.port());
    tokio::spawn(host::listen(sh.clone(), listener, acceptor));
    let announce = sh.cfg().device.discovery;
    if announce != 0 {
        tokio::spawn(discovery::run(sh.clone(), announce, listen_port));
    }
    tokio::spawn(meter::show_progress(sh.clone()));
    tokio::spawn(meter::show_rates(sh.clone()));
    reload::follow_config(&sh, &mut watcher, stop_on).await;
    stop(&sh).await;
    Ok(())
}

/// Listens on `addr` (host:port).
async fn bind(addr: &str) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| DaemonError::Listen {
            addr: addr.to_string(),
            why: e,
        })
}

/// Serves the status API on `api`: the board, the conflict copies of the
/// folders configured at the time of each request, and what users ask of
/// a folder (done by its task).
fn serve_api(sh: &Arc<Shared>, api: TcpListener, token: String) {
    let board = sh.board.clone();
    let sh_act = sh.clone();
    let sh = sh.clone();
    let roots = Arc::new(move || {
        let cfg = sh.cfg();
        cfg.folders
            .iter()
            .map(|f| (f.id.clone(), f.path.clone(), cfg.subfolders(f)))
            .collect::<Vec<_>>()
    });
    let (dir, me) = (sh_act.dir.clone(), sh_act.me.id);
    let sh = sh_act;
    let act: status::Act = Arc::new(move |id: String, action| {
        let sh = sh.clone();
        Box::pin(async move { actions::ask(&sh, &id, action).await })
    });
    let pause: status::Pause =
        Arc::new(
            move |what, paused| match crate::config::set_paused(&dir, me, &what, paused) {
                Ok(said) => status::Answer::ok(said),
                Err(e) => status::Answer::refused(e.to_string()),
            },
        );
    tokio::spawn(status::serve(api, board, token, roots, act, pause));
}

/// Stops every folder, letting the syncs under way finish (for 30 s at
/// the most).
async fn stop(sh: &Shared) {
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
}
