//! weave-kv: a key/value record store kept in an embedded database (redb),
//! each record a named object that weave replicates.
//!
//! A store is a directory: the records in `records.redb`, weave's state in
//! `.weave/`. Programs use [`KvStore`] directly; `weave kv put|get|del|list`
//! does the same from a shell, and `weave sync --kind kv A B` (or
//! [`weave_object::ObjectKind`]`(`[`Kv`]`)` from Rust) keeps stores in sync,
//! local or over ssh. Each record keeps a revision (from a counter of the
//! store, so weave tells a changed record without reading it) and the time
//! it was last written.
//!
//! Concurrent changes to one key are kept both: the newer keeps the key,
//! the older is stored under `KEY.weave-conflict-…`. A program that knows
//! how its values combine can give [`Kv::with_merge`] a
//! `weave_engine::Merge` instead.
//!
//! ```
//! # fn main() -> Result<(), weave_kv::KvError> {
//! let dir = tempfile::tempdir().unwrap();
//! let kv = weave_kv::KvStore::open(dir.path())?;
//! kv.put("alice", b"alice@example.org")?;
//! assert_eq!(kv.get("alice")?.unwrap().value, b"alice@example.org");
//! assert!(kv.delete("alice")?);
//! assert!(kv.get("alice")?.is_none());
//! # Ok(())
//! # }
//! ```
//!
//! Two stores synced from a Rust program (what `weave sync --kind kv A B`
//! does):
//!
//! ```
//! use weave_engine::{Kind, Replica};
//! use weave_kv::{Kv, KvStore};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
//! KvStore::open(a.path())?.put("alice", b"alice@example.org")?;
//! KvStore::open(b.path())?.put("bob", b"bob@example.org")?;
//!
//! let kind = weave_object::ObjectKind(Kv::default());
//! let mut reps: Vec<Box<dyn Replica>> = vec![
//!     kind.open(a.path(), "a", false)?,
//!     kind.open(b.path(), "b", false)?,
//! ];
//! let report = weave_object::sync(&mut reps, &Default::default())?;
//! assert!(report.in_sync);
//! drop(reps); // closes the stores
//!
//! assert_eq!(KvStore::open(b.path())?.get("alice")?.unwrap().value, b"alice@example.org");
//! assert_eq!(KvStore::open(a.path())?.get("bob")?.unwrap().value, b"bob@example.org");
//! # Ok(())
//! # }
//! ```

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;
use weave_object::{Change, Listed, ObjectStore, ObjectType, Outcome, StoreError};

/// The records' database file inside a store's directory.
pub const DB_FILE: &str = "records.redb";

/// key → revision (u64 LE), mtime (i64 LE), value.
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
/// "next_rev" → the next revision to hand out.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

#[derive(Debug, Error)]
pub enum KvError {
    #[error(
        "{path}: no such directory. Create it first (mkdir -p {path}); a kv store is a directory"
    )]
    NoDir { path: PathBuf },
    #[error("{path} is in use by another weave process (a sync or another command); try again when it ends")]
    InUse { path: PathBuf },
    #[error("{path}: {detail}. If the file is damaged, move it aside (mv {path} {path}.damaged) and sync the store again from another replica")]
    Db { path: PathBuf, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad key: {0}; choose another key (':' can separate the parts of a key)")]
    BadKey(weave_object::NameError),
}

/// One record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub value: Vec<u8>,
    /// Changes whenever the record is written.
    pub revision: u64,
    /// When it was last written (nanoseconds since the Unix epoch; for a
    /// record a sync wrote, when its writer wrote it).
    pub mtime_ns: i64,
}

/// A key/value store in a directory.
pub struct KvStore {
    /// None: a dry run's view of a store that does not exist yet (empty).
    db: Option<Database>,
    path: PathBuf,
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn encode(rev: u64, mtime_ns: i64, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + value.len());
    v.extend_from_slice(&rev.to_le_bytes());
    v.extend_from_slice(&mtime_ns.to_le_bytes());
    v.extend_from_slice(value);
    v
}

fn decode(bytes: &[u8]) -> Option<Record> {
    if bytes.len() < 16 {
        return None;
    }
    Some(Record {
        revision: u64::from_le_bytes(bytes[..8].try_into().ok()?),
        mtime_ns: i64::from_le_bytes(bytes[8..16].try_into().ok()?),
        value: bytes[16..].to_vec(),
    })
}

impl KvStore {
    /// Opens the store in directory `dir` (which must exist), creating
    /// its database if it has none.
    pub fn open(dir: &Path) -> Result<KvStore, KvError> {
        if !dir.is_dir() {
            return Err(KvError::NoDir {
                path: dir.to_path_buf(),
            });
        }
        let path = dir.join(DB_FILE);
        if !path.exists() {
            create_atomically(&path, dir)?;
        }
        let db = Database::create(&path).map_err(|e| open_error(&path, e))?;
        Ok(KvStore { db: Some(db), path })
    }

    /// Opens the store in `dir` if it has a database; otherwise an empty
    /// store that creates nothing (for a dry run).
    pub fn open_or_empty(dir: &Path) -> Result<KvStore, KvError> {
        let path = dir.join(DB_FILE);
        if path.exists() {
            return KvStore::open(dir);
        }
        Ok(KvStore { db: None, path })
    }

    fn err(&self, e: impl std::fmt::Display) -> KvError {
        KvError::Db {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }

    /// The record at `key`.
    pub fn get(&self, key: &str) -> Result<Option<Record>, KvError> {
        let Some(db) = &self.db else { return Ok(None) };
        let tx = db.begin_read().map_err(|e| self.err(e))?;
        let t = match tx.open_table(RECORDS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let got = t.get(key).map_err(|e| self.err(e))?;
        match got {
            None => Ok(None),
            Some(v) => decode(v.value())
                .map(Some)
                .ok_or_else(|| self.err(format!("the record {key:?} is damaged"))),
        }
    }

    /// Every record, by key.
    pub fn list(&self) -> Result<Vec<(String, Record)>, KvError> {
        let Some(db) = &self.db else {
            return Ok(Vec::new());
        };
        let tx = db.begin_read().map_err(|e| self.err(e))?;
        let t = match tx.open_table(RECORDS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.err(e)),
        };
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let key = k.value().to_string();
            let r = decode(v.value())
                .ok_or_else(|| self.err(format!("the record {key:?} is damaged")))?;
            out.push((key, r));
        }
        Ok(out)
    }

    /// Sets `key` to `value` (written now). Returns the new revision.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<u64, KvError> {
        weave_object::check_name(key).map_err(KvError::BadKey)?;
        let outcome = self.write(
            &[Change::Put {
                name: key.to_string(),
                data: value.to_vec(),
                mtime_ns: now_ns(),
                expect: None,
                conflict_copy: false,
            }],
            false,
        )?;
        match outcome.first() {
            Some(Outcome::Done {
                revision: Some(r), ..
            }) => Ok(*r),
            _ => Err(self.err("the write was not made")),
        }
    }

    /// Removes `key`. Returns whether it was there.
    pub fn delete(&self, key: &str) -> Result<bool, KvError> {
        let had = self.get(key)?.is_some();
        if had {
            self.write(
                &[Change::Delete {
                    name: key.to_string(),
                    expect: None,
                }],
                false,
            )?;
        }
        Ok(had)
    }

    /// Makes `changes` in one transaction; with `check`, each only if its
    /// record is at the revision it expects.
    fn write(&self, changes: &[Change], check: bool) -> Result<Vec<Outcome>, KvError> {
        let Some(db) = &self.db else {
            return Err(self.err("the store does not exist yet (a dry run creates nothing)"));
        };
        let tx = db.begin_write().map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(changes.len());
        {
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            let mut t = tx.open_table(RECORDS).map_err(|e| self.err(e))?;
            let mut next = meta
                .get("next_rev")
                .map_err(|e| self.err(e))?
                .map(|v| v.value())
                .unwrap_or(1);
            for c in changes {
                if check {
                    let now = t
                        .get(c.name())
                        .map_err(|e| self.err(e))?
                        .and_then(|v| decode(v.value()))
                        .map(|r| r.revision);
                    if now != c.expect() {
                        out.push(Outcome::Stale);
                        continue;
                    }
                }
                match c {
                    Change::Put {
                        name,
                        data,
                        mtime_ns,
                        ..
                    } => {
                        let rev = next;
                        next += 1;
                        t.insert(name.as_str(), encode(rev, *mtime_ns, data).as_slice())
                            .map_err(|e| self.err(e))?;
                        out.push(Outcome::Done {
                            revision: Some(rev),
                        });
                    }
                    Change::Delete { name, .. } => {
                        t.remove(name.as_str()).map_err(|e| self.err(e))?;
                        out.push(Outcome::Done { revision: None });
                    }
                }
            }
            meta.insert("next_rev", next).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }
}

impl ObjectStore for KvStore {
    fn list(&mut self) -> Result<Vec<Listed>, StoreError> {
        Ok(KvStore::list(self)
            .map_err(|e| StoreError::new(e.to_string()))?
            .into_iter()
            .map(|(name, r)| Listed {
                name,
                revision: r.revision,
                mtime_ns: r.mtime_ns,
            })
            .collect())
    }

    fn read(&mut self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .get(name)
            .map_err(|e| StoreError::new(e.to_string()))?
            .map(|r| r.value))
    }

    fn commit(&mut self, changes: &[Change]) -> Result<Vec<Outcome>, StoreError> {
        self.write(changes, true)
            .map_err(|e| StoreError::new(e.to_string()))
    }
}

/// The kv object type: `weave sync --kind kv`.
#[derive(Default, Clone)]
pub struct Kv {
    merge: Option<Arc<dyn weave_object::Merge>>,
}

impl Kv {
    /// Concurrent versions of a record merge with `m` instead of being
    /// kept both.
    pub fn with_merge(m: Arc<dyn weave_object::Merge>) -> Kv {
        Kv { merge: Some(m) }
    }
}

impl ObjectType for Kv {
    type Store = KvStore;

    fn name(&self) -> &str {
        "kv"
    }

    fn open(&self, root: &Path, dry_run: bool) -> Result<KvStore, StoreError> {
        let r = if dry_run {
            KvStore::open_or_empty(root)
        } else {
            KvStore::open(root)
        };
        r.map_err(|e| StoreError::new(e.to_string()))
    }

    fn merge(&self) -> Option<Arc<dyn weave_object::Merge>> {
        self.merge.clone()
    }
}

/// Creates an empty database at `path` without ever leaving a half-made
/// one there: built under a temporary name, flushed, renamed into place.
fn create_atomically(path: &Path, dir: &Path) -> Result<(), KvError> {
    let tmp = dir.join(format!("{DB_FILE}.new"));
    let io = |source| KvError::Io {
        path: tmp.clone(),
        source,
    };
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
        _ => {}
    }
    {
        let db = Database::create(&tmp).map_err(|e| open_error(&tmp, e))?;
        let s = KvStore {
            db: Some(db),
            path: tmp.clone(),
        };
        s.write(&[], false)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| KvError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

fn open_error(path: &Path, e: redb::DatabaseError) -> KvError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => KvError::InUse {
            path: path.to_path_buf(),
        },
        other => KvError::Db {
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_keep_their_revision_and_time() {
        let d = tempfile::tempdir().unwrap();
        let kv = KvStore::open(d.path()).unwrap();
        let r1 = kv.put("a", b"1").unwrap();
        let r2 = kv.put("a", b"2").unwrap();
        assert!(r2 > r1);
        let rec = kv.get("a").unwrap().unwrap();
        assert_eq!(rec.value, b"2");
        assert_eq!(rec.revision, r2);
        assert!(rec.mtime_ns > 0);
        assert!(matches!(kv.put("a/b", b"x"), Err(KvError::BadKey(_))));
        assert!(matches!(kv.put(".weave", b"x"), Err(KvError::BadKey(_))));
        drop(kv);
        // Reopened: the records and the revision counter are still there.
        let kv = KvStore::open(d.path()).unwrap();
        assert!(kv.put("b", b"3").unwrap() > r2);
        assert_eq!(kv.list().unwrap().len(), 2);
    }

    #[test]
    fn a_commit_skips_what_changed_since_it_was_listed() {
        let d = tempfile::tempdir().unwrap();
        let mut kv = KvStore::open(d.path()).unwrap();
        let r = kv.put("a", b"1").unwrap();
        kv.put("b", b"1").unwrap();
        let out = ObjectStore::commit(
            &mut kv,
            &[
                Change::Put {
                    name: "a".into(),
                    data: b"new".to_vec(),
                    mtime_ns: 5,
                    expect: Some(r),
                    conflict_copy: false,
                },
                // b is not at revision 1 any more.
                Change::Delete {
                    name: "b".into(),
                    expect: Some(r),
                },
                Change::Put {
                    name: "c".into(),
                    data: b"c".to_vec(),
                    mtime_ns: 7,
                    expect: None,
                    conflict_copy: false,
                },
            ],
        )
        .unwrap();
        assert!(matches!(out[0], Outcome::Done { revision: Some(_) }));
        assert_eq!(out[1], Outcome::Stale);
        assert!(matches!(out[2], Outcome::Done { revision: Some(_) }));
        assert_eq!(kv.get("a").unwrap().unwrap().mtime_ns, 5);
        assert!(kv.get("b").unwrap().is_some());
        assert_eq!(kv.get("c").unwrap().unwrap().value, b"c");
    }

    #[test]
    fn a_missing_directory_or_a_store_in_use_is_explained() {
        let d = tempfile::tempdir().unwrap();
        let e = KvStore::open(&d.path().join("nope")).err().unwrap();
        assert!(e.to_string().contains("mkdir -p"), "{e}");
        let _held = KvStore::open(d.path()).unwrap();
        let e = KvStore::open(d.path()).err().unwrap();
        assert!(e.to_string().contains("in use"), "{e}");
    }

    #[test]
    fn a_dry_run_creates_nothing() {
        let d = tempfile::tempdir().unwrap();
        let kv = KvStore::open_or_empty(d.path()).unwrap();
        assert!(kv.list().unwrap().is_empty());
        assert!(!d.path().join(DB_FILE).exists());
    }
}
