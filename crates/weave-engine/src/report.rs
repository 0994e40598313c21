//! What a sync did, for people and (as JSON) for scripts.

use serde::Serialize;
use weave_core::Op;
use weave_core::{Conflict, ConflictKind};

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub dry_run: bool,
    /// True when the replicas ended identical with no conflict and no error.
    pub in_sync: bool,
    /// True when nothing had changed anywhere since these replicas last
    /// synced together (with the same ignore patterns), so nothing was planned.
    pub unchanged: bool,
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
    /// Bytes of file content taken from another replica.
    pub bytes_copied: u64,
    /// Bytes of file content rebuilt from a replica's own files.
    pub bytes_local: u64,
    /// Bytes that crossed the network, both ways, all remotes.
    pub bytes_on_wire: u64,
    pub conflicts: Vec<ConflictReport>,
    /// Concurrent versions merged into one (kinds that define a merge).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub merged: Vec<MergeReport>,
    pub errors: Vec<IssueReport>,
    pub notices: Vec<IssueReport>,
    pub replicas: Vec<ReplicaReport>,
    /// With --dry-run: what a sync would do.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub planned: Vec<PlannedOp>,
    /// The sync changed a replica's ignore file: it ran under the patterns
    /// from before, and another sync applies the new ones.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ignore_file_changed: bool,
}

impl Report {
    pub fn finish(&mut self) {
        self.created = self.replicas.iter().map(|r| r.created).sum();
        self.updated = self.replicas.iter().map(|r| r.updated).sum();
        self.deleted = self.replicas.iter().map(|r| r.deleted).sum();
        self.bytes_copied = self.replicas.iter().map(|r| r.bytes_copied).sum();
        self.bytes_local = self.replicas.iter().map(|r| r.bytes_local).sum();
        self.bytes_on_wire = self
            .replicas
            .iter()
            .map(|r| r.wire_sent.unwrap_or(0) + r.wire_received.unwrap_or(0))
            .sum();
        self.in_sync = self.errors.is_empty()
            && self.conflicts.is_empty()
            && (!self.dry_run || self.planned.is_empty());
    }
}

#[derive(Debug, Default, Serialize)]
pub struct ReplicaReport {
    pub path: String,
    pub id: String,
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
    pub bytes_copied: u64,
    pub bytes_local: u64,
    /// For a remote replica: bytes sent to it and received from it
    /// (messages, as they went into and came out of the transport).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wire_sent: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wire_received: Option<u64>,
    /// The paths changed in this replica and how (the first
    /// [`CHANGED_SHOWN`]; the counts above have them all).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<ChangedPath>,
}

/// Paths a replica's report names, at most.
pub const CHANGED_SHOWN: usize = 100;

/// A path a sync changed in a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangedPath {
    pub path: String,
    /// create, update, delete, mkdir or metadata.
    pub action: String,
    /// The short id of the replica whose change this was (the version's
    /// origin: where the edit or deletion was made, wherever it came from).
    pub origin: String,
}

impl ReplicaReport {
    /// Counts the change to `entry` (its path, now) made by an operation
    /// whose [`crate::op_action`] is `action`, and names it while fewer
    /// than [`CHANGED_SHOWN`] are.
    pub fn note(&mut self, entry: &weave_core::Entry, action: Option<&str>) {
        crate::ops::count(self, action);
        if let Some(action) = action {
            if self.changed.len() < CHANGED_SHOWN {
                self.changed.push(ChangedPath::of(entry, action));
            }
        }
    }
}

impl ChangedPath {
    /// `entry`'s path changed by `action`.
    pub fn of(entry: &weave_core::Entry, action: &str) -> ChangedPath {
        ChangedPath {
            path: entry.path.clone(),
            action: action.to_string(),
            origin: entry.origin.short(),
        }
    }
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ConflictReport {
    pub path: String,
    pub kind: &'static str,
    pub description: &'static str,
    /// The replica that made the version that kept the name.
    pub winner: String,
    /// Conflict copies made for the other versions.
    pub copies: Vec<String>,
    /// Replicas whose versions the conflict policy dropped.
    pub dropped: Vec<String>,
}

impl ConflictReport {
    pub fn from_conflict(c: &Conflict) -> Self {
        ConflictReport {
            path: c.path.clone(),
            kind: match c.kind {
                ConflictKind::KeptBoth => "keep-both",
                ConflictKind::Overruled => "policy",
                ConflictKind::ModifyDelete => "modify-delete",
                ConflictKind::DirVsFile => "dir-vs-file",
                ConflictKind::ParentRestored => "parent-restored",
            },
            description: c.kind.describe(),
            winner: c.winner.to_string(),
            copies: c.copies.clone(),
            dropped: c.dropped.iter().map(|r| r.to_string()).collect(),
        }
    }
}

/// Concurrent versions of one object that were merged into one.
#[derive(Debug, Clone, Serialize)]
pub struct MergeReport {
    pub path: String,
    /// How many distinct versions went in.
    pub versions: usize,
    /// The merged object's size.
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct IssueReport {
    pub replica: String,
    pub path: String,
    pub message: String,
}

/// How the message of an operation a replica did not take by its own
/// rules begins (a send-only folder, a receive-only folder's own change):
/// a notice, not a failure.
pub const NOT_TAKEN: &str = "not taken: ";

/// Whether `message` says an operation was not taken by the replica's
/// own rules (see [`NOT_TAKEN`]).
pub fn is_refusal(message: &str) -> bool {
    message.starts_with(NOT_TAKEN)
}

#[derive(Debug, Serialize)]
pub struct PlannedOp {
    pub replica: String,
    pub action: &'static str,
    pub path: String,
}

impl PlannedOp {
    /// The operation `all[k]` of a replica, if it is one a person counts.
    pub fn describe(replica: &str, all: &[Op], k: usize) -> Option<PlannedOp> {
        Some(PlannedOp {
            replica: replica.to_string(),
            action: crate::ops::action(all, k)?,
            path: all[k].path.clone(),
        })
    }
}
