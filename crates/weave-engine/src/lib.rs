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

pub mod history;
mod kind;
mod local;
mod merge;
mod ops;
mod replica;
mod report;

pub use kind::{claim_kind, Files, Kind, Kinds, Merge, KIND_FILE, MERGE_MAX};
pub use local::LocalReplica;
pub use replica::{
    fetch_lists, finish_index, lists_for, open_index, Applied, Entries, Finish, Foreign,
    IgnoreSpec, Issue, NoProvider, Provider, Replica, ReplicaInfo, ScanSummary, Wants,
};
pub use report::{ConflictReport, IssueReport, MergeReport, PlannedOp, ReplicaReport, Report};

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use thiserror::Error;
use weave_core::ignore::{IgnoreError, Matcher};
use weave_core::path::STATE_DIR;
use weave_core::LocalEntry;
use weave_core::{plan_tree, Bumper, ConflictPolicy, Entry, Hash, Object, ReplicaId};
use weave_fs::Location;
use weave_index::IndexError;

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
    /// Backup replicas, as the user gave them: they take in every change
    /// of the others and never send their own (see [`Roles`]).
    pub backup: Vec<PathBuf>,
    /// How concurrent versions of an object are merged instead of kept
    /// both (see [`Merge`]); usually the replicas' [`Kind::merge`].
    pub merge: Option<std::sync::Arc<dyn Merge>>,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            policy: PolicySpec::KeepBoth,
            ignore: Vec::new(),
            dry_run: false,
            backup: Vec::new(),
            merge: None,
        }
    }
}

/// Progress callbacks (a terminal progress bar, or nothing).
pub trait Progress: Sync {
    fn phase(&self, _msg: &str) {}
    fn set_total(&self, _bytes: u64) {}
    fn advance(&self, _bytes: u64) {}
    /// Operations carried out so far, of how many (after each replica).
    fn files(&self, _done: u64, _total: u64) {}
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
    #[error("{path}: {problem}")]
    State { path: PathBuf, problem: String },
    /// A remote replica or the session to it failed.
    #[error("{0}")]
    Remote(String),
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
    check_local_replicas(paths)
}

/// [`check_replicas`] for the local replicas of a sync that may also
/// have remote ones.
pub fn check_local_replicas(paths: &[PathBuf]) -> Result<Vec<PathBuf>, SyncError> {
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

/// What the replicas of one sync are, beyond being replicas (positions in
/// the sync's replica list).
#[derive(Debug, Clone, Default)]
pub struct Roles {
    /// The replica a prefer= policy names.
    pub preferred: Option<usize>,
    /// Backup replicas. The plan is made from the other replicas (the
    /// sources) alone, and a backup is brought to it: it takes in every
    /// change, and its own changes (edits, new files, deletions) are
    /// replaced by the sources' state, the content they replace kept in
    /// its version store like any other. Nothing of a backup's reaches a
    /// source.
    pub backups: Vec<usize>,
}

/// Finds which of the sync's `replicas` each of `opts`' replica
/// references (prefer=, --backup) names, with `find` (given as on the
/// command line → position), and checks the roles.
pub fn resolve_roles(
    opts: &SyncOptions,
    replicas: usize,
    find: impl Fn(&std::path::Path) -> Option<usize>,
) -> Result<Roles, SyncError> {
    let preferred = match &opts.policy {
        PolicySpec::Prefer(p) => match find(p) {
            Some(i) => Some(i),
            None => return Err(no_such_preferred(&p.display().to_string())),
        },
        _ => None,
    };
    let mut backups = Vec::new();
    for b in &opts.backup {
        match find(b) {
            Some(i) => {
                if !backups.contains(&i) {
                    backups.push(i)
                }
            }
            None => {
                return Err(SyncError::Usage(format!(
                    "--backup {} names no replica of this sync; give one of the replicas exactly as on the command line",
                    b.display()
                )))
            }
        }
    }
    if let Some(p) = preferred {
        if backups.contains(&p) {
            return Err(SyncError::Usage(
                "--conflict prefer= names a backup replica; a backup's versions never win (prefer one of the other replicas, or drop --backup)".into(),
            ));
        }
    }
    let roles = Roles { preferred, backups };
    check_roles(&roles, replicas)?;
    Ok(roles)
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

/// Runs one sync of the local replicas at `paths`.
pub fn sync(
    paths: &[PathBuf],
    opts: &SyncOptions,
    progress: &dyn Progress,
) -> Result<Report, SyncError> {
    let canon = check_replicas(paths)?;
    // Bad patterns stop the sync before any state is created.
    let roots: Vec<&std::path::Path> = canon.iter().map(|p| p.as_path()).collect();
    weave_fs::ignore::build(&roots, &opts.ignore)?;
    // Which replicas prefer= and --backup name, before anything is opened.
    let roles = resolve_roles(opts, canon.len(), |p| {
        let c = std::fs::canonicalize(p).ok();
        canon.iter().position(|r| Some(r) == c.as_ref())
    })?;
    // Open the existing indexes first, so a damaged one stops the sync
    // before any new state is created in another replica.
    let has_index = |c: &PathBuf| c.join(STATE_DIR).join(weave_index::INDEX_FILE).exists();
    let order: Vec<usize> = (0..canon.len())
        .filter(|&i| has_index(&canon[i]))
        .chain((0..canon.len()).filter(|&i| !has_index(&canon[i])))
        .collect();
    let mut opened: Vec<Option<Box<dyn Replica>>> = (0..canon.len()).map(|_| None).collect();
    for i in order {
        let display = paths[i].display().to_string();
        opened[i] = Some(Box::new(LocalReplica::open(
            &canon[i],
            &display,
            opts.dry_run,
        )?));
    }
    let mut reps: Vec<Box<dyn Replica>> = opened.into_iter().map(|r| r.expect("opened")).collect();
    run(&mut reps, opts, &roles, progress)
}

/// Refuses roles that leave no replica to sync from.
fn check_roles(roles: &Roles, replicas: usize) -> Result<(), SyncError> {
    if roles.backups.len() >= replicas {
        return Err(SyncError::Usage(
            "every replica of this sync is a --backup; a backup takes in the changes of the other replicas, so at least one replica must not be one".into(),
        ));
    }
    Ok(())
}

/// The error for a prefer= policy that names no replica of the sync.
pub fn no_such_preferred(given: &str) -> SyncError {
    SyncError::Usage(format!(
        "--conflict prefer={given} names no replica of this sync; give one of the replicas exactly as on the command line"
    ))
}

/// Runs one sync of opened replicas with their `roles`.
pub fn run(
    reps: &mut [Box<dyn Replica>],
    opts: &SyncOptions,
    roles: &Roles,
    progress: &dyn Progress,
) -> Result<Report, SyncError> {
    check_roles(roles, reps.len())?;
    let is_backup = |i: usize| roles.backups.contains(&i);
    // Two replicas with one identity (a state directory copied along with
    // the files) would confuse whose change is whose.
    for i in 0..reps.len() {
        for j in i + 1..reps.len() {
            if reps[i].info().id == reps[j].info().id {
                return Err(SyncError::BadReplica {
                    path: reps[j].display().to_string(),
                    problem: format!(
                        "has the same weave identity as {} (its state directory was copied from there, or both name the same directory)",
                        reps[i].display()
                    ),
                    fix: format!(
                        "Give each directory once; if it is a copy, move its {STATE_DIR} directory out of it (it is rebuilt by the next sync; files that differ are kept as conflict copies)."
                    ),
                });
            }
        }
    }
    let policy = match (&opts.policy, roles.preferred) {
        (PolicySpec::Prefer(_), Some(i)) => ConflictPolicy::Prefer(reps[i].info().id),
        (PolicySpec::Newest, _) => ConflictPolicy::Newest,
        _ => ConflictPolicy::KeepBoth,
    };
    let ignore = IgnoreSpec {
        files: reps
            .iter()
            .filter_map(|r| r.info().ignore_file.clone())
            .collect(),
        patterns: opts.ignore.clone(),
    };
    let matcher = Matcher::from_files(&ignore.files, &ignore.patterns)?;

    let mut report = Report {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    for r in reps.iter() {
        if r.info().rekeyed {
            report.notices.push(IssueReport {
                replica: r.display().to_string(),
                path: STATE_DIR.into(),
                message: "this state directory was made for another directory (copied or moved with the files); the replica got a new identity".into(),
            });
        }
    }
    // Scan every replica, in parallel.
    progress.phase("scanning");
    let t_scan = std::time::Instant::now();
    let outcomes: Vec<Result<ScanSummary, SyncError>> = std::thread::scope(|s| {
        let handles: Vec<_> = reps
            .iter_mut()
            .map(|r| {
                let ig = &ignore;
                s.spawn(move || r.scan(ig, opts.dry_run))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("scanner panicked"))
            .collect()
    });
    for (r, o) in reps.iter().zip(outcomes) {
        let o = o?;
        push_issues(&mut report.errors, r.display(), &o.errors);
        push_issues(&mut report.notices, r.display(), &o.notices);
    }
    for r in reps.iter() {
        report.replicas.push(ReplicaReport {
            path: r.display().to_string(),
            id: r.info().id.to_string(),
            ..Default::default()
        });
    }
    tracing::debug!(elapsed = ?t_scan.elapsed(), "scanned and recorded local changes");

    // Nothing new anywhere since these replicas last synced together.
    let fp = matcher.fingerprint();
    let up_to_date = reps.iter().all(|r| r.info().ignore_fingerprint == Some(fp))
        && reps.iter().all(|r| {
            reps.iter().all(|p| {
                p.info().id == r.info().id
                    || r.info().peers.get(&p.info().id) == Some(&p.info().seq)
            })
        });
    if up_to_date {
        report.unchanged = true;
        note_traffic(&mut report, reps);
        report.finish();
        return Ok(report);
    }

    // Plan the whole tree once, from every replica's full index.
    progress.phase("planning");
    let t_plan = std::time::Instant::now();
    let mut views: Vec<Entries> = Vec::with_capacity(reps.len());
    for r in reps.iter_mut() {
        views.push(r.entries()?);
    }
    // The first source coordinates: changes the planner makes are its own.
    let coord = (0..reps.len()).find(|&i| !is_backup(i)).expect("a source");
    let mut clock = CoordinatorClock {
        id: reps[coord].info().id,
        clock: reps[coord].info().clock,
    };
    let mut plan = {
        let mut by_path: BTreeMap<&str, Vec<(ReplicaId, &Entry)>> = BTreeMap::new();
        for (i, (r, v)) in reps.iter().zip(&views).enumerate() {
            if is_backup(i) {
                continue;
            }
            let id = r.info().id;
            for (p, le) in v.iter() {
                by_path.entry(p.as_str()).or_default().push((id, &le.entry));
            }
        }
        by_path.retain(|p, hs| {
            let is_dir = hs.iter().any(|(_, e)| e.object.is_dir());
            !matcher.is_ignored(p, is_dir)
        });
        plan_tree(&by_path, policy, &mut clock)
    };
    tracing::debug!(elapsed = ?t_plan.elapsed(), paths = plan.finals.len(), "planned");
    // Concurrent versions the kind knows how to merge become one.
    let mut made: HashMap<Hash, merge::Made> = HashMap::new();
    if let Some(m) = &opts.merge {
        report.merged =
            merge::merge_conflicts(reps, &views, &mut plan, m.as_ref(), &mut clock, &mut made);
    }
    for c in &plan.conflicts {
        report.conflicts.push(ConflictReport::from_conflict(c));
    }
    let mut all_ops: Vec<Vec<weave_core::Op>> = Vec::with_capacity(reps.len());
    for (i, v) in views.iter().enumerate() {
        let mut o = ops::derive(v, &plan.finals);
        if is_backup(i) {
            // What only the backup has goes: it mirrors the sources.
            let extra: BTreeMap<String, Entry> = v
                .iter()
                .filter(|(p, le)| {
                    le.entry.is_live()
                        && !plan.finals.contains_key(*p)
                        && !matcher.is_ignored(p, le.entry.object.is_dir())
                })
                .map(|(p, le)| {
                    (
                        p.clone(),
                        Entry {
                            object: Object::Deleted,
                            mode: 0,
                            mtime_ns: 0,
                            ..le.entry.clone()
                        },
                    )
                })
                .collect();
            o.extend(ops::derive(v, &extra));
            note_backup_reverts(&mut report, reps[i].display(), &o, v, &plan.finals);
        }
        all_ops.push(o);
    }
    if opts.dry_run {
        for (r, ops) in reps.iter().zip(&all_ops) {
            for k in 0..ops.len() {
                if let Some(p) = PlannedOp::describe(r.display(), ops, k) {
                    report.planned.push(p);
                }
            }
        }
        note_traffic(&mut report, reps);
        report.finish();
        return Ok(report);
    }

    let total: u64 = all_ops
        .iter()
        .flatten()
        .filter(|o| o.kind == weave_core::OpKind::WriteFile)
        .map(|o| match o.target.object {
            Object::File { size, .. } => size,
            _ => 0,
        })
        .sum();
    progress.set_total(total);
    progress.phase("syncing");
    let ops_total: u64 = all_ops.iter().map(|o| o.len() as u64).sum();
    let mut ops_done = 0u64;
    progress.files(0, ops_total);

    // Which replicas hold each content.
    let mut holders: HashMap<Hash, Vec<usize>> = HashMap::new();
    for (i, v) in views.iter().enumerate() {
        for le in v.values() {
            if let Object::File { content, .. } = &le.entry.object {
                let h = holders.entry(*content).or_default();
                if h.last() != Some(&i) {
                    h.push(i);
                }
            }
        }
    }
    let mut clean = vec![true; reps.len()];
    for i in 0..reps.len() {
        let ops = std::mem::take(&mut all_ops[i]);
        if ops.is_empty() {
            continue;
        }
        let t_apply = std::time::Instant::now();
        // What each operation does, for the report (the operations
        // themselves go to the replica).
        let actions: Vec<Option<&str>> = (0..ops.len()).map(|k| ops::action(&ops, k)).collect();
        // What the other local replicas hold, usable directly when this
        // one is local too.
        let mut foreign = Foreign::default();
        if reps[i].is_local() {
            for (j, v) in views.iter().enumerate() {
                if j == i || !reps[j].is_local() {
                    continue;
                }
                let root = local_root(&*reps[j]);
                for (p, le) in v.iter() {
                    if let Object::File { content, .. } = &le.entry.object {
                        foreign
                            .locations
                            .entry(*content)
                            .or_default()
                            .push(Location {
                                path: weave_fs::join(&root, p),
                                local: false,
                                stat: le.stat,
                            });
                    }
                }
            }
            for op in &ops {
                if let Object::File { content, .. } = &op.target.object {
                    if foreign.lists.contains_key(content) {
                        continue;
                    }
                    if let Some(m) = made.get(content) {
                        foreign.lists.insert(*content, m.list.clone());
                        continue;
                    }
                    for j in holders.get(content).map(|h| h.as_slice()).unwrap_or(&[]) {
                        if *j != i && reps[*j].is_local() {
                            if let Some(l) = reps[*j].chunk_list(content) {
                                foreign.lists.insert(*content, l);
                                break;
                            }
                        }
                    }
                }
            }
        }
        let applied = {
            let (before, rest) = reps.split_at_mut(i);
            let (dest, after) = rest.split_first_mut().expect("i < len");
            let mut others: Vec<(usize, &mut Box<dyn Replica>)> = before
                .iter_mut()
                .enumerate()
                .chain(after.iter_mut().enumerate().map(|(k, r)| (k + i + 1, r)))
                .collect();
            let mut provider = Fetch {
                others: &mut others,
                holders: &holders,
                made: &made,
            };
            let adv = |n: u64| progress.advance(n);
            dest.apply(ops, &foreign, &mut provider, &adv)?
        };
        if !applied.errors.is_empty() {
            clean[i] = false;
        }
        ops_done += actions.len() as u64;
        progress.files(ops_done, ops_total);
        push_issues(&mut report.errors, reps[i].display(), &applied.errors);
        let rr = &mut report.replicas[i];
        rr.bytes_local += applied.bytes_local;
        rr.bytes_copied += applied.bytes_remote;
        for (k, entry) in &applied.done {
            ops::count(rr, actions.get(*k).copied().flatten());
            if let Object::File { content, .. } = &entry.object {
                let h = holders.entry(*content).or_default();
                if !h.contains(&i) {
                    h.push(i);
                }
            }
            std::sync::Arc::make_mut(&mut views[i]).insert(
                entry.path.clone(),
                LocalEntry {
                    entry: entry.clone(),
                    seq: 0,
                    stat: None,
                },
            );
        }
        tracing::debug!(replica = %reps[i].display(), ops = actions.len(), elapsed = ?t_apply.elapsed(), "applied and recorded");
    }
    // Record what each replica has integrated: everything the others
    // hold now, unless something failed on it.
    let seqs: Vec<(ReplicaId, u64)> = reps.iter().map(|r| (r.info().id, r.info().seq)).collect();
    for (i, r) in reps.iter_mut().enumerate() {
        let me = r.info().id;
        let fin = Finish {
            observe: if i == coord { clock.clock } else { 0 },
            integrated: clean[i].then(|| {
                (
                    seqs.iter().filter(|(id, _)| *id != me).copied().collect(),
                    fp,
                )
            }),
        };
        r.finish(&fin)?;
    }
    note_traffic(&mut report, reps);
    report.finish();
    Ok(report)
}

/// Notes, for a backup replica, each of its own changes its operations
/// undo: a path whose version there is not one the sources' final version
/// has seen, or that only the backup has. Those changes never reach the
/// other replicas; what they replace of a file is kept in the backup's
/// version store.
fn note_backup_reverts(
    report: &mut Report,
    display: &str,
    ops: &[weave_core::Op],
    view: &BTreeMap<String, LocalEntry>,
    finals: &BTreeMap<String, Entry>,
) {
    const SHOWN: usize = 20;
    let mut own: Vec<(&str, &str)> = Vec::new();
    for o in ops.iter().filter(|o| o.kind != weave_core::OpKind::Record) {
        if own.last().is_some_and(|(p, _)| *p == o.path) {
            continue;
        }
        let Some(mine) = view.get(&o.path) else {
            continue;
        };
        let undone = match finals.get(&o.path) {
            None => true,
            Some(f) => matches!(
                mine.entry.vv.compare(&f.vv),
                weave_core::Causality::Dominates | weave_core::Causality::Concurrent
            ),
        };
        if undone {
            let what = match finals.get(&o.path) {
                Some(f) if f.is_live() && !mine.entry.is_live() => {
                    "deleted here: brought back from the other replicas"
                }
                Some(f) if f.is_live() => "changed here: replaced by the other replicas' version",
                _ => "not on the other replicas: removed",
            };
            own.push((&o.path, what));
        }
    }
    for (path, what) in own.iter().take(SHOWN) {
        report.notices.push(IssueReport {
            replica: display.to_string(),
            path: path.to_string(),
            message: format!(
                "{what} (a backup takes in changes and sends none; a file's old content is in `weave history`)"
            ),
        });
    }
    if own.len() > SHOWN {
        report.notices.push(IssueReport {
            replica: display.to_string(),
            path: String::new(),
            message: format!(
                "and {} more of its own changes undone (a backup takes in changes and sends none)",
                own.len() - SHOWN
            ),
        });
    }
}

fn note_traffic(report: &mut Report, reps: &[Box<dyn Replica>]) {
    for (rr, r) in report.replicas.iter_mut().zip(reps) {
        if let Some((sent, received)) = r.traffic() {
            rr.wire_sent = Some(sent);
            rr.wire_received = Some(received);
        }
    }
}

/// The root directory of a local replica (only called for those).
fn local_root(r: &dyn Replica) -> PathBuf {
    r.local_root().expect("a local replica has a root")
}

fn push_issues(out: &mut Vec<IssueReport>, display: &str, issues: &[Issue]) {
    for i in issues {
        out.push(IssueReport {
            replica: display.to_string(),
            path: i.path.clone(),
            message: i.message.clone(),
        });
    }
}

/// Gets what one replica lacks from the others: each content from a
/// replica that holds it, spreading the work over the holders and trying
/// the next holder for whatever one of them no longer has.
struct Fetch<'a, 'b> {
    others: &'a mut Vec<(usize, &'b mut Box<dyn Replica>)>,
    holders: &'a HashMap<Hash, Vec<usize>>,
    /// Contents this sync made (merges), served from memory.
    made: &'a HashMap<Hash, merge::Made>,
}

impl Fetch<'_, '_> {
    /// Holders of `content` among the others (positions in `others`), local
    /// ones first, rotated by `turn` among equals.
    fn candidates(&self, content: &Hash, turn: usize) -> Vec<usize> {
        let hs = self
            .holders
            .get(content)
            .map(|h| h.as_slice())
            .unwrap_or(&[]);
        let mut c: Vec<usize> = self
            .others
            .iter()
            .enumerate()
            .filter(|(_, (i, _))| hs.contains(i))
            .map(|(pos, _)| pos)
            .collect();
        if !c.is_empty() {
            let n = c.len();
            c.rotate_left(turn % n);
        }
        c.sort_by_key(|&pos| !self.others[pos].1.is_local());
        c
    }
}

impl Provider for Fetch<'_, '_> {
    fn nodes(&mut self, wants: &Wants) -> Result<Vec<Vec<Option<Vec<u8>>>>, SyncError> {
        let mut out: Vec<Vec<Option<Vec<u8>>>> =
            wants.iter().map(|(_, h)| vec![None; h.len()]).collect();
        for (w, (content, hashes)) in wants.iter().enumerate() {
            if let Some(m) = self.made.get(content) {
                let nodes = weave_chunk::tree(&m.list.chunks).1;
                for (slot, h) in out[w].iter_mut().zip(hashes) {
                    *slot = nodes.get(h).map(|n| n.encode());
                }
            }
        }
        // Round k asks every want's k-th candidate for what is still missing.
        for round in 0..self.others.len() {
            let mut per: HashMap<usize, Vec<usize>> = HashMap::new();
            for (w, (content, _)) in wants.iter().enumerate() {
                if out[w].iter().all(|n| n.is_some()) {
                    continue;
                }
                if let Some(&pos) = self.candidates(content, 0).get(round) {
                    per.entry(pos).or_default().push(w);
                }
            }
            if per.is_empty() {
                break;
            }
            for (pos, ws) in per {
                let ask: Vec<(Hash, Vec<Hash>)> = ws.iter().map(|&w| wants[w].clone()).collect();
                let got = self.others[pos].1.serve_nodes(&ask)?;
                for (w, g) in ws.into_iter().zip(got) {
                    for (slot, n) in out[w].iter_mut().zip(g) {
                        if slot.is_none() {
                            *slot = n;
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    fn chunks(
        &mut self,
        wants: &Wants,
        sink: &mut dyn FnMut(Hash, Vec<u8>) -> Result<(), SyncError>,
    ) -> Result<(), SyncError> {
        let mut pending: Vec<(Hash, Vec<Hash>)> = Vec::new();
        for w in wants {
            let Some(m) = self.made.get(&w.0) else {
                pending.push(w.clone());
                continue;
            };
            let at: HashMap<Hash, (usize, usize)> = m
                .list
                .with_offsets()
                .map(|(o, c)| (c.hash, (o as usize, c.len as usize)))
                .collect();
            for h in &w.1 {
                if let Some(&(o, len)) = at.get(h) {
                    sink(*h, m.data[o..o + len].to_vec())?;
                }
            }
        }
        for round in 0..self.others.len() {
            let mut per: HashMap<usize, Vec<(Hash, Vec<Hash>)>> = HashMap::new();
            for w in pending.drain(..) {
                // Spread contents over the holders: several sources at once
                // when a content is on several replicas.
                let c = self.candidates(&w.0, w.0 .0[0] as usize);
                if let Some(&pos) = c.get(round) {
                    per.entry(pos).or_default().push(w);
                }
            }
            if per.is_empty() {
                break;
            }
            // Which content each asked chunk belongs to.
            let content_of: HashMap<Hash, Hash> = per
                .values()
                .flatten()
                .flat_map(|(c, hs)| hs.iter().map(move |h| (*h, *c)))
                .collect();
            let mut missing: HashMap<Hash, Vec<Hash>> = HashMap::new();
            let mut take = |h: Hash, data: Option<Vec<u8>>| match data {
                Some(d) => sink(h, d),
                None => {
                    if let Some(c) = content_of.get(&h) {
                        missing.entry(*c).or_default().push(h);
                    }
                    Ok(())
                }
            };
            if per.len() == 1 {
                let (pos, ask) = per.into_iter().next().expect("one holder");
                self.others[pos].1.serve_chunks(&ask, &mut take)?;
            } else {
                // Several holders at once: each serves from its own thread
                // into one channel; chunks are taken here as they arrive.
                tracing::debug!(holders = per.len(), "fetching from several holders at once");
                std::thread::scope(|s| -> Result<(), SyncError> {
                    let (tx, rx) = std::sync::mpsc::sync_channel::<(Hash, Option<Vec<u8>>)>(64);
                    let mut handles = Vec::new();
                    for (pos, (_, rep)) in self.others.iter_mut().enumerate() {
                        let Some(ask) = per.remove(&pos) else {
                            continue;
                        };
                        let tx = tx.clone();
                        let rep: &mut Box<dyn Replica> = rep;
                        handles.push(s.spawn(move || {
                            rep.serve_chunks(&ask, &mut |h, d| {
                                tx.send((h, d)).map_err(|_| {
                                    SyncError::Remote("the transfer was stopped".into())
                                })
                            })
                        }));
                    }
                    drop(tx);
                    let mut failed = None;
                    for (h, d) in rx.iter() {
                        if let Err(e) = take(h, d) {
                            failed = Some(e);
                            break;
                        }
                    }
                    // Holders still sending stop at their next chunk.
                    drop(rx);
                    let served: Vec<Result<(), SyncError>> = handles
                        .into_iter()
                        .map(|h| h.join().expect("a chunk server panicked"))
                        .collect();
                    if let Some(e) = failed {
                        return Err(e);
                    }
                    served.into_iter().collect()
                })?;
            }
            pending.extend(missing);
            if pending.is_empty() {
                break;
            }
        }
        Ok(())
    }
}

/// The id of the replica at `root` (0 if its index cannot be read now).
pub(crate) fn local_id(root: &std::path::Path) -> weave_core::ReplicaId {
    weave_index::Index::open_for_dry_run(&root.join(weave_core::path::STATE_DIR))
        .map(|i| i.id())
        .unwrap_or(weave_core::ReplicaId(0))
}
