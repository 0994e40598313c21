//! One lasting TLS connection per pair of devices (a *link*), carrying
//! every session between them, each on a channel of its own: a sync costs
//! no TCP or TLS handshake once the two are connected.
//!
//! On the stream, frames: a kind (one byte), a channel number and a
//! length (each four bytes, big-endian), and that many bytes. The side
//! that accepted the connection sends `Ready` first, once it has taken
//! the link (the dialler learns that its certificate was accepted). A
//! channel is opened by `Open`, carries `Data` both ways, and ends with
//! `Close` from either side; the dialler numbers its channels odd, the
//! other side even. `Ping` is answered with `Pong`; each side pings when
//! it has sent nothing for [`PING_EVERY`], and a link from which nothing
//! at all arrived for [`DEAD_AFTER`] is dead: its channels end (their
//! sessions fail and are retried with back-off) and it is dropped.
//!
//! A session sees its channel as a byte stream ([`weave_net::Conn`]), as
//! it saw a TCP connection before.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc as amp;
use tokio_util::sync::CancellationToken;
use weave_net::Conn;

/// A link that sent nothing for this long is pinged.
pub(super) const PING_EVERY: Duration = Duration::from_secs(5);
/// A link from which nothing arrived for this long is dead.
pub(super) const DEAD_AFTER: Duration = Duration::from_secs(20);
/// Bytes of a session in one `Data` frame at most.
const MAX_DATA: usize = 256 * 1024;
/// The largest frame taken from a peer.
const MAX_FRAME_IN: usize = 2 * MAX_DATA;
/// `Data` frames queued for the stream (each at most [`MAX_DATA`]):
/// a full queue holds the session that writes.
const QUEUED: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Kind {
    Ready = 1,
    Open = 2,
    Data = 3,
    Close = 4,
    Ping = 5,
    Pong = 6,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Ready,
            2 => Kind::Open,
            3 => Kind::Data,
            4 => Kind::Close,
            5 => Kind::Ping,
            6 => Kind::Pong,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Frame {
    pub kind: Kind,
    pub chan: u32,
    pub data: Vec<u8>,
}

impl Frame {
    fn ctl(kind: Kind, chan: u32) -> Frame {
        Frame {
            kind,
            chan,
            data: Vec::new(),
        }
    }
}

/// Writes one frame.
pub(super) async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    f: &Frame,
) -> std::io::Result<()> {
    let mut head = [0u8; 9];
    head[0] = f.kind as u8;
    head[1..5].copy_from_slice(&f.chan.to_be_bytes());
    head[5..9].copy_from_slice(&(f.data.len() as u32).to_be_bytes());
    w.write_all(&head).await?;
    w.write_all(&f.data).await
}

/// Reads one frame; refuses an unknown kind and an oversized one.
pub(super) async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Frame> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await?;
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let kind = Kind::from_u8(head[0])
        .ok_or_else(|| bad(format!("a frame of unknown kind {}", head[0])))?;
    let chan = u32::from_be_bytes(head[1..5].try_into().expect("4 bytes"));
    let len = u32::from_be_bytes(head[5..9].try_into().expect("4 bytes")) as usize;
    if len > MAX_FRAME_IN {
        return Err(bad(format!("a frame of {len} bytes")));
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data).await?;
    Ok(Frame { kind, chan, data })
}

/// What a link does with a channel the peer opens: serves a session on it.
pub(super) type OnOpen = Arc<dyn Fn(Arc<Link>, Conn) + Send + Sync>;

/// A lasting connection to one peer.
pub(super) struct Link {
    /// The peer's name, for sessions and messages.
    pub name: String,
    /// Where the peer is (the address dialled, or where it came from).
    pub addr: String,
    /// This device dialled it.
    pub dialled: bool,
    data_tx: amp::Sender<Frame>,
    ctl_tx: amp::UnboundedSender<Frame>,
    chans: Mutex<HashMap<u32, mpsc::Sender<Vec<u8>>>>,
    next: AtomicU32,
    dead: AtomicBool,
    /// Cancelled when the link dies.
    pub closed: CancellationToken,
    pub sent: AtomicU64,
    pub received: AtomicU64,
    /// Why it ended, in weave's words (once it has).
    why: Mutex<Option<String>>,
}

impl Link {
    /// Starts a link over `stream` (TLS already done, and for a dialled
    /// link the peer's `Ready` already read); `on_open` serves the
    /// channels the peer opens. The acceptor's `Ready` is sent by
    /// [`Link::ready`] once it has taken the link.
    pub(super) fn start<S>(
        stream: S,
        name: &str,
        addr: &str,
        dialled: bool,
        on_open: OnOpen,
    ) -> Arc<Link>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (data_tx, data_rx) = amp::channel(QUEUED);
        let (ctl_tx, ctl_rx) = amp::unbounded_channel();
        let link = Arc::new(Link {
            name: name.to_string(),
            addr: addr.to_string(),
            dialled,
            data_tx,
            ctl_tx,
            chans: Mutex::new(HashMap::new()),
            next: AtomicU32::new(if dialled { 1 } else { 2 }),
            dead: AtomicBool::new(false),
            closed: CancellationToken::new(),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            why: Mutex::new(None),
        });
        let (r, w) = tokio::io::split(stream);
        tokio::spawn(writer(link.clone(), w, data_rx, ctl_rx));
        tokio::spawn(reader(link.clone(), r, on_open));
        link
    }

    /// Tells the dialler the link is taken (the accepting side).
    pub(super) fn ready(&self) {
        let _ = self.ctl_tx.send(Frame::ctl(Kind::Ready, 0));
    }

    /// Why the link ended, if it did of a failure.
    pub(super) fn why(&self) -> Option<String> {
        self.why.lock().expect("why").clone()
    }

    pub(super) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Ends the link: its channels end, its tasks stop.
    pub(super) fn kill(&self) {
        if !self.dead.swap(true, Ordering::SeqCst) {
            self.chans.lock().expect("channels").clear();
            self.closed.cancel();
        }
    }

    /// Opens a channel to the peer: a session's byte stream.
    pub(super) fn open(self: &Arc<Self>) -> Option<Conn> {
        if self.is_dead() {
            return None;
        }
        let chan = self.next.fetch_add(2, Ordering::SeqCst);
        let conn = self.channel(chan);
        self.ctl_tx.send(Frame::ctl(Kind::Open, chan)).ok()?;
        Some(conn)
    }

    /// The session stream of channel `chan` (ended at once if the link
    /// died meanwhile).
    fn channel(self: &Arc<Self>, chan: u32) -> Conn {
        let (tx, rx) = mpsc::channel();
        {
            let mut chans = self.chans.lock().expect("channels");
            // `kill` marks the link dead before it empties the map: a
            // channel put in after that is taken out here.
            if !self.is_dead() {
                chans.insert(chan, tx);
            }
        }
        let r = ChanRead {
            rx,
            cur: Vec::new(),
            pos: 0,
        };
        let w = ChanWrite {
            link: self.clone(),
            chan,
        };
        Conn::new(r, w, &self.name, None)
    }
}

/// Sends the link's frames: control frames first, a ping when nothing was
/// sent for a while; ends when the link dies or the stream fails.
async fn writer<W: AsyncWrite + Unpin>(
    link: Arc<Link>,
    mut w: W,
    mut data: amp::Receiver<Frame>,
    mut ctl: amp::UnboundedReceiver<Frame>,
) {
    loop {
        let f = tokio::select! {
            biased;
            _ = link.closed.cancelled() => break,
            Some(f) = ctl.recv() => f,
            Some(f) = data.recv() => f,
            _ = tokio::time::sleep(PING_EVERY) => Frame::ctl(Kind::Ping, 0),
        };
        let n = f.data.len() as u64 + 9;
        // A stream that takes nothing (a peer gone without a word) must
        // not hold the writer once the link is dead: its sessions wait
        // on this queue.
        let sent = tokio::select! {
            _ = link.closed.cancelled() => false,
            r = write_frame(&mut w, &f) => r.is_ok(),
        };
        if !sent {
            break;
        }
        link.sent.fetch_add(n, Ordering::Relaxed);
        if ctl.is_empty() && data.is_empty() {
            let flushed = tokio::select! {
                _ = link.closed.cancelled() => false,
                r = w.flush() => r.is_ok(),
            };
            if !flushed {
                break;
            }
        }
    }
    link.kill();
    // Sessions blocked on a full queue get their error now.
    drop(data);
    drop(ctl);
    let _ = tokio::time::timeout(Duration::from_secs(1), w.shutdown()).await;
}

/// Takes the link's frames to their channels; ends the link when the
/// stream ends, fails, or is silent for [`DEAD_AFTER`].
async fn reader<R: AsyncRead + Unpin>(link: Arc<Link>, mut r: R, on_open: OnOpen) {
    loop {
        let f = tokio::select! {
            _ = link.closed.cancelled() => break,
            f = tokio::time::timeout(DEAD_AFTER, read_frame(&mut r)) => f,
        };
        let f = match f {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                let why = crate::tls::TlsFailure::from_io(&e, &link.name)
                    .map(|f| f.to_string())
                    .unwrap_or_else(|| format!("the connection to {} failed: {e}", link.name));
                debug!("link with {} ({}): {why}", link.name, link.addr);
                *link.why.lock().expect("why") = Some(why);
                break;
            }
            Err(_) => {
                let why = format!(
                    "nothing heard from {} for {}s; taken as down (weave tries again by itself)",
                    link.name,
                    DEAD_AFTER.as_secs()
                );
                warn!("link with {} ({}): {why}", link.name, link.addr);
                *link.why.lock().expect("why") = Some(why);
                break;
            }
        };
        link.received
            .fetch_add(f.data.len() as u64 + 9, Ordering::Relaxed);
        match f.kind {
            Kind::Data => {
                let chans = link.chans.lock().expect("channels");
                if let Some(tx) = chans.get(&f.chan) {
                    let _ = tx.send(f.data);
                }
            }
            Kind::Open => {
                // The peer numbers its channels with the other parity.
                let theirs = (f.chan % 2 == 1) != link.dialled;
                if theirs && !link.chans.lock().expect("channels").contains_key(&f.chan) {
                    let conn = link.channel(f.chan);
                    on_open(link.clone(), conn);
                }
            }
            Kind::Close => {
                link.chans.lock().expect("channels").remove(&f.chan);
            }
            Kind::Ping => {
                let _ = link.ctl_tx.send(Frame::ctl(Kind::Pong, 0));
            }
            Kind::Pong | Kind::Ready => {}
        }
    }
    link.kill();
}

/// A channel's incoming bytes, as a blocking reader (EOF when the channel
/// or the link ends).
struct ChanRead {
    rx: mpsc::Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChanRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.cur.len() {
            match self.rx.recv() {
                Ok(d) => {
                    self.cur = d;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A channel's outgoing bytes, as a blocking writer (used from a
/// session's own threads, never from the runtime); dropping it closes
/// the channel.
struct ChanWrite {
    link: Arc<Link>,
    chan: u32,
}

impl Write for ChanWrite {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = b.len().min(MAX_DATA);
        let f = Frame {
            kind: Kind::Data,
            chan: self.chan,
            data: b[..n].to_vec(),
        };
        let gone = || {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the link to the peer is down",
            )
        };
        if self.link.is_dead() {
            return Err(gone());
        }
        self.link.data_tx.blocking_send(f).map_err(|_| gone())?;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ChanWrite {
    /// Closes the channel, after what it sent (on the same queue: a
    /// session's last message, an error say, must not be overtaken by
    /// its end).
    fn drop(&mut self) {
        let close = Frame::ctl(Kind::Close, self.chan);
        let queued = match tokio::runtime::Handle::try_current() {
            // Not on the runtime (a session's own thread): wait for room.
            Err(_) => self.link.data_tx.blocking_send(close).is_ok(),
            Ok(_) => self.link.data_tx.try_send(close).is_ok(),
        };
        if !queued && !self.link.is_dead() {
            // No room, on the runtime: the link is wedged or the session
            // is dropped from an async task; the control queue still ends
            // the channel.
            let _ = self.link.ctl_tx.send(Frame::ctl(Kind::Close, self.chan));
        }
        self.link.chans.lock().expect("channels").remove(&self.chan);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_go_through_and_bad_ones_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let f = Frame {
            kind: Kind::Data,
            chan: 7,
            data: b"hello".to_vec(),
        };
        write_frame(&mut a, &f).await.unwrap();
        assert_eq!(read_frame(&mut b).await.unwrap(), f);
        a.write_all(&[9, 0, 0, 0, 1, 0, 0, 0, 0]).await.unwrap();
        assert!(read_frame(&mut b).await.is_err(), "unknown kind");
        let mut huge = vec![Kind::Data as u8, 0, 0, 0, 1];
        huge.extend_from_slice(&((MAX_FRAME_IN + 1) as u32).to_be_bytes());
        a.write_all(&huge).await.unwrap();
        assert!(read_frame(&mut b).await.is_err(), "oversized");
    }

    /// Sessions both ways on one link, each on its own channel; a link
    /// whose other end goes away ends its channels.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn channels_carry_sessions_both_ways_and_end_with_the_link() {
        let (a, b) = tokio::io::duplex(1 << 20);
        // Each side echoes what a channel the other opens sends, upper-cased.
        let echo: OnOpen = Arc::new(|_, conn: Conn| {
            std::thread::spawn(move || {
                while let Ok(m) = conn.recv() {
                    let Some(weave_proto::msg::Body::Error(e)) = m.body else {
                        break;
                    };
                    let up = weave_proto::msg::ErrorMsg {
                        message: e.message.to_uppercase(),
                        ..Default::default()
                    };
                    if conn.send(weave_proto::msg::Body::Error(up)).is_err() {
                        break;
                    }
                }
            });
        });
        let la = Link::start(a, "b", "x", true, echo.clone());
        let lb = Link::start(b, "a", "y", false, echo);
        lb.ready();
        let ask = |l: Arc<Link>, what: &'static str| {
            tokio::task::spawn_blocking(move || {
                let conn = l.open().expect("a live link");
                let msg = weave_proto::msg::ErrorMsg {
                    message: what.into(),
                    ..Default::default()
                };
                conn.send(weave_proto::msg::Body::Error(msg)).unwrap();
                match conn.recv().unwrap().body {
                    Some(weave_proto::msg::Body::Error(e)) => e.message,
                    other => panic!("{other:?}"),
                }
            })
        };
        let (x, y) = tokio::join!(ask(la.clone(), "from a"), ask(lb.clone(), "from b"));
        assert_eq!(x.unwrap(), "FROM A");
        assert_eq!(y.unwrap(), "FROM B");
        assert!(la.sent.load(Ordering::Relaxed) > 0);
        lb.kill();
        tokio::time::timeout(Duration::from_secs(10), async {
            while !la.is_dead() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the other end's death is seen");
        assert!(la.open().is_none());
    }

    /// A session that sends its last message and ends at once (a server
    /// refusing with an error, say): the peer reads that message, not the
    /// end of the channel.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_channels_last_message_arrives_before_its_end() {
        for len in [100, 600_000] {
            let mut lost = 0;
            for _ in 0..30 {
                let (a, b) = tokio::io::duplex(1 << 20);
                let say_and_go: OnOpen = Arc::new(move |_, conn: Conn| {
                    std::thread::spawn(move || {
                        let last = weave_proto::msg::ErrorMsg {
                            message: "x".repeat(len),
                            ..Default::default()
                        };
                        let _ = conn.send(weave_proto::msg::Body::Error(last));
                    });
                });
                let nothing: OnOpen = Arc::new(|_, _| {});
                let la = Link::start(a, "b", "x", true, nothing);
                let lb = Link::start(b, "a", "y", false, say_and_go);
                lb.ready();
                let got = tokio::task::spawn_blocking(move || la.open().unwrap().recv().is_ok())
                    .await
                    .unwrap();
                lost += usize::from(!got);
            }
            assert_eq!(
                lost, 0,
                "{len} bytes: the last message was lost {lost}/30 times"
            );
        }
    }

    /// A link killed while its stream takes nothing (a peer gone without
    /// a word): a session blocked writing to it is freed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_link_frees_a_session_blocked_writing() {
        let (a, _b) = tokio::io::duplex(4096);
        let nothing: OnOpen = Arc::new(|_, _| {});
        let la = Link::start(a, "b", "x", true, nothing);
        let l2 = la.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut w = ChanWrite { link: l2, chan: 1 };
            let buf = vec![0u8; MAX_DATA];
            for _ in 0..(QUEUED * 4) {
                if w.write(&buf).is_err() {
                    break;
                }
            }
            tx.send(()).unwrap();
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        la.kill();
        let freed =
            tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(5)).is_ok())
                .await
                .unwrap();
        assert!(
            freed,
            "a session blocked writing to a killed link stays blocked"
        );
    }
}
