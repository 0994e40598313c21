//! Copying into a file being built: a whole file the kernel copies
//! when its stat proves it unchanged ([`fast_copy`]), the old version of
//! an edited file whose runs of unchanged chunks are copied without being
//! read here ([`Trusted`]), and the buffered writes of verified chunks
//! mixed with those copies ([`Out`]), long runs through direct I/O.

use super::open_read;
use crate::sparse::{data_extents, write_sparse};
use crate::util::{aligned_start, open_direct, same_stat, BLOCK};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weave_chunk::ChunkList;
use weave_core::{Hash, Stat};

/// Copies `src` whole into `dst` (both at offset 0) if `src` is still the
/// file recorded in `expect`, before and after the copy: the data runs of
/// `list`, leaving holes at its runs of zeros. False if it is not (or the
/// kernel cannot copy): the caller then reads and verifies chunks.
pub(super) fn fast_copy(dst: &File, src: &Path, expect: &Stat, list: &ChunkList) -> bool {
    let size = list.size();
    let Ok(sf) = open_read(src) else {
        return false;
    };
    let unchanged = |f: &File| {
        f.metadata()
            .ok()
            .filter(|m| !expect.racy && same_stat(m, expect) && m.len() == size)
    };
    let Some(m) = unchanged(&sf) else {
        return false;
    };
    // Runs of zeros stay holes; of a large source that has holes, only
    // what holds data is copied (the file system's map of them is asked
    // only then: small files on compressed or copy-on-write file systems
    // take fewer blocks than their size without having holes).
    let holes = m.blocks() * 512 < size && size >= SPARSE_MIN;
    let sparse = holes || list.has_zeros();
    let runs = match (sparse, holes) {
        (false, _) => vec![(0, size)],
        (true, false) => list.data_runs(),
        (true, true) => list
            .data_runs()
            .into_iter()
            .flat_map(|(at, len)| data_extents(&sf, at, at + len))
            .collect(),
    };
    for (at, len) in runs {
        let (mut off_in, mut off_out) = (at, at);
        if !copy_range(&sf, &mut off_in, dst, &mut off_out, len) {
            return false;
        }
    }
    if sparse && dst.set_len(size).is_err() {
        return false;
    }
    unchanged(&sf).is_some()
}

/// Sources at least this large that take fewer blocks than their size
/// are copied as the file system says their data lies.
const SPARSE_MIN: u64 = 1 << 20;

/// Copies `len` bytes of `src` from offset `from` into `dst` at offset
/// `to`, by the kernel, moving both offsets on. False if that fails.
fn copy_range(src: &File, from: &mut u64, dst: &File, to: &mut u64, len: u64) -> bool {
    let end = *from + len;
    while *from < end {
        let want = (end - *from).min(1 << 30) as usize;
        match rustix::fs::copy_file_range(src, Some(&mut *from), dst, Some(&mut *to), want) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
    true
}

/// The old version of a file, opened for kernel copies of its chunks
/// because its stat still matches what was recorded when it was hashed.
/// The chunks a new file takes from it are gathered into runs of
/// consecutive ones, each copied at once.
pub(super) struct Trusted {
    file: File,
    stat: Stat,
    /// Chunk → offset in the file.
    map: Arc<HashMap<Hash, u64>>,
    /// A run of chunks taken and not copied yet: (offset in this file,
    /// length).
    run: Option<(u64, u64)>,
}

impl Trusted {
    pub(super) fn open(path: &Path, stat: Stat, map: Arc<HashMap<Hash, u64>>) -> Option<Trusted> {
        if stat.racy {
            return None;
        }
        let file = open_read(path).ok()?;
        let t = Trusted {
            file,
            stat,
            map,
            run: None,
        };
        t.unchanged().then_some(t)
    }

    /// Whether the file still has the stat recorded when it was hashed.
    pub(super) fn unchanged(&self) -> bool {
        self.file
            .metadata()
            .is_ok_and(|m| same_stat(&m, &self.stat))
    }

    /// Where this file holds chunk `hash`, if it does.
    pub(super) fn offset_of(&self, hash: &Hash) -> Option<u64> {
        self.map.get(hash).copied()
    }

    /// Takes the `len` bytes at `at` in this file as the next ones of
    /// `out`: they extend the current run, or the run is copied and
    /// another starts with them. False if a copy failed.
    pub(super) fn take(&mut self, out: &mut Out, at: u64, len: u64) -> bool {
        match &mut self.run {
            Some((start, run_len)) if *start + *run_len == at => {
                *run_len += len;
                true
            }
            _ => {
                let copied = self.copy_run(out);
                self.run = Some((at, len));
                copied
            }
        }
    }

    /// Copies the run taken so far into `out`. False if that failed.
    pub(super) fn copy_run(&mut self, out: &mut Out) -> bool {
        match self.run.take() {
            Some((start, len)) => out.copy(&self.file, start, len),
            None => true,
        }
    }
}

/// Positioned, buffered writes into a file being built, mixed with
/// kernel copies from other files.
pub(super) struct Out<'f> {
    file: &'f File,
    buf: Vec<u8>,
    /// Offset in the file of `buf[0]`.
    at: u64,
    /// The file's path, to open it for direct I/O (see [`Out::copy`]).
    path: Option<PathBuf>,
    /// The file opened for direct I/O, and an aligned buffer, once a long
    /// run needed them; None inside if the file system refuses.
    direct: Option<Option<(File, Vec<u8>)>>,
    /// Where the last bytes written or copied end: the file is given its
    /// length at the end if holes come after.
    written_end: u64,
}

/// Runs of the old version at least this long, whose offsets in the old
/// and the new file agree modulo a block, are copied with direct I/O.
const DIRECT_MIN: u64 = 8 << 20;
/// The size of one direct write.
const DIRECT_STEP: usize = 4 << 20;

impl<'f> Out<'f> {
    const FLUSH_AT: usize = 256 * 1024;

    pub(super) fn new(file: &'f File, path: Option<PathBuf>) -> Out<'f> {
        Out {
            file,
            buf: Vec::with_capacity(Self::FLUSH_AT + weave_chunk::CHUNK_MAX as usize),
            at: 0,
            path,
            direct: None,
            written_end: 0,
        }
    }

    pub(super) fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= Self::FLUSH_AT {
            // Whole blocks only: a write that ends inside a new block makes
            // the kernel zero the rest of it first (see `stage::Part`).
            let end = self.at + self.buf.len() as u64;
            let n = (end - end % 4096).saturating_sub(self.at) as usize;
            if n == 0 {
                return self.flush();
            }
            let end = write_sparse(self.file, &self.buf[..n], self.at)?;
            self.written_end = self.written_end.max(end);
            self.at += n as u64;
            self.buf.drain(..n);
        }
        Ok(())
    }

    /// Leaves the next `len` bytes unwritten: a hole in a new file.
    pub(super) fn skip(&mut self, len: u64) -> std::io::Result<()> {
        self.flush()?;
        self.at += len;
        Ok(())
    }

    /// Writes what is buffered and gives the file its `size` (a file
    /// ending in a hole has nothing written there).
    pub(super) fn finish(&mut self, size: u64) -> std::io::Result<()> {
        self.flush()?;
        if self.written_end < size {
            self.file.set_len(size)?;
        }
        Ok(())
    }

    pub(super) fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let end = write_sparse(self.file, &self.buf, self.at)?;
            self.written_end = self.written_end.max(end);
            self.at += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    /// Appends `len` bytes of `src` from offset `from`. False if that
    /// fails (nothing is known of what was written).
    ///
    /// A long run whose offsets agree modulo a block is read into memory
    /// and its whole blocks written with direct I/O: on some machines the
    /// kernel's copy into the page cache, and its write-back, cost more
    /// than the disk's time. The rest is copied by the kernel. (All writes
    /// to the file are made by this thread, in order: direct and cached
    /// writes never race.)
    fn copy(&mut self, src: &File, from: u64, len: u64) -> bool {
        if self.flush().is_err() {
            return false;
        }
        if len < DIRECT_MIN || from % BLOCK != self.at % BLOCK {
            return self.kernel_copy(src, from, len);
        }
        if self.direct.is_none() {
            self.direct = Some(
                self.path
                    .as_ref()
                    .and_then(|p| open_direct(p, self.file))
                    .map(|f| (f, vec![0u8; DIRECT_STEP + BLOCK as usize])),
            );
        }
        let Some((direct, mut buf)) = self.direct.take().flatten() else {
            self.direct = Some(None);
            return self.kernel_copy(src, from, len);
        };
        let ok = self.direct_copy(src, from, len, &direct, &mut buf);
        self.direct = Some(Some((direct, buf)));
        ok
    }

    /// [`Out::copy`] of a long run, through `direct` (the file opened for
    /// direct I/O) and `buf` (a step and a block long).
    fn direct_copy(
        &mut self,
        src: &File,
        from: u64,
        len: u64,
        direct: &File,
        buf: &mut [u8],
    ) -> bool {
        let base = aligned_start(buf);
        let head = (BLOCK - self.at % BLOCK) % BLOCK;
        let whole = (len - head) / BLOCK * BLOCK;
        let (mut from, end) = (from, from + len);
        if !self.kernel_copy(src, from, head) {
            return false;
        }
        from += head;
        let whole_end = from + whole;
        while from < whole_end {
            let n = (whole_end - from).min(DIRECT_STEP as u64) as usize;
            let chunk = &mut buf[base..base + n];
            if src.read_exact_at(chunk, from).is_err() {
                return false;
            }
            if direct.write_all_at(chunk, self.at).is_err()
                && self.file.write_all_at(chunk, self.at).is_err()
            {
                return false;
            }
            from += n as u64;
            self.at += n as u64;
        }
        self.kernel_copy(src, from, end - from)
    }

    /// Appends `len` bytes of `src` from offset `from`, copied by the
    /// kernel.
    fn kernel_copy(&mut self, src: &File, mut from: u64, len: u64) -> bool {
        let ok = copy_range(src, &mut from, self.file, &mut self.at, len);
        self.written_end = self.written_end.max(self.at);
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::super::apply;
    use super::super::test_support::*;
    use std::fs;

    #[test]
    fn an_unchanged_source_is_copied_whole() {
        let (t, other) = (replica(), tempfile::tempdir().unwrap());
        let data = patterned(300_000);
        let (src, stat) = old_source(other.path(), &data);
        let source = Src::new(vec![(&data, src, false, Some(stat))]);
        let out = apply(t.path(), &[write_op("f", None, &data, 1)], &source, &|_| {});
        assert!(out.issues.is_empty(), "{:?}", out.issues);
        assert_eq!(out.bytes_remote, data.len() as u64);
        assert_eq!(fs::read(t.path().join("f")).unwrap(), data);
    }

    #[test]
    fn a_source_changed_since_it_was_hashed_is_not_trusted() {
        let (t, other) = (replica(), tempfile::tempdir().unwrap());
        let data = patterned(300_000);
        let (src, stat) = old_source(other.path(), &data);
        // Same size, different bytes, written after the stat was taken.
        let mut changed = data.clone();
        changed[1000] ^= 0xff;
        fs::write(&src, &changed).unwrap();
        let source = Src::new(vec![(&data, src, false, Some(stat))]);
        let out = apply(t.path(), &[write_op("f", None, &data, 1)], &source, &|_| {});
        // Neither the fast path nor the verified path accepts it.
        assert_eq!(out.issues.len(), 1, "{:?}", out.issues);
        assert!(!t.path().join("f").exists());
    }

    #[test]
    fn an_edit_copies_the_unchanged_runs_of_the_old_version() {
        let (t, other, old, new, op) = edit_case();
        let source = Src::new(vec![
            (&old, t.path().join("f"), true, None),
            (&new, other.path().join("n"), false, None),
        ]);
        let out = apply(t.path(), &[op], &source, &|_| {});
        assert!(out.issues.is_empty(), "{:?}", out.issues);
        assert_eq!(fs::read(t.path().join("f")).unwrap(), new);
        // Only the changed chunk came from the other replica.
        assert!(
            out.bytes_remote <= weave_chunk::CHUNK_MAX as u64,
            "{}",
            out.bytes_remote
        );
        assert_eq!(out.bytes_local + out.bytes_remote, new.len() as u64);
    }

    #[test]
    fn long_unchanged_runs_are_copied_with_direct_io_and_land_whole() {
        // Runs of 10 MiB on either side of the change: their whole blocks
        // go through direct I/O, their ends through the kernel's copy.
        let (t, other, old, new, op) = edit_case_of(20 << 20);
        let source = Src::new(vec![
            (&old, t.path().join("f"), true, None),
            (&new, other.path().join("n"), false, None),
        ]);
        let out = apply(t.path(), &[op], &source, &|_| {});
        assert!(out.issues.is_empty(), "{:?}", out.issues);
        assert!(fs::read(t.path().join("f")).unwrap() == new);
        assert!(
            out.bytes_remote <= weave_chunk::CHUNK_MAX as u64,
            "{}",
            out.bytes_remote
        );
    }

    /// Data with runs of zeros in it: in the middle and at the end.
    fn sparse_data() -> Vec<u8> {
        let mut data = noise(200_000, 1);
        data.resize(200_000 + (4 << 20), 0);
        data.extend(noise(100_000, 2));
        data.resize(data.len() + (1 << 20), 0);
        data
    }

    #[test]
    fn runs_of_zeros_become_holes_whether_copied_whole_or_chunk_by_chunk() {
        let data = sparse_data();
        let list = weave_chunk::chunk_bytes(&data);
        assert!(list.has_zeros());
        // Copied by the kernel (a source whose stat proves it), and read
        // chunk by chunk (no stat).
        for proven in [true, false] {
            let (t, other) = (replica(), tempfile::tempdir().unwrap());
            let (src, stat) = old_source(other.path(), &data);
            let source = Src::new(vec![(&data, src, false, proven.then_some(stat))]);
            let out = apply(t.path(), &[write_op("f", None, &data, 1)], &source, &|_| {});
            assert!(out.issues.is_empty(), "{:?}", out.issues);
            let f = t.path().join("f");
            assert!(fs::read(&f).unwrap() == data, "proven {proven}");
            // The 5 MiB of zeros are holes. A copy by the kernel writes the
            // chunks at the edges of each run whole (its source has no
            // holes); chunk by chunk, only the blocks that hold data.
            let most = if proven { 600_000 } else { 320_000 };
            let used = crate::sparse::allocated(&f);
            assert!(used < most, "proven {proven}: {used} bytes allocated");
            // Nothing of the holes came from the other replica.
            assert!(out.bytes_remote <= 300_000 + 2 * weave_chunk::CHUNK_MAX as u64 || proven);
        }
    }

    /// The holes of a new file count as neither reused nor copied bytes,
    /// whether the file is copied whole or chunk by chunk: the data does,
    /// the same either way.
    #[test]
    fn holes_count_as_neither_local_nor_remote_bytes() {
        let data = sparse_data();
        let mut seen = Vec::new();
        for proven in [true, false] {
            let (t, other) = (replica(), tempfile::tempdir().unwrap());
            let (src, stat) = old_source(other.path(), &data);
            let source = Src::new(vec![(&data, src, false, proven.then_some(stat))]);
            let out = apply(t.path(), &[write_op("f", None, &data, 1)], &source, &|_| {});
            assert!(out.issues.is_empty(), "{:?}", out.issues);
            seen.push((proven, out.bytes_local, out.bytes_remote));
        }
        let data_bytes = weave_chunk::chunk_bytes(&data).data_bytes();
        assert!(
            seen.iter().all(|s| s.1 == 0 && s.2 == data_bytes),
            "(proven, bytes_local, bytes_remote): {seen:?}, data {data_bytes}"
        );
    }

    /// An edit of a sparse file, the old version trusted,
    /// with zero chunks at the very start and the very end, and a long
    /// (direct I/O) run in between.
    #[test]
    fn an_edit_with_zeros_at_both_ends_keeps_its_holes() {
        let (t, other) = (replica(), tempfile::tempdir().unwrap());
        let mut old = vec![0u8; 1 << 20];
        old.extend(noise(20 << 20, 9));
        old.resize(old.len() + (1 << 20), 0);
        let mut new = old.clone();
        let mid = old.len() / 2;
        new[mid] ^= 0x55;
        let (src, _) = old_source(t.path(), &old);
        fs::rename(src, t.path().join("f")).unwrap();
        fs::write(other.path().join("n"), &new).unwrap();
        let op = write_op(
            "f",
            Some(local(t.path(), file_entry("f", &old, 1))),
            &new,
            2,
        );
        let list = weave_chunk::chunk_bytes(&new);
        assert!(list.chunks.first().unwrap().is_zero());
        assert!(list.chunks.iter().rev().take(2).any(|c| c.is_zero()));
        let source = Src::new(vec![
            (&old, t.path().join("f"), true, None),
            (&new, other.path().join("n"), false, None),
        ]);
        let out = apply(t.path(), &[op], &source, &|_| {});
        assert!(out.issues.is_empty(), "{:?}", out.issues);
        assert!(fs::read(t.path().join("f")).unwrap() == new);
        // The data, reused or copied; the holes, neither.
        assert_eq!(out.bytes_local + out.bytes_remote, list.data_bytes());
    }

    /// Content of zeros only (a multiple of the chunk
    /// maximum, and not), and empty content.
    #[test]
    fn contents_of_zeros_only_and_empty_ones_are_whole() {
        for len in [0usize, 65_536, 3 << 20, (3 << 20) + 777] {
            for proven in [true, false] {
                let data = vec![0u8; len];
                let (t, other) = (replica(), tempfile::tempdir().unwrap());
                let (src, stat) = old_source(other.path(), &data);
                let source = Src::new(vec![(&data, src, false, proven.then_some(stat))]);
                let out = apply(t.path(), &[write_op("f", None, &data, 1)], &source, &|_| {});
                assert!(out.issues.is_empty(), "{:?}", out.issues);
                assert!(
                    fs::read(t.path().join("f")).unwrap() == data,
                    "{len} {proven}"
                );
            }
        }
    }
}
