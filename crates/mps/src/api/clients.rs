//! Online clients: list, disconnect, and counters.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mps_proto::OnlineClient;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{Admin, ApiError, Params};
use crate::http::{BadRequest, NotFound, Unauthorized, Unavailable};
use crate::state::ServerState;

/// Filters of the online clients: each one given must match exactly; an empty one matches all.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Tenant.
    app: Option<String>,
    user: Option<String>,
    /// `bs`, `cs`, `ios`, `android`...
    agent: Option<String>,
    /// `websocket`, `websocket-simple`, `sse` or `poll`.
    transport: Option<String>,
    /// Node name.
    node: Option<String>,
    /// Most clients in the answer (the oldest first).
    limit: Option<usize>,
}

impl ListQuery {
    fn admits(&self, client: &OnlineClient) -> bool {
        let is = |wanted: &Option<String>, value: &str| {
            wanted.as_deref().is_none_or(|w| w.is_empty() || w == value)
        };
        is(&self.app, &client.app)
            && is(&self.user, &client.user)
            && is(&self.agent, &client.agent)
            && is(&self.transport, &client.transport)
            && is(&self.node, &client.node)
    }
}

/// Online clients.
///
/// The connections of every node (in a cluster, from the registry in Redis), filtered.
#[utoipa::path(
    get,
    operation_id = "list_clients",
    path = "/api/v1/clients",
    tag = "clients",
    security(("admin_key" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "The online connections that match", body = Vec<OnlineClient>),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn list(
    _: Admin,
    State(state): State<Arc<ServerState>>,
    Params(query): Params<ListQuery>,
) -> Result<Json<Vec<OnlineClient>>, ApiError> {
    let mut clients = state.presence.list().await?;
    clients.retain(|c| query.admits(c));
    if let Some(limit) = query.limit {
        clients.truncate(limit);
    }
    Ok(Json(clients))
}

/// Disconnect a client.
///
/// The connection is closed with code 4403, on whichever node holds it.
#[utoipa::path(
    post,
    operation_id = "disconnect_client",
    path = "/api/v1/clients/{id}/disconnect",
    tag = "clients",
    security(("admin_key" = [])),
    params(("id" = String, Path, description = "Connection id, as listed")),
    responses(
        (status = 204, description = "Disconnected"),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
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

/// This node's counters.
#[derive(Serialize, ToSchema)]
pub struct Stats {
    /// Node name.
    node: String,
    /// Live connections on this node.
    connections: usize,
    uptime_seconds: u64,
    /// This node's counters since it started; rates are their differences over time.
    totals: crate::telemetry::Totals,
    /// Each configured webhook's queue and results.
    webhooks: Vec<crate::webhooks::WebhookStats>,
}

/// This node's counters.
#[utoipa::path(
    get,
    path = "/api/v1/stats",
    tag = "clients",
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "Counters", body = Stats),
        (status = 401, response = Unauthorized),
    ),
)]
pub async fn stats(_: Admin, State(state): State<Arc<ServerState>>) -> Json<Stats> {
    Json(Stats {
        node: state.hub.node().to_owned(),
        connections: state.hub.count(),
        uptime_seconds: state.started.elapsed().as_secs(),
        totals: crate::telemetry::Totals::from_prometheus(&state.metrics.render()),
        webhooks: state.webhooks.stats(),
    })
}
