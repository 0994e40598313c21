//! Connections between daemons: dialling a peer, and a weave session over
//! a TLS stream.

use super::shared::Shared;
use crate::config::Peer;
use crate::{tls, DaemonError};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::runtime::Handle;
use weave_net::Conn;

/// How long a dial or a TLS handshake may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A weave session over a TLS stream: the connection's reader and writer
/// threads use the stream through the runtime.
pub(super) fn conn_over<S>(stream: S, peer: &str, rt: &Handle) -> Conn
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
