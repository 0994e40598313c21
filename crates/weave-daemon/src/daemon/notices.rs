//! A folder's notices: what its last sync with each peer did not take or
//! send, and a receive-only folder's kept changes. Each is worded for the
//! device showing it, and goes when the next sync with that peer has
//! nothing to say.

use super::shared::{FolderRt, Shared};
use crate::id::DeviceId;
use std::collections::BTreeMap;

/// How many lines one peer's sync may put on the board.
const PER_PEER: usize = 5;

/// The notices of one folder.
#[derive(Default)]
pub(super) struct Notices {
    /// A receive-only folder's changes kept here.
    kept: Option<String>,
    /// From the last sync with each peer, whichever device ran it. (One
    /// the peer ran cannot tell what the peer refused: the peer shows
    /// that itself.)
    by_peer: BTreeMap<DeviceId, Vec<String>>,
    /// Peers that do not share the folder with this device, and what the
    /// folder says of it (until a session with the peer goes through).
    unshared: BTreeMap<DeviceId, String>,
}

impl Notices {
    /// The lines, kept changes first, each once.
    pub(super) fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self.kept.iter().cloned().collect();
        for l in self
            .unshared
            .values()
            .chain(self.by_peer.values().flatten())
        {
            if !out.contains(l) {
                out.push(l.clone());
            }
        }
        out
    }
}

/// What the last sync with `peer` has to say (nothing: its notices go).
/// Every sync says it again while it holds: what a replica refuses keeps
/// the sync from being recorded as done, so the next one plans it again.
pub(super) fn for_peer(sh: &Shared, rt: &FolderRt, peer: DeviceId, mut lines: Vec<String>) {
    lines.truncate(PER_PEER);
    let mut n = rt.notices.lock().expect("notices");
    match lines.is_empty() {
        true => n.by_peer.remove(&peer),
        false => n.by_peer.insert(peer, lines),
    };
    show(sh, rt, &n);
}

/// `peer` does not share the folder with this device (`Some`: what to
/// say), or a session with it went through (`None`).
pub(super) fn unshared(sh: &Shared, rt: &FolderRt, peer: DeviceId, said: Option<String>) {
    let mut n = rt.notices.lock().expect("notices");
    let had = match said {
        Some(s) => n.unshared.insert(peer, s).is_some(),
        None => n.unshared.remove(&peer).is_some(),
    };
    if had || !n.unshared.is_empty() {
        show(sh, rt, &n);
    }
}

/// The receive-only folder's kept changes (none: the line goes).
pub(super) fn kept(sh: &Shared, rt: &FolderRt, line: Option<String>) {
    let mut n = rt.notices.lock().expect("notices");
    n.kept = line;
    show(sh, rt, &n);
}

/// Drops what peers the folder is no longer shared with said.
pub(super) fn keep_peers(rt: &FolderRt, peers: &[DeviceId]) {
    let mut n = rt.notices.lock().expect("notices");
    n.by_peer.retain(|p, _| peers.contains(p));
    n.unshared.retain(|p, _| peers.contains(p));
}

fn show(sh: &Shared, rt: &FolderRt, n: &Notices) {
    let lines = n.lines();
    sh.board.folder(&rt.id, |s| s.notices = lines);
}

/// What a sync's report says the replicas did not take: this device's
/// refusals as its rules word them, and one line for what `peer` did not
/// take (its own status says why).
pub(super) fn from_report(r: &weave_engine::Report, local: &str, peer: &str) -> Vec<String> {
    let refusals = r
        .errors
        .iter()
        .filter(|e| weave_engine::is_refusal(&e.message));
    let (mine, theirs): (Vec<_>, Vec<_>) = refusals.partition(|e| e.replica == local);
    let mut out: Vec<String> = mine
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect();
    if let Some(first) = theirs.first() {
        out.push(format!(
            "{peer} did not take {} change(s) from this device (the first: {}); its own rules keep its version, and its status says why",
            theirs.len(),
            first.path
        ));
    }
    out
}

/// What a session served for a peer did not take here, by this folder's
/// rules.
pub(super) fn from_served(served: &weave_net::server::Served) -> Vec<String> {
    let mut out: Vec<String> = served
        .refused
        .iter()
        .map(|(p, why)| format!("{p}: {why}"))
        .collect();
    let more = served.refused_count.saturating_sub(served.refused.len());
    if more > 0 {
        out.push(format!("and {more} more not taken"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use weave_engine::{IssueReport, Report, NOT_TAKEN};

    fn refusal(replica: &str, path: &str) -> IssueReport {
        IssueReport {
            replica: replica.into(),
            path: path.into(),
            message: format!("{NOT_TAKEN}this folder is send-only here"),
        }
    }

    #[test]
    fn each_device_reads_what_is_true_for_it() {
        let r = Report {
            errors: vec![
                refusal("/home/me/docs", "a.txt"),
                refusal("laptop:docs", "b.txt"),
                refusal("laptop:docs", "c.txt"),
                IssueReport {
                    replica: "/home/me/docs".into(),
                    path: "d.txt".into(),
                    message: "No space left on device".into(),
                },
            ],
            ..Default::default()
        };
        let lines = from_report(&r, "/home/me/docs", "laptop");
        assert_eq!(
            lines[0],
            format!("a.txt: {NOT_TAKEN}this folder is send-only here")
        );
        assert!(lines[1]
            .starts_with("laptop did not take 2 change(s) from this device (the first: b.txt)"));
        assert_eq!(lines.len(), 2, "a failure is an error, not a notice");
    }

    #[test]
    fn lines_are_kept_changes_first_and_each_once() {
        let mut n = Notices::default();
        let (a, b) = (
            DeviceId::from_public_key(b"a"),
            DeviceId::from_public_key(b"b"),
        );
        n.by_peer.insert(a, vec!["x: not taken".into()]);
        n.by_peer.insert(b, vec!["x: not taken".into(), "y".into()]);
        n.kept = Some("receive-only: 2 local changes".into());
        assert_eq!(
            n.lines(),
            ["receive-only: 2 local changes", "x: not taken", "y"]
        );
        n.by_peer.remove(&b);
        n.kept = None;
        assert_eq!(n.lines(), ["x: not taken"]);
    }
}
