//! What the daemon is doing, for people and scripts: a board the daemon
//! keeps up to date, served as JSON by a local API (axum on 127.0.0.1,
//! every request carrying the token from the config directory), and the
//! client `weave status` / `weave conflicts` use.

use crate::DaemonError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const TOKEN_FILE: &str = "api-token";
pub const ADDR_FILE: &str = "api-address";
const RECENT: usize = 100;
const ERRORS: usize = 50;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Status {
    pub device: DeviceStatus,
    pub folders: Vec<FolderStatus>,
    pub peers: Vec<PeerStatus>,
    /// Latest first.
    pub recent: Vec<Change>,
    /// Latest first.
    pub errors: Vec<ErrorEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct DeviceStatus {
    pub name: String,
    pub id: String,
    pub listen: String,
    pub started_ms: u64,
    /// Devices refused lately because they are no peer of this one.
    pub refused: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct FolderStatus {
    pub id: String,
    pub path: String,
    pub mode: String,
    /// idle, scanning, syncing or error.
    pub state: String,
    /// How much of what the folder's peers hold this device has, as far as
    /// the last syncs tell (100 when every peer's last sync succeeded).
    pub in_sync_percent: f64,
    /// Bytes the sync under way still has to copy.
    pub bytes_to_go: u64,
    pub peers: Vec<String>,
    /// Peers this folder is in sync with (their last sync succeeded and
    /// nothing changed here since).
    pub in_sync_with: Vec<String>,
    pub last_sync_ms: Option<u64>,
    pub error: Option<String>,
    pub conflicts: Vec<String>,
    /// Changes this folder did not take or send (send-only divergence,
    /// paths of sub-folders), from its last sync.
    pub notices: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct PeerStatus {
    pub name: String,
    pub id: String,
    pub addresses: Vec<String>,
    /// connected (its last session worked), disconnected or unknown.
    pub state: String,
    pub address: Option<String>,
    pub last_seen_ms: Option<u64>,
    pub last_error: Option<String>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Bytes per second in and out during its last session.
    pub rate_in: u64,
    pub rate_out: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Change {
    pub time_ms: u64,
    pub folder: String,
    pub path: String,
    /// created, updated, deleted, conflict
    pub action: String,
    /// The peer of the sync that brought or took the change.
    pub peer: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorEntry {
    pub time_ms: u64,
    pub folder: Option<String>,
    pub peer: Option<String>,
    pub message: String,
}

/// The board: the daemon writes, the API reads.
#[derive(Clone, Default)]
pub struct Board {
    inner: Arc<Mutex<BoardInner>>,
}

#[derive(Default)]
struct BoardInner {
    device: DeviceStatus,
    folders: BTreeMap<String, FolderStatus>,
    peers: BTreeMap<String, PeerStatus>,
    recent: VecDeque<Change>,
    errors: VecDeque<ErrorEntry>,
}

impl Board {
    pub fn set_device(&self, d: DeviceStatus) {
        self.inner.lock().expect("board").device = d;
    }

    pub fn refused(&self, ids: Vec<String>) {
        self.inner.lock().expect("board").device.refused = ids;
    }

    /// Keeps the folders and peers of the config, dropping the others.
    pub fn configure(&self, cfg: &crate::Config) {
        let mut b = self.inner.lock().expect("board");
        b.device.name = cfg.device.name.clone();
        b.device.listen = cfg.device.listen.clone();
        b.folders.retain(|id, _| cfg.folder(id).is_some());
        for f in &cfg.folders {
            let s = b
                .folders
                .entry(f.id.clone())
                .or_insert_with(|| FolderStatus {
                    id: f.id.clone(),
                    state: "idle".into(),
                    ..Default::default()
                });
            s.path = f.path.display().to_string();
            s.mode = f.mode.to_string();
            s.peers = f.peers.clone();
            s.in_sync_with.retain(|p| f.peers.contains(p));
        }
        b.peers.retain(|n, _| cfg.peer(n).is_some());
        for p in &cfg.peers {
            let s = b.peers.entry(p.name.clone()).or_insert_with(|| PeerStatus {
                name: p.name.clone(),
                state: "unknown".into(),
                ..Default::default()
            });
            s.id = p.id.to_string();
            s.addresses = p.addresses.clone();
        }
    }

    pub fn folder(&self, id: &str, f: impl FnOnce(&mut FolderStatus)) {
        if let Some(s) = self.inner.lock().expect("board").folders.get_mut(id) {
            f(s)
        }
    }

    pub fn peer(&self, name: &str, f: impl FnOnce(&mut PeerStatus)) {
        if let Some(s) = self.inner.lock().expect("board").peers.get_mut(name) {
            f(s)
        }
    }

    pub fn change(&self, c: Change) {
        let mut b = self.inner.lock().expect("board");
        b.recent.push_front(c);
        b.recent.truncate(RECENT);
    }

    pub fn error(&self, folder: Option<&str>, peer: Option<&str>, message: String) {
        let mut b = self.inner.lock().expect("board");
        b.errors.push_front(ErrorEntry {
            time_ms: now_ms(),
            folder: folder.map(str::to_string),
            peer: peer.map(str::to_string),
            message,
        });
        b.errors.truncate(ERRORS);
    }

    pub fn snapshot(&self) -> Status {
        let b = self.inner.lock().expect("board");
        Status {
            device: b.device.clone(),
            folders: b.folders.values().cloned().collect(),
            peers: b.peers.values().cloned().collect(),
            recent: b.recent.iter().cloned().collect(),
            errors: b.errors.iter().cloned().collect(),
        }
    }
}

/// The conflict copies under `root` (relative paths, sorted), leaving out
/// weave's state and the sub-folders in `skip`.
pub fn conflicts_in(root: &Path, skip: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    let mut budget = 1_000_000usize;
    while let Some((dir, rel)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            budget = budget.saturating_sub(1);
            if budget == 0 {
                return out;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if name == ".weave" {
                continue;
            }
            let r = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if skip.contains(&r) {
                continue;
            }
            if weave_core::path::is_conflict_name(&r) {
                out.push(r.clone());
            }
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push((e.path(), r));
            }
        }
    }
    out.sort();
    out
}

/// The token the API wants, made on first use (readable by this user only).
pub fn token(dir: &Path) -> Result<String, DaemonError> {
    let p = dir.join(TOKEN_FILE);
    if let Ok(t) = std::fs::read_to_string(&p) {
        let t = t.trim().to_string();
        if t.len() >= 16 {
            return Ok(t);
        }
    }
    let t: String = (0..32)
        .map(|_| format!("{:x}", rand::random::<u8>() & 15))
        .collect();
    crate::identity::write_atomic(&p, t.as_bytes(), true)?;
    Ok(t)
}

/// The folders whose conflict copies the API lists: (id, root, the
/// sub-folders to leave out).
pub type Roots = Arc<dyn Fn() -> Vec<(String, PathBuf, Vec<String>)> + Send + Sync>;

/// Serves the board on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, board: Board, token: String, roots: Roots) {
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::get;
    use axum::Json;
    #[derive(Clone)]
    struct St {
        board: Board,
        token: Arc<String>,
        roots: Roots,
    }
    fn authorised(st: &St, h: &HeaderMap) -> Result<(), StatusCode> {
        let want = format!("Bearer {}", st.token);
        match h.get("authorization").and_then(|v| v.to_str().ok()) {
            Some(v) if v == want => Ok(()),
            _ => Err(StatusCode::UNAUTHORIZED),
        }
    }
    async fn status(
        axum::extract::State(st): axum::extract::State<St>,
        h: HeaderMap,
    ) -> Result<Json<Status>, StatusCode> {
        authorised(&st, &h)?;
        let mut s = st.board.snapshot();
        let roots = (st.roots)();
        let found = tokio::task::spawn_blocking(move || {
            roots
                .into_iter()
                .map(|(id, root, skip)| (id, conflicts_in(&root, &skip)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (id, c) in found {
            if let Some(f) = s.folders.iter_mut().find(|f| f.id == id) {
                f.conflicts = c;
            }
        }
        Ok(Json(s))
    }
    let st = St {
        board,
        token: Arc::new(token),
        roots,
    };
    let app = axum::Router::new()
        .route("/v1/status", get(status))
        .with_state(st);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("the status API stopped: {e}");
    }
}

/// Asks the daemon of the config directory `dir` for its status.
pub fn fetch(dir: &Path) -> Result<Status, DaemonError> {
    let addr = std::fs::read_to_string(dir.join(ADDR_FILE)).map_err(|_| {
        DaemonError::Usage(format!(
            "no weave daemon has run with the config directory {}; start one with `weave daemon`",
            dir.display()
        ))
    })?;
    let token = token(dir)?;
    let url = format!("http://{}/v1/status", addr.trim());
    let not_running = |e: String| {
        DaemonError::Usage(format!(
            "the weave daemon of {} does not answer at {} ({e}); is it running? Start it with `weave daemon`",
            dir.display(),
            addr.trim()
        ))
    };
    let mut resp = ureq::get(&url)
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .map_err(|e| not_running(e.to_string()))?;
    resp.body_mut()
        .read_json::<Status>()
        .map_err(|e| not_running(e.to_string()))
}
