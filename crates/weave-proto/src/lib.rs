//! weave-proto: the wire protocol between replicas.
//!
//! - [`frame`]: length-delimited frames over any `AsyncRead`/`AsyncWrite`
//!   or blocking reader and writer (a pipe to `ssh`, a TLS stream), with a
//!   hard size limit checked before anything is allocated;
//! - [`msg`]: the messages, prost-encoded (an evolvable encoding: fields
//!   and message kinds can be added without breaking older peers);
//! - [`validate`]: turning what a peer sent into weave's own types, bounded
//!   and checked (I-6: every byte from a peer is hostile until checked);
//! - [`handshake`]: the versioned handshake both sides run first.
//!
//! The `weave` command speaks it through weave-net: `weave sync` with a
//! remote replica, and `weave serve --stdio` on the other end. (The
//! `weave` crate itself does not depend on this one.)

pub mod frame;
pub mod handshake;
pub mod msg;
pub mod validate;

use thiserror::Error;

/// The protocol this build speaks. Version 2: a tombstone may carry an
/// empty version vector (what a backup records where no source holds
/// anything), which version 1 refuses. Version 3: entries carry their
/// owner and extended attributes, which version 2 would drop.
pub const PROTOCOL_VERSION: u32 = 3;
/// The oldest protocol version this build can still talk to.
pub const MIN_PROTOCOL_VERSION: u32 = 3;

/// Limits on what a peer may send.
pub mod limits {
    /// Largest frame accepted, in bytes (a full chunk plus headroom).
    pub const MAX_FRAME: usize = 1 << 20;
    /// Index entries in one batch.
    pub const MAX_ENTRIES: usize = 4096;
    /// Paths in one page of the index asked for.
    pub const MAX_PAGE: usize = 1 << 16;
    /// Chunks asked for in one request.
    pub const MAX_HASHES: usize = 4096;
    /// Replicas in one version vector.
    pub const MAX_VV: usize = 1024;
    /// Bytes in a path or a symlink target.
    pub const MAX_PATH: usize = 4096;
    /// Bytes in any free-text field (messages, software names).
    pub const MAX_TEXT: usize = 1024;
    /// Capabilities announced in a hello.
    pub const MAX_CAPABILITIES: usize = 64;
}

#[derive(Debug, Error)]
pub enum ProtoError {
    #[error("connection to {peer} failed: {source}")]
    Io {
        peer: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{peer} closed the connection")]
    Closed { peer: String },
    #[error(
        "{peer} sent a frame of {size} bytes, over the limit of {limit}; the session is ended"
    )]
    FrameTooLarge {
        peer: String,
        size: usize,
        limit: usize,
    },
    #[error("{peer} sent a message that does not decode ({detail}); the session is ended")]
    Malformed { peer: String, detail: String },
    #[error("{peer} sent something invalid: {detail}; the session is ended and nothing it sent was used")]
    Invalid { peer: String, detail: String },
    #[error("{peer} speaks weave protocol {theirs} (oldest it accepts: {their_min}); this weave speaks {ours} (oldest it accepts: {our_min}). Install the same weave version on both sides")]
    Incompatible {
        peer: String,
        theirs: u32,
        their_min: u32,
        ours: u32,
        our_min: u32,
    },
    #[error("{peer} chunks files differently (chunker version {theirs}, ours {ours}); install the same weave version on both sides")]
    Chunker {
        peer: String,
        theirs: u32,
        ours: u32,
    },
    #[error("{peer} reported an error: {message}")]
    Remote { peer: String, message: String },
    #[error("{peer} sent {got} where {expected} was expected")]
    Unexpected {
        peer: String,
        got: &'static str,
        expected: &'static str,
    },
}
