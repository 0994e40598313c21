//! Back-off after failures (a folder's scan, a sync with a peer): a wait
//! of a second after the first, doubling after each failure that
//! follows, up to a minute.

use std::time::{Duration, Instant};

/// The wait after a first failure.
const FIRST: Duration = Duration::from_secs(1);
/// The longest wait: doubling stops here.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// When to try again after a failure, and the wait that set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Backoff {
    /// Not before then.
    pub(super) until: Instant,
    wait: Duration,
}

impl Backoff {
    /// The back-off after a failure at `now`; `last`: the back-off of the
    /// failure before it, if it failed before.
    pub(super) fn after(last: Option<&Backoff>, now: Instant) -> Backoff {
        let wait = last.map_or(FIRST, |b| (b.wait * 2).min(MAX_BACKOFF));
        Backoff {
            until: now + wait,
            wait,
        }
    }

    /// Whether it follows a first failure (the one worth a warning).
    pub(super) fn is_first(&self) -> bool {
        self.wait == FIRST
    }

    /// Whether it still holds at `now`.
    pub(super) fn holds(&self, now: Instant) -> bool {
        now < self.until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_starts_at_a_second_and_doubles_up_to_a_minute() {
        let t0 = Instant::now();
        let mut b = Backoff::after(None, t0);
        assert_eq!(b.until, t0 + Duration::from_secs(1));
        assert!(b.is_first());
        let mut waits = vec![];
        for i in 1..10u64 {
            let now = t0 + Duration::from_secs(100 * i);
            b = Backoff::after(Some(&b), now);
            assert!(!b.is_first());
            waits.push((b.until - now).as_secs());
        }
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60, 60]);
    }

    #[test]
    fn it_holds_until_its_time() {
        let t0 = Instant::now();
        let b = Backoff::after(None, t0);
        assert!(b.holds(t0));
        assert!(b.holds(t0 + Duration::from_millis(999)));
        assert!(!b.holds(t0 + Duration::from_secs(1)));
    }
}
