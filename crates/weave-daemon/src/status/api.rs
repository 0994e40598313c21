//! The status API, for requests carrying the token (`Authorization:
//! Bearer TOKEN`): the board as JSON at `GET /v1/status`, and what a user
//! asks of a folder at `POST /v1/folders/{id}/revert` and
//! `POST /v1/folders/{id}/override` (answered with an [`Answer`] once
//! done).

use super::{conflicts_in, Board, Status};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

/// The folders whose conflict copies the API lists: (id, root, the
/// sub-folders to leave out).
pub type Roots = Arc<dyn Fn() -> Vec<(String, PathBuf, Vec<String>)> + Send + Sync>;

/// What a user asks of a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FolderAction {
    /// Receive-only: drop the local changes, take the peers' versions.
    Revert,
    /// Send-only: undo the peers' changes with this device's versions.
    Override,
}

impl FolderAction {
    pub fn as_str(self) -> &'static str {
        match self {
            FolderAction::Revert => "revert",
            FolderAction::Override => "override",
        }
    }
}

/// The daemon's answer to a [`FolderAction`]: whether it was done, and a
/// sentence for the user (what was done, or what went wrong and what to
/// do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub done: bool,
    pub message: String,
}

impl Answer {
    pub fn ok(message: String) -> Answer {
        Answer {
            done: true,
            message,
        }
    }
    pub fn refused(message: String) -> Answer {
        Answer {
            done: false,
            message,
        }
    }
}

/// Does what a user asks of a folder (its id), and answers once done.
pub type Act =
    Arc<dyn Fn(String, FolderAction) -> Pin<Box<dyn Future<Output = Answer> + Send>> + Send + Sync>;

/// Pauses (true) or resumes a folder or a peer; says what was done, or
/// why not.
pub type Pause = Arc<dyn Fn(crate::config::Pausable, bool) -> Answer + Send + Sync>;

/// What the API's handlers share.
#[derive(Clone)]
struct Api {
    board: Board,
    token: Arc<String>,
    roots: Roots,
    act: Act,
    pause: Pause,
}

/// Serves the API on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    board: Board,
    token: String,
    roots: Roots,
    act: Act,
    pause: Pause,
) {
    let api = Api {
        board,
        token: Arc::new(token),
        roots,
        act,
        pause,
    };
    let app = axum::Router::new()
        .route("/v1/status", get(status))
        .route("/v1/events", get(events))
        .route("/v1/folders/{id}/{action}", post(folder_action))
        .route("/v1/peers/{name}/{action}", post(peer_action))
        .with_state(api);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(target: "weave_daemon::status", "the status API stopped: {e}");
    }
}

/// Whether the request carries the API's token, to a host name that
/// cannot be another site's (an IP address, or localhost: a page of
/// another site whose name was made to point here, DNS rebinding, is
/// refused).
fn authorised(api: &Api, h: &HeaderMap) -> Result<(), StatusCode> {
    let host = h.get("host").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !local_host(host) {
        return Err(StatusCode::FORBIDDEN);
    }
    let want = format!("Bearer {}", api.token);
    match h.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(v) if v == want => Ok(()),
        _ => Err(StatusCode::UNAUTHORIZED),
    }
}

/// `GET /v1/status`: the board, with each folder's conflict copies.
async fn status(State(api): State<Api>, h: HeaderMap) -> Result<Json<Status>, StatusCode> {
    authorised(&api, &h)?;
    let mut s = api.board.snapshot();
    let roots = (api.roots)();
    let found = tokio::task::spawn_blocking(move || {
        roots
            .into_iter()
            .map(|(id, root, skip)| (id, conflicts_in(&root, &skip)))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    for (id, c) in found {
        if let Some(f) = s.folders.iter_mut().find(|f| f.id == id) {
            f.conflicts = c;
        }
    }
    Ok(Json(s))
}

/// `GET /v1/events`: the board's changes as server-sent events.
async fn events(
    State(api): State<Api>,
    h: HeaderMap,
) -> Result<axum::response::Response, StatusCode> {
    authorised(&api, &h)?;
    Ok(axum::response::IntoResponse::into_response(
        super::events::stream(api.board.clone()),
    ))
}

/// `POST /v1/folders/{id}/{action}`: does it, and answers once done.
async fn folder_action(
    State(api): State<Api>,
    Path((id, action)): Path<(String, String)>,
    h: HeaderMap,
) -> Result<Json<Answer>, StatusCode> {
    authorised(&api, &h)?;
    let action = match action.as_str() {
        "revert" => FolderAction::Revert,
        "override" => FolderAction::Override,
        "pause" | "resume" => {
            let pause = api.pause.clone();
            let what = crate::config::Pausable::Folder(id);
            let paused = action == "pause";
            return Ok(Json(pausing(pause, what, paused).await));
        }
        _ => return Err(StatusCode::NOT_FOUND),
    };
    Ok(Json((api.act)(id, action).await))
}

/// `POST /v1/peers/{name}/pause` and `…/resume`.
async fn peer_action(
    State(api): State<Api>,
    Path((name, action)): Path<(String, String)>,
    h: HeaderMap,
) -> Result<Json<Answer>, StatusCode> {
    authorised(&api, &h)?;
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        _ => return Err(StatusCode::NOT_FOUND),
    };
    let what = crate::config::Pausable::Peer(name);
    Ok(Json(pausing(api.pause.clone(), what, paused).await))
}

/// Runs `pause` (a config edit) off the async threads.
async fn pausing(pause: Pause, what: crate::config::Pausable, paused: bool) -> Answer {
    tokio::task::spawn_blocking(move || pause(what, paused))
        .await
        .unwrap_or_else(|e| Answer::refused(format!("pausing failed: {e}")))
}

/// Whether a Host header names this machine by address or as localhost.
fn local_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

#[cfg(test)]
mod host_tests {
    use super::local_host;

    #[test]
    fn only_addresses_and_localhost_are_hosts_of_this_api() {
        for ok in [
            "127.0.0.1:8384",
            "localhost:1",
            "LOCALHOST",
            "[::1]:80",
            "10.0.0.2:9",
        ] {
            assert!(local_host(ok), "{ok}");
        }
        for bad in [
            "evil.example:8384",
            "127.0.0.1.evil.example",
            "",
            "localhost.evil:1",
        ] {
            assert!(!local_host(bad), "{bad}");
        }
    }
}
