//! The file-system watcher: what it sees change goes to the folders'
//! touched paths, and wakes their tasks after the watch delay.

use super::shared::Shared;
use crate::config::Config;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Fallback rescan when the watcher cannot watch a folder.
pub(super) const UNWATCHED_RESCAN: Duration = Duration::from_secs(60);

/// The file-system watcher (notify), one for every folder.
pub(super) struct Watcher {
    inner: Option<notify::RecommendedWatcher>,
    watched: HashMap<PathBuf, String>,
    roots: Arc<RwLock<Vec<(String, PathBuf)>>>,
}

impl Watcher {
    pub(super) fn new(sh: &Arc<Shared>) -> Watcher {
        let roots: Arc<RwLock<Vec<(String, PathBuf)>>> = Arc::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<notify::Result<notify::Event>>();
        // Symlinks are not followed: a scan never looks through them.
        let inner = <notify::RecommendedWatcher as notify::Watcher>::new(
            move |ev| {
                let _ = tx.send(ev);
            },
            notify::Config::default().with_follow_symlinks(false),
        );
        let inner = match inner {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(
                    "cannot watch files ({e}); folders are rescanned every {}s instead",
                    UNWATCHED_RESCAN.as_secs()
                );
                None
            }
        };
        let sh2 = sh.clone();
        let roots2 = roots.clone();
        sh.rt.spawn(async move {
            while let Some(ev) = rx.recv().await {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        // A directory that could not be watched (the watch
                        // limit, most likely): its folder goes back to full
                        // rescans.
                        let roots = roots2.read().expect("roots").clone();
                        let mut ids: Vec<String> = e
                            .paths
                            .iter()
                            .filter_map(|p| folder_of(&roots, p).map(|(id, _)| id))
                            .collect();
                        if ids.is_empty() {
                            ids = roots.iter().map(|(id, _)| id.clone()).collect();
                        }
                        ids.dedup();
                        let limit = matches!(e.kind, notify::ErrorKind::MaxFilesWatch);
                        for id in ids {
                            let Some(rt) = sh2.folder_rt(&id) else {
                                continue;
                            };
                            if !rt.unwatched.swap(true, Ordering::SeqCst) {
                                if limit {
                                    warn!("folder {id}: {}", limit_hint());
                                } else {
                                    warn!(
                                        "folder {id}: the watcher failed ({e}); it is rescanned every {}s instead",
                                        UNWATCHED_RESCAN.as_secs()
                                    );
                                }
                            }
                            rt.poke(true);
                        }
                        continue;
                    }
                };
                if matches!(ev.kind, notify::EventKind::Access(_)) && !writes_data(&ev.kind) {
                    continue;
                }
                let roots = roots2.read().expect("roots").clone();
                let now = Instant::now();
                let mut hit: Vec<String> = Vec::new();
                for p in &ev.paths {
                    let Some((id, rel)) = folder_of(&roots, p) else {
                        continue;
                    };
                    let Some(rt) = sh2.folder_rt(&id) else {
                        continue;
                    };
                    if ev.need_rescan() {
                        // The watcher lost events: only a full scan knows.
                        rt.touched.everything();
                    } else if let Some(rel) = rel {
                        let meta = std::fs::symlink_metadata(p).ok();
                        let appeared = matches!(
                            ev.kind,
                            notify::EventKind::Create(_)
                                | notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
                        );
                        if rel == weave_fs::ignore::IGNORE_FILE {
                            // What is ignored changed: only a full scan knows,
                            // and every peer syncs again (a sync plans with
                            // both sides' ignore files, so the first one
                            // after a change may still have used the old).
                            rt.touched.everything();
                            rt.resync.store(true, Ordering::SeqCst);
                        } else if appeared && meta.as_ref().is_some_and(|m| m.is_dir()) {
                            rt.touched.add_dir(rel, now);
                        } else {
                            let written = meta
                                .filter(|m| writes_data(&ev.kind) && m.is_file())
                                .map(|m| m.len());
                            rt.touched.add(rel, written, now);
                        }
                    }
                    if !hit.contains(&id) {
                        hit.push(id);
                    }
                }
                if ev.paths.is_empty() && ev.need_rescan() {
                    for rt in sh2.all_folders() {
                        rt.poke(true);
                    }
                }
                for id in hit {
                    let Some(rt) = sh2.folder_rt(&id) else {
                        continue;
                    };
                    let delay = sh2
                        .cfg()
                        .folder(&id)
                        .map(|f| f.watch_delay_ms)
                        .unwrap_or(50);
                    rt.dirty.store(true, Ordering::SeqCst);
                    if delay == 0 {
                        rt.wake.notify_one();
                    } else if !rt.gathering.swap(true, Ordering::SeqCst) {
                        let rt = rt.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(delay)).await;
                            rt.gathering.store(false, Ordering::SeqCst);
                            rt.wake.notify_one();
                        });
                    }
                }
            }
        });
        Watcher {
            inner,
            watched: HashMap::new(),
            roots,
        }
    }

    pub(super) fn follow(&mut self, sh: &Arc<Shared>, cfg: &Config) {
        use notify::Watcher as _;
        let want: HashMap<PathBuf, String> = cfg
            .folders
            .iter()
            .map(|f| {
                (
                    std::fs::canonicalize(&f.path).unwrap_or_else(|_| f.path.clone()),
                    f.id.clone(),
                )
            })
            .collect();
        *self.roots.write().expect("roots") =
            want.iter().map(|(p, id)| (id.clone(), p.clone())).collect();
        let Some(w) = self.inner.as_mut() else {
            for id in want.values() {
                if let Some(rt) = sh.folder_rt(id) {
                    rt.unwatched.store(true, Ordering::SeqCst);
                }
            }
            return;
        };
        for p in self.watched.keys().cloned().collect::<Vec<_>>() {
            if !want.contains_key(&p) {
                let _ = w.unwatch(&p);
                self.watched.remove(&p);
            }
        }
        for (p, id) in &want {
            if self.watched.contains_key(p) {
                continue;
            }
            match w.watch(p, notify::RecursiveMode::Recursive) {
                Ok(()) => {
                    self.watched.insert(p.clone(), id.clone());
                    if let Some(rt) = sh.folder_rt(id) {
                        rt.unwatched.store(false, Ordering::SeqCst);
                        // What changed before the watch was there is found
                        // by a full scan after it.
                        rt.poke(true);
                    }
                }
                Err(e) => {
                    let limit = matches!(e.kind, notify::ErrorKind::MaxFilesWatch);
                    if limit {
                        warn!("folder {id}: {}", limit_hint());
                    } else {
                        warn!(
                            "folder {id}: cannot watch {} ({e}); it is rescanned every {}s instead",
                            p.display(),
                            UNWATCHED_RESCAN.as_secs()
                        );
                    }
                    if let Some(rt) = sh.folder_rt(id) {
                        rt.unwatched.store(true, Ordering::SeqCst);
                    }
                }
            }
        }
    }
}

/// Which folder a changed path belongs to (the deepest folder holding
/// it), and the path relative to it ("/"-separated; None when it is not
/// UTF-8, which no scan syncs).
fn folder_of(folders: &[(String, PathBuf)], path: &Path) -> Option<(String, Option<String>)> {
    if path.components().any(|c| c.as_os_str() == ".weave") {
        return None;
    }
    let (id, root) = folders
        .iter()
        .filter(|(_, root)| path.starts_with(root))
        .max_by_key(|(_, root)| root.as_os_str().len())?;
    let rel = path.strip_prefix(root).ok().and_then(|r| {
        let parts: Option<Vec<&str>> = r.components().map(|c| c.as_os_str().to_str()).collect();
        parts.map(|p| p.join("/"))
    });
    Some((id.clone(), rel))
}

/// What to do when the inotify watch limit is reached.
fn limit_hint() -> String {
    format!(
        "the inotify watch limit is reached; it is rescanned every {}s instead. Raise the limit with `sudo sysctl fs.inotify.max_user_watches=1048576` (and in /etc/sysctl.d to keep it)",
        UNWATCHED_RESCAN.as_secs()
    )
}

/// Whether a watcher event wrote a file's data (its size is looked up).
fn writes_data(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
    use notify::EventKind;
    matches!(
        kind,
        EventKind::Create(CreateKind::File | CreateKind::Any)
            | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any)
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    )
}
