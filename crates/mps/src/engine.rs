//! The delivery engine, shared by every transport and the API: validates and accepts messages,
//! makes directed ones durable before answering, publishes them through the broker, serves the
//! backlog of a connecting user, and records deliveries and acks.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use mps_proto::{
    ChannelChoice, DeliveryClass, EventData, EventType, Frame, PushFrame, PushedMessage,
    SendMessage, SendResult,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::audience::Audience;
use crate::auth::DEFAULT_APP;
use crate::broker::Broker;
use crate::channels::Channels;
use crate::config::{Config, MessagesConfig, TopicsConfig};
use crate::formats::Template;
use crate::hub::{AgentFilter, Envelope, Target};
use crate::id::{IdGen, now_ms};
use crate::presence::{Presence, PresenceError};
use crate::push::fallback::{Fallback, Job};
use crate::push::{Notification, Priority};
use crate::shutdown::Tasks;
use crate::store::{
    Claimed, IdempotencyKey, KeyedWrite, NewMessage, Store, StoreError, TopicEntry, TopicReplay,
};

/// Longest user, component, agent, app or sender name.
pub const MAX_NAME: usize = 256;
pub const MAX_TITLE: usize = 1024;
/// Most ids one ack may carry.
pub const MAX_ACK_IDS: usize = 1000;
/// Messages fetched from the store per backlog page.
pub const BACKLOG_PAGE: usize = 500;
/// Most topic messages replayed to one resuming client; a client further behind is told its
/// history was cut.
pub const MAX_REPLAY: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request is wrong; `code` is stable, the message says what to fix.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    #[error(transparent)]
    Presence(#[from] PresenceError),
}

pub(crate) fn invalid(code: &'static str, message: impl Into<String>) -> EngineError {
    EngineError::Invalid {
        code,
        message: message.into(),
    }
}

/// Checks a user, component, agent, app or sender name.
pub fn check_name(what: &str, name: &str) -> Result<(), EngineError> {
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(invalid(
            "invalid_name",
            format!("{what} must be 1 to {MAX_NAME} bytes without control characters"),
        ));
    }
    Ok(())
}

/// Serializes a frame once; the bytes are shared by every connection it goes to.
pub fn encode(frame: &Frame) -> Bytes {
    // Serializing these plain structs cannot fail.
    Bytes::from(serde_json::to_vec(frame).unwrap_or_default())
}

/// The push frame (`Type` 3) of a message.
pub fn encode_push(message: &PushedMessage) -> Bytes {
    Bytes::from(serde_json::to_vec(&PushFrame::new(message)).unwrap_or_default())
}

/// Parses message ids given as decimal strings.
pub fn parse_ids(ids: &[String]) -> Result<Vec<u64>, EngineError> {
    ids.iter()
        .map(|id| {
            id.parse()
                .map_err(|_| invalid("invalid_id", format!("{id:?} is not a message id")))
        })
        .collect()
}

fn class_label(class: DeliveryClass) -> &'static str {
    match class {
        DeliveryClass::Directed => "directed",
        DeliveryClass::Component => "component",
        DeliveryClass::Topic => "topic",
        DeliveryClass::Broadcast => "broadcast",
    }
}

/// A delivery written to a connection, to be recorded.
/// The channels a message (or a recipient's own chain) takes besides the live one.
#[derive(Debug, Default)]
struct Chosen {
    /// The vendor push, at once.
    push: bool,
    /// The webhook channel, at once.
    webhook: bool,
    /// Steps of the chain, run from the store: (channel, seconds after sending).
    later: Vec<(String, u64)>,
}

impl Chosen {
    /// Splits a checked chain: the vendor push and the webhook without delay run at once,
    /// everything else (every e-mail) from the store.
    fn from_chain(chain: Vec<(&str, u64)>) -> Chosen {
        let mut chosen = Chosen::default();
        for (channel, after) in chain {
            match channel {
                "push" if after == 0 => chosen.push = true,
                "webhook" if after == 0 => chosen.webhook = true,
                _ => chosen.later.push((channel.to_owned(), after)),
            }
        }
        chosen
    }
}

struct Delivered {
    app: Arc<str>,
    user: Arc<str>,
    ids: Vec<u64>,
}

pub struct Engine {
    store: Arc<dyn Store>,
    broker: Arc<dyn Broker>,
    /// Who is online on every node: the users a live audience may match.
    presence: Arc<dyn Presence>,
    ids: IdGen,
    config: MessagesConfig,
    topics: TopicsConfig,
    /// Per-app format templates (`[apps.<app>.formats.<agent>]`).
    templates: HashMap<String, BTreeMap<String, Template>>,
    delivered: mpsc::Sender<Delivered>,
    /// Directed messages go on to the recipients' registered devices through it.
    push: Arc<Fallback>,
    /// The webhook and e-mail channels and the back ends' events.
    channels: Arc<Channels>,
    /// Where the delivery recorder runs.
    tasks: Tasks,
}

impl Engine {
    /// Takes from `config` the node id, the message and topic settings and the apps' format
    /// templates.
    pub fn new(
        store: Arc<dyn Store>,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn Presence>,
        config: &Config,
        push: Arc<Fallback>,
        channels: Arc<Channels>,
        tasks: &Tasks,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(4096);
        tasks.spawn(record_deliveries(
            store.clone(),
            rx,
            channels.clone(),
            tasks.token(),
        ));
        Arc::new(Engine {
            store,
            broker,
            presence,
            ids: IdGen::new(config.node_id),
            config: config.messages.clone(),
            topics: config.topics.clone(),
            templates: config
                .apps
                .iter()
                .map(|(app, c)| (app.clone(), c.formats.clone()))
                .filter(|(_, formats)| !formats.is_empty())
                .collect(),
            delivered: tx,
            push,
            channels,
            tasks: tasks.clone(),
        })
    }

    /// The vendor fallback (and through it the configured vendors).
    pub fn push(&self) -> &Fallback {
        &self.push
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// Accepts a message. Directed messages are durable when this returns.
    pub async fn send(&self, req: SendMessage) -> Result<SendResult, EngineError> {
        let audience = self.check_audience(&req)?;
        if let Some(own) = &req.formats {
            crate::formats::check(own)?;
        }
        // A live audience of a component message reaches only connections subscribed to it.
        let live_component = req.component.clone().filter(|_| req.live);
        let app = req.app.unwrap_or_else(|| DEFAULT_APP.to_owned());
        check_name("app", &app)?;
        if req.title.as_ref().is_some_and(|t| t.len() > MAX_TITLE) {
            return Err(invalid(
                "invalid_title",
                format!("title is longer than {MAX_TITLE} bytes"),
            ));
        }
        for (what, value) in [
            ("component", &req.component),
            ("sender", &req.sender),
            ("id", &req.id),
        ] {
            if let Some(value) = value {
                check_name(what, value)?;
            }
        }
        if let Some(agents) = &req.agents {
            if agents.is_empty() || agents.len() > 64 {
                return Err(invalid("invalid_agents", "agents must list 1 to 64 agents"));
            }
            for agent in agents {
                check_name("agent", agent)?;
                if agent.contains(',') {
                    return Err(invalid("invalid_name", "agent names cannot contain ','"));
                }
            }
        }
        let ttl = req.ttl.unwrap_or(self.config.ttl);
        if ttl == 0 || ttl > self.config.max_ttl {
            return Err(invalid(
                "invalid_ttl",
                format!("ttl must be 1 to {} seconds", self.config.max_ttl),
            ));
        }
        let agents = match &audience {
            Some(audience) => audience.agents.clone(),
            None => AgentFilter::only(req.agents.clone()),
        };
        // A live audience: the matching users online now.
        let mut live_users = None;
        let recipients = match (req.receiver, &audience) {
            (Some(list), _) => Some(self.check_recipients(list)?),
            (None, Some(audience)) if req.live => {
                live_users = Some(
                    self.online_audience(&app, audience, req.component.as_deref())
                        .await?,
                );
                None
            }
            (None, Some(audience)) => Some(self.stored_audience(&app, audience).await?),
            (None, None) => None,
        };
        if req.push.is_some() && recipients.is_none() {
            return Err(invalid(
                "invalid_push",
                "push applies to directed messages (with receiver)",
            ));
        }
        if let Some(topic) = &req.topic {
            crate::topic::check_topic(topic, self.topics.limits())
                .map_err(|e| invalid("invalid_topic", e.0))?;
            if recipients.is_some() {
                return Err(invalid(
                    "topic_with_receiver",
                    "a message goes either to a topic or to receivers, not both",
                ));
            }
        }

        let id = self.ids.next();
        let created = now_ms() as i64;
        let pushed = PushedMessage {
            id: id.to_string(),
            title: req.title,
            kind: req.kind,
            component: req.component,
            topic: req.topic,
            sender: req.sender,
            created,
            ack: recipients.is_some(),
            event_data: EventData { ext: req.content },
        };
        let frame = encode_push(&pushed);
        // Each agent's shape is encoded once, for every connection of that agent.
        let shapes = crate::formats::resolve(self.templates.get(&app), req.formats, &pushed);
        let variants: Vec<(String, Bytes)> = shapes
            .iter()
            .filter(|(agent, _)| !crate::formats::is_vendor(agent))
            .map(|(agent, shape)| {
                let shaped = crate::formats::apply(&pushed, shape);
                (agent.clone(), encode_push(&shaped))
            })
            .collect();
        let key = req.id.map(|key| IdempotencyKey {
            app: app.clone(),
            key,
            id,
            created,
            expires: created
                .saturating_add((self.config.idempotency_window as i64).saturating_mul(1000)),
        });
        let chosen = match &req.channels {
            None => Chosen {
                push: true,
                ..Chosen::default()
            },
            Some(channels) => self.check_channels(&app, recipients.is_some(), channels, ttl)?,
        };
        let (push_channel, webhook_channel) = (chosen.push, chosen.webhook);
        let steps: Vec<(String, i64)> = chosen
            .later
            .into_iter()
            .map(|(channel, after)| (channel, created.saturating_add(after as i64 * 1000)))
            .collect();
        // A message that names no channels follows each recipient's own chain, if any.
        let own = match (&req.channels, &recipients) {
            (None, Some(recipients)) => self.own_chains(&app, recipients, ttl).await,
            _ => BTreeMap::new(),
        };
        let own_steps: Vec<(String, String, i64)> = own
            .iter()
            .flat_map(|(user, chosen)| {
                chosen.later.iter().map(move |(channel, after)| {
                    let due = created.saturating_add(*after as i64 * 1000);
                    (user.clone(), channel.clone(), due)
                })
            })
            .collect();
        let step_now = steps.iter().any(|(_, due)| *due <= created)
            || own_steps.iter().any(|(_, _, due)| *due <= created);
        let policy = req.push.unwrap_or_default();
        let mut fallback = None;
        let mut webhook = None;
        let (class, target, count, write) = match recipients {
            Some(recipients) => {
                let count = recipients.len();
                let expires = created.saturating_add((ttl as i64).saturating_mul(1000));
                let taking = |now: bool, of: fn(&Chosen) -> bool| -> Vec<String> {
                    recipients
                        .iter()
                        .filter(|u| own.get(*u).map_or(now, of))
                        .cloned()
                        .collect()
                };
                let webhook_users = taking(webhook_channel, |c| c.webhook);
                let push_users = taking(push_channel, |c| c.push);
                if !webhook_users.is_empty() {
                    webhook = Some((webhook_users, pushed.clone()));
                }
                if !push_users.is_empty() && self.push.wanted(&app, policy) {
                    fallback = Some(Job {
                        note: Notification {
                            id,
                            app: app.clone(),
                            title: pushed.title.clone(),
                            kind: pushed.kind,
                            component: pushed.component.clone(),
                            content: Arc::from(pushed.event_data.ext.clone()),
                            expires,
                            collapse_id: None,
                            priority: Priority::High,
                            formats: shapes
                                .iter()
                                .filter_map(|(name, shape)| {
                                    crate::push::Way::parse(name).map(|way| (way, shape.clone()))
                                })
                                .collect(),
                        },
                        recipients: push_users,
                        agents: agents.clone(),
                        policy,
                    });
                }
                let message = NewMessage {
                    id,
                    app: app.clone(),
                    title: pushed.title,
                    kind: pushed.kind,
                    component: pushed.component,
                    sender: pushed.sender,
                    agents: agents.clone(),
                    formats: shapes,
                    content: pushed.event_data.ext,
                    created,
                    expires,
                    recipients: recipients.clone(),
                    steps,
                    own_steps,
                };
                (
                    DeliveryClass::Directed,
                    Target::Users(recipients),
                    count,
                    KeyedWrite::Message(message),
                )
            }
            None => match (pushed.topic, pushed.component, live_users) {
                (_, component, Some(users)) => {
                    let class = if component.is_some() {
                        DeliveryClass::Component
                    } else {
                        DeliveryClass::Broadcast
                    };
                    let count = users.len();
                    (class, Target::Users(users), count, KeyedWrite::KeyOnly)
                }
                (Some(topic), _, None) => {
                    let (_, keep) = self.topics.retention_of(&topic);
                    let entry = TopicEntry {
                        id,
                        topic: topic.clone(),
                        frame: frame.clone(),
                    };
                    let write = KeyedWrite::Topic {
                        entry,
                        created,
                        keep,
                    };
                    (DeliveryClass::Topic, Target::Topic(topic), 0, write)
                }
                (None, Some(component), None) => (
                    DeliveryClass::Component,
                    Target::Component(component),
                    0,
                    KeyedWrite::KeyOnly,
                ),
                (None, None, None) => (
                    DeliveryClass::Broadcast,
                    Target::All,
                    0,
                    KeyedWrite::KeyOnly,
                ),
            },
        };
        if let Some(first) = self.write(&app, key, write).await? {
            metrics::counter!("mps_messages_duplicates_total").increment(1);
            return Ok(SendResult {
                id: first.to_string(),
                class,
                recipients: count,
                duplicate: true,
            });
        }
        let directed = class == DeliveryClass::Directed;
        let durable = matches!(class, DeliveryClass::Directed | DeliveryClass::Topic);
        let published = self
            .broker
            .publish(Envelope {
                app: app.clone(),
                target,
                agents,
                component: live_component,
                id,
                directed,
                frame,
                variants,
            })
            .await;
        metrics::counter!("mps_messages_accepted_total", "class" => class_label(class))
            .increment(1);
        match published {
            Ok(_) => {}
            // Durable already: the recipients get it from the store when they (re)connect.
            Err(e) if durable => tracing::warn!(id, error = %e, "live fan-out failed"),
            Err(e) => return Err(e.into()),
        }
        // After the live fan-out, so that presence sees who just received it.
        if let Some(job) = fallback {
            self.push.offer(job);
        }
        if let Some((users, message)) = webhook {
            self.channels.offer_webhook(&app, &users, &message);
        }
        if step_now {
            self.channels.nudge();
        }
        Ok(SendResult {
            id: id.to_string(),
            class,
            recipients: count,
            duplicate: false,
        })
    }

    /// Makes a directed or topic message durable, with its idempotency key when it has one (a
    /// live-only message stores only the key). Returns the earlier message's id when the key
    /// is already held.
    async fn write(
        &self,
        app: &str,
        key: Option<IdempotencyKey>,
        write: KeyedWrite,
    ) -> Result<Option<u64>, EngineError> {
        if let Some(key) = key {
            return Ok(match self.store.write_keyed(key, write).await? {
                Claimed::Fresh => None,
                Claimed::Duplicate(first) => Some(first),
            });
        }
        match write {
            KeyedWrite::Message(message) => self.store.insert(message).await?,
            KeyedWrite::Topic {
                entry,
                created,
                keep,
            } => self.store.append_topic(app, entry, created, keep).await?,
            KeyedWrite::KeyOnly => {}
        }
        Ok(None)
    }

    /// The next page of a connection's backlog (pending directed messages after `after`),
    /// encoded as push frames, oldest first.
    pub async fn backlog(
        &self,
        app: &str,
        user: &str,
        agent: &str,
        after: u64,
    ) -> Result<Vec<(u64, Bytes)>, EngineError> {
        if after == 0 {
            // What is published from now on reaches this connection; read the store after.
            self.broker.ready().await;
        }
        let pending = self
            .store
            .pending(app, user, Some(agent), after, BACKLOG_PAGE)
            .await?;
        Ok(pending
            .iter()
            .map(|m| (m.id.parse().unwrap_or_default(), encode_push(m)))
            .collect())
    }

    /// What a client resuming from `after` missed on its topic patterns.
    pub async fn replay(
        &self,
        app: &str,
        patterns: &[String],
        after: u64,
    ) -> Result<TopicReplay, EngineError> {
        if patterns.is_empty() || after == 0 {
            return Ok(TopicReplay::default());
        }
        self.broker.ready().await;
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

    /// Drops topic messages older than their topic's retention.
    pub async fn trim_topics(&self, now: i64) -> Result<u64, EngineError> {
        let cutoffs = self
            .store
            .topics()
            .await?
            .into_iter()
            .map(|(app, topic)| {
                let (seconds, _) = self.topics.retention_of(&topic);
                let cutoff = now.saturating_sub((seconds as i64).saturating_mul(1000));
                (app, topic, cutoff)
            })
            .collect();
        Ok(self.store.trim_topics(cutoffs).await?)
    }

    /// Records that these directed messages were written to a connection of the user. Batched
    /// and committed in the background. Not async, so that it adds nothing to the state of every
    /// session task; when the recorder is far behind, the record waits in a task of its own.
    pub fn delivered(&self, app: Arc<str>, user: Arc<str>, ids: Vec<u64>) {
        if ids.is_empty() {
            return;
        }
        crate::telemetry::hot()
            .directed_delivered
            .increment(ids.len() as u64);
        if let Err(mpsc::error::TrySendError::Full(record)) =
            self.delivered.try_send(Delivered { app, user, ids })
        {
            let recorder = self.delivered.clone();
            self.tasks.spawn(async move {
                let _ = recorder.send(record).await;
            });
        }
    }

    /// Records deliveries in the store before returning, for a transport whose next request
    /// starts afresh and must not find these messages pending again (polling).
    pub async fn delivered_now(
        &self,
        app: &str,
        user: &str,
        ids: Vec<u64>,
    ) -> Result<(), EngineError> {
        if ids.is_empty() {
            return Ok(());
        }
        let count = ids.len() as u64;
        let changed = self.store.mark_delivered(app, user, ids).await?;
        crate::telemetry::hot().directed_delivered.increment(count);
        self.channels
            .events()
            .recipients(EventType::MessageDelivered, app, user, &changed);
        Ok(())
    }

    /// A client's ack of message ids (decimal strings); returns how many changed to `acked`.
    pub async fn ack(&self, app: &str, user: &str, ids: &[String]) -> Result<u64, EngineError> {
        if ids.len() > MAX_ACK_IDS {
            return Err(invalid(
                "too_many_ids",
                format!("at most {MAX_ACK_IDS} ids per ack"),
            ));
        }
        let ids = parse_ids(ids)?;
        let acked = self.store.ack(app, user, ids).await?;
        metrics::counter!("mps_acks_total").increment(acked.len() as u64);
        self.channels
            .events()
            .recipients(EventType::MessageAcked, app, user, &acked);
        Ok(acked.len() as u64)
    }

    /// Pull: the user's pending messages (any agent), marked delivered.
    pub async fn collect(
        &self,
        app: &str,
        user: &str,
        limit: usize,
    ) -> Result<Vec<PushedMessage>, EngineError> {
        let pending = self.store.pending(app, user, None, 0, limit).await?;
        let ids = pending.iter().filter_map(|m| m.id.parse().ok()).collect();
        let changed = self.store.mark_delivered(app, user, ids).await?;
        self.channels
            .events()
            .recipients(EventType::MessageDelivered, app, user, &changed);
        Ok(pending)
    }

    /// Checks a message's `channels`: which channels it takes at once, and which as steps of
    /// its chain (every e-mail, and every channel with an `after`).
    fn check_channels(
        &self,
        app: &str,
        directed: bool,
        channels: &[ChannelChoice],
        ttl: u64,
    ) -> Result<Chosen, EngineError> {
        if !directed {
            return Err(invalid(
                "invalid_channels",
                "channels apply to directed messages (with receiver)",
            ));
        }
        let chain = crate::channels::check_chain(channels, ttl)
            .map_err(|e| invalid("invalid_channels", e))?;
        if let Some((channel, _)) = chain
            .iter()
            .find(|(c, _)| !self.channels.configured(app, c))
        {
            return Err(invalid(
                "channel_not_configured",
                format!("app {app:?} has no {channel} channel ([push.apps.{app}.{channel}])"),
            ));
        }
        Ok(Chosen::from_chain(chain))
    }

    /// The recipients' own chains (their preferences' `channels`), for a message that names
    /// none, in an app with a channel besides the vendor push. A chain that does not fit the
    /// message (a delay past its ttl) or the app (a channel it lacks) keeps what fits.
    async fn own_chains(
        &self,
        app: &str,
        recipients: &[String],
        ttl: u64,
    ) -> BTreeMap<String, Chosen> {
        if !self.channels.configured(app, "email") && !self.channels.configured(app, "webhook") {
            return BTreeMap::new();
        }
        let found = match self.store.preferences(app, recipients).await {
            Ok(found) => found,
            // Not knowing them, send as the message says.
            Err(e) => {
                tracing::warn!(error = %e, "reading preferences failed; using the message's channels");
                return BTreeMap::new();
            }
        };
        found
            .into_iter()
            .filter(|(_, p)| !p.channels.is_empty())
            .map(|(user, p)| {
                let chain = p
                    .channels
                    .iter()
                    .filter_map(|choice| {
                        let step = crate::channels::check_chain(std::slice::from_ref(choice), ttl)
                            .ok()?
                            .pop()?;
                        self.channels.configured(app, step.0).then_some(step)
                    })
                    .collect();
                (user, Chosen::from_chain(chain))
            })
            .collect()
    }

    /// Parses and checks a message's audience, if it has one.
    fn check_audience(&self, req: &SendMessage) -> Result<Option<Audience>, EngineError> {
        let Some(text) = &req.audience else {
            if req.live {
                return Err(invalid(
                    "live_without_audience",
                    "live is for audiences; a message without receiver is live already",
                ));
            }
            return Ok(None);
        };
        for (given, field) in [
            (req.receiver.is_some(), "receiver"),
            (req.topic.is_some(), "topic"),
            (req.agents.is_some(), "agents"),
        ] {
            if given {
                return Err(invalid(
                    "audience_conflict",
                    format!(
                        "a message has either an audience or {field}, not both (agents go into the audience as agent: terms)"
                    ),
                ));
            }
        }
        let audience =
            Audience::parse(text).map_err(|e| invalid("invalid_audience", e.to_string()))?;
        if audience.users.is_none() && !req.live {
            return Err(invalid(
                "invalid_audience",
                "audience: a stored audience needs a term other than agent: (send it live to \
                 reach every online client of those agents)",
            ));
        }
        Ok(Some(audience))
    }

    /// The users of a durable audience, online or not, from the store.
    async fn stored_audience(
        &self,
        app: &str,
        audience: &Audience,
    ) -> Result<Vec<String>, EngineError> {
        let Some(expr) = &audience.users else {
            return Ok(Vec::new());
        };
        let max = self.config.max_audience;
        let started = std::time::Instant::now();
        let users = self
            .store
            .resolve(app, expr, None, max.saturating_add(1))
            .await?;
        metrics::histogram!("mps_audience_resolve_seconds", "class" => "stored")
            .record(started.elapsed().as_secs_f64());
        if users.len() > max {
            return Err(invalid(
                "audience_too_large",
                format!("the audience matches more than {max} users (messages.max_audience)"),
            ));
        }
        Ok(users)
    }

    /// The users of a live audience: those online now on any node with a matching client (of an
    /// admitted agent and, for a component message, subscribed to it).
    async fn online_audience(
        &self,
        app: &str,
        audience: &Audience,
        component: Option<&str>,
    ) -> Result<Vec<String>, EngineError> {
        let started = std::time::Instant::now();
        let mut online: Vec<String> = self
            .presence
            .list()
            .await?
            .into_iter()
            .filter(|c| {
                c.app == app
                    && audience.agents.admits(&c.agent)
                    && component.is_none_or(|wanted| c.components.iter().any(|c| c == wanted))
            })
            .map(|c| c.user)
            .collect();
        online.sort_unstable();
        online.dedup();
        let users = match &audience.users {
            Some(expr) if !online.is_empty() => {
                let limit = online.len();
                self.store.resolve(app, expr, Some(online), limit).await?
            }
            Some(_) => Vec::new(),
            None => online,
        };
        metrics::histogram!("mps_audience_resolve_seconds", "class" => "live")
            .record(started.elapsed().as_secs_f64());
        Ok(users)
    }

    fn check_recipients(&self, list: Vec<String>) -> Result<Vec<String>, EngineError> {
        if list.is_empty() {
            return Err(invalid(
                "invalid_receiver",
                "receiver is empty; omit it to broadcast",
            ));
        }
        if list.len() > self.config.max_recipients {
            return Err(invalid(
                "too_many_recipients",
                format!("at most {} recipients", self.config.max_recipients),
            ));
        }
        for user in &list {
            check_name("receiver", user)?;
        }
        let mut list = list;
        list.sort_unstable();
        list.dedup();
        Ok(list)
    }
}

/// Commits delivery records in batches: everything queued while the previous batch committed
/// goes into the store together, where the writer folds it into one transaction.
/// On shutdown it takes no more and commits what is queued.
async fn record_deliveries(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Delivered>,
    channels: Arc<Channels>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(256);
    while crate::shutdown::next_many(&mut rx, &mut batch, 256, &stop).await > 0 {
        let mut by_user: HashMap<(Arc<str>, Arc<str>), Vec<u64>> = HashMap::new();
        for d in batch.drain(..) {
            by_user.entry((d.app, d.user)).or_default().extend(d.ids);
        }
        let writes = by_user
            .into_iter()
            .map(|((app, user), ids)| {
                let store = store.clone();
                let events = channels.events();
                async move {
                    match store.mark_delivered(&app, &user, ids).await {
                        Ok(changed) => {
                            events.recipients(EventType::MessageDelivered, &app, &user, &changed)
                        }
                        Err(e) => tracing::warn!(error = %e, "recording deliveries failed"),
                    }
                }
            })
            .collect::<Vec<_>>();
        futures_util::future::join_all(writes).await;
    }
}
