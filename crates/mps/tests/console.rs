//! What the web console needs from the server, against the real binary: its files, the client
//! filters and the counters of `GET /api/v1/stats`. The page itself is driven in a real browser
//! by tests/browser/console.test.js.

mod common;

use common::*;
use serde_json::Value;

#[tokio::test]
async fn the_console_is_served_from_the_binary_with_a_strict_policy() {
    let server = Server::start();
    let moved = server.request("GET", "/console", None, None).await;
    assert_eq!(moved.status, 308);
    assert_eq!(moved.header("location"), Some("console/"));

    let page = server.request("GET", "/console/", None, None).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let policy = page.header("content-security-policy").unwrap();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert!(
        page.body
            .contains("<script type=\"module\" src=\"console.js\">")
    );
    // Nothing from elsewhere: no CDN, no external network.
    assert!(!page.body.contains("http://") && !page.body.contains("https://"));

    for (file, kind) in [
        ("console.js", "text/javascript"),
        ("console.css", "text/css"),
    ] {
        let answer = server
            .request("GET", &format!("/console/{file}"), None, None)
            .await;
        assert_eq!(answer.status, 200, "{file}");
        assert!(answer.header("content-type").unwrap().starts_with(kind));
        let etag = answer.header("etag").unwrap().to_owned();
        let head = format!(
            "GET /console/{file} HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n"
        );
        let again = raw_http(&server.addr, &head).await;
        assert_eq!(again.status, 304, "{file}");
        assert!(again.body.is_empty());
    }
    let script = server
        .request("GET", "/console/console.js", None, None)
        .await
        .body;
    assert!(!script.contains("innerHTML"), "text only, never markup");

    let missing = server
        .request("GET", "/console/../admin.key", None, None)
        .await;
    assert_eq!(missing.status, 404);
    let missing = server.request("GET", "/console/x.js", None, None).await;
    assert_eq!(
        (missing.status, missing.error_code()),
        (404, "not_found".into())
    );
}

/// `user/agent` of the clients `GET /api/v1/clients{query}` lists.
async fn list(server: &Server, query: &str) -> Vec<String> {
    let answer = server
        .admin("GET", &format!("/api/v1/clients{query}"))
        .await;
    assert_eq!(answer.status, 200, "{query}: {answer:?}");
    let clients: Vec<Value> = serde_json::from_str(&answer.body).unwrap();
    clients
        .iter()
        .map(|c| {
            format!(
                "{}/{}",
                c["user"].as_str().unwrap(),
                c["agent"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test]
async fn clients_can_be_filtered_and_limited() {
    let server = Server::start();
    let _a = server.connect("alice", "bs", &[]).await;
    let _b = server.connect("alice", "ios", &[]).await;
    let _c = server.connect("bob", "bs", &[]).await;
    server.wait_clients("alice", 2).await;
    server.wait_clients("bob", 1).await;

    assert_eq!(list(&server, "").await.len(), 3);
    assert_eq!(
        list(&server, "?user=alice").await,
        ["alice/bs", "alice/ios"]
    );
    assert_eq!(list(&server, "?agent=bs").await, ["alice/bs", "bob/bs"]);
    assert_eq!(list(&server, "?user=alice&agent=ios").await, ["alice/ios"]);
    assert_eq!(
        list(&server, "?transport=websocket&app=default")
            .await
            .len(),
        3
    );
    assert_eq!(list(&server, "?transport=sse").await.len(), 0);
    assert_eq!(
        list(&server, "?user=").await.len(),
        3,
        "an empty filter is no filter"
    );
    assert_eq!(
        list(&server, "?limit=1").await,
        ["alice/bs"],
        "the oldest first"
    );
    let node = server.api().clients().await.unwrap()[0].node.clone();
    assert_eq!(list(&server, &format!("?node={node}")).await.len(), 3);
    assert_eq!(list(&server, "?node=elsewhere").await.len(), 0);

    let bad = server.admin("GET", "/api/v1/clients?colour=red").await;
    assert_eq!((bad.status, bad.error_code()), (400, "bad_query".into()));
    let bad = server.admin("GET", "/api/v1/clients?limit=-1").await;
    assert_eq!((bad.status, bad.error_code()), (400, "bad_query".into()));
}

#[tokio::test]
async fn stats_count_messages_deliveries_acks_and_errors() {
    let server = Server::start();
    let stats = || async {
        let answer = server.admin("GET", "/api/v1/stats").await;
        assert_eq!(answer.status, 200, "{answer:?}");
        serde_json::from_str::<Value>(&answer.body).unwrap()
    };
    let before = stats().await;
    assert_eq!(before["connections"], 0);
    assert_eq!(before["webhooks"], serde_json::json!([]));
    for field in ["messages", "deliveries", "acks", "api_errors", "logins"] {
        assert!(before["totals"][field].is_u64(), "{field}: {before}");
    }

    let mut alice = server.connect("alice", "bs", &[]).await;
    let sent = server
        .api()
        .send(&message(r#"{"n":1}"#, Some(&["alice"])))
        .await
        .unwrap();
    assert_eq!(alice.next_push(WAIT).await.unwrap().id, sent.id);
    alice.ack(std::slice::from_ref(&sent.id)).await.unwrap();
    let refused = server.admin_post("/api/v1/messages", "{not json").await;
    assert_eq!(refused.status, 400);

    let grew = |field: &str, after: &Value| {
        after["totals"][field].as_u64().unwrap() > before["totals"][field].as_u64().unwrap()
    };
    eventually("the counters to move", || async {
        let after = stats().await;
        after["connections"] == 1
            && [
                "messages",
                "deliveries",
                "directed_delivered",
                "acks",
                "api_errors",
                "logins",
            ]
            .iter()
            .all(|f| grew(f, &after))
    })
    .await;

    let unauthorized = server
        .request("GET", "/api/v1/stats", Some("Bearer wrong"), None)
        .await;
    assert_eq!(unauthorized.status, 401);
}
