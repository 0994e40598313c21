//! What a user asks of a folder through the API, done by the folder's
//! task: revert a receive-only folder's local changes (take the peers'
//! versions again), or override the peers' changes to a send-only folder
//! (make this device's versions win on them again).
//!
//! Reverting is a pair sync in which the folder is a backup of its peer
//! (`weave_engine::Roles`): the plan is the peer's state, and the folder
//! is brought to it. Overriding cannot be a sync with the roles swapped:
//! a peer brought back to this device's old version vectors would take
//! its own change again from any device that has it. So this device
//! makes new versions instead: for every path where the peer holds a
//! version this device's does not dominate, this device's version (or a
//! tombstone, where it has nothing) gets a vector past both, bumped by
//! this device — a change of its own like any other, which wins on the
//! peer and everywhere the peer's version went, and then goes out in an
//! ordinary pair sync.

use super::open::open_folder;
use super::pair::{open_remote, sync_options, sync_pair, PairKind};
use super::shared::{FolderRt, Shared};
use crate::config::{Config, Folder, Mode, Peer};
use crate::guard::local_changes;
use crate::status::{Answer, FolderAction};
use crate::DaemonError;
use std::collections::BTreeMap;
use std::sync::Arc;
use weave_core::ignore::Matcher;
use weave_core::vv::Causality;
use weave_core::{Entry, LocalEntry, Object, ReplicaId};
use weave_engine::{IgnoreSpec, Kind, Replica};
use weave_fs::Files;

/// A user's request, and where its answer goes.
pub(super) type Request = (FolderAction, tokio::sync::oneshot::Sender<Answer>);

/// How long a user's request waits for the folder's task.
const ASK_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// Asks folder `id`'s task to do `action`, and waits for its answer.
pub(super) async fn ask(sh: &Shared, id: &str, action: FolderAction) -> Answer {
    let cfg = sh.cfg();
    let Some(f) = cfg.folder(id) else {
        return Answer::refused(format!(
            "no folder has the id {id:?} here (`weave folder list` lists them)"
        ));
    };
    let (want, what) = match action {
        FolderAction::Revert => (
            Mode::ReceiveOnly,
            "`weave folder revert` is for receive-only folders (it drops their local changes)",
        ),
        FolderAction::Override => (
            Mode::SendOnly,
            "`weave folder override` is for send-only folders (it undoes their peers' changes)",
        ),
    };
    if f.mode != want {
        return Answer::refused(format!("folder {id} is {} here; {what}", f.mode));
    }
    if f.paused {
        return Answer::refused(format!(
            "folder {id} is paused; `weave resume {id}` first, then ask again"
        ));
    }
    let Some(rt) = sh.folder_rt(id) else {
        return Answer::refused(format!(
            "folder {id} is not running yet; try again in a moment"
        ));
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    rt.asked.lock().expect("asked").push((action, tx));
    rt.wake.notify_one();
    match tokio::time::timeout(ASK_WAIT, rx).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => Answer::refused(format!(
            "folder {id} stopped (the daemon is stopping, or the folder was removed) before it was done; run it again once the daemon runs"
        )),
        Err(_) => Answer::refused(format!(
            "folder {id}: no answer in {} minutes; it may still be under way (`weave status` shows the folder)",
            ASK_WAIT.as_secs() / 60
        )),
    }
}

/// Does `action` to folder `f` (with its `peers`), and says how it went.
pub(super) fn run(
    sh: &Arc<Shared>,
    rt: &FolderRt,
    cfg: &Config,
    f: &Folder,
    peers: &[Peer],
    action: FolderAction,
) -> Answer {
    if peers.is_empty() {
        let what = match action {
            FolderAction::Revert => "take",
            FolderAction::Override => "override",
        };
        if f.remote.is_some() || !f.untrusted.is_empty() {
            return Answer::refused(format!(
                "folder {} syncs with no trusted peer, only through its encrypted remotes, and `weave folder {}` works with peers only so far; nothing was changed",
                f.id,
                match action {
                    FolderAction::Revert => "revert",
                    FolderAction::Override => "override",
                },
            ));
        }
        return Answer::refused(format!(
            "folder {} is shared with no peer, so there are no peers' versions to {what}; share it first with `weave folder share {} PEER`",
            f.id, f.id
        ));
    }
    match action {
        FolderAction::Revert => revert(sh, rt, cfg, f, peers),
        FolderAction::Override => override_peers(sh, rt, cfg, f, peers),
    }
}

/// Reverts the folder's local changes with the first peer that answers.
fn revert(sh: &Arc<Shared>, rt: &FolderRt, cfg: &Config, f: &Folder, peers: &[Peer]) -> Answer {
    let state = Files.state_dir(&f.path);
    let before = local_changes(&state).len();
    let mut failed = Vec::new();
    for p in peers {
        match sync_pair(sh, rt, cfg, f, p, PairKind::Revert) {
            Ok(seq) => {
                rt.synced.lock().expect("synced").insert(p.id, seq);
                rt.backoff.lock().expect("backoff").remove(&p.id);
                let left = local_changes(&state).len();
                info!(
                    "folder {}: reverted with {}, {} local changes left",
                    f.id, p.name, left
                );
                return if left == 0 {
                    Answer::ok(format!(
                        "folder {}: {} local changes reverted; it holds {}'s versions again",
                        f.id, before, p.name
                    ))
                } else {
                    Answer::refused(format!(
                        "folder {}: {} of {} local changes reverted with {}'s versions; {} could not be (`weave status` lists them); try again",
                        f.id,
                        before.saturating_sub(left),
                        before,
                        p.name,
                        left
                    ))
                };
            }
            Err(e) => failed.push(format!("{}: {e}", p.name)),
        }
    }
    Answer::refused(format!(
        "folder {}: no peer could be reached to revert with ({}); the local changes stay. Try again once a peer is up",
        f.id,
        failed.join("; ")
    ))
}

/// Makes this device's versions win on every peer it reaches.
fn override_peers(
    sh: &Arc<Shared>,
    rt: &FolderRt,
    cfg: &Config,
    f: &Folder,
    peers: &[Peer],
) -> Answer {
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for p in peers {
        let pushed = outbump(sh, rt, cfg, f, p).and_then(|n| {
            match sync_pair(sh, rt, cfg, f, p, PairKind::Normal) {
                Ok(seq) => Ok((n, Some(seq))),
                // The new versions went, but for some paths: those the
                // folder shows, and the sync retries them.
                Err(DaemonError::Incomplete { .. }) => {
                    warn!("folder {}: override on {}: some paths did not go through; they are retried", f.id, p.name);
                    Ok((n, None))
                }
                Err(e) => Err(e),
            }
        });
        match pushed {
            Ok((n, seq)) => {
                // Only a sync that went through whole is done; the folder's
                // own checks retry the rest.
                if let Some(seq) = seq {
                    rt.synced.lock().expect("synced").insert(p.id, seq);
                    rt.backoff.lock().expect("backoff").remove(&p.id);
                } else {
                    rt.synced.lock().expect("synced").remove(&p.id);
                    rt.poke(false);
                }
                info!("folder {}: overrode {n} paths on {}", f.id, p.name);
                done.push(format!("{} ({n} paths)", p.name));
            }
            Err(e) => failed.push(format!("{}: {e}", p.name)),
        }
    }
    if done.is_empty() {
        return Answer::refused(format!(
            "folder {}: no peer could be reached to override ({}); nothing changed. Try again once a peer is up",
            f.id,
            failed.join("; ")
        ));
    }
    let mut msg = format!(
        "folder {}: this device's versions now win on {}",
        f.id,
        done.join(", ")
    );
    if !failed.is_empty() {
        msg.push_str(&format!(
            "; not reached: {} (run it again once they are up)",
            failed.join("; ")
        ));
    }
    Answer::ok(msg)
}

/// Gives this device's version of every path where `peer`'s version
/// would not lose to it a new version past both (see the module).
/// Returns how many paths got one.
fn outbump(
    sh: &Arc<Shared>,
    rt: &FolderRt,
    cfg: &Config,
    f: &Folder,
    peer: &Peer,
) -> Result<usize, DaemonError> {
    // Locks in device-id order, as in a pair sync.
    let mut guard = (sh.me.id < peer.id).then(|| rt.lock.clone().blocking_lock_owned());
    let (mut remote, _addr) = open_remote(sh, f, peer)?;
    if guard.is_none() {
        guard = Some(rt.lock.clone().blocking_lock_owned());
    }
    let (mut local, taken) = open_folder(cfg, f, rt)?;
    let spec = IgnoreSpec {
        files: [
            local.info().ignore_file.clone(),
            remote.info().ignore_file.clone(),
        ]
        .into_iter()
        .flatten()
        .collect(),
        patterns: sync_options(cfg, f).ignore,
    };
    let read = (|| {
        local.scan(&spec, false)?;
        remote.scan(&spec, false)?;
        Ok::<_, weave_engine::SyncError>((local.entries()?, remote.entries()?))
    })();
    let (ours, theirs) = match read {
        Ok(r) => r,
        Err(e) => {
            rt.give_back(taken);
            return Err(e.into());
        }
    };
    let matcher =
        Matcher::from_files(&spec.files, &spec.patterns).map_err(weave_engine::SyncError::from)?;
    let root = local.local().map(|t| t.root().to_path_buf());
    // The index is written directly: the replica lets go of it first.
    drop(local);
    drop(remote);
    let root = root.unwrap_or_else(|| f.path.clone());
    let mut index =
        weave_index::Index::open(&Files.state_dir(&root)).map_err(weave_engine::SyncError::from)?;
    let me = index.id();
    for le in theirs.values() {
        index.observe(le.entry.vv.get(me));
    }
    let entries = outbumped(
        &ours,
        &theirs,
        &|p, dir| matcher.is_ignored(p, dir),
        me,
        || index.tick(),
    );
    let mut batch = weave_index::Batch::default();
    for mut le in entries {
        le.seq = index.next_seq();
        batch.entries.push(le);
    }
    index.write(&batch).map_err(weave_engine::SyncError::from)?;
    drop(guard);
    Ok(batch.entries.len())
}

/// This replica's (`me`) new versions of the paths where `theirs` holds
/// a version that `ours` does not dominate and that differs from ours:
/// our entry (a tombstone where we have none), its vector past both and
/// bumped with a counter from `tick`, our clock (sequence numbers are
/// left to the caller). Ignored paths are left alone.
fn outbumped(
    ours: &BTreeMap<String, LocalEntry>,
    theirs: &BTreeMap<String, LocalEntry>,
    ignored: &dyn Fn(&str, bool) -> bool,
    me: ReplicaId,
    mut tick: impl FnMut() -> u64,
) -> Vec<LocalEntry> {
    let mut out = Vec::new();
    for (path, t) in theirs {
        if ignored(path, t.entry.object.is_dir()) {
            continue;
        }
        let mine = ours.get(path);
        let wins = mine.is_some_and(|o| {
            o.entry.vv.compare(&t.entry.vv) == Causality::Dominates || o.entry.same_state(&t.entry)
        });
        if wins || (mine.is_none() && t.entry.object.is_deleted()) {
            continue;
        }
        let mut le = mine.cloned().unwrap_or_else(|| LocalEntry {
            entry: Entry {
                path: path.clone(),
                object: Object::Deleted,
                mode: 0,
                mtime_ns: 0,
                vv: Default::default(),
                origin: me,
                meta: None,
            },
            seq: 0,
            stat: None,
        });
        let mut vv = le.entry.vv.merge(&t.entry.vv);
        vv.bump(me, tick());
        le.entry.vv = vv;
        le.entry.origin = me;
        out.push(le);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use weave_core::plan::decide;
    use weave_core::policy::ConflictPolicy;
    use weave_core::vv::VersionVector;
    use weave_core::Hash;

    const ME: ReplicaId = ReplicaId(1);
    const PEER: ReplicaId = ReplicaId(2);

    fn file(path: &str, byte: u8, vv: &[(ReplicaId, u64)], origin: ReplicaId) -> LocalEntry {
        entry(
            path,
            Object::File {
                size: 1,
                content: Hash([byte; 32]),
            },
            vv,
            origin,
        )
    }

    fn entry(path: &str, object: Object, vv: &[(ReplicaId, u64)], origin: ReplicaId) -> LocalEntry {
        LocalEntry {
            entry: Entry {
                path: path.into(),
                object,
                mode: 0o644,
                mtime_ns: i64::from(vv.len() as u8),
                vv: VersionVector::from_pairs(vv.to_vec()),
                origin,
                meta: None,
            },
            seq: 1,
            stat: None,
        }
    }

    fn map(v: Vec<LocalEntry>) -> BTreeMap<String, LocalEntry> {
        v.into_iter().map(|e| (e.entry.path.clone(), e)).collect()
    }

    #[test]
    fn our_versions_win_over_every_change_of_the_peer_and_nothing_else_moves() {
        let ours = map(vec![
            file("edited-there", 1, &[(ME, 5)], ME),
            file("deleted-there", 2, &[(ME, 6)], ME),
            file("same", 3, &[(ME, 7)], ME),
            file("newer-here", 4, &[(ME, 9), (PEER, 3)], ME),
            entry("deleted-here", Object::Deleted, &[(ME, 10)], ME),
            file("ignored", 5, &[(ME, 11)], ME),
        ]);
        let theirs = map(vec![
            file("edited-there", 9, &[(ME, 5), (PEER, 8)], PEER),
            entry(
                "deleted-there",
                Object::Deleted,
                &[(ME, 6), (PEER, 9)],
                PEER,
            ),
            file("same", 3, &[(ME, 7)], ME),
            file("newer-here", 4, &[(PEER, 3)], PEER),
            file("deleted-here", 7, &[(PEER, 4)], PEER),
            file("only-there", 8, &[(PEER, 5)], PEER),
            entry("gone-there", Object::Deleted, &[(PEER, 6)], PEER),
            file("ignored", 6, &[(ME, 11), (PEER, 12)], PEER),
        ]);
        let mut clock = 20;
        let out = outbumped(&ours, &theirs, &|p, _| p == "ignored", ME, || {
            clock += 1;
            clock
        });
        let paths: Vec<&str> = out.iter().map(|e| e.entry.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "deleted-here",
                "deleted-there",
                "edited-there",
                "only-there"
            ]
        );
        for le in &out {
            let t = &theirs[&le.entry.path];
            assert_eq!(le.entry.vv.compare(&t.entry.vv), Causality::Dominates);
            assert_eq!(le.entry.origin, ME);
            // The planner, wherever it runs, keeps our state.
            let d = decide(
                &le.entry.path,
                &[(ME, &le.entry), (PEER, &t.entry)],
                ConflictPolicy::KeepBoth,
            )
            .unwrap();
            assert!(d.conflict.is_none() && d.copies.is_empty());
            let want = ours
                .get(&le.entry.path)
                .map_or(Object::Deleted, |o| o.entry.object.clone());
            assert_eq!(d.result.object, want, "{}", le.entry.path);
        }
        // A counter each, from the clock, never reused.
        let counters: Vec<u64> = out.iter().map(|e| e.entry.vv.get(ME)).collect();
        assert_eq!(counters, vec![21, 22, 23, 24]);
    }
}
