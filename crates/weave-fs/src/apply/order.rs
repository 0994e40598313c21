//! The order of a run, and what it holds back. Nothing is destroyed
//! before what must survive it has landed: a content that failed to land
//! at its new place and exists nowhere else is [`Unlanded`], and a
//! removal or overwrite that would destroy its old copy is held back
//! (reported, and retried by the next sync).

use super::{ApplyOutcome, ContentSource, Ctx};
use std::collections::HashSet;
use weave_core::{Hash, Object, Op};

const KEPT: &str = "left as it is: its content could not be saved at its new place (see the error above), so it was not replaced or removed; the sync will retry";

/// Contents that failed to land at their new place and that no other
/// replica holds.
#[derive(Default)]
pub(super) struct Unlanded(HashSet<Hash>);

impl Unlanded {
    /// Notes that the write `op` failed: its content is unlanded if only
    /// this replica holds it (a conflict loser whose copy failed, a
    /// rename's only source).
    pub(super) fn note_failed(&mut self, source: &dyn ContentSource, op: &Op) {
        if let Object::File { content, .. } = &op.target.object {
            if source.locations(content).iter().all(|l| l.local) {
                self.0.insert(*content);
            }
        }
    }

    /// Whether `op` would destroy the old copy of an unlanded content.
    fn destroyed_by(&self, op: &Op) -> bool {
        match op.current.as_ref().map(|c| &c.entry.object) {
            Some(Object::File { content, .. }) => self.0.contains(content),
            _ => false,
        }
    }
}

impl Ctx<'_> {
    /// Whether `op` is held back because it would destroy the old copy of
    /// an unlanded content; if so, that is reported.
    pub(super) fn held_back(&self, op: &Op, unlanded: &Unlanded, out: &mut ApplyOutcome) -> bool {
        if !unlanded.destroyed_by(op) {
            return false;
        }
        out.issues.push(self.issue(op, KEPT));
        true
    }
}
