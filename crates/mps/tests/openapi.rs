//! `GET /api/openapi.json`: it documents every route the server serves (and nothing it does not
//! serve), it is a valid OpenAPI document, and the server answers as it says.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;

/// HTTP methods an OpenAPI path item can hold.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

async fn document(server: &Server) -> Value {
    let response = server.request("GET", "/api/openapi.json", None, None).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.header("content-type"), Some("application/json"));
    serde_json::from_str(&response.body).expect("the document is JSON")
}

/// `{name}` and `{*name}` segments as `{}`, so that parameter names do not matter.
fn normalize(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment.starts_with('{') && segment.ends_with('}') {
                "{}"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// (METHOD, path) of every operation of the document.
fn documented(document: &Value) -> BTreeSet<(String, String)> {
    let paths = document["paths"].as_object().expect("paths");
    let mut operations = BTreeSet::new();
    for (path, item) in paths {
        for method in METHODS {
            if item.get(method).is_some() {
                operations.insert((method.to_uppercase(), normalize(path)));
            }
        }
    }
    operations
}

/// (METHOD, path) of every route the server's router serves: the router `mps serve` runs,
/// read from its `Debug` form, the only listing axum gives. `HEAD`, which axum adds to every
/// `GET`, is left out; a route that takes any method is listed as `ANY`.
fn served() -> BTreeSet<(String, String)> {
    let router = format!("{:?}", mps::server::app(&mps::config::Config::default()));
    let (own, _) = router
        .split_once("fallback_router:")
        .expect("axum's Router debug form has a fallback_router");
    let (routes, nodes) = own
        .split_once("node: Node { paths: {")
        .expect("axum's Router debug form lists its paths");
    // `RouteId(7): "/api/v1/stats"`
    let mut paths = std::collections::BTreeMap::new();
    for entry in nodes.split("RouteId(").skip(1) {
        let (id, rest) = entry.split_once("): \"").expect("RouteId(N): \"path\"");
        let path = rest.split('"').next().expect("a quoted path");
        paths.insert(id.to_owned(), path.to_owned());
    }
    // `RouteId(7): MethodRouter(MethodRouter { get: ..., allow_header: Bytes(b"GET,HEAD") })`
    let mut served = BTreeSet::new();
    for entry in routes.split("RouteId(").skip(1) {
        let (id, rest) = entry.split_once("): ").expect("RouteId(N): endpoint");
        let path = normalize(paths.get(id).expect("every route has a path"));
        let methods = rest
            .split_once("allow_header: Bytes(b\"")
            .and_then(|(_, allowed)| allowed.split_once('"'))
            .map(|(allowed, _)| allowed.split(',').map(str::to_owned).collect::<Vec<_>>())
            .unwrap_or_else(|| vec!["ANY".to_owned()]);
        for method in methods {
            if method != "HEAD" {
                served.insert((method, path.clone()));
            }
        }
    }
    assert_eq!(
        served.iter().map(|(_, p)| p).collect::<BTreeSet<_>>().len(),
        paths.len(),
        "every path of the router was read: {router}"
    );
    served
}

#[tokio::test]
async fn every_route_the_server_serves_is_documented() {
    let server = Server::start();
    let document = document(&server).await;
    let documented = documented(&document);
    let served = served();
    assert!(
        served.len() >= 20,
        "the router's routes were read: {served:?}"
    );
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "served but not in /api/openapi.json (register the route with `routes!` in \
         api::router and give its handler a #[utoipa::path], docs/api.md): {undocumented:?}"
    );
    let not_served: Vec<_> = documented.difference(&served).collect();
    assert!(
        not_served.is_empty(),
        "documented but not served: {not_served:?}"
    );
}

#[tokio::test]
async fn the_document_describes_security_errors_and_parameters() {
    let server = Server::start();
    let document = document(&server).await;
    assert_eq!(document["openapi"], "3.1.0");
    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(schemes["admin_key"]["scheme"], "bearer");
    assert_eq!(schemes["client_token"]["scheme"], "bearer");
    assert_eq!(schemes["client_token_query"]["in"], "query");
    assert!(document["components"]["schemas"]["ErrorResponse"].is_object());

    let mut operation_ids = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in METHODS {
            let Some(operation) = item.get(method) else {
                continue;
            };
            let id = operation["operationId"].as_str().expect("operationId");
            assert!(operation_ids.insert(id.to_owned()), "{id} twice");
            let responses = operation["responses"].as_object().unwrap();
            // Every error answer is an ErrorResponse.
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    let text = response.to_string();
                    assert!(
                        text.contains("#/components/responses/")
                            || text.contains("#/components/schemas/ErrorResponse"),
                        "{method} {path} {status} is not an ErrorResponse: {text}"
                    );
                }
            }
            // Whatever asks for credentials says what happens without them.
            if operation.get("security").is_some() {
                assert!(
                    responses.contains_key("401"),
                    "{method} {path} has security but no 401"
                );
            }
        }
    }

    let list = &document["paths"]["/api/v1/messages"]["get"];
    let names: BTreeSet<_> = list["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["in"] == "query")
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in [
        "status",
        "sender",
        "receiver",
        "component",
        "app",
        "from",
        "to",
        "page",
        "size",
    ] {
        assert!(names.contains(name), "GET /api/v1/messages lacks {name}");
    }
    assert_eq!(
        list["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Page_MessageRecord"
    );
    let send = &document["paths"]["/api/v1/messages"]["post"];
    assert_eq!(
        send["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/SendMessage"
    );
    assert_eq!(send["security"][0]["admin_key"], serde_json::json!([]));
    let collect = &document["paths"]["/api/v1/collect"]["post"];
    assert_eq!(
        collect["security"][0]["client_token"],
        serde_json::json!([])
    );
}

/// Each operation that asks for credentials answers 401 with an `ErrorResponse` without them,
/// as its document says.
#[tokio::test]
async fn operations_with_security_refuse_requests_without_credentials() {
    let server = Server::start();
    let document = document(&server).await;
    let mut checked = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in METHODS {
            let Some(operation) = item.get(method) else {
                continue;
            };
            if operation.get("security").is_none() {
                continue;
            }
            let concrete = path
                .split('/')
                .map(|s| if s.starts_with('{') { "1" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            let body = operation.get("requestBody").map(|_| "{}");
            let response = server
                .request(&method.to_uppercase(), &concrete, None, body)
                .await;
            assert_eq!(response.status, 401, "{method} {path}: {}", response.body);
            assert_eq!(response.error_code(), "missing_token", "{method} {path}");
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} operations checked");
}

/// The document passes `openapi-spec-validator` (PyPI), which CI installs; elsewhere the test
/// is skipped with a note when the validator is missing.
#[tokio::test]
async fn the_document_is_valid_openapi() {
    let server = Server::start();
    let response = server.request("GET", "/api/openapi.json", None, None).await;
    let file = server.data.path().join("openapi.json");
    std::fs::write(&file, &response.body).unwrap();
    let validator = std::env::var("OPENAPI_SPEC_VALIDATOR")
        .unwrap_or_else(|_| "openapi-spec-validator".to_owned());
    match std::process::Command::new(&validator).arg(&file).output() {
        Ok(output) => assert!(
            output.status.success(),
            "{validator}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{validator} is needed under CI: {e} (pip install openapi-spec-validator)")
        }
        Err(e) => {
            eprintln!("skipped: {validator} not found ({e}); pip install openapi-spec-validator")
        }
    }
}
