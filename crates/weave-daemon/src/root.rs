//! A folder root's identity: which directory a folder was watched at, so
//! that a root removed (or unmounted) and made again is told apart from
//! the one that was there.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::SystemTime;

/// The identity of a directory: its device and inode, and its birth time
/// where the file system keeps one (an inode number is often given again
/// at once to a directory made after one was removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootId {
    dev: u64,
    ino: u64,
    born: Option<SystemTime>,
}

impl RootId {
    /// The identity of directory `p`; None when it is missing or is not a
    /// directory.
    pub fn of(p: &Path) -> Option<RootId> {
        let m = std::fs::metadata(p).ok().filter(|m| m.is_dir())?;
        Some(RootId {
            dev: m.dev(),
            ino: m.ino(),
            born: m.created().ok(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_directory_at_the_path_is_another_root() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("docs");
        assert_eq!(RootId::of(&p), None);
        std::fs::create_dir(&p).unwrap();
        let first = RootId::of(&p).unwrap();
        assert_eq!(RootId::of(&p), Some(first.clone()));
        std::fs::write(p.join("f"), "x").unwrap();
        assert_eq!(
            RootId::of(&p),
            Some(first.clone()),
            "content is not identity"
        );
        // Moved away, another directory takes the name.
        std::fs::rename(&p, d.path().join("moved")).unwrap();
        std::fs::create_dir(&p).unwrap();
        assert_ne!(RootId::of(&p), Some(first));
        std::fs::write(d.path().join("file"), "x").unwrap();
        assert_eq!(RootId::of(&d.path().join("file")), None);
    }
}
