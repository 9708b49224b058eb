//! Push through the vendors' channels (APNs, FCM, Web Push) to devices that hold no live
//! connection: iOS cannot keep a socket open in the background and Android kills idle apps.
//!
//! Two halves meet here:
//! - the vendor clients ([`Vendor`]), one per app and way, built from [`PushConfig`] into
//!   [`Pushers`]; each retries 429/5xx itself with a bounded exponential backoff and answers one
//!   [`Outcome`];
//! - the devices (registrations kept by the store) and the engine's fallback, which picks the
//!   registrations of an offline recipient and hands each to its vendor.
//!
//! Modules: [`devices`] checks, opens and closes push modes (API and protocol alike);
//! [`fallback`] is the engine's bounded background queue of vendor pushes; [`apns`], [`fcm`] and
//! [`webpush`] are the vendor clients; `vendors.rs` builds them from the configuration
//! ([`Pushers::from_config`]) and holds what they share (HTTPS client, retries, concurrency
//! limit, metrics). What goes on the wire: docs/push.md.

pub mod apns;
pub mod devices;
pub mod fallback;
pub mod fcm;
mod vendors;
pub mod webpush;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A vendor channel a device can be reached through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Way {
    Apns,
    Fcm,
    Webpush,
}

impl Way {
    pub const ALL: [Way; 3] = [Way::Apns, Way::Fcm, Way::Webpush];

    pub fn as_str(self) -> &'static str {
        match self {
            Way::Apns => "apns",
            Way::Fcm => "fcm",
            Way::Webpush => "webpush",
        }
    }

    pub fn parse(s: &str) -> Option<Way> {
        Way::ALL.into_iter().find(|w| w.as_str() == s)
    }
}

/// One device's registration for one way: where a message for `user` goes when none of the
/// user's connections on this device is live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub app: String,
    pub user: String,
    /// Client type (`ios`, `android`, `bs`...).
    pub agent: String,
    /// The app's own id of the device (the `Client` of its connections).
    pub device: String,
    pub way: Way,
    /// APNs device token (hex), FCM registration token, or the Web Push subscription as JSON
    /// (`{"endpoint": "...", "keys": {"p256dh": "...", "auth": "..."}}`).
    pub token: String,
    /// Components whose messages are pushed; empty means all.
    #[serde(default)]
    pub components: Vec<String>,
    /// Unix ms of the last registration or refresh.
    pub refreshed: i64,
}

/// How urgently a notification should reach the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    #[default]
    High,
    Normal,
}

/// What one message turns into for the vendors: built once per message, shared by all of its
/// devices.
#[derive(Debug, Clone)]
pub struct Notification {
    /// The message id (decimal on the wire).
    pub id: u64,
    pub app: String,
    pub title: Option<String>,
    /// The message's `type`.
    pub kind: i64,
    pub component: Option<String>,
    /// The business content, as sent.
    pub content: Arc<RawValue>,
    /// Unix ms after which the message is worthless (APNs `apns-expiration`, FCM `ttl`, Web
    /// Push `TTL`).
    pub expires: i64,
    /// Replaces an earlier notification with the same key on the device (`apns-collapse-id`,
    /// FCM `collapse_key`, Web Push `Topic`).
    pub collapse_id: Option<String>,
    pub priority: Priority,
    /// The message's shapes for the vendors' notifications (`formats.apns`, `.fcm`,
    /// `.webpush`): a title and content that replace the message's own for that vendor.
    pub formats: BTreeMap<Way, mps_proto::Format>,
}

impl Notification {
    /// The notification as `way`'s vendor gets it: the message's own title and content, or its
    /// shape for that vendor.
    pub fn for_way(&self, way: Way) -> std::borrow::Cow<'_, Notification> {
        let Some(format) = self.formats.get(&way) else {
            return std::borrow::Cow::Borrowed(self);
        };
        let mut shaped = self.clone();
        if let Some(title) = &format.title {
            shaped.title = Some(title.clone());
        }
        if let Some(content) = &format.content {
            shaped.content = Arc::from(content.clone());
        }
        std::borrow::Cow::Owned(shaped)
    }
}

/// What a vendor answered, after the client's own retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the vendor.
    Sent,
    /// The vendor says the token is no longer valid (APNs 410 / `BadDeviceToken`, FCM
    /// `UNREGISTERED`, Web Push 404/410): the registration must be removed at once.
    Gone { reason: String },
    /// This message could not be pushed (payload too large, rejected, retries exhausted); the
    /// registration stays.
    Failed { reason: String },
}

/// A vendor client for one app: APNs, FCM or Web Push.
#[async_trait]
pub trait Vendor: Send + Sync + 'static {
    fn way(&self) -> Way;

    /// Pushes `note` to `device`, retrying what the vendor says is temporary (429, 5xx) with a
    /// bounded exponential backoff. Never panics on any answer.
    async fn push(&self, device: &Device, note: &Notification) -> Outcome;
}

/// The vendor clients of every configured app.
#[derive(Clone, Default)]
pub struct Pushers {
    vendors: BTreeMap<(String, Way), Arc<dyn Vendor>>,
    vapid_public_keys: BTreeMap<String, String>,
}

impl Pushers {
    /// Adds (or replaces) the vendor client of `app` for its way.
    pub fn insert(&mut self, app: &str, vendor: Arc<dyn Vendor>) {
        self.vendors.insert((app.to_owned(), vendor.way()), vendor);
    }

    /// Records the VAPID public key (base64url, uncompressed P-256 point) pages of `app` need
    /// for `PushManager.subscribe`.
    pub fn set_vapid_public_key(&mut self, app: &str, key: String) {
        self.vapid_public_keys.insert(app.to_owned(), key);
    }

    /// The client pushing through `way` for `app`, if that vendor is configured for it.
    pub fn get(&self, app: &str, way: Way) -> Option<&Arc<dyn Vendor>> {
        // Keys are (String, Way); a borrowed lookup would need a custom key type, and this is
        // called once per pushed device, not per delivery.
        self.vendors.get(&(app.to_owned(), way))
    }

    /// Whether any vendor is configured for `app`.
    pub fn any(&self, app: &str) -> bool {
        self.vendors.keys().any(|(a, _)| a == app)
    }

    pub fn vapid_public_key(&self, app: &str) -> Option<&str> {
        self.vapid_public_keys.get(app).map(String::as_str)
    }
}

/// `[push]`: vendor credentials per app and the rules for device data.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// Registrations not refreshed for this many seconds expire (60 days).
    pub expire_after: u64,
    /// Most pushes in flight at once per vendor (APNs, FCM, Web Push) on this node.
    pub concurrency: usize,
    /// Attempts per push for temporary failures (429, 5xx, connection errors), first included.
    pub attempts: u32,
    /// First retry delay, milliseconds; doubled per attempt.
    pub backoff_ms: u64,
    /// Time limit of one request to a vendor (and of connecting), milliseconds.
    pub timeout_ms: u64,
    /// Per-app credentials: `[push.apps.<app>.apns]`, `.fcm`, `.webpush`, and the channels
    /// `.webhook` and `.email`.
    pub apps: BTreeMap<String, AppPush>,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            expire_after: 60 * 24 * 3600,
            concurrency: 64,
            attempts: 4,
            backoff_ms: 200,
            timeout_ms: 10_000,
            apps: BTreeMap::new(),
        }
    }
}

/// The vendors configured for one app.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppPush {
    pub apns: Option<ApnsConfig>,
    pub fcm: Option<FcmConfig>,
    pub webpush: Option<WebPushConfig>,
    /// The webhook channel (crate::channels): directed messages posted to the app's back end.
    pub webhook: Option<crate::channels::WebhookChannelConfig>,
    /// The e-mail channel (crate::channels::email): directed messages mailed through the
    /// app's SMTP relay.
    pub email: Option<crate::channels::email::EmailConfig>,
}

/// APNs with token-based authentication (a `.p8` signing key).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    /// The `.p8` PEM file of the ES256 signing key.
    pub key_file: PathBuf,
    /// The key's id (`kid`).
    pub key_id: String,
    /// The developer team id (`iss`).
    pub team_id: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// `https://api.push.apple.com` (default) or the sandbox; tests point it at a stand-in.
    #[serde(default = "default_apns_endpoint")]
    pub endpoint: String,
    /// Extra PEM root certificate to trust (a local stand-in's).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// Firebase Cloud Messaging HTTP v1 with a service account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    /// The service-account JSON downloaded from the Firebase console.
    pub service_account_file: PathBuf,
    /// `https://fcm.googleapis.com` (default); tests point it at a stand-in.
    #[serde(default = "default_fcm_endpoint")]
    pub endpoint: String,
    /// Overrides the service account's `token_uri`.
    #[serde(default)]
    pub token_uri: Option<String>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// Web Push (RFC 8030) with `aes128gcm` payload encryption and VAPID.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebPushConfig {
    /// PEM file of the VAPID P-256 private key.
    pub vapid_key_file: PathBuf,
    /// `mailto:` or `https:` contact of the sender (the VAPID `sub`).
    pub subject: String,
    /// Hosts subscription endpoints may point at (a name also admits its subdomains); empty
    /// admits any host. Endpoints come from browsers, so this keeps mps from posting to
    /// arbitrary addresses.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Extra PEM root certificate to trust (a local push service's).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_apns_endpoint() -> String {
    "https://api.push.apple.com".into()
}

fn default_fcm_endpoint() -> String {
    "https://fcm.googleapis.com".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vendor_gets_its_shape_of_the_notification() {
        let raw = |text: &str| RawValue::from_string(text.into()).unwrap();
        let note = Notification {
            id: 1,
            app: "default".into(),
            title: Some("Fire".into()),
            kind: 0,
            component: None,
            content: Arc::from(raw(r#"{"room":"2-17"}"#)),
            expires: 0,
            collapse_id: None,
            priority: Priority::High,
            formats: BTreeMap::from([(
                Way::Apns,
                mps_proto::Format {
                    title: Some("Fire in 2-17".into()),
                    content: Some(raw(r#"{"r":1}"#)),
                },
            )]),
        };
        let apns = note.for_way(Way::Apns);
        assert_eq!(apns.title.as_deref(), Some("Fire in 2-17"));
        assert_eq!(apns.content.get(), r#"{"r":1}"#);
        let fcm = note.for_way(Way::Fcm);
        assert!(matches!(fcm, std::borrow::Cow::Borrowed(_)));
        assert_eq!(fcm.title.as_deref(), Some("Fire"));
    }
}
