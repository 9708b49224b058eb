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

pub async fn demo() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, CACHE),
        ],
        DEMO,
    )
}
