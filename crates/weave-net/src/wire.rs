//! What both ends of a session share: conversions between weave's types
//! and wire messages, and pipelined requests for tree nodes and chunks.

use crate::conn::Conn;
use std::collections::HashMap;
use weave_core::{Entry, Hash, ReplicaId};
use weave_engine::{SyncError, Wants};
use weave_fs::OpKind;
use weave_proto::msg::{Body, ChunkRequest, Envelope, IndexBatch, VvPair, WireEntry};
use weave_proto::validate::{chunk_from_wire, entry_to_wire, payload_from_wire};
use weave_proto::ProtoError;

/// Hashes per request, and requests in flight: at most about
/// 64 × 64 × 64 KiB are under way at once, usually 64 × 64 × 16 KiB.
pub const PER_REQUEST: usize = 64;
pub const WINDOW: usize = 64;
/// Bytes of entries per message (well under the frame limit).
const BATCH_BYTES: usize = 256 * 1024;

pub fn proto(e: ProtoError) -> SyncError {
    SyncError::Remote(e.to_string())
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
            }))?;
            bytes = 0;
        }
    }
    conn.send(Body::IndexBatch(IndexBatch {
        entries: batch,
        up_to_seq: 0,
        last: true,
    }))
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
    let peer = conn.peer().to_string();
    for k in 0..pieces.len() {
        while sent < pieces.len() && sent < k + WINDOW {
            let (w, piece) = pieces[sent];
            conn.send(Body::ChunkRequest(ChunkRequest {
                id: sent as u64,
                hashes: piece.iter().map(|h| h.0.to_vec()).collect(),
                content: wants[w].0 .0.to_vec(),
                nodes,
            }))
            .map_err(proto)?;
            sent += 1;
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
                Some(Body::Error(e)) => {
                    return Err(SyncError::Remote(format!("{peer}: {}", e.message)))
                }
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
