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
    Binary(Bytes),
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
        // The read buffer lives as long as the connection. The library reserves a frame's whole
        // length on top of what it has buffered and keeps that capacity, so a small read size
        // keeps the buffer near the size of the largest frame read (the open frame, with its
        // token: about 300 bytes), where 256 made it 640. Client frames are few and small; one
        // above 64 bytes takes several reads.
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
    /// The close code this side sent, for the connection's log line.
    closed_with: Option<u16>,
}

impl Socket {
    pub fn new(inner: WebSocket) -> Self {
        Socket {
            inner,
            closed_with: None,
        }
    }

    /// The close code the server sent, if it closed the connection.
    pub fn closed_with(&self) -> Option<u16> {
        self.closed_with
    }

    /// Next event from the client. Cancel-safe.
    ///
    /// Written as one `poll_fn` holding a pointer and one boxed timer only while a close is
    /// answered: an idle session's task waits in this future, so its size is every idle
    /// connection's.
    pub fn recv(&mut self) -> impl Future<Output = Inbound> + Send + '_ {
        use futures_util::{Sink, Stream};
        use std::pin::Pin;
        use std::task::Poll;
        let mut answering: Option<Pin<Box<tokio::time::Sleep>>> = None;
        std::future::poll_fn(move |cx| {
            if let Some(deadline) = answering.as_mut() {
                // The library has queued the close reply; send it now (within CLOSE_WAIT),
                // since the caller drops the socket next.
                let flushed = Pin::new(&mut self.inner).poll_flush(cx).is_ready();
                if flushed || deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Inbound::Closed);
                }
                return Poll::Pending;
            }
            let Poll::Ready(next) = Pin::new(&mut self.inner).poll_next(cx) else {
                return Poll::Pending;
            };
            Poll::Ready(match next {
                None => Inbound::Closed,
                Some(Ok(Message::Close(_))) => {
                    answering = Some(Box::pin(tokio::time::sleep(CLOSE_WAIT)));
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Some(Ok(Message::Text(text))) => Inbound::Text(text),
                Some(Ok(Message::Binary(data))) => Inbound::Binary(data),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => Inbound::Alive,
                Some(Err(e)) => Inbound::Failed(classify(e)),
            })
        })
    }

    /// Queues a text frame (already valid UTF-8 JSON) without flushing.
    pub async fn feed(&mut self, text: Bytes) -> bool {
        let Ok(text) = Utf8Bytes::try_from(text) else {
            return true;
        };
        self.inner.feed(Message::Text(text)).await.is_ok()
    }

    /// Writes `frames` (valid UTF-8 JSON text) in order and flushes them, in one write where they
    /// fit the write buffer. Each frame is taken out of its slot (left empty) as it is handed to
    /// the library. The future holds the iterator and one slot: it sits in every session's
    /// state, so it is kept small.
    pub fn write_all<'a>(
        &'a mut self,
        mut frames: impl Iterator<Item = &'a mut Bytes> + Send + 'a,
    ) -> impl Future<Output = bool> + Send + 'a {
        use futures_util::Sink;
        use std::pin::Pin;
        use std::task::Poll;
        let mut next: Option<&mut Bytes> = None;
        std::future::poll_fn(move |cx| {
            loop {
                if next.is_none() {
                    next = frames.next();
                }
                let Some(slot) = next.take() else { break };
                match Pin::new(&mut self.inner).poll_ready(cx) {
                    Poll::Pending => {
                        next = Some(slot);
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(false),
                    Poll::Ready(Ok(())) => {}
                }
                let Ok(text) = Utf8Bytes::try_from(std::mem::take(slot)) else {
                    continue;
                };
                if Pin::new(&mut self.inner)
                    .start_send(Message::Text(text))
                    .is_err()
                {
                    return Poll::Ready(false);
                }
            }
            Pin::new(&mut self.inner)
                .poll_flush(cx)
                .map(|flushed| flushed.is_ok())
        })
    }

    pub async fn flush(&mut self) -> bool {
        self.inner.flush().await.is_ok()
    }

    /// Sends one text frame now.
    pub async fn send(&mut self, text: Bytes) -> bool {
        self.feed(text).await && self.flush().await
    }

    /// Sends one binary frame now (only the conformance echo sends binary).
    pub async fn send_binary(&mut self, data: Bytes) -> bool {
        self.inner.send(Message::Binary(data)).await.is_ok()
    }

    pub async fn ping(&mut self) -> bool {
        self.inner.send(Message::Ping(Bytes::new())).await.is_ok()
    }

    /// Sends a close frame with a code and reason, then reads (and drops) what the peer still
    /// sends until its own close: closing the socket with unread input would reset it, and the
    /// peer would lose the close frame and the frames before it. The connection is done
    /// afterwards. Gives up after [`CLOSE_WAIT`]: a peer that stopped reading cannot take it.
    pub async fn close(&mut self, code: u16, reason: &str) {
        self.close_within(code, reason, CLOSE_WAIT).await
    }

    /// [`Socket::close`], giving up after `wait`.
    pub async fn close_within(&mut self, code: u16, reason: &str, wait: std::time::Duration) {
        crate::telemetry::count_close(code);
        self.closed_with = Some(code);
        // Boxed: closing happens once, and an inline future would enlarge every session.
        Box::pin(async move {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from(close_reason(reason)),
            };
            let _ = tokio::time::timeout(wait, async {
                if self.inner.send(Message::Close(Some(frame))).await.is_err() {
                    return;
                }
                let _ = self.inner.flush().await;
                while let Some(Ok(message)) = self.inner.recv().await {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        })
        .await
    }
}

/// Longest reason a close frame carries (RFC 6455: the payload is at most 125 bytes).
const MAX_CLOSE_REASON: usize = 123;

/// `reason` cut to what a close frame can carry, at a character boundary: a longer one (a
/// token error quoting the token, say) would make the close frame itself fail.
fn close_reason(reason: &str) -> &str {
    if reason.len() <= MAX_CLOSE_REASON {
        return reason;
    }
    let mut end = MAX_CLOSE_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_a_close_frame() {
        assert_eq!(close_reason("short"), "short");
        let long = "é".repeat(100);
        let cut = close_reason(&long);
        assert!(cut.len() <= MAX_CLOSE_REASON && cut.len() >= MAX_CLOSE_REASON - 1);
        assert!(long.starts_with(cut));
    }
}
