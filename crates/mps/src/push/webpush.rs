//! Web Push client: RFC 8030 delivery to the subscription's push service, the body encrypted
//! for the browser with RFC 8291 `aes128gcm` (the `web-push-native` crate, pure Rust), and the
//! sender identified with VAPID (RFC 8292, an ES256 JWT per push-service origin).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::vendors::{self, Attempt, Retry, unix_now};
use super::{Device, Notification, Outcome, Priority, PushConfig, Vendor, Way, WebPushConfig};

/// Largest encrypted body every push service takes (RFC 8030 section 7.2).
pub const MAX_BODY: usize = 4096;
/// What `aes128gcm` adds to the plaintext of a single record: the header (salt, record size,
/// key id length, the 65-byte sender key), the padding delimiter and the AEAD tag.
const OVERHEAD: usize = 16 + 4 + 1 + 65 + 1 + 16;
/// Largest plaintext that fits in [`MAX_BODY`].
pub const MAX_PLAINTEXT: usize = MAX_BODY - OVERHEAD;
/// VAPID tokens are signed for 12 hours (RFC 8292 allows 24) and replaced after 6.
const VAPID_LIFETIME: u64 = 12 * 3600;
const VAPID_RENEW: u64 = 6 * 3600;
/// The longest `TTL` sent: 28 days, what the large push services keep at most.
const MAX_TTL: u64 = 28 * 24 * 3600;

/// A browser's push subscription, as `PushSubscription.toJSON()` gives it (the device's token).
#[derive(Debug, Clone)]
pub struct Subscription {
    pub endpoint: reqwest::Url,
    /// The browser's P-256 public key (`keys.p256dh`).
    pub p256dh: p256::PublicKey,
    /// The authentication secret (`keys.auth`), 16 bytes.
    pub auth: [u8; 16],
}

#[derive(Deserialize)]
struct SubscriptionJson {
    endpoint: String,
    keys: KeysJson,
}

#[derive(Deserialize)]
struct KeysJson {
    p256dh: String,
    auth: String,
}

impl Subscription {
    /// Parses and checks a subscription JSON: an `https` endpoint, a P-256 point and a 16-byte
    /// secret (base64url, padded or not). The device side checks registrations with this too.
    pub fn parse(json: &str) -> Result<Subscription, String> {
        let raw: SubscriptionJson =
            serde_json::from_str(json).map_err(|e| format!("not a subscription JSON: {e}"))?;
        let endpoint = reqwest::Url::parse(&raw.endpoint)
            .map_err(|e| format!("endpoint {:?}: {e}", raw.endpoint))?;
        if endpoint.scheme() != "https" || endpoint.host_str().is_none() {
            return Err(format!("endpoint {:?} is not an https URL", raw.endpoint));
        }
        let p256dh = decode(&raw.keys.p256dh)
            .and_then(|bytes| p256::PublicKey::from_sec1_bytes(&bytes).ok())
            .ok_or("keys.p256dh is not a base64url P-256 public key")?;
        let auth = decode(&raw.keys.auth)
            .and_then(|bytes| <[u8; 16]>::try_from(bytes).ok())
            .ok_or("keys.auth is not a base64url 16-byte secret")?;
        Ok(Subscription {
            endpoint,
            p256dh,
            auth,
        })
    }

    /// The push service's origin, the VAPID audience.
    fn origin(&self) -> String {
        self.endpoint.origin().ascii_serialization()
    }
}

/// Whether `allowed_hosts` admits a subscription endpoint's host: a name admits itself and its
/// subdomains; an empty list admits any host. Registrations are checked with it too.
pub fn host_allowed(allowed_hosts: &[String], host: &str) -> bool {
    allowed_hosts.is_empty()
        || allowed_hosts.iter().any(|allowed| {
            host == allowed
                || host
                    .strip_suffix(allowed.as_str())
                    .is_some_and(|rest| rest.ends_with('.'))
        })
}

fn decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .or_else(|_| URL_SAFE.decode(text))
        .ok()
}

/// The Web Push client of one app (one VAPID key).
pub struct WebPush {
    http: reqwest::Client,
    key: EncodingKey,
    /// The VAPID public key, uncompressed point, base64url: `k=` and the pages'
    /// `applicationServerKey`.
    public_key: String,
    subject: String,
    allowed_hosts: Vec<String>,
    /// Signed VAPID tokens per push-service origin, with their `iat`.
    tokens: Mutex<HashMap<String, (Arc<str>, u64)>>,
    retry: Retry,
}

#[derive(Serialize)]
struct VapidClaims<'a> {
    aud: &'a str,
    exp: u64,
    sub: &'a str,
}

impl WebPush {
    pub(crate) fn new(
        config: &WebPushConfig,
        retry: Retry,
        push: &PushConfig,
    ) -> anyhow::Result<WebPush> {
        let path = &config.vapid_key_file;
        let pem = vendors::read_file("vapid_key_file", path)?;
        let secret = p256::SecretKey::from_sec1_pem(&pem)
            .or_else(|_| p256::pkcs8::DecodePrivateKey::from_pkcs8_pem(&pem))
            .map_err(|_| {
                anyhow::anyhow!(
                    "vapid_key_file {} is not a P-256 private key in PEM (SEC1 or PKCS#8)",
                    path.display()
                )
            })?;
        anyhow::ensure!(
            config.subject.starts_with("mailto:") || config.subject.starts_with("https:"),
            "subject {:?} must be a mailto: or https: URL",
            config.subject
        );
        let der =
            p256::pkcs8::EncodePrivateKey::to_pkcs8_der(&secret).context("encoding the key")?;
        let client = WebPush {
            http: vendors::http_client(config.ca_file.as_deref(), false, push)?,
            key: EncodingKey::from_ec_der(der.as_bytes()),
            public_key: URL_SAFE_NO_PAD
                .encode(secret.public_key().to_encoded_point(false).as_bytes()),
            subject: config.subject.clone(),
            allowed_hosts: config.allowed_hosts.clone(),
            tokens: Mutex::new(HashMap::new()),
            retry,
        };
        client
            .vapid("https://push.example")
            .with_context(|| format!("signing with {}", path.display()))?;
        Ok(client)
    }

    /// The VAPID public key, for pages to subscribe with.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// `Authorization` for pushes to `origin`, reusing the token signed for it.
    fn vapid(&self, origin: &str) -> Result<String, jsonwebtoken::errors::Error> {
        let now = unix_now();
        let mut tokens = self.tokens.lock();
        let jwt = match tokens.get(origin) {
            Some((jwt, iat)) if now.saturating_sub(*iat) < VAPID_RENEW => jwt.clone(),
            _ => {
                let claims = VapidClaims {
                    aud: origin,
                    exp: now + VAPID_LIFETIME,
                    sub: &self.subject,
                };
                let jwt: Arc<str> =
                    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.key)?
                        .into();
                tokens.insert(origin.to_owned(), (jwt.clone(), now));
                metrics::counter!("mps_push_credentials_total", "way" => "webpush").increment(1);
                jwt
            }
        };
        Ok(format!("vapid t={jwt}, k={}", self.public_key))
    }

    fn allowed(&self, subscription: &Subscription) -> bool {
        host_allowed(
            &self.allowed_hosts,
            subscription.endpoint.host_str().unwrap_or_default(),
        )
    }

    async fn attempt(
        &self,
        subscription: &Subscription,
        note: &Notification,
        body: &[u8],
    ) -> Attempt {
        let authorization = match self.vapid(&subscription.origin()) {
            Ok(authorization) => authorization,
            Err(e) => return Attempt::Failed(format!("signing the VAPID token: {e}")),
        };
        let mut request = self
            .http
            .post(subscription.endpoint.clone())
            .header("authorization", authorization)
            .header("ttl", vendors::ttl_secs(note).min(MAX_TTL).to_string())
            .header(
                "urgency",
                match note.priority {
                    Priority::High => "high",
                    Priority::Normal => "normal",
                },
            )
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .body(body.to_vec());
        if let Some(collapse) = &note.collapse_id {
            request = request.header("topic", topic(collapse));
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                return Attempt::Retry {
                    reason: format!("Web Push request: {e}"),
                    after: None,
                };
            }
        };
        let status = response.status();
        let described = status.to_string();
        match status.as_u16() {
            200..=299 => Attempt::Sent,
            404 | 410 => Attempt::Gone(described),
            429 | 500..=599 => Attempt::Retry {
                reason: described,
                after: vendors::retry_after(response.headers()),
            },
            _ => {
                let detail = response.text().await.unwrap_or_default();
                Attempt::Failed(format!("{described} {}", detail.trim()).trim().to_owned())
            }
        }
    }
}

#[async_trait]
impl Vendor for WebPush {
    fn way(&self) -> Way {
        Way::Webpush
    }

    async fn push(&self, device: &Device, note: &Notification) -> Outcome {
        let subscription = match Subscription::parse(&device.token) {
            Ok(subscription) => subscription,
            Err(reason) => {
                return self.retry.settle(Outcome::Gone {
                    reason: format!("invalid subscription: {reason}"),
                });
            }
        };
        if !self.allowed(&subscription) {
            return self.retry.settle(Outcome::Gone {
                reason: format!(
                    "endpoint host {} is not in allowed_hosts",
                    subscription.endpoint.host_str().unwrap_or_default()
                ),
            });
        }
        let plaintext = plaintext(note);
        if plaintext.len() > MAX_PLAINTEXT {
            return self.retry.settle(Outcome::Failed {
                reason: format!(
                    "payload too large: {} bytes (Web Push takes {MAX_PLAINTEXT} before encryption)",
                    plaintext.len()
                ),
            });
        }
        let auth = web_push_native::Auth::from(subscription.auth);
        let body = match web_push_native::encrypt(plaintext, &subscription.p256dh, &auth) {
            Ok(body) => body,
            Err(e) => {
                return self.retry.settle(Outcome::Failed {
                    reason: format!("encrypting: {e}"),
                });
            }
        };
        self.retry
            .run(|| self.attempt(&subscription, note, &body))
            .await
    }
}

/// The body before encryption: the live push frame (`Type` 3), so a service worker reads it
/// as a page reads a WebSocket frame (`Message.EventData.ext`).
#[derive(Serialize)]
struct Frame<'a> {
    #[serde(rename = "Type")]
    kind: u8,
    #[serde(rename = "Message")]
    message: FrameMessage<'a>,
}

#[derive(Serialize)]
struct FrameMessage<'a> {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    #[serde(rename = "type")]
    kind: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    component: Option<&'a str>,
    #[serde(rename = "EventData")]
    event_data: EventData<'a>,
}

#[derive(Serialize)]
struct EventData<'a> {
    ext: &'a RawValue,
}

fn plaintext(note: &Notification) -> Vec<u8> {
    let frame = Frame {
        kind: mps_proto::frame::kind::PUSH,
        message: FrameMessage {
            id: note.id.to_string(),
            title: note.title.as_deref(),
            kind: note.kind,
            component: note.component.as_deref(),
            event_data: EventData { ext: &note.content },
        },
    };
    // Plain structs and valid raw JSON: serializing cannot fail.
    serde_json::to_vec(&frame).unwrap_or_default()
}

/// The `Topic` header: the collapse key itself when it is at most 32 base64url characters,
/// otherwise 32 characters of its SHA-256 in base64url.
fn topic(key: &str) -> String {
    let fits = !key.is_empty()
        && key.len() <= 32
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if fits {
        key.to_owned()
    } else {
        use sha2::Digest;
        URL_SAFE_NO_PAD.encode(&sha2::Sha256::digest(key.as_bytes())[..24])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_fit_the_header_rules() {
        assert_eq!(topic("alarm-7"), "alarm-7");
        for key in ["site 1/room 2", &"x".repeat(33)] {
            let t = topic(key);
            assert_eq!(t.len(), 32);
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
        }
    }

    #[test]
    fn subscriptions_are_checked() {
        let ok = r#"{"endpoint":"https://push.example/abc","expirationTime":null,"keys":{"p256dh":"BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4","auth":"BTBZMqHH6r4Tts7J_aSIgg=="}}"#;
        let subscription = Subscription::parse(ok).unwrap();
        assert_eq!(subscription.origin(), "https://push.example");
        for bad in [
            "{}",
            &ok.replace("https://", "http://"),
            &ok.replace("BCVx", "AAAA"),
            &ok.replace("BTBZMqHH6r4Tts7J_aSIgg==", "BTBZ"),
        ] {
            assert!(Subscription::parse(bad).is_err(), "{bad}");
        }
    }
}
