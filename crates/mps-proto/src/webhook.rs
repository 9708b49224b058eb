//! Bodies of webhook callbacks: what mps `POST`s to a back end's URL when a client connects or
//! disconnects and when a directed message is delivered, acked, expires or fails to push
//! (docs/webhooks.md). One request carries the events that were waiting, oldest first.

use serde::{Deserialize, Serialize};

use crate::api::OnlineClient;

/// The body of one webhook request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookBatch {
    pub events: Vec<WebhookEvent>,
}

/// One thing that happened.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// Unique per event (decimal, increasing on each node); a retried request repeats the same
    /// events with the same ids, so a receiver can drop what it already handled.
    pub id: String,
    /// When it happened, Unix ms.
    pub time: i64,
    /// The node where it happened.
    pub node: String,
    /// `type` and `data`.
    #[serde(flatten)]
    pub body: EventBody,
}

/// What happened, as `"type": "...", "data": {...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum EventBody {
    /// A client opened a session (WebSocket, SSE); long polls are not reported.
    #[serde(rename = "client.connected")]
    ClientConnected { client: OnlineClient },
    /// A client's session ended; `reason` as in `mps_disconnects_total` (`client_closed`,
    /// `kicked`, `slow_consumer`, `heartbeat_timeout`, `shutdown`...).
    #[serde(rename = "client.disconnected")]
    ClientDisconnected {
        client: OnlineClient,
        reason: String,
    },
    /// A recipient's status moved from `pending` to `delivered`.
    #[serde(rename = "message.delivered")]
    MessageDelivered(RecipientEvent),
    /// A recipient acknowledged the message.
    #[serde(rename = "message.acked")]
    MessageAcked(RecipientEvent),
    /// The message expired before this recipient acknowledged it.
    #[serde(rename = "message.expired")]
    MessageExpired(RecipientEvent),
    /// A vendor channel (APNs, FCM, Web Push) could not take the message for a device.
    #[serde(rename = "message.push_failed")]
    PushFailed(PushFailure),
}

/// One recipient of a directed message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientEvent {
    /// The message id.
    pub message: String,
    pub app: String,
    pub user: String,
}

/// A push to one device that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushFailure {
    /// The message id.
    pub message: String,
    pub app: String,
    pub user: String,
    /// The app's id of the device.
    pub device: String,
    /// `apns`, `fcm` or `webpush`.
    pub way: String,
    /// The vendor's answer or why it could not be asked.
    pub reason: String,
}

/// The type of an event, as named in `type` and in a webhook's `events` filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    ClientConnected,
    ClientDisconnected,
    MessageDelivered,
    MessageAcked,
    MessageExpired,
    PushFailed,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::ClientConnected,
        EventType::ClientDisconnected,
        EventType::MessageDelivered,
        EventType::MessageAcked,
        EventType::MessageExpired,
        EventType::PushFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ClientConnected => "client.connected",
            EventType::ClientDisconnected => "client.disconnected",
            EventType::MessageDelivered => "message.delivered",
            EventType::MessageAcked => "message.acked",
            EventType::MessageExpired => "message.expired",
            EventType::PushFailed => "message.push_failed",
        }
    }

    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl EventBody {
    pub fn event_type(&self) -> EventType {
        match self {
            EventBody::ClientConnected { .. } => EventType::ClientConnected,
            EventBody::ClientDisconnected { .. } => EventType::ClientDisconnected,
            EventBody::MessageDelivered(_) => EventType::MessageDelivered,
            EventBody::MessageAcked(_) => EventType::MessageAcked,
            EventBody::MessageExpired(_) => EventType::MessageExpired,
            EventBody::PushFailed(_) => EventType::PushFailed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_typed_by_name_with_their_data() {
        let event = WebhookEvent {
            id: "7".into(),
            time: 1,
            node: "n1".into(),
            body: EventBody::MessageAcked(RecipientEvent {
                message: "42".into(),
                app: "default".into(),
                user: "alice".into(),
            }),
        };
        let text = serde_json::to_string(&event).unwrap();
        assert_eq!(
            text,
            r#"{"id":"7","time":1,"node":"n1","type":"message.acked","data":{"message":"42","app":"default","user":"alice"}}"#
        );
        let back: WebhookEvent = serde_json::from_str(&text).unwrap();
        assert_eq!(back.body, event.body);
        assert_eq!(back.body.event_type().as_str(), "message.acked");
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
    }
}
