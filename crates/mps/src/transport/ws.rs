//! The WebSocket endpoints:
//! - `GET /ws`: the Message Push Protocol; the first frame (`Type` 1) carries the token.
//! - `GET /websocket/{token}`: the simple form; the token is checked before the upgrade.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use mps_proto::{ErrorResponse, Frame, PROTOCOL_VERSION, SessionInfo, close, frame::kind};

use super::session::{self, error_bytes, failure_close};
use super::socket::{Inbound, Socket};
use super::{ClientQuery, Login, LoginRequest, verify_client};
use crate::engine::encode;
use crate::http::{ApiError, Params};
use crate::http::{BadRequest, Forbidden, Unauthorized};
use crate::limits::count_bad_input;
use crate::state::ServerState;
use crate::words::TransportKind;

/// WebSocket, Message Push Protocol.
///
/// Upgrades, then waits for the open frame (`Type` 1), which carries the token
/// (docs/protocol.md). Refused opens are answered with an error frame and a close code.
#[utoipa::path(
    get,
    operation_id = "websocket",
    path = "/ws",
    tag = "transports",
    responses(
        (status = 101, description = "Switched to WebSocket"),
        (status = 400, description = "Not a WebSocket handshake (`not_websocket`)", body = ErrorResponse),
    ),
)]
pub async fn protocol_ws(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    metrics::counter!("mps_upgrades_total", "endpoint" => "ws").increment(1);
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(e) => return not_websocket(e),
    };
    let request_id = crate::telemetry::request_id(&headers);
    super::socket::configure(upgrade, &state.config.connection)
        .on_upgrade(move |ws| open_session(state, Socket::new(ws), remote, request_id))
}

/// A plain HTTP request (or a broken handshake) on a WebSocket endpoint.
pub(super) fn not_websocket(rejection: WebSocketUpgradeRejection) -> Response {
    count_bad_input("not_websocket");
    ApiError::new(rejection.status(), "not_websocket", rejection.body_text()).into_response()
}

/// An open refused: close code, the `Seq` to echo, error code and message.
type OpenRefusal = (u16, Option<u64>, &'static str, String);

/// Reads and checks the open frame on the upgrade's task, then hands the session to a task of
/// its own (see [`session::spawn`]).
async fn open_session(
    state: Arc<ServerState>,
    socket: Socket,
    remote: SocketAddr,
    request_id: Option<Box<str>>,
) {
    if let Some((socket, registration, last_id)) = open(&state, socket, remote, request_id).await {
        session::spawn(state, socket, registration, last_id);
    }
}

/// The open phase: the first frame, its checks, registration and the open-ack.
async fn open(
    state: &Arc<ServerState>,
    mut socket: Socket,
    remote: SocketAddr,
    request_id: Option<Box<str>>,
) -> Option<(Socket, super::Registration, u64)> {
    let wait = Duration::from_secs(state.config.connection.open_timeout.max(1));
    let first = match tokio::time::timeout(wait, socket.recv()).await {
        Ok(inbound) => inbound,
        Err(_) => {
            count_bad_input("open_timeout");
            crate::limits::rejected(crate::limits::Limit::OpenTimeout);
            socket.close(close::TIMEOUT, "no open frame in time").await;
            return None;
        }
    };
    let text = match first {
        Inbound::Text(text) => text,
        Inbound::Failed(failure) => {
            let (code, reason, label) = failure_close(failure);
            count_bad_input(label.as_str());
            socket.close(code, reason).await;
            return None;
        }
        Inbound::Closed => return None,
        Inbound::Binary(_) | Inbound::Alive => {
            count_bad_input("open_expected");
            socket
                .close(close::PROTOCOL, "expected an open frame")
                .await;
            return None;
        }
    };
    let opened = match serde_json::from_str::<Frame>(text.as_str()) {
        Err(e) => Err((close::PROTOCOL, None, "bad_json", e.to_string())),
        Ok(frame) if super::push_mode::wanted(&frame) => {
            super::push_mode::run(state, socket, frame).await;
            return None;
        }
        Ok(frame) if frame.kind != kind::OPEN => Err((
            close::PROTOCOL,
            frame.seq,
            "open_expected",
            format!("expected Type 1, got {}", frame.kind),
        )),
        Ok(frame) => check_open(state, frame, remote),
    };
    let (seq, mut login) = match opened {
        Ok(ok) => ok,
        Err((code, seq, label, message)) => {
            count_bad_input(label);
            socket
                .send(error_bytes(kind::OPEN_ACK, seq, label, message.clone()))
                .await;
            socket.close(code, &message).await;
            return None;
        }
    };
    login.request_id = request_id;
    let registration = match super::Registration::new(state, &login) {
        Ok(registration) => registration,
        Err(refusal) => {
            count_bad_input(refusal.code);
            socket
                .send(error_bytes(
                    kind::OPEN_ACK,
                    seq,
                    refusal.code,
                    refusal.message.clone(),
                ))
                .await;
            socket.close(refusal.close_code(), &refusal.message).await;
            return None;
        }
    };
    // In a cluster, the node's subscription for this user must be in place before the client is
    // told it is open, or a live-only message sent right after the answer could miss it.
    state.engine.broker().ready().await;
    let conn = &registration.conn;
    let ack = Frame {
        version: Some(PROTOCOL_VERSION),
        session: Some(SessionInfo {
            id: conn.id.to_string(),
            app: conn.info.app.to_string(),
            user: conn.info.user.to_string(),
            agent: conn.info.agent.to_string(),
            heartbeat: state.config.connection.heartbeat,
            timeout: state.config.connection.timeout,
        }),
        ..Frame::reply(kind::OPEN_ACK, seq)
    };
    if !socket.send(encode(&ack)).await {
        return None;
    }
    Some((socket, registration, login.last_id))
}

/// Validates the open frame of a long connection: token, user, then the login itself (vendor
/// ways went to `push_mode`).
fn check_open(
    state: &ServerState,
    frame: Frame,
    remote: SocketAddr,
) -> Result<(Option<u64>, Login), OpenRefusal> {
    let seq = frame.seq;
    let token = frame
        .security
        .as_ref()
        .map(|s| s.token.as_str())
        .unwrap_or("");
    let identity = state
        .auth
        .verify(token)
        .map_err(|e| (close::UNAUTHORIZED, seq, e.code(), e.to_string()))?;
    super::check_login_rate(state, &identity)
        .map_err(|r| (r.close_code(), seq, r.code, r.message))?;
    let client = frame.client.unwrap_or_default();
    if client.user.as_ref().is_some_and(|u| *u != identity.user) {
        return Err((
            close::UNAUTHORIZED,
            seq,
            "user_mismatch",
            "Client.user is not the token's user".to_owned(),
        ));
    }
    let request = LoginRequest {
        agent: client.agent,
        device: client.device,
        components: client.component_set.unwrap_or_default(),
        topics: client.topics.unwrap_or_default(),
        last_id: client.last_id,
    };
    let login = super::check_login(state, &identity, request, TransportKind::Websocket, remote)
        .map_err(|r| (r.close_code(), seq, r.code, r.message))?;
    Ok((seq, login))
}

/// WebSocket, simple form.
///
/// The token in the path is checked before the upgrade; pending messages are sent right after
/// it. Frames are the push frames of the Message Push Protocol.
#[utoipa::path(
    get,
    operation_id = "websocket_simple",
    path = "/websocket/{token}",
    tag = "transports",
    params(("token" = String, Path, description = "Client token"), ClientQuery),
    responses(
        (status = 101, description = "Switched to WebSocket"),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
    ),
)]
pub async fn simple_ws(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Path(token): Path<String>,
    Params(query): Params<ClientQuery>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    metrics::counter!("mps_upgrades_total", "endpoint" => "websocket").increment(1);
    let identity = match verify_client(&state, &HeaderMap::new(), Some(&token)) {
        Ok(identity) => identity,
        Err(e) => return e.into_response(),
    };
    let resume = query.resume_id(&headers);
    let mut login = match query.login(
        &state,
        &identity,
        resume,
        TransportKind::WebsocketSimple,
        remote,
    ) {
        Ok(login) => login,
        Err(e) => return e.into_response(),
    };
    login.request_id = crate::telemetry::request_id(&headers);
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(e) => return not_websocket(e),
    };
    // Registered before the upgrade, so that a user over the limit gets an HTTP answer; live
    // messages queue up meanwhile.
    let registration = match super::Registration::http(&state, &login) {
        Ok(registration) => registration,
        Err(e) => return e.into_response(),
    };
    let last_id = login.last_id;
    super::socket::configure(upgrade, &state.config.connection).on_upgrade(move |ws| async move {
        session::spawn(state, Socket::new(ws), registration, last_id);
    })
}
