//! Planning every path of a large tree a slice at a time.
//!
//! A sync that plans every path (replicas that never synced together, or
//! under other ignore patterns) would otherwise hold every path's entry
//! on every replica, the plan and every operation at once: memory in
//! proportion to the tree, about 3.4 KiB a file. Instead the paths are
//! taken in path order, [`SyncOptions::slice`](crate::SyncOptions) at a
//! time. Each replica gives its next page of entries
//! ([`Replica::entries_from`]); the slice ends at the first path where a
//! full page ended (what lies beyond it is asked for again with the next
//! slice), so every replica has given every entry of the slice. The
//! slice is then planned the way an incremental sync plans what changed
//! ([`crate::gather::settle`]): with the ancestors of its paths, and
//! whatever the plan reaches for beyond them (a conflict copy's path,
//! the inside of a directory some replica holds that the plan deletes
//! or replaces) loaded and planned with it until the plan settles. It is
//! carried out before the next slice is read.
//!
//! What the planner decides at a path depends only on the entries there,
//! at its ancestors and, for a directory that does not stay one, inside
//! it: all of which the slice loads. A path an earlier slice carried out
//! (an ancestor, or inside a directory loaded whole) is the same on every
//! replica when it comes up again, and nothing is done there (where an
//! operation of it failed, it is not tried again in this sync, as
//! planning every path at once would not: the next sync does); a conflict
//! met again is reported once. A plan that does not settle in
//! [`crate::gather::MAX_ROUNDS`] rounds is made from every path instead,
//! and ends the slicing. The differential test (`gather/tests.rs`) checks
//! over random histories that slices of one to three paths leave every
//! replica as planning every path at once does.
//!
//! The cost: a file moved from one slice's path to another's is not
//! found under its old name by the slice that writes the new one (that
//! slice's views do not hold it), so its content comes from a replica
//! that holds it there (over the network, if no other local replica
//! does) instead of a local copy.

use crate::gather::{plan_whole, settle, Decided, Gathered, Known, PathRange, Planning};
use crate::replica::{Entries, Page, Replica};
use crate::run::CoordinatorClock;
use crate::SyncError;
use std::collections::{BTreeSet, HashSet};

/// Where a sync planned in slices is.
pub(crate) struct Slicer {
    limit: usize,
    /// The last path of the slice before (None: none yet).
    after: Option<String>,
    /// Each replica's first page, read to learn whether all can page.
    first: Option<Vec<Page>>,
    /// Paths after the last slice that a slice decided (loaded with it).
    beyond: BTreeSet<String>,
    done: bool,
}

impl Slicer {
    /// Reads each replica's first page; None when one cannot give its
    /// index in pages (it is then planned at once).
    pub fn start(reps: &mut [Box<dyn Replica>], limit: usize) -> Result<Option<Slicer>, SyncError> {
        let limit = limit.max(1);
        let Some(first) = pages(reps, None, limit)? else {
            return Ok(None);
        };
        Ok(Some(Slicer {
            limit,
            after: None,
            first: Some(first),
            beyond: BTreeSet::new(),
            done: false,
        }))
    }

    /// Plans the next slice; None after the last.
    pub fn next(
        &mut self,
        reps: &mut [Box<dyn Replica>],
        how: &Planning,
        clock: &mut CoordinatorClock,
    ) -> Result<Option<Gathered>, SyncError> {
        if self.done {
            return Ok(None);
        }
        let pages = match self.first.take() {
            Some(p) => p,
            None => match pages(reps, self.after.as_deref(), self.limit)? {
                Some(p) => p,
                // A replica that stopped giving pages: every path at once.
                None => {
                    self.done = true;
                    return Ok(Some(plan_whole(reps, how, clock)?));
                }
            },
        };
        let (views, upto) = cut(pages);
        if upto.is_some() && upto <= self.after {
            // A page that ends before it starts (a peer that misbehaves):
            // every path at once rather than no end.
            self.done = true;
            return Ok(Some(plan_whole(reps, how, clock)?));
        }
        let range = PathRange {
            after: self.after.clone(),
            upto: upto.clone(),
        };
        tracing::debug!(?range, "planning a slice");
        // What earlier slices decided: all up to the slice, and what they
        // reached for inside it.
        let mut decided = Decided {
            upto: self.after.clone(),
            paths: HashSet::new(),
        };
        let rest = match &upto {
            Some(u) => {
                let mut rest = self.beyond.split_off(u.as_str());
                if let Some(last) = rest.take(u.as_str()) {
                    self.beyond.insert(last);
                }
                rest
            }
            None => BTreeSet::new(),
        };
        decided
            .paths
            .extend(std::mem::replace(&mut self.beyond, rest));
        match &upto {
            Some(u) => self.after = Some(u.clone()),
            None => self.done = true,
        }
        let known = Known {
            paths: vec![HashSet::new(); reps.len()],
            subtrees: Vec::new(),
            range: Some(range),
        };
        if let Some(mut g) = settle(reps, views, known, how, clock)? {
            if let Some(u) = &upto {
                let past = g.plan.finals.keys().filter(|p| p.as_str() > u.as_str());
                self.beyond.extend(past.cloned());
            }
            g.decided = decided;
            return Ok(Some(g));
        }
        self.done = true;
        Ok(Some(plan_whole(reps, how, clock)?))
    }
}

/// Each replica's next page after `after`; None if one cannot page.
fn pages(
    reps: &mut [Box<dyn Replica>],
    after: Option<&str>,
    limit: usize,
) -> Result<Option<Vec<Page>>, SyncError> {
    let mut out = Vec::with_capacity(reps.len());
    for r in reps.iter_mut() {
        match r.entries_from(after, limit)? {
            Some(p) => out.push(p),
            None => return Ok(None),
        }
    }
    Ok(Some(out))
}

/// The slice the pages give: up to the first path where a page ended
/// (None: every page covers the rest of its index), and each page's
/// entries cut there.
fn cut(pages: Vec<Page>) -> (Vec<Entries>, Option<String>) {
    let upto: Option<String> = pages.iter().filter_map(|p| p.end.clone()).min();
    let Some(u) = &upto else {
        return (pages.into_iter().map(|p| p.entries).collect(), None);
    };
    let views = pages
        .into_iter()
        .map(|p| {
            let mut e = p.entries;
            if e.last_key_value().is_some_and(|(k, _)| k > u) {
                let m = std::sync::Arc::make_mut(&mut e);
                let mut beyond = m.split_off(u.as_str());
                if let Some((k, v)) = beyond.remove_entry(u.as_str()) {
                    m.insert(k, v);
                }
            }
            e
        })
        .collect();
    (views, upto)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use weave_core::LocalEntry;

    fn page(paths: &[&str], limit: usize) -> Page {
        let m: BTreeMap<String, LocalEntry> = paths
            .iter()
            .map(|p| {
                let entry = weave_core::Entry {
                    path: p.to_string(),
                    object: weave_core::Object::Dir,
                    mode: 0o755,
                    mtime_ns: 0,
                    vv: Default::default(),
                    origin: weave_core::ReplicaId(1),
                    meta: None,
                };
                let le = LocalEntry {
                    entry,
                    seq: 1,
                    stat: None,
                };
                (p.to_string(), le)
            })
            .collect();
        Page::of(m, limit)
    }

    fn keys(e: &Entries) -> Vec<&str> {
        e.keys().map(|k| k.as_str()).collect()
    }

    #[test]
    fn a_slice_ends_where_the_first_full_page_ends() {
        let (views, upto) = cut(vec![page(&["a", "c", "e"], 3), page(&["b", "d", "f"], 3)]);
        assert_eq!(upto.as_deref(), Some("e"));
        assert_eq!(keys(&views[0]), ["a", "c", "e"]);
        assert_eq!(
            keys(&views[1]),
            ["b", "d"],
            "what lies beyond is asked again"
        );
        let (views, upto) = cut(vec![page(&["a"], 3), page(&["b", "c", "d"], 3)]);
        assert_eq!(upto.as_deref(), Some("d"));
        assert_eq!(keys(&views[0]), ["a"]);
    }

    #[test]
    fn pages_that_are_not_full_hold_the_rest() {
        let (views, upto) = cut(vec![page(&["a", "b"], 3), page(&[], 3)]);
        assert_eq!(upto, None);
        assert_eq!(keys(&views[0]), ["a", "b"]);
    }

    #[test]
    fn a_page_that_holds_back_entries_still_ends_where_it_ends() {
        // Two paths of three held back (a receive-only folder's own).
        let mut short = page(&["c"], 3);
        short.end = Some("e".into());
        let (views, upto) = cut(vec![short, page(&["a", "b"], 3)]);
        assert_eq!(upto.as_deref(), Some("e"));
        assert_eq!(keys(&views[1]), ["a", "b"]);
    }
}
