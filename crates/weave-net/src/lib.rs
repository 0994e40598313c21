//! weave-net: sessions between replicas on different machines.
//!
//! - [`address`]: where a replica is, as `weave sync` is given it;
//! - [`conn`]: framed messages over any byte stream, read and written by
//!   their own threads (so neither side can block the other), with an
//!   optional rate limit;
//! - [`server`]: `weave serve --stdio`, one replica driven by a session;
//! - [`remote`]: the coordinator's side of a session, a
//!   [`weave_engine::Replica`] like any local one;
//! - [`sync`]: one sync of local and remote replicas.

pub mod address;
pub mod cache;
pub mod conn;
pub mod remote;
pub mod server;
mod wire;

pub use address::{Address, AddressError, SshAddress};
pub use conn::{Conn, RateLimit};
pub use remote::{NetOptions, RemoteReplica};

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use weave_engine::{Files, Kind, Progress, Replica, Report, SyncError, SyncOptions};

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
    if specs.len() < 2 {
        return Err(SyncError::Usage(
            "weave sync needs at least two replicas, e.g. `weave sync ~/docs /mnt/backup/docs`"
                .into(),
        ));
    }
    let mut remotes: Vec<Option<SshAddress>> = Vec::new();
    for s in specs {
        remotes.push(match Address::parse(s)? {
            Address::Ssh(a) => Some(a),
            Address::Local(_) => None,
        });
    }
    let local_idx: Vec<usize> = (0..specs.len()).filter(|&i| remotes[i].is_none()).collect();
    let local_paths: Vec<PathBuf> = local_idx
        .iter()
        .map(|&i| PathBuf::from(&specs[i]))
        .collect();
    // Bad paths and patterns stop the sync before any state is created.
    let canon = kind.check(&local_paths, &opts.ignore)?;
    for (i, a) in remotes.iter().enumerate() {
        for b in remotes.iter().skip(i + 1) {
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
        (0..specs.len()).find(|&i| match &remotes[i] {
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
    let has_index = |c: &PathBuf| kind.state_dir(c).join(weave_index::INDEX_FILE).exists();
    let open_local =
        |opened: &mut Vec<Option<Box<dyn Replica>>>, k: usize| -> Result<(), SyncError> {
            let i = local_idx[k];
            opened[i] = Some(kind.open(&canon[k], &specs[i], opts.dry_run)?);
            Ok(())
        };
    for (k, c) in canon.iter().enumerate() {
        if has_index(c) {
            open_local(&mut opened, k)?;
        }
    }
    // The remotes connect while the local replicas hash what their scan
    // will read (a first sync hashes every file, for about as long as ssh
    // takes to connect): the scan after it only looks at the stats of
    // what was hashed. Nothing is recorded, and no state is created,
    // before every remote is open. Once they are (or one failed), no
    // more files are started.
    let stop = AtomicBool::new(false);
    let mut prehashed: Vec<Option<weave_fs::Prehashed>> =
        (0..local_idx.len()).map(|_| None).collect();
    let connected = std::thread::scope(|s| {
        let stop = &stop;
        let remotes = &remotes;
        let dry_run = opts.dry_run;
        let connecting = s.spawn(move || {
            let mut out = Vec::new();
            for (i, remote) in remotes.iter().enumerate() {
                let Some(spec) = remote else { continue };
                let t = std::time::Instant::now();
                match RemoteReplica::spawn(spec, net, kind.name(), dry_run) {
                    Ok(r) => {
                        tracing::debug!(replica = %spec.display, elapsed = ?t.elapsed(), "connected and opened");
                        out.push((i, r));
                    }
                    Err(e) => {
                        stop.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
            // Connected: the hashing left is done by the scans, which run
            // on every replica at once (the remotes' too).
            stop.store(true, Ordering::Relaxed);
            Ok(out)
        });
        if remotes.iter().any(Option::is_some) {
            let t = std::time::Instant::now();
            for (k, &i) in local_idx.iter().enumerate() {
                match opened[i].as_mut() {
                    Some(r) => r.prehash(&opts.ignore, stop),
                    None => prehashed[k] = kind.prehash(&canon[k], &opts.ignore, stop),
                }
            }
            tracing::debug!(elapsed = ?t.elapsed(), "hashed ahead while connecting");
        }
        connecting
            .join()
            .expect("connecting to the remotes panicked")
    })?;
    for (i, mut r) in connected {
        // The first local replica remembers the remote indexes.
        if let Some(c) = canon.first() {
            r.cache_index_in(&kind.state_dir(c));
        }
        opened[i] = Some(Box::new(r));
    }
    for k in 0..local_idx.len() {
        if opened[local_idx[k]].is_none() {
            open_local(&mut opened, k)?;
        }
        if let (Some(r), Some(p)) = (opened[local_idx[k]].as_mut(), prehashed[k].take()) {
            r.adopt_prehashed(p);
        }
    }
    let mut reps: Vec<Box<dyn Replica>> = opened.into_iter().map(|r| r.expect("opened")).collect();
    let mut opts = opts.clone();
    if opts.merge.is_none() {
        opts.merge = kind.merge();
    }
    weave_engine::run(&mut reps, &opts, &roles, progress)
}
