//! `[[webhooks]]`: the back ends told of client and message events, read by the `webhooks`
//! module.

use serde::{Deserialize, Serialize};

/// One `[[webhooks]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Shown in metrics labels and the console; `webhook-N` (its position from 1) when unset.
    pub name: Option<String>,
    /// `http://` or `https://` URL that receives `POST`s.
    pub url: String,
    /// Key of the HMAC-SHA256 signature; share it with the receiver.
    pub secret: String,
    /// Event types to send: names (`message.acked`), groups (`client.*`, `message.*`) or `*`.
    /// Empty: every type.
    pub events: Vec<String>,
    /// Events waiting to be sent; past this, new events are dropped and counted.
    pub queue: usize,
    /// Most events in one request.
    pub batch: usize,
    /// Tries per request, the first included, for connection errors, timeouts, 408, 429 and
    /// 5xx answers; then its events are given up and counted as failed.
    pub attempts: u32,
    /// Wait before the first retry, milliseconds; doubled per retry, with jitter.
    pub backoff_ms: u64,
    /// Longest wait between retries, milliseconds.
    pub max_backoff_ms: u64,
    /// Seconds one request may take.
    pub timeout: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            name: None,
            url: String::new(),
            secret: String::new(),
            events: Vec::new(),
            queue: 10_000,
            batch: 100,
            attempts: 6,
            backoff_ms: 500,
            max_backoff_ms: 30_000,
            timeout: 10,
        }
    }
}
