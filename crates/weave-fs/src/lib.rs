//! weave-fs: a directory tree as a replica.
//!
//! - [`scan`](mod@scan) turns the disk into index entries, reading only files whose
//!   stat changed, hashing in parallel;
//! - [`apply`](mod@apply) carries out a plan on disk with atomic commits (temporary
//!   file in the target's directory, flush, rename, flush the directory)
//!   and re-checks every target right before it is replaced (I-4, I-5);
//! - [`stage`]: chunks received from other replicas (the stage pack and
//!   part files), kept across interrupted runs;
//! - [`LocalReplica`] is the directory as a `weave_engine::Replica`: it
//!   scans, plans what to receive (a pure transfer plan), receives, writes
//!   through `apply`, records in its index and keeps replaced versions in
//!   the version store; [`Files`] is the kind that opens one by path;
//! - [`ignore`] reads a directory's `.weaveignore` (the matching is
//!   `weave_core::ignore`).

pub mod apply;
pub mod ignore;
mod kind;
pub mod meta;
mod replica;
pub mod scan;
pub mod sparse;
pub mod stage;
mod util;

pub use kind::Files;
pub use replica::LocalReplica;

pub use apply::{
    apply, clear_trash, restore_modes, trash_leftovers, ApplyOutcome, ContentSource, Done,
    Location, Replaced,
};
pub use scan::{prehash, scan, Prehashed, ScanError, ScanOutcome};
pub use stage::{Part, PartWriter, Stage};
pub use util::{join, read_at, same_stat, stat_of, temp_name, FsIssue, TEMP_PREFIX};
