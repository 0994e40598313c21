//! Stage 4 of a sync, before the plan is final: what the planner sees of
//! each replica.
//!
//! Replicas that have all integrated each other before (under the same
//! ignore patterns) hold the same version of every path that none of
//! them changed since: a path whose entry on every replica has a
//! sequence number at or below what every other replica has integrated
//! of it ([`floors`]) is decided the same by everyone and needs no
//! operation. So each replica gives only what changed since
//! ([`Replica::changed_since`]), every replica is asked for those paths
//! and their ancestors ([`Replica::entries_at`]), and the pure planner
//! runs on them. The plan can reach beyond them in two ways, and each
//! round loads what it reached for and plans again, until it reaches for
//! nothing new (I-7: the result is what planning every path gives):
//!
//! - a conflict copy, or a numbered one, lands at a path not loaded;
//! - a directory some replica holds is deleted or replaced by the plan:
//!   everything inside it is loaded.
//!
//! Replicas that never synced together, a changed set of ignore
//! patterns, a replica whose sequence numbers went back, or a plan that
//! does not settle in [`MAX_ROUNDS`] rounds: every path is planned.

use crate::replica::{Entries, Replica};
use crate::run::{plan, CoordinatorClock};
use crate::{Roles, SyncError};
use std::collections::{BTreeSet, HashSet};
use weave_core::ignore::Matcher;
use weave_core::path::ancestors;
use weave_core::{ConflictPolicy, TreePlan};

/// Rounds of loading and planning again before planning every path.
pub(crate) const MAX_ROUNDS: usize = 16;

/// How the plan was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// From every replica's whole index.
    Full,
    /// From what changed since the last sync: this many paths, loaded in
    /// this many rounds.
    Changes { paths: usize, rounds: usize },
    /// A slice of every path: those after this one (from the first with
    /// None), loaded in this many rounds.
    Slice {
        after: Option<String>,
        rounds: usize,
    },
}

/// The views of each replica and the plan made from them.
pub(crate) struct Gathered {
    pub views: Vec<Entries>,
    pub plan: TreePlan,
    pub scope: Scope,
    /// Paths an earlier slice of this sync decided: planned again only
    /// to plan the rest, never carried out (or reported) twice.
    pub decided: Decided,
}

/// Paths an earlier slice decided: every path up to `upto`, and `paths`.
#[derive(Debug, Default)]
pub(crate) struct Decided {
    pub upto: Option<String>,
    pub paths: HashSet<String>,
}

impl Decided {
    pub fn has(&self, p: &str) -> bool {
        self.upto.as_deref().is_some_and(|u| p <= u) || self.paths.contains(p)
    }
}

/// What every planning stage takes besides the replicas.
pub(crate) struct Planning<'a> {
    pub roles: &'a Roles,
    pub matcher: &'a Matcher,
    pub policy: ConflictPolicy,
    /// Plan every path whatever the replicas could give.
    pub full: bool,
}

/// How a sync plans: at once, or a slice of paths at a time.
pub(crate) enum Start {
    Planned(Gathered),
    Sliced(crate::slice::Slicer),
}

/// Gathers the views and plans (see the module); a sync that must plan
/// every path of replicas that can give their indexes in pages plans a
/// slice at a time (`slice` paths, 0: at once).
pub(crate) fn gather_and_plan(
    reps: &mut [Box<dyn Replica>],
    how: &Planning,
    slice: usize,
    clock: &mut CoordinatorClock,
) -> Result<Start, SyncError> {
    if !how.full {
        if let Some(floors) = floors(reps, how.matcher.fingerprint()) {
            if let Some(g) = incremental(reps, &floors, how, clock)? {
                return Ok(Start::Planned(g));
            }
        }
        if slice > 0 {
            if let Some(s) = crate::slice::Slicer::start(reps, slice)? {
                return Ok(Start::Sliced(s));
            }
        }
    }
    Ok(Start::Planned(plan_whole(reps, how, clock)?))
}

/// Plans every path of every replica at once.
pub(crate) fn plan_whole(
    reps: &mut [Box<dyn Replica>],
    how: &Planning,
    clock: &mut CoordinatorClock,
) -> Result<Gathered, SyncError> {
    let mut views = Vec::with_capacity(reps.len());
    for r in reps.iter_mut() {
        views.push(r.entries()?);
    }
    let plan = plan(reps, &views, how.roles, how.matcher, how.policy, clock);
    Ok(Gathered {
        views,
        plan,
        scope: Scope::Full,
        decided: Decided::default(),
    })
}

/// Per replica, the sequence number up to which every other replica has
/// integrated it; None when some pair never synced, synced under other
/// ignore patterns (`fingerprint`), or a replica's sequence numbers went
/// back below what a peer integrated (its state was restored or reset).
pub(crate) fn floors(reps: &[Box<dyn Replica>], fingerprint: u64) -> Option<Vec<u64>> {
    let mut out = Vec::with_capacity(reps.len());
    for r in reps {
        if r.info().ignore_fingerprint != Some(fingerprint) {
            return None;
        }
        let mut floor = r.info().seq;
        for p in reps.iter().filter(|p| p.info().id != r.info().id) {
            let had = *p.info().peers.get(&r.info().id)?;
            if had > r.info().seq {
                return None;
            }
            floor = floor.min(had);
        }
        out.push(floor);
    }
    Some(out)
}

/// The paths each replica has been asked about (or told of).
pub(crate) struct Known {
    pub paths: Vec<HashSet<String>>,
    /// Directories whose whole inside every replica has given.
    pub subtrees: Vec<String>,
    /// A range of paths every replica has given whole: a slice.
    pub range: Option<PathRange>,
}

/// The paths after `after` (from the first with None) up to and
/// including `upto` (to the last with None).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PathRange {
    pub after: Option<String>,
    pub upto: Option<String>,
}

impl PathRange {
    pub fn contains(&self, p: &str) -> bool {
        self.after.as_deref().is_none_or(|a| p > a) && self.upto.as_deref().is_none_or(|u| p <= u)
    }

    /// True if everything inside directory `d` is in the range: all of it
    /// sorts after "d/" and before "d0" ('0' is the byte after '/').
    fn holds_inside(&self, d: &str) -> bool {
        let first = format!("{d}/");
        self.after.as_deref().is_none_or(|a| a < first.as_str())
            && self
                .upto
                .as_deref()
                .is_none_or(|u| u >= format!("{d}0").as_str())
    }
}

impl Known {
    fn has(&self, i: usize, p: &str) -> bool {
        self.paths[i].contains(p)
            || self.range.as_ref().is_some_and(|r| r.contains(p))
            || self.subtrees.iter().any(|d| {
                d.is_empty()
                    || (p.starts_with(d.as_str()) && p.as_bytes().get(d.len()) == Some(&b'/'))
            })
    }

    /// True if the whole inside of directory `d` was given.
    fn inside_loaded(&self, d: &str) -> bool {
        self.range.as_ref().is_some_and(|r| r.holds_inside(d))
            || self.subtrees.iter().any(|s| {
                s.is_empty()
                    || d == s
                    || (d.starts_with(s.as_str()) && d.as_bytes().get(s.len()) == Some(&b'/'))
            })
    }
}

/// Plans from what changed (see the module); None when the plan did not
/// settle and every path must be planned.
fn incremental(
    reps: &mut [Box<dyn Replica>],
    floors: &[u64],
    how: &Planning,
    clock: &mut CoordinatorClock,
) -> Result<Option<Gathered>, SyncError> {
    let mut views: Vec<Entries> = Vec::with_capacity(reps.len());
    for (r, &floor) in reps.iter_mut().zip(floors) {
        views.push(r.changed_since(floor)?);
    }
    let known = Known {
        paths: views.iter().map(|v| v.keys().cloned().collect()).collect(),
        subtrees: Vec::new(),
        range: None,
    };
    settle(reps, views, known, how, clock)
}

/// Plans from `views`, loading what the plan reaches for (with the
/// ancestors of every path) until it reaches for nothing new; None when
/// that takes more than [`MAX_ROUNDS`] rounds.
pub(crate) fn settle(
    reps: &mut [Box<dyn Replica>],
    mut views: Vec<Entries>,
    mut known: Known,
    how: &Planning,
    clock: &mut CoordinatorClock,
) -> Result<Option<Gathered>, SyncError> {
    let mut want: BTreeSet<String> = BTreeSet::new();
    for v in &views {
        for p in v.keys() {
            add_with_ancestors(&mut want, p);
        }
    }
    let mut subtrees: Vec<String> = Vec::new();
    for round in 1..=MAX_ROUNDS {
        load(reps, &mut views, &mut known, &want, &subtrees)?;
        known.subtrees.append(&mut subtrees);
        let mut c = clock.clone();
        let plan = plan(reps, &views, how.roles, how.matcher, how.policy, &mut c);
        let (paths, subs) = reached(&plan, &views, &known, &how.roles.backups, how.matcher);
        if paths.is_empty() && subs.is_empty() {
            *clock = c;
            let scope = match known.range {
                Some(r) => Scope::Slice {
                    after: r.after,
                    rounds: round,
                },
                None => Scope::Changes {
                    paths: known.paths.iter().map(|k| k.len()).max().unwrap_or(0),
                    rounds: round,
                },
            };
            return Ok(Some(Gathered {
                views,
                plan,
                scope,
                decided: Decided::default(),
            }));
        }
        for p in &paths {
            add_with_ancestors(&mut want, p);
        }
        subtrees = subs;
    }
    tracing::debug!("the incremental plan did not settle; planning every path");
    Ok(None)
}

fn add_with_ancestors(want: &mut BTreeSet<String>, p: &str) {
    if !want.insert(p.to_string()) {
        return;
    }
    for a in ancestors(p) {
        if !want.insert(a.to_string()) {
            break;
        }
    }
}

/// Asks each replica for the paths of `want` it has not been asked about
/// and for the inside of `subtrees`, into its view.
fn load(
    reps: &mut [Box<dyn Replica>],
    views: &mut [Entries],
    known: &mut Known,
    want: &BTreeSet<String>,
    subtrees: &[String],
) -> Result<(), SyncError> {
    for (i, r) in reps.iter_mut().enumerate() {
        let paths: Vec<String> = want.iter().filter(|p| !known.has(i, p)).cloned().collect();
        if paths.is_empty() && subtrees.is_empty() {
            continue;
        }
        let got = r.entries_at(&paths, subtrees)?;
        let view = std::sync::Arc::make_mut(&mut views[i]);
        for (p, le) in got.iter() {
            known.paths[i].insert(p.clone());
            view.insert(p.clone(), le.clone());
        }
        known.paths[i].extend(paths);
    }
    Ok(())
}

/// What `plan` reaches for that is not loaded: paths it decides that
/// some replica was not asked about, and directories some replica holds
/// that it deletes or replaces (not yet loaded whole).
fn reached(
    plan: &TreePlan,
    views: &[Entries],
    known: &Known,
    backups: &[usize],
    matcher: &Matcher,
) -> (Vec<String>, Vec<String>) {
    let n = views.len();
    let paths: Vec<String> = plan
        .finals
        .keys()
        .filter(|p| (0..n).any(|i| !known.has(i, p)))
        .cloned()
        .collect();
    let mut subtrees: BTreeSet<String> = BTreeSet::new();
    for (i, v) in views.iter().enumerate() {
        for (p, le) in v.iter() {
            if !le.entry.is_live() || !le.entry.object.is_dir() {
                continue;
            }
            let stays_dir = match plan.finals.get(p) {
                Some(f) => f.is_live() && f.object.is_dir(),
                // Not planned: it stays, unless only a backup holds it
                // (and it is not ignored): the backup then removes it.
                None => !backups.contains(&i) || matcher.is_ignored(p, true),
            };
            if !stays_dir && !known.inside_loaded(p) {
                subtrees.insert(p.clone());
            }
        }
    }
    (paths, subtrees.into_iter().collect())
}

#[cfg(test)]
mod tests;
