//! A tree's apply, its last step: carrying the operations out on disk
//! (the executor, [`crate::apply`]) from what is here and what was
//! received, recording the results in the index, and keeping what was
//! replaced or removed in the version store.

use super::transfer::{Received, Transfer};
use super::{LocalReplica, Source};
use crate::ApplyOutcome;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use weave_chunk::ChunkList;
use weave_core::{Entry, Hash, LocalEntry, Op, ReplicaId};
use weave_engine::{Applied, Issue, SyncError};
use weave_index::Batch;

/// What the write step works from: the transfer and what came of it,
/// where contents are, and which operations were carried out early.
pub(super) struct Inputs<'a> {
    pub tx: Transfer,
    pub received: Received,
    pub lists: &'a HashMap<Hash, ChunkList>,
    pub locations: &'a HashMap<Hash, Vec<crate::Location>>,
    pub early_idx: &'a [usize],
}

impl LocalReplica {
    /// Carries out the operations not written early, records everything
    /// that was done, and keeps old versions. `errors` has the issues of
    /// the steps before.
    pub(super) fn write(
        &mut self,
        ops: &[Op],
        input: Inputs,
        mut errors: Vec<Issue>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Applied, SyncError> {
        let Inputs {
            mut tx,
            received,
            lists,
            locations,
            early_idx,
        } = input;
        // Everything handed to the part writer is written (and what it
        // could not write is not whole).
        let unwritten = tx.writer.take().map(|w| w.finish()).unwrap_or_default();
        let not_whole = not_whole(&tx, &unwritten, ops);
        // What was written early is recorded whatever happens next.
        let mut outcome = ApplyOutcome::default();
        let mut done = Vec::new();
        // The files written early are left out of the rest only if the
        // early writer ran: it does not when nothing came into the stage
        // (then every file is written below, none is skipped unseen).
        let early_idx = match received.early {
            Some(_) => early_idx,
            None => &[][..],
        };
        if let Some((e, r, written)) = received.early {
            outcome.bytes_local += e.bytes_local;
            outcome.bytes_remote += e.bytes_remote;
            outcome.issues.extend(e.issues);
            written?;
            done = self.remember(r);
        }
        received.fetched?;
        let staged = tx.stage.view().map_err(tx.stage_error())?;
        let parts: HashMap<Hash, PathBuf> = tx
            .parts
            .iter()
            .filter(|p| p.complete() && !unwritten.contains(p.path()))
            .map(|p| (p.content(), p.path().to_path_buf()))
            .collect();
        tracing::debug!(
            stage = staged.as_ref().map_or(0, |s| s.map.len()),
            parts = parts.len(),
            "received chunks"
        );
        let src = Source {
            rep: self,
            lists,
            locations,
            staged: staged.as_ref(),
            parts: &parts,
        };
        let rest = if early_idx.is_empty() {
            crate::apply(&self.root, ops, &src, progress)
        } else {
            let early: HashSet<usize> = early_idx.iter().copied().collect();
            let rest_idx: Vec<usize> = (0..ops.len()).filter(|i| !early.contains(i)).collect();
            let rest_ops: Vec<Op> = rest_idx.iter().map(|&i| ops[i].clone()).collect();
            let mut r = crate::apply(&self.root, &rest_ops, &src, progress);
            for d in &mut r.done {
                d.op = rest_idx[d.op];
            }
            r
        };
        outcome.bytes_local += rest.bytes_local;
        outcome.bytes_remote += rest.bytes_remote;
        // A file that needed a part file not written whole, and could not
        // be built without it, is said to be that (not "no source holds
        // chunk", which is what the executor met).
        let built: HashSet<usize> = rest.done.iter().map(|d| d.op).collect();
        let lost: HashSet<PathBuf> = not_whole
            .iter()
            .filter(|i| !built.contains(i))
            .map(|&i| self.root.join(&ops[i].path))
            .collect();
        for p in &lost {
            errors.push(Issue {
                path: p.strip_prefix(&self.root).unwrap_or(p).to_string_lossy().into_owned(),
                message: format!(
                    "could not write what arrived for it in {} (is the disk full?); it is retried next time",
                    tx.state.join(crate::stage::PARTS_DIR).display()
                ),
            });
        }
        outcome
            .issues
            .extend(rest.issues.into_iter().filter(|i| !lost.contains(&i.path)));
        outcome.done.extend(rest.done);
        if crate::meta::scope().links {
            let index = &self.index;
            let recorded = |p: &str| index.entry(p).ok().flatten();
            let linked = crate::apply::links::relink(&self.root, ops, &mut outcome.done, &recorded);
            outcome.issues.extend(linked);
        }
        outcome.replaced = rest.replaced;
        errors.extend(outcome.issues.iter().map(|i| self.issue(i)));
        let t = std::time::Instant::now();
        done.extend(self.record(outcome.done)?);
        tracing::debug!(entries = done.len(), elapsed = ?t.elapsed(), "recorded");
        if errors.is_empty() {
            tx.stage.clear();
        }
        // What this run replaced or removed goes to the version store.
        if !outcome.replaced.is_empty() {
            let written: HashSet<Hash> = done
                .iter()
                .filter_map(|(_, e)| e.object.content())
                .collect();
            errors.extend(self.keep_versions(&outcome.replaced, &written));
        }
        crate::clear_trash(&self.root);
        Ok(Applied {
            done,
            errors,
            bytes_local: outcome.bytes_local,
            bytes_remote: outcome.bytes_remote,
        })
    }

    /// Records in the index what the executor did: (operation index, the
    /// version now recorded) for each.
    fn record(&mut self, done: Vec<crate::Done>) -> Result<Vec<(usize, Entry)>, SyncError> {
        let r = Record::of(self.index.id(), done, self.index.seq(), self.index.clock());
        self.index.write_as(&r.batch, r.clock, r.seq)?;
        Ok(self.remember(r))
    }

    /// Takes a record another thread wrote with
    /// [`weave_index::Index::write_as`] (its sequence numbers and clock,
    /// and its entries).
    fn remember(&mut self, r: Record) -> Vec<(usize, Entry)> {
        self.index.observe(r.clock);
        self.index.take_seqs_to(r.seq);
        self.info.seq = self.index.seq();
        let view = self.entries.as_mut().or(self.given.as_mut());
        let entries = Arc::make_mut(view.expect("loaded before any apply"));
        for le in r.batch.entries {
            entries.insert(le.entry.path.clone(), le);
        }
        r.out
    }
}

/// The operations (by index) that write a content whose part file could
/// not be written whole (`unwritten`: the part writer's failures).
fn not_whole(tx: &Transfer, unwritten: &HashSet<PathBuf>, ops: &[Op]) -> Vec<usize> {
    if unwritten.is_empty() {
        return Vec::new();
    }
    let lost: HashSet<Hash> = tx
        .parts
        .iter()
        .filter(|p| unwritten.contains(p.path()))
        .map(|p| p.content())
        .collect();
    ops.iter()
        .enumerate()
        .filter(|(_, op)| op.writes().is_some_and(|(c, _)| lost.contains(&c)))
        .map(|(i, _)| i)
        .collect()
}

/// What recording an executor's results writes to the index.
pub(super) struct Record {
    pub batch: Batch,
    /// (operation index, the version now recorded) for each.
    pub out: Vec<(usize, Entry)>,
    /// The last sequence number taken.
    pub seq: u64,
    /// The clock once this replica's counters in the entries are seen.
    pub clock: u64,
}

impl Record {
    /// The record of `done`, numbered after sequence number `seq`, for an
    /// index whose clock is `clock`.
    pub fn of(id: ReplicaId, done: Vec<crate::Done>, mut seq: u64, mut clock: u64) -> Record {
        let mut batch = Batch::default();
        let mut out = Vec::with_capacity(done.len());
        for d in done {
            clock = clock.max(d.entry.vv.get(id));
            seq += 1;
            batch.entries.push(LocalEntry {
                entry: d.entry.clone(),
                seq,
                stat: d.stat,
            });
            if let Some(list) = d.content {
                batch.contents.push(list);
            }
            out.push((d.op, d.entry));
        }
        Record {
            batch,
            out,
            seq,
            clock,
        }
    }
}
