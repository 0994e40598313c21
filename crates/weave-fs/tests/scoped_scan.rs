//! A scan limited to the paths a watcher reported must record exactly what
//! a full scan records, whatever happened to the tree.

use proptest::prelude::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use weave_core::ignore::Matcher;
use weave_fs::scan::{scan, ScanOptions};
use weave_index::{Batch, Index};

#[derive(Clone, Debug)]
enum Op {
    Write(String, u8),
    Mkdir(String),
    Remove(String),
    Rename(String, String),
    /// A symlink to a directory outside the tree.
    Link(String),
    /// Something changed in the outside directory, seen through every
    /// symlink to it.
    ThroughLinks,
    /// Something about the root itself (its mode, times) changed.
    TouchRoot,
}

fn rel_path() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec!["a", "b", "c", "ign", "x.tmp"]),
        1..4,
    )
    .prop_map(|v| v.join("/"))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (rel_path(), any::<u8>()).prop_map(|(p, b)| Op::Write(p, b)),
        1 => rel_path().prop_map(Op::Mkdir),
        2 => rel_path().prop_map(Op::Remove),
        1 => (rel_path(), rel_path()).prop_map(|(a, b)| Op::Rename(a, b)),
        1 => rel_path().prop_map(Op::Link),
        1 => Just(Op::ThroughLinks),
        1 => Just(Op::TouchRoot),
    ]
}

/// Applies `op` to the tree at `root` and returns the paths an inotify
/// watcher reports: the entries created, written, removed or moved (for a
/// moved or removed directory only the directory itself, as when it is
/// moved out of the tree). A watcher that follows symlinks also reports
/// paths through a symlink; "" is the root.
fn apply(root: &Path, op: &Op) -> Vec<String> {
    let abs = |p: &str| root.join(p);
    let mut touched = Vec::new();
    let make_parents = |p: &str, touched: &mut Vec<String>| -> bool {
        let mut cur = String::new();
        let comps: Vec<&str> = p.split('/').collect();
        for c in &comps[..comps.len() - 1] {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(c);
            let a = abs(&cur);
            if a.is_file() {
                return false;
            }
            if !a.exists() {
                fs::create_dir(&a).unwrap();
                touched.push(cur.clone());
            }
        }
        true
    };
    match op {
        Op::Write(p, b) => {
            if abs(p).is_dir() || !make_parents(p, &mut touched) {
                return touched;
            }
            fs::write(abs(p), vec![*b; 1 + *b as usize % 7]).unwrap();
            touched.push(p.clone());
        }
        Op::Mkdir(p) => {
            if abs(p).exists() || !make_parents(p, &mut touched) {
                return touched;
            }
            fs::create_dir(abs(p)).unwrap();
            touched.push(p.clone());
        }
        Op::Remove(p) => {
            let a = abs(p);
            if a.is_dir() {
                fs::remove_dir_all(&a).unwrap();
                touched.push(p.clone());
            } else if a.is_file() {
                fs::remove_file(&a).unwrap();
                touched.push(p.clone());
            }
        }
        Op::Rename(from, to) => {
            let (a, b) = (abs(from), abs(to));
            if !a.exists() || b.exists() || to.starts_with(&format!("{from}/")) || from == to {
                return touched;
            }
            if !make_parents(to, &mut touched) {
                return touched;
            }
            fs::rename(&a, &b).unwrap();
            touched.push(from.clone());
            touched.push(to.clone());
        }
        Op::Link(p) => {
            if abs(p).symlink_metadata().is_ok() || !make_parents(p, &mut touched) {
                return touched;
            }
            let outside = root.parent().unwrap().join("outside");
            std::os::unix::fs::symlink(&outside, abs(p)).unwrap();
            touched.push(p.clone());
        }
        Op::ThroughLinks => {
            let outside = root.parent().unwrap().join("outside");
            fs::write(outside.join("o1"), b"outside, changed").unwrap();
            for link in links(root, "") {
                for inner in ["o1", "od", "od/o2"] {
                    touched.push(format!("{link}/{inner}"));
                }
            }
        }
        Op::TouchRoot => touched.push(String::new()),
    }
    touched
}

/// The symlinks in the tree (relative paths).
fn links(dir: &Path, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let ft = e.file_type().unwrap();
        if ft.is_symlink() {
            out.push(rel);
        } else if ft.is_dir() {
            out.extend(links(&e.path(), &rel));
        }
    }
    out
}

fn scan_into(root: &Path, index: &mut Index, only: Option<&[String]>) {
    let matcher = Matcher::from_files(&[], &["ign".to_string(), "*.tmp".to_string()]).unwrap();
    let opts = ScanOptions {
        matcher: &matcher,
        remove_temps: false,
        dry_run: false,
        only,
        prehashed: None,
        record_parts: false,
    };
    let o = scan(root, index, &opts).unwrap();
    index
        .write(&Batch {
            entries: o.changed,
            contents: o.contents,
            ..Default::default()
        })
        .unwrap();
}

type Seen = BTreeMap<String, (weave_core::Object, u32, i64)>;

fn seen(index: &Index) -> Seen {
    index
        .load_entries()
        .unwrap()
        .into_iter()
        .map(|(p, le)| (p, (le.entry.object, le.entry.mode, le.entry.mtime_ns)))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn a_limited_scan_records_what_a_full_scan_records(
        rounds in prop::collection::vec(prop::collection::vec(op(), 0..12), 1..4),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("tree");
        fs::create_dir(&root).unwrap();
        fs::create_dir_all(tmp.path().join("outside/od")).unwrap();
        fs::write(tmp.path().join("outside/o1"), b"outside").unwrap();
        fs::write(tmp.path().join("outside/od/o2"), b"outside").unwrap();
        let mut limited = Index::open(&tmp.path().join("state-limited")).unwrap();
        let mut full = Index::open(&tmp.path().join("state-full")).unwrap();
        for round in &rounds {
            let mut touched = Vec::new();
            for op in round {
                touched.extend(apply(&root, op));
            }
            scan_into(&root, &mut limited, Some(&touched));
            scan_into(&root, &mut full, None);
            prop_assert_eq!(seen(&limited), seen(&full), "after {:?}", round);
        }
    }
}

#[test]
fn a_scan_limited_to_nothing_records_nothing_and_the_root_means_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    fs::create_dir_all(root.join("d")).unwrap();
    fs::write(root.join("d/f"), b"1").unwrap();
    let mut index = Index::open(&tmp.path().join("state")).unwrap();
    scan_into(&root, &mut index, Some(&[]));
    assert!(seen(&index).is_empty());
    scan_into(&root, &mut index, Some(&["".to_string()]));
    assert_eq!(seen(&index).len(), 2);
}
