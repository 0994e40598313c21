//! Pruning: the versions the retention policy does not keep are dropped,
//! then the chunks no kept version needs. The catalog commits first;
//! packs are removed or rewritten after, so a crash leaves only garbage
//! (see the crate's notes on crash safety).

use crate::pack::{Fault, Loc, PackReader, PackWriter, RECORD_HEAD};
use crate::{retention, unique, Policy, Pruned, Store, StoreError, Version};
use std::collections::{HashMap, HashSet};
use weave_core::Hash;

/// Pruning rewrites a pack when less than this share of it is still used.
const REPACK_BELOW: f64 = 0.5;

impl Store {
    /// Applies the retention policy at time `now`: drops the versions it
    /// does not keep, then the chunks no kept version needs, rewriting
    /// packs that are mostly garbage and removing packs nothing refers to.
    pub fn prune(&self, now: i64) -> Result<Pruned, StoreError> {
        let policy = self.policy()?;
        let all = self.all()?;
        let (keep, refs) = kept(&policy, &all, now);
        let dropped: Vec<&Version> = all.iter().filter(|v| !keep.contains(&v.id)).collect();
        // 1. The catalog forgets the dropped versions and their chunks.
        let live = self.forget(&dropped, |h| refs.contains_key(h))?;
        // 2. Packs: removed when nothing refers to them, rewritten when
        //    mostly garbage (the catalog moves to the new copy before the
        //    old pack goes).
        let used = pack_use(&live);
        let mut freed = 0u64;
        let mut to_rewrite: HashSet<u32> = HashSet::new();
        for (n, size) in self.packs()? {
            match fate(size, used.get(&n).copied().unwrap_or(0)) {
                Fate::Remove => {
                    let _ = std::fs::remove_file(self.pack_path(n));
                    freed += size;
                }
                Fate::Rewrite => {
                    to_rewrite.insert(n);
                }
                Fate::Keep => {}
            }
        }
        if !to_rewrite.is_empty() {
            freed += self.rewrite(&live, to_rewrite)?;
        }
        let bytes_kept = self.packs()?.iter().map(|p| p.1).sum();
        Ok(Pruned {
            versions_dropped: dropped.len() as u64,
            versions_kept: keep.len() as u64,
            bytes_freed: freed,
            bytes_kept,
        })
    }

    /// Copies the `live` chunks of the packs `to_rewrite` into new packs,
    /// points the catalog at the copies, and removes the old packs.
    /// Returns the bytes freed. A pack with a damaged chunk is left as it
    /// is (never made worse): none of its chunks move.
    fn rewrite(
        &self,
        live: &[(Hash, Loc)],
        mut to_rewrite: HashSet<u32>,
    ) -> Result<u64, StoreError> {
        let first = self.packs()?.iter().map(|p| p.0).max().unwrap_or(0) + 1;
        let mut packs = PackWriter::open(self, first)?;
        let mut reader = PackReader::new(self);
        // (chunk, the pack it comes from, where it goes)
        let mut moved: Vec<(Hash, u32, Loc)> = Vec::new();
        let mut buf = Vec::new();
        for (h, loc) in live {
            let from = loc.0;
            if !to_rewrite.contains(&from) {
                continue;
            }
            match reader.read(*loc, h, &mut buf) {
                Ok(()) => {}
                Err(Fault::NoPack(e)) => {
                    return Err(StoreError::io(&self.pack_path(from), "cannot open", e))
                }
                Err(Fault::CutShort(_) | Fault::Damaged) => {
                    to_rewrite.remove(&from);
                    continue;
                }
            }
            moved.push((*h, from, packs.append(h, &buf)?));
            if packs.full() {
                let next = packs.number() + 1;
                packs.roll(next)?;
            }
        }
        let last = packs.number();
        self.sync_packs(&packs.finish()?)?;
        let moved = moved
            .into_iter()
            .filter(|(_, from, _)| to_rewrite.contains(from))
            .map(|(h, _, to)| (h, to));
        self.relocate(moved, last)?;
        let mut freed = 0u64;
        for p in &to_rewrite {
            let path = self.pack_path(*p);
            freed += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let _ = std::fs::remove_file(path);
        }
        Ok(freed)
    }
}

/// The versions `policy` keeps at time `now`, and how many of them need
/// each chunk: the retention rules, then `max_size` (oldest first; `all`
/// is sorted by age).
fn kept(policy: &Policy, all: &[Version], now: i64) -> (HashSet<u64>, HashMap<Hash, u32>) {
    let stamps: Vec<retention::Stamp> = all
        .iter()
        .map(|v| retention::Stamp {
            id: v.id,
            path: &v.path,
            saved_at_ns: v.saved_at_ns,
        })
        .collect();
    let mut keep = retention::select(policy, &stamps, now);
    let mut refs: HashMap<Hash, u32> = HashMap::new();
    for v in all.iter().filter(|v| keep.contains(&v.id)) {
        for h in unique(&v.chunks) {
            *refs.entry(h).or_default() += 1;
        }
    }
    if let Some(max) = policy.max_size {
        trim_to_size(all, max, &mut keep, &mut refs);
    }
    (keep, refs)
}

/// Drops kept versions, oldest first, until the chunks the others need
/// take at most `max` bytes.
fn trim_to_size(all: &[Version], max: u64, keep: &mut HashSet<u64>, refs: &mut HashMap<Hash, u32>) {
    let lens: HashMap<Hash, u32> = all
        .iter()
        .flat_map(|v| v.chunks.chunks.iter().map(|c| (c.hash, c.len)))
        .collect();
    let mut size: u64 = refs.keys().map(|h| lens[h] as u64).sum();
    for v in all {
        if size <= max {
            break;
        }
        if !keep.remove(&v.id) {
            continue;
        }
        for h in unique(&v.chunks) {
            let r = refs.get_mut(&h).expect("counted above");
            *r -= 1;
            if *r == 0 {
                refs.remove(&h);
                size -= lens[&h] as u64;
            }
        }
    }
}

/// Bytes of each pack that live chunks take.
fn pack_use(live: &[(Hash, Loc)]) -> HashMap<u32, u64> {
    let mut used: HashMap<u32, u64> = HashMap::new();
    for (_, (pack, _, len)) in live {
        *used.entry(*pack).or_default() += RECORD_HEAD + *len as u64;
    }
    used
}

#[derive(Debug, PartialEq, Eq)]
enum Fate {
    Keep,
    Rewrite,
    Remove,
}

/// What becomes of a pack of `size` bytes of which live chunks use `used`.
fn fate(size: u64, used: u64) -> Fate {
    if used == 0 {
        Fate::Remove
    } else if (used as f64) < REPACK_BELOW * size as f64 {
        Fate::Rewrite
    } else {
        Fate::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{test_list, Reason};
    use weave_core::ReplicaId;

    /// Version `id` of `path`, saved at `id` seconds, of chunks (byte of
    /// the hash, length).
    fn version(id: u64, path: &str, chunks: &[(u8, u32)]) -> Version {
        Version {
            id,
            path: path.into(),
            content: Hash([0; 32]),
            size: 0,
            mode: 0o644,
            mtime_ns: 0,
            origin: ReplicaId(1),
            saved_at_ns: id as i64 * retention::SECOND,
            reason: Reason::Replaced,
            chunks: test_list(chunks),
            meta: None,
        }
    }

    #[test]
    fn a_size_cap_drops_the_oldest_until_the_rest_fits() {
        let all = vec![
            version(1, "a", &[(1, 100), (2, 100)]),
            version(2, "b", &[(2, 100), (3, 100)]),
            version(3, "a", &[(3, 100), (4, 100)]),
        ];
        let policy = Policy {
            max_size: Some(300),
            ..Policy::keep_all()
        };
        let (keep, refs) = kept(&policy, &all, 10 * retention::SECOND);
        assert_eq!(keep, HashSet::from([2, 3]));
        assert_eq!(refs.len(), 3);
        assert_eq!(refs[&Hash([3; 32])], 2);
        let (keep, _) = kept(&Policy::keep_all(), &all, 10 * retention::SECOND);
        assert_eq!(keep.len(), 3);
        let policy = Policy {
            max_size: Some(0),
            ..Policy::keep_all()
        };
        let (keep, refs) = kept(&policy, &all, 10 * retention::SECOND);
        assert!(keep.is_empty() && refs.is_empty());
    }

    #[test]
    fn packs_are_kept_rewritten_or_removed_by_what_they_hold() {
        let live = vec![
            (Hash([1; 32]), (0, 36, 64)),
            (Hash([2; 32]), (0, 136, 64)),
            (Hash([3; 32]), (5, 36, 10)),
        ];
        let used = pack_use(&live);
        assert_eq!(used, HashMap::from([(0, 200), (5, 46)]));
        assert_eq!(fate(400, used[&0]), Fate::Keep);
        assert_eq!(fate(401, used[&0]), Fate::Rewrite);
        assert_eq!(fate(400, 0), Fate::Remove);
    }
}
