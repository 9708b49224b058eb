//! One live connection as the hub sees it: identity, subscriptions and a bounded outbound queue.
//! The queue is a `VecDeque` behind a mutex plus a `Notify`: an idle connection holds no queue
//! memory, and a push never waits. The same wake-up carries heartbeats (see [`Conn::beat`]) and
//! close requests, so a connection's task waits on one thing while idle.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::words::{EndReason, TransportKind};

/// Identity of a connection, fixed at login.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub app: Arc<str>,
    pub user: Arc<str>,
    pub agent: Box<str>,
    pub device: Option<Box<str>>,
    pub transport: TransportKind,
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

impl CloseReason {
    /// Why the session it closes ended.
    pub fn end_reason(self) -> EndReason {
        match self {
            CloseReason::SlowConsumer => EndReason::SlowConsumer,
            CloseReason::Kicked => EndReason::Kicked,
            CloseReason::Shutdown => EndReason::Shutdown,
        }
    }
}

struct Outbox {
    queue: VecDeque<Outbound>,
    closing: Option<CloseReason>,
    /// A heartbeat is due: the session pings its peer and checks it was heard from lately.
    beat: bool,
}

/// What a wake-up found besides the frames: see [`Conn::drain`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// A close was asked for.
    pub closing: Option<CloseReason>,
    /// A heartbeat is due.
    pub beat: bool,
}

pub struct Conn {
    pub id: u64,
    pub info: ConnInfo,
    subscriptions: Mutex<Subscriptions>,
    outbox: Mutex<Outbox>,
    /// Wakes the connection's task: frames were queued, a close was asked for or a heartbeat is
    /// due. The task is its only waiter.
    wake: Notify,
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
                beat: false,
            }),
            wake: Notify::new(),
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
    }

    /// Marks a heartbeat due and wakes the connection's task. The node's heartbeat task calls
    /// this for every connection once per heartbeat period: one timer for the node instead of
    /// one per connection, which an idle connection would otherwise carry for its whole life.
    pub fn beat(&self) {
        let mut outbox = self.outbox.lock();
        if outbox.closing.is_some() || outbox.beat {
            return;
        }
        outbox.beat = true;
        drop(outbox);
        self.wake.notify_one();
    }

    pub fn closing(&self) -> Option<CloseReason> {
        self.outbox.lock().closing
    }

    /// Waits until a close is asked for; at once when it already was. For a task that is busy
    /// writing (and so not in [`Conn::wait`]): the wake-ups it takes for queued frames or a
    /// heartbeat are given back when it is done, so the task's next wait sees them.
    pub async fn close_asked(&self) -> CloseReason {
        /// Wakes the task again on drop if a wake-up was taken meanwhile.
        struct GiveBack<'a>(&'a Notify, bool);
        impl Drop for GiveBack<'_> {
            fn drop(&mut self) {
                if self.1 {
                    self.0.notify_one();
                }
            }
        }
        let mut taken = GiveBack(&self.wake, false);
        loop {
            // A close asked for after this check stores a wake-up, which the wait takes at once.
            if let Some(reason) = self.closing() {
                return reason;
            }
            self.wake.notified().await;
            taken.1 = true;
        }
    }

    /// Waits until something was queued, a close was asked for or a heartbeat is due.
    pub async fn wait(&self) {
        self.wake.notified().await
    }

    /// Moves every queued frame into `into`; says whether a close was asked for and takes a
    /// due heartbeat.
    pub fn drain(&self, into: &mut Vec<Outbound>) -> Drained {
        let mut outbox = self.outbox.lock();
        into.extend(outbox.queue.drain(..));
        if outbox.queue.capacity() > 64 {
            outbox.queue.shrink_to(16);
        }
        Drained {
            closing: outbox.closing,
            beat: std::mem::take(&mut outbox.beat),
        }
    }
}
