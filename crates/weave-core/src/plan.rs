//! The planner: a pure function from the versions that the replicas hold of
//! each path to the one version every replica should end with.
//!
//! Nothing here does I/O or looks at a clock, and nothing depends on which
//! replica runs it (I-1): given the same versions, every replica reaches
//! the same verdict, the same winner and the same conflict-copy names.

use crate::entry::{Entry, Object};
use crate::id::ReplicaId;
use crate::path::{ancestors, conflict_name, depth};
use crate::policy::ConflictPolicy;
use crate::vv::{Causality, VersionVector};
use std::collections::BTreeMap;

/// How a conflict was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictKind {
    /// Concurrent edits; every losing version was kept as a conflict copy.
    KeptBoth,
    /// Concurrent edits; the policy picked a winner and the losers were dropped.
    Overruled,
    /// Modified on one replica and deleted on another: the modification won.
    ModifyDelete,
    /// A directory on one replica, a file or symlink on another: the
    /// directory keeps the name and the other is kept as a conflict copy.
    DirVsFile,
    /// A directory was deleted or replaced while something inside it
    /// changed: it was kept as a directory so the change has a place.
    ParentRestored,
}

impl ConflictKind {
    pub fn describe(&self) -> &'static str {
        match self {
            ConflictKind::KeptBoth => "edited on more than one replica; both versions kept",
            ConflictKind::Overruled => "edited on more than one replica; the policy picked one",
            ConflictKind::ModifyDelete => "modified on one replica, deleted on another; kept the modified file",
            ConflictKind::DirVsFile => "a directory on one replica, a file on another; both kept",
            ConflictKind::ParentRestored => {
                "directory removed on one replica while its content changed on another; directory kept"
            }
        }
    }
}

/// A conflict the planner settled, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub path: String,
    pub kind: ConflictKind,
    /// The replica that made the winning version.
    pub winner: ReplicaId,
    /// Conflict copies made for the losers.
    pub copies: Vec<String>,
    /// Replicas whose versions the policy dropped.
    pub dropped: Vec<ReplicaId>,
}

/// The verdict for one path.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The version every replica should hold at this path.
    pub result: Entry,
    /// Conflict copies to create, each at its own path.
    pub copies: Vec<Entry>,
    pub conflict: Option<Conflict>,
}

/// Decides one path from the versions the replicas hold (one element per
/// replica that has an entry for it). Returns None when nobody has one.
pub fn decide(
    path: &str,
    holders: &[(ReplicaId, &Entry)],
    policy: ConflictPolicy,
) -> Option<Decision> {
    if holders.is_empty() {
        return None;
    }
    // The versions nobody else has seen past. Equal vectors that disagree
    // on the state cannot come from a correct history; they are treated
    // as concurrent so nothing is dropped silently.
    let mut maxima: Vec<(ReplicaId, &Entry)> = Vec::new();
    for &(r, e) in holders {
        let dominated = holders
            .iter()
            .any(|(_, o)| o.vv.compare(&e.vv) == Causality::Dominates);
        if !dominated {
            maxima.push((r, e));
        }
    }
    // Distinct versions among the maxima, with who holds each.
    let mut versions: Vec<(&Entry, Vec<ReplicaId>)> = Vec::new();
    for (r, e) in maxima {
        match versions
            .iter_mut()
            .find(|(v, _)| v.vv == e.vv && v.same_state(e))
        {
            Some((v, hs)) => {
                // Pick a canonical representative among identical states.
                if e.precedence_key() > v.precedence_key() {
                    *v = e;
                }
                hs.push(r)
            }
            None => versions.push((e, vec![r])),
        }
    }
    if versions.len() == 1 {
        return Some(Decision {
            result: versions[0].0.clone(),
            copies: Vec::new(),
            conflict: None,
        });
    }
    let merged = versions
        .iter()
        .fold(VersionVector::new(), |acc, (e, _)| acc.merge(&e.vv));

    // Group the concurrent versions by what they hold.
    struct Group<'a> {
        rep: &'a Entry,
        holders: Vec<ReplicaId>,
    }
    let mut groups: Vec<Group> = Vec::new();
    for (e, hs) in &versions {
        match groups.iter_mut().find(|g| g.rep.object == e.object) {
            Some(g) => {
                if e.precedence_key() > g.rep.precedence_key() {
                    g.rep = e;
                }
                g.holders.extend(hs.iter().copied());
            }
            None => groups.push(Group {
                rep: e,
                holders: hs.clone(),
            }),
        }
    }
    let with_vv = |e: &Entry| Entry {
        vv: merged.clone(),
        ..e.clone()
    };
    if groups.len() == 1 {
        // Identical content reached independently: not a conflict. The
        // metadata of the newest version wins.
        return Some(Decision {
            result: with_vv(groups[0].rep),
            copies: Vec::new(),
            conflict: None,
        });
    }
    let had_delete = groups.iter().any(|g| g.rep.object.is_deleted());
    groups.retain(|g| g.rep.is_live());
    // Newest first.
    groups.sort_by_key(|g| std::cmp::Reverse(g.rep.precedence_key()));

    if groups.len() == 1 {
        let w = groups[0].rep;
        return Some(Decision {
            result: with_vv(w),
            copies: Vec::new(),
            conflict: Some(Conflict {
                path: path.to_string(),
                kind: ConflictKind::ModifyDelete,
                winner: w.origin,
                copies: Vec::new(),
                dropped: Vec::new(),
            }),
        });
    }
    let _ = had_delete;

    let dir_idx = groups.iter().position(|g| g.rep.object.is_dir());
    let (winner_idx, keep_losers, kind) = if let Some(i) = dir_idx {
        (i, true, ConflictKind::DirVsFile)
    } else {
        match policy {
            ConflictPolicy::KeepBoth => (0, true, ConflictKind::KeptBoth),
            ConflictPolicy::Newest => (0, false, ConflictKind::Overruled),
            ConflictPolicy::Prefer(r) => match groups.iter().position(|g| g.holders.contains(&r)) {
                Some(i) => (i, false, ConflictKind::Overruled),
                None => (0, true, ConflictKind::KeptBoth),
            },
        }
    };
    let winner = groups[winner_idx].rep;
    let mut copies = Vec::new();
    let mut dropped = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        if i == winner_idx {
            continue;
        }
        if keep_losers {
            copies.push(conflict_copy(path, g.rep));
        } else {
            dropped.push(g.rep.origin);
        }
    }
    Some(Decision {
        result: with_vv(winner),
        conflict: Some(Conflict {
            path: path.to_string(),
            kind,
            winner: winner.origin,
            copies: copies.iter().map(|c| c.path.clone()).collect(),
            dropped,
        }),
        copies,
    })
}

/// The conflict copy of a losing version: same object and metadata, at a
/// name derived from the version itself (its mtime and the replica that
/// made it), so replicas making the same copy independently agree on it.
/// The copy's version vector is assigned when it is placed in a tree plan.
pub fn conflict_copy(path: &str, loser: &Entry) -> Entry {
    Entry {
        path: conflict_name(path, loser.mtime_ns, loser.origin),
        ..loser.clone()
    }
}

/// The plan for a whole tree.
#[derive(Debug, Default)]
pub struct TreePlan {
    /// The version of every path that every replica should end with.
    pub finals: BTreeMap<String, Entry>,
    pub conflicts: Vec<Conflict>,
}

/// Source of fresh version-vector counters for changes the planner itself
/// must make (restoring a directory that has to exist): the replica that
/// coordinates this sync and its next clock value.
pub trait Bumper {
    fn bump(&mut self) -> (ReplicaId, u64);
}

/// Plans a whole tree: decides every path, places conflict copies, and makes
/// the result a valid tree (every live path's ancestors are directories).
pub fn plan_tree(
    by_path: &BTreeMap<&str, Vec<(ReplicaId, &Entry)>>,
    policy: ConflictPolicy,
    bumper: &mut dyn Bumper,
) -> TreePlan {
    let mut plan = TreePlan::default();
    let mut pending_copies: Vec<Entry> = Vec::new();
    for (path, holders) in by_path {
        if let Some(d) = decide(path, holders, policy) {
            plan.finals.insert(path.to_string(), d.result);
            pending_copies.extend(d.copies);
            plan.conflicts.extend(d.conflict);
        }
    }
    place_copies(&mut plan, pending_copies, bumper);

    // Every live path needs its ancestors to be directories.
    let mut required: Vec<String> = Vec::new();
    {
        let mut seen = std::collections::HashSet::new();
        for (p, e) in &plan.finals {
            if !e.is_live() {
                continue;
            }
            for a in ancestors(p) {
                if !seen.insert(a.to_string()) {
                    break;
                }
                required.push(a.to_string());
            }
        }
    }
    required.sort_by(|a, b| depth(a).cmp(&depth(b)).then_with(|| a.cmp(b)));
    for d in required {
        let current = plan.finals.get(&d);
        if current.is_some_and(|e| e.object.is_dir()) {
            continue;
        }
        let mut vv = VersionVector::new();
        let mut mode = 0o755;
        let mut best_dir: Option<&Entry> = None;
        if let Some(hs) = by_path.get(d.as_str()) {
            for (_, e) in hs {
                vv = vv.merge(&e.vv);
                if e.object.is_dir()
                    && best_dir.is_none_or(|b| e.precedence_key() > b.precedence_key())
                {
                    best_dir = Some(e);
                }
            }
        }
        let mut meta = None;
        if let Some(b) = best_dir {
            mode = b.mode;
            meta = b.meta.clone();
        }
        let mut copies = Vec::new();
        if let Some(e) = current {
            vv = vv.merge(&e.vv);
            if e.is_live() {
                copies.push(conflict_copy(&d, e));
            }
        }
        let (by, clock) = bumper.bump();
        vv.bump(by, clock);
        plan.conflicts.push(Conflict {
            path: d.clone(),
            kind: ConflictKind::ParentRestored,
            winner: by,
            copies: copies.iter().map(|c| c.path.clone()).collect(),
            dropped: Vec::new(),
        });
        plan.finals.insert(
            d.clone(),
            Entry {
                path: d.clone(),
                object: Object::Dir,
                mode,
                mtime_ns: 0,
                vv,
                origin: by,
                meta,
            },
        );
        place_copies(&mut plan, copies, bumper);
    }
    plan
}

/// Adds conflict copies to the plan.
///
/// A copy is a new object at a new path: it gets a fresh version there
/// (the coordinator's clock), never the version vector of the path it came
/// from, which says nothing about the copy's path. So a copy always
/// survives what is already recorded at its name: a tombstone there is
/// superseded, the same content is simply kept, and different live content
/// (two conflicts of one file from one replica in the same second) makes
/// the new copy take a numbered name, so nothing is lost.
fn place_copies(plan: &mut TreePlan, mut copies: Vec<Entry>, bumper: &mut dyn Bumper) {
    // Bounded: every round of nested copies makes longer names.
    let mut rounds = 0;
    while let Some(mut copy) = copies.pop() {
        rounds += 1;
        if rounds > 10_000 {
            break;
        }
        // The first free name: the plain conflict name, then numbered
        // ones, so an earlier copy with a different content is never
        // replaced (a fresh version from the same coordinator would
        // dominate it).
        let base = copy.path.clone();
        let mut n = 1;
        while plan
            .finals
            .get(&copy.path)
            .is_some_and(|e| e.is_live() && e.object != copy.object)
            && n < 1000
        {
            n += 1;
            copy.path = numbered(&base, n);
        }
        let (by, clock) = bumper.bump();
        let mut fresh = VersionVector::new();
        fresh.bump(by, clock);
        match plan.finals.get(&copy.path) {
            Some(existing) if existing.is_live() => {
                // The same content is already there.
            }
            Some(tombstone) => {
                copy.vv = tombstone.vv.merge(&fresh);
                plan.finals.insert(copy.path.clone(), copy);
            }
            None => {
                copy.vv = fresh;
                plan.finals.insert(copy.path.clone(), copy);
            }
        }
    }
}

/// `NAME.weave-conflict-STAMP-ID-N.EXT` from `NAME.weave-conflict-STAMP-ID.EXT`.
fn numbered(conflict_path: &str, n: u32) -> String {
    const MARK: &str = ".weave-conflict-";
    let file_start = conflict_path.rfind('/').map(|i| i + 1).unwrap_or(0);
    // The tag weave added is the last marker; the stamp and the id after
    // it are ASCII of fixed width: YYYYMMDD-HHMMSS-XXXXXXX.
    let Some(m) = conflict_path[file_start..].rfind(MARK) else {
        return format!("{conflict_path}-{n}");
    };
    let end = file_start + m + MARK.len() + 23;
    if end > conflict_path.len() || !conflict_path.is_char_boundary(end) {
        return format!("{conflict_path}-{n}");
    }
    format!("{}-{n}{}", &conflict_path[..end], &conflict_path[end..])
}

#[cfg(test)]
mod tests;
