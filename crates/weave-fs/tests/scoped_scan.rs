//! A scan limited to the paths a watcher reported must record exactly what
//! a full scan records, whatever happened to the tree.

use proptest::prelude::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use weave_fs::ignore::Matcher;
use weave_fs::scan::{scan, ScanOptions};
use weave_index::{Batch, Index};

#[derive(Clone, Debug)]
enum Op {
    Write(String, u8),
    Mkdir(String),
    Remove(String),
    Rename(String, String),
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
    ]
}

/// Applies `op` to the tree at `root` and returns the paths an inotify
/// watcher reports: the entries created, written, removed or moved (for a
/// moved or removed directory only the directory itself, as when it is
/// moved out of the tree).
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
    }
    touched
}

fn scan_into(root: &Path, index: &mut Index, only: Option<&[String]>) {
    let matcher = Matcher::from_files(&[], &["ign".to_string(), "*.tmp".to_string()]).unwrap();
    let opts = ScanOptions {
        matcher: &matcher,
        remove_temps: false,
        only,
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
