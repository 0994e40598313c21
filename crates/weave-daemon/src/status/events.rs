//! `GET /v1/events`: the board's changes as they happen, as server-sent
//! events (what a GUI shows live). The first event, `status`, is the
//! whole board; then `folder` and `peer` events carry a folder's or a
//! peer's status whenever it changed, `change` each new recent change
//! (a file a sync brought or took, a conflict), `error` each new error.
//! The board is looked at every [`EVERY`], so an event follows what it
//! tells of within that.

use super::{Board, Status};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

/// How often the board is looked at for changes.
pub const EVERY: Duration = Duration::from_millis(200);

/// What a client was last told.
#[derive(Default)]
struct Told {
    folders: HashMap<String, String>,
    peers: HashMap<String, String>,
    /// The newest change and error told (their JSON): None before the
    /// first look, Some(None) while there were none.
    change: Option<Option<String>>,
    error: Option<Option<String>>,
}

impl Told {
    /// The events that bring a client told `self` to `now`.
    fn events(&mut self, now: &Status) -> Vec<Event> {
        let mut out = Vec::new();
        for f in &now.folders {
            let json = serde_json::to_string(f).unwrap_or_default();
            if self.folders.get(&f.id) != Some(&json) {
                out.push(Event::default().event("folder").data(&json));
                self.folders.insert(f.id.clone(), json);
            }
        }
        for p in &now.peers {
            let json = serde_json::to_string(p).unwrap_or_default();
            if self.peers.get(&p.name) != Some(&json) {
                out.push(Event::default().event("peer").data(&json));
                self.peers.insert(p.name.clone(), json);
            }
        }
        out.extend(newer(&now.recent, &mut self.change, "change"));
        out.extend(newer(&now.errors, &mut self.error, "error"));
        out
    }
}

/// Events for the entries of `list` (newest first) newer than the one
/// told last, oldest first (none at the first look: the `status` event
/// told them).
fn newer<T: serde::Serialize>(
    list: &[T],
    told: &mut Option<Option<String>>,
    kind: &str,
) -> Vec<Event> {
    let json: Vec<String> = list
        .iter()
        .map(|e| serde_json::to_string(e).unwrap_or_default())
        .collect();
    let fresh = match told {
        None => 0,
        Some(None) => json.len(),
        Some(Some(t)) => json.iter().position(|j| j == t).unwrap_or(json.len()),
    };
    *told = Some(json.first().cloned());
    json[..fresh]
        .iter()
        .rev()
        .map(|j| Event::default().event(kind).data(j))
        .collect()
}

/// The stream of events of `board` for one client.
pub fn stream(board: Board) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let first = board.snapshot();
    let mut told = Told::default();
    // What the first event says is told; so are the lists' newest.
    let _ = told.events(&first);
    let status = Event::default()
        .event("status")
        .data(serde_json::to_string(&first).unwrap_or_default());
    let rest = stream::unfold((board, told), |(board, mut told)| async move {
        loop {
            tokio::time::sleep(EVERY).await;
            let events = told.events(&board.snapshot());
            if !events.is_empty() {
                return Some((stream::iter(events.into_iter().map(Ok)), (board, told)));
            }
        }
    });
    let all =
        stream::once(std::future::ready(Ok::<Event, Infallible>(status))).chain(rest.flatten());
    Sse::new(all).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_changed_is_told_and_new_entries_oldest_first() {
        let mut told = Told::default();
        let mut s = Status::default();
        s.folders.push(super::super::FolderStatus {
            id: "docs".into(),
            ..Default::default()
        });
        assert_eq!(told.events(&s).len(), 1);
        assert!(told.events(&s).is_empty());
        s.folders[0].bytes_to_go = 5;
        assert_eq!(told.events(&s).len(), 1);
        let change = |p: &str| super::super::Change {
            time_ms: 1,
            folder: "docs".into(),
            path: p.into(),
            action: "create".into(),
            peer: "b".into(),
            by: "b".into(),
        };
        // None at first, then the first one.
        assert!(told.events(&s).is_empty());
        s.recent = vec![change("a")];
        assert_eq!(told.events(&s).len(), 1);
        s.recent = vec![change("c"), change("b"), change("a")];
        let e = told.events(&s);
        assert_eq!(e.len(), 2);
        assert!(told.events(&s).is_empty());
    }
}
