//! Online clients: list, disconnect, and counters.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mps_proto::OnlineClient;
use serde::Serialize;

use super::{Admin, ApiError};
use crate::server::ServerState;

/// Online clients of every node.
pub async fn list(
    _: Admin,
    State(state): State<Arc<ServerState>>,
) -> Result<Json<Vec<OnlineClient>>, ApiError> {
    Ok(Json(state.presence.list().await?))
}

pub async fn disconnect(
    _: Admin,
    State(state): State<Arc<ServerState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    // The client may be on another node; its node closes it.
    if state.presence.disconnect(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("client"))
    }
}

#[derive(Serialize)]
pub struct Stats {
    node: String,
    connections: usize,
    uptime_seconds: u64,
}

pub async fn stats(_: Admin, State(state): State<Arc<ServerState>>) -> Json<Stats> {
    Json(Stats {
        node: state.hub.node().to_owned(),
        connections: state.hub.count(),
        uptime_seconds: state.started.elapsed().as_secs(),
    })
}
