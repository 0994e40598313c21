//! LAN discovery: each daemon announces its device id and listen port by
//! UDP broadcast on IPv4 (and multicast on IPv6) every half minute, and
//! listens for others' announcements. A configured peer announced this
//! way is remembered (an IPv4 and an IPv6 address) and dialled at the
//! address the announcement came from, so a peer added by its device id
//! alone is found on the same network. IPv4 announcements go to
//! 255.255.255.255, which leaves by the default route's interface. An announcement
//! proves nothing: the TLS handshake checks that the device dialled is
//! the one its id names.
//!
//! Packet (43 bytes): `WEAVEDSC`, version 1, the 20-byte device id, the
//! listen port (u16, big-endian), 12 zero bytes kept for later. Any
//! other packet is counted as malformed and dropped; at most
//! [`MAX_PER_SECOND`] packets a second are looked at.

use super::shared::Shared;
use crate::id::DeviceId;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

const MAGIC: &[u8; 8] = b"WEAVEDSC";
const VERSION: u8 = 1;
/// The length of an announcement.
pub const PACKET: usize = 8 + 1 + 20 + 2 + 12;
/// How often a daemon announces itself.
const EVERY: Duration = Duration::from_secs(30);
/// Announcements looked at per second, at most.
const MAX_PER_SECOND: u32 = 50;
/// Devices remembered, at most (the oldest seen go first).
const REMEMBERED: usize = 1024;
/// How long a device's announced address is believed.
const BELIEVED: Duration = Duration::from_secs(3 * 60);
/// The IPv6 group announcements go to (link-local scope).
const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff12, 0, 0, 0, 0, 0, 0, 0x7765);

/// What discovery has seen: configured peers by id, with where (an IPv4
/// and an IPv6 address) and when.
#[derive(Default)]
pub(super) struct Seen {
    devices: HashMap<DeviceId, [Option<(SocketAddr, Instant)>; 2]>,
    /// Peers a dial discovery started is under way to.
    dialing: std::collections::HashSet<DeviceId>,
    pub sent: u64,
    pub received: u64,
    pub malformed: u64,
    pub dropped: u64,
}

impl Seen {
    /// Where `id` was announced from lately: IPv4 first.
    pub fn addresses(&self, id: DeviceId) -> Vec<String> {
        self.devices
            .get(&id)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|(_, at)| at.elapsed() < BELIEVED)
            .map(|(a, _)| a.to_string())
            .collect()
    }

    fn remember(&mut self, id: DeviceId, addr: SocketAddr) {
        if self.devices.len() >= REMEMBERED && !self.devices.contains_key(&id) {
            let oldest = self
                .devices
                .iter()
                .min_by_key(|(_, a)| a.iter().flatten().map(|(_, t)| *t).max())
                .map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                self.devices.remove(&oldest);
            }
        }
        let family = usize::from(addr.is_ipv6());
        self.devices.entry(id).or_default()[family] = Some((addr, Instant::now()));
    }
}

/// The announcement of device `id` listening on `port`.
pub fn packet(id: DeviceId, port: u16) -> [u8; PACKET] {
    let mut p = [0u8; PACKET];
    p[..8].copy_from_slice(MAGIC);
    p[8] = VERSION;
    p[9..29].copy_from_slice(id.bytes());
    p[29..31].copy_from_slice(&port.to_be_bytes());
    p
}

/// The device and listen port an announcement gives, if it is one.
pub fn parse(p: &[u8]) -> Option<(DeviceId, u16)> {
    if p.len() != PACKET || &p[..8] != MAGIC || p[8] != VERSION {
        return None;
    }
    let id = DeviceId::from_bytes(&p[9..29])?;
    let port = u16::from_be_bytes([p[29], p[30]]);
    (port != 0).then_some((id, port))
}

/// A UDP socket on `port` of `ip`, shared with other daemons on this
/// machine (each gets every broadcast).
fn socket(ip: IpAddr, port: u16) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if ip.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if ip.is_ipv4() {
        s.set_broadcast(true)?;
    } else {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::new(ip, port).into())?;
    UdpSocket::from_std(s.into())
}

/// Runs discovery on `port` until the daemon stops: announces this
/// device (listening on `listen_port`), and dials the peers it hears.
pub(super) async fn run(sh: Arc<Shared>, port: u16, listen_port: u16) {
    let v4 = match socket(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port) {
        Ok(s) => s,
        Err(e) => {
            warn!(
                "LAN discovery off: cannot listen on UDP port {port} ({e}); peers need addresses"
            );
            return;
        }
    };
    let v6 = socket(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)
        .ok()
        .filter(|s| s.join_multicast_v6(&GROUP_V6, 0).is_ok());
    let me = packet(sh.me.id, listen_port);
    // At once, then 2 and 5 s after the start (a device that started at
    // the same moment hears one of them), then every half minute.
    let mut soon = [Duration::from_secs(2), Duration::from_secs(3)].into_iter();
    let mut next = Instant::now();
    let mut buf4 = [0u8; 512];
    let mut buf6 = [0u8; 512];
    let mut window = (Instant::now(), 0u32);
    loop {
        let got = tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {
                next += soon.next().unwrap_or(EVERY);
                if sh.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let to4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::BROADCAST), port);
                let mut sent = v4.send_to(&me, to4).await.is_ok();
                if let Some(v6) = &v6 {
                    let to6 = SocketAddr::new(IpAddr::V6(GROUP_V6), port);
                    sent |= v6.send_to(&me, to6).await.is_ok();
                }
                if sent {
                    sh.seen.lock().expect("seen").sent += 1;
                }
                show(&sh, port);
                continue;
            }
            r = v4.recv_from(&mut buf4) => r.map(|(n, from)| (buf4[..n].to_vec(), from)),
            r = async { match &v6 { Some(s) => s.recv_from(&mut buf6).await, None => std::future::pending().await } } => {
                r.map(|(n, from)| (buf6[..n].to_vec(), from))
            }
        };
        let (bytes, from) = match got {
            Ok(g) => g,
            Err(e) => {
                // Not a hot loop on a socket that keeps failing.
                debug!("discovery: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if window.0.elapsed() >= Duration::from_secs(1) {
            window = (Instant::now(), 0);
        }
        window.1 += 1;
        if window.1 > MAX_PER_SECOND {
            sh.seen.lock().expect("seen").dropped += 1;
        } else {
            heard(&sh, &bytes, from);
        }
        show(&sh, port);
    }
}

/// Shows the counts in the status.
fn show(sh: &Shared, port: u16) {
    let s = sh.seen.lock().expect("seen");
    sh.board.discovery(crate::status::DiscoveryStatus {
        port,
        sent: s.sent,
        received: s.received,
        malformed: s.malformed,
        dropped: s.dropped,
    });
}

/// Takes in an announcement `bytes` from `from`.
fn heard(sh: &Arc<Shared>, bytes: &[u8], from: SocketAddr) {
    let Some((id, port)) = parse(bytes) else {
        sh.seen.lock().expect("seen").malformed += 1;
        return;
    };
    if id == sh.me.id || sh.stopping.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    // Only peers are remembered: nothing else is dialled.
    let cfg = sh.cfg();
    let Some(peer) = cfg.peer_by_id(id).filter(|p| !p.paused).cloned() else {
        return;
    };
    let addr = SocketAddr::new(from.ip(), port);
    {
        let mut seen = sh.seen.lock().expect("seen");
        seen.received += 1;
        seen.remember(id, addr);
        // One dial at a time per peer, and none to a peer linked already.
        if super::conn::live_link(sh, id).is_some() || !seen.dialing.insert(id) {
            return;
        }
    }
    debug!("discovery: {} announced at {addr}; dialling it", peer.name);
    let sh = sh.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = super::conn::dial(&sh, &peer) {
            debug!("discovery: {}: {e}", peer.name);
        }
        sh.seen.lock().expect("seen").dialing.remove(&peer.id);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_read_back_and_anything_else_is_refused() {
        let id = DeviceId::from_public_key(b"a key");
        let p = packet(id, 22100);
        assert_eq!(parse(&p), Some((id, 22100)));
        let mut bad = p;
        bad[0] = b'X';
        assert_eq!(parse(&bad), None);
        let mut v2 = p;
        v2[8] = 2;
        assert_eq!(parse(&v2), None);
        assert_eq!(parse(&p[..PACKET - 1]), None);
        assert_eq!(parse(&[p.as_slice(), &[0]].concat()), None);
        assert_eq!(parse(&packet(id, 0)), None);
    }

    #[test]
    fn devices_remembered_are_bounded_and_age() {
        let mut s = Seen::default();
        let addr: SocketAddr = "10.0.0.1:22100".parse().unwrap();
        for i in 0..(REMEMBERED + 10) as u32 {
            s.remember(DeviceId::from_public_key(&i.to_le_bytes()), addr);
        }
        assert_eq!(s.devices.len(), REMEMBERED);
        let id = DeviceId::from_public_key(b"new");
        s.remember(id, addr);
        // One address per family, IPv4 first.
        let v6: SocketAddr = "[fe80::1%2]:22100".parse().unwrap();
        s.remember(id, v6);
        assert_eq!(s.addresses(id), vec![addr.to_string(), v6.to_string()]);
        let again: SocketAddr = "10.0.0.9:22100".parse().unwrap();
        s.remember(id, again);
        assert_eq!(s.addresses(id), vec![again.to_string(), v6.to_string()]);
        // A link-local address reads back with its scope.
        assert_eq!(v6.to_string().parse::<SocketAddr>().unwrap(), v6);
    }
}
