//! Version vectors.

use crate::id::ReplicaId;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// How two version vectors relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    Equal,
    /// The left one has seen everything the right one has, and more.
    Dominates,
    /// The right one has seen everything the left one has, and more.
    DominatedBy,
    /// Each has seen something the other has not.
    Concurrent,
}

/// `{replica id: counter}`, kept sorted by replica id with no zero counters,
/// so that equal vectors are equal values.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionVector(Vec<(ReplicaId, u64)>);

impl VersionVector {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    pub fn from_pairs(mut pairs: Vec<(ReplicaId, u64)>) -> Self {
        pairs.retain(|p| p.1 > 0);
        pairs.sort_by_key(|p| p.0);
        let mut out: Vec<(ReplicaId, u64)> = Vec::with_capacity(pairs.len());
        for (r, c) in pairs {
            match out.last_mut() {
                Some(last) if last.0 == r => last.1 = last.1.max(c),
                _ => out.push((r, c)),
            }
        }
        Self(out)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn pairs(&self) -> &[(ReplicaId, u64)] {
        &self.0
    }

    pub fn get(&self, r: ReplicaId) -> u64 {
        match self.0.binary_search_by_key(&r, |p| p.0) {
            Ok(i) => self.0[i].1,
            Err(_) => 0,
        }
    }

    /// Sets the counter of `r` (counters only ever grow).
    pub fn set(&mut self, r: ReplicaId, c: u64) {
        match self.0.binary_search_by_key(&r, |p| p.0) {
            Ok(i) => self.0[i].1 = self.0[i].1.max(c),
            Err(i) => {
                if c > 0 {
                    self.0.insert(i, (r, c))
                }
            }
        }
    }

    /// Records a new change made by `r`: its counter becomes `clock`, which
    /// the caller takes from that replica's monotonic clock (and which is
    /// above anything the replica ever issued).
    pub fn bump(&mut self, r: ReplicaId, clock: u64) {
        debug_assert!(clock > self.get(r));
        self.set(r, clock);
    }

    /// The smallest vector that has seen everything both have seen.
    pub fn merge(&self, other: &VersionVector) -> VersionVector {
        let mut out = Vec::with_capacity(self.0.len().max(other.0.len()));
        let (mut i, mut j) = (0, 0);
        while i < self.0.len() || j < other.0.len() {
            match (self.0.get(i), other.0.get(j)) {
                (Some(a), Some(b)) => match a.0.cmp(&b.0) {
                    Ordering::Less => {
                        out.push(*a);
                        i += 1;
                    }
                    Ordering::Greater => {
                        out.push(*b);
                        j += 1;
                    }
                    Ordering::Equal => {
                        out.push((a.0, a.1.max(b.1)));
                        i += 1;
                        j += 1;
                    }
                },
                (Some(a), None) => {
                    out.push(*a);
                    i += 1;
                }
                (None, Some(b)) => {
                    out.push(*b);
                    j += 1;
                }
                (None, None) => break,
            }
        }
        VersionVector(out)
    }

    pub fn compare(&self, other: &VersionVector) -> Causality {
        let (mut greater, mut less) = (false, false);
        let (mut i, mut j) = (0, 0);
        while i < self.0.len() || j < other.0.len() {
            match (self.0.get(i), other.0.get(j)) {
                (Some(a), Some(b)) => match a.0.cmp(&b.0) {
                    Ordering::Less => {
                        greater = true;
                        i += 1;
                    }
                    Ordering::Greater => {
                        less = true;
                        j += 1;
                    }
                    Ordering::Equal => {
                        match a.1.cmp(&b.1) {
                            Ordering::Greater => greater = true,
                            Ordering::Less => less = true,
                            Ordering::Equal => {}
                        }
                        i += 1;
                        j += 1;
                    }
                },
                (Some(_), None) => {
                    greater = true;
                    i += 1;
                }
                (None, Some(_)) => {
                    less = true;
                    j += 1;
                }
                (None, None) => break,
            }
        }
        match (greater, less) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Dominates,
            (false, true) => Causality::DominatedBy,
            (true, true) => Causality::Concurrent,
        }
    }

    /// True if `self` has seen everything `other` has (equal counts).
    pub fn covers(&self, other: &VersionVector) -> bool {
        matches!(self.compare(other), Causality::Equal | Causality::Dominates)
    }
}

impl std::fmt::Debug for VersionVector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("{")?;
        for (i, (r, c)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}:{}", r.short(), c)?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vv(p: &[(u64, u64)]) -> VersionVector {
        VersionVector::from_pairs(p.iter().map(|&(r, c)| (ReplicaId(r), c)).collect())
    }

    #[test]
    fn basic_comparisons() {
        assert_eq!(vv(&[]).compare(&vv(&[])), Causality::Equal);
        assert_eq!(vv(&[(1, 2)]).compare(&vv(&[(1, 1)])), Causality::Dominates);
        assert_eq!(
            vv(&[(1, 1)]).compare(&vv(&[(1, 1), (2, 1)])),
            Causality::DominatedBy
        );
        assert_eq!(vv(&[(1, 2)]).compare(&vv(&[(2, 1)])), Causality::Concurrent);
        assert_eq!(vv(&[(1, 0)]), vv(&[]));
    }

    fn arb_vv() -> impl Strategy<Value = VersionVector> {
        proptest::collection::vec((0u64..4, 0u64..4), 0..4).prop_map(|p| {
            VersionVector::from_pairs(p.into_iter().map(|(r, c)| (ReplicaId(r), c)).collect())
        })
    }

    proptest! {
        #[test]
        fn merge_dominates_both(a in arb_vv(), b in arb_vv()) {
            let m = a.merge(&b);
            prop_assert!(m.covers(&a));
            prop_assert!(m.covers(&b));
            prop_assert_eq!(m.clone(), b.merge(&a));
            prop_assert_eq!(m.merge(&a), m);
        }

        #[test]
        fn compare_is_antisymmetric(a in arb_vv(), b in arb_vv()) {
            let ab = a.compare(&b);
            let ba = b.compare(&a);
            let flipped = match ab {
                Causality::Dominates => Causality::DominatedBy,
                Causality::DominatedBy => Causality::Dominates,
                x => x,
            };
            prop_assert_eq!(flipped, ba);
            prop_assert_eq!(ab == Causality::Equal, a == b);
        }
    }
}
