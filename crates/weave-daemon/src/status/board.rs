//! The board: what the daemon is doing (its device, folders, peers,
//! recent changes and errors), kept up to date by the daemon and read by
//! the API.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

const RECENT: usize = 100;
const ERRORS: usize = 50;

/// Milliseconds since the Unix epoch, the board's clock.
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
