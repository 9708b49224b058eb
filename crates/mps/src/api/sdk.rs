//! The browser SDK and its demo page, built into the binary: `GET /sdk/mps.js`,
//! `GET /sdk/mps.d.ts` and `GET /demo`. The sources live in `clients/js/` (docs/sdk.md).

use axum::http::header::{ACCESS_CONTROL_ALLOW_ORIGIN, CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;

const SDK: &str = include_str!("../../../../clients/js/mps.js");
const TYPES: &str = include_str!("../../../../clients/js/mps.d.ts");
const DEMO: &str = include_str!("../../../../clients/js/demo.html");

/// Revalidated on every load, so pages pick up a new server's SDK at once.
const CACHE: &str = "no-cache";

/// Pages on any origin may import the SDK (a module script from another origin needs CORS).
const ANY_ORIGIN: &str = "*";

/// The browser SDK.
///
/// An ES module with no dependencies (docs/sdk.md); any origin may import it.
#[utoipa::path(
    get,
    operation_id = "sdk_script",
    path = "/sdk/mps.js",
    tag = "sdk",
    responses((status = 200, description = "The SDK", content_type = "text/javascript", body = String)),
)]
pub async fn script() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (CACHE_CONTROL, CACHE),
            (ACCESS_CONTROL_ALLOW_ORIGIN, ANY_ORIGIN),
        ],
        SDK,
    )
}

/// The SDK's TypeScript declarations.
#[utoipa::path(
    get,
    operation_id = "sdk_types",
    path = "/sdk/mps.d.ts",
    tag = "sdk",
    responses((status = 200, description = "TypeScript declarations", content_type = "application/typescript", body = String)),
)]
pub async fn types() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "application/typescript; charset=utf-8"),
            (CACHE_CONTROL, CACHE),
            (ACCESS_CONTROL_ALLOW_ORIGIN, ANY_ORIGIN),
        ],
        TYPES,
    )
}

/// A demo page that shows messages as they arrive.
#[utoipa::path(
    get,
    path = "/demo",
    tag = "sdk",
    params(
        ("token" = Option<String>, Query, description = "Client token the page fills in"),
        ("topics" = Option<String>, Query, description = "Comma-separated topic patterns the page fills in"),
        ("components" = Option<String>, Query, description = "Comma-separated components the page fills in"),
    ),
    responses((status = 200, description = "HTML page", content_type = "text/html", body = String)),
)]
pub async fn demo() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, CACHE),
        ],
        DEMO,
    )
}
