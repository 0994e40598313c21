//! Following the config file: a changed config is applied while the
//! daemon runs (folders started and stopped, peers allowed or refused).

use super::folder::folder_task;
use super::shared::{FolderRt, Shared};
use super::watcher::Watcher;
use crate::config::Config;
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How often the config file is looked at.
pub(super) const CONFIG_POLL: Duration = Duration::from_millis(500);

/// Reads the config again and makes the daemon follow it.
pub(super) fn apply_config(sh: &Arc<Shared>, cfg: Config, watcher: &mut Watcher) {
    {
        let mut a = sh.allowed.write().expect("allowed");
        *a = cfg.peers.iter().map(|p| p.id).collect::<HashSet<_>>();
    }
    sh.board.configure(&cfg);
    *sh.cfg.write().expect("config") = Arc::new(cfg.clone());
    let mut folders = sh.folders.lock().expect("folders");
    folders.retain(|id, rt| {
        let keep = cfg.folder(id).is_some();
        if !keep {
            rt.stopped.store(true, Ordering::SeqCst);
            rt.wake.notify_one();
            info!("folder {id}: no longer configured; stopped");
        }
        keep
    });
    for f in &cfg.folders {
        let rt = match folders.get(&f.id) {
            Some(rt) => rt.clone(),
            None => {
                let rt = Arc::new(FolderRt::new(&f.id));
                folders.insert(f.id.clone(), rt.clone());
                info!(
                    "folder {} at {}: shared with {:?}",
                    f.id,
                    f.path.display(),
                    f.peers
                );
                sh.rt.spawn(folder_task(sh.clone(), rt.clone()));
                rt
            }
        };
        rt.poke(true);
    }
    drop(folders);
    watcher.follow(sh, &cfg);
}

pub(super) fn file_stamp(p: &Path) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}
