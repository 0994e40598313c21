//! From wire messages to weave's types, checked (I-6). Nothing a peer sent
//! is used before it passed through here.

use crate::limits::{MAX_ENTRIES, MAX_HASHES, MAX_PATH, MAX_VV};
use crate::msg::{
    ChunkData, ChunkRequest, IndexBatch, Kind, VvPair, WireEntry, WireOwner, WireXattr,
};
use crate::ProtoError;
use weave_core::{Entry, Hash, Meta, Object, Owner, ReplicaId, VersionVector, Xattr};

fn invalid(peer: &str, detail: impl Into<String>) -> ProtoError {
    ProtoError::Invalid {
        peer: peer.into(),
        detail: detail.into(),
    }
}

fn hash(bytes: &[u8], what: &str, peer: &str) -> Result<Hash, ProtoError> {
    <[u8; 32]>::try_from(bytes)
        .map(Hash)
        .map_err(|_| invalid(peer, format!("{what} is {} bytes, not 32", bytes.len())))
}

/// An entry as it travels, with the sender's sequence number.
pub fn entry_to_wire(e: &Entry, seq: u64) -> WireEntry {
    let (kind, size, content, target) = match &e.object {
        Object::File { size, content } => (Kind::File, *size, content.0.to_vec(), String::new()),
        Object::Dir => (Kind::Dir, 0, Vec::new(), String::new()),
        Object::Symlink { target } => (Kind::Symlink, 0, Vec::new(), target.clone()),
        Object::Deleted => (Kind::Deleted, 0, Vec::new(), String::new()),
    };
    WireEntry {
        path: e.path.clone(),
        kind: kind as i32,
        size,
        content,
        target,
        mode: e.mode,
        mtime_ns: e.mtime_ns,
        vv: e
            .vv
            .pairs()
            .iter()
            .map(|(r, c)| VvPair {
                replica: r.0,
                counter: *c,
            })
            .collect(),
        origin: e.origin.0,
        seq,
        owner: e
            .meta
            .as_ref()
            .and_then(|m| m.owner.as_ref())
            .map(|o| WireOwner {
                uid: o.uid,
                gid: o.gid,
                user: o.user.clone(),
                group: o.group.clone(),
            }),
        xattrs: e
            .meta
            .iter()
            .flat_map(|m| &m.xattrs)
            .map(|x| WireXattr {
                name: x.name.clone(),
                value: x.value.clone(),
            })
            .collect(),
        link: e.meta.as_ref().and_then(|m| m.link.clone()),
    }
}

/// A received entry's owner, extended attributes and hard link, checked
/// (I-6).
fn meta_from_wire(
    (owner, xattrs, link): (Option<WireOwner>, Vec<WireXattr>, Option<String>),
    peer: &str,
    p: &str,
) -> Result<Option<Box<Meta>>, ProtoError> {
    if xattrs.len() > weave_core::meta::XATTRS_MAX {
        return Err(invalid(
            peer,
            format!("{} extended attributes on {p:?}", xattrs.len()),
        ));
    }
    let meta = Meta {
        owner: owner.map(|o| Owner {
            uid: o.uid,
            gid: o.gid,
            user: o.user,
            group: o.group,
        }),
        xattrs: xattrs
            .into_iter()
            .map(|x| Xattr {
                name: x.name,
                value: x.value,
            })
            .collect(),
        link,
    };
    meta.validate()
        .map_err(|e| invalid(peer, format!("{e}, on {p:?}")))?;
    Ok(meta.boxed())
}

/// A received entry, checked: a relative, normalized path outside any
/// `.weave`; a consistent object; permission bits only; a bounded,
/// well-formed version vector.
pub fn entry_from_wire(w: WireEntry, peer: &str) -> Result<(Entry, u64), ProtoError> {
    if w.path.len() > MAX_PATH {
        return Err(invalid(peer, format!("a path of {} bytes", w.path.len())));
    }
    weave_core::path::validate(&w.path).map_err(|e| invalid(peer, e.to_string()))?;
    let p = &w.path;
    if w.mode & !0o777 != 0 {
        return Err(invalid(
            peer,
            format!(
                "mode {:o} on {p:?} (only permission bits are synced)",
                w.mode
            ),
        ));
    }
    let kind = Kind::try_from(w.kind).unwrap_or(Kind::Unknown);
    let only_file_fields = |ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(invalid(
                peer,
                format!("{p:?} carries fields that do not belong to its kind"),
            ))
        }
    };
    let object = match kind {
        Kind::File => {
            only_file_fields(w.target.is_empty())?;
            Object::File {
                size: w.size,
                content: hash(&w.content, "a content id", peer)?,
            }
        }
        Kind::Dir => {
            only_file_fields(w.size == 0 && w.content.is_empty() && w.target.is_empty())?;
            Object::Dir
        }
        Kind::Symlink => {
            only_file_fields(w.size == 0 && w.content.is_empty())?;
            if w.target.is_empty() || w.target.len() > MAX_PATH || w.target.contains('\0') {
                return Err(invalid(peer, format!("a bad symlink target on {p:?}")));
            }
            Object::Symlink { target: w.target }
        }
        Kind::Deleted => {
            only_file_fields(
                w.size == 0 && w.content.is_empty() && w.target.is_empty() && w.mode == 0,
            )?;
            Object::Deleted
        }
        Kind::Unknown => {
            return Err(invalid(
                peer,
                format!("an entry of unknown kind {} for {p:?}", w.kind),
            ))
        }
    };
    // A tombstone may claim no version: what a backup records where no
    // source holds anything.
    let no_version_ok = matches!(object, Object::Deleted);
    if (w.vv.is_empty() && !no_version_ok) || w.vv.len() > MAX_VV {
        return Err(invalid(
            peer,
            format!("a version vector of {} replicas on {p:?}", w.vv.len()),
        ));
    }
    let mut pairs: Vec<(ReplicaId, u64)> = Vec::with_capacity(w.vv.len());
    for v in &w.vv {
        if v.counter == 0 || pairs.iter().any(|(r, _)| r.0 == v.replica) {
            return Err(invalid(
                peer,
                format!("a malformed version vector on {p:?}"),
            ));
        }
        pairs.push((ReplicaId(v.replica), v.counter));
    }
    let meta = meta_from_wire((w.owner, w.xattrs, w.link), peer, p)?;
    Ok((
        Entry {
            path: w.path,
            object,
            mode: w.mode,
            mtime_ns: w.mtime_ns,
            vv: VersionVector::from_pairs(pairs),
            origin: ReplicaId(w.origin),
            meta,
        },
        w.seq,
    ))
}

/// A received index batch, checked.
#[derive(Debug)]
pub struct Batch {
    /// Entries with the sender's sequence numbers.
    pub entries: Vec<(Entry, u64)>,
    /// The sender's sequence number this exchange covers up to.
    pub up_to_seq: u64,
    /// No more batches follow.
    pub last: bool,
    /// In answer to a page request: where the page ends (see
    /// [`crate::msg::IndexBatch::page_end`]).
    pub page_end: Option<String>,
}

/// A received index batch, every entry checked. A batch with one bad
/// entry is refused whole.
/// Checks the names a [`GetEntriesAt`](crate::msg::GetEntriesAt) asks
/// for: at most [`MAX_ENTRIES`] of them, each
/// a valid relative path ("" allowed for a subtree: the whole tree).
pub fn names_from_wire(g: &crate::msg::GetEntriesAt, peer: &str) -> Result<(), ProtoError> {
    if g.paths.len() + g.subtrees.len() > crate::limits::MAX_ENTRIES {
        return Err(invalid(
            peer,
            format!(
                "a request for {} paths in one message",
                g.paths.len() + g.subtrees.len()
            ),
        ));
    }
    for p in g
        .paths
        .iter()
        .chain(g.subtrees.iter().filter(|d| !d.is_empty()))
    {
        path_from_wire(p, peer)?;
    }
    Ok(())
}

pub fn batch_from_wire(b: IndexBatch, peer: &str) -> Result<Batch, ProtoError> {
    if b.entries.len() > MAX_ENTRIES {
        return Err(invalid(
            peer,
            format!("{} entries in one batch", b.entries.len()),
        ));
    }
    let entries = b
        .entries
        .into_iter()
        .map(|w| entry_from_wire(w, peer))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(p) = &b.page_end {
        path_from_wire(p, peer)?;
    }
    Ok(Batch {
        entries,
        up_to_seq: b.up_to_seq,
        last: b.last,
        page_end: b.page_end,
    })
}

fn path_from_wire(p: &str, peer: &str) -> Result<(), ProtoError> {
    if p.len() > MAX_PATH {
        return Err(invalid(peer, format!("a path of {} bytes", p.len())));
    }
    weave_core::path::validate(p).map_err(|e| invalid(peer, e.to_string()))
}

/// Checks a request for a page of the index: a valid path to start after
/// and between 1 and [`crate::limits::MAX_PAGE`] paths.
pub fn page_request_from_wire(
    g: &crate::msg::GetEntriesFrom,
    peer: &str,
) -> Result<(Option<String>, usize), ProtoError> {
    let limit = g.limit as usize;
    if limit == 0 || limit > crate::limits::MAX_PAGE {
        return Err(invalid(peer, format!("a page of {limit} paths asked for")));
    }
    if let Some(a) = &g.after {
        path_from_wire(a, peer)?;
    }
    Ok((g.after.clone(), limit))
}

/// The hashes of a chunk request, checked.
pub fn request_from_wire(r: &ChunkRequest, peer: &str) -> Result<Vec<Hash>, ProtoError> {
    if r.hashes.len() > MAX_HASHES {
        return Err(invalid(
            peer,
            format!("{} chunks asked for at once", r.hashes.len()),
        ));
    }
    r.hashes
        .iter()
        .map(|h| hash(h, "a chunk hash", peer))
        .collect()
}

/// A received chunk or tree node, decompressed (within the chunk size
/// limit) but not yet verified: None if the sender said it does not have it.
pub fn payload_from_wire(c: ChunkData, peer: &str) -> Result<(Hash, Option<Vec<u8>>), ProtoError> {
    let h = hash(&c.hash, "a chunk hash", peer)?;
    if c.missing {
        return Ok((h, None));
    }
    let limit = weave_chunk::CHUNK_MAX as usize;
    if c.data.len() > limit + 1024 {
        return Err(invalid(peer, format!("a chunk of {} bytes", c.data.len())));
    }
    let data = if c.zstd {
        zstd::bulk::decompress(&c.data, limit).map_err(|_| {
            invalid(
                peer,
                format!(
                    "chunk {} that does not decompress within {limit} bytes",
                    h.short_hex()
                ),
            )
        })?
    } else {
        c.data
    };
    if data.len() > limit {
        return Err(invalid(peer, format!("a chunk of {} bytes", data.len())));
    }
    Ok((h, Some(data)))
}

/// A received chunk: None if the sender said it does not have it; else the
/// data, verified against its hash (I-3) — a chunk that does not match is
/// a protocol error, never written anywhere.
pub fn chunk_from_wire(c: ChunkData, peer: &str) -> Result<(Hash, Option<Vec<u8>>), ProtoError> {
    let (h, data) = payload_from_wire(c, peer)?;
    if let Some(d) = &data {
        if !weave_chunk::verify(d, &h) {
            return Err(invalid(
                peer,
                format!("chunk {} whose bytes do not match its hash", h.short_hex()),
            ));
        }
    }
    Ok((h, data))
}

/// A chunk as it travels: compressed with zstd when `compress` is set and
/// that makes it at least 1/16 smaller. Returns whether it was compressed.
pub fn chunk_to_wire(h: &Hash, data: Option<&[u8]>, compress: bool) -> (ChunkData, bool) {
    ChunkPacker::default().pack(h, data.map(|d| d.to_vec()), compress)
}

/// Packs chunks for the wire as [`chunk_to_wire`] does, keeping one zstd
/// context for all of them and taking the data without copying it.
#[derive(Default)]
pub struct ChunkPacker {
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl ChunkPacker {
    pub fn pack(&mut self, h: &Hash, data: Option<Vec<u8>>, compress: bool) -> (ChunkData, bool) {
        let mut c = ChunkData {
            id: 0,
            hash: h.0.to_vec(),
            data: Vec::new(),
            missing: data.is_none(),
            zstd: false,
        };
        let Some(d) = data else {
            return (c, false);
        };
        if compress && d.len() >= 512 {
            if self.zstd.is_none() {
                self.zstd = zstd::bulk::Compressor::new(1).ok();
            }
            if let Some(Ok(z)) = self.zstd.as_mut().map(|z| z.compress(&d)) {
                if z.len() < d.len() - d.len() / 16 {
                    c.data = z;
                    c.zstd = true;
                    return (c, true);
                }
            }
        }
        c.data = d;
        (c, false)
    }
}

/// A content id or tree-node hash from a request.
pub fn hash_from_wire(bytes: &[u8], what: &str, peer: &str) -> Result<Hash, ProtoError> {
    hash(bytes, what, peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> Entry {
        Entry {
            path: path.into(),
            object: Object::File {
                size: 5,
                content: Hash([7; 32]),
            },
            mode: 0o644,
            mtime_ns: -5,
            vv: VersionVector::from_pairs(vec![(ReplicaId(3), 9), (ReplicaId(1), 2)]),
            origin: ReplicaId(3),
            meta: None,
        }
    }

    #[test]
    fn entries_roundtrip() {
        for e in [
            file("a/b.txt"),
            Entry {
                object: Object::Symlink {
                    target: "../x".into(),
                },
                mode: 0,
                ..file("l")
            },
            Entry {
                object: Object::Dir,
                mode: 0o755,
                ..file("d")
            },
            Entry {
                object: Object::Deleted,
                mode: 0,
                ..file("gone")
            },
            Entry {
                object: Object::Deleted,
                mode: 0,
                vv: VersionVector::new(),
                ..file("never-held")
            },
            Entry {
                meta: Some(Box::new(Meta {
                    owner: Some(Owner {
                        uid: 1000,
                        gid: 100,
                        user: Some("ann".into()),
                        group: None,
                    }),
                    xattrs: vec![Xattr {
                        name: "user.color".into(),
                        value: b"blue\0".to_vec(),
                    }],
                    link: Some("first".into()),
                })),
                ..file("with-meta")
            },
        ] {
            let (back, seq) = entry_from_wire(entry_to_wire(&e, 42), "p").unwrap();
            assert_eq!(back, e);
            assert_eq!(seq, 42);
        }
    }

    #[test]
    fn hostile_paths_are_refused() {
        for p in [
            "../escape",
            "/etc/passwd",
            "a/../../b",
            ".weave/index.redb",
            "x/.weave/y",
            "",
            "a//b",
            "a/./b",
        ] {
            let mut w = entry_to_wire(&file("ok"), 1);
            w.path = p.into();
            let e = entry_from_wire(w, "mallory").unwrap_err();
            assert!(matches!(e, ProtoError::Invalid { .. }), "{p}: {e}");
            assert!(e.to_string().contains("mallory"));
        }
    }

    fn xattr(name: &str, len: usize) -> WireXattr {
        WireXattr {
            name: name.into(),
            value: vec![7; len],
        }
    }

    #[test]
    fn inconsistent_entries_are_refused() {
        let ok = entry_to_wire(&file("f"), 1);
        type Mutation = Box<dyn Fn(&mut WireEntry)>;
        let cases: Vec<Mutation> = vec![
            Box::new(|w| w.content = vec![1; 31]),
            Box::new(|w| w.kind = 99),
            Box::new(|w| w.mode = 0o4755),
            Box::new(|w| w.vv.clear()),
            Box::new(|w| w.vv[0].counter = 0),
            Box::new(|w| {
                let dup = w.vv[0].clone();
                w.vv.push(dup)
            }),
            Box::new(|w| {
                w.kind = Kind::Dir as i32;
            }),
            Box::new(|w| {
                w.kind = Kind::Symlink as i32;
                w.size = 0;
                w.content.clear();
            }),
            // Hostile extended attributes: huge, unnamed, unsorted, too many.
            Box::new(|w| w.xattrs = vec![xattr("user.big", 70_000)]),
            Box::new(|w| w.xattrs = vec![xattr("", 1)]),
            Box::new(|w| w.xattrs = vec![xattr("user.b", 1), xattr("user.a", 1)]),
            Box::new(|w| {
                w.xattrs = (0..2000)
                    .map(|i| xattr(&format!("user.{i:05}"), 0))
                    .collect()
            }),
            Box::new(|w| {
                w.owner = Some(WireOwner {
                    uid: 0,
                    gid: 0,
                    user: Some("x".repeat(300)),
                    group: None,
                })
            }),
        ];
        for (i, mutate) in cases.iter().enumerate() {
            let mut w = ok.clone();
            mutate(&mut w);
            assert!(entry_from_wire(w, "p").is_err(), "case {i} accepted");
        }
    }

    #[test]
    fn chunks_are_verified() {
        let data = b"chunk bytes".to_vec();
        let h = Hash::of(&data);
        let good = ChunkData {
            zstd: false,
            id: 1,
            hash: h.0.to_vec(),
            data: data.clone(),
            missing: false,
        };
        assert_eq!(chunk_from_wire(good.clone(), "p").unwrap(), (h, Some(data)));
        let mut bad = good.clone();
        bad.data[0] ^= 1;
        assert!(matches!(
            chunk_from_wire(bad, "p"),
            Err(ProtoError::Invalid { .. })
        ));
        let mut big = good;
        big.data = vec![0; weave_chunk::CHUNK_MAX as usize + 1];
        assert!(chunk_from_wire(big, "p").is_err());
        // Compressed: round-trips, and a bomb is refused.
        let text = vec![b'a'; 60_000];
        let (w, packed) = chunk_to_wire(&Hash::of(&text), Some(&text), true);
        assert!(packed && w.data.len() < 1000);
        assert_eq!(chunk_from_wire(w, "p").unwrap().1.unwrap(), text);
        let bomb = vec![0u8; 10 << 20];
        let z = zstd::bulk::compress(&bomb, 1).unwrap();
        let w = ChunkData {
            hash: Hash::of(&bomb).0.to_vec(),
            data: z,
            zstd: true,
            ..Default::default()
        };
        assert!(chunk_from_wire(w, "p").is_err());
    }

    #[test]
    fn batches_and_requests_are_bounded() {
        let b = IndexBatch {
            entries: vec![entry_to_wire(&file("f"), 1); MAX_ENTRIES + 1],
            up_to_seq: 1,
            last: true,
            ..Default::default()
        };
        assert!(batch_from_wire(b, "p").is_err());
        let r = ChunkRequest {
            id: 1,
            hashes: vec![vec![0; 32]; MAX_HASHES + 1],
            ..Default::default()
        };
        assert!(request_from_wire(&r, "p").is_err());
    }

    #[test]
    fn a_page_request_and_where_a_page_ends_are_checked() {
        use crate::msg::GetEntriesFrom;
        let ok = GetEntriesFrom {
            after: Some("a/b".into()),
            limit: 10,
        };
        assert_eq!(
            page_request_from_wire(&ok, "p").unwrap(),
            (Some("a/b".to_string()), 10)
        );
        let too_many = crate::limits::MAX_PAGE as u32 + 1;
        for (after, limit) in [(None, 0), (None, too_many), (Some("../x".to_string()), 1)] {
            let bad = GetEntriesFrom { after, limit };
            assert!(page_request_from_wire(&bad, "p").is_err(), "{bad:?}");
        }
        let batch = |end: &str| IndexBatch {
            last: true,
            page_end: Some(end.into()),
            ..Default::default()
        };
        assert_eq!(
            batch_from_wire(batch("d/x"), "p")
                .unwrap()
                .page_end
                .as_deref(),
            Some("d/x")
        );
        assert!(batch_from_wire(batch("/etc/passwd"), "p").is_err());
    }
}
