//! Connections between daemons: dialling a peer, and a weave session over
//! a TLS stream.

use super::shared::Shared;
use crate::config::Peer;
use crate::id::DeviceId;
use crate::{tls, DaemonError};
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
    Conn::new(r, CloseOnDrop(w), peer, None)
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
    /// It refused this device's certificate.
    #[error("{peer} refused this device ({cause}); on {peer}, add it with `weave peer add NAME {me} ADDRESS`")]
    RefusedUs {
        peer: String,
        me: DeviceId,
        cause: SyncError,
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
    #[error("TLS: {0}")]
    Tls(std::io::Error),
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
        match sh.rt.block_on(connect(addr, cc.clone())) {
            Ok(t) => return Ok((conn_over(t, &peer.name, &sh.rt), addr.clone())),
            Err(why) => last = Some((addr.clone(), why)),
        }
    }
    let (address, why) = last.expect("a peer with addresses");
    Err(perr(PeerProblem::Unreachable { address, why }))
}

/// Connects to `addr`, and makes the TLS handshake with client config `cc`.
async fn connect(
    addr: &str,
    cc: Arc<rustls::ClientConfig>,
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
    .map_err(DialError::Tls)
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
            warn!("refused a connection from {from}: {e}");
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
                DialError::Tls(std::io::Error::other("bad cert")),
                "TLS: bad cert".to_string(),
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
                cause: SyncError::Session("received fatal alert".into()),
            }),
            format!("peer nas: nas refused this device (received fatal alert); on nas, add it with `weave peer add NAME {me} ADDRESS`")
        );
        assert_eq!(
            peer(PeerProblem::Session(SyncError::Session("no folder".into()))),
            "peer nas: no folder"
        );
    }
}
