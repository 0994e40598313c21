//! From the plan to one replica's operations.

use crate::report::ReplicaReport;
use std::collections::BTreeMap;
use weave_core::LocalEntry;
use weave_core::{Entry, Object};
use weave_core::{Op, OpKind};

/// The operations that bring a replica holding `entries` to `finals`.
pub fn derive(entries: &BTreeMap<String, LocalEntry>, finals: &BTreeMap<String, Entry>) -> Vec<Op> {
    let mut ops = Vec::new();
    for (path, f) in finals {
        let cur = entries.get(path);
        if cur.is_some_and(|c| c.entry.identical(f)) {
            continue;
        }
        let live = cur.filter(|c| c.entry.is_live());
        let op = |kind: OpKind, current: Option<&LocalEntry>| Op {
            kind,
            path: path.clone(),
            current: current.cloned(),
            target: f.clone(),
        };
        // Replacing one kind of object by another: remove the old one first,
        // recording a tombstone of the old version until the new one lands.
        let type_change = |ops: &mut Vec<Op>, c: &LocalEntry| {
            ops.push(Op {
                kind: OpKind::Remove,
                path: path.clone(),
                current: Some(c.clone()),
                target: Entry {
                    path: path.clone(),
                    object: Object::Deleted,
                    mode: 0,
                    mtime_ns: 0,
                    vv: c.entry.vv.clone(),
                    origin: c.entry.origin,
                    meta: None,
                },
            })
        };
        match (&f.object, live.map(|c| &c.entry.object)) {
            (Object::Deleted, Some(_)) => ops.push(op(OpKind::Remove, cur)),
            (Object::Deleted, None) => ops.push(op(OpKind::Record, cur)),
            (Object::Dir, Some(Object::Dir)) => {
                let kind = if cur.is_some_and(|c| c.entry.mode != f.mode || c.entry.meta != f.meta)
                {
                    OpKind::SetMeta
                } else {
                    OpKind::Record
                };
                ops.push(op(kind, cur))
            }
            (Object::Dir, Some(_)) => {
                type_change(&mut ops, live.unwrap());
                ops.push(op(OpKind::MakeDir, None));
            }
            (Object::Dir, None) => ops.push(op(OpKind::MakeDir, None)),
            (Object::File { content, .. }, Some(Object::File { content: old, .. })) => {
                let c = live.unwrap();
                if content == old {
                    let kind = if c.entry.mode != f.mode
                        || c.entry.mtime_ns != f.mtime_ns
                        || c.entry.meta != f.meta
                    {
                        OpKind::SetMeta
                    } else {
                        OpKind::Record
                    };
                    ops.push(op(kind, cur));
                } else {
                    ops.push(op(OpKind::WriteFile, cur));
                }
            }
            (Object::Symlink { target }, Some(Object::Symlink { target: old })) => {
                let kind = if target != old {
                    OpKind::WriteSymlink
                } else if live.is_some_and(|c| c.entry.meta != f.meta) {
                    OpKind::SetMeta
                } else {
                    OpKind::Record
                };
                ops.push(op(kind, cur));
            }
            (Object::File { .. } | Object::Symlink { .. }, Some(_)) => {
                type_change(&mut ops, live.unwrap());
                let kind = if matches!(f.object, Object::File { .. }) {
                    OpKind::WriteFile
                } else {
                    OpKind::WriteSymlink
                };
                ops.push(op(kind, None));
            }
            (Object::File { .. }, None) => ops.push(op(OpKind::WriteFile, None)),
            (Object::Symlink { .. }, None) => ops.push(op(OpKind::WriteSymlink, None)),
        }
    }
    ops
}

/// A removal that only clears the way for another kind of object: [`derive`]
/// puts the operation that makes the new object right after it.
pub fn is_type_change(all: &[Op], k: usize) -> bool {
    all[k].kind == OpKind::Remove
        && all
            .get(k + 1)
            .is_some_and(|n| n.path == all[k].path && n.kind != OpKind::Remove)
}

/// What a successful operation (`all[k]`) counts as, for people.
pub fn action(all: &[Op], k: usize) -> Option<&'static str> {
    let op = &all[k];
    let live_before = op.current.as_ref().is_some_and(|c| c.entry.is_live());
    match op.kind {
        OpKind::Remove if is_type_change(all, k) => None,
        OpKind::Remove => Some("delete"),
        OpKind::MakeDir => Some("mkdir"),
        OpKind::WriteFile | OpKind::WriteSymlink if live_before => Some("update"),
        OpKind::WriteFile | OpKind::WriteSymlink => Some("create"),
        OpKind::SetMeta => Some("metadata"),
        OpKind::Record => None,
    }
}

/// Counts an operation's [`action`] in a replica's report.
pub fn count(r: &mut ReplicaReport, action: Option<&str>) {
    match action {
        Some("delete") => r.deleted += 1,
        Some("mkdir") | Some("create") => r.created += 1,
        Some("update") | Some("metadata") => r.updated += 1,
        _ => {}
    }
}
