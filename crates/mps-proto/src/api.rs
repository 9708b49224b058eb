//! Bodies of the HTTP API (`/api/v1`). Times are Unix milliseconds; message ids are decimal
//! strings (they exceed JavaScript's exact integer range).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::frame::ErrorBody;

/// `POST /api/v1/messages`. With `receiver` it is directed and durable; without it, it goes live
/// to every online client of the app (or, with `component`, to those subscribed to it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// Business content, any JSON; delivered as `Message.EventData.ext`.
    pub content: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// Publish to this topic (`alarms/site1/room2`): kept in the topic's retained log and
    /// delivered to every client whose topic patterns match. Not combined with `receiver`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Only connections of these agents receive it (`["ios","bs"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<Vec<String>>,
    /// Seconds until the message expires (default from configuration, 3 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// Tenant; `default` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Idempotency key chosen by the sender: within the app's de-duplication window a message
    /// with a key already used is not sent again; the answer carries the first one's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// How a message is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryClass {
    /// To listed users, durable, with per-recipient status.
    Directed,
    /// To every online client subscribed to a component, live only.
    Component,
    /// To every client whose topic patterns match, kept in the topic's retained log.
    Topic,
    /// To every online client of the app, live only.
    Broadcast,
}

/// Answer to `POST /api/v1/messages`, sent once the message is durable (directed) or handed to
/// the broker (live only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendResult {
    pub id: String,
    pub class: DeliveryClass,
    /// Number of recipients recorded (directed only).
    pub recipients: usize,
    /// The idempotency key was already used: nothing was sent again and `id` is the first
    /// message's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// Per-recipient delivery status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Not yet written to any connection of the user.
    Pending,
    /// Written to a live connection (or collected by pull).
    Delivered,
    /// Confirmed by the client.
    Acked,
    /// Expired before it was acknowledged.
    Expired,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Pending,
        Status::Delivered,
        Status::Acked,
        Status::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Delivered => "delivered",
            Status::Acked => "acked",
            Status::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// One recipient of a directed message and where its delivery stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecipientStatus {
    pub user: String,
    pub status: Status,
    /// When the status last changed.
    pub updated: i64,
}

/// A stored directed message (`GET /api/v1/messages`, `GET /api/v1/messages/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageRecord {
    pub id: String,
    pub app: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(rename = "type")]
    pub kind: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<Vec<String>>,
    pub content: Box<RawValue>,
    pub created: i64,
    pub expires: i64,
    /// Count of recipients per status.
    pub summary: BTreeMap<Status, u64>,
    /// Every recipient with its status; filled only when one message is asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients: Option<Vec<RecipientStatus>>,
}

/// A page of results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// 1-based page number.
    pub page: u64,
    pub size: u64,
    pub total: u64,
}

/// An online connection (`GET /api/v1/clients`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OnlineClient {
    pub id: String,
    pub app: String,
    pub user: String,
    pub agent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// `websocket` (Message Push Protocol), `websocket-simple` (`/websocket/{token}`), `sse`
    /// or `poll` (a long poll in progress).
    pub transport: String,
    /// Login time.
    pub login: i64,
    pub remote: String,
    pub node: String,
    pub components: Vec<String>,
    /// Topic patterns.
    #[serde(default)]
    pub topics: Vec<String>,
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Lifetime in seconds (default from configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// Topic patterns the token may subscribe to; absent means any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<String>>,
}

/// A client token and where clients connect with it, per network line (`intranet`, `internet`...).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    pub token: String,
    pub user: String,
    pub app: String,
    /// Unix seconds.
    pub expires: i64,
    pub urls: BTreeMap<String, String>,
}

/// `POST /api/v1/collect` answer: the pending messages, now marked delivered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Collected {
    pub messages: Vec<crate::frame::PushedMessage>,
}

/// `POST /api/v1/ack` body (client token).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    pub ids: Vec<String>,
}

/// `POST /api/v1/ack` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AckResult {
    pub acked: u64,
}

/// Every API error: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}
