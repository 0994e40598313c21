//! A folder's encrypted remotes: its bucket remote (`weave folder add …
//! --remote ADDRESS`), and its untrusted peers (`--untrusted PEER`), which
//! keep the same encrypted bucket for it and can read none of it. The
//! folder syncs with each besides its peers, after each local change and
//! every `poll_secs` for other devices' changes: how two devices that are
//! never on together keep a folder in sync. A failed sync is tried again
//! after a back-off and shown as the folder's error until one goes
//! through.

use super::backoff::Backoff;
use super::open::open_folder_as;
use super::pair::{record_report, sync_options, FolderProgress};
use super::shared::{FolderRt, Shared};
use crate::config::{Config, Folder};
use crate::status::{self, FolderState};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weave_engine::Replica;

/// Where a folder is with one of its remotes.
#[derive(Default)]
pub(super) struct RemoteState {
    /// The remote and passphrase file this state is about (a config
    /// reload that changes the passphrase file starts afresh).
    of: Option<(String, Option<std::path::PathBuf>)>,
    /// The folder's sequence number after the last sync that went
    /// through, and when it ended.
    last: Option<(u64, Instant)>,
    /// After a failure: when to try again, and what it was.
    failed: Option<(Backoff, String)>,
    /// When it was last pruned.
    pruned: Option<Instant>,
}

/// How often the daemon prunes a remote by the folder's retention policy
/// (after a sync that went through).
const PRUNE_EVERY: Duration = Duration::from_secs(24 * 3600);

/// What a daemon's prune marks is deleted by one at least this long after.
const PRUNE_GRACE_MS: u64 = 24 * 3600 * 1000;

/// An encrypted remote of a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A bucket, by address.
    Bucket(String),
    /// An untrusted peer, by name.
    Peer(String),
}

impl Target {
    /// How it is shown, and its state is kept.
    fn shown(&self) -> String {
        match self {
            Target::Bucket(a) => a.clone(),
            Target::Peer(p) => format!("untrusted peer {p}"),
        }
    }
}

/// The link to untrusted peer `name` came up: a sync with it that failed
/// is tried again now, not after its back-off. Returns whether one had.
pub(super) fn peer_up(rt: &FolderRt, name: &str) -> bool {
    let mut all = rt.remote.lock().expect("remote");
    all.get_mut(&Target::Peer(name.to_string()).shown())
        .and_then(|st| st.failed.take())
        .is_some()
}

/// Folder `f`'s encrypted remotes but paused peers.
fn targets(cfg: &Config, f: &Folder) -> Vec<Target> {
    let paused = |p: &str| cfg.peer(p).is_some_and(|q| q.paused);
    f.remote
        .iter()
        .map(|r| Target::Bucket(r.clone()))
        .chain(
            f.untrusted
                .iter()
                .filter(|p| !paused(p))
                .map(|p| Target::Peer(p.clone())),
        )
        .collect()
}

/// Where a folder is with each of its remotes, by how it is shown.
pub(super) type Remotes = std::collections::HashMap<String, RemoteState>;

/// When the folder's task is next due to look at its remotes.
pub(super) fn due(rt: &FolderRt, cfg: &Config, f: &Folder) -> Option<Instant> {
    let all = rt.remote.lock().expect("remote");
    targets(cfg, f)
        .iter()
        .map(|t| match all.get(&t.shown()) {
            None => Instant::now(),
            Some(st) => match (&st.failed, st.last) {
                (Some((b, _)), _) => b.until,
                (None, Some((_, at))) => at + Duration::from_secs(f.poll_secs.max(1)),
                (None, None) => Instant::now(),
            },
        })
        .min()
}

/// Syncs folder `f` with each of its remotes that is due: its sequence
/// number `now` moved since the last sync with it, the poll interval
/// passed, or none went through yet. Returns the error to show while a
/// remote's syncs fail, and the folder's sequence number after the last
/// sync that went through.
pub(super) fn sync_if_due(
    sh: &Arc<Shared>,
    rt: &FolderRt,
    cfg: &Config,
    f: &Folder,
    now: Option<u64>,
) -> (Option<String>, Option<u64>) {
    let all = targets(cfg, f);
    {
        // Remotes no longer configured are forgotten.
        let shown: Vec<String> = all.iter().map(Target::shown).collect();
        rt.remote
            .lock()
            .expect("remote")
            .retain(|k, _| shown.contains(k));
    }
    let (mut error, mut seq, mut now) = (None, None, now);
    for t in &all {
        let (e, s) = sync_one_if_due(sh, rt, cfg, f, t, now);
        error = error.or(e);
        if s.is_some() {
            seq = s;
            now = s;
        }
    }
    (error, seq)
}

/// [`sync_if_due`] for remote `t`.
fn sync_one_if_due(
    sh: &Arc<Shared>,
    rt: &FolderRt,
    cfg: &Config,
    f: &Folder,
    t: &Target,
    now: Option<u64>,
) -> (Option<String>, Option<u64>) {
    let shown = t.shown();
    let at = Instant::now();
    {
        let mut all = rt.remote.lock().expect("remote");
        let st = all.entry(shown.clone()).or_default();
        let of = Some((shown.clone(), f.passphrase_file.clone()));
        if st.of != of {
            *st = RemoteState {
                of,
                ..Default::default()
            };
            sh.board.folder(&f.id, |s| s.remote_synced_ms = None);
        }
        if let Some((b, msg)) = &st.failed {
            if b.holds(at) {
                return (Some(msg.clone()), None);
            }
        } else if let Some((seq, when)) = st.last {
            let polled = at < when + Duration::from_secs(f.poll_secs.max(1));
            if polled && (now.is_none() || now == Some(seq)) {
                return (None, None);
            }
        }
    }
    match sync_remote(sh, rt, cfg, f, t) {
        Ok(seq) => {
            let mut all = rt.remote.lock().expect("remote");
            let st = all.entry(shown.clone()).or_default();
            st.failed = None;
            st.last = Some((seq, Instant::now()));
            let prune = st.pruned.is_none_or(|at| at.elapsed() >= PRUNE_EVERY);
            if prune {
                st.pruned = Some(Instant::now());
            }
            drop(all);
            sh.board
                .folder(&f.id, |s| s.remote_synced_ms = Some(status::now_ms()));
            if prune {
                match prune_remote(sh, rt, cfg, f, t) {
                    Ok(p) => info!(
                        "folder {}: pruned remote {shown}: {} old versions marked, {} packs ({} bytes) deleted",
                        f.id, p.versions_dropped, p.packs_deleted, p.bytes_deleted
                    ),
                    Err(e) => {
                        let msg = format!("remote {shown}: pruning its old versions: {e}; tried again in a day");
                        warn!("folder {}: {msg}", f.id);
                        sh.board.error(Some(&f.id), None, msg);
                    }
                }
            }
            (None, Some(seq))
        }
        Err(msg) => {
            let msg = format!("remote {shown}: {msg}");
            let mut all = rt.remote.lock().expect("remote");
            let st = all.entry(shown).or_default();
            let backoff = Backoff::after(st.failed.as_ref().map(|f| &f.0), Instant::now());
            if backoff.is_first() {
                warn!("folder {}: {msg} (retrying)", f.id);
                sh.board.error(Some(&f.id), None, msg.clone());
            }
            st.failed = Some((backoff, msg.clone()));
            (Some(msg), None)
        }
    }
}

/// The passphrase of folder `f`'s remote: the first line of its
/// passphrase file, else the daemon's WEAVE_PASSPHRASE.
fn passphrase(f: &Folder) -> Result<Vec<u8>, String> {
    if let Some(p) = &f.passphrase_file {
        return weave_bucket::passphrase_from_file(p).map_err(|e| format!("its {e}"));
    }
    std::env::var_os("WEAVE_PASSPHRASE")
        .filter(|p| !p.is_empty())
        .map(|p| p.into_encoded_bytes())
        .ok_or_else(|| {
            "needs a passphrase: give the folder one with `weave folder add … --passphrase-file FILE`, or start the daemon with WEAVE_PASSPHRASE set".to_string()
        })
}

/// Where remote `t` of folder `f` keeps its objects, reached, and where
/// its records are cached here.
fn store_of(
    sh: &Arc<Shared>,
    cfg: &Config,
    f: &Folder,
    t: &Target,
) -> Result<(Box<dyn weave_bucket::store::Store>, std::path::PathBuf), String> {
    let state = weave_engine::Kind::state_dir(&weave_fs::Files, &f.path);
    match t {
        Target::Bucket(address) => {
            let address = match weave_bucket::BucketAddress::parse(address) {
                Some(Ok(a)) => a,
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("not a bucket address".into()),
            };
            let store = address.connect(true).map_err(|e| e.to_string())?;
            Ok((store, weave_bucket::cache_dir(&state, &address.to_string())))
        }
        Target::Peer(name) => {
            let peer = cfg
                .peer(name)
                .ok_or_else(|| format!("{name} is not a peer (`weave peer list`)"))?;
            let (conn, _) = super::conn::session_to(sh, peer).map_err(|e| e.to_string())?;
            let code = |e: &weave_engine::SyncError| {
                e.session::<weave_net::SessionError>()
                    .and_then(weave_net::SessionError::code)
                    .map(str::to_string)
            };
            let store = weave_net::objects::PeerStore::open(conn, &t.shown(), &f.id)
                .map_err(|e| match code(&e).as_deref() {
                    Some(weave_net::NOT_SHARED) => format!(
                        "{name} keeps no encrypted folder {} for this device: there, the folder must be receive-encrypted and shared with this device (`weave folder add {} DIR --mode receive-encrypted --peer NAME-OF-THIS-DEVICE`)",
                        f.id, f.id
                    ),
                    _ => e.to_string(),
                })?;
            let cache = weave_bucket::cache_dir(&state, &format!("peer:{}/{}", peer.id, f.id));
            Ok((Box::new(store), cache))
        }
    }
}

/// Prunes remote `t` of folder `f` by the folder's retention policy (as
/// its local version history keeps versions; its size limit aside): a
/// mark now, swept by a prune a day later.
fn prune_remote(
    sh: &Arc<Shared>,
    rt: &FolderRt,
    cfg: &Config,
    f: &Folder,
    t: &Target,
) -> Result<weave_bucket::prune::Pruned, String> {
    let policy = {
        let _guard = rt.lock.clone().blocking_lock_owned();
        weave_store::history::policy(&f.path, None).map_err(|e| e.to_string())?
    };
    let pass = passphrase(f)?;
    let (store, _) = store_of(sh, cfg, f, t)?;
    let mut pool = weave_bucket::Pool::open(store, &t.shown(), &pass, false)
        .map_err(|e| e.to_string())?
        .ok_or("no bucket is there")?;
    weave_bucket::prune::prune(&mut pool, &policy, PRUNE_GRACE_MS, status::now_ms(), false)
        .map_err(|e| e.to_string())
}

/// One sync of the folder with its remote; the folder's sequence number
/// after it.
fn sync_remote(
    sh: &Arc<Shared>,
    rt: &FolderRt,
    cfg: &Config,
    f: &Folder,
    t: &Target,
) -> Result<u64, String> {
    let pass = passphrase(f)?;
    // Opened (its key derived, its records read) before the folder is
    // locked: the folder's peers need not wait for that.
    let remote = t.shown();
    let (store, cache) = store_of(sh, cfg, f, t)?;
    let bucket = weave_bucket::open_store(store, &remote, &pass, false, Some(cache))
        .map_err(|e| e.to_string())?;
    let _guard = rt.lock.clone().blocking_lock_owned();
    let (local, taken) = open_folder_as(cfg, f, rt, false).map_err(|e| e.to_string())?;
    let mut reps: Vec<Box<dyn Replica>> = vec![local, Box::new(bucket)];
    sh.board.folder(&f.id, |s| s.state = FolderState::Syncing);
    let opts = sync_options(cfg, f);
    let result = weave_engine::run(
        &mut reps,
        &opts,
        &weave_engine::Roles::default(),
        &FolderProgress(rt),
    );
    let seq = reps[0].info().seq;
    drop(reps);
    if result.is_err() {
        rt.give_back(taken);
    }
    super::meter::progress_over(sh, rt);
    let report = result.map_err(|e| e.to_string())?;
    record_report(sh, &f.id, &remote, &report);
    if report.ignore_file_changed {
        // As after a peer's sync: every path looked at again, under the
        // new patterns, with every peer.
        rt.resync.store(true, std::sync::atomic::Ordering::SeqCst);
        rt.poke(true);
    }
    let mut failed = report
        .errors
        .iter()
        .filter(|e| !weave_engine::is_refusal(&e.message));
    if let Some(first) = failed.next() {
        return Err(format!(
            "{} path(s) did not go through (the first: {}: {}); tried again by itself",
            1 + failed.count(),
            first.path,
            first.message
        ));
    }
    Ok(seq)
}
