//! A bucket's old versions: nothing in a bucket is ever rewritten, so
//! every version a sync recorded there is still in its records, with its
//! chunks. `weave history --bucket` lists a file's versions (or the
//! deleted files), `weave restore --bucket` writes one out.

use crate::pool::Pool;
use crate::record::View;
use crate::BucketError;
use std::collections::BTreeMap;
use std::path::Path;
use weave_core::{Entry, Hash, Object, VersionVector};

/// One version of a file in a bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketVersion {
    /// Its number, from 1 for the oldest, in the order recorded.
    pub id: u64,
    pub path: String,
    /// When the sync that recorded it wrote (ms since the epoch).
    pub recorded_ms: u64,
    pub size: u64,
    pub content: Hash,
    pub mode: u32,
    pub mtime_ns: i64,
    /// It is the version the bucket holds now.
    pub current: bool,
    pub vv: VersionVector,
}

/// Every version of every file in `pool`, by path, oldest first, and the
/// merged view.
fn all_versions(pool: &Pool) -> Result<(BTreeMap<String, Vec<BucketVersion>>, View), BucketError> {
    let mut records = pool.live_records()?;
    // In the order their writers saw them (`at` only grows for a writer
    // that read the records before), then by clock: new versions go on
    // the end, and numbers stay what they were.
    records.sort_by_key(|(name, r)| (r.at, r.time_ms, name.clone()));
    let mut view = View::default();
    let mut seen: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    let mut out: BTreeMap<String, Vec<BucketVersion>> = BTreeMap::new();
    for (name, r) in records {
        for (i, e) in r.entries.iter().enumerate() {
            let known = seen.entry(e.path.clone()).or_default();
            if known.iter().any(|k| k.vv == e.vv) {
                continue;
            }
            known.push(e.clone());
            if let Object::File { size, content } = e.object {
                let list = out.entry(e.path.clone()).or_default();
                list.push(BucketVersion {
                    id: list.len() as u64 + 1,
                    path: e.path.clone(),
                    recorded_ms: r.entry_time(i),
                    size,
                    content,
                    mode: e.mode,
                    mtime_ns: e.mtime_ns,
                    current: false,
                    vv: e.vv.clone(),
                });
            }
        }
        view.add(&name, r);
    }
    for (path, list) in out.iter_mut() {
        if let Some(now) = view.chosen(path) {
            for v in list.iter_mut() {
                v.current = now.vv == v.vv;
            }
        }
    }
    Ok((out, view))
}

/// The versions of the file at `path` in the bucket, oldest first.
pub fn history(pool: &Pool, path: &str) -> Result<Vec<BucketVersion>, BucketError> {
    Ok(history_and_view(pool, path)?.0)
}

/// [`history`], and the bucket's merged view (what [`restore`] reads
/// from): the records read once for both.
pub fn history_and_view(
    pool: &Pool,
    path: &str,
) -> Result<(Vec<BucketVersion>, View), BucketError> {
    let (mut all, view) = all_versions(pool)?;
    Ok((all.remove(path).unwrap_or_default(), view))
}

/// The newest version of each file under `dir` ("" for all) that the
/// bucket holds deleted now.
pub fn deleted(pool: &Pool, dir: &str) -> Result<Vec<BucketVersion>, BucketError> {
    let (all, view) = all_versions(pool)?;
    let under = |p: &str| dir.is_empty() || p == dir || p.starts_with(&format!("{dir}/"));
    Ok(all
        .into_iter()
        .filter(|(p, _)| under(p) && view.chosen(p).is_none_or(|e| e.object.is_deleted()))
        .filter_map(|(_, mut list)| list.pop())
        .collect())
}

/// Writes version `v` to `dest`, a new file (never over one), with its
/// mode and mtime: into a temporary file beside it (only its owner may
/// read it meanwhile), each chunk written where it goes as it arrives,
/// verified, runs of zeros left as holes; then linked into place.
pub fn restore(
    pool: &Pool,
    view: &View,
    v: &BucketVersion,
    dest: &Path,
) -> Result<(), RestoreError> {
    let store = |problem: String| {
        RestoreError::Bucket(BucketError::Store {
            bucket: pool.display.clone(),
            problem,
        })
    };
    let list = view.list(&v.content).ok_or_else(|| {
        store(format!(
            "{}: the bucket lacks the chunk tree of version {}",
            v.path, v.id
        ))
    })?;
    let mut offsets: std::collections::HashMap<Hash, Vec<u64>> = std::collections::HashMap::new();
    let mut want = Vec::new();
    for (off, c) in list.with_offsets().filter(|(_, c)| !c.is_zero()) {
        let at = view.chunks.get(&c.hash).ok_or_else(|| {
            store(format!(
                "{}: the bucket lacks chunk {} of version {}",
                v.path,
                c.hash.short_hex(),
                v.id
            ))
        })?;
        let o = offsets.entry(c.hash).or_default();
        if o.is_empty() {
            want.push((c.hash, at.clone()));
        }
        o.push(off);
    }
    let dir = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".~weave-restore-{}-{}",
        std::process::id(),
        v.content.short_hex()
    ));
    let local = |e: std::io::Error| RestoreError::Dest {
        path: dest.to_path_buf(),
        error: e,
    };
    use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(local)?;
    let written = (|| {
        pool.read_chunks(&want, &mut |h, d| {
            if let Some(d) = d {
                for &off in offsets.get(&h).into_iter().flatten() {
                    f.write_all_at(&d, off)
                        .map_err(|e| weave_engine::SyncError::Replica(Box::new(e)))?;
                }
            }
            Ok(())
        })
        .map_err(|e| store(e.to_string()))?;
        f.set_len(v.size).map_err(local)?;
        f.sync_all().map_err(local)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(v.mode & 0o777))
            .map_err(local)?;
        let t = if v.mtime_ns >= 0 {
            std::time::UNIX_EPOCH + std::time::Duration::from_nanos(v.mtime_ns as u64)
        } else {
            std::time::UNIX_EPOCH - std::time::Duration::from_nanos(v.mtime_ns.unsigned_abs())
        };
        f.set_modified(t).map_err(local)?;
        // Into place, never over a file that is there.
        std::fs::hard_link(&tmp, dest).map_err(local)
    })();
    let _ = std::fs::remove_file(&tmp);
    written
}

/// Why a version could not be written out.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Bucket(#[from] BucketError),
    #[error("{}: {error} (give --to a new file in a directory you can write)", path.display())]
    Dest {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
}
