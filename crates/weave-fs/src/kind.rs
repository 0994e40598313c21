//! Directory trees as a kind of replica (`files`, the default): how they
//! are checked and opened by path.

use crate::LocalReplica;
use std::path::{Path, PathBuf};
use weave_engine::{Kind, Prehashed, Replica, SyncError};

/// Directory trees: the default kind.
pub struct Files;

impl Kind for Files {
    fn name(&self) -> &str {
        "files"
    }

    fn check(&self, paths: &[PathBuf], ignore: &[String]) -> Result<Vec<PathBuf>, SyncError> {
        let canon = weave_index::check_local_replicas(paths)?;
        // Bad patterns stop the sync before any state is created.
        let roots: Vec<&Path> = canon.iter().map(|p| p.as_path()).collect();
        crate::ignore::build(&roots, ignore)?;
        Ok(canon)
    }

    fn prehash(
        &self,
        root: &Path,
        patterns: &[String],
        stop: &std::sync::atomic::AtomicBool,
    ) -> Option<Prehashed> {
        let matcher = crate::ignore::build(&[root], patterns).ok()?;
        Some(Prehashed(Box::new(crate::prehash(
            root, None, &matcher, stop,
        ))))
    }

    fn open(
        &self,
        root: &Path,
        display: &str,
        dry_run: bool,
    ) -> Result<Box<dyn Replica>, SyncError> {
        Ok(Box::new(LocalReplica::open(root, display, dry_run)?))
    }
}
