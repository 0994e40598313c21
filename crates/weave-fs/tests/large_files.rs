//! Scanning many large files at once: each is chunked a window ahead of
//! its hashing on the scanner's own thread pool, whose threads take on
//! other files while they wait.

use std::fs;
use weave_core::ignore::Matcher;
use weave_fs::scan::{scan, ScanOptions};
use weave_index::Index;

/// Files of just over one 4 MiB window each, under `root`.
fn make(root: &std::path::Path, n: u64, seed: u64) -> Vec<Vec<u8>> {
    fs::create_dir_all(root).unwrap();
    let mut x: u64 = 0x9e3779b97f4a7c15 ^ seed;
    (0..n)
        .map(|i| {
            let data: Vec<u8> = (0..(4 << 20) + 70_000 + i as usize * 4099)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            fs::write(root.join(format!("f{i}")), &data).unwrap();
            data
        })
        .collect()
}

fn check(root: &std::path::Path, state: &std::path::Path, files: &[Vec<u8>]) {
    let matcher = Matcher::from_files(&[], &[]).unwrap();
    let opts = ScanOptions {
        matcher: &matcher,
        remove_temps: false,
        dry_run: false,
        only: None,
        prehashed: None,
        record_parts: false,
    };
    let mut index = Index::open(state).unwrap();
    let out = scan(root, &mut index, &opts).unwrap();
    assert!(out.issues.is_empty(), "{:?}", out.issues);
    assert_eq!(out.contents.len(), files.len());
    for list in &out.contents {
        let data = files
            .iter()
            .find(|d| d.len() as u64 == list.size())
            .expect("a list for each file");
        assert_eq!(*list, weave_chunk::chunk_bytes(data));
    }
}

/// Two trees scanned at once (as a sync scans its replicas), sharing the
/// thread pool: a thread waiting on one file's window takes on a file of
/// the other scan meanwhile.
#[test]
fn large_files_of_two_trees_scan_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (fa, fb) = (make(&a, 16, 1), make(&b, 16, 2));
    for round in 0..4 {
        let sa = tmp.path().join(format!("sa{round}"));
        let sb = tmp.path().join(format!("sb{round}"));
        std::thread::scope(|s| {
            let ta = s.spawn(|| check(&a, &sa, &fa));
            let tb = s.spawn(|| check(&b, &sb, &fb));
            ta.join().expect("scan of a");
            tb.join().expect("scan of b");
        });
    }
}
