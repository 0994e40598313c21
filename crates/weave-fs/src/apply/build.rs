//! Building a new file or symlink next to its target, before the commit
//! puts it in place. A symlink is made under a temporary name. A file is
//! a complete part file taken by a rename, or a new file (without a name
//! where the file system allows it, else a named temporary) filled with
//! its chunks: each from the first source that holds it and verifies
//! (I-3), the replica's own files before other replicas; a whole file, or
//! runs of the old version at the same path, whose stat proves them
//! unchanged are copied by the kernel without being read here.

use super::batch::Writeback;
use super::commit::set_mode_and_mtime;
use super::copy::{fast_copy, Out, Trusted};
use super::{nofollow, open_read, Ctx, PathError};
use crate::util::{create_unnamed, join, link_unnamed, temp_name};
use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weave_chunk::{ChunkList, ChunkRef};
use weave_core::path::STATE_DIR;
use weave_core::{Hash, Object, Op, Stat};

/// A new file or symlink built for a write, not yet in place.
pub(super) struct Built {
    /// The temporary's path (empty for an unnamed one).
    pub(super) temp: PathBuf,
    /// A new file made without a name ([`create_unnamed`]): it gets its
    /// name by a link at the commit, and nothing is left to remove if it
    /// never does.
    pub(super) unnamed: Option<Arc<File>>,
    pub(super) list: Option<ChunkList>,
    pub(super) bytes_local: u64,
    pub(super) bytes_remote: u64,
    /// The part file the temporary was, if it was one.
    part: Option<PathBuf>,
    /// Renamed into place: nothing is left to remove.
    pub(super) committed: bool,
}

impl Built {
    fn new(temp: PathBuf, unnamed: Option<Arc<File>>) -> Built {
        Built {
            temp,
            unnamed,
            list: None,
            bytes_local: 0,
            bytes_remote: 0,
            part: None,
            committed: false,
        }
    }

    /// Counts `n` bytes of content taken from this replica's own files
    /// (`local`) or from other replicas.
    fn count(&mut self, local: bool, n: u64) {
        if local {
            self.bytes_local += n;
        } else {
            self.bytes_remote += n;
        }
    }
}

impl Drop for Built {
    fn drop(&mut self) {
        if self.committed || self.unnamed.is_some() {
            return;
        }
        // A temporary that was not committed is removed (a part file goes
        // back to its place, for the next run).
        if let Some(part) = &self.part {
            if fs::rename(&self.temp, part).is_ok() {
                return;
            }
        }
        let _ = fs::remove_file(&self.temp);
    }
}

/// The new content of a file write: the write, its content id and the
/// content's chunks.
#[derive(Clone, Copy)]
struct NewContent<'x> {
    op: &'x Op,
    id: &'x Hash,
    list: &'x ChunkList,
}

/// A file that may hold chunks of the content being built.
struct ChunkSource {
    path: PathBuf,
    local: bool,
    stat: Option<Stat>,
    /// None: holds exactly this content. Some: chunk → offset.
    map: Option<Arc<HashMap<Hash, u64>>>,
    file: Option<Option<Arc<File>>>,
    failed: bool,
}

impl ChunkSource {
    /// A file that holds exactly this content.
    fn whole(path: PathBuf, local: bool, stat: Option<Stat>) -> ChunkSource {
        ChunkSource {
            path,
            local,
            stat,
            map: None,
            file: None,
            failed: false,
        }
    }

    /// Reads chunk `hash`, at offset `off` in the content, into `buf`;
    /// true if this file holds it and it verifies.
    fn read_chunk(&mut self, off: u64, hash: &Hash, buf: &mut [u8]) -> bool {
        if self.failed {
            return false;
        }
        let at = match &self.map {
            None => off,
            Some(m) => match m.get(hash) {
                Some(&o) => o,
                None => return false,
            },
        };
        let path = &self.path;
        let file = self
            .file
            .get_or_insert_with(|| open_read(path).ok().map(Arc::new));
        let Some(file) = file else {
            self.failed = true;
            return false;
        };
        if file.read_exact_at(buf, at).is_ok() && weave_chunk::verify(buf, hash) {
            return true;
        }
        // A source that no longer holds what it should is dropped.
        if self.map.is_none() {
            self.failed = true;
        }
        false
    }
}

/// Reads chunk `c`, at offset `off` in the content, into `buf` from the
/// first of `srcs` that holds it and verifies, and counts it in `built`.
/// False if none does.
fn read_chunk(
    srcs: &mut [ChunkSource],
    off: u64,
    c: &ChunkRef,
    buf: &mut [u8],
    built: &mut Built,
) -> bool {
    for s in srcs.iter_mut() {
        if s.read_chunk(off, &c.hash, buf) {
            built.count(s.local, c.len as u64);
            return true;
        }
    }
    false
}

impl Ctx<'_> {
    /// Whether this replica's file system takes unnamed files and this
    /// process can link them: one is made and linked in the state
    /// directory (or the root), then removed.
    fn unnamed_ok(&self) -> bool {
        *self.unnamed.get_or_init(|| {
            let state = self.root.join(STATE_DIR);
            let dir = if state.is_dir() {
                state
            } else {
                self.root.to_path_buf()
            };
            let probe = dir.join(temp_name());
            let ok = create_unnamed(&dir)
                .and_then(|f| link_unnamed(&f, rustix::fs::CWD, &probe))
                .is_ok();
            let _ = fs::remove_file(&probe);
            ok
        })
    }

    /// Builds the new content of `op` (a new file without a name if
    /// `unnamed` allows and it can be made).
    pub(super) fn build(
        &self,
        op: &Op,
        writeback: &Writeback,
        unnamed: bool,
    ) -> Result<Built, PathError> {
        self.check_parents(&op.path)?;
        let full = join(self.root, &op.path);
        let dir = full.parent().ok_or(PathError::NoParent)?;
        let temp = dir.join(temp_name());
        match &op.target.object {
            Object::Symlink { target } => {
                std::os::unix::fs::symlink(target, &temp)
                    .map_err(PathError::io("cannot create symlink"))?;
                let built = Built::new(temp, None);
                self.set_extra(crate::meta::Target::Path(&built.temp), &op.target)?;
                Ok(built)
            }
            Object::File { content, size } => {
                let list = self.chunk_list_of(content, *size)?;
                let (f, mut built) = match self.take_part(content, &list, &temp, &full) {
                    Some((f, built)) => (Arc::new(f), built),
                    None => {
                        let new = NewContent {
                            op,
                            id: content,
                            list: &list,
                        };
                        self.new_file(new, dir, temp, unnamed)?
                    }
                };
                self.set_extra(crate::meta::Target::File(&f), &op.target)?;
                set_mode_and_mtime(&f, &op.target)?;
                writeback.offer(&f, *size);
                built.list = Some(list);
                Ok(built)
            }
            other => Err(PathError::Unwritable {
                kind: other.kind_name(),
            }),
        }
    }

    /// The chunk list of `content`, checked to make `size` bytes of it.
    fn chunk_list_of(&self, content: &Hash, size: u64) -> Result<ChunkList, PathError> {
        let list = self
            .source
            .chunk_list(content)
            .ok_or_else(|| PathError::UnknownChunks {
                content: content.short_hex(),
            })?;
        if list.size() != size || list.content_id() != *content {
            return Err(PathError::InconsistentChunks {
                content: content.short_hex(),
            });
        }
        Ok(list)
    }

    /// A new file in `dir` filled with `new`: made without a name if
    /// `unnamed` allows and it can be, else the named temporary `temp`.
    fn new_file(
        &self,
        new: NewContent,
        dir: &Path,
        temp: PathBuf,
        unnamed: bool,
    ) -> Result<(Arc<File>, Built), PathError> {
        // A new path's file is made without a name where that can be done;
        // a replacement needs a named temporary, to be renamed over the old
        // file.
        let creates = new.op.current.as_ref().is_none_or(|c| !c.entry.is_live());
        let unnamed = (unnamed && creates && self.unnamed_ok())
            .then(|| create_unnamed(dir).ok().map(Arc::new))
            .flatten();
        let (f, temp) = match &unnamed {
            Some(u) => (u.clone(), PathBuf::new()),
            None => (
                Arc::new(
                    fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .custom_flags(nofollow())
                        .open(&temp)
                        .map_err(PathError::io("cannot create temporary file"))?,
                ),
                temp,
            ),
        };
        let mut built = Built::new(temp, unnamed);
        self.fill(&f, new, &mut built)?;
        Ok((f, built))
    }

    /// The part file of `content` as the temporary `temp`, moved there
    /// by a rename, if one is complete and no other write took it.
    fn take_part(
        &self,
        content: &Hash,
        list: &ChunkList,
        temp: &Path,
        target: &Path,
    ) -> Option<(File, Built)> {
        let part = self.source.part(content)?;
        let mut taken = self.parts.lock().unwrap();
        if taken.contains_key(content) {
            return None;
        }
        // Across filesystems (a mount inside the replica) it is copied.
        fs::rename(&part, temp).ok()?;
        taken.insert(*content, (temp.to_path_buf(), target.to_path_buf()));
        drop(taken);
        // Dropped on any failure below: the part goes back.
        let mut built = Built::new(temp.to_path_buf(), None);
        built.part = Some(part);
        let f = open_read(temp).ok()?;
        // Its bytes counted as progress as they arrived (its holes never
        // did arrive).
        built.bytes_remote = list.data_bytes();
        Some((f, built))
    }

    /// Writes the chunks of `new` into `f`, each from the first source
    /// that holds it and verifies: the replica's own files (including what
    /// this run moved to the trash and the old version at the same path)
    /// before other replicas.
    fn fill(&self, f: &File, new: NewContent, built: &mut Built) -> Result<(), PathError> {
        let before = (built.bytes_local, built.bytes_remote);
        if self.fill_from(f, new, built, true)? {
            return Ok(());
        }
        // The old version changed while the kernel copied from it: what
        // was copied is not trusted; start again, verifying every chunk.
        (built.bytes_local, built.bytes_remote) = before;
        f.set_len(0).map_err(PathError::io("cannot truncate"))?;
        self.fill_from(f, new, built, false).map(|_| ())
    }

    /// One attempt of [`Ctx::fill`]. With `trust_old`, runs of chunks
    /// that the old version at the same path holds are copied by the
    /// kernel without being read here, if the old file's stat proves it
    /// still holds what was hashed; false if that proof failed after the
    /// copy (the caller starts again without it).
    fn fill_from(
        &self,
        f: &File,
        new: NewContent,
        built: &mut Built,
        trust_old: bool,
    ) -> Result<bool, PathError> {
        let list = new.list;
        let (mut srcs, mut trusted) = self.chunk_sources(new, trust_old);
        if self.copy_whole(f, &srcs, list, built)? {
            return Ok(true);
        }
        // One buffer of this list's largest chunk, never zeroed again (a
        // small file's is small: a chunker-maximum buffer per file is a
        // large allocation, zeroed through the kernel every time).
        let largest = list.chunks.iter().map(|c| c.len).max().unwrap_or(0);
        let mut buf = vec![0u8; largest.min(weave_chunk::CHUNK_MAX) as usize];
        let mut out = Out::new(f, built.unnamed.is_none().then(|| built.temp.clone()));
        for (off, c) in list.with_offsets() {
            if c.is_zero() {
                // A run of zeros: a hole (the file is new, nothing is there).
                if let Some(t) = &mut trusted {
                    if !t.copy_run(&mut out) {
                        return Ok(false);
                    }
                }
                out.skip(c.len as u64)
                    .map_err(PathError::io("cannot write"))?;
                // Nothing was read or copied: not counted as local or
                // remote bytes, only as progress.
                (self.progress)(c.len as u64);
                continue;
            }
            if c.len as usize > buf.len() {
                return Err(PathError::ChunkTooLarge {
                    chunk: c.hash.short_hex(),
                });
            }
            if let Some(t) = &mut trusted {
                if let Some(at) = t.offset_of(&c.hash) {
                    if !t.take(&mut out, at, c.len as u64) {
                        return Ok(false);
                    }
                    built.bytes_local += c.len as u64;
                    (self.progress)(c.len as u64);
                    continue;
                }
                if !t.copy_run(&mut out) {
                    return Ok(false);
                }
            }
            let buf = &mut buf[..c.len as usize];
            if !read_chunk(&mut srcs, off, c, buf, built) {
                return Err(PathError::ChunkGone {
                    chunk: c.hash.short_hex(),
                    offset: off,
                });
            }
            out.write(buf).map_err(PathError::io("cannot write"))?;
            (self.progress)(c.len as u64);
        }
        if let Some(t) = &mut trusted {
            if !t.copy_run(&mut out) {
                return Ok(false);
            }
        }
        out.finish(list.size())
            .map_err(PathError::io("cannot write"))?;
        Ok(trusted.is_none_or(|t| t.unchanged()))
    }

    /// Where the chunks of `new` may be read, in the order they are tried: what this run moved to the
    /// trash, the replica's own files, the old version at the same path,
    /// other replicas' files, a part file, chunks another replica sent.
    /// With `trust_old`, also the old version opened for kernel copies,
    /// if its stat proves it still holds what was hashed.
    fn chunk_sources(
        &self,
        new: NewContent,
        trust_old: bool,
    ) -> (Vec<ChunkSource>, Option<Trusted>) {
        let (op, content) = (new.op, new.id);
        let mut srcs: Vec<ChunkSource> = Vec::new();
        if let Some(p) = self.trashed.lock().unwrap().get(content) {
            srcs.push(ChunkSource::whole(p.clone(), true, None));
        }
        let locs = self.source.locations(content);
        for l in locs.iter().filter(|l| l.local) {
            srcs.push(ChunkSource::whole(l.path.clone(), true, l.stat));
        }
        // The old version at the same path: most of an edited file's chunks.
        let mut trusted: Option<Trusted> = None;
        if let Some(Object::File { content: old, .. }) =
            op.current.as_ref().map(|c| &c.entry.object)
        {
            if old != content {
                if let Some(old_list) = self.source.chunk_list(old) {
                    let map: Arc<HashMap<Hash, u64>> =
                        Arc::new(old_list.with_offsets().map(|(o, c)| (c.hash, o)).collect());
                    let path = join(self.root, &op.path);
                    let stat = op.current.as_ref().and_then(|c| c.stat);
                    if let (true, Some(stat)) = (trust_old, stat) {
                        trusted = Trusted::open(&path, stat, map.clone());
                    }
                    srcs.push(ChunkSource {
                        map: Some(map),
                        ..ChunkSource::whole(path, true, None)
                    });
                }
            }
        }
        for l in locs.iter().filter(|l| !l.local) {
            srcs.push(ChunkSource::whole(l.path.clone(), false, l.stat));
        }
        // A part file, or where the write that took it put it.
        if let Some(part) = self.source.part(content) {
            srcs.push(ChunkSource::whole(part, false, None));
        }
        if let Some((temp, target)) = self.parts.lock().unwrap().get(content) {
            srcs.push(ChunkSource::whole(temp.clone(), false, None));
            srcs.push(ChunkSource::whole(target.clone(), false, None));
        }
        // Chunks another replica sent.
        if let Some(v) = self.source.staged() {
            srcs.push(ChunkSource {
                map: Some(v.map.clone()),
                file: Some(Some(v.file.clone())),
                ..ChunkSource::whole(v.path.clone(), false, None)
            });
        }
        (srcs, trusted)
    }

    /// The fast path: copies into `f`, by the kernel, the first of `srcs`
    /// that is a whole file whose stat proves it still holds the content
    /// hashed earlier (`list`), all but its runs of zeros (holes). False
    /// if none is.
    fn copy_whole(
        &self,
        f: &File,
        srcs: &[ChunkSource],
        list: &ChunkList,
        built: &mut Built,
    ) -> Result<bool, PathError> {
        let size = list.size();
        for s in srcs.iter().filter(|s| s.map.is_none() && s.stat.is_some()) {
            if fast_copy(f, &s.path, s.stat.as_ref().expect("filtered"), list) {
                built.count(s.local, list.data_bytes());
                (self.progress)(size);
                return Ok(true);
            }
            // A failed attempt may have written part of the file.
            f.set_len(0).map_err(PathError::io("cannot truncate"))?;
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{apply, ContentSource, Location};
    use super::*;

    /// I-3: a source whose bytes do not match the chunk hashes is never
    /// written into a user file.
    #[test]
    fn corrupt_sources_are_rejected() {
        let t = replica();
        let other = tempfile::tempdir().unwrap();
        let good = b"the real content";
        fs::write(other.path().join("n"), b"the fake content").unwrap();
        let source = Src::new(vec![(good, other.path().join("n"), false, None)]);
        let out = apply(t.path(), &[write_op("f", None, good, 1)], &source, &|_| {});
        assert_eq!(out.issues.len(), 1);
        assert!(!t.path().join("f").exists());
    }

    #[test]
    fn an_old_version_changed_since_its_scan_is_read_and_verified() {
        let (t, other, old, new, op) = edit_case();
        // Changed in place after the scan, in a range the edit kept.
        let f = File::options()
            .write(true)
            .open(t.path().join("f"))
            .unwrap();
        f.write_all_at(b"XXXX", 10).unwrap();
        drop(f);
        let source = Src::new(vec![
            (&old, t.path().join("f"), true, None),
            (&new, other.path().join("n"), false, None),
        ]);
        let out = apply(t.path(), std::slice::from_ref(&op), &source, &|_| {});
        // I-5 keeps the user's change; nothing of it went into a build
        // either (the chunk that changed came from the other replica).
        assert_eq!(out.issues.len(), 1, "{:?}", out.issues);
        // Read and verified: the chunks at offsets 10 and 300,000 failed
        // there and came from the other replica.
        let list = weave_chunk::chunk_bytes(&new);
        let at = |x: u64| {
            list.with_offsets()
                .find(|(o, c)| *o <= x && x < o + c.len as u64)
                .map(|(_, c)| c.len as u64)
                .unwrap()
        };
        assert_eq!(out.bytes_remote, at(10) + at(300_000));
        let mut kept = old.clone();
        kept[10..14].copy_from_slice(b"XXXX");
        assert_eq!(fs::read(t.path().join("f")).unwrap(), kept);
    }

    /// A complete part file becomes the first file with its content by a
    /// rename (no copy); another file with the same content is copied
    /// from it, verified.
    #[test]
    fn a_part_file_lands_by_a_rename_and_serves_other_copies() {
        use std::os::unix::fs::MetadataExt;
        struct PartSrc(ChunkList, PathBuf);
        impl ContentSource for PartSrc {
            fn chunk_list(&self, content: &Hash) -> Option<ChunkList> {
                (self.0.content_id() == *content).then(|| self.0.clone())
            }
            fn locations(&self, _: &Hash) -> Vec<Location> {
                Vec::new()
            }
            fn part(&self, _: &Hash) -> Option<PathBuf> {
                Some(self.1.clone()).filter(|p| p.exists())
            }
        }
        let t = replica();
        let data = noise(2_000_000, 3);
        let list = weave_chunk::chunk_bytes(&data);
        let stage = crate::Stage::open(&t.path().join(STATE_DIR)).unwrap();
        let mut part = stage.part(&list).unwrap();
        for (off, c) in list.with_offsets() {
            part.put(&c.hash, &data[off as usize..(off + c.len as u64) as usize])
                .unwrap();
        }
        assert!(part.complete());
        let path = part.path().to_path_buf();
        drop(part);
        let ino = fs::metadata(&path).unwrap().ino();
        let source = PartSrc(list, path.clone());
        let ops = [write_op("a", None, &data, 1), write_op("b", None, &data, 1)];
        let out = apply(t.path(), &ops, &source, &|_| {});
        assert!(out.issues.is_empty(), "{:?}", out.issues);
        assert_eq!(out.done.len(), 2);
        assert!(!path.exists());
        let inos: Vec<u64> = ["a", "b"]
            .iter()
            .map(|n| {
                assert_eq!(fs::read(t.path().join(n)).unwrap(), data);
                fs::metadata(t.path().join(n)).unwrap().ino()
            })
            .collect();
        assert_eq!(inos.iter().filter(|i| **i == ino).count(), 1, "{inos:?}");
    }
}
