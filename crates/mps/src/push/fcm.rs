//! FCM HTTP v1 client: an OAuth2 access token from the service account (JWT bearer grant,
//! RS256), cached until shortly before it expires, then one `messages:send` per device token
//! over a reused HTTP/2 connection.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use super::vendors::{self, Attempt, Retry, unix_now};
use super::{Device, FcmConfig, Notification, Outcome, Priority, PushConfig, Vendor, Way};

/// Largest notification plus data FCM takes, in bytes of JSON.
pub const MAX_PAYLOAD: usize = 4096;
/// The OAuth2 scope of `messages:send`.
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// The longest `ttl` FCM takes: 28 days.
const MAX_TTL: u64 = 28 * 24 * 3600;

/// The FCM client of one app (one Firebase project).
pub struct Fcm {
    http: reqwest::Client,
    /// `{endpoint}/v1/projects/{project_id}/messages:send`.
    send_url: String,
    tokens: AccessTokens,
    retry: Retry,
}

/// The fields of the service-account JSON that matter here.
#[derive(Deserialize)]
struct ServiceAccount {
    project_id: String,
    private_key_id: String,
    private_key: String,
    client_email: String,
    token_uri: String,
}

impl Fcm {
    pub(crate) fn new(config: &FcmConfig, retry: Retry, push: &PushConfig) -> anyhow::Result<Fcm> {
        let path = &config.service_account_file;
        let text = vendors::read_file("service_account_file", path)?;
        let account: ServiceAccount = serde_json::from_str(&text).with_context(|| {
            format!(
                "service_account_file {} is not a service-account JSON",
                path.display()
            )
        })?;
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes()).with_context(|| {
            format!(
                "service_account_file {}: private_key is not an RSA PEM key",
                path.display()
            )
        })?;
        let http = vendors::http_client(config.ca_file.as_deref(), false, push)?;
        let tokens = AccessTokens {
            http: http.clone(),
            token_uri: config.token_uri.clone().unwrap_or(account.token_uri),
            client_email: account.client_email,
            key_id: account.private_key_id,
            key,
            current: Mutex::new(Arc::new(OnceCell::new())),
        };
        tokens
            .assertion()
            .with_context(|| format!("signing with the key of {}", path.display()))?;
        Ok(Fcm {
            http,
            send_url: format!(
                "{}/v1/projects/{}/messages:send",
                config.endpoint.trim_end_matches('/'),
                account.project_id
            ),
            tokens,
            retry,
        })
    }

    async fn attempt(&self, body: &[u8]) -> Attempt {
        let access_token = match self.tokens.get().await {
            Ok(token) => token,
            Err(TokenError::Temporary(reason)) => {
                return Attempt::Retry {
                    reason,
                    after: None,
                };
            }
            Err(TokenError::Refused(reason)) => return Attempt::Failed(reason),
        };
        let response = self
            .http
            .post(&self.send_url)
            .bearer_auth(&access_token)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(e) => {
                return Attempt::Retry {
                    reason: format!("FCM request: {e}"),
                    after: None,
                };
            }
        };
        let status = response.status();
        if status.is_success() {
            return Attempt::Sent;
        }
        let after = vendors::retry_after(response.headers());
        let error = response
            .json::<GoogleError>()
            .await
            .map(|e| e.error)
            .unwrap_or_default();
        let code = error.fcm_code().unwrap_or(error.status.as_str()).to_owned();
        let described = format!("{} {code}", status.as_u16());
        match (status.as_u16(), code.as_str()) {
            (_, "UNREGISTERED") => Attempt::Gone(described),
            (401, "THIRD_PARTY_AUTH_ERROR") => Attempt::Failed(described),
            (401, _) => {
                self.tokens.invalidate(&access_token);
                Attempt::Renewed(described)
            }
            (429, _) | (500..=599, _) | (_, "QUOTA_EXCEEDED" | "UNAVAILABLE" | "INTERNAL") => {
                Attempt::Retry {
                    reason: described,
                    after,
                }
            }
            _ => Attempt::Failed(format!("{described}: {}", error.message)),
        }
    }
}

#[async_trait]
impl Vendor for Fcm {
    fn way(&self) -> Way {
        Way::Fcm
    }

    async fn push(&self, device: &Device, note: &Notification) -> Outcome {
        if device.token.is_empty() {
            return self.retry.settle(Outcome::Gone {
                reason: "empty registration token".into(),
            });
        }
        let (body, size) = request_body(&device.token, note);
        if size > MAX_PAYLOAD {
            return self.retry.settle(Outcome::Failed {
                reason: format!("payload too large: {size} bytes (FCM takes {MAX_PAYLOAD})"),
            });
        }
        self.retry.run(|| self.attempt(&body)).await
    }
}

/// Google's error JSON: `{"error": {"code", "message", "status", "details": [...]}}`.
#[derive(Deserialize)]
struct GoogleError {
    error: ErrorBody,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<ErrorDetail>,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(rename = "@type", default)]
    kind: String,
    #[serde(rename = "errorCode")]
    error_code: Option<String>,
}

impl ErrorBody {
    /// The FCM error code (`UNREGISTERED`, `QUOTA_EXCEEDED`...) from the details.
    fn fcm_code(&self) -> Option<&str> {
        self.details
            .iter()
            .find(|d| d.kind == "type.googleapis.com/google.firebase.fcm.v1.FcmError")
            .and_then(|d| d.error_code.as_deref())
    }
}

#[derive(Serialize)]
struct SendRequest<'a> {
    message: Message<'a>,
}

#[derive(Serialize)]
struct Message<'a> {
    token: &'a str,
    notification: FcmNotification<'a>,
    data: BTreeMap<&'static str, String>,
    android: Android,
}

#[derive(Serialize)]
struct FcmNotification<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    body: String,
}

#[derive(Serialize)]
struct Android {
    priority: &'static str,
    ttl: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    collapse_key: Option<String>,
}

/// The `messages:send` body for `token`, and the size FCM counts against its limit (the JSON of
/// `notification` and `data`).
fn request_body(token: &str, note: &Notification) -> (Vec<u8>, usize) {
    let (title, body) = vendors::alert(note);
    let mut data = BTreeMap::from([
        ("id", note.id.to_string()),
        ("type", note.kind.to_string()),
        ("ext", note.content.get().to_owned()),
    ]);
    if let Some(component) = &note.component {
        data.insert("component", component.clone());
    }
    let request = SendRequest {
        message: Message {
            token,
            notification: FcmNotification { title, body },
            data,
            android: Android {
                priority: match note.priority {
                    Priority::High => "HIGH",
                    Priority::Normal => "NORMAL",
                },
                ttl: format!("{}s", vendors::ttl_secs(note).min(MAX_TTL)),
                collapse_key: note.collapse_id.clone(),
            },
        },
    };
    // Plain structs and strings: serializing cannot fail.
    let size = serde_json::to_vec(&request.message.notification).map_or(0, |v| v.len())
        + serde_json::to_vec(&request.message.data).map_or(0, |v| v.len());
    (serde_json::to_vec(&request).unwrap_or_default(), size)
}

/// Why no access token could be had.
enum TokenError {
    /// The token endpoint could not be reached or answered 5xx: try again later.
    Temporary(String),
    /// The token endpoint refused the service account.
    Refused(String),
}

/// OAuth2 access tokens of the service account: one fetch at a time, shared by every push
/// until shortly before it expires.
struct AccessTokens {
    http: reqwest::Client,
    token_uri: String,
    client_email: String,
    key_id: String,
    key: EncodingKey,
    /// The current token, or the fetch of the next one that concurrent pushes all wait for.
    /// A failed fetch leaves the cell empty, so the next push tries again.
    current: Mutex<Arc<OnceCell<AccessToken>>>,
}

struct AccessToken {
    value: String,
    refresh_at: Instant,
}

#[derive(Serialize)]
struct Assertion<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

impl AccessTokens {
    async fn get(&self) -> Result<String, TokenError> {
        let cell = {
            let mut current = self.current.lock();
            if current
                .get()
                .is_some_and(|token| token.refresh_at <= Instant::now())
            {
                *current = Arc::new(OnceCell::new());
            }
            current.clone()
        };
        let token = cell.get_or_try_init(|| self.fetch()).await?;
        Ok(token.value.clone())
    }

    /// FCM refused `used`: the next push fetches a new token, unless one already did.
    fn invalidate(&self, used: &str) {
        let mut current = self.current.lock();
        if current.get().is_some_and(|token| token.value == used) {
            *current = Arc::new(OnceCell::new());
        }
    }

    fn assertion(&self) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.key_id.clone());
        let iat = unix_now();
        let claims = Assertion {
            iss: &self.client_email,
            scope: SCOPE,
            aud: &self.token_uri,
            iat,
            exp: iat + 3600,
        };
        jsonwebtoken::encode(&header, &claims, &self.key)
    }

    async fn fetch(&self) -> Result<AccessToken, TokenError> {
        let assertion = self
            .assertion()
            .map_err(|e| TokenError::Refused(format!("signing the OAuth2 assertion: {e}")))?;
        let response = self
            .http
            .post(&self.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| TokenError::Temporary(format!("OAuth2 token request: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let reason = format!("OAuth2 token endpoint answered {status}: {body}");
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                TokenError::Temporary(reason)
            } else {
                TokenError::Refused(reason)
            });
        }
        let token: TokenResponse = response
            .json()
            .await
            .map_err(|e| TokenError::Temporary(format!("OAuth2 token answer: {e}")))?;
        metrics::counter!("mps_push_credentials_total", "way" => "fcm").increment(1);
        // Google's tokens last an hour; a day bounds whatever a token endpoint claims.
        let lifetime = Duration::from_secs(token.expires_in.min(24 * 3600));
        // Renew a little early: five minutes for Google's hour, less for short tokens.
        let margin = (lifetime / 10).min(Duration::from_secs(300));
        Ok(AccessToken {
            value: token.access_token,
            refresh_at: Instant::now() + lifetime - margin,
        })
    }
}
