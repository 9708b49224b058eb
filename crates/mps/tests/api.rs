//! The HTTP API against the real binary: tokens, message records, online clients, pull and ack.

mod common;

use common::*;
use mps_client::proto::{DeliveryClass, Status};
use mps_client::{Api, PushClient};
use serde_json::Value;

/// `POST /api/v1/tokens` with the given `Authorization` value.
async fn post_token(server: &Server, auth: Option<&str>) -> HttpResponse {
    server
        .request("POST", "/api/v1/tokens", auth, Some(r#"{"user":"alice"}"#))
        .await
}

/// Asserts the status and a JSON error body `{"error":{"code":..,"message":..}}`; returns the code.
fn error_code(response: HttpResponse, status: u16) -> String {
    assert_eq!(response.status, status, "{response:?}");
    assert_eq!(response.header("content-type"), Some("application/json"));
    response.error_code()
}

#[tokio::test]
async fn tokens_come_with_the_default_line_url_and_need_the_admin_key() {
    let server = Server::start();
    let issued = server.api().token("alice").await.unwrap();
    assert_eq!(issued.user, "alice");
    assert_eq!(issued.app, "default");
    assert!(issued.expires > unix_now());
    assert_eq!(issued.urls.len(), 1, "{:?}", issued.urls);
    assert_eq!(issued.urls["default"], format!("ws://{}/ws", server.addr));
    // The token opens a session.
    let client = PushClient::open(
        &issued.urls["default"],
        &issued.token,
        client_info("alice", "bs", &[]),
    )
    .await
    .unwrap();
    assert_eq!(client.session.user, "alice");

    let missing = error_code(post_token(&server, None).await, 401);
    assert_eq!(missing, "missing_token");
    let wrong = error_code(post_token(&server, Some("Bearer not-the-key")).await, 401);
    assert_eq!(wrong, "wrong_key");
    let not_bearer = error_code(post_token(&server, Some(ADMIN_KEY)).await, 401);
    assert_eq!(not_bearer, "missing_token");
    let ok = post_token(&server, Some(&format!("Bearer {ADMIN_KEY}"))).await;
    assert_eq!(ok.status, 200);
    let issued: mps_client::proto::TokenResponse = serde_json::from_str(&ok.body).unwrap();
    assert_eq!(issued.user, "alice");
}

#[tokio::test]
async fn tokens_carry_the_configured_lines() {
    let server = Server::with_env(&[("MPS_LINES__INTRANET", "ws://10.0.0.1:8080/ws")]);
    let issued = server.api().token("alice").await.unwrap();
    assert_eq!(issued.urls["intranet"], "ws://10.0.0.1:8080/ws");
    assert!(!issued.urls.contains_key("default"), "{:?}", issued.urls);
}

#[tokio::test]
async fn message_records_page_filter_track_status_and_delete() {
    let server = Server::start();
    let api = server.api();
    let mut sent = Vec::new();
    for n in 0..5 {
        let mut m = message(&format!(r#"{{"n":{n}}}"#), Some(&["alice", "bob"]));
        m.sender = Some(if n % 2 == 0 { "even" } else { "odd" }.into());
        m.component = Some("esbm".into());
        let result = api.send(&m).await.unwrap();
        assert_eq!(result.class, DeliveryClass::Directed);
        assert_eq!(result.recipients, 2);
        sent.push(result.id);
    }
    let to_carol = api
        .send(&message(r#"{"n":"carol"}"#, Some(&["carol"])))
        .await
        .unwrap()
        .id;
    // Live-only messages leave no record.
    api.send(&message(r#"{"n":"all"}"#, None)).await.unwrap();

    let all = api.messages(&[("size", "100")]).await.unwrap();
    assert_eq!(all.total, 6);
    assert_eq!(all.items[0].id, to_carol, "newest first");

    // Paging: 6 records, pages of 4.
    let first = api.messages(&[("size", "4"), ("page", "1")]).await.unwrap();
    let second = api.messages(&[("size", "4"), ("page", "2")]).await.unwrap();
    assert_eq!((first.page, first.size, first.total), (1, 4, 6));
    assert_eq!(first.items.len(), 4);
    assert_eq!(second.items.len(), 2);
    let mut paged: Vec<_> = first
        .items
        .iter()
        .chain(&second.items)
        .map(|r| r.id.clone())
        .collect();
    let mut expected: Vec<_> = sent.iter().cloned().chain([to_carol.clone()]).collect();
    paged.sort();
    expected.sort();
    assert_eq!(paged, expected);
    let beyond = api.messages(&[("size", "4"), ("page", "3")]).await.unwrap();
    assert!(beyond.items.is_empty());

    // Filters.
    let ids = |page: mps_client::proto::Page<mps_client::proto::MessageRecord>| {
        let mut ids: Vec<_> = page.items.into_iter().map(|r| r.id).collect();
        ids.sort();
        ids
    };
    assert_eq!(
        ids(api.messages(&[("receiver", "carol")]).await.unwrap()),
        vec![to_carol.clone()]
    );
    assert_eq!(
        ids(api.messages(&[("receiver", "bob")]).await.unwrap()),
        sent
    );
    assert_eq!(
        ids(api.messages(&[("sender", "odd")]).await.unwrap()),
        vec![sent[1].clone(), sent[3].clone()]
    );
    assert_eq!(
        ids(api.messages(&[("component", "esbm")]).await.unwrap()),
        sent
    );
    assert_eq!(
        api.messages(&[("component", "nope")]).await.unwrap().total,
        0
    );
    let created: Vec<i64> = {
        let mut list = Vec::new();
        for id in &sent {
            list.push(api.message(id).await.unwrap().created);
        }
        list
    };
    let window = api
        .messages(&[
            ("from", created[1].to_string()),
            ("to", (created[3] + 1).to_string()),
            ("sender", "odd".to_owned()),
        ])
        .await
        .unwrap();
    assert_eq!(ids(window), vec![sent[1].clone(), sent[3].clone()]);
    let empty_window = api
        .messages(&[
            ("from", (created[4] + 1).to_string()),
            ("receiver", "alice".to_owned()),
        ])
        .await
        .unwrap();
    assert_eq!(empty_window.total, 0);
    assert_eq!(
        api.messages(&[("status", "pending")]).await.unwrap().total,
        6
    );
    assert_eq!(api.messages(&[("status", "acked")]).await.unwrap().total, 0);

    // Per-recipient status: pending, delivered after a live push, acked after an ack.
    let record = api.message(&sent[0]).await.unwrap();
    let statuses = record.recipients.unwrap();
    assert_eq!(statuses.len(), 2);
    assert!(statuses.iter().all(|r| r.status == Status::Pending));
    let mut dave = server.connect("dave", "bs", &[]).await;
    let live = api
        .send(&message(r#"{"live":1}"#, Some(&["dave"])))
        .await
        .unwrap()
        .id;
    assert_eq!(dave.next_push(WAIT).await.unwrap().id, live);
    let status_of = |id: String| {
        let api = api.clone();
        async move { api.message(&id).await.unwrap().recipients.unwrap()[0].status }
    };
    eventually("the live push to be recorded as delivered", || async {
        status_of(live.clone()).await == Status::Delivered
    })
    .await;
    let delivered = api
        .messages(&[("receiver", "dave"), ("status", "delivered")])
        .await
        .unwrap();
    assert_eq!(ids(delivered), vec![live.clone()]);
    assert_eq!(dave.ack(std::slice::from_ref(&live)).await.unwrap(), 1);
    assert_eq!(status_of(live.clone()).await, Status::Acked);
    let record = api.message(&live).await.unwrap();
    assert_eq!(record.summary.get(&Status::Acked), Some(&1));
    assert_eq!(
        api.messages(&[("receiver", "dave"), ("status", "pending")])
            .await
            .unwrap()
            .total,
        0
    );

    // Delete: 204, then 404.
    let this = &server;
    let delete = |id: &str| {
        let path = format!("/api/v1/messages/{id}");
        async move { this.admin("DELETE", &path).await }
    };
    let deleted = delete(&to_carol).await;
    assert_eq!(deleted.status, 204);
    assert!(deleted.body.is_empty());
    assert_eq!(error_code(delete(&to_carol).await, 404), "not_found");
    assert_eq!(
        refused(api.message(&to_carol).await.unwrap_err()),
        (404, "not_found".into())
    );
    assert_eq!(
        api.messages(&[("receiver", "carol")]).await.unwrap().total,
        0
    );

    // Bad id and bad filters: 400 with a JSON error.
    let get = |path: &'static str| server.admin("GET", path);
    let bad_id = get("/api/v1/messages/not-a-number").await;
    assert_eq!(error_code(bad_id, 400), "invalid_id");
    assert_eq!(error_code(delete("-1").await, 400), "invalid_id");
    let bad_status = get("/api/v1/messages?status=read").await;
    assert_eq!(error_code(bad_status, 400), "bad_query");
    let bad_size = get("/api/v1/messages?size=0").await;
    assert_eq!(error_code(bad_size, 400), "bad_query");
    let bad_page = get("/api/v1/messages?page=first").await;
    assert_eq!(error_code(bad_page, 400), "bad_query");
    let unknown = get("/api/v1/messages?colour=red").await;
    assert_eq!(error_code(unknown, 400), "bad_query");
}

#[tokio::test]
async fn clients_are_listed_and_can_be_disconnected() {
    let server = Server::start();
    let token = server.token("alice").await;
    let mut info = client_info("alice", "ios", &["esbm"]);
    info.device = Some("phone-7".into());
    let before = unix_now() * 1000;
    let mut phone = PushClient::open(&server.ws(), &token, info).await.unwrap();
    let browser = server.open_raw("alice", "bs", &[]).await;
    let mut simple = PushClient::connect_simple(&format!(
        "ws://{}/websocket/{}?agent=cs&device=desk-1",
        server.addr,
        server.token("bob").await
    ))
    .await
    .unwrap();
    server.wait_clients("bob", 1).await;

    let clients = server.api().clients().await.unwrap();
    assert_eq!(clients.len(), 3, "{clients:?}");
    let listed = clients.iter().find(|c| c.id == phone.session.id).unwrap();
    assert_eq!(listed.user, "alice");
    assert_eq!(listed.app, "default");
    assert_eq!(listed.agent, "ios");
    assert_eq!(listed.device.as_deref(), Some("phone-7"));
    assert_eq!(listed.transport, "websocket");
    assert_eq!(listed.components, vec!["esbm".to_owned()]);
    assert!(listed.login >= before - 1000 && listed.login <= unix_now() * 1000 + 1000);
    assert!(listed.remote.starts_with("127.0.0.1:"), "{}", listed.remote);
    assert!(!listed.node.is_empty());
    let bob = clients.iter().find(|c| c.user == "bob").unwrap();
    assert_eq!(bob.transport, "websocket-simple");
    assert_eq!(bob.agent, "cs");
    assert_eq!(bob.device.as_deref(), Some("desk-1"));
    let alice_bs = clients
        .iter()
        .find(|c| c.user == "alice" && c.agent == "bs")
        .unwrap();
    assert_eq!(alice_bs.device, None);

    server.api().disconnect(&phone.session.id).await.unwrap();
    let (code, _) = phone.closed(WAIT).await.unwrap();
    assert_eq!(code, 4403);
    eventually("the kicked client to leave the list", || async {
        let clients = server.api().clients().await.unwrap();
        clients.len() == 2 && clients.iter().all(|c| c.id != phone.session.id)
    })
    .await;
    // The others are unaffected.
    let sent = server
        .api()
        .send(&message(r#"{"still":"here"}"#, Some(&["bob"])))
        .await
        .unwrap();
    assert_eq!(simple.next_push(WAIT).await.unwrap().id, sent.id);
    drop(browser);

    // Unknown connection ids are 404.
    let (status, code) = refused(server.api().disconnect("999999").await.unwrap_err());
    assert_eq!((status, code.as_str()), (404, "not_found"));
    let (status, _) = refused(server.api().disconnect("x").await.unwrap_err());
    assert_eq!(status, 404);
}

#[tokio::test]
async fn pull_collects_once_and_acks_only_own_messages() {
    let server = Server::start();
    let api = server.api();
    let mut ids = Vec::new();
    for n in 0..3 {
        let sent = api
            .send(&message(&format!(r#"{{"n":{n}}}"#), Some(&["alice"])))
            .await
            .unwrap();
        ids.push(sent.id);
    }
    let alice = server.token("alice").await;
    let bob = server.token("bob").await;
    // Client calls are on a plain API handle: the admin key plays no part.
    let client = Api::new(&server.http(), "no-admin-key");

    let collected = client.collect(&alice).await.unwrap();
    let got: Vec<_> = collected.messages.iter().map(|m| m.id.clone()).collect();
    assert_eq!(got, ids, "oldest first");
    assert!(collected.messages.iter().all(|m| m.ack));
    let ext: Value = serde_json::from_str(collected.messages[2].event_data.ext.get()).unwrap();
    assert_eq!(ext["n"], 2);
    for id in &ids {
        let record = api.message(id).await.unwrap();
        assert_eq!(record.recipients.unwrap()[0].status, Status::Delivered);
    }
    assert!(client.collect(&alice).await.unwrap().messages.is_empty());
    assert!(client.collect(&bob).await.unwrap().messages.is_empty());

    // Bob cannot ack Alice's messages.
    assert_eq!(client.ack(&bob, &ids).await.unwrap().acked, 0);
    assert_eq!(
        api.message(&ids[0]).await.unwrap().recipients.unwrap()[0].status,
        Status::Delivered
    );
    assert_eq!(client.ack(&alice, &ids[..2]).await.unwrap().acked, 2);
    assert_eq!(
        client.ack(&alice, &ids[..2]).await.unwrap().acked,
        0,
        "already acked"
    );
    let statuses: Vec<_> = {
        let mut list = Vec::new();
        for id in &ids {
            list.push(api.message(id).await.unwrap().recipients.unwrap()[0].status);
        }
        list
    };
    assert_eq!(statuses, [Status::Acked, Status::Acked, Status::Delivered]);
    let (status, code) = refused(client.ack(&alice, &["nope".into()]).await.unwrap_err());
    assert_eq!((status, code.as_str()), (400, "invalid_id"));

    // Client tokens are not admin keys, and admin keys are not client tokens.
    let as_client = Api::new(&server.http(), &alice);
    for error in [
        as_client.clients().await.unwrap_err(),
        as_client.messages(&[("size", "1")]).await.unwrap_err(),
        as_client
            .send(&message("1", Some(&["alice"])))
            .await
            .unwrap_err(),
        as_client.token("mallory").await.unwrap_err(),
        as_client.message(&ids[0]).await.unwrap_err(),
        as_client.disconnect("1").await.unwrap_err(),
    ] {
        assert_eq!(refused(error), (401, "wrong_key".into()));
    }
    let (status, code) = refused(client.collect(ADMIN_KEY).await.unwrap_err());
    assert_eq!((status, code.as_str()), (401, "invalid_token"));
    let (status, code) = refused(client.collect("").await.unwrap_err());
    assert_eq!(status, 401, "{code}");
    let expired = signed_token(JWT_SECRET, "alice", unix_now() - 120);
    let (status, code) = refused(client.collect(&expired).await.unwrap_err());
    assert_eq!((status, code.as_str()), (401, "token_expired"));
}

#[tokio::test]
async fn bad_send_requests_get_json_errors() {
    let server = Server::with_env(&[("MPS_MESSAGES__MAX_BODY", "4096")]);
    let post = |body: String| {
        let server = &server;
        async move {
            server
                .request(
                    "POST",
                    "/api/v1/messages",
                    Some(&format!("Bearer {ADMIN_KEY}")),
                    Some(&body),
                )
                .await
        }
    };
    for (body, status, code) in [
        (r#"{"content":"#.to_owned(), 400, "bad_json"),
        (r#"{"receiver":["a"]}"#.to_owned(), 400, "bad_json"),
        (
            r#"{"content":1,"colour":"red"}"#.to_owned(),
            400,
            "bad_json",
        ),
        (
            r#"{"content":1,"receiver":[]}"#.to_owned(),
            400,
            "invalid_receiver",
        ),
        (
            r#"{"content":1,"receiver":[""]}"#.to_owned(),
            400,
            "invalid_name",
        ),
        (r#"{"content":1,"ttl":0}"#.to_owned(), 400, "invalid_ttl"),
        (
            r#"{"content":1,"agents":[]}"#.to_owned(),
            400,
            "invalid_agents",
        ),
        (
            format!(r#"{{"content":"{}"}}"#, "x".repeat(5000)),
            413,
            "too_large",
        ),
        (
            format!(r#"{{"content":{}1{}}}"#, "[".repeat(1000), "]".repeat(1000)),
            400,
            "invalid_content",
        ),
    ] {
        let answer = post(body.clone()).await;
        assert_eq!(
            (answer.status, answer.error_code().as_str()),
            (status, code),
            "{body:.60}"
        );
    }
    let unauthorized = server
        .request("POST", "/api/v1/messages", None, Some(r#"{"content":1}"#))
        .await;
    assert_eq!(error_code(unauthorized, 401), "missing_token");
    assert_eq!(
        server.api().messages(&[("size", "1")]).await.unwrap().total,
        0
    );
    let ok = post(r#"{"content":{"a":1},"receiver":["x","x"]}"#.to_owned()).await;
    assert_eq!(ok.status, 201, "{ok:?}");
    let result: mps_client::proto::SendResult = serde_json::from_str(&ok.body).unwrap();
    assert_eq!(result.recipients, 1, "duplicate receivers count once");
}

#[tokio::test]
async fn expired_messages_are_not_delivered_and_are_marked_expired() {
    let server = Server::with_env(&[("MPS_MESSAGES__SWEEP_INTERVAL", "1")]);
    let api = server.api();
    let short = mps_client::proto::SendMessage {
        ttl: Some(1),
        ..message(r#"{"short":1}"#, Some(&["alice"]))
    };
    let gone = api.send(&short).await.unwrap().id;
    let kept = api
        .send(&message(r#"{"long":1}"#, Some(&["alice"])))
        .await
        .unwrap()
        .id;
    eventually("the short-lived message to expire", || async {
        api.messages(&[("status", "expired"), ("receiver", "alice")])
            .await
            .unwrap()
            .items
            .iter()
            .any(|r| r.id == gone)
    })
    .await;
    let mut alice = server.connect("alice", "bs", &[]).await;
    assert_eq!(
        alice.next_push(WAIT).await.unwrap().id,
        kept,
        "only the live one"
    );
    let token = server.token("alice").await;
    let client = Api::new(&server.http(), "");
    assert_eq!(
        client
            .ack(&token, std::slice::from_ref(&gone))
            .await
            .unwrap()
            .acked,
        0
    );
    let record = api.message(&gone).await.unwrap();
    assert_eq!(record.recipients.unwrap()[0].status, Status::Expired);
}

#[tokio::test]
async fn idempotency_keys_send_a_message_once_even_across_kill_9() {
    let mut server = Server::start();
    let post = |server: &Server, key: Option<&str>, body: &str| {
        let header = key
            .map(|k| format!("Idempotency-Key: {k}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "POST /api/v1/messages HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             Authorization: Bearer {ADMIN_KEY}\r\n{header}Content-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            server.addr,
            body.len()
        );
        let addr = server.addr.clone();
        async move { raw_http(&addr, &request).await }
    };
    let sent = |answer: &HttpResponse| -> serde_json::Value {
        serde_json::from_str(&answer.body).expect("send result")
    };
    let in_body = r#"{"content":{"n":1},"receiver":["alice"],"id":"order-1"}"#;
    let first = post(&server, None, in_body).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let id = sent(&first)["id"].clone();
    assert!(sent(&first).get("duplicate").is_none());
    let again = post(&server, None, in_body).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(sent(&again)["id"], id);
    assert_eq!(sent(&again)["duplicate"], true);

    // The header, for bodies without an id.
    let plain = r#"{"content":{"n":2},"receiver":["alice"]}"#;
    let second = post(&server, Some("order-2"), plain).await;
    assert_eq!(second.status, 201);
    let repeat = post(&server, Some("order-2"), plain).await;
    assert_eq!(sent(&repeat)["id"], sent(&second)["id"]);
    let mismatch = post(&server, Some("order-3"), in_body).await;
    assert_eq!(
        (mismatch.status, mismatch.error_code().as_str()),
        (400, "id_mismatch")
    );
    let long = format!(r#"{{"content":1,"id":"{}"}}"#, "k".repeat(300));
    let refused = post(&server, None, &long).await;
    assert_eq!(
        (refused.status, refused.error_code().as_str()),
        (400, "invalid_name")
    );
    // Live-only messages hold keys too.
    let live = r#"{"content":{"live":1},"id":"live-1"}"#;
    assert_eq!(post(&server, None, live).await.status, 201);
    assert_eq!(post(&server, None, live).await.status, 200);

    // The keys are as durable as the messages.
    server.kill_and_restart();
    let after = post(&server, None, in_body).await;
    assert_eq!(after.status, 200, "{}", after.body);
    assert_eq!(sent(&after)["id"], id);
    let records = server
        .api()
        .messages(&[("receiver", "alice")])
        .await
        .unwrap();
    assert_eq!(records.total, 2, "each message recorded once");
}

/// A page far past the end is a bad query, not a store failure (its offset would overflow).
#[tokio::test]
async fn a_huge_page_number_is_a_bad_query() {
    let server = Server::start();
    for path in [
        "/api/v1/messages?page=9223372036854775808",
        "/api/v1/messages?page=1000000001&size=1000",
        "/api/v1/devices?user=alice&page=18446744073709551615",
    ] {
        let answer = server.admin("GET", path).await;
        assert_eq!(answer.status, 400, "{path}: {}", answer.body);
        assert_eq!(answer.error_code(), "bad_query", "{path}");
    }
    let answer = server
        .admin("GET", "/api/v1/messages?page=1000000000&size=1000")
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}
