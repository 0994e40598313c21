//! Rates on the board: each peer's bytes in and out, counted on its
//! lasting link (every session of every folder, in both directions), and
//! each folder's copy rate and time left while a sync moves its bytes.

use super::link::Link;
use super::shared::Shared;
use crate::id::DeviceId;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How far back a rate looks.
const WINDOW: Duration = Duration::from_secs(5);

/// A rate over the last [`WINDOW`] of a growing total.
#[derive(Default)]
pub(super) struct Rate {
    samples: VecDeque<(Instant, u64)>,
}

impl Rate {
    /// Takes the total at `now`; returns the bytes per second over the
    /// window (0 until two samples are in, and after the total went back).
    pub(super) fn sample(&mut self, now: Instant, total: u64) -> u64 {
        if self.samples.back().is_some_and(|&(_, t)| t > total) {
            self.samples.clear();
        }
        self.samples.push_back((now, total));
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|&(t, _)| now.duration_since(t) > WINDOW)
        {
            self.samples.pop_front();
        }
        let (&(t0, b0), &(t1, b1)) = match (self.samples.front(), self.samples.back()) {
            (Some(a), Some(b)) => (a, b),
            _ => return 0,
        };
        let secs = t1.duration_since(t0).as_secs_f64();
        if secs < 0.2 {
            return 0;
        }
        ((b1 - b0) as f64 / secs) as u64
    }

    pub(super) fn reset(&mut self) {
        self.samples.clear();
    }
}

/// The seconds `left` bytes take at `rate` bytes per second (none while
/// the rate is not known).
pub(super) fn eta_secs(left: u64, rate: u64) -> Option<u64> {
    (rate > 0).then(|| left.div_ceil(rate))
}

/// What the meter knows of one peer.
#[derive(Default)]
struct PeerMeter {
    /// The link last counted, and its counters then.
    link: Option<(Arc<Link>, u64, u64)>,
    sent: u64,
    received: u64,
    rate_out: Rate,
    rate_in: Rate,
}

impl PeerMeter {
    /// Counts what `now_link` (the peer's link now, if any) moved since
    /// the last look, and what a link that has ended since moved before
    /// it did.
    fn count(&mut self, now_link: Option<&Arc<Link>>) {
        let counters = |l: &Link| {
            (
                l.sent.load(Ordering::Relaxed),
                l.received.load(Ordering::Relaxed),
            )
        };
        let mut from = (0, 0);
        if let Some((old, s, r)) = self.link.take() {
            match now_link {
                Some(l) if Arc::ptr_eq(l, &old) => from = (s, r),
                _ => {
                    let (s1, r1) = counters(&old);
                    self.sent += s1.saturating_sub(s);
                    self.received += r1.saturating_sub(r);
                }
            }
        }
        if let Some(l) = now_link {
            let (s1, r1) = counters(l);
            self.sent += s1.saturating_sub(from.0);
            self.received += r1.saturating_sub(from.1);
            self.link = Some((l.clone(), s1, r1));
        }
    }
}

/// Every second, puts each peer's bytes and rates (in and out) on the
/// board; a peer with no link has no rate.
pub(super) async fn show_rates(sh: Arc<Shared>) {
    let mut meters: HashMap<DeviceId, PeerMeter> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = Instant::now();
        let links = sh.links.lock().expect("links").clone();
        let cfg = sh.cfg();
        meters.retain(|id, _| cfg.peer_by_id(*id).is_some());
        for p in &cfg.peers {
            let m = meters.entry(p.id).or_default();
            let link = links.get(&p.id);
            m.count(link);
            let (rate_out, rate_in) = match link {
                Some(_) => (
                    m.rate_out.sample(now, m.sent),
                    m.rate_in.sample(now, m.received),
                ),
                None => {
                    m.rate_out.reset();
                    m.rate_in.reset();
                    (0, 0)
                }
            };
            let (sent, received) = (m.sent, m.received);
            sh.board.peer(&p.name, |s| {
                s.bytes_sent = sent;
                s.bytes_received = received;
                s.rate_out = rate_out;
                s.rate_in = rate_in;
            });
        }
    }
}

/// Every 250 ms, puts on the board the bytes the pair syncs under way
/// still have to copy, the rate they copy at and the time left.
pub(super) async fn show_progress(sh: Arc<Shared>) {
    let mut rates: HashMap<String, Rate> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = Instant::now();
        let folders = sh.all_folders();
        rates.retain(|id, _| folders.iter().any(|f| &f.id == id));
        for rt in folders {
            let total = rt.bytes_total.load(Ordering::Relaxed);
            let done = rt.bytes_done.load(Ordering::Relaxed);
            let rate = rates.entry(rt.id.clone()).or_default();
            if total == 0 {
                rate.reset();
                continue;
            }
            let bps = rate.sample(now, done);
            let left = total.saturating_sub(done);
            sh.board.folder(&rt.id, |s| {
                // Under the board's lock: a sync that ended since the
                // load above has shown that it did (`progress_over`).
                if rt.bytes_total.load(Ordering::Relaxed) == 0 {
                    return;
                }
                // Not in sync while bytes are still to come or go: how
                // much of the sync's bytes are there (what it showed
                // before comes back when the sync ends).
                let mut before = rt.in_sync_before.lock().expect("in sync");
                before.get_or_insert(s.in_sync_percent);
                s.in_sync_percent = 100.0 * done.min(total) as f64 / total as f64;
                s.bytes_to_go = left;
                s.rate = bps;
                s.eta_secs = eta_secs(left, bps);
            });
        }
    }
}

/// A sync's copying is over: the folder shows nothing to go.
pub(super) fn progress_over(sh: &Shared, rt: &super::shared::FolderRt) {
    rt.bytes_total.store(0, Ordering::Relaxed);
    rt.bytes_done.store(0, Ordering::Relaxed);
    sh.board.folder(&rt.id, |s| {
        s.bytes_to_go = 0;
        s.rate = 0;
        s.eta_secs = None;
        if let Some(p) = rt.in_sync_before.lock().expect("in sync").take() {
            s.in_sync_percent = p;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_the_growth_over_the_window() {
        let t = Instant::now();
        let mut r = Rate::default();
        assert_eq!(r.sample(t, 0), 0, "one sample says nothing");
        assert_eq!(r.sample(t + Duration::from_secs(1), 1000), 1000);
        assert_eq!(r.sample(t + Duration::from_secs(2), 3000), 1500);
        // Old samples leave the window.
        for s in 3..=10 {
            r.sample(t + Duration::from_secs(s), 3000 + (s - 2) * 100);
        }
        assert_eq!(r.sample(t + Duration::from_secs(11), 3900), 100);
    }

    #[test]
    fn a_total_that_goes_back_starts_over() {
        let t = Instant::now();
        let mut r = Rate::default();
        r.sample(t, 5000);
        r.sample(t + Duration::from_secs(1), 9000);
        assert_eq!(r.sample(t + Duration::from_secs(2), 10), 0);
        assert_eq!(r.sample(t + Duration::from_secs(3), 510), 500);
    }

    #[test]
    fn nothing_moving_is_no_rate() {
        let t = Instant::now();
        let mut r = Rate::default();
        r.sample(t, 700);
        assert_eq!(r.sample(t + Duration::from_secs(1), 700), 0);
    }

    #[test]
    fn time_left_needs_a_rate() {
        assert_eq!(eta_secs(1000, 0), None);
        assert_eq!(eta_secs(1000, 300), Some(4));
        assert_eq!(eta_secs(0, 300), Some(0));
    }
}
