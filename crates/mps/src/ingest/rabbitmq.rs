//! RabbitMQ (AMQP 0-9-1) consumer: one connection and channel per configured queue, manual
//! acks, `basic.qos` prefetch, and dead letters published with publisher confirms to a queue
//! through the default exchange.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use lapin::Acker;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use super::{
    Consumer, Delivery, ERROR_CODE_HEADER, ERROR_HEADER, Hints, IngestError, Rejection, Settle,
    Subscription, header_text,
};
use crate::config::RabbitMqConfig;

pub struct RabbitMq {
    config: RabbitMqConfig,
    source: String,
    dead_letter: ShortString,
}

fn short(what: &str, value: &str) -> Result<ShortString, IngestError> {
    ShortString::try_new(value)
        .map_err(|_| IngestError::Config(format!("{what} is longer than 255 bytes")))
}

impl RabbitMq {
    pub fn new(config: RabbitMqConfig) -> Result<Self, IngestError> {
        let dead_letter = config
            .dead_letter
            .clone()
            .unwrap_or_else(|| format!("{}.dead-letter", config.queue));
        if config.queue.is_empty() || dead_letter == config.queue {
            return Err(IngestError::Config(format!(
                "rabbitmq: queue {:?} needs a name and a different dead-letter queue",
                config.queue
            )));
        }
        short("queue", &config.queue)?;
        short("routing_key", &config.routing_key)?;
        if let Some(exchange) = &config.exchange {
            short("exchange", exchange)?;
        }
        Ok(RabbitMq {
            source: config
                .name
                .clone()
                .unwrap_or_else(|| format!("rabbitmq:{}", config.queue)),
            dead_letter: short("dead_letter", &dead_letter)?,
            config,
        })
    }

    async fn open(&self) -> lapin::Result<(Connection, Channel, lapin::Consumer)> {
        let c = &self.config;
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("mps {}", self.source).into());
        let connection = Connection::connect(&c.url, properties).await?;
        let channel = connection.create_channel().await?;
        let queue: ShortString = c.queue.as_str().into();
        if c.declare {
            let durable = QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            };
            channel
                .queue_declare(queue.clone(), durable, FieldTable::default())
                .await?;
            channel
                .queue_declare(self.dead_letter.clone(), durable, FieldTable::default())
                .await?;
            if let Some(exchange) = &c.exchange {
                let exchange: ShortString = exchange.as_str().into();
                channel
                    .exchange_declare(
                        exchange.clone(),
                        ExchangeKind::Topic,
                        ExchangeDeclareOptions {
                            durable: true,
                            ..ExchangeDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                channel
                    .queue_bind(
                        queue.clone(),
                        exchange,
                        c.routing_key.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
        }
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channel
            .basic_qos(c.prefetch.max(1), BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                queue,
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((connection, channel, consumer))
    }
}

#[async_trait]
impl Consumer for RabbitMq {
    fn source(&self) -> &str {
        &self.source
    }

    fn in_flight(&self) -> usize {
        usize::from(self.config.prefetch.max(1))
    }

    async fn connect(&self) -> Result<Box<dyn Subscription>, IngestError> {
        let (connection, channel, consumer) = self.open().await.map_err(IngestError::connection)?;
        Ok(Box::new(RabbitSubscription {
            _connection: connection,
            channel,
            consumer,
            queue: self.config.queue.clone(),
            dead_letter: self.dead_letter.clone(),
            app_word: self.config.app_word,
            component_word: self.config.component_word,
        }))
    }
}

struct RabbitSubscription {
    /// Kept open while consuming.
    _connection: Connection,
    channel: Channel,
    consumer: lapin::Consumer,
    queue: String,
    dead_letter: ShortString,
    app_word: Option<usize>,
    component_word: Option<usize>,
}

/// A header's value as text.
fn header(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

#[async_trait]
impl Subscription for RabbitSubscription {
    async fn next(&mut self) -> Result<Delivery, IngestError> {
        let delivery = match self.consumer.next().await {
            Some(Ok(delivery)) => delivery,
            Some(Err(e)) => return Err(IngestError::connection(e)),
            None => return Err(IngestError::Connection("the consumer was cancelled".into())),
        };
        let mut hints = Hints::from_words(
            delivery.routing_key.as_str(),
            self.app_word,
            self.component_word,
        );
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        hints.app = header(&headers, "app").or(hints.app);
        hints.component = header(&headers, "component").or(hints.component);
        hints.key = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string());
        let body = Bytes::from(delivery.data);
        Ok(Delivery {
            body: body.clone(),
            hints,
            redelivered: delivery.redelivered,
            settle: Box::new(RabbitDelivery {
                acker: delivery.acker,
                channel: self.channel.clone(),
                dead_letter: self.dead_letter.clone(),
                body,
                properties: delivery.properties,
                headers,
                exchange: delivery.exchange.to_string(),
                routing_key: delivery.routing_key.to_string(),
                queue: self.queue.clone(),
            }),
        })
    }
}

struct RabbitDelivery {
    acker: Acker,
    channel: Channel,
    dead_letter: ShortString,
    body: Bytes,
    properties: BasicProperties,
    headers: FieldTable,
    exchange: String,
    routing_key: String,
    queue: String,
}

impl RabbitDelivery {
    async fn publish_dead_letter(&self, rejection: &Rejection) -> Result<(), IngestError> {
        let mut headers = self.headers.clone();
        let text = |s: &str| AMQPValue::LongString(LongString::from(header_text(s)));
        headers.insert(ERROR_CODE_HEADER.into(), text(rejection.code));
        headers.insert(ERROR_HEADER.into(), text(&rejection.message));
        headers.insert("x-mps-queue".into(), text(&self.queue));
        headers.insert("x-mps-exchange".into(), text(&self.exchange));
        headers.insert("x-mps-routing-key".into(), text(&self.routing_key));
        let properties = self
            .properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(2);
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.dead_letter.clone(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &self.body,
                properties,
            )
            .await
            .map_err(IngestError::connection)?
            .await
            .map_err(IngestError::connection)?;
        if !confirm.is_ack() {
            return Err(IngestError::Connection(
                "the broker refused the dead letter".into(),
            ));
        }
        if confirm.take_message().is_some() {
            return Err(IngestError::Connection(format!(
                "no dead-letter queue {} to route to",
                self.dead_letter
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Settle for RabbitDelivery {
    async fn ack(self: Box<Self>) -> Result<(), IngestError> {
        self.acker
            .ack(BasicAckOptions::default())
            .await
            .map(|_| ())
            .map_err(IngestError::connection)
    }

    async fn retry(self: Box<Self>, delay: Duration) -> Result<(), IngestError> {
        // AMQP 0-9-1 has no delayed requeue: hold the delivery (and its prefetch slot) first.
        tokio::time::sleep(delay).await;
        self.acker
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .map(|_| ())
            .map_err(IngestError::connection)
    }

    async fn dead_letter(self: Box<Self>, rejection: &Rejection) -> Result<(), IngestError> {
        match self.publish_dead_letter(rejection).await {
            Ok(()) => self.ack().await,
            Err(e) => {
                let _ = self.retry(Duration::from_secs(1)).await;
                Err(e)
            }
        }
    }
}
