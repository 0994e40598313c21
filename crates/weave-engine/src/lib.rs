//! weave-engine: one sync of N replicas of any kind, through the
//! [`Replica`] trait ([`run`]: scan, plan, derive, execute, record; see
//! `run.rs` for the stages). The engine never touches a path: it opens no
//! file and no database; replicas do (weave-fs for directory trees,
//! weave-object for object stores, weave-net for remote ones).

mod fetch;
mod gather;
mod kind;
mod merge;
mod ops;
mod replica;
mod report;
mod run;
mod slice;

pub use kind::{Kind, Kinds, Merge, MERGE_MAX};
pub use ops::action as op_action;
pub use replica::{
    fetch_lists, finish_index, lists_for, page, select, Applied, Entries, Finish, Foreign,
    IgnoreSpec, Integrated, Issue, LocalTree, NoProvider, Page, Prehashed, Provider, Replica,
    ReplicaInfo, ScanSummary, ServedNodes, Sibling, Wants,
};
pub use report::{
    is_refusal, ChangedPath, ConflictReport, IssueReport, MergeReport, PlannedOp, ReplicaReport,
    Report, CHANGED_SHOWN, NOT_TAKEN,
};
pub use run::run;

use std::path::PathBuf;
use thiserror::Error;
use weave_core::ignore::IgnoreError;
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
    /// Plan every path, even where the replicas could give only what
    /// changed since they last synced (see `gather.rs`): a check of the
    /// whole tree, and what a test compares the incremental plan with.
    pub full_plan: bool,
    /// Paths planned and applied at a time when every path is planned
    /// and the replicas can give their indexes in pages (see
    /// `slice.rs`); 0 for [`SLICE`].
    pub slice: usize,
}

/// Paths planned and applied at a time in a sync that plans every path:
/// about 14 MiB of entries, plan and operations (about 3.4 KiB a path).
/// Measured on bench c0 (100,000 small files): 4,096 peaks at 128–133
/// MiB, 8,192 at 150, 16,384 at 195–199, with no loss of time; each slice
/// costs a few round trips with a remote replica.
pub const SLICE: usize = 4_096;

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            policy: PolicySpec::KeepBoth,
            ignore: Vec::new(),
            dry_run: false,
            backup: Vec::new(),
            merge: None,
            full_plan: false,
            slice: 0,
        }
    }
}

/// Progress callbacks (a terminal progress bar, or nothing).
pub trait Progress: Sync {
    fn phase(&self, _msg: &str) {}
    /// The bytes the sync is to write: the transfer starts.
    fn set_total(&self, _bytes: u64) {}
    /// The bytes to write grew to `bytes` (a sync planned in slices learns
    /// them a slice at a time); what was written so far stays counted.
    fn grow_total(&self, _bytes: u64) {}
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
    /// A replica failed in a way of its own kind (a directory tree's
    /// scan, say).
    #[error(transparent)]
    Replica(Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Ignore(#[from] IgnoreError),
    #[error("{path}: {problem}")]
    State { path: PathBuf, problem: String },
    /// A remote replica or the session to it failed, in the session's
    /// own error type (weave-net's, a daemon's, or [`TransferError`]).
    /// Its message and source are the inner error's.
    #[error(transparent)]
    Session(Box<dyn std::error::Error + Send + Sync>),
}

/// The engine's own failures of a transfer between replicas.
#[derive(Debug, Error)]
pub enum TransferError {
    /// The sync stopped taking chunks (it failed elsewhere) while a
    /// holder was still sending them.
    #[error("the transfer was stopped")]
    Stopped,
}

impl From<TransferError> for SyncError {
    fn from(e: TransferError) -> SyncError {
        SyncError::Session(Box::new(e))
    }
}

impl SyncError {
    /// The session error of type `E` this is, if it is one.
    pub fn session<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            SyncError::Session(e) => e.downcast_ref(),
            _ => None,
        }
    }
}

impl From<weave_index::StateError> for SyncError {
    fn from(e: weave_index::StateError) -> SyncError {
        use weave_index::StateError as S;
        match e {
            S::BadReplica { path, problem, fix } => SyncError::BadReplica { path, problem, fix },
            S::Usage(m) => SyncError::Usage(m),
            S::Unusable { path, problem } => SyncError::State { path, problem },
        }
    }
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
