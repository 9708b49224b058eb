//! Fan-out of live messages to the nodes that hold the recipients' connections, behind the
//! [`Broker`] trait. The embedded default, [`LocalBroker`], hands envelopes straight to this
//! node's hub; a cluster broker carries them to every node's hub.

use std::sync::Arc;

use async_trait::async_trait;

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
