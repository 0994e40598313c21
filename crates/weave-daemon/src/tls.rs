//! TLS 1.3 between daemons, both sides authenticated by certificate and
//! pinned by device id: a server takes only clients whose id is one of its
//! peers (an unknown device is refused inside the handshake, before any
//! byte of the session is read), and a client takes only the server whose
//! id it dialled for.

use crate::id::DeviceId;
use crate::identity::Identity;
use crate::DaemonError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};
use thiserror::Error;

/// The one crypto provider weave uses (ring), for every TLS config.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The device ids a server accepts, changeable while it runs.
pub type Allowed = Arc<RwLock<HashSet<DeviceId>>>;

/// Devices refused lately (for the log and the status API).
pub type Refused = Arc<Mutex<Vec<DeviceId>>>;

#[derive(Debug)]
struct PinnedClients {
    allowed: Allowed,
    refused: Refused,
    provider: Arc<CryptoProvider>,
}

/// The handshake-signature checks both verifiers share: TLS 1.3 only,
/// with the provider's algorithms.
fn tls12_refused() -> rustls::Error {
    rustls::Error::General("weave speaks TLS 1.3 only".into())
}

fn tls13_signature(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

fn schemes(provider: &CryptoProvider) -> Vec<SignatureScheme> {
    provider
        .signature_verification_algorithms
        .supported_schemes()
}

fn refuse(id: DeviceId) -> rustls::Error {
    rustls::Error::General(format!(
        "device {id} is not a peer of this device; if it should be, add it with `weave peer add NAME {id} ADDRESS`"
    ))
}

impl ClientCertVerifier for PinnedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let id = DeviceId::from_cert(end_entity)?;
        if self.allowed.read().expect("allowed").contains(&id) {
            Ok(ClientCertVerified::assertion())
        } else {
            let mut r = self.refused.lock().expect("refused");
            r.push(id);
            let n = r.len();
            if n > 16 {
                r.drain(..n - 16);
            }
            Err(refuse(id))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes(&self.provider)
    }
}

#[derive(Debug)]
struct PinnedServer {
    expect: DeviceId,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = DeviceId::from_cert(end_entity)?;
        if id == self.expect {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the device there is {id}, not the expected {}",
                self.expect
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes(&self.provider)
    }
}

fn crypto(e: rustls::Error) -> DaemonError {
    DaemonError::Crypto(e.to_string())
}

/// The server side: this device's certificate; clients must be `allowed`.
pub fn server_config(
    me: &Identity,
    allowed: Allowed,
    refused: Refused,
) -> Result<Arc<rustls::ServerConfig>, DaemonError> {
    let provider = provider();
    let verifier = PinnedClients {
        allowed,
        refused,
        provider: provider.clone(),
    };
    let c = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(crypto)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(vec![me.cert.clone()], me.key.clone_key())
        .map_err(crypto)?;
    Ok(Arc::new(c))
}

/// The client side, for dialling the device `expect`.
pub fn client_config(
    me: &Identity,
    expect: DeviceId,
) -> Result<Arc<rustls::ClientConfig>, DaemonError> {
    let provider = provider();
    let verifier = PinnedServer {
        expect,
        provider: provider.clone(),
    };
    let c = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(crypto)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(vec![me.cert.clone()], me.key.clone_key())
        .map_err(crypto)?;
    Ok(Arc::new(c))
}

/// The device id of the other end of an established connection.
pub fn peer_id(certs: Option<&[CertificateDer<'static>]>) -> Option<DeviceId> {
    certs
        .and_then(|c| c.first())
        .and_then(|c| DeviceId::from_cert(c).ok())
}

/// A TLS connection's failure in weave's words: what happened with
/// which peer, and what to do. rustls's own messages can carry a link to
/// its documentation; none reaches a user.
#[derive(Debug, Error)]
pub enum TlsFailure {
    /// The TCP connection ended without TLS's closing message.
    #[error("{peer} ended the connection without closing the TLS session (the weave daemon there stopped or was killed, or the network dropped the connection); weave tries again by itself, check that `weave daemon` runs there")]
    Cut { peer: String },
    /// The other side broke off with an alert (in TLS 1.3 also how a
    /// server refuses a client's certificate).
    #[error("{peer} broke off the TLS session (alert: {alert}); if it does not know this device yet, add this device there with `weave peer add`")]
    Alert { peer: String, alert: String },
    /// The handshake refused the other side's certificate (weave's own
    /// reason: a device id that is not the expected one, or no peer).
    #[error("the TLS handshake with {peer} failed: {detail}; check its address and device id (`weave peer list`)")]
    Handshake { peer: String, detail: String },
    /// Anything else TLS refused.
    #[error("the TLS session with {peer} failed ({detail}); check that both devices run the same weave version")]
    Other { peer: String, detail: String },
}

impl TlsFailure {
    /// The failure an I/O error of a TLS stream with `peer` stands for;
    /// None for an error that did not come from TLS (its own words are
    /// plain: "connection reset by peer").
    pub fn from_io(e: &std::io::Error, peer: &str) -> Option<TlsFailure> {
        let peer = peer.to_string();
        if let Some(t) = e.get_ref().and_then(|i| i.downcast_ref::<TlsFailure>()) {
            return Some(t.clone_for(peer));
        }
        if let Some(r) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return Some(TlsFailure::from_rustls(r, peer));
        }
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            return Some(TlsFailure::Cut { peer });
        }
        let said = e.to_string();
        let plain = without_links(&said);
        (plain != said).then_some(TlsFailure::Other {
            peer,
            detail: plain,
        })
    }

    fn from_rustls(r: &rustls::Error, peer: String) -> TlsFailure {
        match r {
            rustls::Error::AlertReceived(a) => TlsFailure::Alert {
                peer,
                alert: format!("{a:?}"),
            },
            rustls::Error::General(detail) => TlsFailure::Handshake {
                peer,
                detail: without_links(detail),
            },
            rustls::Error::InvalidCertificate(c) => TlsFailure::Handshake {
                peer,
                detail: format!(
                    "its certificate is not usable ({})",
                    without_links(&c.to_string())
                ),
            },
            other => TlsFailure::Other {
                peer,
                detail: without_links(&other.to_string()),
            },
        }
    }

    /// The same failure, said of `peer`.
    fn clone_for(&self, peer: String) -> TlsFailure {
        match self {
            TlsFailure::Cut { .. } => TlsFailure::Cut { peer },
            TlsFailure::Alert { alert, .. } => TlsFailure::Alert {
                peer,
                alert: alert.clone(),
            },
            TlsFailure::Handshake { detail, .. } => TlsFailure::Handshake {
                peer,
                detail: detail.clone(),
            },
            TlsFailure::Other { detail, .. } => TlsFailure::Other {
                peer,
                detail: detail.clone(),
            },
        }
    }

    /// An I/O error of the same kind as `e`, saying this failure (what a
    /// session reading a TLS stream reports); `e` itself when it did not
    /// come from TLS.
    pub fn plain_io(e: std::io::Error, peer: &str) -> std::io::Error {
        match TlsFailure::from_io(&e, peer) {
            Some(t) => std::io::Error::new(e.kind(), t),
            None => e,
        }
    }
}

/// `said` without the web links a library put in it (and the colon that
/// introduced one).
fn without_links(said: &str) -> String {
    said.split_whitespace()
        .filter(|w| !w.contains("://"))
        .collect::<Vec<_>>()
        .join(" ")
        .trim_end_matches([':', ' '])
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What rustls says when a peer's TCP connection ends without
    /// close_notify (its text, link included, as rustls 0.23 words it).
    fn rustls_unexpected_eof() -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "peer closed connection without sending TLS close_notify: \
https://docs.rs/rustls/latest/rustls/manual/_03_howto/index.html#unexpected-eof",
        )
    }

    #[test]
    fn tls_failures_are_said_in_weaves_words_without_links() {
        let cases = [
            (
                rustls_unexpected_eof(),
                "nas ended the connection without closing the TLS session (the weave daemon there stopped or was killed, or the network dropped the connection); weave tries again by itself, check that `weave daemon` runs there",
            ),
            (
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure),
                ),
                "nas broke off the TLS session (alert: HandshakeFailure); if it does not know this device yet, add this device there with `weave peer add`",
            ),
            (
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    rustls::Error::General("the device there is X, not the expected Y".into()),
                ),
                "the TLS handshake with nas failed: the device there is X, not the expected Y; check its address and device id (`weave peer list`)",
            ),
            (
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    rustls::Error::DecryptError,
                ),
                "the TLS session with nas failed (cannot decrypt peer's message); check that both devices run the same weave version",
            ),
            (
                std::io::Error::other("see https://example.org/why for why"),
                "the TLS session with nas failed (see for why); check that both devices run the same weave version",
            ),
        ];
        for (e, said) in cases {
            let t = TlsFailure::from_io(&e, "nas").expect("a TLS failure");
            assert_eq!(t.to_string(), said);
            // As a session reads it: the same kind, the same words.
            let kind = e.kind();
            let plain = TlsFailure::plain_io(e, "nas");
            assert_eq!(plain.kind(), kind);
            assert_eq!(plain.to_string(), said);
            assert!(!plain.to_string().contains("://"));
            // Mapped twice, it stays as it is.
            assert_eq!(TlsFailure::plain_io(plain, "nas").to_string(), said);
        }
        // What TLS did not say is left alone.
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(TlsFailure::from_io(&reset, "nas").is_none());
        assert_eq!(
            TlsFailure::plain_io(reset, "nas").kind(),
            std::io::ErrorKind::ConnectionReset
        );
    }

    fn ident() -> (tempfile::TempDir, Identity) {
        let d = tempfile::tempdir().unwrap();
        let i = crate::identity::create(d.path()).unwrap();
        (d, i)
    }

    async fn pair(
        server: &Identity,
        allowed: &[DeviceId],
        client: &Identity,
        expect: DeviceId,
    ) -> (Result<u8, String>, Result<(), String>, Refused) {
        let allowed: Allowed = Arc::new(RwLock::new(allowed.iter().copied().collect()));
        let refused: Refused = Arc::default();
        let sc = server_config(server, allowed, refused.clone()).unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let srv = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut t = tokio_rustls::TlsAcceptor::from(sc)
                .accept(s)
                .await
                .map_err(|e| e.to_string())?;
            let mut b = [0u8; 1];
            t.read_exact(&mut b).await.map_err(|e| e.to_string())?;
            t.shutdown().await.map_err(|e| e.to_string())?;
            Ok::<u8, String>(b[0])
        });
        let cc = client_config(client, expect).unwrap();
        let cli = async {
            let s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut t = tokio_rustls::TlsConnector::from(cc)
                .connect(ServerName::try_from("weave").unwrap(), s)
                .await
                .map_err(|e| e.to_string())?;
            t.write_all(&[7]).await.map_err(|e| e.to_string())?;
            t.flush().await.map_err(|e| e.to_string())?;
            // The server refuses a client after the client's flight: read
            // to see whether the session stands.
            let mut b = [0u8; 1];
            match tokio::time::timeout(std::time::Duration::from_millis(500), t.read(&mut b)).await
            {
                Ok(Err(e)) => Err(e.to_string()),
                _ => Ok(()),
            }
        };
        let c = cli.await;
        let s = srv.await.unwrap();
        (s, c, refused)
    }

    #[tokio::test]
    async fn known_devices_talk_and_unknown_ones_are_refused_in_the_handshake() {
        let (_a, a) = ident();
        let (_b, b) = ident();
        let (_c, c) = ident();
        let (s, cl, _) = pair(&a, &[b.id], &b, a.id).await;
        assert_eq!(s, Ok(7));
        assert!(cl.is_ok(), "{cl:?}");
        // c is no peer of a: a reads nothing from it.
        let (s, _, refused) = pair(&a, &[b.id], &c, a.id).await;
        assert!(s.is_err(), "{s:?}");
        assert_eq!(refused.lock().unwrap().as_slice(), &[c.id]);
        // b dials a but expects c's id: b refuses the server.
        let (s, cl, _) = pair(&a, &[b.id], &b, c.id).await;
        assert!(cl.is_err() && s.is_err(), "{cl:?} {s:?}");
        assert!(cl.unwrap_err().contains("not the expected"));
    }
}
