//! Relative paths and the names weave gives files: conflict copies and
//! temporary files.

use crate::id::ReplicaId;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The name of a replica's state directory, never synced.
pub const STATE_DIR: &str = ".weave";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("path {0:?} is absolute; only paths relative to the folder are allowed")]
    Absolute(String),
    #[error("path {0:?} has an empty, '.' or '..' component")]
    BadComponent(String),
    #[error("path {0:?} is inside a weave state directory (.weave), which is never synced")]
    StateDir(String),
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
}

/// Checks that `p` is a relative, normalized path that may name an object in
/// a replica: no leading '/', no empty, '.' or '..' components, not inside
/// a `.weave` directory at any depth.
pub fn validate(p: &str) -> Result<(), PathError> {
    if p.is_empty() {
        return Err(PathError::Empty);
    }
    if p.starts_with('/') {
        return Err(PathError::Absolute(p.to_string()));
    }
    if p.contains('\0') {
        return Err(PathError::Nul(p.to_string()));
    }
    for c in p.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err(PathError::BadComponent(p.to_string()));
        }
        if c == STATE_DIR {
            return Err(PathError::StateDir(p.to_string()));
        }
    }
    Ok(())
}

/// The parent of a relative path, or None at the top.
pub fn parent(p: &str) -> Option<&str> {
    p.rfind('/').map(|i| &p[..i])
}

/// Number of components.
pub fn depth(p: &str) -> usize {
    p.bytes().filter(|&b| b == b'/').count() + 1
}

/// Every ancestor of `p`, nearest first.
pub fn ancestors(p: &str) -> impl Iterator<Item = &str> {
    let mut cur = p;
    std::iter::from_fn(move || {
        let par = parent(cur)?;
        cur = par;
        Some(par)
    })
}

/// `rel` ('/'-separated, relative; "" for `root` itself) as a path under
/// the directory `root`.
pub fn join(root: &Path, rel: &str) -> PathBuf {
    let mut p = root.to_path_buf();
    for c in rel.split('/') {
        p.push(c);
    }
    p
}

/// Prefix of weave's temporary files; a file named
/// `.~weave-<16 hex digits>.tmp` is a leftover of an interrupted sync.
pub const TEMP_PREFIX: &str = ".~weave-";

/// A fresh name for a temporary file: `.~weave-<16 hex digits>.tmp`.
pub fn temp_name() -> String {
    format!("{TEMP_PREFIX}{:016x}.tmp", rand_u64())
}

/// A number unlikely to repeat (within a process, or across processes):
/// a counter and the clock through a randomly keyed hasher.
pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// The name of a conflict copy: `NAME.weave-conflict-YYYYMMDD-HHMMSS-<short
/// replica id>.EXT`, from the losing version's own mtime (UTC) and the
/// replica that made it, so every replica derives the same name (I-1).
pub fn conflict_name(path: &str, mtime_ns: i64, origin: ReplicaId) -> String {
    let (dir, file) = match path.rfind('/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => ("", path),
    };
    // An extension is the part after the last dot, unless that dot starts
    // the name (".bashrc") or ends it.
    let (stem, ext) = match file.rfind('.') {
        Some(i) if i > 0 && i + 1 < file.len() => (&file[..i], &file[i..]),
        _ => (file, ""),
    };
    let tag = format!(
        ".weave-conflict-{}-{}",
        format_utc(mtime_ns),
        origin.short()
    );
    // File names are at most 255 bytes; keep room for a "-NNN" suffix.
    let ext = truncate_at_char(ext, 32);
    let room = MAX_NAME - 4 - tag.len() - ext.len();
    let stem = truncate_at_char(stem, room);
    format!("{dir}{stem}{tag}{ext}")
}

/// The longest file name (in bytes) most filesystems accept.
const MAX_NAME: usize = 255;

fn truncate_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// True if a file name looks like a conflict copy made by weave.
pub fn is_conflict_name(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|f| f.contains(".weave-conflict-"))
}

fn format_utc(mtime_ns: i64) -> String {
    let secs = mtime_ns.div_euclid(1_000_000_000);
    let fmt = time::macros::format_description!("[year][month][day]-[hour][minute][second]");
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| "00000000-000000".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(validate("a/b.txt").is_ok());
        assert!(validate(".weaveignore").is_ok());
        assert!(matches!(validate("x/.weave"), Err(PathError::StateDir(_))));
        assert!(validate("x/.weaveignore").is_ok());
        assert_eq!(validate(""), Err(PathError::Empty));
        assert!(matches!(
            validate("/etc/passwd"),
            Err(PathError::Absolute(_))
        ));
        assert!(matches!(
            validate("../escape"),
            Err(PathError::BadComponent(_))
        ));
        assert!(matches!(
            validate("a/../b"),
            Err(PathError::BadComponent(_))
        ));
        assert!(matches!(validate("a//b"), Err(PathError::BadComponent(_))));
        assert!(matches!(validate("a/"), Err(PathError::BadComponent(_))));
        assert!(matches!(
            validate(".weave/index"),
            Err(PathError::StateDir(_))
        ));
    }

    #[test]
    fn conflict_names() {
        let r = ReplicaId(0);
        // 2026-11-21 10:15:00 UTC
        let t = 1_795_256_100i64 * 1_000_000_000;
        assert_eq!(
            conflict_name("docs/report.txt", t, r),
            "docs/report.weave-conflict-20261121-101500-0000000.txt"
        );
        assert_eq!(
            conflict_name("Makefile", t, r),
            "Makefile.weave-conflict-20261121-101500-0000000"
        );
        assert_eq!(
            conflict_name(".bashrc", t, r),
            ".bashrc.weave-conflict-20261121-101500-0000000"
        );
        assert_eq!(
            conflict_name("a.tar.gz", t, r),
            "a.tar.weave-conflict-20261121-101500-0000000.gz"
        );
        assert!(is_conflict_name(
            "x/a.weave-conflict-20261121-101500-0000000.gz"
        ));
    }

    #[test]
    fn ancestors_and_depth() {
        assert_eq!(ancestors("a/b/c").collect::<Vec<_>>(), vec!["a/b", "a"]);
        assert_eq!(depth("a/b/c"), 3);
        assert_eq!(parent("a"), None);
    }

    #[test]
    fn joined_paths_and_temporary_names() {
        assert_eq!(join(Path::new("/r"), "a/b"), Path::new("/r/a/b"));
        let t = temp_name();
        assert!(t.starts_with(TEMP_PREFIX) && t.ends_with(".tmp"), "{t}");
        assert_eq!(t.len(), TEMP_PREFIX.len() + 16 + 4);
        assert_ne!(temp_name(), t);
    }
}
