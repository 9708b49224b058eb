//! Web Push stand-in: a push service (RFC 8030) that hands out subscriptions as a browser would
//! (its own P-256 key pair and authentication secret per subscription), checks VAPID (RFC 8292)
//! and the request headers, and decrypts every message (RFC 8291) to record its plaintext.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use parking_lot::Mutex;
use serde::Deserialize;

use crate::server::{Alpn, Server, Traffic};
use crate::unix_now;

/// Largest encrypted body a push service must take (RFC 8030 section 7.2).
pub const MAX_BODY: usize = 4096;

/// An answer the push service gives instead of accepting a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebPushAnswer {
    /// 404: no such subscription.
    NotFound,
    /// 410: the subscription expired or was unsubscribed.
    Gone,
    /// 413.
    PayloadTooLarge,
    /// 429 with `Retry-After` in seconds.
    TooManyRequests { retry_after: u64 },
    /// A 5xx status.
    ServerError(u16),
}

impl WebPushAnswer {
    fn response(self, state: &WebPushState) -> Response {
        match self {
            WebPushAnswer::NotFound => StatusCode::NOT_FOUND.into_response(),
            WebPushAnswer::Gone => StatusCode::GONE.into_response(),
            WebPushAnswer::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE.into_response(),
            WebPushAnswer::TooManyRequests { retry_after } => {
                *state.not_before.lock() = Some(Instant::now() + Duration::from_secs(retry_after));
                let mut response = StatusCode::TOO_MANY_REQUESTS.into_response();
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from(retry_after));
                response
            }
            WebPushAnswer::ServerError(code) => StatusCode::from_u16(code)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                .into_response(),
        }
    }
}

/// A subscription as `PushSubscription.toJSON()` gives it to a page.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub endpoint: String,
    /// The user agent's public key, uncompressed point, base64url.
    pub p256dh: String,
    /// The authentication secret, base64url.
    pub auth: String,
}

impl Subscription {
    /// The JSON a page posts to its server.
    pub fn json(&self) -> String {
        serde_json::json!({
            "endpoint": self.endpoint,
            "expirationTime": null,
            "keys": { "p256dh": self.p256dh, "auth": self.auth },
        })
        .to_string()
    }

    fn id(&self) -> &str {
        self.endpoint.rsplit('/').next().unwrap_or_default()
    }
}

/// A message the push service accepted, decrypted.
#[derive(Debug, Clone)]
pub struct WebPushDelivery {
    pub endpoint: String,
    pub plaintext: Vec<u8>,
    pub ttl: u64,
    pub urgency: Option<String>,
    pub topic: Option<String>,
    /// The VAPID `sub` claim.
    pub subject: String,
}

/// A running Web Push stand-in.
pub struct WebPushStandIn {
    server: Server,
    state: Arc<WebPushState>,
}

struct WebPushState {
    /// `https://127.0.0.1:PORT`, the VAPID audience; set once the listener is bound.
    origin: OnceLock<String>,
    subscriptions: Mutex<HashMap<String, UserAgent>>,
    unsubscribed: Mutex<HashSet<String>>,
    transient: Mutex<VecDeque<WebPushAnswer>>,
    delivered: Mutex<Vec<WebPushDelivery>>,
    violations: Mutex<Vec<String>>,
    /// Set by a `Retry-After` answer: a request before then breaks the protocol.
    not_before: Mutex<Option<Instant>>,
}

/// What the browser keeps for one subscription.
struct UserAgent {
    secret: p256::SecretKey,
    auth: [u8; 16],
    /// The `applicationServerKey` the subscription was made with.
    server_key: Vec<u8>,
    answer: Option<WebPushAnswer>,
}

impl WebPushStandIn {
    pub async fn start() -> WebPushStandIn {
        let state = Arc::new(WebPushState {
            origin: OnceLock::new(),
            subscriptions: Mutex::default(),
            unsubscribed: Mutex::default(),
            transient: Mutex::default(),
            delivered: Mutex::default(),
            violations: Mutex::default(),
            not_before: Mutex::default(),
        });
        let router = Router::new()
            .route("/push/{id}", post(push))
            .with_state(state.clone());
        let server = Server::start(router, Alpn::H2OrHttp1).await;
        let _ = state.origin.set(server.origin());
        WebPushStandIn { server, state }
    }

    /// Subscribes a new browser with `application_server_key` (the VAPID public key,
    /// base64url), like `PushManager.subscribe({applicationServerKey})`.
    pub fn subscribe(&self, application_server_key: &str) -> Subscription {
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let auth: [u8; 16] = rand::random();
        let id = hex::encode(rand::random::<[u8; 16]>());
        let subscription = Subscription {
            endpoint: format!("{}/push/{id}", self.server.origin()),
            p256dh: URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes()),
            auth: URL_SAFE_NO_PAD.encode(auth),
        };
        let server_key = URL_SAFE_NO_PAD
            .decode(application_server_key)
            .expect("applicationServerKey is base64url");
        self.state.subscriptions.lock().insert(
            id,
            UserAgent {
                secret,
                auth,
                server_key,
                answer: None,
            },
        );
        subscription
    }

    /// Drops the subscription: later messages to it are answered 410.
    pub fn unsubscribe(&self, subscription: &Subscription) {
        let id = subscription.id().to_owned();
        self.state.subscriptions.lock().remove(&id);
        self.state.unsubscribed.lock().insert(id);
    }

    /// Answers every message to `subscription` with `answer` from now on.
    pub fn answer(&self, subscription: &Subscription, answer: WebPushAnswer) {
        if let Some(ua) = self.state.subscriptions.lock().get_mut(subscription.id()) {
            ua.answer = Some(answer);
        }
    }

    /// Answers the next valid requests, one each, with `answers`.
    pub fn fail_next(&self, answers: impl IntoIterator<Item = WebPushAnswer>) {
        self.state.transient.lock().extend(answers);
    }

    pub fn delivered(&self) -> Vec<WebPushDelivery> {
        self.state.delivered.lock().clone()
    }

    /// Error answers caused by requests that broke the protocol.
    pub fn violations(&self) -> Vec<String> {
        self.state.violations.lock().clone()
    }

    pub fn origin(&self) -> String {
        self.server.origin()
    }

    pub fn ca_file(&self) -> &Path {
        self.server.ca_file()
    }

    /// A directory that lives as long as the stand-in, for key files.
    pub fn dir(&self) -> &Path {
        self.server.dir()
    }

    pub fn traffic(&self) -> &Traffic {
        self.server.traffic()
    }
}

fn reject(state: &WebPushState, status: StatusCode, detail: String) -> Response {
    state
        .violations
        .lock()
        .push(format!("{}: {detail}", status.as_u16()));
    (status, detail).into_response()
}

#[derive(Deserialize)]
struct VapidClaims {
    exp: i64,
    sub: String,
}

async fn push(
    State(state): State<Arc<WebPushState>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let state = &*state;
    let bad = StatusCode::BAD_REQUEST;
    let (secret, auth, server_key, answer) = {
        let subscriptions = state.subscriptions.lock();
        match subscriptions.get(&id) {
            Some(ua) => (ua.secret.clone(), ua.auth, ua.server_key.clone(), ua.answer),
            None if state.unsubscribed.lock().contains(&id) => {
                return StatusCode::GONE.into_response();
            }
            None => {
                return reject(
                    state,
                    StatusCode::NOT_FOUND,
                    format!("no subscription {id}"),
                );
            }
        }
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());

    let subject = match check_vapid(state, header("authorization"), &server_key) {
        Ok(subject) => subject,
        Err((status, detail)) => return reject(state, status, detail),
    };
    let Some(ttl) = header("ttl") else {
        return reject(state, bad, "no TTL header".into());
    };
    let Ok(ttl) = ttl.parse::<u64>() else {
        return reject(
            state,
            bad,
            format!("TTL {ttl:?} is not a non-negative integer"),
        );
    };
    let urgency = header("urgency");
    if let Some(urgency) = urgency
        && !["very-low", "low", "normal", "high"].contains(&urgency)
    {
        return reject(state, bad, format!("Urgency {urgency:?}"));
    }
    let topic = header("topic");
    if let Some(topic) = topic {
        let alphabet = topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if topic.is_empty() || topic.len() > 32 || !alphabet {
            return reject(
                state,
                bad,
                format!("Topic {topic:?}: at most 32 base64url characters"),
            );
        }
    }
    if header("content-encoding") != Some("aes128gcm") {
        return reject(
            state,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding {:?}", header("content-encoding")),
        );
    }
    if body.len() > MAX_BODY {
        return reject(
            state,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body of {} bytes", body.len()),
        );
    }
    let plaintext = match crate::ece::decrypt(&body, &secret, &auth) {
        Ok(plaintext) => plaintext,
        Err(e) => return reject(state, bad, format!("cannot decrypt: {e}")),
    };

    let early = state
        .not_before
        .lock()
        .and_then(|t| t.checked_duration_since(Instant::now()));
    if let Some(early) = early {
        state
            .violations
            .lock()
            .push(format!("429: request {early:?} before Retry-After elapsed"));
        let retry_after = early.as_secs() + 1;
        return WebPushAnswer::TooManyRequests { retry_after }.response(state);
    }
    if let Some(answer) = state.transient.lock().pop_front() {
        return answer.response(state);
    }
    if let Some(answer) = answer {
        return answer.response(state);
    }
    let mut delivered = state.delivered.lock();
    delivered.push(WebPushDelivery {
        endpoint: format!(
            "{}/push/{id}",
            state.origin.get().map(String::as_str).unwrap_or_default()
        ),
        plaintext,
        ttl,
        urgency: urgency.map(str::to_owned),
        topic: topic.map(str::to_owned),
        subject,
    });
    let mut response = StatusCode::CREATED.into_response();
    let location = format!(
        "{}/message/{}",
        state.origin.get().map(String::as_str).unwrap_or_default(),
        delivered.len()
    );
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert("location", location);
    }
    response
}

/// Checks `Authorization: vapid t=<JWT>, k=<key>` (RFC 8292); returns the `sub` claim.
fn check_vapid(
    state: &WebPushState,
    authorization: Option<&str>,
    server_key: &[u8],
) -> Result<String, (StatusCode, String)> {
    let unauthorized = |detail: String| (StatusCode::UNAUTHORIZED, detail);
    let forbidden = |detail: String| (StatusCode::FORBIDDEN, detail);
    let authorization = authorization.ok_or_else(|| unauthorized("no Authorization".into()))?;
    let (scheme, params) = authorization
        .split_once(' ')
        .ok_or_else(|| unauthorized(format!("Authorization {authorization:?}")))?;
    if !scheme.eq_ignore_ascii_case("vapid") {
        return Err(unauthorized(format!("scheme {scheme:?}, not vapid")));
    }
    let mut t = None;
    let mut k = None;
    for param in params.split(',') {
        match param.trim().split_once('=') {
            Some(("t", value)) => t = Some(value),
            Some(("k", value)) => k = Some(value),
            _ => return Err(unauthorized(format!("parameter {param:?}"))),
        }
    }
    let (Some(jwt), Some(k)) = (t, k) else {
        return Err(unauthorized("vapid needs t and k".into()));
    };
    let key = URL_SAFE_NO_PAD
        .decode(k)
        .map_err(|_| unauthorized("k is not base64url".into()))?;
    if key.len() != 65 || key[0] != 4 {
        return Err(unauthorized("k is not an uncompressed P-256 point".into()));
    }
    if key != server_key {
        return Err(forbidden(
            "k is not the applicationServerKey of the subscription".into(),
        ));
    }
    let header = jsonwebtoken::decode_header(jwt).map_err(|e| forbidden(e.to_string()))?;
    if header.alg != Algorithm::ES256 {
        return Err(forbidden(format!("alg {:?}, not ES256", header.alg)));
    }
    let decoding = DecodingKey::from_ec_components(
        &URL_SAFE_NO_PAD.encode(&key[1..33]),
        &URL_SAFE_NO_PAD.encode(&key[33..]),
    )
    .map_err(|e| forbidden(e.to_string()))?;
    let origin = state.origin.get().cloned().unwrap_or_default();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_required_spec_claims(&["exp", "aud", "sub"]);
    validation.set_audience(&[&origin]);
    validation.leeway = 0;
    let claims = jsonwebtoken::decode::<VapidClaims>(jwt, &decoding, &validation)
        .map_err(|e| forbidden(format!("VAPID JWT: {e}")))?
        .claims;
    if claims.exp > unix_now() + 24 * 3600 {
        return Err(forbidden("exp more than 24 hours ahead".into()));
    }
    if !(claims.sub.starts_with("mailto:") || claims.sub.starts_with("https:")) {
        return Err(forbidden(format!(
            "sub {:?} is neither mailto: nor https:",
            claims.sub
        )));
    }
    Ok(claims.sub)
}
