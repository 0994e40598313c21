//! A tree's old versions: what a run replaced or removed (or an
//! interrupted run left in the trash) goes into the version store
//! (weave-store), which then applies its retention policy.

use super::LocalReplica;
use weave_chunk::ChunkList;
use weave_core::path::STATE_DIR;
use weave_core::{Hash, Object};
use weave_engine::Issue;

impl LocalReplica {
    /// Saves the versions a run replaced or removed (still in the trash)
    /// in the version store, then applies its retention policy. A removed
    /// file whose content this run wrote elsewhere (a rename) lives on and
    /// is not saved. Returns what could not be kept.
    pub(super) fn keep_versions(
        &self,
        replaced: &[crate::Replaced],
        written: &std::collections::HashSet<Hash>,
    ) -> Vec<Issue> {
        let mut issues = Vec::new();
        let mut picked = Vec::new();
        for r in replaced {
            let Object::File { content, .. } = &r.old.object else {
                continue;
            };
            if r.deleted && written.contains(content) {
                continue;
            }
            match self.list(content) {
                Some(l) => picked.push((r, l)),
                None => issues.push(Issue {
                    path: r.path.clone(),
                    message: "its old version was not kept: its chunk list is unknown".into(),
                }),
            }
        }
        issues.extend(self.save_versions(&picked));
        issues
    }

    /// Saves old versions (each with its chunk list) in the version store
    /// and applies the retention policy. Returns what could not be kept.
    fn save_versions(&self, picked: &[(&crate::Replaced, ChunkList)]) -> Vec<Issue> {
        if picked.is_empty() {
            return Vec::new();
        }
        let state = self.root.join(STATE_DIR);
        let store = match weave_store::Store::open(&state) {
            Ok(s) => s,
            Err(e) => {
                return vec![Issue {
                    path: String::new(),
                    message: format!("old versions were not kept: {e}"),
                }]
            }
        };
        let mut issues = Vec::new();
        let items: Vec<weave_store::ToSave> = picked
            .iter()
            .map(|(r, l)| weave_store::ToSave {
                path: &r.path,
                file: &r.file,
                chunks: l,
                mode: r.old.mode,
                mtime_ns: r.old.mtime_ns,
                origin: r.old.origin,
                meta: r.old.meta.as_deref(),
                reason: if r.deleted {
                    weave_store::Reason::Deleted
                } else {
                    weave_store::Reason::Replaced
                },
                trusted: r.stat.is_some_and(|s| !s.racy),
                movable: true,
            })
            .collect();
        let t = std::time::Instant::now();
        match store.save(&items) {
            Ok(results) => {
                for ((r, _), res) in picked.iter().zip(results) {
                    if let Err(m) = res {
                        issues.push(Issue {
                            path: r.path.clone(),
                            message: format!("its old version was not kept: {m}"),
                        });
                    }
                }
            }
            Err(e) => issues.push(Issue {
                path: String::new(),
                message: format!("old versions were not kept: {e}"),
            }),
        }
        if let Err(e) = store.prune(weave_store::now_ns()) {
            issues.push(Issue {
                path: String::new(),
                message: format!("old versions were not pruned: {e}"),
            });
        }
        tracing::debug!(versions = items.len(), elapsed = ?t.elapsed(), "kept old versions");
        issues
    }

    /// Saves the old versions an interrupted run moved to the trash and
    /// did not get to save (read again and hashed: nothing vouches for
    /// them now), then empties the trash. Returns how many were kept and
    /// what could not be.
    pub(super) fn keep_leftovers(&self) -> (usize, Vec<Issue>) {
        let left = crate::trash_leftovers(&self.root);
        if left.is_empty() {
            return (0, Vec::new());
        }
        let state = self.root.join(STATE_DIR);
        let known = weave_store::Store::open(&state).ok();
        let mut issues = Vec::new();
        let mut picked = Vec::new();
        for r in &left {
            let list = match std::fs::File::open(&r.file).and_then(weave_chunk::chunk_reader) {
                Ok(l) => l,
                Err(e) => {
                    issues.push(Issue {
                        path: r.path.clone(),
                        message: format!(
                            "an interrupted sync's old version of it was not kept: cannot read {}: {e}",
                            r.file.display()
                        ),
                    });
                    continue;
                }
            };
            // Saved already (the run was killed while saving)?
            let content = list.content_id();
            let saved = known.as_ref().is_some_and(|s| {
                s.versions(&r.path).is_ok_and(|vs| {
                    vs.iter()
                        .any(|v| v.content == content && v.mtime_ns == r.old.mtime_ns)
                })
            });
            if !saved {
                picked.push((r, list));
            }
        }
        drop(known);
        let n = picked.len();
        issues.extend(self.save_versions(&picked));
        if issues.is_empty() {
            crate::clear_trash(&self.root);
        }
        (n, issues)
    }
}
