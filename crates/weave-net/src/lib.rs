//! weave-net: sessions between replicas on different machines.
//!
//! - [`conn`]: framed messages over any byte stream, read and written by
//!   their own threads (so neither side can block the other), with an
//!   optional rate limit;
//! - [`server`]: `weave serve --stdio`, one replica driven by a session;
//! - [`remote`]: the coordinator's side of a session, a
//!   [`weave_engine::Replica`] like any local one;
//! - [`sync`]: one sync of local and remote replicas.

pub mod cache;
pub mod conn;
pub mod remote;
pub mod server;
mod wire;

pub use conn::{Conn, RateLimit};
pub use remote::{NetOptions, RemoteReplica, RemoteSpec};

use std::path::PathBuf;
use weave_core::path::STATE_DIR;
use weave_engine::{LocalReplica, Progress, Replica, Report, SyncError, SyncOptions};

/// Runs one sync of the replicas named by `specs`: local directories,
/// `[user@]host:path` or `ssh://[user@]host[:port]/path`.
pub fn sync(
    specs: &[String],
    opts: &SyncOptions,
    net: &NetOptions,
    progress: &dyn Progress,
) -> Result<Report, SyncError> {
    if specs.len() < 2 {
        return Err(SyncError::Usage(
            "weave sync needs at least two replicas, e.g. `weave sync ~/docs /mnt/backup/docs`"
                .into(),
        ));
    }
    let mut kinds: Vec<Option<RemoteSpec>> = Vec::new();
    for s in specs {
        kinds.push(RemoteSpec::parse(s).map_err(SyncError::Usage)?);
    }
    let local_idx: Vec<usize> = (0..specs.len()).filter(|&i| kinds[i].is_none()).collect();
    let local_paths: Vec<PathBuf> = local_idx
        .iter()
        .map(|&i| PathBuf::from(&specs[i]))
        .collect();
    let canon = weave_engine::check_local_replicas(&local_paths)?;
    // Bad patterns stop the sync before any state is created.
    let roots: Vec<&std::path::Path> = canon.iter().map(|p| p.as_path()).collect();
    weave_fs::ignore::Matcher::build(&roots, &opts.ignore)?;
    for (i, a) in kinds.iter().enumerate() {
        for b in kinds.iter().skip(i + 1) {
            if let (Some(a), Some(b)) = (a, b) {
                if a == b || (a.host == b.host && a.port == b.port && a.path == b.path) {
                    return Err(SyncError::Usage(format!(
                        "{} is given twice; give each replica once",
                        a.display
                    )));
                }
            }
        }
    }
    // Which replicas prefer= and --backup name, before anything is opened.
    let roles = weave_engine::resolve_roles(opts, specs.len(), |p| {
        let given = p.to_string_lossy();
        let c = std::fs::canonicalize(p).ok();
        (0..specs.len()).find(|&i| match &kinds[i] {
            Some(r) => r.display == given,
            None => {
                let k = local_idx
                    .iter()
                    .position(|&x| x == i)
                    .expect("a local index");
                Some(&canon[k]) == c.as_ref()
            }
        })
    })?;
    // Open the local replicas that have state first, so a damaged index
    // stops the sync before any new state is created elsewhere.
    let mut opened: Vec<Option<Box<dyn Replica>>> = (0..specs.len()).map(|_| None).collect();
    let has_index = |c: &PathBuf| c.join(STATE_DIR).join(weave_index::INDEX_FILE).exists();
    let open_local =
        |opened: &mut Vec<Option<Box<dyn Replica>>>, k: usize| -> Result<(), SyncError> {
            let i = local_idx[k];
            opened[i] = Some(Box::new(LocalReplica::open(
                &canon[k],
                &specs[i],
                opts.dry_run,
            )?));
            Ok(())
        };
    for (k, c) in canon.iter().enumerate() {
        if has_index(c) {
            open_local(&mut opened, k)?;
        }
    }
    for (i, kind) in kinds.iter().enumerate() {
        if let Some(spec) = kind {
            let mut r = RemoteReplica::spawn(spec, net, opts.dry_run)?;
            // The first local replica remembers the remote indexes.
            if let Some(c) = canon.first() {
                r.cache_index_in(&c.join(STATE_DIR));
            }
            opened[i] = Some(Box::new(r));
        }
    }
    for k in 0..local_idx.len() {
        if opened[local_idx[k]].is_none() {
            open_local(&mut opened, k)?;
        }
    }
    let mut reps: Vec<Box<dyn Replica>> = opened.into_iter().map(|r| r.expect("opened")).collect();
    weave_engine::run(&mut reps, opts, &roles, progress)
}
