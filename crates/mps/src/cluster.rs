//! Membership of a cluster of nodes sharing one Redis: the Redis connections and the names of
//! every key and channel, in one place. The broker ([`crate::broker::redis`]) and the registry
//! of online clients ([`crate::presence::redis`]) are built on it.
//!
//! Names (`P` is `cluster.key_prefix`; strings are length-prefixed where two of them meet, so
//! that no app or user name can make two names equal):
//! - `P:u:{len(app)}:{app}:{user}`: channel of a user's directed messages; a node subscribes
//!   while it holds a connection of that user.
//! - `P:a:{app}`: channel of an app's broadcast, component and topic messages; a node
//!   subscribes while it holds a connection of that app.
//! - `P:n:{node_id}`: a node's control channel (disconnect requests).
//! - `P:clients:{node_id}`: hash of a node's online clients (id → JSON), expiring unless the
//!   node refreshes it.
//! - `P:devices:{node_id}`: hash of a node's online devices per user
//!   (`{len(app)}:{app}:{user}` → JSON array of device ids), expiring with `P:clients`.
//! - `P:nodes`: sorted set of node ids scored by when their registry entries expire (the set
//!   expires too when no node refreshes it).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, ProtocolVersion};

use crate::broker::Broker;
use crate::broker::redis::RedisBroker;
use crate::config::{ClusterConfig, Config};
use crate::hub::Hub;
use crate::presence::Presence;
use crate::presence::redis::RedisPresence;
use crate::shutdown::Tasks;
use crate::store::Store;

/// How long one Redis command may take before the node treats Redis as unavailable.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Cluster {
    /// Publishing and the registry; reconnects by itself.
    pub commands: ConnectionManager,
    /// The RESP3 client for the subscriber connection (pushes arrive on the same connection).
    pub subscriber: Client,
    pub node_id: u16,
    /// Random per process: a node tells its own publications apart by it (a node id is reused
    /// when the node restarts; this is not).
    pub instance: u64,
    prefix: String,
}

/// Reconnection settings shared by both connections: fail fast, so that callers see Redis as
/// unavailable instead of waiting, and retry from the caller's loop.
pub fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(COMMAND_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
}

impl Cluster {
    /// Prepares the connections; nothing is dialled yet, so a node starts while Redis is down
    /// (and is not ready until it is up).
    pub fn new(config: &ClusterConfig, url: &str, node_id: u16) -> redis::RedisResult<Cluster> {
        let info = url.into_connection_info()?;
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let subscriber = Client::open(info.clone().set_redis_settings(resp3))?;
        let commands =
            ConnectionManager::new_lazy_with_config(Client::open(info)?, manager_config())?;
        Ok(Cluster {
            commands,
            subscriber,
            node_id,
            instance: rand::random(),
            prefix: config.key_prefix.clone(),
        })
    }

    pub fn user_channel(&self, app: &str, user: &str) -> String {
        format!("{}:u:{}:{app}:{user}", self.prefix, app.len())
    }

    pub fn app_channel(&self, app: &str) -> String {
        format!("{}:a:{app}", self.prefix)
    }

    pub fn node_channel(&self, node_id: u16) -> String {
        format!("{}:n:{node_id}", self.prefix)
    }

    pub fn clients_key(&self, node_id: u16) -> String {
        format!("{}:clients:{node_id}", self.prefix)
    }

    pub fn devices_key(&self, node_id: u16) -> String {
        format!("{}:devices:{node_id}", self.prefix)
    }

    /// A user's field in a node's devices hash.
    pub fn user_field(app: &str, user: &str) -> String {
        format!("{}:{app}:{user}", app.len())
    }

    pub fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// PING with the command timeout.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut commands = self.commands.clone();
        run(redis::cmd("PING").query_async::<()>(&mut commands)).await
    }
}

/// A node's hub with the broker and registry that go with it.
pub type Joined = (Arc<Hub>, Arc<dyn Broker>, Arc<dyn Presence>);

/// Joins the cluster at `url`: the hub reports to the Redis broker and registry.
pub fn join(
    config: &Config,
    url: &str,
    hub: Hub,
    store: Arc<dyn Store>,
    tasks: &Tasks,
) -> anyhow::Result<Joined> {
    crate::telemetry::preregister_cluster();
    if config.store.postgres_url.is_none() {
        tracing::warn!(
            "cluster.redis_url without store.postgres_url: each node keeps its own store, so a \
             message stored on one node is not in another node's backlog"
        );
    }
    let cluster =
        Arc::new(Cluster::new(&config.cluster, url, config.node_id).context("cluster.redis_url")?);
    let (broker_tx, broker_rx) = tokio::sync::mpsc::unbounded_channel();
    let (presence_tx, presence_rx) = tokio::sync::mpsc::unbounded_channel();
    let hub = Arc::new(hub.with_observer(broker_tx).with_observer(presence_tx));
    let broker = RedisBroker::start(cluster.clone(), hub.clone(), store, broker_rx, tasks)
        .context("Redis subscriber")?;
    let presence = RedisPresence::start(
        cluster,
        hub.clone(),
        config.cluster.presence_ttl,
        presence_rx,
        tasks,
    );
    Ok((hub, Arc::new(broker), Arc::new(presence)))
}

/// Runs a Redis command future with the command timeout.
pub async fn run<T>(command: impl Future<Output = redis::RedisResult<T>>) -> redis::RedisResult<T> {
    match tokio::time::timeout(COMMAND_TIMEOUT, command).await {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "Redis did not answer in time",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_cannot_collide() {
        let cluster = Cluster::new(&ClusterConfig::default(), "redis://127.0.0.1:1", 3).unwrap();
        assert_ne!(
            cluster.user_channel("a:b", "c"),
            cluster.user_channel("a", "b:c")
        );
        assert_eq!(cluster.node_channel(3), "mps:n:3");
        assert_eq!(cluster.clients_key(3), "mps:clients:3");
    }
}
