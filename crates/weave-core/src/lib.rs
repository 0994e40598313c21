//! weave-core: the replication model, free of I/O.
//!
//! - [`id`]: replica ids and content hashes;
//! - [`vv`]: version vectors;
//! - [`ignore`]: ignore patterns (gitignore syntax) and their matcher;
//! - [`entry`]: the replicated record of one path, and a replica's local
//!   bookkeeping beside it (its sequence number and what it saw on disk);
//! - [`op`]: the operations that bring one replica to a plan;
//! - [`plan`]: the pure planner;
//! - [`policy`]: the conflict policies;
//! - [`path`]: path validation and conflict-copy names.

pub mod entry;
pub mod id;
pub mod ignore;
pub mod meta;
pub mod op;
pub mod path;
pub mod plan;
pub mod policy;
pub mod vv;

pub use entry::{Entry, LocalEntry, Object, Stat};
pub use id::{Hash, ReplicaId};
pub use meta::{Meta, MetaScope, Owner, Xattr};
pub use op::{Op, OpKind};
pub use plan::{plan_tree, Bumper, Conflict, ConflictKind, Decision, TreePlan};
pub use policy::{ConflictPolicy, PolicyError, PolicySpec};
pub use vv::{Causality, VersionVector};
