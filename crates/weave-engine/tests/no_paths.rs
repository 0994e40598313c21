//! The engine never touches a path (ARCHITECTURE.md, structure rules): it
//! depends on no crate that works on the file system for it, and its own
//! code opens, reads, lists and checks nothing on disk. Replicas do.

use std::path::Path;

/// What file-system work looks like in Rust source.
const FORBIDDEN: &[&str] = &[
    "std::fs",
    "File::open",
    "File::create",
    "OpenOptions",
    "read_dir",
    "canonicalize",
    ".exists()",
    "symlink_metadata",
    "Index::open",
    "Database::",
];

#[test]
fn the_engine_opens_no_file_and_no_database() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for f in FORBIDDEN {
                if code.contains(f) {
                    found.push(format!("{}:{}: {f}", path.display(), n + 1));
                }
            }
        }
    }
    assert!(
        files > 5,
        "read {files} source files from {}",
        src.display()
    );
    assert!(
        found.is_empty(),
        "file-system work in weave-engine:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_engine_depends_on_no_crate_that_works_on_the_file_system() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .expect("a [dependencies] table")
        .split("\n[")
        .next()
        .unwrap_or("");
    for c in [
        "weave-fs",
        "weave-store",
        "weave-net",
        "weave-object",
        "weave-daemon",
    ] {
        assert!(
            !deps.lines().any(|l| l.trim_start().starts_with(c)),
            "weave-engine depends on {c}"
        );
    }
}
