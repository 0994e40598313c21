//! Durability batches (I-4). Writes are built and committed in batches
//! of at most [`BATCH_FILES`] files and about [`BATCH_BYTES`] bytes: the
//! temporaries of a batch are built in parallel, the large ones flushed
//! by a background thread as soon as they are written (the early
//! writeback), and all of them are made durable by one flush of the file
//! system (`syncfs`, and of each other file system mounted inside the
//! replica that the batch wrote to) before any of them replaces its
//! target. That flush also makes the previous batch's renames durable;
//! one more after the last batch makes the last ones durable.

use super::build::Built;
use super::order::Unlanded;
use super::{hooks, ApplyOutcome, Ctx, Done, PathError};
use crate::util::{join, FsIssue};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::mpsc::SyncSender;
use std::thread::JoinHandle;
use std::time::Instant;
use weave_core::{Object, Op};

/// Files per write batch and bytes per write batch: a batch is made
/// durable with one filesystem flush before its renames.
const BATCH_FILES: usize = 4096;
const BATCH_BYTES: u64 = 1 << 30;

/// Files at least this large are flushed as soon as they are written (by a
/// background thread), so the disk works while other files are built.
const EARLY_WRITEBACK: u64 = 256 * 1024;

/// The writes of a batch, each with its number in the plan and what was
/// built for it.
type Builds = Vec<(usize, Result<Built, PathError>)>;

/// The early writeback of a batch: large files are made durable by a
/// background thread as soon as they are written, while the workers go on
/// with the rest. Bounded: builders wait when the disk lags, rather than
/// piling up open descriptors.
pub(super) struct Writeback {
    tx: SyncSender<File>,
    thread: JoinHandle<usize>,
}

impl Writeback {
    fn start() -> Writeback {
        let (tx, rx) = std::sync::mpsc::sync_channel::<File>(16);
        let thread =
            std::thread::spawn(move || rx.into_iter().filter(|f| f.sync_data().is_err()).count());
        Writeback { tx, thread }
    }

    /// Hands the file `f`, just written with `size` bytes, to the thread
    /// if it is large.
    pub(super) fn offer(&self, f: &File, size: u64) {
        if size >= EARLY_WRITEBACK {
            if let Ok(dup) = f.try_clone() {
                let _ = self.tx.send(dup);
            }
        }
    }

    /// Waits for the thread to flush what it was handed: how many flushes
    /// failed.
    fn finish(self) -> usize {
        let Writeback { tx, thread } = self;
        drop(tx);
        thread.join().unwrap_or(1)
    }
}

/// Other file systems mounted inside the replica that this run writes to:
/// each is flushed too (a descriptor of one of its directories names it),
/// with the directories already looked at.
#[derive(Default)]
struct Mounts<'o> {
    others: HashMap<u64, File>,
    seen: HashSet<&'o str>,
}

/// A quarter of the files this process may have open (see
/// [`Ctx::fd_budget`]): the rest is for part files and everything else.
pub(super) fn fd_budget() -> usize {
    #[cfg(test)]
    if let Some(b) = hooks::FD_BUDGET.with(|n| n.get()) {
        return b;
    }
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or(usize::MAX, |n| usize::try_from(n / 4).unwrap_or(usize::MAX))
}

fn flush_fs(root: &Path) -> std::io::Result<()> {
    let f = File::open(root)?;
    rustix::fs::syncfs(&f)?;
    hooks::note("flush");
    Ok(())
}

/// The end of the batch of `writes` that starts at `start`.
fn batch_end(writes: &[(usize, &Op)], start: usize) -> usize {
    let mut end = start;
    let mut bytes = 0u64;
    while end < writes.len() && end - start < BATCH_FILES && (bytes < BATCH_BYTES || end == start) {
        if let Object::File { size, .. } = writes[end].1.target.object {
            bytes += size;
        }
        end += 1;
    }
    end
}

/// Fails every build of `built` that succeeded, each with an error made
/// by `error` (the batch's one failure).
fn fail_all(built: &mut Builds, error: impl Fn() -> PathError) {
    for (_, b) in built.iter_mut() {
        if b.is_ok() {
            *b = Err(error());
        }
    }
}

impl Ctx<'_> {
    /// Builds and commits file and symlink writes, in batches: every
    /// temporary of a batch is made durable with one flush before any of
    /// them replaces its target; that flush also makes the previous
    /// batch's renames durable, and one more after the last batch makes
    /// the last ones durable. Contents that failed to land go to
    /// `unlanded`. With `retry_taken`, a create whose path turned out to
    /// be taken (on a case-insensitive filesystem, by the old name of a
    /// case-only rename) is returned, to be tried again after the
    /// removals.
    pub(super) fn write_batches<'o>(
        &self,
        ops: &'o [Op],
        writes: &[(usize, &'o Op)],
        out: &mut ApplyOutcome,
        unlanded: &mut Unlanded,
        retry_taken: bool,
    ) -> Vec<(usize, &'o Op)> {
        let mut retry = Vec::new();
        let mut mounts = Mounts::default();
        let mut start = 0;
        while start < writes.len() {
            let end = batch_end(writes, start);
            let mut built = self.build_batch(&writes[start..end]);
            self.make_durable(ops, &mut built, &mut mounts);
            // What failed to build cannot land: the old contents it was
            // meant to save must not be destroyed by this batch either.
            for (i, b) in &built {
                if b.is_err() {
                    unlanded.note_failed(self.source, &ops[*i]);
                }
            }
            // Creates before overwrites.
            built.sort_by_key(|(i, _)| ops[*i].current.as_ref().is_some_and(|c| c.entry.is_live()));
            let t = Instant::now();
            retry.extend(self.commit_batch(ops, built, out, unlanded, retry_taken));
            // The renames are made durable by the next batch's flush (it
            // syncs the whole file system), and after the last batch here:
            // all of them before this returns and the index records them.
            if end == writes.len() {
                if let Err(e) = self.flush(&mounts) {
                    out.issues.push(FsIssue::new(
                        self.root,
                        format!("cannot flush renames to disk: {e}"),
                    ));
                }
                tracing::debug!(elapsed = ?t.elapsed(), "committed and flushed");
            } else {
                tracing::debug!(elapsed = ?t.elapsed(), "committed");
            }
            start = end;
        }
        retry
    }

    /// Builds the temporaries of `batch`, in parallel, the large ones
    /// flushed by the early writeback; if one of those flushes failed, no
    /// build of the batch counts.
    fn build_batch(&self, batch: &[(usize, &Op)]) -> Builds {
        // Unnamed files stay open until the commit: only as many as the
        // process may hold.
        let unnamed = batch.len() <= self.fd_budget;
        let t = Instant::now();
        let writeback = Writeback::start();
        let mut built: Builds = batch
            .par_iter()
            .with_max_len(1)
            .map(|&(i, op)| (i, self.build(op, &writeback, unnamed)))
            .collect();
        let flush_failures = writeback.finish();
        tracing::debug!(files = batch.len(), elapsed = ?t.elapsed(), "built temporary files");
        if flush_failures > 0 {
            fail_all(&mut built, || PathError::WritebackFailed);
        }
        built
    }

    /// Makes the temporaries `built` durable: flushes the root's file
    /// system and the others they were written to. If that fails, no
    /// build counts: nothing may replace a target before it is durable.
    fn make_durable<'o>(&self, ops: &'o [Op], built: &mut Builds, mounts: &mut Mounts<'o>) {
        for (i, b) in built.iter() {
            if b.is_ok() {
                let parent = weave_core::path::parent(&ops[*i].path).unwrap_or("");
                if mounts.seen.insert(parent) {
                    self.note_file_system(parent, &mut mounts.others);
                }
            }
        }
        if built.iter().any(|(_, b)| b.is_ok()) {
            let t = Instant::now();
            if let Err(e) = self.flush(mounts) {
                let e = std::sync::Arc::new(e);
                fail_all(built, || PathError::FlushFailed(e.clone()));
            }
            tracing::debug!(elapsed = ?t.elapsed(), "flushed");
        }
    }

    /// Commits the builds of a batch, in their order, except those that
    /// would destroy content that failed to land (see [`Unlanded`]).
    /// Returns, with `retry_taken`, the creates whose path was taken.
    fn commit_batch<'o>(
        &self,
        ops: &'o [Op],
        built: Builds,
        out: &mut ApplyOutcome,
        unlanded: &mut Unlanded,
        retry_taken: bool,
    ) -> Vec<(usize, &'o Op)> {
        let mut retry = Vec::new();
        for (i, b) in built {
            let op = &ops[i];
            if b.is_ok() && self.held_back(op, unlanded, out) {
                continue;
            }
            let result = b.and_then(|mut b| {
                out.bytes_local += b.bytes_local;
                out.bytes_remote += b.bytes_remote;
                self.commit(op, &mut b).map(|stat| (stat, b.list.take()))
            });
            match result {
                Ok((stat, list)) => out.done.push(Done::of(i, op, stat, list)),
                Err(PathError::Appeared) if retry_taken => retry.push((i, op)),
                Err(e) => {
                    // Content that exists nowhere else must not be
                    // destroyed in this run (a conflict loser whose copy
                    // failed, a rename's only source).
                    unlanded.note_failed(self.source, op);
                    out.issues.push(self.issue(op, e))
                }
            }
        }
        retry
    }

    /// Notes the file system of directory `rel` in `others` if it is not
    /// the root's (a mount inside the replica).
    fn note_file_system(&self, rel: &str, others: &mut HashMap<u64, File>) {
        let dir = join(self.root, rel);
        #[cfg(test)]
        if self
            .test_other_fs
            .as_deref()
            .is_some_and(|p| rel.starts_with(p))
        {
            if let Ok(f) = File::open(&dir) {
                others.entry(u64::MAX).or_insert(f);
            }
            return;
        }
        let Ok(m) = fs::symlink_metadata(&dir) else {
            return;
        };
        if Some(m.dev()) != self.root_dev {
            if let Ok(f) = File::open(&dir) {
                others.entry(m.dev()).or_insert(f);
            }
        }
    }

    /// Makes what was written durable: the root's file system, and the
    /// others this run wrote to.
    fn flush(&self, mounts: &Mounts) -> std::io::Result<()> {
        flush_fs(self.root)?;
        for f in mounts.others.values() {
            rustix::fs::syncfs(f)?;
            hooks::note("flush other");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::apply;
    use super::super::test_support::*;
    use super::*;

    /// I-4: each batch's temporaries are flushed before its renames, and
    /// the renames are flushed before `apply` returns (by the next batch's
    /// flush, and one more after the last batch): one flush per batch
    /// plus one, none after the last commit missing.
    #[test]
    fn every_batch_is_flushed_before_its_renames_and_the_renames_before_the_end() {
        let data = b"the same small content everywhere";
        let n = BATCH_FILES + 1;
        let (t, _other, source, ops) = new_files(n, data);
        let root = t.path();
        hooks::EVENTS.with(|v| v.borrow_mut().clear());
        let out = apply(root, &ops, &source, &|_| {});
        assert!(out.issues.is_empty(), "{:?}", out.issues);
        assert_eq!(out.done.len(), n);
        let mut events: Vec<&str> = hooks::EVENTS.with(|v| v.borrow().clone());
        events.retain(|e| matches!(*e, "flush" | "commit"));
        events.dedup_by(|a, b| a == b && *a == "commit");
        assert_eq!(
            events,
            ["flush", "commit", "flush", "commit", "flush"],
            "two batches: flush, renames, flush (the second batch and the first renames), renames, flush"
        );
        assert_eq!(fs::read(root.join(format!("f{}", n - 1))).unwrap(), data);
    }

    /// I-4 across file systems: files written into another file system
    /// mounted inside the replica (here a directory the test says is
    /// one) are flushed there too, before their renames and before the
    /// end; a directory on the root's file system adds no flush.
    #[test]
    fn another_file_system_inside_the_replica_is_flushed_too() {
        for (other, expect) in [
            (
                true,
                vec!["flush", "flush other", "commit", "flush", "flush other"],
            ),
            (false, vec!["flush", "commit", "flush"]),
        ] {
            let (t, _src, source, mut ops) = new_files(2, b"on two file systems");
            let root = t.path();
            fs::create_dir(root.join("m")).unwrap();
            ops[1] = write_op("m/f1", None, b"on two file systems", 1);
            hooks::OTHER_FS.with(|o| *o.borrow_mut() = other.then(|| "m".to_string()));
            hooks::EVENTS.with(|v| v.borrow_mut().clear());
            let out = apply(root, &ops, &source, &|_| {});
            hooks::OTHER_FS.with(|o| *o.borrow_mut() = None);
            assert!(out.issues.is_empty(), "{:?}", out.issues);
            assert_eq!(out.done.len(), 2);
            let mut events: Vec<&str> = hooks::EVENTS.with(|v| v.borrow().clone());
            events.retain(|e| matches!(*e, "flush" | "flush other" | "commit"));
            events.dedup_by(|a, b| a == b && *a == "commit");
            assert_eq!(events, expect, "other={other}");
        }
    }

    /// A batch of more new files than the process may keep open uses
    /// named temporaries (which are closed once written).
    #[test]
    fn a_batch_over_the_descriptor_budget_uses_named_temporaries() {
        let data = b"one content, five paths";
        let (t, _other, source, ops) = new_files(5, data);
        let root = t.path();
        hooks::FD_BUDGET.with(|n| n.set(Some(4)));
        hooks::EVENTS.with(|v| v.borrow_mut().clear());
        let out = apply(root, &ops, &source, &|_| {});
        hooks::FD_BUDGET.with(|n| n.set(None));
        assert!(out.issues.is_empty(), "{:?}", out.issues);
        assert_eq!(out.done.len(), 5);
        let links = hooks::EVENTS.with(|v| v.borrow().iter().filter(|e| **e == "link").count());
        assert_eq!(links, 0);
        for i in 0..5 {
            assert_eq!(fs::read(root.join(format!("f{i}"))).unwrap(), data);
        }
    }
}
