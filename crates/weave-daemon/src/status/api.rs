//! The status API: the board as JSON at `GET /v1/status`, for requests
//! carrying the token (`Authorization: Bearer TOKEN`).

use super::{conflicts_in, Board, Status};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Json;
use std::path::PathBuf;
use std::sync::Arc;

/// The folders whose conflict copies the API lists: (id, root, the
/// sub-folders to leave out).
pub type Roots = Arc<dyn Fn() -> Vec<(String, PathBuf, Vec<String>)> + Send + Sync>;

/// What the API's handlers share.
#[derive(Clone)]
struct Api {
    board: Board,
    token: Arc<String>,
    roots: Roots,
}

/// Serves the board on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, board: Board, token: String, roots: Roots) {
    let api = Api {
        board,
        token: Arc::new(token),
        roots,
    };
    let app = axum::Router::new()
        .route("/v1/status", get(status))
        .with_state(api);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(target: "weave_daemon::status", "the status API stopped: {e}");
    }
}

/// Whether the request carries the API's token.
fn authorised(api: &Api, h: &HeaderMap) -> Result<(), StatusCode> {
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
