//! One live connection as the hub sees it: identity, subscriptions and a bounded outbound queue.
//! The queue is a `VecDeque` behind a mutex plus a `Notify`: an idle connection holds no queue
//! memory, and a push never waits.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Identity of a connection, fixed at login.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub app: Arc<str>,
    pub user: Arc<str>,
    pub agent: Box<str>,
    pub device: Option<Box<str>>,
    /// `websocket` or `websocket-simple`.
    pub transport: &'static str,
    /// Login time, Unix ms.
    pub login: i64,
    pub remote: SocketAddr,
    /// The token's topic claim, to check later subscription changes against.
    pub topic_claim: Option<Vec<String>>,
}

/// A frame waiting to be written.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub frame: Bytes,
    /// Message id, to drop a live copy of a message already sent from the store.
    pub id: u64,
    /// Directed messages are recorded as delivered once written.
    pub directed: bool,
}

/// What a connection listens to besides its user's directed messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscriptions {
    pub components: Vec<String>,
    /// Topic patterns.
    pub topics: Vec<String>,
}

/// Why the server closes a connection on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The outbound queue overflowed.
    SlowConsumer,
    /// An operator disconnected it.
    Kicked,
    /// The server is shutting down.
    Shutdown,
}

struct Outbox {
    queue: VecDeque<Outbound>,
    closing: Option<CloseReason>,
}

pub struct Conn {
    pub id: u64,
    pub info: ConnInfo,
    subscriptions: Mutex<Subscriptions>,
    outbox: Mutex<Outbox>,
    wake: Notify,
    /// Woken (all waiters) when a close is asked for, so that a write stuck on a peer that
    /// stopped reading can be abandoned.
    close_asked: Notify,
    capacity: usize,
}

impl Conn {
    pub(super) fn new(
        id: u64,
        info: ConnInfo,
        capacity: usize,
        subscriptions: Subscriptions,
    ) -> Self {
        Conn {
            id,
            info,
            subscriptions: Mutex::new(subscriptions),
            outbox: Mutex::new(Outbox {
                queue: VecDeque::new(),
                closing: None,
            }),
            wake: Notify::new(),
            close_asked: Notify::new(),
            capacity,
        }
    }

    pub fn subscriptions(&self) -> Subscriptions {
        self.subscriptions.lock().clone()
    }

    /// Whether the connection's component set includes `component`.
    pub fn subscribed_to(&self, component: &str) -> bool {
        self.subscriptions
            .lock()
            .components
            .iter()
            .any(|c| c == component)
    }

    pub(super) fn set_subscriptions(&self, subscriptions: Subscriptions) -> Subscriptions {
        std::mem::replace(&mut *self.subscriptions.lock(), subscriptions)
    }

    /// Queues a frame; false when the connection is closing or its queue overflowed (then it
    /// is marked to close as a slow consumer).
    pub fn push(&self, out: Outbound) -> bool {
        let mut outbox = self.outbox.lock();
        if outbox.closing.is_some() {
            drop(outbox);
            crate::telemetry::hot().queue_dropped.increment(1);
            return false;
        }
        if outbox.queue.len() >= self.capacity {
            outbox.closing = Some(CloseReason::SlowConsumer);
            // The queued frames and this one; directed ones stay pending in the store.
            let dropped = outbox.queue.len() as u64 + 1;
            outbox.queue = VecDeque::new();
            drop(outbox);
            crate::telemetry::hot().queue_dropped.increment(dropped);
            metrics::counter!("mps_slow_consumer_disconnects_total").increment(1);
            crate::limits::rejected(crate::limits::Limit::OutboundQueue);
            self.wake.notify_one();
            self.close_asked.notify_waiters();
            return false;
        }
        let was_empty = outbox.queue.is_empty();
        outbox.queue.push_back(out);
        drop(outbox);
        if was_empty {
            self.wake.notify_one();
        }
        true
    }

    /// Asks the connection's task to close.
    pub fn close(&self, reason: CloseReason) {
        let mut outbox = self.outbox.lock();
        if outbox.closing.is_none() {
            outbox.closing = Some(reason);
        }
        drop(outbox);
        self.wake.notify_one();
        self.close_asked.notify_waiters();
    }

    pub fn closing(&self) -> Option<CloseReason> {
        self.outbox.lock().closing
    }

    /// Waits until a close is asked for; at once when it already was.
    pub async fn close_asked(&self) -> CloseReason {
        loop {
            // Registered before the check, so a close asked for in between is not missed.
            let asked = self.close_asked.notified();
            if let Some(reason) = self.closing() {
                return reason;
            }
            asked.await;
        }
    }

    /// Waits until something was queued or a close was asked for.
    pub async fn wait(&self) {
        self.wake.notified().await
    }

    /// Moves every queued frame into `into`; returns the close reason if one was set.
    pub fn drain(&self, into: &mut Vec<Outbound>) -> Option<CloseReason> {
        let mut outbox = self.outbox.lock();
        into.extend(outbox.queue.drain(..));
        if outbox.queue.capacity() > 64 {
            outbox.queue.shrink_to(16);
        }
        outbox.closing
    }
}
