//! Servers run in the test's own process through `mps::server::run`, not as the binary: two
//! differently configured servers side by side, and the shutdown (every task ended within
//! `shutdown_timeout`, clients told "going away", nothing acknowledged lost).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use mps::config::Config;
use mps::server::{Listeners, Stopped};
use mps_client::proto::{EventType, Status, WebhookBatch};
use mps_client::{Api, PushClient};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use common::{ADMIN_KEY, JWT_SECRET, WAIT, client_info, message};

/// A server running on a task of the test's runtime.
struct InProcess {
    addr: SocketAddr,
    stop: CancellationToken,
    running: JoinHandle<anyhow::Result<Stopped>>,
}

impl InProcess {
    async fn start(config: Config) -> InProcess {
        let listeners = Listeners::bind(&config).expect("bind");
        let addr = listeners.client.local_addr().expect("address");
        let stop = CancellationToken::new();
        let running = tokio::spawn(mps::server::run(config, listeners, stop.clone()));
        let server = InProcess {
            addr,
            stop,
            running,
        };
        let api = server.api();
        common::eventually("the server answers", || {
            let api = api.clone();
            async move { api.token("probe").await.is_ok() }
        })
        .await;
        server
    }

    fn api(&self) -> Api {
        Api::new(&format!("http://{}", self.addr), ADMIN_KEY)
    }

    async fn connect(&self, user: &str) -> mps_client::Result<PushClient> {
        let token = self.api().token(user).await.expect("token").token;
        let url = format!("ws://{}/ws", self.addr);
        PushClient::open(&url, &token, client_info(user, "bs", &[])).await
    }

    /// Cancels the server and waits for `run` to return.
    async fn stop(self) -> Stopped {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.running)
            .await
            .expect("run returns")
            .expect("run task")
            .expect("run")
    }
}

fn config(data: &Path) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.to_owned(),
        admin_key: Some(ADMIN_KEY.into()),
        shutdown_timeout: 5,
        ..Config::default()
    };
    config.auth.jwt_secret = Some(JWT_SECRET.into());
    config
}

/// A webhook receiver that answers 200 and hands over every batch.
async fn receiver() -> (String, mpsc::UnboundedReceiver<WebhookBatch>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move |body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(serde_json::from_slice(&body).expect("a batch"));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

fn webhook(url: &str) -> mps::config::WebhookConfig {
    mps::config::WebhookConfig {
        url: url.into(),
        secret: "k".into(),
        events: vec!["client.*".into()],
        backoff_ms: 10,
        ..Default::default()
    }
}

#[tokio::test]
async fn sends_delivers_and_acks() {
    let data = tempfile::tempdir().unwrap();
    let server = InProcess::start(config(data.path())).await;
    let mut alice = server.connect("alice").await.expect("open");
    let sent = server
        .api()
        .send(&message(r#"{"n":1}"#, Some(&["alice"])))
        .await
        .expect("send");
    let pushed = alice.next_push(WAIT).await.expect("push");
    assert_eq!(pushed.id, sent.id);
    assert_eq!(alice.ack(std::slice::from_ref(&sent.id)).await.unwrap(), 1);
    let record = server.api().message(&sent.id).await.unwrap();
    assert_eq!(record.summary.get(&Status::Acked), Some(&1));
    assert_eq!(server.stop().await.lingering, 0);
}

#[tokio::test]
async fn two_servers_with_their_own_configuration() {
    let (url, mut events) = receiver().await;
    let (a_data, b_data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = config(a_data.path());
    a.node = Some("a".into());
    a.limits.connections_per_user = 1;
    a.webhooks = vec![webhook(&url)];
    let mut b = config(b_data.path());
    b.node = Some("b".into());
    b.limits.connections_per_user = 2;
    let (a, b) = (InProcess::start(a).await, InProcess::start(b).await);

    let _on_a = a.connect("carol").await.expect("first on a");
    assert!(a.connect("carol").await.is_err(), "a takes one per user");
    let _on_b = b.connect("carol").await.expect("first on b");
    let _again_on_b = b.connect("carol").await.expect("b takes two per user");

    // Only a has a webhook, and it hears only a's clients.
    let batch = tokio::time::timeout(WAIT, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(batch.events.iter().all(|e| e.node == "a"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(batch) = events.try_recv() {
        assert!(batch.events.iter().all(|e| e.node == "a"));
    }
    assert_eq!(a.stop().await.lingering, 0);
    assert_eq!(b.stop().await.lingering, 0);
}

#[tokio::test]
async fn shutdown_ends_every_task_and_says_going_away() {
    let (url, mut events) = receiver().await;
    let data = tempfile::tempdir().unwrap();
    let mut config = config(data.path());
    config.webhooks = vec![webhook(&url)];
    let bound = Duration::from_secs(config.shutdown_timeout);
    let server = InProcess::start(config).await;
    let mut clients = Vec::new();
    for user in ["dave", "erin"] {
        clients.push(server.connect(user).await.expect("open"));
    }
    let token = server.api().token("fay").await.unwrap().token;
    let url = server.api().sse_url(&[("token", token)]).unwrap();
    let mut stream = mps_client::Sse::connect(&url, &[])
        .await
        .expect("event stream");
    common::eventually("the stream's client is online", || {
        let api = server.api();
        async move { api.clients().await.is_ok_and(|c| c.len() == 3) }
    })
    .await;

    let started = Instant::now();
    let stopping = tokio::spawn(server.stop());
    for client in &mut clients {
        let (code, _) = client.closed(WAIT).await.expect("closed by the server");
        assert_eq!(code, 1001);
    }
    stream.closed(WAIT).await.expect("the event stream ends");
    let stopped = stopping.await.unwrap();
    assert!(started.elapsed() < bound, "took {:?}", started.elapsed());
    assert_eq!(stopped.lingering, 0, "every task ended");

    // The disconnects of the shutdown were sent before the webhook's task ended.
    let mut disconnects = 0;
    while let Ok(batch) = events.try_recv() {
        disconnects += batch
            .events
            .iter()
            .filter(|e| e.body.event_type() == EventType::ClientDisconnected)
            .count();
    }
    assert_eq!(disconnects, 3);
}

#[tokio::test]
async fn a_stop_under_load_loses_nothing_acknowledged() {
    let data = tempfile::tempdir().unwrap();
    let server = InProcess::start(config(data.path())).await;
    let mut frank = server.connect("frank").await.expect("open");

    let sent = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut senders = Vec::new();
    for n in 0..4 {
        let (api, sent) = (server.api(), sent.clone());
        senders.push(tokio::spawn(async move {
            // Until the server stops answering.
            for i in 0.. {
                let to: &[&str] = if i % 2 == 0 { &["frank"] } else { &["grace"] };
                match api.send(&message(&format!("[{n},{i}]"), Some(to))).await {
                    Ok(result) => sent.lock().push((result.id, to[0])),
                    Err(_) => return,
                }
            }
        }));
    }
    // Frank acks what he gets while he can.
    let acking = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut received = Vec::new();
        while let Ok(pushed) = frank.next_push(WAIT).await {
            received.push(pushed.id.clone());
            if frank.ack(std::slice::from_ref(&pushed.id)).await.is_ok() {
                acked.push(pushed.id);
            }
        }
        (received, acked)
    });
    common::eventually("some messages are sent", || {
        let sent = sent.clone();
        async move { sent.lock().len() >= 50 }
    })
    .await;
    assert_eq!(server.stop().await.lingering, 0);
    for sender in senders {
        sender.await.unwrap();
    }
    let (received, acked) = acking.await.unwrap();
    let sent = std::mem::take(&mut *sent.lock());

    let again = InProcess::start(config(data.path())).await;
    let api = again.api();
    for (id, user) in &sent {
        let record = api
            .message(id)
            .await
            .expect("an acknowledged message is stored");
        let status = record
            .recipients
            .as_ref()
            .and_then(|r| r.iter().find(|r| r.user == *user))
            .map(|r| r.status)
            .expect("its recipient");
        let expected = if acked.contains(id) {
            Status::Acked
        } else if received.contains(id) {
            Status::Delivered
        } else {
            Status::Pending
        };
        assert!(
            status == expected || (expected == Status::Delivered && status == Status::Acked),
            "{id} to {user}: {status:?}, not {expected:?}"
        );
    }
    assert_eq!(again.stop().await.lingering, 0);
}
