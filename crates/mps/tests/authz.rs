//! Authorization against the real binary: what a client token can never do. It never receives
//! another user's directed messages (WebSocket, SSE, long poll, collect), never subscribes
//! outside its `topics` claim, never acks another user's messages, never reads the message
//! records or calls an admin route, never acts on another user's devices, and a token of
//! another app reaches nothing of this one. Each test ends by showing that the rightful owner
//! still gets what the intruder could not.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use mps_client::proto::{SendMessage, Status, TokenRequest};
use mps_client::{Api, PushClient};
use serde_json::{Value, json};

/// A token issued by the server for `user` of `app`, optionally with a `topics` claim.
async fn issued(server: &Server, app: Option<&str>, user: &str, topics: Option<&[&str]>) -> String {
    server
        .api()
        .token_with(&TokenRequest {
            user: user.to_owned(),
            app: app.map(str::to_owned),
            ttl: None,
            topics: topics.map(|t| t.iter().map(|s| s.to_string()).collect()),
        })
        .await
        .expect("token")
        .token
}

/// `request` with a client token.
async fn as_client(
    server: &Server,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> HttpResponse {
    server
        .request(method, path, Some(&format!("Bearer {token}")), body)
        .await
}

/// A directed message to `users` of `app`.
fn directed(app: Option<&str>, users: &[&str], content: &str) -> SendMessage {
    SendMessage {
        app: app.map(str::to_owned),
        ..message(content, Some(users))
    }
}

/// Opens `/ws` with `token` as `user` (components and topics as given); the open answer is read.
async fn open_with(server: &Server, token: &str, user: &str, topics: &[&str]) -> RawWs {
    let mut ws = raw_ws(&server.ws()).await;
    let open = json!({
        "Type": 1, "Seq": 1,
        "Client": {"user": user, "agent": "bs", "topics": topics},
        "Security": {"token": token},
    });
    send_text(&mut ws, open.to_string()).await;
    let answer = next_json(&mut ws).await;
    assert!(answer["Session"].is_object(), "open refused: {answer}");
    ws
}

/// The next push frame's message id on a raw socket.
async fn next_push_id(ws: &mut RawWs) -> String {
    loop {
        let frame = next_json(ws).await;
        if frame["Type"] == 3 {
            return frame["Message"]["id"].as_str().expect("id").to_owned();
        }
    }
}

/// The ids of the messages an SSE stream delivers next, until `until` is among them.
async fn sse_until(stream: &mut mps_client::Sse, until: &str) -> Vec<String> {
    let mut ids = Vec::new();
    while !ids.iter().any(|id| id == until) {
        let event = stream.next_event(WAIT).await.expect("SSE event");
        if let Some(id) = event.id {
            ids.push(id);
        }
    }
    ids
}

#[tokio::test]
async fn a_client_never_receives_another_users_directed_messages() {
    let server = Server::start();
    let api = server.api();
    let bob = issued(&server, None, "bob", None).await;
    // Bob listens on every transport; alice is offline at first.
    let mut bob_ws = open_with(&server, &bob, "bob", &[]).await;
    let mut bob_sse = server.sse(&format!("token={bob}"), &[]).await.unwrap();
    let bob_poll = {
        let (http, bob) = (server.http(), bob.clone());
        tokio::spawn(async move {
            Api::new(&http, "")
                .poll(&bob, &[("timeout", "30")])
                .await
                .unwrap()
        })
    };
    server.wait_clients("bob", 3).await;

    let mut for_alice = Vec::new();
    for n in 0..5 {
        let sent = api
            .send(&directed(None, &["alice"], &format!(r#"{{"n":{n}}}"#)))
            .await
            .unwrap();
        for_alice.push(sent.id);
    }
    // A message to bob marks the end: everything bob gets before it would be a leak.
    let for_bob = api
        .send(&directed(None, &["bob"], r#""bob's""#))
        .await
        .unwrap()
        .id;
    assert_eq!(next_push_id(&mut bob_ws).await, for_bob);
    assert_eq!(
        sse_until(&mut bob_sse, &for_bob).await,
        std::slice::from_ref(&for_bob)
    );
    let polled = bob_poll.await.unwrap();
    assert_eq!(ids_of(&polled.messages), std::slice::from_ref(&for_bob));
    let collected = Api::new(&server.http(), "").collect(&bob).await.unwrap();
    assert!(collected.messages.is_empty(), "{:?}", collected.messages);
    // Resuming from an id, or asking for everyone's topics, brings nothing of alice's either.
    let polled = Api::new(&server.http(), "")
        .poll(&bob, &[("timeout", "0"), ("since", "1")])
        .await
        .unwrap();
    assert!(polled.messages.is_empty(), "{:?}", polled.messages);

    // Alice gets all of hers: by collect, then nothing is left for her socket.
    let alice = issued(&server, None, "alice", None).await;
    let collected = Api::new(&server.http(), "").collect(&alice).await.unwrap();
    assert_eq!(ids_of(&collected.messages), for_alice);
    for id in &for_alice {
        let recipients = api.message(id).await.unwrap().recipients.unwrap();
        assert_eq!(recipients.len(), 1);
        assert_eq!(recipients[0].user, "alice");
        assert_eq!(recipients[0].status, Status::Delivered);
    }
}

#[tokio::test]
async fn a_client_subscribes_only_inside_its_topics_claim() {
    let server = Server::start();
    let site1 = issued(&server, None, "carol", Some(&["alarms/site1/#", "news/+"])).await;
    for pattern in [
        "alarms/#",
        "alarms/+/#",
        "#",
        "alarms/site2/x",
        "news/+/x",
        "news/#",
    ] {
        let mut ws = raw_ws(&server.ws()).await;
        let open = json!({"Type": 1, "Seq": 5, "Client": {"topics": [pattern]},
                          "Security": {"token": site1}});
        send_text(&mut ws, open.to_string()).await;
        let (frames, code) = until_close(&mut ws).await;
        assert_eq!(
            frames[0]["Error"]["code"], "forbidden_topic",
            "{pattern}: {frames:?}"
        );
        assert_eq!(code, 4403, "{pattern}");
        for path in [
            format!(
                "/sse?token={site1}&topics={}",
                pattern.replace('#', "%23").replace('+', "%2B")
            ),
            format!(
                "/poll?token={site1}&timeout=0&topics={}",
                pattern.replace('#', "%23").replace('+', "%2B")
            ),
        ] {
            let answer = server.request("GET", &path, None, None).await;
            assert_eq!(answer.status, 403, "{path}: {answer:?}");
            assert_eq!(answer.error_code(), "forbidden_topic");
        }
    }
    // Inside the claim it works, and a later change of subscriptions is checked the same way.
    let mut ws = open_with(&server, &site1, "carol", &["alarms/site1/room2", "news/+"]).await;
    send_text(
        &mut ws,
        r#"{"Type":8,"Seq":6,"Client":{"topics":["alarms/site1/#","alarms/site2/#"]}}"#,
    )
    .await;
    let refused = next_json(&mut ws).await;
    assert_eq!(refused["Type"], 9, "{refused}");
    assert_eq!(refused["Error"]["code"], "forbidden_topic", "{refused}");
    // The refused change left the old subscriptions in place: site2 is not delivered.
    server
        .publish("alarms/site2/room2", r#""not for carol""#)
        .await;
    let mine = server.publish("alarms/site1/room2", r#""for carol""#).await;
    assert_eq!(next_push_id(&mut ws).await, mine);

    // With topics.require_claim, a token without a claim subscribes to nothing.
    let strict = Server::with_env(&[("MPS_TOPICS__REQUIRE_CLAIM", "true")]);
    let unclaimed = issued(&strict, None, "dave", None).await;
    let answer = strict
        .request(
            "GET",
            &format!("/sse?token={unclaimed}&topics=news"),
            None,
            None,
        )
        .await;
    assert_eq!(answer.status, 403, "{answer:?}");
    assert_eq!(answer.error_code(), "forbidden_topic");
}

#[tokio::test]
async fn a_client_cannot_ack_another_users_messages() {
    let server = Server::start();
    let api = server.api();
    let mut ids = Vec::new();
    for n in 0..4 {
        let sent = api
            .send(&directed(None, &["alice"], &format!(r#"{{"n":{n}}}"#)))
            .await
            .unwrap();
        ids.push(sent.id);
    }
    let mut alice = server.connect("alice", "bs", &[]).await;
    for id in &ids {
        assert_eq!(&alice.next_push(WAIT).await.unwrap().id, id);
    }
    // Bob, over HTTP and over his WebSocket, names alice's ids: nothing changes.
    let bob = issued(&server, None, "bob", None).await;
    let answer = as_client(
        &server,
        &bob,
        "POST",
        "/api/v1/ack",
        Some(&json!({"ids": ids}).to_string()),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&answer.body).unwrap()["acked"],
        0
    );
    let mut bob_ws = server.connect("bob", "bs", &[]).await;
    assert_eq!(bob_ws.ack(&ids).await.unwrap(), 0);
    // Nor can the same user name in another app.
    let other_app = issued(&server, Some("oa"), "alice", None).await;
    let answer = as_client(
        &server,
        &other_app,
        "POST",
        "/api/v1/ack",
        Some(&json!({"ids": ids}).to_string()),
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&answer.body).unwrap()["acked"],
        0,
        "{answer:?}"
    );
    for id in &ids {
        let status = api.message(id).await.unwrap().recipients.unwrap()[0].status;
        assert_ne!(status, Status::Acked, "{id}");
    }
    assert_eq!(
        alice.ack(&ids).await.unwrap(),
        4,
        "alice still acks her own"
    );
}

#[tokio::test]
async fn a_client_token_opens_no_admin_route() {
    let server = Server::start();
    let sent = server
        .api()
        .send(&message(r#""secret""#, Some(&["alice"])))
        .await
        .unwrap()
        .id;
    let alice = issued(&server, None, "alice", None).await;
    let body = r#"{"content":1,"receiver":["bob"],"type":0}"#;
    let calls: Vec<(&str, String, Option<&str>)> = vec![
        ("GET", "/api/v1/messages".into(), None),
        ("GET", "/api/v1/messages?receiver=alice".into(), None),
        ("GET", format!("/api/v1/messages/{sent}"), None),
        ("DELETE", format!("/api/v1/messages/{sent}"), None),
        ("POST", "/api/v1/messages".into(), Some(body)),
        ("GET", "/api/v1/clients".into(), None),
        ("POST", "/api/v1/clients/1/disconnect".into(), None),
        ("POST", "/api/v1/tokens".into(), Some(r#"{"user":"root"}"#)),
        ("GET", "/api/v1/stats".into(), None),
    ];
    for (method, path, body) in &calls {
        for credential in [format!("Bearer {alice}"), format!("Bearer {JWT_SECRET}")] {
            let answer = server.request(method, path, Some(&credential), *body).await;
            assert_eq!(answer.status, 401, "{method} {path}: {answer:?}");
            assert_eq!(answer.error_code(), "wrong_key", "{method} {path}");
        }
        let answer = server.request(method, path, None, *body).await;
        assert_eq!(answer.status, 401, "{method} {path} without credentials");
    }
    // Device records of others: a client lists its own only.
    let answer = as_client(&server, &alice, "GET", "/api/v1/devices?user=bob", None).await;
    assert_eq!(answer.status, 403, "{answer:?}");
    // Nothing changed: the message is there, still pending.
    let record = server.api().message(&sent).await.unwrap();
    assert_eq!(record.recipients.unwrap()[0].status, Status::Pending);
    // And the admin key is no client token.
    let mut ws = raw_ws(&server.ws()).await;
    send_text(&mut ws, open_text(ADMIN_KEY, "alice", "bs", &[])).await;
    let (frames, code) = until_close(&mut ws).await;
    assert_eq!(frames[0]["Error"]["code"], "invalid_token", "{frames:?}");
    assert_eq!(code, 4401);
}

#[tokio::test]
async fn a_client_acts_only_on_its_own_devices() {
    let server = Server::start();
    let alice = issued(&server, None, "alice", None).await;
    let bob = issued(&server, None, "bob", None).await;
    let alice_phone = json!({"device": "alice-phone", "way": "fcm", "token": "fcm-token-of-alice"});
    let created = as_client(
        &server,
        &alice,
        "POST",
        "/api/v1/devices",
        Some(&alice_phone.to_string()),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");

    // Bob may not register for alice, nor remove or list her devices, by naming her.
    let as_alice = json!({"device": "bob-phone", "way": "fcm", "token": "fcm-token-of-bob",
                          "user": "alice"});
    let answer = as_client(
        &server,
        &bob,
        "POST",
        "/api/v1/devices",
        Some(&as_alice.to_string()),
    )
    .await;
    assert_eq!(answer.status, 403, "{answer:?}");
    for path in [
        "/api/v1/devices?device=alice-phone&user=alice",
        "/api/v1/devices?device=alice-phone&app=default&user=alice",
    ] {
        let answer = as_client(&server, &bob, "DELETE", path, None).await;
        assert_eq!(answer.status, 403, "{path}: {answer:?}");
    }
    // Naming only the device id acts on bob's own devices: there is none by that id.
    let answer = as_client(
        &server,
        &bob,
        "DELETE",
        "/api/v1/devices?device=alice-phone",
        None,
    )
    .await;
    assert_eq!(answer.status, 404, "{answer:?}");
    let listed = as_client(&server, &bob, "GET", "/api/v1/devices", None).await;
    assert_eq!(listed.status, 200, "{listed:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&listed.body).unwrap()["total"],
        0
    );
    // Logout of bob removes nothing of alice's; neither does a token of another app.
    let answer = as_client(&server, &bob, "POST", "/api/v1/logout", None).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let other_app = issued(&server, Some("oa"), "alice", None).await;
    let answer = as_client(
        &server,
        &other_app,
        "DELETE",
        "/api/v1/devices?device=alice-phone",
        None,
    )
    .await;
    assert_eq!(answer.status, 404, "{answer:?}");
    let answer = as_client(
        &server,
        &other_app,
        "DELETE",
        "/api/v1/devices?device=alice-phone&app=default",
        None,
    )
    .await;
    assert_eq!(answer.status, 403, "{answer:?}");

    // Over the protocol's short connection too: bob turns off only his own push modes.
    let mut ws = raw_ws(&server.ws()).await;
    let off = json!({"Type": 7, "Seq": 3, "Client": {"user": "alice", "way": "fcm",
                     "device": "alice-phone"}, "Security": {"token": bob}});
    send_text(&mut ws, off.to_string()).await;
    let (frames, code) = until_close(&mut ws).await;
    assert_eq!(frames[0]["Error"]["code"], "user_mismatch", "{frames:?}");
    assert_eq!(code, 4401);

    let devices = server.admin("GET", "/api/v1/devices?user=alice").await;
    let page: Value = serde_json::from_str(&devices.body).unwrap();
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["items"][0]["device"], "alice-phone", "{page}");
}

#[tokio::test]
async fn a_token_of_another_app_reaches_nothing_of_this_one() {
    let server = Server::start();
    let api = server.api();
    // The same user name in app "oa": a different user.
    let intruder = issued(&server, Some("oa"), "alice", None).await;
    let mut intruder_ws = raw_ws(&server.ws()).await;
    send_text(
        &mut intruder_ws,
        json!({"Type": 1, "Seq": 1, "Client": {"topics": ["alarms/#"], "componentSet": ["esbm"]},
               "Security": {"token": intruder}})
        .to_string(),
    )
    .await;
    let answer = next_json(&mut intruder_ws).await;
    assert_eq!(answer["Session"]["app"], "oa", "{answer}");
    let mut intruder_sse = server
        .sse(
            &format!("token={intruder}&topics=alarms/%23&components=esbm"),
            &[],
        )
        .await
        .unwrap();

    // Directed, component, topic and broadcast messages of the default app.
    let directed_id = api
        .send(&directed(None, &["alice"], r#""default alice""#))
        .await
        .unwrap()
        .id;
    let component = SendMessage {
        component: Some("esbm".into()),
        ..message(r#""esbm of default""#, None)
    };
    api.send(&component).await.unwrap();
    server.publish("alarms/site1", r#""default alarm""#).await;
    api.send(&message(r#""everyone of default""#, None))
        .await
        .unwrap();
    // Then one to the intruder's own app, the marker.
    let own = api
        .send(&directed(Some("oa"), &["alice"], r#""oa alice""#))
        .await
        .unwrap()
        .id;
    assert_eq!(next_push_id(&mut intruder_ws).await, own);
    assert_eq!(
        sse_until(&mut intruder_sse, &own).await,
        std::slice::from_ref(&own)
    );
    let polled = Api::new(&server.http(), "")
        .poll(
            &intruder,
            &[("timeout", "0"), ("since", "1"), ("topics", "alarms/#")],
        )
        .await
        .unwrap();
    assert!(
        !ids_of(&polled.messages).contains(&directed_id),
        "{:?}",
        polled.messages
    );
    let collected = Api::new(&server.http(), "")
        .collect(&intruder)
        .await
        .unwrap();
    assert!(
        !ids_of(&collected.messages).contains(&directed_id),
        "{:?}",
        collected.messages
    );
    // The default app's alice still has her message, untouched.
    let record = api.message(&directed_id).await.unwrap();
    assert_eq!(record.recipients.unwrap()[0].status, Status::Pending);
    let token = server.token("alice").await;
    let mut alice = PushClient::open(&server.ws(), &token, client_info("alice", "bs", &[]))
        .await
        .unwrap();
    assert_eq!(alice.next_push(WAIT).await.unwrap().id, directed_id);
}

#[tokio::test]
async fn forged_unsigned_and_expiryless_tokens_are_refused() {
    let server = Server::start();
    let b64 = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let exp = unix_now() + 3600;
    let unsigned = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(json!({"sub": "alice", "exp": exp}))
    );
    let valid = issued(&server, None, "alice", None).await;
    // A valid token's claims re-signed with nothing, or changed to another user.
    let mut parts = valid.split('.');
    let (header, _, signature) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let swapped = format!(
        "{header}.{}.{signature}",
        b64(json!({"sub": "bob", "exp": exp}))
    );
    let no_exp = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "alice"}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let empty_sub = signed_token(JWT_SECRET, "", exp);
    for token in [&unsigned, &swapped, &no_exp, &empty_sub] {
        let answer = as_client(&server, token, "POST", "/api/v1/collect", None).await;
        assert_eq!(answer.status, 401, "{token}: {answer:?}");
        assert_eq!(answer.error_code(), "invalid_token", "{token}");
        let mut ws = raw_ws(&server.ws()).await;
        send_text(&mut ws, open_text(token, "alice", "bs", &[])).await;
        let (frames, code) = until_close(&mut ws).await;
        assert_eq!(frames[0]["Error"]["code"], "invalid_token", "{frames:?}");
        assert_eq!(code, 4401);
    }
    assert_eq!(
        as_client(&server, &valid, "POST", "/api/v1/collect", None)
            .await
            .status,
        200
    );
}
