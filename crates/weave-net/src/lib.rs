//! weave-net: sessions between replicas on different machines.
//!
//! - [`address`]: where a replica is, as `weave sync` is given it;
//! - [`open`]: opening the replicas of a sync, local and remote;
//! - [`conn`]: framed messages over any byte stream, read and written by
//!   their own threads (so neither side can block the other), with an
//!   optional rate limit;
//! - [`server`]: `weave serve --stdio`, one replica driven by a session;
//! - [`remote`]: the coordinator's side of a session, a
//!   [`weave_engine::Replica`] like any local one;
//! - [`cache`]: a remote's index, remembered between syncs;
//! - [`objects`]: a folder's encrypted objects kept by an untrusted peer;
//! - [`sync`]: one sync of local and remote replicas.

pub mod address;
pub mod cache;
pub mod conn;
pub mod error;
pub mod objects;
pub mod open;
pub mod remote;
pub mod server;
mod transfer;
mod wire;

pub use address::{Address, AddressError, SshAddress};
pub use conn::{Conn, RateLimit};
pub use error::{SessionError, ENCRYPTED_ONLY, NOT_SHARED, PAUSED};
pub use open::{open_replicas, Opened};
pub use remote::{NetOptions, RemoteReplica};

use weave_engine::{Kind, Progress, Report, SyncError, SyncOptions};
use weave_fs::Files;

/// Runs one sync of the directory trees named by `specs`: local
/// directories, `[user@]host:path` or `ssh://[user@]host[:port]/path`.
pub fn sync(
    specs: &[String],
    opts: &SyncOptions,
    net: &NetOptions,
    progress: &dyn Progress,
) -> Result<Report, SyncError> {
    sync_kind(specs, opts, net, &Files, progress)
}

/// Runs one sync of the replicas of `kind` named by `specs` (local paths
/// or remote ones, as for [`sync`]). Without a merge in `opts`, the
/// kind's own merge applies.
pub fn sync_kind(
    specs: &[String],
    opts: &SyncOptions,
    net: &NetOptions,
    kind: &dyn Kind,
    progress: &dyn Progress,
) -> Result<Report, SyncError> {
    let addresses = parse_addresses(specs)?;
    let Opened {
        mut replicas,
        roles,
    } = open_replicas(&addresses, opts, net, kind)?;
    let mut opts = opts.clone();
    if opts.merge.is_none() {
        opts.merge = kind.merge();
    }
    weave_engine::run(&mut replicas, &opts, &roles, progress)
}

/// The replica arguments of a sync (at least two), parsed.
pub fn parse_addresses(specs: &[String]) -> Result<Vec<Address>, SyncError> {
    open::at_least_two(specs.len())?;
    specs
        .iter()
        .map(|s| Address::parse(s).map_err(SyncError::from))
        .collect()
}
