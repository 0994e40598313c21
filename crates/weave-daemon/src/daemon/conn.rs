//! Connections between daemons: one lasting link per peer (see
//! `link.rs`), dialled when a session needs one and none is up, or
//! accepted from the peer; sessions open channels on it.

use super::link::{read_frame, Kind, Link, OnOpen};
use super::shared::Shared;
use crate::config::Peer;
use crate::id::DeviceId;
use crate::status::{self, PeerState};
use crate::tls::{self, TlsFailure};
use crate::DaemonError;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsAcceptor;
use weave_engine::SyncError;
use weave_net::Conn;

/// How long a dial or a TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a peer could not be synced with: it is down, or out of reach, or
/// does not take this device.
#[derive(Debug, Error)]
pub enum PeerProblem {
    #[error("it has no address to dial; it dials this device (add one with `weave peer add-address NAME ADDRESS`)")]
    NoAddress,
    #[error("it is paused here (`weave resume --peer` and its name resume it)")]
    Paused,
    #[error("cannot connect ({address}: {why})")]
    Unreachable { address: String, why: DialError },
    /// It refused this device's certificate (a TLS alert).
    #[error("{peer} refused this device (TLS alert: {alert}); on {peer}, add it with `weave peer add NAME {me} ADDRESS`")]
    RefusedUs {
        peer: String,
        me: DeviceId,
        alert: String,
    },
    /// The session did not open.
    #[error("{0}")]
    Session(SyncError),
    /// Another sync dialled it a moment ago, and failed so.
    #[error("{0}")]
    FailedMomentsAgo(String),
}

/// Why dialling one address of a peer failed.
#[derive(Debug, Error)]
pub enum DialError {
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Connect(std::io::Error),
    #[error("the TLS handshake timed out")]
    HandshakeTimeout,
    #[error("{0}")]
    Tls(TlsFailure),
    #[error("the peer closed the connection before taking it")]
    Closed,
}

/// Where to dial `peer`: its addresses, then where LAN discovery heard
/// it lately (IPv4 first).
fn addresses_of(sh: &Shared, peer: &Peer) -> Vec<String> {
    let mut addresses = peer.addresses.clone();
    for a in sh.seen.lock().expect("seen").addresses(peer.id) {
        if !addresses.contains(&a) {
            addresses.push(a);
        }
    }
    addresses
}

/// How long a failed dial answers for the syncs that waited for it.
const RECENT_FAILURE: Duration = Duration::from_secs(5);

/// A session to `peer` on the link to it: the link that is up, or one
/// dialled now. Returns it and the peer's address.
pub(super) fn session_to(sh: &Arc<Shared>, peer: &Peer) -> Result<(Conn, String), DaemonError> {
    if sh.cfg().peer_by_id(peer.id).is_some_and(|p| p.paused) {
        return Err(DaemonError::Peer {
            peer: peer.name.clone(),
            problem: Box::new(PeerProblem::Paused),
        });
    }
    // A link that died since it was looked up is dialled again, once.
    for _ in 0..2 {
        let link = match live_link(sh, peer.id) {
            Some(l) => l,
            None => {
                // One dial at a time per peer: folders that find no link
                // at once wait for the first one's, rather than dial links
                // that would replace each other (and end each other's
                // sessions).
                let gate = sh
                    .dialing
                    .lock()
                    .expect("dialing")
                    .entry(peer.id)
                    .or_default()
                    .clone();
                let mut last = gate.lock().unwrap_or_else(|e| e.into_inner());
                match live_link(sh, peer.id) {
                    Some(l) => l,
                    None => {
                        // A dial that failed a moment ago is not made again
                        // by each folder that waited for it.
                        let addresses = addresses_of(sh, peer);
                        if let Some((_, _, why)) = last.as_ref().filter(|(at, addrs, _)| {
                            at.elapsed() < RECENT_FAILURE && *addrs == addresses
                        }) {
                            return Err(DaemonError::Peer {
                                peer: peer.name.clone(),
                                problem: Box::new(PeerProblem::FailedMomentsAgo(why.clone())),
                            });
                        }
                        match dial(sh, peer) {
                            Ok(l) => {
                                *last = None;
                                l
                            }
                            Err(e) => {
                                let why = match &e {
                                    // Nowhere to dial is not a failure to
                                    // remember: discovery may hear of it.
                                    DaemonError::Peer { problem, .. }
                                        if matches!(**problem, PeerProblem::NoAddress) =>
                                    {
                                        return Err(e)
                                    }
                                    DaemonError::Peer { problem, .. } => problem.to_string(),
                                    other => other.to_string(),
                                };
                                *last = Some((std::time::Instant::now(), addresses, why));
                                return Err(e);
                            }
                        }
                    }
                }
            }
        };
        if let Some(conn) = link.open() {
            return Ok((conn, link.addr.clone()));
        }
    }
    Err(DaemonError::Peer {
        peer: peer.name.clone(),
        problem: Box::new(PeerProblem::Unreachable {
            address: peer.addresses.join(", "),
            why: DialError::Closed,
        }),
    })
}

/// The link to `id`, if one is up.
pub(super) fn live_link(sh: &Shared, id: DeviceId) -> Option<Arc<Link>> {
    let links = sh.links.lock().expect("links");
    links.get(&id).filter(|l| !l.is_dead()).cloned()
}

/// Dials `peer` (each of its addresses in turn), checks it is who it
/// should be and that it takes this device, and keeps the link.
pub(super) fn dial(sh: &Arc<Shared>, peer: &Peer) -> Result<Arc<Link>, DaemonError> {
    let perr = |problem: PeerProblem| DaemonError::Peer {
        peer: peer.name.clone(),
        problem: Box::new(problem),
    };
    if sh.cfg().peer_by_id(peer.id).is_some_and(|p| p.paused) {
        return Err(perr(PeerProblem::Paused));
    }
    let addresses = addresses_of(sh, peer);
    if addresses.is_empty() {
        return Err(perr(PeerProblem::NoAddress));
    }
    let cc = tls::client_config(&sh.me, peer.id)?;
    let mut last = None;
    for addr in &addresses {
        match sh.rt.block_on(connect(addr, cc.clone(), &peer.name)) {
            Ok(t) => {
                let serve = super::host::serve_on(sh.clone(), peer.clone());
                let link = sh
                    .rt
                    .block_on(async { Link::start(t, &peer.name, addr, true, serve) });
                return Ok(adopt(sh, peer, link));
            }
            // TLS 1.3: a server refuses a client's certificate after the
            // client's side of the handshake is done, with an alert the
            // client reads as the link begins.
            Err(DialError::Tls(TlsFailure::Alert { alert, .. })) => {
                return Err(perr(PeerProblem::RefusedUs {
                    peer: peer.name.clone(),
                    me: sh.me.id,
                    alert,
                }))
            }
            Err(why) => last = Some((addr.clone(), why)),
        }
    }
    let (address, why) = last.expect("a peer with addresses");
    Err(perr(PeerProblem::Unreachable { address, why }))
}

/// Keeps `link` as the one to `peer`, unless a live one is there that
/// wins: of two links between the same devices, both keep the one the
/// lower device id dialled (or, dialled by the same side, the newer).
/// Returns the link kept; the other is ended. A link kept shows the peer
/// connected, wakes its folders, and shows it disconnected when it dies.
pub(super) fn adopt(sh: &Arc<Shared>, peer: &Peer, link: Arc<Link>) -> Arc<Link> {
    let by_lower = |l: &Link| l.dialled == (sh.me.id < peer.id);
    let kept = {
        let mut links = sh.links.lock().expect("links");
        match links.get(&peer.id).filter(|l| !l.is_dead()).cloned() {
            Some(old) if by_lower(&old) && !by_lower(&link) => {
                link.kill();
                return old;
            }
            old => {
                if let Some(old) = old {
                    old.kill();
                }
                links.insert(peer.id, link.clone());
                link
            }
        }
    };
    info!("linked with {} ({})", peer.name, kept.addr);
    sh.board.peer(&peer.name, |p| {
        p.state = PeerState::Connected;
        p.address = Some(kept.addr.clone());
        p.last_seen_ms = Some(status::now_ms());
        p.last_error = None;
    });
    for rt in sh.all_folders() {
        let cfg = sh.cfg();
        let f = cfg.folder(&rt.id);
        if f.is_some_and(|f| f.untrusted.contains(&peer.name))
            && super::remote::peer_up(&rt, &peer.name)
        {
            rt.poke(false);
        }
        let shared =
            f.is_some_and(|f| f.peers.contains(&peer.name) && !f.untrusted.contains(&peer.name));
        if shared
            && rt
                .backoff
                .lock()
                .expect("backoff")
                .remove(&peer.id)
                .is_some()
        {
            rt.poke(false);
        }
    }
    let (sh2, name, id, watched) = (sh.clone(), peer.name.clone(), peer.id, kept.clone());
    sh.rt.spawn(async move {
        watched.closed.cancelled().await;
        let mut links = sh2.links.lock().expect("links");
        if links.get(&id).is_some_and(|l| Arc::ptr_eq(l, &watched)) {
            links.remove(&id);
            drop(links);
            debug!("link with {name} ended");
            let why = watched.why();
            let paused = sh2.cfg().peer_by_id(id).is_some_and(|p| p.paused);
            sh2.board.peer(&name, |p| {
                p.state = if paused {
                    PeerState::Paused
                } else {
                    PeerState::Disconnected
                };
                p.rate_in = 0;
                p.rate_out = 0;
                if why.is_some() {
                    p.last_error = why;
                }
            });
        }
    });
    kept
}

/// Connects to `addr`, makes the TLS handshake with client config `cc`,
/// and waits for the peer to take the link (its `Ready`).
async fn connect(
    addr: &str,
    cc: Arc<rustls::ClientConfig>,
    peer: &str,
) -> Result<TlsStream<TcpStream>, DialError> {
    let mut t = handshake(addr, cc, peer).await?;
    match tokio::time::timeout(CONNECT_TIMEOUT, read_frame(&mut t)).await {
        Err(_) => Err(DialError::HandshakeTimeout),
        Ok(Ok(f)) if f.kind == Kind::Ready => Ok(t),
        Ok(Ok(_)) => Err(DialError::Closed),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(DialError::Closed),
        Ok(Err(e)) => Err(DialError::Tls(tls_failure(&e, peer))),
    }
}

/// What an I/O error of a TLS stream with `peer` stands for, in weave's
/// words.
fn tls_failure(e: &std::io::Error, peer: &str) -> TlsFailure {
    TlsFailure::from_io(e, peer).unwrap_or_else(|| TlsFailure::Other {
        peer: peer.to_string(),
        detail: e.to_string(),
    })
}

/// Connects to `addr`, and makes the TLS handshake with client config `cc`.
async fn handshake(
    addr: &str,
    cc: Arc<rustls::ClientConfig>,
    peer: &str,
) -> Result<TlsStream<TcpStream>, DialError> {
    let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| DialError::Timeout)?
        .map_err(DialError::Connect)?;
    let _ = s.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from("weave").expect("a name");
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_rustls::TlsConnector::from(cc).connect(name, s),
    )
    .await
    .map_err(|_| DialError::HandshakeTimeout)?
    .map_err(|e| DialError::Tls(tls_failure(&e, peer)))
}

/// An accepted connection's TLS handshake: the stream, the peer it is,
/// and where it came from; None when it is refused (said in the log).
pub(super) async fn accept(
    sh: &Shared,
    acceptor: &TlsAcceptor,
    s: TcpStream,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, Peer, String)> {
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
            // The handshake's refusal is this side's own reason, said
            // with what to do; anything else in weave's words.
            let why = match TlsFailure::from_io(&e, &from) {
                Some(TlsFailure::Handshake { detail, .. }) => detail,
                Some(t) => t.to_string(),
                None => e.to_string(),
            };
            warn!("refused a connection from {from}: {why}");
            sh.board.refused(refused);
            return None;
        }
        Err(_) => {
            warn!("a connection from {from} did not finish its TLS handshake in time");
            return None;
        }
    };
    let id = tls::peer_id(t.get_ref().1.peer_certificates())?;
    let Some(peer) = sh.cfg().peer_by_id(id).cloned() else {
        warn!("refused {id} from {from}: it is no longer a peer");
        return None;
    };
    Some((t, peer, from))
}

/// Starts the link of an accepted connection, keeps it (see [`adopt`]),
/// and tells the peer it is taken.
pub(super) fn link_accepted(
    sh: &Arc<Shared>,
    t: tokio_rustls::server::TlsStream<TcpStream>,
    peer: &Peer,
    from: &str,
    serve: OnOpen,
) {
    let link = Link::start(t, &peer.name, from, false, serve);
    if Arc::ptr_eq(&adopt(sh, peer, link.clone()), &link) {
        link.ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_problem_says_what_it_said_as_a_message() {
        let peer = |problem| {
            DaemonError::Peer {
                peer: "nas".into(),
                problem: Box::new(problem),
            }
            .to_string()
        };
        assert_eq!(
            peer(PeerProblem::NoAddress),
            "peer nas: it has no address to dial; it dials this device (add one with `weave peer add-address NAME ADDRESS`)"
        );
        let unreachable = |why| PeerProblem::Unreachable {
            address: "10.0.0.2:22100".into(),
            why,
        };
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let messages = [
            (DialError::Timeout, "timed out".to_string()),
            (
                DialError::Connect(refused),
                "connection refused".to_string(),
            ),
            (
                DialError::HandshakeTimeout,
                "the TLS handshake timed out".to_string(),
            ),
            (
                DialError::Tls(TlsFailure::Handshake {
                    peer: "nas".into(),
                    detail: "bad cert".into(),
                }),
                "the TLS handshake with nas failed: bad cert; check its address and device id (`weave peer list`)".to_string(),
            ),
        ];
        for (why, said) in messages {
            assert_eq!(
                peer(unreachable(why)),
                format!("peer nas: cannot connect (10.0.0.2:22100: {said})")
            );
        }
        let me = DeviceId::from_public_key(b"me");
        assert_eq!(
            peer(PeerProblem::RefusedUs {
                peer: "nas".into(),
                me,
                alert: "HandshakeFailure".into(),
            }),
            format!("peer nas: nas refused this device (TLS alert: HandshakeFailure); on nas, add it with `weave peer add NAME {me} ADDRESS`")
        );
        assert_eq!(
            peer(PeerProblem::Session(SyncError::Session("no folder".into()))),
            "peer nas: no folder"
        );
    }

    /// A peer whose TCP connection ends without TLS's closing message (a
    /// daemon killed mid-session): the session says so in weave's words,
    /// naming the peer, where rustls's message links to its manual.
    #[test]
    fn a_cut_tls_connection_is_reported_without_a_library_link() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (_da, a) = {
            let d = tempfile::tempdir().unwrap();
            let i = crate::identity::create(d.path()).unwrap();
            (d, i)
        };
        let (_db, b) = {
            let d = tempfile::tempdir().unwrap();
            let i = crate::identity::create(d.path()).unwrap();
            (d, i)
        };
        let allowed: tls::Allowed = Arc::new(std::sync::RwLock::new([b.id].into()));
        let sc = tls::server_config(&a, allowed, Arc::default()).unwrap();
        let cc = tls::client_config(&b, a.id).unwrap();
        let l = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = l.local_addr().unwrap().to_string();
        // The server takes the handshake and the link, then drops the
        // connection without close_notify.
        let server = rt.spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut t = TlsAcceptor::from(sc).accept(s).await.unwrap();
            let ready = super::super::link::Frame {
                kind: Kind::Ready,
                chan: 0,
                data: Vec::new(),
            };
            super::super::link::write_frame(&mut t, &ready)
                .await
                .unwrap();
            tokio::io::AsyncWriteExt::flush(&mut t).await.unwrap();
            drop(t);
        });
        let t = rt.block_on(connect(&addr, cc, "nas")).unwrap();
        rt.block_on(server).unwrap();
        let nothing: OnOpen = Arc::new(|_, _| {});
        let link = rt.block_on(async { Link::start(t, "nas", &addr, true, nothing) });
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), link.closed.cancelled())
                .await
                .expect("the link notices the cut in time")
        });
        let e = link.why().expect("why it ended");
        assert!(!e.contains("://"), "{e}");
        assert!(
            e.contains("nas ended the connection without closing the TLS session")
                && e.contains("check that `weave daemon` runs there"),
            "{e}"
        );
        rt.shutdown_timeout(Duration::from_secs(1));
    }
}
