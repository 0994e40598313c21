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
use std::io::{BufReader, Read};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weave_chunk::ChunkList;
use weave_core::Hash;

use crate::sparse::{write_sparse, zero_range};
use crate::util::{aligned_start, open_direct, BLOCK};

pub const STAGE_FILE: &str = "stage.pack";
/// Directory (in the state directory) of the part files: see [`Part`].
pub const PARTS_DIR: &str = "parts";

pub struct Stage {
    path: PathBuf,
    /// Shared with the readers of its views.
    file: Option<Arc<File>>,
    /// The end of the pack, with the records not written yet.
    end: u64,
    /// Chunk → offset of its data in the pack.
    map: HashMap<Hash, u64>,
    /// Records not written yet, the last of the pack: they go out in
    /// large writes, when [`STAGE_WRITE`] bytes wait, when readers are
    /// given a [`Stage::view`], and when the stage is dropped. (A write per
    /// record cost two system calls per chunk and, as records straddle
    /// blocks, the kernel's zeroing of the rest of each block a record
    /// starts.)
    pending: Vec<u8>,
}

/// A stage as its readers see it: the pack file (its path, and the
/// stage's own open handle, so that a reader opens nothing per file) and
/// where each chunk's data is in it.
#[derive(Clone)]
pub struct StageView {
    pub path: PathBuf,
    pub file: Arc<File>,
    pub map: Arc<HashMap<Hash, u64>>,
}

/// A record's head: the chunk's hash, then its length (u32 LE).
const HEAD: usize = 36;

/// The chunk hash and data length of a record's head (`HEAD` bytes).
fn parse_head(head: &[u8]) -> (Hash, usize) {
    let mut h = [0u8; 32];
    h.copy_from_slice(&head[..32]);
    let len = u32::from_le_bytes(head[32..HEAD].try_into().expect("4 bytes"));
    (Hash(h), len as usize)
}

/// Bytes of records gathered before they are written.
const STAGE_WRITE: usize = 1 << 20;

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
            pending: Vec::new(),
        };
        let f = match OpenOptions::new().read(true).write(true).open(&st.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(st),
            Err(e) => return Err(e),
        };
        let mut r = BufReader::with_capacity(1 << 20, &f);
        let mut pos = 0u64;
        let mut head = [0u8; HEAD];
        let mut data = Vec::new();
        loop {
            if r.read_exact(&mut head).is_err() {
                break;
            }
            let (h, len) = parse_head(&head);
            if len > weave_chunk::CHUNK_MAX as usize {
                break;
            }
            data.resize(len, 0);
            if r.read_exact(&mut data).is_err() || !weave_chunk::verify(&data, &h) {
                break;
            }
            st.map.insert(h, pos + HEAD as u64);
            pos += (HEAD + len) as u64;
        }
        drop(r);
        f.set_len(pos)?;
        st.end = pos;
        st.file = Some(Arc::new(f));
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
            self.file = Some(Arc::new(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&self.path)?,
            ));
            self.end = 0;
            self.pending.clear();
        }
        if self.pending.capacity() == 0 {
            self.pending
                .reserve_exact(STAGE_WRITE + HEAD + weave_chunk::CHUNK_MAX as usize);
        }
        self.pending.extend_from_slice(&h.0);
        self.pending
            .extend_from_slice(&(data.len() as u32).to_le_bytes());
        self.pending.extend_from_slice(data);
        self.map.insert(*h, self.end + HEAD as u64);
        self.end += (HEAD + data.len()) as u64;
        if self.pending.len() >= STAGE_WRITE {
            self.flush()?;
        }
        Ok(true)
    }

    /// Writes the records not written yet. If that fails, the chunks they
    /// hold are no longer in the stage (and the error is returned).
    pub fn flush(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let at = self.end - self.pending.len() as u64;
        let written = match &self.file {
            Some(f) => f.write_all_at(&self.pending, at),
            None => Err(std::io::Error::other("the stage pack is not open")),
        };
        if written.is_err() {
            let mut rest = &self.pending[..];
            while rest.len() >= HEAD {
                let (h, len) = parse_head(&rest[..HEAD]);
                self.map.remove(&h);
                rest = &rest[(HEAD + len).min(rest.len())..];
            }
            self.end = at;
        }
        self.pending.clear();
        written
    }

    /// The pack file and where each chunk's data is in it, for readers
    /// (every record written first).
    pub fn view(&mut self) -> std::io::Result<Option<StageView>> {
        self.flush()?;
        match &self.file {
            Some(file) if !self.map.is_empty() => Ok(Some(StageView {
                path: self.path.clone(),
                file: file.clone(),
                map: Arc::new(self.map.clone()),
            })),
            _ => Ok(None),
        }
    }

    /// Drops the stage once everything it held has landed, with its part
    /// files.
    pub fn clear(&mut self) {
        self.file = None;
        self.map.clear();
        self.pending.clear();
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

/// What arrived is kept when a run ends early (an error, a lost peer).
impl Drop for Stage {
    fn drop(&mut self) {
        let _ = self.flush();
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
    file: Arc<File>,
    list: ChunkList,
    have: Vec<bool>,
    /// Offset of each chunk of `list`.
    offsets: Vec<u64>,
    /// Chunk → the indices in `list` where it occurs.
    at: HashMap<Hash, Vec<usize>>,
    /// Places of `list` not written yet.
    missing: usize,
    /// Consecutive bytes received but not written yet: they go out in
    /// large writes of whole file-system blocks. (A write that ends or
    /// starts inside a block makes the kernel zero the rest of that block,
    /// or of a whole large folio, first: chunk boundaries are anywhere, and
    /// that zeroing cost a receiver as much as a tenth of its time.)
    run: Option<Run>,
    /// A buffer for the next run (when no [`PartWriter`] lends them).
    spare: Option<Vec<u8>>,
    /// The runs go to this thread.
    writer: Option<Arc<PartWriter>>,
    /// The part file opened for direct I/O: opened when the first run is
    /// written (not for every part at once), closed once all is.
    direct: Direct,
    /// Bytes written to the file since [`Part::flush_due`] last said so.
    unflushed: u64,
}

/// The largest run of a part kept in memory before it is written.
const RUN: usize = 4 << 20;

/// A part is worth making durable (by another thread, while the rest
/// arrives) once this much was written to it since it last was: the disk
/// then writes as the data comes in, and what is left to flush when the
/// transfer ends is at most this much per part, not a whole large file.
pub const FLUSH_EVERY: u64 = 8 << 20;

/// Consecutive bytes of a part, in memory. `buf[base]` is block-aligned in
/// memory and stands for file offset `block`, so that the whole blocks of
/// the run are aligned both in memory and in the file.
struct Run {
    block: u64,
    buf: Vec<u8>,
    base: usize,
    /// Where the run's bytes start, after `base` (under one block).
    from: usize,
    len: usize,
    /// Aligned bytes the buffer holds after `base` (a multiple of BLOCK).
    cap: usize,
}

impl Run {
    /// An empty run for file offset `at`, in `buf`, which holds `cap`
    /// aligned bytes (a multiple of BLOCK) from its first aligned byte on.
    fn new(at: u64, buf: Vec<u8>, cap: usize) -> Run {
        let base = aligned_start(&buf);
        assert!(
            buf.len() >= base + cap,
            "a run buffer holds its aligned bytes"
        );
        Run {
            block: at - at % BLOCK,
            base,
            from: (at % BLOCK) as usize,
            len: 0,
            cap,
            buf,
        }
    }

    fn end(&self) -> u64 {
        self.block + (self.from + self.len) as u64
    }

    /// The run's bytes from file offset `a` to `b`.
    fn bytes(&self, a: u64, b: u64) -> &[u8] {
        let at = |o: u64| self.base + (o - self.block) as usize;
        &self.buf[at(a)..at(b)]
    }

    /// Writes the run to its file: the whole blocks in one write to
    /// `target` (`plain` if that fails), the partial blocks at either end
    /// to `plain`.
    ///
    /// Blocks of zeros are not written: a part's places read as zeros
    /// until written (the file is made at its full length, and a place
    /// that failed its check is made zeros again), so they stay holes.
    fn write(&self, target: &File, plain: &File) -> std::io::Result<()> {
        let (start, end) = (self.block + self.from as u64, self.end());
        let first = start.div_ceil(BLOCK) * BLOCK;
        let last = end / BLOCK * BLOCK;
        if first >= last {
            return write_sparse(plain, self.bytes(start, end), start).map(drop);
        }
        write_sparse(plain, self.bytes(start, first), start)?;
        let whole = self.bytes(first, last);
        if write_sparse(target, whole, first).is_err() {
            write_sparse(plain, whole, first)?;
        }
        write_sparse(plain, self.bytes(last, end), last).map(drop)
    }
}

fn run_buffer() -> Vec<u8> {
    vec![0; RUN + BLOCK as usize]
}

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
        // Places of runs of zeros an earlier run could have written: made
        // holes again, consecutive ones at once.
        let mut to_zero: Vec<(u64, u64)> = Vec::new();
        for (i, (off, c)) in list.with_offsets().enumerate() {
            offsets.push(off);
            if c.is_zero() {
                // A run of zeros is a hole, never received: past what was
                // kept the file is one already.
                have[i] = true;
                if off < kept {
                    match to_zero.last_mut() {
                        Some((s, l)) if *s + *l == off => *l += c.len as u64,
                        _ => to_zero.push((off, c.len as u64)),
                    }
                }
                continue;
            }
            at.entry(c.hash).or_default().push(i);
            if off + c.len as u64 <= kept {
                buf.resize(c.len as usize, 0);
                have[i] =
                    file.read_exact_at(&mut buf, off).is_ok() && weave_chunk::verify(&buf, &c.hash);
            }
            // A place to fill again reads as zeros first: its blocks of
            // zeros are not written (see `Run::write`).
            if !have[i] && off < kept {
                zero_range(&file, off, c.len as u64)?;
            }
        }
        for (off, len) in to_zero {
            zero_range(&file, off, len)?;
        }
        file.set_len(list.size())?;
        Ok(Part {
            content,
            path,
            file: Arc::new(file),
            list: list.clone(),
            missing: have.iter().filter(|h| !**h).count(),
            have,
            offsets,
            at,
            run: None,
            spare: None,
            writer: None,
            direct: Direct::Untried,
            unflushed: 0,
        })
    }

    /// From now on, the runs of this part are written by `writer`'s
    /// thread, their whole blocks straight to the disk where the file
    /// system allows it.
    pub fn write_with(&mut self, writer: &Arc<PartWriter>) {
        self.writer = Some(writer.clone());
    }

    /// Where the writer writes whole blocks: the file opened for direct
    /// I/O, if the writer uses it and the file system allows it.
    fn target(&mut self) -> Arc<File> {
        if let Direct::Untried = self.direct {
            let use_it = self.writer.as_ref().is_some_and(|w| w.direct);
            let opened = use_it
                .then(|| open_direct(&self.path, &self.file))
                .flatten();
            self.direct = match opened {
                Some(f) => Direct::Open(Arc::new(f)),
                None => Direct::No,
            };
        }
        match &self.direct {
            Direct::Open(f) => f.clone(),
            _ => self.file.clone(),
        }
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
    /// `data` against `h` (I-3). The bytes may wait in memory for the next
    /// chunks (see `run`); all is written once the part is complete, or
    /// dropped (and, with a [`PartWriter`], once it has finished). Returns
    /// the bytes of the file this placed (0 for a chunk it already held).
    pub fn put(&mut self, h: &Hash, data: &[u8]) -> std::io::Result<u64> {
        let Some(ix) = self.at.get(h) else {
            return Ok(0);
        };
        let mut places = Vec::with_capacity(ix.len());
        for &i in ix {
            if !self.have[i] {
                self.have[i] = true;
                self.missing -= 1;
                places.push(self.offsets[i]);
            }
        }
        let placed = (places.len() * data.len()) as u64;
        for at in places {
            self.write_at(at, data)?;
        }
        if self.missing == 0 {
            self.flush_run()?;
        }
        Ok(placed)
    }

    /// The bytes of the file already in the part (an interrupted run's).
    pub fn held_bytes(&self) -> u64 {
        self.list
            .chunks
            .iter()
            .zip(&self.have)
            .filter(|(_, &have)| have)
            .map(|(c, _)| c.len as u64)
            .sum()
    }

    /// Adds `data`, for offset `at`, to the run (a new run if it does not
    /// follow on); a full run is written.
    fn write_at(&mut self, mut at: u64, mut data: &[u8]) -> std::io::Result<()> {
        if self.run.as_ref().is_some_and(|r| r.end() != at) {
            self.flush_run()?;
        }
        while !data.is_empty() {
            if self.run.is_none() {
                // A run starts small: a part can get a chunk long before
                // the rest of it (one it shares with another file), and a
                // full-size buffer for each such part would add up.
                let from = (at % BLOCK) as usize;
                let cap = (from + data.len())
                    .next_multiple_of(BLOCK as usize)
                    .min(RUN);
                self.run = Some(Run::new(at, vec![0; cap + BLOCK as usize], cap));
            }
            let full = self.run.as_ref().is_some_and(|r| r.from + r.len == r.cap);
            if full {
                // It goes on: a full-size buffer from here.
                let buf = match &self.writer {
                    Some(w) => w.buffer(),
                    None => self.spare.take().unwrap_or_else(run_buffer),
                };
                let small = self.run.take().expect("checked");
                let start = small.block + small.from as u64;
                let mut big = Run::new(start, buf, RUN);
                let s = big.base + big.from;
                big.buf[s..s + small.len].copy_from_slice(small.bytes(start, small.end()));
                big.len = small.len;
                self.run = Some(big);
            }
            let r = self.run.as_mut().expect("made above");
            let n = (r.cap - r.from - r.len).min(data.len());
            let s = r.base + r.from + r.len;
            r.buf[s..s + n].copy_from_slice(&data[..n]);
            r.len += n;
            at += n as u64;
            data = &data[n..];
            if r.from + r.len == RUN {
                self.flush_run()?;
            }
        }
        Ok(())
    }

    /// Writes the run, by the writer's thread if there is one and it
    /// still runs (all of a part's writes then go through that thread, in
    /// order: direct and cached writes to one file never race).
    fn flush_run(&mut self) -> std::io::Result<()> {
        let Some(mut run) = self.run.take() else {
            return Ok(());
        };
        self.unflushed += run.len as u64;
        if let Some(w) = self.writer.clone() {
            let job = Job::Write {
                path: self.path.clone(),
                target: self.target(),
                plain: self.file.clone(),
                run,
            };
            if self.complete() {
                // The jobs hold it as long as they need it.
                self.direct = Direct::No;
            }
            match w.submit(job) {
                Ok(()) => return Ok(()),
                Err(Job::Write { run: r, .. }) => run = r,
                Err(Job::Flush(..)) => unreachable!("a write was handed over"),
            }
        }
        run.write(&self.file, &self.file)?;
        self.recycle(run.buf);
        Ok(())
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        if buf.len() != RUN + BLOCK as usize {
            return;
        }
        match &self.writer {
            Some(w) => w.give_back(buf),
            None => self.spare = Some(buf),
        }
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

    /// Has the writer's thread (if any) make the part durable, after the
    /// writes handed to it so far; without one, or once it has finished,
    /// flushes it here.
    pub fn flush(&self) {
        if let Some(w) = &self.writer {
            if w.submit(Job::Flush(self.path.clone(), self.file.clone()))
                .is_ok()
            {
                return;
            }
        }
        let _ = self.file.sync_data();
    }

    pub fn complete(&self) -> bool {
        self.missing == 0
    }
}

impl Drop for Part {
    /// What was received is kept for the next run, whole.
    fn drop(&mut self) {
        let _ = self.flush_run();
    }
}

enum Direct {
    Untried,
    Open(Arc<File>),
    No,
}

enum Job {
    Write {
        path: PathBuf,
        /// The part file, opened for direct I/O if it could be.
        target: Arc<File>,
        /// The same file, through the page cache.
        plain: Arc<File>,
        run: Run,
    },
    Flush(PathBuf, Arc<File>),
}

/// A thread that writes the parts' runs (whole blocks, a few MiB at a
/// time, straight to the disk with direct I/O where the file system allows
/// it) and flushes them, in the order they were handed over, while the
/// receiving thread goes on receiving. Copying received data into the page
/// cache costs more CPU on some machines than receiving it; with direct
/// I/O the disk takes it from memory.
pub struct PartWriter {
    tx: std::sync::Mutex<Option<std::sync::mpsc::SyncSender<Job>>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Run buffers the thread is done with.
    pool: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    /// Parts whose data could not be written.
    failed: Arc<std::sync::Mutex<std::collections::HashSet<PathBuf>>>,
    /// Parts that handed the thread anything (all unwritten if it died).
    handed: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
    direct: bool,
}

impl PartWriter {
    /// A writer thread; with `direct`, parts are written with direct I/O
    /// where their file system allows it (through the page cache where
    /// not).
    pub fn start(direct: bool) -> Arc<PartWriter> {
        // Runs in flight: enough to keep the disk busy, bounded memory.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(4);
        let pool: Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Default::default();
        let failed: Arc<std::sync::Mutex<std::collections::HashSet<PathBuf>>> = Default::default();
        let thread = {
            let (pool, failed) = (pool.clone(), failed.clone());
            std::thread::spawn(move || {
                for job in rx {
                    match job {
                        Job::Write {
                            path,
                            target,
                            plain,
                            run,
                        } => {
                            if run.write(&target, &plain).is_err() {
                                failed
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .insert(path);
                            }
                            if run.buf.len() == RUN + BLOCK as usize {
                                pool.lock().unwrap_or_else(|e| e.into_inner()).push(run.buf);
                            }
                        }
                        Job::Flush(path, f) => {
                            // A write-back error is reported once, to the
                            // first flush that sees it: this one.
                            if f.sync_data().is_err() {
                                failed
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .insert(path);
                            }
                        }
                    }
                }
            })
        };
        Arc::new(PartWriter {
            tx: std::sync::Mutex::new(Some(tx)),
            thread: std::sync::Mutex::new(Some(thread)),
            pool,
            failed,
            handed: Default::default(),
            direct,
        })
    }

    fn buffer(&self) -> Vec<u8> {
        self.pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_else(run_buffer)
    }

    fn give_back(&self, buf: Vec<u8>) {
        self.pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(buf);
    }

    /// Hands a job to the thread; gives it back once the writer finished.
    fn submit(&self, job: Job) -> Result<(), Job> {
        let (Job::Write { path, .. } | Job::Flush(path, _)) = &job;
        self.handed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.clone());
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match tx {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }

    /// Waits until everything handed over is written and flushed, and
    /// stops the thread (parts write for themselves after this). Returns
    /// the part files whose data could not be written: they are not whole.
    pub fn finish(&self) -> std::collections::HashSet<PathBuf> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            if t.join().is_err() {
                // What it had queued is lost with it.
                let handed =
                    std::mem::take(&mut *self.handed.lock().unwrap_or_else(|e| e.into_inner()));
                self.failed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(handed);
            }
        }
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
        std::mem::take(&mut *self.failed.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for PartWriter {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
        let StageView { path, map, .. } = s.view().unwrap().unwrap();
        let data = std::fs::read(path).unwrap();
        let off = map[&hb] as usize;
        assert_eq!(&data[off..off + b.len()], &b[..]);
        let c = vec![3u8; 100];
        assert!(s.add(&Hash::of(&c), &c).unwrap());
        s.flush().unwrap();
        assert_eq!(Stage::open(d.path()).unwrap().len(), 3);
        s.clear();
        assert!(!p.exists());
        assert!(Stage::open(d.path()).unwrap().is_empty());
    }

    /// Records wait in memory and go out in large writes: once a MiB
    /// waits, for a view, and when the stage is dropped. A write that
    /// fails takes its chunks out of the stage.
    #[test]
    fn records_go_out_in_large_writes_and_a_failed_write_drops_them() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(STAGE_FILE);
        let on_disk = || std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        let chunk = |i: u32| {
            let mut c = noise(4096);
            c[..4].copy_from_slice(&i.to_le_bytes());
            c
        };
        let mut s = Stage::open(d.path()).unwrap();
        for i in 0..10 {
            assert!(s.add(&Hash::of(&chunk(i)), &chunk(i)).unwrap());
        }
        assert_eq!(on_disk(), 0, "ten records wait");
        let n = (STAGE_WRITE / (36 + 4096)) as u32 + 1;
        for i in 10..n {
            s.add(&Hash::of(&chunk(i)), &chunk(i)).unwrap();
        }
        assert_eq!(on_disk(), n as u64 * (36 + 4096), "a MiB went out at once");
        s.add(&Hash::of(&chunk(n)), &chunk(n)).unwrap();
        let map = s.view().unwrap().unwrap().map;
        assert_eq!(on_disk(), (n as u64 + 1) * (36 + 4096));
        assert_eq!(map.len(), n as usize + 1);
        s.add(&Hash::of(&chunk(n + 1)), &chunk(n + 1)).unwrap();
        drop(s);
        assert_eq!(Stage::open(d.path()).unwrap().len(), n as usize + 2);

        // A pack that cannot be written: the waiting records are dropped.
        let mut s = Stage::open(d.path()).unwrap();
        s.file = Some(Arc::new(File::open(&p).unwrap()));
        let (a, b) = (chunk(1000), chunk(1001));
        s.add(&Hash::of(&a), &a).unwrap();
        s.add(&Hash::of(&b), &b).unwrap();
        assert!(s.flush().is_err());
        assert!(!s.contains(&Hash::of(&a)) && !s.contains(&Hash::of(&b)));
        assert_eq!(s.len(), n as usize + 2);
        assert_eq!(s.end, on_disk());
    }

    fn noise(n: usize) -> Vec<u8> {
        crate::apply::test_support::noise(n, 0x9e37_79b9_7f4a_7c15)
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
            assert_eq!(part.put(&h, &bytes).unwrap(), bytes.len() as u64);
            assert!(!part.wants(&h));
            assert_eq!(part.put(&h, &bytes).unwrap(), 0, "held already");
        }
        assert!(!part.complete());
        let path = part.path().to_path_buf();
        drop(part);
        // Reopened (a rerun): what arrived is there, verified.
        let part = stage.part(&list).unwrap();
        assert_eq!(part.missing().len(), list.chunks.len() - 2);
        assert_eq!(
            part.held_bytes(),
            (chunk(0).1.len() + chunk(2).1.len()) as u64
        );
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
        let unique = pieces(&data, &list);
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

    /// A content with runs of zeros: they are holes of the part, never
    /// asked for, also when an earlier run left something there.
    #[test]
    fn a_part_never_asks_for_runs_of_zeros() {
        let d = tempfile::tempdir().unwrap();
        let mut data = noise(200_000);
        data.resize(200_000 + (2 << 20), 0);
        data.extend_from_slice(&noise(150_000)[7..]);
        let list = weave_chunk::chunk_bytes(&data);
        let zero = weave_chunk::zero_chunk();
        let stage = Stage::open(d.path()).unwrap();
        let part = stage.part(&list).unwrap();
        assert!(!part.missing().contains(&zero) && !part.wants(&zero));
        let path = part.path().to_path_buf();
        // Garbage where a hole belongs, as if from an earlier run.
        let hole = list.with_offsets().find(|(_, c)| c.is_zero()).unwrap().0;
        drop(part);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all_at(b"garbage", hole + 10)
            .unwrap();
        let mut part = stage.part(&list).unwrap();
        for (h, bytes) in pieces(&data, &list).iter().filter(|(h, _)| *h != zero) {
            part.put(h, bytes).unwrap();
        }
        assert!(part.complete());
        drop(part);
        assert!(std::fs::read(&path).unwrap() == data);
        use std::os::unix::fs::MetadataExt;
        let used = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(used < 1 << 20, "{used} bytes allocated");
    }

    /// A data chunk with blocks of zeros in it, damaged
    /// there by an earlier run, is fetched again and lands whole.
    #[test]
    fn a_damaged_chunk_with_zero_blocks_is_whole_after_reopen() {
        let d = tempfile::tempdir().unwrap();
        let mut data = noise(300_000);
        // Zero blocks inside data chunks (not long enough for a zero chunk).
        for i in 0..20 {
            let at = 10_000 + i * 14_000;
            data[at..at + 9000].fill(0);
        }
        data.resize(data.len() + (2 << 20), 0);
        data.extend_from_slice(&noise(150_000)[3..]);
        let list = weave_chunk::chunk_bytes(&data);
        let stage = Stage::open(d.path()).unwrap();
        let mut part = stage.part(&list).unwrap();
        let all = pieces(&data, &list);
        for (h, bytes) in &all {
            part.put(h, bytes).unwrap();
        }
        assert!(part.complete());
        let path = part.path().to_path_buf();
        drop(part);
        // Garbage in the zero blocks of the first chunks.
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        for i in 0..20 {
            f.write_all_at(b"garbage", (10_000 + i * 14_000 + 4500) as u64)
                .unwrap();
        }
        drop(f);
        let mut part = stage.part(&list).unwrap();
        assert!(!part.complete());
        for (h, bytes) in &all {
            part.put(h, bytes).unwrap();
        }
        assert!(part.complete());
        drop(part);
        assert!(std::fs::read(&path).unwrap() == data);
    }

    /// The distinct chunks of `data` (as chunked), with their bytes.
    fn pieces(data: &[u8], list: &ChunkList) -> Vec<(Hash, Vec<u8>)> {
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
    }

    #[test]
    fn parts_written_by_the_writer_thread_are_whole_in_any_order() {
        // Several runs' worth, a repeated stretch (a chunk at two places),
        // and an end that is not block-aligned.
        let a = noise(3 * RUN + 12_345);
        let mut data = a.clone();
        data.extend_from_slice(&a[..700_000]);
        data.extend_from_slice(&noise(777)[..]);
        let list = weave_chunk::chunk_bytes(&data);
        let unique = pieces(&data, &list);
        assert!(unique.len() < list.chunks.len(), "a repeated chunk");
        // In order, backwards, and every other one then the rest.
        let n = unique.len();
        let orders: Vec<Vec<usize>> = vec![
            (0..n).collect(),
            (0..n).rev().collect(),
            (0..n).step_by(2).chain((1..n).step_by(2)).collect(),
        ];
        for direct in [true, false] {
            for order in &orders {
                let d = tempfile::tempdir().unwrap();
                let stage = Stage::open(d.path()).unwrap();
                let writer = PartWriter::start(direct);
                let mut part = stage.part(&list).unwrap();
                part.write_with(&writer);
                let mut put = 0;
                for &i in order {
                    part.put(&unique[i].0, &unique[i].1).unwrap();
                    put += unique[i].1.len();
                    if direct && put > RUN && !part.complete() && direct_io_works(d.path()) {
                        assert!(matches!(part.direct, Direct::Open(_)), "direct I/O is used");
                    }
                    if let Some(r) = &part.run {
                        // A run that is one chunk so far holds a small buffer.
                        assert!(r.len > unique[i].1.len() || r.buf.len() < 80_000);
                    }
                }
                assert!(part.complete());
                // Whole once the writer has written what it was handed.
                assert!(writer.finish().is_empty());
                let on_disk = std::fs::read(part.path()).unwrap();
                assert!(on_disk == data, "direct {direct}, order {:?}", &order[..3]);
            }
        }
    }

    fn direct_io_works(dir: &Path) -> bool {
        let p = dir.join("probe");
        std::fs::write(&p, b"").unwrap();
        OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(&p)
            .is_ok()
    }

    #[test]
    fn a_part_dropped_after_its_writer_finished_keeps_its_run() {
        let d = tempfile::tempdir().unwrap();
        let stage = Stage::open(d.path()).unwrap();
        let data = noise(RUN + 5_000);
        let list = weave_chunk::chunk_bytes(&data);
        let unique = pieces(&data, &list);
        let writer = PartWriter::start(true);
        let mut part = stage.part(&list).unwrap();
        part.write_with(&writer);
        // The first chunks, less than a run: they stay in memory.
        let some = 3;
        for (h, bytes) in &unique[..some] {
            part.put(h, bytes).unwrap();
        }
        assert!(part.run.is_some());
        // As at the end of a transfer: the writer finishes first, then the
        // part (not complete) is dropped.
        assert!(writer.finish().is_empty());
        drop(part);
        let part = stage.part(&list).unwrap();
        let want: Vec<Hash> = unique[some..].iter().map(|(h, _)| *h).collect();
        assert_eq!(part.missing(), want);
    }

    #[test]
    fn a_part_interrupted_while_its_writer_runs_keeps_what_arrived() {
        for direct in [true, false] {
            let d = tempfile::tempdir().unwrap();
            let stage = Stage::open(d.path()).unwrap();
            let data = noise(2 * RUN + 5_000);
            let list = weave_chunk::chunk_bytes(&data);
            let unique = pieces(&data, &list);
            let half = unique.len() / 2;
            let writer = PartWriter::start(direct);
            {
                let mut part = stage.part(&list).unwrap();
                part.write_with(&writer);
                for (h, bytes) in &unique[..half] {
                    part.put(h, bytes).unwrap();
                }
                // Dropped with a run in memory and runs in the writer's
                // queue: all of it lands.
            }
            assert!(writer.finish().is_empty());
            let part = stage.part(&list).unwrap();
            let want: Vec<Hash> = unique[half..].iter().map(|(h, _)| *h).collect();
            assert_eq!(part.missing(), want, "direct {direct}");
            // And a part the writer has finished with writes for itself.
            let mut part = part;
            part.write_with(&writer);
            for (h, bytes) in &unique[half..] {
                part.put(h, bytes).unwrap();
            }
            assert!(part.complete());
            assert!(
                std::fs::read(part.path()).unwrap() == data,
                "direct {direct}"
            );
        }
    }

    #[test]
    fn a_write_the_writer_cannot_make_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("part");
        std::fs::write(&path, vec![0u8; 3 * BLOCK as usize]).unwrap();
        let read_only = Arc::new(File::open(&path).unwrap());
        let mut run = Run::new(100, run_buffer(), RUN);
        let s = run.base + run.from;
        run.buf[s..s + 9000].fill(7);
        run.len = 9000;
        assert!(run.write(&read_only, &read_only).is_err());
        let writer = PartWriter::start(true);
        writer
            .submit(Job::Write {
                path: path.clone(),
                target: read_only.clone(),
                plain: read_only,
                run,
            })
            .map_err(|_| "the writer runs")
            .unwrap();
        let failed = writer.finish();
        assert!(failed.contains(&path), "{failed:?}");
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
