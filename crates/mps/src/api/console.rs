//! The web console, built into the binary: `GET /console/` and its script and style sheet
//! (sources in `crates/mps/console/`, docs/console.md). The page itself is public and holds no
//! data; it asks for the admin key and calls the API with it, like any other back end.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, LOCATION,
    REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::ApiError;

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_str!("../../console/index.html"),
};

const ASSETS: [Asset; 2] = [
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../console/console.js"),
    },
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../console/console.css"),
    },
];

/// Scripts, styles and API calls from the server's own origin only; no inline code, no frames.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The web console's address without the slash.
///
/// Redirects to `console/`, so that the page's relative links work behind a path prefix too.
#[utoipa::path(
    get,
    operation_id = "console_redirect",
    path = "/console",
    tag = "console",
    responses((status = 308, description = "To `console/`", headers(("location" = String)))),
)]
pub async fn redirect() -> Response {
    (StatusCode::PERMANENT_REDIRECT, [(LOCATION, "console/")]).into_response()
}

/// The web console.
///
/// A page that asks for the admin key and calls this API with it (docs/console.md).
#[utoipa::path(
    get,
    operation_id = "console_page",
    path = "/console/",
    tag = "console",
    responses(
        (status = 200, description = "HTML page", content_type = "text/html", body = String),
        (status = 304, description = "The `If-None-Match` copy is current"),
    ),
)]
pub async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

/// A file of the web console.
#[utoipa::path(
    get,
    operation_id = "console_file",
    path = "/console/{file}",
    tag = "console",
    params(("file" = String, Path, description = "`console.js` or `console.css`")),
    responses(
        (status = 200, description = "The script or style sheet", content_type = "text/javascript", body = String),
        (status = 304, description = "The `If-None-Match` copy is current"),
        (status = 404, response = crate::http::NotFound),
    ),
)]
pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(asset) => serve(asset, &headers),
        None => ApiError::not_found("console file").into_response(),
    }
}

/// Answers with the asset, or `304` when the browser's copy is current: the files change only
/// with the binary, so their hashes, computed once, make stable validators.
fn serve(asset: &'static Asset, headers: &HeaderMap) -> Response {
    static TAGS: OnceLock<Vec<(&'static str, String)>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        std::iter::once(&INDEX)
            .chain(ASSETS.iter())
            .map(|a| {
                let hash = Sha256::digest(a.body.as_bytes());
                (a.name, format!("\"{}\"", hex::encode(&hash[..12])))
            })
            .collect()
    });
    let tag = tags
        .iter()
        .find(|(name, _)| *name == asset.name)
        .map(|(_, tag)| tag.as_str())
        .unwrap_or("\"\"");
    let common = [
        (CACHE_CONTROL, "no-cache"),
        (ETAG, tag),
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (REFERRER_POLICY, "no-referrer"),
        (X_FRAME_OPTIONS, "DENY"),
        (CONTENT_SECURITY_POLICY, POLICY),
    ];
    let fresh = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (common, [(CONTENT_TYPE, asset.content_type)], asset.body).into_response()
}
