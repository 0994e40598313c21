//! weave-index: a replica's index, kept in redb inside its state directory.
//!
//! One entry per path (the replicated [`Entry`] plus what only this replica
//! needs: a local sequence number and the on-disk stat used to notice
//! changes without reading files), the chunk list of every content the
//! replica holds, what it has integrated from each peer, and a small meta
//! table with the format version, the replica id and its clocks.
//!
//! [`state`] checks a replica's directory before anything is created in
//! it, and keeps the kind of replica its state directory is for.

pub mod changes;
pub mod state;
pub use changes::EntryMap;
pub use state::{check_local_replicas, claim_kind, StateError, KIND_FILE};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use thiserror::Error;
use weave_chunk::ChunkList;
use weave_core::{Entry, Hash, LocalEntry, Meta, Object, ReplicaId, Stat, VersionVector};

/// Version of the index layout. Bump on any incompatible change; an index
/// with a newer version is refused, never rewritten.
pub const FORMAT_VERSION: u64 = 3;
pub const INDEX_FILE: &str = "index.redb";

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
const CONTENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("contents");
const PEERS: TableDefinition<u64, u64> = TableDefinition::new("peers");
/// path → [`ScanRecord`] of every live entry: what the scanner compares the
/// disk with, small enough to load for a whole tree.
const SCAN: TableDefinition<&str, &[u8]> = TableDefinition::new("scan");

#[derive(Debug, Error)]
pub enum IndexError {
    #[error("the weave index {path} is damaged ({detail}). To recover, move the state directory out of the replica (mv {state} {aside}) and sync again: weave rebuilds it by rescanning, and files that differ between replicas are then kept as conflict copies, never lost")]
    Corrupt {
        path: PathBuf,
        state: PathBuf,
        aside: PathBuf,
        detail: String,
    },
    #[error("the weave index {path} has format version {found}, newer than this weave understands ({supported}). Use a newer weave, or move {state} out of the replica (mv {state} {aside}) to start this replica's state anew")]
    NewerFormat {
        path: PathBuf,
        state: PathBuf,
        aside: PathBuf,
        found: u64,
        supported: u64,
    },
    #[error("the replica state {path} is in use by another weave process; wait for it to finish")]
    InUse { path: PathBuf },
    #[error("cannot use the weave index {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("weave index {path}: {detail}")]
    Db { path: PathBuf, detail: String },
}

/// What the scanner needs to know of a live path to tell whether it changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScanRecord {
    File(Stat),
    Dir { mode: u32 },
    Symlink { target: String },
}

impl ScanRecord {
    pub fn of(le: &LocalEntry) -> Option<ScanRecord> {
        match &le.entry.object {
            Object::File { .. } => Some(ScanRecord::File(le.stat.unwrap_or(Stat {
                size: u64::MAX,
                mtime_ns: 0,
                ctime_ns: 0,
                ino: 0,
                mode: 0,
                racy: true,
            }))),
            Object::Dir => Some(ScanRecord::Dir {
                mode: le.entry.mode,
            }),
            Object::Symlink { target } => Some(ScanRecord::Symlink {
                target: target.clone(),
            }),
            Object::Deleted => None,
        }
    }
}

/// Walks the scan records in path order (see [`Index::scan_cursor`]).
pub struct ScanCursor {
    table: Option<redb::ReadOnlyTable<&'static str, &'static [u8]>>,
    range: Option<redb::Range<'static, &'static str, &'static [u8]>>,
    /// Records from here on are past the end (see [`ScanCursor::seek`]).
    end: Option<String>,
    peeked: Option<(String, ScanRecord)>,
    path: PathBuf,
    state: PathBuf,
}

impl ScanCursor {
    /// A cursor over no records (a replica with no index yet).
    pub fn empty() -> ScanCursor {
        ScanCursor {
            table: None,
            range: None,
            end: None,
            peeked: None,
            path: PathBuf::new(),
            state: PathBuf::new(),
        }
    }

    /// Moves the cursor to the first record at or after `from`, and ends
    /// it before `end` (records at or after `end` are not returned).
    pub fn seek(&mut self, from: &str, end: Option<&str>) -> Result<(), IndexError> {
        self.peeked = None;
        self.end = end.map(str::to_string);
        let Some(t) = &self.table else {
            return Ok(());
        };
        let range = t.range::<&str>(from..).map_err(|e| IndexError::Corrupt {
            path: self.path.clone(),
            state: self.state.clone(),
            aside: aside(&self.state),
            detail: e.to_string(),
        })?;
        self.range = Some(range);
        Ok(())
    }

    /// The next record, without taking it.
    pub fn peek(&mut self) -> Result<Option<&(String, ScanRecord)>, IndexError> {
        if self.peeked.is_none() {
            self.peeked = self.read()?;
        }
        Ok(self.peeked.as_ref())
    }

    /// Takes the next record.
    pub fn take(&mut self) -> Result<Option<(String, ScanRecord)>, IndexError> {
        match self.peeked.take() {
            Some(x) => Ok(Some(x)),
            None => self.read(),
        }
    }

    fn read(&mut self) -> Result<Option<(String, ScanRecord)>, IndexError> {
        let Some(range) = &mut self.range else {
            return Ok(None);
        };
        let Some(row) = range.next() else {
            return Ok(None);
        };
        let corrupt = |detail: String| IndexError::Corrupt {
            path: self.path.clone(),
            state: self.state.clone(),
            aside: aside(&self.state),
            detail,
        };
        let (k, v) = row.map_err(|e| corrupt(e.to_string()))?;
        if self.end.as_deref().is_some_and(|end| k.value() >= end) {
            self.range = None;
            return Ok(None);
        }
        let r: ScanRecord = postcard::from_bytes(v.value())
            .map_err(|e| corrupt(format!("scan record {:?} does not decode: {e}", k.value())))?;
        Ok(Some((k.value().to_string(), r)))
    }
}

#[derive(Serialize, Deserialize)]
struct StoredEntry {
    object: Object,
    mode: u32,
    mtime_ns: i64,
    vv: VersionVector,
    origin: ReplicaId,
    seq: u64,
    stat: Option<Stat>,
    /// Since format 3.
    meta: Option<Box<Meta>>,
}

/// An entry as formats 1 and 2 stored it (no metadata beyond the mode).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct StoredEntryV2 {
    object: Object,
    mode: u32,
    mtime_ns: i64,
    vv: VersionVector,
    origin: ReplicaId,
    seq: u64,
    stat: Option<Stat>,
}

impl StoredEntry {
    /// A stored entry of any format: entries written before format 3 are
    /// read as they are (they are rewritten only when they change).
    fn decode(bytes: &[u8]) -> postcard::Result<StoredEntry> {
        match postcard::from_bytes::<StoredEntry>(bytes) {
            Ok(s) => Ok(s),
            // Only a record that is exactly a format-2 one (postcard
            // leaves trailing bytes unread: a damaged format-3 record must
            // not pass for one).
            Err(e) => match postcard::take_from_bytes::<StoredEntryV2>(bytes) {
                Ok((o, [])) => Ok(StoredEntry {
                    object: o.object,
                    mode: o.mode,
                    mtime_ns: o.mtime_ns,
                    vv: o.vv,
                    origin: o.origin,
                    seq: o.seq,
                    stat: o.stat,
                    meta: None,
                }),
                _ => Err(e),
            },
        }
    }
}

/// The sequence number of a stored entry.
fn stored_seq(bytes: &[u8]) -> Option<u64> {
    StoredEntry::decode(bytes).ok().map(|s| s.seq)
}

/// Changes to write in one transaction.
#[derive(Default)]
pub struct Batch {
    pub entries: Vec<LocalEntry>,
    pub contents: Vec<ChunkList>,
    pub drop_contents: Vec<Hash>,
    pub peers: Vec<(ReplicaId, u64)>,
    /// The fingerprint of the ignore patterns under which `peers` holds.
    pub ignore_fingerprint: Option<u64>,
    /// What the replica keeps of owners and extended attributes
    /// (`MetaScope::bits`), recorded once its entries agree with it.
    pub meta_scope: Option<u64>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.meta_scope.is_none()
            && self.contents.is_empty()
            && self.drop_contents.is_empty()
            && self.peers.is_empty()
    }
}

/// An open index. Holds redb's lock on the file, so only one process uses a
/// replica at a time.
pub struct Index {
    db: Option<Database>,
    path: PathBuf,
    state: PathBuf,
    id: ReplicaId,
    clock: u64,
    seq: u64,
    rekeyed: bool,
    ignore_fp: Option<u64>,
    meta_scope: Option<u64>,
    /// False for a dry run: nothing is written.
    writable: bool,
    /// The `by_seq` table is there (format 2; an index of format 1 gets
    /// it when opened for writing).
    by_seq: bool,
}

impl Index {
    /// A handle with fresh clocks; the caller loads or initialises the rest.
    fn handle(
        db: Option<Database>,
        path: PathBuf,
        state: PathBuf,
        id: ReplicaId,
        writable: bool,
    ) -> Index {
        Index {
            db,
            path,
            state,
            id,
            clock: 0,
            seq: 0,
            rekeyed: false,
            ignore_fp: None,
            meta_scope: None,
            writable,
            by_seq: true,
        }
    }

    /// Opens the index in `state_dir`, creating it (and a fresh replica id)
    /// if it does not exist.
    pub fn open(state_dir: &Path) -> Result<Index, IndexError> {
        Self::open_with(state_dir, true)
    }

    /// Opens the index in `state_dir` for a sync: created if need be, or
    /// on a dry run read only (a replica without state gets a throw-away
    /// index, and nothing is written).
    pub fn open_for_sync(state_dir: &Path, dry_run: bool) -> Result<Index, IndexError> {
        let exists = state_dir.join(INDEX_FILE).exists();
        match (dry_run, exists) {
            (true, false) => Ok(Index::ephemeral(state_dir)),
            (true, true) => Index::open_for_dry_run(state_dir),
            (false, _) => Index::open(state_dir),
        }
    }

    /// Opens an existing index for a dry run: weave writes nothing to it
    /// (redb itself may still update its own bookkeeping).
    pub fn open_for_dry_run(state_dir: &Path) -> Result<Index, IndexError> {
        Self::open_with(state_dir, false)
    }

    /// The id of the replica whose state directory is `state_dir`, read
    /// from its index without writing to it (`ReplicaId(0)` if the index
    /// cannot be read now).
    pub fn id_at(state_dir: &Path) -> ReplicaId {
        Self::open_for_dry_run(state_dir)
            .map(|i| i.id())
            .unwrap_or(ReplicaId(0))
    }

    fn open_with(state_dir: &Path, writable: bool) -> Result<Index, IndexError> {
        let path = state_dir.join(INDEX_FILE);
        let exists = path.exists();
        std::fs::create_dir_all(state_dir).map_err(|source| IndexError::Io {
            path: state_dir.to_path_buf(),
            source,
        })?;
        if !exists {
            create_atomically(&path, state_dir)?;
        }
        let db = builder()
            .create(&path)
            .map_err(|e| open_error(&path, state_dir, e))?;
        let mut idx = Index::handle(
            Some(db),
            path.clone(),
            state_dir.to_path_buf(),
            ReplicaId(0),
            writable,
        );
        let meta = idx.read_meta()?;
        match meta.get("format") {
            Some(&f) if f > FORMAT_VERSION => {
                return Err(IndexError::NewerFormat {
                    path,
                    state: state_dir.to_path_buf(),
                    aside: aside(state_dir),
                    found: f,
                    supported: FORMAT_VERSION,
                })
            }
            Some(_) => {
                let id = meta
                    .get("replica_id")
                    .copied()
                    .ok_or_else(|| idx.corrupt("no replica id"))?;
                idx.id = ReplicaId(id);
                idx.clock = meta.get("clock").copied().unwrap_or(0);
                idx.seq = meta.get("seq").copied().unwrap_or(0);
                idx.ignore_fp = meta.get("ignore_fp").copied();
                idx.meta_scope = meta.get("meta_scope").copied();
                match meta.get("format") {
                    Some(&1) => idx.upgrade_from_1()?,
                    Some(&2) => idx.upgrade_from_2()?,
                    _ => {}
                }
                idx.check_root(&meta)?;
            }
            None => return Err(idx.corrupt("no format version")),
        }
        Ok(idx)
    }

    /// An index that exists only in memory, for a dry run on a replica that
    /// has no state yet: nothing is written.
    pub fn ephemeral(state_dir: &Path) -> Index {
        Index::handle(
            None,
            state_dir.join(INDEX_FILE),
            state_dir.to_path_buf(),
            ReplicaId(rand::random::<u64>() | 1),
            false,
        )
    }

    pub fn id(&self) -> ReplicaId {
        self.id
    }

    /// The ignore fingerprint recorded with the peers' progress.
    pub fn ignore_fingerprint(&self) -> Option<u64> {
        self.ignore_fp
    }

    /// True if this open gave the replica a new identity because its state
    /// was made for another directory (copied or moved along with files).
    pub fn rekeyed(&self) -> bool {
        self.rekeyed
    }

    /// The (device, inode) of the replica's root directory.
    /// The identity of the replica's root directory: its inode and its
    /// birth time. Both stay when a filesystem is remounted (where the
    /// device number may change); a copy gets new ones. Without a birth
    /// time, the device number stands in.
    fn root_identity(&self) -> Option<(u64, u64)> {
        use rustix::fs::{statx, AtFlags, StatxFlags, CWD};
        let root = self.state.parent()?;
        let st = statx(
            CWD,
            root,
            AtFlags::empty(),
            StatxFlags::INO | StatxFlags::BTIME,
        )
        .ok()?;
        let second = if st.stx_mask & StatxFlags::BTIME.bits() != 0 {
            (st.stx_btime.tv_sec as u64)
                .wrapping_mul(1_000_000_000)
                .wrapping_add(st.stx_btime.tv_nsec as u64)
        } else {
            (1u64 << 63) | ((st.stx_dev_major as u64) << 32) | st.stx_dev_minor as u64
        };
        Some((st.stx_ino, second))
    }

    /// A state directory belongs to the directory it was made in. Found
    /// under another one (copied with `cp -a`, restored from a backup,
    /// moved), the replica takes a new identity: two replicas must never
    /// share one, or their changes would be mistaken for each other's. Its
    /// entries and their version vectors stay (they are true history); what
    /// it had integrated from peers is forgotten, so the next sync plans.
    fn check_root(&mut self, meta: &HashMap<String, u64>) -> Result<(), IndexError> {
        let Some((ino, birth)) = self.root_identity() else {
            return Ok(());
        };
        let recorded = (
            meta.get("root_ino").copied(),
            meta.get("root_birth").copied(),
        );
        if recorded == (Some(ino), Some(birth)) {
            return Ok(());
        }
        let known = recorded.1.is_some();
        if !self.writable {
            // A dry run: the new identity holds for this run only.
            if known {
                self.id = ReplicaId(rand::random::<u64>() | 1);
                self.clock = 0;
                self.rekeyed = true;
            }
            return Ok(());
        }
        let Some(db) = &self.db else { return Ok(()) };
        let tx = db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut t = tx.open_table(META).map_err(|e| self.db_err(e))?;
            t.insert("root_ino", ino).map_err(|e| self.db_err(e))?;
            t.insert("root_birth", birth).map_err(|e| self.db_err(e))?;
            if known {
                self.id = ReplicaId(rand::random::<u64>() | 1);
                self.clock = 0;
                t.insert("replica_id", self.id.0)
                    .map_err(|e| self.db_err(e))?;
                t.insert("clock", 0).map_err(|e| self.db_err(e))?;
                let mut peers = tx.open_table(PEERS).map_err(|e| self.db_err(e))?;
                peers.retain(|_, _| false).map_err(|e| self.db_err(e))?;
            }
        }
        tx.commit().map_err(|e| self.db_err(e))?;
        self.rekeyed = known;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An index of format 2 is of format 3 as it is (its entries have no
    /// metadata beyond modes, and are read as such): it only takes the new
    /// number, so that an older weave, which would drop the metadata of
    /// entries written from now on, refuses it. Left as it is read-only.
    fn upgrade_from_2(&mut self) -> Result<(), IndexError> {
        let Some(db) = self.db.as_ref().filter(|_| self.writable) else {
            return Ok(());
        };
        let tx = db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut t = tx.open_table(META).map_err(|e| self.db_err(e))?;
            t.insert("format", FORMAT_VERSION)
                .map_err(|e| self.db_err(e))?;
        }
        tx.commit().map_err(|e| self.db_err(e))
    }

    /// An index of format 1 gets its `by_seq` table, in one transaction
    /// with the new format number; opened read-only, it is left as it is
    /// (and asked the slow way).
    fn upgrade_from_1(&mut self) -> Result<(), IndexError> {
        if !self.writable {
            self.by_seq = false;
            return Ok(());
        }
        let Some(db) = &self.db else { return Ok(()) };
        let tx = db.begin_write().map_err(|e| self.db_err(e))?;
        let n = changes::build(&tx).map_err(|e| self.corrupt(e))?;
        {
            let mut t = tx.open_table(META).map_err(|e| self.db_err(e))?;
            t.insert("format", FORMAT_VERSION)
                .map_err(|e| self.db_err(e))?;
        }
        tx.commit().map_err(|e| self.db_err(e))?;
        tracing::info!(index = %self.path.display(), entries = n, "index upgraded to format 3 (entries by sequence number)");
        Ok(())
    }

    /// The next value of this replica's clock, for a version-vector bump.
    pub fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Moves the clock past a counter seen for this replica elsewhere (a
    /// replica whose state was rebuilt must never reuse a counter).
    pub fn observe(&mut self, counter: u64) {
        self.clock = self.clock.max(counter);
    }

    /// The current value of this replica's clock.
    pub fn clock(&self) -> u64 {
        self.clock
    }

    /// The next local sequence number.
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Counts the sequence numbers up to `seq` as given out (by a writer
    /// that numbered its entries from [`Index::seq`] on and wrote them with
    /// [`Index::write_as`]).
    pub fn take_seqs_to(&mut self, seq: u64) {
        self.seq = self.seq.max(seq);
    }

    fn corrupt(&self, detail: impl Into<String>) -> IndexError {
        IndexError::Corrupt {
            path: self.path.clone(),
            state: self.state.clone(),
            aside: aside(&self.state),
            detail: detail.into(),
        }
    }

    fn db_err(&self, e: impl std::fmt::Display) -> IndexError {
        let detail = e.to_string();
        if detail.to_lowercase().contains("corrupt") {
            return self.corrupt(detail);
        }
        IndexError::Db {
            path: self.path.clone(),
            detail,
        }
    }

    fn read_meta(&self) -> Result<HashMap<String, u64>, IndexError> {
        let mut out = HashMap::new();
        let Some(db) = &self.db else { return Ok(out) };
        let tx = db.begin_read().map_err(|e| self.db_err(e))?;
        let t = match tx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(out),
            Err(e) => return Err(self.corrupt(e.to_string())),
        };
        for row in t.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = row.map_err(|e| self.db_err(e))?;
            out.insert(k.value().to_string(), v.value());
        }
        Ok(out)
    }

    fn init_meta(&self) -> Result<(), IndexError> {
        let Some(db) = &self.db else { return Ok(()) };
        let tx = db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut t = tx.open_table(META).map_err(|e| self.db_err(e))?;
            t.insert("format", FORMAT_VERSION)
                .map_err(|e| self.db_err(e))?;
            t.insert("chunker", weave_chunk::CHUNKER_VERSION as u64)
                .map_err(|e| self.db_err(e))?;
            t.insert("replica_id", self.id.0)
                .map_err(|e| self.db_err(e))?;
            t.insert("clock", 0).map_err(|e| self.db_err(e))?;
            t.insert("seq", 0).map_err(|e| self.db_err(e))?;
            tx.open_table(ENTRIES).map_err(|e| self.db_err(e))?;
            tx.open_table(CONTENTS).map_err(|e| self.db_err(e))?;
            tx.open_table(PEERS).map_err(|e| self.db_err(e))?;
            tx.open_table(SCAN).map_err(|e| self.db_err(e))?;
            tx.open_table(changes::BY_SEQ).map_err(|e| self.db_err(e))?;
        }
        tx.commit().map_err(|e| self.db_err(e))
    }

    /// Opens a table for reading (None for an index that exists only in
    /// memory). The table keeps its read transaction alive.
    fn read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
    ) -> Result<Option<redb::ReadOnlyTable<K, V>>, IndexError> {
        let Some(db) = &self.db else { return Ok(None) };
        let tx = db.begin_read().map_err(|e| self.db_err(e))?;
        tx.open_table(def)
            .map(Some)
            .map_err(|e| self.corrupt(e.to_string()))
    }

    /// Every entry, sorted by path.
    pub fn load_entries(&self) -> Result<BTreeMap<String, LocalEntry>, IndexError> {
        let mut out = BTreeMap::new();
        let Some(t) = self.read_table(ENTRIES)? else {
            return Ok(out);
        };
        for row in t.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = row.map_err(|e| self.db_err(e))?;
            let path = k.value().to_string();
            let le = self.decode_entry(path.clone(), v.value())?;
            out.insert(path, le);
        }
        Ok(out)
    }

    /// True if the index holds any entry.
    pub fn has_entries(&self) -> Result<bool, IndexError> {
        let Some(t) = self.read_table(ENTRIES)? else {
            return Ok(false);
        };
        let first = t.first().map_err(|e| self.db_err(e))?;
        Ok(first.is_some())
    }

    /// One entry.
    pub fn entry(&self, path: &str) -> Result<Option<LocalEntry>, IndexError> {
        let Some(t) = self.read_table(ENTRIES)? else {
            return Ok(None);
        };
        let Some(v) = t.get(path).map_err(|e| self.db_err(e))? else {
            return Ok(None);
        };
        Ok(Some(self.decode_entry(path.to_string(), v.value())?))
    }

    fn decode_entry(&self, path: String, bytes: &[u8]) -> Result<LocalEntry, IndexError> {
        let s = StoredEntry::decode(bytes)
            .map_err(|e| self.corrupt(format!("entry {path:?} does not decode: {e}")))?;
        Ok(LocalEntry {
            entry: Entry {
                path,
                object: s.object,
                mode: s.mode,
                mtime_ns: s.mtime_ns,
                vv: s.vv,
                origin: s.origin,
                meta: s.meta,
            },
            seq: s.seq,
            stat: s.stat,
        })
    }

    /// Calls `f` with every live path and its scan record, in path order.
    pub fn for_each_scan_record(
        &self,
        mut f: impl FnMut(&str, ScanRecord),
    ) -> Result<(), IndexError> {
        let Some(t) = self.read_table(SCAN)? else {
            return Ok(());
        };
        for row in t.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = row.map_err(|e| self.db_err(e))?;
            let r: ScanRecord = postcard::from_bytes(v.value()).map_err(|e| {
                self.corrupt(format!("scan record {:?} does not decode: {e}", k.value()))
            })?;
            f(k.value(), r);
        }
        Ok(())
    }

    /// A cursor over every live path's scan record, in path (byte) order.
    pub fn scan_cursor(&self) -> Result<ScanCursor, IndexError> {
        let Some(t) = self.read_table(SCAN)? else {
            return Ok(ScanCursor {
                table: None,
                range: None,
                end: None,
                peeked: None,
                path: self.path.clone(),
                state: self.state.clone(),
            });
        };
        let range = redb::ReadOnlyTable::range::<&str>(&t, ..).map_err(|e| self.db_err(e))?;
        Ok(ScanCursor {
            table: Some(t),
            range: Some(range),
            end: None,
            peeked: None,
            path: self.path.clone(),
            state: self.state.clone(),
        })
    }

    /// How far this replica has integrated each peer's changes.
    pub fn load_peers(&self) -> Result<HashMap<ReplicaId, u64>, IndexError> {
        let mut out = HashMap::new();
        let Some(t) = self.read_table(PEERS)? else {
            return Ok(out);
        };
        for row in t.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = row.map_err(|e| self.db_err(e))?;
            out.insert(ReplicaId(k.value()), v.value());
        }
        Ok(out)
    }

    /// The chunk list of a content this replica holds.
    pub fn chunk_list(&self, content: &Hash) -> Result<Option<ChunkList>, IndexError> {
        let Some(t) = self.read_table(CONTENTS)? else {
            return Ok(None);
        };
        let Some(v) = t.get(&content.0[..]).map_err(|e| self.db_err(e))? else {
            return Ok(None);
        };
        self.decode_list(content, v.value()).map(Some)
    }

    /// A stored chunk list, decoded.
    fn decode_list(&self, content: &Hash, bytes: &[u8]) -> Result<ChunkList, IndexError> {
        postcard::from_bytes(bytes).map_err(|e| {
            self.corrupt(format!(
                "chunk list {} does not decode: {e}",
                content.short_hex()
            ))
        })
    }

    /// Removes the chunk lists of contents no live entry holds any more.
    /// Returns how many were removed.
    pub fn gc_contents(
        &mut self,
        live: &std::collections::HashSet<Hash>,
    ) -> Result<u64, IndexError> {
        let Some(t) = self.read_table(CONTENTS)? else {
            return Ok(0);
        };
        let mut dead: Vec<Vec<u8>> = Vec::new();
        {
            for row in t.iter().map_err(|e| self.db_err(e))? {
                let (k, _) = row.map_err(|e| self.db_err(e))?;
                let key = k.value();
                let keep = <[u8; 32]>::try_from(key).is_ok_and(|h| live.contains(&Hash(h)));
                if !keep {
                    dead.push(key.to_vec());
                }
            }
        }
        drop(t);
        if dead.is_empty() {
            return Ok(0);
        }
        let Some(db) = &self.db else { return Ok(0) };
        let tx = db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut t = tx.open_table(CONTENTS).map_err(|e| self.db_err(e))?;
            for k in &dead {
                t.remove(k.as_slice()).map_err(|e| self.db_err(e))?;
            }
        }
        tx.commit().map_err(|e| self.db_err(e))?;
        Ok(dead.len() as u64)
    }

    /// Number of chunk lists stored.
    pub fn content_count(&self) -> Result<u64, IndexError> {
        let Some(t) = self.read_table(CONTENTS)? else {
            return Ok(0);
        };
        t.len().map_err(|e| self.db_err(e))
    }

    /// Writes a batch and the clocks in one durable transaction.
    pub fn write(&mut self, batch: &Batch) -> Result<(), IndexError> {
        self.write_as(batch, self.clock, self.seq)?;
        if let Some(fp) = batch.ignore_fingerprint {
            self.ignore_fp = Some(fp);
        }
        if let Some(s) = batch.meta_scope {
            self.meta_scope = Some(s);
        }
        Ok(())
    }

    /// What the replica kept of owners and extended attributes when its
    /// entries last agreed with its disk (`MetaScope::bits`); None before
    /// that was first recorded.
    pub fn meta_scope(&self) -> Option<u64> {
        self.meta_scope
    }

    /// Writes a batch as [`Index::write`] does, with the given clock and
    /// last sequence number instead of this index's own, and without
    /// changing this handle: for a thread that writes while others read.
    /// Its writer numbers the batch's entries after [`Index::seq`], and the
    /// owner then takes those numbers ([`Index::take_seqs_to`]) and the
    /// clock ([`Index::observe`]). Writers are serialized by the database.
    pub fn write_as(&self, batch: &Batch, clock: u64, seq: u64) -> Result<(), IndexError> {
        let Some(db) = &self.db else { return Ok(()) };
        let tx = db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut entries = tx.open_table(ENTRIES).map_err(|e| self.db_err(e))?;
            let mut scan = tx.open_table(SCAN).map_err(|e| self.db_err(e))?;
            let mut by_seq = tx.open_table(changes::BY_SEQ).map_err(|e| self.db_err(e))?;
            let mut buf = Vec::new();
            for le in &batch.entries {
                let s = StoredEntry {
                    object: le.entry.object.clone(),
                    mode: le.entry.mode,
                    mtime_ns: le.entry.mtime_ns,
                    vv: le.entry.vv.clone(),
                    origin: le.entry.origin,
                    seq: le.seq,
                    stat: le.stat,
                    meta: le.entry.meta.clone(),
                };
                buf.clear();
                let bytes = postcard::to_extend(&s, std::mem::take(&mut buf))
                    .map_err(|e| self.db_err(e))?;
                let path = le.entry.path.as_str();
                let old = entries
                    .insert(path, bytes.as_slice())
                    .map_err(|e| self.db_err(e))?
                    .map(|old| stored_seq(old.value()));
                buf = bytes;
                if let Some(old) = old {
                    let old =
                        old.ok_or_else(|| self.corrupt(format!("entry {path:?} does not decode")))?;
                    by_seq.remove((old, path)).map_err(|e| self.db_err(e))?;
                }
                by_seq
                    .insert((le.seq, path), ())
                    .map_err(|e| self.db_err(e))?;
                match ScanRecord::of(le) {
                    Some(r) => {
                        let b = postcard::to_stdvec(&r).map_err(|e| self.db_err(e))?;
                        scan.insert(le.entry.path.as_str(), b.as_slice())
                            .map_err(|e| self.db_err(e))?;
                    }
                    None => {
                        scan.remove(le.entry.path.as_str())
                            .map_err(|e| self.db_err(e))?;
                    }
                }
            }
            let mut contents = tx.open_table(CONTENTS).map_err(|e| self.db_err(e))?;
            for h in &batch.drop_contents {
                contents.remove(&h.0[..]).map_err(|e| self.db_err(e))?;
            }
            for list in &batch.contents {
                let bytes = postcard::to_stdvec(list).map_err(|e| self.db_err(e))?;
                contents
                    .insert(&list.content_id().0[..], bytes.as_slice())
                    .map_err(|e| self.db_err(e))?;
            }
            let mut peers = tx.open_table(PEERS).map_err(|e| self.db_err(e))?;
            for (r, s) in &batch.peers {
                peers.insert(r.0, *s).map_err(|e| self.db_err(e))?;
            }
            let mut meta = tx.open_table(META).map_err(|e| self.db_err(e))?;
            if let Some(fp) = batch.ignore_fingerprint {
                meta.insert("ignore_fp", fp).map_err(|e| self.db_err(e))?;
            }
            if let Some(s) = batch.meta_scope {
                meta.insert("meta_scope", s).map_err(|e| self.db_err(e))?;
            }
            meta.insert("clock", clock).map_err(|e| self.db_err(e))?;
            meta.insert("seq", seq).map_err(|e| self.db_err(e))?;
        }
        tx.commit().map_err(|e| self.db_err(e))
    }
}

/// redb's page cache is bounded: an index is read once per sync, mostly
/// sequentially, so a large cache only costs memory.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

fn builder() -> redb::Builder {
    let mut b = Database::builder();
    b.set_cache_size(CACHE_BYTES);
    b
}

/// Creates a new, initialized index at `path` without ever leaving a
/// half-made one there: it is built under a temporary name, flushed, and
/// renamed into place (a crash leaves only the temporary, redone next time).
fn create_atomically(path: &Path, state_dir: &Path) -> Result<(), IndexError> {
    let tmp = state_dir.join(format!("{INDEX_FILE}.new"));
    let io = |source| IndexError::Io {
        path: tmp.clone(),
        source,
    };
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
        _ => {}
    }
    {
        let db = builder()
            .create(&tmp)
            .map_err(|e| open_error(&tmp, state_dir, e))?;
        let mut idx = Index::handle(
            Some(db),
            tmp.clone(),
            state_dir.to_path_buf(),
            ReplicaId(rand::random::<u64>() | 1),
            true,
        );
        idx.init_meta()?;
        let meta = idx.read_meta()?;
        idx.check_root(&meta)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    std::fs::File::open(state_dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| IndexError::Io {
            path: state_dir.to_path_buf(),
            source,
        })
}

/// Where to move a replica's state so it is out of the replica (and so
/// never synced): next to the replica, `<replica>.weave-broken`.
fn aside(state: &Path) -> PathBuf {
    let root = state.parent().unwrap_or(state);
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "replica".into());
    root.parent()
        .unwrap_or(root)
        .join(format!("{name}.weave-broken"))
}

fn open_error(path: &Path, state: &Path, e: redb::DatabaseError) -> IndexError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => IndexError::InUse {
            path: state.to_path_buf(),
        },
        redb::DatabaseError::UpgradeRequired(v) => IndexError::NewerFormat {
            path: path.to_path_buf(),
            state: state.to_path_buf(),
            aside: aside(state),
            found: v as u64,
            supported: FORMAT_VERSION,
        },
        other => IndexError::Corrupt {
            path: path.to_path_buf(),
            state: state.to_path_buf(),
            aside: aside(state),
            detail: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests;
