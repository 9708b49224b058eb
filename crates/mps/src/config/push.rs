//! `[push]`: the vendors' credentials per app and the rules for device data, read by the `push`
//! module, and the other channels of each app (`.webhook`, `.email`), read by `channels`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::WebhookConfig;

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
    pub webhook: Option<WebhookChannelConfig>,
    /// The e-mail channel (crate::channels::email): directed messages mailed through the
    /// app's SMTP relay.
    pub email: Option<EmailConfig>,
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

/// `[push.apps.<app>.webhook]`: where the app's directed messages go through the webhook
/// channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookChannelConfig {
    /// `http://` or `https://` URL that receives one `POST` per recipient.
    pub url: String,
    /// Key of the HMAC-SHA256 signature (as for webhooks); share it with the receiver.
    pub secret: String,
    /// Requests waiting to be sent; past this, new ones are dropped and counted.
    pub queue: usize,
    /// Tries per request, the first included, for connection errors, timeouts, 408, 429 and
    /// 5xx answers.
    pub attempts: u32,
    /// Wait before the first retry, milliseconds; doubled per retry, with jitter.
    pub backoff_ms: u64,
    /// Longest wait between retries, milliseconds.
    pub max_backoff_ms: u64,
    /// Seconds one request may take.
    pub timeout: u64,
}

impl Default for WebhookChannelConfig {
    fn default() -> Self {
        let hook = WebhookConfig::default();
        WebhookChannelConfig {
            url: String::new(),
            secret: String::new(),
            queue: hook.queue,
            attempts: hook.attempts,
            backoff_ms: hook.backoff_ms,
            max_backoff_ms: hook.max_backoff_ms,
            timeout: hook.timeout,
        }
    }
}

/// How the connection to the relay is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain connection upgraded with STARTTLS, which the relay must offer (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption: only for a relay on the same host or network.
    None,
}

/// `[push.apps.<app>.email]`: the SMTP relay the app's e-mails go through.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailConfig {
    /// The relay's host name (also the name its TLS certificate must carry).
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// Credentials for SMTP AUTH (PLAIN or LOGIN), when the relay wants them.
    pub username: Option<String>,
    pub password: Option<String>,
    /// The sender, `Shop <noreply@shop.example.com>` or a bare address.
    pub from: String,
    /// The subject: `${title}`, `${app}`, `${id}`, `${user}`, `${component}` and `${sender}` are
    /// replaced by the message's (an absent one by nothing).
    pub subject: String,
    /// E-mails waiting to be sent; past this, the step is tried again later.
    pub queue: usize,
    /// Tries per e-mail, the first included, for temporary failures.
    pub attempts: u32,
    /// Wait before the first retry, milliseconds; doubled per retry, with jitter.
    pub backoff_ms: u64,
    /// Longest wait between retries, milliseconds.
    pub max_backoff_ms: u64,
    /// Seconds one SMTP command may take.
    pub timeout: u64,
}

impl Default for EmailConfig {
    fn default() -> Self {
        EmailConfig {
            host: String::new(),
            port: 587,
            tls: TlsMode::Starttls,
            username: None,
            password: None,
            from: String::new(),
            subject: "${title}".into(),
            queue: 1024,
            attempts: 4,
            backoff_ms: 1000,
            max_backoff_ms: 60_000,
            timeout: 30,
        }
    }
}
