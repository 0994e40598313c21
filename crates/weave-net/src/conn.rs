//! A session's connection: framed messages over any blocking byte stream
//! (a child's pipes, stdin/stdout, a socket), with one thread reading and
//! one writing so that neither side can block the other, and an optional
//! rate limit on both directions.

use std::io::{BufWriter, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weave_proto::frame::{read_msg_blocking, write_msg_blocking};
use weave_proto::msg::{body, Body, Envelope};
use weave_proto::ProtoError;

/// Bytes that crossed the connection, both ways.
#[derive(Default, Debug)]
pub struct Traffic {
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

/// Caps the rate of a connection (bytes per second, both directions).
pub struct RateLimit {
    rate: u64,
    state: Mutex<(Instant, u64)>,
}

impl RateLimit {
    pub fn new(rate: u64) -> Arc<RateLimit> {
        Arc::new(RateLimit {
            rate: rate.max(1),
            state: Mutex::new((Instant::now(), 0)),
        })
    }

    /// Accounts for `n` bytes, sleeping as long as needed to stay at rate.
    fn take(&self, n: u64) {
        let wait = {
            let mut s = self.state.lock().expect("rate limiter");
            s.1 += n;
            let due = Duration::from_secs_f64(s.1 as f64 / self.rate as f64);
            due.saturating_sub(s.0.elapsed())
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// What the writer thread takes: one message, or several written back to
/// back before the stream is flushed.
enum Out {
    One(Envelope),
    Many(Vec<Envelope>),
}

/// Queues messages on a connection from any thread.
#[derive(Clone)]
pub struct ConnSender(Sender<Out>);

impl ConnSender {
    /// Queues a message; fails if the connection is closed.
    pub fn send(&self, m: Envelope) -> std::io::Result<()> {
        self.0.send(Out::One(m)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the connection is closed")
        })
    }
}

pub struct Conn {
    peer: String,
    tx: Option<Sender<Out>>,
    rx: Receiver<Result<Envelope, ProtoError>>,
    writer: Option<std::thread::JoinHandle<()>>,
    pub traffic: Arc<Traffic>,
}

impl Conn {
    pub fn new<R, W>(r: R, w: W, peer: &str, limit: Option<Arc<RateLimit>>) -> Conn
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        let traffic = Arc::new(Traffic::default());
        // Incoming messages wait here; a full queue stops the reader, and so
        // the peer (back-pressure through the stream).
        let (in_tx, rx) = mpsc::sync_channel::<Result<Envelope, ProtoError>>(256);
        let (tx, out_rx) = mpsc::channel::<Out>();
        {
            let peer = peer.to_string();
            let traffic = traffic.clone();
            let limit = limit.clone();
            let mut r = std::io::BufReader::with_capacity(256 * 1024, r);
            std::thread::spawn(move || loop {
                let m = read_msg_blocking(&mut r, &peer);
                let stop = m.is_err();
                if let Ok(m) = &m {
                    let n = prost_len(m);
                    traffic.received.fetch_add(n, Ordering::Relaxed);
                    if let Some(l) = &limit {
                        l.take(n);
                    }
                }
                if in_tx.send(m).is_err() || stop {
                    return;
                }
            });
        }
        let writer = {
            let peer = peer.to_string();
            let traffic = traffic.clone();
            let mut w = BufWriter::with_capacity(256 * 1024, w);
            std::thread::spawn(move || {
                let mut next = out_rx.recv().ok();
                while let Some(out) = next {
                    let ms = match out {
                        Out::One(m) => vec![m],
                        Out::Many(ms) => ms,
                    };
                    for m in &ms {
                        if write_msg_blocking(&mut w, m, &peer).is_err() {
                            return;
                        }
                        let n = prost_len(m);
                        traffic.sent.fetch_add(n, Ordering::Relaxed);
                        if let Some(l) = &limit {
                            l.take(n);
                        }
                    }
                    // Flushed only when nothing more is queued: messages
                    // queued together leave in large writes.
                    next = match out_rx.try_recv() {
                        Ok(m) => Some(m),
                        Err(TryRecvError::Empty) => {
                            if w.flush().is_err() {
                                return;
                            }
                            out_rx.recv().ok()
                        }
                        Err(TryRecvError::Disconnected) => None,
                    };
                }
                let _ = w.flush();
            })
        };
        Conn {
            peer: peer.to_string(),
            tx: Some(tx),
            rx,
            writer: Some(writer),
            traffic,
        }
    }

    /// A connection over this process's standard input and output (the
    /// session of `weave serve --stdio`), read and written directly rather
    /// than through the standard library's buffers (standard output is
    /// line-buffered, which splits binary frames at every newline byte).
    pub fn over_stdio(peer: &str) -> std::io::Result<Conn> {
        use std::os::fd::AsFd;
        let input = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
        let output = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
        grow_pipe(&input);
        grow_pipe(&output);
        Ok(Conn::new(input, output, peer, None))
    }

    /// A connection over a Unix socket: closing it shuts the socket down
    /// for writing, so the peer sees the end of the session.
    pub fn over_unix(
        s: std::os::unix::net::UnixStream,
        peer: &str,
        limit: Option<Arc<RateLimit>>,
    ) -> std::io::Result<Conn> {
        Ok(Conn::new(s.try_clone()?, ShutdownOnDrop(s), peer, limit))
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Queues a message (never blocks).
    pub fn send(&self, b: Body) -> Result<(), ProtoError> {
        self.queue(Out::One(body(b)))
    }

    /// Queues messages to be written back to back, with no flush between
    /// them (never blocks): many small replies leave as few large writes.
    pub fn send_all(&self, bs: Vec<Body>) -> Result<(), ProtoError> {
        if bs.is_empty() {
            return Ok(());
        }
        self.queue(Out::Many(bs.into_iter().map(body).collect()))
    }

    fn queue(&self, out: Out) -> Result<(), ProtoError> {
        self.tx
            .as_ref()
            .and_then(|t| t.send(out).ok())
            .ok_or_else(|| ProtoError::Closed {
                peer: self.peer.clone(),
            })
    }

    /// A sender usable from other threads.
    pub fn sender(&self) -> Option<ConnSender> {
        self.tx.clone().map(ConnSender)
    }

    /// The next message (blocks).
    pub fn recv(&self) -> Result<Envelope, ProtoError> {
        self.rx.recv().unwrap_or_else(|_| {
            Err(ProtoError::Closed {
                peer: self.peer.clone(),
            })
        })
    }

    /// The next message, if one is already here.
    pub fn try_recv(&self) -> Option<Result<Envelope, ProtoError>> {
        self.rx.try_recv().ok()
    }

    /// Sends what is queued and closes the writing side.
    pub fn close(&mut self) {
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writing half of a socket whose reading half lives elsewhere.
struct ShutdownOnDrop(std::os::unix::net::UnixStream);

impl Write for ShutdownOnDrop {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        let _ = self.0.shutdown(std::net::Shutdown::Write);
    }
}

/// The capacity asked for a pipe that carries a session.
pub const PIPE_SIZE: usize = 1 << 20;

/// Enlarges the pipe `fd` is an end of to [`PIPE_SIZE`] (or as far as the
/// system allows an unprivileged process): a frame then crosses in one
/// write instead of sixteen 64 KiB pieces, each waking the other side, and
/// the program on the other end (ssh) reads it in larger pieces too.
/// Nothing happens if `fd` is not a pipe.
pub fn grow_pipe(fd: impl std::os::fd::AsFd) {
    let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(PIPE_SIZE);
    let _ = rustix::pipe::fcntl_setpipe_size(fd, PIPE_SIZE.min(max));
}

fn prost_len(m: &Envelope) -> u64 {
    prost::Message::encoded_len(m) as u64 + 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_pipe_is_enlarged_and_anything_else_left_alone() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let before = rustix::pipe::fcntl_getpipe_size(&r).unwrap();
        grow_pipe(&w);
        let after = rustix::pipe::fcntl_getpipe_size(&r).unwrap();
        let max: usize = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(after, PIPE_SIZE.min(max).max(before));
        assert!(after > before || max <= before);
        // A regular file is not a pipe: nothing happens, nothing fails.
        let f = tempfile::tempfile().unwrap();
        grow_pipe(&f);
    }
}
