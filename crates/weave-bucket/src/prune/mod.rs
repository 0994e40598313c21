//! Pruning a bucket with no lock: the old versions a retention policy
//! does not keep leave it, and so do the packs no kept version needs, in
//! two phases a grace period apart (mark, then sweep), as rustic prunes.
//!
//! **Mark.** The records are compacted into one new record holding the
//! versions kept (every path's current versions, and the old file
//! versions the policy keeps), their chunk-tree nodes and where their
//! chunks are. A mark object (`marks/ID`, sealed) then names the records
//! it replaces and the packs no kept version needs. Nothing is deleted:
//! a reader merging the old records with the new one sees the same
//! current versions (merging is idempotent), and a sync that read the
//! old records and reuses a chunk of a version being pruned still finds
//! it.
//!
//! **Sweep**, by a prune at least the grace period after the mark: every
//! record not retired by it (the compaction, and whatever devices wrote
//! since) says which contents are still needed. Their nodes and chunk
//! places that only the retired records held are carried into a new
//! record; then the retired records go, then each marked pack that holds
//! no needed chunk, then the mark. A sweep killed midway is finished by
//! the next prune.
//!
//! A sync that read the records before a mark and writes its versions
//! after the mark's sweep finds the mark gone: it reads the records again
//! and leaves out the versions whose chunks were swept (the next sync
//! uploads them again). The sweep comes a grace period (a day by
//! default) after the mark, so only a sync that runs that long can meet
//! it.

use crate::pool::{Pack, Pool};
use crate::record::{open_value, seal_value, ChunkAt, Record, View};
use crate::BucketError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use weave_chunk::Node;
use weave_core::{Entry, Hash};
use weave_store::retention::{self, Stamp};
use weave_store::Policy;

/// Where marks are kept.
pub const MARKS: &str = "marks/";

/// A prune's mark: what the sweep a grace period later may delete.
#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
pub struct Mark {
    pub time_ms: u64,
    /// The records the compaction replaced.
    pub retired: Vec<String>,
    /// Packs no kept version needed then.
    pub packs: Vec<String>,
    /// Packs whose needed chunks were moved to new packs: swept a grace
    /// period later than the rest, so that a sync that read the records
    /// before the mark still reads them for a while.
    pub repacked: Vec<String>,
}

/// What a prune did (or, in a dry run, would do).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Pruned {
    /// Versions of paths kept, and dropped, by this prune's mark.
    pub versions_kept: usize,
    pub versions_dropped: usize,
    /// Records and packs marked now, to be deleted by a prune after the
    /// grace period.
    pub records_marked: usize,
    pub packs_marked: usize,
    /// What earlier marks let this prune delete.
    pub records_deleted: usize,
    pub packs_deleted: usize,
    pub bytes_deleted: u64,
    /// Marks still in their grace period.
    pub marks_waiting: usize,
    /// The packs the records name after this prune, and their bytes.
    pub packs_held: usize,
    pub pack_bytes: u64,
    /// Packs mostly of unneeded chunks whose needed ones moved to new
    /// packs (counted in `packs_marked`), and the bytes moved.
    pub packs_repacked: usize,
    pub bytes_repacked: u64,
}

/// Prunes the bucket `pool` at time `now_ms` by `policy` (its count and
/// age rules; `max_size` is not applied to buckets): sweeps what marks at
/// least `grace_ms` old let go, then marks what the policy drops now.
/// A dry run reads everything and writes nothing.
///
/// Ages are taken from the later of the writer's clock (in the object)
/// and the storage's (when it was written): a device whose clock is
/// behind cannot make a mark ripe early, nor a push under way look old.
pub fn prune(
    pool: &mut Pool,
    policy: &Policy,
    grace_ms: u64,
    now_ms: u64,
    dry_run: bool,
) -> Result<Pruned, BucketError> {
    // The marks before the records: a sweep that runs meanwhile deletes
    // records only after their mark was read here.
    let marks = read_marks(pool)?;
    let mark_times: HashMap<String, u64> = pool.store.list_modified(MARKS)?.into_iter().collect();
    let records = pool.records()?;
    let round = Round {
        now_ms,
        grace_ms,
        dry_run,
        pack_times: pool
            .store
            .list_modified("packs/")?
            .into_iter()
            .filter_map(|(n, t)| Some((n.strip_prefix("packs/")?.to_string(), t)))
            .collect(),
    };
    let mut out = Pruned::default();
    let ripe: HashSet<&str> = marks
        .iter()
        .filter(|(n, m)| round.old(m.time_ms.max(mark_times.get(n).copied().unwrap_or(0))))
        .map(|(n, _)| n.as_str())
        .collect();
    out.marks_waiting = marks.len() - ripe.len();
    let ripe: Vec<&(String, Mark)> = marks
        .iter()
        .filter(|(n, _)| ripe.contains(n.as_str()))
        .collect();
    let swept: HashSet<&str> = ripe
        .iter()
        .flat_map(|(_, m)| m.retired.iter().map(String::as_str))
        .collect();
    if !ripe.is_empty() {
        sweep(pool, &records, &ripe, &swept, &round, &mut out)?;
    }
    // Records a mark retired already are compacted: the next mark looks
    // at the rest only.
    let retired: HashSet<&str> = marks
        .iter()
        .flat_map(|(_, m)| m.retired.iter().map(String::as_str))
        .collect();
    let live: Vec<&(String, Record)> = records
        .iter()
        .filter(|(n, _)| !retired.contains(n.as_str()))
        .collect();
    let named: HashSet<&str> = records
        .iter()
        .flat_map(|(_, r)| r.packs.iter().map(String::as_str))
        .collect();
    mark(pool, &live, &named, policy, &round, &mut out)?;
    let left = records.iter().filter(|(n, _)| !swept.contains(n.as_str()));
    let places = Places::of(left);
    let held = places.pack_sizes();
    out.packs_held = held.len();
    out.pack_bytes = held.values().sum();
    Ok(out)
}

/// What one prune goes by.
struct Round {
    now_ms: u64,
    grace_ms: u64,
    dry_run: bool,
    /// When each pack was written, by the storage's clock.
    pack_times: HashMap<String, u64>,
}

impl Round {
    /// Whether something written at `at_ms` is past the grace period.
    fn old(&self, at_ms: u64) -> bool {
        self.now_ms.saturating_sub(at_ms) >= self.grace_ms
    }

    /// When pack `id` was written: the later of the storage's time and
    /// `said` (its record's).
    fn pack_time(&self, id: &str, said: u64) -> u64 {
        said.max(self.pack_times.get(id).copied().unwrap_or(0))
    }
}

/// Deletes what the `ripe` marks let go: `swept` are the records they
/// retired.
fn sweep(
    pool: &mut Pool,
    records: &[(String, Record)],
    ripe: &[&(String, Mark)],
    swept: &HashSet<&str>,
    round: &Round,
    out: &mut Pruned,
) -> Result<(), BucketError> {
    let (gone, staying): (Vec<_>, Vec<_>) = records
        .iter()
        .partition(|(n, _)| swept.contains(n.as_str()));
    let all = Places::of(records.iter());
    let kept = Places::of(staying.iter().copied());
    let contents = staying.iter().flat_map(|(_, r)| r.entries.iter());
    let (nodes, chunks) = all.reach(contents);
    // The marked packs, but those a record that stays names (written
    // since the mark)...
    let named: HashSet<&str> = staying
        .iter()
        .flat_map(|(_, r)| r.packs.iter().map(String::as_str))
        .collect();
    let mut doomed: HashSet<&str> = ripe
        .iter()
        .flat_map(|(_, m)| m.packs.iter().map(String::as_str))
        .filter(|p| !named.contains(p))
        .collect();
    // ...and but those holding a needed chunk that is nowhere else.
    for h in &chunks {
        let places = all.chunks.get(h).map_or(&[][..], Vec::as_slice);
        if places.iter().all(|at| doomed.contains(at.0.as_str())) {
            for at in places {
                doomed.remove(at.0.as_str());
            }
        }
    }
    // What the records that stay need and only the retired ones hold, at
    // a place that stays.
    let stays = |at: &Place| !doomed.contains(at.0.as_str());
    let carry = Record {
        time_ms: round.now_ms,
        at: max_at(records),
        ..all.record_of(
            nodes.iter().filter(|h| !kept.nodes.contains_key(*h)),
            chunks
                .iter()
                .filter(|h| !kept.chunks.get(*h).is_some_and(|v| v.iter().any(stays))),
            &stays,
        )
    };
    let sizes = all.pack_sizes();
    let packs: BTreeMap<&str, u64> = doomed
        .iter()
        .map(|p| (*p, sizes.get(p).copied().unwrap_or(0)))
        .collect();
    out.records_deleted = gone.len();
    out.packs_deleted = packs.len();
    out.bytes_deleted = packs.values().sum();
    if round.dry_run {
        return Ok(());
    }
    if !carry.nodes.is_empty() || !carry.chunks.is_empty() {
        pool.write(&carry)?;
    }
    for (name, _) in &gone {
        pool.store.delete(name)?;
    }
    for p in packs.keys() {
        pool.store.delete(&format!("packs/{p}"))?;
    }
    // Packs repacked by these marks go a grace period later: marked again.
    let later: Vec<String> = ripe
        .iter()
        .flat_map(|(_, m)| m.repacked.iter().cloned())
        .collect();
    if !later.is_empty() {
        put_mark(
            pool,
            &Mark {
                time_ms: round.now_ms,
                packs: later,
                ..Default::default()
            },
        )?;
    }
    for (name, _) in ripe {
        pool.store.delete(name)?;
    }
    Ok(())
}

/// Writes mark `m` under a name of its own.
fn put_mark(pool: &Pool, m: &Mark) -> Result<(), BucketError> {
    let name = format!("{MARKS}{}", crate::pool::random_id());
    let sealed = seal_value(&pool.keys, "mark", &name, m);
    pool.store.put(&name, sealed)
}

/// Compacts the `live` records into one holding what `policy` keeps, and
/// marks the records it replaces and the packs nothing kept needs.
fn mark(
    pool: &mut Pool,
    live: &[&(String, Record)],
    named: &HashSet<&str>,
    policy: &Policy,
    round: &Round,
    out: &mut Pruned,
) -> Result<(), BucketError> {
    let (now_ms, dry_run) = (round.now_ms, round.dry_run);
    let mut view = View::default();
    for (name, r) in live {
        view.add(name, r.clone());
    }
    let (kept, dropped) = kept_versions(live, &view, policy, now_ms);
    let places = Places::of(live.iter().copied());
    let (nodes, chunks) = places.reach(kept.iter().map(|(e, _)| e));
    let needed: HashSet<&str> = chunks
        .iter()
        .flat_map(|h| places.chunks.get(h).into_iter().flatten())
        .map(|at| at.0.as_str())
        .collect();
    // Packs of recent records may belong to a push still under way,
    // whose versions are not written yet.
    let recent: HashSet<&str> = live
        .iter()
        .flat_map(|(_, r)| r.packs.iter().map(move |p| (p.as_str(), r.time_ms)))
        .filter(|(p, t)| !round.old(round.pack_time(p, *t)))
        .map(|(p, _)| p)
        .collect();
    let mut unneeded: BTreeMap<&str, ()> = live
        .iter()
        .flat_map(|(_, r)| r.packs.iter().map(String::as_str))
        .filter(|p| !needed.contains(p) && !recent.contains(p))
        .map(|p| (p, ()))
        .collect();
    // Packs no record names (a push killed between a pack and its
    // record), once the storage says they are old.
    for (p, &t) in &round.pack_times {
        if !named.contains(p.as_str()) && t > 0 && round.old(t) {
            unneeded.insert(p.as_str(), ());
        }
    }
    // Packs mostly of chunks nothing kept needs: what they hold that is
    // needed (and nowhere else) moves to new packs, and they go.
    let sparse = sparse_packs(&places, &chunks, &unneeded, &recent);
    out.versions_kept = kept.len();
    out.versions_dropped = dropped;
    // Many small records are compacted too: each costs a read.
    if dropped == 0 && unneeded.is_empty() && sparse.is_empty() && live.len() <= COMPACT_PAST {
        return Ok(());
    }
    out.records_marked = live.len();
    out.packs_marked = unneeded.len() + sparse.len();
    out.packs_repacked = sparse.len();
    if dry_run {
        out.bytes_repacked = to_move(&places, &chunks, &sparse)
            .values()
            .flatten()
            .map(|f| f.2 as u64)
            .sum();
        return Ok(());
    }
    let (moved, repacked) = repack(pool, &places, &chunks, &sparse, out)?;
    out.packs_repacked = repacked.len();
    out.packs_marked = unneeded.len() + repacked.len();
    let (entries, entry_times) = kept.into_iter().unzip();
    let stays = |at: &Place| !unneeded.contains_key(at.0.as_str()) && !repacked.contains(&at.0);
    let mut compacted = Record {
        entries,
        entry_times,
        at: view.max_at,
        time_ms: now_ms,
        ..places.record_of(
            nodes.iter(),
            chunks.iter().filter(|h| !moved.contains_key(*h)),
            &stays,
        )
    };
    let moved_to = record_of(std::iter::empty(), moved.into_iter());
    let base = compacted.packs.len() as u32;
    compacted.packs.extend(moved_to.packs);
    compacted.pack_sizes.extend(moved_to.pack_sizes);
    compacted
        .chunks
        .extend(moved_to.chunks.into_iter().map(|c| ChunkAt {
            pack: c.pack + base,
            ..c
        }));
    pool.write(&compacted)?;
    // What was integrated, each said again by a record of the `at` it
    // was said at: which statement is the latest stays as it was.
    let (said, fingerprint) = view.statements();
    let mut ats: Vec<u64> = said
        .iter()
        .map(|s| s.0)
        .chain(fingerprint.map(|f| f.0))
        .collect();
    ats.sort_unstable();
    ats.dedup();
    for at in ats {
        pool.write(&Record {
            integrated: said
                .iter()
                .filter(|s| s.0 == at)
                .map(|s| (s.1, s.2))
                .collect(),
            ignore_fingerprint: fingerprint.filter(|f| f.0 == at).map(|f| f.1),
            at,
            time_ms: now_ms,
            ..Default::default()
        })?;
    }
    let m = Mark {
        time_ms: now_ms,
        retired: live.iter().map(|(n, _)| n.clone()).collect(),
        packs: unneeded.keys().map(|p| p.to_string()).collect(),
        repacked,
    };
    put_mark(pool, &m)
}

/// A pack is repacked only when that frees at least this much (a small
/// pack is padded to a few KiB, whatever it holds).
const REPACK_GAIN: u64 = 1 << 20;

/// The packs (not recent, not already unneeded) whose needed chunks fill
/// less than half of them, when that frees [`REPACK_GAIN`] or more.
fn sparse_packs<'a>(
    places: &'a Places,
    chunks: &HashSet<Hash>,
    unneeded: &BTreeMap<&str, ()>,
    recent: &HashSet<&str>,
) -> Vec<&'a str> {
    let sizes = places.pack_sizes();
    let mut used: HashMap<&str, u64> = HashMap::new();
    for h in chunks {
        for at in places.chunks.get(h).into_iter().flatten() {
            *used.entry(at.0.as_str()).or_default() += at.3 as u64;
        }
    }
    let mut sparse: Vec<&str> = sizes
        .iter()
        .filter(|(p, _)| !unneeded.contains_key(*p) && !recent.contains(*p))
        .filter(|(p, size)| {
            let used = used.get(*p).copied().unwrap_or(0);
            used * 2 < **size && **size - used >= REPACK_GAIN
        })
        .map(|(p, _)| *p)
        .collect();
    sparse.sort_unstable();
    sparse
}

/// The needed chunks of the `sparse` packs that have no place in
/// another pack, by pack: (hash, offset, length).
fn to_move<'a>(
    places: &'a Places,
    chunks: &HashSet<Hash>,
    sparse: &[&str],
) -> BTreeMap<&'a str, Vec<(Hash, u64, u32)>> {
    let from: HashSet<&str> = sparse.iter().copied().collect();
    let mut wanted: BTreeMap<&str, Vec<(Hash, u64, u32)>> = BTreeMap::new();
    for h in chunks {
        let at = places.chunks.get(h).map_or(&[][..], Vec::as_slice);
        if at.iter().all(|p| from.contains(p.0.as_str())) {
            if let Some(p) = at.first() {
                wanted.entry(p.0.as_str()).or_default().push((*h, p.2, p.3));
            }
        }
    }
    wanted
}

/// Moves the needed chunks of the `sparse` packs that have no place in
/// another pack into new packs (each read in whole 64 KiB blocks, opened,
/// sealed again with fresh nonces, so that the storage cannot match new
/// bytes with old); returns where each is now, and the packs it moved
/// them out of. A pack that cannot be read, or holds a frame that does
/// not open, is left as it is (and not marked).
fn repack(
    pool: &Pool,
    places: &Places,
    chunks: &HashSet<Hash>,
    sparse: &[&str],
    out: &mut Pruned,
) -> Result<(HashMap<Hash, Place>, Vec<String>), BucketError> {
    let sizes = places.pack_sizes();
    let mask = crate::pool::READ_BLOCK_MASK;
    let (mut moved, mut done, mut pack) = (HashMap::new(), Vec::new(), Pack::new());
    for (p, mut frames) in to_move(places, chunks, sparse) {
        frames.sort_by_key(|f| f.1);
        let end = frames.iter().map(|f| f.1 + f.2 as u64).max().unwrap_or(0);
        let size = sizes.get(p).copied().unwrap_or(end).max(end);
        let from = frames[0].1 & !mask;
        let to = ((end + mask) & !mask).min(size);
        let Ok(bytes) = pool.store.get_range(&format!("packs/{p}"), from..to) else {
            tracing::warn!("prune: pack {p} could not be read; it is left as it is");
            continue;
        };
        let opened: Option<Vec<(Hash, Vec<u8>)>> = frames
            .iter()
            .map(|&(h, offset, len)| {
                let at = (offset - from) as usize;
                let frame = bytes.get(at..at + len as usize)?;
                crate::pool::open_chunk(&pool.keys, &h, frame).map(|d| (h, d))
            })
            .collect();
        let Some(opened) = opened else {
            tracing::warn!("prune: pack {p} holds a chunk that does not open; it is left as it is");
            continue;
        };
        done.push(p.to_string());
        for (h, data) in opened {
            pack.add(&pool.keys, h, &data);
            out.bytes_repacked += data.len() as u64;
            if pack.bytes.len() >= crate::replica::PACK_TARGET {
                upload(&*pool.store, std::mem::take(&mut pack), &mut moved)?;
                pack = Pack::new();
            }
        }
    }
    upload(&*pool.store, pack, &mut moved)?;
    Ok((moved, done))
}

/// Writes `pack` (if it holds anything) and notes where its chunks are.
fn upload(
    store: &dyn crate::store::Store,
    pack: Pack,
    moved: &mut HashMap<Hash, Place>,
) -> Result<(), BucketError> {
    if pack.chunks.is_empty() {
        return Ok(());
    }
    let (id, bytes, framed) = pack.finish();
    let size = bytes.len() as u64;
    store.put(&format!("packs/{id}"), bytes)?;
    for (h, offset, len) in framed {
        moved.insert(h, (id.clone(), size, offset, len));
    }
    Ok(())
}

/// Past this many records, a prune compacts them even when it drops
/// nothing.
const COMPACT_PAST: usize = 256;

/// The versions to keep of the records `live` (merged in `view`): every
/// path's current versions, whatever they are, and the old file versions
/// `policy` keeps (aged from when they were replaced), in the order they
/// were recorded, with when; and how many versions are dropped.
fn kept_versions(
    live: &[&(String, Record)],
    view: &View,
    policy: &Policy,
    now_ms: u64,
) -> (Vec<(Entry, u64)>, usize) {
    let mut ordered: Vec<&(String, Record)> = live.to_vec();
    ordered.sort_by_key(|(name, r)| (r.at, r.time_ms, name.clone()));
    // Each version once, in the order recorded, with when; and per path
    // their places in that order.
    let mut all: Vec<(&Entry, u64)> = Vec::new();
    let mut by_path: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (_, r) in &ordered {
        for (i, e) in r.entries.iter().enumerate() {
            let list = by_path.entry(e.path.as_str()).or_default();
            if !list.iter().any(|&k| all[k].0.vv == e.vv) {
                list.push(all.len());
                all.push((e, r.entry_time(i)));
            }
        }
    }
    let mut keep = vec![false; all.len()];
    let mut old: Vec<Stamp> = Vec::new();
    for (path, list) in &by_path {
        let current = view.maximal(path);
        for (n, &k) in list.iter().enumerate() {
            let e = all[k].0;
            if current.iter().any(|c| c.vv == e.vv) {
                keep[k] = true;
            } else if e.object.content().is_some() {
                // Replaced when the next version was recorded.
                let replaced_ms = list.get(n + 1).map_or(now_ms, |&j| all[j].1);
                old.push(Stamp {
                    id: k as u64,
                    path,
                    saved_at_ns: replaced_ms as i64 * 1_000_000,
                });
            }
        }
    }
    for id in retention::select(policy, &old, now_ms as i64 * 1_000_000) {
        keep[id as usize] = true;
    }
    let kept: Vec<(Entry, u64)> = all
        .iter()
        .zip(&keep)
        .filter(|(_, &k)| k)
        .map(|((e, t), _)| ((*e).clone(), *t))
        .collect();
    let dropped = all.len() - kept.len();
    (kept, dropped)
}

/// The trees of `contents`: the chunk-tree nodes and chunks they are
/// made of, as far as `node` knows them, and the nodes it does not know.
pub(crate) struct Reach {
    pub nodes: HashSet<Hash>,
    pub chunks: HashSet<Hash>,
    pub missing: HashSet<Hash>,
}

pub(crate) fn reach(
    contents: impl Iterator<Item = Hash>,
    node: &dyn Fn(&Hash) -> Option<Node>,
) -> Reach {
    let mut r = Reach {
        nodes: HashSet::new(),
        chunks: HashSet::new(),
        missing: HashSet::new(),
    };
    let mut todo: Vec<Hash> = contents.collect();
    while let Some(h) = todo.pop() {
        if r.nodes.contains(&h) || r.missing.contains(&h) {
            continue;
        }
        let Some(n) = node(&h) else {
            r.missing.insert(h);
            continue;
        };
        r.nodes.insert(h);
        for (child, _) in n.children {
            if n.level == 1 {
                r.chunks.insert(child);
            } else {
                todo.push(child);
            }
        }
    }
    r
}

/// Where a chunk is: (pack, pack size, offset, length).
type Place = (String, u64, u64, u32);

/// A record of `nodes` (encoded) and the chunk places `chunks`.
fn record_of(
    nodes: impl Iterator<Item = (Hash, Vec<u8>)>,
    chunks: impl Iterator<Item = (Hash, Place)>,
) -> Record {
    let mut r = Record {
        nodes: nodes.collect(),
        ..Default::default()
    };
    let mut index: HashMap<String, u32> = HashMap::new();
    for (hash, (pack, size, offset, len)) in chunks {
        let i = *index.entry(pack.clone()).or_insert_with(|| {
            r.packs.push(pack);
            r.pack_sizes.push(size);
            (r.packs.len() - 1) as u32
        });
        r.chunks.push(ChunkAt {
            hash,
            pack: i,
            offset,
            len,
        });
    }
    r
}

/// The nodes and chunk places some records hold.
struct Places {
    nodes: HashMap<Hash, Vec<u8>>,
    /// Every place each chunk is said to be.
    chunks: HashMap<Hash, Vec<Place>>,
}

impl Places {
    fn of<'a>(records: impl Iterator<Item = &'a (String, Record)>) -> Places {
        let mut p = Places {
            nodes: HashMap::new(),
            chunks: HashMap::new(),
        };
        for (_, r) in records {
            for (h, b) in &r.nodes {
                p.nodes.entry(*h).or_insert_with(|| b.clone());
            }
            for c in &r.chunks {
                let i = c.pack as usize;
                let size = r.pack_sizes.get(i).copied().unwrap_or(0);
                p.chunks.entry(c.hash).or_default().push((
                    r.packs[i].clone(),
                    size,
                    c.offset,
                    c.len,
                ));
            }
        }
        p
    }

    fn node(&self, h: &Hash) -> Option<Node> {
        self.nodes.get(h).and_then(|b| Node::decode(b, h))
    }

    /// The trees of the contents of `entries`: their nodes and chunks.
    fn reach<'a>(
        &self,
        entries: impl Iterator<Item = &'a Entry>,
    ) -> (HashSet<Hash>, HashSet<Hash>) {
        let r = reach(entries.filter_map(|e| e.object.content()), &|h| {
            self.node(h)
        });
        (r.nodes, r.chunks)
    }

    fn pack_sizes(&self) -> HashMap<&str, u64> {
        self.chunks
            .values()
            .flatten()
            .map(|(p, s, _, _)| (p.as_str(), *s))
            .collect()
    }

    /// A record of `nodes` and of one place of each of `chunks` that
    /// `ok` takes.
    fn record_of<'a>(
        &self,
        nodes: impl Iterator<Item = &'a Hash>,
        chunks: impl Iterator<Item = &'a Hash>,
        ok: &dyn Fn(&Place) -> bool,
    ) -> Record {
        record_of(
            nodes.filter_map(|h| self.nodes.get(h).map(|b| (*h, b.clone()))),
            chunks.filter_map(|h| {
                let place = self.chunks.get(h)?.iter().find(|p| ok(p))?;
                Some((*h, place.clone()))
            }),
        )
    }
}

fn max_at(records: &[(String, Record)]) -> u64 {
    records.iter().map(|(_, r)| r.at).max().unwrap_or(0)
}

/// Every mark in the bucket, opened.
pub fn read_marks(pool: &Pool) -> Result<Vec<(String, Mark)>, BucketError> {
    let mut out = Vec::new();
    for name in pool.store.list(MARKS)? {
        if let Some(b) = pool.store.get(&name)? {
            out.push((name.clone(), open_value(&pool.keys, "mark", &name, &b)?));
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests;
