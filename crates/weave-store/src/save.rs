//! Saving old versions: each file's chunks that the store does not have
//! are copied into a pack (read at their offsets and verified), or the
//! file is taken whole as a pack of its own; the catalog records the
//! versions once the packs are durable.

use crate::catalog::ChunkTable;
use crate::error::OrCatalog;
use crate::pack::{Loc, PackWriter, PACKS};
use crate::{now_ns, Store, StoreError, ToSave, Version};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use weave_chunk::ChunkList;
use weave_core::Hash;

/// Files at least this large whose chunks are mostly new to the store are
/// taken into it whole, by a rename (their chunks stay at their offsets):
/// no copy. Pruning rewrites them once they are mostly garbage.
const ADOPT_MIN: u64 = 1 << 20;

impl Store {
    /// Saves old versions. Chunks the store has are not stored again;
    /// the others are read from each file at their offsets and verified.
    /// Returns, per item, the new version's id or why it was not saved
    /// (the file no longer holds the recorded content).
    pub fn save(&self, items: &[ToSave<'_>]) -> Result<Vec<Result<u64, NotSaved>>, StoreError> {
        let mut saving = Saving::begin(self)?;
        let mut results = Vec::with_capacity(items.len());
        for item in items {
            results.push(match saving.item(item) {
                Ok(id) => Ok(id),
                Err(Skip::Content(why)) => Err(why),
                Err(Skip::Store(e)) => return Err(e),
            });
        }
        saving.commit()?;
        Ok(results)
    }
}

/// Why one old version was not saved (the others still are).
#[derive(Debug, thiserror::Error)]
pub enum NotSaved {
    /// The file changed since its content was recorded.
    #[error("the old version no longer holds chunk {} at offset {offset}", .chunk.short_hex())]
    NoLongerHolds { chunk: Hash, offset: u64 },
    #[error("cannot open the old version: {0}")]
    CannotOpen(std::io::Error),
}

/// Why an item was not saved.
enum Skip {
    /// The store failed: the whole save fails, nothing of it is recorded.
    Store(StoreError),
    /// The file does not hold the recorded content: this item only.
    Content(NotSaved),
}

impl From<StoreError> for Skip {
    fn from(e: StoreError) -> Skip {
        Skip::Store(e)
    }
}

fn not_held(hash: &Hash, off: u64) -> Skip {
    Skip::Content(NotSaved::NoLongerHolds {
        chunk: *hash,
        offset: off,
    })
}

/// A save under way: what it wrote to the packs and will record.
struct Saving<'s> {
    store: &'s Store,
    saved_at: i64,
    /// The chunks the store had when the save began.
    known: ChunkTable,
    packs: PackWriter<'s>,
    /// New chunk rows and version records, committed after the packs are
    /// durable.
    new_chunks: HashMap<Hash, Loc>,
    records: Vec<Version>,
    next_id: u64,
    /// Numbers of the files taken whole as packs.
    adopted: Vec<u32>,
    buf: Vec<u8>,
}

impl<'s> Saving<'s> {
    fn begin(store: &'s Store) -> Result<Saving<'s>, StoreError> {
        let saved_at = now_ns();
        let packs = PackWriter::open(store, store.meta_u64("pack")? as u32)?;
        let next_id = store.meta_u64("next_id")?.max(1);
        Ok(Saving {
            store,
            saved_at,
            known: store.chunk_table()?,
            packs,
            new_chunks: HashMap::new(),
            records: Vec::new(),
            next_id,
            adopted: Vec::new(),
            buf: Vec::new(),
        })
    }

    /// Whether the store has chunk `h` (or this save stores it).
    fn has(&self, h: &Hash) -> Result<bool, StoreError> {
        Ok(self.new_chunks.contains_key(h)
            || self
                .known
                .get(&h.0)
                .or_catalog(&self.store.catalog)?
                .is_some())
    }

    /// Saves one item: taken whole if that is worth it and can be done,
    /// else its new chunks copied.
    fn item(&mut self, item: &ToSave<'_>) -> Result<u64, Skip> {
        let file = File::open(item.file).map_err(|e| Skip::Content(NotSaved::CannotOpen(e)))?;
        if item.movable && self.worth_adopting(item, &file)? {
            if let Some((n, rows)) = self.adopt(item, &file)? {
                self.adopted.push(n);
                self.new_chunks.extend(rows);
                return Ok(self.record(item));
            }
        }
        self.copy_new_chunks(item, &file)?;
        let id = self.record(item);
        if self.packs.full() {
            let next = self.store.fresh_pack_no(&self.adopted)?;
            self.packs.roll(next)?;
        }
        Ok(id)
    }

    fn worth_adopting(&self, item: &ToSave<'_>, file: &File) -> Result<bool, StoreError> {
        let new = new_bytes(item.chunks, |h| self.has(h))?;
        let single = file.metadata().is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.nlink() == 1 && m.is_file() && m.len() == item.chunks.size()
        });
        Ok(single && adoptable(new, item.chunks.size()))
    }

    /// Takes `item`'s file into the store whole, as a pack of its own,
    /// verifying its new chunks unless its stat vouches for them. Returns
    /// the pack's number and the rows of its new chunks, or None if the
    /// file cannot be moved (it is copied instead).
    #[allow(clippy::type_complexity)]
    fn adopt(
        &mut self,
        item: &ToSave<'_>,
        file: &File,
    ) -> Result<Option<(u32, Vec<(Hash, Loc)>)>, Skip> {
        let n = self.store.fresh_pack_no(&[])?;
        let mut rows = Vec::new();
        let mut seen = HashSet::new();
        for (off, c) in item.chunks.with_offsets() {
            if c.is_zero() || !seen.insert(c.hash) || self.has(&c.hash)? {
                continue;
            }
            if !item.trusted {
                self.buf.resize(c.len as usize, 0);
                if file.read_exact_at(&mut self.buf, off).is_err()
                    || !weave_chunk::verify(&self.buf, &c.hash)
                {
                    return Err(not_held(&c.hash, off));
                }
            }
            rows.push((c.hash, (n, off, c.len)));
        }
        if std::fs::rename(item.file, self.store.pack_path(n)).is_err() {
            return Ok(None);
        }
        Ok(Some((n, rows)))
    }

    /// Copies `item`'s chunks that the store does not have into the pack.
    /// If one is not what the list says, nothing of the item is recorded
    /// (what it wrote is garbage no record refers to).
    fn copy_new_chunks(&mut self, item: &ToSave<'_>, file: &File) -> Result<(), Skip> {
        let mut pending: HashMap<Hash, Loc> = HashMap::new();
        for (off, c) in item.chunks.with_offsets() {
            // A run of zeros is not stored: it reads back as a hole.
            if c.is_zero() || pending.contains_key(&c.hash) || self.has(&c.hash)? {
                continue;
            }
            self.buf.resize(c.len as usize, 0);
            if file.read_exact_at(&mut self.buf, off).is_err()
                || !weave_chunk::verify(&self.buf, &c.hash)
            {
                return Err(not_held(&c.hash, off));
            }
            let loc = self.packs.append(&c.hash, &self.buf)?;
            pending.insert(c.hash, loc);
        }
        self.new_chunks.extend(pending);
        Ok(())
    }

    /// Records `item` as the next version; returns its id.
    fn record(&mut self, item: &ToSave<'_>) -> u64 {
        let id = self.next_id;
        self.records.push(Version {
            id,
            path: item.path.to_string(),
            content: item.chunks.content_id(),
            size: item.chunks.size(),
            mode: item.mode,
            mtime_ns: item.mtime_ns,
            origin: item.origin,
            saved_at_ns: self.saved_at,
            reason: item.reason,
            chunks: item.chunks.clone(),
            meta: item.meta.cloned().map(Box::new),
        });
        self.next_id += 1;
        id
    }

    /// Makes the packs (and the renames of files taken whole) durable,
    /// then records the versions in the catalog.
    fn commit(self) -> Result<(), StoreError> {
        let Saving {
            store,
            known,
            packs,
            new_chunks,
            records,
            next_id,
            adopted,
            ..
        } = self;
        drop(known);
        let pack = packs.number();
        let files = packs.finish()?;
        if records.is_empty() {
            return Ok(());
        }
        store.sync_packs(&files)?;
        if !adopted.is_empty() {
            let d = store.dir.join(PACKS);
            File::open(&d)
                .and_then(|f| f.sync_all())
                .map_err(|e| StoreError::io(&d, "cannot flush", e))?;
        }
        store.record_saved(&new_chunks, &records, next_id, pack)
    }
}

/// Bytes of `list`'s distinct chunks that `has` says the store lacks.
fn new_bytes<E>(list: &ChunkList, mut has: impl FnMut(&Hash) -> Result<bool, E>) -> Result<u64, E> {
    let mut new = 0u64;
    let mut seen: HashSet<Hash> = HashSet::new();
    for c in list.chunks.iter().filter(|c| !c.is_zero()) {
        if seen.insert(c.hash) && !has(&c.hash)? {
            new += c.len as u64;
        }
    }
    Ok(new)
}

/// Whether a file of `size` bytes, `new` of them new to the store, is
/// taken whole: it is large, and mostly new.
fn adoptable(new: u64, size: u64) -> bool {
    new >= ADOPT_MIN && new * 2 >= size
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_list as list;

    #[test]
    fn new_bytes_count_each_missing_chunk_once() {
        let l = list(&[(1, 10), (2, 20), (1, 10), (3, 30)]);
        let have = |h: &Hash| Ok::<_, ()>(h.0[0] == 2);
        assert_eq!(new_bytes(&l, have), Ok(40));
        assert_eq!(new_bytes(&l, |_| Ok::<_, ()>(true)), Ok(0));
        assert_eq!(new_bytes(&l, |_| Err("catalog")), Err("catalog"));
    }

    #[test]
    fn large_mostly_new_files_are_taken_whole() {
        assert!(adoptable(ADOPT_MIN, ADOPT_MIN));
        assert!(adoptable(ADOPT_MIN, 2 * ADOPT_MIN));
        assert!(!adoptable(ADOPT_MIN, 2 * ADOPT_MIN + 1), "mostly known");
        assert!(!adoptable(ADOPT_MIN - 1, ADOPT_MIN - 1), "small");
    }
}
