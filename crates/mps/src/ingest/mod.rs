//! Message queue ingestion: back ends publish the JSON body of `POST /api/v1/messages` on a
//! queue they already run, and mps consumes it. A [`Consumer`] is one configured queue
//! (RabbitMQ in `rabbitmq.rs`, NATS JetStream in `nats.rs`); what every queue shares is written
//! once here: reconnecting with backoff, processing deliveries concurrently up to the queue's
//! prefetch (so they share the store's group commit), acking only once the engine has made a
//! message durable, dead-lettering what can never be sent (with the reason), putting back what
//! failed for now, the connection state for `/readyz`, and the metrics.

pub mod nats;
pub mod rabbitmq;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use mps_proto::SendMessage;
use tokio::sync::Semaphore;

use crate::config::IngestConfig;
use crate::engine::{Engine, EngineError};
use crate::retry::Backoff;
use crate::shutdown::Tasks;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The connection to the broker is lost or cannot be opened; retried with backoff.
    #[error("{0}")]
    Connection(String),
    /// A consumer is configured in a way that cannot work.
    #[error("{0}")]
    Config(String),
    /// A configured consumer is not connected to its broker right now.
    #[error("consumer {0} is not connected to its broker")]
    Disconnected(String),
}

impl IngestError {
    pub fn connection(e: impl std::fmt::Display) -> Self {
        IngestError::Connection(e.to_string())
    }
}

/// One configured queue.
#[async_trait]
pub trait Consumer: Send + Sync + 'static {
    /// Names the consumer in logs, metrics and `/readyz` (`rabbitmq:orders`).
    fn source(&self) -> &str;

    /// Most deliveries held unsettled at once (prefetch, max in flight).
    fn in_flight(&self) -> usize;

    /// Connects, declares what it is configured to, and starts consuming.
    async fn connect(&self) -> Result<Box<dyn Subscription>, IngestError>;
}

/// A consumer's live connection.
#[async_trait]
pub trait Subscription: Send {
    /// The next delivery; an error means the connection is lost.
    async fn next(&mut self) -> Result<Delivery, IngestError>;
}

/// What became of a delivery, told back to its queue. Each method settles it once.
#[async_trait]
pub trait Settle: Send {
    /// Done: the queue may forget it.
    async fn ack(self: Box<Self>) -> Result<(), IngestError>;

    /// Failed for now: the queue delivers it again after `delay` (or at once, after waiting
    /// `delay` here, where the queue cannot delay).
    async fn retry(self: Box<Self>, delay: Duration) -> Result<(), IngestError>;

    /// Can never be sent: publish it unchanged to the dead-letter destination with
    /// `x-mps-error-code` and `x-mps-error`, and ack it once that publish is confirmed. If the
    /// publish fails the delivery is put back instead, so it is never dropped.
    async fn dead_letter(self: Box<Self>, rejection: &Rejection) -> Result<(), IngestError>;
}

/// One message taken from a queue.
pub struct Delivery {
    pub body: Bytes,
    /// What the queue's headers, message id, routing key or subject say; the body wins.
    pub hints: Hints,
    /// The queue delivered it before (mps stopped or lost the connection before its ack).
    pub redelivered: bool,
    pub settle: Box<dyn Settle>,
}

/// Fields a message may take from its envelope instead of its body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hints {
    pub app: Option<String>,
    pub component: Option<String>,
    /// Idempotency key: AMQP `message-id`, NATS `Nats-Msg-Id`.
    pub key: Option<String>,
}

impl Hints {
    /// Takes `app` and `component` from the 1-based dot-separated words of a routing key or
    /// subject, where configured.
    pub fn from_words(
        routing: &str,
        app_word: Option<usize>,
        component_word: Option<usize>,
    ) -> Self {
        let word = |n: Option<usize>| {
            n.and_then(|n| routing.split('.').nth(n.checked_sub(1)?))
                .filter(|w| !w.is_empty())
                .map(str::to_owned)
        };
        Hints {
            app: word(app_word),
            component: word(component_word),
            key: None,
        }
    }
}

/// Why a message was dead-lettered: a stable code (the API's error codes) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: &'static str,
    pub message: String,
}

impl Rejection {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
        }
    }
}

/// Header names of a dead-lettered message.
pub const ERROR_CODE_HEADER: &str = "x-mps-error-code";
pub const ERROR_HEADER: &str = "x-mps-error";

/// Reconnect and retry delays: from 200 ms up to 5 s, for ever.
const BACKOFF: Backoff = Backoff::unbounded(Duration::from_millis(200), Duration::from_secs(5));

/// The running consumers.
pub struct Ingest {
    /// Every consumer's source name and whether it is connected now.
    sources: Vec<(String, Arc<AtomicBool>)>,
}

impl Ingest {
    /// Starts one task per configured consumer, consuming until `tasks` stop. Configuration
    /// errors fail here; brokers that cannot be reached are retried in the background.
    pub fn start(
        config: &IngestConfig,
        engine: Arc<Engine>,
        max_body: usize,
        tasks: &Tasks,
    ) -> Result<Arc<Ingest>, IngestError> {
        let mut consumers: Vec<Box<dyn Consumer>> = Vec::new();
        for c in &config.rabbitmq {
            consumers.push(Box::new(rabbitmq::RabbitMq::new(c.clone())?));
        }
        for c in &config.nats {
            consumers.push(Box::new(nats::Nats::new(c.clone())?));
        }
        let mut names: Vec<&str> = consumers.iter().map(|c| c.source()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(IngestError::Config(format!(
                "two consumers are named {}; give one a `name`",
                w[0]
            )));
        }
        if !consumers.is_empty() {
            describe();
        }
        let mut sources = Vec::new();
        for consumer in consumers {
            let connected = Arc::new(AtomicBool::new(false));
            let source = consumer.source().to_owned();
            metrics::gauge!("mps_ingest_connected", "source" => source.clone()).set(0.0);
            let worker = Arc::new(Worker {
                source: source.clone(),
                engine: engine.clone(),
                max_body,
                failures: AtomicU32::new(0),
            });
            tasks.spawn(run(consumer, worker, connected.clone(), tasks.clone()));
            sources.push((source, connected));
        }
        Ok(Arc::new(Ingest { sources }))
    }

    /// Ok while every configured consumer is connected.
    pub fn check(&self) -> Result<(), IngestError> {
        match self
            .sources
            .iter()
            .find(|(_, c)| !c.load(Ordering::Relaxed))
        {
            Some((source, _)) => Err(IngestError::Disconnected(source.clone())),
            None => Ok(()),
        }
    }
}

/// Connects, consumes until the connection is lost, and connects again, until `tasks` stop;
/// then lets the deliveries in progress be settled (what is left unsettled is delivered again
/// after a restart).
async fn run(
    consumer: Box<dyn Consumer>,
    worker: Arc<Worker>,
    connected: Arc<AtomicBool>,
    tasks: Tasks,
) {
    let stop = tasks.token();
    let source = worker.source.clone();
    let in_flight = consumer.in_flight().max(1);
    let permits = Arc::new(Semaphore::new(in_flight));
    let gauge = metrics::gauge!("mps_ingest_connected", "source" => source.clone());
    let mut failures = 0u32;
    'connect: while !stop.is_cancelled() {
        let subscription = tokio::select! {
            s = consumer.connect() => s,
            _ = stop.cancelled() => break,
        };
        match subscription {
            Ok(mut subscription) => {
                failures = 0;
                connected.store(true, Ordering::Relaxed);
                gauge.set(1.0);
                tracing::info!(%source, "consuming");
                loop {
                    let permit = tokio::select! {
                        p = permits.clone().acquire_owned() => p,
                        _ = stop.cancelled() => break 'connect,
                    };
                    let Ok(permit) = permit else { break 'connect };
                    let delivery = tokio::select! {
                        d = subscription.next() => d,
                        _ = stop.cancelled() => break 'connect,
                    };
                    match delivery {
                        Ok(delivery) => {
                            let worker = worker.clone();
                            tasks.spawn(async move {
                                worker.process(delivery).await;
                                drop(permit);
                            });
                        }
                        Err(e) => {
                            tracing::warn!(%source, error = %e, "lost the broker; reconnecting");
                            break;
                        }
                    }
                }
                connected.store(false, Ordering::Relaxed);
                gauge.set(0.0);
                metrics::counter!("mps_ingest_disconnects_total", "source" => source.clone())
                    .increment(1);
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(%source, error = %e, "cannot consume; retrying");
                } else {
                    tracing::debug!(%source, error = %e, "cannot consume; retrying");
                }
            }
        }
        failures = failures.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(BACKOFF.delay(failures)) => {}
            _ = stop.cancelled() => break,
        }
    }
    connected.store(false, Ordering::Relaxed);
    gauge.set(0.0);
    // Let deliveries in progress be settled.
    let _ = permits.acquire_many(in_flight as u32).await;
}

/// Turns deliveries of one consumer into sent messages.
struct Worker {
    source: String,
    engine: Arc<Engine>,
    max_body: usize,
    /// Transient failures in a row, for the retry delay.
    failures: AtomicU32,
}

impl Worker {
    async fn process(&self, delivery: Delivery) {
        let source = self.source.clone();
        metrics::counter!("mps_ingest_consumed_total", "source" => source.clone()).increment(1);
        if delivery.redelivered {
            metrics::counter!("mps_ingest_redelivered_total", "source" => source.clone())
                .increment(1);
        }
        let settle = delivery.settle;
        let message = match parse(&delivery.body, delivery.hints, self.max_body) {
            Ok(message) => message,
            Err(rejection) => return self.reject(settle, rejection).await,
        };
        match self.engine.send(message).await {
            Ok(sent) => {
                if self.failures.swap(0, Ordering::Relaxed) > 0 {
                    tracing::info!(%source, "sending works again");
                }
                if sent.duplicate {
                    metrics::counter!("mps_ingest_duplicates_total", "source" => source.clone())
                        .increment(1);
                }
                match settle.ack().await {
                    Ok(()) => {
                        metrics::counter!("mps_ingest_acked_total", "source" => source).increment(1)
                    }
                    // Durable already: the redelivery is answered from the idempotency key,
                    // or sent again when the message has none (at least once).
                    Err(e) => tracing::debug!(%source, error = %e, "ack lost"),
                }
            }
            Err(EngineError::Invalid { code, message }) => {
                self.reject(settle, Rejection::new(code, message)).await
            }
            Err(e) => {
                let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures == 1 {
                    tracing::warn!(%source, error = %e, "cannot send now; putting messages back");
                }
                metrics::counter!("mps_ingest_retried_total", "source" => source.clone())
                    .increment(1);
                if let Err(e) = settle.retry(BACKOFF.delay(failures)).await {
                    tracing::debug!(%source, error = %e, "putting back failed; the queue redelivers");
                }
            }
        }
    }

    async fn reject(&self, settle: Box<dyn Settle>, rejection: Rejection) {
        let source = &self.source;
        metrics::counter!(
            "mps_ingest_rejected_total",
            "source" => source.clone(),
            "reason" => rejection.code
        )
        .increment(1);
        tracing::warn!(%source, code = rejection.code, reason = %rejection.message, "invalid message dead-lettered");
        if let Err(e) = settle.dead_letter(&rejection).await {
            tracing::warn!(%source, error = %e, "dead-lettering failed; the message goes back to the queue");
        }
    }
}

/// The message a body holds, with the envelope's hints where the body is silent.
fn parse(body: &[u8], hints: Hints, max_body: usize) -> Result<SendMessage, Rejection> {
    if body.len() > max_body {
        crate::limits::rejected(crate::limits::Limit::BodySize);
        return Err(Rejection::new(
            "too_large",
            format!(
                "the body is {} bytes; messages.max_body is {max_body}",
                body.len()
            ),
        ));
    }
    let mut message: SendMessage = serde_json::from_slice(body).map_err(|e| {
        let code = match e.classify() {
            serde_json::error::Category::Data => "bad_message",
            _ => "bad_json",
        };
        Rejection::new(code, e.to_string())
    })?;
    message.app = message.app.or(hints.app);
    message.component = message.component.or(hints.component);
    message.id = message.id.or(hints.key);
    Ok(message)
}

/// A header value for the reason: one line, no control characters.
pub fn header_text(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "mps_ingest_consumed_total",
        "Messages taken from a queue, by source"
    );
    describe_counter!(
        "mps_ingest_acked_total",
        "Messages acked to their queue after they were sent, by source"
    );
    describe_counter!(
        "mps_ingest_redelivered_total",
        "Messages the queue delivered again, by source"
    );
    describe_counter!(
        "mps_ingest_rejected_total",
        "Invalid messages dead-lettered, by source and reason"
    );
    describe_counter!(
        "mps_ingest_duplicates_total",
        "Messages whose idempotency key was already used, by source"
    );
    describe_counter!(
        "mps_ingest_retried_total",
        "Messages put back after a transient failure, by source"
    );
    describe_counter!(
        "mps_ingest_disconnects_total",
        "Connections to a broker lost, by source"
    );
    describe_gauge!(
        "mps_ingest_connected",
        "1 while the consumer is connected to its broker, by source"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_from_routing_words() {
        let hints = Hints::from_words("mps.oa.esbm", Some(2), Some(3));
        assert_eq!(hints.app.as_deref(), Some("oa"));
        assert_eq!(hints.component.as_deref(), Some("esbm"));
        assert_eq!(Hints::from_words("mps", Some(2), Some(0)), Hints::default());
    }

    #[test]
    fn body_wins_over_hints() {
        let hints = Hints {
            app: Some("oa".into()),
            component: Some("esbm".into()),
            key: Some("k1".into()),
        };
        let m = parse(
            br#"{"content":1,"app":"crm","id":"k2"}"#,
            hints.clone(),
            1024,
        )
        .unwrap();
        assert_eq!(m.app.as_deref(), Some("crm"));
        assert_eq!(m.component.as_deref(), Some("esbm"));
        assert_eq!(m.id.as_deref(), Some("k2"));
        let m = parse(br#"{"content":1}"#, hints, 1024).unwrap();
        assert_eq!(m.id.as_deref(), Some("k1"));
    }

    #[test]
    fn bad_bodies_are_named() {
        let code = |body: &[u8]| parse(body, Hints::default(), 64).unwrap_err().code;
        assert_eq!(code(b"{not json"), "bad_json");
        assert_eq!(code(b"\xff\xfe"), "bad_json");
        assert_eq!(code(br#"{"title":"no content"}"#), "bad_message");
        assert_eq!(code(br#"{"content":1,"colour":"red"}"#), "bad_message");
        assert_eq!(code(&[b' '; 65]), "too_large");
    }
}
