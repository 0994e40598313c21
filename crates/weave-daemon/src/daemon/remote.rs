//! A folder's bucket remote (`weave folder add … --remote ADDRESS`): an
//! encrypted bucket replica the folder syncs with besides its peers,
//! after each local change and every `poll_secs` for other devices'
//! changes: how two devices that are never on together keep a folder in
//! sync. A failed sync is tried again after a back-off and shown as the
//! folder's error until one goes through.

use super::backoff::Backoff;
use super::open::open_folder_as;
use super::pair::{record_report, sync_options, FolderProgress};
use super::shared::{FolderRt, Shared};
use crate::config::{Config, Folder};
use crate::status::{self, FolderState};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weave_engine::Replica;

/// Where a folder is with its remote.
#[derive(Default)]
pub(super) struct RemoteState {
    /// The remote and passphrase file this state is about (a config
    /// reload that changes them starts afresh).
    of: Option<(String, Option<std::path::PathBuf>)>,
    /// The folder's sequence number after the last sync that went
    /// through, and when it ended.
    last: Option<(u64, Instant)>,
    /// After a failure: when to try again, and what it was.
    failed: Option<(Backoff, String)>,
}

/// When the folder's task is next due to look at its remote.
pub(super) fn due(rt: &FolderRt, f: &Folder) -> Option<Instant> {
    f.remote.as_ref()?;
    let st = rt.remote.lock().expect("remote");
    Some(match (&st.failed, st.last) {
        (Some((b, _)), _) => b.until,
        (None, Some((_, at))) => at + Duration::from_secs(f.poll_secs.max(1)),
        (None, None) => Instant::now(),
    })
}

/// Syncs folder `f` with its remote when that is due: its sequence
/// number `now` moved since the last sync, the poll interval passed, or
/// none went through yet. Returns the error to show while the remote's
/// syncs fail, and the folder's sequence number after a sync that went
/// through.
pub(super) fn sync_if_due(
    sh: &Arc<Shared>,
    rt: &FolderRt,
    cfg: &Config,
    f: &Folder,
    now: Option<u64>,
) -> (Option<String>, Option<u64>) {
    let Some(remote) = f.remote.as_ref() else {
        return (None, None);
    };
    let t = Instant::now();
    {
        let mut st = rt.remote.lock().expect("remote");
        let of = Some((remote.clone(), f.passphrase_file.clone()));
        if st.of != of {
            *st = RemoteState {
                of,
                ..Default::default()
            };
            sh.board.folder(&f.id, |s| s.remote_synced_ms = None);
        }
        if let Some((b, msg)) = &st.failed {
            if b.holds(t) {
                return (Some(msg.clone()), None);
            }
        } else if let Some((seq, at)) = st.last {
            let polled = t < at + Duration::from_secs(f.poll_secs.max(1));
            if polled && (now.is_none() || now == Some(seq)) {
                return (None, None);
            }
        }
    }
    match sync_remote(sh, rt, cfg, f, remote) {
        Ok(seq) => {
            let mut st = rt.remote.lock().expect("remote");
            st.failed = None;
            st.last = Some((seq, Instant::now()));
            drop(st);
            sh.board
                .folder(&f.id, |s| s.remote_synced_ms = Some(status::now_ms()));
            (None, Some(seq))
        }
        Err(msg) => {
            let msg = format!("remote {remote}: {msg}");
            let mut st = rt.remote.lock().expect("remote");
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

/// One sync of the folder with its remote; the folder's sequence number
/// after it.
fn sync_remote(
    sh: &Arc<Shared>,
    rt: &FolderRt,
    cfg: &Config,
    f: &Folder,
    remote: &str,
) -> Result<u64, String> {
    let address = match weave_bucket::BucketAddress::parse(remote) {
        Some(Ok(a)) => a,
        Some(Err(e)) => return Err(e.to_string()),
        None => return Err("not a bucket address".into()),
    };
    let pass = passphrase(f)?;
    // Opened (its key derived, its records read) before the folder is
    // locked: the folder's peers need not wait for that.
    let state = weave_engine::Kind::state_dir(&weave_fs::Files, &f.path);
    let bucket =
        weave_bucket::open(&address, &pass, false, Some(&state)).map_err(|e| e.to_string())?;
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
    record_report(sh, &f.id, remote, &report);
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
