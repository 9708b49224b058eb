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

use super::{Admin, ApiError, Body, Client, Params};
use crate::server::ServerState;
use crate::store::MessageQuery;

/// Most messages one pull returns.
const MAX_COLLECT: usize = 1000;

/// `201` for a message sent, `200` for a repeat of an idempotency key (the first message's id).
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    app: Option<String>,
    status: Option<String>,
    sender: Option<String>,
    receiver: Option<String>,
    component: Option<String>,
    from: Option<i64>,
    to: Option<i64>,
    page: Option<u64>,
    size: Option<u64>,
}

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
                format!("status must be pending, delivered, acked or expired, not {s:?}"),
            )
        })?),
    };
    let size = query.size.unwrap_or(20);
    if !(1..=1000).contains(&size) {
        return Err(ApiError::invalid("bad_query", "size must be 1 to 1000"));
    }
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
            page: query.page.unwrap_or(1).max(1),
            size,
        })
        .await?;
    Ok(Json(page))
}

fn parse_id(id: &str) -> Result<u64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::invalid("invalid_id", format!("{id:?} is not a message id")))
}

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
