//! The messages. Every message travels in an [`Envelope`] whose `kind`
//! repeats the tag of its body, so a peer that does not know a newer kind
//! (its body decodes as `None`) can answer [`Unsupported`] with that kind
//! instead of failing.

/// One message on the wire.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Envelope {
    /// The tag of `body`.
    #[prost(uint32, tag = "1")]
    pub kind: u32,
    #[prost(oneof = "Body", tags = "10, 11, 12, 13, 14, 15, 16")]
    pub body: Option<Body>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Body {
    #[prost(message, tag = "10")]
    Hello(Hello),
    #[prost(message, tag = "11")]
    IndexBatch(IndexBatch),
    #[prost(message, tag = "12")]
    ChunkRequest(ChunkRequest),
    #[prost(message, tag = "13")]
    ChunkData(ChunkData),
    #[prost(message, tag = "14")]
    Progress(Progress),
    #[prost(message, tag = "15")]
    Error(ErrorMsg),
    #[prost(message, tag = "16")]
    Unsupported(Unsupported),
}

impl Body {
    pub fn tag(&self) -> u32 {
        match self {
            Body::Hello(_) => 10,
            Body::IndexBatch(_) => 11,
            Body::ChunkRequest(_) => 12,
            Body::ChunkData(_) => 13,
            Body::Progress(_) => 14,
            Body::Error(_) => 15,
            Body::Unsupported(_) => 16,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Body::Hello(_) => "a hello",
            Body::IndexBatch(_) => "index entries",
            Body::ChunkRequest(_) => "a chunk request",
            Body::ChunkData(_) => "chunk data",
            Body::Progress(_) => "progress",
            Body::Error(_) => "an error",
            Body::Unsupported(_) => "an unsupported-message notice",
        }
    }
}

/// Wraps a body in an envelope.
pub fn body(b: Body) -> Envelope {
    Envelope {
        kind: b.tag(),
        body: Some(b),
    }
}

/// The first message of each side.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Hello {
    #[prost(uint32, tag = "1")]
    pub protocol_version: u32,
    /// The oldest protocol version this side can still speak.
    #[prost(uint32, tag = "2")]
    pub min_version: u32,
    /// Chunking parameters: both sides must cut files the same way.
    #[prost(uint32, tag = "3")]
    pub chunker_version: u32,
    #[prost(uint64, tag = "4")]
    pub replica_id: u64,
    /// Optional features this side supports ("zstd", …).
    #[prost(string, repeated, tag = "5")]
    pub capabilities: Vec<String>,
    /// For people: "weave 0.1.0".
    #[prost(string, tag = "6")]
    pub software: String,
}

/// Index entries the other side has not seen, in sequence order.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IndexBatch {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<WireEntry>,
    /// The sender's sequence number up to which this (and earlier) batches
    /// cover its index.
    #[prost(uint64, tag = "2")]
    pub up_to_seq: u64,
    /// No more batches follow in this exchange.
    #[prost(bool, tag = "3")]
    pub last: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum Kind {
    Unknown = 0,
    File = 1,
    Dir = 2,
    Symlink = 3,
    Deleted = 4,
}

/// One index entry as it travels.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireEntry {
    #[prost(string, tag = "1")]
    pub path: String,
    #[prost(enumeration = "Kind", tag = "2")]
    pub kind: i32,
    #[prost(uint64, tag = "3")]
    pub size: u64,
    /// Content id (32 bytes) of a file.
    #[prost(bytes = "vec", tag = "4")]
    pub content: Vec<u8>,
    /// Target of a symlink.
    #[prost(string, tag = "5")]
    pub target: String,
    #[prost(uint32, tag = "6")]
    pub mode: u32,
    #[prost(sint64, tag = "7")]
    pub mtime_ns: i64,
    #[prost(message, repeated, tag = "8")]
    pub vv: Vec<VvPair>,
    #[prost(uint64, tag = "9")]
    pub origin: u64,
    /// The sender's local sequence number of this entry.
    #[prost(uint64, tag = "10")]
    pub seq: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct VvPair {
    #[prost(uint64, tag = "1")]
    pub replica: u64,
    #[prost(uint64, tag = "2")]
    pub counter: u64,
}

/// Asks for chunks by hash; answered by one [`ChunkData`] per hash, with
/// the same id. Many requests may be in flight.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChunkRequest {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub hashes: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ChunkData {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub hash: Vec<u8>,
    /// Empty with `missing` set when the sender does not have the chunk.
    #[prost(bytes = "vec", tag = "3")]
    pub data: Vec<u8>,
    #[prost(bool, tag = "4")]
    pub missing: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Progress {
    #[prost(uint64, tag = "1")]
    pub files_done: u64,
    #[prost(uint64, tag = "2")]
    pub files_total: u64,
    #[prost(uint64, tag = "3")]
    pub bytes_done: u64,
    #[prost(uint64, tag = "4")]
    pub bytes_total: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ErrorMsg {
    #[prost(string, tag = "1")]
    pub message: String,
}

/// "I do not understand messages of this kind" (sent by an older peer).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Unsupported {
    #[prost(uint32, tag = "1")]
    pub kind: u32,
}
