//! The client side: `weave status`, `weave folder revert` and `weave
//! folder override` ask the running daemon.

use super::{token, Answer, FolderAction, Status, ADDR_FILE};
use crate::DaemonError;
use std::path::Path;

/// The address of the API of the daemon of config directory `dir`, and
/// its token.
fn api(dir: &Path) -> Result<(String, String), DaemonError> {
    let addr = std::fs::read_to_string(dir.join(ADDR_FILE))
        .map_err(|_| DaemonError::NoDaemon(dir.to_path_buf()))?;
    Ok((addr.trim().to_string(), token(dir)?))
}

/// The error for a daemon that does not answer at `addr`.
fn not_answering(dir: &Path, addr: &str) -> impl Fn(ureq::Error) -> DaemonError {
    let (dir, addr) = (dir.to_path_buf(), addr.to_string());
    move |why| DaemonError::NotAnswering {
        dir: dir.clone(),
        addr: addr.clone(),
        why,
    }
}

/// Asks the daemon of the config directory `dir` for its status.
pub fn fetch(dir: &Path) -> Result<Status, DaemonError> {
    let (addr, token) = api(dir)?;
    let not_running = not_answering(dir, &addr);
    let mut resp = ureq::get(&format!("http://{addr}/v1/status"))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .map_err(&not_running)?;
    resp.body_mut().read_json::<Status>().map_err(not_running)
}

/// Asks the daemon of the config directory `dir` to do `action` to
/// folder `id`, and waits until it is done. Returns what it did.
pub fn act(dir: &Path, id: &str, action: FolderAction) -> Result<String, DaemonError> {
    let (addr, token) = api(dir)?;
    let not_running = not_answering(dir, &addr);
    // The id goes in the path: it is checked to be one component.
    crate::config::check_folder_id(id)
        .map_err(|problem| DaemonError::Refused(problem.to_string()))?;
    let url = format!("http://{addr}/v1/folders/{id}/{}", action.as_str());
    let mut resp = ureq::post(&url)
        .header("Authorization", &format!("Bearer {token}"))
        .send_empty()
        .map_err(&not_running)?;
    let answer = resp.body_mut().read_json::<Answer>().map_err(not_running)?;
    if answer.done {
        Ok(answer.message)
    } else {
        Err(DaemonError::Refused(answer.message))
    }
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
