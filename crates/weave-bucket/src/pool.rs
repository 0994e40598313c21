//! A bucket as a pool of sealed objects: its config, its records and its
//! packs, read and added, never rewritten.
//!
//! Objects, under the bucket's prefix:
//! - `weave-bucket.json`: the format, the key derivation's parameters,
//!   the master key sealed with the passphrase's key, and the bucket's
//!   own facts (its replica id) sealed with the master key;
//! - `logs/WRITER/N`: records (see [`crate::record`]), `N` from 1 in each
//!   writer's log, a new random writer for each sync;
//! - `packs/ID`: chunks, each sealed on its own (so one can be read with
//!   a ranged read), one after another, then random bytes up to the
//!   padded size.

use crate::crypto::{self, KdfParams, Keys};
use crate::record::{Located, Record, View, FORMAT};
use crate::store::Store;
use crate::BucketError;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use weave_core::{Hash, ReplicaId};

/// The config object's name.
pub const CONFIG: &str = "weave-bucket.json";

/// What the config object says.
#[derive(Serialize, Deserialize)]
struct Config {
    weave_bucket: u32,
    kdf: KdfParams,
    /// The master key, sealed with the passphrase's key (hex).
    key: String,
    /// [`Facts`], sealed with the master key (hex).
    facts: String,
}

/// What only those with the key may know of the bucket itself.
#[derive(Serialize, Deserialize)]
struct Facts {
    replica: u64,
}

/// A bucket, opened with its key.
pub struct Pool {
    pub store: Box<dyn Store>,
    pub keys: Keys,
    /// The bucket replica's id (every device's syncs see the same).
    pub id: ReplicaId,
    /// As the user gave it.
    pub display: String,
    /// This sync's log: its writer id, and the next record's number.
    writer: String,
    next: u64,
    /// A local directory keeping the records read (sealed, as in the
    /// bucket: still authenticated each time they are opened), so that
    /// a sync reads only the records it has not seen.
    cache: Option<std::path::PathBuf>,
}

fn hex(b: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(b)
}

pub(crate) fn random_id() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    hex(&b)
}

impl Pool {
    /// Opens the bucket in `store` with `passphrase`; makes a new one
    /// there when it has none and `create` (else None).
    pub fn open(
        store: Box<dyn Store>,
        display: &str,
        passphrase: &[u8],
        create: bool,
    ) -> Result<Option<Pool>, BucketError> {
        let (keys, id) = match store.get(CONFIG)? {
            Some(bytes) => unlock(&bytes, display, passphrase)?,
            None if create => make(&*store, display, passphrase)?,
            None => return Ok(None),
        };
        Ok(Some(Pool {
            store,
            keys,
            id,
            display: display.to_string(),
            writer: random_id(),
            next: 1,
            cache: None,
        }))
    }

    /// Keeps the records it reads in directory `dir` (made if need be),
    /// and reads them from there next time.
    pub fn cache_records_in(&mut self, dir: std::path::PathBuf) {
        self.cache = Some(dir);
    }

    /// Every record, opened (a damaged one stops the read, named).
    pub fn records(&self) -> Result<Vec<(String, Record)>, BucketError> {
        let mut names = self.store.list("logs/")?;
        names.sort();
        let cached = |name: &str| self.cache.as_ref().map(|c| c.join(name.replace('/', "_")));
        let mut out = Vec::with_capacity(names.len());
        for name in &names {
            // A copy kept here that does not open (damaged on this disk)
            // is read again from the bucket.
            let kept = cached(name)
                .and_then(|p| std::fs::read(p).ok())
                .and_then(|b| Record::open(&self.keys, name, &b).ok());
            let r = match kept {
                Some(r) => r,
                None => {
                    let Some(b) = self.store.get(name)? else {
                        continue;
                    };
                    let r = Record::open(&self.keys, name, &b)?;
                    if let Some(p) = cached(name) {
                        keep(&p, &b);
                    }
                    r
                }
            };
            out.push((name.clone(), r));
        }
        // Records no longer in the bucket leave the cache.
        if let Some(dir) = &self.cache {
            let listed: std::collections::HashSet<String> =
                names.iter().map(|n| n.replace('/', "_")).collect();
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("logs_") && !listed.contains(&n) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(out)
    }

    /// The records readers merge: every record but those a prune's mark
    /// retired (the mark's compaction holds what they held that is
    /// kept). The marks are read first: a compaction is written before
    /// its mark, so it is among the records read after. A sync never
    /// reuses what only a retired record holds: only a sync that read
    /// the records before the mark can, and the sweep comes a grace
    /// period after it.
    pub fn live_records(&self) -> Result<Vec<(String, Record)>, BucketError> {
        let marks = crate::prune::read_marks(self)?;
        let retired: std::collections::HashSet<&str> = marks
            .iter()
            .flat_map(|(_, m)| m.retired.iter().map(String::as_str))
            .collect();
        let mut records = self.records()?;
        records.retain(|(n, _)| !retired.contains(n.as_str()));
        Ok(records)
    }

    /// The live records, merged.
    pub fn view(&self) -> Result<View, BucketError> {
        let mut view = View::default();
        for (name, r) in self.live_records()? {
            view.add(&name, r);
        }
        Ok(view)
    }

    /// Adds `r` to this sync's log.
    pub fn write(&mut self, r: &Record) -> Result<String, BucketError> {
        let name = format!("logs/{}/{:010}", self.writer, self.next);
        let sealed = r.seal(&self.keys, &name);
        self.store.put(&name, sealed.clone())?;
        if let Some(c) = &self.cache {
            keep(&c.join(name.replace('/', "_")), &sealed);
        }
        self.next += 1;
        Ok(name)
    }

    /// Reads the chunks at `wanted` (hash and where), verifying each,
    /// and hands each to `sink`; stops at one that could not be read or
    /// is not what it should be, naming its pack.
    pub fn read_chunks(
        &self,
        wanted: &[(Hash, Located)],
        sink: &mut dyn FnMut(Hash, Option<Vec<u8>>) -> Result<(), weave_engine::SyncError>,
    ) -> Result<(), weave_engine::SyncError> {
        let mut by_pack: Vec<&(Hash, Located)> = wanted.iter().collect();
        by_pack.sort_by(|a, b| (&a.1.pack, a.1.offset).cmp(&(&b.1.pack, b.1.offset)));
        // Neighbours in one pack are read together.
        let mut i = 0;
        while i < by_pack.len() {
            let pack = &by_pack[i].1.pack;
            let start = by_pack[i].1.offset;
            let mut end = start + by_pack[i].1.len as u64;
            let mut j = i + 1;
            while j < by_pack.len()
                && by_pack[j].1.pack == *pack
                && by_pack[j].1.offset <= end + (64 << 10)
                && by_pack[j].1.offset + by_pack[j].1.len as u64 - start <= 32 << 20
            {
                end = end.max(by_pack[j].1.offset + by_pack[j].1.len as u64);
                j += 1;
            }
            let name = format!("packs/{pack}");
            // Whole 64 KiB blocks of the pack: the storage does not learn
            // a chunk's exact size from what is read (I-8).
            let size = by_pack[i].1.pack_size.max(end);
            let (from, to) = (
                start & !READ_BLOCK_MASK,
                ((end + READ_BLOCK_MASK) & !READ_BLOCK_MASK).min(size),
            );
            let bytes = self
                .store
                .get_range(&name, from..to)
                .map_err(|e| weave_engine::SyncError::Replica(Box::new(e)))?;
            for (h, at) in &by_pack[i..j] {
                let at_ = (at.offset - from) as usize;
                let data = bytes
                    .get(at_..at_ + at.len as usize)
                    .and_then(|frame| open_chunk(&self.keys, h, frame));
                let Some(data) = data else {
                    // Changed or cut short by whoever holds the bucket (or
                    // its disk): the sync stops, naming it (I-8).
                    return Err(weave_engine::SyncError::Replica(Box::new(
                        BucketError::Damaged {
                            object: name,
                            problem: format!(
                                "chunk {} does not authenticate or is not its hash",
                                h.short_hex()
                            ),
                        },
                    )));
                };
                sink(*h, Some(data))?;
            }
            i = j;
        }
        Ok(())
    }
}

/// Keeps `bytes` at `path`, whole or not at all (a cache: a failure is
/// only a miss next time).
fn keep(path: &std::path::Path, bytes: &[u8]) {
    let Some(dir) = path.parent() else { return };
    let _ = std::fs::create_dir_all(dir);
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Reads of packs are whole blocks of this size (less one).
pub(crate) const READ_BLOCK_MASK: u64 = (64 << 10) - 1;

/// A pack being filled: sealed chunks one after another.
#[derive(Default)]
pub struct Pack {
    pub id: String,
    pub bytes: Vec<u8>,
    /// (hash, offset, length) of each chunk in it.
    pub chunks: Vec<(Hash, u64, u32)>,
}

impl Pack {
    pub fn new() -> Pack {
        Pack {
            id: random_id(),
            ..Default::default()
        }
    }

    /// Seals chunk `data` (whose hash is `h`) into the pack.
    pub fn add(&mut self, keys: &Keys, h: Hash, data: &[u8]) {
        let frame = seal_chunk(keys, &h, data);
        self.chunks
            .push((h, self.bytes.len() as u64, frame.len() as u32));
        self.bytes.extend_from_slice(&frame);
    }

    /// The pack's object: its chunks, then random bytes up to the padded
    /// size.
    pub fn finish(mut self) -> (String, Vec<u8>, Vec<(Hash, u64, u32)>) {
        let padded = crypto::padme(self.bytes.len() as u64) as usize;
        let fill = crypto::random_bytes(padded - self.bytes.len());
        self.bytes.extend_from_slice(&fill);
        (self.id, self.bytes, self.chunks)
    }
}

fn chunk_aad(h: &Hash) -> Vec<u8> {
    let mut a = b"weave-bucket v1 chunk ".to_vec();
    a.extend_from_slice(&h.0);
    a
}

/// A chunk's frame: a flag (0 as is, 1 zstd) and the data, sealed.
fn seal_chunk(keys: &Keys, h: &Hash, data: &[u8]) -> Vec<u8> {
    let mut plain = Vec::with_capacity(data.len() + 1);
    match zstd::bulk::compress(data, 3) {
        Ok(z) if z.len() + 64 < data.len() => {
            plain.push(1);
            plain.extend_from_slice(&z);
        }
        _ => {
            plain.push(0);
            plain.extend_from_slice(data);
        }
    }
    keys.seal(&chunk_aad(h), &plain)
}

/// The chunk in `frame`, if it authenticates and is `h`'s bytes (I-3).
pub(crate) fn open_chunk(keys: &Keys, h: &Hash, frame: &[u8]) -> Option<Vec<u8>> {
    let plain = keys.open(&chunk_aad(h), frame)?;
    let data = match plain.split_first()? {
        (0, rest) => rest.to_vec(),
        (1, rest) => zstd::bulk::decompress(rest, weave_chunk::CHUNK_MAX as usize).ok()?,
        _ => return None,
    };
    weave_chunk::verify(&data, h).then_some(data)
}

/// The keys and id of the bucket whose config is `bytes`, once derived
/// in this process: a daemon that polls a bucket every few seconds does
/// not run the key derivation (64 MiB, about 0.3 s) each time.
fn unlock(
    bytes: &[u8],
    display: &str,
    passphrase: &[u8],
) -> Result<(Keys, ReplicaId), BucketError> {
    type Unlocked = std::collections::HashMap<[u8; 32], (Keys, ReplicaId)>;
    static UNLOCKED: std::sync::OnceLock<std::sync::Mutex<Unlocked>> = std::sync::OnceLock::new();
    let mut h = blake3::Hasher::new_derive_key("weave-bucket v1 unlocked in this process");
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
    h.update(passphrase);
    let known = *h.finalize().as_bytes();
    let cache = UNLOCKED.get_or_init(Default::default);
    if let Some(k) = cache.lock().expect("unlocked").get(&known) {
        return Ok(k.clone());
    }
    let k = derive_and_unlock(bytes, display, passphrase)?;
    cache.lock().expect("unlocked").insert(known, k.clone());
    Ok(k)
}

fn derive_and_unlock(
    bytes: &[u8],
    display: &str,
    passphrase: &[u8],
) -> Result<(Keys, ReplicaId), BucketError> {
    let bad = |problem: String| BucketError::Format {
        what: format!("{display}/{CONFIG}"),
        problem,
    };
    #[derive(Deserialize)]
    struct Version {
        weave_bucket: u32,
    }
    let v: Version = serde_json::from_slice(bytes)
        .map_err(|e| bad(format!("not a weave bucket config: {e}")))?;
    if v.weave_bucket != FORMAT {
        return Err(BucketError::Incompatible {
            bucket: display.to_string(),
            found: v.weave_bucket,
            known: FORMAT,
        });
    }
    let c: Config =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("does not decode: {e}")))?;
    let unhex = |s: &str| {
        data_encoding::HEXLOWER
            .decode(s.as_bytes())
            .map_err(|e| bad(format!("not hex: {e}")))
    };
    let kek = c.kdf.derive(passphrase)?;
    let master = crypto::unwrap(&kek, &unhex(&c.key)?).ok_or(BucketError::WrongPassphrase {
        bucket: display.to_string(),
    })?;
    let keys = Keys::from_master(&master);
    let facts = keys
        .open(b"weave-bucket v1 facts", &unhex(&c.facts)?)
        .ok_or_else(|| BucketError::Damaged {
            object: format!("{display}/{CONFIG}"),
            problem: "its sealed facts do not authenticate".into(),
        })?;
    let facts: Facts =
        serde_json::from_slice(&facts).map_err(|e| bad(format!("its facts: {e}")))?;
    Ok((keys, ReplicaId(facts.replica)))
}

/// Makes a new bucket in `store`: a master key, sealed with the key of
/// `passphrase`, and a replica id.
fn make(
    store: &dyn Store,
    display: &str,
    passphrase: &[u8],
) -> Result<(Keys, ReplicaId), BucketError> {
    // Some servers make a bucket on a first write: one that is not
    // there is said (by a listing), not made by accident.
    store.list(CONFIG)?;
    let kdf = KdfParams::new();
    let master = Keys::new_master();
    let keys = Keys::from_master(&master);
    let id = ReplicaId(rand::rng().next_u64() | 1);
    let facts = serde_json::to_vec(&Facts { replica: id.0 }).expect("facts encode");
    let c = Config {
        weave_bucket: FORMAT,
        key: hex(&crypto::wrap(&kdf.derive(passphrase)?, &master)),
        facts: hex(&keys.seal(b"weave-bucket v1 facts", &facts)),
        kdf,
    };
    if !store.put_new(
        CONFIG,
        serde_json::to_vec_pretty(&c).expect("config encodes"),
    )? {
        // Another device made the bucket at the same moment: its config
        // is the bucket's.
        let bytes = store.get(CONFIG)?.unwrap_or_default();
        return unlock(&bytes, display, passphrase);
    }
    Ok((keys, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Memory;
    use std::sync::Arc;

    #[test]
    fn a_bucket_opens_with_its_passphrase_only_and_keeps_its_id() {
        let mem = Arc::new(Memory::default());
        let store = || Box::new(mem.clone()) as Box<dyn Store>;
        assert!(Pool::open(store(), "b", b"pw", false).unwrap().is_none());
        let made = Pool::open(store(), "b", b"pw", true).unwrap().unwrap();
        let again = Pool::open(store(), "b", b"pw", false).unwrap().unwrap();
        assert_eq!(made.id, again.id);
        let e = Pool::open(store(), "b", b"nope", false).err().unwrap();
        assert!(matches!(e, BucketError::WrongPassphrase { .. }), "{e}");
        // A newer format is named, not misread.
        let text = String::from_utf8(mem.get(CONFIG).unwrap().unwrap()).unwrap();
        mem.put(
            CONFIG,
            text.replace("\"weave_bucket\": 1", "\"weave_bucket\": 7")
                .into_bytes(),
        )
        .unwrap();
        let e = Pool::open(store(), "b", b"pw", false).err().unwrap();
        assert!(e.to_string().contains("format 7"), "{e}");
    }

    #[test]
    fn chunks_come_back_verified_and_a_damaged_one_stops_the_read() {
        let mem = Arc::new(Memory::default());
        let pool = Pool::open(Box::new(mem.clone()), "b", b"pw", true)
            .unwrap()
            .unwrap();
        let data: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 5000 + i as usize]).collect();
        let mut pack = Pack::new();
        for d in &data {
            pack.add(&pool.keys, Hash(*blake3::hash(d).as_bytes()), d);
        }
        let (id, bytes, chunks) = pack.finish();
        let size = bytes.len() as u64;
        assert_eq!(size, crypto::padme(size));
        mem.put(&format!("packs/{id}"), bytes).unwrap();
        let wanted: Vec<(Hash, Located)> = chunks
            .iter()
            .map(|&(h, offset, len)| {
                (
                    h,
                    Located {
                        pack: id.as_str().into(),
                        pack_size: size,
                        offset,
                        len,
                    },
                )
            })
            .collect();
        let mut got = Vec::new();
        pool.read_chunks(&wanted, &mut |h, d| {
            got.push((h, d));
            Ok(())
        })
        .unwrap();
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|(_, d)| d.is_some()));
        // One byte of the second chunk changed: that chunk is not used.
        let name = format!("packs/{id}");
        let mut b = mem.get(&name).unwrap().unwrap();
        b[chunks[1].1 as usize + 30] ^= 1;
        mem.put(&name, b).unwrap();
        let e = pool
            .read_chunks(&wanted, &mut |h, d| {
                got.push((h, d));
                Ok(())
            })
            .unwrap_err();
        assert!(e.to_string().contains(&name), "{e}");
    }

    #[test]
    fn records_are_kept_in_a_cache_and_a_damaged_copy_is_read_again() {
        let mem = Arc::new(Memory::default());
        let t = tempfile::tempdir().unwrap();
        let mut pool = Pool::open(Box::new(mem.clone()), "b", b"pw", true)
            .unwrap()
            .unwrap();
        pool.cache_records_in(t.path().to_path_buf());
        let rec = Record {
            time_ms: 1,
            ..Default::default()
        };
        let name = pool.write(&rec).unwrap();
        let copy = t.path().join(name.replace('/', "_"));
        assert!(copy.exists());
        assert_eq!(pool.records().unwrap().len(), 1);
        // Gone from the bucket: not read, and it leaves the cache.
        mem.objects.lock().unwrap().remove(&name);
        assert_eq!(pool.records().unwrap().len(), 0);
        assert!(!copy.exists());
        // Back in the bucket, a damaged copy here is read again from it.
        let sealed = rec.seal(&pool.keys, &name);
        mem.put(&name, sealed).unwrap();
        std::fs::write(&copy, b"damaged").unwrap();
        assert_eq!(pool.records().unwrap().len(), 1);
        assert_ne!(std::fs::read(&copy).unwrap(), b"damaged");
    }
}
