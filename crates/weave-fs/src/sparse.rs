//! Holes: what a sparse file is made of, kept as holes where content is
//! written. A file being built is new, so bytes that are not written read
//! as zeros: a block of zeros is simply not written ([`write_sparse`]),
//! and a copy takes only the ranges its source holds data in
//! ([`data_extents`]). Runs of zeros a whole chunk long are never written
//! at all (see [`weave_chunk::ChunkRef::is_zero`]).

use crate::util::BLOCK;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Writes `data` at offset `at` of a new file (one whose unwritten bytes
/// read as zeros), leaving out every file-system block that is all zeros:
/// those stay holes. Returns where the last byte written ends (`at` if
/// none was): the caller gives the file its length.
pub fn write_sparse(file: &File, data: &[u8], at: u64) -> io::Result<u64> {
    // Spans of data between zero blocks, each written at once.
    let mut span: Option<(usize, usize)> = None;
    let mut last = at;
    let mut i = 0usize;
    while i < data.len() {
        // Up to the next block boundary of the file.
        let end = (i + (BLOCK - (at + i as u64) % BLOCK) as usize).min(data.len());
        let zero = weave_chunk::all_zero(&data[i..end]);
        match (&mut span, zero) {
            (Some((_, e)), false) => *e = end,
            (None, false) => span = Some((i, end)),
            (Some(_), true) => {
                let (s, e) = span.take().expect("matched");
                file.write_all_at(&data[s..e], at + s as u64)?;
                last = at + e as u64;
            }
            (None, true) => {}
        }
        i = end;
    }
    if let Some((s, e)) = span {
        file.write_all_at(&data[s..e], at + s as u64)?;
        last = at + e as u64;
    }
    Ok(last)
}

/// The ranges of `file` from `from` to `to` that hold data, as (offset,
/// length): the rest are holes. The whole range if the file system cannot
/// tell.
pub fn data_extents(file: &File, from: u64, to: u64) -> Vec<(u64, u64)> {
    use rustix::fs::{seek, SeekFrom};
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        let start = match seek(file, SeekFrom::Data(at)) {
            Ok(s) => s,
            // No data from here to the end of the file.
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => return vec![(from, to - from)],
        };
        if start >= to {
            break;
        }
        let end = match seek(file, SeekFrom::Hole(start)) {
            Ok(e) => e.min(to),
            Err(_) => return vec![(from, to - from)],
        };
        if end <= start {
            return vec![(from, to - from)];
        }
        out.push((start, end - start));
        at = end;
    }
    out
}

/// Makes `len` bytes of `file` at `at` zeros: a hole punched where the
/// file system can, else zeros written over whatever is not zero.
pub(crate) fn zero_range(file: &File, at: u64, len: u64) -> io::Result<()> {
    use rustix::fs::FallocateFlags as F;
    if rustix::fs::fallocate(file, F::PUNCH_HOLE | F::KEEP_SIZE, at, len).is_ok() {
        return Ok(());
    }
    let mut buf = vec![0u8; len as usize];
    let n = file.read_at(&mut buf, at)?;
    if !weave_chunk::all_zero(&buf[..n]) {
        buf.fill(0);
        file.write_all_at(&buf[..n], at)?;
    }
    Ok(())
}

/// Bytes `path` takes on disk (its blocks), for tests.
#[cfg(test)]
pub(crate) fn allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_blocks_are_left_as_holes_and_the_rest_is_written() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let f = File::create(&p).unwrap();
        // Data, a megabyte of zeros, data; written at an unaligned offset.
        let mut data = vec![7u8; 10_000];
        data.resize(10_000 + (1 << 20), 0);
        data.extend(vec![9u8; 5_000]);
        let at = 123;
        assert_eq!(write_sparse(&f, &data, at).unwrap(), at + data.len() as u64);
        assert_eq!(write_sparse(&f, &[0u8; 5000], 1 << 30).unwrap(), 1 << 30);
        f.set_len(at + data.len() as u64).unwrap();
        let back = std::fs::read(&p).unwrap();
        assert_eq!(&back[at as usize..], &data[..]);
        assert!(back[..at as usize].iter().all(|&b| b == 0));
        assert!(allocated(&p) < 100_000, "{}", allocated(&p));
        // Where the data is, as the file system tells.
        let ext = data_extents(&f, 0, back.len() as u64);
        assert!(!ext.is_empty());
        let held: u64 = ext.iter().map(|e| e.1).sum();
        assert!(held < 100_000, "{ext:?}");
        assert_eq!(ext[0].0, 0);
        assert!(
            ext.last().is_some_and(|e| e.0 + e.1 == back.len() as u64),
            "{ext:?}"
        );
    }

    #[test]
    fn a_range_made_zeros_reads_as_zeros() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, vec![5u8; 200_000]).unwrap();
        let f = File::options().read(true).write(true).open(&p).unwrap();
        zero_range(&f, 4096, 65_536).unwrap();
        let back = std::fs::read(&p).unwrap();
        assert_eq!(back.len(), 200_000);
        assert!(back[4096..4096 + 65_536].iter().all(|&b| b == 0));
        assert!(back[..4096]
            .iter()
            .chain(&back[4096 + 65_536..])
            .all(|&b| b == 5));
    }
}
