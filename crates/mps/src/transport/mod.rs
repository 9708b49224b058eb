//! Client transports. Each one authenticates, checks what the client asks for, registers the
//! connection with the hub, sends what the client is owed (the engine's
//! [`CatchUp`](crate::engine::CatchUp)) and then live pushes; none holds delivery logic of its
//! own.
//!
//! - [`ws`]: `GET /ws` (the Message Push Protocol; the first frame carries the token) and
//!   `GET /websocket/{token}` (token checked before the upgrade), both driven by [`session`];
//!   a first frame that opens or turns off a vendor push mode is a short connection
//!   ([`push_mode`]).
//! - [`sse`]: `GET /sse`, Server-Sent Events.
//! - [`poll`]: `GET /poll`, long and short polling.
//! - [`socket`]: the seam to the WebSocket library.
//! - [`echo`]: a WebSocket echo for the conformance suite, off unless configured.

pub mod echo;
pub mod poll;
pub mod push_mode;
pub mod session;
pub mod socket;
pub mod sse;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

use crate::auth::{Identity, bearer};
use crate::http::ApiError;
use crate::hub::{Conn, ConnInfo, Hub, Subscriptions};
use crate::id::{MessageId, now_ms};
use crate::limits::count_bad_input;
use crate::state::ServerState;
use crate::webhooks::Webhooks;
use crate::words::{EndReason, TransportKind, check_name};

/// Why a login was refused: a stable code, a message, and its kind.
#[derive(Debug)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
    pub kind: RefusalKind,
}

/// The kind of a refusal decides the HTTP status and the WebSocket close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The request is malformed (400, close 4400).
    Invalid,
    /// The token does not allow it (403, close 4403).
    Forbidden,
    /// Over a limit (429, close 4429).
    TooMany,
}

impl Refusal {
    fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            kind: RefusalKind::Invalid,
        }
    }

    /// A refusal by a limit, counted under `limit`.
    fn too_many(
        limit: crate::limits::Limit,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        crate::limits::rejected(limit);
        Refusal {
            code,
            message: message.into(),
            kind: RefusalKind::TooMany,
        }
    }

    /// The WebSocket close code that follows this refusal.
    pub fn close_code(&self) -> u16 {
        match self.kind {
            RefusalKind::Invalid => mps_proto::close::PROTOCOL,
            RefusalKind::Forbidden => mps_proto::close::KICKED,
            RefusalKind::TooMany => mps_proto::close::TOO_MANY,
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let status = match r.kind {
            RefusalKind::Invalid => StatusCode::BAD_REQUEST,
            RefusalKind::Forbidden => StatusCode::FORBIDDEN,
            RefusalKind::TooMany => StatusCode::TOO_MANY_REQUESTS,
        };
        ApiError::new(status, r.code, r.message)
    }
}

/// Counts a WebSocket login (an open frame) against `limits.client_rate`.
pub fn check_login_rate(state: &ServerState, identity: &Identity) -> Result<(), Refusal> {
    state.rates.client(identity).map_err(|wait| {
        Refusal::too_many(
            crate::limits::Limit::ClientRate,
            "rate_limited",
            format!(
                "too many logins and requests of this user; retry in {} ms",
                wait.as_millis().max(1)
            ),
        )
    })
}

/// What a client asks for when it logs in, on any transport.
pub struct LoginRequest {
    pub agent: Option<String>,
    pub device: Option<String>,
    pub components: Vec<String>,
    pub topics: Vec<String>,
    /// Last message id the client saw, as sent.
    pub last_id: Option<String>,
}

/// A checked login: who, with what subscriptions, resuming from which id (0: not resuming).
pub struct Login {
    pub info: ConnInfo,
    pub subscriptions: Subscriptions,
    pub last_id: u64,
    /// `X-Request-Id` of the request that opened the connection, for its log lines.
    pub request_id: Option<Box<str>>,
}

/// Checks a login request against the identity and the limits.
pub fn check_login(
    state: &ServerState,
    identity: &Identity,
    request: LoginRequest,
    transport: TransportKind,
    remote: SocketAddr,
) -> Result<Login, Refusal> {
    for (what, value) in [("agent", &request.agent), ("device", &request.device)] {
        if let Some(value) = value {
            check_name(what, value)
                .map_err(|e| Refusal::invalid("invalid_client", e.to_string()))?;
        }
    }
    let subscriptions = Subscriptions {
        components: request.components,
        topics: request.topics,
    };
    check_subscriptions(state, identity, &subscriptions)?;
    let last_id = match request.last_id.as_deref() {
        None | Some("") => 0,
        Some(id) => id
            .parse::<MessageId>()
            .map_err(|e| Refusal::invalid("invalid_client", e.to_string()))?
            .get(),
    };
    Ok(Login {
        info: ConnInfo {
            app: identity.app.as_str().into(),
            user: identity.user.as_str().into(),
            agent: request.agent.unwrap_or_else(|| "bs".into()).into(),
            device: request.device.map(String::into_boxed_str),
            transport,
            login: now_ms() as i64,
            remote,
            topic_claim: identity.topics.clone(),
        },
        subscriptions,
        last_id,
        request_id: None,
    })
}

/// Checks components and topic patterns, including the token's topic claim.
pub fn check_subscriptions(
    state: &ServerState,
    identity: &Identity,
    subscriptions: &Subscriptions,
) -> Result<(), Refusal> {
    let max_components = state.config.connection.max_components;
    if subscriptions.components.len() > max_components {
        crate::limits::rejected(crate::limits::Limit::Subscriptions);
        return Err(Refusal::invalid(
            "invalid_client",
            format!("at most {max_components} components"),
        ));
    }
    for c in &subscriptions.components {
        check_name("component", c)
            .map_err(|e| Refusal::invalid("invalid_client", e.to_string()))?;
    }
    let topics = &state.config.topics;
    if subscriptions.topics.len() > topics.max_subscriptions {
        crate::limits::rejected(crate::limits::Limit::Subscriptions);
        return Err(Refusal::invalid(
            "invalid_topic",
            format!("at most {} topic patterns", topics.max_subscriptions),
        ));
    }
    for pattern in &subscriptions.topics {
        crate::limits::check_pattern(pattern, topics.limits())
            .map_err(|e| Refusal::invalid("invalid_topic", e.message))?;
        if !identity.may_subscribe(pattern, topics.require_claim) {
            return Err(Refusal {
                code: "forbidden_topic",
                message: format!("the token may not subscribe to {pattern:?}"),
                kind: RefusalKind::Forbidden,
            });
        }
    }
    Ok(())
}

/// Query parameters of the HTTP-based transports (`/websocket/{token}`, `/sse`, `/poll`).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClientQuery {
    /// Client token, when not sent as `Authorization: Bearer` (`/sse`, `/poll`).
    pub token: Option<String>,
    /// `bs`, `cs`, `ios`, `android` or another short name (default `bs`).
    pub agent: Option<String>,
    /// The client's own device id, shown in the list of online clients.
    pub device: Option<String>,
    /// Comma-separated component set.
    pub components: Option<String>,
    /// Comma-separated topic patterns.
    pub topics: Option<String>,
    /// SSE and `/websocket/{token}`: last id seen, to resume from (the `Last-Event-ID` header
    /// wins).
    pub last_id: Option<String>,
    /// Polling: last id seen.
    pub since: Option<String>,
    /// Polling: seconds to wait, 0 to 60 (default 25; 0 answers at once).
    #[param(maximum = 60)]
    pub timeout: Option<u64>,
}

fn split_list(list: Option<&str>) -> Vec<String> {
    list.map(|l| {
        l.split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

impl ClientQuery {
    /// The id a reconnecting stream resumes from: the `Last-Event-ID` header, else `last_id`.
    pub fn resume_id(&self, headers: &HeaderMap) -> Option<String> {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| self.last_id.clone())
    }

    /// Checks the login this query asks for, resuming from `last_id`; a refusal is counted and
    /// becomes the JSON error answer.
    pub fn login(
        &self,
        state: &ServerState,
        identity: &Identity,
        last_id: Option<String>,
        transport: TransportKind,
        remote: SocketAddr,
    ) -> Result<Login, ApiError> {
        check_login(
            state,
            identity,
            self.login_request(last_id),
            transport,
            remote,
        )
        .map_err(|refusal| {
            count_bad_input(refusal.code);
            ApiError::from(refusal)
        })
    }

    /// The login this query asks for, resuming from `last_id`.
    pub fn login_request(&self, last_id: Option<String>) -> LoginRequest {
        LoginRequest {
            agent: self.agent.clone(),
            device: self.device.clone(),
            components: split_list(self.components.as_deref()),
            topics: split_list(self.topics.as_deref()),
            last_id,
        }
    }
}

/// Verifies the client token of an HTTP transport: `Authorization: Bearer` or `?token=`.
pub fn verify_client(
    state: &ServerState,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Identity, ApiError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .or(query_token)
        .unwrap_or("");
    let identity = state.auth.verify(token).map_err(|e| {
        count_bad_input(e.code());
        ApiError::from(e)
    })?;
    state.client_request(&identity)?;
    Ok(identity)
}

/// Log target of the one line per connection opened and closed (`log.level =
/// "info,mps::connections=warn"` silences them).
pub const CONNECTIONS: &str = "mps::connections";

/// A registered connection that leaves the hub when dropped, however its transport ends.
pub struct Registration {
    hub: Arc<Hub>,
    /// Told when the connection leaves.
    webhooks: Arc<Webhooks>,
    pub conn: Arc<Conn>,
    /// Why the connection ended (a metrics label); set by the transport.
    pub reason: EndReason,
    /// The WebSocket close code the server sent, if any; set by the transport.
    pub close_code: Option<u16>,
    request_id: Option<Box<str>>,
}

impl Registration {
    /// Registers a checked login with the hub; refused when its user already has
    /// `limits.connections_per_user` connections on this node.
    pub fn new(state: &ServerState, login: &Login) -> Result<Registration, Refusal> {
        let conn = state
            .hub
            .register(login.info.clone(), login.subscriptions.clone())
            .map_err(|full| {
                Refusal::too_many(
                    crate::limits::Limit::ConnectionsPerUser,
                    "too_many_connections",
                    format!("the user already has {} connections", full.0),
                )
            })?;
        if conn.info.transport != TransportKind::Poll {
            metrics::counter!("mps_logins_total", "transport" => conn.info.transport.as_str())
                .increment(1);
            let info = &conn.info;
            tracing::info!(
                target: CONNECTIONS,
                conn = conn.id,
                app = %info.app,
                user = %info.user,
                agent = %info.agent,
                device = info.device.as_deref(),
                transport = info.transport.as_str(),
                remote = %info.remote,
                node = state.hub.node(),
                request_id = login.request_id.as_deref(),
                "client connected"
            );
            state.webhooks.client_connected(&conn, state.hub.node());
        }
        Ok(Registration {
            hub: state.hub.clone(),
            webhooks: state.webhooks.clone(),
            conn,
            reason: EndReason::ClientClosed,
            close_code: None,
            request_id: login.request_id.clone(),
        })
    }

    /// [`Registration::new`] for an HTTP transport: a refusal is the JSON error answer.
    pub fn http(state: &ServerState, login: &Login) -> Result<Registration, ApiError> {
        Registration::new(state, login).map_err(|refusal| {
            count_bad_input(refusal.code);
            ApiError::from(refusal).retry_after(1)
        })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(&self.conn);
        let info = &self.conn.info;
        if info.transport != TransportKind::Poll {
            metrics::counter!("mps_disconnects_total", "reason" => self.reason.as_str())
                .increment(1);
            let duration_ms = (crate::id::now_ms() as i64 - info.login).max(0);
            tracing::info!(
                target: CONNECTIONS,
                conn = self.conn.id,
                app = %info.app,
                user = %info.user,
                agent = %info.agent,
                device = info.device.as_deref(),
                transport = info.transport.as_str(),
                remote = %info.remote,
                node = self.hub.node(),
                request_id = self.request_id.as_deref(),
                reason = self.reason.as_str(),
                close_code = self.close_code,
                duration_ms,
                "client disconnected"
            );
            self.webhooks
                .client_disconnected(&self.conn, self.hub.node(), self.reason.as_str());
        }
    }
}
