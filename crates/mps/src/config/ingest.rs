//! `[ingest]`: the message queues mps consumes (RabbitMQ, NATS JetStream), read by the
//! `ingest` module.

use serde::{Deserialize, Serialize};

/// The `[ingest]` section: any number of consumers of each kind.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    pub rabbitmq: Vec<RabbitMqConfig>,
    pub nats: Vec<NatsConfig>,
}

impl IngestConfig {
    /// The broker URLs, for masking their passwords.
    pub fn urls_mut(&mut self) -> impl Iterator<Item = &mut String> {
        let amqp = self.rabbitmq.iter_mut().map(|c| &mut c.url);
        amqp.chain(self.nats.iter_mut().map(|c| &mut c.url))
    }
}

/// One `[[ingest.rabbitmq]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RabbitMqConfig {
    /// Names the consumer in logs, metrics and `/readyz`; default `rabbitmq:QUEUE`.
    pub name: Option<String>,
    /// `amqp://user:password@host:5672/vhost` (`%2f` is the default vhost).
    pub url: String,
    /// The queue consumed.
    pub queue: String,
    /// When set, the queue is bound to this exchange with `routing_key`.
    pub exchange: Option<String>,
    /// Binding key to `exchange` (for a topic exchange, `#` takes everything).
    pub routing_key: String,
    /// Declare the queue and the dead-letter queue (durable), and the exchange (a durable topic
    /// exchange) and its binding. Off when they are managed elsewhere; they must exist then.
    pub declare: bool,
    /// Deliveries unacknowledged at once (`basic.qos`): also how many mps sends at once, so
    /// that they share one store commit.
    pub prefetch: u16,
    /// Queue that invalid messages are published to, with the reason in headers; default
    /// `QUEUE.dead-letter`.
    pub dead_letter: Option<String>,
    /// 1-based dot-separated word of the routing key that names the app, when the message and
    /// its `app` header do not.
    pub app_word: Option<usize>,
    /// Likewise for the component.
    pub component_word: Option<usize>,
}

impl Default for RabbitMqConfig {
    fn default() -> Self {
        RabbitMqConfig {
            name: None,
            url: "amqp://127.0.0.1:5672/%2f".into(),
            queue: "mps.messages".into(),
            exchange: None,
            routing_key: "#".into(),
            declare: true,
            prefetch: 256,
            dead_letter: None,
            app_word: None,
            component_word: None,
        }
    }
}

/// One `[[ingest.nats]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Names the consumer in logs, metrics and `/readyz`; default `nats:STREAM:DURABLE`.
    pub name: Option<String>,
    /// `nats://user:password@host:4222`.
    pub url: String,
    /// The JetStream stream consumed.
    pub stream: String,
    /// Subjects taken from the stream (wildcards allowed); the stream's subject when declared.
    pub subject: String,
    /// Name of the durable consumer, which keeps its position across restarts.
    pub durable: String,
    /// Create the stream (capturing `subject`, file storage) and a stream for the dead-letter
    /// subject when missing. Off when they are managed elsewhere; they must exist then.
    pub declare: bool,
    /// Messages unacknowledged at once (the consumer's `max_ack_pending`): also how many mps
    /// sends at once, so that they share one store commit.
    pub max_in_flight: usize,
    /// Seconds the server waits for an ack before delivering a message again.
    pub ack_wait: u64,
    /// Subject invalid messages are published to, with the reason in headers; default
    /// `STREAM.dead-letter`. Must not be one of the consumed subjects.
    pub dead_letter_subject: Option<String>,
    /// 1-based dot-separated word of the subject that names the app, when the message and its
    /// `app` header do not.
    pub app_word: Option<usize>,
    /// Likewise for the component.
    pub component_word: Option<usize>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            name: None,
            url: "nats://127.0.0.1:4222".into(),
            stream: "MPS".into(),
            subject: "mps.messages".into(),
            durable: "mps".into(),
            declare: true,
            max_in_flight: 256,
            ack_wait: 30,
            dead_letter_subject: None,
            app_word: None,
            component_word: None,
        }
    }
}
