//! The HTTP API under `/api/v1`, plus `/healthz`, `/readyz`, `/metrics` and the OpenAPI document
//! ([`openapi`]); [`router`] is the table of every route the server serves. Handlers are thin:
//! they check credentials with an extractor, call the engine or the store, and map errors to
//! JSON in one place ([`ApiError`]).

mod clients;
mod console;
mod devices;
mod messages;
pub mod openapi;
mod sdk;
mod tokens;
mod users;

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use mps_proto::ErrorResponse;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Identity, bearer};
use crate::engine::EngineError;
use crate::http::{ApiError, Params};
use crate::state::ServerState;

/// Every route the server serves, each registered together with its OpenAPI operation (the
/// handler's `#[utoipa::path]`): the router and the document of `GET /api/openapi.json` come out
/// of this one table. A route added here without `#[utoipa::path]` does not compile; one added
/// to the router some other way fails the `openapi` test (docs/api.md, "Adding a route").
///
/// The table has three parts: the client routes (transports, client-token and device calls,
/// the SDK), the admin routes (the admin-key API, `/metrics`, `/console`, the OpenAPI document)
/// and those on every listener (health checks, device registrations). With `admin_listen` set, [`client_router`] and [`admin_router`] serve
/// them on two listeners; otherwise this one router serves all.
pub fn router() -> (Router<Arc<ServerState>>, utoipa::openapi::OpenApi) {
    finish(client_routes().merge(admin_routes()).merge(shared_routes()))
}

/// What the client listener serves when the admin routes have their own listener.
pub fn client_router() -> Router<Arc<ServerState>> {
    finish(client_routes().merge(shared_routes())).0
}

/// What the admin listener (`admin_listen`) serves.
pub fn admin_router() -> Router<Arc<ServerState>> {
    finish(admin_routes().merge(shared_routes())).0
}

type Routes = OpenApiRouter<Arc<ServerState>>;

/// Routes for clients: transports, client-token calls, the SDK and its demo.
fn client_routes() -> Routes {
    use crate::transport::{echo, poll, sse, ws};
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(messages::collect))
        .routes(routes!(messages::ack))
        .routes(routes!(devices::logout))
        .routes(routes!(devices::vapid_public_key))
        .routes(routes!(
            users::get_my_preferences,
            users::put_my_preferences
        ))
        .routes(routes!(ws::protocol_ws))
        .routes(routes!(ws::simple_ws))
        .routes(routes!(sse::sse))
        .routes(routes!(poll::poll))
        .routes(routes!(echo::echo))
        .routes(routes!(sdk::script))
        .routes(routes!(sdk::types))
        .routes(routes!(sdk::demo))
}

/// Routes for the back end and operators: everything that takes only the admin key, the
/// metrics, the console and the OpenAPI document.
fn admin_routes() -> Routes {
    OpenApiRouter::new()
        .routes(routes!(messages::send, messages::list))
        .routes(routes!(messages::get_one, messages::delete))
        .routes(routes!(clients::list))
        .routes(routes!(clients::disconnect))
        .routes(routes!(clients::stats))
        .routes(routes!(tokens::issue))
        .routes(routes!(users::get_tags, users::put_tags))
        .routes(routes!(users::get_attributes, users::put_attributes))
        .routes(routes!(users::get_preferences, users::put_preferences))
        .routes(routes!(metrics))
        .routes(routes!(openapi::openapi))
        .routes(routes!(console::redirect))
        .routes(routes!(console::index))
        .routes(routes!(console::asset))
}

/// Routes on every listener: the health checks, and device registrations (a client token
/// registers its own devices; the admin key, and the console, any user's).
fn shared_routes() -> Routes {
    OpenApiRouter::new()
        .routes(routes!(devices::register, devices::remove, devices::list))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// The router of a table, with the JSON answers for unknown routes and methods.
fn finish(routes: Routes) -> (Router<Arc<ServerState>>, utoipa::openapi::OpenApi) {
    let (router, api) = routes.split_for_parts();
    let router = router
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        });
    (router, api)
}

/// Alive.
///
/// `200 ok` while the process runs.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "The process runs", content_type = "text/plain", body = String, example = "ok")),
)]
async fn healthz() -> &'static str {
    "ok"
}

/// Ready to serve.
///
/// Ready while not shutting down, the store and broker answer (PostgreSQL and Redis in a
/// cluster) and every configured message queue consumer is connected.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", content_type = "text/plain", body = String, example = "ready"),
        (status = 503, description = "Not ready: `shutting_down`, `store_unavailable`, \
            `broker_unavailable` or `ingest_disconnected`", body = ErrorResponse),
    ),
)]
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

/// Prometheus metrics.
///
/// Every metric, its labels and meaning: docs/metrics.md.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String)),
)]
async fn metrics(State(state): State<Arc<ServerState>>) -> String {
    metrics::gauge!("mps_sockets_open").set(state.admission.connections() as f64);
    crate::telemetry::allocator_gauges();
    state.metrics.render()
}

/// Most records one page holds, and the last page one may ask for (beyond it the offset would
/// not fit the stores' 64-bit integers).
const MAX_SIZE: u64 = 1000;
const MAX_PAGE: u64 = 1_000_000_000;

/// The page (default 1; 0 is taken as 1) and size (default 20) of a listing, checked.
pub fn paging(page: Option<u64>, size: Option<u64>) -> Result<(u64, u64), ApiError> {
    let size = size.unwrap_or(20);
    if !(1..=MAX_SIZE).contains(&size) {
        return Err(ApiError::invalid(
            "bad_query",
            format!("size must be 1 to {MAX_SIZE}"),
        ));
    }
    let page = page.unwrap_or(1).max(1);
    if page > MAX_PAGE {
        return Err(ApiError::invalid(
            "bad_query",
            format!("page must be 1 to {MAX_PAGE}"),
        ));
    }
    Ok((page, size))
}

/// A JSON body whose rejections are [`ApiError`]s. It must arrive within
/// `limits.request_timeout` (a client dribbling its body is cut off with 408).
pub struct Body<T>(pub T);

impl<T> FromRequest<Arc<ServerState>> for Body<T>
where
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(
        request: axum::extract::Request,
        state: &Arc<ServerState>,
    ) -> Result<Self, ApiError> {
        let deadline = std::time::Duration::from_secs(state.config.limits.request_timeout.max(1));
        match tokio::time::timeout(deadline, Json::<T>::from_request(request, state)).await {
            Ok(Ok(Json(body))) => Ok(Body(body)),
            Ok(Err(rejection)) => Err(rejection.into()),
            Err(_) => {
                crate::limits::rejected(crate::limits::Limit::RequestTimeout);
                Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    "the request body did not arrive in time",
                ))
            }
        }
    }
}

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
            crate::limits::count_bad_input("bad_admin_key");
            ApiError::from(e)
        })?;
        state.admin_request()?;
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
            crate::limits::count_bad_input(e.code());
            ApiError::from(e)
        })?;
        state.client_request(&identity)?;
        Ok(Client(identity))
    }
}
