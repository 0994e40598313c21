//! weave-engine: one sync of N replicas.
//!
//! 1. check the replicas and open their indexes (each holds a lock);
//! 2. scan every replica (in parallel) and record local changes;
//! 3. if every replica has already integrated everything the others have,
//!    stop: nothing to do;
//! 4. plan the whole tree once with the pure planner (weave-core);
//! 5. derive each replica's operations and carry them out (weave-fs),
//!    taking chunks from the replica's own files first;
//! 6. record the results and what each replica has integrated.

mod ops;
mod report;

pub use report::{ConflictReport, IssueReport, PlannedOp, ReplicaReport, Report};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use thiserror::Error;
use weave_chunk::ChunkList;
use weave_core::path::STATE_DIR;
use weave_core::{plan_tree, Bumper, ConflictPolicy, Entry, Hash, Object, ReplicaId};
use weave_fs::ignore::{IgnoreError, Matcher};
use weave_fs::scan::ScanOptions;
use weave_fs::{ContentSource, FsIssue, Location};
use weave_index::{Batch, Index, IndexError, LocalEntry, Stat};

/// How to settle concurrent changes, as the user gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySpec {
    KeepBoth,
    Newest,
    /// Prefer the version held by the replica at this path.
    Prefer(PathBuf),
}

#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub policy: PolicySpec,
    /// Extra ignore patterns (gitignore syntax).
    pub ignore: Vec<String>,
    /// Plan only: change nothing on disk, not even weave's own state.
    pub dry_run: bool,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            policy: PolicySpec::KeepBoth,
            ignore: Vec::new(),
            dry_run: false,
        }
    }
}

/// Progress callbacks (a terminal progress bar, or nothing).
pub trait Progress: Sync {
    fn phase(&self, _msg: &str) {}
    fn set_total(&self, _bytes: u64) {}
    fn advance(&self, _bytes: u64) {}
}

pub struct NoProgress;
impl Progress for NoProgress {}

/// A sync that could not start or could not go on. Nothing was changed on
/// disk when one of the input checks fails.
#[derive(Debug, Error)]
pub enum SyncError {
    #[error("replica {path}: {problem}. {fix}")]
    BadReplica {
        path: String,
        problem: String,
        fix: String,
    },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Scan(#[from] weave_fs::ScanError),
    #[error(transparent)]
    Ignore(#[from] IgnoreError),
}

struct Replica {
    /// As the user gave it.
    display: String,
    root: PathBuf,
    index: Index,
    entries: BTreeMap<String, LocalEntry>,
    peers: HashMap<ReplicaId, u64>,
}

/// Checks the replica paths: they exist, are directories, are distinct,
/// and none is inside another. Returns their canonical forms.
pub fn check_replicas(paths: &[PathBuf]) -> Result<Vec<PathBuf>, SyncError> {
    if paths.len() < 2 {
        return Err(SyncError::Usage(
            "weave sync needs at least two replicas, e.g. `weave sync ~/docs /mnt/backup/docs`"
                .into(),
        ));
    }
    let mut canon = Vec::new();
    for p in paths {
        let shown = p.display().to_string();
        let meta = std::fs::metadata(p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                SyncError::BadReplica {
                    path: shown.clone(),
                    problem: "no such directory".into(),
                    fix: format!("Check the path, or create it first: mkdir -p {shown}"),
                }
            } else {
                SyncError::BadReplica {
                    path: shown.clone(),
                    problem: format!("cannot be read ({e})"),
                    fix: "Check the path and its permissions.".into(),
                }
            }
        })?;
        if !meta.is_dir() {
            return Err(SyncError::BadReplica {
                path: shown,
                problem: "is not a directory".into(),
                fix:
                    "A replica is a directory tree; give the directory that holds the file instead."
                        .into(),
            });
        }
        let c = std::fs::canonicalize(p).map_err(|e| SyncError::BadReplica {
            path: shown.clone(),
            problem: format!("cannot be resolved ({e})"),
            fix: "Check the path and its permissions.".into(),
        })?;
        let state = c.join(STATE_DIR);
        if let Ok(m) = std::fs::symlink_metadata(&state) {
            if !m.is_dir() {
                return Err(SyncError::BadReplica {
                    path: shown,
                    problem: format!("{} is not a directory", state.display()),
                    fix: format!(
                        "weave keeps its state there; move that file aside (mv {0} {0}.old).",
                        state.display()
                    ),
                });
            }
        }
        canon.push(c);
    }
    for i in 0..canon.len() {
        for j in 0..canon.len() {
            if i == j {
                continue;
            }
            let (a, b) = (&canon[i], &canon[j]);
            if a == b && i < j {
                return Err(SyncError::Usage(format!(
                    "{} and {} are the same directory; give each replica once",
                    paths[i].display(),
                    paths[j].display()
                )));
            }
            if a != b && a.starts_with(b) {
                return Err(SyncError::Usage(format!(
                    "{} is inside {}; a replica cannot contain another one (sync sibling directories instead)",
                    paths[i].display(),
                    paths[j].display()
                )));
            }
        }
    }
    Ok(canon)
}

/// The coordinating replica's clock, lent to the planner.
struct CoordinatorClock {
    id: ReplicaId,
    clock: u64,
}
impl Bumper for CoordinatorClock {
    fn bump(&mut self) -> (ReplicaId, u64) {
        self.clock += 1;
        (self.id, self.clock)
    }
}

/// Runs one sync of the replicas at `paths`.
pub fn sync(
    paths: &[PathBuf],
    opts: &SyncOptions,
    progress: &dyn Progress,
) -> Result<Report, SyncError> {
    let canon = check_replicas(paths)?;
    let roots: Vec<&Path> = canon.iter().map(|p| p.as_path()).collect();
    let matcher = Matcher::build(&roots, &opts.ignore)?;

    // Which replica a prefer= policy names, before anything is opened.
    let preferred = match &opts.policy {
        PolicySpec::Prefer(p) => {
            let c = std::fs::canonicalize(p).ok();
            match canon.iter().position(|r| Some(r) == c.as_ref()) {
                Some(i) => Some(i),
                None => {
                    return Err(SyncError::Usage(format!(
                        "--conflict prefer={} names no replica of this sync; give one of the replica paths",
                        p.display()
                    )))
                }
            }
        }
        _ => None,
    };
    // Open the existing indexes first, so a damaged one stops the sync
    // before any new state is created in another replica.
    let mut opened: Vec<Option<Index>> = (0..canon.len()).map(|_| None).collect();
    let has_index = |c: &PathBuf| c.join(STATE_DIR).join(weave_index::INDEX_FILE).exists();
    let order: Vec<usize> = (0..canon.len())
        .filter(|&i| has_index(&canon[i]))
        .chain((0..canon.len()).filter(|&i| !has_index(&canon[i])))
        .collect();
    for i in order {
        let state = canon[i].join(STATE_DIR);
        opened[i] = Some(if opts.dry_run && !has_index(&canon[i]) {
            Index::ephemeral(&state)
        } else {
            if opts.dry_run {
                Index::open_for_dry_run(&state)?
            } else {
                Index::open(&state)?
            }
        });
    }
    let mut reps: Vec<Replica> = Vec::new();
    for ((p, c), index) in paths.iter().zip(&canon).zip(opened) {
        let index = index.expect("every index opened");
        // Full entries are loaded only if the sync has something to plan.
        let entries = BTreeMap::new();
        let peers = index.load_peers()?;
        reps.push(Replica {
            display: p.display().to_string(),
            root: c.clone(),
            index,
            entries,
            peers,
        });
    }
    // Two replicas with one identity (a state directory copied along with
    // the files) would confuse whose change is whose.
    for i in 0..reps.len() {
        for j in i + 1..reps.len() {
            if reps[i].index.id() == reps[j].index.id() {
                return Err(SyncError::BadReplica {
                    path: reps[j].display.clone(),
                    problem: format!(
                        "has the same weave identity as {} (its state directory was copied from there)",
                        reps[i].display
                    ),
                    fix: format!(
                        "Move {} out of the replica (it is rebuilt by the next sync; files that differ are kept as conflict copies).",
                        reps[j].root.join(STATE_DIR).display()
                    ),
                });
            }
        }
    }
    let policy = match (&opts.policy, preferred) {
        (PolicySpec::Prefer(_), Some(i)) => ConflictPolicy::Prefer(reps[i].index.id()),
        (PolicySpec::Newest, _) => ConflictPolicy::Newest,
        _ => ConflictPolicy::KeepBoth,
    };

    let mut report = Report {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    for r in &reps {
        if r.index.rekeyed() {
            report.notices.push(IssueReport {
                replica: r.display.clone(),
                path: STATE_DIR.into(),
                message: "this state directory was made for another directory (copied or moved with the files); the replica got a new identity".into(),
            });
        }
    }
    // Scan every replica, in parallel.
    progress.phase("scanning");
    if !opts.dry_run {
        // Directories an interrupted run had opened up get their modes back
        // before they are scanned.
        for r in &reps {
            weave_fs::restore_modes(&r.root);
        }
    }
    let t_scan = std::time::Instant::now();
    let scan_opts = ScanOptions {
        matcher: &matcher,
        remove_temps: !opts.dry_run,
    };
    let mut scanned_contents: HashMap<Hash, ChunkList> = HashMap::new();
    let outcomes: Vec<Result<weave_fs::ScanOutcome, weave_fs::ScanError>> =
        std::thread::scope(|s| {
            let handles: Vec<_> = reps
                .iter_mut()
                .map(|r| {
                    let so = &scan_opts;
                    s.spawn(move || weave_fs::scan(&r.root, &mut r.index, so))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("scanner panicked"))
                .collect()
        });
    let mut scan_changes: Vec<Vec<LocalEntry>> = Vec::new();
    for (r, o) in reps.iter_mut().zip(outcomes) {
        let o = o?;
        push_issues(&mut report, &r.display, &r.root, &o.issues);
        for n in &o.notices {
            report.notices.push(issue_report(&r.display, &r.root, n));
        }
        let mut batch = Batch {
            entries: o.changed,
            contents: Vec::new(),
            ..Default::default()
        };
        if !opts.dry_run && (!batch.entries.is_empty() || !o.contents.is_empty()) {
            batch.contents = o.contents.clone();
            r.index.write(&batch)?;
        }
        scan_changes.push(batch.entries);
        for l in o.contents {
            scanned_contents.insert(l.content_id(), l);
        }
    }
    for r in &reps {
        report.replicas.push(ReplicaReport {
            path: r.display.clone(),
            id: r.index.id().to_string(),
            ..Default::default()
        });
    }

    tracing::debug!(elapsed = ?t_scan.elapsed(), "scanned and recorded local changes");
    // Nothing new anywhere since these replicas last synced together.
    let fp = matcher.fingerprint();
    for r in &reps {
        tracing::debug!(
            replica = %r.display,
            seq = r.index.seq(),
            ignore_fp = ?r.index.ignore_fingerprint(),
            peers = ?r.peers,
            "integration state"
        );
    }
    let up_to_date = reps
        .iter()
        .all(|r| r.index.ignore_fingerprint() == Some(fp))
        && reps.iter().all(|r| {
            reps.iter().all(|p| {
                p.index.id() == r.index.id() || r.peers.get(&p.index.id()) == Some(&p.index.seq())
            })
        });
    if up_to_date {
        report.unchanged = true;
        report.finish();
        return Ok(report);
    }

    // Plan the whole tree once, from every replica's full index (with this
    // scan's changes, which a dry run did not write).
    progress.phase("planning");
    let t_plan = std::time::Instant::now();
    for (r, changed) in reps.iter_mut().zip(scan_changes) {
        r.entries = r.index.load_entries()?;
        for le in changed {
            r.entries.insert(le.entry.path.clone(), le);
        }
    }
    let mut clock = CoordinatorClock {
        id: reps[0].index.id(),
        clock: reps[0].index.clock(),
    };
    let plan = {
        let mut by_path: BTreeMap<&str, Vec<(ReplicaId, &Entry)>> = BTreeMap::new();
        for r in &reps {
            let id = r.index.id();
            for (p, le) in &r.entries {
                by_path.entry(p.as_str()).or_default().push((id, &le.entry));
            }
        }
        by_path.retain(|p, hs| {
            let is_dir = hs.iter().any(|(_, e)| e.object.is_dir());
            !matcher.is_ignored(p, is_dir)
        });
        plan_tree(&by_path, policy, &mut clock)
    };
    reps[0].index.observe(clock.clock);
    tracing::debug!(elapsed = ?t_plan.elapsed(), paths = plan.finals.len(), "planned");
    for c in &plan.conflicts {
        report.conflicts.push(ConflictReport::from_conflict(c));
    }
    let all_ops: Vec<Vec<weave_fs::Op>> = reps
        .iter()
        .map(|r| ops::derive(&r.entries, &plan.finals))
        .collect();
    if opts.dry_run {
        for (r, ops) in reps.iter().zip(&all_ops) {
            for op in ops {
                if let Some(p) = PlannedOp::describe(&r.display, op, ops) {
                    report.planned.push(p);
                }
            }
        }
        report.finish();
        return Ok(report);
    }

    let total: u64 = all_ops
        .iter()
        .flatten()
        .filter(|o| o.kind == weave_fs::OpKind::WriteFile)
        .map(|o| match o.target.object {
            Object::File { size, .. } => size,
            _ => 0,
        })
        .sum();
    progress.set_total(total);
    progress.phase("syncing");

    // Where each content can be found, across replicas.
    let mut locations: Locations = HashMap::new();
    for (i, r) in reps.iter().enumerate() {
        for (p, le) in &r.entries {
            if let Object::File { content, .. } = &le.entry.object {
                locations.entry(*content).or_default().push((
                    i,
                    weave_fs_join(&r.root, p),
                    le.stat,
                ));
            }
        }
    }
    let mut clean = vec![true; reps.len()];
    for i in 0..reps.len() {
        let ops = &all_ops[i];
        if ops.is_empty() {
            continue;
        }
        let t_apply = std::time::Instant::now();
        let outcome = {
            let src = Source {
                reps: &reps,
                me: i,
                locations: &locations,
                scanned: &scanned_contents,
            };
            let adv = |n: u64| progress.advance(n);
            weave_fs::apply(&reps[i].root, ops, &src, &adv)
        };
        if !outcome.issues.is_empty() {
            clean[i] = false;
        }
        let r = &mut reps[i];
        push_issues(
            &mut report,
            &r.display.clone(),
            &r.root.clone(),
            &outcome.issues,
        );
        let rr = &mut report.replicas[i];
        rr.bytes_local += outcome.bytes_local;
        rr.bytes_copied += outcome.bytes_remote;
        let mut batch = Batch::default();
        let id = r.index.id();
        for d in &outcome.done {
            ops::count(rr, &ops[d.op], ops);
            r.index.observe(d.entry.vv.get(id));
            let le = LocalEntry {
                entry: d.entry.clone(),
                seq: r.index.next_seq(),
                stat: d.stat,
            };
            if let Object::File { content, .. } = &le.entry.object {
                if d.content.is_some() {
                    locations.entry(*content).or_default().push((
                        i,
                        weave_fs_join(&r.root, &le.entry.path),
                        le.stat,
                    ));
                }
            }
            r.entries.insert(le.entry.path.clone(), le.clone());
            batch.entries.push(le);
            if let Some(list) = &d.content {
                batch.contents.push(list.clone());
            }
        }
        r.index.write(&batch)?;
        tracing::debug!(replica = %r.display, ops = ops.len(), elapsed = ?t_apply.elapsed(), "applied and recorded");
    }
    // Chunk lists of contents no file holds any more are dropped.
    for r in reps.iter_mut() {
        let live: HashSet<Hash> = r
            .entries
            .values()
            .filter_map(|le| match &le.entry.object {
                Object::File { content, .. } => Some(*content),
                _ => None,
            })
            .collect();
        r.index.gc_contents(&live)?;
    }
    // Record what each replica has integrated: everything the others
    // hold now, unless something failed on it.
    let seqs: Vec<(ReplicaId, u64)> = reps.iter().map(|r| (r.index.id(), r.index.seq())).collect();
    for (i, r) in reps.iter_mut().enumerate() {
        if !clean[i] {
            continue;
        }
        let batch = Batch {
            peers: seqs
                .iter()
                .filter(|(id, _)| *id != r.index.id())
                .copied()
                .collect(),
            ignore_fingerprint: Some(fp),
            ..Default::default()
        };
        r.index.write(&batch)?;
    }
    report.finish();
    Ok(report)
}

fn weave_fs_join(root: &Path, rel: &str) -> PathBuf {
    let mut p = root.to_path_buf();
    p.extend(rel.split('/'));
    p
}

fn issue_report(display: &str, root: &Path, i: &FsIssue) -> IssueReport {
    let rel = i.path.strip_prefix(root).unwrap_or(&i.path);
    IssueReport {
        replica: display.to_string(),
        path: rel.to_string_lossy().into_owned(),
        message: i.message.clone(),
    }
}

fn push_issues(report: &mut Report, display: &str, root: &Path, issues: &[FsIssue]) {
    for i in issues {
        report.errors.push(issue_report(display, root, i));
    }
}

/// Where each content is: (replica index, file, stat recorded when hashed).
type Locations = HashMap<Hash, Vec<(usize, PathBuf, Option<Stat>)>>;

/// Content lookups for one replica's executor.
struct Source<'a> {
    reps: &'a [Replica],
    me: usize,
    locations: &'a Locations,
    scanned: &'a HashMap<Hash, ChunkList>,
}

impl ContentSource for Source<'_> {
    fn chunk_list(&self, content: &Hash) -> Option<ChunkList> {
        if let Some(l) = self.scanned.get(content) {
            return Some(l.clone());
        }
        let mine = std::iter::once(&self.reps[self.me]);
        let others = self
            .reps
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != self.me)
            .map(|(_, r)| r);
        for r in mine.chain(others) {
            if let Ok(Some(l)) = r.index.chunk_list(content) {
                return Some(l);
            }
        }
        None
    }

    fn locations(&self, content: &Hash) -> Vec<Location> {
        let mut v: Vec<Location> = self
            .locations
            .get(content)
            .map(|l| {
                l.iter()
                    .map(|(i, p, stat)| Location {
                        path: p.clone(),
                        local: *i == self.me,
                        stat: *stat,
                    })
                    .collect()
            })
            .unwrap_or_default();
        // Own files first.
        v.sort_by_key(|l| !l.local);
        v
    }
}
