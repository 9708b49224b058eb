//! The cluster-wide registry of online clients in Redis.
//!
//! Each node keeps one hash of its clients (`P:clients:{node_id}`, id → the listed JSON), one
//! of its users' online device ids (`P:devices:{node_id}`, for the vendor fallback) and its
//! score in `P:nodes` (when its entries expire). Connections and disconnections are written
//! as they happen; every third of `cluster.presence_ttl` the node pushes the expiry forward.
//! A crashed node stops refreshing, so its hash expires and its clients leave the list within
//! the TTL. A node rewrites its whole hash when it starts (dropping what its previous life
//! left), after Redis was unreachable, and when it finds the hash gone (Redis restarted).
//!
//! A disconnect for a client of another node is published on that node's control channel;
//! the node's broker closes the connection.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mps_proto::OnlineClient;
use tokio::sync::mpsc;

use super::{LocalPresence, Presence, PresenceError, describe};
use crate::broker::redis::encode_kick;
use crate::cluster::{Cluster, run};
use crate::hub::{Hub, HubEvent, node_of};
use crate::id::now_ms;
use crate::shutdown::Tasks;

/// Fields per HSET when rewriting a node's hash.
const CHUNK: usize = 500;

pub struct RedisPresence {
    cluster: Arc<Cluster>,
    local: LocalPresence,
}

fn unavailable(e: redis::RedisError) -> PresenceError {
    PresenceError::Unavailable(format!("Redis: {e}"))
}

impl RedisPresence {
    /// Starts keeping this node's entries; `events` is the hub's observer channel.
    pub fn start(
        cluster: Arc<Cluster>,
        hub: Arc<Hub>,
        ttl: u64,
        events: mpsc::UnboundedReceiver<HubEvent>,
        tasks: &Tasks,
    ) -> RedisPresence {
        let keeper = Keeper {
            cluster: cluster.clone(),
            hub: hub.clone(),
            key: cluster.clients_key(cluster.node_id),
            devices_key: cluster.devices_key(cluster.node_id),
            ttl: ttl.max(1),
            dirty: true,
        };
        tasks.spawn_until_stopped(keeper.run(events));
        RedisPresence {
            cluster,
            local: LocalPresence::new(hub),
        }
    }
}

#[async_trait]
impl Presence for RedisPresence {
    async fn list(&self) -> Result<Vec<OnlineClient>, PresenceError> {
        let mut commands = self.cluster.commands.clone();
        let nodes: Vec<u16> = run(redis::cmd("ZRANGEBYSCORE")
            .arg(self.cluster.nodes_key())
            .arg(now_ms())
            .arg("+inf")
            .query_async(&mut commands))
        .await
        .map_err(unavailable)?;
        let mut pipe = redis::pipe();
        for node in &nodes {
            pipe.cmd("HVALS").arg(self.cluster.clients_key(*node));
        }
        let hashes: Vec<Vec<String>> = run(pipe.query_async(&mut commands))
            .await
            .map_err(unavailable)?;
        let mut clients: Vec<(u64, OnlineClient)> = hashes
            .into_iter()
            .flatten()
            .filter_map(|json| serde_json::from_str::<OnlineClient>(&json).ok())
            .map(|c| (c.id.parse().unwrap_or(u64::MAX), c))
            .collect();
        clients.sort_by_key(|(id, _)| *id);
        Ok(clients.into_iter().map(|(_, c)| c).collect())
    }

    async fn disconnect(&self, id: &str) -> Result<bool, PresenceError> {
        let Ok(conn_id) = id.parse::<u64>() else {
            return Ok(false);
        };
        let node = node_of(conn_id);
        if node == self.cluster.node_id {
            return Ok(self.local.disconnect_now(conn_id));
        }
        let mut commands = self.cluster.commands.clone();
        let listed: bool = run(redis::cmd("HEXISTS")
            .arg(self.cluster.clients_key(node))
            .arg(id)
            .query_async(&mut commands))
        .await
        .map_err(unavailable)?;
        if !listed {
            return Ok(false);
        }
        let receivers: u64 = run(redis::cmd("PUBLISH")
            .arg(self.cluster.node_channel(node))
            .arg(encode_kick(self.cluster.instance, conn_id).as_ref())
            .query_async(&mut commands))
        .await
        .map_err(unavailable)?;
        Ok(receivers > 0)
    }

    async fn online_devices(
        &self,
        app: &str,
        users: &[String],
    ) -> Result<HashSet<(String, String)>, PresenceError> {
        // This node's own connections from the hub: fresher than what it wrote to Redis.
        let mut online: HashSet<(String, String)> = self
            .local
            .hub
            .online_devices(app, users)
            .into_iter()
            .collect();
        if users.is_empty() {
            return Ok(online);
        }
        let mut commands = self.cluster.commands.clone();
        let nodes: Vec<u16> = run(redis::cmd("ZRANGEBYSCORE")
            .arg(self.cluster.nodes_key())
            .arg(now_ms())
            .arg("+inf")
            .query_async(&mut commands))
        .await
        .map_err(unavailable)?;
        let others: Vec<u16> = nodes
            .into_iter()
            .filter(|n| *n != self.cluster.node_id)
            .collect();
        if others.is_empty() {
            return Ok(online);
        }
        let fields: Vec<String> = users.iter().map(|u| Cluster::user_field(app, u)).collect();
        let mut pipe = redis::pipe();
        for node in &others {
            pipe.cmd("HMGET")
                .arg(self.cluster.devices_key(*node))
                .arg(&fields);
        }
        let answers: Vec<Vec<Option<String>>> = run(pipe.query_async(&mut commands))
            .await
            .map_err(unavailable)?;
        for values in answers {
            for (user, value) in users.iter().zip(values) {
                let devices: Vec<String> = value
                    .and_then(|json| serde_json::from_str(&json).ok())
                    .unwrap_or_default();
                online.extend(devices.into_iter().map(|d| (user.clone(), d)));
            }
        }
        Ok(online)
    }
}

/// Keeps this node's hash and score in Redis.
struct Keeper {
    cluster: Arc<Cluster>,
    hub: Arc<Hub>,
    key: String,
    /// This node's online devices per user.
    devices_key: String,
    ttl: u64,
    /// Redis may not match the hub (start, or a write failed): rewrite the whole hash.
    dirty: bool,
}

impl Keeper {
    async fn run(mut self, mut events: mpsc::UnboundedReceiver<HubEvent>) {
        self.check_node_id().await;
        let mut refresh = tokio::time::interval(Duration::from_millis(self.ttl * 1000 / 3));
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                n = events.recv_many(&mut batch, 1024) => {
                    if n == 0 {
                        return;
                    }
                    if !self.dirty
                        && let Err(e) = self.write(batch.drain(..)).await
                    {
                        tracing::warn!(error = %e, "updating the client registry failed");
                        self.dirty = true;
                    }
                    batch.clear();
                }
                _ = refresh.tick() => {
                    if let Err(e) = self.refresh().await {
                        tracing::warn!(error = %e, "refreshing the client registry failed");
                        self.dirty = true;
                    }
                }
            }
        }
    }

    /// Warns when another live node seems to use this node's id (ids must be unique).
    async fn check_node_id(&self) {
        let mut commands = self.cluster.commands.clone();
        let score: redis::RedisResult<Option<f64>> = run(redis::cmd("ZSCORE")
            .arg(self.cluster.nodes_key())
            .arg(self.cluster.node_id)
            .query_async(&mut commands))
        .await;
        if let Ok(Some(expires)) = score
            && expires > now_ms() as f64
        {
            tracing::warn!(
                node_id = self.cluster.node_id,
                "this node_id is registered by a live node (or this node restarted within \
                 cluster.presence_ttl); every node of a cluster needs its own node_id"
            );
        }
    }

    /// Writes connection changes as they happen.
    async fn write(&self, events: impl Iterator<Item = HubEvent>) -> redis::RedisResult<()> {
        let node = self.hub.node();
        let mut pipe = redis::pipe();
        pipe.atomic();
        // Users whose set of online devices may have changed.
        let mut users = BTreeSet::new();
        for event in events {
            match event {
                HubEvent::Connected { conn, .. } | HubEvent::Resubscribed(conn) => {
                    let json = serde_json::to_string(&describe(&conn, node)).unwrap_or_default();
                    pipe.cmd("HSET")
                        .arg(&self.key)
                        .arg(conn.id)
                        .arg(json)
                        .ignore();
                    if conn.info.device.is_some() {
                        users.insert((conn.info.app.clone(), conn.info.user.clone()));
                    }
                }
                HubEvent::Disconnected { conn, .. } => {
                    pipe.cmd("HDEL").arg(&self.key).arg(conn.id).ignore();
                    if conn.info.device.is_some() {
                        users.insert((conn.info.app.clone(), conn.info.user.clone()));
                    }
                }
            }
        }
        // What the hub holds now: later events rewrite the field again.
        for (app, user) in users {
            let field = Cluster::user_field(&app, &user);
            match self.devices_json(&app, &user) {
                Some(json) => pipe.cmd("HSET").arg(&self.devices_key).arg(field).arg(json),
                None => pipe.cmd("HDEL").arg(&self.devices_key).arg(field),
            }
            .ignore();
        }
        // A hash created by this HSET must expire too.
        pipe.cmd("EXPIRE").arg(&self.key).arg(self.ttl).ignore();
        pipe.cmd("EXPIRE")
            .arg(&self.devices_key)
            .arg(self.ttl)
            .ignore();
        let mut commands = self.cluster.commands.clone();
        run(pipe.query_async::<()>(&mut commands)).await
    }

    /// The user's online device ids on this node as a JSON array; `None` when there are none.
    fn devices_json(&self, app: &str, user: &str) -> Option<String> {
        let devices: Vec<String> = self
            .hub
            .online_devices(app, &[user.to_owned()])
            .into_iter()
            .map(|(_, device)| device)
            .collect();
        (!devices.is_empty()).then(|| serde_json::to_string(&devices).unwrap_or_default())
    }

    /// Pushes the expiry forward; rewrites the hash when it is dirty or gone.
    async fn refresh(&mut self) -> redis::RedisResult<()> {
        let mut commands = self.cluster.commands.clone();
        let expires = now_ms() + self.ttl * 1000;
        let nodes = self.cluster.nodes_key();
        if !self.dirty {
            let (alive, _, _, _): (bool, (), (), ()) = run(redis::pipe()
                .cmd("EXPIRE")
                .arg(&self.key)
                .arg(self.ttl)
                .cmd("EXPIRE")
                .arg(&self.devices_key)
                .arg(self.ttl)
                .ignore()
                .cmd("ZADD")
                .arg(&nodes)
                .arg(expires)
                .arg(self.cluster.node_id)
                .cmd("ZREMRANGEBYSCORE")
                .arg(&nodes)
                .arg("-inf")
                .arg(now_ms())
                // When every node is gone, so is the set.
                .cmd("EXPIRE")
                .arg(&nodes)
                .arg(self.ttl)
                .query_async(&mut commands))
            .await?;
            if alive || self.hub.count() == 0 {
                return Ok(());
            }
            tracing::info!("client registry entries gone (Redis restarted?); rewriting");
        }
        let node = self.hub.node();
        let clients: Vec<(u64, String)> = self
            .hub
            .list()
            .iter()
            .map(|c| {
                let json = serde_json::to_string(&describe(c, node)).unwrap_or_default();
                (c.id, json)
            })
            .collect();
        let users: BTreeSet<(Arc<str>, Arc<str>)> = self
            .hub
            .list()
            .iter()
            .filter(|c| c.info.device.is_some())
            .map(|c| (c.info.app.clone(), c.info.user.clone()))
            .collect();
        let devices: Vec<(String, String)> = users
            .iter()
            .filter_map(|(app, user)| {
                let json = self.devices_json(app, user)?;
                Some((Cluster::user_field(app, user), json))
            })
            .collect();
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("DEL").arg(&self.key).ignore();
        pipe.cmd("DEL").arg(&self.devices_key).ignore();
        for chunk in clients.chunks(CHUNK) {
            let hset = pipe.cmd("HSET").arg(&self.key);
            for (id, json) in chunk {
                hset.arg(id).arg(json);
            }
            hset.ignore();
        }
        for chunk in devices.chunks(CHUNK) {
            let hset = pipe.cmd("HSET").arg(&self.devices_key);
            for (field, json) in chunk {
                hset.arg(field).arg(json);
            }
            hset.ignore();
        }
        pipe.cmd("EXPIRE").arg(&self.key).arg(self.ttl).ignore();
        pipe.cmd("EXPIRE")
            .arg(&self.devices_key)
            .arg(self.ttl)
            .ignore();
        pipe.cmd("ZADD")
            .arg(&nodes)
            .arg(expires)
            .arg(self.cluster.node_id)
            .ignore();
        pipe.cmd("EXPIRE").arg(&nodes).arg(self.ttl).ignore();
        run(pipe.query_async::<()>(&mut commands)).await?;
        self.dirty = false;
        Ok(())
    }
}
