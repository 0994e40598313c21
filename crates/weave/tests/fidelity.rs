//! Files as they are: what a sync keeps besides names, bytes, modes and
//! mtimes. Sparse files keep their holes: locally, in version history and
//! its restore. (Over a session: `remote.rs`.)

mod common;

use common::*;
use std::path::Path;

const MIB: u64 = 1 << 20;

/// A 256 MiB file holding 1 MiB of data and a few bytes; the rest holes.
fn disk_image(path: &Path) -> Vec<(u64, Vec<u8>)> {
    let pieces = vec![
        (0, b"header".to_vec()),
        (100 * MIB, random_bytes(MIB as usize, 27)),
    ];
    let refs: Vec<(u64, &[u8])> = pieces.iter().map(|(o, d)| (*o, &d[..])).collect();
    make_sparse(path, 256 * MIB, &refs);
    pieces
}

/// `b` holds what `a` holds and takes no more of the disk than `a` does
/// (within 1 %, and a block for each edge of a data run).
fn same_and_as_sparse(a: &Path, b: &Path) {
    assert!(
        read(a) == read(b),
        "{} differs from {}",
        b.display(),
        a.display()
    );
    let (ua, ub) = (allocated(a), allocated(b));
    assert!(
        ub <= ua + ua / 100 + 8 * 4096,
        "{} takes {ub} bytes on disk, {} takes {ua}",
        b.display(),
        a.display()
    );
}

#[test]
fn a_sparse_file_keeps_its_holes_when_copied_and_when_edited() {
    let t = setup(&["A", "B"]);
    let p = t.path();
    let pieces = disk_image(&p.join("A/disk.img"));
    assert!(
        allocated(p.join("A/disk.img")) < 2 * MIB,
        "this file system has holes"
    );
    sync(p, &["A", "B"]).expect_code(0);
    same_and_as_sparse(&p.join("A/disk.img"), &p.join("B/disk.img"));

    // Data written into a hole on B: A gets the edit, holes and all (the
    // unchanged runs are taken from A's old version).
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(p.join("B/disk.img"))
            .unwrap();
        f.write_all_at(&random_bytes(300_000, 28), 200 * MIB)
            .unwrap();
    }
    set_mtime(p.join("B/disk.img"), at(1_600_000_100, 0));
    sync(p, &["A", "B"]).expect_code(0);
    same_and_as_sparse(&p.join("B/disk.img"), &p.join("A/disk.img"));

    // The version the edit replaced on A is in its history; restored
    // elsewhere, it has its holes.
    weave(p, ["restore", "A/disk.img", "--to", "old.img"]).expect_code(0);
    let old = p.join("old.img");
    let mut want = vec![0u8; 256 * MIB as usize];
    for (at, data) in &pieces {
        want[*at as usize..*at as usize + data.len()].copy_from_slice(data);
    }
    assert!(read(&old) == want, "the restored version differs");
    assert!(allocated(&old) < 2 * MIB, "{} bytes", allocated(&old));
}

/// A file of zeros written out (no holes) arrives as holes: runs of zeros
/// are never written, as `cp --sparse=always` does.
#[test]
fn runs_of_written_zeros_arrive_as_holes() {
    let t = setup(&["A", "B"]);
    let p = t.path();
    let mut data = random_bytes(70_000, 3);
    data.resize(70_000 + 8 * MIB as usize, 0);
    data.extend(random_bytes(50_000, 4));
    write_at(p.join("A/zeros.bin"), &data, at(1_600_000_000, 0));
    assert!(allocated(p.join("A/zeros.bin")) > 8 * MIB);
    sync(p, &["A", "B"]).expect_code(0);
    assert!(read(p.join("B/zeros.bin")) == data);
    let used = allocated(p.join("B/zeros.bin"));
    assert!(used < MIB, "{used} bytes on disk for 120 kB of data");
}
