//! Message Push Protocol frames: JSON text frames whose top-level keys are PascalCase (`Type`,
//! `Seq`, `Version`, `Client`, `Security`), as in the protocol's original open frame. The full table
//! is in `docs/protocol.md`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Frame type codes (`Type`).
pub mod kind {
    /// Client opens a session (carries `Client` and `Security`).
    pub const OPEN: u8 = 1;
    /// Server accepts the open (`Session`) or refuses it (`Error`).
    pub const OPEN_ACK: u8 = 2;
    /// Server pushes a message (`Message`).
    pub const PUSH: u8 = 3;
    /// Client acknowledges messages (`Ids`); the server answers with `Acked`.
    pub const ACK: u8 = 4;
    /// Application-level ping, either way.
    pub const PING: u8 = 5;
    /// Answer to a ping.
    pub const PONG: u8 = 6;
    /// Client closes its push session; the server answers and closes the socket.
    pub const CLOSE: u8 = 7;
    /// Client changes its subscriptions (`Client.componentSet`).
    pub const SUBSCRIBE: u8 = 8;
    /// Server reports an error about a client frame (`Error`), echoing its `Seq`.
    pub const ERROR: u8 = 9;
    /// Server reports a resume gap: the retained log of `Topics` no longer reaches back to the
    /// client's last id.
    pub const RESET: u8 = 10;
}

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// WebSocket close codes used by mps (see `docs/protocol.md`).
pub mod close {
    /// Normal close (client asked with a close frame or `Type` 7).
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The WebSocket framing itself was broken (RFC 6455: reserved bits, bad opcode, unmasked
    /// client frame, bad control frame).
    pub const WS_PROTOCOL: u16 = 1002;
    /// A text frame was not valid UTF-8.
    pub const INVALID_UTF8: u16 = 1007;
    /// A frame or message exceeded the configured size limit.
    pub const TOO_BIG: u16 = 1009;
    /// Unexpected server error.
    pub const INTERNAL: u16 = 1011;
    /// The client broke the protocol (binary frame, frame before open, repeated bad frames).
    pub const PROTOCOL: u16 = 4400;
    /// Missing, malformed, forged or expired token; or the token's user is not the frame's user.
    pub const UNAUTHORIZED: u16 = 4401;
    /// An operator disconnected the client through the API.
    pub const KICKED: u16 = 4403;
    /// No open frame in time, or the peer went silent past the heartbeat timeout.
    pub const TIMEOUT: u16 = 4408;
    /// Over a limit: the outbound queue overflowed (the client could not keep up), the client
    /// sent frames faster than its rate, or its user has too many connections. The error frame
    /// before the close (or the close reason) says which. Reconnect with backoff to resume.
    pub const TOO_MANY: u16 = 4429;
    /// The outbound queue overflowed: [`TOO_MANY`] with the reason "outbound queue overflow".
    pub const SLOW_CONSUMER: u16 = TOO_MANY;
}

/// One frame, in either direction. Absent fields are omitted on the wire; unknown fields are
/// ignored so that newer clients still talk to older servers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Frame {
    #[serde(rename = "Type")]
    pub kind: u8,
    /// Chosen by the client and echoed on the server's reply.
    #[serde(rename = "Seq", default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(rename = "Version", default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(rename = "Client", default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientInfo>,
    #[serde(rename = "Security", default, skip_serializing_if = "Option::is_none")]
    pub security: Option<Security>,
    #[serde(rename = "Session", default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionInfo>,
    #[serde(rename = "Message", default, skip_serializing_if = "Option::is_none")]
    pub message: Option<PushedMessage>,
    #[serde(rename = "Ids", default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    #[serde(rename = "Acked", default, skip_serializing_if = "Option::is_none")]
    pub acked: Option<u64>,
    #[serde(rename = "Error", default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// Topic patterns a resume gap concerns (`Type` 10).
    #[serde(rename = "Topics", default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<String>>,
    /// The registration a short connection opened (`Type` 2 answering an open with a vendor
    /// `way`).
    #[serde(rename = "Device", default, skip_serializing_if = "Option::is_none")]
    pub device: Option<crate::api::DeviceRegistration>,
}

impl Frame {
    /// A frame of the given type answering the given `Seq`.
    pub fn reply(kind: u8, seq: Option<u64>) -> Self {
        Frame {
            kind,
            seq,
            ..Frame::default()
        }
    }

    /// An error frame (`Type` 9, or 2 when it refuses an open).
    pub fn error(kind: u8, seq: Option<u64>, code: &str, message: impl Into<String>) -> Self {
        Frame {
            error: Some(ErrorBody {
                code: code.to_owned(),
                message: message.into(),
            }),
            ..Frame::reply(kind, seq)
        }
    }
}

/// Who is connecting and what it wants (the `Client` object of the open frame).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientInfo {
    /// `bs` (browser), `cs` (desktop), `ios`, `android`, or another short name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Must equal the token's subject when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `websocket` for a long connection; vendor ways (`apns`, `fcm`, `webpush`) open a push mode
    /// (short connection: `Type` 1 turns it on, `Type` 7 turns it off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub way: Option<String>,
    /// The vendor's device token (APNs hex, FCM registration token) of a push mode, or a Web
    /// Push subscription as a JSON string.
    #[serde(
        rename = "deviceToken",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub device_token: Option<String>,
    /// A Web Push subscription (`PushSubscription.toJSON()`) of a push mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<serde_json::Value>,
    /// Components (producing systems) whose component-wide messages the client wants.
    #[serde(
        rename = "componentSet",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub component_set: Option<Vec<String>>,
    /// The client's own device id, shown in the list of online clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Topic patterns (`alarms/site1/#`, `alarms/+/room2`) to subscribe to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<String>>,
    /// Id of the last message the client saw, to resume its topics after a reconnect.
    #[serde(rename = "lastId", default, skip_serializing_if = "Option::is_none")]
    pub last_id: Option<String>,
}

/// Credentials of the open frame.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Security {
    pub token: String,
}

/// What the server tells a client whose open it accepted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Connection id, as listed by `GET /api/v1/clients`.
    pub id: String,
    pub app: String,
    pub user: String,
    pub agent: String,
    /// Seconds between server heartbeats; a client silent for `timeout` seconds is dropped.
    pub heartbeat: u64,
    pub timeout: u64,
}

/// Machine-readable error: a stable `code` and a human `message`.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

/// A message as pushed to clients (`Message` of a `Type` 3 frame) and as returned by pull.
/// `EventData.ext` is the business content exactly as the back end sent it.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushedMessage {
    /// Server-assigned id, increasing with time; clients use it to drop duplicates.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// Creation time, Unix milliseconds.
    pub created: i64,
    /// True for directed messages, which the client should acknowledge (`Type` 4).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ack: bool,
    #[serde(rename = "EventData")]
    pub event_data: EventData,
}

/// Borrowing form of a push frame (`Type` 3), so a stored message is encoded without a copy.
#[derive(Debug, Serialize)]
pub struct PushFrame<'a> {
    #[serde(rename = "Type")]
    pub kind: u8,
    #[serde(rename = "Message")]
    pub message: &'a PushedMessage,
}

impl<'a> PushFrame<'a> {
    pub fn new(message: &'a PushedMessage) -> Self {
        PushFrame {
            kind: kind::PUSH,
            message,
        }
    }
}

/// Wrapper kept for the protocol's original shape: the content lives in `ext`.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventData {
    #[cfg_attr(feature = "utoipa", schema(value_type = serde_json::Value))]
    pub ext: Box<RawValue>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_original_open_frame() {
        let text = r#"{"Type":1,"Seq":231,"Version":1,"Client":{"agent":"bs","user":"admin","way":"websocket","componentSet":["esbm"]},"Security":{"token":"abc"}}"#;
        let frame: Frame = serde_json::from_str(text).unwrap();
        assert_eq!(frame.kind, kind::OPEN);
        assert_eq!(frame.seq, Some(231));
        let client = frame.client.unwrap();
        assert_eq!(client.agent.as_deref(), Some("bs"));
        assert_eq!(client.component_set.unwrap(), vec!["esbm".to_owned()]);
        assert_eq!(frame.security.unwrap().token, "abc");
    }

    #[test]
    fn push_frame_keeps_content_under_event_data_ext() {
        let frame = Frame {
            message: Some(PushedMessage {
                id: "42".into(),
                title: Some("t".into()),
                kind: 0,
                component: None,
                topic: None,
                sender: None,
                created: 1,
                ack: true,
                event_data: EventData {
                    ext: RawValue::from_string(r#"{"alarm":1}"#.into()).unwrap(),
                },
            }),
            ..Frame::reply(kind::PUSH, None)
        };
        let text = serde_json::to_string(&frame).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["Message"]["EventData"]["ext"]["alarm"], 1);
        assert_eq!(value["Type"], 3);
        assert!(value.get("Seq").is_none());
    }

    #[test]
    fn rejects_a_negative_seq() {
        assert!(serde_json::from_str::<Frame>(r#"{"Type":5,"Seq":-1}"#).is_err());
    }
}
