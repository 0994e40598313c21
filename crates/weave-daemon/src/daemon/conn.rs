//! Connections between daemons: dialling a peer, and a weave session over
//! a TLS stream.

use super::shared::Shared;
use crate::config::Peer;
use crate::id::DeviceId;
use crate::tls::{self, TlsFailure};
use crate::DaemonError;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsAcceptor;
use weave_engine::SyncError;
use weave_net::Conn;

/// How long a dial or a TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A weave session over a TLS stream: the connection's reader and writer
/// threads use the stream through the runtime.
fn conn_over<S>(stream: S, peer: &str, rt: &Handle) -> Conn
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (r, w) = tokio::io::split(stream);
    let r = tokio_util::io::SyncIoBridge::new_with_handle(r, rt.clone());
    let w = tokio_util::io::SyncIoBridge::new_with_handle(w, rt.clone());
    let r = PlainErrors {
        inner: r,
        peer: peer.to_string(),
    };
    Conn::new(r, CloseOnDrop(w), peer, None)
}

/// The reading half of a session: what TLS fails with is said in weave's
/// words ([`TlsFailure`]), not rustls's (which can carry a link to its
/// documentation).
struct PlainErrors<R> {
    inner: R,
    peer: String,
}

impl<R: std::io::Read> std::io::Read for PlainErrors<R> {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.inner
            .read(b)
            .map_err(|e| TlsFailure::plain_io(e, &self.peer))
    }
}

/// The writing half of a session: dropping it ends the TLS stream cleanly
/// (close_notify), so the other side sees the end of the session.
struct CloseOnDrop<W: AsyncWrite + Unpin>(tokio_util::io::SyncIoBridge<W>);

impl<W: AsyncWrite + Unpin> std::io::Write for CloseOnDrop<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<W: AsyncWrite + Unpin> Drop for CloseOnDrop<W> {
    fn drop(&mut self) {
        let _ = self.0.shutdown();
    }
}

/// Why a peer could not be synced with: it is down, or out of reach, or
/// does not take this device.
#[derive(Debug, Error)]
pub enum PeerProblem {
    #[error("it has no address to dial; it dials this device (add one with `weave peer add-address NAME ADDRESS`)")]
    NoAddress,
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
}

/// Dials `peer` (each of its addresses in turn) and checks it is who it
/// should be.
pub(super) fn dial(sh: &Shared, peer: &Peer) -> Result<(Conn, String), DaemonError> {
    let perr = |problem: PeerProblem| DaemonError::Peer {
        peer: peer.name.clone(),
        problem: Box::new(problem),
    };
    if peer.addresses.is_empty() {
        return Err(perr(PeerProblem::NoAddress));
    }
    let cc = tls::client_config(&sh.me, peer.id)?;
    let mut last = None;
    for addr in &peer.addresses {
        match sh.rt.block_on(connect(addr, cc.clone(), &peer.name)) {
            Ok(t) => return Ok((conn_over(t, &peer.name, &sh.rt), addr.clone())),
            Err(why) => last = Some((addr.clone(), why)),
        }
    }
    let (address, why) = last.expect("a peer with addresses");
    Err(perr(PeerProblem::Unreachable { address, why }))
}

/// Connects to `addr`, and makes the TLS handshake with client config `cc`
/// (for the peer named `peer`).
async fn connect(
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
    .map_err(|e| {
        DialError::Tls(
            TlsFailure::from_io(&e, peer).unwrap_or_else(|| TlsFailure::Other {
                peer: peer.to_string(),
                detail: e.to_string(),
            }),
        )
    })
}

/// An accepted connection's TLS handshake: a session with the peer it
/// is, and where it came from; None when it is refused (said in the log).
pub(super) async fn accept(
    sh: &Shared,
    acceptor: &TlsAcceptor,
    s: TcpStream,
) -> Option<(Conn, Peer, String)> {
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
    let conn = conn_over(t, &peer.name, &sh.rt);
    Some((conn, peer, from))
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
        // The server takes the handshake, then drops the connection
        // without close_notify.
        let server = rt.spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let t = TlsAcceptor::from(sc).accept(s).await.unwrap();
            drop(t);
        });
        let t = rt.block_on(connect(&addr, cc, "nas")).unwrap();
        rt.block_on(server).unwrap();
        let conn = conn_over(t, "nas", rt.handle());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(conn.recv().map(|_| ()).map_err(|e| e.to_string()));
        });
        let e = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the session notices the cut in time")
            .unwrap_err();
        assert!(!e.contains("://"), "{e}");
        assert!(
            e.contains("nas ended the connection without closing the TLS session")
                && e.contains("check that `weave daemon` runs there"),
            "{e}"
        );
        rt.shutdown_timeout(Duration::from_secs(1));
    }
}
