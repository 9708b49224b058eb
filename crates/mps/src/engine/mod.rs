//! The delivery engine, shared by every transport and the API: validates and accepts messages,
//! makes directed ones durable before answering, publishes them through the broker, decides what
//! a (re)connecting client is owed, and records deliveries and acks.
//!
//! - `send.rs`: accepting a message, step by step (check, address, compose, choose channels,
//!   write, fan out); `recipients.rs`: who a message goes to; `channels.rs`: which channels it
//!   takes besides the live one.
//! - `catchup.rs`: what a client is owed from the store, for every transport and after the
//!   broker reconnects.
//! - `deliveries.rs`: delivery records and their background recorder; `acks.rs`: acks and
//!   pulls.

mod acks;
mod catchup;
mod channels;
mod deliveries;
mod recipients;
mod send;

pub use acks::{MAX_ACK_IDS, parse_ids};
pub use catchup::{BACKLOG_PAGE, CatchUp, MAX_REPLAY};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use mps_proto::{Frame, PushFrame, PushedMessage};
use tokio::sync::mpsc;

use crate::broker::Broker;
use crate::channels::Channels;
use crate::config::{Config, MessagesConfig, Template, TopicsConfig};
use crate::id::IdGen;
use crate::presence::{Presence, PresenceError};
use crate::push::fallback::Fallback;
use crate::shutdown::Tasks;
use crate::store::{Store, StoreError};
use crate::words::Invalid;

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

impl From<Invalid> for EngineError {
    fn from(Invalid { code, message }: Invalid) -> Self {
        EngineError::Invalid { code, message }
    }
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
    /// The queue of the delivery recorder (`deliveries.rs`).
    delivered: mpsc::Sender<deliveries::Delivered>,
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
        let delivered = deliveries::start(store.clone(), channels.clone(), tasks);
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
            delivered,
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
}
