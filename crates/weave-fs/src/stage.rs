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
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weave_core::Hash;

pub const STAGE_FILE: &str = "stage.pack";

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
        if !weave_chunk::verify(data, h) || data.len() > weave_chunk::CHUNK_MAX as usize {
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

    /// Drops the stage once everything it held has landed.
    pub fn clear(&mut self) {
        self.file = None;
        self.map.clear();
        self.end = 0;
        let _ = std::fs::remove_file(&self.path);
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
}
