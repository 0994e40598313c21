//! What a remote replica is sent to apply, and which operation each of
//! its results is for, without a session: the operations in messages of
//! bounded size, in their order, with the tree roots of small files
//! inline; and the checking of the results against the operations sent.

use crate::wire::{self, BATCH_BYTES};
use std::collections::{HashMap, HashSet};
use weave_core::{Entry, Hash, Object, Op, OpKind};
use weave_engine::{Provider, SyncError};
use weave_proto::msg::{IndexBatch, Ops, WireOp};
use weave_proto::validate::{batch_from_wire, entry_to_wire};
use weave_proto::ProtoError;

/// Files up to this size have the root of their chunk tree sent with
/// their operation (one node of at most a few KiB; for a file of one
/// chunk, 41 bytes): the server then need not ask for the chunk lists of
/// thousands of small files, one round of requests and answers.
pub(crate) const INLINE_ROOT_MAX: u64 = 1 << 20;

/// The contents whose tree roots go with `ops`: those of the small files
/// they write, each once, in the order of `ops`.
fn inline_root_contents(ops: &[Op]) -> Vec<Hash> {
    let mut seen = HashSet::new();
    ops.iter()
        .filter(|op| op.kind == OpKind::WriteFile)
        .filter_map(|op| match op.target.object {
            Object::File { content, size } if size <= INLINE_ROOT_MAX => Some(content),
            _ => None,
        })
        .filter(|c| seen.insert(*c))
        .collect()
}

/// The root nodes of the small files `ops` write, by content, as far as
/// `provider` has them.
pub(crate) fn small_roots(
    ops: &[Op],
    provider: &mut dyn Provider,
) -> Result<HashMap<Hash, Vec<u8>>, SyncError> {
    let wants: Vec<(Hash, Vec<Hash>)> = inline_root_contents(ops)
        .into_iter()
        .map(|c| (c, vec![c]))
        .collect();
    if wants.is_empty() {
        return Ok(HashMap::new());
    }
    let got = provider.nodes(&wants)?;
    Ok(wants
        .into_iter()
        .zip(got)
        .filter_map(|((c, _), mut n)| n.pop().flatten().map(|n| (c, n)))
        .collect())
}

/// The messages that carry `ops` to the remote, in their order, made as
/// they are taken. An operation that writes a content of `roots` carries
/// its root, the first one to write it only. A message is closed once it
/// holds more than [`BATCH_BYTES`]; the last one goes even when it is
/// empty.
pub(crate) fn transfer_plan(
    ops: &[Op],
    mut roots: HashMap<Hash, Vec<u8>>,
) -> impl Iterator<Item = Ops> + '_ {
    let mut ops = ops.iter();
    let mut ended = false;
    std::iter::from_fn(move || {
        if ended {
            return None;
        }
        let mut batch: Vec<WireOp> = Vec::new();
        let mut bytes = 0usize;
        for op in ops.by_ref() {
            let root = match (op.kind, &op.target.object) {
                (OpKind::WriteFile, Object::File { content, .. }) => {
                    roots.remove(content).unwrap_or_default()
                }
                _ => Vec::new(),
            };
            let w = WireOp {
                kind: wire::op_kind_to_wire(op.kind),
                target: Some(entry_to_wire(&op.target, 0)),
                on_current: op.current.is_some(),
                root,
            };
            bytes += prost::Message::encoded_len(&w) + 8;
            batch.push(w);
            if bytes > BATCH_BYTES {
                return Some(Ops { ops: batch });
            }
        }
        ended = true;
        Some(Ops { ops: batch })
    })
}

/// The results in a batch the remote sent for `ops`, by operation index:
/// the operations it carried out exactly as sent (`done_ops`, each at
/// most once over the whole run: `answered` keeps count), then the
/// entries it recorded, each for the path and version of the operation
/// whose index it carries.
pub(crate) fn results_of(
    ops: &[Op],
    answered: &mut [bool],
    mut b: IndexBatch,
    peer: &str,
) -> Result<Vec<(usize, Entry)>, ProtoError> {
    let mut done = Vec::new();
    // Done exactly as sent: the entry is the one sent.
    for k in std::mem::take(&mut b.done_ops) {
        let k = k as usize;
        if k >= ops.len() || std::mem::replace(&mut answered[k], true) {
            return Err(ProtoError::Invalid {
                peer: peer.to_string(),
                detail: format!(
                    "a result for operation {k}, which was not sent or was answered already"
                ),
            });
        }
        done.push((k, ops[k].target.clone()));
    }
    let b = batch_from_wire(b, peer)?;
    for (entry, k) in b.entries {
        let k = k as usize;
        if ops
            .get(k)
            .is_none_or(|op| op.path != entry.path || op.target.vv != entry.vv)
        {
            return Err(ProtoError::Invalid {
                peer: peer.to_string(),
                detail: format!("a result for {:?} that was not asked for", entry.path),
            });
        }
        done.push((k, entry));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weave_core::{ReplicaId, VersionVector};
    use weave_engine::Wants;

    fn entry(path: &str, object: Object, counter: u64) -> Entry {
        Entry {
            path: path.into(),
            object,
            mode: 0o644,
            mtime_ns: 0,
            vv: VersionVector::from_pairs(vec![(ReplicaId(1), counter)]),
            origin: ReplicaId(1),
            meta: None,
        }
    }

    fn op(kind: OpKind, path: &str, object: Object) -> Op {
        Op {
            kind,
            path: path.into(),
            current: None,
            target: entry(path, object, 1),
        }
    }

    fn write(path: &str, content: Hash, size: u64) -> Op {
        op(OpKind::WriteFile, path, Object::File { content, size })
    }

    /// Answers every node with its content's first byte; records the asks.
    struct Asked(Vec<Hash>);
    impl Provider for Asked {
        fn nodes(&mut self, wants: &Wants) -> Result<Vec<Vec<Option<Vec<u8>>>>, SyncError> {
            self.0.extend(wants.iter().map(|(c, _)| *c));
            Ok(wants
                .iter()
                .map(|(c, h)| {
                    assert_eq!(h, &vec![*c]);
                    vec![(c.0[0] != 9).then(|| vec![c.0[0]])]
                })
                .collect())
        }
        fn chunks(
            &mut self,
            _: &Wants,
            _: &mut dyn FnMut(Hash, Vec<u8>) -> Result<(), SyncError>,
        ) -> Result<(), SyncError> {
            unreachable!()
        }
    }

    /// Roots go along for files up to 1 MiB, once per content, and only
    /// for those the provider has.
    #[test]
    fn roots_are_sent_for_small_files_once_each() {
        let ops = vec![
            write("a", Hash([1; 32]), 10),
            write("b", Hash([1; 32]), 10),
            write("c", Hash([2; 32]), INLINE_ROOT_MAX),
            write("big", Hash([3; 32]), INLINE_ROOT_MAX + 1),
            write("gone", Hash([9; 32]), 5),
        ];
        let mut p = Asked(Vec::new());
        let roots = small_roots(&ops, &mut p).unwrap();
        assert_eq!(p.0, vec![Hash([1; 32]), Hash([2; 32]), Hash([9; 32])]);
        assert_eq!(roots.len(), 2);
        assert_eq!(roots[&Hash([1; 32])], vec![1]);
        assert_eq!(roots[&Hash([2; 32])], vec![2]);
        // Nothing to ask for: the provider is not asked.
        let mut p = Asked(Vec::new());
        let dir = op(OpKind::MakeDir, "d", Object::Dir);
        assert!(small_roots(&[dir], &mut p).unwrap().is_empty());
        assert!(p.0.is_empty());
    }

    fn plan(ops: &[Op], roots: &[(Hash, Vec<u8>)]) -> Vec<Ops> {
        transfer_plan(ops, roots.iter().cloned().collect()).collect()
    }

    fn paths(m: &Ops) -> Vec<&str> {
        m.ops
            .iter()
            .map(|w| w.target.as_ref().unwrap().path.as_str())
            .collect()
    }

    /// Every operation in its order, as the engine gave it; a content's
    /// root with the first operation that writes it only.
    #[test]
    fn the_plan_sends_each_operation_in_order_with_its_root_once() {
        let mut edit = write("edited", Hash([1; 32]), 10);
        edit.current = Some(weave_core::LocalEntry {
            entry: entry("edited", Object::Dir, 0),
            seq: 1,
            stat: None,
        });
        let ops = vec![
            op(OpKind::MakeDir, "d", Object::Dir),
            write("a", Hash([1; 32]), 10),
            edit,
            write("big", Hash([3; 32]), INLINE_ROOT_MAX + 1),
            op(OpKind::Remove, "old", Object::Deleted),
            write("b", Hash([2; 32]), 10),
        ];
        let roots = [(Hash([1; 32]), vec![1]), (Hash([2; 32]), vec![2])];
        let messages = plan(&ops, &roots);
        assert_eq!(messages.len(), 1);
        let m = &messages[0];
        assert_eq!(paths(m), vec!["d", "a", "edited", "big", "old", "b"]);
        let kinds: Vec<u32> = ops.iter().map(|o| wire::op_kind_to_wire(o.kind)).collect();
        assert_eq!(m.ops.iter().map(|w| w.kind).collect::<Vec<_>>(), kinds);
        let roots: Vec<&[u8]> = m.ops.iter().map(|w| w.root.as_slice()).collect();
        assert_eq!(roots, vec![&[][..], &[1], &[], &[], &[], &[2]]);
        let on_current: Vec<bool> = m.ops.iter().map(|w| w.on_current).collect();
        assert_eq!(on_current, vec![false, false, true, false, false, false]);
        for (w, o) in m.ops.iter().zip(&ops) {
            assert_eq!(w.target, Some(entry_to_wire(&o.target, 0)));
        }
    }

    /// Messages close once they hold more than BATCH_BYTES; together they
    /// hold every operation once, in order; the last goes even if empty.
    #[test]
    fn the_plan_bounds_its_messages() {
        assert_eq!(plan(&[], &[]), vec![Ops { ops: Vec::new() }]);
        let long = "x".repeat(1000);
        let ops: Vec<Op> = (0..1000)
            .map(|i| write(&format!("{long}/{i}"), Hash([7; 32]), 10))
            .collect();
        let messages = plan(&ops, &[]);
        assert!(messages.len() > 2, "{} messages", messages.len());
        let size = |w: &WireOp| prost::Message::encoded_len(w) + 8;
        for m in &messages[..messages.len() - 1] {
            let bytes: usize = m.ops.iter().map(size).sum();
            let but_last: usize = m.ops[..m.ops.len() - 1].iter().map(size).sum();
            assert!(bytes > BATCH_BYTES && but_last <= BATCH_BYTES);
        }
        let all: Vec<&str> = messages.iter().flat_map(paths).collect();
        let want: Vec<&str> = ops.iter().map(|o| o.path.as_str()).collect();
        assert_eq!(all, want);
        // An operation that closes a message is followed by an empty one
        // when it is the last.
        let per = messages[0].ops.len();
        let messages = plan(&ops[..per], &[]);
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].ops.len(), per);
        assert!(messages[1].ops.is_empty());
    }

    fn ops3() -> Vec<Op> {
        vec![
            write("a", Hash([1; 32]), 1),
            write("b", Hash([2; 32]), 2),
            op(OpKind::Remove, "c", Object::Deleted),
        ]
    }

    fn results(
        ops: &[Op],
        answered: &mut [bool],
        b: IndexBatch,
    ) -> Result<Vec<(usize, Entry)>, String> {
        results_of(ops, answered, b, "peer").map_err(|e| e.to_string())
    }

    /// Done-op indices stand for the entries sent; entries come with the
    /// index of their operation.
    #[test]
    fn results_are_matched_to_the_operations_sent() {
        let ops = ops3();
        let mut answered = vec![false; 3];
        let mut recorded = ops[1].target.clone();
        recorded.mtime_ns = 42;
        let b = IndexBatch {
            done_ops: vec![2, 0],
            entries: vec![entry_to_wire(&recorded, 1)],
            ..Default::default()
        };
        let got = results(&ops, &mut answered, b).unwrap();
        assert_eq!(
            got,
            vec![
                (2, ops[2].target.clone()),
                (0, ops[0].target.clone()),
                (1, recorded)
            ]
        );
        assert_eq!(answered, vec![true, false, true]);
        assert_eq!(
            results(&ops, &mut answered, IndexBatch::default()).unwrap(),
            vec![]
        );
    }

    #[test]
    fn results_for_operations_not_sent_or_twice_are_refused() {
        let ops = ops3();
        let done = |k: Vec<u64>| IndexBatch {
            done_ops: k,
            ..Default::default()
        };
        let mut answered = vec![false; 3];
        let e = results(&ops, &mut answered, done(vec![3])).unwrap_err();
        assert!(
            e.contains("a result for operation 3, which was not sent or was answered already"),
            "{e}"
        );
        results(&ops, &mut answered, done(vec![1])).unwrap();
        let e = results(&ops, &mut answered, done(vec![1])).unwrap_err();
        assert!(e.contains("operation 1"), "{e}");
        let e = results(&ops, &mut [false; 3], done(vec![0, 0])).unwrap_err();
        assert!(e.contains("operation 0"), "{e}");
    }

    #[test]
    fn entries_that_were_not_asked_for_are_refused() {
        let ops = ops3();
        let entries = |e: Entry, k: u64| IndexBatch {
            entries: vec![entry_to_wire(&e, k)],
            ..Default::default()
        };
        let mut answered = vec![false; 3];
        // Another path, another version, an index past the operations.
        let other_path = entry(
            "z",
            Object::File {
                content: Hash([1; 32]),
                size: 1,
            },
            1,
        );
        let other_vv = entry(
            "a",
            Object::File {
                content: Hash([1; 32]),
                size: 1,
            },
            2,
        );
        for (e, k) in [(other_path, 0), (other_vv, 0), (ops[0].target.clone(), 3)] {
            let path = e.path.clone();
            let err = results(&ops, &mut answered, entries(e, k)).unwrap_err();
            assert!(
                err.contains(&format!("a result for {path:?} that was not asked for")),
                "{err}"
            );
        }
        // Entries are not counted as answers: the same one twice is taken.
        for _ in 0..2 {
            let got = results(&ops, &mut answered, entries(ops[0].target.clone(), 0)).unwrap();
            assert_eq!(got, vec![(0, ops[0].target.clone())]);
        }
    }
}
