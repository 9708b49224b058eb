//! Audiences: users' tags and attributes set through the API, messages sent to an expression
//! over them, stored for offline users and restricted by agent; bad expressions refused with the
//! position of the fault.
//!
//! "Did not get it" is checked without sleeping: after the message under test a broadcast
//! marker is sent, and a connection that skipped the message sees the marker as its next push.

mod common;

use common::*;
use mps_client::proto::{DeliveryClass, SendMessage};

fn to_audience(content: &str, audience: &str) -> SendMessage {
    SendMessage {
        audience: Some(audience.into()),
        ..message(content, None)
    }
}

/// A user, their tags and their attributes.
type Person = (
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
);

/// Tags and attributes of a few users.
async fn people(server: &Server) {
    let api = server.api();
    let people: &[Person] = &[
        ("alice", &["vip"], &[("lang", "zh"), ("region", "cn")]),
        ("bob", &["vip"], &[("lang", "en")]),
        ("carol", &[], &[("lang", "zh")]),
        (
            "dave",
            &["vip", "beta"],
            &[("lang", "zh"), ("platform", "ios")],
        ),
    ];
    for (user, tags, attributes) in people {
        api.set_tags(user, tags).await.unwrap();
        api.set_attributes(user, attributes).await.unwrap();
    }
}

#[tokio::test]
async fn tags_and_attributes_are_set_replaced_and_read() {
    let server = Server::start();
    let api = server.api();
    let tags = api
        .set_tags("alice", &["vip", "beta", "vip"])
        .await
        .unwrap();
    assert_eq!(tags.tags, ["beta", "vip"]);
    assert_eq!(tags.app, "default");
    api.set_attributes("alice", &[("lang", "zh"), ("app_version", "2.3.1")])
        .await
        .unwrap();
    let tags = api.set_tags("alice", &["staff"]).await.unwrap();
    assert_eq!(tags.tags, ["staff"]);

    let read = server.admin("GET", "/api/v1/users/alice/tags").await;
    assert_eq!(read.status, 200, "{read:?}");
    let read: serde_json::Value = serde_json::from_str(&read.body).unwrap();
    assert_eq!(read["tags"], serde_json::json!(["staff"]));
    let read = server.admin("GET", "/api/v1/users/alice/attributes").await;
    let read: serde_json::Value = serde_json::from_str(&read.body).unwrap();
    assert_eq!(
        read["attributes"],
        serde_json::json!({"app_version": "2.3.1", "lang": "zh"}),
        "replacing the tags kept the attributes"
    );
    // Per app.
    let put = server
        .request(
            "PUT",
            "/api/v1/users/alice/tags",
            Some(&format!("Bearer {ADMIN_KEY}")),
            Some(r#"{"app":"oa","tags":["oa-only"]}"#),
        )
        .await;
    assert_eq!(put.status, 200, "{put:?}");
    let read = server.admin("GET", "/api/v1/users/alice/tags?app=oa").await;
    assert!(read.body.contains("oa-only"), "{read:?}");

    // Bad input: a clear 400 each; no admin key: 401.
    let admin = format!("Bearer {ADMIN_KEY}");
    for (path, body, code) in [
        (
            "/api/v1/users/alice/attributes",
            r#"{"attributes":{"Lang":"zh"}}"#,
            "invalid_attributes",
        ),
        (
            "/api/v1/users/alice/attributes",
            r#"{"attributes":{"tag":"x"}}"#,
            "invalid_attributes",
        ),
        (
            "/api/v1/users/alice/attributes",
            r#"{"attributes":{"lang":""}}"#,
            "invalid_attributes",
        ),
        (
            "/api/v1/users/alice/tags",
            r#"{"tags":[""]}"#,
            "invalid_tags",
        ),
        (
            "/api/v1/users/alice/tags",
            r#"{"tags":["a\u0001"]}"#,
            "invalid_tags",
        ),
        ("/api/v1/users/alice/tags", r#"{"tags":"vip"}"#, "bad_json"),
        (
            "/api/v1/users/alice/tags",
            r#"{"tags":[],"extra":1}"#,
            "bad_json",
        ),
    ] {
        let answer = server.request("PUT", path, Some(&admin), Some(body)).await;
        assert_eq!(answer.status, 400, "{body}: {answer:?}");
        assert_eq!(answer.error_code(), code, "{body}");
    }
    let many: Vec<String> = (0..300).map(|i| format!("\"t{i}\"")).collect();
    let answer = server
        .request(
            "PUT",
            "/api/v1/users/alice/tags",
            Some(&admin),
            Some(&format!(r#"{{"tags":[{}]}}"#, many.join(","))),
        )
        .await;
    assert_eq!(answer.error_code(), "invalid_tags");
    let answer = server
        .request("GET", "/api/v1/users/alice/tags", None, None)
        .await;
    assert_eq!(answer.status, 401);
}

#[tokio::test]
async fn an_audience_reaches_matching_users_online_now_and_offline_on_connect() {
    let server = Server::start();
    people(&server).await;
    let api = server.api();
    let mut alice = server.connect("alice", "bs", &[]).await;
    let mut bob = server.connect("bob", "bs", &[]).await;
    let mut carol = server.connect("carol", "bs", &[]).await;

    let sent = api
        .send(&to_audience(r#"{"offer":1}"#, "tag:vip AND lang:zh"))
        .await
        .unwrap();
    assert_eq!(sent.class, DeliveryClass::Directed);
    assert_eq!(sent.recipients, 2, "alice online, dave offline");
    let push = alice.next_push(WAIT).await.unwrap();
    assert_eq!(push.id, sent.id);
    assert!(push.ack, "an audience's messages are directed");
    let mark = marker(&server, "one").await;
    assert_eq!(next_id(&mut alice).await, mark);
    assert_eq!(next_id(&mut bob).await, mark, "bob speaks en");
    assert_eq!(next_id(&mut carol).await, mark, "carol is not vip");

    // Dave was offline: the message waits for him and arrives when he connects.
    let record = api.message(&sent.id).await.unwrap();
    let recipients: Vec<_> = record
        .recipients
        .unwrap()
        .into_iter()
        .map(|r| (r.user, r.status))
        .collect();
    assert_eq!(
        recipients,
        [
            ("alice".to_owned(), mps_client::proto::Status::Delivered),
            ("dave".to_owned(), mps_client::proto::Status::Pending)
        ]
    );
    let mut dave = server.connect("dave", "ios", &[]).await;
    assert_eq!(next_id(&mut dave).await, sent.id);

    // OR, NOT, parentheses and user terms.
    let sent = api
        .send(&to_audience(
            r#"{"n":2}"#,
            "(tag:beta OR user:carol) AND NOT region:cn",
        ))
        .await
        .unwrap();
    assert_eq!(sent.recipients, 2);
    assert_eq!(next_id(&mut carol).await, sent.id);
    assert_eq!(next_id(&mut dave).await, sent.id);
    let mark = marker(&server, "two").await;
    for client in [&mut alice, &mut bob, &mut carol, &mut dave] {
        assert_eq!(next_id(client).await, mark);
    }

    // No match: stored with no recipients, delivered to nobody.
    let sent = api
        .send(&to_audience(r#"{"n":3}"#, "tag:nobody-has-this"))
        .await
        .unwrap();
    assert_eq!((sent.class, sent.recipients), (DeliveryClass::Directed, 0));
}

#[tokio::test]
async fn agent_terms_restrict_delivery_to_those_connections() {
    let server = Server::start();
    people(&server).await;
    let api = server.api();
    let mut alice_cs = server.connect("alice", "cs", &[]).await;
    let mut alice_ios = server.connect("alice", "ios", &[]).await;

    let sent = api
        .send(&to_audience(
            r#"{"n":1}"#,
            "tag:vip AND lang:zh AND NOT agent:cs",
        ))
        .await
        .unwrap();
    assert_eq!(sent.recipients, 2);
    assert_eq!(next_id(&mut alice_ios).await, sent.id);
    let mark = marker(&server, "one").await;
    assert_eq!(next_id(&mut alice_cs).await, mark, "cs is excepted");
    assert_eq!(next_id(&mut alice_ios).await, mark);
    let record = api.message(&sent.id).await.unwrap();
    assert_eq!(record.except_agents.unwrap(), ["cs"]);

    // Offline dave: a cs connection is not owed it, an ios one is.
    let mut dave_cs = server.connect("dave", "cs", &[]).await;
    let mark = marker(&server, "two").await;
    for client in [&mut dave_cs, &mut alice_cs, &mut alice_ios] {
        assert_eq!(next_id(client).await, mark);
    }
    let mut dave_ios = server.connect("dave", "ios", &[]).await;
    assert_eq!(next_id(&mut dave_ios).await, sent.id);

    // Only some agents.
    let sent = api
        .send(&to_audience(
            r#"{"n":2}"#,
            "(agent:ios OR agent:android) AND tag:vip",
        ))
        .await
        .unwrap();
    assert_eq!(next_id(&mut alice_ios).await, sent.id);
    assert_eq!(next_id(&mut dave_ios).await, sent.id);
    let mark = marker(&server, "three").await;
    assert_eq!(next_id(&mut alice_cs).await, mark);
    assert_eq!(next_id(&mut dave_cs).await, mark);
}

#[tokio::test]
async fn a_live_audience_reaches_only_matching_clients_online_now() {
    let server = Server::start();
    people(&server).await;
    let api = server.api();
    let mut alice = server.connect("alice", "bs", &["esbm"]).await;
    let mut bob = server.connect("bob", "bs", &[]).await;
    let mut carol = server.connect("carol", "bs", &["esbm"]).await;

    // Component and audience: vip users' connections subscribed to esbm.
    let sent = api
        .send(&SendMessage {
            component: Some("esbm".into()),
            live: true,
            ..to_audience(r#"{"alarm":1}"#, "tag:vip")
        })
        .await
        .unwrap();
    assert_eq!((sent.class, sent.recipients), (DeliveryClass::Component, 1));
    let push = alice.next_push(WAIT).await.unwrap();
    assert_eq!(push.id, sent.id);
    assert!(!push.ack, "live messages are not acknowledged");
    let mark = marker(&server, "one").await;
    assert_eq!(next_id(&mut alice).await, mark);
    assert_eq!(next_id(&mut bob).await, mark, "bob is not on esbm");
    assert_eq!(next_id(&mut carol).await, mark, "carol is not vip");

    // Broadcast to an audience: every matching online client.
    let sent = api
        .send(&SendMessage {
            live: true,
            ..to_audience(r#"{"notice":1}"#, "lang:zh")
        })
        .await
        .unwrap();
    assert_eq!((sent.class, sent.recipients), (DeliveryClass::Broadcast, 2));
    assert_eq!(next_id(&mut alice).await, sent.id);
    assert_eq!(next_id(&mut carol).await, sent.id);
    // Nothing is stored: dave (zh, offline) does not get it when he connects.
    let mut dave = server.connect("dave", "bs", &[]).await;
    let mark = marker(&server, "two").await;
    assert_eq!(next_id(&mut dave).await, mark);
    assert_eq!(next_id(&mut bob).await, mark);

    // Only agent terms: every online client of those agents.
    let mut bob_ios = server.connect("bob", "ios", &[]).await;
    let sent = api
        .send(&SendMessage {
            live: true,
            ..to_audience(r#"{"n":3}"#, "agent:ios")
        })
        .await
        .unwrap();
    assert_eq!(sent.recipients, 1);
    assert_eq!(next_id(&mut bob_ios).await, sent.id);
    let mark = marker(&server, "three").await;
    assert_eq!(next_id(&mut bob).await, mark);
}

#[tokio::test]
async fn bad_expressions_are_refused_with_the_position() {
    let server = Server::start();
    let admin = format!("Bearer {ADMIN_KEY}");
    let send = |body: String| {
        let admin = admin.clone();
        let server = &server;
        async move {
            server
                .request("POST", "/api/v1/messages", Some(&admin), Some(&body))
                .await
        }
    };
    for (audience, position) in [
        ("tag:vip AND", 11),
        ("tag:vip AND )", 12),
        ("tag:vip tag:beta", 8),
        ("(tag:a OR tag:b", 15),
        ("vip", 0),
        ("tag:", 4),
        ("", 0),
        ("tag:a OR agent:ios", 9),
        ("tag:a AND component:x", 10),
        ("Lang:zh", 0),
    ] {
        let body = serde_json::json!({"content": {}, "audience": audience}).to_string();
        let answer = send(body).await;
        assert_eq!(answer.status, 400, "{audience}: {answer:?}");
        assert_eq!(answer.error_code(), "invalid_audience", "{audience}");
        assert!(
            answer.body.contains(&format!("at position {position}")),
            "{audience}: {}",
            answer.body
        );
    }
    let deep = format!("{}tag:a{}", "(".repeat(40), ")".repeat(40));
    let long = format!("tag:{}", "x".repeat(3000));
    for audience in [deep, long] {
        let body = serde_json::json!({"content": {}, "audience": audience}).to_string();
        assert_eq!(send(body).await.error_code(), "invalid_audience");
    }
    for (body, code) in [
        (
            r#"{"content":{},"audience":"tag:a","receiver":["x"]}"#,
            "audience_conflict",
        ),
        (
            r#"{"content":{},"audience":"tag:a","topic":"t"}"#,
            "audience_conflict",
        ),
        (
            r#"{"content":{},"audience":"tag:a","agents":["ios"]}"#,
            "audience_conflict",
        ),
        (r#"{"content":{},"live":true}"#, "live_without_audience"),
        (
            r#"{"content":{},"audience":"agent:ios"}"#,
            "invalid_audience",
        ),
        (r#"{"content":{},"audience":7}"#, "bad_json"),
    ] {
        let answer = send(body.to_owned()).await;
        assert_eq!(answer.status, 400, "{body}: {answer:?}");
        assert_eq!(answer.error_code(), code, "{body}");
    }
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"mps_api_errors_total{code="invalid_audience"}"#),
        "counted"
    );
}

#[tokio::test]
async fn an_audience_larger_than_the_limit_is_refused() {
    let server = Server::with_env(&[("MPS_MESSAGES__MAX_AUDIENCE", "2")]);
    people(&server).await;
    let answer = server
        .admin_post("/api/v1/messages", r#"{"content":{},"audience":"lang:zh"}"#)
        .await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(answer.error_code(), "audience_too_large");
    let answer = server
        .admin_post("/api/v1/messages", r#"{"content":{},"audience":"lang:en"}"#)
        .await;
    assert_eq!(answer.status, 201, "{answer:?}");
}

#[tokio::test]
async fn preferences_are_set_by_the_back_end_or_by_the_users_own_client() {
    let server = Server::start();
    let admin = format!("Bearer {ADMIN_KEY}");
    let put = server
        .request(
            "PUT",
            "/api/v1/users/alice/preferences",
            Some(&admin),
            Some(
                r#"{"muted_components":["oa","esbm","oa"],"muted_channels":["fcm"],
                    "quiet_hours":{"start":"22:00","end":"07:00","utc_offset":"+08:00"}}"#,
            ),
        )
        .await;
    assert_eq!(put.status, 200, "{put:?}");
    let stored: serde_json::Value = serde_json::from_str(&put.body).unwrap();
    assert_eq!(
        stored["muted_components"],
        serde_json::json!(["esbm", "oa"])
    );
    let read = server.admin("GET", "/api/v1/users/alice/preferences").await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&read.body).unwrap(),
        stored
    );

    // Alice's own client reads and replaces hers, and only hers.
    let token = format!("Bearer {}", server.token("alice").await);
    let mine = server
        .request("GET", "/api/v1/me/preferences", Some(&token), None)
        .await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&mine.body).unwrap(),
        stored
    );
    let put = server
        .request(
            "PUT",
            "/api/v1/me/preferences",
            Some(&token),
            Some(r#"{"muted_channels":["webpush"]}"#),
        )
        .await;
    assert_eq!(put.status, 200, "{put:?}");
    let read = server.admin("GET", "/api/v1/users/alice/preferences").await;
    let read: serde_json::Value = serde_json::from_str(&read.body).unwrap();
    assert_eq!(read["muted_channels"], serde_json::json!(["webpush"]));
    assert_eq!(read["muted_components"], serde_json::json!([]));
    let other_app = server
        .request(
            "PUT",
            "/api/v1/me/preferences",
            Some(&token),
            Some(r#"{"app":"oa","muted_channels":["fcm"]}"#),
        )
        .await;
    assert_eq!(other_app.status, 403, "{other_app:?}");

    // Muted messages are still stored and delivered live.
    let mut alice = server.connect("alice", "bs", &["esbm"]).await;
    let sent = server
        .api()
        .send(&SendMessage {
            component: Some("esbm".into()),
            ..message(r#"{"n":1}"#, Some(&["alice"]))
        })
        .await
        .unwrap();
    assert_eq!(next_id(&mut alice).await, sent.id);

    for (body, code) in [
        (r#"{"muted_channels":["sms"]}"#, "invalid_preferences"),
        (
            r#"{"quiet_hours":{"start":"22:00","end":"22:00"}}"#,
            "invalid_preferences",
        ),
        (
            r#"{"quiet_hours":{"start":"9:00","end":"17:00"}}"#,
            "invalid_preferences",
        ),
        (
            r#"{"quiet_hours":{"start":"09:00","end":"17:00","utc_offset":"8"}}"#,
            "invalid_preferences",
        ),
        (r#"{"muted_components":[""]}"#, "invalid_preferences"),
        (r#"{"mute":[]}"#, "bad_json"),
    ] {
        let answer = server
            .request("PUT", "/api/v1/me/preferences", Some(&token), Some(body))
            .await;
        assert_eq!(answer.status, 400, "{body}: {answer:?}");
        assert_eq!(answer.error_code(), code, "{body}");
    }
    let answer = server
        .request("PUT", "/api/v1/me/preferences", None, Some("{}"))
        .await;
    assert_eq!(answer.status, 401);
}

/// The `EventData.ext` of a push, as JSON.
fn ext(push: &mps_client::proto::PushedMessage) -> serde_json::Value {
    serde_json::from_str(push.event_data.ext.get()).unwrap()
}

#[tokio::test]
async fn each_agent_gets_its_own_shape_live_and_from_the_backlog() {
    // The app's template for Android clients; iOS shapes come with the message.
    let server = Server::with_config(
        r#"
[apps.default.formats.android]
title = "[${component}] ${title}"
[apps.default.formats.android.content]
notification = { title = "${title}", body = "Room ${content.room}" }
data = "${content}"
"#,
        &[],
    );
    let api = server.api();
    let mut bs = server.connect("alice", "bs", &["esbm"]).await;
    let mut cs = server.connect("alice", "cs", &[]).await;
    let mut ios = server.connect("alice", "ios", &[]).await;
    let mut android = server.connect("alice", "android", &[]).await;

    let body = serde_json::json!({
        "content": {"alarm": "fire", "room": "2-17"},
        "title": "Fire",
        "component": "esbm",
        "receiver": ["alice", "bob", "carol", "dave"],
        "formats": {
            "ios": {"title": "Fire!", "content": {"aps": {"alert": "Fire in 2-17"}}},
            "apns": {"title": "Fire (push)"}
        }
    });
    let sent = server
        .admin_post("/api/v1/messages", &body.to_string())
        .await;
    assert_eq!(sent.status, 201, "{sent:?}");
    let sent: mps_client::proto::SendResult = serde_json::from_str(&sent.body).unwrap();

    // Browser and desktop clients: the message as sent (one push format for cs/bs).
    for client in [&mut bs, &mut cs] {
        let push = client.next_push(WAIT).await.unwrap();
        assert_eq!(push.id, sent.id);
        assert_eq!(push.title.as_deref(), Some("Fire"));
        assert_eq!(
            ext(&push),
            serde_json::json!({"alarm": "fire", "room": "2-17"})
        );
    }
    let push = ios.next_push(WAIT).await.unwrap();
    assert_eq!(push.id, sent.id);
    assert_eq!(push.title.as_deref(), Some("Fire!"));
    assert_eq!(
        ext(&push),
        serde_json::json!({"aps": {"alert": "Fire in 2-17"}})
    );
    let push = android.next_push(WAIT).await.unwrap();
    assert_eq!(push.title.as_deref(), Some("[esbm] Fire"));
    assert_eq!(
        ext(&push),
        serde_json::json!({
            "notification": {"title": "Fire", "body": "Room 2-17"},
            "data": {"alarm": "fire", "room": "2-17"}
        })
    );

    // Bob, carol and dave were offline: a phone gets its shape from the backlog, a browser the
    // original.
    let mut bob_ios = server.connect("bob", "ios", &[]).await;
    let push = bob_ios.next_push(WAIT).await.unwrap();
    assert_eq!(push.id, sent.id);
    assert_eq!(
        ext(&push),
        serde_json::json!({"aps": {"alert": "Fire in 2-17"}})
    );
    let mut carol_android = server.connect("carol", "android", &[]).await;
    let push = carol_android.next_push(WAIT).await.unwrap();
    assert_eq!(push.title.as_deref(), Some("[esbm] Fire"));
    let mut dave_bs = server.connect("dave", "bs", &[]).await;
    let push = dave_bs.next_push(WAIT).await.unwrap();
    assert_eq!(
        ext(&push),
        serde_json::json!({"alarm": "fire", "room": "2-17"})
    );

    // The record keeps the shapes it was sent with.
    let record = api.message(&sent.id).await.unwrap();
    let formats = record.formats.unwrap();
    assert_eq!(formats["apns"].title.as_deref(), Some("Fire (push)"));
    assert_eq!(formats["android"].title.as_deref(), Some("[esbm] Fire"));

    // Live-only messages are shaped too.
    let sent = api
        .send(&SendMessage {
            component: Some("esbm".into()),
            ..message(r#"{"room":"3-01"}"#, None)
        })
        .await
        .unwrap();
    let push = bs.next_push(WAIT).await.unwrap();
    assert_eq!(
        (push.id.as_str(), ext(&push)),
        (sent.id.as_str(), serde_json::json!({"room": "3-01"}))
    );

    // Bad formats.
    for (formats, code) in [
        (r#"{"ios":{}}"#, "invalid_formats"),
        (r#"{"ios":{"body":"x"}}"#, "bad_json"),
        (r#"{"":{"title":"x"}}"#, "invalid_name"),
    ] {
        let body = format!(r#"{{"content":{{}},"receiver":["a"],"formats":{formats}}}"#);
        let answer = server.admin_post("/api/v1/messages", &body).await;
        assert_eq!(answer.status, 400, "{formats}: {answer:?}");
        assert_eq!(answer.error_code(), code, "{formats}");
    }
}
