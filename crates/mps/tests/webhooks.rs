//! Webhooks against the real binary: a receiver in this process checks every request's
//! signature and timestamp the way docs/webhooks.md tells back ends to, answers as a test
//! scripts it (500s, 400s, or not at all until released), and records the events.

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::*;
use mps_client::proto::{EventBody, RecipientEvent, WebhookBatch, WebhookEvent};
use tokio::sync::watch;

const SECRET: &str = "webhook-test-secret";

/// One request the receiver saw.
#[derive(Debug, Clone)]
struct Seen {
    delivery: String,
    events: Vec<WebhookEvent>,
    answered: u16,
}

#[derive(Default)]
struct Log {
    seen: Vec<Seen>,
    /// Requests whose signature or timestamp did not check out.
    forged: Vec<String>,
}

struct Shared {
    log: Mutex<Log>,
    /// Statuses to answer next, in order; 200 when empty.
    script: Mutex<VecDeque<u16>>,
    /// Requests wait while this is false.
    open: watch::Receiver<bool>,
}

/// A webhook receiver on a loopback port.
struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    gate: watch::Sender<bool>,
}

impl Receiver {
    async fn start(script: &[u16]) -> Receiver {
        let (gate, open) = watch::channel(true);
        let shared = Arc::new(Shared {
            log: Mutex::default(),
            script: Mutex::new(script.iter().copied().collect()),
            open,
        });
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { addr, shared, gate }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Makes requests wait (`false`) or lets them through.
    fn set_open(&self, open: bool) {
        self.gate.send_replace(open);
    }

    fn seen(&self) -> Vec<Seen> {
        let log = self.shared.log.lock().unwrap();
        assert!(log.forged.is_empty(), "badly signed: {:?}", log.forged);
        log.seen.clone()
    }

    /// Events of the requests answered with 200, in order.
    fn taken(&self) -> Vec<WebhookEvent> {
        self.seen()
            .into_iter()
            .filter(|s| s.answered == 200)
            .flat_map(|s| s.events)
            .collect()
    }

    /// Waits for a taken event that `pick` selects; returns it.
    async fn wait_for(&self, what: &str, pick: impl Fn(&WebhookEvent) -> bool) -> WebhookEvent {
        let mut found = None;
        eventually(what, || {
            found = self.taken().into_iter().find(|e| pick(e));
            std::future::ready(found.is_some())
        })
        .await;
        found.unwrap()
    }
}

/// Checks the request the way a back end should (docs/webhooks.md), then answers as scripted.
async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut open = shared.open.clone();
    let _ = open.wait_for(|open| *open).await;
    if !signed_request(SECRET, &headers, &body) {
        let timestamp = header(&headers, "x-mps-timestamp");
        let signature = header(&headers, "x-mps-signature");
        shared
            .log
            .lock()
            .unwrap()
            .forged
            .push(format!("{timestamp} {signature}"));
        return StatusCode::UNAUTHORIZED;
    }
    let batch: WebhookBatch = serde_json::from_slice(&body).expect("a webhook batch");
    let answered = shared.script.lock().unwrap().pop_front().unwrap_or(200);
    shared.log.lock().unwrap().seen.push(Seen {
        delivery: header(&headers, "x-mps-delivery"),
        events: batch.events,
        answered,
    });
    StatusCode::from_u16(answered).unwrap()
}

/// A `[[webhooks]]` entry for `receiver` with fast retries, plus `extra` lines.
fn hook(receiver: &Receiver, extra: &str) -> String {
    format!(
        "[[webhooks]]\nurl = \"{}\"\nsecret = \"{SECRET}\"\nbackoff_ms = 10\nmax_backoff_ms = 40\n{extra}\n",
        receiver.url()
    )
}

fn recipient(event: &WebhookEvent) -> Option<(&'static str, &RecipientEvent)> {
    match &event.body {
        EventBody::MessageDelivered(r) => Some(("delivered", r)),
        EventBody::MessageAcked(r) => Some(("acked", r)),
        EventBody::MessageExpired(r) => Some(("expired", r)),
        _ => None,
    }
}

fn is(kind: &str, user: &str, id: &str) -> impl Fn(&WebhookEvent) -> bool {
    let (kind, user, id) = (kind.to_owned(), user.to_owned(), id.to_owned());
    move |e| recipient(e).is_some_and(|(k, r)| k == kind && r.user == user && r.message == id)
}

async fn stats(server: &Server) -> serde_json::Value {
    let answer = server.admin("GET", "/api/v1/stats").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    serde_json::from_str(&answer.body).unwrap()
}

/// The sum of a metric's samples whose labels include every one of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn every_event_type_reaches_a_signed_webhook() {
    let receiver = Receiver::start(&[]).await;
    let config = format!("[messages]\nsweep_interval = 1\n{}", hook(&receiver, ""));
    let server = Server::with_config(&config, &[]);
    let api = server.api();

    let mut alice = server.connect("alice", "bs", &["esbm"]).await;
    let connected = receiver
        .wait_for(
            "alice's client.connected",
            |e| matches!(&e.body, EventBody::ClientConnected { client } if client.user == "alice"),
        )
        .await;
    let EventBody::ClientConnected { client } = &connected.body else {
        unreachable!()
    };
    assert_eq!(
        (client.agent.as_str(), client.transport.as_str()),
        ("bs", "websocket")
    );
    assert_eq!(client.components, ["esbm"]);
    assert_eq!(connected.node, client.node);
    assert!(connected.time > 0);

    let sent = api
        .send(&message(r#"{"n":1}"#, Some(&["alice"])))
        .await
        .unwrap();
    let pushed = alice.next_push(WAIT).await.unwrap();
    assert_eq!(pushed.id, sent.id);
    receiver
        .wait_for("message.delivered", is("delivered", "alice", &sent.id))
        .await;
    assert_eq!(alice.ack(std::slice::from_ref(&sent.id)).await.unwrap(), 1);
    let acked = receiver
        .wait_for("message.acked", is("acked", "alice", &sent.id))
        .await;
    assert_eq!(recipient(&acked).unwrap().1.app, "default");

    // bob is offline: his copy expires and the sweeper (every second here) reports it.
    let mut short = message(r#"{"n":2}"#, Some(&["bob"]));
    short.ttl = Some(1);
    let for_bob = api.send(&short).await.unwrap();
    receiver
        .wait_for("message.expired", is("expired", "bob", &for_bob.id))
        .await;

    // Pull counts as delivery too.
    let carol = server.token("carol").await;
    let for_carol = api
        .send(&message(r#"{"n":3}"#, Some(&["carol"])))
        .await
        .unwrap();
    assert_eq!(api.collect(&carol).await.unwrap().messages.len(), 1);
    receiver
        .wait_for(
            "carol's message.delivered",
            is("delivered", "carol", &for_carol.id),
        )
        .await;

    let id = server.client_ids("alice").await.remove(0);
    api.disconnect(&id).await.unwrap();
    let gone = receiver
        .wait_for("alice's client.disconnected", |e| {
            matches!(&e.body, EventBody::ClientDisconnected { client, .. } if client.user == "alice")
        })
        .await;
    let EventBody::ClientDisconnected { client, reason } = &gone.body else {
        unreachable!()
    };
    assert_eq!(
        (client.id.as_str(), reason.as_str()),
        (id.as_str(), "kicked")
    );

    let taken = receiver.taken();
    let mut ids: Vec<u64> = taken.iter().map(|e| e.id.parse().unwrap()).collect();
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "event ids are unique");
    for one in receiver.seen() {
        assert_eq!(
            one.delivery, one.events[0].id,
            "delivery id is the first event's"
        );
    }
    // The server counts a request once it has read the answer, just after the receiver logged it.
    eventually("the sent events to be counted", || async {
        let text = server.metrics().await;
        metric(&text, "mps_webhook_events_total", &["result=\"sent\""]) >= count as f64
    })
    .await;
}

#[tokio::test]
async fn server_errors_are_retried_and_refusals_are_not() {
    let flaky = Receiver::start(&[500, 503]).await;
    let refusing = Receiver::start(&[400]).await;
    let config = format!(
        "{}{}",
        hook(&flaky, "name = \"flaky\"\nevents = [\"client.*\"]"),
        hook(
            &refusing,
            "name = \"refusing\"\nevents = [\"client.connected\"]"
        ),
    );
    let server = Server::with_config(&config, &[]);
    let _alice = server.connect("alice", "bs", &[]).await;

    flaky
        .wait_for("client.connected after two 5xx", |e| {
            matches!(e.body, EventBody::ClientConnected { .. })
        })
        .await;
    let seen = flaky.seen();
    let answers: Vec<u16> = seen.iter().map(|s| s.answered).collect();
    assert_eq!(answers, [500, 503, 200]);
    assert!(
        seen.iter().all(|s| s.delivery == seen[0].delivery),
        "a retry repeats the request"
    );
    assert!(seen.iter().all(|s| s.events[0].id == seen[0].events[0].id));

    // The refusing receiver is asked once; its events are given up and counted as failed.
    eventually("both webhooks' events to be counted", || async {
        let stats = stats(&server).await;
        stats["webhooks"][0]["sent"] == 1 && stats["webhooks"][1]["failed"] == 1
    })
    .await;
    assert_eq!(refusing.seen().len(), 1);
    let stats = stats(&server).await;
    let hooks = stats["webhooks"].as_array().unwrap();
    assert_eq!(hooks[0]["name"], "flaky");
    assert_eq!(hooks[0]["sent"], 1);
    assert_eq!(hooks[0]["failed"], 0);
    assert_eq!(hooks[1]["name"], "refusing");
    assert_eq!(hooks[1]["sent"], 0);
    assert_eq!(hooks[1]["url"], refusing.url());

    let text = server.metrics().await;
    let requests = |hook: &str, outcome: &str| {
        metric(
            &text,
            "mps_webhook_requests_total",
            &[
                &format!("webhook=\"{hook}\""),
                &format!("outcome=\"{outcome}\""),
            ],
        )
    };
    assert_eq!(requests("flaky", "retry"), 2.0, "{text}");
    assert_eq!(requests("flaky", "ok"), 1.0, "{text}");
    assert_eq!(requests("refusing", "refused"), 1.0, "{text}");
    assert_eq!(requests("refusing", "retry"), 0.0, "{text}");
}

#[tokio::test]
async fn a_full_queue_drops_events_without_holding_up_delivery() {
    let receiver = Receiver::start(&[]).await;
    receiver.set_open(false);
    let config = hook(
        &receiver,
        "queue = 2\nbatch = 1\ntimeout = 120\nevents = [\"client.connected\"]",
    );
    let server = Server::with_config(&config, &[]);

    // One event in flight (held by the receiver) and two queued at most: the rest drop.
    let mut clients = Vec::new();
    for n in 0..6 {
        clients.push(server.connect(&format!("user{n}"), "bs", &[]).await);
    }
    eventually("drops to be counted", || async {
        stats(&server).await["webhooks"][0]["dropped"]
            .as_u64()
            .unwrap()
            >= 3
    })
    .await;

    // Delivery goes on while the webhook is stuck.
    let sent = server
        .api()
        .send(&message(r#"{"n":1}"#, Some(&["user0"])))
        .await
        .unwrap();
    assert_eq!(clients[0].next_push(WAIT).await.unwrap().id, sent.id);

    receiver.set_open(true);
    eventually("the queue to drain", || async {
        stats(&server).await["webhooks"][0]["queued"] == 0
    })
    .await;
    let hook = &stats(&server).await["webhooks"][0];
    let (sent, dropped) = (
        hook["sent"].as_u64().unwrap(),
        hook["dropped"].as_u64().unwrap(),
    );
    assert_eq!(sent + dropped, 6, "{hook}");
    assert!((1..=3).contains(&sent), "{hook}");
    assert_eq!(receiver.taken().len() as u64, sent);
    let text = server.metrics().await;
    assert_eq!(
        metric(&text, "mps_webhook_events_total", &["result=\"dropped\""]),
        dropped as f64,
        "{text}"
    );
}

#[tokio::test]
async fn a_webhook_with_an_unknown_event_type_stops_the_start() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("mps.toml");
    std::fs::write(
        &file,
        "[[webhooks]]\nurl = \"http://127.0.0.1:9/hook\"\nsecret = \"s\"\nevents = [\"message.read\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mps"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-key", "k"])
        .arg("--config")
        .arg(&file)
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("webhook-1") && stderr.contains("message.read"),
        "{stderr}"
    );
}
