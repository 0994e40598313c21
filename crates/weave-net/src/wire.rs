//! What both ends of a session share: conversions between weave's types
//! and wire messages, and pipelined requests for tree nodes and chunks.

use crate::conn::Conn;
use crate::error::SessionError;
use std::collections::HashMap;
use weave_core::OpKind;
use weave_core::{Entry, Hash, ReplicaId};
use weave_engine::{SyncError, Wants};
use weave_proto::msg::{Body, ChunkRequest, Envelope, IndexBatch, VvPair, WireEntry};
use weave_proto::validate::{
    chunk_from_wire, chunk_to_wire, entry_to_wire, hash_from_wire, payload_from_wire,
    request_from_wire,
};
use weave_proto::ProtoError;

/// Hashes per request, and hashes in flight (asked for, not yet all
/// received): at most about 64 × 64 × 64 KiB are under way at once,
/// usually 64 × 64 × 16 KiB. The window counts hashes, not requests: a
/// request for a small file's single chunk takes one place in it, so
/// thousands of small files keep as much data under way as a large one
/// (a window of 64 requests held only 64 small chunks in flight, and a
/// first copy of many small files ran at the pace of round trips).
pub const PER_REQUEST: usize = 64;
pub const WINDOW: usize = 64 * PER_REQUEST;
/// Chunks answered to requests that arrived together are queued at most
/// this many at a time (one request's worth, 64 small files' chunks),
/// by either end of a session.
pub const REPLY_MAX: usize = PER_REQUEST;
/// Bytes of entries, or of operations, per message (well under the
/// frame limit).
pub const BATCH_BYTES: usize = 256 * 1024;

pub fn proto(e: ProtoError) -> SyncError {
    SessionError::Proto(e).into()
}

pub fn op_kind_to_wire(k: OpKind) -> u32 {
    match k {
        OpKind::Remove => 1,
        OpKind::MakeDir => 2,
        OpKind::WriteFile => 3,
        OpKind::WriteSymlink => 4,
        OpKind::SetMeta => 5,
        OpKind::Record => 6,
    }
}

pub fn op_kind_from_wire(k: u32) -> Option<OpKind> {
    Some(match k {
        1 => OpKind::Remove,
        2 => OpKind::MakeDir,
        3 => OpKind::WriteFile,
        4 => OpKind::WriteSymlink,
        5 => OpKind::SetMeta,
        6 => OpKind::Record,
        _ => return None,
    })
}

pub fn pairs_to_wire(p: impl IntoIterator<Item = (ReplicaId, u64)>) -> Vec<VvPair> {
    p.into_iter()
        .map(|(r, c)| VvPair {
            replica: r.0,
            counter: c,
        })
        .collect()
}

/// Sends entries (with a number each: a sequence number or an operation
/// index) in messages of bounded size, the last one marked.
pub fn send_entries<'a>(
    conn: &Conn,
    entries: impl IntoIterator<Item = (&'a Entry, u64)>,
) -> Result<(), ProtoError> {
    send_page(conn, entries, None)
}

/// Sends entries in batches as [`send_entries`] does, the last batch
/// marked with where the page they are ends (`page_end`).
pub fn send_page<'a>(
    conn: &Conn,
    entries: impl IntoIterator<Item = (&'a Entry, u64)>,
    page_end: Option<String>,
) -> Result<(), ProtoError> {
    let mut batch: Vec<WireEntry> = Vec::new();
    let mut bytes = 0usize;
    for (e, n) in entries {
        let w = entry_to_wire(e, n);
        bytes += prost::Message::encoded_len(&w) + 8;
        batch.push(w);
        if bytes >= BATCH_BYTES || batch.len() >= weave_proto::limits::MAX_ENTRIES {
            conn.send(Body::IndexBatch(IndexBatch {
                entries: std::mem::take(&mut batch),
                up_to_seq: 0,
                last: false,
                done_ops: Vec::new(),
                page_end: None,
            }))?;
            bytes = 0;
        }
    }
    conn.send(Body::IndexBatch(IndexBatch {
        entries: batch,
        up_to_seq: 0,
        last: true,
        done_ops: Vec::new(),
        page_end,
    }))
}

/// The capability of a server that answers `GetEntriesAt` (entries by
/// path, for an incremental sync).
pub const ENTRIES_AT: &str = "entries-at";

/// The capability of a server that answers `GetEntriesFrom` (a page of
/// the index, for a sync planned a slice at a time).
pub const ENTRIES_FROM: &str = "entries-from";

/// Paths per `GetEntriesAt` part, and bytes of them: well under the frame
/// limit.
pub const NAMES_PER_PART: usize = weave_proto::limits::MAX_ENTRIES;
const NAME_BYTES_PER_PART: usize = 512 * 1024;

/// Asks for the entries at `paths` and inside `subtrees`, in parts.
pub fn ask_entries_at(
    conn: &Conn,
    paths: &[String],
    subtrees: &[String],
) -> Result<(), ProtoError> {
    let mut part = weave_proto::msg::GetEntriesAt::default();
    let mut bytes = 0;
    let names = paths
        .iter()
        .map(|p| (p, false))
        .chain(subtrees.iter().map(|d| (d, true)));
    for (name, subtree) in names {
        if part.paths.len() + part.subtrees.len() >= NAMES_PER_PART || bytes >= NAME_BYTES_PER_PART
        {
            conn.send(Body::GetEntriesAt(std::mem::take(&mut part)))?;
            bytes = 0;
        }
        bytes += name.len() + 4;
        match subtree {
            true => part.subtrees.push(name.clone()),
            false => part.paths.push(name.clone()),
        }
    }
    part.last = true;
    conn.send(Body::GetEntriesAt(part))
}

/// The capability of a coordinator that takes the operations a server
/// carried out exactly as sent by their index ([`send_done_ops`]).
pub const DONE_OPS: &str = "done-ops";

/// Operation indices per message of [`send_done_ops`] (at most about
/// 10 bytes each: well under the frame limit).
const DONE_OPS_PER_BATCH: usize = 64 * 1024;

/// Tells the coordinator which operations were carried out exactly as
/// sent, by index (their entries are not sent back).
pub fn send_done_ops(conn: &Conn, ops: &[u64]) -> Result<(), ProtoError> {
    for part in ops.chunks(DONE_OPS_PER_BATCH) {
        conn.send(Body::IndexBatch(IndexBatch {
            done_ops: part.to_vec(),
            ..Default::default()
        }))?;
    }
    Ok(())
}

/// The content a chunk request is for and the hashes it asks for,
/// checked.
pub fn request_wants(r: &ChunkRequest, peer: &str) -> Result<[(Hash, Vec<Hash>); 1], ProtoError> {
    let hashes = request_from_wire(r, peer)?;
    let content = hash_from_wire(&r.content, "a content id", peer)?;
    Ok([(content, hashes)])
}

/// Queues the answer to a request for the tree nodes `wants` (of one
/// content), `got` being what was found of them.
pub fn reply_nodes(wants: &Wants, got: Vec<Vec<Option<Vec<u8>>>>, reply: &mut Vec<Body>) {
    for (h, n) in wants[0]
        .1
        .iter()
        .zip(got.into_iter().next().unwrap_or_default())
    {
        let (c, _) = chunk_to_wire(h, n.as_deref(), false);
        reply.push(Body::ChunkData(c));
    }
}

/// Sends the answers queued in `reply` once there are [`REPLY_MAX`].
pub fn send_if_full(conn: &Conn, reply: &mut Vec<Body>) -> Result<(), ProtoError> {
    if reply.len() >= REPLY_MAX {
        conn.send_paced(std::mem::take(reply))?;
    }
    Ok(())
}

/// Asks the peer for tree nodes (`nodes`) or chunks of each content, many
/// requests in flight, and hands every answer to `got` (want index, hash,
/// data or None when the peer does not have it). Chunks are verified
/// against their hashes here (I-3); tree nodes by the caller. Any other
/// message is an error, except those `other` accepts.
pub fn request(
    conn: &Conn,
    wants: &Wants,
    nodes: bool,
    got: &mut dyn FnMut(usize, Hash, Option<Vec<u8>>) -> Result<(), SyncError>,
    other: &mut dyn FnMut(Envelope) -> Result<bool, SyncError>,
) -> Result<(), SyncError> {
    // (want index, hashes) per request, in order.
    let mut pieces: Vec<(usize, &[Hash])> = Vec::new();
    for (w, (_, hashes)) in wants.iter().enumerate() {
        for piece in hashes.chunks(PER_REQUEST) {
            pieces.push((w, piece));
        }
    }
    let mut sent = 0usize;
    // Hashes of the requests sent and not yet wholly answered.
    let mut in_flight = 0usize;
    let peer = conn.peer().to_string();
    for k in 0..pieces.len() {
        // The window is refilled once half of it was answered, with one
        // write: a request per answer would cost the peer (and every
        // process between, ssh and sshd) a wake-up for each small file.
        if sent == k || in_flight <= WINDOW / 2 {
            let mut batch = Vec::new();
            while sent < pieces.len() && (sent == k || in_flight + pieces[sent].1.len() <= WINDOW) {
                let (w, piece) = pieces[sent];
                in_flight += piece.len();
                batch.push(Body::ChunkRequest(ChunkRequest {
                    id: sent as u64,
                    hashes: piece.iter().map(|h| h.0.to_vec()).collect(),
                    content: wants[w].0 .0.to_vec(),
                    nodes,
                }));
                sent += 1;
            }
            conn.send_all(batch).map_err(proto)?;
        }
        let (w, piece) = pieces[k];
        let mut left: HashMap<Hash, usize> = HashMap::new();
        for h in piece {
            *left.entry(*h).or_default() += 1;
        }
        let mut n = piece.len();
        while n > 0 {
            let m = conn.recv().map_err(proto)?;
            match m.body {
                Some(Body::ChunkData(c)) => {
                    let (h, data) = if nodes {
                        payload_from_wire(c, &peer)
                    } else {
                        chunk_from_wire(c, &peer)
                    }
                    .map_err(proto)?;
                    match left.get_mut(&h) {
                        Some(k) if *k > 0 => *k -= 1,
                        _ => {
                            return Err(proto(ProtoError::Invalid {
                                peer: peer.clone(),
                                detail: format!("chunk {} that was not asked for", h.short_hex()),
                            }))
                        }
                    }
                    n -= 1;
                    got(w, h, data)?;
                }
                Some(Body::Error(e)) => return Err(SessionError::from_peer(&peer, e).into()),
                _ => {
                    let name = m
                        .body
                        .as_ref()
                        .map(|b| b.name())
                        .unwrap_or("an unknown message");
                    if !other(m)? {
                        return Err(proto(ProtoError::Unexpected {
                            peer: peer.clone(),
                            got: name,
                            expected: "chunk data",
                        }));
                    }
                }
            }
        }
        in_flight -= piece.len();
    }
    Ok(())
}

/// Tree nodes through [`request`], in the shape the engine wants.
pub fn request_nodes(
    conn: &Conn,
    wants: &Wants,
    other: &mut dyn FnMut(Envelope) -> Result<bool, SyncError>,
) -> Result<Vec<Vec<Option<Vec<u8>>>>, SyncError> {
    let mut out: Vec<Vec<Option<Vec<u8>>>> =
        wants.iter().map(|(_, h)| vec![None; h.len()]).collect();
    request(
        conn,
        wants,
        true,
        &mut |w, h, data| {
            if let Some(pos) = wants[w]
                .1
                .iter()
                .zip(&out[w])
                .position(|(x, slot)| *x == h && slot.is_none())
            {
                out[w][pos] = data;
            }
            Ok(())
        },
        other,
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use weave_proto::msg::ChunkData;

    /// `n` one-chunk contents (small files): the chunk of content `i` is
    /// `i` as 4 bytes, and is the content's id.
    fn small_contents(n: usize) -> Vec<(Hash, Vec<Hash>)> {
        (0..n as u32)
            .map(|i| {
                let h = Hash::of(&i.to_be_bytes());
                (h, vec![h])
            })
            .collect()
    }

    /// The data of [`small_contents`]' chunks, by hash.
    fn chunks_by_hash(n: usize) -> HashMap<Vec<u8>, Vec<u8>> {
        (0..n as u32)
            .map(|i| {
                (
                    Hash::of(&i.to_be_bytes()).0.to_vec(),
                    i.to_be_bytes().to_vec(),
                )
            })
            .collect()
    }

    fn answer(h: Vec<u8>, by_hash: &HashMap<Vec<u8>, Vec<u8>>) -> Body {
        let data = by_hash[&h].clone();
        Body::ChunkData(ChunkData {
            hash: h,
            data,
            ..Default::default()
        })
    }

    /// Asks for all of [`small_contents`] through `near`; the chunks that
    /// came, each checked to be the one asked for.
    fn fetch_all(near: &Conn, n: usize) -> usize {
        let wants = small_contents(n);
        let mut seen = 0usize;
        request(
            near,
            &wants,
            false,
            &mut |w, h, data| {
                assert_eq!(wants[w].0, h);
                assert_eq!(data.unwrap(), (w as u32).to_be_bytes());
                seen += 1;
                Ok(())
            },
            &mut |_| Ok(false),
        )
        .unwrap();
        seen
    }

    /// Many one-chunk requests (a tree of small files) are all under way
    /// before the first answer: the peer here answers nothing until it has
    /// every request, so a window that counted requests would never end.
    #[test]
    fn small_requests_fill_the_window_by_hashes() {
        let n = 1000usize;
        assert!(n <= WINDOW);
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let near = Conn::over_unix(a, "near", None).unwrap();
        let peer = std::thread::spawn(move || {
            let far = Conn::over_unix(b, "far", None).unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut got = Vec::new();
            while got.len() < n {
                assert!(
                    Instant::now() < deadline,
                    "only {} requests arrived",
                    got.len()
                );
                match far.try_recv() {
                    Some(Ok(m)) => match m.body {
                        Some(Body::ChunkRequest(r)) => got.extend(r.hashes),
                        other => panic!("unexpected {other:?}"),
                    },
                    Some(Err(e)) => panic!("{e}"),
                    None => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            let by_hash = chunks_by_hash(n);
            let answers = got.into_iter().map(|h| answer(h, &by_hash)).collect();
            far.send_all(answers).unwrap();
            far
        });
        assert_eq!(fetch_all(&near, n), n);
        drop(peer.join().unwrap());
    }

    /// Counts the writes that reach the stream.
    struct Counted<W>(W, Arc<AtomicUsize>);

    impl<W: std::io::Write> std::io::Write for Counted<W> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0.write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.0.flush()
        }
    }

    /// Requests for many small files leave in a few large writes, however
    /// the answers trickle in: the window is refilled by halves, not one
    /// request per answer.
    #[test]
    fn requests_leave_in_few_writes_while_answers_trickle_in() {
        let n = 5 * WINDOW;
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let writes = Arc::new(AtomicUsize::new(0));
        let near = Conn::new(
            a.try_clone().unwrap(),
            Counted(a, writes.clone()),
            "near",
            None,
        );
        let peer = std::thread::spawn(move || {
            let far = Conn::over_unix(b, "far", None).unwrap();
            let by_hash = chunks_by_hash(n);
            let mut answered = 0;
            while answered < n {
                let Some(Body::ChunkRequest(r)) = far.recv().unwrap().body else {
                    panic!("not a request");
                };
                // One answer at a time, each on its own.
                for h in r.hashes {
                    far.send(answer(h, &by_hash)).unwrap();
                    answered += 1;
                }
            }
            far
        });
        assert_eq!(fetch_all(&near, n), n);
        let w = writes.load(Ordering::Relaxed);
        assert!(w <= 40, "{n} requests took {w} writes");
        drop(peer.join().unwrap());
    }
}
