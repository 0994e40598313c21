//! Ignore patterns: gitignore syntax, from `.weaveignore` at the root of
//! every replica of a sync plus patterns given on the command line. One
//! matcher is used for all replicas of a sync, so a path ignored anywhere
//! is never touched anywhere. Matching is pure: reading the files is the
//! replica's business (`weave_fs::ignore::read_files` for a directory).

use ::ignore::gitignore::{Gitignore, GitignoreBuilder};
use std::path::Path;
use thiserror::Error;

/// The ignore file at the root of a replica.
pub const IGNORE_FILE: &str = ".weaveignore";

#[derive(Debug, Error)]
#[error("bad ignore pattern {pattern:?} ({origin}): {detail}")]
pub struct IgnoreError {
    pub pattern: String,
    pub origin: String,
    pub detail: String,
}

/// A replica's ignore file, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoreFile {
    /// Where it was read from, as shown in messages.
    pub origin: String,
    pub text: String,
}

#[derive(Clone)]
pub struct Matcher {
    gi: Gitignore,
    fingerprint: u64,
}

impl Matcher {
    /// Builds the matcher from ignore files already read, (where from,
    /// text) in replica order, and the extra `patterns`.
    pub fn from_files(files: &[IgnoreFile], patterns: &[String]) -> Result<Matcher, IgnoreError> {
        let lines = files
            .iter()
            .flat_map(|f| f.text.lines().map(|l| (l, f.origin.as_str())))
            .chain(patterns.iter().map(|p| (p.as_str(), "--ignore")));
        Matcher::build(lines)
    }

    /// Checks `patterns` exactly as a sync will read them, each said to
    /// come from `origin` in a refusal: what edits a list of patterns
    /// refuses a bad one before it is saved.
    pub fn check(patterns: &[String], origin: &str) -> Result<(), IgnoreError> {
        Matcher::build(patterns.iter().map(|p| (p.as_str(), origin))).map(|_| ())
    }

    /// The matcher of `lines`, each (pattern, where it comes from).
    fn build<'a>(lines: impl Iterator<Item = (&'a str, &'a str)>) -> Result<Matcher, IgnoreError> {
        let mut b = GitignoreBuilder::new("/");
        // An unclosed `[` is an error, not a literal: git matches nothing
        // with it, so a pattern meant to ignore something would silently
        // ignore something else. A literal `[` is written `\[`.
        b.allow_unclosed_class(false);
        let mut kept: Vec<&str> = Vec::new();
        for (line, origin) in lines {
            kept.push(line);
            b.add_line(None, line).map_err(|e| IgnoreError {
                pattern: line.to_string(),
                origin: origin.to_string(),
                detail: e.to_string(),
            })?;
        }
        let gi = b.build().map_err(|e| IgnoreError {
            pattern: String::new(),
            origin: "ignore patterns".into(),
            detail: e.to_string(),
        })?;
        // In order: a later pattern can undo an earlier one ("!keep.log").
        let fingerprint = xxhash_rust::xxh3::xxh3_64(kept.join("\n").as_bytes());
        Ok(Matcher { gi, fingerprint })
    }

    pub fn none() -> Matcher {
        Matcher {
            gi: Gitignore::empty(),
            fingerprint: xxhash_rust::xxh3::xxh3_64(b""),
        }
    }

    /// Identifies the patterns, in order: a sync under other patterns
    /// ignored other paths, so it did not integrate everything.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// True if there are no patterns at all.
    pub fn is_empty(&self) -> bool {
        self.gi.is_empty()
    }

    /// True if the relative path (or one of its parents) is ignored.
    pub fn is_ignored(&self, rel: &str, is_dir: bool) -> bool {
        if self.gi.is_empty() {
            return false;
        }
        let p = Path::new("/").join(rel);
        self.gi.matched_path_or_any_parents(&p, is_dir).is_ignore()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_like_gitignore() {
        let m = Matcher::from_files(
            &[],
            &[
                "*.log".into(),
                "build/".into(),
                "!keep.log".into(),
                "/top".into(),
            ],
        )
        .unwrap();
        assert!(m.is_ignored("a.log", false));
        assert!(m.is_ignored("x/y/a.log", false));
        assert!(!m.is_ignored("keep.log", false));
        assert!(m.is_ignored("build", true));
        assert!(m.is_ignored("build/out.o", false));
        assert!(!m.is_ignored("build", false));
        assert!(m.is_ignored("top", false));
        assert!(!m.is_ignored("x/top", false));
        assert!(!m.is_ignored("src/main.rs", false));
    }

    #[test]
    fn a_bad_pattern_is_named_with_its_origin() {
        let ok = ["*.log".to_string(), "!keep.log".into(), "\\[x]".into()];
        Matcher::check(&ok, "ignore").unwrap();
        let bad = ["*.log".to_string(), "[".into()];
        let e = Matcher::check(&bad, "ignore").unwrap_err();
        assert_eq!(e.pattern, "[");
        assert_eq!(e.origin, "ignore");
        assert!(
            e.to_string()
                .starts_with("bad ignore pattern \"[\" (ignore): "),
            "{e}"
        );
        // The same refusal as a sync's.
        let sync = Matcher::from_files(&[], &bad).err().expect("refused");
        assert_eq!(sync.detail, e.detail);
        assert_eq!(sync.origin, "--ignore");
    }
}
