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
    #[prost(
        oneof = "Body",
        tags = "10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33"
    )]
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
    #[prost(message, tag = "17")]
    Open(Open),
    #[prost(message, tag = "18")]
    Opened(Opened),
    #[prost(message, tag = "19")]
    Scan(Scan),
    #[prost(message, tag = "20")]
    Scanned(Scanned),
    #[prost(message, tag = "21")]
    Issue(IssueMsg),
    #[prost(message, tag = "22")]
    GetEntries(GetEntries),
    #[prost(message, tag = "23")]
    Ops(Ops),
    #[prost(message, tag = "24")]
    Run(Run),
    #[prost(message, tag = "25")]
    Applied(Applied),
    #[prost(message, tag = "26")]
    Finish(Finish),
    #[prost(message, tag = "27")]
    Finished(Finished),
    #[prost(message, tag = "28")]
    GetEntriesAt(GetEntriesAt),
    #[prost(message, tag = "29")]
    GetEntriesFrom(GetEntriesFrom),
    #[prost(message, tag = "30")]
    ObjectsOpen(ObjectsOpen),
    #[prost(message, tag = "31")]
    ObjectsOpened(ObjectsOpened),
    #[prost(message, tag = "32")]
    ObjectOp(ObjectOp),
    #[prost(message, tag = "33")]
    ObjectReply(ObjectReply),
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
            Body::Open(_) => 17,
            Body::Opened(_) => 18,
            Body::Scan(_) => 19,
            Body::Scanned(_) => 20,
            Body::Issue(_) => 21,
            Body::GetEntries(_) => 22,
            Body::Ops(_) => 23,
            Body::Run(_) => 24,
            Body::Applied(_) => 25,
            Body::Finish(_) => 26,
            Body::Finished(_) => 27,
            Body::GetEntriesAt(_) => 28,
            Body::GetEntriesFrom(_) => 29,
            Body::ObjectsOpen(_) => 30,
            Body::ObjectsOpened(_) => 31,
            Body::ObjectOp(_) => 32,
            Body::ObjectReply(_) => 33,
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
            Body::Open(_) => "an open request",
            Body::Opened(_) => "an open reply",
            Body::Scan(_) => "a scan request",
            Body::Scanned(_) => "a scan reply",
            Body::Issue(_) => "an issue report",
            Body::GetEntries(_) => "an index request",
            Body::Ops(_) => "operations",
            Body::Run(_) => "a run request",
            Body::Applied(_) => "an apply reply",
            Body::Finish(_) => "a finish request",
            Body::Finished(_) => "a finish reply",
            Body::GetEntriesAt(_) => "a request for index entries by path",
            Body::GetEntriesFrom(_) => "a request for a page of index entries",
            Body::ObjectsOpen(_) => "a request to open a folder's encrypted objects",
            Body::ObjectsOpened(_) => "an objects open reply",
            Body::ObjectOp(_) => "an object request",
            Body::ObjectReply(_) => "an object reply",
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
    /// In answer to Run, to a coordinator whose hello lists "done-ops":
    /// the operations (by index) carried out exactly as sent, whose
    /// entries are therefore not sent back.
    #[prost(uint64, repeated, tag = "4")]
    pub done_ops: Vec<u64>,
    /// In answer to GetEntriesFrom, on the last batch: the last path the
    /// page covers (absent: it covers the rest of the index).
    #[prost(string, optional, tag = "5")]
    pub page_end: Option<String>,
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
    /// Owner, where one is kept (protocol 3).
    #[prost(message, optional, tag = "11")]
    pub owner: Option<WireOwner>,
    /// Extended attributes, sorted by name (protocol 3).
    #[prost(message, repeated, tag = "12")]
    pub xattrs: Vec<WireXattr>,
    /// The first name, in path order, of the file this one is a hard link
    /// of (protocol 3).
    #[prost(string, optional, tag = "13")]
    pub link: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WireOwner {
    #[prost(uint32, tag = "1")]
    pub uid: u32,
    #[prost(uint32, tag = "2")]
    pub gid: u32,
    #[prost(string, optional, tag = "3")]
    pub user: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub group: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WireXattr {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
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
    /// The content whose chunks (or tree nodes) are asked for.
    #[prost(bytes = "vec", tag = "3")]
    pub content: Vec<u8>,
    /// Tree nodes rather than chunks.
    #[prost(bool, tag = "4")]
    pub nodes: bool,
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
    /// `data` is zstd-compressed.
    #[prost(bool, tag = "5")]
    pub zstd: bool,
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
    /// Why, in a word both ends know, when the other end may act on it
    /// (`not-shared`); empty otherwise (and from an older weave).
    #[prost(string, tag = "2")]
    pub code: String,
}

/// "I do not understand messages of this kind" (sent by an older peer).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Unsupported {
    #[prost(uint32, tag = "1")]
    pub kind: u32,
}

/// Coordinator → server: open the replica at `path`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Open {
    #[prost(string, tag = "1")]
    pub path: String,
    #[prost(bool, tag = "2")]
    pub dry_run: bool,
    /// The kind of replica ("" or "files": a directory tree). Only sent to
    /// a server whose hello lists the "kinds" capability.
    #[prost(string, tag = "3")]
    pub kind: String,
}

/// Server → coordinator: the opened replica.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Opened {
    #[prost(uint64, tag = "1")]
    pub replica_id: u64,
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    #[prost(uint64, tag = "3")]
    pub clock: u64,
    #[prost(message, repeated, tag = "4")]
    pub peers: Vec<VvPair>,
    #[prost(uint64, optional, tag = "5")]
    pub ignore_fingerprint: Option<u64>,
    #[prost(bool, tag = "6")]
    pub rekeyed: bool,
    #[prost(message, optional, tag = "7")]
    pub ignore_file: Option<IgnoreFile>,
    /// The replica's root, as the server resolved it (for messages).
    #[prost(string, tag = "8")]
    pub root: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct IgnoreFile {
    #[prost(string, tag = "1")]
    pub origin: String,
    #[prost(string, tag = "2")]
    pub text: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Scan {
    #[prost(message, repeated, tag = "1")]
    pub files: Vec<IgnoreFile>,
    #[prost(string, repeated, tag = "2")]
    pub patterns: Vec<String>,
    #[prost(bool, tag = "3")]
    pub dry_run: bool,
}

/// Server → coordinator, after the scan's issues.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Scanned {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(uint64, tag = "2")]
    pub clock: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct IssueMsg {
    #[prost(string, tag = "1")]
    pub path: String,
    #[prost(string, tag = "2")]
    pub message: String,
    /// A notice, not an error.
    #[prost(bool, tag = "3")]
    pub notice: bool,
}

/// Coordinator → server: send the index (IndexBatch messages, the last
/// one marked).
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetEntries {
    #[prost(uint64, tag = "1")]
    pub since_seq: u64,
}

/// The entries at some paths and inside some directories ("" for all),
/// from a server whose hello lists "entries-at": what an incremental sync
/// asks of each replica. Sent in parts of at most
/// [`crate::limits::MAX_ENTRIES`] names; index batches answer the part
/// marked `last`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetEntriesAt {
    #[prost(string, repeated, tag = "1")]
    pub paths: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub subtrees: Vec<String>,
    #[prost(bool, tag = "3")]
    pub last: bool,
}

/// One page of the index, from a server whose hello lists
/// "entries-from": the entries of up to `limit` paths in path order after
/// `after` (from the first with none), what a sync that plans every path
/// a slice at a time asks of each replica. Index batches answer it, the
/// last one marked with where the page ends.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetEntriesFrom {
    #[prost(string, optional, tag = "1")]
    pub after: Option<String>,
    #[prost(uint32, tag = "2")]
    pub limit: u32,
}

/// Opens the encrypted objects a device keeps for a folder it is
/// untrusted with (a receive-encrypted folder): the session then carries
/// object requests, each answered in turn, and nothing else.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ObjectsOpen {
    #[prost(string, tag = "1")]
    pub folder: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ObjectsOpened {}

/// What an object request asks ([`ObjectOp::op`]).
pub mod object_op {
    /// The object whole (found or not).
    pub const GET: u32 = 1;
    /// Bytes `start..end` of an object that is there.
    pub const GET_RANGE: u32 = 2;
    /// Writes the object (a random name nobody else writes).
    pub const PUT: u32 = 3;
    /// Writes the object unless one is there (`written` says which).
    pub const PUT_NEW: u32 = 4;
    /// The names under `name` (a prefix).
    pub const LIST: u32 = 5;
    pub const DELETE: u32 = 6;
}

/// One request on an objects session. A put's data larger than a frame
/// comes in several requests of the same op and name, all but the last
/// with `more` set; only the last is answered.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ObjectOp {
    #[prost(uint32, tag = "1")]
    pub op: u32,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(uint64, tag = "3")]
    pub start: u64,
    #[prost(uint64, tag = "4")]
    pub end: u64,
    #[prost(bytes = "vec", tag = "5")]
    pub data: Vec<u8>,
    #[prost(bool, tag = "6")]
    pub more: bool,
}

/// The answer to an object request, in parts when it is larger than a
/// frame (all but the last with `more` set).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ObjectReply {
    /// The object was there (a get), or was written (a put_new).
    #[prost(bool, tag = "1")]
    pub found: bool,
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
    #[prost(bool, tag = "3")]
    pub more: bool,
    #[prost(string, repeated, tag = "4")]
    pub names: Vec<String>,
    /// What went wrong where the objects are kept (the session goes on).
    #[prost(string, tag = "5")]
    pub error: String,
    /// For a list: when each of `names` was written, by the keeper's
    /// clock (milliseconds since the epoch).
    #[prost(uint64, repeated, tag = "6")]
    pub times: Vec<u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WireOp {
    #[prost(uint32, tag = "1")]
    pub kind: u32,
    #[prost(message, optional, tag = "2")]
    pub target: Option<WireEntry>,
    /// The operation acts on what the replica's index holds at the path
    /// (false: on nothing, e.g. after a removal of another kind of object).
    #[prost(bool, tag = "3")]
    pub on_current: bool,
    /// For a file: the root node of its content's chunk tree, when the
    /// coordinator sends it along (small files), so that the server need
    /// not ask for it. Empty when not sent; a server that does not know
    /// this field asks, as before. Verified against the content id.
    #[prost(bytes = "vec", tag = "4")]
    pub root: Vec<u8>,
}

/// Coordinator → server: operations to carry out (more may follow until Run).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ops {
    #[prost(message, repeated, tag = "1")]
    pub ops: Vec<WireOp>,
}

/// Coordinator → server: carry out the operations sent. The server may ask
/// for tree nodes and chunks (ChunkRequest) while it works; it answers with
/// the done entries (IndexBatch, seq = operation index), issues, Applied.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Run {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Applied {
    #[prost(uint64, tag = "1")]
    pub bytes_local: u64,
    #[prost(uint64, tag = "2")]
    pub bytes_remote: u64,
    #[prost(uint64, tag = "3")]
    pub seq: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Finish {
    #[prost(uint64, tag = "1")]
    pub observe: u64,
    #[prost(message, repeated, tag = "2")]
    pub peers: Vec<VvPair>,
    #[prost(uint64, optional, tag = "3")]
    pub integrated_fingerprint: Option<u64>,
    /// The replicas on which nothing failed but what their own rules
    /// refused (meaningful when `through_said`; older coordinators send
    /// neither).
    #[prost(uint64, repeated, tag = "4")]
    pub went_through: Vec<u64>,
    #[prost(bool, tag = "5")]
    pub through_said: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Finished {}
