//! Client tokens, issued to the back end with the client-facing URLs of every network line.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use mps_proto::{TokenRequest, TokenResponse};

use super::{Admin, ApiError, Body};
use crate::auth::DEFAULT_APP;
use crate::http::{BadRequest, TooLarge, Unauthorized, UnsupportedMediaType};
use crate::state::ServerState;
use crate::words::check_name;

/// Issue a client token.
///
/// Returned with the client-facing WebSocket URL of every network line (`[lines]`).
#[utoipa::path(
    post,
    operation_id = "issue_token",
    path = "/api/v1/tokens",
    tag = "tokens",
    security(("admin_key" = [])),
    request_body = TokenRequest,
    responses(
        (status = 200, description = "The token and where clients connect with it", body = TokenResponse),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = TooLarge),
        (status = 415, response = UnsupportedMediaType),
    ),
)]
pub async fn issue(
    _: Admin,
    State(state): State<Arc<ServerState>>,
    Body(request): Body<TokenRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let app = request.app.unwrap_or_else(|| DEFAULT_APP.to_owned());
    check_name("user", &request.user)?;
    check_name("app", &app)?;
    let limits = state.config.topics.limits();
    for pattern in request.topics.iter().flatten() {
        crate::limits::check_pattern(pattern, limits)
            .map_err(|e| ApiError::invalid("invalid_topic", e.to_string()))?;
    }
    let (token, expires) = state
        .auth
        .issue(&app, &request.user, request.ttl, request.topics)?;
    Ok(Json(TokenResponse {
        token,
        user: request.user,
        app,
        expires,
        urls: state.client_urls(),
    }))
}
