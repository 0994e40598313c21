//! The file-system watcher: what it sees change goes to the folders'
//! touched paths, and wakes their tasks after the watch delay.

use super::shared::{FolderRt, Shared};
use crate::config::Config;
use notify::{Event, EventKind};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

/// Fallback rescan when the watcher cannot watch a folder.
pub(super) const UNWATCHED_RESCAN: Duration = Duration::from_secs(60);

/// The file-system watcher (notify), one for every folder.
pub(super) struct Watcher {
    inner: Option<notify::RecommendedWatcher>,
    watched: HashMap<PathBuf, String>,
    roots: Roots,
}

/// The watched folders: (id, root), the root as the watcher names it.
type Roots = Arc<RwLock<Vec<(String, PathBuf)>>>;

impl Watcher {
    pub(super) fn new(sh: &Arc<Shared>) -> Watcher {
        let roots: Roots = Arc::default();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<notify::Result<notify::Event>>();
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
        sh.rt.spawn(events(sh.clone(), roots.clone(), rx));
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

/// Handles the watcher's events, for as long as it runs.
async fn events(sh: Arc<Shared>, roots: Roots, mut rx: UnboundedReceiver<notify::Result<Event>>) {
    while let Some(ev) = rx.recv().await {
        match ev {
            Ok(ev) => changed(&sh, &roots, &ev),
            Err(e) => failed(&sh, &roots, &e),
        }
    }
}

/// A directory that could not be watched (the watch limit, most likely):
/// its folder goes back to full rescans.
fn failed(sh: &Shared, roots: &Roots, e: &notify::Error) {
    let roots = roots.read().expect("roots").clone();
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
        let Some(rt) = sh.folder_rt(&id) else {
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
}

/// Paths changed: their folders note them (or that only a full scan
/// knows), and are woken after their watch delay.
fn changed(sh: &Shared, roots: &Roots, ev: &Event) {
    if matches!(ev.kind, EventKind::Access(_)) && !writes_data(&ev.kind) {
        return;
    }
    let roots = roots.read().expect("roots").clone();
    let now = Instant::now();
    let mut hit: Vec<String> = Vec::new();
    for p in &ev.paths {
        let Some((id, rel)) = folder_of(&roots, p) else {
            continue;
        };
        let Some(rt) = sh.folder_rt(&id) else {
            continue;
        };
        if ev.need_rescan() {
            // The watcher lost events: only a full scan knows.
            rt.touched.everything();
        } else if let Some(rel) = rel {
            touch(&rt, ev, p, rel, now);
        }
        if !hit.contains(&id) {
            hit.push(id);
        }
    }
    if ev.paths.is_empty() && ev.need_rescan() {
        for rt in sh.all_folders() {
            rt.poke(true);
        }
    }
    for id in hit {
        if let Some(rt) = sh.folder_rt(&id) {
            wake_after_delay(sh, rt);
        }
    }
}

/// Notes path `p` (`rel` in folder `rt`), changed by event `ev`, for the
/// folder's next scan.
fn touch(rt: &FolderRt, ev: &Event, p: &Path, rel: String, now: Instant) {
    let meta = std::fs::symlink_metadata(p).ok();
    let appeared = matches!(
        ev.kind,
        EventKind::Create(_) | EventKind::Modify(notify::event::ModifyKind::Name(_))
    );
    if rel == weave_core::ignore::IGNORE_FILE {
        // What is ignored changed: only a full scan knows, and every peer
        // syncs again (a sync plans with both sides' ignore files, so the
        // first one after a change may still have used the old).
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

/// Marks folder `rt` dirty and wakes its task once its watch delay has
/// gathered the changes that follow (at once with no delay).
fn wake_after_delay(sh: &Shared, rt: Arc<FolderRt>) {
    let delay = sh
        .cfg()
        .folder(&rt.id)
        .map(|f| f.watch_delay_ms)
        .unwrap_or(50);
    rt.dirty.store(true, Ordering::SeqCst);
    if delay == 0 {
        rt.wake.notify_one();
    } else if !rt.gathering.swap(true, Ordering::SeqCst) {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            rt.gathering.store(false, Ordering::SeqCst);
            rt.wake.notify_one();
        });
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
    matches!(
        kind,
        EventKind::Create(CreateKind::File | CreateKind::Any)
            | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any)
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    )
}
