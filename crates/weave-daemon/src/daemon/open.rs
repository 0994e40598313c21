//! Opening a folder's replica: behind its own rules (send-only,
//! receive-only, sub-folders), its scan limited to what the watcher saw
//! change.

use super::shared::FolderRt;
use crate::config::{Config, Folder, Mode};
use crate::guard::Guarded;
use crate::root::RootId;
use std::time::{Duration, Instant};
use weave_engine::{Kind, Replica, SyncError};
use weave_fs::Files;

/// What an open folder's scan took from its touched paths (None: it scans
/// everything), to give back if the sync fails.
pub(super) type Taken = Option<Vec<String>>;

/// Opens the folder's replica, behind its own rules, its scan limited to
/// what the watcher saw change.
pub(super) fn open_folder(
    cfg: &Config,
    f: &Folder,
    rt: &FolderRt,
) -> Result<(Box<dyn Replica>, Taken), SyncError> {
    open_folder_as(cfg, f, rt, false)
}

/// Opens the folder's replica as [`open_folder`] does; `reverting`: a
/// receive-only folder that reverts its local changes in this sync (see
/// `Guarded::reverting`).
pub(super) fn open_folder_as(
    cfg: &Config,
    f: &Folder,
    rt: &FolderRt,
    reverting: bool,
) -> Result<(Box<dyn Replica>, Taken), SyncError> {
    if !f.path.is_dir() {
        return Err(SyncError::Usage(format!(
            "folder {}: {} is not a directory (unmounted? removed?); it is not synced until it is back, so that nothing is deleted on its peers",
            f.id,
            f.path.display()
        )));
    }
    let canon = Files.check(std::slice::from_ref(&f.path), &f.ignore)?;
    let root = RootId::of(&canon[0]);
    let rep = Files.open(&canon[0], &f.id, false)?;
    let mut g = Guarded::new(rep);
    g.root = root.map(|id| (canon[0].clone(), id, Files.state_dir(&canon[0])));
    g.send_only = f.mode == Mode::SendOnly;
    if f.mode == Mode::ReceiveOnly && reverting {
        g.reverting(&Files.state_dir(&canon[0]));
    } else if f.mode == Mode::ReceiveOnly {
        g.receive_only(&Files.state_dir(&canon[0]));
    }
    g.excluded = cfg.subfolders(f);
    g.patterns = f.ignore.clone();
    let taken = rt
        .touched
        .take(Duration::from_millis(f.watch_delay_ms), Instant::now());
    if let (Some(paths), Some(tree)) = (&taken, g.local()) {
        tree.limit_scan(paths.clone());
    }
    Ok((Box::new(g), taken))
}
