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
use mps_proto::{Frame, PROTOCOL_VERSION, SessionInfo, close, frame::kind};

use super::session::{self, error_bytes, failure_close};
use super::socket::{Inbound, Socket};
use super::{ClientQuery, Login, LoginRequest, count_bad_input, verify_client};
use crate::api::{ApiError, Params};
use crate::engine::encode;
use crate::server::ServerState;

/// `GET /ws`: upgrade, then wait for the open frame.
pub async fn protocol_ws(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    metrics::counter!("mps_upgrades_total", "endpoint" => "ws").increment(1);
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(e) => return not_websocket(e),
    };
    super::socket::configure(upgrade, &state.config.connection)
        .on_upgrade(move |ws| open_session(state, Socket::new(ws), remote))
}

/// A plain HTTP request (or a broken handshake) on a WebSocket endpoint.
fn not_websocket(rejection: WebSocketUpgradeRejection) -> Response {
    count_bad_input("not_websocket");
    ApiError::new(rejection.status(), "not_websocket", rejection.body_text()).into_response()
}

/// An open refused: close code, the `Seq` to echo, error code and message.
type OpenRefusal = (u16, Option<u64>, &'static str, String);

/// Reads and checks the open frame, then runs the session. The open phase is boxed and gone
/// once the session runs, so it does not enlarge the long-lived session task.
async fn open_session(state: Arc<ServerState>, socket: Socket, remote: SocketAddr) {
    // Bound first: a temporary in the `if let` would keep the box alive for the whole session.
    let opened = Box::pin(open(&state, socket, remote)).await;
    if let Some((socket, registration, last_id)) = opened {
        session::run(state, socket, registration, last_id).await;
    }
}

/// The open phase: the first frame, its checks, registration and the open-ack.
async fn open(
    state: &Arc<ServerState>,
    mut socket: Socket,
    remote: SocketAddr,
) -> Option<(Socket, super::Registration, u64)> {
    let wait = Duration::from_secs(state.config.connection.open_timeout.max(1));
    let first = match tokio::time::timeout(wait, socket.recv()).await {
        Ok(inbound) => inbound,
        Err(_) => {
            count_bad_input("open_timeout");
            socket.close(close::TIMEOUT, "no open frame in time").await;
            return None;
        }
    };
    let text = match first {
        Inbound::Text(text) => text,
        Inbound::Failed(failure) => {
            let (code, reason, label) = failure_close(failure);
            count_bad_input(label);
            socket.close(code, reason).await;
            return None;
        }
        Inbound::Closed => return None,
        Inbound::Binary | Inbound::Alive => {
            count_bad_input("open_expected");
            socket
                .close(close::PROTOCOL, "expected an open frame")
                .await;
            return None;
        }
    };
    let opened = match serde_json::from_str::<Frame>(text.as_str()) {
        Err(e) => Err((close::PROTOCOL, None, "bad_json", e.to_string())),
        Ok(frame) if frame.kind != kind::OPEN => Err((
            close::PROTOCOL,
            frame.seq,
            "open_expected",
            format!("expected Type 1, got {}", frame.kind),
        )),
        Ok(frame) => check_open(state, frame, remote),
    };
    let (seq, login) = match opened {
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
    let registration = super::Registration::new(state, &login);
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

/// Validates an open frame: token, user, way, then the login itself.
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
    let client = frame.client.unwrap_or_default();
    if client.user.as_ref().is_some_and(|u| *u != identity.user) {
        return Err((
            close::UNAUTHORIZED,
            seq,
            "user_mismatch",
            "Client.user is not the token's user".to_owned(),
        ));
    }
    if let Some(way) = client.way.as_deref().filter(|w| *w != "websocket") {
        return Err((
            close::PROTOCOL,
            seq,
            "unsupported_way",
            format!("way {way:?} is not supported; use \"websocket\""),
        ));
    }
    let request = LoginRequest {
        agent: client.agent,
        device: client.device,
        components: client.component_set.unwrap_or_default(),
        topics: client.topics.unwrap_or_default(),
        last_id: client.last_id,
    };
    let login =
        super::check_login(state, &identity, request, "websocket", remote).map_err(|r| {
            let code = if r.forbidden {
                close::KICKED
            } else {
                close::PROTOCOL
            };
            (code, seq, r.code, r.message)
        })?;
    Ok((seq, login))
}

/// `GET /websocket/{token}`: the token is checked before upgrading; a bad one gets 401.
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
    let login = match query.login(&state, &identity, resume, "websocket-simple", remote) {
        Ok(login) => login,
        Err(e) => return e.into_response(),
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(e) => return not_websocket(e),
    };
    super::socket::configure(upgrade, &state.config.connection).on_upgrade(move |ws| async move {
        let registration = super::Registration::new(&state, &login);
        session::run(state, Socket::new(ws), registration, login.last_id).await;
    })
}
