//! weave-daemon: weave's live mode.
//!
//! - [`id`]: device ids, short strings derived from a device's public key;
//! - [`identity`]: this device's key and self-signed certificate;
//! - [`config`]: the config file (peers, folders) and its checks;
//! - [`tls`]: TLS 1.3 in both directions, each side pinned by device id;
//! - [`daemon`]: the running daemon — peers, folders, the watcher, syncs;
//! - [`status`]: the local status API and its client;
//! - `touched`: what the watcher saw change, and when it is ready to scan;
//! - `root`: a folder root's identity (a root made again is another one).

pub mod config;
pub mod daemon;
mod guard;
pub mod id;
pub mod identity;
mod root;
pub mod status;
pub mod tls;
mod touched;

pub use config::{Config, Folder, Mode, Peer};
pub use id::DeviceId;

use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error(
        "{0} has no weave identity yet; run `weave init` first (or give the right --config-dir)"
    )]
    NotInitialised(PathBuf),
    #[error("{0} already holds a weave identity; `weave id` prints its device id (a new identity would be a new device to every peer)")]
    AlreadyInitialised(PathBuf),
    #[error("the identity file {0} is damaged ({1}); restore it from a backup, or move the config directory away and run `weave init` for a new device id")]
    BadIdentity(PathBuf, String),
    #[error("{path}: {problem}")]
    BadConfig {
        path: PathBuf,
        problem: config::ConfigProblem,
    },
    /// (`why` is in the message, not a source: the CLI prints an error's
    /// sources after it, and would say it twice.)
    #[error("cannot {what} {path}: {why}")]
    Io {
        path: PathBuf,
        what: String,
        why: std::io::Error,
    },
    #[error("cryptography: {0}")]
    Crypto(String),
    #[error("cannot listen on {addr}: {why}; is another daemon running, or is the port taken? (change it with `listen` in the config)")]
    Listen { addr: String, why: std::io::Error },
    #[error("peer {peer}: {problem}")]
    Peer {
        peer: String,
        problem: Box<daemon::PeerProblem>,
    },
    #[error("{}", already_running(dir, *pid))]
    AlreadyRunning { dir: PathBuf, pid: Option<u32> },
    #[error("cannot handle SIGTERM: {0}")]
    Signal(std::io::Error),
    #[error("no weave daemon has run with the config directory {}; start one with `weave daemon`", .0.display())]
    NoDaemon(PathBuf),
    #[error("the weave daemon of {} does not answer at {addr} ({why}); is it running? Start it with `weave daemon`", .dir.display())]
    NotAnswering {
        dir: PathBuf,
        addr: String,
        why: ureq::Error,
    },
    /// The daemon did not do what was asked; its words.
    #[error("{0}")]
    Refused(String),
    /// A sync went through but for some paths.
    #[error("the sync with {peer} left {failed} path(s) not done (the first: {first}); it is tried again by itself, after 1 s doubling to a minute, until it goes through")]
    Incomplete {
        peer: String,
        failed: usize,
        first: String,
        /// The folder's sequence number after the sync (what went through
        /// is there for the other peers).
        seq: u64,
    },
    /// The peer has no folder of that id shared with this device.
    #[error("{peer} does not share folder {folder:?} with this device (yet); on {peer}, add it with `weave folder add {folder} PATH --peer NAME` (NAME: this device, as {peer} names it). Syncs with {peer} are tried again by themselves")]
    NotShared { peer: String, folder: String },
    /// The folder is paused on the peer.
    #[error("folder {folder:?} is paused on {peer}; it syncs again once resumed there")]
    PausedThere { peer: String, folder: String },
    /// The peer keeps the folder encrypted only: it is untrusted with it.
    #[error("{peer} keeps folder {folder:?} encrypted only (it is receive-encrypted there, untrusted with it); nothing was sent. Mark it untrusted here: `weave folder share {folder} {peer} --untrusted` (the folder then needs a passphrase: `--passphrase-file` or WEAVE_PASSPHRASE)")]
    EncryptedOnly { peer: String, folder: String },
    /// The config changed during a check: the folder is no longer synced
    /// in clear with the peer.
    #[error("folder {folder:?} is no longer synced in clear with {peer} (the config now has it untrusted, or the folder not shared with it); nothing more was sent")]
    NoLongerInClear { peer: String, folder: String },
    #[error(transparent)]
    Sync(#[from] weave_engine::SyncError),
}

/// The message of [`DaemonError::AlreadyRunning`].
fn already_running(dir: &std::path::Path, pid: Option<u32>) -> String {
    let dir = dir.display();
    match pid {
        Some(pid) => format!("another weave daemon (pid {pid}) is already running on the config directory {dir}; stop it first (`kill {pid}`) or give this one another --config-dir"),
        None => format!("another weave daemon is already running on the config directory {dir} (its PID is not in {dir}/{} yet); stop it first or give this one another --config-dir", daemon::LOCK_FILE),
    }
}

/// `$XDG_CONFIG_HOME/weave`, or `~/.config/weave`.
pub fn default_config_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return Some(PathBuf::from(x).join("weave"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config").join("weave"))
}
