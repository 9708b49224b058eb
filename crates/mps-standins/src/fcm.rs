//! FCM stand-in: Google's OAuth2 token endpoint (JWT bearer grant, RS256 assertion checked
//! against the service account's key) and the HTTP v1 `messages:send` method with Google's
//! error JSON, over TLS with HTTP/2 (HTTP/1.1 also answered, as Google does).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Router};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::keys::ServiceAccount;
use crate::server::{Alpn, Server, Traffic};
use crate::unix_now;

/// The OAuth2 scope FCM needs.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Largest notification plus data FCM takes, in bytes of JSON.
pub const MAX_PAYLOAD: usize = 4096;

/// An error FCM answers instead of accepting a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FcmError {
    /// 404 `UNREGISTERED`: the app instance is gone.
    Unregistered,
    /// 400 `INVALID_ARGUMENT`.
    InvalidArgument,
    /// 429 `QUOTA_EXCEEDED` with `Retry-After` in seconds.
    QuotaExceeded { retry_after: u64 },
    /// 503 `UNAVAILABLE`.
    Unavailable,
    /// 500 `INTERNAL`.
    Internal,
    /// 403 `SENDER_ID_MISMATCH`: the token belongs to another project.
    SenderIdMismatch,
    /// 401 `THIRD_PARTY_AUTH_ERROR`: FCM's own APNs or Web Push credentials were refused.
    ThirdPartyAuthError,
}

impl FcmError {
    /// HTTP status, `error.status` and `errorCode`.
    fn parts(self) -> (StatusCode, &'static str, &'static str) {
        match self {
            FcmError::Unregistered => (StatusCode::NOT_FOUND, "NOT_FOUND", "UNREGISTERED"),
            FcmError::InvalidArgument => (
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                "INVALID_ARGUMENT",
            ),
            FcmError::QuotaExceeded { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "RESOURCE_EXHAUSTED",
                "QUOTA_EXCEEDED",
            ),
            FcmError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "UNAVAILABLE",
            ),
            FcmError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", "INTERNAL"),
            FcmError::SenderIdMismatch => (
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                "SENDER_ID_MISMATCH",
            ),
            FcmError::ThirdPartyAuthError => (
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "THIRD_PARTY_AUTH_ERROR",
            ),
        }
    }
}

/// A message the stand-in accepted.
#[derive(Debug, Clone)]
pub struct FcmPush {
    /// The request's `message` object, as sent.
    pub message: Value,
    /// The access token it was sent with.
    pub access_token: String,
}

/// A running FCM stand-in with its own service account (written as a JSON file).
pub struct FcmStandIn {
    server: Server,
    state: Arc<FcmState>,
    account: ServiceAccount,
    service_account_file: PathBuf,
}

struct FcmState {
    project: String,
    /// Set once the listener's address is known.
    account: OnceLock<Account>,
    token_lifetime: Mutex<Duration>,
    /// Access tokens issued and when they expire.
    tokens: Mutex<HashMap<String, Instant>>,
    token_requests: AtomicUsize,
    answers: Mutex<HashMap<String, FcmError>>,
    transient: Mutex<VecDeque<FcmError>>,
    accepted: Mutex<Vec<FcmPush>>,
    violations: Mutex<Vec<String>>,
    /// Set by a `Retry-After` answer: a request before then breaks the protocol.
    not_before: Mutex<Option<Instant>>,
}

struct Account {
    client_email: String,
    private_key_id: String,
    token_uri: String,
    key: DecodingKey,
}

impl FcmStandIn {
    pub const PROJECT: &'static str = "mps-test";

    /// Starts a stand-in with a fresh service account of project [`FcmStandIn::PROJECT`];
    /// access tokens last an hour unless [`FcmStandIn::set_token_lifetime`] says otherwise.
    pub async fn start() -> FcmStandIn {
        let state = Arc::new(FcmState {
            project: Self::PROJECT.into(),
            account: OnceLock::new(),
            token_lifetime: Mutex::new(Duration::from_secs(3600)),
            tokens: Mutex::default(),
            token_requests: AtomicUsize::new(0),
            answers: Mutex::default(),
            transient: Mutex::default(),
            accepted: Mutex::default(),
            violations: Mutex::default(),
            not_before: Mutex::default(),
        });
        let router = Router::new()
            .route("/token", post(token))
            .route("/v1/projects/{project}/messages:send", post(send))
            .fallback(not_found)
            .with_state(state.clone());
        let server = Server::start(router, Alpn::H2OrHttp1).await;
        let account =
            ServiceAccount::generate(Self::PROJECT, &format!("{}/token", server.origin()));
        let _ = state.account.set(Account {
            client_email: account.client_email.clone(),
            private_key_id: account.private_key_id.clone(),
            token_uri: account.token_uri.clone(),
            key: DecodingKey::from_rsa_components(&account.n, &account.e).expect("RSA key"),
        });
        let service_account_file = account.write(server.dir());
        FcmStandIn {
            server,
            state,
            account,
            service_account_file,
        }
    }

    /// The base URL to configure as the FCM `endpoint`.
    pub fn endpoint(&self) -> String {
        self.server.origin()
    }

    /// The OAuth2 token endpoint (also the service account's `token_uri`).
    pub fn token_uri(&self) -> &str {
        &self.account.token_uri
    }

    pub fn ca_file(&self) -> &Path {
        self.server.ca_file()
    }

    pub fn service_account(&self) -> &ServiceAccount {
        &self.account
    }

    pub fn service_account_file(&self) -> &Path {
        &self.service_account_file
    }

    pub fn traffic(&self) -> &Traffic {
        self.server.traffic()
    }

    /// Lifetime of the access tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        *self.state.token_lifetime.lock() = lifetime;
    }

    /// Makes every access token issued so far expire now.
    pub fn expire_access_tokens(&self) {
        let now = Instant::now();
        for expiry in self.state.tokens.lock().values_mut() {
            *expiry = now;
        }
    }

    /// Access tokens issued.
    pub fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// Answers every message to `token` with `error` from now on.
    pub fn answer(&self, token: &str, error: FcmError) {
        self.state.answers.lock().insert(token.to_owned(), error);
    }

    /// Answers the next valid requests, one each, with `errors`.
    pub fn fail_next(&self, errors: impl IntoIterator<Item = FcmError>) {
        self.state.transient.lock().extend(errors);
    }

    pub fn accepted(&self) -> Vec<FcmPush> {
        self.state.accepted.lock().clone()
    }

    /// Error answers caused by requests that broke the protocol.
    pub fn violations(&self) -> Vec<String> {
        self.state.violations.lock().clone()
    }
}

fn violation(state: &FcmState, what: String) {
    state.violations.lock().push(what);
}

/// Google's error JSON; `code` is the FCM error code, if any, for `details`.
fn google_error(status: StatusCode, name: &str, message: &str, code: Option<&str>) -> Response {
    let mut error = json!({ "code": status.as_u16(), "message": message, "status": name });
    if let Some(code) = code {
        error["details"] = json!([{
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": code,
        }]);
    }
    (status, axum::Json(json!({ "error": error }))).into_response()
}

fn invalid(state: &FcmState, detail: String) -> Response {
    let response = google_error(
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        &detail,
        Some("INVALID_ARGUMENT"),
    );
    violation(state, format!("400 INVALID_ARGUMENT: {detail}"));
    response
}

fn programmed(state: &FcmState, error: FcmError) -> Response {
    let (status, name, code) = error.parts();
    let mut response = google_error(status, name, "programmed answer", Some(code));
    if let FcmError::QuotaExceeded { retry_after } = error {
        *state.not_before.lock() = Some(Instant::now() + Duration::from_secs(retry_after));
        response
            .headers_mut()
            .insert("retry-after", retry_after.into());
    }
    response
}

async fn not_found(State(state): State<Arc<FcmState>>, uri: axum::http::Uri) -> Response {
    violation(&state, format!("404: {}", uri.path()));
    google_error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such method", None)
}

fn oauth_error(state: &FcmState, error: &str, description: String) -> Response {
    violation(state, format!("400 {error}: {description}"));
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

#[derive(Deserialize)]
struct Assertion {
    scope: String,
    iat: i64,
    exp: i64,
}

async fn token(
    State(state): State<Arc<FcmState>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let Some(account) = state.account.get() else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let grant = form.get("grant_type").map(String::as_str);
    if grant != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return oauth_error(
            &state,
            "unsupported_grant_type",
            format!("Invalid grant_type: {}", grant.unwrap_or_default()),
        );
    }
    let Some(assertion) = form.get("assertion") else {
        return oauth_error(
            &state,
            "invalid_request",
            "Missing required parameter: assertion".into(),
        );
    };
    if let Err(e) = check_assertion(account, assertion) {
        return oauth_error(&state, "invalid_grant", e);
    }
    let lifetime = *state.token_lifetime.lock();
    let access_token = format!("ya29.{}", hex::encode(rand::random::<[u8; 24]>()));
    state
        .tokens
        .lock()
        .insert(access_token.clone(), Instant::now() + lifetime);
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    axum::Json(json!({
        "access_token": access_token,
        "expires_in": lifetime.as_secs().max(1),
        "token_type": "Bearer",
    }))
    .into_response()
}

fn check_assertion(account: &Account, jwt: &str) -> Result<(), String> {
    let header = jsonwebtoken::decode_header(jwt).map_err(|e| e.to_string())?;
    if header.alg != Algorithm::RS256 {
        return Err(format!("alg {:?}, not RS256", header.alg));
    }
    if let Some(kid) = &header.kid
        && kid != &account.private_key_id
    {
        return Err(format!("kid {kid} is not the service account's key"));
    }
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
    validation.set_issuer(&[&account.client_email]);
    validation.set_audience(&[&account.token_uri]);
    validation.leeway = 0;
    let claims = jsonwebtoken::decode::<Assertion>(jwt, &account.key, &validation)
        .map_err(|e| format!("Invalid JWT: {e}"))?
        .claims;
    if !claims.scope.split(' ').any(|s| s == SCOPE) {
        return Err(format!("scope {:?} lacks {SCOPE}", claims.scope));
    }
    if claims.exp - claims.iat > 3600 || claims.exp <= claims.iat {
        return Err("exp must be after iat and at most an hour after it".into());
    }
    if claims.iat > unix_now() + 60 {
        return Err("iat is in the future".into());
    }
    Ok(())
}

async fn send(
    State(state): State<Arc<FcmState>>,
    UrlPath(project): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(access_token) = bearer else {
        violation(&state, "401: no bearer access token".into());
        return unauthenticated();
    };
    let expiry = state.tokens.lock().get(access_token).copied();
    match expiry {
        None => {
            violation(&state, "401: access token never issued".into());
            return unauthenticated();
        }
        // An expired token is the client's normal life, not a protocol error.
        Some(expiry) if expiry <= Instant::now() => return unauthenticated(),
        Some(_) => {}
    }
    if project != state.project {
        violation(&state, format!("403: project {project}"));
        return google_error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "The caller does not have permission",
            None,
        );
    }
    let json_body = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return invalid(&state, "Content-Type is not application/json".into());
    }
    let mut request: serde_json::Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return invalid(&state, format!("Invalid JSON payload received. {e}")),
    };
    if let Some(unknown) = request
        .keys()
        .find(|k| !["message", "validate_only", "validateOnly"].contains(&k.as_str()))
    {
        return invalid(
            &state,
            format!("Unknown name \"{unknown}\": Cannot find field."),
        );
    }
    let Some(message) = request.remove("message") else {
        return invalid(&state, "message is required".into());
    };
    let token = match check_message(&message) {
        Ok(token) => token,
        Err(detail) => return invalid(&state, detail),
    };
    let early = state
        .not_before
        .lock()
        .and_then(|t| t.checked_duration_since(Instant::now()));
    if let Some(early) = early {
        violation(
            &state,
            format!("429: request {early:?} before Retry-After elapsed"),
        );
        return programmed(
            &state,
            FcmError::QuotaExceeded {
                retry_after: early.as_secs() + 1,
            },
        );
    }
    if let Some(error) = state.transient.lock().pop_front() {
        return programmed(&state, error);
    }
    if let Some(error) = state.answers.lock().get(&token).copied() {
        return programmed(&state, error);
    }
    let mut accepted = state.accepted.lock();
    accepted.push(FcmPush {
        message,
        access_token: access_token.to_owned(),
    });
    let name = format!("projects/{project}/messages/{}", accepted.len());
    axum::Json(json!({ "name": name })).into_response()
}

fn unauthenticated() -> Response {
    google_error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, \
         login cookie or other valid authentication credential.",
        None,
    )
}

/// Checks a `Message` resource as FCM does for what mps sends; returns its token.
fn check_message(message: &Value) -> Result<String, String> {
    const FIELDS: [&str; 10] = [
        "name",
        "data",
        "notification",
        "android",
        "webpush",
        "apns",
        "fcm_options",
        "token",
        "topic",
        "condition",
    ];
    let object = message.as_object().ok_or("message is not an object")?;
    if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!("Unknown name \"{unknown}\" at 'message'"));
    }
    let targets = ["token", "topic", "condition"]
        .iter()
        .filter(|k| object.contains_key(**k))
        .count();
    if targets != 1 {
        return Err("exactly one of token, topic, condition is required".into());
    }
    let token = object
        .get("token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or("message.token must be a non-empty string")?;
    let mut size = 0;
    if let Some(notification) = object.get("notification") {
        let n = notification
            .as_object()
            .ok_or("message.notification is not an object")?;
        for (key, value) in n {
            if !["title", "body", "image"].contains(&key.as_str()) {
                return Err(format!("Unknown name \"{key}\" at 'message.notification'"));
            }
            if !value.is_string() {
                return Err(format!("message.notification.{key} is not a string"));
            }
        }
        size += notification.to_string().len();
    }
    if let Some(data) = object.get("data") {
        check_data(data, "message.data")?;
        size += data.to_string().len();
    }
    if size > MAX_PAYLOAD {
        return Err(format!("Message is too big: {size} bytes"));
    }
    if let Some(android) = object.get("android") {
        check_android(android)?;
    }
    Ok(token.to_owned())
}

/// Data values must all be strings; some keys are reserved.
fn check_data(data: &Value, at: &str) -> Result<(), String> {
    let map = data.as_object().ok_or(format!("{at} is not an object"))?;
    for (key, value) in map {
        if !value.is_string() {
            return Err(format!("Invalid value at '{at}[{key}]': not a string"));
        }
        let reserved = ["from", "notification", "message_type"].contains(&key.as_str())
            || key.starts_with("google")
            || key.starts_with("gcm");
        if reserved {
            return Err(format!("Invalid data key {key:?}: reserved"));
        }
    }
    Ok(())
}

fn check_android(android: &Value) -> Result<(), String> {
    let object = android
        .as_object()
        .ok_or("message.android is not an object")?;
    for (key, value) in object {
        match key.as_str() {
            "collapse_key" | "collapseKey" | "restricted_package_name" => {
                if !value.is_string() {
                    return Err(format!("message.android.{key} is not a string"));
                }
            }
            "priority" => {
                if value != "NORMAL" && value != "HIGH" {
                    return Err(format!(
                        "Invalid value at 'message.android.priority': {value}"
                    ));
                }
            }
            "ttl" => {
                let ttl = value.as_str().unwrap_or_default();
                if !is_duration(ttl) {
                    return Err(format!("Invalid value at 'message.android.ttl': {value}"));
                }
            }
            "data" => check_data(value, "message.android.data")?,
            "notification" | "fcm_options" | "direct_boot_ok" => {}
            other => return Err(format!("Unknown name \"{other}\" at 'message.android'")),
        }
    }
    Ok(())
}

/// A protobuf JSON duration: seconds with up to nine fractional digits, then `s`.
fn is_duration(s: &str) -> bool {
    let Some(number) = s.strip_suffix('s') else {
        return false;
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, "0"));
    !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && (1..=9).contains(&fraction.len())
        && fraction.bytes().all(|b| b.is_ascii_digit())
}
