//! Connections between daemons: dialling a peer, and a weave session over
//! a TLS stream.

use super::shared::Shared;
use crate::config::Peer;
use crate::{tls, DaemonError};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_rustls::TlsAcceptor;
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

/// Dials `peer` (each of its addresses in turn) and checks it is who it
/// should be.
pub(super) fn dial(sh: &Shared, peer: &Peer) -> Result<(Conn, String), DaemonError> {
    let perr = |message: String| DaemonError::Peer {
        peer: peer.name.clone(),
        message,
    };
    if peer.addresses.is_empty() {
        return Err(perr(
            "it has no address to dial; it dials this device (add one with `weave peer add NAME ID ADDRESS`)".into(),
        ));
    }
    let cc = tls::client_config(&sh.me, peer.id)?;
    let mut last = String::new();
    for addr in &peer.addresses {
        let cc = cc.clone();
        let got = sh.rt.block_on(async {
            let s = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| e.to_string())?;
            let _ = s.set_nodelay(true);
            let name = rustls::pki_types::ServerName::try_from("weave").expect("a name");
            tokio::time::timeout(
                CONNECT_TIMEOUT,
                tokio_rustls::TlsConnector::from(cc).connect(name, s),
            )
            .await
            .map_err(|_| "the TLS handshake timed out".to_string())?
            .map_err(|e| format!("TLS: {e}"))
        });
        match got {
            Ok(t) => return Ok((conn_over(t, &peer.name, &sh.rt), addr.clone())),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(perr(format!("cannot connect ({last})")))
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
