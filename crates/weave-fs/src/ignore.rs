//! Reading a directory's ignore file (the matching itself is
//! [`weave_core::ignore`]).

use std::path::Path;
use weave_core::ignore::{IgnoreError, IgnoreFile, Matcher, IGNORE_FILE};

/// The `.weaveignore` files of `roots` that exist, in order.
pub fn read_files(roots: &[&Path]) -> Vec<IgnoreFile> {
    roots.iter().filter_map(|root| read_file(root)).collect()
}

/// The `.weaveignore` file at `root`, if there is one that can be read.
pub fn read_file(root: &Path) -> Option<IgnoreFile> {
    let f = root.join(IGNORE_FILE);
    let text = std::fs::read_to_string(&f).ok()?;
    Some(IgnoreFile {
        origin: f.display().to_string(),
        text,
    })
}

/// The matcher of the `.weaveignore` files of `roots` and the extra
/// `patterns`.
pub fn build(roots: &[&Path], patterns: &[String]) -> Result<Matcher, IgnoreError> {
    Matcher::from_files(&read_files(roots), patterns)
}
