//! The provider of one sync: gets what one replica lacks from the others,
//! each content from a replica that holds it, spreading the work over the
//! holders and trying the next holder for whatever one of them no longer
//! has.

use crate::merge;
use crate::replica::{Entries, Provider, Replica, ServedNodes, Wants};
use crate::SyncError;
use std::collections::HashMap;
use weave_core::Hash;

/// Which replicas (positions in the sync) hold each content.
#[derive(Debug, Default)]
pub(crate) struct Holders(HashMap<Hash, Vec<usize>>);

impl Holders {
    /// The holders of every content in the replicas' `views`.
    pub(crate) fn of(views: &[Entries]) -> Holders {
        let mut holders: HashMap<Hash, Vec<usize>> = HashMap::new();
        for (i, v) in views.iter().enumerate() {
            for le in v.values() {
                if let Some(content) = le.entry.object.content() {
                    let h = holders.entry(content).or_default();
                    if h.last() != Some(&i) {
                        h.push(i);
                    }
                }
            }
        }
        Holders(holders)
    }

    /// Replica `i` holds `content` now.
    pub(crate) fn add(&mut self, content: Hash, i: usize) {
        let h = self.0.entry(content).or_default();
        if !h.contains(&i) {
            h.push(i);
        }
    }

    /// The replicas that hold `content`.
    pub(crate) fn of_content(&self, content: &Hash) -> &[usize] {
        self.0.get(content).map(|h| h.as_slice()).unwrap_or(&[])
    }
}

/// Gets what one replica lacks from the others (see the module doc).
pub(crate) struct Fetch<'a> {
    /// The other replicas, with their positions in the sync.
    others: Vec<(usize, &'a mut Box<dyn Replica>)>,
    holders: &'a Holders,
    /// Contents this sync made (merges), served from memory.
    made: &'a HashMap<Hash, merge::Made>,
}

impl<'a> Fetch<'a> {
    /// Replica `i` of `reps`, and the provider of what it lacks: the
    /// others.
    pub(crate) fn for_replica(
        reps: &'a mut [Box<dyn Replica>],
        i: usize,
        holders: &'a Holders,
        made: &'a HashMap<Hash, merge::Made>,
    ) -> (&'a mut Box<dyn Replica>, Fetch<'a>) {
        let (before, rest) = reps.split_at_mut(i);
        let (dest, after) = rest.split_first_mut().expect("i < len");
        let others: Vec<(usize, &mut Box<dyn Replica>)> = before
            .iter_mut()
            .enumerate()
            .chain(after.iter_mut().enumerate().map(|(k, r)| (k + i + 1, r)))
            .collect();
        let fetch = Fetch {
            others,
            holders,
            made,
        };
        (dest, fetch)
    }

    /// Holders of `content` among the others (positions in `others`), local
    /// ones first, rotated by `turn` among equals.
    fn candidates(&self, content: &Hash, turn: usize) -> Vec<usize> {
        let hs = self.holders.of_content(content);
        let mut c: Vec<usize> = self
            .others
            .iter()
            .enumerate()
            .filter(|(_, (i, _))| hs.contains(i))
            .map(|(pos, _)| pos)
            .collect();
        if !c.is_empty() {
            let n = c.len();
            c.rotate_left(turn % n);
        }
        c.sort_by_key(|&pos| !self.others[pos].1.is_local());
        c
    }
}

impl Provider for Fetch<'_> {
    fn nodes(&mut self, wants: &Wants) -> Result<ServedNodes, SyncError> {
        let mut out: ServedNodes = wants.iter().map(|(_, h)| vec![None; h.len()]).collect();
        for (w, (content, hashes)) in wants.iter().enumerate() {
            if let Some(m) = self.made.get(content) {
                let nodes = weave_chunk::tree(&m.list.chunks).1;
                for (slot, h) in out[w].iter_mut().zip(hashes) {
                    *slot = nodes.get(h).map(|n| n.encode());
                }
            }
        }
        // Round k asks every want's k-th candidate for what is still missing.
        for round in 0..self.others.len() {
            let mut per: HashMap<usize, Vec<usize>> = HashMap::new();
            for (w, (content, _)) in wants.iter().enumerate() {
                if out[w].iter().all(|n| n.is_some()) {
                    continue;
                }
                if let Some(&pos) = self.candidates(content, 0).get(round) {
                    per.entry(pos).or_default().push(w);
                }
            }
            if per.is_empty() {
                break;
            }
            for (pos, ws) in per {
                let ask: Vec<(Hash, Vec<Hash>)> = ws.iter().map(|&w| wants[w].clone()).collect();
                let got = self.others[pos].1.serve_nodes(&ask)?;
                for (w, g) in ws.into_iter().zip(got) {
                    for (slot, n) in out[w].iter_mut().zip(g) {
                        if slot.is_none() {
                            *slot = n;
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    fn chunks(
        &mut self,
        wants: &Wants,
        sink: &mut dyn FnMut(Hash, Vec<u8>) -> Result<(), SyncError>,
    ) -> Result<(), SyncError> {
        let mut pending: Vec<(Hash, Vec<Hash>)> = Vec::new();
        for w in wants {
            let Some(m) = self.made.get(&w.0) else {
                pending.push(w.clone());
                continue;
            };
            let at: HashMap<Hash, (usize, usize)> = m
                .list
                .with_offsets()
                .map(|(o, c)| (c.hash, (o as usize, c.len as usize)))
                .collect();
            for h in &w.1 {
                if let Some(&(o, len)) = at.get(h) {
                    sink(*h, m.data[o..o + len].to_vec())?;
                }
            }
        }
        for round in 0..self.others.len() {
            let mut per: HashMap<usize, Vec<(Hash, Vec<Hash>)>> = HashMap::new();
            for w in pending.drain(..) {
                // Spread contents over the holders: several sources at once
                // when a content is on several replicas.
                let c = self.candidates(&w.0, w.0 .0[0] as usize);
                if let Some(&pos) = c.get(round) {
                    per.entry(pos).or_default().push(w);
                }
            }
            if per.is_empty() {
                break;
            }
            // Which content each asked chunk belongs to.
            let content_of: HashMap<Hash, Hash> = per
                .values()
                .flatten()
                .flat_map(|(c, hs)| hs.iter().map(move |h| (*h, *c)))
                .collect();
            let mut missing: HashMap<Hash, Vec<Hash>> = HashMap::new();
            let mut take = |h: Hash, data: Option<Vec<u8>>| match data {
                Some(d) => sink(h, d),
                None => {
                    if let Some(c) = content_of.get(&h) {
                        missing.entry(*c).or_default().push(h);
                    }
                    Ok(())
                }
            };
            if per.len() == 1 {
                let (pos, ask) = per.into_iter().next().expect("one holder");
                self.others[pos].1.serve_chunks(&ask, &mut take)?;
            } else {
                // Several holders at once: each serves from its own thread
                // into one channel; chunks are taken here as they arrive.
                tracing::debug!(holders = per.len(), "fetching from several holders at once");
                std::thread::scope(|s| -> Result<(), SyncError> {
                    let (tx, rx) = std::sync::mpsc::sync_channel::<(Hash, Option<Vec<u8>>)>(64);
                    let mut handles = Vec::new();
                    for (pos, (_, rep)) in self.others.iter_mut().enumerate() {
                        let Some(ask) = per.remove(&pos) else {
                            continue;
                        };
                        let tx = tx.clone();
                        let rep: &mut Box<dyn Replica> = rep;
                        handles.push(s.spawn(move || {
                            rep.serve_chunks(&ask, &mut |h, d| {
                                tx.send((h, d))
                                    .map_err(|_| SyncError::from(crate::TransferError::Stopped))
                            })
                        }));
                    }
                    drop(tx);
                    let mut failed = None;
                    for (h, d) in rx.iter() {
                        if let Err(e) = take(h, d) {
                            failed = Some(e);
                            break;
                        }
                    }
                    // Holders still sending stop at their next chunk.
                    drop(rx);
                    let served: Vec<Result<(), SyncError>> = handles
                        .into_iter()
                        .map(|h| h.join().expect("a chunk server panicked"))
                        .collect();
                    if let Some(e) = failed {
                        return Err(e);
                    }
                    served.into_iter().collect()
                })?;
            }
            pending.extend(missing);
            if pending.is_empty() {
                break;
            }
        }
        Ok(())
    }
}
