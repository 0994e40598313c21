//! The handshake both sides run first: each sends a [`Hello`] and reads the
//! other's; they agree on the highest protocol version both speak, or end
//! the session with an error naming both versions.

use crate::frame::{read_msg, write_msg};
use crate::limits::{MAX_CAPABILITIES, MAX_TEXT};
use crate::msg::{body, Body, Envelope, Hello, Unsupported};
use crate::{ProtoError, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncWrite};
use weave_core::ReplicaId;

/// What the handshake learned of the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub replica_id: ReplicaId,
    /// The protocol version both sides use from now on.
    pub protocol: u32,
    pub capabilities: Vec<String>,
    pub software: String,
}

/// This side's hello.
pub fn hello(replica_id: ReplicaId, capabilities: &[&str]) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        min_version: MIN_PROTOCOL_VERSION,
        chunker_version: weave_chunk::CHUNKER_VERSION,
        replica_id: replica_id.0,
        capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
        software: format!("weave {}", env!("CARGO_PKG_VERSION")),
    }
}

/// Sends `ours` and reads the peer's hello (both at once, so neither side
/// waits on the other), then checks that the two can talk.
pub async fn handshake<R, W>(
    r: &mut R,
    w: &mut W,
    ours: Hello,
    peer: &str,
) -> Result<PeerInfo, ProtoError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let ours_env = body(Body::Hello(ours.clone()));
    let (_, theirs) = tokio::try_join!(write_msg(w, &ours_env, peer), read_msg(r, peer))?;
    let theirs = match theirs.body {
        Some(Body::Hello(h)) => h,
        Some(Body::Error(e)) => {
            return Err(ProtoError::Remote {
                peer: peer.into(),
                message: e.message,
            })
        }
        Some(other) => {
            return Err(ProtoError::Unexpected {
                peer: peer.into(),
                got: other.name(),
                expected: "a hello",
            })
        }
        None => {
            return Err(ProtoError::Unexpected {
                peer: peer.into(),
                got: "a message of an unknown kind",
                expected: "a hello",
            })
        }
    };
    negotiate(&ours, &theirs, peer)
}

/// The checks of a handshake, on the two hellos.
pub fn negotiate(ours: &Hello, theirs: &Hello, peer: &str) -> Result<PeerInfo, ProtoError> {
    if theirs.capabilities.len() > MAX_CAPABILITIES
        || theirs.capabilities.iter().any(|c| c.len() > MAX_TEXT)
        || theirs.software.len() > MAX_TEXT
    {
        return Err(ProtoError::Invalid {
            peer: peer.into(),
            detail: "an oversized hello".into(),
        });
    }
    let version = ours.protocol_version.min(theirs.protocol_version);
    if version < ours.min_version
        || version < theirs.min_version
        || theirs.min_version > theirs.protocol_version
    {
        return Err(ProtoError::Incompatible {
            peer: format!("{peer} ({})", theirs.software),
            theirs: theirs.protocol_version,
            their_min: theirs.min_version,
            ours: ours.protocol_version,
            our_min: ours.min_version,
        });
    }
    if theirs.chunker_version != ours.chunker_version {
        return Err(ProtoError::Chunker {
            peer: peer.into(),
            theirs: theirs.chunker_version,
            ours: ours.chunker_version,
        });
    }
    // 0: a session-level hello that names no replica.
    if theirs.replica_id == ours.replica_id && ours.replica_id != 0 {
        return Err(ProtoError::Invalid {
            peer: peer.into(),
            detail: "the same replica id as this side (a replica synced with itself, or a copied state directory)"
                .into(),
        });
    }
    Ok(PeerInfo {
        replica_id: ReplicaId(theirs.replica_id),
        protocol: version,
        capabilities: theirs.capabilities.clone(),
        software: theirs.software.clone(),
    })
}

/// The answer to a message of a kind this side does not know (sent by a
/// newer peer): a notice naming the kind, instead of a failure.
pub fn unsupported_reply(m: &Envelope) -> Option<Envelope> {
    if m.body.is_some() {
        return None;
    }
    Some(body(Body::Unsupported(Unsupported { kind: m.kind })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    async fn run(
        a: Hello,
        b: Hello,
    ) -> (Result<PeerInfo, ProtoError>, Result<PeerInfo, ProtoError>) {
        let (x, y) = tokio::io::duplex(16); // smaller than a hello: both must read while writing
        let (mut xr, mut xw) = tokio::io::split(x);
        let (mut yr, mut yw) = tokio::io::split(y);
        tokio::join!(
            handshake(&mut xr, &mut xw, a, "B"),
            handshake(&mut yr, &mut yw, b, "A")
        )
    }

    #[tokio::test]
    async fn same_versions_agree() {
        let (a, b) = run(hello(ReplicaId(1), &["zstd"]), hello(ReplicaId(2), &[])).await;
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.replica_id, ReplicaId(2));
        assert_eq!(b.replica_id, ReplicaId(1));
        assert_eq!(b.capabilities, vec!["zstd".to_string()]);
        assert_eq!(a.protocol, PROTOCOL_VERSION);
    }

    #[tokio::test]
    async fn a_newer_peer_that_still_speaks_our_version_is_accepted() {
        let mut newer = hello(ReplicaId(2), &[]);
        newer.protocol_version = PROTOCOL_VERSION + 3;
        let (a, b) = run(hello(ReplicaId(1), &[]), newer).await;
        assert_eq!(a.unwrap().protocol, PROTOCOL_VERSION);
        assert_eq!(b.unwrap().protocol, PROTOCOL_VERSION);
    }

    #[tokio::test]
    async fn incompatible_versions_are_named() {
        let mut newer = hello(ReplicaId(2), &[]);
        newer.protocol_version = PROTOCOL_VERSION + 5;
        newer.min_version = PROTOCOL_VERSION + 2;
        let (a, _) = run(hello(ReplicaId(1), &[]), newer).await;
        let msg = a.unwrap_err().to_string();
        assert!(
            msg.contains(&format!("protocol {}", PROTOCOL_VERSION + 5)),
            "{msg}"
        );
        assert!(msg.contains(&format!("speaks {PROTOCOL_VERSION}")), "{msg}");
    }

    #[tokio::test]
    async fn other_chunkers_and_own_ids_are_refused() {
        let mut other = hello(ReplicaId(2), &[]);
        other.chunker_version += 1;
        let (a, _) = run(hello(ReplicaId(1), &[]), other).await;
        assert!(matches!(a, Err(ProtoError::Chunker { .. })));
        let (a, _) = run(hello(ReplicaId(1), &[]), hello(ReplicaId(1), &[])).await;
        assert!(matches!(a, Err(ProtoError::Invalid { .. })));
    }

    #[test]
    fn unknown_kinds_get_an_unsupported_notice() {
        // A newer peer's message: kind 99, a body field this build does not know.
        let mut bytes = Envelope {
            kind: 99,
            body: None,
        }
        .encode_to_vec();
        bytes.extend_from_slice(&[0xfa, 0x06, 0x02, 0x08, 0x01]); // field 99, a small message
        let m = Envelope::decode(&bytes[..]).unwrap();
        assert!(m.body.is_none());
        let reply = unsupported_reply(&m).unwrap();
        assert_eq!(
            reply.body,
            Some(Body::Unsupported(Unsupported { kind: 99 }))
        );
        assert!(unsupported_reply(&body(Body::Unsupported(Unsupported { kind: 1 }))).is_none());
    }
}
