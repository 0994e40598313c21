//! The catalog, `catalog.redb`: one record per version, an index by path,
//! where each stored chunk is, and the store's settings (`meta`).

use crate::error::OrCatalog;
use crate::pack::Loc;
use crate::{Policy, Store, StoreError, Version};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use std::collections::HashMap;
use std::path::Path;
use weave_core::Hash;

pub(crate) const CATALOG: &str = "catalog.redb";

pub(crate) const VERSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("versions");
const BY_PATH: TableDefinition<(&str, u64), ()> = TableDefinition::new("by_path");
pub(crate) const CHUNKS: TableDefinition<&[u8; 32], Loc> = TableDefinition::new("chunks");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The chunks the store holds, as a read-only table.
pub(crate) type ChunkTable = redb::ReadOnlyTable<&'static [u8; 32], Loc>;

/// Creates an empty catalog in the store directory `dir` without ever
/// leaving a half-made one in place: it is made under a temporary name,
/// committed (flushed), and renamed, and the directory is flushed. A run
/// killed before the rename leaves only the temporary, made again next time.
pub(crate) fn create_catalog(dir: &Path) -> Result<(), StoreError> {
    let path = dir.join(CATALOG);
    let tmp = dir.join(format!("{CATALOG}.new"));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(StoreError::io(&tmp, "cannot remove", e))
        }
        _ => {}
    }
    {
        let db = Database::create(&tmp).or_catalog(&tmp)?;
        let tx = db.begin_write().or_catalog(&tmp)?;
        {
            tx.open_table(VERSIONS).or_catalog(&tmp)?;
            tx.open_table(BY_PATH).or_catalog(&tmp)?;
            tx.open_table(CHUNKS).or_catalog(&tmp)?;
            tx.open_table(META).or_catalog(&tmp)?;
        }
        tx.commit().or_catalog(&tmp)?;
    }
    std::fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, "cannot create", e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, "cannot flush", e))
}

/// Reading the catalog.
impl Store {
    pub(crate) fn meta_u64(&self, key: &str) -> Result<u64, StoreError> {
        let c = &self.catalog;
        let tx = self.db.begin_read().or_catalog(c)?;
        let t = tx.open_table(META).or_catalog(c)?;
        Ok(t.get(key)
            .or_catalog(c)?
            .and_then(|v| v.value().try_into().ok().map(u64::from_le_bytes))
            .unwrap_or(0))
    }

    pub fn policy(&self) -> Result<Policy, StoreError> {
        let c = &self.catalog;
        let tx = self.db.begin_read().or_catalog(c)?;
        let t = tx.open_table(META).or_catalog(c)?;
        Ok(t.get("policy")
            .or_catalog(c)?
            .and_then(|v| postcard::from_bytes(v.value()).ok())
            .unwrap_or_default())
    }

    pub fn set_policy(&self, p: &Policy) -> Result<(), StoreError> {
        let c = &self.catalog;
        let bytes = postcard::to_stdvec(p).or_catalog(c)?;
        let tx = self.db.begin_write().or_catalog(c)?;
        tx.open_table(META)
            .or_catalog(c)?
            .insert("policy", bytes.as_slice())
            .or_catalog(c)?;
        tx.commit().or_catalog(c)
    }

    /// The chunks the store holds now.
    pub(crate) fn chunk_table(&self) -> Result<ChunkTable, StoreError> {
        let tx = self.db.begin_read().or_catalog(&self.catalog)?;
        tx.open_table(CHUNKS).or_catalog(&self.catalog)
    }

    /// Every version, oldest first.
    pub fn all(&self) -> Result<Vec<Version>, StoreError> {
        let c = &self.catalog;
        let tx = self.db.begin_read().or_catalog(c)?;
        let t = tx.open_table(VERSIONS).or_catalog(c)?;
        let mut out = Vec::new();
        for r in t.iter().or_catalog(c)? {
            let (k, v) = r.or_catalog(c)?;
            out.push(self.decode(k.value(), v.value())?);
        }
        out.sort_by_key(|v: &Version| (v.saved_at_ns, v.id));
        Ok(out)
    }

    fn decode(&self, id: u64, bytes: &[u8]) -> Result<Version, StoreError> {
        Version::decode(bytes).map_err(|e| StoreError::DamagedRecord {
            path: self.catalog.clone(),
            version: id,
            problem: e.to_string(),
        })
    }

    pub fn get(&self, id: u64) -> Result<Option<Version>, StoreError> {
        let c = &self.catalog;
        let tx = self.db.begin_read().or_catalog(c)?;
        let t = tx.open_table(VERSIONS).or_catalog(c)?;
        match t.get(id).or_catalog(c)? {
            Some(v) => Ok(Some(self.decode(id, v.value())?)),
            None => Ok(None),
        }
    }

    /// The versions of `path` (exactly), oldest first.
    pub fn versions(&self, path: &str) -> Result<Vec<Version>, StoreError> {
        self.matching(|p| p == path, path)
    }

    /// The versions of every path under the directory `dir` ("" for the
    /// whole replica), oldest first.
    pub fn versions_under(&self, dir: &str) -> Result<Vec<Version>, StoreError> {
        if dir.is_empty() {
            return self.all();
        }
        let prefix = format!("{dir}/");
        self.matching(|p| p.starts_with(&prefix), &prefix)
    }

    fn matching(
        &self,
        want: impl Fn(&str) -> bool,
        start: &str,
    ) -> Result<Vec<Version>, StoreError> {
        let c = &self.catalog;
        let tx = self.db.begin_read().or_catalog(c)?;
        let by_path = tx.open_table(BY_PATH).or_catalog(c)?;
        let versions = tx.open_table(VERSIONS).or_catalog(c)?;
        let mut out = Vec::new();
        for r in by_path.range((start, 0u64)..).or_catalog(c)? {
            let (k, _) = r.or_catalog(c)?;
            let (path, id) = k.value();
            if !path.starts_with(start) {
                break;
            }
            if !want(path) {
                continue;
            }
            if let Some(v) = versions.get(id).or_catalog(c)? {
                out.push(self.decode(id, v.value())?);
            }
        }
        out.sort_by_key(|v| (v.saved_at_ns, v.id));
        Ok(out)
    }
}

/// Writing the catalog: each function one transaction, committed last.
impl Store {
    /// Records saved versions and their new chunks (already durable in the
    /// packs), the next version id and the pack appended to.
    pub(crate) fn record_saved(
        &self,
        new_chunks: &HashMap<Hash, Loc>,
        records: &[Version],
        next_id: u64,
        pack: u32,
    ) -> Result<(), StoreError> {
        let c = &self.catalog;
        let tx = self.db.begin_write().or_catalog(c)?;
        {
            self.put_chunks(&tx, new_chunks.iter().map(|(h, loc)| (*h, *loc)))?;
            let mut versions = tx.open_table(VERSIONS).or_catalog(c)?;
            let mut by_path = tx.open_table(BY_PATH).or_catalog(c)?;
            for v in records {
                let bytes = postcard::to_stdvec(v).or_catalog(c)?;
                versions.insert(v.id, bytes.as_slice()).or_catalog(c)?;
                by_path.insert((v.path.as_str(), v.id), ()).or_catalog(c)?;
            }
            self.put_meta(&tx, "next_id", next_id)?;
            self.put_meta(&tx, "pack", pack as u64)?;
        }
        tx.commit().or_catalog(c)
    }

    /// Forgets the `dropped` versions and every chunk `live` does not
    /// want. Returns the chunks that stay, with where they are.
    pub(crate) fn forget(
        &self,
        dropped: &[&Version],
        live: impl Fn(&Hash) -> bool,
    ) -> Result<Vec<(Hash, Loc)>, StoreError> {
        let c = &self.catalog;
        let tx = self.db.begin_write().or_catalog(c)?;
        let mut kept = Vec::new();
        {
            let mut versions = tx.open_table(VERSIONS).or_catalog(c)?;
            let mut by_path = tx.open_table(BY_PATH).or_catalog(c)?;
            for v in dropped {
                versions.remove(v.id).or_catalog(c)?;
                by_path.remove((v.path.as_str(), v.id)).or_catalog(c)?;
            }
            let mut chunks = tx.open_table(CHUNKS).or_catalog(c)?;
            let mut dead: Vec<[u8; 32]> = Vec::new();
            for r in chunks.iter().or_catalog(c)? {
                let (k, v) = r.or_catalog(c)?;
                let h = Hash(*k.value());
                if live(&h) {
                    kept.push((h, v.value()));
                } else {
                    dead.push(h.0);
                }
            }
            for h in dead {
                chunks.remove(&h).or_catalog(c)?;
            }
        }
        tx.commit().or_catalog(c)?;
        Ok(kept)
    }

    /// Points `moved` chunks at their new places; `pack` is appended to
    /// from now on.
    pub(crate) fn relocate(
        &self,
        moved: impl Iterator<Item = (Hash, Loc)>,
        pack: u32,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().or_catalog(&self.catalog)?;
        self.put_chunks(&tx, moved)?;
        self.put_meta(&tx, "pack", pack as u64)?;
        tx.commit().or_catalog(&self.catalog)
    }

    fn put_chunks(
        &self,
        tx: &WriteTransaction,
        rows: impl Iterator<Item = (Hash, Loc)>,
    ) -> Result<(), StoreError> {
        let mut chunks = tx.open_table(CHUNKS).or_catalog(&self.catalog)?;
        for (h, loc) in rows {
            chunks.insert(&h.0, loc).or_catalog(&self.catalog)?;
        }
        Ok(())
    }

    fn put_meta(&self, tx: &WriteTransaction, key: &str, value: u64) -> Result<(), StoreError> {
        tx.open_table(META)
            .or_catalog(&self.catalog)?
            .insert(key, value.to_le_bytes().as_slice())
            .or_catalog(&self.catalog)?;
        Ok(())
    }
}
