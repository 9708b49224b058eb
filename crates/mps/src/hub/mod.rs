//! The connections of this node: who is online, indexed by app, user and component, each with a
//! bounded outbound queue. Fan-out takes the registry's read lock, appends a shared frame to each
//! matching queue and wakes the connection's task; nothing awaits while a lock is held.
//!
//! Connection ids carry the node number in their high bits, so they are unique across a
//! cluster and tell which node holds a connection. Observers (the cluster's broker and
//! registry) learn of every change as a [`HubEvent`], sent under the lock so they see changes
//! in the order they happened.

mod conn;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::RwLock;
use smallvec::SmallVec;
use tokio::sync::mpsc::UnboundedSender;

use crate::words::TransportKind;

pub use conn::{CloseReason, Conn, ConnInfo, Drained, Outbound, Subscriptions};

use crate::words::AgentFilter;

/// Who a live message is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every connection of these users.
    Users(Vec<String>),
    /// Every connection whose component set includes this component.
    Component(String),
    /// Every connection with a topic pattern matching this topic.
    Topic(String),
    /// Every connection of the app.
    All,
}

/// A message on its way to connections: what the broker carries between nodes.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub app: String,
    pub target: Target,
    pub agents: AgentFilter,
    /// With [`Target::Users`]: only those users' connections subscribed to this component (a
    /// live audience of a component message).
    pub component: Option<String>,
    pub id: u64,
    /// Directed messages have their delivery recorded per recipient.
    pub directed: bool,
    /// The encoded push frame, shared by every connection it goes to.
    pub frame: Bytes,
    /// The frames of agents whose clients get another shape (per-agent formats), each encoded
    /// once and shared by every connection of that agent.
    pub variants: Vec<(String, Bytes)>,
}

impl Envelope {
    /// The frame a connection of `agent` gets.
    pub fn frame_for(&self, agent: &str) -> &Bytes {
        self.variants
            .iter()
            .find(|(a, _)| a == agent)
            .map_or(&self.frame, |(_, frame)| frame)
    }
}

/// A change of this node's connections, for observers.
#[derive(Clone)]
pub enum HubEvent {
    /// A connection registered; `first_of_user` / `first_of_app` when it is the user's / app's
    /// only one on this node.
    Connected {
        conn: Arc<Conn>,
        first_of_user: bool,
        first_of_app: bool,
    },
    /// A connection changed its components or topic patterns.
    Resubscribed(Arc<Conn>),
    /// A connection left; `last_of_user` / `last_of_app` when nothing of the user / app is left.
    Disconnected {
        conn: Arc<Conn>,
        last_of_user: bool,
        last_of_app: bool,
    },
}

/// Bits of a connection id below the node number.
const CONN_ID_BITS: u32 = 48;

/// The node number held in a connection id.
pub fn node_of(conn_id: u64) -> u16 {
    (conn_id >> CONN_ID_BITS) as u16
}

type ConnSet = HashMap<u64, Arc<Conn>>;

#[derive(Default)]
struct AppConns {
    /// Most users have one connection, held inline (no allocation of its own).
    users: HashMap<Arc<str>, SmallVec<[Arc<Conn>; 1]>>,
    components: HashMap<Box<str>, ConnSet>,
    /// Keyed by pattern; publishing matches each distinct pattern once.
    topics: HashMap<Box<str>, ConnSet>,
}

impl AppConns {
    fn index(&mut self, conn: &Arc<Conn>, subscriptions: &Subscriptions) {
        for component in &subscriptions.components {
            self.components
                .entry(component.as_str().into())
                .or_default()
                .insert(conn.id, conn.clone());
        }
        for pattern in &subscriptions.topics {
            self.topics
                .entry(pattern.as_str().into())
                .or_default()
                .insert(conn.id, conn.clone());
        }
    }

    fn unindex(&mut self, id: u64, subscriptions: &Subscriptions) {
        for (map, keys) in [
            (&mut self.components, &subscriptions.components),
            (&mut self.topics, &subscriptions.topics),
        ] {
            for key in keys {
                if let Some(set) = map.get_mut(key.as_str()) {
                    set.remove(&id);
                    if set.is_empty() {
                        map.remove(key.as_str());
                    }
                }
            }
        }
    }
}

#[derive(Default)]
struct Registry {
    apps: HashMap<Arc<str>, AppConns>,
    by_id: HashMap<u64, Arc<Conn>>,
}

/// A user already has as many connections on this node as `limits.connections_per_user`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserFull(pub usize);

pub struct Hub {
    node: Arc<str>,
    node_id: u16,
    next_id: AtomicU64,
    queue: usize,
    /// Most connections of one user on this node (0: no limit); checked under the write lock
    /// that adds the connection, so concurrent logins cannot overshoot it.
    per_user: usize,
    registry: RwLock<Registry>,
    /// Told of every change, in order (empty on a single node).
    observers: Vec<UnboundedSender<HubEvent>>,
}

impl Hub {
    /// `node_id` goes into connection ids; `queue` bounds each connection's outbound queue.
    pub fn new(node: &str, node_id: u16, queue: usize) -> Self {
        Hub {
            node: node.into(),
            node_id,
            next_id: AtomicU64::new((u64::from(node_id) << CONN_ID_BITS) | 1),
            queue: queue.max(1),
            per_user: 0,
            registry: RwLock::new(Registry::default()),
            observers: Vec::new(),
        }
    }

    /// Limits the connections of one user on this node (0: no limit).
    pub fn with_user_limit(mut self, per_user: usize) -> Self {
        self.per_user = per_user;
        self
    }

    /// Adds an observer of connection changes.
    pub fn with_observer(mut self, observer: UnboundedSender<HubEvent>) -> Self {
        self.observers.push(observer);
        self
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn node_id(&self) -> u16 {
        self.node_id
    }

    fn notify(&self, event: HubEvent) {
        for observer in &self.observers {
            let _ = observer.send(event.clone());
        }
    }

    /// Adds a connection; it receives fan-out from now on. Refused when its user already has
    /// as many connections on this node as the limit.
    pub fn register(
        &self,
        info: ConnInfo,
        subscriptions: Subscriptions,
    ) -> Result<Arc<Conn>, UserFull> {
        let mut registry = self.registry.write();
        if self.per_user > 0
            && registry
                .apps
                .get(&info.app)
                .and_then(|app| app.users.get(&info.user))
                .is_some_and(|conns| conns.len() >= self.per_user)
        {
            return Err(UserFull(self.per_user));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::new(id, info, self.queue, subscriptions.clone()));
        let app = registry.apps.entry(conn.info.app.clone()).or_default();
        let first_of_app = app.users.is_empty();
        let user = app.users.entry(conn.info.user.clone()).or_default();
        let first_of_user = user.is_empty();
        user.push(conn.clone());
        app.index(&conn, &subscriptions);
        registry.by_id.insert(id, conn.clone());
        crate::telemetry::hot()
            .connections(conn.info.transport, &conn.info.agent)
            .increment(1.0);
        if !self.observers.is_empty() {
            self.notify(HubEvent::Connected {
                conn: conn.clone(),
                first_of_user,
                first_of_app,
            });
        }
        Ok(conn)
    }

    pub fn unregister(&self, conn: &Conn) {
        let mut registry = self.registry.write();
        let Some(removed) = registry.by_id.remove(&conn.id) else {
            return;
        };
        let (mut last_of_user, mut last_of_app) = (false, false);
        if let Some(app) = registry.apps.get_mut(&conn.info.app) {
            if let Some(list) = app.users.get_mut(&conn.info.user) {
                list.retain(|c| c.id != conn.id);
                if list.is_empty() {
                    app.users.remove(&conn.info.user);
                    last_of_user = true;
                }
            }
            app.unindex(conn.id, &conn.subscriptions());
            if app.users.is_empty() {
                registry.apps.remove(&conn.info.app);
                last_of_app = true;
            }
        }
        crate::telemetry::hot()
            .connections(conn.info.transport, &conn.info.agent)
            .decrement(1.0);
        if !self.observers.is_empty() {
            self.notify(HubEvent::Disconnected {
                conn: removed,
                last_of_user,
                last_of_app,
            });
        }
    }

    /// Runs the node's heartbeats: every connection that holds a session (not long polls) is
    /// woken for a heartbeat once per `period` (see [`Conn::beat`]). The connections are spread
    /// over the period by id, a slice each second, so a node's pings do not all go out at once.
    pub async fn heartbeats(self: Arc<Self>, period: Duration) {
        let slices = period.as_secs().max(1);
        let mut second = tokio::time::interval(Duration::from_secs(1));
        second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut slice = 0;
        loop {
            second.tick().await;
            let registry = self.registry.read();
            for conn in registry.by_id.values() {
                if conn.id % slices == slice && conn.info.transport != TransportKind::Poll {
                    conn.beat();
                }
            }
            drop(registry);
            slice = (slice + 1) % slices;
        }
    }

    /// Replaces a connection's components and topic patterns.
    pub fn set_subscriptions(&self, conn: &Arc<Conn>, subscriptions: Subscriptions) {
        let mut registry = self.registry.write();
        let Some(app) = registry.apps.get_mut(&conn.info.app) else {
            return;
        };
        let old = conn.set_subscriptions(subscriptions.clone());
        app.unindex(conn.id, &old);
        app.index(conn, &subscriptions);
        if !self.observers.is_empty() {
            self.notify(HubEvent::Resubscribed(conn.clone()));
        }
    }

    /// Queues an envelope on every matching local connection; returns how many took it.
    /// Connections whose queue is full are told to close as slow consumers.
    pub fn deliver(&self, envelope: &Envelope) -> usize {
        let registry = self.registry.read();
        let Some(app) = registry.apps.get(envelope.app.as_str()) else {
            return 0;
        };
        let mut queued = 0;
        let mut offer = |conn: &Arc<Conn>| {
            if !envelope.agents.admits(&conn.info.agent) {
                return;
            }
            if let Some(component) = &envelope.component
                && !conn.subscribed_to(component)
            {
                return;
            }
            let out = Outbound {
                frame: envelope.frame_for(&conn.info.agent).clone(),
                id: envelope.id,
                directed: envelope.directed,
            };
            if conn.push(out) {
                queued += 1;
            }
        };
        match &envelope.target {
            Target::Users(users) => {
                for user in users {
                    if let Some(list) = app.users.get(user.as_str()) {
                        list.iter().for_each(&mut offer);
                    }
                }
            }
            Target::Component(component) => {
                if let Some(set) = app.components.get(component.as_str()) {
                    set.values().for_each(&mut offer);
                }
            }
            Target::Topic(topic) => {
                let mut matching = app
                    .topics
                    .iter()
                    .filter(|(pattern, _)| crate::topic::matches(pattern, topic))
                    .map(|(_, set)| set);
                let first = matching.next();
                match matching.next() {
                    None => first
                        .into_iter()
                        .flat_map(|set| set.values())
                        .for_each(&mut offer),
                    // Several patterns match: a connection holding more than one gets it once.
                    Some(second) => {
                        let mut seen = std::collections::HashSet::new();
                        first
                            .into_iter()
                            .chain([second])
                            .chain(matching)
                            .flat_map(|set| set.values())
                            .filter(|conn| seen.insert(conn.id))
                            .for_each(&mut offer);
                    }
                }
            }
            Target::All => app.users.values().flatten().for_each(&mut offer),
        }
        metrics::counter!("mps_deliveries_queued_total").increment(queued as u64);
        queued
    }

    /// The device ids of these users' connections on this node: (user, device) pairs, once each.
    /// Connections that gave no device id are not counted.
    pub fn online_devices(&self, app: &str, users: &[String]) -> Vec<(String, String)> {
        let registry = self.registry.read();
        let Some(app) = registry.apps.get(app) else {
            return Vec::new();
        };
        let mut online: Vec<(String, String)> = users
            .iter()
            .filter_map(|user| app.users.get(user.as_str()).map(|list| (user, list)))
            .flat_map(|(user, list)| {
                list.iter()
                    .filter_map(|c| c.info.device.as_deref())
                    .map(|device| (user.clone(), device.to_owned()))
            })
            .collect();
        online.sort();
        online.dedup();
        online
    }

    /// The connections of this node, oldest first.
    pub fn list(&self) -> Vec<Arc<Conn>> {
        let mut list: Vec<_> = self.registry.read().by_id.values().cloned().collect();
        list.sort_by_key(|c| c.id);
        list
    }

    pub fn get(&self, id: u64) -> Option<Arc<Conn>> {
        self.registry.read().by_id.get(&id).cloned()
    }

    pub fn count(&self) -> usize {
        self.registry.read().by_id.len()
    }

    /// Tells every connection to close (shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        for conn in self.registry.read().by_id.values() {
            conn.close(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(app: &str, user: &str, agent: &str) -> ConnInfo {
        ConnInfo {
            app: app.into(),
            user: user.into(),
            agent: agent.into(),
            device: None,
            transport: TransportKind::Websocket,
            login: 0,
            remote: "127.0.0.1:1".parse().unwrap(),
            topic_claim: None,
        }
    }

    fn envelope(app: &str, target: Target, agents: Option<Vec<String>>) -> Envelope {
        Envelope {
            app: app.into(),
            target,
            agents: AgentFilter::only(agents),
            component: None,
            id: 1,
            directed: false,
            frame: Bytes::from_static(b"{}"),
            variants: Vec::new(),
        }
    }

    fn components(list: &[&str]) -> Subscriptions {
        Subscriptions {
            components: list.iter().map(|c| c.to_string()).collect(),
            topics: Vec::new(),
        }
    }

    fn topics(list: &[&str]) -> Subscriptions {
        Subscriptions {
            components: Vec::new(),
            topics: list.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn routes_topics_by_pattern_once_per_connection() {
        let hub = Hub::new("n1", 0, 8);
        let wide = hub
            .register(
                info("default", "a", "bs"),
                topics(&["alarms/#", "alarms/+/r1"]),
            )
            .unwrap();
        let narrow = hub
            .register(info("default", "b", "bs"), topics(&["alarms/s1/r1"]))
            .unwrap();
        let other = hub
            .register(info("default", "c", "bs"), topics(&["news/#"]))
            .unwrap();
        let to = |t: &str| envelope("default", Target::Topic(t.into()), None);
        assert_eq!(hub.deliver(&to("alarms/s1/r1")), 2);
        assert_eq!(hub.deliver(&to("alarms/s2")), 1);
        assert_eq!(hub.deliver(&to("news/x")), 1);
        assert_eq!(hub.deliver(&to("weather")), 0);
        let mut drained = Vec::new();
        wide.drain(&mut drained);
        assert_eq!(drained.len(), 2, "no duplicate from two matching patterns");
        hub.set_subscriptions(&other, topics(&["alarms/s2"]));
        assert_eq!(hub.deliver(&to("alarms/s2")), 2);
        assert_eq!(hub.deliver(&to("news/x")), 0);
        hub.unregister(&narrow);
        assert_eq!(hub.deliver(&to("alarms/s1/r1")), 1);
    }

    #[test]
    fn routes_by_user_component_agent_and_app() {
        let hub = Hub::new("n1", 0, 8);
        let a_bs = hub
            .register(info("default", "alice", "bs"), components(&["esbm"]))
            .unwrap();
        let a_ios = hub
            .register(info("default", "alice", "ios"), components(&[]))
            .unwrap();
        let b = hub
            .register(info("default", "bob", "cs"), components(&["esbm"]))
            .unwrap();
        let other = hub
            .register(info("oa", "alice", "bs"), components(&["esbm"]))
            .unwrap();

        let to_alice = envelope("default", Target::Users(vec!["alice".into()]), None);
        assert_eq!(hub.deliver(&to_alice), 2);
        let ios_only = envelope(
            "default",
            Target::Users(vec!["alice".into()]),
            Some(vec!["ios".into()]),
        );
        assert_eq!(hub.deliver(&ios_only), 1);
        assert_eq!(
            hub.deliver(&envelope("default", Target::Component("esbm".into()), None)),
            2
        );
        assert_eq!(hub.deliver(&envelope("default", Target::All, None)), 3);
        assert_eq!(hub.deliver(&envelope("oa", Target::All, None)), 1);

        hub.set_subscriptions(&a_ios, components(&["esbm"]));
        assert_eq!(
            hub.deliver(&envelope("default", Target::Component("esbm".into()), None)),
            3
        );
        hub.unregister(&a_bs);
        hub.unregister(&b);
        assert_eq!(hub.deliver(&to_alice), 1);
        assert_eq!(hub.count(), 2);
        hub.unregister(&a_ios);
        hub.unregister(&other);
        assert_eq!(hub.count(), 0);
    }

    #[test]
    fn a_user_gets_at_most_the_limit_of_connections() {
        let hub = Hub::new("n1", 0, 8).with_user_limit(2);
        let first = hub.register(info("default", "alice", "bs"), components(&[]));
        let _second = hub.register(info("default", "alice", "ios"), components(&[]));
        assert_eq!(
            hub.register(info("default", "alice", "cs"), components(&[]))
                .err(),
            Some(UserFull(2))
        );
        assert!(
            hub.register(info("oa", "alice", "bs"), components(&[]))
                .is_ok()
        );
        assert!(
            hub.register(info("default", "bob", "bs"), components(&[]))
                .is_ok()
        );
        hub.unregister(&first.unwrap());
        assert!(
            hub.register(info("default", "alice", "cs"), components(&[]))
                .is_ok()
        );
    }

    #[test]
    fn variants_exceptions_and_component_restriction() {
        let hub = Hub::new("n1", 0, 8);
        let bs = hub
            .register(info("default", "alice", "bs"), components(&["esbm"]))
            .unwrap();
        let ios = hub
            .register(info("default", "alice", "ios"), components(&[]))
            .unwrap();
        let cs = hub
            .register(info("default", "bob", "cs"), components(&["esbm"]))
            .unwrap();
        let users = Target::Users(vec!["alice".into(), "bob".into()]);
        let mut to_all = envelope("default", users.clone(), None);
        to_all.variants = vec![("ios".into(), Bytes::from_static(b"{\"ios\":1}"))];
        assert_eq!(hub.deliver(&to_all), 3);
        let frames = |conn: &Arc<Conn>| {
            let mut out = Vec::new();
            conn.drain(&mut out);
            out.into_iter().map(|o| o.frame).collect::<Vec<_>>()
        };
        assert_eq!(frames(&ios), [Bytes::from_static(b"{\"ios\":1}")]);
        assert_eq!(frames(&bs), [Bytes::from_static(b"{}")]);
        let not_cs = Envelope {
            agents: AgentFilter::Except(vec!["cs".into()]),
            ..envelope("default", users.clone(), None)
        };
        assert_eq!(hub.deliver(&not_cs), 2);
        let esbm_only = Envelope {
            component: Some("esbm".into()),
            ..envelope("default", users, None)
        };
        assert_eq!(hub.deliver(&esbm_only), 2);
        assert_eq!(frames(&ios).len(), 1, "not subscribed to esbm");
        assert_eq!(frames(&cs).len(), 2, "to_all and esbm_only, not not_cs");
    }

    #[test]
    fn a_full_queue_closes_only_that_connection() {
        let hub = Hub::new("n1", 0, 2);
        let slow = hub
            .register(info("default", "slow", "bs"), components(&[]))
            .unwrap();
        let fast = hub
            .register(info("default", "fast", "bs"), components(&[]))
            .unwrap();
        let all = envelope("default", Target::All, None);
        hub.deliver(&all);
        hub.deliver(&all);
        let mut drained = Vec::new();
        fast.drain(&mut drained);
        assert_eq!(hub.deliver(&all), 1, "only the fast one takes the third");
        assert_eq!(slow.closing(), Some(CloseReason::SlowConsumer));
        assert_eq!(fast.closing(), None);
    }

    #[test]
    fn ids_carry_the_node_and_observers_see_first_and_last() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let hub = Hub::new("n7", 7, 8).with_observer(tx);
        let a = hub
            .register(info("default", "alice", "bs"), components(&[]))
            .unwrap();
        let b = hub
            .register(info("default", "alice", "ios"), components(&[]))
            .unwrap();
        assert_eq!(node_of(a.id), 7);
        assert_ne!(a.id, b.id);
        hub.set_subscriptions(&a, components(&["esbm"]));
        hub.unregister(&a);
        hub.unregister(&b);
        let mut seen = Vec::new();
        while let Ok(event) = rx.try_recv() {
            seen.push(match event {
                HubEvent::Connected {
                    first_of_user,
                    first_of_app,
                    ..
                } => format!("connected {first_of_user} {first_of_app}"),
                HubEvent::Resubscribed(_) => "resubscribed".to_owned(),
                HubEvent::Disconnected {
                    last_of_user,
                    last_of_app,
                    ..
                } => format!("disconnected {last_of_user} {last_of_app}"),
            });
        }
        assert_eq!(
            seen,
            [
                "connected true true",
                "connected false false",
                "resubscribed",
                "disconnected false false",
                "disconnected true true",
            ]
        );
    }
}
