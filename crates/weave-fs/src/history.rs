//! Old versions of a replica's files: listing them, restoring them, and
//! pruning the store (see `weave_store`).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};
use weave_core::path::STATE_DIR;
use weave_engine::SyncError;
use weave_store::{Reason, Store, ToSave, Version};

pub use weave_store::{now_ns, retention, Policy, Pruned, Version as StoredVersion};

/// A path inside a replica: the replica's root and the path relative to it
/// ("" for the root itself).
#[derive(Debug, Clone)]
pub struct Located {
    pub root: PathBuf,
    pub rel: String,
}

/// Finds the replica that holds `path` (which need not exist any more):
/// the nearest ancestor with a `.weave` state directory.
pub fn locate(path: &Path) -> Result<Located, SyncError> {
    let abs = std::path::absolute(path).map_err(|e| {
        SyncError::Usage(format!("{}: cannot resolve the path: {e}", path.display()))
    })?;
    // The deepest part that exists, canonical; the rest is kept as given.
    let mut existing = abs.clone();
    let mut rest: Vec<String> = Vec::new();
    while fs::symlink_metadata(&existing).is_err() {
        match (existing.file_name(), existing.parent()) {
            (Some(n), Some(p)) => {
                rest.push(n.to_string_lossy().into_owned());
                existing = p.to_path_buf();
            }
            _ => break,
        }
    }
    let mut dir = fs::canonicalize(&existing).unwrap_or(existing);
    rest.reverse();
    loop {
        if dir.join(STATE_DIR).join("index.redb").is_file() {
            let rel: Vec<String> = rest
                .into_iter()
                .filter(|c| !c.is_empty() && c != ".")
                .collect();
            if rel.iter().any(|c| c == ".." || c == STATE_DIR) {
                return Err(SyncError::Usage(format!(
                    "{}: give the path without '..' and outside .weave",
                    path.display()
                )));
            }
            return Ok(Located {
                root: dir,
                rel: rel.join("/"),
            });
        }
        match (dir.file_name(), dir.parent()) {
            (Some(n), Some(p)) => {
                rest.insert(0, n.to_string_lossy().into_owned());
                dir = p.to_path_buf();
            }
            _ => {
                return Err(SyncError::Usage(format!(
                    "{} is not inside a weave replica (no .weave directory above it). Give a path inside a directory that `weave sync` has synced.",
                    path.display()
                )))
            }
        }
    }
}

fn store_of(root: &Path) -> Result<Option<Store>, SyncError> {
    Store::open_existing(&root.join(STATE_DIR)).map_err(|e| SyncError::State {
        path: root.join(STATE_DIR),
        problem: e.to_string(),
    })
}

fn store_err(root: &Path, e: weave_store::StoreError) -> SyncError {
    SyncError::State {
        path: root.join(STATE_DIR),
        problem: e.to_string(),
    }
}

/// The versions of one path, oldest first (empty if it has none).
pub fn history(at: &Located) -> Result<Vec<Version>, SyncError> {
    match store_of(&at.root)? {
        None => Ok(Vec::new()),
        Some(s) => s.versions(&at.rel).map_err(|e| store_err(&at.root, e)),
    }
}

/// Paths under `at` that have versions and are not on disk now, each with
/// its newest version.
pub fn deleted(at: &Located) -> Result<Vec<Version>, SyncError> {
    let Some(s) = store_of(&at.root)? else {
        return Ok(Vec::new());
    };
    let all = s
        .versions_under(&at.rel)
        .map_err(|e| store_err(&at.root, e))?;
    let mut newest: BTreeMap<String, Version> = BTreeMap::new();
    for v in all {
        newest.insert(v.path.clone(), v);
    }
    Ok(newest
        .into_values()
        .filter(|v| fs::symlink_metadata(crate::join(&at.root, &v.path)).is_err())
        .collect())
}

/// Which version to restore.
#[derive(Debug, Clone, Copy)]
pub enum Pick {
    /// The newest (for a directory: the tree as it was just before its
    /// newest saved change).
    Latest,
    /// What the path held at this time (ns since the epoch).
    At(i64),
    Version(u64),
}

/// One file a restore wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Restored {
    pub path: String,
    pub version: u64,
    pub to: PathBuf,
    pub size: u64,
}

/// Restores `at` (a file, or a directory's tree) as chosen by `pick`,
/// into the replica (a new local change, synced by the next sync) or under
/// `to`. A file in the replica that a restore replaces is saved as a
/// version first.
pub fn restore(at: &Located, pick: Pick, to: Option<&Path>) -> Result<Vec<Restored>, SyncError> {
    let shown = crate::join(&at.root, &at.rel).display().to_string();
    let store = store_of(&at.root)?.ok_or_else(|| {
        SyncError::Usage(format!(
            "{shown}: this replica has no old versions yet (they are kept when a sync replaces or deletes a file)"
        ))
    })?;
    let own = store
        .versions(&at.rel)
        .map_err(|e| store_err(&at.root, e))?;
    let under = if own.is_empty() {
        store
            .versions_under(&at.rel)
            .map_err(|e| store_err(&at.root, e))?
    } else {
        Vec::new()
    };
    let chosen: Vec<Version> = match pick {
        Pick::Version(id) => {
            let v = store
                .get(id)
                .map_err(|e| store_err(&at.root, e))?
                .ok_or_else(|| {
                    SyncError::Usage(format!(
                        "{shown}: there is no version {id} (see `weave history {shown}`)"
                    ))
                })?;
            let inside = v.path == at.rel
                || at.rel.is_empty()
                || v.path.starts_with(&format!("{}/", at.rel));
            if !inside {
                return Err(SyncError::Usage(format!(
                    "version {id} is of {}, not of {shown}",
                    crate::join(&at.root, &v.path).display()
                )));
            }
            vec![v]
        }
        _ if own.is_empty() && under.is_empty() => {
            return Err(SyncError::Usage(format!(
                "{shown}: no old versions of this path (see `weave history --deleted` for what can be restored)"
            )))
        }
        Pick::Latest if !own.is_empty() => vec![own.last().expect("not empty").clone()],
        Pick::At(t) if !own.is_empty() => vec![at_time(&own, t, &shown)?],
        Pick::Latest => {
            // The tree just before its newest saved change.
            let t = under.iter().map(|v| v.saved_at_ns).max().expect("not empty") - 1;
            tree_at(&under, t)
        }
        Pick::At(t) => {
            let oldest = under.iter().map(|v| v.mtime_ns).min().expect("not empty");
            if t < oldest {
                return Err(SyncError::Usage(format!(
                    "{shown}: {} is before its oldest version (from {})",
                    format_time(t),
                    format_time(oldest)
                )));
            }
            let picked = tree_at(&under, t);
            if picked.is_empty() {
                return Err(SyncError::Usage(format!(
                    "{shown}: nothing under it changed after {}, so what it held then is what it holds now",
                    format_time(t)
                )));
            }
            picked
        }
    };
    let mut out = Vec::new();
    for v in &chosen {
        let dest = match to {
            Some(d) if chosen.len() == 1 && own.iter().any(|o| o.id == v.id) => d.to_path_buf(),
            Some(d) => {
                let sub = v.path.strip_prefix(&at.rel).unwrap_or(&v.path);
                crate::join(d, sub.trim_start_matches('/'))
            }
            None => crate::join(&at.root, &v.path),
        };
        if to.is_some() && fs::symlink_metadata(&dest).is_ok() {
            return Err(SyncError::Usage(format!(
                "{}: already exists; give --to a path that does not exist yet",
                dest.display()
            )));
        }
        if to.is_none() {
            if let Some(skip) = save_current(&store, &at.root, v, &dest)? {
                if skip {
                    continue;
                }
            }
        }
        write_version(&store, v, &dest).map_err(|problem| SyncError::State {
            path: dest.clone(),
            problem,
        })?;
        out.push(Restored {
            path: v.path.clone(),
            version: v.id,
            to: dest,
            size: v.size,
        });
    }
    Ok(out)
}

/// The version of a file current at `t`: the first one saved after it.
fn at_time(own: &[Version], t: i64, shown: &str) -> Result<Version, SyncError> {
    let oldest = own.iter().map(|v| v.mtime_ns).min().expect("not empty");
    if t < oldest {
        return Err(SyncError::Usage(format!(
            "{shown}: {} is before its oldest version (from {})",
            format_time(t),
            format_time(oldest)
        )));
    }
    own.iter()
        .find(|v| v.saved_at_ns > t)
        .cloned()
        .ok_or_else(|| {
            SyncError::Usage(format!(
                "{shown}: it did not change after {}, so what it held then is what it holds now",
                format_time(t)
            ))
        })
}

/// For each path, the version current at `t` (saved after it, made before).
fn tree_at(vs: &[Version], t: i64) -> Vec<Version> {
    let mut by: BTreeMap<&str, &Version> = BTreeMap::new();
    for v in vs.iter().filter(|v| v.saved_at_ns > t && v.mtime_ns <= t) {
        by.entry(&v.path).or_insert(v);
    }
    by.into_values().cloned().collect()
}

/// Before a restore replaces a file in the replica: Some(true) if it
/// already holds the version (nothing to do); otherwise its content is
/// saved as a version first (Some(false)), or there is none (None).
fn save_current(
    store: &Store,
    root: &Path,
    v: &Version,
    dest: &Path,
) -> Result<Option<bool>, SyncError> {
    let meta = match fs::symlink_metadata(dest) {
        Ok(m) => m,
        Err(_) => return Ok(None),
    };
    if !meta.is_file() {
        return Err(SyncError::Usage(format!(
            "{}: is not a file now; move it away first",
            dest.display()
        )));
    }
    let list = File::open(dest)
        .and_then(weave_chunk::chunk_reader)
        .map_err(|e| SyncError::State {
            path: dest.to_path_buf(),
            problem: format!("cannot read: {e}"),
        })?;
    if list.content_id() == v.content {
        return Ok(Some(true));
    }
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let id = weave_index::Index::id_at(&root.join(STATE_DIR));
    let r = store
        .save(&[ToSave {
            path: &v.path,
            file: dest,
            chunks: &list,
            mode: meta.permissions().mode() & 0o7777,
            mtime_ns: mtime,
            origin: id,
            reason: Reason::Restored,
            trusted: false,
            movable: false,
        }])
        .map_err(|e| store_err(root, e))?;
    match r.into_iter().next() {
        Some(Ok(_)) => Ok(Some(false)),
        Some(Err(m)) => Err(SyncError::State {
            path: dest.to_path_buf(),
            problem: format!("changed while it was being saved ({m}); try again"),
        }),
        None => Ok(Some(false)),
    }
}

/// Writes `v` at `dest` atomically and durably: a temporary file next to
/// it, flushed, renamed over it.
fn write_version(store: &Store, v: &Version, dest: &Path) -> Result<(), String> {
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // A name the next scan recognises: a leftover of a killed restore is
    // removed like any interrupted write.
    let temp = dir.join(crate::temp_name());
    let result = (|| {
        let f = File::options()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| format!("cannot create a temporary file: {e}"))?;
        store.read_into(v, &f, &|_| {}).map_err(|e| e.to_string())?;
        f.set_permissions(fs::Permissions::from_mode(v.mode & 0o7777))
            .map_err(|e| format!("cannot set permissions: {e}"))?;
        let mtime = UNIX_EPOCH + Duration::from_nanos(v.mtime_ns.max(0) as u64);
        f.set_times(fs::FileTimes::new().set_modified(mtime))
            .map_err(|e| format!("cannot set mtime: {e}"))?;
        f.sync_all().map_err(|e| format!("cannot flush: {e}"))?;
        fs::rename(&temp, dest).map_err(|e| format!("cannot rename into place: {e}"))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("cannot flush the directory: {e}"))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Prunes the store of the replica at `root` now.
pub fn gc(root: &Path) -> Result<Option<Pruned>, SyncError> {
    match store_of(root)? {
        None => Ok(None),
        Some(s) => s.prune(now_ns()).map(Some).map_err(|e| store_err(root, e)),
    }
}

/// The retention policy of the replica at `root`; with `set`, replaces it.
pub fn policy(root: &Path, set: Option<&Policy>) -> Result<Policy, SyncError> {
    let s = Store::open(&root.join(STATE_DIR)).map_err(|e| store_err(root, e))?;
    if let Some(p) = set {
        s.set_policy(p).map_err(|e| store_err(root, e))?;
    }
    s.policy().map_err(|e| store_err(root, e))
}

/// Damaged chunks of the store and the versions they affect.
pub fn check(root: &Path) -> Result<Vec<weave_store::Damage>, SyncError> {
    match store_of(root)? {
        None => Ok(Vec::new()),
        Some(s) => s.check().map_err(|e| store_err(root, e)),
    }
}

/// Bytes the store takes.
pub fn store_size(root: &Path) -> Result<u64, SyncError> {
    Ok(store_of(root)?.map(|s| s.disk_usage()).unwrap_or(0))
}

/// "2026-11-21 09:30:05 UTC".
pub fn format_time(ns: i64) -> String {
    let fmt =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
        .ok()
        .and_then(|t| t.format(fmt).ok())
        .unwrap_or_else(|| format!("{ns} ns"))
}

/// Parses a time given to `--at`: "2026-11-21 09:30\[:05\]" or
/// "2026-11-21T09:30:05Z" (UTC), or an age such as "90m", "2h", "3d"
/// (that long ago).
pub fn parse_time(s: &str, now: i64) -> Option<i64> {
    if let Some(age) = retention::parse_duration(s) {
        return Some(now - age);
    }
    let s = s.trim().trim_end_matches(" UTC").trim_end_matches('Z');
    let s = s.replacen('T', " ", 1);
    let s = if s.len() == 16 { format!("{s}:00") } else { s };
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let t = time::PrimitiveDateTime::parse(&s, fmt).ok()?.assume_utc();
    i64::try_from(t.unix_timestamp_nanos()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_and_print() {
        let t = parse_time("2026-11-21 09:30:05", 0).unwrap();
        assert_eq!(format_time(t), "2026-11-21 09:30:05 UTC");
        assert_eq!(parse_time("2026-11-21T09:30:05Z", 0), Some(t));
        assert_eq!(parse_time("2026-11-21 09:30", 0), Some(t - 5_000_000_000));
        assert_eq!(parse_time("2h", t), Some(t - 2 * retention::HOUR));
        assert_eq!(parse_time("yesterday", t), None);
    }
}
