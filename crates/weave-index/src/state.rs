//! A replica's directory on this machine and its state directory
//! (`.weave`): the checks before anything is created there, and the kind
//! of replica recorded in it.

use std::path::{Path, PathBuf};
use thiserror::Error;
use weave_core::path::STATE_DIR;

/// A replica directory (or its state) that cannot be used as it is.
#[derive(Debug, Error)]
pub enum StateError {
    #[error("replica {path}: {problem}. {fix}")]
    BadReplica {
        path: String,
        problem: String,
        fix: String,
    },
    /// The replicas given do not make a sync (the same one twice, one
    /// inside another).
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {problem}")]
    Unusable { path: PathBuf, problem: String },
}

/// Checks the directories of a sync's replicas on this machine: they
/// exist, are directories, are distinct, none is inside another, and their
/// state directory is not something else. Returns their canonical forms.
pub fn check_local_replicas(paths: &[PathBuf]) -> Result<Vec<PathBuf>, StateError> {
    let mut canon = Vec::new();
    for p in paths {
        let shown = p.display().to_string();
        let meta = std::fs::metadata(p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StateError::BadReplica {
                    path: shown.clone(),
                    problem: "no such directory".into(),
                    fix: format!("Check the path, or create it first: mkdir -p {shown}"),
                }
            } else {
                StateError::BadReplica {
                    path: shown.clone(),
                    problem: format!("cannot be read ({e})"),
                    fix: "Check the path and its permissions.".into(),
                }
            }
        })?;
        if !meta.is_dir() {
            return Err(StateError::BadReplica {
                path: shown,
                problem: "is not a directory".into(),
                fix:
                    "A replica is a directory tree; give the directory that holds the file instead."
                        .into(),
            });
        }
        let c = std::fs::canonicalize(p).map_err(|e| StateError::BadReplica {
            path: shown.clone(),
            problem: format!("cannot be resolved ({e})"),
            fix: "Check the path and its permissions.".into(),
        })?;
        let state = c.join(STATE_DIR);
        if let Ok(m) = std::fs::symlink_metadata(&state) {
            if !m.is_dir() {
                return Err(StateError::BadReplica {
                    path: shown,
                    problem: format!("{} is not a directory", state.display()),
                    fix: format!(
                        "weave keeps its state there; move that file aside (mv {0} {0}.old).",
                        state.display()
                    ),
                });
            }
        }
        canon.push(c);
    }
    for i in 0..canon.len() {
        for j in 0..canon.len() {
            if i == j {
                continue;
            }
            let (a, b) = (&canon[i], &canon[j]);
            if a == b && i < j {
                return Err(StateError::Usage(format!(
                    "{} and {} are the same directory; give each replica once",
                    paths[i].display(),
                    paths[j].display()
                )));
            }
            if a != b && a.starts_with(b) {
                return Err(StateError::Usage(format!(
                    "{} is inside {}; a replica cannot contain another one (sync sibling directories instead)",
                    paths[i].display(),
                    paths[j].display()
                )));
            }
        }
    }
    Ok(canon)
}

/// The file in a replica's state directory that names its kind (absent:
/// files, which is what every replica made before kinds existed is).
pub const KIND_FILE: &str = "kind";

/// Checks that the replica whose state is in `state_dir` (shown as
/// `display`) is of kind `kind`, and records the kind of a new one
/// (unless `dry_run`), so that a store of one kind is never synced as
/// another (a key/value store's database as a file, say).
pub fn claim_kind(
    state_dir: &Path,
    kind: &str,
    display: &str,
    dry_run: bool,
) -> Result<(), StateError> {
    let file = state_dir.join(KIND_FILE);
    let has_index = state_dir.join(crate::INDEX_FILE).exists();
    let recorded = match std::fs::read_to_string(&file) {
        Ok(s) => Some(s.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(StateError::Unusable {
                path: file,
                problem: format!("cannot be read ({e})"),
            })
        }
    };
    let is = match (&recorded, has_index) {
        (Some(k), _) => k.clone(),
        (None, true) => "files".to_string(),
        (None, false) => {
            if !dry_run && kind != "files" {
                std::fs::create_dir_all(state_dir)
                    .and_then(|()| std::fs::write(&file, format!("{kind}\n")))
                    .map_err(|e| StateError::Unusable {
                        path: file.clone(),
                        problem: format!("cannot be written ({e})"),
                    })?;
            }
            return Ok(());
        }
    };
    if is != kind {
        let flag = if is == "files" {
            "without --kind".to_string()
        } else {
            format!("with --kind {is}")
        };
        return Err(StateError::BadReplica {
            path: display.to_string(),
            problem: format!("is a replica of kind {is}, not {kind}"),
            fix: format!("Sync it {flag}, or give another replica."),
        });
    }
    Ok(())
}
