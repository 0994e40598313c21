//! Which versions a retention policy keeps.
//!
//! Pure functions of the versions' paths and times, so that what is kept
//! can be checked against the policy's words (see the property test).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

pub const SECOND: i64 = 1_000_000_000;
pub const MINUTE: i64 = 60 * SECOND;
pub const HOUR: i64 = 60 * MINUTE;
pub const DAY: i64 = 24 * HOUR;
pub const WEEK: i64 = 7 * DAY;
/// The staggered schedule's month.
pub const MONTH: i64 = 30 * DAY;

/// How long old versions are kept. Every rule that is set must keep a
/// version for it to stay; `max_size` is applied last, dropping the
/// oldest versions first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Keep at most this many versions of each path (the newest).
    pub keep_last: Option<u32>,
    /// Every version for the first hour, then one per hour for a day, one
    /// per day for a month (30 days), one per week after that.
    pub staggered: bool,
    /// Drop versions saved longer ago than this (nanoseconds).
    pub max_age_ns: Option<i64>,
    /// Keep the store at most this large (bytes of chunks kept).
    pub max_size: Option<u64>,
}

impl Default for Policy {
    /// Staggered, for a year.
    fn default() -> Self {
        Policy {
            keep_last: None,
            staggered: true,
            max_age_ns: Some(365 * DAY),
            max_size: None,
        }
    }
}

impl Policy {
    /// Keeps every version (until `weave gc` is told otherwise).
    pub fn keep_all() -> Policy {
        Policy {
            keep_last: None,
            staggered: false,
            max_age_ns: None,
            max_size: None,
        }
    }

    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.keep_last {
            parts.push(format!("the last {n} versions of each file"));
        }
        if self.staggered {
            parts.push(
                "staggered (all for an hour, hourly for a day, daily for a month, weekly after)"
                    .into(),
            );
        }
        if let Some(a) = self.max_age_ns {
            parts.push(format!("at most {} old", format_duration(a)));
        }
        if let Some(s) = self.max_size {
            parts.push(format!("at most {s} bytes in all"));
        }
        if parts.is_empty() {
            "every version, for ever".into()
        } else {
            parts.join("; ")
        }
    }
}

/// What retention looks at in a version.
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    pub id: u64,
    pub path: &'a str,
    pub saved_at_ns: i64,
}

/// The ids the time and count rules keep (`max_size` is the store's).
pub fn select(policy: &Policy, versions: &[Stamp<'_>], now_ns: i64) -> HashSet<u64> {
    let mut by_path: BTreeMap<&str, Vec<&Stamp>> = BTreeMap::new();
    for v in versions {
        by_path.entry(v.path).or_default().push(v);
    }
    let mut keep = HashSet::new();
    for (_, mut vs) in by_path {
        // Newest first; ties broken by id (newer ids are newer).
        vs.sort_by(|a, b| b.saved_at_ns.cmp(&a.saved_at_ns).then(b.id.cmp(&a.id)));
        let mut buckets: HashSet<(u8, i64)> = HashSet::new();
        for (rank, v) in vs.iter().enumerate() {
            let age = (now_ns - v.saved_at_ns).max(0);
            if policy.max_age_ns.is_some_and(|m| age > m) {
                continue;
            }
            if policy.keep_last.is_some_and(|n| rank >= n as usize) {
                continue;
            }
            if policy.staggered {
                if let Some(b) = bucket(age) {
                    // The newest version of each bucket stays.
                    if !buckets.insert(b) {
                        continue;
                    }
                }
            }
            keep.insert(v.id);
        }
    }
    keep
}

/// The staggered schedule's bucket of a version `age_ns` old: None in the
/// first hour (every version stays).
pub fn bucket(age_ns: i64) -> Option<(u8, i64)> {
    if age_ns < HOUR {
        None
    } else if age_ns < DAY {
        Some((1, age_ns / HOUR))
    } else if age_ns < MONTH {
        Some((2, age_ns / DAY))
    } else {
        Some((3, age_ns / WEEK))
    }
}

/// Parses "90s", "15m", "12h", "30d", "2w" (and plain seconds).
pub fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: i64 = num.parse().ok()?;
    let unit = match unit.trim() {
        "s" | "sec" | "secs" | "second" | "seconds" => SECOND,
        "m" | "min" | "mins" | "minute" | "minutes" => MINUTE,
        "h" | "hour" | "hours" => HOUR,
        "d" | "day" | "days" => DAY,
        "w" | "week" | "weeks" => WEEK,
        _ => return None,
    };
    n.checked_mul(unit)
}

pub fn format_duration(ns: i64) -> String {
    for (u, name) in [(WEEK, "w"), (DAY, "d"), (HOUR, "h"), (MINUTE, "m")] {
        if ns >= u && ns % u == 0 {
            return format!("{}{name}", ns / u);
        }
    }
    format!("{}s", ns / SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stamps(v: &[(u64, &'static str, i64)]) -> Vec<Stamp<'static>> {
        v.iter()
            .map(|&(id, path, saved_at_ns)| Stamp {
                id,
                path,
                saved_at_ns,
            })
            .collect()
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("30d"), Some(30 * DAY));
        assert_eq!(parse_duration("2w"), Some(2 * WEEK));
        assert_eq!(parse_duration("90"), Some(90 * SECOND));
        assert_eq!(parse_duration("3 hours"), Some(3 * HOUR));
        assert_eq!(parse_duration("3 fortnights"), None);
        assert_eq!(parse_duration("-3d"), None);
        assert_eq!(format_duration(30 * DAY), "30d");
        assert_eq!(format_duration(90 * MINUTE), "90m");
    }

    #[test]
    fn keep_last_counts_per_path() {
        let now = 100 * DAY;
        let v = stamps(&[
            (1, "a", now - 5),
            (2, "a", now - 4),
            (3, "a", now - 3),
            (4, "b", now - 9),
        ]);
        let p = Policy {
            keep_last: Some(2),
            ..Policy::keep_all()
        };
        let k = select(&p, &v, now);
        assert_eq!(k, [2, 3, 4].into_iter().collect());
    }

    #[test]
    fn staggered_keeps_one_per_bucket_after_the_first_hour() {
        let now = 100 * DAY;
        let v = stamps(&[
            (1, "a", now - 10 * MINUTE),
            (2, "a", now - 20 * MINUTE),
            (3, "a", now - 2 * HOUR - MINUTE),
            (4, "a", now - 2 * HOUR - 2 * MINUTE),
            (5, "a", now - 3 * DAY - HOUR),
            (6, "a", now - 3 * DAY - 2 * HOUR),
            (7, "a", now - 60 * DAY),
        ]);
        let p = Policy {
            staggered: true,
            ..Policy::keep_all()
        };
        assert_eq!(select(&p, &v, now), [1, 2, 3, 5, 7].into_iter().collect());
        let p = Policy {
            max_age_ns: Some(30 * DAY),
            ..p
        };
        assert_eq!(select(&p, &v, now), [1, 2, 3, 5].into_iter().collect());
    }

    proptest! {
        /// What `select` keeps is exactly what the policy's words say,
        /// checked rule by rule against a direct reading of them.
        #[test]
        fn select_keeps_exactly_what_the_policy_says(
            raw in proptest::collection::vec((0usize..3, 0i64..(90 * DAY)), 0..40),
            keep_last in proptest::option::of(1u32..5),
            staggered in any::<bool>(),
            max_age in proptest::option::of(0i64..(60 * DAY)),
        ) {
            let now = 200 * DAY;
            let paths = ["a", "b/c", "d"];
            let v: Vec<Stamp> = raw.iter().enumerate().map(|(i, (p, age))| Stamp {
                id: i as u64 + 1, path: paths[*p], saved_at_ns: now - age,
            }).collect();
            let policy = Policy { keep_last, staggered, max_age_ns: max_age, max_size: None };
            let kept = select(&policy, &v, now);
            for x in &v {
                let newer = |y: &&Stamp| y.path == x.path
                    && (y.saved_at_ns, y.id) > (x.saved_at_ns, x.id);
                let rank = v.iter().filter(newer).count();
                let age = now - x.saved_at_ns;
                let by_age = max_age.is_none_or(|m| age <= m);
                let by_count = keep_last.is_none_or(|n| rank < n as usize);
                // Staggered: no newer version (that the other rules keep)
                // in the same bucket.
                let by_bucket = !staggered || match bucket(age) {
                    None => true,
                    Some(b) => !v.iter().filter(newer).any(|y| {
                        let ya = now - y.saved_at_ns;
                        let yrank = v.iter().filter(|z| z.path == y.path
                            && (z.saved_at_ns, z.id) > (y.saved_at_ns, y.id)).count();
                        bucket(ya) == Some(b)
                            && max_age.is_none_or(|m| ya <= m)
                            && keep_last.is_none_or(|n| yrank < n as usize)
                    }),
                };
                prop_assert_eq!(kept.contains(&x.id), by_age && by_count && by_bucket,
                    "version {} ({}, {} old)", x.id, x.path, age);
            }
        }
    }
}
