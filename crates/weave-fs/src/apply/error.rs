//! Why one operation on one path was not carried out: reported as an
//! [`FsIssue`](crate::util::FsIssue) for that path (by
//! [`Ctx::issue`](super::Ctx::issue)), and the sync goes on. The texts
//! are what users and tests read: each variant's message is fixed.

use std::sync::Arc;

/// A path's failure in the executor.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PathError {
    /// What is on disk is no longer what the index recorded (I-5).
    #[error(
        "changed on disk during the sync; left as it is (it will sync as a new change next time)"
    )]
    Changed,
    /// A new path was taken by something during the sync.
    #[error("a file appeared at this path during the sync; left as it is (it will sync as a new change next time)")]
    Appeared,
    /// Something other than a directory is where one is to be made.
    #[error("something else appeared at this path during the sync; left as it is")]
    NotADir,
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    /// A directory above the path is missing.
    #[error("parent directory {dir:?} is not there: {source}")]
    ParentMissing { dir: String, source: std::io::Error },
    /// A directory above the path is a symlink or a file.
    #[error("parent {dir:?} is not a directory (a symlink or a file); not written")]
    ParentNotDir { dir: String },
    /// The path's directory could not be reached from the root without
    /// a symlink, or is outside the replica.
    #[error("parent directory {dir:?} is no longer a directory inside the replica ({source}); not written")]
    ParentEscaped { dir: String, source: std::io::Error },
    /// The path has no parent directory.
    #[error("no parent directory")]
    NoParent,
    /// A kind of object the executor does not write (`kind` as
    /// [`Object::kind_name`](weave_core::Object::kind_name) names it).
    #[error("cannot write a {kind}")]
    Unwritable { kind: &'static str },
    /// No replica has the chunk list of a content (`content` its short
    /// hex).
    #[error("no replica knows the chunks of content {content}")]
    UnknownChunks { content: String },
    /// The chunk list found does not describe the content.
    #[error("chunk list of content {content} is inconsistent")]
    InconsistentChunks { content: String },
    /// A chunk larger than the chunker makes.
    #[error("chunk {chunk} is larger than the chunker allows")]
    ChunkTooLarge { chunk: String },
    /// Every source of a chunk failed or changed.
    #[error("no source holds chunk {chunk} at offset {offset} any more (a file changed during the sync); it will be retried next time")]
    ChunkGone { chunk: String, offset: u64 },
    /// A directory to remove is not empty.
    #[error(
        "directory not removed: it still holds ignored files or files created during the sync"
    )]
    DirNotEmpty,
    /// The early writeback failed to flush a file of the batch: every
    /// build of the batch fails with this.
    #[error("cannot flush written data to disk")]
    WritebackFailed,
    /// The flush of a batch failed: every build of the batch fails with
    /// this (one error, shared).
    #[error("cannot flush written data to disk: {0}")]
    FlushFailed(Arc<std::io::Error>),
    /// A record for the trash journal could not be encoded.
    #[error("cannot record in the trash journal: {0}")]
    JournalRecord(postcard::Error),
    /// Held back: it would destroy content that failed to land elsewhere
    /// (see `order.rs`).
    #[error("left as it is: its content could not be saved at its new place (see the error above), so it was not replaced or removed; the sync will retry")]
    Kept,
}

impl PathError {
    /// A failed system call, `what` saying which.
    pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> PathError {
        move |source| PathError::Io { what, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages users and tests read, word for word.
    #[test]
    fn messages_are_fixed() {
        let io = || std::io::Error::from_raw_os_error(2);
        let cases = [
            (
                PathError::Changed,
                "changed on disk during the sync; left as it is (it will sync as a new change next time)".to_string(),
            ),
            (
                PathError::Appeared,
                "a file appeared at this path during the sync; left as it is (it will sync as a new change next time)".to_string(),
            ),
            (
                PathError::io("cannot rename into place")(io()),
                format!("cannot rename into place: {}", io()),
            ),
            (
                PathError::ParentNotDir { dir: "a/b".into() },
                "parent \"a/b\" is not a directory (a symlink or a file); not written".to_string(),
            ),
            (
                PathError::ParentMissing {
                    dir: "a".into(),
                    source: io(),
                },
                format!("parent directory \"a\" is not there: {}", io()),
            ),
            (
                PathError::ChunkGone {
                    chunk: "0123abcd".into(),
                    offset: 4096,
                },
                "no source holds chunk 0123abcd at offset 4096 any more (a file changed during the sync); it will be retried next time".to_string(),
            ),
            (
                PathError::FlushFailed(Arc::new(io())),
                format!("cannot flush written data to disk: {}", io()),
            ),
            (
                PathError::WritebackFailed,
                "cannot flush written data to disk".to_string(),
            ),
            (
                PathError::Unwritable { kind: "directory" },
                "cannot write a directory".to_string(),
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.to_string(), want);
        }
        assert_eq!(io().to_string(), "No such file or directory (os error 2)");
    }
}
