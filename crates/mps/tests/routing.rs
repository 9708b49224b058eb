//! Who gets what: broadcast, component, subscriptions, agents; and the exact browser flow.
//!
//! "Did not get it" is checked without sleeping: after the message under test, a broadcast marker
//! is sent, and a connection that skipped the message sees the marker as its next push (every
//! connection receives its pushes in order).

mod common;

use common::*;
use mps_client::PushClient;
use mps_client::proto::{DeliveryClass, SendMessage};
use serde_json::Value;

fn component_message(content: &str, component: &str) -> SendMessage {
    SendMessage {
        component: Some(component.into()),
        ..message(content, None)
    }
}

#[tokio::test]
async fn broadcast_reaches_every_connection_of_every_online_user() {
    let server = Server::start();
    let mut clients = vec![
        server.connect("alice", "bs", &["esbm"]).await,
        server.connect("alice", "ios", &[]).await,
        server.connect("bob", "cs", &["oa"]).await,
        server.connect("carol", "android", &[]).await,
    ];
    let sent = server
        .api()
        .send(&message(r#"{"notice":"maintenance at 22:00"}"#, None))
        .await
        .unwrap();
    assert_eq!(sent.class, DeliveryClass::Broadcast);
    assert_eq!(sent.recipients, 0);
    for client in &mut clients {
        let push = client.next_push(WAIT).await.unwrap();
        assert_eq!(push.id, sent.id);
        assert!(!push.ack, "broadcasts are not acknowledged");
        let ext: Value = serde_json::from_str(push.event_data.ext.get()).unwrap();
        assert_eq!(ext["notice"], "maintenance at 22:00");
    }
    // Broadcasts are live only: a user who connects later does not get it.
    let mut late = server.connect("dave", "bs", &[]).await;
    let mark = marker(&server, "after").await;
    assert_eq!(next_id(&mut late).await, mark);
    // Another app's clients do not get this app's broadcasts, and the other way round.
    let issued = server
        .admin_post("/api/v1/tokens", r#"{"user":"erin","app":"oa"}"#)
        .await;
    assert_eq!(issued.status, 200, "{issued:?}");
    let issued: mps_client::proto::TokenResponse = serde_json::from_str(&issued.body).unwrap();
    let mut erin = PushClient::open(&server.ws(), &issued.token, client_info("erin", "bs", &[]))
        .await
        .unwrap();
    assert_eq!(erin.session.app, "oa");
    let default_only = marker(&server, "default").await;
    let for_oa = server
        .api()
        .send(&SendMessage {
            app: Some("oa".into()),
            ..message(r#"{"app":"oa"}"#, None)
        })
        .await
        .unwrap()
        .id;
    assert_eq!(next_id(&mut erin).await, for_oa);
    assert_eq!(next_id(&mut late).await, default_only);
    let mark = marker(&server, "last").await;
    assert_eq!(next_id(&mut late).await, mark);
}

#[tokio::test]
async fn component_messages_follow_the_component_set_and_its_changes() {
    let server = Server::start();
    let mut esbm = server.connect("alice", "bs", &["esbm"]).await;
    let mut both = server.connect("bob", "cs", &["oa", "esbm"]).await;
    let mut oa = server.connect("carol", "bs", &["oa"]).await;
    let mut none = server.connect("dave", "ios", &[]).await;

    let sent = server
        .api()
        .send(&component_message(r#"{"alarm":1}"#, "esbm"))
        .await
        .unwrap();
    assert_eq!(sent.class, DeliveryClass::Component);
    let mark = marker(&server, "one").await;
    for client in [&mut esbm, &mut both] {
        let push = client.next_push(WAIT).await.unwrap();
        assert_eq!(push.id, sent.id);
        assert_eq!(push.component.as_deref(), Some("esbm"));
        assert_eq!(next_id(client).await, mark);
    }
    for client in [&mut oa, &mut none] {
        assert_eq!(next_id(client).await, mark, "not subscribed to esbm");
    }

    // Type 8 replaces the set: alice leaves esbm for oa, dave joins esbm.
    esbm.subscribe(&["oa"]).await.unwrap();
    none.subscribe(&["esbm"]).await.unwrap();
    let listed = server.api().clients().await.unwrap();
    let alice = listed.iter().find(|c| c.user == "alice").unwrap();
    assert_eq!(alice.components, vec!["oa".to_owned()]);

    let to_esbm = server
        .api()
        .send(&component_message(r#"{"alarm":2}"#, "esbm"))
        .await
        .unwrap()
        .id;
    let to_oa = server
        .api()
        .send(&component_message(r#"{"form":3}"#, "oa"))
        .await
        .unwrap()
        .id;
    let mark = marker(&server, "two").await;
    let mut order = Vec::new();
    for client in [&mut esbm, &mut both, &mut oa, &mut none] {
        let mut ids = Vec::new();
        loop {
            let id = next_id(client).await;
            let done = id == mark;
            ids.push(id);
            if done {
                break;
            }
        }
        order.push(ids);
    }
    assert_eq!(
        order[0],
        [to_oa.clone(), mark.clone()],
        "alice: oa only now"
    );
    assert_eq!(
        order[1],
        [to_esbm.clone(), to_oa.clone(), mark.clone()],
        "bob: both"
    );
    assert_eq!(order[2], [to_oa.clone(), mark.clone()], "carol: oa");
    assert_eq!(order[3], [to_esbm.clone(), mark.clone()], "dave: esbm now");

    // An empty set unsubscribes from everything, broadcasts still arrive.
    both.subscribe(&[]).await.unwrap();
    server
        .api()
        .send(&component_message(r#"{"alarm":4}"#, "esbm"))
        .await
        .unwrap();
    let mark = marker(&server, "three").await;
    assert_eq!(next_id(&mut both).await, mark);
}

#[tokio::test]
async fn agents_limit_directed_messages_to_those_connections_now_and_later() {
    let server = Server::start();
    let api = server.api();
    let mut bs = server.connect("alice", "bs", &[]).await;
    let mut ios = server.connect("alice", "ios", &[]).await;
    let mut bob_ios = server.connect("bob", "ios", &[]).await;

    let ios_only = SendMessage {
        agents: Some(vec!["ios".into()]),
        ..message(r#"{"badge":1}"#, Some(&["alice"]))
    };
    let first = api.send(&ios_only).await.unwrap().id;
    let push = ios.next_push(WAIT).await.unwrap();
    assert_eq!(push.id, first);
    assert!(push.ack);
    // Acked, so that it is settled before the next step.
    assert_eq!(ios.ack(std::slice::from_ref(&first)).await.unwrap(), 1);
    let mark = marker(&server, "one").await;
    assert_eq!(next_id(&mut bs).await, mark, "the bs connection skips it");
    assert_eq!(next_id(&mut bob_ios).await, mark, "bob is not a receiver");
    assert_eq!(next_id(&mut ios).await, mark);

    // With only the browser online, an ios-only message waits for an ios connection.
    ios.close().await.unwrap();
    server.wait_clients("alice", 1).await;
    let second = api.send(&ios_only).await.unwrap().id;
    let mark = marker(&server, "two").await;
    assert_eq!(next_id(&mut bs).await, mark);
    bs.close().await.unwrap();
    server.wait_clients("alice", 0).await;
    let mut bs = server.connect("alice", "bs", &[]).await;
    let mark = marker(&server, "three").await;
    assert_eq!(next_id(&mut bs).await, mark, "not in the browser's backlog");
    let record = api.message(&second).await.unwrap();
    assert_eq!(
        record.recipients.unwrap()[0].status,
        mps_client::proto::Status::Pending
    );
    assert_eq!(record.agents, Some(vec!["ios".to_owned()]));

    let mut ios = server.connect("alice", "ios", &[]).await;
    assert_eq!(next_id(&mut ios).await, second, "the ios backlog has it");
    let mark = marker(&server, "four").await;
    assert_eq!(next_id(&mut ios).await, mark, "and only it");
    assert_eq!(next_id(&mut bs).await, mark);
}

/// The seed's browser: raw text open frame, then `JSON.parse(evt.data).Message.EventData.ext`.
#[tokio::test]
async fn the_browser_flow_gets_the_content_under_event_data_ext() {
    let server = Server::start();
    let token = server.token("admin").await;
    let mut ws = raw_ws(&server.ws()).await;
    let open = format!(
        r#"{{"Type":1,"Seq":231,"Version":1,"Client":{{"agent":"bs","user":"admin","way":"websocket","componentSet":["esbm"]}},"Security":{{"token":"{token}"}}}}"#
    );
    send_text(&mut ws, open).await;
    let answer = next_json(&mut ws).await;
    assert_eq!(answer["Type"], 2);
    assert_eq!(answer["Seq"], 231);
    assert_eq!(answer["Session"]["user"], "admin");
    assert_eq!(answer["Session"]["agent"], "bs");
    assert!(answer.get("Error").is_none());

    let content = r#"{"alarm":"fire","room":"2-17","level":3,"tags":["a","b"],"ack":null,"nested":{"x":1.5}}"#;
    let sent = server
        .api()
        .send(&message(content, Some(&["admin"])))
        .await
        .unwrap();
    let push = next_json(&mut ws).await;
    assert_eq!(push["Type"], 3);
    assert_eq!(push["Message"]["id"], sent.id.as_str());
    assert_eq!(push["Message"]["ack"], true);
    let expected: Value = serde_json::from_str(content).unwrap();
    let directed_id = sent.id.clone();
    assert_eq!(push["Message"]["EventData"]["ext"], expected);

    // A component message for the browser's componentSet, and a string content.
    let sent = server
        .api()
        .send(&component_message(r#""plain text""#, "esbm"))
        .await
        .unwrap();
    let push = next_json(&mut ws).await;
    assert_eq!(push["Message"]["id"], sent.id.as_str());
    assert_eq!(push["Message"]["EventData"]["ext"], "plain text");
    assert!(push["Message"].get("ack").is_none());

    // The browser acks with raw frames: the directed message once, the component one never.
    let component_id = push["Message"]["id"].as_str().unwrap().to_owned();
    for (seq, id, expected) in [
        (7, &directed_id, 1),
        (8, &directed_id, 0),
        (9, &component_id, 0),
    ] {
        send_text(
            &mut ws,
            format!(r#"{{"Type":4,"Seq":{seq},"Ids":["{id}"]}}"#),
        )
        .await;
        let acked = next_json(&mut ws).await;
        assert_eq!(acked["Type"], 4, "{acked}");
        assert_eq!(acked["Seq"], seq);
        assert_eq!(acked["Acked"], expected, "{acked}");
    }
}

#[tokio::test]
async fn a_backlog_of_several_pages_and_live_sends_during_login_arrive_once_each() {
    let server = Server::start();
    let api = server.api();
    let send_many = |from: usize, count: usize| {
        let api = api.clone();
        async move {
            let mut tasks = Vec::new();
            for chunk in 0..10 {
                let api = api.clone();
                tasks.push(tokio::spawn(async move {
                    let mut ids = Vec::new();
                    for n in (from + chunk..from + count).step_by(10) {
                        let m = message(&format!(r#"{{"n":{n}}}"#), Some(&["erin"]));
                        ids.push(api.send(&m).await.unwrap().id);
                    }
                    ids
                }));
            }
            let mut ids = Vec::new();
            for task in tasks {
                ids.extend(task.await.unwrap());
            }
            ids
        }
    };
    let mut expected: std::collections::HashSet<String> =
        send_many(0, 1200).await.into_iter().collect();
    let live = tokio::spawn(send_many(1200, 200));
    let mut erin = server.connect("erin", "bs", &[]).await;
    expected.extend(live.await.unwrap());
    let mut got = std::collections::HashSet::new();
    while got.len() < expected.len() {
        let id = next_id(&mut erin).await;
        assert!(got.insert(id.clone()), "{id} arrived twice");
    }
    assert_eq!(got, expected);
    let mark = marker(&server, "end").await;
    assert_eq!(next_id(&mut erin).await, mark, "nothing more");
}
