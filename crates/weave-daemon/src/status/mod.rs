//! What the daemon is doing, for people and scripts: a board the daemon
//! keeps up to date (`board`), served as JSON by a local API (`api`:
//! axum on 127.0.0.1, every request carrying the token from the config
//! directory), and the client `weave status` and `weave folder revert`
//! / `override` use (`client`). The API
//! and `weave conflicts` find conflict copies with [`conflicts_in`].

mod api;
mod board;
mod client;
mod events;

pub use api::{serve, Act, Answer, FolderAction, Pause, Roots};
pub use board::{
    now_ms, Board, Change, DeviceStatus, DiscoveryStatus, ErrorEntry, FolderState, FolderStatus,
    PeerState, PeerStatus, Status, UnsharedAsk,
};
pub use client::{act, fetch};

use crate::DaemonError;
use std::path::Path;

/// The file in the config directory holding the API's token.
pub const TOKEN_FILE: &str = "api-token";
/// The file in the config directory holding the API's address, written
/// by the daemon.
pub const ADDR_FILE: &str = "api-address";

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
