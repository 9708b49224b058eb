//! What every HTTP surface answers with: [`ApiError`] (a status and `{"error": {"code",
//! "message"}}`, the one place an error becomes an HTTP answer), the query extractor whose
//! rejections are such errors, and the shared error answers of the OpenAPI document. The API,
//! the transports, the listener and the origin checks all answer through it.

use axum::Json;
use axum::extract::FromRequestParts;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mps_proto::{ErrorBody, ErrorResponse};
use utoipa::{IntoResponses, ToResponse};

use crate::auth::AuthError;
use crate::engine::EngineError;
use crate::presence::PresenceError;
use crate::push::devices::DeviceError;
use crate::store::StoreError;
use crate::words::Invalid;

/// Every API error: an HTTP status and `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds to wait before retrying (`Retry-After`), on refusals by a limit.
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Adds `Retry-After: seconds` to the answer.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    /// 429 from a rate limit (counted under `limit`), retry after `wait`.
    pub fn rate_limited(limit: crate::limits::Limit, wait: std::time::Duration) -> Self {
        crate::limits::rejected(limit);
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests; slow down",
        )
        .retry_after(wait.as_secs_f64().ceil() as u64)
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
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
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
        match e {
            StoreError::Full => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                "the server's disk is full; nothing was stored, retry later",
            )
            .retry_after(5),
            e => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                e.to_string(),
            ),
        }
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

impl From<Invalid> for ApiError {
    fn from(Invalid { code, message }: Invalid) -> Self {
        ApiError::invalid(code, message)
    }
}

impl From<DeviceError> for ApiError {
    fn from(e: DeviceError) -> Self {
        match e {
            DeviceError::Invalid(e) => e.into(),
            DeviceError::Store(e) => e.into(),
        }
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
            EngineError::Presence(e) => e.into(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        let (status, code) = match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                crate::limits::rejected(crate::limits::Limit::BodySize);
                (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
            }
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

/// A query string whose rejections are [`ApiError`]s.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Params<T>(pub T);

/// The body, query or a value is invalid (`bad_json`, `bad_query`, `invalid_*`,
/// `too_many_recipients`, `id_mismatch`, ...).
#[derive(ToResponse)]
#[allow(dead_code)] // only its OpenAPI description is used
pub struct BadRequest(ErrorResponse);

/// Missing or wrong credentials (`missing_token`, `invalid_token`, `token_expired`, `wrong_key`).
#[derive(ToResponse)]
#[allow(dead_code)]
pub struct Unauthorized(ErrorResponse);

/// The token does not allow what is asked (`forbidden_topic`).
#[derive(ToResponse)]
#[allow(dead_code)]
pub struct Forbidden(ErrorResponse);

/// No such thing (`not_found`, `not_configured`).
#[derive(ToResponse)]
#[allow(dead_code)]
pub struct NotFound(ErrorResponse);

/// The body is larger than `messages.max_body` (`too_large`).
#[derive(ToResponse)]
#[allow(dead_code)]
pub struct TooLarge(ErrorResponse);

/// The body is not `application/json` (`unsupported_media_type`).
#[derive(ToResponse)]
#[allow(dead_code)]
pub struct UnsupportedMediaType(ErrorResponse);

/// A backing service is unreachable or the server is stopping (`store_unavailable`,
/// `broker_unavailable`, `registry_unavailable`, `shutting_down`).
#[derive(ToResponse)]
#[allow(dead_code)]
pub struct Unavailable(ErrorResponse);

/// The errors of a call that checks credentials and may read a body: the answers most
/// operations share, listed once.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum CommonErrors {
    #[response(status = 400)]
    BadRequest(#[ref_response] BadRequest),
    #[response(status = 401)]
    Unauthorized(#[ref_response] Unauthorized),
    #[response(status = 403)]
    Forbidden(#[ref_response] Forbidden),
    #[response(status = 413)]
    TooLarge(#[ref_response] TooLarge),
    #[response(status = 415)]
    UnsupportedMediaType(#[ref_response] UnsupportedMediaType),
    #[response(status = 503)]
    Unavailable(#[ref_response] Unavailable),
}
