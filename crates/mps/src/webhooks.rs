//! Webhooks: signed HTTP callbacks that tell back ends when a client connects or disconnects and
//! when a directed message is delivered, acked, expires or fails to push, so that they never
//! poll for status (docs/webhooks.md).
//!
//! Events are recorded from wherever they happen (the transports, the engine, the sweeper, the
//! vendor push) through the server's [`Webhooks`] ([`Webhooks::emit`] and its helpers); with no
//! webhook configured for an event type that costs one comparison. Each configured webhook has
//! its own bounded queue and task: a full queue drops the event (counted), never blocking
//! delivery; the task posts the waiting events in one signed request and retries failures with
//! exponential backoff, a bounded number of times, so a slow receiver holds up only its own
//! queue. On shutdown the task posts what its queue holds, then ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use mps_proto::{EventBody, EventType, PushFailure, RecipientEvent, WebhookBatch, WebhookEvent};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::WebhookConfig;
use crate::hub::Conn;
use crate::id::{IdGen, now_ms};
use crate::retry::Backoff;
use crate::shutdown::Tasks;
use crate::store::ExpiredRecipient;

/// Header carrying `sha256=<hex>` of HMAC-SHA256(secret, `<timestamp>.<body>`).
pub const SIGNATURE_HEADER: &str = "x-mps-signature";
/// Header carrying the Unix seconds the signature was made at.
pub const TIMESTAMP_HEADER: &str = "x-mps-timestamp";
/// Header carrying the id of the request's first event; the same on every retry.
pub const DELIVERY_HEADER: &str = "x-mps-delivery";

/// The bit of an event type in a filter.
fn bit(t: EventType) -> u8 {
    1 << EventType::ALL.iter().position(|x| *x == t).unwrap_or(0)
}

/// Parses an `events` filter into a set of event types.
fn parse_filter(events: &[String]) -> Result<u8, String> {
    if events.is_empty() {
        return Ok(u8::MAX);
    }
    let mut mask = 0;
    for pattern in events {
        let group = pattern.strip_suffix(".*");
        let matched = EventType::ALL
            .into_iter()
            .filter(|t| {
                let name = t.as_str();
                pattern == "*"
                    || pattern == name
                    || group.is_some_and(|g| name.split_once('.').is_some_and(|(p, _)| p == g))
            })
            .fold(0, |m, t| m | bit(t));
        mask |= matched;
        if matched == 0 {
            let known: Vec<_> = EventType::ALL.iter().map(|t| t.as_str()).collect();
            return Err(format!(
                "{pattern:?} names no event type (known: {}, client.*, message.*, *)",
                known.join(", ")
            ));
        }
    }
    Ok(mask)
}

/// The signature of a request: `sha256=` and the hex HMAC-SHA256 of `<timestamp>.<body>`.
pub fn sign(secret: &str, timestamp: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// What one webhook has done since the start, for `GET /api/v1/stats`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookStats {
    pub name: String,
    pub url: String,
    /// Events waiting or being sent.
    pub queued: u64,
    /// Events the receiver took (a 2xx answer).
    pub sent: u64,
    /// Events dropped because the queue was full.
    pub dropped: u64,
    /// Events given up after the last retry or a refusal (4xx).
    pub failed: u64,
}

#[derive(Default)]
struct Counts {
    queued: AtomicU64,
    sent: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

struct Hook {
    name: Arc<str>,
    /// The URL as shown, without a password.
    url: String,
    wants: u8,
    queue: mpsc::Sender<WebhookEvent>,
    counts: Arc<Counts>,
}

impl Hook {
    fn offer(&self, event: &WebhookEvent) {
        self.counts.queued.fetch_add(1, Ordering::Relaxed);
        if self.queue.try_send(event.clone()).is_err() {
            self.counts.queued.fetch_sub(1, Ordering::Relaxed);
            self.drop_events(1);
        }
    }

    fn drop_events(&self, n: u64) {
        self.counts.dropped.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("mps_webhook_events_total", "webhook" => self.name.to_string(), "result" => "dropped")
            .increment(n);
    }
}

/// The configured webhooks of a server.
pub struct Webhooks {
    hooks: Vec<Hook>,
    /// Every type some webhook wants: one load tells whether to build an event at all.
    wanted: u8,
    ids: IdGen,
    node: Arc<str>,
}

impl Webhooks {
    /// Checks the configuration and starts a task per configured webhook, which receives
    /// [`Webhooks::emit`]'s events until `tasks` stop, then posts what is queued.
    pub fn start(
        configs: &[WebhookConfig],
        node: &str,
        node_id: u16,
        tasks: &Tasks,
    ) -> anyhow::Result<Arc<Webhooks>> {
        let hooks = hooks(configs, tasks)?;
        Ok(Arc::new(Webhooks {
            wanted: hooks.iter().fold(0, |all, h| all | h.wants),
            hooks,
            ids: IdGen::new(node_id),
            node: node.into(),
        }))
    }
}

fn hooks(configs: &[WebhookConfig], tasks: &Tasks) -> anyhow::Result<Vec<Hook>> {
    let mut hooks = Vec::with_capacity(configs.len());
    if configs.is_empty() {
        return Ok(hooks);
    }
    let client = http_client()?;
    for (n, config) in configs.iter().enumerate() {
        let name: Arc<str> = config
            .name
            .clone()
            .unwrap_or_else(|| format!("webhook-{}", n + 1))
            .into();
        let what = format!("webhook {name}");
        let url = reqwest::Url::parse(&config.url).with_context(|| format!("{what}: url"))?;
        anyhow::ensure!(
            matches!(url.scheme(), "http" | "https"),
            "{what}: url must be http:// or https://"
        );
        anyhow::ensure!(!config.secret.is_empty(), "{what}: secret is empty");
        anyhow::ensure!(config.queue > 0, "{what}: queue must be at least 1");
        anyhow::ensure!(
            (1..=1000).contains(&config.batch),
            "{what}: batch must be 1 to 1000"
        );
        anyhow::ensure!(config.attempts > 0, "{what}: attempts must be at least 1");
        let wants = parse_filter(&config.events).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        let (tx, rx) = mpsc::channel(config.queue);
        let counts = Arc::new(Counts::default());
        tasks.spawn(
            Sender {
                name: name.clone(),
                poster: Poster {
                    name: name.clone(),
                    url,
                    config: config.clone(),
                    client: client.clone(),
                },
                batch: config.batch,
                counts: counts.clone(),
            }
            .run(rx, tasks.token()),
        );
        hooks.push(Hook {
            name,
            url: crate::config::mask_password(&config.url),
            wants,
            queue: tx,
            counts,
        });
    }
    Ok(hooks)
}

impl Webhooks {
    /// Whether some webhook wants events of this type.
    pub fn wants(&self, t: EventType) -> bool {
        self.wanted & bit(t) != 0
    }

    /// Queues an event for every webhook that wants its type; `make` runs only if one does.
    pub fn emit(&self, t: EventType, make: impl FnOnce() -> EventBody) {
        if !self.wants(t) {
            return;
        }
        let body = make();
        debug_assert_eq!(body.event_type(), t);
        let event = WebhookEvent {
            id: self.ids.next().to_string(),
            time: now_ms() as i64,
            node: self.node.to_string(),
            body,
        };
        for hook in &self.hooks {
            if hook.wants & bit(t) != 0 {
                hook.offer(&event);
            }
        }
    }

    /// A client opened a session on this node.
    pub fn client_connected(&self, conn: &Conn, node: &str) {
        self.emit(EventType::ClientConnected, || EventBody::ClientConnected {
            client: crate::presence::describe(conn, node),
        });
    }

    /// A client's session on this node ended for `reason`.
    pub fn client_disconnected(&self, conn: &Conn, node: &str, reason: &str) {
        self.emit(EventType::ClientDisconnected, || {
            EventBody::ClientDisconnected {
                client: crate::presence::describe(conn, node),
                reason: reason.to_owned(),
            }
        });
    }

    /// Recipients of `user` whose status changed to what `t` says (delivered or acked).
    pub fn recipients(&self, t: EventType, app: &str, user: &str, ids: &[u64]) {
        if !self.wants(t) {
            return;
        }
        for id in ids {
            let event = RecipientEvent {
                message: id.to_string(),
                app: app.to_owned(),
                user: user.to_owned(),
            };
            self.emit(t, || match t {
                EventType::MessageAcked => EventBody::MessageAcked(event),
                _ => EventBody::MessageDelivered(event),
            });
        }
    }

    /// How many expired recipients a sweep should list: the most any webhook wanting them
    /// could queue now (0 when none wants them).
    pub fn expired_room(&self) -> usize {
        let t = bit(EventType::MessageExpired);
        self.hooks
            .iter()
            .filter(|h| h.wants & t != 0)
            .map(|h| h.queue.capacity())
            .max()
            .unwrap_or(0)
    }

    /// Recipients a sweep marked expired; `unlisted` more expired that the sweep did not list
    /// (counted as dropped).
    pub fn expired(&self, listed: &[ExpiredRecipient], unlisted: u64) {
        for r in listed {
            self.emit(EventType::MessageExpired, || {
                EventBody::MessageExpired(RecipientEvent {
                    message: r.id.to_string(),
                    app: r.app.clone(),
                    user: r.user.clone(),
                })
            });
        }
        if unlisted > 0 {
            let t = bit(EventType::MessageExpired);
            for hook in &self.hooks {
                if hook.wants & t != 0 {
                    hook.drop_events(unlisted);
                }
            }
        }
    }

    /// A vendor push of message `id` to one of `user`'s devices failed: the hook for the
    /// vendor channels.
    pub fn push_failed(
        &self,
        app: &str,
        user: &str,
        id: u64,
        device: &str,
        way: &str,
        reason: &str,
    ) {
        self.emit(EventType::PushFailed, || {
            EventBody::PushFailed(PushFailure {
                message: id.to_string(),
                app: app.to_owned(),
                user: user.to_owned(),
                device: device.to_owned(),
                way: way.to_owned(),
                reason: reason.to_owned(),
            })
        });
    }

    /// What every webhook has done.
    pub fn stats(&self) -> Vec<WebhookStats> {
        self.hooks
            .iter()
            .map(|h| WebhookStats {
                name: h.name.to_string(),
                url: h.url.clone(),
                queued: h.counts.queued.load(Ordering::Relaxed),
                sent: h.counts.sent.load(Ordering::Relaxed),
                dropped: h.counts.dropped.load(Ordering::Relaxed),
                failed: h.counts.failed.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// The task that posts one webhook's events.
struct Sender {
    name: Arc<str>,
    poster: Poster,
    batch: usize,
    counts: Arc<Counts>,
}

/// Posts signed JSON bodies to one URL, retrying failures with exponential backoff: what
/// webhooks and the webhook channel (crate::channels) share.
pub(crate) struct Poster {
    pub(crate) name: Arc<str>,
    pub(crate) url: reqwest::Url,
    pub(crate) config: WebhookConfig,
    pub(crate) client: reqwest::Client,
}

/// The HTTP client webhook requests go through: no redirects, mps user agent.
pub(crate) fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("mps/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("webhook HTTP client")
}

/// How one request went.
enum Answer {
    Taken,
    /// Worth another try: connection error, timeout, 408, 429, 5xx.
    Retry(String),
    /// Refused for good (another 4xx, or a redirect).
    Refused(String),
}

impl Sender {
    /// Posts events until `stop`, then what is still queued (the disconnects of the shutdown
    /// are worth telling).
    async fn run(self, mut rx: mpsc::Receiver<WebhookEvent>, stop: CancellationToken) {
        let mut events = Vec::with_capacity(self.batch);
        while crate::shutdown::next_many(&mut rx, &mut events, self.batch, &stop).await > 0 {
            let count = events.len() as u64;
            metrics::gauge!("mps_webhook_queue", "webhook" => self.name.to_string())
                .set((rx.len() as u64 + count) as f64);
            let delivery = events[0].id.clone();
            let batch = WebhookBatch {
                events: std::mem::take(&mut events),
            };
            // Plain structs of strings and numbers always serialize.
            let body = Bytes::from(serde_json::to_vec(&batch).unwrap_or_default());
            let taken = self.poster.post(&delivery, body).await;
            let (counter, result) = if taken {
                (&self.counts.sent, "sent")
            } else {
                (&self.counts.failed, "failed")
            };
            counter.fetch_add(count, Ordering::Relaxed);
            self.counts.queued.fetch_sub(count, Ordering::Relaxed);
            metrics::counter!("mps_webhook_events_total", "webhook" => self.name.to_string(), "result" => result)
                .increment(count);
            metrics::gauge!("mps_webhook_queue", "webhook" => self.name.to_string())
                .set(rx.len() as f64);
        }
    }
}

impl Poster {
    /// Posts one body, retrying; true when the receiver took it.
    pub(crate) async fn post(&self, delivery: &str, body: Bytes) -> bool {
        let backoff = Backoff::new(
            Duration::from_millis(self.config.backoff_ms),
            Duration::from_millis(self.config.max_backoff_ms),
            self.config.attempts,
        );
        let mut attempt = 0;
        loop {
            attempt += 1;
            let answer = self.post_once(delivery, body.clone()).await;
            let outcome = match &answer {
                Answer::Taken => "ok",
                Answer::Retry(_) => "retry",
                Answer::Refused(_) => "refused",
            };
            metrics::counter!("mps_webhook_requests_total", "webhook" => self.name.to_string(), "outcome" => outcome)
                .increment(1);
            match answer {
                Answer::Taken => return true,
                Answer::Refused(why) => {
                    tracing::warn!(webhook = %self.name, delivery, why, "webhook refused the events; giving them up");
                    return false;
                }
                Answer::Retry(why) if backoff.gives_up(attempt) => {
                    tracing::warn!(webhook = %self.name, delivery, attempt, why, "webhook failed; giving the events up");
                    return false;
                }
                Answer::Retry(why) => {
                    tracing::debug!(webhook = %self.name, delivery, attempt, why, "webhook failed; retrying");
                    tokio::time::sleep(backoff.delay(attempt)).await;
                }
            }
        }
    }

    async fn post_once(&self, delivery: &str, body: Bytes) -> Answer {
        let timestamp = now_ms() / 1000;
        let signature = sign(&self.config.secret, timestamp, &body);
        let request = self
            .client
            .post(self.url.clone())
            .timeout(Duration::from_secs(self.config.timeout.max(1)))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(DELIVERY_HEADER, delivery)
            .body(body);
        match request.send().await {
            Err(e) => Answer::Retry(e.to_string()),
            Ok(response) => {
                let status = response.status();
                if status.is_success() {
                    Answer::Taken
                } else if status.is_server_error() || matches!(status.as_u16(), 408 | 429) {
                    Answer::Retry(format!("HTTP {status}"))
                } else {
                    Answer::Refused(format!("HTTP {status}"))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_name_types_groups_or_everything() {
        let all = u8::MAX;
        assert_eq!(parse_filter(&[]), Ok(all));
        assert_eq!(parse_filter(&["*".into()]), Ok(0x3f));
        let clients = parse_filter(&["client.*".into()]).unwrap();
        assert_eq!(
            clients,
            bit(EventType::ClientConnected) | bit(EventType::ClientDisconnected)
        );
        let some = parse_filter(&["message.acked".into(), "message.push_failed".into()]).unwrap();
        assert_eq!(
            some,
            bit(EventType::MessageAcked) | bit(EventType::PushFailed)
        );
        assert!(parse_filter(&["message.read".into()]).is_err());
        assert!(parse_filter(&["clients.*".into()]).is_err());
    }

    #[test]
    fn signatures_cover_timestamp_and_body() {
        // HMAC-SHA256("secret", "1700000000.{}"), computed independently with openssl:
        // printf '1700000000.{}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            sign("secret", 1_700_000_000, b"{}"),
            "sha256=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }

    /// The hook the vendor channels call.
    #[tokio::test]
    async fn push_failures_are_posted_signed() {
        use axum::http::HeaderMap;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let tx = tx.clone();
                async move {
                    let header = |n: &str| headers[n].to_str().unwrap().to_owned();
                    let _ = tx.send((header(SIGNATURE_HEADER), header(TIMESTAMP_HEADER), body));
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let config = WebhookConfig {
            url,
            secret: "k".into(),
            events: vec!["message.push_failed".into()],
            ..WebhookConfig::default()
        };
        let tasks = Tasks::new();
        let webhooks = Webhooks::start(&[config], "n1", 3, &tasks).unwrap();
        assert!(webhooks.wants(EventType::PushFailed));
        assert!(!webhooks.wants(EventType::ClientConnected));

        webhooks.push_failed("default", "alice", 42, "phone-1", "apns", "BadDeviceToken");
        let (signature, timestamp, body) = rx.recv().await.unwrap();
        assert_eq!(signature, sign("k", timestamp.parse().unwrap(), &body));
        let batch: WebhookBatch = serde_json::from_slice(&body).unwrap();
        assert_eq!(batch.events.len(), 1);
        assert_eq!(batch.events[0].node, "n1");
        assert_eq!(
            batch.events[0].body,
            EventBody::PushFailed(PushFailure {
                message: "42".into(),
                app: "default".into(),
                user: "alice".into(),
                device: "phone-1".into(),
                way: "apns".into(),
                reason: "BadDeviceToken".into(),
            })
        );
        tasks.stop();
        assert_eq!(tasks.stopped(Duration::from_secs(5)).await, 0);
        assert_eq!(webhooks.stats()[0].sent, 1);
    }
}
