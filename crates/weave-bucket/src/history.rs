//! A bucket's old versions: nothing in a bucket is ever rewritten, so
//! every version a sync recorded there is still in its records, with its
//! chunks. `weave history --bucket` lists a file's versions (or the
//! deleted files), `weave restore --bucket` writes one out.

use crate::pool::Pool;
use crate::record::View;
use crate::BucketError;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use weave_core::{Entry, Hash, Object};

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
}

/// Every version of every file in `pool`, by path, oldest first, and the
/// merged view.
fn all_versions(pool: &Pool) -> Result<(BTreeMap<String, Vec<BucketVersion>>, View), BucketError> {
    let mut records = pool.records()?;
    records.sort_by_key(|(name, r)| (r.time_ms, name.clone()));
    let mut view = View::default();
    let mut seen: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    let mut out: BTreeMap<String, Vec<BucketVersion>> = BTreeMap::new();
    for (name, r) in records {
        for e in &r.entries {
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
                    recorded_ms: r.time_ms,
                    size,
                    content,
                    mode: e.mode,
                    mtime_ns: e.mtime_ns,
                    current: false,
                });
            }
        }
        view.add(&name, r);
    }
    for (path, list) in out.iter_mut() {
        if let Some(now) = view.chosen(path) {
            for v in list.iter_mut() {
                v.current = now.object.content() == Some(v.content) && now.mtime_ns == v.mtime_ns;
            }
        }
    }
    Ok((out, view))
}

/// The versions of the file at `path` in the bucket, oldest first.
pub fn history(pool: &Pool, path: &str) -> Result<Vec<BucketVersion>, BucketError> {
    let (mut all, _) = all_versions(pool)?;
    Ok(all.remove(path).unwrap_or_default())
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
/// mode and mtime; every chunk verified.
pub fn restore(pool: &Pool, v: &BucketVersion, dest: &Path) -> Result<(), BucketError> {
    let fail = |problem: String| BucketError::Store {
        bucket: pool.display.clone(),
        problem,
    };
    let view = pool.view()?;
    let list = view.list(&v.content).ok_or_else(|| {
        fail(format!(
            "{}: the bucket lacks the chunk tree of version {}",
            v.path, v.id
        ))
    })?;
    let mut want = Vec::new();
    for c in list.chunks.iter().filter(|c| !c.is_zero()) {
        let at = view.chunks.get(&c.hash).ok_or_else(|| {
            fail(format!(
                "{}: the bucket lacks chunk {} of version {}",
                v.path,
                c.hash.short_hex(),
                v.id
            ))
        })?;
        want.push((c.hash, at.clone()));
    }
    let mut data: std::collections::HashMap<Hash, Vec<u8>> = std::collections::HashMap::new();
    pool.read_chunks(&want, &mut |h, d| {
        if let Some(d) = d {
            data.insert(h, d);
        }
        Ok(())
    })
    .map_err(|e| fail(e.to_string()))?;
    let io = |e: std::io::Error| fail(format!("{}: {e}", dest.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(io)?;
    for c in &list.chunks {
        match data.get(&c.hash) {
            Some(d) => f.write_all(d).map_err(io)?,
            None => f.write_all(&vec![0u8; c.len as usize]).map_err(io)?,
        }
    }
    f.sync_all().map_err(io)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(v.mode & 0o777)).map_err(io)?;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(v.mtime_ns.max(0) as u64);
    f.set_modified(t).map_err(io)?;
    Ok(())
}
