//! A live WebSocket session after login: sends the user's backlog, then interleaves outbound
//! pushes from the hub, client frames (ack, ping, subscribe, close) and heartbeats until one side
//! closes. Both WebSocket endpoints end up here.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mps_proto::{ClientInfo, Frame, close, frame::kind};

use super::socket::{Failure, Inbound, Socket};
use crate::engine::{EngineError, encode};
use crate::hub::{CloseReason, Conn, Outbound};
use crate::server::ServerState;

/// How long ids sent from the backlog are remembered to drop their live duplicates.
const BACKLOG_DEDUP: Duration = Duration::from_secs(10);

/// Records a rejected client input in metrics.
pub fn count_bad_input(kind: &'static str) {
    metrics::counter!("mps_bad_input_total", "kind" => kind).increment(1);
}

/// The close code and reason for a read failure.
pub fn failure_close(failure: Failure) -> (u16, &'static str, &'static str) {
    match failure {
        Failure::TooBig => (close::TOO_BIG, "frame too large", "too_big"),
        Failure::BadUtf8 => (close::INVALID_UTF8, "invalid UTF-8", "bad_utf8"),
        Failure::Protocol => (close::PROTOCOL, "WebSocket protocol error", "ws_protocol"),
        Failure::Io => (close::PROTOCOL, "connection error", "io"),
    }
}

/// Runs the session until it ends; unregisters the connection afterwards.
pub async fn run(state: Arc<ServerState>, mut socket: Socket, conn: Arc<Conn>) {
    let reason = Session {
        state: &state,
        conn: &conn,
        errors: 0,
        last_seen: Instant::now(),
        backlog: HashSet::new(),
        backlog_until: Instant::now(),
    }
    .drive(&mut socket)
    .await;
    state.hub.unregister(&conn);
    metrics::counter!("mps_disconnects_total", "reason" => reason).increment(1);
    tracing::info!(
        conn = conn.id,
        app = %conn.info.app,
        user = %conn.info.user,
        agent = %conn.info.agent,
        reason,
        "client disconnected"
    );
}

struct Session<'a> {
    state: &'a ServerState,
    conn: &'a Arc<Conn>,
    errors: u32,
    last_seen: Instant,
    /// Ids sent from the backlog, so that the same message arriving live is not sent twice.
    backlog: HashSet<u64>,
    backlog_until: Instant,
}

impl Session<'_> {
    /// Returns the reason the session ended (a metrics label).
    async fn drive(&mut self, socket: &mut Socket) -> &'static str {
        let conn = self.conn;
        let limits = &self.state.config.connection;
        let timeout = Duration::from_secs(limits.timeout.max(1));
        match unless_stalled(conn, timeout, self.send_backlog(socket)).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return reason,
            // The close is handled below, on the wake-up that came with it.
            Err(Stall::CloseAsked) => {}
            Err(Stall::Timeout) => return write_timeout(socket).await,
        }
        let mut heartbeat = tokio::time::interval(Duration::from_secs(limits.heartbeat.max(1)));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                _ = conn.wait() => {
                    let closing = conn.drain(&mut batch);
                    match unless_stalled(conn, timeout, self.write(socket, &mut batch)).await {
                        Ok(true) => {}
                        Ok(false) => return "write_failed",
                        // Unwritten directed messages stay pending in the store.
                        Err(Stall::CloseAsked) => batch.clear(),
                        Err(Stall::Timeout) => return write_timeout(socket).await,
                    }
                    if let Some(reason) = closing.or_else(|| conn.closing()) {
                        let (code, text, label) = match reason {
                            CloseReason::SlowConsumer => (close::SLOW_CONSUMER, "outbound queue overflow: reconnect to resume", "slow_consumer"),
                            CloseReason::Kicked => (close::KICKED, "disconnected by operator", "kicked"),
                            CloseReason::Shutdown => (close::GOING_AWAY, "server shutting down", "shutdown"),
                        };
                        socket.close(code, text).await;
                        return label;
                    }
                }
                inbound = socket.recv() => {
                    self.last_seen = Instant::now();
                    match inbound {
                        Inbound::Text(text) => {
                            if let Some(reason) = self.handle(socket, text.as_str()).await {
                                return reason;
                            }
                        }
                        Inbound::Binary => {
                            let reply = Frame::error(kind::ERROR, None, "binary_not_supported", "frames are JSON text");
                            if let Some(reason) = self.reject(socket, "binary", reply).await {
                                return reason;
                            }
                        }
                        Inbound::Alive => {}
                        Inbound::Closed => return "client_closed",
                        Inbound::Failed(failure) => {
                            let (code, text, label) = failure_close(failure);
                            count_bad_input(label);
                            socket.close(code, text).await;
                            return label;
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    if self.last_seen.elapsed() > timeout {
                        metrics::counter!("mps_heartbeat_timeouts_total").increment(1);
                        socket.close(close::TIMEOUT, "heartbeat timeout").await;
                        return "heartbeat_timeout";
                    }
                    match unless_stalled(conn, timeout, socket.ping()).await {
                        Ok(true) => {}
                        Ok(false) => return "write_failed",
                        Err(Stall::CloseAsked) => {}
                        Err(Stall::Timeout) => return write_timeout(socket).await,
                    }
                }
            }
        }
    }

    /// Sends every pending directed message of the user, oldest first.
    async fn send_backlog(&mut self, socket: &mut Socket) -> Result<(), &'static str> {
        let info = &self.conn.info;
        let mut after = 0;
        loop {
            let page = match self
                .state
                .engine
                .backlog(&info.app, &info.user, &info.agent, after)
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(error = %e, "reading backlog failed");
                    socket.close(close::INTERNAL, "store unavailable").await;
                    return Err("store_error");
                }
            };
            let full = page.len() == crate::engine::BACKLOG_PAGE;
            let mut ids = Vec::with_capacity(page.len());
            for (id, frame) in page {
                if !socket.feed(frame).await {
                    return Err("write_failed");
                }
                self.backlog.insert(id);
                ids.push(id);
                after = id;
            }
            if !socket.flush().await {
                return Err("write_failed");
            }
            self.state
                .engine
                .delivered(info.app.clone(), info.user.clone(), ids)
                .await;
            if !full {
                break;
            }
        }
        self.backlog_until = Instant::now() + BACKLOG_DEDUP;
        Ok(())
    }

    /// Writes queued frames, then records the directed ones as delivered.
    async fn write(&mut self, socket: &mut Socket, batch: &mut Vec<Outbound>) -> bool {
        if !self.backlog.is_empty() && Instant::now() > self.backlog_until {
            self.backlog = HashSet::new();
        }
        let mut directed = Vec::new();
        let mut written = 0;
        for out in batch.drain(..) {
            if let Some(id) = out.directed {
                if self.backlog.contains(&id) {
                    continue;
                }
                directed.push(id);
            }
            if !socket.feed(out.frame).await {
                return false;
            }
            written += 1;
        }
        if !socket.flush().await {
            return false;
        }
        metrics::counter!("mps_frames_sent_total").increment(written);
        let info = &self.conn.info;
        self.state
            .engine
            .delivered(info.app.clone(), info.user.clone(), directed)
            .await;
        true
    }

    /// Handles one client text frame; returns a reason when the session must end.
    async fn handle(&mut self, socket: &mut Socket, text: &str) -> Option<&'static str> {
        let frame: Frame = match serde_json::from_str(text) {
            Ok(frame) => frame,
            Err(e) => {
                let (code, label) = match e.classify() {
                    serde_json::error::Category::Data => ("bad_frame", "bad_frame"),
                    _ => ("bad_json", "bad_json"),
                };
                let reply = Frame::error(kind::ERROR, None, code, e.to_string());
                return self.reject(socket, label, reply).await;
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
                        return self.reject(socket, code, reply).await;
                    }
                    Err(e) => Frame::error(kind::ERROR, seq, "unavailable", e.to_string()),
                }
            }
            kind::PING => Frame::reply(kind::PONG, seq),
            kind::PONG => return None,
            kind::CLOSE => {
                socket.send(encode(&Frame::reply(kind::CLOSE, seq))).await;
                socket.close(close::NORMAL, "push closed").await;
                return Some("client_closed");
            }
            kind::SUBSCRIBE => {
                let components = frame
                    .client
                    .and_then(|c| c.component_set)
                    .unwrap_or_default();
                match check_components(&components) {
                    Ok(()) => {
                        self.state.hub.set_components(self.conn, components.clone());
                        Frame {
                            client: Some(ClientInfo {
                                component_set: Some(components),
                                ..ClientInfo::default()
                            }),
                            ..Frame::reply(kind::SUBSCRIBE, seq)
                        }
                    }
                    Err(message) => {
                        let reply = Frame::error(kind::ERROR, seq, "invalid_components", message);
                        return self.reject(socket, "invalid_components", reply).await;
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
                return self.reject(socket, "already_open", reply).await;
            }
            other => {
                let reply = Frame::error(
                    kind::ERROR,
                    seq,
                    "unknown_type",
                    format!("unknown frame type {other}"),
                );
                return self.reject(socket, "unknown_type", reply).await;
            }
        };
        if socket.send(encode(&reply)).await {
            None
        } else {
            Some("write_failed")
        }
    }

    /// Answers a bad client frame with an error frame; closes after too many.
    async fn reject(
        &mut self,
        socket: &mut Socket,
        label: &'static str,
        reply: Frame,
    ) -> Option<&'static str> {
        count_bad_input(label);
        self.errors += 1;
        if !socket.send(encode(&reply)).await {
            return Some("write_failed");
        }
        if self.errors >= self.state.config.connection.max_errors {
            socket.close(close::PROTOCOL, "too many bad frames").await;
            return Some("protocol_abuse");
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
async fn unless_stalled<T>(
    conn: &Conn,
    timeout: Duration,
    write: impl Future<Output = T>,
) -> Result<T, Stall> {
    tokio::select! {
        biased;
        done = write => Ok(done),
        _ = conn.close_asked() => Err(Stall::CloseAsked),
        _ = tokio::time::sleep(timeout) => Err(Stall::Timeout),
    }
}

/// Closes a session whose peer accepted nothing for the connection timeout.
async fn write_timeout(socket: &mut Socket) -> &'static str {
    metrics::counter!("mps_heartbeat_timeouts_total").increment(1);
    socket.close(close::TIMEOUT, "peer not reading").await;
    "write_timeout"
}

/// Most components one connection may subscribe to.
pub const MAX_COMPONENTS: usize = 256;

/// Checks a component set from a client.
pub fn check_components(components: &[String]) -> Result<(), String> {
    if components.len() > MAX_COMPONENTS {
        return Err(format!("at most {MAX_COMPONENTS} components"));
    }
    for c in components {
        crate::engine::check_name("component", c).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Frame bytes of an error reply, for the login phase.
pub fn error_bytes(kind: u8, seq: Option<u64>, code: &str, message: impl Into<String>) -> Bytes {
    encode(&Frame::error(kind, seq, code, message))
}
