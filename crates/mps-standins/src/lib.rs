//! Local stand-ins for the push vendors mps talks to on the internet, for tests. Each checks the
//! real protocol strictly, so that a client passing them would pass the real service: TLS,
//! HTTP/2, JWT signatures and claims, headers, payload shapes and limits, and for Web Push the
//! encryption, by decrypting every message.
//!
//! Layout:
//! - [`server`]: the TLS listener (a throwaway CA written as PEM for the client's `ca_file`),
//!   ALPN, HTTP/2, and [`server::Traffic`] (connections, requests, requests in flight, a gate
//!   that holds requests).
//! - [`apns`]: APNs provider API with token-based authentication.
//! - [`fcm`]: Google's OAuth2 token endpoint and FCM HTTP v1 `messages:send`.
//! - [`webpush`]: a Web Push service (RFC 8030, VAPID RFC 8292) with browser-side subscriptions.
//! - [`ece`]: the browser's side of RFC 8291 `aes128gcm` decryption.
//! - [`keys`]: credentials as the vendors issue them (`.p8`, service-account JSON, VAPID PEM).
//!
//! Every stand-in can be told to answer given errors (per device, or the next few requests),
//! records what it accepted, and lists the requests it refused for breaking the protocol
//! (`violations()`), which a passing test expects to be empty.

pub mod apns;
pub mod ece;
pub mod fcm;
pub mod keys;
pub mod server;
pub mod webpush;

pub use apns::{ApnsPush, ApnsReason, ApnsStandIn};
pub use fcm::{FcmError, FcmPush, FcmStandIn};
pub use keys::{ApnsKey, ServiceAccount, VapidKey};
pub use server::Traffic;
pub use webpush::{Subscription, WebPushAnswer, WebPushDelivery, WebPushStandIn};

/// Seconds since the Unix epoch.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}
