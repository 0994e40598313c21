//! A pair sync run by this device (a folder with one peer), and what it
//! did, on the board and in the log.

use super::conn::{session_to, PeerProblem};
use super::open::open_folder_as;
use super::shared::{FolderRt, Shared};
use crate::config::{Config, Folder, Peer};
use crate::guard::Guarded;
use crate::status::{self, Change, FolderState, PeerState};
use crate::DaemonError;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use weave_engine::{Kind, Replica, SyncOptions};
use weave_fs::Files;
use weave_net::{RemoteReplica, SessionError};

/// The sync options a folder's syncs use.
pub(super) fn sync_options(cfg: &Config, f: &Folder) -> SyncOptions {
    SyncOptions {
        policy: f.conflict.clone(),
        ignore: f
            .ignore
            .iter()
            .cloned()
            .chain(Guarded::exclusion_patterns(&cfg.subfolders(f)))
            .collect(),
        ..SyncOptions::default()
    }
}

/// A sync's progress on a folder, shown by `show_progress`: the bytes it
/// is to write, and as they are written (by a sync this device runs, or
/// one it serves).
pub(super) struct FolderProgress<R>(pub(super) R);

impl<R: std::ops::Deref<Target = FolderRt> + Sync> weave_engine::Progress for FolderProgress<R> {
    fn set_total(&self, bytes: u64) {
        self.0.bytes_total.store(bytes, Ordering::Relaxed);
        self.0.bytes_done.store(0, Ordering::Relaxed);
    }
    fn grow_total(&self, bytes: u64) {
        self.0.bytes_total.store(bytes, Ordering::Relaxed);
    }
    fn advance(&self, bytes: u64) {
        self.0.bytes_done.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// The TLS alert a session failed with, if it did.
fn tls_alert(e: &weave_engine::SyncError) -> Option<String> {
    let io = e.session::<weave_net::SessionError>()?.io_error()?;
    match io.get_ref()?.downcast_ref::<crate::tls::TlsFailure>()? {
        crate::tls::TlsFailure::Alert { alert, .. } => Some(alert.clone()),
        _ => None,
    }
}

/// Opens `peer`'s replica of folder `f`, in a session on the link to it
/// (the address it was reached at beside it).
pub(super) fn open_remote(
    sh: &Arc<Shared>,
    f: &Folder,
    peer: &Peer,
) -> Result<(RemoteReplica, String), DaemonError> {
    let (conn, addr) = session_to(sh, peer)?;
    let remote =
        RemoteReplica::open_kind(conn, &peer.name, &f.id, "files", false).map_err(|e| {
            let code = e.session::<SessionError>().and_then(SessionError::code);
            if code == Some(weave_net::NOT_SHARED) {
                return DaemonError::NotShared {
                    peer: peer.name.clone(),
                    folder: f.id.clone(),
                };
            }
            if code == Some(weave_net::PAUSED) {
                return DaemonError::PausedThere {
                    peer: peer.name.clone(),
                    folder: f.id.clone(),
                };
            }
            if code == Some(weave_net::ENCRYPTED_ONLY) {
                return DaemonError::EncryptedOnly {
                    peer: peer.name.clone(),
                    folder: f.id.clone(),
                };
            }
            // TLS 1.3: a server refuses a client's certificate after
            // the client's side of the handshake is done, with an alert
            // the client reads as the session begins.
            let problem = match tls_alert(&e) {
                Some(alert) => PeerProblem::RefusedUs {
                    peer: peer.name.clone(),
                    me: sh.me.id,
                    alert,
                },
                None => PeerProblem::Session(e),
            };
            DaemonError::Peer {
                peer: peer.name.clone(),
                problem: Box::new(problem),
            }
        })?;
    Ok((remote, addr))
}

/// Whether folder `f` is still synced in clear with `peer` by the config
/// as it is now (a peer made untrusted, or the folder unshared, while a
/// check was under way is not).
fn in_clear(sh: &Shared, f: &Folder, peer: &Peer) -> Result<(), DaemonError> {
    let cfg = sh.cfg();
    let ok = cfg.folder(&f.id).is_some_and(|g| {
        g.peers.contains(&peer.name)
            && !g.untrusted.contains(&peer.name)
            && g.mode != crate::config::Mode::ReceiveEncrypted
    });
    if ok {
        Ok(())
    } else {
        Err(DaemonError::NoLongerInClear {
            peer: peer.name.clone(),
            folder: f.id.clone(),
        })
    }
}

/// What a pair sync is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PairKind {
    /// Both sides' changes meet.
    Normal,
    /// A receive-only folder takes its peer's versions again: it is the
    /// sync's backup, and its own changes are undone.
    Revert,
}

/// One pair sync of folder `f` with `peer`, run by this device. Returns
/// the folder's sequence number after it.
pub(super) fn sync_pair(
    sh: &Arc<Shared>,
    rt: &FolderRt,
    cfg: &Config,
    f: &Folder,
    peer: &Peer,
    kind: PairKind,
) -> Result<u64, DaemonError> {
    // Locks in device-id order: the lower id's folder first.
    let local_first = sh.me.id < peer.id;
    let mut guard = None;
    if local_first {
        guard = Some(rt.lock.clone().blocking_lock_owned());
    }
    in_clear(sh, f, peer)?;
    sh.board.peer(&peer.name, |p| p.syncs_started += 1);
    let (mut remote, addr) = open_remote(sh, f, peer)?;
    if guard.is_none() {
        guard = Some(rt.lock.clone().blocking_lock_owned());
    }
    // The config may have changed while this waited.
    in_clear(sh, f, peer)?;
    let reverting = kind == PairKind::Revert;
    let (mut local, taken) = open_folder_as(cfg, f, rt, reverting)?;
    if let Some(tree) = local.local() {
        remote.cache_index_in(&Files.state_dir(tree.root()));
    }
    let mut reps: Vec<Box<dyn Replica>> = vec![local, Box::new(remote)];
    sh.board.folder(&f.id, |s| s.state = FolderState::Syncing);
    let opts = SyncOptions {
        // A revert undoes local changes the peer has integrated as hidden:
        // every path is planned; so is the first sync after each periodic
        // rescan (it also drops chunk lists no file holds any more, which
        // a sync that read only what changed leaves).
        full_plan: reverting || rt.full_plan.load(Ordering::SeqCst),
        ..sync_options(cfg, f)
    };
    let roles = weave_engine::Roles {
        backups: if reverting { vec![0] } else { Vec::new() },
        ..Default::default()
    };
    let result = weave_engine::run(&mut reps, &opts, &roles, &FolderProgress(rt));
    let seq = reps[0].info().seq;
    let ids = (reps[0].info().id.short(), reps[1].info().id.short());
    let local_display = reps[0].display().to_string();
    sh.board.folder(&f.id, |s| {
        s.replicas.insert(cfg.device.name.clone(), ids.0);
        s.replicas.insert(peer.name.clone(), ids.1);
    });
    drop(reps);
    if result.is_err() {
        rt.give_back(taken);
    }
    drop(guard);
    super::meter::progress_over(sh, rt);
    let report = result?;
    if report.ignore_file_changed {
        // The sync ran under the patterns from before (its scans too):
        // the next check looks at every path and syncs again, under the
        // new ones, with every peer.
        rt.resync.store(true, Ordering::SeqCst);
        rt.poke(true);
    }
    if opts.full_plan && !report.unchanged {
        rt.full_plan.store(false, Ordering::SeqCst);
    }
    sh.board.peer(&peer.name, |p| {
        if p.state != PeerState::Paused {
            p.state = PeerState::Connected;
        }
        p.address = Some(addr.clone());
        p.last_seen_ms = Some(status::now_ms());
        p.last_error = None;
    });
    record_report(sh, &f.id, &peer.name, &report);
    // (A sync that found nothing to do has nothing refused either.)
    let lines = super::notices::from_report(&report, &local_display, &peer.name);
    super::notices::for_peer(sh, rt, peer.id, lines);
    // Paths that did not go through (a full disk, say): the sync is tried
    // again after a back-off, and the folder shows the error until then.
    let mut failed = report
        .errors
        .iter()
        .filter(|e| !weave_engine::is_refusal(&e.message));
    if let (PairKind::Normal, Some(first)) = (kind, failed.next()) {
        return Err(DaemonError::Incomplete {
            peer: peer.name.clone(),
            failed: 1 + failed.count(),
            first: format!("{}: {}", first.path, first.message),
            seq,
        });
    }
    // It went through: what this peer's sessions left undone here is done.
    rt.served_failed
        .lock()
        .expect("served_failed")
        .remove(&peer.id);
    Ok(seq)
}

/// Puts what a sync did on the board and in the log.
pub(super) fn record_report(sh: &Shared, folder: &str, peer: &str, r: &weave_engine::Report) {
    let now = status::now_ms();
    if let Some(l) = r.replicas.first() {
        // The local replica is first: what it took came from the peer.
        record_changes(
            sh,
            folder,
            peer,
            &l.changed,
            l.created + l.updated + l.deleted,
        );
    }
    if !r.unchanged && (r.created + r.updated + r.deleted) > 0 {
        info!(
            "folder {folder} with {peer}: {} created, {} updated, {} deleted, {} bytes copied",
            r.created, r.updated, r.deleted, r.bytes_copied
        );
    }
    for c in &r.conflicts {
        info!(
            "folder {folder} with {peer}: conflict at {} ({})",
            c.path, c.description
        );
        sh.board.change(Change {
            time_ms: now,
            folder: folder.to_string(),
            path: c.path.clone(),
            action: "conflict".into(),
            peer: peer.to_string(),
            by: String::new(),
        });
    }
    // The first few in the log (a retry that fails the same way would
    // repeat them all every time); the board keeps its own bound.
    for (n, e) in r
        .errors
        .iter()
        .filter(|e| !weave_engine::is_refusal(&e.message))
        .enumerate()
    {
        if n < 5 {
            warn!("folder {folder} with {peer}: {}: {}", e.path, e.message);
        }
        sh.board.error(
            Some(folder),
            Some(peer),
            format!("{}: {}", e.path, e.message),
        );
    }
    sh.board.folder(folder, |s| s.last_sync_ms = Some(now));
}

/// Records what a sync with `peer` changed in this device's folder as
/// recent changes, a line per file (`changed`: the paths named, of
/// `total`).
pub(super) fn record_changes(
    sh: &Shared,
    folder: &str,
    peer: &str,
    changed: &[weave_engine::ChangedPath],
    total: u64,
) {
    let now = status::now_ms();
    // Whose replica is whose, as this device's syncs learnt it.
    let mut replicas = std::collections::BTreeMap::new();
    sh.board.folder(folder, |s| replicas = s.replicas.clone());
    let by = |origin: &str| {
        replicas
            .iter()
            .find(|(_, id)| id.as_str() == origin)
            .map(|(device, _)| device.clone())
            .unwrap_or_else(|| format!("replica {origin}"))
    };
    for c in changed {
        sh.board.change(Change {
            time_ms: now,
            folder: folder.to_string(),
            path: c.path.clone(),
            action: c.action.clone(),
            peer: peer.to_string(),
            by: by(&c.origin),
        });
    }
    let more = total.saturating_sub(changed.len() as u64);
    if more > 0 {
        sh.board.change(Change {
            time_ms: now,
            folder: folder.to_string(),
            path: String::new(),
            action: format!("and {more} more changes"),
            peer: peer.to_string(),
            by: String::new(),
        });
    }
}
