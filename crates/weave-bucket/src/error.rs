//! What can go wrong with a bucket, in words that say what to do.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BucketError {
    /// The address names no bucket weave can use.
    #[error("{given}: {problem}")]
    Address { given: String, problem: String },
    /// No passphrase was given where one is needed.
    #[error("{bucket}: a bucket replica is encrypted and needs a passphrase: set WEAVE_PASSPHRASE, give --passphrase-file FILE, or run weave in a terminal to be asked")]
    NoPassphrase { bucket: String },
    #[error("{bucket}: wrong passphrase (it does not open this bucket's key); nothing was read or written")]
    WrongPassphrase { bucket: String },
    /// The bucket was made by another format of weave.
    #[error("{bucket}: this bucket is in format {found}, and this weave reads format {known}; use a weave that knows format {found}")]
    Incompatible {
        bucket: String,
        found: u32,
        known: u32,
    },
    /// A bucket object is not what weave wrote: changed, cut short,
    /// sealed for another name.
    #[error("bucket object {object} is damaged: {problem}; nothing of it was used (it was changed or cut short where the bucket is kept: restore the bucket from a copy)")]
    Damaged { object: String, problem: String },
    /// Something weave wrote has a shape it does not know.
    #[error("bucket {what}: {problem}")]
    Format { what: String, problem: String },
    /// The storage said no, or could not be reached.
    #[error("{bucket}: {problem}")]
    Store { bucket: String, problem: String },
}
