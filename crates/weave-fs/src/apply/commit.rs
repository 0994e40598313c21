//! Changing the tree, each change right after re-checking that what it
//! replaces or removes is still what the index says (I-5): the commit of
//! a built file or symlink (at a new path by a link or a rename that
//! never replaces anything; over an old version by a rename, the old file
//! kept in the trash), removals (a file moved to the trash), new
//! directories, metadata changes, and the index-only changes.

use super::build::Built;
use super::order::Unlanded;
use super::{hooks, open_read, ApplyOutcome, Ctx, Done, PathError};
use crate::util::{join, link_unnamed, open_dir_beneath, same_stat, stat_of};
use std::fs::{self, File, Metadata};
use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};
use weave_core::{Entry, LocalEntry, Object, Op, OpKind, Stat};

/// Whether `meta` is of the file recorded with `stat`: a regular file
/// whose stat still matches.
fn is_recorded_file(meta: &Metadata, stat: Option<Stat>) -> bool {
    meta.file_type().is_file() && stat.is_some_and(|s| same_stat(meta, &s))
}

/// [`is_recorded_file`], or a file with other names whose ctime alone
/// moved (this run replacing or removing another of its names moves it)
/// and whose bytes still hash to `content`.
fn still_holds(
    full: &Path,
    meta: &Metadata,
    stat: Option<Stat>,
    content: &weave_core::Hash,
) -> bool {
    use std::os::unix::fs::MetadataExt;
    if is_recorded_file(meta, stat) {
        return true;
    }
    let Some(s) = stat else {
        return false;
    };
    // Only where hard links are kept: this run's links and removals of a
    // file's other names move its ctime.
    let linked = crate::meta::scope().links && meta.file_type().is_file() && meta.nlink() > 1;
    linked
        && !s.racy
        && meta.len() == s.size
        && meta.ino() == s.ino
        && meta.mode() & 0o777 == s.mode
        && crate::util::mtime_ns(meta) == s.mtime_ns
        && fs::File::open(full)
            .and_then(weave_chunk::chunk_reader)
            .is_ok_and(|l| l.content_id() == *content)
}

/// Whether `op` changes only which name of a file with several names is
/// its first one (see [`crate::apply::links`]).
fn only_link_differs(op: &Op) -> bool {
    let Some(cur) = op.current.as_ref().map(|c| &c.entry) else {
        return false;
    };
    let strip = |m: Option<&weave_core::Meta>| {
        m.map(|m| weave_core::Meta {
            link: None,
            ..m.clone()
        })
        .filter(|m| !m.is_empty())
    };
    let t = &op.target;
    cur.object == t.object
        && cur.mode == t.mode
        && cur.mtime_ns == t.mtime_ns
        && cur.meta != t.meta
        && strip(cur.meta.as_deref()) == strip(t.meta.as_deref())
}

/// Gives the file `f` the mode and mtime of `target`.
pub(super) fn set_mode_and_mtime(f: &File, target: &Entry) -> Result<(), PathError> {
    f.set_permissions(fs::Permissions::from_mode(target.mode))
        .map_err(PathError::io("cannot set permissions"))?;
    let mtime = UNIX_EPOCH
        .checked_add(Duration::from_nanos(target.mtime_ns.max(0) as u64))
        .unwrap_or(UNIX_EPOCH);
    f.set_times(fs::FileTimes::new().set_modified(mtime))
        .map_err(PathError::io("cannot set mtime"))
}

/// The index-only changes of `ops`: done as they are, with the stat the
/// index has if it already holds that state.
pub(super) fn record(ops: &[Op], out: &mut ApplyOutcome) {
    for (i, op) in ops
        .iter()
        .enumerate()
        .filter(|(_, o)| o.kind == OpKind::Record)
    {
        let stat = op
            .current
            .as_ref()
            .filter(|c| c.entry.same_state(&op.target))
            .and_then(|c| c.stat);
        out.done.push(Done::of(i, op, stat, None));
    }
}

impl Ctx<'_> {
    /// Makes the directories `dirs`, in this order; their planned modes go
    /// to `final_modes`, to be set at the end.
    pub(super) fn make_dirs(
        &self,
        dirs: &[(usize, &Op)],
        out: &mut ApplyOutcome,
        final_modes: &mut Vec<(String, u32)>,
    ) {
        for &(i, op) in dirs {
            match self.make_dir(op) {
                Ok(()) => {
                    final_modes.push((op.path.clone(), op.target.mode));
                    out.done.push(Done::of(i, op, None, None))
                }
                Err(e) => out.issues.push(self.issue(op, e)),
            }
        }
    }

    /// Makes a directory, writable by its owner (its mode is set at the
    /// end); one already there is taken as it is.
    fn make_dir(&self, op: &Op) -> Result<(), PathError> {
        self.check_parents(&op.path)?;
        let full = join(self.root, &op.path);
        match fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => return Err(PathError::NotADir),
            Err(_) => fs::DirBuilder::new()
                .mode(op.target.mode | 0o700)
                .create(&full)
                .map_err(PathError::io("cannot create directory"))?,
        }
        self.set_extra(crate::meta::Target::Path(&full), &op.target)
    }

    /// Carries out the removals `removes`, in this order, except those
    /// held back (see [`Unlanded`]).
    pub(super) fn remove_all(
        &self,
        removes: &[(usize, &Op)],
        unlanded: &Unlanded,
        out: &mut ApplyOutcome,
    ) {
        for &(i, op) in removes {
            if self.held_back(op, unlanded, out) {
                continue;
            }
            match self.remove(op) {
                Ok(()) => out.done.push(Done::of(i, op, None, None)),
                Err(e) => out.issues.push(self.issue(op, e)),
            }
        }
    }

    /// Removes what `op` removes if it is still what the index says: a
    /// file goes to the trash (or is removed, on another file system), a
    /// symlink or an empty directory is removed.
    fn remove(&self, op: &Op) -> Result<(), PathError> {
        self.check_parents(&op.path)?;
        let full = join(self.root, &op.path);
        let meta = match fs::symlink_metadata(&full) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(PathError::io("cannot stat")(e)),
        };
        let Some(c) = &op.current else {
            return Ok(());
        };
        match &c.entry.object {
            Object::File { content, .. } => {
                if !still_holds(&full, &meta, c.stat, content) {
                    return Err(PathError::Changed);
                }
                let dest = self.trash_slot(&op.path, &c.entry, true)?;
                match fs::rename(&full, &dest) {
                    Ok(()) => {
                        self.trashed.lock().unwrap().insert(*content, dest.clone());
                        self.note_replaced(&op.path, c, dest, true);
                        Ok(())
                    }
                    // Another filesystem mounted inside the replica: the
                    // trash cannot take it, so it is simply removed.
                    Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
                        fs::remove_file(&full).map_err(PathError::io("cannot remove"))
                    }
                    Err(e) => Err(PathError::io("cannot remove")(e)),
                }
            }
            Object::Symlink { target } => {
                let t = fs::read_link(&full).map_err(PathError::io("cannot read symlink"))?;
                if !meta.file_type().is_symlink() || t.to_str() != Some(target.as_str()) {
                    return Err(PathError::Changed);
                }
                fs::remove_file(&full).map_err(PathError::io("cannot remove"))
            }
            Object::Dir => {
                if !meta.file_type().is_dir() {
                    return Err(PathError::Changed);
                }
                fs::remove_dir(&full).map_err(|e| {
                    if e.raw_os_error() == Some(rustix::io::Errno::NOTEMPTY.raw_os_error()) {
                        PathError::DirNotEmpty
                    } else {
                        PathError::io("cannot remove directory")(e)
                    }
                })
            }
            _ => Ok(()),
        }
    }

    /// Replaces the target with a built temporary, after checking that the
    /// target is still what the index says (I-5).
    pub(super) fn commit(&self, op: &Op, b: &mut Built) -> Result<Option<Stat>, PathError> {
        hooks::note("commit");
        let full = join(self.root, &op.path);
        self.check_parents(&op.path)?;
        hooks::before_commit(&full);
        // An unnamed file's stat while nobody else can reach it: what the
        // sync wrote (see [`stat_written`]).
        let written = match &b.unnamed {
            Some(f) => Some(
                f.metadata()
                    .map_err(PathError::io("cannot stat after writing"))?,
            ),
            None => None,
        };
        match op.current.as_ref().filter(|c| c.entry.is_live()) {
            None => self.put_new(op, &full, b)?,
            Some(c) => self.replace(op, c, &full, b)?,
        }
        if op.target.object.is_live() && matches!(op.target.object, Object::File { .. }) {
            stat_written(&full, b, written).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Puts `b` at `full`, the free path of `op`, never replacing what
    /// may have appeared there: an unnamed file by a link, a temporary by
    /// a rename that refuses to replace.
    fn put_new(&self, op: &Op, full: &Path, b: &mut Built) -> Result<(), PathError> {
        match &b.unnamed {
            Some(f) => self.link_new(f, &op.path, full)?,
            None => rustix::fs::renameat_with(
                rustix::fs::CWD,
                &b.temp,
                rustix::fs::CWD,
                full,
                rustix::fs::RenameFlags::NOREPLACE,
            )
            .map_err(|e| {
                if e == rustix::io::Errno::EXIST {
                    PathError::Appeared
                } else {
                    PathError::io("cannot rename into place")(e.into())
                }
            })?,
        }
        b.committed = true;
        Ok(())
    }

    /// Gives the unnamed file `f` its name `path` (`full` from here).
    fn link_new(&self, f: &File, path: &str, full: &Path) -> Result<(), PathError> {
        hooks::note("link");
        // Into the directory reached from the root without a symlink on
        // the way: one swapped in since the check above cannot turn the
        // link elsewhere.
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        let dir = match &self.root_fd {
            Some(r) => {
                open_dir_beneath(r.as_fd(), parent).map_err(|source| PathError::ParentEscaped {
                    dir: parent.to_string(),
                    source,
                })?
            }
            None => None,
        };
        match &dir {
            Some(d) => link_unnamed(f, d, Path::new(name)),
            None => link_unnamed(f, rustix::fs::CWD, full),
        }
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                PathError::Appeared
            } else {
                PathError::io("cannot link the new file into place")(e)
            }
        })?;
        hooks::after_link(full);
        Ok(())
    }

    /// Renames the temporary of `b` over `full`, where `op` replaces the
    /// live version `c`, if that is still what the index says (I-5). An
    /// old file is kept in the trash.
    fn replace(
        &self,
        op: &Op,
        c: &LocalEntry,
        full: &Path,
        b: &mut Built,
    ) -> Result<(), PathError> {
        let mut kept = None;
        let meta = fs::symlink_metadata(full).map_err(|_| PathError::Changed)?;
        match &c.entry.object {
            Object::File { content, .. } => {
                if !still_holds(full, &meta, c.stat, content) {
                    return Err(PathError::Changed);
                }
                // Keep the old content reachable for the rest of this run
                // (other writes may need its chunks) and for the version
                // store.
                let keep = self.trash_slot(&op.path, &c.entry, false)?;
                if fs::hard_link(full, &keep).is_ok() {
                    self.trashed
                        .lock()
                        .unwrap()
                        .entry(*content)
                        .or_insert(keep.clone());
                    kept = Some(keep);
                }
            }
            Object::Symlink { target } => {
                let t = fs::read_link(full).map_err(|_| PathError::Changed)?;
                if t.to_str() != Some(target.as_str()) {
                    return Err(PathError::Changed);
                }
            }
            _ => return Err(PathError::Changed),
        }
        fs::rename(&b.temp, full).map_err(|e| {
            if let Some(k) = &kept {
                let _ = fs::remove_file(k);
            }
            PathError::io("cannot rename into place")(e)
        })?;
        b.committed = true;
        if let Some(file) = kept {
            self.note_replaced(&op.path, c, file, false);
        }
        Ok(())
    }

    /// The metadata changes of `ops` (mode and mtime); the modes of
    /// directories go to `final_modes`, to be set at the end.
    pub(super) fn set_metas(
        &self,
        ops: &[Op],
        out: &mut ApplyOutcome,
        final_modes: &mut Vec<(String, u32)>,
    ) {
        for (i, op) in ops
            .iter()
            .enumerate()
            .filter(|(_, o)| o.kind == OpKind::SetMeta)
        {
            match self.set_meta(op) {
                Ok(stat) => {
                    if op.target.object.is_dir() {
                        final_modes.push((op.path.clone(), op.target.mode));
                    }
                    out.done.push(Done::of(i, op, stat, None))
                }
                Err(e) => out.issues.push(self.issue(op, e)),
            }
        }
    }

    /// Gives a file the mode and mtime `op` wants, if it is still what
    /// the index says; a directory is only checked (its mode is set at
    /// the end).
    fn set_meta(&self, op: &Op) -> Result<Option<Stat>, PathError> {
        self.check_parents(&op.path)?;
        let full = join(self.root, &op.path);
        let meta = fs::symlink_metadata(&full).map_err(|_| PathError::Changed)?;
        match &op.target.object {
            Object::Dir => {
                if !meta.file_type().is_dir() {
                    return Err(PathError::Changed);
                }
                self.set_extra(crate::meta::Target::Path(&full), &op.target)?;
                Ok(None)
            }
            Object::File { .. } if only_link_differs(op) => {
                // Nothing to do to the file itself (the links are made
                // after the rest): recorded with the stat it had, so that
                // the next scan reads it again if it moved.
                if !meta.file_type().is_file() {
                    return Err(PathError::Changed);
                }
                Ok(op.current.as_ref().and_then(|c| c.stat))
            }
            Object::File { content, .. } => {
                if !still_holds(
                    &full,
                    &meta,
                    op.current.as_ref().and_then(|c| c.stat),
                    content,
                ) {
                    return Err(PathError::Changed);
                }
                let f = open_read(&full).map_err(PathError::io("cannot open"))?;
                self.set_extra(crate::meta::Target::File(&f), &op.target)?;
                set_mode_and_mtime(&f, &op.target)?;
                let m = f.metadata().map_err(PathError::io("cannot stat"))?;
                Ok(Some(stat_of(&m)))
            }
            Object::Symlink { .. } if meta.file_type().is_symlink() => {
                self.set_extra(crate::meta::Target::Path(&full), &op.target)?;
                Ok(None)
            }
            _ => Ok(None),
        }
    }
}

/// The stat to record for the file `b` just committed at `full`.
///
/// A linked file's own descriptor: no lookup, and what is recorded is
/// the file written, whatever the path holds now. The link changed its
/// ctime only; if its size or mtime changed too (from `written`, its stat
/// before the link), someone wrote to it since: the stat from before the
/// link is recorded, so that the next scan sees that change.
fn stat_written(full: &Path, b: &Built, written: Option<Metadata>) -> Result<Stat, PathError> {
    let m = match (&b.unnamed, written) {
        (Some(f), Some(before)) => {
            let after = f
                .metadata()
                .map_err(PathError::io("cannot stat after writing"))?;
            let same = after.len() == before.len()
                && crate::util::mtime_ns(&after) == crate::util::mtime_ns(&before);
            hooks::note(if same {
                "stat after link"
            } else {
                "stat before link"
            });
            if same {
                after
            } else {
                before
            }
        }
        _ => fs::symlink_metadata(full).map_err(PathError::io("cannot stat after writing"))?,
    };
    Ok(stat_of(&m))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{apply, hooks};
    use super::*;
    use std::io::Write;
    use weave_core::path::STATE_DIR;
    use weave_core::{Entry, ReplicaId, VersionVector};

    /// New files (no name before they are whole and flushed) land with
    /// their content, mode and mtime, and the stat recorded is the file's;
    /// with unnamed files where the file system takes them, named
    /// temporaries where not. Nothing else is left in the directory.
    #[test]
    fn new_files_land_whole_with_or_without_unnamed_temporaries() {
        for no_unnamed in [false, true] {
            let t = replica();
            let other = tempfile::tempdir().unwrap();
            let root = t.path();
            fs::create_dir(root.join("d")).unwrap();
            let mut ops = Vec::new();
            let mut src = Vec::new();
            let datas: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 + i as usize]).collect();
            for (i, data) in datas.iter().enumerate() {
                fs::write(other.path().join(format!("s{i}")), data).unwrap();
                src.push((
                    data.as_slice(),
                    other.path().join(format!("s{i}")),
                    false,
                    None,
                ));
                let mut op = write_op(&format!("d/f{i}"), None, data, 1);
                op.target.mode = 0o640;
                ops.push(op);
            }
            let source = Src::new(src);
            hooks::NO_UNNAMED.with(|n| n.set(no_unnamed));
            hooks::EVENTS.with(|v| v.borrow_mut().clear());
            let out = apply(root, &ops, &source, &|_| {});
            hooks::NO_UNNAMED.with(|n| n.set(false));
            assert!(out.issues.is_empty(), "{:?}", out.issues);
            assert_eq!(out.done.len(), 5);
            for d in &out.done {
                let p = join(root, &ops[d.op].path);
                let m = fs::symlink_metadata(&p).unwrap();
                assert_eq!(fs::read(&p).unwrap(), datas[d.op]);
                assert_eq!(m.permissions().mode() & 0o777, 0o640);
                assert_eq!(crate::util::mtime_ns(&m), ops[d.op].target.mtime_ns);
                assert_eq!(d.stat, Some(stat_of(&m)), "the stat recorded is the file's");
            }
            let mut names: Vec<String> = fs::read_dir(root.join("d"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            assert_eq!(names, ["f0", "f1", "f2", "f3", "f4"]);
            let links = hooks::EVENTS.with(|v| v.borrow().iter().filter(|e| **e == "link").count());
            let expect = if !no_unnamed && unnamed_here(other.path()) {
                5
            } else {
                0
            };
            assert_eq!(links, expect, "no_unnamed={no_unnamed}");
        }
    }

    /// A user's write to a new file between its link and the stat taken
    /// for the index is not recorded as the synced content: the stat
    /// recorded is the one from before the link, which the file no longer
    /// has (the next scan sees the change). Without such a write, the
    /// recorded stat is the file's.
    #[test]
    fn a_write_right_after_the_link_is_seen_by_the_next_scan() {
        for write in [true, false] {
            let (t, _src, source, ops) = new_files(1, b"the synced content");
            let root = t.path().to_path_buf();
            if !unnamed_here(&root) {
                return; // the named path records the path's stat, tested elsewhere
            }
            hooks::EVENTS.with(|v| v.borrow_mut().clear());
            hooks::AFTER_LINK.with(|f| {
                *f.borrow_mut() = write.then(|| -> hooks::Hook {
                    Box::new(|p: &Path| {
                        let mut f = fs::OpenOptions::new().append(true).open(p).unwrap();
                        f.write_all(b" and the user's words").unwrap();
                    })
                })
            });
            let out = apply(&root, &ops, &source, &|_| {});
            hooks::AFTER_LINK.with(|f| *f.borrow_mut() = None);
            assert!(out.issues.is_empty(), "{:?}", out.issues);
            let now = stat_of(&fs::symlink_metadata(root.join("f0")).unwrap());
            assert_eq!(out.done[0].stat == Some(now), !write, "write={write}");
            let noted = hooks::EVENTS.with(|v| v.borrow().contains(&"stat before link"));
            assert_eq!(noted, write);
        }
    }

    /// A parent directory swapped for a symlink to elsewhere after the
    /// executor checked it, just before the new file is put in place: the
    /// file is not written through it (neither linked nor renamed there),
    /// and it is reported.
    #[test]
    fn a_parent_swapped_for_a_symlink_is_not_written_through() {
        for no_unnamed in [false, true] {
            let t = replica();
            let other = tempfile::tempdir().unwrap();
            let root = t.path().to_path_buf();
            fs::create_dir(root.join("d")).unwrap();
            let outside = other.path().join("outside");
            fs::create_dir(&outside).unwrap();
            let data = b"for d/new only";
            fs::write(other.path().join("s"), data).unwrap();
            let source = Src::new(vec![(data, other.path().join("s"), false, None)]);
            let ops = vec![write_op("d/new", None, data, 1)];
            hooks::NO_UNNAMED.with(|n| n.set(no_unnamed));
            let (r, o) = (root.clone(), outside.clone());
            hooks::BEFORE_COMMIT.with(|f| {
                *f.borrow_mut() = Some(Box::new(move |_: &Path| {
                    fs::rename(r.join("d"), r.join("d-moved")).unwrap();
                    std::os::unix::fs::symlink(&o, r.join("d")).unwrap();
                }))
            });
            let out = apply(&root, &ops, &source, &|_| {});
            hooks::BEFORE_COMMIT.with(|f| *f.borrow_mut() = None);
            hooks::NO_UNNAMED.with(|n| n.set(false));
            assert!(out.done.is_empty(), "no_unnamed={no_unnamed}");
            assert_eq!(out.issues.len(), 1, "{:?}", out.issues);
            let there: Vec<_> = fs::read_dir(&outside).unwrap().collect();
            assert!(
                there.is_empty(),
                "no_unnamed={no_unnamed}: written outside: {there:?}"
            );
        }
    }

    /// A file that appears at a new path while the sync writes it (after
    /// the new content is built, before it is put in place) is left as
    /// it is and reported, whether the new content was unnamed or a
    /// named temporary; no temporary is left behind.
    #[test]
    fn a_file_that_appears_at_a_new_path_is_never_replaced() {
        for no_unnamed in [false, true] {
            let t = replica();
            let other = tempfile::tempdir().unwrap();
            let root = t.path();
            let data = b"from the other replica";
            fs::write(other.path().join("s"), data).unwrap();
            let source = Src::new(vec![(data, other.path().join("s"), false, None)]);
            let ops = vec![write_op("new", None, data, 1)];
            hooks::NO_UNNAMED.with(|n| n.set(no_unnamed));
            hooks::BEFORE_COMMIT.with(|f| {
                *f.borrow_mut() = Some(Box::new(|p: &Path| fs::write(p, b"the user's").unwrap()))
            });
            let out = apply(root, &ops, &source, &|_| {});
            hooks::BEFORE_COMMIT.with(|f| *f.borrow_mut() = None);
            hooks::NO_UNNAMED.with(|n| n.set(false));
            assert!(out.done.is_empty(), "no_unnamed={no_unnamed}");
            assert_eq!(out.issues.len(), 1, "{:?}", out.issues);
            assert!(
                out.issues[0].message.contains("appeared"),
                "{:?}",
                out.issues
            );
            assert_eq!(fs::read(root.join("new")).unwrap(), b"the user's");
            let names: Vec<String> = fs::read_dir(root)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != STATE_DIR)
                .collect();
            assert_eq!(names, ["new"], "no_unnamed={no_unnamed}");
        }
    }

    /// I-5: a file that changed after the scan is never overwritten or
    /// deleted by the sync.
    #[test]
    fn files_changed_after_the_scan_are_left_alone() {
        let t = replica();
        let other = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::write(root.join("edit"), b"old").unwrap();
        fs::write(root.join("gone"), b"old too").unwrap();
        let cur_edit = local(root, file_entry("edit", b"old", 1));
        let cur_gone = local(root, file_entry("gone", b"old too", 1));
        let new = b"new content from elsewhere";
        fs::write(other.path().join("n"), new).unwrap();
        let source = Src::new(vec![(new, other.path().join("n"), false, None)]);

        // The user edits both files after the scan.
        std::thread::sleep(Duration::from_millis(5));
        fs::write(root.join("edit"), b"user's edit").unwrap();
        fs::write(root.join("gone"), b"user's other edit").unwrap();

        let ops = vec![
            write_op("edit", Some(cur_edit), new, 2),
            Op {
                kind: OpKind::Remove,
                path: "gone".into(),
                current: Some(cur_gone.clone()),
                target: Entry {
                    object: Object::Deleted,
                    mode: 0,
                    mtime_ns: 0,
                    vv: VersionVector::from_pairs(vec![(ReplicaId(1), 2)]),
                    ..cur_gone.entry.clone()
                },
            },
        ];
        let out = apply(root, &ops, &source, &|_| {});
        assert_eq!(out.issues.len(), 2, "{:?}", out.issues);
        assert!(out.done.is_empty());
        assert_eq!(fs::read(root.join("edit")).unwrap(), b"user's edit");
        assert_eq!(fs::read(root.join("gone")).unwrap(), b"user's other edit");
        assert!(out
            .issues
            .iter()
            .all(|i| i.message.contains("changed on disk during the sync")));
        // No temporary file is left behind.
        let names: Vec<String> = fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with(crate::TEMP_PREFIX)),
            "{names:?}"
        );
    }
}
