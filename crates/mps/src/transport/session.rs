//! A live WebSocket session after login: sends the user's backlog, then interleaves outbound
//! pushes from the hub, client frames (ack, ping, subscribe, close) and heartbeats until one side
//! closes. Both WebSocket endpoints end up here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mps_proto::{ClientInfo, Frame, close, frame::kind};

use super::Registration;
use super::socket::{CLOSE_WAIT, Failure, Inbound, Socket};
use crate::engine::{CatchUp, EngineError, encode};
use crate::hub::{CloseReason, Conn, Outbound, Subscriptions};
use crate::limits::{TokenBucket, count_bad_input};
use crate::state::ServerState;
use crate::words::EndReason;

/// The close code and reason for a read failure.
pub fn failure_close(failure: Failure) -> (u16, &'static str, EndReason) {
    match failure {
        Failure::TooBig => {
            crate::limits::rejected(crate::limits::Limit::FrameSize);
            (close::TOO_BIG, "frame too large", EndReason::TooBig)
        }
        Failure::BadUtf8 => (close::INVALID_UTF8, "invalid UTF-8", EndReason::BadUtf8),
        Failure::Protocol => (
            close::WS_PROTOCOL,
            "WebSocket protocol error",
            EndReason::WsProtocol,
        ),
        Failure::Io => (close::PROTOCOL, "connection error", EndReason::Io),
    }
}

/// Runs the session on a task of its own until it ends.
///
/// Idle sessions are what a node holds by the ten thousand, so their task is kept to the
/// session alone: the upgrade's task (hyper's upgrade future, the library's handshake state,
/// the open phase and their copies of the socket) ends here instead of staying around it for
/// the connection's life, which halves the memory of an idle connection.
pub fn spawn(state: Arc<ServerState>, socket: Socket, registration: Registration, last_id: u64) {
    let edge = state.edge.clone();
    let session = run(state, socket, registration, last_id);
    tracing::trace!(bytes = std::mem::size_of_val(&session), "session task");
    edge.spawn(session);
}

/// Runs the session until it ends; the connection leaves the hub with the registration.
///
/// Not an `async fn`: those keep a second copy of by-value arguments (the socket) in their
/// state. The block below borrows its captures in place.
// `registration.reason` is read by the registration's drop, when the session is over.
#[allow(unused_assignments, clippy::manual_async_fn)]
fn run(
    state: Arc<ServerState>,
    mut socket: Socket,
    mut registration: Registration,
    last_id: u64,
) -> impl Future<Output = ()> + Send {
    async move {
        let now = Instant::now();
        registration.reason = Session {
            state: &state,
            conn: &registration.conn,
            errors: 0,
            last_seen: now,
            rate: TokenBucket::full(state.config.limits.message_burst, now),
            catchup: CatchUp::new(last_id),
        }
        .drive(&mut socket)
        .await;
        registration.close_code = socket.closed_with();
    }
}

struct Session<'a> {
    state: &'a ServerState,
    conn: &'a Arc<Conn>,
    errors: u32,
    last_seen: Instant,
    /// Frames the client may still send now (`limits.message_rate`, `message_burst`).
    rate: TokenBucket,
    catchup: CatchUp,
}

impl Session<'_> {
    /// Returns the reason the session ended.
    async fn drive(&mut self, socket: &mut Socket) -> EndReason {
        let conn = self.conn;
        let limits = &self.state.config.connection;
        let timeout = Duration::from_secs(limits.timeout.max(1));
        // Rare, large futures are boxed so that every idle connection's task stays small: a
        // future is as large as its largest await point.
        let sent = {
            let mut backlog = Box::pin(self.send_backlog(socket));
            unless_stalled(conn, timeout, backlog.as_mut()).await
        };
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return reason,
            // The close is handled below, on the wake-up that came with it.
            Err(Stall::CloseAsked) => {}
            Err(Stall::Timeout) => return Box::pin(write_timeout(socket)).await,
        }
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                _ = conn.wait() => {
                    let drained = conn.drain(&mut batch);
                    if !batch.is_empty() {
                        let written = {
                            let write = std::pin::pin!(self.write(socket, &mut batch, true));
                            unless_stalled(conn, timeout, write).await
                        };
                        match written {
                            Ok(true) => {}
                            Ok(false) => return EndReason::WriteFailed,
                            // Unwritten directed messages stay pending in the store.
                            Err(Stall::CloseAsked) => batch.clear(),
                            Err(Stall::Timeout) => return Box::pin(write_timeout(socket)).await,
                        }
                    }
                    if let Some(reason) = drained.closing.or_else(|| conn.closing()) {
                        return Box::pin(self.close_for(socket, reason, timeout)).await;
                    }
                    if drained.beat && let Some(reason) = Box::pin(self.heartbeat(socket, timeout)).await {
                        return reason;
                    }
                }
                inbound = socket.recv() => {
                    let now = Instant::now();
                    self.last_seen = now;
                    if !matches!(inbound, Inbound::Closed | Inbound::Failed(_)) && self.over_rate(now) {
                        return Box::pin(rate_exceeded(socket)).await;
                    }
                    match inbound {
                        Inbound::Text(text) => {
                            if let Some(reason) = Box::pin(self.handle(socket, text.as_str())).await {
                                return reason;
                            }
                        }
                        Inbound::Binary(_) => {
                            let reply = Box::pin(self.reject(
                                socket,
                                "binary",
                                Frame::error(kind::ERROR, None, "binary_not_supported", "frames are JSON text"),
                            ));
                            if let Some(reason) = reply.await {
                                return reason;
                            }
                        }
                        Inbound::Alive => {}
                        Inbound::Closed => return EndReason::ClientClosed,
                        Inbound::Failed(failure) => {
                            let (code, text, label) = failure_close(failure);
                            count_bad_input(label.as_str());
                            Box::pin(socket.close(code, text)).await;
                            return label;
                        }
                    }
                }
            }
        }
    }

    /// Closes the connection as asked (`Conn::close`, or its queue overflowed); returns why
    /// the session ended.
    async fn close_for(
        &self,
        socket: &mut Socket,
        reason: CloseReason,
        timeout: Duration,
    ) -> EndReason {
        let (code, text) = match reason {
            CloseReason::SlowConsumer => (
                close::SLOW_CONSUMER,
                "outbound queue overflow: reconnect to resume",
            ),
            CloseReason::Kicked => (close::KICKED, "disconnected by operator"),
            CloseReason::Shutdown => (close::GOING_AWAY, "server shutting down"),
        };
        if reason == CloseReason::SlowConsumer {
            // Out of the hub at once. The close frame waits behind what the peer has not read
            // yet: it gets it if it reads again within the time a silent peer is given, and
            // knows it was too slow.
            self.state.hub.unregister(self.conn);
            socket.close_within(code, text, timeout).await;
        } else {
            socket.close(code, text).await;
        }
        reason.end_reason()
    }

    /// A heartbeat: closes a peer not heard from for the connection timeout, else pings it.
    /// Returns a reason when the session must end.
    async fn heartbeat(&mut self, socket: &mut Socket, timeout: Duration) -> Option<EndReason> {
        self.catchup.tidy();
        if self.last_seen.elapsed() > timeout {
            metrics::counter!("mps_heartbeat_timeouts_total").increment(1);
            socket.close(close::TIMEOUT, "heartbeat timeout").await;
            return Some(EndReason::HeartbeatTimeout);
        }
        let pinged = {
            let ping = std::pin::pin!(socket.ping());
            unless_stalled(self.conn, timeout, ping).await
        };
        match pinged {
            Ok(true) | Err(Stall::CloseAsked) => None,
            Ok(false) => Some(EndReason::WriteFailed),
            Err(Stall::Timeout) => Some(write_timeout(socket).await),
        }
    }

    /// Sends what the client is owed from the store: resume gap, topic replay, directed backlog.
    async fn send_backlog(&mut self, socket: &mut Socket) -> Result<(), EndReason> {
        while !self.catchup.done() {
            let mut batch = match self.catchup.next(&self.state.engine, self.conn).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(error = %e, "reading backlog failed");
                    socket.close(close::INTERNAL, "store unavailable").await;
                    return Err(EndReason::StoreError);
                }
            };
            if !self.write(socket, &mut batch, false).await {
                return Err(EndReason::WriteFailed);
            }
        }
        Ok(())
    }

    /// Writes frames, then records the directed ones as delivered. Live frames (`live`) that
    /// repeat one sent from the store are dropped.
    async fn write(&mut self, socket: &mut Socket, batch: &mut Vec<Outbound>, live: bool) -> bool {
        let catchup = &mut self.catchup;
        if live {
            batch.retain(|out| !catchup.is_repeat(out.id));
        }
        // The frames are taken out as they are written; ids and kinds stay for the record.
        if !socket
            .write_all(batch.iter_mut().map(|out| &mut out.frame))
            .await
        {
            batch.clear();
            return false;
        }
        crate::telemetry::hot()
            .frames_sent
            .increment(batch.len() as u64);
        if batch.iter().any(|o| o.directed) {
            let directed = batch.iter().filter(|o| o.directed).map(|o| o.id).collect();
            let info = &self.conn.info;
            self.state
                .engine
                .delivered(info.app.clone(), info.user.clone(), directed);
        }
        batch.clear();
        true
    }

    /// Handles one client text frame; returns a reason when the session must end.
    async fn handle(&mut self, socket: &mut Socket, text: &str) -> Option<EndReason> {
        let frame: Frame = match serde_json::from_str(text) {
            Ok(frame) => frame,
            Err(e) => {
                let (code, label) = match e.classify() {
                    serde_json::error::Category::Data => ("bad_frame", "bad_frame"),
                    _ => ("bad_json", "bad_json"),
                };
                let reply = Frame::error(kind::ERROR, None, code, e.to_string());
                return Box::pin(self.reject(socket, label, reply)).await;
            }
        };
        let seq = frame.seq;
        let reply = match frame.kind {
            kind::ACK => {
                let ids = frame.ids.unwrap_or_default();
                let info = &self.conn.info;
                match self.state.engine.ack(&info.app, &info.user, &ids).await {
                    Ok(acked) => Frame {
                        acked: Some(acked),
                        ..Frame::reply(kind::ACK, seq)
                    },
                    Err(EngineError::Invalid { code, message }) => {
                        let reply = Frame::error(kind::ERROR, seq, code, message);
                        return Box::pin(self.reject(socket, code, reply)).await;
                    }
                    Err(e) => Frame::error(kind::ERROR, seq, "unavailable", e.to_string()),
                }
            }
            kind::PING => Frame::reply(kind::PONG, seq),
            kind::PONG => return None,
            kind::CLOSE => {
                self.reply(socket, encode(&Frame::reply(kind::CLOSE, seq)))
                    .await;
                socket.close(close::NORMAL, "push closed").await;
                return Some(EndReason::ClientClosed);
            }
            kind::SUBSCRIBE => {
                let client = frame.client.unwrap_or_default();
                let mut wanted = self.conn.subscriptions();
                if let Some(components) = client.component_set {
                    wanted.components = components;
                }
                if let Some(topics) = client.topics {
                    wanted.topics = topics;
                }
                match self.resubscribe(wanted) {
                    Ok(now) => Frame {
                        client: Some(ClientInfo {
                            component_set: Some(now.components),
                            topics: Some(now.topics),
                            ..ClientInfo::default()
                        }),
                        ..Frame::reply(kind::SUBSCRIBE, seq)
                    },
                    Err(refusal) => {
                        let reply = Frame::error(kind::ERROR, seq, refusal.code, refusal.message);
                        return Box::pin(self.reject(socket, refusal.code, reply)).await;
                    }
                }
            }
            kind::OPEN => {
                let reply = Frame::error(
                    kind::ERROR,
                    seq,
                    "already_open",
                    "the session is already open",
                );
                return Box::pin(self.reject(socket, "already_open", reply)).await;
            }
            other => {
                let reply = Frame::error(
                    kind::ERROR,
                    seq,
                    "unknown_type",
                    format!("unknown frame type {other}"),
                );
                return Box::pin(self.reject(socket, "unknown_type", reply)).await;
            }
        };
        if self.reply(socket, encode(&reply)).await {
            None
        } else {
            Some(EndReason::WriteFailed)
        }
    }

    /// Whether a frame arriving at `now` is over the connection's message rate.
    fn over_rate(&mut self, now: Instant) -> bool {
        let limits = &self.state.config.limits;
        limits.message_rate > 0
            && self
                .rate
                .take(limits.message_rate, limits.message_burst, now)
                .is_err()
    }

    /// Sends an answer to a client frame, unless the client stops reading: a client that sends
    /// and never reads must not hold its session in a write forever. False when the write
    /// failed or timed out; true when a close was asked for meanwhile (the loop closes).
    async fn reply(&self, socket: &mut Socket, frame: Bytes) -> bool {
        let timeout = Duration::from_secs(self.state.config.connection.timeout.max(1));
        let mut send = Box::pin(socket.send(frame));
        match unless_stalled(self.conn, timeout, send.as_mut()).await {
            Ok(sent) => sent,
            Err(Stall::CloseAsked) => true,
            Err(Stall::Timeout) => false,
        }
    }

    /// Replaces the connection's subscriptions after checking them against the token's claims.
    fn resubscribe(&self, wanted: Subscriptions) -> Result<Subscriptions, super::Refusal> {
        let identity = crate::auth::Identity {
            app: self.conn.info.app.to_string(),
            user: self.conn.info.user.to_string(),
            topics: self.conn.info.topic_claim.clone(),
        };
        super::check_subscriptions(self.state, &identity, &wanted)?;
        self.state.hub.set_subscriptions(self.conn, wanted.clone());
        Ok(wanted)
    }

    /// Answers a bad client frame with an error frame; closes after too many.
    async fn reject(
        &mut self,
        socket: &mut Socket,
        label: &'static str,
        reply: Frame,
    ) -> Option<EndReason> {
        count_bad_input(label);
        self.errors += 1;
        if !self.reply(socket, encode(&reply)).await {
            return Some(EndReason::WriteFailed);
        }
        if self.errors >= self.state.config.connection.max_errors {
            socket.close(close::PROTOCOL, "too many bad frames").await;
            return Some(EndReason::ProtocolAbuse);
        }
        None
    }
}

/// Why an outbound write was given up.
enum Stall {
    /// A close was asked for (queue overflow, operator, shutdown).
    CloseAsked,
    /// The peer took nothing for the connection timeout.
    Timeout,
}

/// Runs an outbound write unless a close is asked for, or the timeout passes, first. A peer that
/// stops reading blocks writes once the socket buffers are full; without this its session would
/// wait on it forever, never close it and never leave the hub.
async fn unless_stalled<F: Future>(
    conn: &Conn,
    timeout: Duration,
    mut write: std::pin::Pin<&mut F>,
) -> Result<F::Output, Stall> {
    // Most writes finish at once; only a write that has to wait arms the guards, in a boxed
    // future so that they do not enlarge every idle session.
    if let Some(done) = futures_util::FutureExt::now_or_never(write.as_mut()) {
        return Ok(done);
    }
    Box::pin(guarded(conn, timeout, write)).await
}

async fn guarded<F: Future>(
    conn: &Conn,
    timeout: Duration,
    write: std::pin::Pin<&mut F>,
) -> Result<F::Output, Stall> {
    tokio::select! {
        biased;
        done = write => Ok(done),
        _ = conn.close_asked() => Err(Stall::CloseAsked),
        _ = tokio::time::sleep(timeout) => Err(Stall::Timeout),
    }
}

/// Closes a session whose client sends frames faster than `limits.message_rate`: an error frame
/// saying so, then close 4429.
async fn rate_exceeded(socket: &mut Socket) -> EndReason {
    crate::limits::rejected(crate::limits::Limit::MessageRate);
    count_bad_input("rate_limited");
    let error = error_bytes(
        kind::ERROR,
        None,
        "rate_limited",
        "more frames a second than the server takes",
    );
    let _ = tokio::time::timeout(CLOSE_WAIT, socket.send(error)).await;
    socket.close(close::TOO_MANY, "message rate exceeded").await;
    EndReason::RateLimited
}

/// Closes a session whose peer accepted nothing for the connection timeout.
async fn write_timeout(socket: &mut Socket) -> EndReason {
    metrics::counter!("mps_heartbeat_timeouts_total").increment(1);
    socket.close(close::TIMEOUT, "peer not reading").await;
    EndReason::WriteTimeout
}

/// Frame bytes of an error reply, for the login phase.
pub fn error_bytes(kind: u8, seq: Option<u64>, code: &str, message: impl Into<String>) -> Bytes {
    encode(&Frame::error(kind, seq, code, message))
}
