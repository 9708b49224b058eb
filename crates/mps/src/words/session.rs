//! The words of a client session: the transport it came in by and why it ended. Their names
//! are metrics labels, log values and webhook fields, so they never change.

/// The transport a connection came in by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// The WebSocket endpoint with an open frame.
    Websocket,
    /// The WebSocket endpoint logged in by its query.
    WebsocketSimple,
    /// Server-sent events.
    Sse,
    /// Long polling: one connection per request, not counted as a session.
    Poll,
}

impl TransportKind {
    /// In the order of `mps_connections`' series.
    pub const ALL: [TransportKind; 4] = [
        TransportKind::Websocket,
        TransportKind::WebsocketSimple,
        TransportKind::Sse,
        TransportKind::Poll,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Websocket => "websocket",
            TransportKind::WebsocketSimple => "websocket-simple",
            TransportKind::Sse => "sse",
            TransportKind::Poll => "poll",
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// The client closed it, or went away.
    ClientClosed,
    /// Writing to the connection failed.
    WriteFailed,
    /// The peer did not read what was written within the connection timeout.
    WriteTimeout,
    /// The peer was not heard from within the connection timeout.
    HeartbeatTimeout,
    /// The backlog could not be read.
    StoreError,
    /// Too many bad frames.
    ProtocolAbuse,
    /// More frames a second than the limits allow.
    RateLimited,
    /// The outbound queue overflowed.
    SlowConsumer,
    /// An operator disconnected it.
    Kicked,
    /// The server is shutting down.
    Shutdown,
    /// A frame over the size limit.
    TooBig,
    /// A text frame that is not UTF-8.
    BadUtf8,
    /// A WebSocket protocol error.
    WsProtocol,
    /// The connection failed under the WebSocket.
    Io,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::ClientClosed => "client_closed",
            EndReason::WriteFailed => "write_failed",
            EndReason::WriteTimeout => "write_timeout",
            EndReason::HeartbeatTimeout => "heartbeat_timeout",
            EndReason::StoreError => "store_error",
            EndReason::ProtocolAbuse => "protocol_abuse",
            EndReason::RateLimited => "rate_limited",
            EndReason::SlowConsumer => "slow_consumer",
            EndReason::Kicked => "kicked",
            EndReason::Shutdown => "shutdown",
            EndReason::TooBig => "too_big",
            EndReason::BadUtf8 => "bad_utf8",
            EndReason::WsProtocol => "ws_protocol",
            EndReason::Io => "io",
        }
    }
}
