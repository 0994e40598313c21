//! weave-core: the replication model, free of I/O.
//!
//! - [`id`]: replica ids and content hashes;
//! - [`vv`]: version vectors;
//! - [`entry`]: the replicated record of one path;
//! - [`plan`]: the pure planner and the conflict policies;
//! - [`path`]: path validation and conflict-copy names.

pub mod entry;
pub mod id;
pub mod path;
pub mod plan;
pub mod vv;

pub use entry::{Entry, Object};
pub use id::{Hash, ReplicaId};
pub use plan::{plan_tree, Bumper, Conflict, ConflictKind, ConflictPolicy, Decision, TreePlan};
pub use vv::{Causality, VersionVector};
