//! Old versions of a replica's files as `weave history`, `restore`, `gc`
//! and `retention` see them: finding the replica a path is in, listing
//! versions (and deleted files), restoring a file or a tree, pruning,
//! checking, and the retention policy.

use crate::{now_ns, retention, Damage, Policy, Pruned, ReadError, Reason, Store, StoreError};
use crate::{ToSave, Version};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};
use weave_core::path::{join, temp_name, STATE_DIR};

/// What went wrong with a history request. The message says what to do;
/// `path` is where, as the user would see it.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{path}: cannot resolve the path: {error}")]
    Unresolvable {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: give the path without '..' and outside .weave")]
    BadPath { path: PathBuf },
    #[error("{path} is not inside a weave replica (no .weave directory above it). Give a path inside a directory that `weave sync` has synced.")]
    NotInReplica { path: PathBuf },
    #[error("{path}: this replica has no old versions yet (they are kept when a sync replaces or deletes a file)")]
    NoStore { path: PathBuf },
    #[error("{path}: there is no version {id} (see `weave history {path}`)")]
    NoSuchVersion { path: PathBuf, id: u64 },
    /// Version `id` is of the path `of`, which is not `path` nor under it.
    #[error("version {id} is of {of}, not of {path}")]
    VersionOfAnother { id: u64, of: PathBuf, path: PathBuf },
    #[error("{path}: no old versions of this path (see `weave history --deleted` for what can be restored)")]
    NoVersions { path: PathBuf },
    #[error("{path}: {} is before its oldest version (from {})", time(.at), time(.oldest))]
    BeforeOldest { path: PathBuf, at: i64, oldest: i64 },
    #[error("{path}: it did not change after {}, so what it held then is what it holds now", time(.at))]
    Unchanged { path: PathBuf, at: i64 },
    #[error("{path}: nothing under it changed after {}, so what it held then is what it holds now", time(.at))]
    NothingUnderChanged { path: PathBuf, at: i64 },
    /// A restore `--to` a path that is there.
    #[error("{path}: already exists; give --to a path that does not exist yet")]
    Exists { path: PathBuf },
    /// A restore in place over something that is not a file.
    #[error("{path}: is not a file now; move it away first")]
    NotAFile { path: PathBuf },
    /// The store of the replica whose state directory is `state` failed.
    #[error("{state}: {error}")]
    Store { state: PathBuf, error: StoreError },
    /// The file a restore replaces could not be read (to save it first).
    #[error("{path}: cannot read: {error}")]
    Unreadable {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: changed while it was being saved ({why}); try again")]
    ChangedWhileSaved {
        path: PathBuf,
        why: crate::save::NotSaved,
    },
    /// The version to restore could not be read back.
    #[error("{path}: {error}")]
    Read { path: PathBuf, error: ReadError },
    /// Restoring at `path` failed at step `what`.
    #[error("{path}: {what}: {error}")]
    Write {
        path: PathBuf,
        what: String,
        error: std::io::Error,
    },
}

fn time(ns: &i64) -> String {
    format_time(*ns)
}

/// [`HistoryError::Store`] of the replica at `root`.
fn in_store(root: &Path) -> impl Fn(StoreError) -> HistoryError + '_ {
    move |error| HistoryError::Store {
        state: root.join(STATE_DIR),
        error,
    }
}

/// A path inside a replica: the replica's root and the path relative to it
/// ("" for the root itself).
#[derive(Debug, Clone)]
pub struct Located {
    pub root: PathBuf,
    pub rel: String,
}

/// Finds the replica that holds `path` (which need not exist any more):
/// the nearest ancestor with a `.weave` state directory.
pub fn locate(path: &Path) -> Result<Located, HistoryError> {
    let abs = std::path::absolute(path).map_err(|error| HistoryError::Unresolvable {
        path: path.to_path_buf(),
        error,
    })?;
    let (mut dir, mut rest) = existing_part(abs);
    loop {
        if dir.join(STATE_DIR).join("index.redb").is_file() {
            let rel: Vec<String> = rest
                .into_iter()
                .filter(|c| !c.is_empty() && c != ".")
                .collect();
            if rel.iter().any(|c| c == ".." || c == STATE_DIR) {
                return Err(HistoryError::BadPath {
                    path: path.to_path_buf(),
                });
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
                return Err(HistoryError::NotInReplica {
                    path: path.to_path_buf(),
                })
            }
        }
    }
}

/// The deepest part of `abs` that exists, canonical, and the components
/// after it, as given.
fn existing_part(abs: PathBuf) -> (PathBuf, Vec<String>) {
    let mut existing = abs;
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
    rest.reverse();
    (fs::canonicalize(&existing).unwrap_or(existing), rest)
}

fn store_of(root: &Path) -> Result<Option<Store>, HistoryError> {
    Store::open_existing(&root.join(STATE_DIR)).map_err(in_store(root))
}

/// The versions of one path, oldest first (empty if it has none).
pub fn history(at: &Located) -> Result<Vec<Version>, HistoryError> {
    match store_of(&at.root)? {
        None => Ok(Vec::new()),
        Some(s) => s.versions(&at.rel).map_err(in_store(&at.root)),
    }
}

/// Paths under `at` that have versions and are not on disk now, each with
/// its newest version.
pub fn deleted(at: &Located) -> Result<Vec<Version>, HistoryError> {
    let Some(s) = store_of(&at.root)? else {
        return Ok(Vec::new());
    };
    let all = s.versions_under(&at.rel).map_err(in_store(&at.root))?;
    let mut newest: BTreeMap<String, Version> = BTreeMap::new();
    for v in all {
        newest.insert(v.path.clone(), v);
    }
    Ok(newest
        .into_values()
        .filter(|v| fs::symlink_metadata(join(&at.root, &v.path)).is_err())
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

/// What a restore does to each file it writes before it is put in place
/// (given the new file, the version it holds, and where it goes): the
/// caller's way to give it the owner and extended attributes the version
/// kept (or, for a version saved without them, those of the file it
/// replaces).
pub type Finish<'a> = &'a dyn Fn(&File, &Version, &Path) -> std::io::Result<()>;

/// Restores `at` (a file, or a directory's tree) as chosen by `pick`,
/// into the replica (a new local change, synced by the next sync) or under
/// `to`. A file in the replica that a restore replaces is saved as a
/// version first. Each file written goes through `finish`.
pub fn restore(
    at: &Located,
    pick: Pick,
    to: Option<&Path>,
    finish: Finish,
) -> Result<Vec<Restored>, HistoryError> {
    let shown = join(&at.root, &at.rel);
    let store = store_of(&at.root)?.ok_or_else(|| HistoryError::NoStore {
        path: shown.clone(),
    })?;
    let own = store.versions(&at.rel).map_err(in_store(&at.root))?;
    let under = if own.is_empty() {
        store.versions_under(&at.rel).map_err(in_store(&at.root))?
    } else {
        Vec::new()
    };
    let chosen = choose(&store, at, pick, &own, &under, &shown)?;
    let mut out = Vec::new();
    for v in &chosen {
        // A file's own version restored `--to` goes to that path itself.
        let whole = chosen.len() == 1 && own.iter().any(|o| o.id == v.id);
        let dest = destination(at, v, to, whole);
        if let Some(r) = restore_one(&store, &at.root, v, dest, to.is_some(), finish)? {
            out.push(r);
        }
    }
    Ok(out)
}

/// The versions `pick` chooses: of the path itself (`own`), or of the
/// tree under it (`under`, when it has none of its own).
fn choose(
    store: &Store,
    at: &Located,
    pick: Pick,
    own: &[Version],
    under: &[Version],
    shown: &Path,
) -> Result<Vec<Version>, HistoryError> {
    Ok(match pick {
        Pick::Version(id) => {
            let v = store.get(id).map_err(in_store(&at.root))?.ok_or_else(|| {
                HistoryError::NoSuchVersion {
                    path: shown.to_path_buf(),
                    id,
                }
            })?;
            if !is_at_or_under(&v.path, &at.rel) {
                return Err(HistoryError::VersionOfAnother {
                    id,
                    of: join(&at.root, &v.path),
                    path: shown.to_path_buf(),
                });
            }
            vec![v]
        }
        _ if own.is_empty() && under.is_empty() => {
            return Err(HistoryError::NoVersions {
                path: shown.to_path_buf(),
            })
        }
        Pick::Latest if !own.is_empty() => vec![own.last().expect("not empty").clone()],
        Pick::At(t) if !own.is_empty() => vec![at_time(own, t, shown)?],
        Pick::Latest => {
            // The tree just before its newest saved change.
            let t = under
                .iter()
                .map(|v| v.saved_at_ns)
                .max()
                .expect("not empty")
                - 1;
            tree_at(under, t)
        }
        Pick::At(t) => {
            check_not_before(under, t, shown)?;
            let picked = tree_at(under, t);
            if picked.is_empty() {
                return Err(HistoryError::NothingUnderChanged {
                    path: shown.to_path_buf(),
                    at: t,
                });
            }
            picked
        }
    })
}

/// True if `path` is `rel` or under it ("" is the whole replica).
fn is_at_or_under(path: &str, rel: &str) -> bool {
    path == rel || rel.is_empty() || path.starts_with(&format!("{rel}/"))
}

/// Where version `v` of a path at or under `at` is restored: in the
/// replica, or under `to` (at `to` itself for a file's own version,
/// `whole`).
fn destination(at: &Located, v: &Version, to: Option<&Path>, whole: bool) -> PathBuf {
    match to {
        Some(d) if whole => d.to_path_buf(),
        Some(d) => {
            let sub = v.path.strip_prefix(&at.rel).unwrap_or(&v.path);
            join(d, sub.trim_start_matches('/'))
        }
        None => join(&at.root, &v.path),
    }
}

/// Restores `v` at `dest`: elsewhere only where nothing is; in the
/// replica (of `root`) after saving what is there. None if `dest`
/// already holds it.
fn restore_one(
    store: &Store,
    root: &Path,
    v: &Version,
    dest: PathBuf,
    elsewhere: bool,
    finish: Finish,
) -> Result<Option<Restored>, HistoryError> {
    if elsewhere && fs::symlink_metadata(&dest).is_ok() {
        return Err(HistoryError::Exists { path: dest });
    }
    if !elsewhere && save_current(store, root, v, &dest)? == Some(true) {
        return Ok(None);
    }
    write_version(store, v, &dest, finish)?;
    Ok(Some(Restored {
        path: v.path.clone(),
        version: v.id,
        to: dest,
        size: v.size,
    }))
}

/// Refuses a time before the oldest of `vs` was made.
fn check_not_before(vs: &[Version], t: i64, shown: &Path) -> Result<(), HistoryError> {
    let oldest = vs.iter().map(|v| v.mtime_ns).min().expect("not empty");
    if t < oldest {
        return Err(HistoryError::BeforeOldest {
            path: shown.to_path_buf(),
            at: t,
            oldest,
        });
    }
    Ok(())
}

/// The version of a file current at `t`: the first one saved after it.
fn at_time(own: &[Version], t: i64, shown: &Path) -> Result<Version, HistoryError> {
    check_not_before(own, t, shown)?;
    own.iter()
        .find(|v| v.saved_at_ns > t)
        .cloned()
        .ok_or_else(|| HistoryError::Unchanged {
            path: shown.to_path_buf(),
            at: t,
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
) -> Result<Option<bool>, HistoryError> {
    let meta = match fs::symlink_metadata(dest) {
        Ok(m) => m,
        Err(_) => return Ok(None),
    };
    if !meta.is_file() {
        return Err(HistoryError::NotAFile {
            path: dest.to_path_buf(),
        });
    }
    let list = File::open(dest)
        .and_then(weave_chunk::chunk_reader)
        .map_err(|error| HistoryError::Unreadable {
            path: dest.to_path_buf(),
            error,
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
    let r = store
        .save(&[ToSave {
            path: &v.path,
            file: dest,
            chunks: &list,
            mode: meta.permissions().mode() & 0o7777,
            mtime_ns: mtime,
            origin: weave_index::Index::id_at(&root.join(STATE_DIR)),
            reason: Reason::Restored,
            // What it has of them on disk is not read here.
            meta: None,
            trusted: false,
            movable: false,
        }])
        .map_err(in_store(root))?;
    match r.into_iter().next() {
        Some(Ok(_)) => Ok(Some(false)),
        Some(Err(why)) => Err(HistoryError::ChangedWhileSaved {
            path: dest.to_path_buf(),
            why,
        }),
        None => Ok(Some(false)),
    }
}

/// Writes `v` at `dest` atomically and durably: a temporary file next to
/// it, flushed, renamed over it.
fn write_version(
    store: &Store,
    v: &Version,
    dest: &Path,
    finish: Finish,
) -> Result<(), HistoryError> {
    let failed = |what: &str| {
        let what = what.to_string();
        move |error| HistoryError::Write {
            path: dest.to_path_buf(),
            what,
            error,
        }
    };
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(failed(&format!("cannot create {}", dir.display())))?;
    // A name the next scan recognises: a leftover of a killed restore is
    // removed like any interrupted write.
    let temp = dir.join(temp_name());
    let result = (|| {
        let f = File::options()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(failed("cannot create a temporary file"))?;
        store
            .read_into(v, &f, &|_| {})
            .map_err(|error| HistoryError::Read {
                path: dest.to_path_buf(),
                error,
            })?;
        finish(&f, v, dest).map_err(failed("cannot set the owner or extended attributes"))?;
        f.set_permissions(fs::Permissions::from_mode(v.mode & 0o7777))
            .map_err(failed("cannot set permissions"))?;
        let mtime = UNIX_EPOCH + Duration::from_nanos(v.mtime_ns.max(0) as u64);
        f.set_times(fs::FileTimes::new().set_modified(mtime))
            .map_err(failed("cannot set mtime"))?;
        f.sync_all().map_err(failed("cannot flush"))?;
        fs::rename(&temp, dest).map_err(failed("cannot rename into place"))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(failed("cannot flush the directory"))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Prunes the store of the replica at `root` now.
pub fn gc(root: &Path) -> Result<Option<Pruned>, HistoryError> {
    match store_of(root)? {
        None => Ok(None),
        Some(s) => s.prune(now_ns()).map(Some).map_err(in_store(root)),
    }
}

/// The retention policy of the replica at `root`; with `set`, replaces it.
pub fn policy(root: &Path, set: Option<&Policy>) -> Result<Policy, HistoryError> {
    let s = Store::open(&root.join(STATE_DIR)).map_err(in_store(root))?;
    if let Some(p) = set {
        s.set_policy(p).map_err(in_store(root))?;
    }
    s.policy().map_err(in_store(root))
}

/// Damaged chunks of the store and the versions they affect.
pub fn check(root: &Path) -> Result<Vec<Damage>, HistoryError> {
    match store_of(root)? {
        None => Ok(Vec::new()),
        Some(s) => s.check().map_err(in_store(root)),
    }
}

/// Bytes the store takes.
pub fn store_size(root: &Path) -> Result<u64, HistoryError> {
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
    use crate::test_list;
    use weave_core::ReplicaId;

    #[test]
    fn times_parse_and_print() {
        let t = parse_time("2026-11-21 09:30:05", 0).unwrap();
        assert_eq!(format_time(t), "2026-11-21 09:30:05 UTC");
        assert_eq!(parse_time("2026-11-21T09:30:05Z", 0), Some(t));
        assert_eq!(parse_time("2026-11-21 09:30", 0), Some(t - 5_000_000_000));
        assert_eq!(parse_time("2h", t), Some(t - 2 * retention::HOUR));
        assert_eq!(parse_time("yesterday", t), None);
    }

    /// Version `id` of `path`, made at `made` and saved (replaced) at `saved`.
    fn version(id: u64, path: &str, made: i64, saved: i64) -> Version {
        Version {
            id,
            path: path.into(),
            content: weave_core::Hash([id as u8; 32]),
            size: 1,
            mode: 0o644,
            mtime_ns: made,
            origin: ReplicaId(1),
            saved_at_ns: saved,
            reason: Reason::Replaced,
            chunks: test_list(&[(id as u8, 1)]),
            meta: None,
        }
    }

    #[test]
    fn a_file_at_a_time_is_the_version_it_held_then() {
        let own = vec![version(1, "f", 10, 20), version(2, "f", 20, 30)];
        let shown = Path::new("/r/f");
        assert_eq!(at_time(&own, 15, shown).unwrap().id, 1);
        assert_eq!(at_time(&own, 20, shown).unwrap().id, 2);
        let early = at_time(&own, 5, shown).unwrap_err();
        assert!(matches!(
            early,
            HistoryError::BeforeOldest { oldest: 10, .. }
        ));
        assert!(early.to_string().contains("before its oldest version"));
        let late = at_time(&own, 30, shown).unwrap_err();
        assert!(matches!(late, HistoryError::Unchanged { at: 30, .. }));
    }

    #[test]
    fn a_tree_at_a_time_takes_each_path_as_it_was() {
        let vs = vec![
            version(1, "d/a", 10, 20),
            version(2, "d/a", 20, 40),
            version(3, "d/b", 5, 25),
            version(4, "d/c", 30, 50),
        ];
        let ids = |t| tree_at(&vs, t).iter().map(|v| v.id).collect::<Vec<_>>();
        assert_eq!(ids(15), vec![1, 3]);
        assert_eq!(ids(22), vec![2, 3]);
        assert_eq!(ids(35), vec![2, 4]);
        assert!(ids(60).is_empty());
    }

    #[test]
    fn versions_go_into_the_replica_or_under_to() {
        let at = Located {
            root: PathBuf::from("/r"),
            rel: "d".into(),
        };
        let v = version(1, "d/sub/x", 0, 1);
        assert_eq!(destination(&at, &v, None, false), Path::new("/r/d/sub/x"));
        let to = Path::new("/elsewhere");
        assert_eq!(
            destination(&at, &v, Some(to), false),
            Path::new("/elsewhere/sub/x")
        );
        assert_eq!(destination(&at, &v, Some(to), true), to);
        assert!(is_at_or_under("d/sub/x", "d"));
        assert!(is_at_or_under("d", "d"));
        assert!(is_at_or_under("x", ""));
        assert!(!is_at_or_under("dx", "d"));
    }
}
