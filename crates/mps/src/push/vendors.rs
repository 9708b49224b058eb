//! What the three vendor clients share: the HTTP client, the bounded retry loop with its
//! per-vendor concurrency limit and metrics, and the short alert text shown on a phone's lock
//! screen.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Semaphore;

use super::{Notification, Outcome, PushConfig, Way};
use crate::retry::Backoff;

/// The longest wait between two attempts, whatever the vendor's `Retry-After` says; a vendor
/// asking for more gets the push failed instead of a task parked for longer.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(60);

/// An HTTPS client for one vendor of one app (its own connection pool). `h2_only` offers only
/// HTTP/2 in ALPN (APNs speaks nothing else); otherwise HTTP/2 is preferred and HTTP/1.1
/// accepted. `ca_file` adds a trusted root (a local stand-in's) to the public ones. Redirects
/// are not followed: a push endpoint that redirects is answered as it is.
pub(crate) fn http_client(
    ca_file: Option<&Path>,
    h2_only: bool,
    config: &PushConfig,
) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_millis(config.timeout_ms))
        .connect_timeout(Duration::from_millis(config.timeout_ms))
        .http2_keep_alive_interval(Duration::from_secs(60))
        .http2_keep_alive_while_idle(true)
        .user_agent(concat!("mps/", env!("CARGO_PKG_VERSION")));
    if h2_only {
        builder = builder.http2_prior_knowledge();
    }
    if let Some(path) = ca_file {
        let pem =
            std::fs::read(path).with_context(|| format!("reading ca_file {}", path.display()))?;
        let certificate = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("ca_file {} is not a PEM certificate", path.display()))?;
        builder = builder.add_root_certificate(certificate);
    }
    builder.build().context("building the HTTPS client")
}

/// Reads a credentials file, naming it in the error.
pub(crate) fn read_file(what: &str, path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

/// What one request to a vendor came to.
#[derive(Debug)]
pub(crate) enum Attempt {
    Sent,
    /// The token or subscription is no longer valid.
    Gone(String),
    /// This push cannot succeed; no retry.
    Failed(String),
    /// Temporary (429, 5xx, connection error): try again after the backoff or `after`.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// The vendor refused our credentials as expired and the client renewed them: try again
    /// at once (once per push).
    Renewed(String),
}

/// Attempts, backoff and the concurrency limit of one vendor kind, shared by its clients of
/// every app on this node.
#[derive(Clone)]
pub(crate) struct Retry {
    way: Way,
    backoff: Backoff,
    /// Requests in flight to this vendor kind; waits between attempts do not hold a permit.
    permits: Arc<Semaphore>,
}

impl Retry {
    pub(crate) fn new(way: Way, config: &PushConfig) -> Retry {
        Retry {
            way,
            backoff: Backoff::new(
                Duration::from_millis(config.backoff_ms),
                MAX_DELAY,
                config.attempts,
            ),
            permits: Arc::new(Semaphore::new(config.concurrency)),
        }
    }

    /// Runs `attempt` until it settles, at most `attempts` times, waiting by the backoff
    /// (`backoff_ms` doubled per attempt up to [`MAX_DELAY`], jittered), or the vendor's
    /// `Retry-After`, between tries; counts the outcome.
    pub(crate) async fn run<F, Fut>(&self, mut attempt: F) -> Outcome
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Attempt>,
    {
        let way = self.way.as_str();
        let mut tries = 0;
        let mut renewed = false;
        let outcome = loop {
            tries += 1;
            let result = {
                // The semaphore is never closed.
                let _permit = self.permits.acquire().await;
                let started = Instant::now();
                let result = attempt().await;
                metrics::histogram!("mps_push_seconds", "way" => way)
                    .record(started.elapsed().as_secs_f64());
                result
            };
            match result {
                Attempt::Sent => break Outcome::Sent,
                Attempt::Gone(reason) => break Outcome::Gone { reason },
                Attempt::Failed(reason) => break Outcome::Failed { reason },
                Attempt::Renewed(reason) => {
                    if renewed {
                        break Outcome::Failed {
                            reason: format!("{reason} (again with renewed credentials)"),
                        };
                    }
                    renewed = true;
                    tries -= 1;
                }
                Attempt::Retry { reason, after } => {
                    if self.backoff.gives_up(tries) {
                        break Outcome::Failed {
                            reason: format!("{reason} (gave up after {tries} attempts)"),
                        };
                    }
                    let delay = match after {
                        Some(after) if after > MAX_DELAY => {
                            break Outcome::Failed {
                                reason: format!("{reason} (retry after {} s)", after.as_secs()),
                            };
                        }
                        Some(after) => after,
                        None => self.backoff.delay(tries),
                    };
                    metrics::counter!("mps_push_retries_total", "way" => way).increment(1);
                    tracing::debug!(way, %reason, ?delay, "push retried");
                    tokio::time::sleep(delay).await;
                }
            }
        };
        count(self.way, &outcome);
        outcome
    }

    /// Counts a push settled without a request (payload too large, unusable token).
    pub(crate) fn settle(&self, outcome: Outcome) -> Outcome {
        count(self.way, &outcome);
        outcome
    }
}

fn count(way: Way, outcome: &Outcome) {
    let label = match outcome {
        Outcome::Sent => "sent",
        Outcome::Gone { reason } => {
            tracing::info!(way = way.as_str(), %reason, "device token gone");
            "gone"
        }
        Outcome::Failed { reason } => {
            tracing::warn!(way = way.as_str(), %reason, "push failed");
            "failed"
        }
    };
    metrics::counter!("mps_push_total", "way" => way.as_str(), "outcome" => label).increment(1);
}

/// `Retry-After` in seconds (the vendors send seconds; an HTTP date is ignored).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
        .map(Duration::from_secs)
}

/// Longest alert body taken from the content, in characters.
const ALERT_CHARS: usize = 200;

/// The lock-screen text of a notification: its title, and a body taken from the content when
/// it is a string or has a `text` or `body` string field, otherwise the title (or "New
/// message" when there is neither).
pub(crate) fn alert(note: &Notification) -> (Option<&str>, String) {
    let title = note.title.as_deref();
    let content: serde_json::Value =
        serde_json::from_str(note.content.get()).unwrap_or(serde_json::Value::Null);
    let text = match &content {
        serde_json::Value::String(text) => Some(text.as_str()),
        serde_json::Value::Object(fields) => ["text", "body"]
            .iter()
            .find_map(|k| fields.get(*k).and_then(|v| v.as_str())),
        _ => None,
    };
    let body = match text.or(title) {
        Some(text) if text.chars().count() > ALERT_CHARS => {
            let mut short: String = text.chars().take(ALERT_CHARS - 1).collect();
            short.push('…');
            short
        }
        Some(text) => text.to_owned(),
        None => "New message".to_owned(),
    };
    (title, body)
}

/// Seconds the message still has to live (0 when already expired).
pub(crate) fn ttl_secs(note: &Notification) -> u64 {
    let now = crate::id::now_ms() as i64;
    (note.expires.saturating_sub(now).max(0) / 1000) as u64
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    crate::id::now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::value::RawValue;

    use super::*;
    use crate::push::Priority;

    fn note(title: Option<&str>, content: &str) -> Notification {
        Notification {
            id: 1,
            app: "a".into(),
            title: title.map(str::to_owned),
            kind: 0,
            component: None,
            content: Arc::from(RawValue::from_string(content.into()).unwrap()),
            expires: 0,
            collapse_id: None,
            priority: Priority::High,
            formats: Default::default(),
        }
    }

    #[test]
    fn alert_body_comes_from_the_content_else_the_title() {
        assert_eq!(
            alert(&note(Some("T"), r#""hello""#)),
            (Some("T"), "hello".into())
        );
        assert_eq!(alert(&note(None, r#"{"text":"a","body":"b"}"#)).1, "a");
        assert_eq!(alert(&note(None, r#"{"body":"b"}"#)).1, "b");
        assert_eq!(alert(&note(Some("T"), r#"{"alarm":1}"#)).1, "T");
        assert_eq!(alert(&note(None, "42")).1, "New message");
        let long = format!("\"{}\"", "é".repeat(500));
        let body = alert(&note(None, &long)).1;
        assert_eq!(body.chars().count(), ALERT_CHARS);
        assert!(body.ends_with('…'));
    }
}
