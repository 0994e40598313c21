//! weave-bucket: replicas on storage that is not trusted (I-8).
//!
//! A bucket replica keeps a directory tree's versions in an S3-compatible
//! bucket, or in a directory (a removable drive, a mount of someone
//! else's server), as a pool of sealed, immutable objects: records of
//! versions, one log per writer, and packs of chunks ([`pool`],
//! [`record`]). Two devices that are never online together sync through
//! it; two that push at the same moment both succeed, with no lock.
//!
//! Everything is sealed on the client ([`crypto`]): the storage sees the
//! number and padded sizes of objects and when they are written, never a
//! name, a directory, a time, a mode or a content. A bucket is always
//! encrypted: it is made with a passphrase, and opened only with it.

pub mod crypto;
mod error;
pub mod history;
pub mod objects;
pub mod pool;
pub mod prune;
pub mod record;
mod replica;
pub mod store;

pub use error::BucketError;
pub use objects::BucketAddress;
pub use pool::Pool;
pub use replica::BucketReplica;

/// Opens the bucket replica at `address` with `passphrase` for a sync
/// (dry or not). A place that holds no bucket gets a new one, unless
/// this is a dry run.
///
/// With `cache_in` (a local replica's state directory), the records read
/// are kept there, and a later sync reads only those it has not seen.
pub fn open(
    address: &BucketAddress,
    passphrase: &[u8],
    dry_run: bool,
    cache_in: Option<&std::path::Path>,
) -> Result<BucketReplica, weave_engine::SyncError> {
    let err = |e: BucketError| weave_engine::SyncError::Replica(Box::new(e));
    let store = address.connect(!dry_run).map_err(err)?;
    let shown = address.to_string();
    let cache = cache_in.map(|dir| cache_dir(dir, &shown));
    open_store(store, &shown, passphrase, dry_run, cache)
}

/// [`open`] for a bucket in `store` (shown as `shown`), its records kept
/// in directory `cache` if given.
pub fn open_store(
    store: Box<dyn store::Store>,
    shown: &str,
    passphrase: &[u8],
    dry_run: bool,
    cache: Option<std::path::PathBuf>,
) -> Result<BucketReplica, weave_engine::SyncError> {
    let err = |e: BucketError| weave_engine::SyncError::Replica(Box::new(e));
    let pool = match Pool::open(store, shown, passphrase, !dry_run).map_err(err)? {
        Some(mut p) => {
            // A dry run writes nothing, here either.
            if let Some(dir) = cache.filter(|_| !dry_run) {
                p.cache_records_in(dir);
            }
            p
        }
        None => {
            // A dry run into a place with no bucket yet: an empty one,
            // written nowhere.
            let memory = Box::new(store::Memory::default());
            Pool::open(memory, shown, passphrase, true)
                .map_err(err)?
                .expect("made in memory")
        }
    };
    BucketReplica::new(pool, dry_run)
}

/// Opens the bucket at `address` with `passphrase` to read it (its
/// history): one that is not there is an error.
pub fn open_existing(address: &BucketAddress, passphrase: &[u8]) -> Result<Pool, BucketError> {
    let store = address.connect(false)?;
    let shown = address.to_string();
    Pool::open(store, &shown, passphrase, false)?.ok_or_else(|| BucketError::Store {
        bucket: shown.clone(),
        problem: "no bucket is there (a first `weave sync DIR ADDRESS` makes one)".into(),
    })
}

/// Where the records of the bucket shown as `shown` (its address, or
/// the peer that keeps it) are kept under the state directory `state`.
pub fn cache_dir(state: &std::path::Path, shown: &str) -> std::path::PathBuf {
    let h = blake3::hash(shown.as_bytes());
    state
        .join("bucket-records")
        .join(data_encoding::HEXLOWER.encode(&h.as_bytes()[..8]))
}

/// The passphrase in the first line of file `path` (a trailing CR cut).
pub fn passphrase_from_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let text =
        std::fs::read(path).map_err(|e| format!("passphrase file {}: {e}", path.display()))?;
    let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(format!(
            "passphrase file {}: its first line is empty; write the passphrase there",
            path.display()
        ));
    }
    Ok(line.to_vec())
}
