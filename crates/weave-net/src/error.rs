//! How a session with a remote replica fails, as the coordinator and the
//! serving side see it.
//!
//! The messages name what they are about (the replica as given, its
//! host) and include their cause: the CLI prints an error with its
//! sources, so none of these reports a source of its own.

use weave_engine::SyncError;
use weave_proto::ProtoError;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The ssh command (or the one given with --rsh) did not start.
    #[error("{display}: cannot run `{shown}` ({why}). Install an ssh client, or name the command with --rsh")]
    CannotRun {
        display: String,
        shown: String,
        why: std::io::Error,
    },
    /// The remote shell could not find `weave` on `host`.
    #[error("{display}: weave is not installed on {host} (`{remote_weave}` was not found there{said}). Install weave on {host} or give its location with --remote-weave PATH")]
    NotInstalled {
        display: String,
        host: String,
        remote_weave: String,
        /// The end of what the remote side wrote, as `: …`, or nothing.
        said: String,
    },
    /// ssh ended with 255: the host, port, user or keys are wrong.
    #[error("{display}: cannot reach {host} with `{rsh}` (exit 255{said}). Check that `{rsh} {host}` works: host name, port, user and keys")]
    Unreachable {
        display: String,
        host: String,
        rsh: String,
        said: String,
    },
    /// The remote command ended before the session began.
    #[error("{display}: `{shown}` ended (exit {code}) before speaking weave's protocol{said}")]
    EndedEarly {
        display: String,
        shown: String,
        code: i32,
        said: String,
    },
    /// The weave at the other end is too old for a replica of `kind`.
    #[error("{display}: the weave there ({software}) syncs directory trees only, not --kind {kind}; install a newer weave on that host")]
    NoKinds {
        display: String,
        software: String,
        kind: String,
    },
    /// The remote replica names more peers than a session takes.
    #[error("{display} reports {count} peers; the session is ended")]
    TooManyPeers { display: String, count: usize },
    /// The peer's own error message (`Body::Error`).
    #[error("{peer}: {message}")]
    Peer { peer: String, message: String },
    /// The peer refused what the session asked, for a reason it named
    /// with `code` (see [`NOT_SHARED`]).
    #[error("{peer}: {message}")]
    PeerRefused {
        peer: String,
        code: String,
        message: String,
    },
    /// This end refuses what the session asks, for a reason the other
    /// end reads in `code` as well as in the message.
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    /// The session broke the protocol, or its connection failed.
    #[error("{0}")]
    Proto(ProtoError),
    /// A coordinator's session did not begin with a hello.
    #[error("{peer} did not start with a hello")]
    NoHello { peer: String },
    /// A request for a replica before one was opened.
    #[error("no replica is open in this session")]
    NoReplica,
    #[error("{peer} sent an operation of unknown kind {kind}")]
    UnknownOp { peer: String, kind: u32 },
    #[error("{peer} sent an operation without a target")]
    NoTarget { peer: String },
    /// A message other than a request where one was awaited.
    #[error("{peer} sent {got} where a request was expected")]
    NotARequest { peer: String, got: &'static str },
}

/// The code of a refusal to open a folder that is not shared with the
/// device asking (or not there at all: the two get the same answer).
pub const NOT_SHARED: &str = "not-shared";

/// The code of a refusal to sync a folder in clear with a device that
/// keeps it encrypted only (receive-encrypted there).
pub const ENCRYPTED_ONLY: &str = "encrypted-only";

/// The code of a refusal to sync a folder that is paused there.
pub const PAUSED: &str = "paused";

impl SessionError {
    /// What `peer` said in an error message.
    pub fn from_peer(peer: &str, e: weave_proto::msg::ErrorMsg) -> SessionError {
        match e.code.is_empty() {
            true => SessionError::Peer {
                peer: peer.to_string(),
                message: e.message,
            },
            false => SessionError::PeerRefused {
                peer: peer.to_string(),
                code: e.code,
                message: e.message,
            },
        }
    }

    /// The code of a refusal, by either end.
    pub fn code(&self) -> Option<&str> {
        match self {
            SessionError::Refused { code, .. } => Some(code),
            SessionError::PeerRefused { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the other end closed the connection (before answering).
    pub fn is_closed(&self) -> bool {
        matches!(self, SessionError::Proto(ProtoError::Closed { .. }))
    }

    /// The I/O error the connection failed with, if that is what this is
    /// (a transport can say more in it: a TLS alert, say).
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match self {
            SessionError::Proto(ProtoError::Io { source, .. }) => Some(source),
            _ => None,
        }
    }
}

impl From<ProtoError> for SessionError {
    fn from(e: ProtoError) -> SessionError {
        SessionError::Proto(e)
    }
}

impl From<SessionError> for SyncError {
    fn from(e: SessionError) -> SyncError {
        SyncError::Session(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Users and tests read these messages: they are pinned word for word.
    #[test]
    fn messages() {
        let said = ": bash: weave: command not found".to_string();
        let cases: Vec<(SessionError, &str)> = vec![
            (
                SessionError::CannotRun {
                    display: "nas:/srv".into(),
                    shown: "ssh nas weave serve --stdio".into(),
                    why: std::io::Error::other("no such file"),
                },
                "nas:/srv: cannot run `ssh nas weave serve --stdio` (no such file). Install an ssh client, or name the command with --rsh",
            ),
            (
                SessionError::NotInstalled {
                    display: "nas:/srv".into(),
                    host: "nas".into(),
                    remote_weave: "weave".into(),
                    said: said.clone(),
                },
                "nas:/srv: weave is not installed on nas (`weave` was not found there: bash: weave: command not found). Install weave on nas or give its location with --remote-weave PATH",
            ),
            (
                SessionError::Unreachable {
                    display: "nas:/srv".into(),
                    host: "nas".into(),
                    rsh: "ssh".into(),
                    said: String::new(),
                },
                "nas:/srv: cannot reach nas with `ssh` (exit 255). Check that `ssh nas` works: host name, port, user and keys",
            ),
            (
                SessionError::EndedEarly {
                    display: "nas:/srv".into(),
                    shown: "ssh nas weave serve --stdio".into(),
                    code: 1,
                    said,
                },
                "nas:/srv: `ssh nas weave serve --stdio` ended (exit 1) before speaking weave's protocol: bash: weave: command not found",
            ),
            (
                SessionError::NoKinds {
                    display: "nas:/srv".into(),
                    software: "weave 0.1".into(),
                    kind: "kv".into(),
                },
                "nas:/srv: the weave there (weave 0.1) syncs directory trees only, not --kind kv; install a newer weave on that host",
            ),
            (
                SessionError::TooManyPeers {
                    display: "nas:/srv".into(),
                    count: 5000,
                },
                "nas:/srv reports 5000 peers; the session is ended",
            ),
            (
                SessionError::Peer {
                    peer: "nas:/srv".into(),
                    message: "no such directory".into(),
                },
                "nas:/srv: no such directory",
            ),
            (
                SessionError::PeerRefused {
                    peer: "nas".into(),
                    code: NOT_SHARED.into(),
                    message: "no folder docs here".into(),
                },
                "nas: no folder docs here",
            ),
            (
                SessionError::Refused {
                    code: NOT_SHARED,
                    message: "no folder docs here".into(),
                },
                "no folder docs here",
            ),
            (
                SessionError::Proto(ProtoError::Closed { peer: "nas".into() }),
                "nas closed the connection",
            ),
            (
                SessionError::NoHello { peer: "nas".into() },
                "nas did not start with a hello",
            ),
            (SessionError::NoReplica, "no replica is open in this session"),
            (
                SessionError::UnknownOp {
                    peer: "nas".into(),
                    kind: 9,
                },
                "nas sent an operation of unknown kind 9",
            ),
            (
                SessionError::NoTarget { peer: "nas".into() },
                "nas sent an operation without a target",
            ),
            (
                SessionError::NotARequest {
                    peer: "nas".into(),
                    got: "a hello",
                },
                "nas sent a hello where a request was expected",
            ),
        ];
        for (e, said) in cases {
            assert_eq!(e.to_string(), said);
            // Through the engine's error, unchanged and with no source
            // repeated after it.
            let e = SyncError::from(e);
            assert_eq!(e.to_string(), said);
            assert!(std::error::Error::source(&e).is_none());
        }
    }

    #[test]
    fn a_refusal_keeps_its_code_across_the_wire() {
        let sent = weave_proto::msg::ErrorMsg {
            message: "no folder docs here".into(),
            code: NOT_SHARED.into(),
        };
        let got = SessionError::from_peer("nas", sent);
        assert_eq!(got.code(), Some(NOT_SHARED));
        let plain = SessionError::from_peer(
            "nas",
            weave_proto::msg::ErrorMsg {
                message: "x".into(),
                ..Default::default()
            },
        );
        assert_eq!(plain.code(), None);
        assert!(matches!(plain, SessionError::Peer { .. }));
    }

    #[test]
    fn closed_is_typed() {
        let closed = SyncError::from(SessionError::from(ProtoError::Closed {
            peer: "nas".into(),
        }));
        assert!(closed
            .session::<SessionError>()
            .is_some_and(SessionError::is_closed));
        // A peer's message that says so is not a closed connection.
        let said = SyncError::from(SessionError::Peer {
            peer: "nas".into(),
            message: "x closed the connection".into(),
        });
        assert!(!said
            .session::<SessionError>()
            .is_some_and(SessionError::is_closed));
    }
}
