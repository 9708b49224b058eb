//! The connections of this node: who is online, indexed by app, user and component, each with a
//! bounded outbound queue. Fan-out takes the registry's read lock, appends a shared frame to each
//! matching queue and wakes the connection's task; nothing awaits while a lock is held.

mod conn;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::RwLock;

pub use conn::{CloseReason, Conn, ConnInfo, Outbound};

/// Who a live message is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every connection of these users.
    Users(Vec<String>),
    /// Every connection whose component set includes this component.
    Component(String),
    /// Every connection of the app.
    All,
}

/// A message on its way to connections: what the broker carries between nodes.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub app: String,
    pub target: Target,
    /// Only connections of these agents.
    pub agents: Option<Vec<String>>,
    /// Set for directed messages, whose delivery is recorded per recipient.
    pub directed: Option<u64>,
    /// The encoded push frame, shared by every connection it goes to.
    pub frame: Bytes,
}

#[derive(Default)]
struct AppConns {
    all: HashMap<u64, Arc<Conn>>,
    users: HashMap<Arc<str>, Vec<Arc<Conn>>>,
    components: HashMap<Box<str>, HashMap<u64, Arc<Conn>>>,
}

#[derive(Default)]
struct Registry {
    apps: HashMap<Arc<str>, AppConns>,
    by_id: HashMap<u64, Arc<Conn>>,
}

pub struct Hub {
    node: Arc<str>,
    next_id: AtomicU64,
    queue: usize,
    registry: RwLock<Registry>,
}

impl Hub {
    /// `queue` bounds each connection's outbound queue.
    pub fn new(node: &str, queue: usize) -> Self {
        Hub {
            node: node.into(),
            next_id: AtomicU64::new(1),
            queue: queue.max(1),
            registry: RwLock::new(Registry::default()),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Adds a connection; it receives fan-out from now on.
    pub fn register(&self, info: ConnInfo, components: Vec<String>) -> Arc<Conn> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::new(id, info, self.queue, components.clone()));
        let mut registry = self.registry.write();
        let app = registry.apps.entry(conn.info.app.clone()).or_default();
        app.all.insert(id, conn.clone());
        app.users
            .entry(conn.info.user.clone())
            .or_default()
            .push(conn.clone());
        for component in components {
            app.components
                .entry(component.into_boxed_str())
                .or_default()
                .insert(id, conn.clone());
        }
        registry.by_id.insert(id, conn.clone());
        metrics::gauge!("mps_connections").increment(1.0);
        conn
    }

    pub fn unregister(&self, conn: &Conn) {
        let mut registry = self.registry.write();
        if registry.by_id.remove(&conn.id).is_none() {
            return;
        }
        if let Some(app) = registry.apps.get_mut(&conn.info.app) {
            app.all.remove(&conn.id);
            if let Some(list) = app.users.get_mut(&conn.info.user) {
                list.retain(|c| c.id != conn.id);
                if list.is_empty() {
                    app.users.remove(&conn.info.user);
                }
            }
            for component in conn.components() {
                if let Some(set) = app.components.get_mut(component.as_str()) {
                    set.remove(&conn.id);
                    if set.is_empty() {
                        app.components.remove(component.as_str());
                    }
                }
            }
            if app.all.is_empty() {
                registry.apps.remove(&conn.info.app);
            }
        }
        metrics::gauge!("mps_connections").decrement(1.0);
    }

    /// Replaces a connection's component set.
    pub fn set_components(&self, conn: &Arc<Conn>, components: Vec<String>) {
        let mut registry = self.registry.write();
        let Some(app) = registry.apps.get_mut(&conn.info.app) else {
            return;
        };
        for old in conn.components() {
            if let Some(set) = app.components.get_mut(old.as_str()) {
                set.remove(&conn.id);
                if set.is_empty() {
                    app.components.remove(old.as_str());
                }
            }
        }
        for component in &components {
            app.components
                .entry(component.as_str().into())
                .or_default()
                .insert(conn.id, conn.clone());
        }
        conn.set_components(components);
    }

    /// Queues an envelope on every matching local connection; returns how many took it.
    /// Connections whose queue is full are told to close as slow consumers.
    pub fn deliver(&self, envelope: &Envelope) -> usize {
        let registry = self.registry.read();
        let Some(app) = registry.apps.get(envelope.app.as_str()) else {
            return 0;
        };
        let agents = envelope.agents.as_deref();
        let mut queued = 0;
        let mut offer = |conn: &Arc<Conn>| {
            if agents.is_some_and(|agents| !agents.iter().any(|a| *a == *conn.info.agent)) {
                return;
            }
            let out = Outbound {
                frame: envelope.frame.clone(),
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
            Target::All => app.all.values().for_each(&mut offer),
        }
        metrics::counter!("mps_deliveries_queued_total").increment(queued as u64);
        queued
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
            transport: "websocket",
            login: 0,
            remote: "127.0.0.1:1".parse().unwrap(),
        }
    }

    fn envelope(app: &str, target: Target, agents: Option<Vec<String>>) -> Envelope {
        Envelope {
            app: app.into(),
            target,
            agents,
            directed: None,
            frame: Bytes::from_static(b"{}"),
        }
    }

    #[test]
    fn routes_by_user_component_agent_and_app() {
        let hub = Hub::new("n1", 8);
        let a_bs = hub.register(info("default", "alice", "bs"), vec!["esbm".into()]);
        let a_ios = hub.register(info("default", "alice", "ios"), vec![]);
        let b = hub.register(info("default", "bob", "cs"), vec!["esbm".into()]);
        let other = hub.register(info("oa", "alice", "bs"), vec!["esbm".into()]);

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

        hub.set_components(&a_ios, vec!["esbm".into()]);
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
    fn a_full_queue_closes_only_that_connection() {
        let hub = Hub::new("n1", 2);
        let slow = hub.register(info("default", "slow", "bs"), vec![]);
        let fast = hub.register(info("default", "fast", "bs"), vec![]);
        let all = envelope("default", Target::All, None);
        hub.deliver(&all);
        hub.deliver(&all);
        let mut drained = Vec::new();
        fast.drain(&mut drained);
        assert_eq!(hub.deliver(&all), 1, "only the fast one takes the third");
        assert_eq!(slow.closing(), Some(CloseReason::SlowConsumer));
        assert_eq!(fast.closing(), None);
    }
}
