//! Hard links, after the executor: a file written as a name of a file
//! with several names (its entry's `meta.link` names the first of them)
//! becomes a link to that first name, when that one holds the same
//! content, still as recorded. Each name was written (or kept) whole
//! first, so a name whose first one is missing or differs stays a file of
//! its own: never a wrong content, at worst a copy.

use super::Done;
use crate::util::{join, same_stat, stat_of, temp_name, FsIssue};
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use weave_core::{Hash, LocalEntry, Object, Stat};

/// Gives each name in `done` that leaves a file with several names a file
/// of its own ([`split`]), then links the names in `done` to the first
/// names they name, in the tree at `root`; `recorded` gives what the index
/// has of a first name this run did not write. The stats in `done` of the files involved are taken
/// again (a link changes the file's ctime). Returns what failed; those
/// names stay files of their own.
pub(crate) fn relink(
    root: &Path,
    ops: &[weave_core::Op],
    done: &mut [Done],
    recorded: &dyn Fn(&str) -> Option<LocalEntry>,
) -> Vec<FsIssue> {
    let mut issues = split(root, ops, done);
    let written: HashMap<String, usize> = done
        .iter()
        .enumerate()
        .filter(|(_, d)| d.entry.object.content().is_some())
        .map(|(i, d)| (d.entry.path.clone(), i))
        .collect();
    let mut touched: Vec<usize> = Vec::new();
    // A first name's stat once this pass linked to it (its ctime moved).
    let mut relinked: HashMap<String, Stat> = HashMap::new();
    for i in 0..done.len() {
        let d = &done[i];
        let (Some(content), Some(first)) = (
            d.entry.object.content(),
            d.entry.meta.as_ref().and_then(|m| m.link.clone()),
        ) else {
            continue;
        };
        if first == d.entry.path {
            continue;
        }
        // The first name as this replica holds it: written by this run,
        // or recorded earlier, with this content.
        let held: Option<Stat> = match written.get(&first) {
            Some(&j) => holds(&done[j].entry.object, content, done[j].stat),
            None => recorded(&first).and_then(|le| holds(&le.entry.object, content, le.stat)),
        };
        let Some(first_stat) = held.map(|s| relinked.get(&first).copied().unwrap_or(s)) else {
            continue;
        };
        match link_to(root, &first, &d.entry.path, (&first_stat, content), d.stat) {
            Ok(true) => {
                if let Ok(m) = fs::symlink_metadata(join(root, &first)) {
                    relinked.insert(first.clone(), stat_of(&m));
                }
                touched.push(i);
                if let Some(&j) = written.get(&first) {
                    touched.push(j);
                }
            }
            Ok(false) => {}
            Err(e) => issues.push(FsIssue::new(
                join(root, &d.entry.path),
                format!("cannot make it a hard link of {first}: {e}"),
            )),
        }
    }
    for i in touched {
        if let Ok(m) = fs::symlink_metadata(join(root, &done[i].entry.path)) {
            done[i].stat = Some(stat_of(&m));
        }
    }
    issues
}

/// The stat a first name is known by, if its entry holds `content`.
fn holds(object: &Object, content: Hash, stat: Option<Stat>) -> Option<Stat> {
    (object.content() == Some(content))
        .then_some(stat)
        .flatten()
}

/// Makes `name` a link to `first`, if `first` still holds `content` (it
/// is the file recorded as `stat`; or only its ctime moved, as when this
/// run removed another of its names, and its bytes hash to `content`) and
/// `name` is the file recorded as `name_stat`, on one device. True if it
/// did; false if there was nothing to do or it must not be done.
fn link_to(
    root: &Path,
    first: &str,
    name: &str,
    (stat, content): (&Stat, Hash),
    name_stat: Option<Stat>,
) -> std::io::Result<bool> {
    let (fp, np) = (join(root, first), join(root, name));
    // A first name gone (removed by this run, or its write failed) or not
    // a file: nothing to link to.
    let Ok(fm) = fs::symlink_metadata(&fp) else {
        return Ok(false);
    };
    let nm = fs::symlink_metadata(&np)?;
    if (fm.dev(), fm.ino()) == (nm.dev(), nm.ino()) {
        return Ok(false);
    }
    let ready = fm.file_type().is_file()
        && nm.file_type().is_file()
        && fm.dev() == nm.dev()
        && name_stat.is_some_and(|s| holds_content(&np, &nm, &s, content));
    if !ready || !holds_content(&fp, &fm, stat, content) {
        return Ok(false);
    }
    // The name once more, right before it is replaced: still the file
    // this run wrote (hashing the first name may have taken a while).
    if !fs::symlink_metadata(&np).is_ok_and(|m| {
        (m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec())
            == (nm.dev(), nm.ino(), nm.len(), nm.mtime(), nm.mtime_nsec())
    }) {
        return Ok(false);
    }
    let dir = np.parent().unwrap_or(root);
    let temp = dir.join(temp_name());
    fs::hard_link(&fp, &temp)?;
    if let Err(e) = fs::rename(&temp, &np) {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    Ok(true)
}

/// Whether the file at `path` (metadata `m`) holds `content`: its stat is
/// the one recorded with it, or, where only its ctime moved, its bytes say
/// so.
fn holds_content(path: &Path, m: &fs::Metadata, stat: &Stat, content: Hash) -> bool {
    if same_stat(m, stat) {
        return true;
    }
    let same_file = m.len() == stat.size
        && m.ino() == stat.ino
        && m.mtime() * 1_000_000_000 + m.mtime_nsec() == stat.mtime_ns;
    same_file
        && fs::File::open(path)
            .and_then(weave_chunk::chunk_reader)
            .is_ok_and(|l| l.content_id() == content)
}

/// Names that were recorded as a name of a file with several names and
/// are no longer one (their link was broken where the change was made):
/// each gets a copy of its own, so that an edit through one name no
/// longer changes the others. Their stats in `done` are taken again.
fn split(root: &Path, ops: &[weave_core::Op], done: &mut [Done]) -> Vec<FsIssue> {
    let mut issues = Vec::new();
    for d in done.iter_mut() {
        let Some(op) = ops.get(d.op) else {
            continue;
        };
        let was = op
            .current
            .as_ref()
            .and_then(|c| c.entry.meta.as_ref()?.link.clone());
        let now = d.entry.meta.as_ref().and_then(|m| m.link.clone());
        if was.is_none() || now.is_some() || d.entry.object.content().is_none() {
            continue;
        }
        let path = join(root, &d.entry.path);
        match copy_apart(&path, &d.entry) {
            Ok(Some(stat)) => d.stat = Some(stat),
            Ok(None) => {}
            Err(e) => issues.push(FsIssue::new(
                &path,
                format!("cannot give it a file of its own: {e}"),
            )),
        }
    }
    issues
}

/// Replaces the file at `path`, if it has other names, by a copy of it
/// (mode, mtime, owner and attributes as `entry` has them). The stat of
/// the copy, or None if there was nothing to do.
fn copy_apart(path: &Path, entry: &weave_core::Entry) -> std::io::Result<Option<Stat>> {
    let m = fs::symlink_metadata(path)?;
    if !m.file_type().is_file() || m.nlink() < 2 {
        return Ok(None);
    }
    let dir = path.parent().unwrap_or(path);
    let temp = dir.join(temp_name());
    let made = (|| {
        fs::copy(path, &temp)?;
        let f = fs::File::options().write(true).open(&temp)?;
        let names = crate::meta::Names::default();
        crate::meta::apply(
            crate::meta::Target::File(&f),
            entry.meta.as_deref(),
            crate::meta::scope(),
            &names,
        )?;
        f.set_times(fs::FileTimes::new().set_modified(m.modified()?))?;
        f.sync_all()?;
        fs::rename(&temp, path)
    })();
    if let Err(e) = made {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    Ok(Some(stat_of(&fs::symlink_metadata(path)?)))
}
