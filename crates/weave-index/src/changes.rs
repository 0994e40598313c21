//! What an incremental sync reads of an index, without loading all of it:
//! the entries changed after a sequence number (through the `by_seq`
//! table, `(seq, path)` of every entry, kept in the same transaction as
//! the entries), the entries at given paths, and the entries under a
//! directory.

use crate::{Index, IndexError};
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use std::collections::{BTreeMap, HashMap};
use weave_chunk::ChunkList;
use weave_core::{Hash, LocalEntry};

/// `(sequence number, path)` of every entry.
pub(crate) const BY_SEQ: TableDefinition<(u64, &str), ()> = TableDefinition::new("by_seq");

/// Entries by path, as the queries below give them.
pub type EntryMap = BTreeMap<String, LocalEntry>;

impl Index {
    /// The entries whose sequence number is above `seq`.
    pub fn changed_since(&self, seq: u64) -> Result<EntryMap, IndexError> {
        if !self.by_seq {
            // An index of format 1 opened read-only: no table to ask.
            let mut all = self.load_entries()?;
            all.retain(|_, le| le.seq > seq);
            return Ok(all);
        }
        let mut out = BTreeMap::new();
        let Some(t) = self.read_table(BY_SEQ)? else {
            return Ok(out);
        };
        let Some(entries) = self.read_table(crate::ENTRIES)? else {
            return Ok(out);
        };
        let Some(from) = seq.checked_add(1) else {
            return Ok(out);
        };
        for row in t.range((from, "")..).map_err(|e| self.db_err(e))? {
            let (k, _) = row.map_err(|e| self.db_err(e))?;
            let (_, path) = k.value();
            let Some(v) = entries.get(path).map_err(|e| self.db_err(e))? else {
                return Err(self.corrupt(format!("{path:?} is in by_seq but has no entry")));
            };
            let le = self.decode_entry(path.to_string(), v.value())?;
            out.insert(path.to_string(), le);
        }
        Ok(out)
    }

    /// The entries at these paths (a path without one is left out).
    pub fn entries_at<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a str>,
    ) -> Result<EntryMap, IndexError> {
        let mut out = BTreeMap::new();
        let Some(t) = self.read_table(crate::ENTRIES)? else {
            return Ok(out);
        };
        for p in paths {
            if let Some(v) = t.get(p).map_err(|e| self.db_err(e))? {
                out.insert(p.to_string(), self.decode_entry(p.to_string(), v.value())?);
            }
        }
        Ok(out)
    }

    /// Up to `limit` entries in path order after `after` (from the first
    /// with None): one page of the index.
    pub fn entries_from(&self, after: Option<&str>, limit: usize) -> Result<EntryMap, IndexError> {
        use std::ops::Bound;
        let mut out = BTreeMap::new();
        let Some(t) = self.read_table(crate::ENTRIES)? else {
            return Ok(out);
        };
        let from = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        let rows = t
            .range::<&str>((from, Bound::Unbounded))
            .map_err(|e| self.db_err(e))?;
        for row in rows.take(limit) {
            let (k, v) = row.map_err(|e| self.db_err(e))?;
            let p = k.value().to_string();
            let le = self.decode_entry(p.clone(), v.value())?;
            out.insert(p, le);
        }
        Ok(out)
    }

    /// The chunk lists of those of `contents` the index holds (and that
    /// decode), read in one transaction.
    pub fn chunk_lists<'a>(
        &self,
        contents: impl IntoIterator<Item = &'a Hash>,
    ) -> Result<HashMap<Hash, ChunkList>, IndexError> {
        let mut out = HashMap::new();
        let Some(t) = self.read_table(crate::CONTENTS)? else {
            return Ok(out);
        };
        for content in contents {
            if out.contains_key(content) {
                continue;
            }
            let Some(v) = t.get(&content.0[..]).map_err(|e| self.db_err(e))? else {
                continue;
            };
            // One that does not decode is left out, as if unknown: the
            // content is taken from elsewhere (the others still count).
            match self.decode_list(content, v.value()) {
                Ok(list) => {
                    out.insert(*content, list);
                }
                Err(e) => tracing::warn!("{e}; taken from another replica"),
            }
        }
        Ok(out)
    }

    /// Every entry strictly inside directory `dir` (every entry for "").
    pub fn entries_under(&self, dir: &str) -> Result<EntryMap, IndexError> {
        if dir.is_empty() {
            return self.load_entries();
        }
        let mut out = BTreeMap::new();
        let Some(t) = self.read_table(crate::ENTRIES)? else {
            return Ok(out);
        };
        // Inside `dir` is from "dir/" up to (not including) "dir0": '0'
        // is the byte after '/'.
        let (from, to) = (format!("{dir}/"), format!("{dir}0"));
        for row in t
            .range::<&str>(from.as_str()..to.as_str())
            .map_err(|e| self.db_err(e))?
        {
            let (k, v) = row.map_err(|e| self.db_err(e))?;
            let p = k.value().to_string();
            let le = self.decode_entry(p.clone(), v.value())?;
            out.insert(p, le);
        }
        Ok(out)
    }
}

/// Fills `by_seq` from the entries: an index that format 1 wrote, opened
/// for writing. Returns how many entries it holds.
pub(crate) fn build(tx: &WriteTransaction) -> Result<u64, String> {
    let entries = tx.open_table(crate::ENTRIES).map_err(|e| e.to_string())?;
    let mut by_seq = tx.open_table(BY_SEQ).map_err(|e| e.to_string())?;
    let mut n = 0;
    for row in entries.iter().map_err(|e| e.to_string())? {
        let (k, v) = row.map_err(|e| e.to_string())?;
        let seq = crate::stored_seq(v.value())
            .ok_or_else(|| format!("entry {:?} does not decode", k.value()))?;
        by_seq
            .insert((seq, k.value()), ())
            .map_err(|e| e.to_string())?;
        n += 1;
    }
    Ok(n)
}
