//! The order of a run's operations, and what it holds back.
//!
//! Nothing is destroyed before what must survive it has landed: new paths
//! (conflict copies, rename targets, new files) are written first, from
//! the originals still in place; then removals; then the writes that had
//! to wait for them, and overwrites. A content that failed to land at its
//! new place and exists nowhere else is [`Unlanded`]: a removal or an
//! overwrite that would destroy its old copy is held back (reported, and
//! retried by the next sync).
//!
//! This module only sorts operations into those steps (see
//! [`super::apply`]); directories are made as soon as nothing is in their
//! way, removals go deepest first, writes largest first.

use super::{ApplyOutcome, ContentSource, Ctx, PathError};
use crate::util::join;
use std::collections::HashSet;
use std::fs;
use weave_core::path::depth;
use weave_core::{Hash, Object, Op, OpKind};

/// Operations of one step, in order, each with its number in the plan.
pub(super) type Step<'o> = Vec<(usize, &'o Op)>;

/// Whether `op` replaces something that is there now.
fn live_now(op: &Op) -> bool {
    op.current.as_ref().is_some_and(|c| c.entry.is_live())
}

/// The size of the file `op` writes (0 for anything else).
fn size_of(op: &Op) -> u64 {
    match op.target.object {
        Object::File { size, .. } => size,
        _ => 0,
    }
}

/// The operations of `ops` of this `kind`.
fn of_kind(ops: &[Op], kind: OpKind) -> Step<'_> {
    ops.iter()
        .enumerate()
        .filter(|(_, o)| o.kind == kind)
        .collect()
}

/// The removals of `ops`, deepest first.
pub(super) fn removals(ops: &[Op]) -> Step<'_> {
    let mut removes = of_kind(ops, OpKind::Remove);
    removes.sort_by(|a, b| {
        depth(&b.1.path)
            .cmp(&depth(&a.1.path))
            .then(b.1.path.cmp(&a.1.path))
    });
    removes
}

/// Contents that failed to land at their new place and that no other
/// replica holds.
#[derive(Default)]
pub(super) struct Unlanded(HashSet<Hash>);

impl Unlanded {
    /// Notes that the write `op` failed: its content is unlanded if only
    /// this replica holds it (a conflict loser whose copy failed, a
    /// rename's only source).
    pub(super) fn note_failed(&mut self, source: &dyn ContentSource, op: &Op) {
        if let Object::File { content, .. } = &op.target.object {
            if source.locations(content).iter().all(|l| l.local) {
                self.0.insert(*content);
            }
        }
    }

    /// Whether `op` would destroy the old copy of an unlanded content.
    fn destroyed_by(&self, op: &Op) -> bool {
        match op.current.as_ref().map(|c| &c.entry.object) {
            Some(Object::File { content, .. }) => self.0.contains(content),
            _ => false,
        }
    }
}

impl Ctx<'_> {
    /// The directories to make, shallowest first: those made now,
    /// because nothing is in their way (their path is free or already a
    /// directory, and their parents are directories already or made just
    /// before them), and those that must wait for the removals.
    pub(super) fn split_dirs<'o>(&self, ops: &'o [Op]) -> (Step<'o>, Step<'o>) {
        let mut dirs = of_kind(ops, OpKind::MakeDir);
        dirs.sort_by(|a, b| {
            depth(&a.1.path)
                .cmp(&depth(&b.1.path))
                .then(a.1.path.cmp(&b.1.path))
        });
        let mut free_dirs: Step = Vec::new();
        let mut blocked_dirs: Step = Vec::new();
        let mut free_set: HashSet<&str> = HashSet::new();
        let mut blocked_set: HashSet<&str> = HashSet::new();
        for (i, o) in dirs {
            let path_free = !fs::symlink_metadata(join(self.root, &o.path))
                .is_ok_and(|m| !m.file_type().is_dir());
            let parent_ok = match weave_core::path::parent(&o.path) {
                None => true,
                Some(p) => {
                    free_set.contains(p)
                        || (!blocked_set.contains(p) && self.check_parents(&o.path).is_ok())
                }
            };
            if path_free && parent_ok {
                free_set.insert(&o.path);
                free_dirs.push((i, o));
            } else {
                blocked_set.insert(&o.path);
                blocked_dirs.push((i, o));
            }
        }
        (free_dirs, blocked_dirs)
    }

    /// The file and symlink writes: those made before the removals, to
    /// free paths whose directory is already there (not to a path a
    /// removal must clear first: a type change), largest first so that
    /// their disk writes overlap with building the rest; and the others.
    pub(super) fn split_writes<'o>(&self, ops: &'o [Op]) -> (Step<'o>, Step<'o>) {
        let cleared: HashSet<&str> = ops
            .iter()
            .filter(|o| o.kind == OpKind::Remove)
            .map(|o| o.path.as_str())
            .collect();
        let mut early: Step = Vec::new();
        let mut late: Step = Vec::new();
        let writes = ops
            .iter()
            .enumerate()
            .filter(|(_, o)| matches!(o.kind, OpKind::WriteFile | OpKind::WriteSymlink));
        for (i, o) in writes {
            if !live_now(o)
                && !cleared.contains(o.path.as_str())
                && self.check_parents(&o.path).is_ok()
            {
                early.push((i, o));
            } else {
                late.push((i, o));
            }
        }
        early.sort_by_key(|(_, o)| std::cmp::Reverse(size_of(o)));
        (early, late)
    }

    /// The writes made after the removals: those that had to wait for a
    /// directory or a removal (`late`) and the creates whose path was
    /// taken (`retry`); creates before overwrites, largest first. Those
    /// held back are left out.
    pub(super) fn late_writes<'o>(
        &self,
        mut late: Step<'o>,
        retry: Step<'o>,
        unlanded: &Unlanded,
        out: &mut ApplyOutcome,
    ) -> Step<'o> {
        late.extend(retry);
        late.sort_by_key(|(_, o)| (live_now(o), std::cmp::Reverse(size_of(o))));
        late.into_iter()
            .filter(|(_, op)| !self.held_back(op, unlanded, out))
            .collect()
    }

    /// Whether `op` is held back because it would destroy the old copy of
    /// an unlanded content; if so, that is reported.
    pub(super) fn held_back(&self, op: &Op, unlanded: &Unlanded, out: &mut ApplyOutcome) -> bool {
        if !unlanded.destroyed_by(op) {
            return false;
        }
        out.issues.push(self.issue(op, PathError::Kept));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::apply;
    use super::super::test_support::*;
    use std::fs;

    /// I-2: when the conflict copy of the losing version cannot be written,
    /// the loser is not overwritten by the winner (nor removed).
    #[test]
    fn a_loser_whose_copy_failed_is_not_overwritten() {
        let (t, other) = (replica(), tempfile::tempdir().unwrap());
        let root = t.path();
        let loser = b"the losing version, not saved anywhere else";
        let winner = b"the winning version";
        fs::write(root.join("x"), loser).unwrap();
        // The copy's directory is a file: the copy cannot be written.
        fs::write(root.join("blocker"), b"a file").unwrap();
        fs::write(other.path().join("w"), winner).unwrap();
        let source = Src::new(vec![
            (winner, other.path().join("w"), false, None),
            (loser, root.join("x"), true, None),
        ]);
        let cur = local(root, file_entry("x", loser, 1));
        let ops = vec![
            write_op("x", Some(cur), winner, 2),
            write_op("blocker/x.weave-conflict-copy", None, loser, 1),
        ];
        let out = apply(root, &ops, &source, &|_| {});
        assert_eq!(out.issues.len(), 2, "{:?}", out.issues);
        assert!(out.done.is_empty());
        assert_eq!(fs::read(root.join("x")).unwrap(), loser);
    }
}
