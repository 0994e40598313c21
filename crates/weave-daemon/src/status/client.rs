//! The client side: `weave status` asks the running daemon.

use super::{token, Status, ADDR_FILE};
use crate::DaemonError;
use std::path::Path;

/// Asks the daemon of the config directory `dir` for its status.
pub fn fetch(dir: &Path) -> Result<Status, DaemonError> {
    let addr = std::fs::read_to_string(dir.join(ADDR_FILE))
        .map_err(|_| DaemonError::NoDaemon(dir.to_path_buf()))?;
    let addr = addr.trim();
    let token = token(dir)?;
    let url = format!("http://{addr}/v1/status");
    let not_running = |why: ureq::Error| DaemonError::NotAnswering {
        dir: dir.to_path_buf(),
        addr: addr.to_string(),
        why,
    };
    let mut resp = ureq::get(&url)
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .map_err(not_running)?;
    resp.body_mut().read_json::<Status>().map_err(not_running)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_daemon_the_client_says_how_to_start_one() {
        let d = tempfile::tempdir().unwrap();
        let e = fetch(d.path()).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "no weave daemon has run with the config directory {}; start one with `weave daemon`",
                d.path().display()
            )
        );
        std::fs::write(d.path().join(ADDR_FILE), "127.0.0.1:9\n").unwrap();
        let e = fetch(d.path()).unwrap_err().to_string();
        let start = format!(
            "the weave daemon of {} does not answer at 127.0.0.1:9 (",
            d.path().display()
        );
        assert!(e.starts_with(&start), "{e}");
        assert!(
            e.ends_with("); is it running? Start it with `weave daemon`"),
            "{e}"
        );
    }
}
