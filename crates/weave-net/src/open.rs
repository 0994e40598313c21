//! Opening the replicas of a sync, local and remote: checked before
//! anything is created, the remotes connected while the local replicas
//! hash ahead.

use crate::address::Address;
use crate::remote::{NetOptions, RemoteReplica};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use weave_engine::{Kind, Replica, Roles, SyncError, SyncOptions};

/// The replicas of a sync, opened, in the order of their addresses, and
/// the roles (prefer=, --backup) the options give them.
pub struct Opened {
    pub replicas: Vec<Box<dyn Replica>>,
    pub roles: Roles,
}

/// Refuses a sync of fewer than two replicas.
pub fn at_least_two(replicas: usize) -> Result<(), SyncError> {
    if replicas < 2 {
        return Err(SyncError::Usage(
            "weave sync needs at least two replicas, e.g. `weave sync ~/docs /mnt/backup/docs`"
                .into(),
        ));
    }
    Ok(())
}

/// The local replicas of a sync.
struct Locals {
    /// Their positions among the sync's addresses.
    at: Vec<usize>,
    /// Their roots, canonical and checked by the kind.
    canon: Vec<PathBuf>,
}

/// Opens the replicas of `kind` at `addresses` for a sync with `opts`,
/// reaching remote ones as `net` says. Bad paths, patterns and roles,
/// and a replica given twice, are refused before any state is created; a
/// damaged index, before any new state is created elsewhere.
pub fn open_replicas(
    addresses: &[Address],
    opts: &SyncOptions,
    net: &NetOptions,
    kind: &dyn Kind,
) -> Result<Opened, SyncError> {
    at_least_two(addresses.len())?;
    let at: Vec<usize> = (0..addresses.len())
        .filter(|&i| addresses[i].local_path().is_some())
        .collect();
    let paths: Vec<PathBuf> = addresses
        .iter()
        .filter_map(|a| a.local_path().map(Path::to_path_buf))
        .collect();
    // Bad paths and patterns stop the sync before any state is created.
    let locals = Locals {
        canon: kind.check(&paths, &opts.ignore)?,
        at,
    };
    refuse_twice(addresses)?;
    // Which replicas prefer= and --backup name, before anything is opened.
    let roles = weave_engine::resolve_roles(opts, addresses.len(), |p| {
        let given = p.to_string_lossy();
        let c = std::fs::canonicalize(p).ok();
        (0..addresses.len()).find(|&i| match locals.at.iter().position(|&x| x == i) {
            Some(k) => Some(&locals.canon[k]) == c.as_ref(),
            None => addresses[i].to_string() == given,
        })
    })?;
    // Open the local replicas that have state first, so a damaged index
    // stops the sync before any new state is created elsewhere.
    let mut opened: Vec<Option<Box<dyn Replica>>> = (0..addresses.len()).map(|_| None).collect();
    let open_local = |k: usize| {
        let i = locals.at[k];
        kind.open(&locals.canon[k], &addresses[i].to_string(), opts.dry_run)
    };
    for (k, c) in locals.canon.iter().enumerate() {
        if kind.state_dir(c).join(weave_index::INDEX_FILE).exists() {
            opened[locals.at[k]] = Some(open_local(k)?);
        }
    }
    let mut prehashed = connect_while_hashing(addresses, &locals, &mut opened, opts, net, kind)?;
    for (k, &i) in locals.at.iter().enumerate() {
        if opened[i].is_none() {
            opened[i] = Some(open_local(k)?);
        }
        if let (Some(r), Some(p)) = (opened[i].as_mut(), prehashed[k].take()) {
            if let Some(tree) = r.local() {
                tree.adopt_prehashed(p);
            }
        }
    }
    Ok(Opened {
        replicas: opened.into_iter().map(|r| r.expect("opened")).collect(),
        roles,
    })
}

/// Refuses a remote replica given twice (however it was written).
fn refuse_twice(addresses: &[Address]) -> Result<(), SyncError> {
    for (i, a) in addresses.iter().enumerate() {
        if addresses[i + 1..].iter().any(|b| a.same_remote(b)) {
            return Err(SyncError::Usage(format!(
                "{a} is given twice; give each replica once"
            )));
        }
    }
    Ok(())
}

/// Connects to the remote replicas (into `opened`, by position) while
/// the local ones hash what their scan will read (a first sync hashes
/// every file, for about as long as ssh takes to connect): the scan
/// after it only looks at the stats of what was hashed. Nothing is
/// recorded, and no state is created, before every remote is open. Once
/// they are (or one failed), no more files are started. Returns what the
/// local replicas not yet opened hashed, by their position among the
/// local ones, for [`weave_engine::LocalTree::adopt_prehashed`] once they are.
fn connect_while_hashing(
    addresses: &[Address],
    locals: &Locals,
    opened: &mut [Option<Box<dyn Replica>>],
    opts: &SyncOptions,
    net: &NetOptions,
    kind: &dyn Kind,
) -> Result<Vec<Option<weave_engine::Prehashed>>, SyncError> {
    let stop = AtomicBool::new(false);
    let mut prehashed: Vec<Option<weave_engine::Prehashed>> =
        (0..locals.at.len()).map(|_| None).collect();
    // The first local replica remembers the remote indexes.
    let remember_in = locals.canon.first().map(|c| kind.state_dir(c));
    let connected = std::thread::scope(|s| {
        let stop = &stop;
        let remember_in = remember_in.as_deref();
        let dry_run = opts.dry_run;
        let connecting = s.spawn(move || {
            let mut out = Vec::new();
            for (i, address) in addresses.iter().enumerate() {
                if address.local_path().is_some() {
                    continue;
                }
                let t = std::time::Instant::now();
                match connect(address, net, kind, dry_run, remember_in) {
                    Ok(r) => {
                        tracing::debug!(replica = %address, elapsed = ?t.elapsed(), "connected and opened");
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
        if addresses.iter().any(|a| a.local_path().is_none()) {
            let t = std::time::Instant::now();
            for (k, &i) in locals.at.iter().enumerate() {
                match opened[i].as_mut() {
                    Some(r) => {
                        if let Some(tree) = r.local() {
                            tree.prehash(&opts.ignore, stop)
                        }
                    }
                    None => prehashed[k] = kind.prehash(&locals.canon[k], &opts.ignore, stop),
                }
            }
            tracing::debug!(elapsed = ?t.elapsed(), "hashed ahead while connecting");
        }
        connecting
            .join()
            .expect("connecting to the remotes panicked")
    })?;
    for (i, r) in connected {
        opened[i] = Some(r);
    }
    Ok(prehashed)
}

/// Opens the replica of `kind` at a remote `address`; its index is
/// remembered in the state directory `remember_in`, if any.
fn connect(
    address: &Address,
    net: &NetOptions,
    kind: &dyn Kind,
    dry_run: bool,
    remember_in: Option<&Path>,
) -> Result<Box<dyn Replica>, SyncError> {
    match address {
        Address::Ssh(a) => {
            let mut r = RemoteReplica::spawn(a, net, kind.name(), dry_run)?;
            if let Some(state) = remember_in {
                r.cache_index_in(state);
            }
            Ok(Box::new(r))
        }
        Address::Bucket(b) => {
            if kind.name() != "files" {
                return Err(SyncError::Usage(format!(
                    "{b}: a bucket holds directory trees only, not --kind {}",
                    kind.name()
                )));
            }
            let passphrase = net.passphrase.as_deref().ok_or_else(|| {
                SyncError::Replica(Box::new(weave_bucket::BucketError::NoPassphrase {
                    bucket: b.to_string(),
                }))
            })?;
            // Its records are kept beside the first local replica's index
            // (once it has one: no state is made for a replica before
            // its own opening makes it).
            let cache = remember_in.filter(|d| d.join(weave_index::INDEX_FILE).exists());
            Ok(Box::new(weave_bucket::open(b, passphrase, dry_run, cache)?))
        }
        Address::Local(p) => unreachable!("{} is opened by its kind", p.display()),
    }
}
