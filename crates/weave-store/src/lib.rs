//! The version store: old versions of a replica's files, kept inside its
//! state directory (`.weave/versions/`) before a sync overwrites or
//! deletes them, deduplicated by chunk.
//!
//! - `catalog.redb` holds one record per version (path, content id, size,
//!   mode, mtime, the replica that made it, when it was saved, its chunk
//!   list), an index by path, and where each stored chunk is.
//! - `packs/NNNNNNNN.pack` hold the chunks, each record
//!   `hash (32) | length (u32 LE) | data`, appended and flushed before the
//!   catalog refers to them. Every chunk read back is verified.
//!
//! Crash safety: a pack is only appended to, and made durable before the
//! catalog transaction that refers to it commits; pruning commits the
//! catalog first and removes or rewrites packs after. Whatever a crash
//! leaves (pack tails, packs no record refers to) is garbage that the next
//! [`Store::prune`] removes; it is never read as data.

pub mod retention;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use weave_chunk::ChunkList;
use weave_core::{Hash, ReplicaId};

pub use retention::Policy;

/// The store's directory inside the state directory.
pub const VERSIONS_DIR: &str = "versions";
const CATALOG: &str = "catalog.redb";
const PACKS: &str = "packs";
/// A pack is closed for appends once it is this large.
const PACK_MAX: u64 = 256 << 20;
/// Pruning rewrites a pack when less than this share of it is still used.
const REPACK_BELOW: f64 = 0.5;

const VERSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("versions");
const BY_PATH: TableDefinition<(&str, u64), ()> = TableDefinition::new("by_path");
const CHUNKS: TableDefinition<&[u8; 32], (u32, u64, u32)> = TableDefinition::new("chunks");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("version store {path}: {problem}")]
    Io { path: PathBuf, problem: String },
    #[error("version store {path}: catalog: {problem}")]
    Catalog { path: PathBuf, problem: String },
}

/// Why a version was saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    /// Another replica's version replaced it (or won a conflict over it).
    Replaced,
    /// Another replica deleted it.
    Deleted,
    /// `weave restore` put another version in its place.
    Restored,
}

impl Reason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Replaced => "replaced",
            Reason::Deleted => "deleted",
            Reason::Restored => "replaced by a restore",
        }
    }
}

/// One stored version of one path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub id: u64,
    pub path: String,
    pub content: Hash,
    pub size: u64,
    pub mode: u32,
    pub mtime_ns: i64,
    /// The replica whose change made this version.
    pub origin: ReplicaId,
    /// When it was saved (it was the path's content until then).
    pub saved_at_ns: i64,
    pub reason: Reason,
    pub chunks: ChunkList,
}

/// A file's old version to save, held in `file` (a link to the old inode).
pub struct ToSave<'a> {
    pub path: &'a str,
    pub file: &'a Path,
    pub chunks: &'a ChunkList,
    pub mode: u32,
    pub mtime_ns: i64,
    pub origin: ReplicaId,
    pub reason: Reason,
    /// The file's stat proves it holds the recorded content (it was
    /// checked against the index just before it was moved aside, and was
    /// not racy): a file taken whole into the store is not read again.
    pub trusted: bool,
    /// The store may take the file itself (rename it into the store)
    /// when most of its chunks are new to the store.
    pub movable: bool,
}

/// Files at least this large whose chunks are mostly new to the store are
/// taken into it whole, by a rename (their chunks stay at their offsets):
/// no copy. Pruning rewrites them once they are mostly garbage.
const ADOPT_MIN: u64 = 1 << 20;

/// What a prune did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Pruned {
    pub versions_dropped: u64,
    pub versions_kept: u64,
    /// Bytes of pack files removed or given back by rewriting.
    pub bytes_freed: u64,
    pub bytes_kept: u64,
}

/// A chunk that could not be read back, and the versions that need it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Damage {
    pub chunk: String,
    pub problem: String,
    pub versions: Vec<u64>,
}

pub struct Store {
    dir: PathBuf,
    db: Database,
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens the store of the replica whose state directory is
    /// `state_dir`, creating it if it is not there yet.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let dir = state_dir.join(VERSIONS_DIR);
        std::fs::create_dir_all(dir.join(PACKS)).map_err(|e| io(&dir, "cannot create", e))?;
        let path = dir.join(CATALOG);
        if !path.exists() {
            create_catalog(&dir)?;
        }
        let db = Database::create(&path).map_err(|e| cat(&path, e))?;
        Ok(Store { dir, db })
    }

    /// Opens the store if the replica has one.
    pub fn open_existing(state_dir: &Path) -> Result<Option<Store>, StoreError> {
        if !state_dir.join(VERSIONS_DIR).join(CATALOG).exists() {
            return Ok(None);
        }
        Store::open(state_dir).map(Some)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn cat(&self, e: impl std::fmt::Display) -> StoreError {
        cat(&self.dir.join(CATALOG), e)
    }

    fn pack_path(&self, n: u32) -> PathBuf {
        self.dir.join(PACKS).join(format!("{n:08}.pack"))
    }

    fn meta_u64(&self, key: &str) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.cat(e))?;
        let t = tx.open_table(META).map_err(|e| self.cat(e))?;
        Ok(t.get(key)
            .map_err(|e| self.cat(e))?
            .and_then(|v| v.value().try_into().ok().map(u64::from_le_bytes))
            .unwrap_or(0))
    }

    pub fn policy(&self) -> Result<Policy, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.cat(e))?;
        let t = tx.open_table(META).map_err(|e| self.cat(e))?;
        Ok(t.get("policy")
            .map_err(|e| self.cat(e))?
            .and_then(|v| postcard::from_bytes(v.value()).ok())
            .unwrap_or_default())
    }

    pub fn set_policy(&self, p: &Policy) -> Result<(), StoreError> {
        let bytes = postcard::to_stdvec(p).map_err(|e| self.cat(e))?;
        let tx = self.db.begin_write().map_err(|e| self.cat(e))?;
        tx.open_table(META)
            .map_err(|e| self.cat(e))?
            .insert("policy", bytes.as_slice())
            .map_err(|e| self.cat(e))?;
        tx.commit().map_err(|e| self.cat(e))
    }

    /// Saves old versions. Chunks the store has are not stored again;
    /// the others are read from each file at their offsets and verified.
    /// Returns, per item, the new version's id or why it was not saved
    /// (the file no longer holds the recorded content).
    pub fn save(&self, items: &[ToSave<'_>]) -> Result<Vec<Result<u64, String>>, StoreError> {
        let saved_at = now_ns();
        let mut results = Vec::with_capacity(items.len());
        let mut pack_no = self.meta_u64("pack")? as u32;
        let mut pack = self.open_pack(pack_no)?;
        let mut end = pack
            .metadata()
            .map_err(|e| io(&self.dir, "cannot stat pack", e))?
            .len();
        // New chunk rows and version records, committed after the pack is
        // durable.
        let mut new_chunks: HashMap<Hash, (u32, u64, u32)> = HashMap::new();
        let mut records: Vec<Version> = Vec::new();
        let mut next_id = self.meta_u64("next_id")?.max(1);
        let known = {
            let tx = self.db.begin_read().map_err(|e| self.cat(e))?;
            tx.open_table(CHUNKS).map_err(|e| self.cat(e))?
        };
        let mut buf = Vec::new();
        let mut out: Vec<u8> = Vec::new();
        let mut touched: Vec<File> = Vec::new();
        // Numbers of the files taken whole as packs.
        let mut adopted: Vec<u32> = Vec::new();
        for item in items {
            let file = match File::open(item.file) {
                Ok(f) => f,
                Err(e) => {
                    results.push(Err(format!("cannot open the old version: {e}")));
                    continue;
                }
            };
            // Taken whole?
            let mut unknown = 0u64;
            let mut seen: HashSet<Hash> = HashSet::new();
            for c in &item.chunks.chunks {
                if seen.insert(c.hash)
                    && !new_chunks.contains_key(&c.hash)
                    && known.get(&c.hash.0).map_err(|e| self.cat(e))?.is_none()
                {
                    unknown += c.len as u64;
                }
            }
            let single = file.metadata().is_ok_and(|m| {
                use std::os::unix::fs::MetadataExt;
                m.nlink() == 1 && m.is_file() && m.len() == item.chunks.size()
            });
            if item.movable && single && unknown >= ADOPT_MIN && unknown * 2 >= item.chunks.size() {
                match self.adopt(item, &file, &known, &new_chunks, &mut buf) {
                    Ok((n, rows)) => {
                        adopted.push(n);
                        new_chunks.extend(rows);
                        records.push(self.record(next_id, item, saved_at));
                        results.push(Ok(next_id));
                        next_id += 1;
                        continue;
                    }
                    Err(AdoptError::Fatal(e)) => return Err(e),
                    Err(AdoptError::Content(m)) => {
                        results.push(Err(m));
                        continue;
                    }
                    Err(AdoptError::CannotMove) => {}
                }
            }
            let mut failed = None;
            // This item's new chunks: hash → (offset in the pack, length).
            let mut pending: HashMap<Hash, (u64, u32)> = HashMap::new();
            for (off, c) in item.chunks.with_offsets() {
                if new_chunks.contains_key(&c.hash)
                    || pending.contains_key(&c.hash)
                    || known.get(&c.hash.0).map_err(|e| self.cat(e))?.is_some()
                {
                    continue;
                }
                buf.resize(c.len as usize, 0);
                if file.read_exact_at(&mut buf, off).is_err() || !weave_chunk::verify(&buf, &c.hash)
                {
                    failed = Some(format!(
                        "the old version no longer holds chunk {} at offset {off}",
                        c.hash.short_hex()
                    ));
                    break;
                }
                out.extend_from_slice(&c.hash.0);
                out.extend_from_slice(&c.len.to_le_bytes());
                out.extend_from_slice(&buf);
                pending.insert(c.hash, (end + 36, c.len));
                end += 36 + c.len as u64;
                if out.len() >= 8 << 20 {
                    pack.write_all(&out)
                        .map_err(|e| io(&self.dir, "cannot write pack", e))?;
                    out.clear();
                }
            }
            if let Some(f) = failed {
                // Nothing of this item is recorded: what it wrote to the
                // pack is garbage no record refers to.
                results.push(Err(f));
                continue;
            }
            for (h, (off, len)) in pending {
                new_chunks.insert(h, (pack_no, off, len));
            }
            records.push(self.record(next_id, item, saved_at));
            results.push(Ok(next_id));
            next_id += 1;
            if end >= PACK_MAX {
                pack.write_all(&out)
                    .map_err(|e| io(&self.dir, "cannot write pack", e))?;
                out.clear();
                touched.push(pack);
                pack_no = self.fresh_pack_no(&adopted)?;
                pack = self.open_pack(pack_no)?;
                end = pack
                    .metadata()
                    .map_err(|e| io(&self.dir, "cannot stat pack", e))?
                    .len();
            }
        }
        drop(known);
        pack.write_all(&out)
            .map_err(|e| io(&self.dir, "cannot write pack", e))?;
        touched.push(pack);
        if records.is_empty() {
            return Ok(results);
        }
        for f in &touched {
            f.sync_data()
                .map_err(|e| io(&self.dir, "cannot flush pack", e))?;
        }
        if !adopted.is_empty() {
            // The renames are durable before the catalog refers to them.
            let d = self.dir.join(PACKS);
            File::open(&d)
                .and_then(|f| f.sync_all())
                .map_err(|e| io(&d, "cannot flush", e))?;
        }
        let tx = self.db.begin_write().map_err(|e| self.cat(e))?;
        {
            let mut chunks = tx.open_table(CHUNKS).map_err(|e| self.cat(e))?;
            for (h, loc) in &new_chunks {
                chunks.insert(&h.0, *loc).map_err(|e| self.cat(e))?;
            }
            let mut versions = tx.open_table(VERSIONS).map_err(|e| self.cat(e))?;
            let mut by_path = tx.open_table(BY_PATH).map_err(|e| self.cat(e))?;
            for v in &records {
                let bytes = postcard::to_stdvec(v).map_err(|e| self.cat(e))?;
                versions
                    .insert(v.id, bytes.as_slice())
                    .map_err(|e| self.cat(e))?;
                by_path
                    .insert((v.path.as_str(), v.id), ())
                    .map_err(|e| self.cat(e))?;
            }
            let mut meta = tx.open_table(META).map_err(|e| self.cat(e))?;
            meta.insert("next_id", next_id.to_le_bytes().as_slice())
                .map_err(|e| self.cat(e))?;
            meta.insert("pack", (pack_no as u64).to_le_bytes().as_slice())
                .map_err(|e| self.cat(e))?;
        }
        tx.commit().map_err(|e| self.cat(e))?;
        Ok(results)
    }

    fn record(&self, id: u64, item: &ToSave<'_>, saved_at: i64) -> Version {
        Version {
            id,
            path: item.path.to_string(),
            content: item.chunks.content_id(),
            size: item.chunks.size(),
            mode: item.mode,
            mtime_ns: item.mtime_ns,
            origin: item.origin,
            saved_at_ns: saved_at,
            reason: item.reason,
            chunks: item.chunks.clone(),
        }
    }

    /// A pack number no file uses yet (nor `also`).
    fn fresh_pack_no(&self, also: &[u32]) -> Result<u32, StoreError> {
        let on_disk = self.packs()?.iter().map(|p| p.0).max();
        let cur = self.meta_u64("pack")? as u32;
        Ok(on_disk
            .into_iter()
            .chain(also.iter().copied())
            .chain([cur])
            .max()
            .unwrap_or(0)
            + 1)
    }

    /// Takes `item`'s file into the store whole, as a pack of its own,
    /// verifying its new chunks unless its stat vouches for them. Returns
    /// the pack's number and the rows of its new chunks.
    #[allow(clippy::type_complexity)]
    fn adopt(
        &self,
        item: &ToSave<'_>,
        file: &File,
        known: &redb::ReadOnlyTable<&'static [u8; 32], (u32, u64, u32)>,
        new_chunks: &HashMap<Hash, (u32, u64, u32)>,
        buf: &mut Vec<u8>,
    ) -> Result<(u32, Vec<(Hash, (u32, u64, u32))>), AdoptError> {
        let n = self.fresh_pack_no(&[]).map_err(AdoptError::Fatal)?;
        let mut rows = Vec::new();
        let mut seen = HashSet::new();
        for (off, c) in item.chunks.with_offsets() {
            if !seen.insert(c.hash)
                || new_chunks.contains_key(&c.hash)
                || known
                    .get(&c.hash.0)
                    .map_err(|e| AdoptError::Fatal(self.cat(e)))?
                    .is_some()
            {
                continue;
            }
            if !item.trusted {
                buf.resize(c.len as usize, 0);
                if file.read_exact_at(buf, off).is_err() || !weave_chunk::verify(buf, &c.hash) {
                    return Err(AdoptError::Content(format!(
                        "the old version no longer holds chunk {} at offset {off}",
                        c.hash.short_hex()
                    )));
                }
            }
            rows.push((c.hash, (n, off, c.len)));
        }
        std::fs::rename(item.file, self.pack_path(n)).map_err(|_| AdoptError::CannotMove)?;
        Ok((n, rows))
    }

    fn open_pack(&self, n: u32) -> Result<File, StoreError> {
        let p = self.pack_path(n);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&p)
            .map_err(|e| io(&p, "cannot open", e))?;
        f.seek(SeekFrom::End(0))
            .map_err(|e| io(&p, "cannot open", e))?;
        Ok(f)
    }

    /// Every version, oldest first.
    pub fn all(&self) -> Result<Vec<Version>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.cat(e))?;
        let t = tx.open_table(VERSIONS).map_err(|e| self.cat(e))?;
        let mut out = Vec::new();
        for r in t.iter().map_err(|e| self.cat(e))? {
            let (_, v) = r.map_err(|e| self.cat(e))?;
            out.push(self.decode(v.value())?);
        }
        out.sort_by_key(|v: &Version| (v.saved_at_ns, v.id));
        Ok(out)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Version, StoreError> {
        postcard::from_bytes(bytes).map_err(|e| self.cat(format!("a damaged version record: {e}")))
    }

    pub fn get(&self, id: u64) -> Result<Option<Version>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.cat(e))?;
        let t = tx.open_table(VERSIONS).map_err(|e| self.cat(e))?;
        match t.get(id).map_err(|e| self.cat(e))? {
            Some(v) => Ok(Some(self.decode(v.value())?)),
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
        let tx = self.db.begin_read().map_err(|e| self.cat(e))?;
        let by_path = tx.open_table(BY_PATH).map_err(|e| self.cat(e))?;
        let versions = tx.open_table(VERSIONS).map_err(|e| self.cat(e))?;
        let mut out = Vec::new();
        for r in by_path.range((start, 0u64)..).map_err(|e| self.cat(e))? {
            let (k, _) = r.map_err(|e| self.cat(e))?;
            let (path, id) = k.value();
            if !path.starts_with(start) {
                break;
            }
            if !want(path) {
                continue;
            }
            if let Some(v) = versions.get(id).map_err(|e| self.cat(e))? {
                out.push(self.decode(v.value())?);
            }
        }
        out.sort_by_key(|v| (v.saved_at_ns, v.id));
        Ok(out)
    }

    /// Writes version `v`'s content into `out` (from offset 0), every chunk
    /// verified. The error names the chunk that is missing or damaged.
    pub fn read_into(&self, v: &Version, out: &File, progress: &dyn Fn(u64)) -> Result<(), String> {
        let tx = self.db.begin_read().map_err(|e| e.to_string())?;
        let chunks = tx.open_table(CHUNKS).map_err(|e| e.to_string())?;
        let mut packs: HashMap<u32, File> = HashMap::new();
        let mut buf = Vec::new();
        let mut w = std::io::BufWriter::with_capacity(1 << 20, out);
        for c in &v.chunks.chunks {
            let (pack, off, len) = chunks
                .get(&c.hash.0)
                .map_err(|e| e.to_string())?
                .map(|x| x.value())
                .ok_or_else(|| format!("chunk {} is missing from the store", c.hash.short_hex()))?;
            if len != c.len {
                return Err(format!(
                    "chunk {} has the wrong length in the store",
                    c.hash.short_hex()
                ));
            }
            let f = match packs.entry(pack) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e
                    .insert(File::open(self.pack_path(pack)).map_err(|e| {
                        format!("pack {pack} of chunk {}: {e}", c.hash.short_hex())
                    })?),
            };
            buf.resize(len as usize, 0);
            f.read_exact_at(&mut buf, off).map_err(|e| {
                format!("chunk {}: cannot read pack {pack}: {e}", c.hash.short_hex())
            })?;
            if !weave_chunk::verify(&buf, &c.hash) {
                return Err(format!(
                    "chunk {} is damaged in pack {pack}",
                    c.hash.short_hex()
                ));
            }
            w.write_all(&buf)
                .map_err(|e| format!("cannot write: {e}"))?;
            progress(len as u64);
        }
        w.flush().map_err(|e| format!("cannot write: {e}"))?;
        Ok(())
    }

    /// Reads every stored chunk back and names the versions that a
    /// missing or damaged chunk affects (nothing is changed).
    pub fn check(&self) -> Result<Vec<Damage>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.cat(e))?;
        let chunks = tx.open_table(CHUNKS).map_err(|e| self.cat(e))?;
        // Chunk → its problem (None: reads back fine), and the versions
        // that need a bad one.
        let mut seen: HashMap<Hash, Option<String>> = HashMap::new();
        let mut hit: HashMap<Hash, Vec<u64>> = HashMap::new();
        let mut packs: HashMap<u32, Option<File>> = HashMap::new();
        let mut buf = Vec::new();
        for v in self.all()? {
            for h in unique(&v.chunks) {
                if let std::collections::hash_map::Entry::Vacant(slot) = seen.entry(h) {
                    let problem = match chunks
                        .get(&h.0)
                        .map_err(|e| self.cat(e))?
                        .map(|x| x.value())
                    {
                        None => Some("missing from the catalog".to_string()),
                        Some((pack, off, len)) => {
                            let f = packs
                                .entry(pack)
                                .or_insert_with(|| File::open(self.pack_path(pack)).ok());
                            buf.resize(len as usize, 0);
                            match f {
                                None => Some(format!("pack {pack} is missing")),
                                Some(f) if f.read_exact_at(&mut buf, off).is_err() => {
                                    Some(format!("pack {pack} is cut short"))
                                }
                                Some(_) if !weave_chunk::verify(&buf, &h) => {
                                    Some(format!("damaged in pack {pack}"))
                                }
                                Some(_) => None,
                            }
                        }
                    };
                    slot.insert(problem);
                }
                if seen[&h].is_some() {
                    hit.entry(h).or_default().push(v.id);
                }
            }
        }
        let mut out: Vec<Damage> = hit
            .into_iter()
            .map(|(h, mut versions)| {
                versions.sort_unstable();
                Damage {
                    chunk: h.to_hex(),
                    problem: seen[&h].clone().unwrap_or_default(),
                    versions,
                }
            })
            .collect();
        out.sort_by(|a, b| a.chunk.cmp(&b.chunk));
        Ok(out)
    }

    /// Applies the retention policy at time `now`: drops the versions it
    /// does not keep, then the chunks no kept version needs, rewriting
    /// packs that are mostly garbage and removing packs nothing refers to.
    pub fn prune(&self, now: i64) -> Result<Pruned, StoreError> {
        let policy = self.policy()?;
        let all = self.all()?;
        let stamps: Vec<retention::Stamp> = all
            .iter()
            .map(|v| retention::Stamp {
                id: v.id,
                path: &v.path,
                saved_at_ns: v.saved_at_ns,
            })
            .collect();
        let mut keep = retention::select(&policy, &stamps, now);
        let lens: HashMap<Hash, u32> = all
            .iter()
            .flat_map(|v| v.chunks.chunks.iter().map(|c| (c.hash, c.len)))
            .collect();
        let mut refs: HashMap<Hash, u32> = HashMap::new();
        for v in all.iter().filter(|v| keep.contains(&v.id)) {
            for h in unique(&v.chunks) {
                *refs.entry(h).or_default() += 1;
            }
        }
        let mut size: u64 = refs.keys().map(|h| lens[h] as u64).sum();
        if let Some(max) = policy.max_size {
            // Oldest first (`all` is sorted by age).
            for v in &all {
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
        let dropped: Vec<&Version> = all.iter().filter(|v| !keep.contains(&v.id)).collect();
        // 1. The catalog forgets the dropped versions and their chunks.
        let tx = self.db.begin_write().map_err(|e| self.cat(e))?;
        let mut live: Vec<(Hash, (u32, u64, u32))> = Vec::new();
        {
            let mut versions = tx.open_table(VERSIONS).map_err(|e| self.cat(e))?;
            let mut by_path = tx.open_table(BY_PATH).map_err(|e| self.cat(e))?;
            for v in &dropped {
                versions.remove(v.id).map_err(|e| self.cat(e))?;
                by_path
                    .remove((v.path.as_str(), v.id))
                    .map_err(|e| self.cat(e))?;
            }
            let mut chunks = tx.open_table(CHUNKS).map_err(|e| self.cat(e))?;
            let mut dead: Vec<[u8; 32]> = Vec::new();
            for r in chunks.iter().map_err(|e| self.cat(e))? {
                let (k, v) = r.map_err(|e| self.cat(e))?;
                let h = Hash(*k.value());
                if refs.contains_key(&h) {
                    live.push((h, v.value()));
                } else {
                    dead.push(h.0);
                }
            }
            for h in dead {
                chunks.remove(&h).map_err(|e| self.cat(e))?;
            }
        }
        tx.commit().map_err(|e| self.cat(e))?;
        // 2. Packs: removed when nothing refers to them, rewritten when
        //    mostly garbage (the catalog moves to the new copy before the
        //    old pack goes).
        let mut used: HashMap<u32, u64> = HashMap::new();
        for (_, (pack, _, len)) in &live {
            *used.entry(*pack).or_default() += 36 + *len as u64;
        }
        let mut freed = 0u64;
        let mut to_rewrite: HashSet<u32> = HashSet::new();
        for (n, size) in self.packs()? {
            let u = used.get(&n).copied().unwrap_or(0);
            if u == 0 {
                let _ = std::fs::remove_file(self.pack_path(n));
                freed += size;
            } else if (u as f64) < REPACK_BELOW * size as f64 {
                to_rewrite.insert(n);
            }
        }
        if !to_rewrite.is_empty() {
            let mut n = self.packs()?.iter().map(|p| p.0).max().unwrap_or(0) + 1;
            let mut pack = self.open_pack(n)?;
            let mut end = 0u64;
            // (chunk, the pack it comes from, where it goes)
            let mut moved: Vec<(Hash, u32, (u32, u64, u32))> = Vec::new();
            let mut buf = Vec::new();
            let mut files: Vec<File> = Vec::new();
            let chosen = to_rewrite.clone();
            for (h, (p, off, len)) in live.iter().filter(|(_, l)| chosen.contains(&l.0)) {
                if !to_rewrite.contains(p) {
                    continue;
                }
                let src = File::open(self.pack_path(*p))
                    .map_err(|e| io(&self.pack_path(*p), "cannot open", e))?;
                buf.resize(*len as usize, 0);
                // A pack with a damaged chunk is left as it is (never made
                // worse): none of its chunks move.
                if src.read_exact_at(&mut buf, *off).is_err() || !weave_chunk::verify(&buf, h) {
                    to_rewrite.remove(p);
                    continue;
                }
                let mut rec = Vec::with_capacity(36 + buf.len());
                rec.extend_from_slice(&h.0);
                rec.extend_from_slice(&len.to_le_bytes());
                rec.extend_from_slice(&buf);
                pack.write_all(&rec)
                    .map_err(|e| io(&self.dir, "cannot write pack", e))?;
                moved.push((*h, *p, (n, end + 36, *len)));
                end += rec.len() as u64;
                if end >= PACK_MAX {
                    files.push(pack);
                    n += 1;
                    pack = self.open_pack(n)?;
                    end = 0;
                }
            }
            files.push(pack);
            for f in &files {
                f.sync_data()
                    .map_err(|e| io(&self.dir, "cannot flush pack", e))?;
            }
            let tx = self.db.begin_write().map_err(|e| self.cat(e))?;
            {
                let mut chunks = tx.open_table(CHUNKS).map_err(|e| self.cat(e))?;
                for (h, from, loc) in &moved {
                    if to_rewrite.contains(from) {
                        chunks.insert(&h.0, *loc).map_err(|e| self.cat(e))?;
                    }
                }
                tx.open_table(META)
                    .map_err(|e| self.cat(e))?
                    .insert("pack", (n as u64).to_le_bytes().as_slice())
                    .map_err(|e| self.cat(e))?;
            }
            tx.commit().map_err(|e| self.cat(e))?;
            for p in &to_rewrite {
                let path = self.pack_path(*p);
                freed += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                let _ = std::fs::remove_file(path);
            }
        }
        let bytes_kept = self.packs()?.iter().map(|p| p.1).sum();
        Ok(Pruned {
            versions_dropped: dropped.len() as u64,
            versions_kept: keep.len() as u64,
            bytes_freed: freed,
            bytes_kept,
        })
    }

    /// The pack files: number and size.
    fn packs(&self) -> Result<Vec<(u32, u64)>, StoreError> {
        let dir = self.dir.join(PACKS);
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(|e| io(&dir, "cannot list", e))? {
            let e = e.map_err(|e| io(&dir, "cannot list", e))?;
            let name = e.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|s| s.strip_suffix(".pack"))
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            out.push((n, e.metadata().map(|m| m.len()).unwrap_or(0)));
        }
        out.sort();
        Ok(out)
    }

    /// Bytes the store takes on disk (catalog and packs).
    pub fn disk_usage(&self) -> u64 {
        let cat = std::fs::metadata(self.dir.join(CATALOG))
            .map(|m| m.len())
            .unwrap_or(0);
        cat + self
            .packs()
            .map(|p| p.iter().map(|x| x.1).sum())
            .unwrap_or(0)
    }
}

enum AdoptError {
    Fatal(StoreError),
    Content(String),
    CannotMove,
}

fn unique(list: &ChunkList) -> HashSet<Hash> {
    list.chunks.iter().map(|c| c.hash).collect()
}

fn io(path: &Path, what: &str, e: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        problem: format!("{what}: {e}"),
    }
}

fn cat(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Catalog {
        path: path.to_path_buf(),
        problem: e.to_string(),
    }
}

/// Creates an empty catalog in the store directory `dir` without ever
/// leaving a half-made one in place: it is made under a temporary name,
/// committed (flushed), and renamed, and the directory is flushed. A run
/// killed before the rename leaves only the temporary, made again next time.
fn create_catalog(dir: &Path) -> Result<(), StoreError> {
    let path = dir.join(CATALOG);
    let tmp = dir.join(format!("{CATALOG}.new"));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io(&tmp, "cannot remove", e))
        }
        _ => {}
    }
    {
        let db = Database::create(&tmp).map_err(|e| cat(&tmp, e))?;
        let tx = db.begin_write().map_err(|e| cat(&tmp, e))?;
        {
            tx.open_table(VERSIONS).map_err(|e| cat(&tmp, e))?;
            tx.open_table(BY_PATH).map_err(|e| cat(&tmp, e))?;
            tx.open_table(CHUNKS).map_err(|e| cat(&tmp, e))?;
            tx.open_table(META).map_err(|e| cat(&tmp, e))?;
        }
        tx.commit().map_err(|e| cat(&tmp, e))?;
    }
    std::fs::rename(&tmp, &path).map_err(|e| io(&path, "cannot create", e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, "cannot flush", e))
}
