//! The cluster broker: Redis pub/sub between nodes.
//!
//! Each node subscribes only to what its own connections need: the channel of every user it
//! holds a connection of (directed messages), the channel of every app it holds a connection of
//! (broadcast, component and topic messages; the hub picks the matching connections), and its
//! own control channel. Subscriptions follow the hub's [`HubEvent`]s: subscribe on a user's
//! first connection here, unsubscribe on the last.
//!
//! Publishing delivers to this node's hub at once, then publishes per recipient user (or once
//! per app); a node skips what it published itself when it comes back from Redis.
//!
//! When the subscriber connection drops (Redis restarted, network), the node reconnects,
//! subscribes to everything its connections need again, and then reports it through
//! [`Broker::reconnected`] with the first id published since shortly before the loss. The
//! engine catches every local connection up from the store, as for a client resuming from that
//! id, skipping ids this node delivered recently ([`Broker::delivered_lately`]). Component and
//! broadcast messages published during the outage are live only and are lost, as documented.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{Notify, mpsc, oneshot, watch};

pub use super::wire::encode_kick;
use super::wire::{self, Received};
use super::{Broker, BrokerError};
use crate::cluster::{Cluster, run};
use crate::hub::{CloseReason, Envelope, Hub, HubEvent, Target};
use crate::shutdown::Tasks;

/// Most channels named in one SUBSCRIBE or UNSUBSCRIBE.
const CHUNK: usize = 1000;
/// Pause between attempts to reach Redis again.
const RETRY: Duration = Duration::from_millis(500);
/// How far before the loss of the subscriber connection the catch-up after a reconnect starts
/// (covers publications in flight and clock differences between nodes).
const RESYNC_MARGIN: Duration = Duration::from_secs(10);
/// Ids of messages recently delivered on this node, to keep a catch-up from repeating them.
const RECENT: usize = 65_536;
/// How often the subscriber connection is pinged: a connection that died without a word (a
/// network partition) is noticed within this plus the command timeout.
const HEALTH: Duration = Duration::from_secs(5);

pub struct RedisBroker {
    cluster: Arc<Cluster>,
    hub: Arc<Hub>,
    recent: Arc<Recent>,
    barriers: mpsc::UnboundedSender<oneshot::Sender<()>>,
    /// Never read here, so that every clone handed out sees each reconnect since the start.
    reconnected: watch::Receiver<u64>,
}

impl RedisBroker {
    /// Starts the subscriber; `events` is the hub's observer channel.
    pub fn start(
        cluster: Arc<Cluster>,
        hub: Arc<Hub>,
        events: mpsc::UnboundedReceiver<HubEvent>,
        tasks: &Tasks,
    ) -> redis::RedisResult<RedisBroker> {
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let subscriber = ConnectionManager::new_lazy_with_config(
            cluster.subscriber.clone(),
            crate::cluster::manager_config().set_push_sender(push_tx),
        )?;
        let (barriers, barrier_rx) = mpsc::unbounded_channel();
        let recent = Arc::new(Recent::default());
        let (reconnects, reconnected) = watch::channel(0);
        let lost = Arc::new(Notify::new());
        tasks.spawn_until_stopped(receive(
            push_rx,
            hub.clone(),
            cluster.instance,
            recent.clone(),
            lost.clone(),
        ));
        let subscriptions = Subscriptions {
            subscriber,
            cluster: cluster.clone(),
            wanted: HashSet::from([cluster.node_channel(cluster.node_id)]),
            connected: false,
            // Connections registered before the first subscription are caught up too.
            lost_at: Some(Instant::now()),
            reconnects,
        };
        tasks.spawn_until_stopped(subscriptions.run(events, barrier_rx, lost));
        Ok(RedisBroker {
            cluster,
            hub,
            recent,
            barriers,
            reconnected,
        })
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, envelope: Envelope) -> Result<usize, BrokerError> {
        let local = self.hub.deliver(&envelope);
        if envelope.id != 0 {
            self.recent.note(envelope.id);
        }
        let origin = self.cluster.instance;
        let mut pipe = redis::pipe();
        match &envelope.target {
            Target::Users(users) => {
                for user in users {
                    let channel = self.cluster.user_channel(&envelope.app, user);
                    pipe.cmd("PUBLISH")
                        .arg(channel)
                        .arg(wire::encode_for_user(origin, &envelope, user).as_ref())
                        .ignore();
                }
            }
            _ => {
                let channel = self.cluster.app_channel(&envelope.app);
                pipe.cmd("PUBLISH")
                    .arg(channel)
                    .arg(wire::encode(origin, &envelope).as_ref())
                    .ignore();
            }
        }
        let mut commands = self.cluster.commands.clone();
        run(pipe.query_async::<()>(&mut commands))
            .await
            .map_err(|e| {
                metrics::counter!("mps_cluster_publish_failures_total").increment(1);
                BrokerError::Unavailable(format!("Redis: {e}"))
            })?;
        Ok(local)
    }

    async fn ready(&self) {
        let (tx, rx) = oneshot::channel();
        if self.barriers.send(tx).is_ok() {
            // Answered at once while Redis is down (the catch-up after it covers that case).
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
    }

    async fn check(&self) -> Result<(), BrokerError> {
        self.cluster
            .ping()
            .await
            .map_err(|e| BrokerError::Unavailable(format!("Redis: {e}")))
    }

    fn reconnected(&self) -> watch::Receiver<u64> {
        self.reconnected.clone()
    }

    fn delivered_lately(&self, id: u64) -> bool {
        self.recent.contains(id)
    }
}

/// Delivers what arrives on the subscriber connection; reports a lost connection.
async fn receive(
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    hub: Arc<Hub>,
    instance: u64,
    recent: Arc<Recent>,
    lost: Arc<Notify>,
) {
    while let Some(push) = pushes.recv().await {
        match push.kind {
            PushKind::Message => {
                let Some(Value::BulkString(payload)) = push.data.into_iter().nth(1) else {
                    continue;
                };
                match wire::decode(Bytes::from(payload)) {
                    Some(Received::Envelope { origin, envelope }) if origin != instance => {
                        if envelope.id != 0 {
                            recent.note(envelope.id);
                        }
                        hub.deliver(&envelope);
                        metrics::counter!("mps_cluster_received_total").increment(1);
                    }
                    Some(Received::Envelope { .. }) => {}
                    Some(Received::Kick(id)) => {
                        if let Some(conn) = hub.get(id) {
                            conn.close(CloseReason::Kicked);
                        }
                    }
                    None => tracing::warn!("undecodable message on a cluster channel"),
                }
            }
            PushKind::Disconnection => lost.notify_one(),
            _ => {}
        }
    }
}

/// The subscriber connection's channels, kept equal to what the hub's connections need.
struct Subscriptions {
    subscriber: ConnectionManager,
    cluster: Arc<Cluster>,
    /// Channels this node needs, whether or not Redis has them now.
    wanted: HashSet<String>,
    connected: bool,
    /// When the subscriber connection was lost, for the catch-up after it is back.
    lost_at: Option<Instant>,
    /// Tells the connections' owner about each reconnect ([`Broker::reconnected`]).
    reconnects: watch::Sender<u64>,
}

impl Subscriptions {
    async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<HubEvent>,
        mut barriers: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
        lost: Arc<Notify>,
    ) {
        let mut batch = Vec::new();
        let mut waiting = Vec::new();
        let mut health = tokio::time::interval(HEALTH);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = lost.notified() => self.lose(),
                _ = health.tick(), if self.connected => {
                    let mut subscriber = self.subscriber.clone();
                    if run(redis::cmd("PING").query_async::<()>(&mut subscriber)).await.is_err() {
                        self.lose();
                    }
                }
                n = events.recv_many(&mut batch, 4096) => {
                    if n == 0 {
                        return;
                    }
                }
                Some(barrier) = barriers.recv() => waiting.push(barrier),
                _ = tokio::time::sleep(RETRY), if !self.connected => self.reconnect().await,
            }
            // A barrier asked for after a registration must see that registration's event.
            while let Ok(barrier) = barriers.try_recv() {
                waiting.push(barrier);
            }
            while let Ok(event) = events.try_recv() {
                batch.push(event);
            }
            if !batch.is_empty() {
                self.apply(batch.drain(..)).await;
            }
            for barrier in waiting.drain(..) {
                let _ = barrier.send(());
            }
        }
    }

    fn lose(&mut self) {
        if self.connected {
            tracing::warn!("lost the Redis subscriber connection; reconnecting");
            metrics::counter!("mps_cluster_resubscribes_total").increment(1);
            self.connected = false;
            self.lost_at = Some(Instant::now());
            metrics::gauge!("mps_cluster_subscribed").set(0.0);
        }
    }

    /// Updates the wanted channels from hub events and tells Redis the difference.
    async fn apply(&mut self, events: impl Iterator<Item = HubEvent>) {
        let mut changed: Vec<(String, bool)> = Vec::new();
        for event in events {
            match event {
                HubEvent::Connected {
                    conn,
                    first_of_user,
                    first_of_app,
                } => {
                    let info = &conn.info;
                    if first_of_user {
                        changed.push((self.cluster.user_channel(&info.app, &info.user), true));
                    }
                    if first_of_app {
                        changed.push((self.cluster.app_channel(&info.app), true));
                    }
                }
                HubEvent::Disconnected {
                    conn,
                    last_of_user,
                    last_of_app,
                } => {
                    let info = &conn.info;
                    if last_of_user {
                        changed.push((self.cluster.user_channel(&info.app, &info.user), false));
                    }
                    if last_of_app {
                        changed.push((self.cluster.app_channel(&info.app), false));
                    }
                }
                HubEvent::Resubscribed(_) => {}
            }
        }
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for (channel, wanted) in changed {
            if wanted {
                if self.wanted.insert(channel.clone()) {
                    remove.retain(|c| *c != channel);
                    add.push(channel);
                }
            } else if self.wanted.remove(&channel) {
                add.retain(|c| *c != channel);
                remove.push(channel);
            }
        }
        if !self.connected {
            return;
        }
        if let Err(e) = self.send("SUBSCRIBE", &add).await {
            tracing::warn!(error = %e, "subscribing failed");
            self.lose();
        } else if let Err(e) = self.send("UNSUBSCRIBE", &remove).await {
            tracing::warn!(error = %e, "unsubscribing failed");
            self.lose();
        }
    }

    async fn send(&mut self, command: &str, channels: &[String]) -> redis::RedisResult<()> {
        for chunk in channels.chunks(CHUNK) {
            let subscriber = &mut self.subscriber;
            if command == "SUBSCRIBE" {
                run(subscriber.subscribe(chunk)).await?;
            } else {
                run(subscriber.unsubscribe(chunk)).await?;
            }
        }
        Ok(())
    }

    /// Subscribes to every wanted channel on a fresh connection, then reports the reconnect.
    async fn reconnect(&mut self) {
        let mut subscriber = self.subscriber.clone();
        if run(redis::cmd("PING").query_async::<()>(&mut subscriber))
            .await
            .is_err()
        {
            return;
        }
        let wanted: Vec<String> = self.wanted.iter().cloned().collect();
        if let Err(e) = self.send("SUBSCRIBE", &wanted).await {
            tracing::warn!(error = %e, "resubscribing failed");
            return;
        }
        self.connected = true;
        metrics::gauge!("mps_cluster_subscribed").set(1.0);
        if let Some(lost_at) = self.lost_at.take() {
            tracing::info!(
                channels = wanted.len(),
                "Redis subscriber connection back; catching up local connections"
            );
            let since = crate::id::now_ms()
                .saturating_sub((lost_at.elapsed() + RESYNC_MARGIN).as_millis() as u64);
            self.reconnects.send_replace(crate::id::first_id_at(since));
        }
    }
}

/// Ids of messages delivered on this node lately (bounded, oldest forgotten first).
#[derive(Default)]
struct Recent {
    inner: Mutex<(HashSet<u64>, VecDeque<u64>)>,
}

impl Recent {
    fn note(&self, id: u64) {
        let mut inner = self.inner.lock();
        let (set, order) = &mut *inner;
        if set.insert(id) {
            order.push_back(id);
            if order.len() > RECENT
                && let Some(old) = order.pop_front()
            {
                set.remove(&old);
            }
        }
    }

    fn contains(&self, id: u64) -> bool {
        self.inner.lock().0.contains(&id)
    }
}
