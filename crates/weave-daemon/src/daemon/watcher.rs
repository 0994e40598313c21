//! The file-system watcher: what it sees change goes to the folders'
//! touched paths, and wakes their tasks after the watch delay. A folder
//! root removed and made again is watched again.

use super::shared::{FolderRt, Shared};
use crate::config::Config;
use crate::root::RootId;
use notify::{Event, EventKind};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

/// Fallback rescan when the watcher cannot watch a folder.
pub(super) const UNWATCHED_RESCAN: Duration = Duration::from_secs(60);

/// The file-system watcher (notify), one for every folder.
///
/// A watch is on a directory, not on a path: when a folder's root is
/// removed (or unmounted) its watch goes with it, and a directory made
/// again at the path is not watched. So the roots are looked at on every
/// tick of the daemon ([`Watcher::check_roots`]): a root that vanished or
/// was replaced is dropped, and watched again (after a full scan) once a
/// directory is back at its path.
pub(super) struct Watcher {
    inner: Option<notify::RecommendedWatcher>,
    /// The watched roots: their folder, and the directory watched.
    watched: HashMap<PathBuf, (String, RootId)>,
    /// Roots missing (removed, unmounted): watched once they are back.
    missing: HashMap<PathBuf, String>,
    roots: Roots,
    /// Roots whose removal or move the watcher reported.
    gone: Gone,
}

/// The watched folders: (id, root), the root as the watcher names it.
type Roots = Arc<RwLock<Vec<(String, PathBuf)>>>;

/// Roots the watcher saw removed or moved, for the next look at the roots.
type Gone = Arc<Mutex<HashSet<PathBuf>>>;

impl Watcher {
    pub(super) fn new(sh: &Arc<Shared>) -> Watcher {
        let roots: Roots = Arc::default();
        let gone: Gone = Arc::default();
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
        sh.rt
            .spawn(events(sh.clone(), roots.clone(), gone.clone(), rx));
        Watcher {
            inner,
            watched: HashMap::new(),
            missing: HashMap::new(),
            roots,
            gone,
        }
    }

    pub(super) fn follow(&mut self, sh: &Arc<Shared>, cfg: &Config) {
        use notify::Watcher as _;
        let want: HashMap<PathBuf, String> = cfg
            .folders
            .iter()
            .filter(|f| f.mode != crate::config::Mode::ReceiveEncrypted)
            .map(|f| {
                (
                    std::fs::canonicalize(&f.path).unwrap_or_else(|_| f.path.clone()),
                    f.id.clone(),
                )
            })
            .collect();
        *self.roots.write().expect("roots") =
            want.iter().map(|(p, id)| (id.clone(), p.clone())).collect();
        self.missing.retain(|p, _| want.contains_key(p));
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
            if self.watched.contains_key(p) || self.missing.contains_key(p) {
                continue;
            }
            self.arm(sh, p, id);
        }
    }

    /// Watches folder `id`'s root `p`, and has the folder scanned in full
    /// once the watch is there.
    fn arm(&mut self, sh: &Arc<Shared>, p: &Path, id: &str) {
        use notify::Watcher as _;
        let Some(w) = self.inner.as_mut() else {
            return;
        };
        let Some(root) = RootId::of(p) else {
            self.lost(sh, p, id);
            return;
        };
        // A watch the watcher still holds for the path (a root replaced
        // before its removal was seen) is dropped first.
        let _ = w.unwatch(p);
        match w.watch(p, notify::RecursiveMode::Recursive) {
            Ok(()) => {
                self.watched.insert(p.to_path_buf(), (id.to_string(), root));
                if let Some(rt) = sh.folder_rt(id) {
                    rt.unwatched.store(false, Ordering::SeqCst);
                    // What changed before the watch was there is found
                    // by a full scan after it.
                    rt.poke(true);
                }
            }
            Err(e) if RootId::of(p).is_none() => {
                debug!(
                    "folder {id}: {} went while being watched ({e})",
                    p.display()
                );
                self.lost(sh, p, id);
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
                    rt.poke(true);
                }
            }
        }
    }

    /// Folder `id`'s root `p` is missing: it is watched again once back.
    /// Its folder is checked now, which shows that it is missing (its
    /// scans and syncs refuse a missing root, so nothing of it is taken
    /// for deleted).
    fn lost(&mut self, sh: &Arc<Shared>, p: &Path, id: &str) {
        warn!(
            "folder {id}: its directory {} is missing (removed or unmounted); it is not synced, and nothing is deleted on its peers, until a directory is back there",
            p.display()
        );
        self.missing.insert(p.to_path_buf(), id.to_string());
        if let Some(rt) = sh.folder_rt(id) {
            rt.poke(true);
        }
    }

    /// Looks at every folder's root (a stat each): a root removed,
    /// unmounted or replaced since it was watched loses its watch, and a
    /// root that is back is watched again and scanned in full.
    pub(super) fn check_roots(&mut self, sh: &Arc<Shared>) {
        use notify::Watcher as _;
        let gone = std::mem::take(&mut *self.gone.lock().expect("gone"));
        let changed: Vec<(PathBuf, String)> = self
            .watched
            .iter()
            .filter(|(p, (_, was))| gone.contains(*p) || RootId::of(p).as_ref() != Some(was))
            .map(|(p, (id, _))| (p.clone(), id.clone()))
            .collect();
        for (p, id) in changed {
            if let Some(w) = self.inner.as_mut() {
                let _ = w.unwatch(&p);
            }
            self.watched.remove(&p);
            if RootId::of(&p).is_some() {
                info!(
                    "folder {id}: its directory {} was replaced; watching the new one",
                    p.display()
                );
                self.arm(sh, &p, &id);
            } else {
                self.lost(sh, &p, &id);
            }
        }
        let back: Vec<(PathBuf, String)> = self
            .missing
            .iter()
            .filter(|(p, _)| RootId::of(p).is_some())
            .map(|(p, id)| (p.clone(), id.clone()))
            .collect();
        for (p, id) in back {
            self.missing.remove(&p);
            info!(
                "folder {id}: its directory {} is back; watching it again",
                p.display()
            );
            self.arm(sh, &p, &id);
        }
    }
}

/// Handles the watcher's events, for as long as it runs.
async fn events(
    sh: Arc<Shared>,
    roots: Roots,
    gone: Gone,
    mut rx: UnboundedReceiver<notify::Result<Event>>,
) {
    while let Some(ev) = rx.recv().await {
        match ev {
            Ok(ev) => {
                root_gone(&roots, &gone, &ev);
                changed(&sh, &roots, &ev)
            }
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

/// Notes the roots event `ev` removed or moved away (their watches are
/// gone with them).
fn root_gone(roots: &Roots, gone: &Gone, ev: &Event) {
    use notify::event::ModifyKind;
    if !matches!(
        ev.kind,
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
    ) {
        return;
    }
    let roots = roots.read().expect("roots");
    for p in &ev.paths {
        if roots.iter().any(|(_, r)| r == p) {
            gone.lock().expect("gone").insert(p.clone());
        }
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
///
/// The path is looked at (a `stat`) only when the event leaves open what
/// it is: a burst of new files makes several events each, and the user's
/// own copy shares the machine with this.
fn touch(rt: &FolderRt, ev: &Event, p: &Path, rel: String, now: Instant) {
    use notify::event::{CreateKind, ModifyKind};
    if rel == weave_core::ignore::IGNORE_FILE {
        // What is ignored changed: only a full scan knows, and every peer
        // syncs again (a sync plans with both sides' ignore files, so the
        // first one after a change may still have used the old).
        rt.touched.everything();
        rt.resync.store(true, Ordering::SeqCst);
        return;
    }
    let made_dir = matches!(ev.kind, EventKind::Create(CreateKind::Folder));
    if !made_dir && !rt.touched.wants_a_look(&rel) {
        // A full scan is due (a burst), or the file is known to be large:
        // a stat would tell nothing more.
        let written = writes_data(&ev.kind).then_some(crate::touched::LARGE_FILE);
        rt.touched.add(rel, written, now);
        return;
    }
    let meta = || std::fs::symlink_metadata(p).ok();
    match ev.kind {
        EventKind::Create(CreateKind::Folder) => rt.touched.add_dir(rel, now),
        // A new file holds nothing yet.
        EventKind::Create(CreateKind::File) => rt.touched.add(rel, Some(0), now),
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(_)) => match meta() {
            Some(m) if m.is_dir() => rt.touched.add_dir(rel, now),
            m => {
                let written = m.filter(|m| writes_data(&ev.kind) && m.is_file());
                rt.touched.add(rel, written.map(|m| m.len()), now)
            }
        },
        ref k if writes_data(k) => {
            let written = meta().filter(|m| m.is_file()).map(|m| m.len());
            rt.touched.add(rel, written, now)
        }
        _ => rt.touched.add(rel, None, now),
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
