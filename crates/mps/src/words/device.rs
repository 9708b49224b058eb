//! The devices that vendor push reaches: the vendor channels ([`Way`]) and one device's
//! registration ([`Device`]), spoken of by push, the store, preferences and formats.

use serde::{Deserialize, Serialize};

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
