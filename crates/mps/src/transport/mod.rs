//! Client transports. Each one authenticates, checks what the client asks for, registers the
//! connection with the hub, sends what the client is owed ([`catchup`]) and then live pushes;
//! none holds delivery logic of its own.
//!
//! - [`ws`]: `GET /ws` (the Message Push Protocol; the first frame carries the token) and
//!   `GET /websocket/{token}` (token checked before the upgrade), both driven by [`session`].
//! - [`sse`]: `GET /sse`, Server-Sent Events.
//! - [`poll`]: `GET /poll`, long and short polling.
//! - [`socket`]: the seam to the WebSocket library.

pub mod catchup;
pub mod poll;
pub mod session;
pub mod socket;
pub mod sse;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

use crate::api::ApiError;
use crate::auth::{Identity, bearer};
use crate::engine::check_name;
use crate::hub::{Conn, ConnInfo, Hub, Subscriptions};
use crate::id::now_ms;
use crate::server::ServerState;

/// Records a rejected client input in metrics.
pub fn count_bad_input(kind: &'static str) {
    metrics::counter!("mps_bad_input_total", "kind" => kind).increment(1);
}

/// Why a login was refused: a stable code, a message, and whether it is about rights (403)
/// rather than shape (400).
#[derive(Debug)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
    pub forbidden: bool,
}

impl Refusal {
    fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            forbidden: false,
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let status = if r.forbidden {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(status, r.code, r.message)
    }
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
}

/// Checks a login request against the identity and the limits.
pub fn check_login(
    state: &ServerState,
    identity: &Identity,
    request: LoginRequest,
    transport: &'static str,
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
        Some(id) => id.parse().map_err(|_| {
            Refusal::invalid("invalid_client", format!("{id:?} is not a message id"))
        })?,
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
    })
}

/// Most components one connection may subscribe to.
pub const MAX_COMPONENTS: usize = 256;

/// Checks components and topic patterns, including the token's topic claim.
pub fn check_subscriptions(
    state: &ServerState,
    identity: &Identity,
    subscriptions: &Subscriptions,
) -> Result<(), Refusal> {
    if subscriptions.components.len() > MAX_COMPONENTS {
        return Err(Refusal::invalid(
            "invalid_client",
            format!("at most {MAX_COMPONENTS} components"),
        ));
    }
    for c in &subscriptions.components {
        check_name("component", c)
            .map_err(|e| Refusal::invalid("invalid_client", e.to_string()))?;
    }
    let topics = &state.config.topics;
    if subscriptions.topics.len() > topics.max_subscriptions {
        return Err(Refusal::invalid(
            "invalid_topic",
            format!("at most {} topic patterns", topics.max_subscriptions),
        ));
    }
    for pattern in &subscriptions.topics {
        crate::topic::check_pattern(pattern, topics.limits())
            .map_err(|e| Refusal::invalid("invalid_topic", e.0))?;
        if !identity.may_subscribe(pattern, topics.require_claim) {
            return Err(Refusal {
                code: "forbidden_topic",
                message: format!("the token may not subscribe to {pattern:?}"),
                forbidden: true,
            });
        }
    }
    Ok(())
}

/// Query parameters of the HTTP-based transports (`/websocket/{token}`, `/sse`, `/poll`).
#[derive(Debug, Default, Deserialize)]
pub struct ClientQuery {
    pub token: Option<String>,
    pub agent: Option<String>,
    pub device: Option<String>,
    /// Comma-separated component set.
    pub components: Option<String>,
    /// Comma-separated topic patterns.
    pub topics: Option<String>,
    /// SSE: last id seen (the `Last-Event-ID` header wins).
    pub last_id: Option<String>,
    /// Polling: last id seen.
    pub since: Option<String>,
    /// Polling: seconds to wait.
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
        transport: &'static str,
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
    state.auth.verify(token).map_err(|e| {
        count_bad_input(e.code());
        ApiError::from(e)
    })
}

/// A registered connection that leaves the hub when dropped, however its transport ends.
pub struct Registration {
    hub: Arc<Hub>,
    pub conn: Arc<Conn>,
    /// Why the connection ended (a metrics label); set by the transport.
    pub reason: &'static str,
}

impl Registration {
    pub fn new(state: &ServerState, login: &Login) -> Registration {
        let conn = state
            .hub
            .register(login.info.clone(), login.subscriptions.clone());
        if conn.info.transport != "poll" {
            metrics::counter!("mps_logins_total", "transport" => conn.info.transport).increment(1);
            tracing::debug!(
                conn = conn.id,
                app = %conn.info.app,
                user = %conn.info.user,
                agent = %conn.info.agent,
                transport = conn.info.transport,
                remote = %conn.info.remote,
                "client connected"
            );
        }
        Registration {
            hub: state.hub.clone(),
            conn,
            reason: "client_closed",
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(&self.conn);
        let info = &self.conn.info;
        if info.transport != "poll" {
            metrics::counter!("mps_disconnects_total", "reason" => self.reason).increment(1);
            tracing::debug!(
                conn = self.conn.id,
                app = %info.app,
                user = %info.user,
                agent = %info.agent,
                reason = self.reason,
                "client disconnected"
            );
        }
    }
}
