//! The daemon's state while it runs: the config, the peers it accepts,
//! and each folder's runtime state.

use super::actions::Request;
use super::backoff::Backoff;
use super::open::Taken;
use crate::config::Config;
use crate::id::DeviceId;
use crate::identity::Identity;
use crate::status::Board;
use crate::tls;
use crate::touched::Touched;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::runtime::Handle;
use tokio::sync::Notify;

/// Held while a peer is dialled: when its last dial failed, at which
/// addresses, and why.
pub(super) type DialGate = Arc<Mutex<Option<(std::time::Instant, Vec<String>, String)>>>;

/// What the daemon's tasks share.
pub(super) struct Shared {
    pub(super) dir: PathBuf,
    pub(super) me: Identity,
    pub(super) cfg: RwLock<Arc<Config>>,
    pub(super) allowed: tls::Allowed,
    pub(super) refused: tls::Refused,
    pub(super) folders: Mutex<HashMap<String, Arc<FolderRt>>>,
    /// The lasting link to each peer that is up (see `link.rs`).
    pub(super) links: Mutex<HashMap<DeviceId, Arc<super::link::Link>>>,
    /// Held while a link to the peer is dialled.
    /// (and when the last dial failed, and why: the syncs that waited
    /// for it take that answer rather than dial again).
    pub(super) dialing: Mutex<HashMap<DeviceId, DialGate>>,
    pub(super) board: Board,
    /// What LAN discovery has heard.
    pub(super) seen: Mutex<super::discovery::Seen>,
    pub(super) rt: Handle,
    pub(super) stopping: AtomicBool,
}

/// A folder while the daemon runs.
pub(super) struct FolderRt {
    pub(super) id: String,
    /// Its replica is open in one sync at a time.
    pub(super) lock: Arc<tokio::sync::Mutex<()>>,
    pub(super) wake: Notify,
    /// Something may have changed on disk: the next check scans.
    pub(super) dirty: AtomicBool,
    /// What the next scan looks at.
    pub(super) touched: Touched,
    /// The next check syncs with every peer (the ignore file changed).
    pub(super) resync: AtomicBool,
    /// The next sync that has something to do plans every path (after
    /// the periodic rescan).
    pub(super) full_plan: AtomicBool,
    /// After a scan of the folder failed: when to try again, and the wait.
    pub(super) scan_retry: Mutex<Option<Backoff>>,
    /// A watcher batch is being gathered.
    pub(super) gathering: AtomicBool,
    /// The folder's sequence number after its last sync with each peer.
    pub(super) synced: Mutex<HashMap<DeviceId, u64>>,
    /// Peers to leave alone until then (after failures).
    pub(super) backoff: Mutex<HashMap<DeviceId, Backoff>>,
    /// What the last session served for each peer left not done (shown
    /// as the folder's error until that peer's next session goes through).
    pub(super) served_failed: Mutex<HashMap<DeviceId, String>>,
    /// The watcher could not watch it: rescan often.
    pub(super) unwatched: AtomicBool,
    pub(super) stopped: AtomicBool,
    pub(super) bytes_total: AtomicU64,
    pub(super) bytes_done: AtomicU64,
    /// What users asked of the folder (revert, override), for its task.
    pub(super) asked: Mutex<Vec<Request>>,
    /// What its syncs did not take or send, shown in its status.
    pub(super) notices: Mutex<super::notices::Notices>,
    /// How in sync it showed itself before the sync under way moved
    /// bytes (shown again when that sync ends).
    pub(super) in_sync_before: Mutex<Option<f64>>,
    /// Where it is with each of its encrypted remotes.
    pub(super) remote: Mutex<super::remote::Remotes>,
}

impl FolderRt {
    pub(super) fn new(id: &str) -> FolderRt {
        FolderRt {
            id: id.to_string(),
            lock: Arc::new(tokio::sync::Mutex::new(())),
            wake: Notify::new(),
            dirty: AtomicBool::new(true),
            touched: Touched::new(),
            resync: AtomicBool::new(false),
            full_plan: AtomicBool::new(false),
            scan_retry: Mutex::new(None),
            gathering: AtomicBool::new(false),
            synced: Mutex::new(HashMap::new()),
            backoff: Mutex::new(HashMap::new()),
            served_failed: Mutex::new(HashMap::new()),
            unwatched: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            bytes_total: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            asked: Mutex::new(Vec::new()),
            notices: Mutex::new(Default::default()),
            in_sync_before: Mutex::new(None),
            remote: Mutex::new(Default::default()),
        }
    }

    /// Gives back what a scan that did not happen took.
    pub(super) fn give_back(&self, taken: Taken) {
        self.touched.untake(taken);
        self.dirty.store(true, Ordering::SeqCst);
    }

    /// Wakes the folder's loop; `rescan`: after a full scan.
    pub(super) fn poke(&self, rescan: bool) {
        if rescan {
            self.touched.everything();
            self.dirty.store(true, Ordering::SeqCst);
        }
        self.wake.notify_one();
    }
}

impl Shared {
    pub(super) fn cfg(&self) -> Arc<Config> {
        self.cfg.read().expect("config").clone()
    }

    pub(super) fn all_folders(&self) -> Vec<Arc<FolderRt>> {
        self.folders
            .lock()
            .expect("folders")
            .values()
            .cloned()
            .collect()
    }

    pub(super) fn folder_rt(&self, id: &str) -> Option<Arc<FolderRt>> {
        self.folders.lock().expect("folders").get(id).cloned()
    }
}
