//! The webhook channel against the real binary: a receiver in this process checks each
//! request's signature the way docs/webhooks.md tells back ends to, answers as the test scripts
//! it, and records the recipients' messages.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::*;
use mps_client::proto::SendMessage;

const SECRET: &str = "channel-test-secret";

#[derive(Debug, Clone)]
struct Seen {
    delivery: String,
    body: serde_json::Value,
    answered: u16,
}

#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<Seen>>,
    forged: Mutex<Vec<String>>,
    /// Statuses to answer next, in order; 200 when empty.
    script: Mutex<VecDeque<u16>>,
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if !signed_request(SECRET, &headers, &body) {
        let signature = header(&headers, "x-mps-signature");
        shared.forged.lock().unwrap().push(signature);
        return StatusCode::UNAUTHORIZED;
    }
    let answered = shared.script.lock().unwrap().pop_front().unwrap_or(200);
    shared.seen.lock().unwrap().push(Seen {
        delivery: header(&headers, "x-mps-delivery"),
        body: serde_json::from_slice(&body).expect("JSON body"),
        answered,
    });
    StatusCode::from_u16(answered).unwrap()
}

async fn receiver(script: &[u16]) -> (String, Arc<Shared>) {
    let shared = Arc::new(Shared::default());
    shared.script.lock().unwrap().extend(script);
    let app = axum::Router::new()
        .route("/channel", axum::routing::post(receive))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/channel", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, shared)
}

fn config(url: &str) -> String {
    format!(
        "[push.apps.default.webhook]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\nbackoff_ms = 10\nmax_backoff_ms = 40\nattempts = 4\n"
    )
}

fn with_channels(content: &str, to: &[&str], channels: &[&str]) -> SendMessage {
    SendMessage {
        channels: Some(channels.iter().map(|c| (*c).into()).collect()),
        ..message(content, Some(to))
    }
}

#[tokio::test]
async fn the_webhook_channel_posts_each_recipient_signed_and_retries() {
    // The first request fails twice with 503: the same delivery comes again until taken.
    let (url, shared) = receiver(&[503, 503]).await;
    let server = Server::with_config(&config(&url), &[]);
    let api = server.api();

    let sent = api
        .send(&with_channels(
            r#"{"n":1}"#,
            &["alice", "bob"],
            &["webhook"],
        ))
        .await
        .unwrap();
    eventually("both recipients taken", || {
        let taken = shared
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.answered == 200)
            .count();
        std::future::ready(taken == 2)
    })
    .await;
    assert!(shared.forged.lock().unwrap().is_empty());
    let seen = shared.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "{seen:?}");
    let first = &seen[0];
    assert_eq!(first.answered, 503);
    let retried: Vec<_> = seen
        .iter()
        .filter(|s| s.delivery == first.delivery)
        .collect();
    assert_eq!(
        retried.len(),
        3,
        "two failures and the retry that was taken: {seen:?}"
    );
    let mut users: Vec<_> = seen
        .iter()
        .filter(|s| s.answered == 200)
        .map(|s| {
            assert_eq!(s.body["channel"], "webhook");
            assert_eq!(s.body["app"], "default");
            assert_eq!(s.body["message"]["id"], sent.id.as_str());
            assert_eq!(s.body["message"]["EventData"]["ext"]["n"], 1, "{}", s.body);
            assert_eq!(
                s.delivery,
                format!("{}.{}", sent.id, s.body["user"].as_str().unwrap())
            );
            s.body["user"].as_str().unwrap().to_owned()
        })
        .collect();
    users.sort();
    assert_eq!(users, ["alice", "bob"]);

    // The message stays owed to the live channel.
    let mut alice = server.connect("alice", "bs", &[]).await;
    let got = alice.next_push(WAIT).await.unwrap();
    assert_eq!(got.id, sent.id);

    // Without `channels`, nothing goes to the webhook channel.
    api.send(&message(r#"{"n":2}"#, Some(&["carol"])))
        .await
        .unwrap();
    let marker = api
        .send(&with_channels(
            r#"{"n":3}"#,
            &["dave"],
            &["webhook", "push"],
        ))
        .await
        .unwrap();
    eventually("dave's message", || {
        let seen = shared.seen.lock().unwrap();
        std::future::ready(
            seen.iter()
                .any(|s| s.body["message"]["id"] == marker.id.as_str()),
        )
    })
    .await;
    assert!(
        !shared
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.body["user"] == "carol")
    );
}

#[tokio::test]
async fn bad_channels_are_refused() {
    let server = Server::start();
    let api = server.api();
    for (msg, code) in [
        (
            with_channels("{}", &["alice"], &["webhook"]),
            "channel_not_configured",
        ),
        (
            with_channels("{}", &["alice"], &["pigeon"]),
            "invalid_channels",
        ),
        (
            with_channels("{}", &["alice"], &["push", "push", "push"]),
            "invalid_channels",
        ),
        (
            SendMessage {
                channels: Some(vec!["push".into()]),
                ..message("{}", None)
            },
            "invalid_channels",
        ),
    ] {
        let (status, got) = refused(api.send(&msg).await.unwrap_err());
        assert_eq!((status, got.as_str()), (400, code));
    }
}
