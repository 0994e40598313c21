//! Serving this device's folders to peers: an accepted connection's
//! session may open the folders shared with its peer.

use super::conn::{accept, link_accepted};
use super::link::OnOpen;
use super::open::{open_folder, Taken};
use super::shared::{FolderRt, Shared};
use crate::config::{Config, Folder, Mode, Peer};
use crate::id::DeviceId;
use crate::status::{self, FolderState, PeerState};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use weave_engine::{Replica, SyncError};
use weave_net::server::{serve_host, Host, Served};
use weave_net::SessionError;

/// Why a peer's session could not open a folder of this device. The
/// peer reads the message.
#[derive(Debug, Error)]
pub enum HostError {
    /// The folder is unknown here, or not shared with the peer: the two
    /// get the same answer, so a peer never learns of a folder not shared
    /// with it.
    #[error("this device shares no folder {name:?} with you ({me})")]
    NotShared { name: String, me: DeviceId },
    #[error("folder {name:?} holds files, not {kind}")]
    NotFiles { name: String, kind: String },
    #[error("a daemon's folders take no dry run")]
    DryRun,
    #[error("a session opens one folder; open another in a session of its own")]
    SecondFolder,
    /// Shared, but its watcher and index are not up yet.
    #[error("folder {name:?} is not running yet")]
    NotRunning { name: String },
    /// Paused here by the user.
    #[error("folder {name:?} is paused on {me}; it syncs again once resumed there (`weave resume {name}`)")]
    Paused { name: String, me: DeviceId },
    /// This device is untrusted with the folder: it keeps its encrypted
    /// data only, and takes no file in clear.
    #[error("folder {name:?} on {me} keeps encrypted data only (it is receive-encrypted there); mark that device untrusted for the folder here: `weave folder share {name} PEER --untrusted`")]
    EncryptedOnly { name: String, me: DeviceId },
}

impl From<HostError> for SyncError {
    fn from(e: HostError) -> SyncError {
        match e {
            // The peer's daemon reads the code, and says so once.
            HostError::NotShared { .. } => SessionError::Refused {
                code: weave_net::NOT_SHARED,
                message: e.to_string(),
            }
            .into(),
            HostError::Paused { .. } => SessionError::Refused {
                code: weave_net::PAUSED,
                message: e.to_string(),
            }
            .into(),
            HostError::EncryptedOnly { .. } => SessionError::Refused {
                code: weave_net::ENCRYPTED_ONLY,
                message: e.to_string(),
            }
            .into(),
            e => SyncError::Session(Box::new(e)),
        }
    }
}

/// Serves a peer's session: it may open the folders shared with it.
struct DaemonHost {
    sh: Arc<Shared>,
    peer: Peer,
    opened: Option<(Arc<FolderRt>, tokio::sync::OwnedMutexGuard<()>, Taken)>,
}

impl DaemonHost {
    /// Folder `name`, if the peer may sync it in clear now: shared with
    /// it (not untrusted), held in clear here, not paused.
    fn in_clear(&self, cfg: &Config, name: &str) -> Result<Folder, HostError> {
        let f = self.shared(cfg, name, false)?;
        let (name, me) = (name.to_string(), self.sh.me.id);
        if f.mode == Mode::ReceiveEncrypted {
            return Err(HostError::EncryptedOnly { name, me });
        }
        if f.paused {
            return Err(HostError::Paused { name, me });
        }
        Ok(f)
    }

    /// Folder `name`, if it is shared with the peer (and, unless
    /// `encrypted`, the peer is not untrusted with it). An unknown folder
    /// and one not shared get the same answer: a peer never learns of a
    /// folder not shared with it.
    fn shared(&self, cfg: &Config, name: &str, encrypted: bool) -> Result<Folder, HostError> {
        // The peer by its id, under the name it has now (a link outlives
        // renames in the config).
        let peer = cfg.peer_by_id(self.peer.id);
        cfg.folder(name)
            .filter(|f| {
                peer.is_some_and(|p| {
                    f.peers.contains(&p.name) && (encrypted || !f.untrusted.contains(&p.name))
                })
            })
            .cloned()
            .ok_or_else(|| {
                // Asked by a peer the folder is shared with, untrusted:
                // nothing to suggest (sharing it in clear is not it).
                let known = cfg
                    .folder(name)
                    .is_some_and(|f| peer.is_some_and(|p| f.peers.contains(&p.name)));
                if let Some(p) = peer.filter(|_| !known) {
                    self.sh.board.unshared_ask(&p.name, name);
                }
                HostError::NotShared {
                    name: name.to_string(),
                    me: self.sh.me.id,
                }
            })
    }
}

impl Host for DaemonHost {
    fn open(
        &mut self,
        name: &str,
        kind: &str,
        dry_run: bool,
    ) -> Result<(Box<dyn Replica>, String), SyncError> {
        let cfg = self.sh.cfg();
        // A peer untrusted with the folder is sent nothing in clear.
        let f = self.in_clear(&cfg, name)?;
        if !kind.is_empty() && kind != "files" {
            return Err(HostError::NotFiles {
                name: name.to_string(),
                kind: kind.to_string(),
            }
            .into());
        }
        if dry_run {
            return Err(HostError::DryRun.into());
        }
        if self.opened.is_some() {
            return Err(HostError::SecondFolder.into());
        }
        let rt = self
            .sh
            .folder_rt(&f.id)
            .ok_or_else(|| HostError::NotRunning {
                name: name.to_string(),
            })?;
        let guard = rt.lock.clone().blocking_lock_owned();
        // The config may have changed while the folder was busy (the peer
        // made untrusted, the folder unshared): as it is now.
        let cfg = self.sh.cfg();
        let f = self.in_clear(&cfg, name)?;
        let (rep, taken) = open_folder(&cfg, &f, &rt)?;
        self.opened = Some((rt, guard, taken));
        Ok((rep, f.id.clone()))
    }

    /// The encrypted objects of a receive-encrypted folder shared with
    /// the peer, kept in the folder's directory.
    fn objects(&mut self, name: &str) -> Result<Box<dyn weave_bucket::store::Store>, SyncError> {
        let cfg = self.sh.cfg();
        let f = self.shared(&cfg, name, true)?;
        if f.paused {
            return Err(HostError::Paused {
                name: name.to_string(),
                me: self.sh.me.id,
            }
            .into());
        }
        if f.mode != Mode::ReceiveEncrypted {
            // A folder held in clear here is no bucket.
            return Err(HostError::NotShared {
                name: name.to_string(),
                me: self.sh.me.id,
            }
            .into());
        }
        let dir = weave_bucket::BucketAddress::Dir {
            given: format!("folder {} ({})", f.id, f.path.display()),
            dir: f.path.clone(),
        };
        dir.connect(true)
            .map_err(|e| SyncError::Replica(Box::new(e)))
    }

    /// The receiving side shows it is syncing, and the bytes to go.
    fn progress(&mut self) -> Option<Arc<dyn weave_engine::Progress + Send>> {
        let rt = self.opened.as_ref()?.0.clone();
        self.sh
            .board
            .folder(&rt.id, |s| s.state = FolderState::Syncing);
        Some(Arc::new(super::pair::FolderProgress(rt)))
    }
}

/// Accepts the connections of peers, each in a task of its own.
pub(super) async fn listen(sh: Arc<Shared>, listener: TcpListener, acceptor: TlsAcceptor) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                tokio::spawn(session(sh.clone(), acceptor.clone(), s));
            }
            Err(e) => {
                warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One accepted connection: TLS, then the link to the peer.
async fn session(sh: Arc<Shared>, acceptor: TlsAcceptor, s: TcpStream) {
    let Some((t, peer, from)) = accept(&sh, &acceptor, s).await else {
        return;
    };
    let serve = serve_on(sh.clone(), peer.clone());
    link_accepted(&sh, t, &peer, &from, serve);
}

/// What a link to `peer` does with a channel the peer opens: serves the
/// session on it.
pub(super) fn serve_on(sh: Arc<Shared>, peer: Peer) -> OnOpen {
    Arc::new(move |link, conn| {
        let (sh, peer, from) = (sh.clone(), peer.clone(), link.addr.clone());
        tokio::spawn(serve_session(sh, conn, peer, from));
    })
}

/// Serves one session of `peer` (at `from`), on a channel of its link.
async fn serve_session(sh: Arc<Shared>, conn: weave_net::Conn, peer: Peer, from: String) {
    let sh2 = sh.clone();
    let name = peer.name.clone();
    let id = peer.id;
    let res = tokio::task::spawn_blocking(move || {
        let mut host = DaemonHost {
            sh: sh2,
            peer,
            opened: None,
        };
        let served = serve_host(conn, &mut host);
        let opened = host.opened.take().map(|(rt, guard, taken)| {
            // What the peer's session did not scan is looked at later.
            if !served.as_ref().is_ok_and(|s| s.scanned) {
                rt.give_back(taken);
            }
            drop(guard);
            rt
        });
        (served, opened)
    })
    .await;
    let Ok((served, opened)) = res else {
        return;
    };
    if let Some(rt) = &opened {
        // What it showed while receiving is over.
        super::meter::progress_over(&sh, rt);
        sh.board.folder(&rt.id, |s| {
            if s.state == FolderState::Syncing {
                s.state = FolderState::Idle;
            }
        });
    }
    sh.board.peer(&name, |p| {
        if p.state != PeerState::Paused {
            p.state = PeerState::Connected;
        }
        p.last_seen_ms = Some(status::now_ms());
        p.last_error = None;
    });
    match served {
        Ok(served) => {
            if let Some(rt) = opened {
                record_served(&sh, &rt, id, &name, &served);
            }
        }
        Err(e) => {
            warn!("session with {name} ({from}): {e}");
            if let Some(rt) = opened {
                out_of_sync(&sh, &rt, id, &name);
                // What failed here (not the session: the peer going away
                // or failing, which it shows) is shown until a sync with
                // it goes through.
                let here = !matches!(e, weave_engine::SyncError::Session(_));
                let msg = format!(
                    "a sync from {name} did not go through here: {e}; {name} tries again by itself"
                );
                if here {
                    set_served_failed(&sh, &rt, id, &name, Some(msg));
                }
                rt.poke(false);
            }
        }
    }
}

/// What a session served for peer `name` (device `id`) did to folder
/// `rt`: on the board, and for the folder's task.
/// What a session served for peer `id` (`name`) left not done is the
/// folder's error until a later session of that peer leaves nothing
/// undone (the peer tries again by itself).
fn show_failed(sh: &Shared, rt: &FolderRt, id: DeviceId, name: &str, served: &Served) {
    let msg = served.failed.first().map(|(path, why)| {
        format!(
            "{} path(s) from {name} not done here (the first: {path}: {why}); {name} tries again by itself",
            served.failed_count
        )
    });
    if let Some(msg) = &msg {
        warn!("folder {}: {msg}", rt.id);
    }
    // A session that went to its end and left nothing undone (one that
    // found nothing to do included: the paths came another way) clears
    // it; one that stopped before its end says nothing either way.
    if msg.is_some() || served.finished {
        set_served_failed(sh, rt, id, name, msg);
    }
}

/// What sessions served for peer `id` (`name`) left not done here: `msg`, or
/// nothing; the folder shows the first such message as its error.
fn set_served_failed(sh: &Shared, rt: &FolderRt, id: DeviceId, name: &str, msg: Option<String>) {
    let mut failed = rt.served_failed.lock().expect("served_failed");
    match msg {
        Some(msg) => {
            sh.board.error(Some(&rt.id), Some(name), msg.clone());
            failed.insert(id, msg);
        }
        None => {
            failed.remove(&id);
        }
    }
    let shown = failed.values().next().cloned();
    drop(failed);
    sh.board.folder(&rt.id, |s| match shown {
        Some(msg) => {
            s.state = FolderState::Error;
            s.error = Some(msg);
        }
        None if s.state == FolderState::Error
            && s.error.as_deref().is_some_and(|e| {
                e.contains(" not done here ") || e.contains(" did not go through here: ")
            }) =>
        {
            s.state = FolderState::Idle;
            s.error = None;
        }
        None => {}
    });
}

/// The folder is not in sync with peer `id` (`name`) any more: so its
/// status says at once, not only after its next check.
fn out_of_sync(sh: &Shared, rt: &FolderRt, id: DeviceId, name: &str) {
    rt.synced.lock().expect("synced").remove(&id);
    sh.board.folder(&rt.id, |s| {
        s.in_sync_with.retain(|p| p != name);
        if !s.peers.is_empty() {
            s.in_sync_percent = 100.0 * s.in_sync_with.len() as f64 / s.peers.len() as f64;
        }
    });
}

fn record_served(sh: &Shared, rt: &FolderRt, id: DeviceId, name: &str, served: &Served) {
    debug!(
        "folder {}: served {name}, {} operations",
        rt.id, served.applied
    );
    // In sync with that peer only when the sync went through on both
    // sides (what either side's own rules refused aside): here (a path a
    // full disk refused is still missing) and on the peer, as the
    // coordinator says (an older one does not).
    let peer_through = served
        .went_through
        .as_ref()
        .is_none_or(|through| through.iter().any(|r| Some(*r) != served.replica));
    let clean = served.failed_count == 0 && peer_through;
    match served.seq.filter(|_| served.finished) {
        Some(seq) if clean => {
            rt.synced.lock().expect("synced").insert(id, seq);
        }
        Some(_) => {
            out_of_sync(sh, rt, id, name);
        }
        None => {}
    }
    // It is up: no need to wait before dialling it.
    rt.backoff.lock().expect("backoff").remove(&id);
    super::pair::record_changes(
        sh,
        &rt.id,
        name,
        &served.changed,
        served.changed_count as u64,
    );
    show_failed(sh, rt, id, name, served);
    if served.ignore_file_changed {
        // Its patterns changed: every path is looked at again, and every
        // peer synced again, under them.
        rt.resync.store(true, std::sync::atomic::Ordering::SeqCst);
        rt.poke(true);
    }
    super::notices::unshared(sh, rt, id, None);
    if served.finished {
        super::notices::for_peer(sh, rt, id, super::notices::from_served(served));
    }
    // Whose replica is whose, for the names of conflict copies.
    let me = sh.cfg().device.name.clone();
    sh.board.folder(&rt.id, |s| {
        if let Some(r) = served.replica {
            s.replicas.insert(me, r.short());
        }
        // The peer's replica: the one it integrated (a pair sync names
        // one), or the one of those that went through that is not ours.
        let through = served.went_through.iter().flatten();
        let theirs: Vec<_> = match served.peer_replicas[..] {
            [one] => vec![one],
            _ => through
                .filter(|r| Some(**r) != served.replica)
                .copied()
                .collect(),
        };
        if let [theirs] = theirs[..] {
            s.replicas.insert(name.to_string(), theirs.short());
        }
    });
    if served.applied > 0 || !served.finished {
        // The other peers hear of it; what the session did not finish is
        // looked at again.
        rt.poke(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer reads these messages: they are pinned word for word.
    #[test]
    fn messages() {
        let me = DeviceId::from_public_key(b"me");
        let cases = [
            (
                HostError::NotShared {
                    name: "photos".into(),
                    me,
                },
                format!("this device shares no folder \"photos\" with you ({me})"),
            ),
            (
                HostError::NotFiles {
                    name: "photos".into(),
                    kind: "kv".into(),
                },
                "folder \"photos\" holds files, not kv".into(),
            ),
            (
                HostError::DryRun,
                "a daemon's folders take no dry run".into(),
            ),
            (
                HostError::SecondFolder,
                "a session opens one folder; open another in a session of its own".into(),
            ),
            (
                HostError::NotRunning {
                    name: "photos".into(),
                },
                "folder \"photos\" is not running yet".into(),
            ),
        ];
        for (e, said) in cases {
            assert_eq!(SyncError::from(e).to_string(), said);
        }
    }
}
