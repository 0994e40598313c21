//! A folder's own rules, enforced by the device that holds it whoever
//! drives the sync: a send-only folder takes no operation from anyone, and
//! no operation reaches a sub-folder that is configured as a folder of its
//! own (it syncs with its own peers). A receive-only folder never shows
//! its own changes: the paths it changed (found by its scans) are left out
//! of the index it shows, so no peer plans to take them, and it takes no
//! operation at such a path or under a directory deleted here (a local
//! edit, new file or deletion stays; the folder reports it diverged). The
//! paths are remembered in `.weave/receive-only.json` until the peers come
//! to the same state or the user reverts them: a reverting folder
//! ([`Guarded::reverting`]) shows everything and takes every operation,
//! and is synced as a backup of its peer, which puts the peer's versions
//! back. The rules sit in front of the local replica, so a coordinator on
//! another device cannot get round them.

use crate::root::RootId;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use weave_core::Hash;
use weave_core::Op;
use weave_engine::{
    Applied, Foreign, IgnoreSpec, Issue, Provider, Replica, ReplicaInfo, ScanSummary, SyncError,
    Wants, NOT_TAKEN,
};

pub struct Guarded {
    inner: Box<dyn Replica>,
    /// Takes no operation at all.
    pub send_only: bool,
    /// Relative paths of sub-folders that are folders of their own.
    pub excluded: Vec<String>,
    /// Extra ignore patterns this device applies to the folder.
    pub patterns: Vec<String>,
    /// Receive-only: its own changes are never shown (see the module).
    receive_only: Option<LocalChanges>,
    /// Receive-only, reverting its local changes: what it shows of itself
    /// (it claims to have integrated nothing, so the sync plans).
    reverting: Option<ReplicaInfo>,
    /// The root directory it was opened at, and its state directory: a
    /// scan after which either is gone (removed, unmounted) or another
    /// fails, so that what vanished with it never becomes deletions.
    pub root: Option<(PathBuf, RootId, PathBuf)>,
}

/// The paths a receive-only folder changed itself.
struct LocalChanges {
    file: PathBuf,
    paths: BTreeSet<String>,
    /// Reverting: the paths whose revert failed in this sync.
    failed: BTreeSet<String>,
}

pub const LOCAL_CHANGES_FILE: &str = "receive-only.json";

/// The paths a receive-only folder with state directory `state` changed
/// itself and keeps.
pub fn local_changes(state: &Path) -> BTreeSet<String> {
    std::fs::read(state.join(LOCAL_CHANGES_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

impl LocalChanges {
    fn save(&self) -> Result<(), SyncError> {
        let data = serde_json::to_vec(&self.paths).expect("a set of strings");
        crate::identity::write_atomic(&self.file, &data, false).map_err(|e| {
            SyncError::Usage(format!(
                "cannot record the receive-only folder's local changes: {e}"
            ))
        })
    }
}

impl Guarded {
    pub fn new(inner: Box<dyn Replica>) -> Guarded {
        Guarded {
            inner,
            send_only: false,
            excluded: Vec::new(),
            patterns: Vec::new(),
            receive_only: None,
            reverting: None,
            root: None,
        }
    }

    /// Fails when the root it was opened at is no longer there (see
    /// `root`).
    fn check_root(&self) -> Result<(), SyncError> {
        let Some((root, id, state)) = &self.root else {
            return Ok(());
        };
        if RootId::of(root).as_ref() == Some(id) && state.is_dir() {
            return Ok(());
        }
        Err(SyncError::Usage(format!(
            "{} vanished during the scan (removed, unmounted or replaced); nothing is sent, so nothing is deleted on its peers, and it is looked at again once it is back",
            root.display()
        )))
    }

    /// Makes it receive-only; its state directory is `state`.
    pub fn receive_only(&mut self, state: &Path) {
        // What each scan recorded is read after it (see `scan`).
        if let Some(l) = self.inner.local() {
            l.record_scans_whole();
        }
        self.receive_only = Some(LocalChanges {
            file: state.join(LOCAL_CHANGES_FILE),
            paths: local_changes(state),
            failed: BTreeSet::new(),
        });
    }

    /// Makes a receive-only folder (state directory `state`) revert its
    /// local changes in this sync, which must make it a backup of its
    /// peer: it shows all of itself and takes every operation, and the
    /// paths whose operations went through (or that needed none) are no
    /// longer its own changes.
    pub fn reverting(&mut self, state: &Path) {
        self.receive_only(state);
        self.reverting = Some(self.shown_while_reverting());
    }

    fn shown_while_reverting(&self) -> ReplicaInfo {
        let mut info = self.inner.info().clone();
        info.peers.clear();
        info
    }

    /// After a change to the inner replica: what a reverting one shows.
    fn refresh(&mut self) {
        if self.reverting.is_some() {
            self.reverting = Some(self.shown_while_reverting());
        }
    }

    /// Why a receive-only folder does not take `op`: its path changed
    /// here (and the op would not bring the same state), or a directory
    /// above it was deleted here. `local` is what the folder holds.
    fn kept_here(&self, op: &Op, local: &weave_engine::Entries) -> Option<String> {
        let lc = self.receive_only.as_ref()?;
        if self.reverting.is_some() {
            return None;
        }
        const KEPT: &str = "and this folder is receive-only (the local change stays and is not sent; `weave folder revert` takes the peers' versions)";
        if lc.paths.contains(&op.path) {
            let same = local
                .get(&op.path)
                .is_some_and(|le| le.entry.same_state(&op.target));
            return (!same).then(|| format!("{NOT_TAKEN}changed here, {KEPT}"));
        }
        weave_core::path::ancestors(&op.path)
            .find(|a| {
                lc.paths.contains(*a)
                    && local.get(*a).is_some_and(|le| le.entry.object.is_deleted())
            })
            .map(|a| format!("{NOT_TAKEN}{a} was deleted here, {KEPT}"))
    }

    fn refusal(&self, path: &str) -> Option<String> {
        if self.send_only {
            return Some(format!(
                "{NOT_TAKEN}this folder is send-only here (it sends its changes and takes none)"
            ));
        }
        self.excluded
            .iter()
            .find(|x| path == x.as_str() || path.starts_with(&format!("{x}/")))
            .map(|x| {
                format!("{NOT_TAKEN}{x} is a folder of its own here, synced with its own peers")
            })
    }

    /// `e` without a receive-only folder's own changes.
    fn hide_own(&self, mut e: weave_engine::Entries) -> weave_engine::Entries {
        if let (Some(lc), None) = (&self.receive_only, &self.reverting) {
            if e.keys().any(|p| lc.paths.contains(p)) {
                std::sync::Arc::make_mut(&mut e).retain(|p, _| !lc.paths.contains(p));
            }
        }
        e
    }

    /// Patterns that keep the sub-folders out of this folder's scans.
    pub fn exclusion_patterns(excluded: &[String]) -> Vec<String> {
        excluded.iter().map(|x| format!("/{x}")).collect()
    }
}

impl Replica for Guarded {
    fn display(&self) -> &str {
        self.inner.display()
    }
    fn is_local(&self) -> bool {
        self.inner.is_local()
    }
    fn local(&mut self) -> Option<&mut dyn weave_engine::LocalTree> {
        self.inner.local()
    }
    fn traffic(&self) -> Option<(u64, u64)> {
        self.inner.traffic()
    }
    fn info(&self) -> &ReplicaInfo {
        self.reverting.as_ref().unwrap_or_else(|| self.inner.info())
    }
    fn scan(&mut self, ignore: &IgnoreSpec, dry_run: bool) -> Result<ScanSummary, SyncError> {
        let mut spec = ignore.clone();
        for p in self
            .patterns
            .iter()
            .cloned()
            .chain(Guarded::exclusion_patterns(&self.excluded))
        {
            if !spec.patterns.contains(&p) {
                spec.patterns.push(p);
            }
        }
        let before = self.inner.info().seq;
        let summary = self.inner.scan(&spec, dry_run)?;
        self.check_root()?;
        let grew = self.inner.info().seq > before;
        if let (Some(lc), true) = (self.receive_only.as_mut(), grew) {
            // What this scan recorded are the folder's own changes.
            let changed = self.inner.changed_since(before)?;
            lc.paths.extend(changed.keys().cloned());
            lc.save()?;
        }
        self.refresh();
        Ok(summary)
    }
    fn entries(&mut self) -> Result<weave_engine::Entries, SyncError> {
        let e = self.inner.entries()?;
        Ok(self.hide_own(e))
    }
    fn changed_since(&mut self, seq: u64) -> Result<weave_engine::Entries, SyncError> {
        let e = self.inner.changed_since(seq)?;
        Ok(self.hide_own(e))
    }
    fn entries_at(
        &mut self,
        paths: &[String],
        subtrees: &[String],
    ) -> Result<weave_engine::Entries, SyncError> {
        let e = self.inner.entries_at(paths, subtrees)?;
        Ok(self.hide_own(e))
    }
    fn entries_from(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<weave_engine::Page>, SyncError> {
        let Some(mut page) = self.inner.entries_from(after, limit)? else {
            return Ok(None);
        };
        page.entries = self.hide_own(page.entries);
        Ok(Some(page))
    }
    fn chunk_list(&mut self, content: &Hash) -> Option<weave_chunk::ChunkList> {
        self.inner.chunk_list(content)
    }
    fn serve_nodes(&mut self, wants: &Wants) -> Result<Vec<Vec<Option<Vec<u8>>>>, SyncError> {
        self.inner.serve_nodes(wants)
    }
    fn serve_chunks(
        &mut self,
        wants: &Wants,
        sink: &mut dyn FnMut(Hash, Option<Vec<u8>>) -> Result<(), SyncError>,
    ) -> Result<(), SyncError> {
        self.inner.serve_chunks(wants, sink)
    }
    fn apply(
        &mut self,
        ops: Vec<Op>,
        foreign: &Foreign,
        provider: &mut dyn Provider,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Applied, SyncError> {
        let mut keep = Vec::new();
        let mut index = Vec::new();
        let mut refused = Vec::new();
        // Its own changes, as its index holds them (not the whole index:
        // only those paths are looked up).
        let local = match &self.receive_only {
            Some(lc) if !lc.paths.is_empty() => {
                let paths: Vec<String> = lc.paths.iter().cloned().collect();
                Some(self.inner.entries_at(&paths, &[])?)
            }
            _ => None,
        };
        for (i, op) in ops.into_iter().enumerate() {
            let why = self
                .refusal(&op.path)
                .or_else(|| local.as_ref().and_then(|local| self.kept_here(&op, local)));
            match why {
                Some(why) => refused.push(Issue {
                    path: op.path.clone(),
                    message: why,
                }),
                None => {
                    keep.push(op);
                    index.push(i);
                }
            }
        }
        let mut applied = if keep.is_empty() {
            Applied::default()
        } else {
            self.inner.apply(keep, foreign, provider, progress)?
        };
        for d in &mut applied.done {
            d.0 = index[d.0];
        }
        if let Some(lc) = &mut self.receive_only {
            // A remote version replaced these (the peers came to the same
            // state, or a revert): they are no longer the folder's own.
            let before = lc.paths.len();
            for (_, e) in &applied.done {
                lc.paths.remove(&e.path);
            }
            for e in &applied.errors {
                lc.failed.insert(e.path.clone());
            }
            if lc.paths.len() != before {
                lc.save()?;
            }
        }
        self.refresh();
        applied.errors.extend(refused);
        Ok(applied)
    }
    fn finish(&mut self, fin: &weave_engine::Finish) -> Result<(), SyncError> {
        self.inner.finish(fin)?;
        if let (Some(lc), Some(_)) = (&mut self.receive_only, &self.reverting) {
            // Reverted: what is left of its own changes is what failed.
            let failed = std::mem::take(&mut lc.failed);
            lc.paths.retain(|p| failed.contains(p));
            lc.save()?;
        }
        self.refresh();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weave_engine::Kind;
    use weave_fs::Files;

    /// `rm -rf` of a folder's content, its state included, while its scan
    /// runs: the scan fails instead of taking every file for deleted.
    #[test]
    fn a_scan_whose_folder_vanished_meanwhile_fails() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("docs");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("a.txt"), "a").unwrap();
        let open = || {
            let mut g = Guarded::new(Files.open(&root, "docs", false).unwrap());
            g.root = Some((
                root.clone(),
                RootId::of(&root).unwrap(),
                Files.state_dir(&root),
            ));
            g
        };
        let mut g = open();
        g.scan(&IgnoreSpec::default(), false).unwrap();
        drop(g);
        let mut g = open();
        std::fs::remove_file(root.join("a.txt")).unwrap();
        std::fs::remove_dir_all(Files.state_dir(&root)).unwrap();
        let e = g.scan(&IgnoreSpec::default(), false).unwrap_err();
        assert!(e.to_string().contains("vanished during the scan"), "{e}");
    }
}
