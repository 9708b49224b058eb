//! Accepting a message, one step per function: check the request and address it (who it goes
//! to), compose it (its id, its frames encoded once, its shapes), choose its channels besides
//! the live one, write it (directed and topic messages are durable before the answer) and fan it
//! out (the broker, then the vendor push, the webhook and the chain).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use mps_proto::{
    DeliveryClass, EventData, Format, PushPolicy, PushedMessage, SendMessage, SendResult,
};

use super::channels::{Chosen, Routes};
use super::{Engine, EngineError, encode_push};
use crate::audience::Audience;
use crate::auth::DEFAULT_APP;
use crate::hub::{Envelope, Target};
use crate::id::now_ms;
use crate::push::fallback::Job;
use crate::push::{Notification, Priority};
use crate::store::{Claimed, IdempotencyKey, KeyedWrite, NewMessage, TopicEntry};
use crate::words::{AgentFilter, MAX_TITLE, check_depth, check_name, invalid};

/// Who a checked message goes to.
struct Addressed {
    app: String,
    ttl: u64,
    agents: AgentFilter,
    /// A directed message's recipients, sorted, without repeats.
    recipients: Option<Vec<String>>,
    /// A live audience: the matching users online now.
    live_users: Option<Vec<String>>,
    /// A live audience of a component message reaches only connections subscribed to it.
    live_component: Option<String>,
}

/// A message stamped with its id and time, as the store and the other channels take it.
struct Stamped {
    id: u64,
    created: i64,
    pushed: PushedMessage,
    /// Each agent's shape (connections', vendors' and e-mail's).
    shapes: BTreeMap<String, Format>,
}

/// A message with its frames, ready to go.
struct Composed {
    message: Stamped,
    /// The push frame, shared by every connection it goes to.
    frame: Bytes,
    /// The frames of agents whose clients get another shape, each encoded once.
    variants: Vec<(String, Bytes)>,
    key: Option<IdempotencyKey>,
}

/// What a message becomes: its class, what the store keeps of it, where it goes live, and the
/// work offered after the live fan-out.
struct Plan {
    class: DeliveryClass,
    target: Target,
    /// The recipients counted in the answer.
    count: usize,
    write: KeyedWrite,
    fallback: Option<Job>,
    webhook: Option<(Vec<String>, PushedMessage)>,
    step_now: bool,
}

fn class_label(class: DeliveryClass) -> &'static str {
    match class {
        DeliveryClass::Directed => "directed",
        DeliveryClass::Component => "component",
        DeliveryClass::Topic => "topic",
        DeliveryClass::Broadcast => "broadcast",
    }
}

impl Engine {
    /// Accepts a message. Directed messages are durable when this returns.
    pub async fn send(&self, mut req: SendMessage) -> Result<SendResult, EngineError> {
        let mut to = self.address(&mut req).await?;
        let channels = req.channels.take();
        let policy = req.push.unwrap_or_default();
        let Composed {
            message,
            frame,
            variants,
            key,
        } = self.compose(req, &to);
        let routes = self
            .choose_channels(
                &to.app,
                to.recipients.as_deref(),
                to.ttl,
                channels.as_deref(),
                message.created,
            )
            .await?;
        let id = message.id;
        let plan = match to.recipients.take() {
            Some(recipients) => self.directed(&to, recipients, message, routes, policy),
            None => {
                let live_users = to.live_users.take();
                self.undirected(live_users, message, &frame)
            }
        };
        if let Some(first) = self.write(&to.app, key, plan.write).await? {
            metrics::counter!("mps_messages_duplicates_total").increment(1);
            return Ok(SendResult {
                id: first.to_string(),
                class: plan.class,
                recipients: plan.count,
                duplicate: true,
            });
        }
        let envelope = Envelope {
            app: to.app.clone(),
            target: plan.target,
            agents: to.agents,
            component: to.live_component,
            id,
            directed: plan.class == DeliveryClass::Directed,
            frame,
            variants,
        };
        self.fan_out(envelope, plan.class).await?;
        // After the live fan-out, so that presence sees who just received it.
        if let Some(job) = plan.fallback {
            self.push.offer(job);
        }
        if let Some((users, message)) = plan.webhook {
            self.channels.offer_webhook(&to.app, &users, &message);
        }
        if plan.step_now {
            self.channels.nudge();
        }
        Ok(SendResult {
            id: id.to_string(),
            class: plan.class,
            recipients: plan.count,
            duplicate: false,
        })
    }

    /// Checks the request and finds who it goes to. Takes the receiver list out of `req`.
    async fn address(&self, req: &mut SendMessage) -> Result<Addressed, EngineError> {
        let audience = self.check_audience(req)?;
        if let Some(own) = &req.formats {
            crate::formats::check(own)?;
        }
        let live_component = req.component.clone().filter(|_| req.live);
        let app = req.app.take().unwrap_or_else(|| DEFAULT_APP.to_owned());
        check_name("app", &app)?;
        let ttl = self.check_fields(req)?;
        let agents = match &audience {
            Some(audience) => audience.agents.clone(),
            None => AgentFilter::only(req.agents.clone()),
        };
        let (recipients, live_users) = self.recipients(req, &app, audience.as_ref()).await?;
        if req.push.is_some() && recipients.is_none() {
            return Err(invalid(
                "invalid_push",
                "push applies to directed messages (with receiver)",
            ));
        }
        if let Some(topic) = &req.topic {
            crate::limits::check_topic(topic, self.topics.limits())
                .map_err(|e| invalid::<EngineError>("invalid_topic", e.message))?;
            if recipients.is_some() {
                return Err(invalid(
                    "topic_with_receiver",
                    "a message goes either to a topic or to receivers, not both",
                ));
            }
        }
        Ok(Addressed {
            app,
            ttl,
            agents,
            recipients,
            live_users,
            live_component,
        })
    }

    /// Checks the title, the names and the agents; returns the message's ttl, checked.
    fn check_fields(&self, req: &SendMessage) -> Result<u64, EngineError> {
        check_depth("content", req.content.get())?;
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
        Ok(ttl)
    }

    /// A directed message's recipients (a receiver list or a durable audience), or a live
    /// audience's users online now; neither for a broadcast, component or topic message.
    async fn recipients(
        &self,
        req: &mut SendMessage,
        app: &str,
        audience: Option<&Audience>,
    ) -> Result<(Option<Vec<String>>, Option<Vec<String>>), EngineError> {
        Ok(match (req.receiver.take(), audience) {
            (Some(list), _) => (Some(self.check_recipients(list)?), None),
            (None, Some(audience)) if req.live => {
                let component = req.component.as_deref();
                let users = self.online_audience(app, audience, component).await?;
                (None, Some(users))
            }
            (None, Some(audience)) => (Some(self.stored_audience(app, audience).await?), None),
            (None, None) => (None, None),
        })
    }

    /// Gives the message its id and encodes its frames: one for most connections, one per
    /// agent with a shape of its own.
    fn compose(&self, req: SendMessage, to: &Addressed) -> Composed {
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
            ack: to.recipients.is_some(),
            event_data: EventData { ext: req.content },
        };
        let frame = encode_push(&pushed);
        let shapes = crate::formats::resolve(self.templates.get(&to.app), req.formats, &pushed);
        let variants = shapes
            .iter()
            .filter(|(agent, _)| !crate::formats::is_vendor(agent))
            .map(|(agent, shape)| {
                let shaped = crate::formats::apply(&pushed, shape);
                (agent.clone(), encode_push(&shaped))
            })
            .collect();
        let key = req.id.map(|key| IdempotencyKey {
            app: to.app.clone(),
            key,
            id,
            created,
            expires: created
                .saturating_add((self.config.idempotency_window as i64).saturating_mul(1000)),
        });
        Composed {
            message: Stamped {
                id,
                created,
                pushed,
                shapes,
            },
            frame,
            variants,
            key,
        }
    }

    /// A directed message: stored with its recipients and chain steps, offered to the vendor
    /// push and the webhook for the recipients whose channels take them at once.
    fn directed(
        &self,
        to: &Addressed,
        recipients: Vec<String>,
        message: Stamped,
        routes: Routes,
        policy: PushPolicy,
    ) -> Plan {
        let Stamped {
            id,
            created,
            pushed,
            shapes,
        } = message;
        let app = &to.app;
        let expires = created.saturating_add((to.ttl as i64).saturating_mul(1000));
        let own = &routes.own;
        let taking = |now: bool, of: fn(&Chosen) -> bool| -> Vec<String> {
            recipients
                .iter()
                .filter(|u| own.get(*u).map_or(now, of))
                .cloned()
                .collect()
        };
        let webhook_users = taking(routes.at_once.webhook, |c| c.webhook);
        let push_users = taking(routes.at_once.push, |c| c.push);
        let webhook = (!webhook_users.is_empty()).then(|| (webhook_users, pushed.clone()));
        let fallback = (!push_users.is_empty() && self.push.wanted(app, policy)).then(|| Job {
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
                        crate::words::Way::parse(name).map(|way| (way, shape.clone()))
                    })
                    .collect(),
            },
            recipients: push_users,
            agents: to.agents.clone(),
            policy,
        });
        let message = NewMessage {
            id,
            app: app.clone(),
            title: pushed.title,
            kind: pushed.kind,
            component: pushed.component,
            sender: pushed.sender,
            agents: to.agents.clone(),
            formats: shapes,
            content: pushed.event_data.ext,
            created,
            expires,
            recipients: recipients.clone(),
            steps: routes.steps,
            own_steps: routes.own_steps,
        };
        Plan {
            class: DeliveryClass::Directed,
            count: recipients.len(),
            target: Target::Users(recipients),
            write: KeyedWrite::Message(message),
            fallback,
            webhook,
            step_now: routes.step_now,
        }
    }

    /// A message without recipients: a live audience's users, a topic (stored in its log), a
    /// component's subscribers or every connection of the app.
    fn undirected(&self, live_users: Option<Vec<String>>, message: Stamped, frame: &Bytes) -> Plan {
        let Stamped {
            id,
            created,
            pushed,
            ..
        } = message;
        let (class, target, count, write) = match (pushed.topic, pushed.component, live_users) {
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
        };
        Plan {
            class,
            target,
            count,
            write,
            fallback: None,
            webhook: None,
            step_now: false,
        }
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

    /// Publishes the message to the connections of every node. A durable message that misses
    /// its live fan-out is still accepted: its recipients get it from the store.
    async fn fan_out(&self, envelope: Envelope, class: DeliveryClass) -> Result<(), EngineError> {
        let id = envelope.id;
        let durable = matches!(class, DeliveryClass::Directed | DeliveryClass::Topic);
        let published = self.broker.publish(envelope).await;
        metrics::counter!("mps_messages_accepted_total", "class" => class_label(class))
            .increment(1);
        match published {
            Ok(_) => Ok(()),
            // Durable already: the recipients get it from the store when they (re)connect.
            Err(e) if durable => {
                tracing::warn!(id, error = %e, "live fan-out failed");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}
