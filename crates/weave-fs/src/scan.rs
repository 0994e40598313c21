//! The scanner: compares the disk with the index and records what changed.
//!
//! Files whose (size, mtime, ctime, inode) match the index are not read
//! again. Changed files are chunked and hashed in parallel. A file that
//! changes while it is being read is left for the next scan.

use crate::ignore::Matcher;
use crate::util::{is_temp_name, join, same_stat, stat_of, stat_of_raw, FsIssue};
use rayon::prelude::*;
use rustix::fs::{AtFlags, Dir, Mode, OFlags};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use weave_chunk::{chunk_reader, ChunkList};
use weave_core::path::STATE_DIR;
use weave_core::{Entry, Object};
use weave_index::{Index, IndexError, LocalEntry, ScanRecord, Stat};

#[derive(Default, Debug)]
pub struct ScanOutcome {
    /// Entries that changed, to be written to the index. Also applied to
    /// the entry map passed to [`scan`].
    pub changed: Vec<LocalEntry>,
    /// Chunk lists of the files that were read.
    pub contents: Vec<ChunkList>,
    /// Paths that could not be scanned: reported, and left as they were.
    pub issues: Vec<FsIssue>,
    /// Things skipped on purpose (special files), worth a mention.
    pub notices: Vec<FsIssue>,
    pub files_hashed: u64,
    pub bytes_hashed: u64,
}

pub struct ScanOptions<'a> {
    pub matcher: &'a Matcher,
    /// Remove leftover temporary files of an interrupted sync.
    pub remove_temps: bool,
}

/// Scans the replica at `root` against its index. Only the compact scan
/// records are loaded; full entries are read for the paths that changed.
/// Version-vector counters and sequence numbers come from `index`; nothing
/// is written (the caller writes [`ScanOutcome::changed`]).
pub fn scan(root: &Path, index: &mut Index, opts: &ScanOptions) -> Result<ScanOutcome, IndexError> {
    let mut out = ScanOutcome::default();
    // What the index knows, by path key. Paths found on disk are taken out;
    // what is left was deleted (or ignored, or hidden).
    let mut known: HashMap<u128, ScanRecord, KeyHasher> = HashMap::default();
    index.for_each_scan_record(|p, r| {
        known.insert(path_key(p), r);
    })?;
    // Paths that exist but could not be looked at: never taken as deleted.
    let mut blocked: HashSet<String> = HashSet::new();
    let mut to_hash: Vec<(String, Stat)> = Vec::new();
    let mut updates: Vec<(String, Object, u32, i64, Option<Stat>)> = Vec::new();
    let mut stat_only: Vec<(String, Stat)> = Vec::new();
    let mut stack: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        // Directories are read through a descriptor and their entries
        // stat'ed relative to it: no path walk per file.
        let opened = rustix::fs::open(
            &dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .and_then(Dir::new);
        let mut rd = match opened {
            Ok(rd) => rd,
            Err(e) => {
                out.issues
                    .push(FsIssue::new(&dir, format!("cannot read directory: {e}")));
                blocked.insert(prefix.clone());
                continue;
            }
        };
        let dirfd = match rd.fd() {
            Ok(fd) => fd.try_clone_to_owned(),
            Err(e) => Err(std::io::Error::from(e)),
        };
        let dirfd = match dirfd {
            Ok(fd) => fd,
            Err(e) => {
                out.issues
                    .push(FsIssue::new(&dir, format!("cannot read directory: {e}")));
                blocked.insert(prefix.clone());
                continue;
            }
        };
        while let Some(de) = rd.read() {
            let de = match de {
                Ok(de) => de,
                Err(e) => {
                    out.issues
                        .push(FsIssue::new(&dir, format!("cannot list directory: {e}")));
                    blocked.insert(prefix.clone());
                    break;
                }
            };
            let raw_name = de.file_name();
            let name_bytes = raw_name.to_bytes();
            if name_bytes == b"." || name_bytes == b".." {
                continue;
            }
            let entry_path = || dir.join(OsStr::from_bytes(name_bytes));
            let Ok(name) = std::str::from_utf8(name_bytes) else {
                out.issues.push(FsIssue::new(
                    entry_path(),
                    "name is not valid UTF-8; skipped (rename it to sync it)",
                ));
                continue;
            };
            if prefix.is_empty() && name == STATE_DIR {
                continue;
            }
            let mut rel = String::with_capacity(prefix.len() + 1 + name.len());
            if !prefix.is_empty() {
                rel.push_str(&prefix);
                rel.push('/');
            }
            rel.push_str(name);
            // Does not follow symlinks.
            let raw = match rustix::fs::statat(&dirfd, raw_name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(m) => m,
                Err(e) => {
                    if e != rustix::io::Errno::NOENT {
                        out.issues
                            .push(FsIssue::new(entry_path(), format!("cannot stat: {e}")));
                        blocked.insert(rel);
                    }
                    continue;
                }
            };
            let ft = rustix::fs::FileType::from_raw_mode(raw.st_mode);
            if ft.is_file() && is_temp_name(name) {
                if opts.remove_temps {
                    let _ = fs::remove_file(entry_path());
                }
                continue;
            }
            if opts.matcher.is_ignored(&rel, ft.is_dir()) {
                continue;
            }
            let prev = known.remove(&path_key(&rel));
            if ft.is_dir() {
                let mode = raw.st_mode & 0o777;
                let same = matches!(prev, Some(ScanRecord::Dir { mode: m }) if m == mode);
                if !same {
                    updates.push((rel.clone(), Object::Dir, mode, 0, None));
                }
                stack.push((entry_path(), rel));
            } else if ft.is_file() {
                let st = stat_of_raw(&raw);
                let unchanged = matches!(prev, Some(ScanRecord::File(ps)) if
                    !ps.racy
                        && ps.size == st.size
                        && ps.mtime_ns == st.mtime_ns
                        && ps.ctime_ns == st.ctime_ns
                        && ps.ino == st.ino
                        && ps.mode == st.mode);
                if !unchanged {
                    to_hash.push((rel, st));
                }
            } else if ft.is_symlink() {
                match fs::read_link(entry_path()) {
                    Ok(t) => match t.to_str() {
                        Some(t) => {
                            let same = matches!(&prev, Some(ScanRecord::Symlink { target }) if target == t);
                            if !same {
                                let object = Object::Symlink {
                                    target: t.to_string(),
                                };
                                updates.push((rel, object, 0, 0, None));
                            }
                        }
                        None => {
                            out.issues.push(FsIssue::new(
                                entry_path(),
                                "symlink target is not valid UTF-8; skipped",
                            ));
                            blocked.insert(rel);
                        }
                    },
                    Err(e) => {
                        out.issues.push(FsIssue::new(
                            entry_path(),
                            format!("cannot read symlink: {e}"),
                        ));
                        blocked.insert(rel);
                    }
                }
            } else {
                out.notices.push(FsIssue::new(
                    entry_path(),
                    "not a regular file, directory or symlink; skipped",
                ));
                blocked.insert(rel);
            }
        }
    }

    let hashed: Vec<(String, HashResult)> = to_hash
        .into_par_iter()
        .map(|(rel, st)| {
            let r = hash_file(&join(root, &rel), &st);
            (rel, r)
        })
        .collect();
    for (rel, r) in hashed {
        match r {
            Ok((list, st)) => {
                out.files_hashed += 1;
                out.bytes_hashed += st.size;
                let object = Object::File {
                    size: st.size,
                    content: list.content_id(),
                };
                let prev = index.entry(&rel)?;
                let same_state = prev.as_ref().is_some_and(|p| {
                    p.entry.object == object
                        && p.entry.mode == st.mode
                        && p.entry.mtime_ns == st.mtime_ns
                });
                if same_state {
                    stat_only.push((rel, st));
                } else {
                    updates.push((rel, object, st.mode, st.mtime_ns, Some(st)));
                }
                out.contents.push(list);
            }
            Err(msg) => {
                out.issues.push(FsIssue::new(join(root, &rel), msg));
                blocked.insert(rel);
            }
        }
    }

    // Deletions: live entries that are gone, unless ignored or hidden
    // behind something that could not be read.
    let mut gone: Vec<String> = Vec::new();
    if !known.is_empty() {
        index.for_each_scan_record(|p, r| {
            if !known.contains_key(&path_key(p)) {
                return;
            }
            if !blocked.is_empty()
                && (blocked.contains(p)
                    || weave_core::path::ancestors(p).any(|a| blocked.contains(a)))
            {
                return;
            }
            if opts
                .matcher
                .is_ignored(p, matches!(r, ScanRecord::Dir { .. }))
            {
                return;
            }
            gone.push(p.to_string());
        })?;
    }
    for p in gone {
        updates.push((p, Object::Deleted, 0, 0, None));
    }

    let id = index.id();
    for (rel, st) in stat_only {
        if let Some(mut le) = index.entry(&rel)? {
            le.stat = Some(st);
            out.changed.push(le);
        }
    }
    for (rel, object, mode, mtime_ns, stat) in updates {
        let mut vv = index.entry(&rel)?.map(|p| p.entry.vv).unwrap_or_default();
        index.observe(vv.get(id));
        vv.bump(id, index.tick());
        let le = LocalEntry {
            entry: Entry {
                path: rel.clone(),
                object,
                mode,
                mtime_ns,
                vv,
                origin: id,
            },
            seq: index.next_seq(),
            stat,
        };
        out.changed.push(le);
    }
    Ok(out)
}

/// A path's key in the map of known paths: a 128-bit hash (collisions
/// are out of reach for any tree).
fn path_key(rel: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(rel.as_bytes())
}

/// Keys are already uniformly distributed hashes: use their low bits.
#[derive(Default, Clone, Copy)]
struct KeyHasher;
impl std::hash::BuildHasher for KeyHasher {
    type Hasher = KeyHash;
    fn build_hasher(&self) -> KeyHash {
        KeyHash(0)
    }
}
#[derive(Default)]
struct KeyHash(u64);
impl std::hash::Hasher for KeyHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ *b as u64;
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

type HashResult = Result<(ChunkList, Stat), String>;

/// Reads and chunks one file, making sure it did not change meanwhile.
fn hash_file(path: &Path, before: &Stat) -> HashResult {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| format!("cannot read: {e}"))?;
    let m1 = f.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if m1.ino() != before.ino || m1.len() != before.size {
        return Err("changed while being scanned; it will be picked up by the next sync".into());
    }
    let list = chunk_reader(std::io::BufReader::with_capacity(0, &f))
        .map_err(|e| format!("read error: {e}"))?;
    let m2 = f.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if !same_stat(&m2, &stat_of(&m1)) || list.size() != m2.len() {
        return Err("changed while being scanned; it will be picked up by the next sync".into());
    }
    Ok((list, stat_of(&m2)))
}
