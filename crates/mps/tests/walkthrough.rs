//! The user's walkthrough: token, open, directed push, offline backlog, ack, records.

mod common;

use common::*;
use mps_client::proto::Status;
use serde_json::Value;

#[tokio::test]
async fn directed_message_reaches_every_matching_connection() {
    let server = Server::start();
    let mut bs = server.connect("alice", "bs", &["esbm"]).await;
    let mut ios = server.connect("alice", "ios", &[]).await;
    assert_eq!(bs.session.user, "alice");

    let sent = server
        .api()
        .send(&message(r#"{"alarm":"fire","level":3}"#, Some(&["alice"])))
        .await
        .unwrap();
    for client in [&mut bs, &mut ios] {
        let push = client.next_push(WAIT).await.unwrap();
        assert_eq!(push.id, sent.id);
        let ext: Value = serde_json::from_str(push.event_data.ext.get()).unwrap();
        assert_eq!(ext["alarm"], "fire");
    }
}

#[tokio::test]
async fn offline_messages_arrive_on_connect_oldest_first_and_ack() {
    let server = Server::start();
    let api = server.api();
    let mut ids = Vec::new();
    for n in 0..3 {
        let sent = api
            .send(&message(&format!(r#"{{"n":{n}}}"#), Some(&["bob"])))
            .await
            .unwrap();
        ids.push(sent.id);
    }
    let mut bob = server.connect("bob", "cs", &[]).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(bob.next_push(WAIT).await.unwrap().id);
    }
    assert_eq!(got, ids);
    assert_eq!(bob.ack(&got).await.unwrap(), 3);
    let record = api.message(&ids[0]).await.unwrap();
    assert_eq!(record.recipients.unwrap()[0].status, Status::Acked);
}
