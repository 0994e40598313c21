//! Directory modes. A run that creates, renames or removes entries in
//! directories their owner cannot write opens them up first, having
//! recorded their modes in `.weave/unlocked`; new directories are made
//! writable by their owner. At the end every directory gets its final
//! mode, deepest first: the planned ones, then the original ones of those
//! opened up. [`restore_modes`] gives back their modes to the directories
//! an interrupted run left open.

use super::{ApplyOutcome, Ctx};
use crate::util::{join, FsIssue};
use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use weave_core::path::{depth, STATE_DIR};
use weave_core::{Op, OpKind};

/// Where the modes of directories opened up for a run are recorded.
const UNLOCKED_FILE: &str = "unlocked";

/// The record of the directories opened up for a run at `root`.
fn unlocked_file(root: &Path) -> PathBuf {
    root.join(STATE_DIR).join(UNLOCKED_FILE)
}

/// The directory at `rel` (the root if empty).
fn dir_path(root: &Path, rel: &str) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        join(root, rel)
    }
}

/// Whether `path` is a directory (not a symlink to one).
fn is_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_dir())
}

fn record_unlocked(root: &Path, dirs: &[(String, u32)]) -> std::io::Result<()> {
    let mut text = String::new();
    for (p, mode) in dirs {
        text.push_str(&format!("{mode:o}\t{p}\n"));
    }
    let path = unlocked_file(root);
    let mut f = File::create(&path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Gives back their modes to directories an interrupted run had opened up
/// (written by the executor before it changes any mode). Call before
/// scanning, so the scanner never takes weave's own chmod for a change.
pub fn restore_modes(root: &Path) {
    let path = unlocked_file(root);
    let Ok(text) = fs::read_to_string(&path) else {
        return;
    };
    for line in text.lines() {
        let Some((mode, p)) = line.split_once('\t') else {
            continue;
        };
        let Ok(mode) = u32::from_str_radix(mode, 8) else {
            continue;
        };
        if !p.is_empty() && weave_core::path::validate(p).is_err() {
            continue;
        }
        let ancestors_real = weave_core::path::ancestors(p).all(|a| is_dir(&join(root, a)));
        let full = dir_path(root, p);
        let is_dir = is_dir(&full);
        if ancestors_real && is_dir {
            let _ = fs::set_permissions(&full, fs::Permissions::from_mode(mode & 0o7777));
        }
    }
    let _ = fs::remove_file(&path);
}

impl Ctx<'_> {
    /// Gives the owner write permission on the existing directories that
    /// this run creates, renames or removes entries in. Returns their
    /// original modes, to be restored at the end.
    pub(super) fn unlock_parents(&self, ops: &[Op]) -> Vec<(String, u32)> {
        let mut parents: HashSet<&str> = HashSet::new();
        for o in ops {
            if !matches!(o.kind, OpKind::Record | OpKind::SetMeta) {
                parents.insert(weave_core::path::parent(&o.path).unwrap_or(""));
            }
        }
        let mut todo: Vec<(String, u32)> = Vec::new();
        for p in parents {
            // Never through a symlink: only directories inside the replica.
            if !p.is_empty() && self.check_parents(p).is_err() {
                continue;
            }
            let Ok(m) = fs::symlink_metadata(dir_path(self.root, p)) else {
                continue;
            };
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_dir() && mode & 0o200 == 0 {
                todo.push((p.to_string(), mode));
            }
        }
        if todo.is_empty() {
            return todo;
        }
        // Recorded first, so an interrupted run is repaired by the next one
        // (see [`restore_modes`]) instead of leaving directories writable.
        if record_unlocked(self.root, &todo).is_err() {
            return Vec::new();
        }
        let mut locked = Vec::new();
        for (p, mode) in todo {
            let full = dir_path(self.root, &p);
            if fs::set_permissions(&full, fs::Permissions::from_mode(mode | 0o700)).is_ok() {
                locked.push((p, mode));
            }
        }
        locked
    }

    /// Sets the directory modes last, deepest first: the planned ones
    /// (`final_modes`), then the original ones of directories opened up
    /// for this run (`locked`); then forgets the record of those.
    pub(super) fn settle_modes(
        &self,
        mut final_modes: Vec<(String, u32)>,
        locked: Vec<(String, u32)>,
        out: &mut ApplyOutcome,
    ) {
        let planned: HashSet<String> = final_modes.iter().map(|m| m.0.clone()).collect();
        final_modes.extend(locked.into_iter().filter(|(p, _)| !planned.contains(p)));
        final_modes.sort_by_key(|m| std::cmp::Reverse(depth(&m.0)));
        for (p, mode) in final_modes {
            // Never through a symlink (a path may have become one meanwhile).
            if !p.is_empty() && self.check_parents(&p).is_err() {
                continue;
            }
            let full = dir_path(self.root, &p);
            if !is_dir(&full) {
                continue;
            }
            if let Err(e) = fs::set_permissions(&full, fs::Permissions::from_mode(mode)) {
                out.issues
                    .push(FsIssue::new(full, format!("cannot set permissions: {e}")));
            }
        }
        let _ = fs::remove_file(unlocked_file(self.root));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Modes recorded before a run opened directories up are restored by
    /// the next run if the first was interrupted.
    #[test]
    fn modes_of_an_interrupted_run_are_restored() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join(STATE_DIR)).unwrap();
        fs::create_dir_all(root.join("ro/sub")).unwrap();
        fs::set_permissions(root.join("ro/sub"), fs::Permissions::from_mode(0o2555)).unwrap();
        record_unlocked(root, &[("ro/sub".into(), 0o2555), ("gone".into(), 0o500)]).unwrap();
        // The interrupted run had opened it up.
        fs::set_permissions(root.join("ro/sub"), fs::Permissions::from_mode(0o2755)).unwrap();
        restore_modes(root);
        let mode = fs::metadata(root.join("ro/sub"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(mode, 0o2555);
        assert!(!root.join(STATE_DIR).join(UNLOCKED_FILE).exists());
    }
}
