//! Server-Sent Events (`GET /sse`) and long/short polling (`GET /poll`) against the real binary:
//! what arrives and in which shape, resume, errors, heartbeats, kicks, pending backlogs, and one
//! user on WebSocket, SSE and a long poll at once.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mps_client::proto::{SendMessage, Status, frame::kind};
use mps_client::{Sse, SseBlock};
use serde_json::Value;

/// The next event of `sse`, checked to be a push whose `id:` is the message id.
async fn next_push_event(sse: &mut Sse) -> (String, Value) {
    let event = sse.next_event(WAIT).await.unwrap();
    assert_eq!(event.event, None, "a push is an unnamed event: {event:?}");
    let data: Value = serde_json::from_str(event.data.as_deref().unwrap()).unwrap();
    assert_eq!(data["Type"], 3, "{data}");
    let id = event.id.clone().expect("an id line");
    assert_eq!(data["Message"]["id"], id.as_str(), "id line and Message.id");
    (id, data)
}

async fn next_event_id(sse: &mut Sse) -> String {
    next_push_event(sse).await.0
}

/// Reads events up to and including the marker `mark`; returns the ids before it.
async fn event_ids_until(sse: &mut Sse, mark: &str) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        let id = next_event_id(sse).await;
        if id == mark {
            return ids;
        }
        ids.push(id);
    }
}

/// The delivery status of `user` for directed message `id`.
async fn status_of(server: &Server, id: &str, user: &str) -> Status {
    server
        .api()
        .message(id)
        .await
        .unwrap()
        .recipients
        .unwrap()
        .into_iter()
        .find(|r| r.user == user)
        .unwrap()
        .status
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn is_json(response: &HttpResponse) -> bool {
    response
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json"))
}

#[tokio::test]
async fn sse_pushes_directed_topic_and_component_messages_as_websocket_frames() {
    let server = Server::start();
    let token = server.token("sam").await;
    let mut sse = server
        .sse(
            &format!("token={token}&topics=alarms/%23&components=esbm&device=tab-1"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        sse.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let first = sse.next_block(WAIT).await.unwrap();
    assert_eq!(first.retry, Some(3000), "{first:?}");
    assert!(
        sse.first_chunk().unwrap().starts_with("retry:"),
        "{:?}",
        sse.first_chunk()
    );
    // The same token in the Authorization header instead of the query.
    let mut by_header = server
        .sse("topics=alarms/%23", &[("authorization", &bearer(&token))])
        .await
        .unwrap();
    assert!(by_header.next_block(WAIT).await.unwrap().retry.is_some());

    let listed = server.api().clients().await.unwrap();
    let mine: Vec<_> = listed.iter().filter(|c| c.user == "sam").collect();
    assert_eq!(mine.len(), 2, "{listed:?}");
    let streamed = mine
        .iter()
        .find(|c| c.device.as_deref() == Some("tab-1"))
        .unwrap();
    assert_eq!(streamed.transport, "sse");
    assert_eq!(streamed.agent, "bs");
    assert_eq!(streamed.components, vec!["esbm".to_owned()]);
    assert_eq!(streamed.topics, vec!["alarms/#".to_owned()]);

    // A WebSocket twin with the same subscriptions, to compare frames with.
    let twin_token = server.token("twin").await;
    let mut twin = raw_ws(&server.ws()).await;
    send_text(
        &mut twin,
        serde_json::json!({"Type": 1, "Seq": 1, "Client": {"topics": ["alarms/#"], "componentSet": ["esbm"]},
                           "Security": {"token": twin_token}})
        .to_string(),
    )
    .await;
    assert_eq!(next_json(&mut twin).await["Type"], 2);

    let api = server.api();
    let directed = api
        .send(&message(r#"{"kind":"directed"}"#, Some(&["sam", "twin"])))
        .await
        .unwrap();
    let topic = api
        .send(&topic_message("alarms/s1/r1", r#"{"kind":"topic"}"#))
        .await
        .unwrap();
    let component = api
        .send(&SendMessage {
            component: Some("esbm".into()),
            ..message(r#"{"kind":"component"}"#, None)
        })
        .await
        .unwrap();
    for (sent, kind) in [
        (&directed, "directed"),
        (&topic, "topic"),
        (&component, "component"),
    ] {
        let (id, data) = next_push_event(&mut sse).await;
        assert_eq!(id, sent.id, "{kind}");
        assert_eq!(data["Message"]["EventData"]["ext"]["kind"], kind);
        let frame = next_json(&mut twin).await;
        assert_eq!(data, frame, "SSE data is the WebSocket push frame");
    }
    // The second stream is sam's too: the directed message, then its topic; not the component.
    assert_eq!(next_event_id(&mut by_header).await, directed.id);
    let (id, data) = next_push_event(&mut by_header).await;
    assert_eq!(id, topic.id);
    assert_eq!(data["Message"]["topic"], "alarms/s1/r1");
    let mark = marker(&server, "end").await;
    assert_eq!(
        event_ids_until(&mut by_header, &mark).await,
        Vec::<String>::new()
    );
    assert_eq!(event_ids_until(&mut sse, &mark).await, Vec::<String>::new());

    // Written to the stream: delivered; acked over HTTP with the same token.
    eventually("the directed message to be delivered", || async {
        status_of(&server, &directed.id, "sam").await == Status::Delivered
    })
    .await;
    let acked = api
        .ack(&token, std::slice::from_ref(&directed.id))
        .await
        .unwrap();
    assert_eq!(acked.acked, 1);
    assert_eq!(status_of(&server, &directed.id, "sam").await, Status::Acked);

    // Dropping the stream takes the client off the list.
    drop(by_header);
    server.wait_clients("sam", 1).await;
    drop(sse);
    server.wait_clients("sam", 0).await;
}

#[tokio::test]
async fn sse_resumes_from_last_event_id_or_last_id() {
    let server = Server::start();
    let token = server.token("sam").await;
    let query = format!("token={token}&topics=alarms/%23");
    let mut sse = server.sse(&query, &[]).await.unwrap();
    let m1 = server.publish("alarms/s1/r1", r#"{"n":1}"#).await;
    assert_eq!(next_event_id(&mut sse).await, m1);
    drop(sse);
    server.wait_clients("sam", 0).await;

    let m2 = server.publish("alarms/s1/r1", r#"{"n":2}"#).await;
    server.publish("news/today", r#"{"n":0}"#).await;
    let m3 = server.publish("alarms/s2/r1", r#"{"n":3}"#).await;

    // EventSource's way: the Last-Event-ID header.
    let mut sse = server
        .sse(&query, &[("last-event-id", m1.as_str())])
        .await
        .unwrap();
    assert_eq!(next_event_id(&mut sse).await, m2);
    assert_eq!(next_event_id(&mut sse).await, m3);
    let m4 = server.publish("alarms/s1/r1", r#"{"n":4}"#).await;
    assert_eq!(next_event_id(&mut sse).await, m4, "then live");
    let mark = marker(&server, "one").await;
    assert_eq!(event_ids_until(&mut sse, &mark).await, Vec::<String>::new());
    drop(sse);

    // The query parameter does the same.
    let mut sse = server
        .sse(&format!("{query}&last_id={m1}"), &[])
        .await
        .unwrap();
    let mark = {
        assert_eq!(next_event_id(&mut sse).await, m2);
        assert_eq!(next_event_id(&mut sse).await, m3);
        assert_eq!(next_event_id(&mut sse).await, m4);
        marker(&server, "two").await
    };
    assert_eq!(event_ids_until(&mut sse, &mark).await, Vec::<String>::new());
    drop(sse);

    // With both, the header wins.
    let mut sse = server
        .sse(
            &format!("{query}&last_id={m1}"),
            &[("last-event-id", m3.as_str())],
        )
        .await
        .unwrap();
    assert_eq!(next_event_id(&mut sse).await, m4);
    let mark = marker(&server, "three").await;
    assert_eq!(event_ids_until(&mut sse, &mark).await, Vec::<String>::new());
}

#[tokio::test]
async fn sse_resume_past_the_retained_log_starts_with_a_reset_event() {
    let server = Server::with_env(&[("MPS_TOPICS__RETENTION_COUNT", "2")]);
    let token = server.token("sam").await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            server
                .publish("alarms/s1/r1", &format!(r#"{{"n":{n}}}"#))
                .await,
        );
    }
    let mut sse = server
        .sse(
            &format!("token={token}&topics=alarms/%23"),
            &[("last-event-id", ids[0].as_str())],
        )
        .await
        .unwrap();
    let reset: SseBlock = sse.next_event(WAIT).await.unwrap();
    assert_eq!(reset.event.as_deref(), Some("reset"), "{reset:?}");
    assert_eq!(reset.id, None);
    let frame = reset.frame().unwrap();
    assert_eq!(frame.kind, kind::RESET);
    assert_eq!(frame.topics, Some(vec!["alarms/#".to_owned()]));
    assert_eq!(frame.error.unwrap().code, "history_truncated");
    assert_eq!(next_event_id(&mut sse).await, ids[3]);
    assert_eq!(next_event_id(&mut sse).await, ids[4]);
    let mark = marker(&server, "end").await;
    assert_eq!(event_ids_until(&mut sse, &mark).await, Vec::<String>::new());
}

#[tokio::test]
async fn sse_refuses_bad_tokens_and_topics_with_json_and_heartbeats_and_kicks() {
    let server = Server::with_env(&[("MPS_CONNECTION__HEARTBEAT", "1")]);
    let expired = signed_token(JWT_SECRET, "sam", unix_now() - 3600);
    let forged = signed_token("another-secret", "sam", unix_now() + 3600);
    let claimed = server.topic_token("sam", &["alarms/#"]).await;
    let token = server.token("sam").await;
    for (path, auth, status, code) in [
        ("/sse?token=garbage".to_owned(), None, 401, "invalid_token"),
        (format!("/sse?token={expired}"), None, 401, "token_expired"),
        (
            "/sse".to_owned(),
            Some(bearer(&forged)),
            401,
            "invalid_token",
        ),
        ("/sse".to_owned(), None, 401, "missing_token"),
        (
            format!("/sse?token={claimed}&topics=news/%23"),
            None,
            403,
            "forbidden_topic",
        ),
        (
            format!("/sse?token={token}&topics=alarms/%23/x"),
            None,
            400,
            "invalid_topic",
        ),
        (
            format!("/sse?token={token}&last_id=abc"),
            None,
            400,
            "invalid_client",
        ),
        (
            format!("/sse?token={token}&timeout=soon"),
            None,
            400,
            "bad_query",
        ),
    ] {
        let answer = server.request("GET", &path, auth.as_deref(), None).await;
        assert_eq!(answer.status, status, "{path}: {answer:?}");
        assert!(is_json(&answer), "{path}: {answer:?}");
        assert_eq!(answer.error_code(), code, "{path}");
    }
    // Through the client: refused before any stream.
    match server.sse("token=garbage", &[]).await {
        Err(mps_client::Error::Refused { status, error }) => {
            assert_eq!((status, error.code.as_str()), (401, "invalid_token"))
        }
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("a stream was opened with a bad token"),
    }
    assert!(server.client_ids("sam").await.is_empty());

    // A comment line every heartbeat.
    let mut sse = server
        .sse(&format!("token={claimed}&topics=alarms/s1/%23"), &[])
        .await
        .unwrap();
    let since = Instant::now();
    loop {
        let block = sse.next_block(Duration::from_secs(3)).await.unwrap();
        assert!(!block.is_event(), "{block:?}");
        if block.comments.iter().any(|c| c == "ping") {
            break;
        }
    }
    assert!(since.elapsed() < Duration::from_secs(3));

    // An operator's disconnect ends the stream.
    let ids = server.client_ids("sam").await;
    assert_eq!(ids.len(), 1);
    let kicked = server
        .admin("POST", &format!("/api/v1/clients/{}/disconnect", ids[0]))
        .await;
    assert_eq!(kicked.status, 204, "{kicked:?}");
    let events = sse.closed(WAIT).await.unwrap();
    assert!(events.is_empty(), "{events:?}");
    server.wait_clients("sam", 0).await;
}

#[tokio::test]
async fn sse_sends_pending_directed_messages_first_oldest_first() {
    let server = Server::start();
    let api = server.api();
    let mut sent = Vec::new();
    for n in 0..5 {
        let m = message(&format!(r#"{{"n":{n}}}"#), Some(&["olly"]));
        sent.push(api.send(&m).await.unwrap().id);
    }
    let token = server.token("olly").await;
    let mut sse = server.sse(&format!("token={token}"), &[]).await.unwrap();
    for (n, id) in sent.iter().enumerate() {
        let (got, data) = next_push_event(&mut sse).await;
        assert_eq!(&got, id);
        assert_eq!(data["Message"]["ack"], true);
        assert_eq!(data["Message"]["EventData"]["ext"]["n"], n);
    }
    let live = api
        .send(&message(r#"{"live":true}"#, Some(&["olly"])))
        .await
        .unwrap()
        .id;
    assert_eq!(next_event_id(&mut sse).await, live);
    let mark = marker(&server, "end").await;
    assert_eq!(event_ids_until(&mut sse, &mark).await, Vec::<String>::new());
    for id in sent.iter().chain([&live]) {
        eventually("delivered", || async {
            status_of(&server, id, "olly").await == Status::Delivered
        })
        .await;
    }
}

#[tokio::test]
async fn long_and_short_polls_wait_return_and_mark_directed_messages_once() {
    // The tight poll loop below is over the default per-user request rate (tested in limits.rs).
    let server = Server::with_env(&[("MPS_LIMITS__CLIENT_RATE", "0")]);
    let api = server.api();
    let token = server.token("paula").await;

    // A long poll answers as soon as a message comes.
    let started = Instant::now();
    let waiting = {
        let api = api.clone();
        let token = token.clone();
        tokio::spawn(async move { api.poll(&token, &[("timeout", "5")]).await })
    };
    eventually("the poll to be listed", || async {
        let listed = server.api().clients().await.unwrap();
        listed
            .iter()
            .any(|c| c.user == "paula" && c.transport == "poll")
    })
    .await;
    let first = api
        .send(&message(r#"{"n":1}"#, Some(&["paula"])))
        .await
        .unwrap()
        .id;
    let polled = waiting.await.unwrap().unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert_eq!(ids_of(&polled.messages), vec![first.clone()]);
    assert!(polled.messages[0].ack);
    assert_eq!(polled.reset, None);
    server.wait_clients("paula", 0).await;

    // Nothing owed: [] at the timeout, or at once for a short poll.
    let started = Instant::now();
    let polled = api.poll(&token, &[("timeout", "1")]).await.unwrap();
    let took = started.elapsed();
    assert!(polled.messages.is_empty(), "{polled:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    let started = Instant::now();
    let answer = server
        .request("GET", &format!("/poll?token={token}&timeout=0"), None, None)
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(is_json(&answer), "{answer:?}");
    assert_eq!(answer.body.trim(), "[]");
    assert!(started.elapsed() < Duration::from_secs(1));

    // Pending messages come at once, oldest first, marked delivered, and only once.
    let mut pending = Vec::new();
    for n in 2..5 {
        let m = message(&format!(r#"{{"n":{n}}}"#), Some(&["paula"]));
        pending.push(api.send(&m).await.unwrap().id);
    }
    let started = Instant::now();
    let polled = api.poll(&token, &[("timeout", "5")]).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(ids_of(&polled.messages), pending);
    for id in &pending {
        assert_eq!(status_of(&server, id, "paula").await, Status::Delivered);
    }
    let again = api.poll(&token, &[("timeout", "0")]).await.unwrap();
    assert!(again.messages.is_empty(), "came twice: {again:?}");
    // A client polling in a tight loop never sees a directed message twice.
    for n in 0..20 {
        let m = message(&format!(r#"{{"loop":{n}}}"#), Some(&["paula"]));
        let id = api.send(&m).await.unwrap().id;
        let polled = api.poll(&token, &[("timeout", "0")]).await.unwrap();
        assert_eq!(ids_of(&polled.messages), vec![id], "round {n}");
        let again = api.poll(&token, &[("timeout", "0")]).await.unwrap();
        assert!(
            again.messages.is_empty(),
            "round {n}: came twice: {again:?}"
        );
    }
    let acked = api.ack(&token, &pending).await.unwrap();
    assert_eq!(acked.acked, 3);
    assert_eq!(status_of(&server, &first, "paula").await, Status::Delivered);
}

#[tokio::test]
async fn polls_since_an_id_get_retained_topic_messages_and_the_reset_header() {
    let server = Server::with_env(&[("MPS_TOPICS__RETENTION_COUNT", "2")]);
    let api = server.api();
    let token = server.token("paula").await;
    let a1 = server.publish("alarms/a", r#"{"n":1}"#).await;
    let b1 = server.publish("alarms/b", r#"{"n":2}"#).await;
    let a2 = server.publish("alarms/a", r#"{"n":3}"#).await;
    server.publish("news/x", r#"{"n":4}"#).await;
    let b2 = server.publish("alarms/b", r#"{"n":5}"#).await;

    let since = |id: &str| {
        vec![
            ("since", id.to_owned()),
            ("topics", "alarms/#".to_owned()),
            ("timeout", "5".to_owned()),
        ]
    };
    let started = Instant::now();
    let polled = api.poll(&token, &since(&a1)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1), "owed: at once");
    assert_eq!(
        ids_of(&polled.messages),
        vec![b1.clone(), a2.clone(), b2.clone()]
    );
    assert_eq!(polled.messages[1].topic.as_deref(), Some("alarms/a"));
    assert!(!polled.messages[1].ack);
    assert_eq!(polled.reset, None);

    // The next poll passes the greatest id and waits for a new one.
    let waiting = {
        let api = api.clone();
        let token = token.clone();
        let query = since(&b2);
        tokio::spawn(async move { api.poll(&token, &query).await })
    };
    eventually("the poll to be listed", || async {
        server.client_ids("paula").await.len() == 1
    })
    .await;
    let a3 = server.publish("alarms/a", r#"{"n":6}"#).await;
    let polled = waiting.await.unwrap().unwrap();
    assert_eq!(ids_of(&polled.messages), vec![a3.clone()]);

    // alarms/a keeps a2.. no more: a2 is cut once a4 arrives; resuming from a1 is told so.
    let a4 = server.publish("alarms/a", r#"{"n":7}"#).await;
    let polled = api.poll(&token, &since(&a1)).await.unwrap();
    assert_eq!(polled.reset, Some(vec!["alarms/#".to_owned()]));
    assert_eq!(ids_of(&polled.messages), vec![b1, b2, a3, a4]);
    let raw = server
        .request(
            "GET",
            &format!("/poll?since={a1}&topics=alarms/%23&timeout=0"),
            Some(&bearer(&token)),
            None,
        )
        .await;
    assert_eq!(raw.status, 200, "{raw:?}");
    assert_eq!(raw.header("mps-reset"), Some("alarms/#"));
}

#[tokio::test]
async fn polls_refuse_bad_timeouts_tokens_and_topics_with_json() {
    let server = Server::start();
    let token = server.token("paula").await;
    let claimed = server.topic_token("paula", &["alarms/#"]).await;
    for (path, status, code) in [
        (format!("/poll?token={token}&timeout=61"), 400, "bad_query"),
        (format!("/poll?token={token}&timeout=-1"), 400, "bad_query"),
        (
            format!("/poll?token={token}&timeout=soon"),
            400,
            "bad_query",
        ),
        // The WebSocket endpoint with the token in the path reads the same query.
        (format!("/websocket/{token}?timeout=soon"), 400, "bad_query"),
        (
            "/poll?token=garbage&timeout=0".to_owned(),
            401,
            "invalid_token",
        ),
        ("/poll?timeout=0".to_owned(), 401, "missing_token"),
        (
            format!("/poll?token={token}&timeout=0&since=abc"),
            400,
            "invalid_client",
        ),
        (
            format!("/poll?token={token}&timeout=0&topics=a//b"),
            400,
            "invalid_topic",
        ),
        (
            format!("/poll?token={claimed}&timeout=0&topics=news/%23"),
            403,
            "forbidden_topic",
        ),
    ] {
        let answer = server.request("GET", &path, None, None).await;
        assert_eq!(answer.status, status, "{path}: {answer:?}");
        assert!(is_json(&answer), "{path}: {answer:?}");
        assert_eq!(answer.error_code(), code, "{path}");
    }
    match server.api().poll("garbage", &[("timeout", "0")]).await {
        Err(error) => assert_eq!(refused(error), (401, "invalid_token".to_owned())),
        Ok(polled) => panic!("polled with a bad token: {polled:?}"),
    }
}

#[tokio::test]
async fn one_user_on_websocket_sse_and_a_long_poll_gets_a_directed_message_on_each() {
    let server = Server::start();
    let api = server.api();
    let mut ws = server.connect("tri", "cs", &[]).await;
    let token = server.token("tri").await;
    let mut sse = server.sse(&format!("token={token}"), &[]).await.unwrap();
    let polling = {
        let api = api.clone();
        let token = token.clone();
        tokio::spawn(async move { api.poll(&token, &[("timeout", "10")]).await })
    };
    server.wait_clients("tri", 3).await;
    let mut transports: Vec<String> = api
        .clients()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.user == "tri")
        .map(|c| c.transport)
        .collect();
    transports.sort();
    assert_eq!(transports, ["poll", "sse", "websocket"]);

    let sent = api
        .send(&message(r#"{"to":"all three"}"#, Some(&["tri"])))
        .await
        .unwrap();
    assert_eq!(sent.recipients, 1);
    assert_eq!(ws.next_push(WAIT).await.unwrap().id, sent.id);
    assert_eq!(next_event_id(&mut sse).await, sent.id);
    let polled = tokio::time::timeout(WAIT, polling)
        .await
        .expect("the poll answered")
        .unwrap()
        .unwrap();
    assert_eq!(ids_of(&polled.messages), vec![sent.id.clone()]);
    eventually("delivered", || async {
        status_of(&server, &sent.id, "tri").await == Status::Delivered
    })
    .await;
}

#[tokio::test]
async fn a_log_emptied_by_time_is_reported_at_once_on_every_transport() {
    let server = Server::with_env(&[
        ("MPS_TOPICS__RETENTION", "1"),
        ("MPS_MESSAGES__SWEEP_INTERVAL", "1"),
    ]);
    let api = server.api();
    let token = server.token("paula").await;
    let m0 = server.publish("alarms/a", r#"{"n":0}"#).await;
    server.publish("alarms/a", r#"{"n":1}"#).await;
    let query = [
        ("since", m0.clone()),
        ("topics", "alarms/#".to_owned()),
        ("timeout", "0".to_owned()),
    ];
    eventually("the topic log to be trimmed by age", || async {
        api.poll(&token, &query).await.unwrap().reset.is_some()
    })
    .await;

    // Nothing is retained, but the client must reload: a long poll answers at once.
    let started = Instant::now();
    let long = [
        ("since", m0.clone()),
        ("topics", "alarms/#".to_owned()),
        ("timeout", "5".to_owned()),
    ];
    let polled = api.poll(&token, &long).await.unwrap();
    let took = started.elapsed();
    assert_eq!(polled.reset, Some(vec!["alarms/#".to_owned()]));
    assert!(polled.messages.is_empty(), "{polled:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");

    let mut ws = server
        .connect_topics("paula", &["alarms/#"], Some(&m0))
        .await;
    let reset = tokio::time::timeout(WAIT, ws.next_frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reset.kind, kind::RESET, "{reset:?}");
    let mut sse = server
        .sse(
            &format!("token={token}&topics=alarms/%23&last_id={m0}"),
            &[],
        )
        .await
        .unwrap();
    let reset = sse.next_event(WAIT).await.unwrap();
    assert_eq!(reset.event.as_deref(), Some("reset"), "{reset:?}");
}

#[tokio::test]
async fn a_poll_owing_topic_and_directed_messages_answers_oldest_first() {
    let server = Server::start();
    let api = server.api();
    let token = server.token("paula").await;
    let base = server.publish("alarms/a", r#"{"n":0}"#).await;
    let mut expected = Vec::new();
    for n in 1..4 {
        let m = message(&format!(r#"{{"d":{n}}}"#), Some(&["paula"]));
        expected.push(api.send(&m).await.unwrap().id);
        expected.push(server.publish("alarms/a", &format!(r#"{{"t":{n}}}"#)).await);
    }
    let polled = api
        .poll(
            &token,
            &[
                ("since", base.as_str()),
                ("topics", "alarms/#"),
                ("timeout", "0"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(ids_of(&polled.messages), expected);
}
