//! The trash, `.weave/trash`: where a run keeps the old versions of the
//! files it replaces (a hard link made before the rename) or removes
//! (moved there), so that their chunks stay available to the rest of the
//! run and the version store can save them afterwards ([`Replaced`],
//! [`clear_trash`]). Its journal names the version each file there holds,
//! written before the file goes there: the old versions a killed run did
//! not get to save are found by the next one ([`trash_leftovers`]).

use super::{Ctx, PathError, Replaced};
use crate::util::{temp_name, FsIssue};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use weave_core::path::STATE_DIR;
use weave_core::{Entry, LocalEntry};

/// The trash journal: which version each file in the trash holds.
const JOURNAL: &str = "journal";

/// One record of the trash journal.
#[derive(serde::Serialize, serde::Deserialize)]
struct TrashNote {
    /// The file's name in the trash.
    file: String,
    path: String,
    old: Entry,
    deleted: bool,
}

/// A record as a weave from before owners and attributes wrote it (its
/// entry without `meta`): a run killed before an upgrade still has its
/// old versions saved by the next.
#[derive(serde::Deserialize)]
struct TrashNoteV1 {
    file: String,
    path: String,
    old: EntryV1,
    deleted: bool,
}

#[derive(serde::Deserialize)]
struct EntryV1 {
    path: String,
    object: weave_core::Object,
    mode: u32,
    mtime_ns: i64,
    vv: weave_core::VersionVector,
    origin: weave_core::ReplicaId,
}

impl TrashNote {
    fn decode(body: &[u8]) -> Option<TrashNote> {
        if let Ok(n) = postcard::from_bytes::<TrashNote>(body) {
            return Some(n);
        }
        match postcard::take_from_bytes::<TrashNoteV1>(body) {
            Ok((n, [])) => Some(TrashNote {
                file: n.file,
                path: n.path,
                old: Entry {
                    path: n.old.path,
                    object: n.old.object,
                    mode: n.old.mode,
                    mtime_ns: n.old.mtime_ns,
                    vv: n.old.vv,
                    origin: n.old.origin,
                    meta: None,
                },
                deleted: n.deleted,
            }),
            _ => None,
        }
    }
}

/// The trash of the replica at `root`.
fn trash_dir(root: &Path) -> PathBuf {
    root.join(STATE_DIR).join("trash")
}

/// An empty trash for a run at `root`: what an earlier run left there is
/// removed first.
pub(super) fn empty_trash(root: &Path) -> Result<PathBuf, FsIssue> {
    let trash = trash_dir(root);
    let _ = fs::remove_dir_all(&trash);
    match fs::create_dir_all(&trash) {
        Ok(()) => Ok(trash),
        Err(e) => Err(FsIssue::new(&trash, format!("cannot create: {e}"))),
    }
}

/// What a run that was killed left in the trash: old versions it moved
/// aside and did not get to save. Files whose content still lives under
/// another name (a replace killed before its rename) are not included.
/// The stat of each is unknown, so their content must be read and checked.
pub fn trash_leftovers(root: &Path) -> Vec<Replaced> {
    use std::os::unix::fs::MetadataExt;
    let trash = trash_dir(root);
    let Ok(data) = fs::read(trash.join(JOURNAL)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut rest = &data[..];
    while rest.len() >= 4 {
        let n = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let Some(body) = rest.get(4..4 + n) else {
            break;
        };
        rest = &rest[4 + n..];
        let Some(note) = TrashNote::decode(body) else {
            break;
        };
        // Only plain names of weave's own temporaries: the journal is not
        // trusted to point anywhere else.
        if note.file.contains('/') || !note.file.starts_with(crate::util::TEMP_PREFIX) {
            continue;
        }
        let file = trash.join(&note.file);
        let Ok(m) = fs::symlink_metadata(&file) else {
            continue;
        };
        if !m.is_file() || m.nlink() > 1 {
            continue;
        }
        out.push(Replaced {
            path: note.path,
            old: note.old,
            file,
            deleted: note.deleted,
            stat: None,
        });
    }
    out
}

/// Removes what a run left in the trash (once its old versions were
/// saved, or when they are not to be).
pub fn clear_trash(root: &Path) {
    let _ = fs::remove_dir_all(trash_dir(root));
}

impl Ctx<'_> {
    /// A new name in the trash for the old version `old` at `path`,
    /// journaled before anything goes there (see [`Ctx::note_trash`]).
    pub(super) fn trash_slot(
        &self,
        path: &str,
        old: &Entry,
        deleted: bool,
    ) -> Result<PathBuf, PathError> {
        let file = self.trash.join(temp_name());
        self.note_trash(&file, path, old, deleted)?;
        Ok(file)
    }

    /// Notes that the old version `old` at `path` is now `file` in the
    /// trash, for the version store.
    pub(super) fn note_replaced(&self, path: &str, old: &LocalEntry, file: PathBuf, deleted: bool) {
        self.replaced.lock().unwrap().push(Replaced {
            path: path.to_string(),
            old: old.entry.clone(),
            file,
            deleted,
            stat: old.stat,
        });
    }

    /// Records in the trash journal, before the file goes there, which
    /// version `file` will hold: a run killed before its old versions were
    /// saved leaves them for the next one ([`trash_leftovers`]).
    fn note_trash(
        &self,
        file: &Path,
        path: &str,
        old: &Entry,
        deleted: bool,
    ) -> Result<(), PathError> {
        let note = TrashNote {
            file: file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: path.to_string(),
            old: old.clone(),
            deleted,
        };
        let body = postcard::to_stdvec(&note).map_err(PathError::JournalRecord)?;
        let mut rec = Vec::with_capacity(body.len() + 4);
        rec.extend_from_slice(&(body.len() as u32).to_le_bytes());
        rec.extend_from_slice(&body);
        let mut j = self.journal.lock().unwrap();
        if j.is_none() {
            let p = self.trash.join(JOURNAL);
            let f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(PathError::io("cannot open the trash journal"))?;
            *j = Some(f);
        }
        // One write per record: a kill leaves whole records and at most
        // one cut short at the end, which the reader ignores.
        j.as_mut()
            .expect("opened")
            .write_all(&rec)
            .map_err(PathError::io("cannot write the trash journal"))
    }

    /// The end of a run: the old versions it replaced or removed, still
    /// in the trash; the trash is removed if there are none.
    pub(super) fn into_replaced(self) -> Vec<Replaced> {
        let replaced = self.replaced.into_inner().unwrap_or_default();
        if replaced.is_empty() {
            let _ = fs::remove_dir_all(&self.trash);
        }
        replaced
    }
}

#[cfg(test)]
mod tests {
    use super::super::apply;
    use super::super::test_support::*;
    use super::*;
    use weave_core::{Object, Op, OpKind};

    /// What a run moves to the trash is journaled first, so a run killed
    /// before its old versions were saved leaves them for the next one;
    /// a record cut short by the kill is ignored.
    #[test]
    fn the_trash_journal_names_what_a_killed_run_left() {
        let (t, other, old, new, op) = edit_case();
        let root = t.path();
        fs::write(root.join("g"), b"gone soon").unwrap();
        let g = file_entry("g", b"gone soon", 1);
        let remove = Op {
            kind: OpKind::Remove,
            path: "g".into(),
            current: Some(local(root, g.clone())),
            target: Entry {
                object: Object::Deleted,
                ..g.clone()
            },
        };
        let source = Src::new(vec![
            (&old, root.join("f"), true, None),
            (&new, other.path().join("n"), false, None),
        ]);
        let out = apply(root, &[op, remove], &source, &|_| {});
        assert!(out.issues.is_empty(), "{:?}", out.issues);
        assert_eq!(out.replaced.len(), 2);
        // Killed here: nothing saved the old versions, the trash holds them.
        let mut left = trash_leftovers(root);
        left.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(left.len(), 2);
        assert_eq!((left[0].path.as_str(), left[0].deleted), ("f", false));
        assert_eq!(fs::read(&left[0].file).unwrap(), old);
        assert_eq!(left[0].old, file_entry("f", &old, 1));
        assert_eq!((left[1].path.as_str(), left[1].deleted), ("g", true));
        assert_eq!(fs::read(&left[1].file).unwrap(), b"gone soon");
        assert!(left.iter().all(|l| l.stat.is_none()));
        // A torn last record and a record naming something outside the
        // trash are ignored.
        let journal = root.join(STATE_DIR).join("trash").join(JOURNAL);
        let mut j = fs::OpenOptions::new().append(true).open(&journal).unwrap();
        let evil = postcard::to_stdvec(&TrashNote {
            file: "../../f".into(),
            path: "f".into(),
            old: g.clone(),
            deleted: true,
        })
        .unwrap();
        j.write_all(&(evil.len() as u32).to_le_bytes()).unwrap();
        j.write_all(&evil).unwrap();
        j.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(j);
        assert_eq!(trash_leftovers(root).len(), 2);
        // A file still linked elsewhere (a replace killed before its
        // rename) lives on and is not a leftover.
        fs::hard_link(&left[1].file, root.join("still-here")).unwrap();
        assert_eq!(trash_leftovers(root).len(), 1);
        clear_trash(root);
        assert!(trash_leftovers(root).is_empty());
    }

    /// A record written before entries had metadata is still read; one
    /// that is neither kind is not.
    #[test]
    fn journal_records_of_the_old_layout_still_read() {
        #[derive(serde::Serialize)]
        struct V1<'a> {
            file: &'a str,
            path: &'a str,
            old: (
                &'a str,
                Object,
                u32,
                i64,
                weave_core::VersionVector,
                weave_core::ReplicaId,
            ),
            deleted: bool,
        }
        let e = file_entry("f", b"x", 3);
        let body = postcard::to_stdvec(&V1 {
            file: "t",
            path: "f",
            old: (
                "f",
                e.object.clone(),
                e.mode,
                e.mtime_ns,
                e.vv.clone(),
                e.origin,
            ),
            deleted: true,
        })
        .unwrap();
        let n = TrashNote::decode(&body).expect("an old record reads");
        assert_eq!((n.old, n.deleted), (e, true));
        let mut longer = body.clone();
        longer.push(7);
        assert!(TrashNote::decode(&longer).is_none());
    }
}
