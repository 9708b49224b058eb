//! APNs client: the provider API over HTTP/2 with token-based authentication (an ES256 JWT
//! signed with the team's `.p8` key, renewed every 50 minutes, or at once when APNs calls it
//! expired).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::DecodePrivateKey;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::vendors::{self, Attempt, Retry, unix_now};
use super::{ApnsConfig, Device, Notification, Outcome, Priority, PushConfig, Vendor, Way};

/// Largest payload APNs takes for a regular notification.
pub const MAX_PAYLOAD: usize = 4096;
/// Age at which a provider token is replaced: APNs refuses tokens older than an hour and
/// updates more often than every 20 minutes.
const TOKEN_LIFETIME: u64 = 50 * 60;
/// Longest `apns-collapse-id` APNs takes, in bytes.
const MAX_COLLAPSE_ID: usize = 64;

/// The APNs client of one app: one HTTP/2 connection pool, one provider token.
pub struct Apns {
    http: reqwest::Client,
    /// `{endpoint}/3/device/`.
    base: String,
    /// The bundle id, sent as `apns-topic`.
    topic: String,
    token: ProviderToken,
    retry: Retry,
}

impl Apns {
    pub(crate) fn new(
        config: &ApnsConfig,
        retry: Retry,
        push: &PushConfig,
    ) -> anyhow::Result<Apns> {
        let pem = vendors::read_file("key_file", &config.key_file)?;
        let key: p256::SecretKey = DecodePrivateKey::from_pkcs8_pem(&pem).with_context(|| {
            format!(
                "key_file {} is not a PKCS#8 P-256 key (an APNs .p8 file)",
                config.key_file.display()
            )
        })?;
        anyhow::ensure!(!config.key_id.is_empty(), "key_id is empty");
        anyhow::ensure!(!config.team_id.is_empty(), "team_id is empty");
        anyhow::ensure!(!config.topic.is_empty(), "topic (the bundle id) is empty");
        let der = p256::pkcs8::EncodePrivateKey::to_pkcs8_der(&key).context("encoding the key")?;
        let token = ProviderToken {
            key: EncodingKey::from_ec_der(der.as_bytes()),
            key_id: config.key_id.clone(),
            team_id: config.team_id.clone(),
            current: Mutex::new(None),
        };
        token
            .get()
            .map_err(|e| anyhow::anyhow!("signing a provider token: {e}"))?;
        Ok(Apns {
            http: vendors::http_client(config.ca_file.as_deref(), true, push)?,
            base: format!("{}/3/device/", config.endpoint.trim_end_matches('/')),
            topic: config.topic.clone(),
            token,
            retry,
        })
    }

    async fn attempt(&self, token: &str, note: &Notification, payload: &[u8]) -> Attempt {
        let jwt = match self.token.get() {
            Ok(jwt) => jwt,
            Err(e) => return Attempt::Failed(format!("signing a provider token: {e}")),
        };
        let mut request = self
            .http
            .post(format!("{}{token}", self.base))
            .header("authorization", format!("bearer {jwt}"))
            .header("apns-topic", &self.topic)
            .header("apns-push-type", "alert")
            .header(
                "apns-priority",
                match note.priority {
                    Priority::High => "10",
                    Priority::Normal => "5",
                },
            )
            .header("apns-expiration", (note.expires.max(0) / 1000).to_string())
            .header("content-type", "application/json")
            .body(payload.to_vec());
        if let Some(collapse) = &note.collapse_id {
            request = request.header("apns-collapse-id", collapse_id(collapse));
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                return Attempt::Retry {
                    reason: format!("APNs request: {e}"),
                    after: None,
                };
            }
        };
        let status = response.status();
        if status.is_success() {
            return Attempt::Sent;
        }
        let after = vendors::retry_after(response.headers());
        let reason = response
            .json::<ApnsError>()
            .await
            .map(|e| e.reason)
            .unwrap_or_default();
        let described = format!("{} {reason}", status.as_u16());
        match (status.as_u16(), reason.as_str()) {
            (410, _) | (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => {
                Attempt::Gone(described)
            }
            (403, "ExpiredProviderToken") => {
                self.token.renew(&jwt).await;
                Attempt::Renewed(described)
            }
            (429, _) | (500..=599, _) => Attempt::Retry {
                reason: described,
                after,
            },
            _ => Attempt::Failed(described),
        }
    }
}

#[async_trait]
impl Vendor for Apns {
    fn way(&self) -> Way {
        Way::Apns
    }

    async fn push(&self, device: &Device, note: &Notification) -> Outcome {
        let token = device.token.trim();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return self.retry.settle(Outcome::Gone {
                reason: "BadDeviceToken: the device token is not hex".into(),
            });
        }
        let payload = payload(note);
        if payload.len() > MAX_PAYLOAD {
            return self.retry.settle(Outcome::Failed {
                reason: format!(
                    "payload too large: {} bytes (APNs takes {MAX_PAYLOAD})",
                    payload.len()
                ),
            });
        }
        self.retry.run(|| self.attempt(token, note, &payload)).await
    }
}

/// APNs' error body.
#[derive(Deserialize)]
struct ApnsError {
    reason: String,
}

/// The JSON payload: `aps.alert` for the lock screen, `mps` for the app.
#[derive(Serialize)]
struct Payload<'a> {
    aps: Aps<'a>,
    mps: Fields<'a>,
}

#[derive(Serialize)]
struct Aps<'a> {
    alert: Alert<'a>,
}

#[derive(Serialize)]
struct Alert<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    body: String,
}

/// The message itself, for the app to show or fetch it.
#[derive(Serialize)]
struct Fields<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    component: Option<&'a str>,
    ext: &'a RawValue,
}

fn payload(note: &Notification) -> Vec<u8> {
    let (title, body) = vendors::alert(note);
    let payload = Payload {
        aps: Aps {
            alert: Alert { title, body },
        },
        mps: Fields {
            id: note.id.to_string(),
            kind: note.kind,
            component: note.component.as_deref(),
            ext: &note.content,
        },
    };
    // Plain structs and valid raw JSON: serializing cannot fail.
    serde_json::to_vec(&payload).unwrap_or_default()
}

/// `apns-collapse-id`: the key itself, or its SHA-256 in hex (64 bytes) when it is longer than
/// APNs takes.
fn collapse_id(key: &str) -> String {
    if key.len() <= MAX_COLLAPSE_ID {
        key.to_owned()
    } else {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    }
}

/// The provider token: signed once, reused until it is [`TOKEN_LIFETIME`] old.
struct ProviderToken {
    key: EncodingKey,
    key_id: String,
    team_id: String,
    current: Mutex<Option<Signed>>,
}

struct Signed {
    jwt: Arc<str>,
    iat: u64,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
}

impl ProviderToken {
    /// The current token, signing a new one when there is none or it is too old.
    fn get(&self) -> Result<Arc<str>, jsonwebtoken::errors::Error> {
        let now = unix_now();
        let mut current = self.current.lock();
        if let Some(signed) = &*current
            && now.saturating_sub(signed.iat) < TOKEN_LIFETIME
        {
            return Ok(signed.jwt.clone());
        }
        let jwt = self.sign(now)?;
        *current = Some(Signed {
            jwt: jwt.clone(),
            iat: now,
        });
        metrics::counter!("mps_push_credentials_total", "way" => "apns").increment(1);
        Ok(jwt)
    }

    /// APNs called `used` expired: drop it, unless a concurrent push already replaced it.
    /// Tokens are signed with whole seconds, so this waits for the next second to make sure
    /// the replacement differs.
    async fn renew(&self, used: &str) {
        let iat = match &*self.current.lock() {
            Some(signed) if &*signed.jwt == used => signed.iat,
            _ => return,
        };
        let now = crate::id::now_ms();
        let next = (iat + 1) * 1000;
        if now < next {
            tokio::time::sleep(Duration::from_millis(next - now)).await;
        }
        let mut current = self.current.lock();
        if current.as_ref().is_some_and(|signed| &*signed.jwt == used) {
            *current = None;
        }
    }

    fn sign(&self, iat: u64) -> Result<Arc<str>, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = None;
        header.kid = Some(self.key_id.clone());
        let claims = Claims {
            iss: &self.team_id,
            iat,
        };
        Ok(jsonwebtoken::encode(&header, &claims, &self.key)?.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_collapse_ids_are_hashed_to_64_bytes() {
        assert_eq!(collapse_id("alarm-7"), "alarm-7");
        let long = "x".repeat(65);
        assert_eq!(collapse_id(&long).len(), 64);
        assert_ne!(collapse_id(&long), collapse_id(&"y".repeat(65)));
    }
}
