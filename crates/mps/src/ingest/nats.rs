//! NATS JetStream consumer: a durable pull consumer with explicit acks on one stream, at most
//! `max_in_flight` messages unacknowledged, delayed naks for retries, and dead letters
//! published through JetStream (so a stream stores them) before the original is acked.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use async_trait::async_trait;
use futures_util::StreamExt;

use super::{
    Consumer, Delivery, ERROR_CODE_HEADER, ERROR_HEADER, Hints, IngestError, Rejection, Settle,
    Subscription, header_text,
};
use crate::config::NatsConfig;

/// Whether NATS subject `pattern` (`*` one word, `>` the rest) matches `subject`.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut words = subject.split('.');
    for p in pattern.split('.') {
        match (p, words.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(w)) if p == w => {}
            _ => return false,
        }
    }
    words.next().is_none()
}

pub struct Nats {
    config: NatsConfig,
    source: String,
    dead_letter: String,
}

impl Nats {
    pub fn new(config: NatsConfig) -> Result<Self, IngestError> {
        let dead_letter = config
            .dead_letter_subject
            .clone()
            .unwrap_or_else(|| format!("{}.dead-letter", config.stream));
        if config.stream.is_empty() || config.durable.is_empty() || config.subject.is_empty() {
            return Err(IngestError::Config(
                "nats: stream, subject and durable must be set".into(),
            ));
        }
        if subject_matches(&config.subject, &dead_letter) {
            return Err(IngestError::Config(format!(
                "nats: dead-letter subject {dead_letter} is among the consumed subjects {}",
                config.subject
            )));
        }
        Ok(Nats {
            source: config
                .name
                .clone()
                .unwrap_or_else(|| format!("nats:{}:{}", config.stream, config.durable)),
            dead_letter,
            config,
        })
    }

    async fn open(
        &self,
    ) -> Result<(async_nats::Client, jetstream::Context, PullConsumer), async_nats::Error> {
        let c = &self.config;
        let client = async_nats::ConnectOptions::new()
            .name(format!("mps {}", self.source))
            .connection_timeout(Duration::from_secs(5))
            .connect(c.url.as_str())
            .await?;
        let js = jetstream::new(client.clone());
        let stream = if c.declare {
            let stream = js
                .get_or_create_stream(jetstream::stream::Config {
                    name: c.stream.clone(),
                    subjects: vec![c.subject.clone()],
                    ..Default::default()
                })
                .await?;
            if js
                .stream_by_subject(self.dead_letter.as_str())
                .await
                .is_err()
            {
                js.get_or_create_stream(jetstream::stream::Config {
                    name: format!("{}_DEAD_LETTER", c.stream),
                    subjects: vec![self.dead_letter.clone()],
                    ..Default::default()
                })
                .await?;
            }
            stream
        } else {
            js.get_stream(&c.stream).await?
        };
        let consumer: PullConsumer = stream
            .get_or_create_consumer(
                &c.durable,
                jetstream::consumer::pull::Config {
                    durable_name: Some(c.durable.clone()),
                    filter_subject: c.subject.clone(),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(c.ack_wait.max(1)),
                    max_ack_pending: self.in_flight() as i64,
                    ..Default::default()
                },
            )
            .await?;
        Ok((client, js, consumer))
    }
}

#[async_trait]
impl Consumer for Nats {
    fn source(&self) -> &str {
        &self.source
    }

    fn in_flight(&self) -> usize {
        self.config.max_in_flight.max(1)
    }

    async fn connect(&self) -> Result<Box<dyn Subscription>, IngestError> {
        let (client, js, consumer) = self.open().await.map_err(IngestError::connection)?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.in_flight())
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(IngestError::connection)?;
        Ok(Box::new(NatsSubscription {
            client,
            js,
            messages,
            dead_letter: self.dead_letter.clone(),
            app_word: self.config.app_word,
            component_word: self.config.component_word,
        }))
    }
}

struct NatsSubscription {
    client: async_nats::Client,
    js: jetstream::Context,
    messages: jetstream::consumer::pull::Stream,
    dead_letter: String,
    app_word: Option<usize>,
    component_word: Option<usize>,
}

/// A header's value, whatever the case of its name.
fn header(headers: Option<&async_nats::HeaderMap>, name: &str) -> Option<String> {
    headers?
        .iter()
        .find(|(k, _)| AsRef::<str>::as_ref(k).eq_ignore_ascii_case(name))
        .and_then(|(_, values)| values.first())
        .map(|v| v.as_str().to_owned())
}

#[async_trait]
impl Subscription for NatsSubscription {
    async fn next(&mut self) -> Result<Delivery, IngestError> {
        // The client reconnects on its own, but a consumer that is not connected must say so
        // (for `/readyz`); the session is dropped and opened again instead.
        let mut check = tokio::time::interval(Duration::from_millis(250));
        let message = loop {
            tokio::select! {
                m = self.messages.next() => break m,
                _ = check.tick() => {
                    let state = self.client.connection_state();
                    if state != async_nats::connection::State::Connected {
                        return Err(IngestError::Connection(format!("connection {state:?}")));
                    }
                }
            }
        };
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(e)) => return Err(IngestError::connection(e)),
            None => return Err(IngestError::Connection("the consumer ended".into())),
        };
        let redelivered = message.info().map(|i| i.delivered > 1).unwrap_or(false);
        let (message, acker) = message.split();
        let headers = message.headers.as_ref();
        let mut hints =
            Hints::from_words(message.subject.as_str(), self.app_word, self.component_word);
        hints.app = header(headers, "app").or(hints.app);
        hints.component = header(headers, "component").or(hints.component);
        hints.key = header(headers, "Nats-Msg-Id");
        Ok(Delivery {
            body: message.payload.clone(),
            hints,
            redelivered,
            settle: Box::new(NatsDelivery {
                acker,
                js: self.js.clone(),
                dead_letter: self.dead_letter.clone(),
                message,
            }),
        })
    }
}

struct NatsDelivery {
    acker: jetstream::message::Acker,
    js: jetstream::Context,
    dead_letter: String,
    message: async_nats::Message,
}

impl NatsDelivery {
    async fn publish_dead_letter(&self, rejection: &Rejection) -> Result<(), async_nats::Error> {
        let mut headers = self.message.headers.clone().unwrap_or_default();
        headers.insert(ERROR_CODE_HEADER, rejection.code);
        headers.insert(ERROR_HEADER, header_text(&rejection.message).as_str());
        headers.insert("x-mps-subject", self.message.subject.as_str());
        self.js
            .publish_with_headers(
                self.dead_letter.clone(),
                headers,
                self.message.payload.clone(),
            )
            .await?
            .await?;
        Ok(())
    }
}

#[async_trait]
impl Settle for NatsDelivery {
    async fn ack(self: Box<Self>) -> Result<(), IngestError> {
        self.acker.ack().await.map_err(IngestError::connection)
    }

    async fn retry(self: Box<Self>, delay: Duration) -> Result<(), IngestError> {
        self.acker
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(IngestError::connection)
    }

    async fn dead_letter(self: Box<Self>, rejection: &Rejection) -> Result<(), IngestError> {
        match self.publish_dead_letter(rejection).await {
            Ok(()) => self.ack().await,
            Err(e) => {
                let _ = self.retry(Duration::from_secs(1)).await;
                Err(IngestError::connection(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_nats_wildcards() {
        assert!(subject_matches("mps.>", "mps.in.oa"));
        assert!(!subject_matches("mps.>", "mps"));
        assert!(subject_matches("mps.*.esbm", "mps.oa.esbm"));
        assert!(!subject_matches("mps.*", "mps.oa.esbm"));
        assert!(subject_matches("mps.messages", "mps.messages"));
        assert!(!subject_matches("mps.messages", "MPS.dead-letter"));
    }

    #[test]
    fn dead_letters_never_loop_back() {
        let config = NatsConfig {
            subject: "mps.>".into(),
            dead_letter_subject: Some("mps.dead".into()),
            ..NatsConfig::default()
        };
        assert!(matches!(Nats::new(config), Err(IngestError::Config(_))));
        assert!(Nats::new(NatsConfig::default()).is_ok());
    }
}
