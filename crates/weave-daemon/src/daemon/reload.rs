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

/// How often the config file (and every folder's root) is looked at.
const CONFIG_POLL: Duration = Duration::from_millis(500);

/// Reads the config again and makes the daemon follow it.
pub(super) fn apply_config(sh: &Arc<Shared>, cfg: Config, watcher: &mut Watcher) {
    {
        let mut a = sh.allowed.write().expect("allowed");
        // A paused peer's connections are refused.
        *a = cfg
            .peers
            .iter()
            .filter(|p| !p.paused)
            .map(|p| p.id)
            .collect::<HashSet<_>>();
    }
    sh.board.configure(&cfg);
    let old = std::mem::replace(&mut *sh.cfg.write().expect("config"), Arc::new(cfg.clone()));
    follow_peers(sh, &old, &cfg);
    let mut folders = sh.folders.lock().expect("folders");
    // A receive-encrypted folder has no task: it is a store of encrypted
    // objects its peers read and write (`host::DaemonHost::objects`).
    let runs = |f: &&crate::config::Folder| f.mode != crate::config::Mode::ReceiveEncrypted;
    folders.retain(|id, rt| {
        let keep = cfg.folder(id).filter(runs).is_some();
        if !keep {
            rt.stopped.store(true, Ordering::SeqCst);
            rt.wake.notify_one();
            info!("folder {id}: no longer configured; stopped");
        }
        keep
    });
    for f in cfg.folders.iter().filter(runs) {
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

/// Ends the links of peers that are gone or have new addresses; a peer
/// with new addresses is dialled at once (its back-offs are dropped and
/// its folders woken).
fn follow_peers(sh: &Shared, old: &Config, new: &Config) {
    // A peer that a folder no longer shares in clear with (made untrusted,
    // or the folder unshared) loses its link: the sessions under way end
    // now, not when they are done.
    let in_clear = |cfg: &Config, f: &str, p: &str| {
        cfg.folder(f).is_some_and(|g| {
            g.mode != crate::config::Mode::ReceiveEncrypted
                && g.peers.iter().any(|n| n == p)
                && !g.untrusted.iter().any(|n| n == p)
        })
    };
    for p in &old.peers {
        let paused = !p.paused && new.peer_by_id(p.id).is_some_and(|n| n.paused);
        if let Some(l) = paused.then(|| super::conn::live_link(sh, p.id)).flatten() {
            info!("peer {}: paused; its link ends", p.name);
            l.kill();
        }
        if paused {
            for rt in sh.all_folders() {
                rt.backoff.lock().expect("backoff").remove(&p.id);
            }
        }
        let lost = old
            .folders
            .iter()
            .any(|f| in_clear(old, &f.id, &p.name) && !in_clear(new, &f.id, &p.name));
        if let Some(l) = lost.then(|| super::conn::live_link(sh, p.id)).flatten() {
            info!(
                "peer {}: a folder no longer shared in clear with it; its link ends",
                p.name
            );
            l.kill();
        }
    }
    for p in &old.peers {
        let now = new.peer_by_id(p.id);
        let moved = now.is_some_and(|n| n.addresses != p.addresses);
        if now.is_some() && !moved {
            continue;
        }
        if let Some(l) = super::conn::live_link(sh, p.id) {
            if now.is_none() || l.dialled {
                info!(
                    "peer {}: {}; its link ends",
                    p.name,
                    if moved { "new addresses" } else { "removed" }
                );
                l.kill();
            }
        }
        if moved {
            for rt in sh.all_folders() {
                rt.backoff.lock().expect("backoff").remove(&p.id);
                rt.synced.lock().expect("synced").remove(&p.id);
            }
        }
    }
}

fn file_stamp(p: &Path) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Follows the config file, and the folders' roots, until SIGINT or
/// SIGTERM.
pub(super) async fn follow_config(
    sh: &Arc<Shared>,
    watcher: &mut Watcher,
    (mut sigterm, mut sigint): (tokio::signal::unix::Signal, tokio::signal::unix::Signal),
) {
    let cfg_path = Config::path(&sh.dir);
    let mut stamp = file_stamp(&cfg_path);
    loop {
        tokio::select! {
            _ = sigint.recv() => return,
            _ = sigterm.recv() => return,
            _ = tokio::time::sleep(CONFIG_POLL) => {
                let now = file_stamp(&cfg_path);
                if now != stamp {
                    stamp = now;
                    reload(sh, watcher);
                }
                watcher.check_roots(sh);
            }
        }
    }
}

/// The config file changed: follows it if it is usable and differs.
fn reload(sh: &Arc<Shared>, watcher: &mut Watcher) {
    match Config::load(&sh.dir, sh.me.id) {
        Ok(c) if c != *sh.cfg() => {
            info!("the config changed; following it");
            apply_config(sh, c, watcher);
        }
        Ok(_) => {}
        Err(e) => {
            warn!("the config changed but cannot be used, so the old one stays: {e}");
            sh.board.error(None, None, e.to_string());
        }
    }
}
