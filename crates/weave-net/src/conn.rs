//! A session's connection: framed messages over any blocking byte stream
//! (a child's pipes, stdin/stdout, a socket), with one thread reading and
//! one writing so that neither side can block the other, and an optional
//! rate limit on both directions.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use weave_proto::frame::{encode_frame, read_msg_buffered};
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
    /// Messages from [`Conn::send_paced`], with their chunk bytes.
    Paced(Vec<Envelope>, usize),
}

/// Chunk data queued for the writer thread and not yet written: a sender
/// of many chunks waits ([`Conn::send_paced`]) while more than
/// [`PACE_BYTES`] of it are queued, so that it does not read a whole
/// window of chunks into fresh memory ahead of a slower stream.
#[derive(Default)]
struct Queued {
    bytes: Mutex<usize>,
    /// The writer thread ended: nothing queued will drain any more.
    closed: std::sync::atomic::AtomicBool,
    drained: Condvar,
}

impl Queued {
    fn add(&self, n: usize) {
        *self.bytes.lock().expect("queued bytes") += n;
    }

    fn sub(&self, n: usize) {
        let mut b = self.bytes.lock().expect("queued bytes");
        *b = b.saturating_sub(n);
        if *b <= PACE_BYTES / 2 {
            self.drained.notify_all();
        }
    }

    fn close(&self) {
        let _b = self.bytes.lock().expect("queued bytes");
        self.closed.store(true, Ordering::Relaxed);
        self.drained.notify_all();
    }

    /// Waits while more than [`PACE_BYTES`] are queued, until half of
    /// that is left or the writer ended.
    fn wait(&self) {
        let mut b = self.bytes.lock().expect("queued bytes");
        if *b <= PACE_BYTES {
            return;
        }
        while *b > PACE_BYTES / 2 && !self.closed.load(Ordering::Relaxed) {
            b = self.drained.wait(b).expect("queued bytes");
        }
    }
}

/// Chunk data a paced sender may have queued before it waits.
pub const PACE_BYTES: usize = 8 << 20;

/// The chunk data a message carries, as counted by [`Queued`].
fn chunk_data_len(m: &Envelope) -> usize {
    match &m.body {
        Some(Body::ChunkData(c)) => c.data.len(),
        _ => 0,
    }
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

/// Messages the reader thread hands over at once: every frame already in
/// its buffer, so a stream of small messages costs one wake-up per buffer
/// rather than one per message.
type Batch = Vec<Result<Envelope, ProtoError>>;

/// The writer's buffer is written out once it holds this many bytes.
const WRITE_AT: usize = 256 * 1024;

/// Messages in one [`Batch`] at most.
const BATCH_MAX: usize = 64;

/// True if `buf` starts with a whole frame (its length, then that many
/// bytes): reading it will not block.
fn frame_buffered(buf: &[u8]) -> bool {
    buf.len() >= 4 && buf.len() - 4 >= u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize
}

pub struct Conn {
    peer: String,
    tx: Option<Sender<Out>>,
    rx: Receiver<Batch>,
    /// Received messages of the last batch not yet taken.
    pending: Mutex<VecDeque<Result<Envelope, ProtoError>>>,
    writer: Option<std::thread::JoinHandle<()>>,
    queued: Arc<Queued>,
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
        // the peer (back-pressure through the stream). A batch holds at
        // most one frame read from the stream plus what was buffered.
        let (in_tx, rx) = mpsc::sync_channel::<Batch>(32);
        let (tx, out_rx) = mpsc::channel::<Out>();
        {
            let peer = peer.to_string();
            let traffic = traffic.clone();
            let limit = limit.clone();
            let mut r = std::io::BufReader::with_capacity(256 * 1024, r);
            std::thread::spawn(move || loop {
                let mut batch = Batch::new();
                let stop = loop {
                    let m = read_msg_buffered(&mut r, &peer);
                    let stop = m.is_err();
                    if let Ok(m) = &m {
                        let n = prost_len(m);
                        traffic.received.fetch_add(n, Ordering::Relaxed);
                        if let Some(l) = &limit {
                            l.take(n);
                        }
                    }
                    batch.push(m);
                    if stop || batch.len() >= BATCH_MAX || !frame_buffered(r.buffer()) {
                        break stop;
                    }
                };
                if in_tx.send(batch).is_err() || stop {
                    return;
                }
            });
        }
        let queued = Arc::new(Queued::default());
        let writer = {
            let peer = peer.to_string();
            let traffic = traffic.clone();
            let queued = queued.clone();
            let mut w = w;
            std::thread::spawn(move || {
                // However it ends, a paced sender must not wait for it.
                struct Closes(Arc<Queued>);
                impl Drop for Closes {
                    fn drop(&mut self) {
                        self.0.close();
                    }
                }
                let _closes = Closes(queued.clone());
                // Frames are encoded straight into one reused buffer, which
                // is written out when it is large or nothing more is queued.
                let mut buf: Vec<u8> = Vec::with_capacity(WRITE_AT + (1 << 20));
                let mut put = |buf: &mut Vec<u8>| -> bool {
                    let ok = w.write_all(buf).and_then(|()| w.flush()).is_ok();
                    buf.clear();
                    ok
                };
                let mut next = out_rx.recv().ok();
                while let Some(out) = next {
                    let (ms, paced) = match out {
                        Out::One(m) => (vec![m], 0),
                        Out::Many(ms) => (ms, 0),
                        Out::Paced(ms, n) => (ms, n),
                    };
                    for m in &ms {
                        let at = buf.len();
                        if encode_frame(&mut buf, m, &peer).is_err() {
                            return;
                        }
                        let n = (buf.len() - at) as u64;
                        traffic.sent.fetch_add(n, Ordering::Relaxed);
                        if let Some(l) = &limit {
                            l.take(n);
                        }
                        if buf.len() >= WRITE_AT && !put(&mut buf) {
                            return;
                        }
                    }
                    drop(ms);
                    if paced > 0 {
                        queued.sub(paced);
                    }
                    // Written only when nothing more is queued: messages
                    // queued together leave in large writes.
                    next = match out_rx.try_recv() {
                        Ok(m) => Some(m),
                        Err(TryRecvError::Empty) => {
                            if !put(&mut buf) {
                                return;
                            }
                            out_rx.recv().ok()
                        }
                        Err(TryRecvError::Disconnected) => None,
                    };
                }
                put(&mut buf);
            })
        };
        Conn {
            peer: peer.to_string(),
            tx: Some(tx),
            rx,
            pending: Mutex::new(VecDeque::new()),
            writer: Some(writer),
            queued,
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

    /// [`Conn::send_all`] for a sender of many chunks: afterwards waits
    /// while more than [`PACE_BYTES`] of chunk data are queued, so that
    /// what it reads ahead of the stream stays bounded. Only for answers:
    /// the peer must never wait for this side to read before it reads
    /// (a requester never does; its own sends are never paced).
    pub fn send_paced(&self, bs: Vec<Body>) -> Result<(), ProtoError> {
        if bs.is_empty() {
            return Ok(());
        }
        let ms: Vec<Envelope> = bs.into_iter().map(body).collect();
        let n = ms.iter().map(chunk_data_len).sum();
        self.queued.add(n);
        self.queue(Out::Paced(ms, n))?;
        self.queued.wait();
        Ok(())
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
        let mut pending = self.pending.lock().expect("received messages");
        if let Some(m) = pending.pop_front() {
            return m;
        }
        match self.rx.recv() {
            Ok(batch) => {
                pending.extend(batch);
                pending.pop_front().expect("a batch is never empty")
            }
            Err(_) => Err(ProtoError::Closed {
                peer: self.peer.clone(),
            }),
        }
    }

    /// The next message, waiting at most `wait`: None when none came.
    pub fn recv_timeout(&self, wait: std::time::Duration) -> Option<Result<Envelope, ProtoError>> {
        let mut pending = self.pending.lock().expect("received messages");
        if let Some(m) = pending.pop_front() {
            return Some(m);
        }
        match self.rx.recv_timeout(wait) {
            Ok(batch) => {
                pending.extend(batch);
                pending.pop_front()
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Some(Err(ProtoError::Closed {
                peer: self.peer.clone(),
            })),
        }
    }

    /// The next message, if one is already here.
    pub fn try_recv(&self) -> Option<Result<Envelope, ProtoError>> {
        let mut pending = self.pending.lock().expect("received messages");
        if pending.is_empty() {
            pending.extend(self.rx.try_recv().ok()?);
        }
        pending.pop_front()
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
    fn a_frame_is_buffered_only_when_whole() {
        assert!(!frame_buffered(&[]));
        assert!(!frame_buffered(&[0, 0, 0]));
        assert!(frame_buffered(&[0, 0, 0, 0]));
        assert!(!frame_buffered(&[0, 0, 0, 2, 9]));
        assert!(frame_buffered(&[0, 0, 0, 2, 9, 9]));
        assert!(frame_buffered(&[0, 0, 0, 2, 9, 9, 0]));
        assert!(!frame_buffered(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]));
    }

    /// A batch of `n` chunks of 64 KiB.
    fn chunks(n: usize) -> Vec<Body> {
        (0..n)
            .map(|_| {
                Body::ChunkData(weave_proto::msg::ChunkData {
                    hash: vec![0; 32],
                    data: vec![7; 64 << 10],
                    ..Default::default()
                })
            })
            .collect()
    }

    /// A paced sender stops once about `PACE_BYTES` wait to be written,
    /// and goes on as the peer reads: what it holds stays bounded.
    #[test]
    fn a_paced_sender_waits_for_the_stream() {
        use std::sync::atomic::AtomicUsize;
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let near = Conn::over_unix(a, "near", None).unwrap();
        let batches = 4 * PACE_BYTES / (1 << 20);
        let sent = Arc::new(AtomicUsize::new(0));
        let sender = {
            let sent = sent.clone();
            std::thread::spawn(move || {
                for _ in 0..batches {
                    near.send_paced(chunks(16)).unwrap();
                    sent.fetch_add(1, Ordering::SeqCst);
                }
                near
            })
        };
        // Nobody reads: the sender stops after the pace (plus what the
        // socket and the writer's buffer hold, a few MiB).
        let stalled_at = {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut last = (usize::MAX, Instant::now());
            loop {
                assert!(Instant::now() < deadline, "the sender never stopped");
                let n = sent.load(Ordering::SeqCst);
                if n != last.0 {
                    last = (n, Instant::now());
                } else if last.1.elapsed() > Duration::from_millis(300) {
                    break n;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        if !(stalled_at >= PACE_BYTES / (1 << 20) && stalled_at < batches / 2) {
            // Closing the far end first lets `near`'s writer end (so the
            // test fails rather than hangs on it).
            drop(b);
            panic!("stopped after {stalled_at} MiB of {batches}");
        }
        // The peer reads: everything arrives.
        let far = Conn::over_unix(b, "far", None).unwrap();
        let mut got = 0;
        while got < batches * 16 {
            match far.recv().unwrap().body {
                Some(Body::ChunkData(c)) => assert_eq!(c.data.len(), 64 << 10),
                other => panic!("unexpected {other:?}"),
            }
            got += 1;
        }
        drop(sender.join().unwrap());
    }

    /// A paced sender waiting for its stream does not wait for ever when
    /// the stream goes away.
    #[test]
    fn a_paced_sender_on_a_closed_stream_does_not_hang() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let near = Conn::over_unix(a, "near", None).unwrap();
        let waiting = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = {
            let waiting = waiting.clone();
            std::thread::spawn(move || {
                for _ in 0..4 * PACE_BYTES / (1 << 20) {
                    waiting.store(true, Ordering::SeqCst);
                    if near.send_paced(chunks(16)).is_err() {
                        break;
                    }
                    waiting.store(false, Ordering::SeqCst);
                }
            })
        };
        // Until the sender waits (nobody reads), then the stream closes.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut since = None::<Instant>;
        loop {
            assert!(Instant::now() < deadline, "the sender never waited");
            match (waiting.load(Ordering::SeqCst), since) {
                (true, Some(t)) if t.elapsed() > Duration::from_millis(200) => break,
                (true, None) => since = Some(Instant::now()),
                (false, _) => since = None,
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(b);
        while !done.is_finished() {
            assert!(Instant::now() < deadline, "the paced sender hung");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Many small messages written at once arrive in order, batched, and
    /// the end of the stream after them is seen.
    #[test]
    fn messages_arrive_in_order_across_batches() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut far = Conn::over_unix(b, "far", None).unwrap();
        let near = Conn::over_unix(a, "near", None).unwrap();
        let n = 1000u64;
        let bodies: Vec<Body> = (0..n)
            .map(|i| {
                Body::Error(weave_proto::msg::ErrorMsg {
                    message: format!("message {i}"),
                    ..Default::default()
                })
            })
            .collect();
        far.send_all(bodies).unwrap();
        far.close();
        let mut seen = 0u64;
        let mut polled = 0u64;
        while seen < n {
            let m = if seen.is_multiple_of(2) {
                near.recv().unwrap()
            } else {
                match near.try_recv() {
                    Some(m) => {
                        polled += 1;
                        m.unwrap()
                    }
                    None => near.recv().unwrap(),
                }
            };
            match m.body {
                Some(Body::Error(e)) => assert_eq!(e.message, format!("message {seen}")),
                other => panic!("unexpected {other:?}"),
            }
            seen += 1;
        }
        assert!(polled > 0, "try_recv never found a buffered message");
        assert!(matches!(near.recv(), Err(ProtoError::Closed { .. })));
    }

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
