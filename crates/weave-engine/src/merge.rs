//! Merging concurrent versions that a kind knows how to combine.
//!
//! The planner (pure, in weave-core) keeps both versions of a path that
//! replicas changed concurrently: the newer keeps the name, the other
//! becomes a conflict copy. When the sync's kind defines a [`Merge`], the
//! coordinator then reads every such version, merges them (in content id
//! order, so every coordinator computes the same bytes), and plans the
//! merged content at the path instead, with a version that dominates
//! every input; the conflict copies are dropped from the plan. The merged
//! content is held in memory and served to the replicas like any other.

use crate::report::MergeReport;
use crate::{Merge, Replica, MERGE_MAX};
use std::collections::HashMap;
use weave_chunk::ChunkList;
use weave_core::{Bumper, ConflictKind, Entry, Hash, Object, TreePlan};

/// A content this sync made by merging: its chunk list and bytes.
pub(crate) struct Made {
    pub list: ChunkList,
    pub data: Vec<u8>,
}

/// Replaces every keep-both conflict of files that `merge` can settle by
/// the merged version. Returns what was merged.
pub(crate) fn merge_conflicts(
    reps: &mut [Box<dyn Replica>],
    views: &[crate::Entries],
    plan: &mut TreePlan,
    merge: &dyn Merge,
    clock: &mut dyn Bumper,
    made: &mut HashMap<Hash, Made>,
) -> Vec<MergeReport> {
    let mut merged = Vec::new();
    for c in std::mem::take(&mut plan.conflicts) {
        match merge_one(reps, views, plan, &c, merge) {
            Some((data, mtime_ns, inputs)) => {
                let list = weave_chunk::chunk_bytes(&data);
                let content = list.content_id();
                let win = plan.finals.get(&c.path).expect("merged from it");
                let mut vv = win.vv.clone();
                let (by, n) = clock.bump();
                vv.bump(by, n);
                let entry = Entry {
                    path: c.path.clone(),
                    object: Object::File {
                        size: data.len() as u64,
                        content,
                    },
                    mode: win.mode,
                    mtime_ns,
                    vv,
                    origin: by,
                    meta: win.meta.clone(),
                };
                for p in &c.copies {
                    plan.finals.remove(p);
                }
                plan.finals.insert(c.path.clone(), entry);
                merged.push(MergeReport {
                    path: c.path.clone(),
                    versions: inputs,
                    bytes: data.len() as u64,
                });
                made.insert(content, Made { list, data });
            }
            None => plan.conflicts.push(c),
        }
    }
    merged
}

/// The merged bytes of one conflict's versions, the newest mtime among
/// them, and how many distinct versions went in; None to keep both.
fn merge_one(
    reps: &mut [Box<dyn Replica>],
    views: &[crate::Entries],
    plan: &TreePlan,
    c: &weave_core::Conflict,
    merge: &dyn Merge,
) -> Option<(Vec<u8>, i64, usize)> {
    if c.kind != ConflictKind::KeptBoth || c.copies.is_empty() {
        return None;
    }
    let mut versions: Vec<&Entry> = vec![plan.finals.get(&c.path)?];
    for p in &c.copies {
        // A copy some replica already has stays a copy.
        if views.iter().any(|v| v.contains_key(p)) {
            return None;
        }
        versions.push(plan.finals.get(p)?);
    }
    let mut contents: Vec<(Hash, u64)> = Vec::new();
    for v in &versions {
        match v.object {
            Object::File { size, content } if size <= MERGE_MAX => contents.push((content, size)),
            _ => return None,
        }
    }
    contents.sort();
    contents.dedup();
    let mtime_ns = versions.iter().map(|v| v.mtime_ns).max().unwrap_or(0);
    let mut acc: Option<Vec<u8>> = None;
    for (content, size) in &contents {
        let data = read_content(reps, views, content, *size)?;
        acc = Some(match acc {
            None => data,
            Some(a) => {
                let m = merge.merge(&c.path, &a, &data)?;
                if m.len() as u64 > MERGE_MAX {
                    return None;
                }
                m
            }
        });
    }
    Some((acc?, mtime_ns, contents.len()))
}

/// The bytes of `content` from a replica that holds it, every chunk
/// verified (I-3); None if no replica could give all of it.
pub(crate) fn read_content(
    reps: &mut [Box<dyn Replica>],
    views: &[crate::Entries],
    content: &Hash,
    size: u64,
) -> Option<Vec<u8>> {
    for (j, v) in views.iter().enumerate() {
        let holds = v
            .values()
            .any(|le| matches!(&le.entry.object, Object::File { content: c, .. } if c == content));
        if !holds {
            continue;
        }
        let rep = &mut reps[j];
        let list = match rep.chunk_list(content) {
            Some(l) => l,
            None => {
                let known = HashMap::new();
                let r =
                    weave_chunk::resolve::<_, crate::SyncError>(content, size, &known, |want| {
                        let got = rep.serve_nodes(&[(*content, want.to_vec())])?;
                        Ok(got.into_iter().next().unwrap_or_default())
                    });
                match r {
                    Ok(l) => l,
                    Err(_) => continue,
                }
            }
        };
        if list.content_id() != *content || list.size() != size {
            continue;
        }
        // Each chunk once, runs of zeros never (they are made here).
        let mut seen = std::collections::HashSet::new();
        let hashes: Vec<Hash> = list
            .chunks
            .iter()
            .filter(|c| !c.is_zero() && seen.insert(c.hash))
            .map(|c| c.hash)
            .collect();
        let mut got: HashMap<Hash, Vec<u8>> = HashMap::new();
        let served = rep.serve_chunks(&[(*content, hashes)], &mut |h, d| {
            if let Some(d) = d {
                if weave_chunk::verify(&d, &h) {
                    got.insert(h, d);
                }
            }
            Ok(())
        });
        if served.is_err() {
            continue;
        }
        let mut data = Vec::with_capacity(size as usize);
        let mut whole = true;
        for c in &list.chunks {
            if c.is_zero() {
                data.resize(data.len() + c.len as usize, 0);
                continue;
            }
            match got.get(&c.hash) {
                Some(d) => data.extend_from_slice(d),
                None => {
                    whole = false;
                    break;
                }
            }
        }
        if whole {
            return Some(data);
        }
    }
    None
}
