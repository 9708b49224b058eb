//! Structured logs: with `log.format = "json"` every line is a JSON object; request ids are
//! taken from `X-Request-Id` (or made) and sent back; each connection has one line when it
//! opens and one when it closes, with its reason and close code.

mod common;

use common::*;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The server's log lines, each parsed as JSON (a line that is not JSON fails the test).
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

async fn get_with_id(server: &Server, path: &str, id: Option<&str>) -> HttpResponse {
    let mut head = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        server.addr
    );
    if let Some(id) = id {
        head.push_str(&format!("X-Request-Id: {id}\r\n"));
    }
    raw_http(&server.addr, &format!("{head}\r\n")).await
}

#[tokio::test]
async fn json_logs_carry_request_ids_and_connection_close_reasons() {
    let server = Server::with_log(&[("MPS_LOG__FORMAT", "json"), ("RUST_LOG", "info")]);

    // The caller's request id comes back; without one, the server makes one.
    let answer = get_with_id(&server, "/healthz", Some("req-http-1")).await;
    assert_eq!(answer.header("x-request-id"), Some("req-http-1"));
    let answer = get_with_id(&server, "/healthz", None).await;
    let made = answer.header("x-request-id").expect("a request id is made");
    assert_eq!(made.len(), 36, "a UUID: {made}");

    // A WebSocket opened with a request id, then disconnected by an operator.
    let token = server.token("alice").await;
    let mut request = server.ws().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-request-id", "req-ws-42".parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        response.headers().get("x-request-id").unwrap(),
        "req-ws-42",
        "the upgrade answer carries the request id"
    );
    send_text(&mut ws, open_text(&token, "alice", "ios", &[])).await;
    assert_eq!(next_json(&mut ws).await["Type"], 2);
    let id = server.client_ids("alice").await[0].clone();
    server.api().disconnect(&id).await.unwrap();
    let (_, code) = until_close(&mut ws).await;
    assert_eq!(code, 4403);

    // A second connection that the client closes itself.
    let mut own = server.open_raw("bob", "cs", &[]).await;
    send_text(&mut own, r#"{"Type":7,"Seq":9}"#).await;
    let (_, code) = until_close(&mut own).await;
    assert_eq!(code, 1000);

    eventually("both close lines", || async {
        server.log().matches("client disconnected").count() >= 2
    })
    .await;
    let lines = json_lines(&server.log());
    let of = |message: &str, user: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message && l["user"] == user)
            .unwrap_or_else(|| panic!("no {message:?} line for {user}: {lines:#?}"))
            .clone()
    };

    let opened = of("client connected", "alice");
    assert_eq!(opened["target"], "mps::connections");
    assert_eq!(opened["level"], "INFO");
    assert_eq!(opened["request_id"], "req-ws-42");
    assert_eq!(opened["conn"].to_string(), id, "the client id as listed");
    assert_eq!(opened["transport"], "websocket");
    assert_eq!(opened["agent"], "ios");
    assert_eq!(opened["app"], "default");
    assert!(opened["node"].is_string() && opened["remote"].is_string());

    let closed = of("client disconnected", "alice");
    assert_eq!(closed["request_id"], "req-ws-42");
    assert_eq!(closed["reason"], "kicked");
    assert_eq!(closed["close_code"], 4403);
    assert_eq!(closed["transport"], "websocket");
    assert!(closed["duration_ms"].as_i64().is_some(), "{closed}");
    assert!(closed["timestamp"].is_string());

    let closed = of("client disconnected", "bob");
    assert_eq!(closed["reason"], "client_closed");
    assert_eq!(closed["close_code"], 1000);
    assert!(
        closed["request_id"].is_string(),
        "a made request id: {closed}"
    );
}

/// A request id that is not a short visible token is replaced by one the server makes: it is
/// neither sent back nor copied into the logs.
#[tokio::test]
async fn odd_request_ids_are_replaced() {
    let server = Server::with_log(&[("MPS_LOG__FORMAT", "json"), ("RUST_LOG", "info")]);
    let long = "x".repeat(300);
    let token = server.token("carol").await;
    let mut request = server.ws().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-request-id", long.parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    let made = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(made.len(), 36, "a UUID: {made}");
    for odd in ["has space", "caf\u{e9}"] {
        let answer = get_with_id(&server, "/healthz", Some(odd)).await;
        let sent = answer.header("x-request-id").unwrap_or_default();
        assert!(
            sent != odd && sent.len() == 36,
            "{odd:?} came back as {sent:?}"
        );
    }
    send_text(&mut ws, open_text(&token, "carol", "bs", &[])).await;
    assert_eq!(next_json(&mut ws).await["Type"], 2);
    eventually("the open line", || async {
        server.log().contains("client connected")
    })
    .await;
    let log = server.log();
    assert!(!log.contains(&long), "{log}");
    let opened = json_lines(&log)
        .into_iter()
        .find(|l| l["message"] == "client connected")
        .unwrap();
    assert_eq!(opened["request_id"], made.as_str(), "{opened}");
}
