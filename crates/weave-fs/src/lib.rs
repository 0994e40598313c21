//! weave-fs: a directory tree as a replica.
//!
//! - [`scan`](mod@scan) turns the disk into index entries, reading only files whose
//!   stat changed, hashing in parallel;
//! - [`apply`](mod@apply) carries out a plan on disk with atomic commits (temporary
//!   file in the target's directory, flush, rename, flush the directory)
//!   and re-checks every target right before it is replaced (I-4, I-5);
//! - [`ignore`] builds the ignore matcher from `.weaveignore` files and
//!   command-line patterns.

pub mod apply;
pub mod ignore;
mod kind;
mod replica;
pub mod scan;
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
