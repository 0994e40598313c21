//! One daemon per config directory: an advisory lock (`flock`) on
//! `daemon.lock` there, held as long as the daemon runs. The kernel
//! releases it when the process ends however it ends (SIGKILL included),
//! so a file left behind never blocks the next daemon. The file holds the
//! running daemon's PID, for the message a second daemon gives.

use crate::DaemonError;
use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

/// The lock file in the config directory.
pub const LOCK_FILE: &str = "daemon.lock";

/// The lock, held until it is dropped (or the process ends).
#[derive(Debug)]
pub struct Instance {
    _file: File,
}

/// Takes the config directory's lock, or says which daemon holds it.
pub fn lock(dir: &Path) -> Result<Instance, DaemonError> {
    let path = dir.join(LOCK_FILE);
    let io = |what: &str, why: std::io::Error| DaemonError::Io {
        path: path.clone(),
        what: what.into(),
        why,
    };
    // Not truncated on open: the file holds the running daemon's PID
    // until the lock is ours.
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io("open", e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(DaemonError::AlreadyRunning {
                dir: dir.to_path_buf(),
                pid: text.trim().parse().ok(),
            });
        }
        Err(TryLockError::Error(e)) => return Err(io("lock", e)),
    }
    file.set_len(0).map_err(|e| io("write", e))?;
    file.rewind().map_err(|e| io("write", e))?;
    write!(file, "{}", std::process::id()).map_err(|e| io("write", e))?;
    file.flush().map_err(|e| io("write", e))?;
    Ok(Instance { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_a_dropped_one_frees_the_directory() {
        let d = tempfile::tempdir().unwrap();
        let held = lock(d.path()).unwrap();
        let pid = std::process::id();
        assert_eq!(
            std::fs::read_to_string(d.path().join(LOCK_FILE)).unwrap(),
            pid.to_string()
        );
        // flock locks belong to the open file: a second open in this
        // process is refused as another process would be.
        let e = lock(d.path()).unwrap_err();
        assert!(
            matches!(e, DaemonError::AlreadyRunning { pid: Some(p), .. } if p == pid),
            "{e}"
        );
        let said = e.to_string();
        assert!(said.contains(&format!("pid {pid}")), "{said}");
        assert!(said.contains(&format!("kill {pid}")), "{said}");
        assert!(said.contains("--config-dir"), "{said}");
        drop(held);
        // The file is still there; it does not block.
        assert!(d.path().join(LOCK_FILE).exists());
        let _again = lock(d.path()).unwrap();
    }
}
