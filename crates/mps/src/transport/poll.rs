//! `GET /poll`: long polling (`timeout` seconds, default 25) and short polling (`timeout=0`).
//! A poll registers a connection for its duration, so it takes the same catch-up and live
//! fan-out as every other transport, and answers with the messages as a JSON array.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use mps_proto::{Frame, PushedMessage};

use super::{ClientQuery, Registration, verify_client};
use crate::engine::CatchUp;
use crate::http::{ApiError, BadRequest, Forbidden, Params, Unauthorized, Unavailable};
use crate::hub::Outbound;
use crate::limits::count_bad_input;
use crate::state::ServerState;
use crate::words::TransportKind;

/// Default and longest wait of a long poll, seconds.
pub const DEFAULT_WAIT: u64 = 25;
pub const MAX_WAIT: u64 = 60;
/// Most messages one poll returns; the next poll continues from the last id.
const MAX_MESSAGES: usize = 1000;

/// Long and short polling.
///
/// Answers at once when messages are owed after `since`, else when one arrives or `timeout`
/// seconds pass (0: at once). Directed messages returned are marked delivered. An `MPS-Reset`
/// header lists the topic patterns whose retained log no longer reaches back to `since`.
#[utoipa::path(
    get,
    path = "/poll",
    tag = "transports",
    security(("client_token" = []), ("client_token_query" = [])),
    params(ClientQuery),
    responses(
        (status = 200, description = "The messages owed, oldest first", body = Vec<PushedMessage>,
         headers(("MPS-Reset" = String, description = "Comma-separated topic patterns whose history was cut"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn poll(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Params(query): Params<ClientQuery>,
    headers: HeaderMap,
) -> Response {
    metrics::counter!("mps_polls_total").increment(1);
    let identity = match verify_client(&state, &headers, query.token.as_deref()) {
        Ok(identity) => identity,
        Err(e) => return e.into_response(),
    };
    let wait = query.timeout.unwrap_or(DEFAULT_WAIT);
    if wait > MAX_WAIT {
        count_bad_input("bad_query");
        return ApiError::invalid("bad_query", format!("timeout must be 0 to {MAX_WAIT}"))
            .into_response();
    }
    let login = match query.login(
        &state,
        &identity,
        query.since.clone(),
        TransportKind::Poll,
        remote,
    ) {
        Ok(login) => login,
        Err(e) => return e.into_response(),
    };
    let registration = match Registration::http(&state, &login) {
        Ok(registration) => registration,
        Err(e) => return e.into_response(),
    };
    let conn = &registration.conn;
    let mut catchup = CatchUp::new(login.last_id);
    let mut owed = Vec::new();
    while !catchup.done() && owed.len() < MAX_MESSAGES {
        match catchup.next(&state.engine, conn).await {
            Ok(batch) => owed.extend(batch.into_iter().filter(|o| o.id != 0)),
            Err(e) => return ApiError::from(e).into_response(),
        }
    }
    // A cut history is news too: the client must reload, so it is told at once. Messages at or
    // below `since` are the resume overlap (mostly repeats), not a reason to answer early.
    let news = owed.iter().any(|o| o.directed || o.id > login.last_id);
    if !news && catchup.truncated().is_empty() && wait > 0 {
        let _ = tokio::time::timeout(Duration::from_secs(wait), conn.wait()).await;
    }
    let mut live = Vec::new();
    conn.drain(&mut live);
    owed.extend(live.into_iter().filter(|o| !catchup.is_repeat(o.id)));
    // Topic replay, directed backlog and live messages, merged oldest first. What is cut off is
    // the newest: its topic messages come again on the next poll (`since` the greatest id
    // returned) and its directed ones are still pending.
    owed.sort_by_key(|o| o.id);
    owed.truncate(MAX_MESSAGES);

    // Recorded before answering: the client's next poll is a new registration with no memory of
    // what this one sent, so it must not find these messages still pending.
    let directed = owed.iter().filter(|o| o.directed).map(|o| o.id).collect();
    if let Err(e) = state
        .engine
        .delivered_now(&conn.info.app, &conn.info.user, directed)
        .await
    {
        // Still pending, so they come again: at least once.
        tracing::warn!(error = %e, "recording poll deliveries failed");
    }
    let messages: Vec<PushedMessage> = owed.iter().filter_map(message_of).collect();
    let mut response = Json(messages).into_response();
    if !catchup.truncated().is_empty()
        && let Ok(value) = HeaderValue::from_str(&catchup.truncated().join(","))
    {
        response.headers_mut().insert("mps-reset", value);
    }
    response
}

/// The `Message` of an encoded push frame.
fn message_of(out: &Outbound) -> Option<PushedMessage> {
    serde_json::from_slice::<Frame>(&out.frame)
        .ok()
        .and_then(|f| f.message)
}
