//! `GET /conformance/echo`: a WebSocket echo, answering only when `connection.conformance_echo`
//! is set (404 otherwise). The Autobahn conformance suite needs a peer that sends every message back; mps's
//! own endpoints answer with protocol frames instead, so the suite runs against this one. It
//! goes through exactly the same upgrade settings ([`super::socket::configure`]), [`Socket`]
//! and close-code mapping as `/ws` and `/websocket/{token}`: what passes here is what those
//! endpoints do at the WebSocket layer. It needs no token; never enable it in production.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::response::{IntoResponse, Response};
use mps_proto::ErrorResponse;

use super::session::failure_close;
use super::socket::{Inbound, Socket};
use crate::http::ApiError;
use crate::http::NotFound;
use crate::limits::count_bad_input;
use crate::state::ServerState;

/// WebSocket echo for conformance tests.
///
/// Sends every message back, on the same WebSocket stack as `/ws`. Only when
/// `connection.conformance_echo` is set (never in production); `404` otherwise.
#[utoipa::path(
    get,
    path = "/conformance/echo",
    tag = "operations",
    responses(
        (status = 101, description = "Switched to WebSocket"),
        (status = 400, description = "Not a WebSocket handshake (`not_websocket`)", body = ErrorResponse),
        (status = 404, response = NotFound),
    ),
)]
pub async fn echo(
    State(state): State<Arc<ServerState>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !state.config.connection.conformance_echo {
        return ApiError::not_found("route").into_response();
    }
    metrics::counter!("mps_upgrades_total", "endpoint" => "echo").increment(1);
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(e) => return super::ws::not_websocket(e),
    };
    super::socket::configure(upgrade, &state.config.connection)
        .on_upgrade(|ws| run(Socket::new(ws)))
}

async fn run(mut socket: Socket) {
    loop {
        let sent = match socket.recv().await {
            Inbound::Text(text) => socket.send(text.into()).await,
            Inbound::Binary(data) => socket.send_binary(data).await,
            Inbound::Alive => true,
            Inbound::Closed => return,
            Inbound::Failed(failure) => {
                let (code, reason, label) = failure_close(failure);
                count_bad_input(label.as_str());
                socket.close(code, reason).await;
                return;
            }
        };
        if !sent {
            return;
        }
    }
}
