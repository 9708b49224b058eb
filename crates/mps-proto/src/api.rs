//! Bodies of the HTTP API (`/api/v1`). Times are Unix milliseconds; message ids are decimal
//! strings (they exceed JavaScript's exact integer range).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::frame::ErrorBody;

/// `POST /api/v1/messages`. With `receiver` it is directed and durable; without it, it goes live
/// to every online client of the app (or, with `component`, to those subscribed to it).
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// Business content, any JSON; delivered as `Message.EventData.ext`.
    #[cfg_attr(feature = "utoipa", schema(value_type = serde_json::Value))]
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
    /// Who it is for, instead of `receiver`: an expression over users' tags and attributes and
    /// the clients' agents (`tag:vip AND lang:zh AND NOT agent:cs`; docs/audience.md). Directed
    /// and durable to every matching user, online or not, unless `live`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// With `audience`: only to the matching clients online now (and, with `component`,
    /// subscribed to it); nothing is stored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub live: bool,
    /// Per-agent shapes: the title and content that connections of an agent (`ios`, `android`)
    /// get instead of the message's own, and the vendors' notifications (`apns`, `fcm`,
    /// `webpush`). Others get the message as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub formats: Option<BTreeMap<String, Format>>,
    /// Whether a directed message also goes through the recipients' registered devices (APNs,
    /// FCM, Web Push); `offline` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushPolicy>,
    /// The channels a directed message goes through besides live connections, in order:
    /// `push` (the registered devices, under the `push` policy), `webhook` (the app's webhook
    /// channel, one signed request per recipient) and `email` (the app's SMTP relay, to each
    /// recipient's `email` attribute). A name is taken at once; `{"channel": "email", "after":
    /// "10m"}` only if the recipient has not acked the message by then. Absent: `["push"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<ChannelChoice>>,
}

/// One entry of a message's `channels`: a channel taken at once, or a step of its chain.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ChannelChoice {
    /// `"push"`, `"webhook"` or `"email"`, taken when the message is sent.
    Now(String),
    /// A channel taken after a delay unless the recipient acked the message before.
    Step(ChannelStep),
}

impl ChannelChoice {
    /// The channel's name.
    pub fn channel(&self) -> &str {
        match self {
            ChannelChoice::Now(name) => name,
            ChannelChoice::Step(step) => &step.channel,
        }
    }
}

impl From<&str> for ChannelChoice {
    fn from(name: &str) -> Self {
        ChannelChoice::Now(name.to_owned())
    }
}

/// A step of a message's channel chain.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelStep {
    /// `push`, `webhook` or `email`.
    pub channel: String,
    /// How long after the message was sent: seconds, or `"90s"`, `"10m"`, `"2h"`. Absent or 0:
    /// at once. Not taken for a recipient who acked the message (or whose message expired)
    /// before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Delay>,
}

/// A delay: seconds, or a number with the unit `s`, `m`, `h` or `d`.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Delay {
    Seconds(u64),
    Text(String),
}

impl Delay {
    /// The delay in seconds; `None` when the text is not a delay.
    pub fn seconds(&self) -> Option<u64> {
        match self {
            Delay::Seconds(n) => Some(*n),
            Delay::Text(text) => {
                let text = text.trim();
                let split = text
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(text.len());
                let (number, unit) = text.split_at(split);
                let number: u64 = number.parse().ok()?;
                let scale = match unit {
                    "" | "s" => 1,
                    "m" => 60,
                    "h" => 3600,
                    "d" => 86_400,
                    _ => return None,
                };
                number.checked_mul(scale)
            }
        }
    }
}

/// When a directed message is pushed through the vendors to a recipient's registered devices.
/// The message stays pending for the live channel either way.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushPolicy {
    /// To each registered device that has no live connection.
    #[default]
    Offline,
    /// To every registered device, online or not.
    Always,
    /// Never: live connections and the backlog only.
    Never,
}

/// What the clients of one agent (or one vendor's notifications) get instead of a message's own
/// title and content; an absent field keeps the message's.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Format {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Any JSON; delivered as `Message.EventData.ext`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<serde_json::Value>))]
    pub content: Option<Box<RawValue>>,
}

/// How a message is delivered.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendResult {
    pub id: String,
    pub class: DeliveryClass,
    /// Number of recipients recorded (directed), or of online users a live audience matched.
    pub recipients: usize,
    /// The idempotency key was already used: nothing was sent again and `id` is the first
    /// message's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// Per-recipient delivery status.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Not yet written to any connection of the user.
    Pending,
    /// Handed to a vendor (APNs, FCM, Web Push) for a device of the user; still owed to the
    /// live channel, like `pending`.
    Pushed,
    /// A vendor push was tried and refused (`reason` says why); still owed to the live
    /// channel, like `pending`.
    Failed,
    /// Written to a live connection (or collected by pull).
    Delivered,
    /// Confirmed by the client.
    Acked,
    /// Expired before it was acknowledged.
    Expired,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Pending,
        Status::Pushed,
        Status::Failed,
        Status::Delivered,
        Status::Acked,
        Status::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Pushed => "pushed",
            Status::Failed => "failed",
            Status::Delivered => "delivered",
            Status::Acked => "acked",
            Status::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the message is still owed to the user's live connections (backlog, pull).
    pub fn owed(self) -> bool {
        matches!(self, Status::Pending | Status::Pushed | Status::Failed)
    }
}

/// One recipient of a directed message and where its delivery stands.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecipientStatus {
    pub user: String,
    pub status: Status,
    /// When the status last changed.
    pub updated: i64,
    /// Why a vendor push `failed` (the vendor's answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where the message stands on each channel for this recipient: `live` always, `push`
    /// once the vendor push ran, and every channel of the message's chain (`webhook`, `email`,
    /// a delayed `push`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub channels: BTreeMap<String, ChannelState>,
}

/// One channel's state for one recipient.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelState {
    pub status: ChannelStatus,
    /// When it last changed (Unix ms).
    pub updated: i64,
    /// When a `scheduled` step is due (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<i64>,
    /// Why it `failed` or was `skipped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A channel's state for one recipient.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelStatus {
    /// `live`: not yet written to a connection.
    Pending,
    /// `live`: written to a connection (or collected).
    Delivered,
    /// `live`: confirmed by the client; no later step of the chain runs.
    Acked,
    /// `live`: expired before it was acknowledged.
    Expired,
    /// A step of the chain waiting for its time (`due`).
    Scheduled,
    /// Queued for the channel, not settled yet.
    Queued,
    /// `push`: some device's vendor accepted it.
    Pushed,
    /// `webhook`, `email`: taken by the app's back end or the SMTP relay.
    Sent,
    /// Refused, or not taken after the retries (`reason`).
    Failed,
    /// Left out because the user muted the message's component or the channel, or is in quiet
    /// hours.
    Muted,
    /// Not run: the recipient acked the message (or it expired) before the step's time.
    Cancelled,
    /// Not run: the channel's queue was full.
    Dropped,
    /// Not run for another reason (`reason`: no e-mail address...).
    Skipped,
}

impl ChannelStatus {
    pub const ALL: [ChannelStatus; 13] = [
        ChannelStatus::Pending,
        ChannelStatus::Delivered,
        ChannelStatus::Acked,
        ChannelStatus::Expired,
        ChannelStatus::Scheduled,
        ChannelStatus::Queued,
        ChannelStatus::Pushed,
        ChannelStatus::Sent,
        ChannelStatus::Failed,
        ChannelStatus::Muted,
        ChannelStatus::Cancelled,
        ChannelStatus::Dropped,
        ChannelStatus::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelStatus::Pending => "pending",
            ChannelStatus::Delivered => "delivered",
            ChannelStatus::Acked => "acked",
            ChannelStatus::Expired => "expired",
            ChannelStatus::Scheduled => "scheduled",
            ChannelStatus::Queued => "queued",
            ChannelStatus::Pushed => "pushed",
            ChannelStatus::Sent => "sent",
            ChannelStatus::Failed => "failed",
            ChannelStatus::Muted => "muted",
            ChannelStatus::Cancelled => "cancelled",
            ChannelStatus::Dropped => "dropped",
            ChannelStatus::Skipped => "skipped",
        }
    }

    pub fn parse(text: &str) -> Option<ChannelStatus> {
        ChannelStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// A stored directed message (`GET /api/v1/messages`, `GET /api/v1/messages/{id}`).
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
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
    /// Agents whose connections do not get it (an audience's `NOT agent:` terms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except_agents: Option<Vec<String>>,
    /// The per-agent shapes it was sent with (the message's `formats` and the app's templates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub formats: Option<BTreeMap<String, Format>>,
    #[cfg_attr(feature = "utoipa", schema(value_type = serde_json::Value))]
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
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// 1-based page number.
    pub page: u64,
    pub size: u64,
    pub total: u64,
}

/// An online connection (`GET /api/v1/clients`).
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Collected {
    pub messages: Vec<crate::frame::PushedMessage>,
}

/// `POST /api/v1/ack` body (client token).
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    pub ids: Vec<String>,
}

/// `POST /api/v1/ack` answer.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AckResult {
    pub acked: u64,
}

/// `POST /api/v1/devices`: open a push mode, registering a device to be reached through a
/// vendor when it holds no live connection. Registering again refreshes the registration.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterDevice {
    /// The app's own id of the device; its live connections give the same `Client.device`.
    pub device: String,
    /// `apns`, `fcm` or `webpush`.
    pub way: String,
    /// APNs device token (hex) or FCM registration token; for Web Push, the subscription as a
    /// JSON string (or use `subscription`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Web Push: the browser's `PushSubscription.toJSON()`
    /// (`{"endpoint": "https://...", "keys": {"p256dh": "...", "auth": "..."}}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<serde_json::Value>,
    /// Client type; default `ios` for APNs, `android` for FCM, `bs` for Web Push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Components whose messages are pushed to this device; absent or empty: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<Vec<String>>,
    /// With the admin key only: the user (a client token registers its own user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// With the admin key only: the app (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

/// A device's registration for one way (a push mode that is on).
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRegistration {
    pub app: String,
    pub user: String,
    pub agent: String,
    pub device: String,
    /// `apns`, `fcm` or `webpush`.
    pub way: String,
    /// The device token, or the Web Push subscription as JSON.
    pub token: String,
    /// Components whose messages are pushed; empty means all.
    #[serde(default)]
    pub components: Vec<String>,
    /// Last registration or refresh, Unix ms; registrations not refreshed for
    /// `push.expire_after` expire.
    pub refreshed: i64,
}

/// How many registrations a `DELETE /api/v1/devices` or `POST /api/v1/logout` removed.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Removed {
    pub removed: u64,
}

/// Every API error: `{"error": {"code": "...", "message": "..."}}`.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

/// `PUT /api/v1/users/{user}/tags`: the user's new set of tags.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagsRequest {
    /// Tenant; `default` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    pub tags: Vec<String>,
}

/// A user's tags (`GET` and `PUT /api/v1/users/{user}/tags`), sorted.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserTags {
    pub app: String,
    pub user: String,
    pub tags: Vec<String>,
}

/// `PUT /api/v1/users/{user}/attributes`: the user's new attributes (`lang`, `region`,
/// `platform`, `app_version` or any other key), one value each.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributesRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

/// A user's attributes (`GET` and `PUT /api/v1/users/{user}/attributes`).
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAttributes {
    pub app: String,
    pub user: String,
    pub attributes: BTreeMap<String, String>,
}

/// Hours in which nothing is pushed through the vendors, in the user's local time.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// `HH:MM`, local time; quiet from here...
    pub start: String,
    /// ...until here (`HH:MM`, exclusive); before `start` means the quiet hours span midnight.
    pub end: String,
    /// The user's offset from UTC, `+08:00` or `-05:30`; `+00:00` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utc_offset: Option<String>,
}

/// What a user does not want pushed through the vendors (APNs, FCM, Web Push). Muted messages
/// are still stored and delivered to live connections; only the vendor push is left out.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    /// Components whose messages are not pushed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub muted_components: Vec<String>,
    /// Channels not used: `apns`, `fcm`, `webpush`, `email`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub muted_channels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<QuietHours>,
    /// The user's own channel chain, used for messages that do not name their `channels`
    /// (same form as a message's: `["push", {"channel": "email", "after": "30m"}]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<ChannelChoice>,
}

/// `PUT /api/v1/users/{user}/preferences` (admin) and `PUT /api/v1/me/preferences` (client
/// token): replaces the user's preferences.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferencesRequest {
    /// Tenant (admin route only; a client's app is its token's); `default` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(default)]
    pub muted_components: Vec<String>,
    #[serde(default)]
    pub muted_channels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<QuietHours>,
    /// The user's own channel chain for messages that do not name their `channels`.
    #[serde(default)]
    pub channels: Vec<ChannelChoice>,
}

/// A user's preferences, as stored.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPreferences {
    pub app: String,
    pub user: String,
    pub muted_components: Vec<String>,
    pub muted_channels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<QuietHours>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<ChannelChoice>,
}
