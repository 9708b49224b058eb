//! `GET /sse`: Server-Sent Events. Every push is an event whose `id` is the message id and whose
//! `data` is exactly the WebSocket push frame, so `EventSource` resumes by itself with
//! `Last-Event-ID`. A comment line is the heartbeat.

use std::convert::Infallible;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};

use super::{ClientQuery, Registration, verify_client};
use crate::engine::CatchUp;
use crate::http::{BadRequest, Forbidden, Params, Unauthorized};
use crate::hub::Outbound;
use crate::state::ServerState;
use crate::words::{EndReason, TransportKind};

/// Milliseconds `EventSource` waits before reconnecting.
const RETRY_MS: u64 = 3000;

/// Server-Sent Events.
///
/// Every push is an event whose `id` is the message id and whose `data` is the push frame;
/// `Last-Event-ID` (or `last_id`) resumes; `event: reset` tells of a resume gap.
#[utoipa::path(
    get,
    path = "/sse",
    tag = "transports",
    security(("client_token" = []), ("client_token_query" = [])),
    params(
        ClientQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Last message id seen; wins over `last_id`"),
    ),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
    ),
)]
pub async fn sse(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Params(query): Params<ClientQuery>,
    headers: HeaderMap,
) -> Response {
    metrics::counter!("mps_upgrades_total", "endpoint" => "sse").increment(1);
    let identity = match verify_client(&state, &headers, query.token.as_deref()) {
        Ok(identity) => identity,
        Err(e) => return e.into_response(),
    };
    let resume = query.resume_id(&headers);
    let mut login = match query.login(&state, &identity, resume, TransportKind::Sse, remote) {
        Ok(login) => login,
        Err(e) => return e.into_response(),
    };
    login.request_id = crate::telemetry::request_id(&headers);
    let registration = match Registration::http(&state, &login) {
        Ok(registration) => registration,
        Err(e) => return e.into_response(),
    };
    let stream = Stream {
        state,
        registration,
        catchup: CatchUp::new(login.last_id),
        batch: Vec::new(),
        started: false,
    };
    let body = Body::from_stream(futures_util::stream::unfold(stream, Stream::next));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tell nginx-style proxies not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

struct Stream {
    state: Arc<ServerState>,
    registration: Registration,
    catchup: CatchUp,
    batch: Vec<Outbound>,
    started: bool,
}

impl Stream {
    /// The next chunk of the event stream; `None` ends the response (and, dropping the
    /// registration, takes the connection out of the hub).
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        if !self.started {
            self.started = true;
            return Some((Ok(format!("retry: {RETRY_MS}\n\n").into()), self));
        }
        let conn = self.registration.conn.clone();
        if !self.catchup.done() {
            match self.catchup.next(&self.state.engine, &conn).await {
                Ok(mut batch) => {
                    let chunk = self.events(&mut batch, false).await;
                    return Some((Ok(chunk), self));
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading backlog failed");
                    self.registration.reason = EndReason::StoreError;
                    return None;
                }
            }
        }
        loop {
            conn.wait().await;
            let drained = conn.drain(&mut self.batch);
            if let Some(reason) = drained.closing {
                self.registration.reason = reason.end_reason();
                return None;
            }
            if !self.batch.is_empty() {
                let mut batch = std::mem::take(&mut self.batch);
                let chunk = self.events(&mut batch, true).await;
                self.batch = batch;
                return Some((Ok(chunk), self));
            }
            // The node's heartbeat (see `Conn::beat`): a comment line.
            if drained.beat {
                self.catchup.tidy();
                return Some((Ok(Bytes::from_static(b": ping\n\n")), self));
            }
        }
    }

    /// Encodes frames as events and records the directed ones as delivered.
    async fn events(&mut self, batch: &mut Vec<Outbound>, live: bool) -> Bytes {
        let mut chunk = BytesMut::new();
        let mut directed = Vec::new();
        let mut written = 0;
        for out in batch.drain(..) {
            if live && self.catchup.is_repeat(out.id) {
                continue;
            }
            if out.id == 0 {
                chunk.put_slice(b"event: reset\n");
            } else {
                let _ = writeln!(chunk, "id: {}", out.id);
            }
            chunk.put_slice(b"data: ");
            chunk.put_slice(&out.frame);
            chunk.put_slice(b"\n\n");
            if out.directed {
                directed.push(out.id);
            }
            written += 1;
        }
        crate::telemetry::hot().frames_sent.increment(written);
        if !directed.is_empty() {
            let info = &self.registration.conn.info;
            self.state
                .engine
                .delivered(info.app.clone(), info.user.clone(), directed);
        }
        if chunk.is_empty() {
            // Nothing left after dropping repeats; a comment keeps the stream well-formed.
            return Bytes::from_static(b":\n\n");
        }
        chunk.freeze()
    }
}
