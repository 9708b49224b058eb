//! The OpenAPI document: its fixed parts (title, security schemes, the shared error answers) and
//! `GET /api/openapi.json`. The operations themselves come from the `#[utoipa::path]` of each
//! handler, registered together with its route in [`super::router`], so the document and the
//! routes cannot part.

use std::sync::OnceLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use mps_proto::{ErrorBody, ErrorResponse};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::http::{
    BadRequest, Forbidden, NotFound, TooLarge, Unauthorized, Unavailable, UnsupportedMediaType,
};

/// Security scheme of back-end calls: `Authorization: Bearer ADMIN_KEY`.
pub const ADMIN_KEY: &str = "admin_key";
/// Security scheme of client calls: `Authorization: Bearer TOKEN` (a client JWT).
pub const CLIENT_TOKEN: &str = "client_token";
/// The same client token as a `token` query parameter (`EventSource` cannot set headers).
pub const CLIENT_TOKEN_QUERY: &str = "client_token_query";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mps",
        description = "The HTTP API of mps, the message push service: send messages, page their \
                       records and per-recipient status, list and disconnect online clients, issue \
                       client tokens; and the client transports (WebSocket, Server-Sent Events, \
                       polling). Every error answer is an `ErrorResponse`. Times are Unix \
                       milliseconds; message ids are decimal strings.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&SecuritySchemes),
    components(
        schemas(ErrorResponse, ErrorBody),
        responses(BadRequest, Unauthorized, Forbidden, NotFound, TooLarge, UnsupportedMediaType, Unavailable),
    ),
    tags(
        (name = "messages", description = "Send messages and follow their delivery"),
        (name = "clients", description = "Online clients (connections)"),
        (name = "tokens", description = "Client tokens"),
        (name = "devices", description = "Device registrations (push modes) for vendor push"),
        (name = "users", description = "Users' tags and attributes (audiences) and preferences (mutes, quiet hours)"),
        (name = "transports", description = "Client connections: WebSocket, Server-Sent Events, polling"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
        (name = "sdk", description = "The browser SDK and its demo page"),
        (name = "console", description = "The web console (docs/console.md)"),
    ),
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            ADMIN_KEY,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin key (`admin_key` setting, or `admin.key` in the data directory)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            CLIENT_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A client token (`POST /api/v1/tokens` or `mps token`): its `sub` is the user",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            CLIENT_TOKEN_QUERY,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "A client token in the query, for clients that cannot set headers (EventSource)",
            ))),
        );
    }
}

/// The document, rendered once.
fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let (_, api) = super::router();
        serde_json::to_string(&api).expect("an OpenAPI document always serializes")
    })
}

/// This document.
///
/// The OpenAPI 3.1 description of every route the server serves.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)),
)]
pub async fn openapi() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], document())
}
