//! The seam between the WebSocket library and the rest of mps: everything above this file sees
//! [`Socket`] and [`Inbound`], never the library's types, so the library can be swapped for a
//! faster one without touching the session logic.

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use bytes::Bytes;
use futures_util::SinkExt;

use crate::config::ConnectionConfig;

/// What arrived from the client.
pub enum Inbound {
    Text(Utf8Bytes),
    Binary,
    /// A ping or pong: the peer is alive.
    Alive,
    /// The peer closed, or the stream ended.
    Closed,
    Failed(Failure),
}

/// Why reading from the client failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    TooBig,
    BadUtf8,
    Protocol,
    Io,
}

/// Applies the per-connection limits and buffer sizes to an upgrade.
pub fn configure(upgrade: WebSocketUpgrade, limits: &ConnectionConfig) -> WebSocketUpgrade {
    upgrade
        .read_buffer_size(256)
        // Frames fed in one batch go out in one write (up to this many bytes), not one each.
        .write_buffer_size(8 * 1024)
        .max_message_size(limits.max_frame)
        .max_frame_size(limits.max_frame)
}

/// Longest wait to hand a close frame to a peer.
pub const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

pub struct Socket {
    inner: WebSocket,
}

impl Socket {
    pub fn new(inner: WebSocket) -> Self {
        Socket { inner }
    }

    /// Next event from the client. Cancel-safe.
    pub async fn recv(&mut self) -> Inbound {
        match self.inner.recv().await {
            None | Some(Ok(Message::Close(_))) => Inbound::Closed,
            Some(Ok(Message::Text(text))) => Inbound::Text(text),
            Some(Ok(Message::Binary(_))) => Inbound::Binary,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Inbound::Alive,
            Some(Err(e)) => Inbound::Failed(classify(e)),
        }
    }

    /// Queues a text frame (already valid UTF-8 JSON) without flushing.
    pub async fn feed(&mut self, text: Bytes) -> bool {
        let Ok(text) = Utf8Bytes::try_from(text) else {
            return true;
        };
        self.inner.feed(Message::Text(text)).await.is_ok()
    }

    pub async fn flush(&mut self) -> bool {
        self.inner.flush().await.is_ok()
    }

    /// Sends one text frame now.
    pub async fn send(&mut self, text: Bytes) -> bool {
        self.feed(text).await && self.flush().await
    }

    pub async fn ping(&mut self) -> bool {
        self.inner.send(Message::Ping(Bytes::new())).await.is_ok()
    }

    /// Sends a close frame with a code and reason; the connection is done afterwards. Gives up
    /// after [`CLOSE_WAIT`]: a peer that stopped reading cannot take it.
    pub async fn close(&mut self, code: u16, reason: &str) {
        // Boxed: closing happens once, and an inline future would enlarge every session.
        Box::pin(async move {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from(reason),
            };
            let _ = tokio::time::timeout(CLOSE_WAIT, async {
                let _ = self.inner.send(Message::Close(Some(frame))).await;
                let _ = self.inner.flush().await;
            })
            .await;
        })
        .await
    }
}

fn classify(error: axum::Error) -> Failure {
    use tungstenite::Error;
    let inner = error.into_inner();
    match inner.downcast_ref::<Error>() {
        Some(Error::Capacity(_)) => Failure::TooBig,
        Some(Error::Utf8(_)) => Failure::BadUtf8,
        Some(Error::Protocol(_)) => Failure::Protocol,
        _ => Failure::Io,
    }
}
