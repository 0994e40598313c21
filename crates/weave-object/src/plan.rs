//! The transfer plan of an apply: from the operations, their chunk lists
//! and what this replica already holds, which chunks it cuts from its own
//! objects, which it fetches from the provider, and what it commits for
//! each operation. A plain function over plain data: no store, no index,
//! no provider.

use crate::check_name;
use crate::observed::Observed;
use std::collections::{HashMap, HashSet};
use weave_chunk::ChunkList;
use weave_core::{Hash, Op, OpKind};

/// What the commit does for one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing changes in the store: the target version is recorded (with
    /// the stat of the current entry).
    Record,
    /// Put the object, holding `content`, if it is at revision `expect`
    /// (None: if it does not exist).
    Put { content: Hash, expect: Option<u64> },
    /// Delete the object, if it is at revision `expect`.
    Delete { expect: Option<u64> },
    /// Not carried out, for this reason (an issue of the apply).
    Refuse(String),
}

/// Chunks to cut from an object of this replica that holds `content`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cut {
    pub content: Hash,
    /// (chunk, offset, length) in the content.
    pub chunks: Vec<(Hash, usize, usize)>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct TransferPlan {
    /// Chunks to take from the replica's own objects, a content at a
    /// time, in the order to read them. Each chunk is cut once.
    pub local: Vec<Cut>,
    /// Chunks to fetch from the provider, per content; each chunk once.
    pub fetch: Vec<(Hash, Vec<Hash>)>,
    /// Every chunk the puts need (a received chunk that is not is dropped).
    pub needed: HashSet<Hash>,
    /// (operation, what the commit does for it), in operation order. A
    /// write whose chunk list could not be had has none (the list's issue
    /// says why).
    pub steps: Vec<(usize, Step)>,
}

/// The contents of its own a replica can take the chunks of `op`'s write
/// of `content` from, best first: the same content (held under another
/// name, say), then the old version at the same name.
fn sources(op: &Op, content: Hash) -> Vec<Hash> {
    std::iter::once(content).chain(op.old_content()).collect()
}

/// The writes of `ops` whose chunk list is known: (content, list, op).
fn writes<'a>(
    ops: &'a [Op],
    lists: &'a HashMap<Hash, ChunkList>,
) -> Vec<(Hash, &'a ChunkList, &'a Op)> {
    ops.iter()
        .filter_map(|op| {
            let (content, _) = op.writes()?;
            Some((content, lists.get(&content)?, op))
        })
        .collect()
}

/// The contents of its own the writes of `ops` may take chunks from:
/// [`plan_transfer`] wants the chunk lists of those the replica holds.
pub(crate) fn own_sources(ops: &[Op], lists: &HashMap<Hash, ChunkList>) -> HashSet<Hash> {
    writes(ops, lists)
        .into_iter()
        .flat_map(|(content, _, op)| sources(op, content))
        .collect()
}

/// Plans the transfer and the commit of `ops`, given the chunk list of
/// every content they write (`lists`; a write without one is left out)
/// and the chunk lists of the contents this replica holds and can read
/// (`held`). A write takes what it can from its [`sources`], in order,
/// until it has every chunk (or planned them from an earlier write); what
/// none of them has is fetched.
pub(crate) fn plan_transfer(
    ops: &[Op],
    lists: &HashMap<Hash, ChunkList>,
    held: &HashMap<Hash, ChunkList>,
) -> TransferPlan {
    let mut plan = TransferPlan::default();
    let writes = writes(ops, lists);
    // Chunks planned from own objects, and where each content's cut is.
    let mut local: HashSet<Hash> = HashSet::new();
    let mut cut_at: HashMap<Hash, usize> = HashMap::new();
    for &(content, list, op) in &writes {
        // Runs of zeros are never asked for: they are made here.
        let want: HashSet<Hash> = list
            .chunks
            .iter()
            .filter(|c| !c.is_zero())
            .map(|c| c.hash)
            .collect();
        for source in sources(op, content) {
            if want.is_subset(&local) {
                break;
            }
            let Some(have) = held.get(&source) else {
                continue;
            };
            for (o, r) in have.with_offsets() {
                if want.contains(&r.hash) && local.insert(r.hash) {
                    let i = *cut_at.entry(source).or_insert_with(|| {
                        plan.local.push(Cut {
                            content: source,
                            chunks: Vec::new(),
                        });
                        plan.local.len() - 1
                    });
                    plan.local[i]
                        .chunks
                        .push((r.hash, o as usize, r.len as usize));
                }
            }
        }
        plan.needed.extend(want);
    }
    let mut asked: HashSet<Hash> = HashSet::new();
    for &(content, list, _) in &writes {
        let missing: Vec<Hash> = list
            .chunks
            .iter()
            .filter(|c| !c.is_zero())
            .map(|c| c.hash)
            .filter(|h| !local.contains(h) && asked.insert(*h))
            .collect();
        if !missing.is_empty() {
            plan.fetch.push((content, missing));
        }
    }
    plan.steps = ops
        .iter()
        .enumerate()
        .filter_map(|(k, op)| Some((k, step(op, lists)?)))
        .collect();
    plan
}

/// What the commit does for `op` (None: nothing, its list is missing).
fn step(op: &Op, lists: &HashMap<Hash, ChunkList>) -> Option<Step> {
    // Names come from the planner, or from a peer: a store only ever gets
    // names it can hold.
    if let Err(why) = check_name(&op.path) {
        return Some(Step::Refuse(format!("not written: {why}")));
    }
    let expect = op.current.as_ref().and_then(Observed::revision);
    Some(match op.kind {
        OpKind::Record | OpKind::SetMeta => Step::Record,
        OpKind::Remove => Step::Delete { expect },
        OpKind::WriteFile => {
            let (content, _) = op.writes()?;
            lists.get(&content)?;
            Step::Put { content, expect }
        }
        OpKind::MakeDir | OpKind::WriteSymlink => Step::Refuse(format!(
            "not written: a {} cannot be kept in this object store",
            op.target.object.kind_name()
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observed::MODE;
    use weave_chunk::ChunkRef;
    use weave_core::{Entry, LocalEntry, Object, ReplicaId, VersionVector};

    /// A chunk hash.
    fn h(n: u8) -> Hash {
        Hash([n; 32])
    }

    /// A chunk list of chunks `ns`, each n bytes long.
    fn list(ns: &[u8]) -> ChunkList {
        ChunkList {
            chunks: ns
                .iter()
                .map(|&n| ChunkRef {
                    hash: h(n),
                    len: n as u32,
                })
                .collect(),
        }
    }

    fn file(l: &ChunkList) -> Object {
        Object::File {
            size: l.size(),
            content: l.content_id(),
        }
    }

    fn entry(path: &str, object: Object) -> Entry {
        Entry {
            path: path.into(),
            object,
            mode: MODE,
            mtime_ns: 5,
            vv: VersionVector::default(),
            origin: ReplicaId(2),
            meta: None,
        }
    }

    /// What the index holds at `path`: `object`, seen at store revision
    /// `revision` (None: no stat).
    fn current(path: &str, object: Object, revision: Option<u64>) -> LocalEntry {
        LocalEntry {
            entry: entry(path, object),
            seq: 1,
            stat: revision.map(|revision| {
                Observed {
                    revision,
                    size: 1,
                    mtime_ns: 5,
                }
                .stat()
            }),
        }
    }

    fn op(kind: OpKind, path: &str, target: Object, current: Option<LocalEntry>) -> Op {
        Op {
            kind,
            path: path.into(),
            current,
            target: entry(path, target),
        }
    }

    /// Writes `new` at `path` over `old`, seen at store revision `revision`.
    fn rewrite(path: &str, old: &ChunkList, new: &ChunkList, revision: u64) -> Op {
        let current = current(path, file(old), Some(revision));
        op(OpKind::WriteFile, path, file(new), Some(current))
    }

    fn lists(ls: &[&ChunkList]) -> HashMap<Hash, ChunkList> {
        ls.iter().map(|l| (l.content_id(), (*l).clone())).collect()
    }

    #[test]
    fn a_write_cuts_what_its_old_version_shares_and_fetches_the_rest() {
        let (old, new) = (list(&[1, 2, 3]), list(&[1, 9, 3]));
        let ops = [rewrite("a", &old, &new, 7)];
        assert_eq!(
            own_sources(&ops, &lists(&[&new])),
            [new.content_id(), old.content_id()].into()
        );
        let plan = plan_transfer(&ops, &lists(&[&new]), &lists(&[&old]));
        assert_eq!(
            plan.local,
            [Cut {
                content: old.content_id(),
                chunks: vec![(h(1), 0, 1), (h(3), 3, 3)],
            }]
        );
        assert_eq!(plan.fetch, [(new.content_id(), vec![h(9)])]);
        assert_eq!(plan.needed, [h(1), h(9), h(3)].into());
        assert_eq!(
            plan.steps,
            [(
                0,
                Step::Put {
                    content: new.content_id(),
                    expect: Some(7)
                }
            )]
        );
    }

    #[test]
    fn a_content_held_already_is_cut_from_itself_and_the_old_version_is_not_read() {
        let (old, new) = (list(&[1, 2]), list(&[1, 3]));
        let ops = [rewrite("a", &old, &new, 7)];
        let plan = plan_transfer(&ops, &lists(&[&new]), &lists(&[&old, &new]));
        assert_eq!(
            plan.local,
            [Cut {
                content: new.content_id(),
                chunks: vec![(h(1), 0, 1), (h(3), 1, 3)],
            }]
        );
        assert!(plan.fetch.is_empty());
    }

    #[test]
    fn a_source_left_out_of_what_is_held_is_replaced_by_the_next() {
        // The same content was held, but could not be read: the old
        // version gives what it has.
        let (old, new) = (list(&[1, 2]), list(&[1, 3]));
        let ops = [rewrite("a", &old, &new, 7)];
        let plan = plan_transfer(&ops, &lists(&[&new]), &lists(&[&old]));
        assert_eq!(
            plan.local,
            [Cut {
                content: old.content_id(),
                chunks: vec![(h(1), 0, 1)],
            }]
        );
        assert_eq!(plan.fetch, [(new.content_id(), vec![h(3)])]);
    }

    #[test]
    fn each_chunk_is_cut_or_fetched_once() {
        // Two new objects share chunk 4 (and one repeats it); two writes
        // over one old version share its chunk 1.
        let old = list(&[1, 2]);
        let (x, y) = (list(&[1, 4, 4, 5]), list(&[1, 4, 6]));
        let ops = [rewrite("x", &old, &x, 1), rewrite("y", &old, &y, 2)];
        let plan = plan_transfer(&ops, &lists(&[&x, &y]), &lists(&[&old]));
        assert_eq!(
            plan.local,
            [Cut {
                content: old.content_id(),
                chunks: vec![(h(1), 0, 1)],
            }]
        );
        assert_eq!(
            plan.fetch,
            [
                (x.content_id(), vec![h(4), h(5)]),
                (y.content_id(), vec![h(6)])
            ]
        );
        assert_eq!(plan.needed, [h(1), h(4), h(5), h(6)].into());
    }

    #[test]
    fn every_operation_gets_its_step_in_order() {
        let (a, b) = (list(&[1]), list(&[2]));
        let no_list = list(&[3]);
        let ops = [
            op(
                OpKind::Remove,
                "gone",
                Object::Deleted,
                Some(current("gone", file(&a), Some(3))),
            ),
            // Over a tombstone (which keeps no revision): must not exist.
            op(
                OpKind::WriteFile,
                "back",
                file(&a),
                Some(current("back", Object::Deleted, Some(4))),
            ),
            op(OpKind::WriteFile, "new", file(&b), None),
            op(
                OpKind::Record,
                "same",
                file(&a),
                Some(current("same", file(&a), Some(5))),
            ),
            op(OpKind::SetMeta, "meta", file(&a), None),
            op(OpKind::MakeDir, "dir", Object::Dir, None),
            op(
                OpKind::WriteSymlink,
                "link",
                Object::Symlink { target: "x".into() },
                None,
            ),
            op(OpKind::WriteFile, "a/b", file(&a), None),
            op(OpKind::WriteFile, "nolist", file(&no_list), None),
        ];
        let plan = plan_transfer(&ops, &lists(&[&a, &b]), &HashMap::new());
        let put = |l: &ChunkList, expect| Step::Put {
            content: l.content_id(),
            expect,
        };
        let refused = |what: &str| {
            Step::Refuse(format!(
                "not written: a {what} cannot be kept in this object store"
            ))
        };
        let bad_name = check_name("a/b").unwrap_err();
        assert_eq!(
            plan.steps,
            [
                (0, Step::Delete { expect: Some(3) }),
                (1, put(&a, None)),
                (2, put(&b, None)),
                (3, Step::Record),
                (4, Step::Record),
                (5, refused("directory")),
                (6, refused("symlink")),
                (7, Step::Refuse(format!("not written: {bad_name}"))),
            ]
        );
        // Nothing is fetched for a write without a list.
        assert_eq!(
            plan.fetch,
            [(a.content_id(), vec![h(1)]), (b.content_id(), vec![h(2)])]
        );
    }
}
