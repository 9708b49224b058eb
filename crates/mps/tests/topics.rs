//! Topics on `/ws`: pattern routing, resume with `Client.lastId`, retained-log truncation and its
//! per-topic overrides, topic claims in tokens, bad topics, and durability across `kill -9`.
//!
//! "Did not get it" is checked without sleeping, as in `routing.rs`: after the message under
//! test a broadcast marker is sent, and a connection that skipped the message sees the marker as
//! its next push.

mod common;

use common::*;
use mps_client::PushClient;
use mps_client::proto::{DeliveryClass, Frame, frame::kind};
use serde_json::Value;

/// Reads pushes up to and including the marker `mark`; returns the ids before it.
async fn ids_until(client: &mut PushClient, mark: &str) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        let id = next_id(client).await;
        if id == mark {
            return ids;
        }
        ids.push(id);
    }
}

/// The next frame of any type, within `WAIT`.
async fn next_frame(client: &mut PushClient) -> Frame {
    tokio::time::timeout(WAIT, client.next_frame())
        .await
        .expect("a frame in time")
        .expect("a frame")
}

/// An open frame with topics (and more) in `Client`, as raw text.
fn open_with(token: &str, client: Value) -> String {
    serde_json::json!({"Type": 1, "Seq": 5, "Version": 1, "Client": client, "Security": {"token": token}})
        .to_string()
}

#[tokio::test]
async fn topic_messages_reach_matching_patterns_once_and_carry_their_topic() {
    let server = Server::start();
    let mut all = server.connect_topics("a", &["alarms/#"], None).await;
    let mut any_site = server.connect_topics("b", &["alarms/+/r1"], None).await;
    let mut exact = server.connect_topics("c", &["alarms/s1/r1"], None).await;
    let mut twice = server
        .connect_topics("d", &["alarms/#", "alarms/+/r1"], None)
        .await;
    let mut news = server.connect_topics("e", &["news/#"], None).await;
    let mut other_site = server.connect_topics("f", &["alarms/s2/#"], None).await;
    let mut no_topics = server.connect("g", "bs", &[]).await;

    let sent = server
        .api()
        .send(&topic_message("alarms/s1/r1", r#"{"alarm":"smoke"}"#))
        .await
        .unwrap();
    assert_eq!(sent.class, DeliveryClass::Topic);
    assert_eq!(sent.recipients, 0);
    let mark = marker(&server, "after").await;
    for client in [&mut all, &mut any_site, &mut exact, &mut twice] {
        let push = client.next_push(WAIT).await.unwrap();
        assert_eq!(push.id, sent.id);
        assert_eq!(push.topic.as_deref(), Some("alarms/s1/r1"));
        assert!(!push.ack, "topic messages are not acknowledged");
        let ext: Value = serde_json::from_str(push.event_data.ext.get()).unwrap();
        assert_eq!(ext["alarm"], "smoke");
        assert_eq!(next_id(client).await, mark, "exactly once");
    }
    for client in [&mut news, &mut other_site, &mut no_topics] {
        assert_eq!(next_id(client).await, mark, "not a matching pattern");
    }

    // The raw push frame names the topic too.
    let token = server.token("h").await;
    let mut raw = raw_ws(&server.ws()).await;
    send_text(
        &mut raw,
        open_with(&token, serde_json::json!({"topics": ["alarms/s1/+"]})),
    )
    .await;
    assert_eq!(next_json(&mut raw).await["Type"], 2);
    let sent = server.publish("alarms/s1/r2", r#"{"n":2}"#).await;
    let push = next_json(&mut raw).await;
    assert_eq!(push["Type"], 3);
    assert_eq!(push["Message"]["id"], sent.as_str());
    assert_eq!(push["Message"]["topic"], "alarms/s1/r2");
    assert_eq!(push["Message"]["EventData"]["ext"]["n"], 2);
    let listed = server.api().clients().await.unwrap();
    let h = listed.iter().find(|c| c.user == "h").unwrap();
    assert_eq!(h.topics, vec!["alarms/s1/+".to_owned()]);
}

#[tokio::test]
async fn resume_with_last_id_sends_what_was_missed_then_live_without_duplicates() {
    let server = Server::start();
    let mut client = server.connect_topics("alice", &["alarms/#"], None).await;
    let m1 = server.publish("alarms/s1/r1", r#"{"n":1}"#).await;
    let m2 = server.publish("alarms/s2/r1", r#"{"n":2}"#).await;
    assert_eq!(next_id(&mut client).await, m1);
    assert_eq!(next_id(&mut client).await, m2);
    client.close().await.unwrap();
    server.wait_clients("alice", 0).await;

    let m3 = server.publish("alarms/s1/r1", r#"{"n":3}"#).await;
    let m4 = server.publish("alarms/s3/r9", r#"{"n":4}"#).await;
    // Not on the client's patterns: not replayed.
    server.publish("news/today", r#"{"n":0}"#).await;

    let mut client = server
        .connect_topics("alice", &["alarms/#"], Some(&m2))
        .await;
    let first = client.next_push(WAIT).await.unwrap();
    assert_eq!(
        (first.id.as_str(), first.topic.as_deref()),
        (m3.as_str(), Some("alarms/s1/r1"))
    );
    assert_eq!(next_id(&mut client).await, m4);
    let m5 = server.publish("alarms/s1/r1", r#"{"n":5}"#).await;
    assert_eq!(next_id(&mut client).await, m5, "then live");
    let mark = marker(&server, "end").await;
    assert_eq!(ids_until(&mut client, &mark).await, Vec::<String>::new());

    // Without lastId: live only, nothing retained is replayed.
    let mut fresh = server.connect_topics("bob", &["alarms/#"], None).await;
    let m6 = server.publish("alarms/s1/r1", r#"{"n":6}"#).await;
    let mark = marker(&server, "fresh").await;
    assert_eq!(ids_until(&mut fresh, &mark).await, vec![m6]);
}

#[tokio::test]
async fn resume_past_the_retained_log_starts_with_a_reset_frame() {
    let server = Server::with_env(&[("MPS_TOPICS__RETENTION_COUNT", "2")]);
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            server
                .publish("alarms/s1/r1", &format!(r#"{{"n":{n}}}"#))
                .await,
        );
    }
    let mut client = server
        .connect_topics("alice", &["alarms/#"], Some(&ids[0]))
        .await;
    let reset = next_frame(&mut client).await;
    assert_eq!(reset.kind, kind::RESET, "{reset:?}");
    assert_eq!(reset.topics, Some(vec!["alarms/#".to_owned()]));
    assert_eq!(reset.error.unwrap().code, "history_truncated");
    assert_eq!(next_id(&mut client).await, ids[3]);
    assert_eq!(next_id(&mut client).await, ids[4]);
    let mark = marker(&server, "end").await;
    assert_eq!(ids_until(&mut client, &mark).await, Vec::<String>::new());

    // Resuming from an id the log still reaches: no reset.
    let mut again = server
        .connect_topics("alice", &["alarms/#"], Some(&ids[3]))
        .await;
    let frame = next_frame(&mut again).await;
    assert_eq!(frame.kind, kind::PUSH, "{frame:?}");
    assert_eq!(frame.message.unwrap().id, ids[4]);
}

#[tokio::test]
async fn a_per_topic_retention_override_from_the_config_file_applies() {
    let server = Server::with_config(
        r#"
[topics]
retention_count = 2

[[topics.retain]]
pattern = "keep/#"
count = 10
"#,
        &[],
    );
    let mut keep = Vec::new();
    for n in 0..12 {
        keep.push(server.publish("keep/x", &format!(r#"{{"k":{n}}}"#)).await);
    }
    let mut other = Vec::new();
    for n in 0..5 {
        other.push(server.publish("other/x", &format!(r#"{{"o":{n}}}"#)).await);
    }
    let mut client = server
        .connect_topics("alice", &["keep/#", "other/#"], Some(&keep[0]))
        .await;
    let reset = next_frame(&mut client).await;
    assert_eq!(reset.kind, kind::RESET, "{reset:?}");
    assert_eq!(
        reset.topics,
        Some(vec!["keep/#".to_owned(), "other/#".to_owned()])
    );
    let mark = marker(&server, "end").await;
    let got = ids_until(&mut client, &mark).await;
    let expected: Vec<String> = keep[2..].iter().chain(&other[3..]).cloned().collect();
    assert_eq!(got.len(), 12, "10 of keep/x, 2 of other/x");
    assert_eq!(got, expected);
}

#[tokio::test]
async fn a_topic_claim_limits_what_a_token_may_subscribe_to() {
    let server = Server::start();
    let issued = server
        .admin_post("/api/v1/tokens", r#"{"user":"u","topics":["alarms/#"]}"#)
        .await;
    assert_eq!(issued.status, 200, "{issued:?}");
    let token: mps_client::proto::TokenResponse = serde_json::from_str(&issued.body).unwrap();
    let token = token.token;

    // Outside the claim: refused.
    let mut ws = raw_ws(&server.ws()).await;
    send_text(
        &mut ws,
        open_with(&token, serde_json::json!({"topics": ["news/#"]})),
    )
    .await;
    let (frames, code) = until_close(&mut ws).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["Type"], 2);
    assert_eq!(frames[0]["Seq"], 5);
    assert_eq!(frames[0]["Error"]["code"], "forbidden_topic");
    assert_eq!(code, 4403);
    // Wider than the claim: refused too.
    let mut ws = raw_ws(&server.ws()).await;
    send_text(
        &mut ws,
        open_with(&token, serde_json::json!({"topics": ["#"]})),
    )
    .await;
    let (frames, code) = until_close(&mut ws).await;
    assert_eq!(frames[0]["Error"]["code"], "forbidden_topic");
    assert_eq!(code, 4403);

    // Inside the claim: accepted.
    let client = mps_client::proto::ClientInfo {
        topics: Some(vec!["alarms/s1/#".into()]),
        ..client_info("u", "bs", &[])
    };
    let mut client = PushClient::open(&server.ws(), &token, client)
        .await
        .unwrap();
    let s1 = server.publish("alarms/s1/r1", r#"{"n":1}"#).await;
    assert_eq!(next_id(&mut client).await, s1);

    // Changing to a forbidden pattern: a Type 9 error, the session stays as it was.
    let refused = client.set_topics(&["news/#"]).await.unwrap_err();
    match refused {
        mps_client::Error::Refused { error, .. } => assert_eq!(error.code, "forbidden_topic"),
        other => panic!("expected forbidden_topic, got {other}"),
    }
    client.ping().await.unwrap();
    server.publish("news/today", r#"{"n":2}"#).await;
    let s1_again = server.publish("alarms/s1/r2", r#"{"n":3}"#).await;
    let mark = marker(&server, "one").await;
    assert_eq!(ids_until(&mut client, &mark).await, vec![s1_again]);

    // Changing to an allowed pattern: routing follows.
    let now = client.set_topics(&["alarms/s2/#"]).await.unwrap();
    assert_eq!(now, vec!["alarms/s2/#".to_owned()]);
    server.publish("alarms/s1/r1", r#"{"n":4}"#).await;
    let s2 = server.publish("alarms/s2/r1", r#"{"n":5}"#).await;
    let mark = marker(&server, "two").await;
    assert_eq!(ids_until(&mut client, &mark).await, vec![s2]);
    let listed = server.api().clients().await.unwrap();
    let u = listed.iter().find(|c| c.user == "u").unwrap();
    assert_eq!(u.topics, vec!["alarms/s2/#".to_owned()]);

    // The raw Type 9 answer echoes the Seq.
    let mut ws = raw_ws(&server.ws()).await;
    send_text(
        &mut ws,
        open_with(&token, serde_json::json!({"topics": ["alarms/#"]})),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["Type"], 2);
    send_text(
        &mut ws,
        r#"{"Type":8,"Seq":42,"Client":{"topics":["news/#"]}}"#,
    )
    .await;
    let error = next_json(&mut ws).await;
    assert_eq!(error["Type"], 9, "{error}");
    assert_eq!(error["Seq"], 42);
    assert_eq!(error["Error"]["code"], "forbidden_topic");
    send_text(&mut ws, r#"{"Type":5,"Seq":43}"#).await;
    let pong = next_json(&mut ws).await;
    assert_eq!(
        (pong["Type"].as_u64(), pong["Seq"].as_u64()),
        (Some(6), Some(43))
    );
}

#[tokio::test]
async fn bad_topics_are_refused_on_publish_and_open() {
    let server = Server::start();
    for (body, code) in [
        (r#"{"content":1,"topic":"alarms/+"}"#, "invalid_topic"),
        (r#"{"content":1,"topic":"alarms/#"}"#, "invalid_topic"),
        (r#"{"content":1,"topic":"a//b"}"#, "invalid_topic"),
        (r#"{"content":1,"topic":""}"#, "invalid_topic"),
        (
            r#"{"content":1,"topic":"alarms/s1","receiver":["alice"]}"#,
            "topic_with_receiver",
        ),
    ] {
        let answer = server.admin_post("/api/v1/messages", body).await;
        assert_eq!(answer.status, 400, "{body}: {answer:?}");
        assert_eq!(answer.error_code(), code, "{body}");
        assert!(
            answer
                .header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{answer:?}"
        );
    }

    let token = server.token("alice").await;
    for client in [
        serde_json::json!({"topics": ["alarms/#/x"]}),
        serde_json::json!({"topics": ["alarms/s+"]}),
        serde_json::json!({"topics": ["a//b"]}),
    ] {
        let mut ws = raw_ws(&server.ws()).await;
        send_text(&mut ws, open_with(&token, client.clone())).await;
        let (frames, code) = until_close(&mut ws).await;
        assert_eq!(frames.len(), 1, "{client}: {frames:?}");
        assert_eq!(frames[0]["Type"], 2);
        assert_eq!(frames[0]["Error"]["code"], "invalid_topic", "{client}");
        assert_eq!(code, 4400, "{client}");
    }
    for last_id in ["abc", "-1", "12.5"] {
        let mut ws = raw_ws(&server.ws()).await;
        send_text(
            &mut ws,
            open_with(
                &token,
                serde_json::json!({"topics": ["alarms/#"], "lastId": last_id}),
            ),
        )
        .await;
        let (frames, code) = until_close(&mut ws).await;
        assert_eq!(frames.len(), 1, "{last_id}: {frames:?}");
        assert_eq!(frames[0]["Type"], 2);
        assert!(frames[0]["Error"]["code"].is_string(), "{frames:?}");
        assert_eq!(code, 4400, "lastId {last_id}");
    }
    // A number instead of a string is not a valid frame either.
    let mut ws = raw_ws(&server.ws()).await;
    send_text(
        &mut ws,
        open_with(&token, serde_json::json!({"lastId": 17})),
    )
    .await;
    let (_, code) = until_close(&mut ws).await;
    assert_eq!(code, 4400);
    assert!(server.client_ids("alice").await.is_empty());
}

#[tokio::test]
async fn topic_messages_survive_kill_9() {
    let mut server = Server::start();
    let mut ids = Vec::new();
    for n in 0..50 {
        let answer = server
            .admin_post(
                "/api/v1/messages",
                &format!(
                    r#"{{"content":{{"n":{n}}},"topic":"alarms/s{}/r1"}}"#,
                    n % 3
                ),
            )
            .await;
        assert_eq!(answer.status, 201, "{answer:?}");
        let sent: mps_client::proto::SendResult = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(sent.class, DeliveryClass::Topic);
        ids.push(sent.id);
    }
    server.kill_and_restart();
    let mut client = server
        .connect_topics("alice", &["alarms/#"], Some(&ids[0]))
        .await;
    let mark = marker(&server, "end").await;
    let got = ids_until(&mut client, &mark).await;
    assert_eq!(got, ids[1..].to_vec());
}

/// With the default resume overlap, a resume also repeats what was published shortly before the
/// client's last id (so a concurrent publish that arrived out of id order is never lost), and
/// nothing else.
#[tokio::test]
async fn resume_overlap_repeats_only_recent_messages() {
    let server = Server::with_env(&[("MPS_TOPICS__RESUME_OVERLAP_MS", "1000")]);
    let early = server.publish("alarms/x", r#"{"n":0}"#).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let recent = server.publish("alarms/x", r#"{"n":1}"#).await;
    let last = server.publish("alarms/x", r#"{"n":2}"#).await;
    let missed = server.publish("alarms/x", r#"{"n":3}"#).await;
    let mut client = server.connect_topics("u", &["alarms/#"], Some(&last)).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(client.next_push(WAIT).await.unwrap().id);
    }
    assert_eq!(got, [recent, last, missed]);
    assert!(!got.contains(&early));
}
