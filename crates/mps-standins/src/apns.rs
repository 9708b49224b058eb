//! APNs stand-in: the provider API (`POST /3/device/<token>`) over TLS and HTTP/2 only, with
//! token-based authentication checked as Apple does, the request headers and payload checked,
//! and Apple's JSON error answers.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde::Deserialize;

use crate::keys::ApnsKey;
use crate::server::{Alpn, Server, Traffic};
use crate::unix_now;

/// Largest payload APNs takes for a regular notification.
pub const MAX_PAYLOAD: usize = 4096;

/// An answer APNs gives instead of accepting a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApnsReason {
    /// 410: the device token is no longer active for the topic.
    Unregistered,
    /// 400: the device token is invalid.
    BadDeviceToken,
    /// 400: the device token does not match the topic.
    DeviceTokenNotForTopic,
    /// 429: too many requests to the same device token.
    TooManyRequests,
    /// 500.
    InternalServerError,
    /// 503: the service is unavailable.
    ServiceUnavailable,
    /// 403: the provider token is stale.
    ExpiredProviderToken,
}

impl ApnsReason {
    fn status(self) -> StatusCode {
        match self {
            ApnsReason::Unregistered => StatusCode::GONE,
            ApnsReason::BadDeviceToken | ApnsReason::DeviceTokenNotForTopic => {
                StatusCode::BAD_REQUEST
            }
            ApnsReason::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ApnsReason::InternalServerError => StatusCode::INTERNAL_SERVER_ERROR,
            ApnsReason::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApnsReason::ExpiredProviderToken => StatusCode::FORBIDDEN,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ApnsReason::Unregistered => "Unregistered",
            ApnsReason::BadDeviceToken => "BadDeviceToken",
            ApnsReason::DeviceTokenNotForTopic => "DeviceTokenNotForTopic",
            ApnsReason::TooManyRequests => "TooManyRequests",
            ApnsReason::InternalServerError => "InternalServerError",
            ApnsReason::ServiceUnavailable => "ServiceUnavailable",
            ApnsReason::ExpiredProviderToken => "ExpiredProviderToken",
        }
    }
}

/// A notification the stand-in accepted.
#[derive(Debug, Clone)]
pub struct ApnsPush {
    /// The device token from the path.
    pub token: String,
    /// The `apns-*` request headers.
    pub headers: BTreeMap<String, String>,
    pub payload: serde_json::Value,
}

/// A running APNs stand-in with its own signing key (written as a `.p8` file).
pub struct ApnsStandIn {
    server: Server,
    state: Arc<ApnsState>,
    key_file: PathBuf,
}

struct ApnsState {
    team_id: String,
    key_id: String,
    topic: String,
    key: DecodingKey,
    /// Answers given to one device token every time.
    answers: Mutex<HashMap<String, ApnsReason>>,
    /// Answers given to the next requests, whatever their token.
    transient: Mutex<VecDeque<ApnsReason>>,
    expire_once: AtomicBool,
    /// Provider tokens answered with `ExpiredProviderToken` by the test hook: never taken again.
    expired: Mutex<HashSet<String>>,
    /// Distinct provider tokens seen, in order.
    provider_tokens: Mutex<Vec<String>>,
    accepted: Mutex<Vec<ApnsPush>>,
    /// Answers the stand-in gave because the request broke the protocol (not programmed).
    violations: Mutex<Vec<String>>,
}

impl ApnsStandIn {
    pub const TEAM_ID: &'static str = "TEAM123456";
    pub const KEY_ID: &'static str = "KEY1234567";
    pub const TOPIC: &'static str = "com.example.mps";

    /// Starts a stand-in with a freshly generated signing key.
    pub async fn start() -> ApnsStandIn {
        let key = ApnsKey::generate();
        let state = Arc::new(ApnsState {
            team_id: Self::TEAM_ID.into(),
            key_id: Self::KEY_ID.into(),
            topic: Self::TOPIC.into(),
            key: DecodingKey::from_ec_pem(key.public_pem.as_bytes()).expect("public key"),
            answers: Mutex::default(),
            transient: Mutex::default(),
            expire_once: AtomicBool::new(false),
            expired: Mutex::default(),
            provider_tokens: Mutex::default(),
            accepted: Mutex::default(),
            violations: Mutex::default(),
        });
        let router = Router::new()
            .route("/3/device/{token}", post(push))
            .fallback(bad_path)
            .with_state(state.clone());
        let server = Server::start(router, Alpn::H2Only).await;
        let key_file = key.write(server.dir(), Self::KEY_ID);
        ApnsStandIn {
            server,
            state,
            key_file,
        }
    }

    /// The base URL to configure as the APNs `endpoint`.
    pub fn endpoint(&self) -> String {
        self.server.origin()
    }

    pub fn ca_file(&self) -> &Path {
        self.server.ca_file()
    }

    /// The `.p8` file of the key the stand-in checks provider tokens against.
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    pub fn traffic(&self) -> &Traffic {
        self.server.traffic()
    }

    /// Answers every notification to `token` with `reason` from now on.
    pub fn answer(&self, token: &str, reason: ApnsReason) {
        self.state.answers.lock().insert(token.to_owned(), reason);
    }

    /// Answers the next requests, one each, with `reasons` before anything else is checked
    /// past authentication.
    pub fn fail_next(&self, reasons: impl IntoIterator<Item = ApnsReason>) {
        self.state.transient.lock().extend(reasons);
    }

    /// Answers the next request `403 ExpiredProviderToken` and refuses its provider token
    /// from then on, as APNs does with a token it considers stale.
    pub fn expire_provider_token_once(&self) {
        self.state.expire_once.store(true, Ordering::SeqCst);
    }

    /// Notifications accepted, in order.
    pub fn accepted(&self) -> Vec<ApnsPush> {
        self.state.accepted.lock().clone()
    }

    /// Distinct provider tokens presented, in order of first use.
    pub fn provider_tokens(&self) -> Vec<String> {
        self.state.provider_tokens.lock().clone()
    }

    /// Error answers caused by requests that broke the protocol ("status reason: detail").
    pub fn violations(&self) -> Vec<String> {
        self.state.violations.lock().clone()
    }
}

#[derive(Deserialize)]
struct ProviderClaims {
    iat: Option<i64>,
}

/// Apple's error answer; `violation` marks answers not programmed by the test.
fn reject(
    state: &ApnsState,
    status: StatusCode,
    reason: &str,
    detail: &str,
    violation: bool,
) -> Response {
    if violation {
        state
            .violations
            .lock()
            .push(format!("{} {reason}: {detail}", status.as_u16()));
    }
    let mut body = serde_json::json!({ "reason": reason });
    if status == StatusCode::GONE {
        body["timestamp"] = serde_json::json!(unix_now() * 1000);
    }
    let mut response = (status, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert("apns-id", HeaderValue::from_static(APNS_ID));
    response
}

const APNS_ID: &str = "00000000-0000-4000-8000-000000000000";

fn programmed(state: &ApnsState, reason: ApnsReason) -> Response {
    reject(state, reason.status(), reason.name(), "", false)
}

async fn bad_path(State(state): State<Arc<ApnsState>>, uri: axum::http::Uri) -> Response {
    reject(&state, StatusCode::NOT_FOUND, "BadPath", uri.path(), true)
}

async fn push(
    State(state): State<Arc<ApnsState>>,
    UrlPath(token): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let state = &*state;
    let forbidden = StatusCode::FORBIDDEN;
    let bad = StatusCode::BAD_REQUEST;

    // Authentication first, as APNs does.
    let Some(auth) = header(&headers, "authorization") else {
        return reject(state, forbidden, "MissingProviderToken", "", true);
    };
    let Some(jwt) = auth
        .strip_prefix("bearer ")
        .or_else(|| auth.strip_prefix("Bearer "))
    else {
        return reject(
            state,
            forbidden,
            "InvalidProviderToken",
            "not a bearer token",
            true,
        );
    };
    let iat = match check_provider_token(state, jwt) {
        Ok(iat) => iat,
        Err(detail) => return reject(state, forbidden, "InvalidProviderToken", &detail, true),
    };
    {
        let mut seen = state.provider_tokens.lock();
        if !seen.iter().any(|t| t == jwt) {
            seen.push(jwt.to_owned());
        }
    }
    if state.expire_once.swap(false, Ordering::SeqCst) {
        state.expired.lock().insert(jwt.to_owned());
    }
    if state.expired.lock().contains(jwt) {
        return programmed(state, ApnsReason::ExpiredProviderToken);
    }
    if unix_now() - iat > 3600 {
        return reject(
            state,
            forbidden,
            "ExpiredProviderToken",
            "iat older than 1 h",
            true,
        );
    }

    if token.is_empty() || token.len() % 2 != 0 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return reject(
            state,
            bad,
            "BadDeviceToken",
            "device token is not hex",
            true,
        );
    }
    match header(&headers, "apns-topic") {
        None => return reject(state, bad, "MissingTopic", "", true),
        Some(topic) if topic != state.topic => {
            return reject(state, bad, "BadTopic", topic, true);
        }
        Some(_) => {}
    }
    let push_type = header(&headers, "apns-push-type").unwrap_or_default();
    if push_type != "alert" && push_type != "background" {
        return reject(state, bad, "InvalidPushType", push_type, true);
    }
    if let Some(priority) = header(&headers, "apns-priority") {
        if priority != "5" && priority != "10" {
            return reject(state, bad, "BadPriority", priority, true);
        }
        if push_type == "background" && priority != "5" {
            return reject(state, bad, "BadPriority", "background pushes take 5", true);
        }
    }
    if let Some(expiration) = header(&headers, "apns-expiration")
        && expiration.parse::<u64>().is_err()
    {
        return reject(state, bad, "BadExpirationDate", expiration, true);
    }
    if let Some(collapse) = header(&headers, "apns-collapse-id")
        && collapse.len() > 64
    {
        return reject(state, bad, "BadCollapseId", "longer than 64 bytes", true);
    }
    if let Some(id) = header(&headers, "apns-id")
        && !is_uuid(id)
    {
        return reject(state, bad, "BadMessageId", id, true);
    }

    if body.is_empty() {
        return reject(state, bad, "PayloadEmpty", "", true);
    }
    if body.len() > MAX_PAYLOAD {
        return reject(
            state,
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            &format!("{} bytes", body.len()),
            true,
        );
    }
    let payload: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(e) => return reject(state, bad, "BadPayload", &e.to_string(), true),
    };
    let Some(aps) = payload.get("aps").and_then(|aps| aps.as_object()) else {
        return reject(state, bad, "BadPayload", "no aps dictionary", true);
    };
    if push_type == "alert" && !aps.contains_key("alert") {
        return reject(
            state,
            bad,
            "BadPayload",
            "alert push without aps.alert",
            true,
        );
    }
    if push_type == "background" && aps.get("content-available") != Some(&1.into()) {
        return reject(
            state,
            bad,
            "BadPayload",
            "background push without content-available",
            true,
        );
    }

    if let Some(reason) = state.transient.lock().pop_front() {
        return programmed(state, reason);
    }
    if let Some(reason) = state.answers.lock().get(&token).copied() {
        return programmed(state, reason);
    }

    let apns_headers = headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("apns-"))
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
        .collect();
    state.accepted.lock().push(ApnsPush {
        token,
        headers: apns_headers,
        payload,
    });
    let id = header(&headers, "apns-id").unwrap_or(APNS_ID);
    let mut response = StatusCode::OK.into_response();
    if let Ok(id) = HeaderValue::from_str(id) {
        response.headers_mut().insert("apns-id", id);
    }
    response
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Checks the signature, `alg`, `kid` and `iss` of a provider token; returns its `iat`.
fn check_provider_token(state: &ApnsState, jwt: &str) -> Result<i64, String> {
    let header = jsonwebtoken::decode_header(jwt).map_err(|e| e.to_string())?;
    if header.alg != Algorithm::ES256 {
        return Err(format!("alg {:?}, not ES256", header.alg));
    }
    if header.kid.as_deref() != Some(state.key_id.as_str()) {
        return Err(format!("kid {:?}", header.kid));
    }
    let mut validation = Validation::new(Algorithm::ES256);
    validation.validate_exp = false;
    validation.set_required_spec_claims(&["iss"]);
    validation.set_issuer(&[&state.team_id]);
    let data = jsonwebtoken::decode::<ProviderClaims>(jwt, &state.key, &validation)
        .map_err(|e| e.to_string())?;
    match data.claims.iat {
        Some(iat) if iat <= unix_now() + 60 => Ok(iat),
        Some(_) => Err("iat in the future".into()),
        None => Err("no iat".into()),
    }
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}
