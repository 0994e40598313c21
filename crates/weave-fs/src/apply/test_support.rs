//! What the executor's tests share: a content source, entries and
//! operations, replicas and files to write into them.

use super::{ContentSource, Location};
use crate::util::{create_unnamed, join, link_unnamed, stat_of};
use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};
use weave_chunk::ChunkList;
use weave_core::path::STATE_DIR;
use weave_core::{Entry, Hash, LocalEntry, Object, Op, OpKind, ReplicaId, Stat, VersionVector};

/// Content sources for tests: content id → (chunk list, where it is).
pub(super) struct Src(HashMap<Hash, (ChunkList, Location)>);

impl Src {
    pub(super) fn new(items: Vec<(&[u8], PathBuf, bool, Option<Stat>)>) -> Src {
        Src(items
            .into_iter()
            .map(|(data, path, local, stat)| {
                let list = weave_chunk::chunk_bytes(data);
                (list.content_id(), (list, Location { path, local, stat }))
            })
            .collect())
    }
}

impl ContentSource for Src {
    fn chunk_list(&self, content: &Hash) -> Option<ChunkList> {
        self.0.get(content).map(|x| x.0.clone())
    }
    fn locations(&self, content: &Hash) -> Vec<Location> {
        self.0
            .get(content)
            .map(|x| vec![x.1.clone()])
            .unwrap_or_default()
    }
}

pub(super) fn file_entry(path: &str, data: &[u8], counter: u64) -> Entry {
    let list = weave_chunk::chunk_bytes(data);
    Entry {
        path: path.into(),
        object: Object::File {
            size: data.len() as u64,
            content: list.content_id(),
        },
        mode: 0o644,
        mtime_ns: 1_600_000_000_000_000_000,
        vv: VersionVector::from_pairs(vec![(ReplicaId(1), counter)]),
        origin: ReplicaId(1),
        meta: None,
    }
}

pub(super) fn local(root: &Path, e: Entry) -> LocalEntry {
    let m = fs::symlink_metadata(join(root, &e.path)).unwrap();
    LocalEntry {
        entry: e,
        seq: 1,
        stat: Some(stat_of(&m)),
    }
}

pub(super) fn write_op(path: &str, current: Option<LocalEntry>, data: &[u8], counter: u64) -> Op {
    Op {
        kind: OpKind::WriteFile,
        path: path.into(),
        current,
        target: file_entry(path, data, counter),
    }
}

/// A replica root with its state directory.
pub(super) fn replica() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    fs::create_dir(t.path().join(STATE_DIR)).unwrap();
    t
}

/// A replica, and `n` new files `f0`… to write in it, all with `data`
/// (found in a file of another directory, the second one returned).
pub(super) fn new_files(
    n: usize,
    data: &'static [u8],
) -> (tempfile::TempDir, tempfile::TempDir, Src, Vec<Op>) {
    let t = replica();
    let other = tempfile::tempdir().unwrap();
    fs::write(other.path().join("src"), data).unwrap();
    let source = Src::new(vec![(data, other.path().join("src"), false, None)]);
    let ops = (0..n)
        .map(|i| write_op(&format!("f{i}"), None, data, 1))
        .collect();
    (t, other, source, ops)
}

/// Whether this machine's temporary directory takes unnamed files.
pub(super) fn unnamed_here(dir: &Path) -> bool {
    let probe = dir.join("probe");
    let ok = create_unnamed(dir)
        .and_then(|f| link_unnamed(&f, rustix::fs::CWD, &probe))
        .is_ok();
    let _ = fs::remove_file(&probe);
    ok
}

/// A source file written long ago (not racy), and its recorded stat.
pub(super) fn old_source(dir: &Path, data: &[u8]) -> (PathBuf, Stat) {
    let src = dir.join("src.bin");
    fs::write(&src, data).unwrap();
    let old = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    File::options()
        .write(true)
        .open(&src)
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(old))
        .unwrap();
    let stat = stat_of(&fs::metadata(&src).unwrap());
    assert!(!stat.racy);
    (src, stat)
}

pub(super) fn patterned(n: u32) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

/// `n` pseudo-random bytes from `seed` (xorshift).
pub(crate) fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// An edited file at "f" whose old version is on disk (not racy),
/// and the new version held whole by another replica.
pub(super) fn edit_case() -> (tempfile::TempDir, tempfile::TempDir, Vec<u8>, Vec<u8>, Op) {
    edit_case_of(600_000)
}

/// [`edit_case`] with a file of `size` bytes, changed in the middle.
pub(super) fn edit_case_of(
    size: usize,
) -> (tempfile::TempDir, tempfile::TempDir, Vec<u8>, Vec<u8>, Op) {
    let (t, other) = (replica(), tempfile::tempdir().unwrap());
    let old = noise(size, 7);
    let mut new = old.clone();
    new[size / 2] ^= 0x55;
    let (src, _) = old_source(t.path(), &old);
    fs::rename(src, t.path().join("f")).unwrap();
    fs::write(other.path().join("n"), &new).unwrap();
    let op = write_op(
        "f",
        Some(local(t.path(), file_entry("f", &old, 1))),
        &new,
        2,
    );
    assert!(!op.current.as_ref().unwrap().stat.unwrap().racy);
    (t, other, old, new, op)
}
