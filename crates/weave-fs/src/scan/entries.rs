//! The files a scan reads, and the entries made of what changed.

use super::{
    hash_file, Changes, HashResult, MetaOf, ScanError, ScanOptions, ScanOutcome, RECORD_PART,
};
use crate::util::{join, FsIssue};
use rayon::prelude::*;
use std::path::Path;
use weave_core::{Entry, LocalEntry, Object, Stat};
use weave_index::Index;

/// Reads the files whose stat changed (in parallel, largest first, one
/// file per work unit: big files spread over the cores instead of
/// queueing behind each other) and sorts each into `ch`: a new state, or
/// the same with a new stat.
pub(super) fn take_hashed(
    root: &Path,
    index: &Index,
    opts: &ScanOptions,
    mut to_hash: Vec<(String, Stat)>,
    meta_of: &MetaOf,
    out: &mut ScanOutcome,
    ch: &mut Changes,
) -> Result<(), ScanError> {
    to_hash.sort_by_key(|(_, st)| std::cmp::Reverse(st.size));
    // A part at a time: the results of a whole new tree are not held
    // at once beside what is made of them.
    let mut rest = to_hash.into_iter();
    loop {
        let part: Vec<(String, Stat)> = rest.by_ref().take(HASH_PART).collect();
        if part.is_empty() {
            return Ok(());
        }
        let hashed: Vec<(String, HashResult)> = part
            .into_par_iter()
            .with_max_len(1)
            .map(|(rel, st)| {
                let r = match opts.prehashed.and_then(|p| p.take(&rel, &st)) {
                    Some(hit) => Ok(hit),
                    None => hash_file(&join(root, &rel), &st),
                };
                (rel, r)
            })
            .collect();
        sort_hashed(root, index, hashed, meta_of, out, ch)?;
    }
}

/// Files hashed at a time by a scan (see [`take_hashed`]).
const HASH_PART: usize = 16_384;

/// Sorts each file hashed into `ch`: a new state, or the same with a new
/// stat (or, unreadable, blocked).
fn sort_hashed(
    root: &Path,
    index: &Index,
    hashed: Vec<(String, HashResult)>,
    meta_of: &MetaOf,
    out: &mut ScanOutcome,
    ch: &mut Changes,
) -> Result<(), ScanError> {
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
                let meta = meta_of(&rel, prev.as_ref().and_then(|p| p.entry.meta.as_deref()));
                let same_state = prev.as_ref().is_some_and(|p| {
                    p.entry.object == object
                        && p.entry.mode == st.mode
                        && p.entry.mtime_ns == st.mtime_ns
                        && p.entry.meta == meta
                });
                if same_state {
                    ch.stat_only.push((rel, st));
                } else {
                    let u = (rel, object, st.mode, st.mtime_ns, Some(st), Some(meta));
                    ch.updates.push(u);
                }
                out.contents.push(list);
            }
            Err(e) => {
                out.issues
                    .push(FsIssue::new(join(root, &rel), e.to_string()));
                ch.blocked.insert(rel);
            }
        }
    }
    Ok(())
}

/// The entries of what changed: a new stat only, or a new version (the
/// replica's own counter bumped, a new sequence number); recorded in the
/// index a part at a time when `record` (see [`RECORD_PART`]), else all
/// kept in `out`.
pub(super) fn make_entries(
    index: &mut Index,
    ch: Changes,
    meta_of: &MetaOf,
    record: bool,
    out: &mut ScanOutcome,
) -> Result<(), ScanError> {
    let Changes {
        updates, stat_only, ..
    } = ch;
    let id = index.id();
    let record_part = |index: &mut Index, out: &mut ScanOutcome| -> Result<(), ScanError> {
        if record && out.changed.len() >= RECORD_PART {
            let part = weave_index::Batch {
                entries: std::mem::take(&mut out.changed),
                contents: std::mem::take(&mut out.contents),
                ..Default::default()
            };
            index.write(&part)?;
            out.recorded += part.entries.len();
        }
        Ok(())
    };
    for (rel, st) in stat_only {
        if let Some(mut le) = index.entry(&rel)? {
            le.stat = Some(st);
            out.changed.push(le);
            record_part(index, out)?;
        }
    }
    for (rel, object, mode, mtime_ns, stat, read) in updates {
        let prev = index.entry(&rel)?;
        let meta = match (&object, read) {
            (Object::Deleted, _) => None,
            (_, Some(m)) => m,
            _ => meta_of(&rel, prev.as_ref().and_then(|p| p.entry.meta.as_deref())),
        };
        let mut vv = prev.map(|p| p.entry.vv).unwrap_or_default();
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
                meta,
            },
            seq: index.next_seq(),
            stat,
        };
        out.changed.push(le);
        record_part(index, out)?;
    }
    Ok(())
}
