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

mod fetch;
pub mod history;
mod kind;
mod local;
mod merge;
mod ops;
mod replica;
mod report;
mod run;

pub use kind::{claim_kind, Files, Kind, Kinds, Merge, KIND_FILE, MERGE_MAX};
pub use local::LocalReplica;
pub use replica::{
    fetch_lists, finish_index, lists_for, open_index, Applied, Entries, Finish, Foreign,
    IgnoreSpec, Integrated, Issue, LocalTree, NoProvider, Prehashed, Provider, Replica,
    ReplicaInfo, ScanSummary, ServedNodes, Sibling, Wants,
};
pub use report::{ConflictReport, IssueReport, MergeReport, PlannedOp, ReplicaReport, Report};
pub use run::run;

use std::path::PathBuf;
use thiserror::Error;
use weave_core::ignore::IgnoreError;
use weave_core::path::STATE_DIR;
pub use weave_core::PolicySpec;
use weave_index::IndexError;

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
    let preferred = match opts.policy.preferred() {
        Some(p) => match find(std::path::Path::new(p)) {
            Some(i) => Some(i),
            None => return Err(no_such_preferred(p)),
        },
        None => None,
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
pub(crate) fn check_roles(roles: &Roles, replicas: usize) -> Result<(), SyncError> {
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

/// The id of the replica at `root` (0 if its index cannot be read now).
pub(crate) fn local_id(root: &std::path::Path) -> weave_core::ReplicaId {
    weave_index::Index::open_for_dry_run(&root.join(weave_core::path::STATE_DIR))
        .map(|i| i.id())
        .unwrap_or(weave_core::ReplicaId(0))
}
