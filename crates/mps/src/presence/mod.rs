//! Who is online, behind the [`Presence`] trait: the clients listed by `GET /api/v1/clients`
//! and closed by `POST /api/v1/clients/{id}/disconnect`. The embedded default,
//! [`LocalPresence`], is this node's hub; [`redis::RedisPresence`] is the registry of every
//! node's clients in Redis, with expiry, so that a crashed node's clients leave the list.

pub mod redis;

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use mps_proto::OnlineClient;

use crate::hub::{CloseReason, Conn, Hub};

#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("registry of online clients unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Online clients of every node, by id (so grouped by node, oldest first).
    async fn list(&self) -> Result<Vec<OnlineClient>, PresenceError>;

    /// Closes a client on whichever node holds it; false when there is no such client.
    async fn disconnect(&self, id: &str) -> Result<bool, PresenceError>;

    /// The devices of these users that hold a live connection on any node, as (user, device)
    /// pairs (the `device` id the connections gave). The vendor fallback skips them.
    async fn online_devices(
        &self,
        app: &str,
        users: &[String],
    ) -> Result<HashSet<(String, String)>, PresenceError>;
}

/// How a connection is listed.
pub fn describe(conn: &Conn, node: &str) -> OnlineClient {
    let info = &conn.info;
    let subscriptions = conn.subscriptions();
    OnlineClient {
        id: conn.id.to_string(),
        app: info.app.to_string(),
        user: info.user.to_string(),
        agent: info.agent.to_string(),
        device: info.device.as_deref().map(str::to_owned),
        transport: info.transport.as_str().to_owned(),
        login: info.login,
        remote: info.remote.to_string(),
        node: node.to_owned(),
        components: subscriptions.components,
        topics: subscriptions.topics,
    }
}

/// A single node: the hub is the registry.
pub struct LocalPresence {
    hub: Arc<Hub>,
}

impl LocalPresence {
    pub fn new(hub: Arc<Hub>) -> Self {
        LocalPresence { hub }
    }

    fn list_now(&self) -> Vec<OnlineClient> {
        let node = self.hub.node();
        self.hub.list().iter().map(|c| describe(c, node)).collect()
    }

    fn disconnect_now(&self, id: u64) -> bool {
        match self.hub.get(id) {
            Some(conn) => {
                conn.close(CloseReason::Kicked);
                true
            }
            None => false,
        }
    }
}

#[async_trait]
impl Presence for LocalPresence {
    async fn list(&self) -> Result<Vec<OnlineClient>, PresenceError> {
        Ok(self.list_now())
    }

    async fn disconnect(&self, id: &str) -> Result<bool, PresenceError> {
        Ok(id.parse().is_ok_and(|id| self.disconnect_now(id)))
    }

    async fn online_devices(
        &self,
        app: &str,
        users: &[String],
    ) -> Result<HashSet<(String, String)>, PresenceError> {
        Ok(self.hub.online_devices(app, users).into_iter().collect())
    }
}
