//! What the watcher saw change in a folder since its last scan, and which
//! of those paths are ready to be scanned.
//!
//! A scan looks only at the touched paths (each with its subtree), unless
//! something asks for a full scan: the daemon's start, the watch being
//! (re)established, a config change, the periodic rescan, a watcher that
//! lost events. A file still being written, and a large file, waits until
//! it has been quiet for a while, so that a copy in progress is not sent
//! again and again; a file written without pause is sent anyway every
//! [`MAX_SETTLE`].

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Beyond this many touched paths, a full scan is cheaper to keep track of.
pub const MAX_PATHS: usize = 10_000;
/// Files at least this large wait [`LARGE_QUIET`] after their last write.
pub const LARGE_FILE: u64 = 16 << 20;
pub const LARGE_QUIET: Duration = Duration::from_secs(1);
/// Writes to one file spread over more than this: it is being written.
pub const WRITING: Duration = Duration::from_millis(10);
/// The longest a file being written is held back.
pub const MAX_SETTLE: Duration = Duration::from_secs(10);
/// A directory that appeared is looked at again once it is this old: files
/// made in it before the watcher watched it raise no event.
pub const RECHECK: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Touched(Mutex<State>);

#[derive(Debug)]
struct State {
    full: bool,
    paths: BTreeSet<String>,
    writes: HashMap<String, Burst>,
    /// Directories that appeared, and when.
    fresh: HashMap<String, Instant>,
}

/// A run of writes to one file.
#[derive(Clone, Copy, Debug)]
struct Burst {
    first: Instant,
    last: Instant,
    large: bool,
    /// A scan left it for later (until then, the watch delay's batch
    /// wakes the folder, not this).
    held: bool,
}

impl Default for Touched {
    fn default() -> Touched {
        Touched::new()
    }
}

impl Touched {
    /// Starts with a full scan due.
    pub fn new() -> Touched {
        Touched(Mutex::new(State {
            full: true,
            paths: BTreeSet::new(),
            writes: HashMap::new(),
            fresh: HashMap::new(),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().expect("touched")
    }

    /// The next scan looks at the whole folder.
    pub fn everything(&self) {
        self.state().everything();
    }

    /// Whether a change to `rel` needs looking at (a `stat`) before
    /// [`Touched::add`]: not when the next scan looks at everything anyway
    /// (as during a burst of new files), nor for the size of a file
    /// already known to be large.
    pub fn wants_a_look(&self, rel: &str) -> bool {
        let s = self.state();
        !s.full && !s.writes.get(rel).is_some_and(|b| b.large)
    }

    /// `rel` (relative to the folder) changed. `written` is the file's size
    /// when the change wrote file data.
    pub fn add(&self, rel: String, written: Option<u64>, now: Instant) {
        let mut s = self.state();
        if s.full {
            return;
        }
        if let Some(size) = written {
            let b = s.writes.entry(rel.clone()).or_insert(Burst {
                first: now,
                last: now,
                large: false,
                held: false,
            });
            b.last = now;
            b.large |= size >= LARGE_FILE;
        }
        s.paths.insert(rel);
        s.bound();
    }

    /// The directory `rel` appeared (made, or moved in): it is looked at
    /// now and once more [`RECHECK`] later.
    pub fn add_dir(&self, rel: String, now: Instant) {
        let mut s = self.state();
        if s.full {
            return;
        }
        s.fresh.entry(rel.clone()).or_insert(now);
        s.paths.insert(rel);
        s.bound();
    }

    /// How long `b` still has to stay quiet (zero when it may be scanned).
    fn wait(b: &Burst, delay: Duration, now: Instant) -> Duration {
        if now.saturating_duration_since(b.first) >= MAX_SETTLE {
            return Duration::ZERO;
        }
        let quiet = if b.large {
            LARGE_QUIET.max(delay)
        } else if b.last.saturating_duration_since(b.first) > WRITING {
            // Written over some time, not at once: still being written.
            delay
        } else {
            Duration::ZERO
        };
        quiet.saturating_sub(now.saturating_duration_since(b.last))
    }

    /// Takes what the next scan should look at: None for everything, or
    /// the touched paths that are ready (the others stay for later).
    pub fn take(&self, delay: Duration, now: Instant) -> Option<Vec<String>> {
        let mut s = self.state();
        if s.full {
            s.everything();
            s.full = false;
            return None;
        }
        let State {
            paths,
            writes,
            fresh,
            ..
        } = &mut *s;
        fresh.retain(|p, since| {
            let due = now.saturating_duration_since(*since) >= RECHECK;
            if due {
                paths.insert(p.clone());
            }
            !due
        });
        let mut ready = Vec::new();
        paths.retain(|p| {
            let waits = match writes.get_mut(p) {
                Some(b) if !Touched::wait(b, delay, now).is_zero() => {
                    b.held = true;
                    true
                }
                _ => false,
            };
            if !waits {
                writes.remove(p);
                ready.push(p.clone());
            }
            waits
        });
        Some(ready)
    }

    /// Gives back what [`Touched::take`] took, for a scan that failed.
    pub fn untake(&self, taken: Option<Vec<String>>) {
        match taken {
            None => self.everything(),
            Some(paths) => {
                let mut s = self.state();
                if !s.full {
                    s.paths.extend(paths);
                    s.bound();
                }
            }
        }
    }

    /// When the first path held back (a file being written, a directory
    /// to look at again) is ready, if there is one: `now` if one already
    /// is.
    pub fn next_ready(&self, delay: Duration, now: Instant) -> Option<Instant> {
        let s = self.state();
        let writes = s
            .writes
            .values()
            .filter(|b| b.held)
            .map(|b| now + Touched::wait(b, delay, now));
        let fresh = s.fresh.values().map(|t| (*t + RECHECK).max(now));
        writes.chain(fresh).min()
    }
}

impl State {
    fn everything(&mut self) {
        self.full = true;
        self.paths.clear();
        self.writes.clear();
        self.fresh.clear();
    }

    /// Too many paths to keep track of: a full scan instead.
    fn bound(&mut self) {
        if self.paths.len() + self.fresh.len() > MAX_PATHS {
            self.everything();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_looked_at_that_the_next_scan_looks_at_anyway() {
        let t = Touched::new();
        let now = Instant::now();
        assert!(!t.wants_a_look("a"), "a full scan is due");
        t.take(DELAY, now);
        assert!(t.wants_a_look("a"));
        t.add("big".into(), Some(LARGE_FILE), now);
        assert!(!t.wants_a_look("big"), "known to be large");
        assert!(t.wants_a_look("small"));
        for i in 0..=MAX_PATHS {
            t.add(format!("f{i}"), Some(1), now);
        }
        assert!(!t.wants_a_look("small"), "a burst: everything is scanned");
    }

    const DELAY: Duration = Duration::from_millis(50);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_scan_comes_first_then_only_touched_paths() {
        let t = Touched::new();
        let t0 = Instant::now();
        t.add("a".into(), None, t0);
        assert_eq!(t.take(DELAY, t0), None, "the first scan is a full one");
        assert_eq!(t.take(DELAY, t0), Some(vec![]));
        t.add("b/c".into(), None, t0);
        t.add("d".into(), Some(3), t0);
        assert_eq!(
            t.take(DELAY, t0 + ms(60)),
            Some(vec!["b/c".into(), "d".into()])
        );
        assert_eq!(t.take(DELAY, t0 + ms(60)), Some(vec![]));
    }

    #[test]
    fn a_file_still_being_written_waits_until_quiet_and_at_most_max_settle() {
        let t = Touched::new();
        let t0 = Instant::now();
        t.take(DELAY, t0);
        // Written for 200 ms, then a small file once.
        for i in 0..=20 {
            t.add("big".into(), Some(1000), t0 + ms(10 * i));
        }
        t.add("small".into(), Some(10), t0 + ms(200));
        let now = t0 + ms(220);
        // Not taken yet: the watch delay's batch wakes the folder.
        assert_eq!(t.next_ready(DELAY, now), None);
        assert_eq!(t.take(DELAY, now), Some(vec!["small".into()]));
        assert_eq!(t.next_ready(DELAY, now), Some(t0 + ms(250)));
        assert_eq!(t.take(DELAY, t0 + ms(249)), Some(vec![]));
        assert_eq!(t.take(DELAY, t0 + ms(250)), Some(vec!["big".into()]));
        // Written without pause: taken anyway after MAX_SETTLE.
        let t1 = t0 + ms(1000);
        for i in 0..1200 {
            let now = t1 + ms(10 * i);
            t.add("log".into(), Some(1000), now);
            if i % 100 == 0 && i > 0 {
                // Once taken, a new run of writes starts to wait again.
                let want = if ms(10 * i) == MAX_SETTLE {
                    vec!["log".to_string()]
                } else {
                    vec![]
                };
                assert_eq!(t.take(DELAY, now), Some(want), "after {i} writes");
            }
        }
    }

    #[test]
    fn a_large_file_waits_longer_and_delay_zero_waits_for_nothing_else() {
        let t = Touched::new();
        let t0 = Instant::now();
        t.take(Duration::ZERO, t0);
        t.add("movie".into(), Some(LARGE_FILE), t0);
        t.add("note".into(), Some(5), t0);
        assert_eq!(t.take(Duration::ZERO, t0), Some(vec!["note".into()]));
        assert_eq!(t.next_ready(Duration::ZERO, t0), Some(t0 + LARGE_QUIET));
        assert_eq!(
            t.take(Duration::ZERO, t0 + LARGE_QUIET),
            Some(vec!["movie".into()])
        );
        assert_eq!(t.next_ready(Duration::ZERO, t0 + LARGE_QUIET), None);
    }

    #[test]
    fn a_new_directory_is_looked_at_again_a_little_later() {
        let t = Touched::new();
        let t0 = Instant::now();
        t.take(DELAY, t0);
        t.add_dir("new".into(), t0);
        assert_eq!(t.take(DELAY, t0), Some(vec!["new".into()]));
        assert_eq!(t.next_ready(DELAY, t0), Some(t0 + RECHECK));
        assert_eq!(t.take(DELAY, t0 + RECHECK / 2), Some(vec![]));
        assert_eq!(t.take(DELAY, t0 + RECHECK), Some(vec!["new".into()]));
        assert_eq!(t.next_ready(DELAY, t0 + RECHECK), None);
        assert_eq!(t.take(DELAY, t0 + RECHECK * 2), Some(vec![]));
    }

    #[test]
    fn a_held_file_that_became_ready_is_still_reported_ready() {
        let t = Touched::new();
        let t0 = Instant::now();
        t.take(DELAY, t0);
        t.add("movie".into(), Some(LARGE_FILE), t0);
        assert_eq!(t.take(DELAY, t0), Some(vec![]));
        // Nobody looked until well after it became ready.
        let late = t0 + LARGE_QUIET * 3;
        assert_eq!(t.next_ready(DELAY, late), Some(late));
        assert_eq!(t.take(DELAY, late), Some(vec!["movie".into()]));
    }

    #[test]
    fn too_many_paths_or_a_failed_full_scan_mean_a_full_scan() {
        let t = Touched::new();
        let t0 = Instant::now();
        t.take(DELAY, t0);
        for i in 0..=MAX_PATHS {
            t.add(format!("f{i}"), None, t0);
        }
        assert_eq!(t.take(DELAY, t0), None);
        t.add("x".into(), None, t0);
        let taken = t.take(DELAY, t0);
        t.add("y".into(), None, t0);
        t.untake(taken);
        assert_eq!(t.take(DELAY, t0), Some(vec!["x".into(), "y".into()]));
        t.untake(None);
        assert_eq!(t.take(DELAY, t0), None);
    }
}
