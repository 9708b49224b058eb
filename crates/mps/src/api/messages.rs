//! Messages: send, page the records, get one with per-recipient status, delete; and the client
//! side's pull (`collect`) and ack.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use mps_proto::{
    AckRequest, AckResult, Collected, MessageRecord, Page, SendMessage, SendResult, Status,
};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{Admin, ApiError, Body, Client, Params};
use crate::http::{
    BadRequest, NotFound, TooLarge, Unauthorized, Unavailable, UnsupportedMediaType,
};
use crate::id::MessageId;
use crate::state::ServerState;
use crate::store::MessageQuery;

/// Most messages one pull returns.
const MAX_COLLECT: usize = 1000;

/// Send a message.
///
/// With `receiver` it is directed and durable (each recipient gets a status); with `topic` it is
/// kept in the topic's retained log; otherwise it goes live to every online client of the app, or
/// with `component` to those subscribed to it. Directed and topic messages are answered once on
/// disk. `201` for a message sent, `200` for a repeat of an idempotency key (the first message's
/// id, `duplicate: true`).
#[utoipa::path(
    post,
    operation_id = "send_message",
    path = "/api/v1/messages",
    tag = "messages",
    security(("admin_key" = [])),
    params(
        ("Idempotency-Key" = Option<String>, Header,
         description = "Idempotency key, as the body's `id` (they must match when both are given)"),
    ),
    request_body = SendMessage,
    responses(
        (status = 201, description = "Sent", body = SendResult),
        (status = 200, description = "A repeat of an idempotency key: nothing sent again", body = SendResult),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = TooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn send(
    _: Admin,
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Body(mut message): Body<SendMessage>,
) -> Result<(StatusCode, Json<SendResult>), ApiError> {
    if let Some(key) = headers.get("idempotency-key") {
        let key = key.to_str().map_err(|_| {
            ApiError::invalid("invalid_name", "Idempotency-Key must be visible ASCII")
        })?;
        match &message.id {
            Some(id) if id != key => {
                return Err(ApiError::invalid(
                    "id_mismatch",
                    "the Idempotency-Key header and the body's id differ",
                ));
            }
            _ => message.id = Some(key.to_owned()),
        }
    }
    let result = state.engine.send(message).await?;
    let status = if result.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(result)))
}

/// Filters and paging of the message records.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Tenant.
    app: Option<String>,
    /// Messages with at least one recipient in this status; with `receiver`, that recipient's.
    #[param(value_type = Option<Status>)]
    status: Option<String>,
    sender: Option<String>,
    /// Messages to this user.
    receiver: Option<String>,
    component: Option<String>,
    /// Created at or after (Unix ms).
    from: Option<i64>,
    /// Created before (Unix ms).
    to: Option<i64>,
    /// Page number, 1 to 1,000,000,000 (0 is taken as 1).
    #[param(minimum = 0, maximum = 1_000_000_000)]
    page: Option<u64>,
    /// Records per page, 1 to 1000 (default 20).
    #[param(minimum = 1, maximum = 1000)]
    size: Option<u64>,
}

/// Page the message records.
///
/// Directed messages, newest first, each with the count of its recipients per status.
#[utoipa::path(
    get,
    operation_id = "list_messages",
    path = "/api/v1/messages",
    tag = "messages",
    security(("admin_key" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of records", body = Page<MessageRecord>),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn list(
    _: Admin,
    State(state): State<Arc<ServerState>>,
    Params(query): Params<ListQuery>,
) -> Result<Json<Page<MessageRecord>>, ApiError> {
    let status = match query.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            ApiError::invalid(
                "bad_query",
                format!(
                    "status must be pending, pushed, failed, delivered, acked or expired, not {s:?}"
                ),
            )
        })?),
    };
    let (page, size) = super::paging(query.page, query.size)?;
    let page = state
        .engine
        .store()
        .list(MessageQuery {
            app: query.app,
            status,
            sender: query.sender,
            receiver: query.receiver,
            component: query.component,
            from: query.from,
            to: query.to,
            page,
            size,
        })
        .await?;
    Ok(Json(page))
}

fn parse_id(id: &str) -> Result<u64, ApiError> {
    id.parse::<MessageId>()
        .map(MessageId::get)
        .map_err(|e| ApiError::invalid("invalid_id", e.to_string()))
}

/// One message with per-recipient status.
#[utoipa::path(
    get,
    operation_id = "get_message",
    path = "/api/v1/messages/{id}",
    tag = "messages",
    security(("admin_key" = [])),
    params(("id" = String, Path, description = "Message id", pattern = "^[0-9]{1,20}$")),
    responses(
        (status = 200, description = "The record with `recipients`", body = MessageRecord),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn get_one(
    _: Admin,
    State(state): State<Arc<ServerState>>,
    Path(id): Path<String>,
) -> Result<Json<MessageRecord>, ApiError> {
    let id = parse_id(&id)?;
    let record = state.engine.store().get(id).await?;
    record
        .map(Json)
        .ok_or_else(|| ApiError::not_found("message"))
}

/// Delete a message and its recipients' records.
#[utoipa::path(
    delete,
    operation_id = "delete_message",
    path = "/api/v1/messages/{id}",
    tag = "messages",
    security(("admin_key" = [])),
    params(("id" = String, Path, description = "Message id", pattern = "^[0-9]{1,20}$")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn delete(
    _: Admin,
    State(state): State<Arc<ServerState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    if state.engine.store().delete(id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("message"))
    }
}

/// Pull the token's user's pending messages.
///
/// Every agent's, at most 1000, oldest first; they are marked `delivered`.
#[utoipa::path(
    post,
    path = "/api/v1/collect",
    tag = "messages",
    security(("client_token" = [])),
    responses(
        (status = 200, description = "The pending messages, now delivered", body = Collected),
        (status = 401, response = Unauthorized),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn collect(
    Client(identity): Client,
    State(state): State<Arc<ServerState>>,
) -> Result<Json<Collected>, ApiError> {
    let messages = state
        .engine
        .collect(&identity.app, &identity.user, MAX_COLLECT)
        .await?;
    Ok(Json(Collected { messages }))
}

/// Acknowledge messages.
///
/// Only the token's user's recipients change to `acked`.
#[utoipa::path(
    post,
    path = "/api/v1/ack",
    tag = "messages",
    security(("client_token" = [])),
    request_body = AckRequest,
    responses(
        (status = 200, description = "How many recipients changed to acked", body = AckResult),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = TooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn ack(
    Client(identity): Client,
    State(state): State<Arc<ServerState>>,
    Body(request): Body<AckRequest>,
) -> Result<Json<AckResult>, ApiError> {
    let acked = state
        .engine
        .ack(&identity.app, &identity.user, &request.ids)
        .await?;
    Ok(Json(AckResult { acked }))
}
