//! The HTTP API under `/api/v1`, plus `/healthz`, `/readyz` and `/metrics`. Handlers are thin:
//! they check credentials with an extractor, call the engine or the store, and map errors to
//! JSON in one place ([`ApiError`]).

mod clients;
mod messages;
mod sdk;
mod tokens;

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mps_proto::{ErrorBody, ErrorResponse};

use crate::auth::{AuthError, Identity, bearer};
use crate::engine::EngineError;
use crate::presence::PresenceError;
use crate::server::ServerState;
use crate::store::StoreError;

/// Routes of the API; the caller adds state.
pub fn routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/api/v1/messages", post(messages::send).get(messages::list))
        .route(
            "/api/v1/messages/{id}",
            get(messages::get_one).delete(messages::delete),
        )
        .route("/api/v1/collect", post(messages::collect))
        .route("/api/v1/ack", post(messages::ack))
        .route("/api/v1/clients", get(clients::list))
        .route("/api/v1/clients/{id}/disconnect", post(clients::disconnect))
        .route("/api/v1/tokens", post(tokens::issue))
        .route("/api/v1/stats", get(clients::stats))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/sdk/mps.js", get(sdk::script))
        .route("/sdk/mps.d.ts", get(sdk::types))
        .route("/demo", get(sdk::demo))
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
}

/// Ready while not shutting down, the store and broker answer (PostgreSQL and Redis in a
/// cluster) and every configured message queue consumer is connected.
async fn readyz(State(state): State<Arc<ServerState>>) -> Response {
    if state.shutting_down() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        )
        .into_response();
    }
    if let Err(e) = state.engine.store().check().await {
        return ApiError::from(e).into_response();
    }
    if let Err(e) = state.engine.broker().check().await {
        return ApiError::from(EngineError::Broker(e)).into_response();
    }
    if let Err(e) = state.ingest.check() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ingest_disconnected",
            e.to_string(),
        )
        .into_response();
    }
    "ready".into_response()
}

async fn metrics(State(state): State<Arc<ServerState>>) -> String {
    state.metrics.render()
}

/// Every API error: an HTTP status and `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("mps_api_errors_total", "code" => self.code).increment(1);
        let body = ErrorResponse {
            error: ErrorBody {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        )
    }
}

impl From<PresenceError> for ApiError {
    fn from(e: PresenceError) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "registry_unavailable",
            e.to_string(),
        )
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Invalid { code, message } => ApiError::invalid(code, message),
            EngineError::Store(e) => e.into(),
            EngineError::Broker(e) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "broker_unavailable",
                e.to_string(),
            ),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        let (status, code) = match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            // Syntax errors (400) and well-formed JSON of the wrong shape (axum's 422) alike:
            // the API answers every bad body with 400.
            _ => (StatusCode::BAD_REQUEST, "bad_json"),
        };
        ApiError::new(status, code, e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::invalid("bad_query", e.body_text())
    }
}

/// A JSON body whose rejections are [`ApiError`]s.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Body<T>(pub T);

/// A query string whose rejections are [`ApiError`]s.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Params<T>(pub T);

/// Proof that the request carries the admin key.
pub struct Admin;

impl FromRequestParts<Arc<ServerState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ServerState>,
    ) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        state.auth.check_admin(header).map_err(|e| {
            crate::transport::count_bad_input("bad_admin_key");
            ApiError::from(e)
        })?;
        Ok(Admin)
    }
}

/// The user of a client token (`Authorization: Bearer TOKEN`).
pub struct Client(pub Identity);

impl FromRequestParts<Arc<ServerState>> for Client {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ServerState>,
    ) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .unwrap_or("");
        let identity = state.auth.verify(token).map_err(|e| {
            crate::transport::count_bad_input(e.code());
            ApiError::from(e)
        })?;
        Ok(Client(identity))
    }
}
