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
//! [`webpush`] are the vendor clients, built from the configuration here
//! ([`Pushers::from_config`]); `vendors.rs` holds what they share (HTTPS client, retries,
//! concurrency limit, metrics). The configuration types are in [`crate::config`]. What goes on
//! the wire: docs/push.md.

pub mod apns;
pub mod devices;
pub mod fallback;
pub mod fcm;
mod vendors;
pub mod webpush;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use vendors::Retry;

use crate::config::{ApnsConfig, FcmConfig, PushConfig, WebPushConfig};
use crate::words::{Device, Way};

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
    /// Builds the vendor clients of every app in `[push.apps]`. Reads and checks every key
    /// file now (signing a token with each key), so bad credentials stop the server at start
    /// with the offending setting named, not at the first push.
    pub fn from_config(config: &PushConfig) -> anyhow::Result<Pushers> {
        anyhow::ensure!(config.attempts >= 1, "push.attempts must be at least 1");
        anyhow::ensure!(
            config.concurrency >= 1,
            "push.concurrency must be at least 1"
        );
        let [apns_retry, fcm_retry, webpush_retry] = Way::ALL.map(|way| Retry::new(way, config));
        let mut pushers = Pushers::default();
        for (app, vendors) in &config.apps {
            if let Some(apns) = &vendors.apns {
                let client = apns::Apns::new(apns, apns_retry.clone(), config)
                    .with_context(|| format!("[push.apps.{app}.apns]"))?;
                pushers.insert(app, Arc::new(client));
            }
            if let Some(fcm) = &vendors.fcm {
                let client = fcm::Fcm::new(fcm, fcm_retry.clone(), config)
                    .with_context(|| format!("[push.apps.{app}.fcm]"))?;
                pushers.insert(app, Arc::new(client));
            }
            if let Some(webpush) = &vendors.webpush {
                let client = webpush::WebPush::new(webpush, webpush_retry.clone(), config)
                    .with_context(|| format!("[push.apps.{app}.webpush]"))?;
                pushers.set_vapid_public_key(app, client.public_key().to_owned());
                pushers.insert(app, Arc::new(client));
            }
        }
        Ok(pushers)
    }

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
