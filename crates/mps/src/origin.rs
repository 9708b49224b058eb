//! Browser origins (`http.allowed_origins`): on the browser-facing routes (the WebSocket,
//! SSE and polling transports and the calls of the browser SDK), a request whose `Origin` is not
//! allowed is refused with 403 `origin_not_allowed` before it reaches its handler, and an allowed
//! one gets its CORS answer: the preflight (`OPTIONS`) is answered here, and the other answers
//! carry `Access-Control-Allow-Origin`. Requests without `Origin` (not from a browser) pass
//! untouched, and so does every other route.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ORIGIN, VARY,
};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::ApiError;
use crate::limits::{Limit, rejected};

/// Routes a browser page calls (`clients/js/mps.js` and the browser's own WebSocket); a path
/// ending in `/` covers everything under it.
const BROWSER_ROUTES: [&str; 10] = [
    "/ws",
    "/websocket/",
    "/sse",
    "/poll",
    "/api/v1/collect",
    "/api/v1/ack",
    "/api/v1/devices",
    "/api/v1/logout",
    "/api/v1/webpush/vapid-public-key",
    "/api/v1/me/preferences",
];

/// Methods and request headers a page may use on them (what the preflight allows).
const METHODS: &str = "GET, POST, PUT, DELETE";
const HEADERS: &str = "authorization, content-type, last-event-id, x-request-id";
/// Answer headers a page may read.
const EXPOSED: &str = "retry-after, x-request-id";
/// Seconds a browser may keep a preflight answer.
const PREFLIGHT_MAX_AGE: &str = "600";

/// The allowed origins.
pub struct Origins {
    /// Exact origins (`scheme://host[:port]`, no trailing slash).
    allowed: Vec<String>,
    /// `"*"` was listed: every origin is allowed.
    any: bool,
}

impl Origins {
    /// The allow-list of `http.allowed_origins`; `None` when it is empty (nothing is checked).
    pub fn from_config(origins: &[String]) -> Option<Arc<Origins>> {
        if origins.is_empty() {
            return None;
        }
        Some(Arc::new(Origins {
            allowed: origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            any: origins.iter().any(|o| o == "*"),
        }))
    }

    fn allows(&self, origin: &str) -> bool {
        self.any || self.allowed.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }
}

/// Whether `path` is one of the browser-facing routes.
fn browser_route(path: &str) -> bool {
    BROWSER_ROUTES
        .iter()
        .any(|route| match route.strip_suffix('/') {
            Some(_) => path.starts_with(route),
            None => path == *route,
        })
}

/// Middleware: the origin check and CORS on the browser-facing routes.
pub async fn check(State(origins): State<Arc<Origins>>, request: Request, next: Next) -> Response {
    let origin = match request.headers().get(ORIGIN) {
        Some(origin) if browser_route(request.uri().path()) => origin.clone(),
        _ => return next.run(request).await,
    };
    if !origin.to_str().is_ok_and(|o| origins.allows(o)) {
        rejected(Limit::Origin);
        let mut response = ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "pages of this origin may not use this server",
        )
        .into_response();
        response
            .headers_mut()
            .insert(VARY, HeaderValue::from_static("origin"));
        return response;
    }
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key("access-control-request-method");
    let mut response = if preflight {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(METHODS),
        );
        headers.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(HEADERS),
        );
        headers.insert(
            ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(PREFLIGHT_MAX_AGE),
        );
        response
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED),
    );
    headers.append(VARY, HeaderValue::from_static("origin"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_routes_and_allowed_origins() {
        assert!(browser_route("/ws"));
        assert!(browser_route("/websocket/abc"));
        assert!(browser_route("/api/v1/ack"));
        assert!(!browser_route("/api/v1/messages"));
        assert!(!browser_route("/wsx"));
        let origins = Origins::from_config(&["https://app.example/".into()]).unwrap();
        assert!(origins.allows("https://app.example"));
        assert!(origins.allows("HTTPS://APP.EXAMPLE"));
        assert!(!origins.allows("https://app.example.evil"));
        assert!(!origins.allows("null"));
        assert!(Origins::from_config(&["*".into()]).unwrap().allows("null"));
        assert!(Origins::from_config(&[]).is_none());
    }
}
