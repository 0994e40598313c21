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
    /// Folders peers asked for that this device does not share with them
    /// (each once, latest first; gone once it does).
    #[serde(default)]
    pub unshared_asks: Vec<UnsharedAsk>,
    /// LAN discovery, when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryStatus>,
}

/// What LAN discovery did: announcements sent and heard, and packets it
/// dropped (malformed, or over its rate).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiscoveryStatus {
    pub port: u16,
    pub sent: u64,
    pub received: u64,
    pub malformed: u64,
    pub dropped: u64,
}

/// A peer asked for a folder this device does not share with it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnsharedAsk {
    pub peer: String,
    pub folder: String,
    pub time_ms: u64,
}

/// How many asks the board keeps.
const ASKS: usize = 20;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct FolderStatus {
    pub id: String,
    pub path: String,
    pub mode: String,
    pub state: FolderState,
    /// How much of what the folder's peers hold this device has, as far as
    /// the last syncs tell (100 when every peer's last sync succeeded).
    pub in_sync_percent: f64,
    /// Bytes the sync under way still has to copy (into this folder or
    /// out of it).
    pub bytes_to_go: u64,
    /// Bytes per second it copies at, over the last few seconds.
    #[serde(default)]
    pub rate: u64,
    /// Seconds left at that rate (none while it is not known).
    #[serde(default)]
    pub eta_secs: Option<u64>,
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
    /// Receive-only: how many paths were changed here and are kept (not
    /// sent, no peer's version taken) until `weave folder revert`.
    #[serde(default)]
    pub local_changes: u64,
    /// The first of those paths (up to 100), sorted.
    #[serde(default)]
    pub local_change_paths: Vec<String>,
    /// Device name → the short id of its replica of this folder, as the
    /// syncs this device ran learnt them: what a conflict copy's name
    /// carries (`NAME.weave-conflict-STAMP-ID.EXT`) to say whose version
    /// lost.
    #[serde(default)]
    pub replicas: std::collections::BTreeMap<String, String>,
    /// Its bucket remote, if it has one, and when a sync with one of its
    /// encrypted remotes (the bucket, untrusted peers) last went through.
    #[serde(default)]
    pub remote: Option<String>,
    #[serde(default)]
    pub remote_synced_ms: Option<u64>,
    /// The peers that keep it encrypted only (not counted in `peers`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub untrusted: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct PeerStatus {
    pub name: String,
    pub id: String,
    pub addresses: Vec<String>,
    pub state: PeerState,
    pub address: Option<String>,
    pub last_seen_ms: Option<u64>,
    pub last_error: Option<String>,
    /// Bytes sent to it and received from it, over every link since the
    /// daemon started (all folders, both directions of every sync).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Bytes per second in and out over the last few seconds (0 while it
    /// is not connected).
    pub rate_in: u64,
    pub rate_out: u64,
    /// Syncs this device began with it since the daemon started (the
    /// syncs it began with this device are not counted).
    #[serde(default)]
    pub syncs_started: u64,
}

/// What a folder is doing (in JSON: idle, scanning, syncing or error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FolderState {
    /// Waiting for a change.
    #[default]
    Idle,
    /// Looking at what changed on disk.
    Scanning,
    /// A pair sync is under way.
    Syncing,
    /// Its last scan or sync failed (the folder's `error` says why).
    Error,
    /// Paused: not scanned, synced or served until resumed.
    Paused,
}

/// How a peer's last session went (in JSON: connected, disconnected or
/// unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// No session with it yet.
    #[default]
    Unknown,
    /// Its last session worked.
    Connected,
    /// It could not be reached.
    Disconnected,
    /// Paused here: not dialled, its connections refused.
    Paused,
}

impl FolderState {
    pub fn as_str(self) -> &'static str {
        match self {
            FolderState::Idle => "idle",
            FolderState::Scanning => "scanning",
            FolderState::Syncing => "syncing",
            FolderState::Error => "error",
            FolderState::Paused => "paused",
        }
    }
}

impl PeerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Unknown => "unknown",
            PeerState::Connected => "connected",
            PeerState::Disconnected => "disconnected",
            PeerState::Paused => "paused",
        }
    }
}

impl std::fmt::Display for FolderState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for PeerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// The device that made the change: its name when this device knows
    /// its replica of the folder, else `replica ID` (the short id in
    /// conflict copies' names).
    #[serde(default)]
    pub by: String,
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

    pub fn discovery(&self, d: DiscoveryStatus) {
        self.inner.lock().expect("board").device.discovery = Some(d);
    }

    pub fn refused(&self, ids: Vec<String>) {
        self.inner.lock().expect("board").device.refused = ids;
    }

    /// Peer `peer` asked for folder `folder`, not shared with it here.
    pub fn unshared_ask(&self, peer: &str, folder: &str) {
        let mut b = self.inner.lock().expect("board");
        let asks = &mut b.device.unshared_asks;
        asks.retain(|a| !(a.peer == peer && a.folder == folder));
        asks.insert(
            0,
            UnsharedAsk {
                peer: peer.to_string(),
                folder: folder.to_string(),
                time_ms: now_ms(),
            },
        );
        asks.truncate(ASKS);
    }

    /// Keeps the folders and peers of the config, dropping the others.
    pub fn configure(&self, cfg: &crate::Config) {
        let mut b = self.inner.lock().expect("board");
        b.device.name = cfg.device.name.clone();
        b.device.listen = cfg.device.listen.clone();
        b.device.unshared_asks.retain(|a| {
            cfg.peer(&a.peer).is_some()
                && cfg
                    .folder(&a.folder)
                    .is_none_or(|f| !f.peers.contains(&a.peer))
        });
        b.folders.retain(|id, _| cfg.folder(id).is_some());
        for f in &cfg.folders {
            let s = b
                .folders
                .entry(f.id.clone())
                .or_insert_with(|| FolderStatus {
                    id: f.id.clone(),
                    state: FolderState::Idle,
                    ..Default::default()
                });
            s.path = f.path.display().to_string();
            s.mode = f.mode.to_string();
            // The peers it syncs with in clear: what "in sync" counts.
            s.peers = f
                .peers
                .iter()
                .filter(|p| !f.untrusted.contains(p))
                .cloned()
                .collect();
            s.untrusted = f.untrusted.clone();
            s.in_sync_with.retain(|p| s.peers.contains(p));
        }
        b.peers.retain(|n, _| cfg.peer(n).is_some());
        for p in &cfg.peers {
            let s = b.peers.entry(p.name.clone()).or_insert_with(|| PeerStatus {
                name: p.name.clone(),
                state: PeerState::Unknown,
                ..Default::default()
            });
            s.id = p.id.to_string();
            s.addresses = p.addresses.clone();
            if p.paused {
                s.state = PeerState::Paused;
            } else if s.state == PeerState::Paused {
                s.state = PeerState::Unknown;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_the_same_words_in_json_and_in_text() {
        let folder = [
            (FolderState::Idle, "idle"),
            (FolderState::Scanning, "scanning"),
            (FolderState::Syncing, "syncing"),
            (FolderState::Error, "error"),
            (FolderState::Paused, "paused"),
        ];
        for (s, word) in folder {
            assert_eq!(serde_json::to_value(s).unwrap(), word);
            assert_eq!(
                serde_json::from_value::<FolderState>(word.into()).unwrap(),
                s
            );
            assert_eq!(s.to_string(), word);
        }
        let peer = [
            (PeerState::Unknown, "unknown"),
            (PeerState::Connected, "connected"),
            (PeerState::Disconnected, "disconnected"),
        ];
        for (s, word) in peer {
            assert_eq!(serde_json::to_value(s).unwrap(), word);
            assert_eq!(serde_json::from_value::<PeerState>(word.into()).unwrap(), s);
            assert_eq!(s.to_string(), word);
        }
    }
}
