//! A folder's own rules, enforced by the device that holds it whoever
//! drives the sync: a send-only folder takes no operation from anyone, and
//! no operation reaches a sub-folder that is configured as a folder of its
//! own (it syncs with its own peers). A receive-only folder never shows
//! its own changes: the paths it changed (found by its scans) are left out
//! of the index it shows, so no peer plans to take them, and a remote
//! version for such a path finds the local file in the way and is not
//! written (the local change stays; the folder reports it diverged). The
//! paths are remembered in `.weave/receive-only.json` until a remote
//! version replaces them. The rules sit in front of the local replica, so
//! a coordinator on another device cannot get round them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use weave_core::Hash;
use weave_core::Op;
use weave_engine::{
    Applied, Foreign, IgnoreSpec, Issue, Provider, Replica, ReplicaInfo, ScanSummary, SyncError,
    Wants,
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
}

/// The paths a receive-only folder changed itself.
struct LocalChanges {
    file: PathBuf,
    paths: BTreeSet<String>,
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
        }
    }

    /// Makes it receive-only; its state directory is `state`.
    pub fn receive_only(&mut self, state: &Path) {
        self.receive_only = Some(LocalChanges {
            file: state.join(LOCAL_CHANGES_FILE),
            paths: local_changes(state),
        });
    }

    fn refusal(&self, path: &str) -> Option<String> {
        if self.send_only {
            return Some(
                "not taken: this folder is send-only here (it sends its changes and takes none)"
                    .into(),
            );
        }
        self.excluded
            .iter()
            .find(|x| path == x.as_str() || path.starts_with(&format!("{x}/")))
            .map(|x| {
                format!("not taken: {x} is a folder of its own here, synced with its own peers")
            })
    }

    /// `e` without a receive-only folder's own changes.
    fn hide_own(&self, mut e: weave_engine::Entries) -> weave_engine::Entries {
        if let Some(lc) = &self.receive_only {
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
        self.inner.info()
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
        let grew = self.inner.info().seq > before;
        if let (Some(lc), true) = (self.receive_only.as_mut(), grew) {
            // What this scan recorded are the folder's own changes.
            let changed = self.inner.changed_since(before)?;
            lc.paths.extend(changed.keys().cloned());
            lc.save()?;
        }
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
        for (i, op) in ops.into_iter().enumerate() {
            match self.refusal(&op.path) {
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
            // A remote version replaced these: they are no longer the
            // folder's own. The others stay, and say why.
            let before = lc.paths.len();
            for (_, e) in &applied.done {
                lc.paths.remove(&e.path);
            }
            for e in &mut applied.errors {
                if lc.paths.contains(&e.path) {
                    e.message = "not taken: changed here, and this folder is receive-only (the local change stays and is not sent)".into();
                }
            }
            if lc.paths.len() != before {
                lc.save()?;
            }
        }
        applied.errors.extend(refused);
        Ok(applied)
    }
    fn finish(&mut self, fin: &weave_engine::Finish) -> Result<(), SyncError> {
        self.inner.finish(fin)
    }
}
