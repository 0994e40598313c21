//! The scanner: compares the disk with the index and records what changed.
//!
//! Files whose (size, mtime, ctime, inode) match the index are not read
//! again. Changed files are chunked and hashed in parallel. A file that
//! changes while it is being read is left for the next scan.

use crate::ignore::Matcher;
use crate::util::{is_temp_name, join, same_stat, stat_of, FsIssue};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use weave_chunk::{chunk_reader, ChunkList};
use weave_core::path::STATE_DIR;
use weave_core::{Entry, Object};
use weave_index::{Index, LocalEntry, Stat};

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

enum Seen {
    Dir(Stat),
    File(Stat),
    Symlink(String),
}

/// Scans the replica at `root` against `entries` (its index, loaded), and
/// updates `entries` in place. Version-vector counters and sequence numbers
/// come from `index`.
pub fn scan(
    root: &Path,
    entries: &mut BTreeMap<String, LocalEntry>,
    index: &mut Index,
    opts: &ScanOptions,
) -> ScanOutcome {
    let mut out = ScanOutcome::default();
    let mut seen: Vec<(String, Seen)> = Vec::new();
    // Paths that exist but could not be looked at: never taken as deleted.
    let mut blocked: HashSet<String> = HashSet::new();
    let mut stack: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                out.issues
                    .push(FsIssue::new(&dir, format!("cannot read directory: {e}")));
                blocked.insert(prefix.clone());
                continue;
            }
        };
        for de in rd {
            let de = match de {
                Ok(de) => de,
                Err(e) => {
                    out.issues
                        .push(FsIssue::new(&dir, format!("cannot list directory: {e}")));
                    blocked.insert(prefix.clone());
                    continue;
                }
            };
            let os_name = de.file_name();
            let Some(name) = os_name.to_str() else {
                out.issues.push(FsIssue::new(
                    de.path(),
                    "name is not valid UTF-8; skipped (rename it to sync it)",
                ));
                continue;
            };
            if prefix.is_empty() && name == STATE_DIR {
                continue;
            }
            let rel = if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}/{name}")
            };
            let meta = match fs::symlink_metadata(de.path()) {
                Ok(m) => m,
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        out.issues
                            .push(FsIssue::new(de.path(), format!("cannot stat: {e}")));
                        blocked.insert(rel);
                    }
                    continue;
                }
            };
            let ft = meta.file_type();
            if ft.is_file() && is_temp_name(name) {
                if opts.remove_temps {
                    let _ = fs::remove_file(de.path());
                }
                continue;
            }
            if opts.matcher.is_ignored(&rel, ft.is_dir()) {
                continue;
            }
            if ft.is_dir() {
                stack.push((de.path(), rel.clone()));
                seen.push((rel, Seen::Dir(stat_of(&meta))));
            } else if ft.is_file() {
                seen.push((rel, Seen::File(stat_of(&meta))));
            } else if ft.is_symlink() {
                match fs::read_link(de.path()) {
                    Ok(t) => match t.to_str() {
                        Some(t) => seen.push((rel, Seen::Symlink(t.to_string()))),
                        None => {
                            out.issues.push(FsIssue::new(
                                de.path(),
                                "symlink target is not valid UTF-8; skipped",
                            ));
                            blocked.insert(rel);
                        }
                    },
                    Err(e) => {
                        out.issues
                            .push(FsIssue::new(de.path(), format!("cannot read symlink: {e}")));
                        blocked.insert(rel);
                    }
                }
            } else {
                out.notices.push(FsIssue::new(
                    de.path(),
                    "not a regular file, directory or symlink; skipped",
                ));
                blocked.insert(rel);
            }
        }
    }

    // Decide what changed; collect the files that must be read.
    let mut to_hash: Vec<(String, Stat)> = Vec::new();
    let mut present: HashSet<&str> = HashSet::with_capacity(seen.len());
    let mut updates: Vec<(String, Object, u32, i64, Option<Stat>)> = Vec::new();
    let mut stat_only: Vec<(String, Stat)> = Vec::new();
    for (rel, s) in &seen {
        present.insert(rel.as_str());
        let prev = entries.get(rel.as_str());
        match s {
            Seen::Dir(st) => {
                let same = prev.is_some_and(|p| p.entry.object.is_dir() && p.entry.mode == st.mode);
                if !same {
                    updates.push((rel.clone(), Object::Dir, st.mode, 0, Some(*st)));
                }
            }
            Seen::Symlink(t) => {
                let same = prev.is_some_and(
                    |p| matches!(&p.entry.object, Object::Symlink { target } if target == t),
                );
                if !same {
                    updates.push((
                        rel.clone(),
                        Object::Symlink { target: t.clone() },
                        0,
                        0,
                        None,
                    ));
                }
            }
            Seen::File(st) => {
                let unchanged = prev.is_some_and(|p| {
                    matches!(p.entry.object, Object::File { .. })
                        && p.stat.is_some_and(|ps| {
                            !ps.racy
                                && ps.size == st.size
                                && ps.mtime_ns == st.mtime_ns
                                && ps.ctime_ns == st.ctime_ns
                                && ps.ino == st.ino
                                && ps.mode == st.mode
                        })
                });
                if !unchanged {
                    to_hash.push((rel.clone(), *st));
                }
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
                let prev = entries.get(rel.as_str());
                let same_state = prev.is_some_and(|p| {
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
    for (p, le) in entries.iter() {
        if !le.entry.is_live() || present.contains(p.as_str()) || blocked.contains(p) {
            continue;
        }
        if weave_core::path::ancestors(p).any(|a| blocked.contains(a)) {
            continue;
        }
        if opts.matcher.is_ignored(p, le.entry.object.is_dir()) {
            continue;
        }
        gone.push(p.clone());
    }
    drop(present);
    for p in gone {
        updates.push((p, Object::Deleted, 0, 0, None));
    }

    let id = index.id();
    for (rel, st) in stat_only {
        if let Some(le) = entries.get_mut(&rel) {
            le.stat = Some(st);
            out.changed.push(le.clone());
        }
    }
    for (rel, object, mode, mtime_ns, stat) in updates {
        let mut vv = entries
            .get(&rel)
            .map(|p| p.entry.vv.clone())
            .unwrap_or_default();
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
        out.changed.push(le.clone());
        entries.insert(rel, le);
    }
    out
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
