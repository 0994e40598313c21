//! Frames: a 4-byte big-endian length, then that many bytes of message.

use crate::limits::MAX_FRAME;
use crate::msg::Envelope;
use crate::ProtoError;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Reads one frame's payload. The length is checked against the limit
/// before any memory is allocated for it; a stream that ends inside a
/// frame is an error, a stream that ends between frames is `Closed`.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    peer: &str,
) -> Result<Vec<u8>, ProtoError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await.map_err(|e| io(peer, e))?;
        if n == 0 {
            return Err(ended_in_header(got, peer));
        }
        got += n;
    }
    let size = frame_size(len, peer)?;
    // Read into capacity that is never zeroed: a zeroed megabyte per frame
    // costs the allocator a trip through the kernel.
    let mut buf = Vec::with_capacity(size);
    r.take(size as u64)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| body_error(e, size, peer))?;
    short_body(&buf, size, peer)?;
    Ok(buf)
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
    peer: &str,
) -> Result<(), ProtoError> {
    if payload.len() > MAX_FRAME {
        return Err(ProtoError::FrameTooLarge {
            peer: format!("this side (to {peer})"),
            size: payload.len(),
            limit: MAX_FRAME,
        });
    }
    w.write_all(&(payload.len() as u32).to_be_bytes())
        .await
        .map_err(|e| io(peer, e))?;
    w.write_all(payload).await.map_err(|e| io(peer, e))?;
    Ok(())
}

/// Reads and decodes one message.
pub async fn read_msg<R: AsyncRead + Unpin>(r: &mut R, peer: &str) -> Result<Envelope, ProtoError> {
    let buf = read_frame(r, peer).await?;
    decode(&buf, peer)
}

/// Encodes and writes one message, and flushes.
pub async fn write_msg<W: AsyncWrite + Unpin>(
    w: &mut W,
    m: &Envelope,
    peer: &str,
) -> Result<(), ProtoError> {
    write_frame(w, &m.encode_to_vec(), peer).await?;
    w.flush().await.map_err(|e| io(peer, e))
}

/// Decodes one frame's payload.
/// [`read_msg`] for a blocking reader.
pub fn read_msg_blocking<R: std::io::Read>(r: &mut R, peer: &str) -> Result<Envelope, ProtoError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = match r.read(&mut len[got..]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(peer, e)),
        };
        if n == 0 {
            return Err(ended_in_header(got, peer));
        }
        got += n;
    }
    let size = frame_size(len, peer)?;
    let mut buf = Vec::with_capacity(size);
    std::io::Read::read_to_end(&mut std::io::Read::take(r, size as u64), &mut buf)
        .map_err(|e| body_error(e, size, peer))?;
    short_body(&buf, size, peer)?;
    decode(&buf, peer)
}

/// [`read_msg_blocking`] from a buffered reader: a frame already whole in
/// the reader's buffer is decoded where it lies (no copy of it, no buffer
/// of its own); any other is read as `read_msg_blocking` reads it.
pub fn read_msg_buffered<R: std::io::Read>(
    r: &mut std::io::BufReader<R>,
    peer: &str,
) -> Result<Envelope, ProtoError> {
    let buf = r.buffer();
    if let Some(len) = buf.get(..4) {
        let size = frame_size([len[0], len[1], len[2], len[3]], peer)?;
        if let Some(payload) = buf.get(4..4 + size) {
            let m = decode(payload, peer);
            std::io::BufRead::consume(r, 4 + size);
            return m;
        }
    }
    read_msg_blocking(r, peer)
}

/// Appends one message as a frame to `out` (encoded in place: no buffer of
/// its own, so a writer can gather many frames into one reused buffer).
pub fn encode_frame(out: &mut Vec<u8>, m: &Envelope, peer: &str) -> Result<(), ProtoError> {
    let size = m.encoded_len();
    if size > MAX_FRAME {
        return Err(ProtoError::FrameTooLarge {
            peer: format!("this side (to {peer})"),
            size,
            limit: MAX_FRAME,
        });
    }
    out.reserve(4 + size);
    out.extend_from_slice(&(size as u32).to_be_bytes());
    m.encode(out).expect("capacity reserved above");
    Ok(())
}

pub fn decode(buf: &[u8], peer: &str) -> Result<Envelope, ProtoError> {
    Envelope::decode(buf).map_err(|e| ProtoError::Malformed {
        peer: peer.into(),
        detail: e.to_string(),
    })
}

/// The end of the stream after `got` bytes of a frame header.
fn ended_in_header(got: usize, peer: &str) -> ProtoError {
    if got == 0 {
        ProtoError::Closed { peer: peer.into() }
    } else {
        ProtoError::Malformed {
            peer: peer.into(),
            detail: "the stream ended inside a frame header".into(),
        }
    }
}

/// A frame's size from its header, refused above the limit before
/// anything is allocated.
fn frame_size(len: [u8; 4], peer: &str) -> Result<usize, ProtoError> {
    let size = u32::from_be_bytes(len) as usize;
    if size > MAX_FRAME {
        return Err(ProtoError::FrameTooLarge {
            peer: peer.into(),
            size,
            limit: MAX_FRAME,
        });
    }
    Ok(size)
}

/// An error while reading the body of a frame of `size` bytes.
fn short_body(buf: &[u8], size: usize, peer: &str) -> Result<(), ProtoError> {
    if buf.len() == size {
        return Ok(());
    }
    Err(body_error(
        std::io::ErrorKind::UnexpectedEof.into(),
        size,
        peer,
    ))
}

fn body_error(e: std::io::Error, size: usize, peer: &str) -> ProtoError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ProtoError::Malformed {
            peer: peer.into(),
            detail: format!("the stream ended inside a frame of {size} bytes"),
        }
    } else {
        io(peer, e)
    }
}

fn io(peer: &str, source: std::io::Error) -> ProtoError {
    ProtoError::Io {
        peer: peer.into(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{body, Body, ErrorMsg};

    /// Frames whole in the buffer, split across its end, and larger than
    /// it all arrive intact, in order; an oversized length is refused.
    #[test]
    fn buffered_frames_decode_in_place_or_not() {
        let ms: Vec<Envelope> = (0..200)
            .map(|i| {
                body(Body::Error(ErrorMsg {
                    message: format!("{i}").repeat(i * 7 % 300),
                    ..Default::default()
                }))
            })
            .collect();
        let mut stream = Vec::new();
        for m in &ms {
            encode_frame(&mut stream, m, "b").unwrap();
        }
        for cap in [64, 500, 1 << 16] {
            let mut r = std::io::BufReader::with_capacity(cap, &stream[..]);
            for m in &ms {
                assert_eq!(&read_msg_buffered(&mut r, "a").unwrap(), m);
            }
            assert!(matches!(
                read_msg_buffered(&mut r, "a"),
                Err(ProtoError::Closed { .. })
            ));
        }
        let mut bad = u32::MAX.to_be_bytes().to_vec();
        bad.extend_from_slice(&[0; 16]);
        let mut r = std::io::BufReader::new(&bad[..]);
        std::io::BufRead::fill_buf(&mut r).unwrap();
        let e = read_msg_buffered(&mut r, "peer").unwrap_err();
        assert!(matches!(e, ProtoError::FrameTooLarge { .. }), "{e}");
    }

    #[tokio::test]
    async fn frames_roundtrip() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let m = body(Body::Error(ErrorMsg {
            message: "x".repeat(300),
            ..Default::default()
        }));
        let m2 = m.clone();
        let w = tokio::spawn(async move { write_msg(&mut a, &m2, "b").await });
        let got = read_msg(&mut b, "a").await.unwrap();
        w.await.unwrap().unwrap();
        assert_eq!(got, m);
        assert!(matches!(
            read_msg(&mut b, "a").await,
            Err(ProtoError::Closed { .. })
        ));
    }

    #[tokio::test]
    async fn oversized_frames_are_refused_before_allocating() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let e = read_frame(&mut b, "peer").await.unwrap_err();
        assert!(matches!(e, ProtoError::FrameTooLarge { size, .. } if size == u32::MAX as usize));
        assert!(e.to_string().contains("peer"));
    }

    #[tokio::test]
    async fn truncated_frames_are_errors() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&10u32.to_be_bytes()).await.unwrap();
        a.write_all(b"abc").await.unwrap();
        drop(a);
        let e = read_frame(&mut b, "peer").await.unwrap_err();
        assert!(matches!(e, ProtoError::Malformed { .. }), "{e}");
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0]).await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame(&mut b, "p").await,
            Err(ProtoError::Malformed { .. })
        ));
    }

    /// Frames gathered in one buffer read back one by one, blocking reads
    /// included, and a truncated last frame is an error, not a message.
    #[test]
    fn gathered_frames_read_back_and_a_cut_one_is_an_error() {
        let ms: Vec<Envelope> = [10usize, 70_000, 0, 300_000]
            .iter()
            .map(|&n| {
                body(Body::Error(ErrorMsg {
                    message: "y".repeat(n),
                    ..Default::default()
                }))
            })
            .collect();
        let mut buf = Vec::new();
        for m in &ms {
            encode_frame(&mut buf, m, "p").unwrap();
        }
        let mut r = std::io::Cursor::new(&buf[..]);
        for m in &ms {
            assert_eq!(&read_msg_blocking(&mut r, "p").unwrap(), m);
        }
        assert!(matches!(
            read_msg_blocking(&mut r, "p"),
            Err(ProtoError::Closed { .. })
        ));
        let cut = &buf[..buf.len() - 1];
        let mut r = std::io::Cursor::new(cut);
        for m in &ms[..3] {
            assert_eq!(&read_msg_blocking(&mut r, "p").unwrap(), m);
        }
        assert!(matches!(
            read_msg_blocking(&mut r, "p"),
            Err(ProtoError::Malformed { .. })
        ));
        let big = body(Body::Error(ErrorMsg {
            message: "z".repeat(MAX_FRAME + 1),
            ..Default::default()
        }));
        let mut out = Vec::new();
        assert!(matches!(
            encode_frame(&mut out, &big, "p"),
            Err(ProtoError::FrameTooLarge { .. })
        ));
        assert!(out.is_empty());
    }

    proptest::proptest! {
        /// Garbage never panics the decoder.
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = decode(&bytes, "fuzz");
        }
    }
}
