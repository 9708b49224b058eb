//! Fan-out of live messages to the nodes that hold the recipients' connections, behind the
//! [`Broker`] trait. The embedded default, [`LocalBroker`], hands envelopes straight to this
//! node's hub; [`redis::RedisBroker`] carries them to every node's hub over Redis pub/sub.

pub mod redis;
pub mod wire;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::hub::{Envelope, Hub};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Delivers the envelope to every node's matching connections; returns how many
    /// connections of this node took it (other nodes report nothing back).
    async fn publish(&self, envelope: Envelope) -> Result<usize, BrokerError>;

    /// Returns once every connection registered so far receives what is published from now
    /// on, from any node. A connection's catch-up reads the store after this, so that each
    /// message is either in what it reads or delivered live.
    async fn ready(&self) {}

    /// Whether the broker can reach what it needs (for `/readyz`).
    async fn check(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Changes each time the broker is back in touch with the other nodes after losing them:
    /// the value is the first message id this node's connections may have missed meanwhile.
    /// Whoever holds the connections catches them up from the store.
    fn reconnected(&self) -> watch::Receiver<u64> {
        // A broker that never loses touch: the sender is gone, so waiting ends at once.
        watch::channel(0).1
    }

    /// Whether this node delivered the message lately, so that a catch-up after a reconnect
    /// need not send it again.
    fn delivered_lately(&self, _id: u64) -> bool {
        false
    }
}

/// Single-node broker: publishing is delivering to the local hub.
pub struct LocalBroker {
    hub: Arc<Hub>,
}

impl LocalBroker {
    pub fn new(hub: Arc<Hub>) -> Self {
        LocalBroker { hub }
    }
}

#[async_trait]
impl Broker for LocalBroker {
    async fn publish(&self, envelope: Envelope) -> Result<usize, BrokerError> {
        Ok(self.hub.deliver(&envelope))
    }
}
