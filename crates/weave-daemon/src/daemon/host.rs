//! Serving this device's folders to peers: an accepted connection's
//! session may open the folders shared with its peer.

use super::conn::{conn_over, CONNECT_TIMEOUT};
use super::open::{open_folder, Taken};
use super::shared::{FolderRt, Shared};
use crate::config::Peer;
use crate::status::{self, Change};
use crate::tls;
use std::sync::Arc;
use weave_engine::{Replica, SyncError};
use weave_net::server::{serve_host, Host};

/// Serves a peer's session: it may open the folders shared with it.
struct DaemonHost {
    sh: Arc<Shared>,
    peer: Peer,
    opened: Option<(Arc<FolderRt>, tokio::sync::OwnedMutexGuard<()>, Taken)>,
}

impl Host for DaemonHost {
    fn open(
        &mut self,
        name: &str,
        kind: &str,
        dry_run: bool,
    ) -> Result<(Box<dyn Replica>, String), SyncError> {
        let cfg = self.sh.cfg();
        // An unknown folder and one not shared with this peer get the
        // same answer: a peer never learns of a folder not shared with it.
        let f = cfg
            .folder(name)
            .filter(|f| f.peers.contains(&self.peer.name))
            .cloned()
            .ok_or_else(|| {
                SyncError::Remote(format!(
                    "this device shares no folder {name:?} with you ({})",
                    self.sh.me.id
                ))
            })?;
        if !kind.is_empty() && kind != "files" {
            return Err(SyncError::Remote(format!(
                "folder {name:?} holds files, not {kind}"
            )));
        }
        if dry_run {
            return Err(SyncError::Remote(
                "a daemon's folders take no dry run".into(),
            ));
        }
        if self.opened.is_some() {
            return Err(SyncError::Remote(
                "a session opens one folder; open another in a session of its own".into(),
            ));
        }
        let rt = self
            .sh
            .folder_rt(&f.id)
            .ok_or_else(|| SyncError::Remote(format!("folder {name:?} is not running yet")))?;
        let guard = rt.lock.clone().blocking_lock_owned();
        let (rep, taken) = open_folder(&cfg, &f, &rt)?;
        self.opened = Some((rt, guard, taken));
        Ok((rep, f.id.clone()))
    }
}

/// One accepted connection: TLS, then a session.
pub(super) async fn accept(
    sh: Arc<Shared>,
    acceptor: tokio_rustls::TlsAcceptor,
    s: tokio::net::TcpStream,
) {
    let from = s
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let _ = s.set_nodelay(true);
    let t = match tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(s)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            let refused: Vec<String> = sh
                .refused
                .lock()
                .expect("refused")
                .iter()
                .map(|i| i.to_string())
                .collect();
            warn!("refused a connection from {from}: {e}");
            sh.board.refused(refused);
            return;
        }
        Err(_) => {
            warn!("a connection from {from} did not finish its TLS handshake in time");
            return;
        }
    };
    let Some(id) = tls::peer_id(t.get_ref().1.peer_certificates()) else {
        return;
    };
    let Some(peer) = sh.cfg().peer_by_id(id).cloned() else {
        warn!("refused {id} from {from}: it is no longer a peer");
        return;
    };
    let conn = conn_over(t, &peer.name, &sh.rt);
    let sh2 = sh.clone();
    let name = peer.name.clone();
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
    sh.board.peer(&name, |p| {
        p.state = "connected".into();
        p.last_seen_ms = Some(status::now_ms());
        p.last_error = None;
    });
    match served {
        Ok(served) => {
            if let Some(rt) = opened {
                debug!(
                    "folder {}: served {name}, {} operations",
                    rt.id, served.applied
                );
                if let Some(seq) = served.seq.filter(|_| served.finished) {
                    rt.synced.lock().expect("synced").insert(id, seq);
                }
                // It is up: no need to wait before dialling it.
                rt.backoff.lock().expect("backoff").remove(&id);
                if served.applied > 0 {
                    sh.board.change(Change {
                        time_ms: status::now_ms(),
                        folder: rt.id.clone(),
                        path: String::new(),
                        action: format!("took {} changes", served.applied),
                        peer: name.clone(),
                    });
                }
                if served.applied > 0 || !served.finished {
                    // The other peers hear of it; what the session did
                    // not finish is looked at again.
                    rt.poke(false);
                }
            }
        }
        Err(e) => {
            if let Some(rt) = opened {
                rt.synced.lock().expect("synced").remove(&id);
                rt.poke(false);
            }
            warn!("session with {name} ({from}): {e}");
        }
    }
}
