use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use weave_core::Stat;

pub use weave_core::path::{join, temp_name, TEMP_PREFIX};

/// A problem with one path on one replica: reported, skipped, and the
/// rest of the sync goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsIssue {
    /// Where it happened, as the user would type it.
    pub path: PathBuf,
    pub message: String,
}

impl FsIssue {
    pub fn new(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        FsIssue {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A new file with no name in directory `dir` (Linux's `O_TMPFILE`),
/// given its name by [`link_unnamed`] once it is written and flushed: a
/// crash before that leaves nothing behind, and it costs the directory
/// one entry instead of a temporary's creation, rename and removal.
/// Fails where the file system or the system cannot (the caller then
/// uses a named temporary).
pub fn create_unnamed(dir: &Path) -> std::io::Result<std::fs::File> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::openat(
            rustix::fs::CWD,
            dir,
            OFlags::WRONLY | OFlags::TMPFILE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        Ok(std::fs::File::from(fd))
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = dir;
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

/// Gives a file made by [`create_unnamed`] the name `target` in directory
/// `dir` (or `rustix::fs::CWD` with a full path): an `AlreadyExists` error
/// if something has that name, nothing is replaced. Through the
/// descriptor itself where this process may do that, else through its
/// `/proc/self/fd` entry.
pub fn link_unnamed<D: std::os::fd::AsFd>(
    f: &std::fs::File,
    dir: D,
    target: &Path,
) -> std::io::Result<()> {
    use rustix::fs::AtFlags;
    use std::sync::atomic::{AtomicBool, Ordering};
    // Whether linking by the descriptor itself was refused once (it needs
    // CAP_DAC_READ_SEARCH): then it is not tried again.
    static BY_PROC: AtomicBool = AtomicBool::new(false);
    if !BY_PROC.load(Ordering::Relaxed) {
        match rustix::fs::linkat(f, "", &dir, target, AtFlags::EMPTY_PATH) {
            Ok(()) => return Ok(()),
            // Refused for want of the capability: the kernel says ENOENT
            // before it looks at the target.
            Err(e) if e == rustix::io::Errno::NOENT && target_dir_exists(&dir, target) => {
                BY_PROC.store(true, Ordering::Relaxed);
            }
            Err(e) => return Err(e.into()),
        }
    }
    link_by_proc(f, dir, target)
}

/// [`link_unnamed`] through the file's `/proc/self/fd` entry (what a
/// process without CAP_DAC_READ_SEARCH can do, on kernels that do not
/// let it link by the descriptor itself).
fn link_by_proc<D: std::os::fd::AsFd>(
    f: &std::fs::File,
    dir: D,
    target: &Path,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let proc = format!("/proc/self/fd/{}", f.as_raw_fd());
    rustix::fs::linkat(
        rustix::fs::CWD,
        proc.as_str(),
        &dir,
        target,
        rustix::fs::AtFlags::SYMLINK_FOLLOW,
    )?;
    Ok(())
}

/// Whether the directory `target` would be linked into exists.
fn target_dir_exists<D: std::os::fd::AsFd>(dir: &D, target: &Path) -> bool {
    let is_dir = |s: rustix::fs::Stat| rustix::fs::FileType::from_raw_mode(s.st_mode).is_dir();
    match target.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => rustix::fs::statat(dir, p, rustix::fs::AtFlags::empty()).is_ok_and(is_dir),
        None => rustix::fs::fstat(dir).is_ok_and(is_dir),
    }
}

/// The directory `rel` ('/'-separated, relative; empty for `root`
/// itself) under the directory `root`, opened only if no symlink is on
/// the way and it does not leave `root` (Linux's `openat2` with
/// `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`): a link into it cannot be
/// turned away by a directory swapped for a symlink. `Ok(None)` where
/// the system has no such call (the caller checks the path itself).
pub fn open_dir_beneath(
    root: std::os::fd::BorrowedFd<'_>,
    rel: &str,
) -> std::io::Result<Option<std::os::fd::OwnedFd>> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let rel = if rel.is_empty() { "." } else { rel };
        match rustix::fs::openat2(
            root,
            rel,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        ) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if e == rustix::io::Errno::NOSYS || e == rustix::io::Errno::PERM => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (root, rel);
        Ok(None)
    }
}

pub fn is_temp_name(name: &str) -> bool {
    name.len() == TEMP_PREFIX.len() + 16 + 4
        && name.starts_with(TEMP_PREFIX)
        && name.ends_with(".tmp")
        && name[TEMP_PREFIX.len()..TEMP_PREFIX.len() + 16]
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
}

pub fn mtime_ns(m: &Metadata) -> i64 {
    m.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec())
}

pub fn ctime_ns(m: &Metadata) -> i64 {
    m.ctime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.ctime_nsec())
}

/// A file whose mtime is less than this long before the moment it is looked
/// at may be written again within the same tick of a coarse filesystem
/// clock, keeping the same size and timestamps: such a "racy" entry is read
/// again at the next scan (git solves the same problem the same way). Any
/// later write sets the mtime to the current time, so a file whose recorded
/// mtime is older than this is safe — including every file weave itself
/// wrote with an older mtime taken from another replica.
const RACY_WINDOW_NS: i64 = 1_000_000_000;

/// The current time from the kernel's coarse clock: as cheap as a memory
/// read (a scan looks at many files in a row), and at most one tick (a few
/// milliseconds) behind, which only makes the racy test more cautious.
/// (A "now" that could be seconds stale, as a once-per-256-calls read
/// was, marked files weave had just written as racy, and the next scan
/// read them all again.)
fn now_ns() -> i64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    (t.tv_sec as i64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as i64)
}

/// The stat weave records for a path.
pub fn stat_of(m: &Metadata) -> Stat {
    let mt = mtime_ns(m);
    Stat {
        size: m.len(),
        mtime_ns: mt,
        ctime_ns: ctime_ns(m),
        ino: m.ino(),
        mode: m.mode() & 0o777,
        racy: now_ns() - mt < RACY_WINDOW_NS,
    }
}

/// The stat weave records, from a raw `stat` (the scanner's fast path).
// The field types of `struct stat` differ between platforms; the casts are
// no-ops on some of them only.
#[allow(clippy::unnecessary_cast)]
pub fn stat_of_raw(st: &rustix::fs::Stat) -> Stat {
    let mt = (st.st_mtime as i64)
        .saturating_mul(1_000_000_000)
        .saturating_add(st.st_mtime_nsec as i64);
    let ct = (st.st_ctime as i64)
        .saturating_mul(1_000_000_000)
        .saturating_add(st.st_ctime_nsec as i64);
    Stat {
        size: st.st_size as u64,
        mtime_ns: mt,
        ctime_ns: ct,
        ino: st.st_ino as u64,
        mode: st.st_mode & 0o777,
        racy: now_ns() - mt < RACY_WINDOW_NS,
    }
}

/// True if what is on disk is still what the index recorded.
pub fn same_stat(m: &Metadata, s: &Stat) -> bool {
    m.len() == s.size && mtime_ns(m) == s.mtime_ns && ctime_ns(m) == s.ctime_ns && m.ino() == s.ino
}

/// Reads `len` bytes at `off` into a new buffer that is never zeroed
/// first: a `vec![0; len]` of a chunk's size is a large allocation, which
/// the allocator zeroes by handing pages back to the kernel and faulting
/// them in again (with TLB shootdowns) on every call. Positional reads
/// into the vector's spare capacity: one system call per chunk, no seek
/// (`f`'s cursor does not move).
pub fn read_at(f: &std::fs::File, off: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let at = off + buf.len() as u64;
        match rustix::io::pread(f, rustix::buffer::spare_capacity(&mut buf), at) {
            Ok(0) => break,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // The capacity may exceed `len` (it is "at least"): what was read
    // past the range is not part of it.
    buf.truncate(len);
    if buf.len() != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the file ends {} bytes short", len - buf.len()),
        ));
    }
    Ok(buf)
}

/// A file-system block, a page: what direct I/O aligns offsets, lengths
/// and memory to.
pub(crate) const BLOCK: u64 = 4096;

/// Where the first `BLOCK`-aligned byte of `buf` is.
pub(crate) fn aligned_start(buf: &[u8]) -> usize {
    let b = BLOCK as usize;
    (b - buf.as_ptr() as usize % b) % b
}

/// `path` opened for writing with direct I/O, if the file system allows
/// it and it is still the file `same_as` is open on (nothing replaced it
/// in between).
pub(crate) fn open_direct(path: &Path, same_as: &std::fs::File) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::DIRECT).bits() as i32)
        .open(path)
        .ok()?;
    let (a, b) = (f.metadata().ok()?, same_as.metadata().ok()?);
    (a.dev() == b.dev() && a.ino() == b.ino()).then_some(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// Both ways of naming an unnamed file land it whole under its name,
    /// and neither replaces a file that has that name.
    #[test]
    fn an_unnamed_file_is_linked_by_descriptor_or_through_proc() {
        let d = tempfile::tempdir().unwrap();
        let Ok(probe) = create_unnamed(d.path()) else {
            return; // no O_TMPFILE here: the executor uses named temporaries
        };
        drop(probe);
        let dir = std::fs::File::open(d.path()).unwrap();
        for (name, by_proc) in [("a", false), ("b", true)] {
            let mut f = create_unnamed(d.path()).unwrap();
            std::io::Write::write_all(&mut f, name.as_bytes()).unwrap();
            let link = |target: &str| {
                if by_proc {
                    link_by_proc(&f, &dir, Path::new(target))
                } else {
                    link_unnamed(&f, &dir, Path::new(target))
                }
            };
            fs::write(d.path().join("taken"), b"kept").unwrap();
            let e = link("taken").unwrap_err();
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::AlreadyExists,
                "by_proc={by_proc}"
            );
            assert_eq!(fs::read(d.path().join("taken")).unwrap(), b"kept");
            link(name).unwrap();
            assert_eq!(fs::read(d.path().join(name)).unwrap(), name.as_bytes());
        }
    }

    #[test]
    fn read_at_reads_the_range_or_fails_short() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&p, &data).unwrap();
        let f = fs::File::open(&p).unwrap();
        assert_eq!(read_at(&f, 70_000, 20_000).unwrap(), data[70_000..90_000]);
        assert_eq!(read_at(&f, 3, 5).unwrap(), data[3..8]);
        assert_eq!(read_at(&f, 0, 0).unwrap(), Vec::<u8>::new());
        let e = read_at(&f, 90_000, 20_000).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }
    use std::time::{Duration, SystemTime};

    /// A file last changed more than the racy window ago is never racy,
    /// however long the process has been running.
    #[test]
    fn the_racy_test_uses_the_current_time() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = fs::File::create(&p).unwrap();
        // Fresh: racy.
        assert!(stat_of(&fs::metadata(&p).unwrap()).racy);
        std::thread::sleep(Duration::from_millis(1600));
        // Changed (by a sync, say) with a time that is now 1.2 s old: not
        // racy any more, though it is later than the first look above.
        f.set_times(
            fs::FileTimes::new().set_modified(SystemTime::now() - Duration::from_millis(1200)),
        )
        .unwrap();
        let m = fs::metadata(&p).unwrap();
        assert!(!stat_of(&m).racy);
        assert!(!stat_of_raw(&rustix::fs::stat(&p).unwrap()).racy);
    }
}
