//! Client transports. Each one authenticates, registers the connection with the hub and hands it
//! to the shared session loop; none holds delivery logic of its own.
//!
//! - `GET /ws`: the Message Push Protocol; the first frame (`Type` 1) carries the token.
//! - `GET /websocket/{token}`: the simple form; the token is checked before the upgrade.

pub mod session;
pub mod socket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::response::{IntoResponse, Response};
use mps_proto::{Frame, PROTOCOL_VERSION, SessionInfo, close, frame::kind};
use serde::Deserialize;

use crate::api::ApiError;
use crate::auth::Identity;
use crate::engine::{check_name, encode};
use crate::hub::ConnInfo;
use crate::id::now_ms;
use crate::server::ServerState;
use session::{count_bad_input, error_bytes, failure_close};
use socket::{Inbound, Socket};

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
    socket::configure(upgrade, &state.config.connection)
        .on_upgrade(move |ws| open_session(state, Socket::new(ws), remote))
}

/// A plain HTTP request (or a broken handshake) on a WebSocket endpoint.
fn not_websocket(rejection: WebSocketUpgradeRejection) -> Response {
    count_bad_input("not_websocket");
    ApiError::new(rejection.status(), "not_websocket", rejection.body_text()).into_response()
}

/// Reads and checks the open frame, then runs the session.
async fn open_session(state: Arc<ServerState>, mut socket: Socket, remote: SocketAddr) {
    let wait = Duration::from_secs(state.config.connection.open_timeout.max(1));
    let first = match tokio::time::timeout(wait, socket.recv()).await {
        Ok(inbound) => inbound,
        Err(_) => {
            count_bad_input("open_timeout");
            socket.close(close::TIMEOUT, "no open frame in time").await;
            return;
        }
    };
    let text = match first {
        Inbound::Text(text) => text,
        Inbound::Failed(failure) => {
            let (code, reason, label) = failure_close(failure);
            count_bad_input(label);
            socket.close(code, reason).await;
            return;
        }
        Inbound::Closed => return,
        Inbound::Binary | Inbound::Alive => {
            count_bad_input("open_expected");
            socket
                .close(close::PROTOCOL, "expected an open frame")
                .await;
            return;
        }
    };
    let refuse = |code: &'static str, message: String| (code, message);
    let opened = match serde_json::from_str::<Frame>(text.as_str()) {
        Err(e) => Err((close::PROTOCOL, None, refuse("bad_json", e.to_string()))),
        Ok(frame) if frame.kind != kind::OPEN => Err((
            close::PROTOCOL,
            frame.seq,
            refuse(
                "open_expected",
                format!("expected Type 1, got {}", frame.kind),
            ),
        )),
        Ok(frame) => check_open(&state, frame),
    };
    let (open, identity) = match opened {
        Ok(ok) => ok,
        Err((code, seq, (label, message))) => {
            count_bad_input(label);
            socket
                .send(error_bytes(kind::OPEN_ACK, seq, label, message.clone()))
                .await;
            socket.close(code, &message).await;
            return;
        }
    };
    let client = open.client.unwrap_or_default();
    let info = ConnInfo {
        app: identity.app.as_str().into(),
        user: identity.user.as_str().into(),
        agent: client.agent.unwrap_or_else(|| "bs".into()).into(),
        device: client.device.map(String::into_boxed_str),
        transport: "websocket",
        login: now_ms() as i64,
        remote,
    };
    let conn = state
        .hub
        .register(info, client.component_set.unwrap_or_default());
    let ack = Frame {
        version: Some(PROTOCOL_VERSION),
        session: Some(SessionInfo {
            id: conn.id.to_string(),
            app: identity.app,
            user: identity.user,
            agent: conn.info.agent.to_string(),
            heartbeat: state.config.connection.heartbeat,
            timeout: state.config.connection.timeout,
        }),
        ..Frame::reply(kind::OPEN_ACK, open.seq)
    };
    log_connected(&conn);
    if !socket.send(encode(&ack)).await {
        state.hub.unregister(&conn);
        return;
    }
    session::run(state, socket, conn).await;
}

type Refusal = (u16, Option<u64>, (&'static str, String));

/// Validates an open frame: token, user, way, agent, components.
fn check_open(state: &ServerState, frame: Frame) -> Result<(Frame, Identity), Refusal> {
    let seq = frame.seq;
    let token = frame
        .security
        .as_ref()
        .map(|s| s.token.as_str())
        .unwrap_or("");
    let identity = state
        .auth
        .verify(token)
        .map_err(|e| (close::UNAUTHORIZED, seq, (e.code(), e.to_string())))?;
    let client = frame.client.clone().unwrap_or_default();
    if client
        .user
        .as_ref()
        .is_some_and(|user| *user != identity.user)
    {
        return Err((
            close::UNAUTHORIZED,
            seq,
            (
                "user_mismatch",
                "Client.user is not the token's user".to_owned(),
            ),
        ));
    }
    match client.way.as_deref() {
        None | Some("websocket") => {}
        Some(way) => {
            return Err((
                close::PROTOCOL,
                seq,
                (
                    "unsupported_way",
                    format!("way {way:?} is not supported; use \"websocket\""),
                ),
            ));
        }
    }
    check_client_fields(
        client.agent.as_deref(),
        client.device.as_deref(),
        client.component_set.as_deref().unwrap_or_default(),
    )
    .map_err(|message| (close::PROTOCOL, seq, ("invalid_client", message)))?;
    Ok((frame, identity))
}

fn check_client_fields(
    agent: Option<&str>,
    device: Option<&str>,
    components: &[String],
) -> Result<(), String> {
    for (what, value) in [("agent", agent), ("device", device)] {
        if let Some(value) = value {
            check_name(what, value).map_err(|e| e.to_string())?;
        }
    }
    session::check_components(components)
}

fn log_connected(conn: &crate::hub::Conn) {
    metrics::counter!("mps_logins_total", "transport" => conn.info.transport).increment(1);
    tracing::info!(
        conn = conn.id,
        app = %conn.info.app,
        user = %conn.info.user,
        agent = %conn.info.agent,
        transport = conn.info.transport,
        remote = %conn.info.remote,
        "client connected"
    );
}

/// Query of `GET /websocket/{token}`.
#[derive(Debug, Deserialize)]
pub struct SimpleQuery {
    agent: Option<String>,
    device: Option<String>,
    /// Comma-separated component set.
    components: Option<String>,
}

/// `GET /websocket/{token}`: the token is checked before upgrading; a bad one gets 401.
pub async fn simple_ws(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Path(token): Path<String>,
    Query(query): Query<SimpleQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    metrics::counter!("mps_upgrades_total", "endpoint" => "websocket").increment(1);
    let identity = match state.auth.verify(&token) {
        Ok(identity) => identity,
        Err(e) => {
            count_bad_input(e.code());
            return ApiError::from(e).into_response();
        }
    };
    let components: Vec<String> = query
        .components
        .as_deref()
        .map(|c| {
            c.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if let Err(message) =
        check_client_fields(query.agent.as_deref(), query.device.as_deref(), &components)
    {
        count_bad_input("invalid_client");
        return ApiError::invalid("invalid_client", message).into_response();
    }
    let info = ConnInfo {
        app: identity.app.as_str().into(),
        user: identity.user.as_str().into(),
        agent: query.agent.unwrap_or_else(|| "bs".into()).into(),
        device: query.device.map(String::into_boxed_str),
        transport: "websocket-simple",
        login: now_ms() as i64,
        remote,
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(e) => return not_websocket(e),
    };
    socket::configure(upgrade, &state.config.connection).on_upgrade(move |ws| async move {
        let conn = state.hub.register(info, components);
        log_connected(&conn);
        session::run(state, Socket::new(ws), conn).await;
    })
}
