//! Pack files: `packs/NNNNNNNN.pack`, each a run of chunk records
//! `hash (32) | length (u32 LE) | data`, only ever appended to. Writing
//! them ([`PackWriter`]), reading a chunk back verified ([`PackReader`]),
//! and which packs there are.

use crate::{Store, StoreError};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use weave_core::Hash;

/// The packs' directory inside the store's.
pub(crate) const PACKS: &str = "packs";
/// A pack is closed for appends once it is this large.
pub(crate) const PACK_MAX: u64 = 256 << 20;
/// Bytes of a record before its data: the hash and the length.
pub(crate) const RECORD_HEAD: u64 = 36;
/// Records are gathered up to this many bytes before they are written.
const WRITE_BATCH: usize = 8 << 20;

/// Where a stored chunk is: pack number, offset of its data, length.
pub(crate) type Loc = (u32, u64, u32);

impl Store {
    pub(crate) fn pack_path(&self, n: u32) -> PathBuf {
        self.dir.join(PACKS).join(format!("{n:08}.pack"))
    }

    /// Opens pack `n` for appending (creating it), positioned at its end.
    pub(crate) fn open_pack(&self, n: u32) -> Result<File, StoreError> {
        let p = self.pack_path(n);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&p)
            .map_err(|e| StoreError::io(&p, "cannot open", e))?;
        f.seek(SeekFrom::End(0))
            .map_err(|e| StoreError::io(&p, "cannot open", e))?;
        Ok(f)
    }

    /// The pack files: number and size.
    pub(crate) fn packs(&self) -> Result<Vec<(u32, u64)>, StoreError> {
        let dir = self.dir.join(PACKS);
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, "cannot list", e))? {
            let e = e.map_err(|e| StoreError::io(&dir, "cannot list", e))?;
            let name = e.file_name();
            let Some(n) = name.to_str().and_then(pack_number) else {
                continue;
            };
            out.push((n, e.metadata().map(|m| m.len()).unwrap_or(0)));
        }
        out.sort();
        Ok(out)
    }

    /// A pack number no file uses yet (nor `also`).
    pub(crate) fn fresh_pack_no(&self, also: &[u32]) -> Result<u32, StoreError> {
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

    /// Flushes the packs written to (before the catalog refers to them).
    pub(crate) fn sync_packs(&self, files: &[(u32, File)]) -> Result<(), StoreError> {
        for (n, f) in files {
            f.sync_data()
                .map_err(|e| self.pack_error(*n, "cannot flush pack", e))?;
        }
        Ok(())
    }

    fn pack_error(&self, pack: u32, what: &'static str, error: std::io::Error) -> StoreError {
        StoreError::Pack {
            dir: self.dir.clone(),
            pack,
            what,
            error,
        }
    }
}

/// The number of a pack file named `NNNNNNNN.pack`.
fn pack_number(name: &str) -> Option<u32> {
    name.strip_suffix(".pack")?.parse().ok()
}

/// Appends chunk records to a pack, going on in a new one (numbered by
/// the caller) when it is full. What it wrote is garbage until the
/// catalog refers to it.
pub(crate) struct PackWriter<'s> {
    store: &'s Store,
    number: u32,
    file: File,
    /// Where the next record goes in the pack.
    end: u64,
    /// Records not written yet.
    out: Vec<u8>,
    /// The packs filled before this one.
    done: Vec<(u32, File)>,
}

impl<'s> PackWriter<'s> {
    /// Appends to pack `n` (made if it is not there) after what it holds.
    pub(crate) fn open(store: &'s Store, n: u32) -> Result<PackWriter<'s>, StoreError> {
        let file = store.open_pack(n)?;
        let end = file
            .metadata()
            .map_err(|e| store.pack_error(n, "cannot stat pack", e))?
            .len();
        Ok(PackWriter {
            store,
            number: n,
            file,
            end,
            out: Vec::new(),
            done: Vec::new(),
        })
    }

    /// The pack written to now.
    pub(crate) fn number(&self) -> u32 {
        self.number
    }

    /// Appends `data` (chunk `hash`) and returns where it will be.
    pub(crate) fn append(&mut self, hash: &Hash, data: &[u8]) -> Result<Loc, StoreError> {
        let len = data.len() as u32;
        encode_record(&mut self.out, hash, data);
        let loc = (self.number, self.end + RECORD_HEAD, len);
        self.end += RECORD_HEAD + len as u64;
        if self.out.len() >= WRITE_BATCH {
            self.write_out()?;
        }
        Ok(loc)
    }

    /// True once the pack is as large as a pack gets.
    pub(crate) fn full(&self) -> bool {
        self.end >= PACK_MAX
    }

    /// Goes on in pack `next`.
    pub(crate) fn roll(&mut self, next: u32) -> Result<(), StoreError> {
        self.write_out()?;
        let file = std::mem::replace(&mut self.file, self.store.open_pack(next)?);
        self.done.push((self.number, file));
        self.number = next;
        self.end = self
            .file
            .metadata()
            .map_err(|e| self.store.pack_error(next, "cannot stat pack", e))?
            .len();
        Ok(())
    }

    /// Writes what is left and returns every pack written to (not yet
    /// flushed: see [`Store::sync_packs`]).
    pub(crate) fn finish(mut self) -> Result<Vec<(u32, File)>, StoreError> {
        self.write_out()?;
        self.done.push((self.number, self.file));
        Ok(self.done)
    }

    fn write_out(&mut self) -> Result<(), StoreError> {
        self.file
            .write_all(&self.out)
            .map_err(|e| self.store.pack_error(self.number, "cannot write pack", e))?;
        self.out.clear();
        Ok(())
    }
}

/// A record: `hash (32) | length (u32 LE) | data`.
fn encode_record(out: &mut Vec<u8>, hash: &Hash, data: &[u8]) {
    out.extend_from_slice(&hash.0);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
}

/// Why a chunk could not be read back.
pub(crate) enum Fault {
    /// Its pack cannot be opened.
    NoPack(std::io::Error),
    /// Its pack ends before it does (or cannot be read).
    CutShort(std::io::Error),
    /// It does not match its hash.
    Damaged,
}

/// Reads chunks back from the packs, each verified, keeping the packs it
/// opened open.
pub(crate) struct PackReader<'s> {
    store: &'s Store,
    open: HashMap<u32, File>,
}

impl<'s> PackReader<'s> {
    pub(crate) fn new(store: &'s Store) -> PackReader<'s> {
        PackReader {
            store,
            open: HashMap::new(),
        }
    }

    /// Reads chunk `hash` at `loc` into `buf` (resized to its length).
    pub(crate) fn read(&mut self, loc: Loc, hash: &Hash, buf: &mut Vec<u8>) -> Result<(), Fault> {
        let (pack, off, len) = loc;
        let f = match self.open.entry(pack) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(File::open(self.store.pack_path(pack)).map_err(Fault::NoPack)?)
            }
        };
        buf.resize(len as usize, 0);
        f.read_exact_at(buf, off).map_err(Fault::CutShort)?;
        if !weave_chunk::verify(buf, hash) {
            return Err(Fault::Damaged);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_names_are_numbers() {
        assert_eq!(pack_number("00000012.pack"), Some(12));
        assert_eq!(pack_number("00000012.pack.tmp"), None);
        assert_eq!(pack_number("catalog.redb"), None);
    }

    #[test]
    fn a_record_is_hash_length_data() {
        let h = Hash([7; 32]);
        let mut out = Vec::new();
        encode_record(&mut out, &h, b"abc");
        assert_eq!(out.len() as u64, RECORD_HEAD + 3);
        assert_eq!(&out[..32], &[7; 32]);
        assert_eq!(&out[32..36], &3u32.to_le_bytes());
        assert_eq!(&out[36..], b"abc");
    }

    #[test]
    fn records_go_where_the_writer_says_and_read_back() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let a = weave_chunk::chunk_bytes(b"first").chunks[0].hash;
        let b = weave_chunk::chunk_bytes(b"second").chunks[0].hash;
        let mut w = PackWriter::open(&store, 3).unwrap();
        let la = w.append(&a, b"first").unwrap();
        w.roll(4).unwrap();
        let lb = w.append(&b, b"second").unwrap();
        assert_eq!((la, lb), ((3, RECORD_HEAD, 5), (4, RECORD_HEAD, 6)));
        let files = w.finish().unwrap();
        assert_eq!(files.iter().map(|f| f.0).collect::<Vec<_>>(), vec![3, 4]);
        store.sync_packs(&files).unwrap();
        let mut r = PackReader::new(&store);
        let mut buf = Vec::new();
        assert!(r.read(lb, &b, &mut buf).is_ok());
        assert_eq!(buf, b"second");
        assert!(matches!(r.read(lb, &a, &mut buf), Err(Fault::Damaged)));
        assert!(matches!(
            r.read((4, 100, 5), &a, &mut buf),
            Err(Fault::CutShort(_))
        ));
        assert!(matches!(
            r.read((9, 0, 5), &a, &mut buf),
            Err(Fault::NoPack(_))
        ));
        assert_eq!(store.fresh_pack_no(&[]).unwrap(), 5);
        assert_eq!(store.fresh_pack_no(&[8]).unwrap(), 9);
    }
}
