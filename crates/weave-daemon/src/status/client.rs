//! The client side: `weave status` asks the running daemon.

use super::{token, Status, ADDR_FILE};
use crate::DaemonError;
use std::path::Path;

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
