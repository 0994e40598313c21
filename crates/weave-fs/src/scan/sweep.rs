//! The scan's part in owners and extended attributes: what a path's are
//! to be recorded as ([`extra_of`], [`keep_unfilled`]), and, when what the
//! replica keeps of them changed, giving back what it passed through
//! ([`give_back`]) and checking every path once ([`Sweep`]).

use super::{ScanError, Update};
use crate::util::{join, stat_of};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;
use weave_core::{Meta, MetaScope, Stat};
use weave_index::{Index, ScanRecord};

/// Gives back to the tree what `widened` keeps of each live entry's
/// recorded metadata and the tree lacks (see [`scan`]); returns, by path,
/// what it could not.
pub(super) fn give_back(
    root: &Path,
    index: &Index,
    widened: &MetaScope,
    names: &crate::meta::Names,
) -> Result<HashMap<String, crate::meta::Unfilled>, ScanError> {
    let mut live: Vec<String> = Vec::new();
    index.for_each_scan_record(|p, _| live.push(p.to_string()))?;
    let mut unfilled = HashMap::new();
    for rel in live {
        let Some(m) = index.entry(&rel)?.and_then(|le| le.entry.meta) else {
            continue;
        };
        let u = crate::meta::fill_missing(&join(root, &rel), &m, widened, names);
        if u.owner || !u.xattrs.is_empty() {
            unfilled.insert(rel, u);
        }
    }
    Ok(unfilled)
}

/// A check of every path's owner and attributes not otherwise looked at
/// by this scan, when what the replica keeps of them changed (see
/// [`scan`]): a difference is a change.
pub(super) struct Sweep<'a> {
    pub(super) root: &'a Path,
    /// The metadata to record for a path, given what the index had.
    pub(super) meta_of: &'a MetaOf<'a>,
}

/// How a scan finds the metadata to record for a path (see [`scan`]).
pub(super) type MetaOf<'a> = dyn Fn(&str, Option<&Meta>) -> Option<Box<Meta>> + 'a;

impl Sweep<'_> {
    pub(super) fn run(
        &self,
        index: &Index,
        handled: &HashSet<String>,
        updates: &mut Vec<Update>,
        stat_only: &mut Vec<(String, Stat)>,
    ) -> Result<(), ScanError> {
        let mut live: Vec<(String, bool)> = Vec::new();
        index.for_each_scan_record(|p, r| {
            if !handled.contains(p) {
                live.push((p.to_string(), matches!(r, ScanRecord::File(_))));
            }
        })?;
        for (rel, is_file) in live {
            let Some(prev) = index.entry(&rel)? else {
                continue;
            };
            let full = join(self.root, &rel);
            let meta = (self.meta_of)(&rel, prev.entry.meta.as_deref());
            // The new stat is taken only for a file whose content cannot
            // have changed since it was recorded (same size, mtime, inode
            // and mode; giving values back changed its ctime): else the
            // old one stays, and the next scan reads the file again.
            let now = match is_file {
                true => fs::symlink_metadata(&full).ok().map(|m| stat_of(&m)),
                false => None,
            };
            let unchanged = match (now, prev.stat) {
                (Some(n), Some(p)) => {
                    !p.racy
                        && n.size == p.size
                        && n.mtime_ns == p.mtime_ns
                        && n.ino == p.ino
                        && n.mode == p.mode
                }
                _ => false,
            };
            let stat = if unchanged { now } else { prev.stat };
            if meta != prev.entry.meta {
                let e = prev.entry;
                updates.push((rel, e.object, e.mode, e.mtime_ns, stat, Some(meta)));
            } else if let Some(st) = stat.filter(|s| Some(*s) != prev.stat) {
                stat_only.push((rel, st));
            }
        }
        Ok(())
    }
}

/// `meta` with what could not be given back to the tree (`unfilled`) as
/// `recorded` had it: a value the tree refused is not a removal.
pub(super) fn keep_unfilled(
    meta: Option<Box<Meta>>,
    recorded: Option<&Meta>,
    unfilled: &crate::meta::Unfilled,
) -> Option<Box<Meta>> {
    let Some(rec) = recorded.filter(|_| unfilled.owner || !unfilled.xattrs.is_empty()) else {
        return meta;
    };
    let mut m = meta.map(|b| *b).unwrap_or_default();
    if unfilled.owner {
        m.owner = rec.owner.clone();
    }
    for name in &unfilled.xattrs {
        m.xattrs.retain(|x| &x.name != name);
        m.xattrs
            .extend(rec.xattrs.iter().filter(|x| &x.name == name).cloned());
    }
    m.xattrs.sort();
    m.boxed()
}

/// The owner and extended attributes a replica records for the path
/// `full`: what it keeps of them as they are on disk, and from `before`
/// (what its index had) the rest (see [`Meta::observed_over`]).
/// `link`: the path's hard link as the walk saw it (the first of its
/// file's names, or none), or None where the scan cannot tell (a scan of
/// watched paths only sees some names): what was recorded then stays.
pub(super) fn extra_of(
    full: &Path,
    link: Option<Option<String>>,
    before: Option<&Meta>,
    names: &crate::meta::Names,
) -> Option<Box<Meta>> {
    let scope = crate::meta::scope();
    if !scope.any() {
        return before.cloned().map(Box::new);
    }
    let Ok(m) = fs::symlink_metadata(full) else {
        return before.cloned().map(Box::new);
    };
    let (mut seen, mut read_as) = crate::meta::read(full, &m, scope, names);
    match link.filter(|_| scope.links && m.is_file()) {
        Some(l) => seen.link = l,
        None => read_as.links = false,
    }
    // An owner given by name gets this machine's ids for that name: what
    // the index has still holds while the ids on disk are the ones it maps
    // to here (else the other machine's numbers would read as a change).
    if let (Some(now), Some(was)) = (&seen.owner, before.and_then(|b| b.owner.as_ref())) {
        if names.ids_of(was, scope.numeric_ids) == (now.uid, now.gid) {
            seen.owner = Some(was.clone());
        }
    }
    let scope = &read_as;
    Meta::observed_over(seen, before, scope).boxed()
}
