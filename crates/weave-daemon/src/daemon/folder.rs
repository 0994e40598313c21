//! A folder's task: it checks the folder when woken, on its rescan
//! interval and when a back-off ends; a check scans what changed and
//! syncs with the peers that need it.

use super::actions;
use super::backoff::Backoff;
use super::open::open_folder;
use super::pair::{sync_pair, PairKind};
use super::shared::{FolderRt, Shared};
use super::watcher::UNWATCHED_RESCAN;
use crate::config::{Config, Folder, Mode, Peer};
use crate::id::DeviceId;
use crate::status::{FolderState, PeerState};
use crate::DaemonError;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weave_engine::{IgnoreSpec, Kind, SyncError};
use weave_fs::Files;

/// Scans the folder on its own (no peer needed), so that its sequence
/// number says whether any peer needs a sync. Returns it.
fn scan_local(sh: &Shared, rt: &FolderRt, cfg: &Config, f: &Folder) -> Result<u64, SyncError> {
    let _guard = rt.lock.clone().blocking_lock_owned();
    let (mut rep, taken) = open_folder(cfg, f, rt)?;
    sh.board.folder(&f.id, |s| s.state = FolderState::Scanning);
    let ignore = IgnoreSpec {
        files: rep.info().ignore_file.clone().into_iter().collect(),
        patterns: f.ignore.clone(),
    };
    match rep.scan(&ignore, false) {
        Ok(summary) => {
            for e in &summary.errors {
                warn!("folder {}: {}: {}", f.id, e.path, e.message);
                sh.board
                    .error(Some(&f.id), None, format!("{}: {}", e.path, e.message));
            }
            Ok(rep.info().seq)
        }
        Err(e) => {
            rt.give_back(taken);
            Err(e)
        }
    }
}

/// Brings folder `rt` in sync with every peer it may differ from.
fn check(sh: &Arc<Shared>, rt: &FolderRt) {
    let cfg = sh.cfg();
    let Some(f) = cfg.folder(&rt.id).cloned() else {
        return;
    };
    if f.paused {
        // Changes on disk stay marked: the first check after it resumes
        // looks at them.
        sh.board.folder(&f.id, |s| {
            s.state = FolderState::Paused;
            s.bytes_to_go = 0;
        });
        return;
    }
    let dirty = rt.dirty.swap(false, Ordering::SeqCst);
    // Untrusted peers get the folder encrypted only, as a remote.
    let trusted = f.peers.iter().filter(|n| !f.untrusted.contains(n));
    // (A paused peer is left out until resumed.)
    let peers: Vec<Peer> = trusted
        .filter_map(|n| cfg.peer(n).filter(|p| !p.paused).cloned())
        .collect();
    let forced: HashSet<DeviceId> = if rt.resync.swap(false, Ordering::SeqCst) {
        peers.iter().map(|p| p.id).collect()
    } else {
        HashSet::new()
    };
    let asked: Vec<actions::Request> = std::mem::take(&mut *rt.asked.lock().expect("asked"));
    sh.board.folder(&f.id, |s| s.state = FolderState::Scanning);
    // What the folder's sequence number is now, once known: after a look
    // at what changed on disk, or without one, the last one any sync
    // ended at. Changes weave wrote itself leave it as it was: no peer
    // hears of them again.
    let mut now: Option<u64> = if dirty {
        match scan_local(sh, rt, &cfg, &f) {
            Ok(seq) => {
                *rt.scan_retry.lock().expect("retry") = None;
                Some(seq)
            }
            Err(e) => {
                scan_failed(sh, rt, &f, &e);
                for (_, tx) in asked {
                    let _ = tx.send(crate::status::Answer::refused(format!(
                        "folder {}: {e}; nothing was changed",
                        f.id
                    )));
                }
                return;
            }
        }
    } else {
        rt.synced.lock().expect("synced").values().max().copied()
    };
    if !asked.is_empty() {
        for (action, tx) in asked {
            let _ = tx.send(actions::run(sh, rt, &cfg, &f, &peers, action));
        }
        // The folder changed: the peers the action did not sync with
        // hear of it.
        now = rt
            .synced
            .lock()
            .expect("synced")
            .values()
            .max()
            .copied()
            .max(now);
    }
    sh.board.folder(&f.id, |s| s.remote = f.remote.clone());
    let Some(mut passes) = sync_peers(sh, rt, &cfg, &f, &peers, now, forced) else {
        return;
    };
    let (remote_error, seq) = super::remote::sync_if_due(sh, rt, &cfg, &f, passes.now.or(now));
    if let Some(seq) = seq.filter(|s| Some(*s) != passes.now.or(now)) {
        // The remote brought changes: the peers hear of them now.
        let Some(again) = sync_peers(sh, rt, &cfg, &f, &peers, Some(seq), HashSet::new()) else {
            return;
        };
        passes = Passes {
            deferred: passes.deferred || again.deferred,
            error: again.error.or(passes.error),
            now: again.now.or(Some(seq)),
        };
    }
    show_check(
        sh,
        rt,
        &f,
        &peers,
        passes.now,
        remote_error.or(passes.error),
    );
    if passes.deferred && dirty {
        // A change on disk not yet sent to every peer: the retry after the
        // back-off looks again.
        rt.dirty.store(true, Ordering::SeqCst);
    }
}

/// A scan of the folder failed: it is tried again after a back-off, and
/// the folder shows the error.
fn scan_failed(sh: &Shared, rt: &FolderRt, f: &Folder, e: &SyncError) {
    let msg = e.to_string();
    let mut retry = rt.scan_retry.lock().expect("retry");
    let backoff = Backoff::after(retry.as_ref(), Instant::now());
    *retry = Some(backoff);
    drop(retry);
    if backoff.is_first() {
        warn!("folder {}: {msg} (retrying)", f.id);
        sh.board.error(Some(&f.id), None, msg.clone());
    }
    sh.board.folder(&f.id, |s| {
        s.state = FolderState::Error;
        s.error = Some(msg);
    });
    rt.dirty.store(true, Ordering::SeqCst);
}

/// What the pair syncs of a check came to.
struct Passes {
    /// The folder's sequence number after them, once known.
    now: Option<u64>,
    /// A peer was left for later (backing off, or its sync failed).
    deferred: bool,
    /// The folder's error, from the last sync that failed for a reason
    /// other than its peer being down.
    error: Option<String>,
}

/// Syncs the folder with each peer whose last sync did not end at its
/// sequence number `now` (or that is `forced`), in a few passes. None
/// when the daemon or the folder stops meanwhile.
fn sync_peers(
    sh: &Arc<Shared>,
    rt: &FolderRt,
    cfg: &Config,
    f: &Folder,
    peers: &[Peer],
    mut now: Option<u64>,
    mut forced: HashSet<DeviceId>,
) -> Option<Passes> {
    let mut deferred = false;
    let mut error = None;
    // A sync may bring changes the peers before it need: a few passes.
    for _pass in 0..3 {
        let mut any = false;
        for p in peers {
            let paused = sh.cfg().folder(&f.id).is_none_or(|g| g.paused);
            if sh.stopping.load(Ordering::SeqCst) || rt.stopped.load(Ordering::SeqCst) || paused {
                return None;
            }
            if let Some(b) = rt.backoff.lock().expect("backoff").get(&p.id) {
                if b.holds(Instant::now()) {
                    deferred = true;
                    continue;
                }
            }
            let last = rt.synced.lock().expect("synced").get(&p.id).copied();
            if now.is_some() && last == now && !forced.remove(&p.id) {
                continue;
            }
            forced.remove(&p.id);
            any = true;
            match sync_pair(sh, rt, cfg, f, p, PairKind::Normal) {
                Ok(seq) => {
                    now = Some(seq);
                    rt.synced.lock().expect("synced").insert(p.id, seq);
                    rt.backoff.lock().expect("backoff").remove(&p.id);
                    super::notices::unshared(sh, rt, p.id, None);
                }
                Err(e) => {
                    deferred = true;
                    if let DaemonError::Incomplete { seq, .. } = e {
                        // What went through counts for the other peers.
                        now = Some(seq);
                    }
                    if let Some(msg) = pair_failed(sh, rt, f, p, &e) {
                        error = Some(msg);
                    }
                }
            }
        }
        if !any {
            break;
        }
    }
    Some(Passes {
        now,
        deferred,
        error,
    })
}

/// A pair sync with `p` failed: the peer is backed off, and the error
/// shown. Returns it when it is the folder's (the peer is not down).
fn pair_failed(
    sh: &Shared,
    rt: &FolderRt,
    f: &Folder,
    p: &Peer,
    e: &DaemonError,
) -> Option<String> {
    let msg = e.to_string();
    debug!("folder {} with {}: {msg}", f.id, p.name);
    rt.synced.lock().expect("synced").remove(&p.id);
    let mut b = rt.backoff.lock().expect("backoff");
    let backoff = Backoff::after(b.get(&p.id), Instant::now());
    let first = backoff.is_first();
    b.insert(p.id, backoff);
    drop(b);
    if let DaemonError::NotShared { .. } | DaemonError::PausedThere { .. } = e {
        // Said once, as a notice: nothing is wrong here, and the peer
        // syncs by itself once it shares the folder.
        if first {
            info!("folder {}: {msg}", f.id);
            sh.board.error(Some(&f.id), Some(&p.name), msg.clone());
        }
        super::notices::unshared(sh, rt, p.id, Some(msg));
        return None;
    }
    let peer_down = matches!(e, DaemonError::Peer { .. });
    let incomplete = matches!(e, DaemonError::Incomplete { .. });
    // A retry that fails the same way says so once, not every minute.
    if first || !(peer_down || incomplete) {
        warn!("folder {} with {}: {msg} (retrying)", f.id, p.name);
    }
    sh.board.peer(&p.name, |s| {
        if peer_down && s.state != PeerState::Paused {
            s.state = PeerState::Disconnected;
        }
        s.last_error = Some(msg.clone());
    });
    if peer_down {
        return None;
    }
    // A peer that is down shows in its own status; anything else is the
    // folder's error.
    sh.board.error(Some(&f.id), Some(&p.name), msg.clone());
    Some(msg)
}

/// How many of a receive-only folder's local changes its status names.
const LISTED_CHANGES: usize = 100;

/// Shows the folder after a check: its state, error, the peers it is in
/// sync with (their last sync ended at `now`), and the local changes a
/// receive-only folder keeps.
fn show_check(
    sh: &Shared,
    rt: &FolderRt,
    f: &Folder,
    peers: &[Peer],
    now: Option<u64>,
    error: Option<String>,
) {
    let synced = rt.synced.lock().expect("synced").clone();
    let in_sync: Vec<String> = peers
        .iter()
        .filter(|p| now.is_some() && synced.get(&p.id) == now.as_ref())
        .map(|p| p.name.clone())
        .collect();
    let pct = if peers.is_empty() {
        100.0
    } else {
        100.0 * in_sync.len() as f64 / peers.len() as f64
    };
    let served_failed = {
        let mut failed = rt.served_failed.lock().expect("served_failed");
        // Peers the folder is no longer shared with have nothing to retry.
        failed.retain(|id, _| peers.iter().any(|p| p.id == *id));
        failed.values().next().cloned()
    };
    let kept = if f.mode == Mode::ReceiveOnly {
        crate::guard::local_changes(&Files.state_dir(&f.path))
    } else {
        Default::default()
    };
    let ids: Vec<_> = peers.iter().map(|p| p.id).collect();
    super::notices::keep_peers(rt, &ids);
    super::notices::kept(
        sh,
        rt,
        (!kept.is_empty()).then(|| {
            format!(
                "receive-only: {} local changes kept here and not sent (diverged); `weave folder revert {}` takes the peers' versions",
                kept.len(),
                f.id
            )
        }),
    );
    sh.board.folder(&f.id, |s| {
        s.local_changes = kept.len() as u64;
        s.local_change_paths = kept.iter().take(LISTED_CHANGES).cloned().collect();
        // What a peer's sessions left not done here stays shown too.
        let error = error.or(served_failed);
        s.state = if error.is_some() {
            FolderState::Error
        } else {
            FolderState::Idle
        };
        s.error = error;
        s.in_sync_with = in_sync;
        s.in_sync_percent = pct;
    });
    super::meter::progress_over(sh, rt);
}

/// A folder's loop: checks when woken, on its rescan interval, and when a
/// back-off ends.
pub(super) async fn folder_task(sh: Arc<Shared>, rt: Arc<FolderRt>) {
    let mut last_full = Instant::now();
    loop {
        if rt.stopped.load(Ordering::SeqCst) || sh.stopping.load(Ordering::SeqCst) {
            return;
        }
        let (s2, r2) = (sh.clone(), rt.clone());
        if tokio::task::spawn_blocking(move || check(&s2, &r2))
            .await
            .is_err()
        {
            warn!("folder {}: a sync stopped abnormally", rt.id);
        }
        let rescan = sh
            .cfg()
            .folder(&rt.id)
            .map(|f| Duration::from_secs(f.rescan_secs.max(1)))
            .unwrap_or(Duration::from_secs(3600));
        let rescan = if rt.unwatched.load(Ordering::SeqCst) {
            rescan.min(UNWATCHED_RESCAN)
        } else {
            rescan
        };
        if last_full.elapsed() >= rescan {
            last_full = Instant::now();
        }
        let mut due = last_full + rescan;
        let cfg = sh.cfg();
        if cfg.folder(&rt.id).is_some_and(|f| f.paused) {
            // Paused: nothing is due but a wake (a resume pokes it).
            tokio::select! {
                _ = rt.wake.notified() => {}
                _ = tokio::time::sleep_until(due.into()) => {}
            }
            continue;
        }
        // Back-offs of peers still synced with (a paused one's is left).
        let active = |id: &crate::id::DeviceId| cfg.peer_by_id(*id).is_some_and(|p| !p.paused);
        if let Some(b) = rt
            .backoff
            .lock()
            .expect("backoff")
            .iter()
            .filter(|(id, _)| active(id))
            .map(|(_, b)| b.until)
            .min()
        {
            due = due.min(b);
        }
        let delay = sh
            .cfg()
            .folder(&rt.id)
            .map(|f| Duration::from_millis(f.watch_delay_ms))
            .unwrap_or_default();
        if let Some(b) = *rt.scan_retry.lock().expect("retry") {
            due = due.min(b.until);
        }
        // A bucket remote's poll, or its retry: never sooner than 10 ms,
        // nor than a failed scan's retry (the check stops at the scan).
        if let Some(mut r) = sh
            .cfg()
            .folder(&rt.id)
            .and_then(|f| super::remote::due(&rt, &cfg, f))
        {
            if let Some(b) = *rt.scan_retry.lock().expect("retry") {
                r = r.max(b.until);
            }
            due = due.min(r.max(Instant::now() + Duration::from_millis(10)));
        }
        // Held-back files: never sooner than 10 ms from now, so that
        // nothing can make this loop spin.
        let held = rt
            .touched
            .next_ready(delay, Instant::now())
            .map(|h| h.max(Instant::now() + Duration::from_millis(10)));
        if let Some(h) = held {
            due = due.min(h);
        }
        tokio::select! {
            _ = rt.wake.notified() => {}
            _ = tokio::time::sleep_until(due.into()) => {
                if last_full.elapsed() >= rescan {
                    rt.full_plan.store(true, Ordering::SeqCst);
                    rt.poke(true);
                    last_full = Instant::now();
                } else if held.is_some_and(|h| Instant::now() >= h) {
                    // A file held back while it was written is ready.
                    rt.dirty.store(true, Ordering::SeqCst);
                }
            }
        }
    }
}
