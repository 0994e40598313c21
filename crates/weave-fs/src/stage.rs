//! The stage: chunks received from other replicas, kept in one append-only
//! pack file (`.weave/stage.pack`) until the files that need them are
//! written. A transfer that is interrupted keeps what it received, so the
//! next run fetches only the rest.
//!
//! Each record is `hash (32 bytes) | length (u32 LE) | data`. Records are
//! verified when the pack is opened; the pack is cut at the first record
//! that is incomplete or fails its hash (what a crash can leave).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weave_chunk::ChunkList;
use weave_core::Hash;

pub const STAGE_FILE: &str = "stage.pack";
/// Directory (in the state directory) of the part files: see [`Part`].
pub const PARTS_DIR: &str = "parts";

pub struct Stage {
    path: PathBuf,
    file: Option<File>,
    end: u64,
    /// Chunk → offset of its data in the pack.
    map: HashMap<Hash, u64>,
}

impl Stage {
    /// Opens (or prepares to create) the stage in `state_dir`, keeping
    /// every intact record a previous run left.
    pub fn open(state_dir: &Path) -> std::io::Result<Stage> {
        let path = state_dir.join(STAGE_FILE);
        let mut st = Stage {
            path,
            file: None,
            end: 0,
            map: HashMap::new(),
        };
        let f = match OpenOptions::new().read(true).write(true).open(&st.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(st),
            Err(e) => return Err(e),
        };
        let mut r = BufReader::with_capacity(1 << 20, &f);
        let mut pos = 0u64;
        let mut head = [0u8; 36];
        let mut data = Vec::new();
        loop {
            if r.read_exact(&mut head).is_err() {
                break;
            }
            let mut h = [0u8; 32];
            h.copy_from_slice(&head[..32]);
            let len = u32::from_le_bytes(head[32..].try_into().expect("4 bytes")) as usize;
            if len > weave_chunk::CHUNK_MAX as usize {
                break;
            }
            data.resize(len, 0);
            if r.read_exact(&mut data).is_err() || !weave_chunk::verify(&data, &Hash(h)) {
                break;
            }
            st.map.insert(Hash(h), pos + 36);
            pos += 36 + len as u64;
        }
        drop(r);
        f.set_len(pos)?;
        st.end = pos;
        st.file = Some(f);
        Ok(st)
    }

    pub fn contains(&self, h: &Hash) -> bool {
        self.map.contains_key(h)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Adds a chunk after checking it is the chunk `h` names (I-3).
    pub fn add(&mut self, h: &Hash, data: &[u8]) -> std::io::Result<bool> {
        if !weave_chunk::verify(data, h) {
            return Ok(false);
        }
        self.add_verified(h, data)
    }

    /// Adds a chunk the caller has already checked against `h` (I-3).
    pub fn add_verified(&mut self, h: &Hash, data: &[u8]) -> std::io::Result<bool> {
        if data.len() > weave_chunk::CHUNK_MAX as usize {
            return Ok(false);
        }
        if self.map.contains_key(h) {
            return Ok(true);
        }
        if self.file.is_none() {
            self.file = Some(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&self.path)?,
            );
            self.end = 0;
        }
        let f = self.file.as_mut().expect("opened above");
        f.seek(SeekFrom::Start(self.end))?;
        let mut rec = Vec::with_capacity(36 + data.len());
        rec.extend_from_slice(&h.0);
        rec.extend_from_slice(&(data.len() as u32).to_le_bytes());
        rec.extend_from_slice(data);
        f.write_all(&rec)?;
        self.map.insert(*h, self.end + 36);
        self.end += rec.len() as u64;
        Ok(true)
    }

    /// The pack file and where each chunk's data is in it, for readers.
    pub fn view(&self) -> Option<(PathBuf, Arc<HashMap<Hash, u64>>)> {
        if self.map.is_empty() {
            return None;
        }
        Some((self.path.clone(), Arc::new(self.map.clone())))
    }

    /// Drops the stage once everything it held has landed, with its part
    /// files.
    pub fn clear(&mut self) {
        self.file = None;
        self.map.clear();
        self.end = 0;
        let _ = std::fs::remove_file(&self.path);
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir.join(PARTS_DIR));
        }
    }

    /// The part file of a content (see [`Part`]), kept from an
    /// interrupted run or new.
    pub fn part(&self, list: &ChunkList) -> std::io::Result<Part> {
        let dir = self.path.parent().unwrap_or(Path::new(".")).join(PARTS_DIR);
        std::fs::create_dir_all(&dir)?;
        Part::open(&dir, list)
    }
}

/// A large content received from other replicas, written straight into a
/// file of its own at each chunk's place (`.weave/parts/<content id>`), so
/// that it lands by a rename rather than being copied out of the pack.
/// What an interrupted run received is kept: the chunks already there are
/// verified when the part is opened again.
pub struct Part {
    content: Hash,
    path: PathBuf,
    file: File,
    list: ChunkList,
    have: Vec<bool>,
    /// Offset of each chunk of `list`.
    offsets: Vec<u64>,
    /// Chunk → the indices in `list` where it occurs.
    at: HashMap<Hash, Vec<usize>>,
    /// Places of `list` not written yet.
    missing: usize,
    /// Bytes received but not written yet, and the offset they go to: a
    /// run of consecutive chunks is written in whole file-system blocks,
    /// its unaligned end kept for the next chunk. (A write that ends or
    /// starts inside a new block makes the kernel zero the rest of that
    /// block, or of a whole large folio, first: chunk boundaries are
    /// anywhere, and that zeroing cost a receiver as much as a tenth of
    /// its time.)
    pending: Option<(u64, Vec<u8>)>,
    /// Bytes written to the file since [`Part::flush_due`] last said so.
    unflushed: u64,
}

/// Writes go out in multiples of this (a file-system block, a page).
const BLOCK: u64 = 4096;

/// A part is worth making durable (by another thread, while the rest
/// arrives) once this much was written to it since it last was: the disk
/// then writes as the data comes in, and what is left to flush when the
/// transfer ends is at most this much per part, not a whole large file.
pub const FLUSH_EVERY: u64 = 8 << 20;

impl Part {
    fn open(dir: &Path, list: &ChunkList) -> std::io::Result<Part> {
        let content = list.content_id();
        let path = dir.join(content.to_hex());
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&path)
        };
        let mut file = open();
        // Only a part file of its own is written into: never one that
        // became a user's file (a run that moved it but did not clear it).
        if file
            .as_ref()
            .is_ok_and(|f| f.metadata().is_ok_and(|m| m.nlink() != 1 || !m.is_file()))
        {
            std::fs::remove_file(&path)?;
            file = open();
        }
        let file = file?;
        let kept = file.metadata()?.len();
        let mut at: HashMap<Hash, Vec<usize>> = HashMap::new();
        let mut have = vec![false; list.chunks.len()];
        let mut offsets = Vec::with_capacity(list.chunks.len());
        let mut buf = Vec::new();
        for (i, (off, c)) in list.with_offsets().enumerate() {
            offsets.push(off);
            at.entry(c.hash).or_default().push(i);
            if off + c.len as u64 <= kept {
                buf.resize(c.len as usize, 0);
                have[i] =
                    file.read_exact_at(&mut buf, off).is_ok() && weave_chunk::verify(&buf, &c.hash);
            }
        }
        file.set_len(list.size())?;
        Ok(Part {
            content,
            path,
            file,
            list: list.clone(),
            missing: have.iter().filter(|h| !**h).count(),
            have,
            offsets,
            at,
            pending: None,
            unflushed: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn content(&self) -> Hash {
        self.content
    }

    /// The chunks not there yet, each once.
    pub fn missing(&self) -> Vec<Hash> {
        let mut seen = std::collections::HashSet::new();
        self.list
            .chunks
            .iter()
            .zip(&self.have)
            .filter(|(c, have)| !**have && seen.insert(c.hash))
            .map(|(c, _)| c.hash)
            .collect()
    }

    pub fn wants(&self, h: &Hash) -> bool {
        self.at
            .get(h)
            .is_some_and(|ix| ix.iter().any(|&i| !self.have[i]))
    }

    /// Writes chunk `h` at each of its places; the caller has verified
    /// `data` against `h` (I-3). Its last bytes may wait for the next
    /// chunk (see `pending`); all is written once the part is complete,
    /// or dropped.
    pub fn put(&mut self, h: &Hash, data: &[u8]) -> std::io::Result<()> {
        let Some(ix) = self.at.get(h) else {
            return Ok(());
        };
        let mut places = Vec::with_capacity(ix.len());
        for &i in ix {
            if !self.have[i] {
                self.have[i] = true;
                self.missing -= 1;
                places.push(self.offsets[i]);
            }
        }
        for at in places {
            self.write_at(at, data)?;
        }
        if self.missing == 0 {
            self.flush_pending()?;
        }
        Ok(())
    }

    /// Writes `data` at `at` as part of the pending run (a new run if it
    /// does not follow on): whole blocks go out, straight from `data`; the
    /// bytes of a block not yet whole (under one block) are kept.
    fn write_at(&mut self, at: u64, mut data: &[u8]) -> std::io::Result<()> {
        if self
            .pending
            .as_ref()
            .is_some_and(|(start, buf)| start + buf.len() as u64 != at)
        {
            self.flush_pending()?;
        }
        let (start, buf) = self
            .pending
            .get_or_insert_with(|| (at, Vec::with_capacity(BLOCK as usize)));
        // The block the run is in, made whole first.
        if !buf.is_empty() || *start % BLOCK != 0 {
            let boundary = (*start / BLOCK + 1) * BLOCK;
            let fill = (boundary - (*start + buf.len() as u64)) as usize;
            if data.len() < fill {
                buf.extend_from_slice(data);
                return Ok(());
            }
            buf.extend_from_slice(&data[..fill]);
            self.file.write_all_at(buf, *start)?;
            self.unflushed += buf.len() as u64;
            buf.clear();
            data = &data[fill..];
            *start = boundary;
        }
        let whole = data.len() - data.len() % BLOCK as usize;
        if whole > 0 {
            self.file.write_all_at(&data[..whole], *start)?;
            self.unflushed += whole as u64;
            *start += whole as u64;
        }
        buf.extend_from_slice(&data[whole..]);
        Ok(())
    }

    fn flush_pending(&mut self) -> std::io::Result<()> {
        if let Some((start, buf)) = self.pending.take() {
            self.file.write_all_at(&buf, start)?;
            self.unflushed += buf.len() as u64;
        }
        Ok(())
    }

    /// Whether the part should be made durable now: it is complete and
    /// has writes not flushed yet, or [`FLUSH_EVERY`] bytes were written
    /// since this last said so. Counts from zero again when it says yes.
    pub fn flush_due(&mut self) -> bool {
        let due = self.unflushed >= FLUSH_EVERY || (self.complete() && self.unflushed > 0);
        if due {
            self.unflushed = 0;
        }
        due
    }

    /// Another handle to the part file (to flush it from elsewhere).
    pub fn handle(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }

    pub fn complete(&self) -> bool {
        self.missing == 0
    }
}

impl Drop for Part {
    /// What was received is kept for the next run, whole.
    fn drop(&mut self) {
        let _ = self.flush_pending();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_and_damage_is_cut_off() {
        let d = tempfile::tempdir().unwrap();
        let a = vec![1u8; 5000];
        let b = vec![2u8; 7000];
        let (ha, hb) = (Hash::of(&a), Hash::of(&b));
        {
            let mut s = Stage::open(d.path()).unwrap();
            assert!(s.add(&ha, &a).unwrap());
            assert!(!s.add(&ha, &b).unwrap(), "wrong hash refused");
            assert!(s.add(&hb, &b).unwrap());
        }
        // A crash in the middle of a third record.
        let p = d.path().join(STAGE_FILE);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&[9u8; 50]).unwrap();
        drop(f);
        let mut s = Stage::open(d.path()).unwrap();
        assert_eq!(s.len(), 2);
        let (path, map) = s.view().unwrap();
        let data = std::fs::read(path).unwrap();
        let off = map[&hb] as usize;
        assert_eq!(&data[off..off + b.len()], &b[..]);
        let c = vec![3u8; 100];
        assert!(s.add(&Hash::of(&c), &c).unwrap());
        assert_eq!(Stage::open(d.path()).unwrap().len(), 3);
        s.clear();
        assert!(!p.exists());
        assert!(Stage::open(d.path()).unwrap().is_empty());
    }

    fn noise(n: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn a_part_keeps_what_arrived_and_checks_it_again() {
        let d = tempfile::tempdir().unwrap();
        let data = noise(400_000);
        let list = weave_chunk::chunk_bytes(&data);
        assert!(list.chunks.len() >= 4);
        let chunk = |i: usize| {
            let (off, c) = list.with_offsets().nth(i).unwrap();
            (
                c.hash,
                data[off as usize..off as usize + c.len as usize].to_vec(),
            )
        };
        let stage = Stage::open(d.path()).unwrap();
        let mut part = stage.part(&list).unwrap();
        assert_eq!(part.missing().len(), list.chunks.len());
        for i in [0, 2] {
            let (h, bytes) = chunk(i);
            assert!(part.wants(&h));
            part.put(&h, &bytes).unwrap();
            assert!(!part.wants(&h));
        }
        assert!(!part.complete());
        let path = part.path().to_path_buf();
        drop(part);
        // Reopened (a rerun): what arrived is there, verified.
        let part = stage.part(&list).unwrap();
        assert_eq!(part.missing().len(), list.chunks.len() - 2);
        assert!(!part.wants(&chunk(0).0));
        drop(part);
        // A damaged chunk is fetched again.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"!", 3).unwrap();
        drop(f);
        let mut part = stage.part(&list).unwrap();
        assert!(part.wants(&chunk(0).0));
        assert!(!part.wants(&chunk(2).0));
        for i in 0..list.chunks.len() {
            let (h, bytes) = chunk(i);
            part.put(&h, &bytes).unwrap();
        }
        assert!(part.complete());
        assert_eq!(std::fs::read(&path).unwrap(), data);
        drop(part);
        // Once it is also a user's file (a run that took it was cut short
        // before the stage was cleared), it is never written into.
        let user = d.path().join("user-file");
        std::fs::hard_link(&path, &user).unwrap();
        let mut part = stage.part(&list).unwrap();
        assert_eq!(part.missing().len(), list.chunks.len());
        let (h, _) = chunk(1);
        part.put(&h, &vec![0u8; chunk(1).1.len()]).unwrap();
        assert_eq!(std::fs::read(&user).unwrap(), data);
        let mut stage = stage;
        stage.clear();
        assert!(!d.path().join(PARTS_DIR).exists());
        assert_eq!(std::fs::read(&user).unwrap(), data);
    }

    /// Chunks in any order, runs of them in order, a chunk that occurs
    /// twice: once the last place is filled, the file is whole on disk
    /// (nothing left waiting for a next chunk), while the part is open.
    #[test]
    fn a_part_is_whole_on_disk_when_complete_in_any_order() {
        let d = tempfile::tempdir().unwrap();
        let a = noise(300_000);
        let mut data = a.clone();
        data.extend_from_slice(&a);
        data.extend_from_slice(&noise(123_457)[1000..]);
        let list = weave_chunk::chunk_bytes(&data);
        let unique: Vec<(Hash, Vec<u8>)> = {
            let mut seen = std::collections::HashSet::new();
            list.with_offsets()
                .filter(|(_, c)| seen.insert(c.hash))
                .map(|(off, c)| {
                    (
                        c.hash,
                        data[off as usize..off as usize + c.len as usize].to_vec(),
                    )
                })
                .collect()
        };
        assert!(unique.len() < list.chunks.len(), "a repeated chunk");
        // The second half in order, then the first half backwards.
        let half = unique.len() / 2;
        let order: Vec<usize> = (half..unique.len()).chain((0..half).rev()).collect();
        let stage = Stage::open(d.path()).unwrap();
        let mut part = stage.part(&list).unwrap();
        for (n, &i) in order.iter().enumerate() {
            assert!(!part.complete());
            part.put(&unique[i].0, &unique[i].1).unwrap();
            if n + 1 < order.len() {
                assert!(!part.complete());
            }
        }
        assert!(part.complete());
        assert_eq!(std::fs::read(part.path()).unwrap(), data);
    }

    #[test]
    fn a_large_part_asks_to_be_flushed_as_it_fills_and_when_complete() {
        let d = tempfile::tempdir().unwrap();
        let data = noise(2 * FLUSH_EVERY as usize + 3_000_000);
        let list = weave_chunk::chunk_bytes(&data);
        let stage = Stage::open(d.path()).unwrap();
        let mut part = stage.part(&list).unwrap();
        assert!(!part.flush_due(), "nothing written yet");
        let (mut received, mut at_flush) = (0u64, Vec::new());
        for (off, c) in list.with_offsets() {
            let bytes = &data[off as usize..off as usize + c.len as usize];
            part.put(&c.hash, bytes).unwrap();
            received += c.len as u64;
            if part.flush_due() {
                at_flush.push(received);
            }
            // Never much more than FLUSH_EVERY waits for a flush.
            let since = received - at_flush.last().copied().unwrap_or(0);
            assert!(since < FLUSH_EVERY + weave_chunk::CHUNK_MAX as u64);
        }
        assert_eq!(at_flush.len(), 3, "{at_flush:?}");
        assert_eq!(*at_flush.last().unwrap(), data.len() as u64, "the end");
        assert!(at_flush[0] >= FLUSH_EVERY && at_flush[1] >= 2 * FLUSH_EVERY);
        assert!(!part.flush_due(), "all was flushed");
        assert_eq!(std::fs::read(part.path()).unwrap(), data);
    }
}
