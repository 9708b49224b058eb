//! Online clients: list, disconnect, and counters.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mps_proto::OnlineClient;
use serde::Serialize;

use super::{Admin, ApiError};
use crate::hub::{CloseReason, Conn};
use crate::server::ServerState;

fn describe(conn: &Conn, node: &str) -> OnlineClient {
    let info = &conn.info;
    let subscriptions = conn.subscriptions();
    OnlineClient {
        id: conn.id.to_string(),
        app: info.app.to_string(),
        user: info.user.to_string(),
        agent: info.agent.to_string(),
        device: info.device.as_deref().map(str::to_owned),
        transport: info.transport.to_owned(),
        login: info.login,
        remote: info.remote.to_string(),
        node: node.to_owned(),
        components: subscriptions.components,
        topics: subscriptions.topics,
    }
}

pub async fn list(_: Admin, State(state): State<Arc<ServerState>>) -> Json<Vec<OnlineClient>> {
    let node = state.hub.node();
    Json(state.hub.list().iter().map(|c| describe(c, node)).collect())
}

pub async fn disconnect(
    _: Admin,
    State(state): State<Arc<ServerState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let conn = id
        .parse()
        .ok()
        .and_then(|id| state.hub.get(id))
        .ok_or_else(|| ApiError::not_found("client"))?;
    conn.close(CloseReason::Kicked);
    Ok(StatusCode::NO_CONTENT)
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
