//! What a client is owed from the store before its live messages, decided here for every
//! transport and for the connections of a node whose broker reconnected: a resume-gap notice
//! when its topics' retained logs no longer reach its last id (the history cut), the topic
//! messages it missed, then its pending directed messages, oldest first, a page at a time. The
//! ids sent are remembered for a while so that a live copy of the same message, queued since
//! the connection registered, is not sent twice.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mps_proto::{ErrorBody, Frame, frame::kind};

use super::{Engine, EngineError, encode, encode_push};
use crate::hub::{Conn, Hub, Outbound};
use crate::store::TopicReplay;

/// Messages fetched from the store per backlog page.
pub const BACKLOG_PAGE: usize = 500;
/// Most topic messages replayed to one resuming client; a client further behind is told its
/// history was cut.
pub const MAX_REPLAY: usize = 10_000;

/// How long sent ids are remembered after the catch-up is done.
const REMEMBER: Duration = Duration::from_secs(10);

enum Stage {
    Topics,
    Directed { after: u64 },
    Done,
}

/// The catch-up of one connection. Its state is boxed and dropped once the catch-up is over and
/// nothing sent needs remembering, so that the idle connections a node holds by the ten thousand
/// carry one pointer for it.
pub struct CatchUp(Option<Box<State>>);

struct State {
    stage: Stage,
    last_id: u64,
    sent: HashSet<u64>,
    forget_at: Option<Instant>,
    /// Patterns whose history was cut, for transports that report it out of band.
    truncated: Vec<String>,
}

impl CatchUp {
    /// `last_id` 0 means the client is not resuming topics.
    pub fn new(last_id: u64) -> Self {
        CatchUp(Some(Box::new(State {
            stage: Stage::Topics,
            last_id,
            sent: HashSet::new(),
            forget_at: None,
            truncated: Vec::new(),
        })))
    }

    pub fn done(&self) -> bool {
        self.0
            .as_ref()
            .is_none_or(|state| matches!(state.stage, Stage::Done))
    }

    /// Patterns whose history was cut (the reset frame carries them too).
    pub fn truncated(&self) -> &[String] {
        self.0.as_ref().map_or(&[], |state| &state.truncated)
    }

    /// The next frames to send, empty once caught up.
    pub async fn next(
        &mut self,
        engine: &Engine,
        conn: &Conn,
    ) -> Result<Vec<Outbound>, EngineError> {
        let Some(state) = self.0.as_mut() else {
            return Ok(Vec::new());
        };
        let info = &conn.info;
        let mut out = Vec::new();
        match state.stage {
            Stage::Topics => {
                // What is published from now on reaches this connection; read the store after.
                engine.broker.ready().await;
                let topics = conn.subscriptions().topics;
                let replay = engine.replay(&info.app, &topics, state.last_id).await?;
                if !replay.truncated.is_empty() {
                    out.push(Outbound {
                        frame: encode(&reset_frame(replay.truncated.clone())),
                        id: 0,
                        directed: false,
                    });
                    state.truncated = replay.truncated;
                }
                out.extend(replay.entries.into_iter().map(|e| Outbound {
                    frame: e.frame,
                    id: e.id,
                    directed: false,
                }));
                state.stage = Stage::Directed { after: 0 };
            }
            Stage::Directed { after } => {
                let page = engine
                    .backlog(&info.app, &info.user, &info.agent, after)
                    .await?;
                let full = page.len() == BACKLOG_PAGE;
                let last = page.last().map(|(id, _)| *id).unwrap_or(after);
                out.extend(page.into_iter().map(|(id, frame)| Outbound {
                    frame,
                    id,
                    directed: true,
                }));
                state.stage = if full {
                    Stage::Directed { after: last }
                } else {
                    state.forget_at = Some(Instant::now() + REMEMBER);
                    Stage::Done
                };
            }
            Stage::Done => {}
        }
        state.sent.extend(out.iter().map(|o| o.id));
        if matches!(state.stage, Stage::Done) && state.sent.is_empty() && state.truncated.is_empty()
        {
            self.0 = None;
        }
        Ok(out)
    }

    /// Whether a live frame repeats one already sent from the store.
    pub fn is_repeat(&mut self, id: u64) -> bool {
        let Some(state) = self.0.as_ref() else {
            return false;
        };
        if state.forget_at.is_some_and(|at| Instant::now() > at) {
            self.0 = None;
            return false;
        }
        state.sent.contains(&id)
    }

    /// Drops what is remembered once it is no longer needed; for a connection's idle moments.
    pub fn tidy(&mut self) {
        if self
            .0
            .as_ref()
            .and_then(|state| state.forget_at)
            .is_some_and(|at| Instant::now() > at)
        {
            self.0 = None;
        }
    }
}

/// The `Type` 10 frame telling a client that its topics' history was cut.
fn reset_frame(patterns: Vec<String>) -> Frame {
    Frame {
        topics: Some(patterns),
        error: Some(ErrorBody {
            code: "history_truncated".into(),
            message: "messages after your last id are no longer retained; reload your state".into(),
        }),
        ..Frame::reply(kind::RESET, None)
    }
}

impl Engine {
    /// The next page of a connection's backlog (pending directed messages after `after`),
    /// encoded as push frames, oldest first.
    async fn backlog(
        &self,
        app: &str,
        user: &str,
        agent: &str,
        after: u64,
    ) -> Result<Vec<(u64, Bytes)>, EngineError> {
        let pending = self
            .store
            .pending(app, user, Some(agent), after, BACKLOG_PAGE)
            .await?;
        Ok(pending
            .iter()
            .filter_map(|m| Some((crate::id::read_back(&m.id)?, encode_push(m))))
            .collect())
    }

    /// What a client resuming from `after` missed on its topic patterns.
    async fn replay(
        &self,
        app: &str,
        patterns: &[String],
        after: u64,
    ) -> Result<TopicReplay, EngineError> {
        if patterns.is_empty() || after == 0 {
            return Ok(TopicReplay::default());
        }
        let mut replay = self
            .store
            .topic_since(app, patterns, after, MAX_REPLAY)
            .await?;
        // Ids are assigned before the store commit, so concurrent publishes can reach clients
        // out of id order: a message with a lower id may arrive after the client's last id.
        // Replay the overlap too; clients drop repeats by id.
        let overlap_from = crate::id::minus_millis(after, self.topics.resume_overlap_ms);
        let overlap = self
            .store
            .topic_since(app, patterns, overlap_from, MAX_REPLAY)
            .await?;
        let mut early: Vec<_> = overlap
            .entries
            .into_iter()
            .take_while(|e| e.id <= after)
            .collect();
        early.append(&mut replay.entries);
        replay.entries = early;
        if replay.entries.len() >= MAX_REPLAY {
            // Too far behind to replay: say so, as if the history had been cut.
            replay.entries.clear();
            replay.truncated = patterns.to_vec();
        }
        metrics::counter!("mps_topic_replayed_total").increment(replay.entries.len() as u64);
        Ok(replay)
    }

    /// Catches up this node's connections each time the broker reports it reconnected: what
    /// was published while it was cut off from the other nodes may have missed them. Runs
    /// until the broker is gone.
    pub async fn catch_up_after_reconnects(self: Arc<Self>, hub: Arc<Hub>) {
        let mut reconnected = self.broker.reconnected();
        while reconnected.changed().await.is_ok() {
            let since = *reconnected.borrow_and_update();
            self.catch_up_all(&hub, since).await;
        }
    }

    /// Sends every connection of the hub what it is owed as if it resumed from message id
    /// `since`, less what this node delivered lately.
    async fn catch_up_all(&self, hub: &Hub, since: u64) {
        let mut sent = 0u64;
        for conn in hub.list() {
            if conn.closing().is_some() {
                continue;
            }
            let mut catchup = CatchUp::new(since);
            while !catchup.done() {
                match catchup.next(self, &conn).await {
                    Ok(batch) => {
                        for out in batch {
                            if !self.broker.delivered_lately(out.id) {
                                sent += 1;
                                conn.push(out);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "catching up after a reconnect failed");
                        break;
                    }
                }
            }
        }
        metrics::counter!("mps_cluster_resynced_total").increment(sent);
        tracing::info!(sent, "caught up the local connections after a reconnect");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use parking_lot::Mutex;
    use tokio::sync::watch;

    use crate::broker::{Broker, BrokerError};
    use crate::channels::Channels;
    use crate::config::Config;
    use crate::engine::Engine;
    use crate::hub::{ConnInfo, Envelope, Hub, Subscriptions};
    use crate::presence::LocalPresence;
    use crate::push::fallback::Fallback;
    use crate::shutdown::Tasks;
    use crate::store::Store;
    use crate::store::sqlite::SqliteStore;
    use crate::webhooks::Webhooks;

    /// A broker cut off from the other nodes: nothing published reaches a connection until it
    /// reports a reconnect.
    struct CutOff {
        reconnects: watch::Sender<u64>,
        lately: Mutex<HashSet<u64>>,
    }

    #[async_trait]
    impl Broker for CutOff {
        async fn publish(&self, _envelope: Envelope) -> Result<usize, BrokerError> {
            Ok(0)
        }

        fn reconnected(&self) -> watch::Receiver<u64> {
            self.reconnects.subscribe()
        }

        fn delivered_lately(&self, id: u64) -> bool {
            self.lately.lock().contains(&id)
        }
    }

    #[tokio::test]
    async fn a_reconnect_catches_connections_up_less_what_was_delivered_lately() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let hub = Arc::new(Hub::new("n", 0, 64));
        let presence = Arc::new(LocalPresence::new(hub.clone()));
        let broker = Arc::new(CutOff {
            reconnects: watch::channel(0).0,
            lately: Mutex::default(),
        });
        let tasks = Tasks::new();
        let events = Webhooks::start(&[], "n", 0, &tasks).unwrap();
        let push = Fallback::start(
            store.clone(),
            presence.clone(),
            Arc::default(),
            events.clone(),
            &tasks,
        );
        let channels = Channels::start(&BTreeMap::new(), store.clone(), events, &tasks).unwrap();
        let config = Config::default();
        let engine = Engine::new(
            store,
            broker.clone(),
            presence,
            &config,
            push,
            channels,
            &tasks,
        );
        tasks.spawn_until_stopped(engine.clone().catch_up_after_reconnects(hub.clone()));
        let info = ConnInfo {
            app: "default".into(),
            user: "gina".into(),
            agent: "bs".into(),
            device: None,
            transport: crate::words::TransportKind::Websocket,
            login: 0,
            remote: "127.0.0.1:1".parse().unwrap(),
            topic_claim: None,
        };
        let conn = hub.register(info, Subscriptions::default()).unwrap();

        let mut ids = Vec::new();
        for n in 0..2 {
            let body = format!(r#"{{"content": {{"n": {n}}}, "receiver": ["gina"]}}"#);
            let sent = engine.send(serde_json::from_str(&body).unwrap()).await;
            ids.push(sent.unwrap().id.parse::<u64>().unwrap());
        }
        broker.lately.lock().insert(ids[0]);
        broker.reconnects.send_replace(ids[0]);

        let mut drained = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), async {
            while drained.is_empty() {
                conn.wait().await;
                conn.drain(&mut drained);
            }
        })
        .await
        .expect("the connection is caught up");
        let got: Vec<(u64, bool)> = drained.iter().map(|o| (o.id, o.directed)).collect();
        assert_eq!(got, [(ids[1], true)]);
    }
}
