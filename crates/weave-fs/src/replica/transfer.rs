//! A tree's apply, its first two steps: the transfer plan (pure: which
//! chunks must come from elsewhere, into the stage or into part files of
//! their own, and which files can be written early), then receiving them
//! from the provider, each verified on arrival (I-3).

use super::write::Record;
use super::{LocalReplica, Source};
use crate::{ApplyOutcome, Part, PartWriter, Stage};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weave_chunk::ChunkList;
use weave_core::{Hash, Object, Op, OpKind};
use weave_engine::{Provider, SyncError};

/// Contents at least this large with nothing of them on this machine are
/// received into a part file of their own (see [`crate::Part`]).
pub(super) const PART_MIN: u64 = 1 << 20;

/// What an apply must receive before it can write: the transfer plan.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct TransferPlan {
    /// Chunks that go into the stage, per content (asked for first, so
    /// that files built from the stage can be written while the part
    /// files' chunks still arrive).
    pub stage_wants: Vec<(Hash, Vec<Hash>)>,
    /// Every chunk the stage will hold once they arrive.
    pub to_stage: HashSet<Hash>,
    /// The contents received into part files, in the order their parts
    /// were opened.
    pub parts: Vec<Hash>,
    /// The chunks asked for the part files, per content.
    pub part_wants: Vec<(Hash, Vec<Hash>)>,
    /// Which part files (positions in `parts`) each arriving chunk goes to.
    pub routes: HashMap<Hash, Vec<usize>>,
}

impl TransferPlan {
    /// Everything to ask the provider for, in order: the stage's chunks,
    /// then the part files'.
    pub fn wants(&self) -> Vec<(Hash, Vec<Hash>)> {
        let mut w = self.stage_wants.clone();
        w.extend(self.part_wants.iter().cloned());
        w
    }
}

/// What the transfer plan needs to know of the replica, asked as it goes.
pub(super) struct Holdings<'a> {
    /// A file on this machine (own or another local tree's) holds the
    /// content: nothing of it needs to travel.
    pub here: &'a dyn Fn(&Hash) -> bool,
    /// The chunks of the old version at an operation's path.
    pub old_chunks: &'a dyn Fn(&Op) -> HashSet<Hash>,
    /// The stage holds this chunk already (from an interrupted run).
    pub staged: &'a dyn Fn(&Hash) -> bool,
}

/// The transfer plan of `ops` whose contents have the chunk lists
/// `lists`. A large new content with nothing of it here goes to a part
/// file: `open_part` opens (or reopens) one and gives the chunks it still
/// lacks, or None when it cannot be made (then the stage takes them).
/// Every chunk is asked for once, whichever content needs it first.
pub(super) fn plan_transfer(
    ops: &[Op],
    lists: &HashMap<Hash, ChunkList>,
    has: &Holdings,
    open_part: &mut dyn FnMut(&ChunkList) -> Option<Vec<Hash>>,
) -> TransferPlan {
    let mut plan = TransferPlan::default();
    let mut asked: HashSet<Hash> = HashSet::new();
    for op in ops {
        let Some((content, _)) = op.writes() else {
            continue;
        };
        let content = &content;
        let Some(list) = lists.get(content) else {
            continue;
        };
        if (has.here)(content) {
            continue;
        }
        let old = (has.old_chunks)(op);
        if list.size() >= PART_MIN && old.is_empty() {
            if plan.parts.contains(content) {
                continue;
            }
            if let Some(missing) = open_part(list) {
                for h in &missing {
                    plan.routes.entry(*h).or_default().push(plan.parts.len());
                }
                let ask: Vec<Hash> = missing.into_iter().filter(|h| asked.insert(*h)).collect();
                if !ask.is_empty() {
                    plan.part_wants.push((*content, ask));
                }
                plan.parts.push(*content);
                continue;
            }
        }
        let missing: Vec<Hash> = list
            .chunks
            .iter()
            .filter(|c| !c.is_zero())
            .map(|c| c.hash)
            .filter(|h| !old.contains(h) && !(has.staged)(h) && plan.to_stage.insert(*h))
            .filter(|h| asked.insert(*h))
            .collect();
        if !missing.is_empty() {
            plan.stage_wants.push((*content, missing));
        }
    }
    plan
}

/// What a transfer works with: the plan, the stage, the part files and
/// their writer.
pub(super) struct Transfer {
    pub plan: TransferPlan,
    pub stage: Stage,
    pub parts: Vec<Part>,
    pub writer: Option<Arc<PartWriter>>,
    pub state: PathBuf,
}

/// The files written early, and their record (written to the index by
/// their thread).
pub(super) type Early = (ApplyOutcome, Record, Result<(), weave_index::IndexError>);

/// What came of receiving.
pub(super) struct Received {
    pub fetched: Result<(), SyncError>,
    pub early: Option<Early>,
    /// Chunks that failed their hash and were dropped.
    pub bad: u64,
}

/// The files the early writer is given: the operations, and where each
/// is in the whole list.
pub(super) struct EarlyOps<'a> {
    pub ops: Vec<Op>,
    pub idx: &'a [usize],
}

impl Transfer {
    pub fn stage_error(&self) -> impl Fn(std::io::Error) -> SyncError + '_ {
        |e| SyncError::State {
            path: self.state.clone(),
            problem: format!("cannot write the transfer stage: {e}"),
        }
    }
}

impl LocalReplica {
    /// Receives what the plan asks for from `provider`: chunks into the
    /// stage and the part files, each verified once on arrival (here,
    /// unless the provider already did). When `early` has files, a thread
    /// of their own writes them (from `src`'s lists and locations) as soon
    /// as the stage is complete, and records them.
    pub(super) fn receive(
        &self,
        tx: &mut Transfer,
        early: EarlyOps,
        src: (
            &HashMap<Hash, ChunkList>,
            &HashMap<Hash, Vec<crate::Location>>,
        ),
        provider: &mut dyn Provider,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Received {
        let wants = tx.plan.wants();
        // The files written early are recorded as soon as they are written,
        // while the rest still arrives: numbered after this run's last
        // sequence number (nothing else takes one until the transfer ends).
        let (id, seq, clock) = (self.index.id(), self.index.seq(), self.index.clock());
        let no_parts: HashMap<Hash, PathBuf> = HashMap::new();
        tracing::debug!(wanted = wants.len(), "asking for chunks");
        let t = std::time::Instant::now();
        std::thread::scope(|scope| {
            let (go_tx, go_rx) = std::sync::mpsc::channel::<Option<crate::stage::StageView>>();
            let writer = (!early.ops.is_empty()).then(|| {
                let (early, no_parts) = (&early, &no_parts);
                scope.spawn(move || {
                    let staged = go_rx.recv().ok().flatten()?;
                    tracing::debug!(
                        files = early.ops.len(),
                        "writing files from the stage while the rest arrives"
                    );
                    let src = Source {
                        rep: self,
                        lists: src.0,
                        locations: src.1,
                        staged: Some(&staged),
                        parts: no_parts,
                    };
                    let mut e = crate::apply(&self.root, &early.ops, &src, progress);
                    for d in &mut e.done {
                        d.op = early.idx[d.op];
                    }
                    let t = std::time::Instant::now();
                    let r = Record::of(id, std::mem::take(&mut e.done), seq, clock);
                    let written = match r.out.is_empty() {
                        true => Ok(()),
                        false => self.index.write_as(&r.batch, r.clock, r.seq),
                    };
                    tracing::debug!(entries = r.out.len(), elapsed = ?t.elapsed(), "recorded the files written early");
                    Some((e, r, written))
                })
            });
            let go = writer.as_ref().map(|_| go_tx);
            // What interrupted runs left in the parts is there already
            // (all of it, when nothing is left to fetch).
            progress(tx.parts.iter().map(|p| p.held_bytes()).sum());
            let (mut fetched, bad, go) = if wants.is_empty() {
                (Ok(()), 0, go)
            } else {
                tx.fetch(&wants, go, provider, progress, t)
            };
            // The files written early still get what did arrive (and
            // nothing at all if the transfer failed).
            if let Some(go) = go {
                let view = match fetched {
                    Ok(()) => tx.stage.view().map_err(tx.stage_error()),
                    Err(_) => Ok(None),
                };
                let _ = go.send(view.unwrap_or_else(|e| {
                    fetched = Err(e);
                    None
                }));
            }
            let early = writer.and_then(|h| h.join().expect("early writer panicked"));
            tracing::debug!(elapsed = ?t.elapsed(), "files from the stage written");
            Received {
                fetched,
                early,
                bad,
            }
        })
    }
}

type Go = std::sync::mpsc::Sender<Option<crate::stage::StageView>>;

impl Transfer {
    /// Asks `provider` for `wants` and takes each chunk as it arrives:
    /// verified, into the stage and the part files that need it. `go`
    /// gets the stage's view once it is complete. The bytes of part files
    /// count as progress as they arrive (those an interrupted run left
    /// count before the fetch; a large file's are not counted again when
    /// its part becomes the file). Returns how the
    /// transfer ended, how many chunks failed their hash, and `go` if it
    /// was not used.
    fn fetch(
        &mut self,
        wants: &[(Hash, Vec<Hash>)],
        mut go: Option<Go>,
        provider: &mut dyn Provider,
        progress: &(dyn Fn(u64) + Sync),
        t: std::time::Instant,
    ) -> (Result<(), SyncError>, u64, Option<Go>) {
        let mut bad = 0u64;
        // Verified once, on arrival (I-3): here, unless the provider
        // already did.
        let verified = provider.verified();
        let staged_all = self.stage.len() + self.plan.to_stage.len();
        let state = self.state.clone();
        let stage_error = |e: std::io::Error| SyncError::State {
            path: state.clone(),
            problem: format!("cannot write the transfer stage: {e}"),
        };
        let (stage, parts, plan) = (&mut self.stage, &mut self.parts, &self.plan);
        let mut sink = |h: Hash, data: Vec<u8>| -> Result<(), SyncError> {
            let good = verified || weave_chunk::verify(&data, &h);
            let good = good
                && (!plan.to_stage.contains(&h)
                    || stage.add_verified(&h, &data).map_err(stage_error)?);
            if !good {
                bad += 1;
                return Ok(());
            }
            if go.is_some() && stage.len() >= staged_all {
                tracing::debug!(chunks = staged_all, elapsed = ?t.elapsed(), "stage complete");
                let view = stage.view().map_err(stage_error)?;
                let _ = go.take().expect("checked").send(view);
            }
            for &i in plan.routes.get(&h).into_iter().flatten() {
                let placed = parts[i].put(&h, &data).map_err(stage_error)?;
                progress(placed);
                // Made durable while the rest arrives, every few MiB
                // and when complete (the writes are made durable
                // before they land in any case).
                if parts[i].flush_due() {
                    parts[i].flush();
                }
            }
            Ok(())
        };
        let fetched = provider.chunks(wants, &mut sink);
        tracing::debug!(elapsed = ?t.elapsed(), "transfer ended");
        (fetched, bad, go)
    }
}

/// The operations that can be carried out on their own, before the others:
/// new files at free paths (nothing there, nothing removed there) whose
/// content `ready` says will be in the stage, and the new directories they
/// need, with nothing in their way either. Nothing they do depends on, or
/// is undone by, the other operations. Indices into `ops`; empty when too
/// few to be worth it.
pub(super) fn early_writes(root: &Path, ops: &[Op], ready: &dyn Fn(&Hash) -> bool) -> Vec<usize> {
    let cleared: HashSet<&str> = ops
        .iter()
        .filter(|o| o.kind == OpKind::Remove)
        .map(|o| o.path.as_str())
        .collect();
    let live = |o: &Op| o.current.as_ref().is_some_and(|c| c.entry.is_live());
    // A path is usable as a parent if it is a real directory now (not
    // through a symlink: every ancestor checked) and nothing removes it,
    // or if an early directory makes it.
    let mut dir_ok: HashMap<String, bool> = HashMap::new();
    let mut out = Vec::new();
    // The early directories: nothing is there, so nothing is in them (no
    // need to look for each of their files).
    let mut made: HashSet<&str> = HashSet::new();
    let mut dirs: Vec<(usize, &Op)> = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| o.kind == OpKind::MakeDir)
        .collect();
    dirs.sort_by_key(|(_, o)| o.path.matches('/').count());
    for (i, o) in dirs {
        let parent = weave_core::path::parent(&o.path).unwrap_or("");
        if live(o)
            || cleared.contains(o.path.as_str())
            || !usable_dir(root, parent, &cleared, &mut dir_ok)
            || std::fs::symlink_metadata(crate::join(root, &o.path)).is_ok()
        {
            continue;
        }
        dir_ok.insert(o.path.clone(), true);
        made.insert(o.path.as_str());
        out.push(i);
    }
    let dirs = out.len();
    for (i, o) in ops.iter().enumerate() {
        let Object::File { content, .. } = &o.target.object else {
            continue;
        };
        let parent = weave_core::path::parent(&o.path).unwrap_or("");
        if o.kind == OpKind::WriteFile
            && !live(o)
            && !cleared.contains(o.path.as_str())
            && ready(content)
            && usable_dir(root, parent, &cleared, &mut dir_ok)
            && (made.contains(parent)
                || std::fs::symlink_metadata(crate::join(root, &o.path)).is_err())
        {
            out.push(i);
        }
    }
    if out.len() - dirs < 32 {
        return Vec::new();
    }
    out.sort_unstable();
    out
}

/// Whether `p` can be a parent of early writes: the root, or a real
/// directory now whose ancestors are too, that nothing removes (or one an
/// early directory makes, already in `dir_ok`).
fn usable_dir(
    root: &Path,
    p: &str,
    cleared: &HashSet<&str>,
    dir_ok: &mut HashMap<String, bool>,
) -> bool {
    if p.is_empty() {
        return true;
    }
    if let Some(&ok) = dir_ok.get(p) {
        return ok;
    }
    let parent = weave_core::path::parent(p).unwrap_or("");
    let ok = !cleared.contains(p)
        && usable_dir(root, parent, cleared, dir_ok)
        && std::fs::symlink_metadata(crate::join(root, p)).is_ok_and(|m| m.file_type().is_dir());
    dir_ok.insert(p.to_string(), ok);
    ok
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use weave_chunk::ChunkRef;
    use weave_core::{Entry, LocalEntry, ReplicaId, VersionVector};

    fn h(n: u8) -> Hash {
        Hash([n; 32])
    }

    /// A list of chunks `hashes`, each `len` bytes.
    fn list(hashes: &[u8], len: u32) -> ChunkList {
        ChunkList {
            chunks: hashes
                .iter()
                .map(|&n| ChunkRef { hash: h(n), len })
                .collect(),
        }
    }

    /// A version of `path` made by replica 1.
    pub(in crate::replica) fn entry(path: &str, object: Object) -> Entry {
        Entry {
            path: path.into(),
            object,
            mode: 0o644,
            mtime_ns: 0,
            vv: VersionVector::from_pairs(vec![(ReplicaId(1), 1)]),
            origin: ReplicaId(1),
            meta: None,
        }
    }

    fn write(path: &str, content: Hash, size: u64, old: Option<Hash>) -> Op {
        let entry = |object| entry(path, object);
        Op {
            kind: OpKind::WriteFile,
            path: path.into(),
            current: old.map(|c| LocalEntry {
                entry: entry(Object::File { size, content: c }),
                seq: 1,
                stat: None,
            }),
            target: entry(Object::File { size, content }),
        }
    }

    /// The plan asks for each chunk once, leaves out what is here, what
    /// the old version at the path has and what the stage holds, and
    /// sends a large new content to a part file (or to the stage when the
    /// part cannot be made).
    #[test]
    fn the_transfer_plan_asks_for_each_missing_chunk_once_and_routes_large_contents_to_parts() {
        const BIG: u32 = (PART_MIN / 4) as u32;
        let small = list(&[1, 2, 3], 100);
        let shared = list(&[3, 4], 100); // 3 is also in `small`
        let edited = list(&[5, 6], 100); // 5 is in the old version
        let here = list(&[7], 100);
        let large = list(&[10, 11, 12, 13, 2], BIG); // 2 is also in `small`
        let large_no_part = list(&[20, 21, 22, 23], BIG);
        let lists: HashMap<Hash, ChunkList> =
            [&small, &shared, &edited, &here, &large, &large_no_part]
                .iter()
                .map(|l| (l.content_id(), (*l).clone()))
                .collect();
        let old = list(&[5, 9], 100);
        let ops = vec![
            write("small", small.content_id(), small.size(), None),
            write("shared", shared.content_id(), shared.size(), None),
            write(
                "edited",
                edited.content_id(),
                edited.size(),
                Some(old.content_id()),
            ),
            write("here", here.content_id(), here.size(), None),
            write("large", large.content_id(), large.size(), None),
            write("large-again", large.content_id(), large.size(), None),
            write(
                "no-part",
                large_no_part.content_id(),
                large_no_part.size(),
                None,
            ),
        ];
        let here_id = here.content_id();
        let old_id = old.content_id();
        let old_chunks = |op: &Op| match op.current.as_ref().map(|c| &c.entry.object) {
            Some(Object::File { content, .. }) if *content == old_id => {
                [h(5), h(9)].into_iter().collect()
            }
            _ => HashSet::new(),
        };
        let has = Holdings {
            here: &|c| *c == here_id,
            old_chunks: &old_chunks,
            staged: &|c| *c == h(4),
        };
        let no_part = large_no_part.content_id();
        let mut opened = Vec::new();
        let plan = plan_transfer(&ops, &lists, &has, &mut |l| {
            opened.push(l.content_id());
            // The part already holds chunk 10 (an interrupted run's).
            (l.content_id() != no_part).then(|| vec![h(11), h(12), h(13), h(2)])
        });
        assert_eq!(
            opened,
            vec![large.content_id(), no_part],
            "each part opened once"
        );
        assert_eq!(
            plan.stage_wants,
            vec![
                (small.content_id(), vec![h(1), h(2), h(3)]),
                (edited.content_id(), vec![h(6)]),
                (no_part, vec![h(20), h(21), h(22), h(23)]),
            ]
        );
        assert_eq!(plan.parts, vec![large.content_id()]);
        // Chunk 2 goes to the part as well as to the stage, but is asked once.
        assert_eq!(
            plan.part_wants,
            vec![(large.content_id(), vec![h(11), h(12), h(13)])]
        );
        assert_eq!(plan.routes[&h(2)], vec![0]);
        assert_eq!(plan.routes[&h(11)], vec![0]);
        let to_stage: HashSet<Hash> = [1, 2, 3, 6, 20, 21, 22, 23].into_iter().map(h).collect();
        assert_eq!(plan.to_stage, to_stage);
        assert_eq!(
            plan.wants().len(),
            plan.stage_wants.len() + plan.part_wants.len()
        );
        assert_eq!(
            plan.wants()[0].0,
            small.content_id(),
            "the stage's chunks first"
        );
    }
}
