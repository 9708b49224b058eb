//! Message queue ingestion against the real brokers: RabbitMQ (`MPS_TEST_AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`) and NATS with JetStream (`MPS_TEST_NATS_URL`, default
//! `nats://127.0.0.1:4222`). Every test uses queues, streams and subjects of its own. The NATS
//! restart test runs a private `nats-server -js` on a port of its own; the RabbitMQ one cuts
//! mps off its broker with a TCP relay, so the shared broker is never disturbed. The store
//! outage test runs a private PostgreSQL (`initdb`/`pg_ctl`) as mps's store and stops it.
//! A missing broker fails the test under `CI=true` and skips it (with the reason) elsewhere.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::*;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use mps_client::proto::MessageRecord;
use mps_client::proto::Page;

/// Fails under CI, else says why the test is skipped; `None` means skip.
fn missing<T>(what: &str, error: impl std::fmt::Display) -> Option<T> {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what} is needed under CI: {error}"
    );
    eprintln!("skipped: {what} unavailable ({error})");
    None
}

fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("{what}-{}-{:x}", std::process::id(), nanos & 0xffff_ffff)
}

fn amqp_url() -> String {
    std::env::var("MPS_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn nats_url() -> String {
    std::env::var("MPS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Sums the samples of `name` whose labels contain every one of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Records of `query` (`receiver=...`), every page.
async fn records(server: &Server, query: &[(&str, &str)]) -> Vec<MessageRecord> {
    let mut all = Vec::new();
    for page in 1.. {
        let mut q: Vec<(&str, String)> = query.iter().map(|(k, v)| (*k, v.to_string())).collect();
        q.push(("page", page.to_string()));
        q.push(("size", "1000".into()));
        let got: Page<MessageRecord> = server.api().messages(&q).await.expect("records");
        let done = got.items.len() < 1000;
        all.extend(got.items);
        if done {
            break;
        }
    }
    all
}

async fn total(server: &Server, query: &[(&str, &str)]) -> u64 {
    let mut q: Vec<(&str, String)> = query.iter().map(|(k, v)| (*k, v.to_string())).collect();
    q.push(("size", "1".into()));
    let page: Page<MessageRecord> = server.api().messages(&q).await.expect("records");
    page.total
}

/// Waits up to `limit` for `check`.
async fn within<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `n` of every content `{"n": n}` in `records`, with repeats.
fn numbers(records: &[MessageRecord]) -> Vec<u64> {
    records
        .iter()
        .filter_map(|r| {
            serde_json::from_str::<serde_json::Value>(r.content.get()).ok()?["n"].as_u64()
        })
        .collect()
}

fn assert_each_once(mut seen: Vec<u64>, count: u64, what: &str) {
    seen.sort_unstable();
    let expected: Vec<u64> = (0..count).collect();
    assert_eq!(seen, expected, "{what}: every message exactly once");
}

fn directed(n: u64, user: &str) -> String {
    format!(r#"{{"content":{{"n":{n}}},"receiver":["{user}"],"title":"t{n}"}}"#)
}

// ---- RabbitMQ ----

async fn rabbit() -> Option<Channel> {
    let connection = match Connection::connect(&amqp_url(), ConnectionProperties::default()).await {
        Ok(c) => c,
        Err(e) => return missing("RabbitMQ", e),
    };
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    // The connection lives as long as its channels are used.
    std::mem::forget(connection);
    Some(channel)
}

async fn declare(channel: &Channel, queue: &str) {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare queue");
}

async fn delete_queues(channel: &Channel, queues: &[&str]) {
    for queue in queues {
        let _ = channel
            .queue_delete((*queue).into(), QueueDeleteOptions::default())
            .await;
    }
}

/// Publishes to `queue` through the default exchange and waits for the broker's confirm.
async fn publish(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    message_id: Option<&str>,
    headers: &[(&str, &str)],
) {
    let mut properties = BasicProperties::default().with_delivery_mode(2);
    if let Some(id) = message_id {
        properties = properties.with_message_id(id.into());
    }
    if !headers.is_empty() {
        let mut table = FieldTable::default();
        for (k, v) in headers {
            table.insert((*k).into(), AMQPValue::LongString(LongString::from(*v)));
        }
        properties = properties.with_headers(table);
    }
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack());
}

fn rabbit_config(url: &str, queue: &str, prefetch: u16) -> String {
    format!(
        "[[ingest.rabbitmq]]\nurl = \"{url}\"\nqueue = \"{queue}\"\nprefetch = {prefetch}\n\
         app_word = 2\n"
    )
}

#[tokio::test]
async fn rabbitmq_messages_reach_users_and_records() {
    let Some(channel) = rabbit().await else {
        return;
    };
    let queue = unique("mps-deliver");
    declare(&channel, &queue).await;
    let server = Server::with_config(&rabbit_config(&amqp_url(), &queue, 64), &[]);
    let source = format!("source=\"rabbitmq:{queue}\"");
    within(WAIT, "the consumer to connect", || async {
        server.request("GET", "/readyz", None, None).await.status == 200
    })
    .await;
    let mut alice = server.connect("alice", "bs", &[]).await;

    const N: u64 = 200;
    for n in 0..N {
        // Keys from the body and from the AMQP message id.
        let body = if n % 2 == 0 {
            format!(r#"{{"content":{{"n":{n}}},"receiver":["alice"],"id":"deliver-{n}"}}"#)
        } else {
            directed(n, "alice")
        };
        let id = format!("deliver-{n}");
        publish(&channel, &queue, body.as_bytes(), Some(&id), &[]).await;
    }
    let mut seen = Vec::new();
    for _ in 0..N {
        let push = alice.next_push(WAIT).await.expect("push");
        seen.push(push.event_data.ext.get().to_owned());
    }
    let seen: Vec<u64> = seen
        .iter()
        .map(|c| {
            serde_json::from_str::<serde_json::Value>(c).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_each_once(seen, N, "pushes");
    assert_each_once(
        numbers(&records(&server, &[("receiver", "alice")]).await),
        N,
        "records",
    );

    // App and component from headers; the body's fields win.
    publish(
        &channel,
        &queue,
        br#"{"content":{"h":1},"receiver":["bob"]}"#,
        None,
        &[("app", "oa"), ("component", "esbm")],
    )
    .await;
    within(WAIT, "the message of app oa", || async {
        total(&server, &[("app", "oa"), ("component", "esbm")]).await == 1
    })
    .await;
    let metrics = server.metrics().await;
    assert!(metric(&metrics, "mps_ingest_acked_total", &[&source]) >= (N + 1) as f64);
    assert_eq!(metric(&metrics, "mps_ingest_connected", &[&source]), 1.0);
    delete_queues(&channel, &[&queue, &format!("{queue}.dead-letter")]).await;
}

#[tokio::test]
async fn rabbitmq_invalid_messages_are_dead_lettered_with_the_reason() {
    let Some(channel) = rabbit().await else {
        return;
    };
    let queue = unique("mps-invalid");
    let dead = format!("{queue}.dead-letter");
    declare(&channel, &queue).await;
    let server = Server::with_config(
        &rabbit_config(&amqp_url(), &queue, 16),
        &[("MPS_MESSAGES__MAX_BODY", "2048")],
    );
    let big = format!(
        r#"{{"content":"{}","receiver":["carol"]}}"#,
        "x".repeat(3000)
    );
    let invalid: Vec<(&str, &[u8])> = vec![
        ("bad_json", b"{not json"),
        ("bad_message", br#"{"title":"no content"}"#),
        (
            "invalid_name",
            br#"{"content":1,"receiver":["carol"],"app":""}"#,
        ),
        ("too_large", big.as_bytes()),
        (
            "topic_with_receiver",
            br#"{"content":1,"receiver":["carol"],"topic":"alarms/x"}"#,
        ),
        (
            "invalid_ttl",
            br#"{"content":1,"receiver":["carol"],"ttl":0}"#,
        ),
    ];
    for (_, body) in &invalid {
        publish(&channel, &queue, body, None, &[("trace", "t-1")]).await;
    }
    // The consumer is not blocked: a valid message behind them goes through.
    publish(&channel, &queue, directed(0, "carol").as_bytes(), None, &[]).await;
    within(WAIT, "the valid message", || async {
        total(&server, &[("receiver", "carol")]).await == 1
    })
    .await;

    let mut reasons = BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    while reasons.len() < invalid.len() {
        assert!(
            Instant::now() < deadline,
            "dead letters: {:?}",
            reasons.keys()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        while let Ok(Some(message)) = channel
            .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
            .await
        {
            let headers = message
                .delivery
                .properties
                .headers()
                .clone()
                .unwrap_or_default();
            let text = |name: &str| match headers.inner().get(name) {
                Some(AMQPValue::LongString(s)) => s.to_string(),
                other => panic!("header {name}: {other:?}"),
            };
            assert!(!text("x-mps-error").is_empty());
            assert_eq!(text("trace"), "t-1", "the original headers are kept");
            assert_eq!(text("x-mps-queue"), queue);
            reasons.insert(text("x-mps-error-code"), message.delivery.data.clone());
        }
    }
    for (code, body) in &invalid {
        assert_eq!(reasons.get(*code).map(Vec::as_slice), Some(*body), "{code}");
    }
    let metrics = server.metrics().await;
    let source = format!("source=\"rabbitmq:{queue}\"");
    assert_eq!(
        metric(&metrics, "mps_ingest_rejected_total", &[&source]),
        invalid.len() as f64
    );
    assert_eq!(
        metric(
            &metrics,
            "mps_ingest_rejected_total",
            &[&source, "reason=\"bad_json\""]
        ),
        1.0
    );
    delete_queues(&channel, &[&queue, &dead]).await;
}

#[tokio::test]
async fn rabbitmq_kill_9_mid_stream_loses_nothing_and_records_nothing_twice() {
    let Some(channel) = rabbit().await else {
        return;
    };
    let queue = unique("mps-kill");
    declare(&channel, &queue).await;
    const N: u64 = 3000;
    let mut server = Server::with_config(&rabbit_config(&amqp_url(), &queue, 256), &[]);
    let publishing = {
        let channel = channel.clone();
        let queue = queue.clone();
        // In batches of 100 unconfirmed publishes, so that a backlog builds up and mps holds
        // a full prefetch of deliveries when it is killed.
        tokio::spawn(async move {
            for batch in 0..N / 100 {
                let sends = (batch * 100..(batch + 1) * 100).map(|n| {
                    let (channel, queue, body) = (&channel, &queue, directed(n, "dave"));
                    async move {
                        let id = format!("kill-{n}");
                        publish(channel, queue, body.as_bytes(), Some(&id), &[]).await
                    }
                });
                futures_util::future::join_all(sends).await;
            }
        })
    };
    within(Duration::from_secs(60), "some messages stored", || async {
        total(&server, &[("receiver", "dave")]).await >= 300
    })
    .await;
    server.kill_and_restart();
    publishing.await.expect("publisher");
    within(Duration::from_secs(60), "every message stored", || async {
        total(&server, &[("receiver", "dave")]).await >= N
    })
    .await;
    // Let redeliveries of messages stored but not acked before the kill come through.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_each_once(
        numbers(&records(&server, &[("receiver", "dave")]).await),
        N,
        "records after kill -9",
    );
    let metrics = server.metrics().await;
    let source = format!("source=\"rabbitmq:{queue}\"");
    eprintln!(
        "after kill -9: {} redelivered, {} answered as duplicates",
        metric(&metrics, "mps_ingest_redelivered_total", &[&source]) as u64,
        metric(&metrics, "mps_ingest_duplicates_total", &[&source]) as u64,
    );

    // The user gets every message exactly once.
    let mut dave = server.connect("dave", "bs", &[]).await;
    let mut seen = Vec::new();
    for _ in 0..N {
        let push = dave.next_push(WAIT).await.expect("push");
        let content: serde_json::Value = serde_json::from_str(push.event_data.ext.get()).unwrap();
        seen.push(content["n"].as_u64().unwrap());
    }
    assert_each_once(seen, N, "pushes");

    // A publisher retrying with the same ids changes nothing.
    for n in 0..10 {
        publish(
            &channel,
            &queue,
            directed(n, "dave").as_bytes(),
            Some(&format!("kill-{n}")),
            &[],
        )
        .await;
    }
    within(WAIT, "the repeats to be answered as duplicates", || async {
        metric(
            &server.metrics().await,
            "mps_ingest_duplicates_total",
            &[&source],
        ) >= 10.0
    })
    .await;
    assert_eq!(total(&server, &[("receiver", "dave")]).await, N);
    delete_queues(&channel, &[&queue, &format!("{queue}.dead-letter")]).await;
}

/// A TCP relay between mps and the broker that can cut every connection and refuse new ones,
/// as a broker that goes away does.
struct Relay {
    port: u16,
    up: Arc<AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Relay {
    async fn start(target: String) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let (accept_up, accept_cut) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !accept_up.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let mut cut = accept_cut.subscribe();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Relay { port, up, cut }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn rabbitmq_consumption_resumes_after_the_broker_goes_away() {
    let Some(channel) = rabbit().await else {
        return;
    };
    let queue = unique("mps-outage");
    declare(&channel, &queue).await;
    let broker = amqp_url()
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("127.0.0.1:5672")
        .to_owned();
    let relay = Relay::start(broker).await;
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", relay.port);
    let server = Server::with_config(&rabbit_config(&url, &queue, 32), &[]);
    within(WAIT, "the consumer to connect", || async {
        server.request("GET", "/readyz", None, None).await.status == 200
    })
    .await;
    for n in 0..100 {
        publish(&channel, &queue, directed(n, "erin").as_bytes(), None, &[]).await;
    }
    within(WAIT, "the first 100", || async {
        total(&server, &[("receiver", "erin")]).await == 100
    })
    .await;

    relay.down();
    within(
        WAIT,
        "/readyz to say the consumer is disconnected",
        || async {
            let answer = server.request("GET", "/readyz", None, None).await;
            answer.status == 503 && answer.error_code() == "ingest_disconnected"
        },
    )
    .await;
    for n in 100..200 {
        publish(&channel, &queue, directed(n, "erin").as_bytes(), None, &[]).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(total(&server, &[("receiver", "erin")]).await, 100);

    relay.restore();
    within(Duration::from_secs(20), "consumption to resume", || async {
        total(&server, &[("receiver", "erin")]).await == 200
    })
    .await;
    assert_eq!(
        server.request("GET", "/readyz", None, None).await.status,
        200
    );
    assert_each_once(
        numbers(&records(&server, &[("receiver", "erin")]).await),
        200,
        "records",
    );
    let metrics = server.metrics().await;
    let source = format!("source=\"rabbitmq:{queue}\"");
    assert!(metric(&metrics, "mps_ingest_disconnects_total", &[&source]) >= 1.0);
    delete_queues(&channel, &[&queue, &format!("{queue}.dead-letter")]).await;
}

/// A PostgreSQL cluster of the test's own (`initdb` in a temporary directory, run as the
/// `postgres` user when the test runs as root), to stop under a running mps.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    port: u16,
    bin: std::path::PathBuf,
}

impl PrivatePostgres {
    fn start() -> Option<PrivatePostgres> {
        let bin = ["/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin"]
            .iter()
            .map(std::path::PathBuf::from)
            .find(|dir| dir.join("initdb").exists());
        let Some(bin) = bin else {
            return missing("PostgreSQL binaries (initdb, pg_ctl)", "not installed");
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let pg = PrivatePostgres {
            dir: tempfile::tempdir().expect("temp dir"),
            port,
            bin,
        };
        if as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(pg.dir.path())
                .status();
            if !status.is_ok_and(|s| s.success()) {
                return missing("a postgres user to run PostgreSQL as", "chown failed");
            }
        }
        let initdb = pg
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(pg.dir.path().join("data"))
            .stdout(Stdio::null())
            .status();
        if !initdb.is_ok_and(|s| s.success()) {
            return missing("initdb", "it failed");
        }
        if let Err(e) = pg.pg_ctl(&["-w", "start"]) {
            return missing("pg_ctl start", e);
        }
        Some(pg)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -h 127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let status = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-o", &options, "-l"])
            .arg(self.dir.path().join("log"))
            .args(args)
            .stdout(Stdio::null())
            .status()
            .map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("pg_ctl {args:?}: {status}"))
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-w", "-m", "immediate", "stop"]);
    }
}

fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

#[tokio::test]
async fn rabbitmq_store_outage_puts_messages_back_instead_of_dead_lettering_them() {
    let Some(channel) = rabbit().await else {
        return;
    };
    let Some(pg) = PrivatePostgres::start() else {
        return;
    };
    let queue = unique("mps-store-outage");
    let dead = format!("{queue}.dead-letter");
    declare(&channel, &queue).await;
    let server = Server::with_config(
        &rabbit_config(&amqp_url(), &queue, 16),
        &[("MPS_STORE__POSTGRES_URL", &pg.url())],
    );
    for n in 0..20 {
        publish(&channel, &queue, directed(n, "kim").as_bytes(), None, &[]).await;
    }
    within(WAIT, "the first 20", || async {
        total(&server, &[("receiver", "kim")]).await == 20
    })
    .await;

    pg.pg_ctl(&["-w", "-m", "immediate", "stop"])
        .expect("stop PostgreSQL");
    for n in 20..40 {
        publish(&channel, &queue, directed(n, "kim").as_bytes(), None, &[]).await;
    }
    let source = format!("source=\"rabbitmq:{queue}\"");
    within(WAIT, "messages to be put back", || async {
        metric(
            &server.metrics().await,
            "mps_ingest_retried_total",
            &[&source],
        ) >= 20.0
    })
    .await;

    pg.pg_ctl(&["-w", "start"]).expect("start PostgreSQL");
    within(
        Duration::from_secs(30),
        "the rest once the store is back",
        || async {
            let page: Result<Page<MessageRecord>, _> = server
                .api()
                .messages(&[("receiver", "kim"), ("size", "1")])
                .await;
            page.is_ok_and(|p| p.total == 40)
        },
    )
    .await;
    assert_each_once(
        numbers(&records(&server, &[("receiver", "kim")]).await),
        40,
        "records",
    );
    let metrics = server.metrics().await;
    assert_eq!(
        metric(&metrics, "mps_ingest_rejected_total", &[&source]),
        0.0
    );
    let dead_letter = channel
        .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get");
    assert!(dead_letter.is_none(), "nothing is dead-lettered");
    delete_queues(&channel, &[&queue, &dead]).await;
}

// ---- NATS JetStream ----

async fn nats(url: &str) -> Option<jetstream::Context> {
    match async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .connect(url)
        .await
    {
        Ok(client) => Some(jetstream::new(client)),
        Err(e) => missing("NATS", e),
    }
}

/// Publishes through JetStream and waits for the stream's ack.
async fn js_publish(js: &jetstream::Context, subject: &str, body: String, id: Option<String>) {
    let mut headers = async_nats::HeaderMap::new();
    if let Some(id) = id {
        headers.insert("Nats-Msg-Id", id.as_str());
    }
    js.publish_with_headers(subject.to_owned(), headers, body.into())
        .await
        .expect("publish")
        .await
        .expect("stream ack");
}

fn nats_config(url: &str, stream: &str, in_flight: usize) -> String {
    format!(
        "[[ingest.nats]]\nurl = \"{url}\"\nstream = \"{stream}\"\nsubject = \"{stream}.in.>\"\n\
         durable = \"mps\"\nack_wait = 3\nmax_in_flight = {in_flight}\ndead_letter_subject = \"{stream}.dead\"\n\
         app_word = 3\n"
    )
}

async fn delete_streams(js: &jetstream::Context, stream: &str) {
    let _ = js.delete_stream(stream).await;
    let _ = js.delete_stream(format!("{stream}_DEAD_LETTER")).await;
}

#[tokio::test]
async fn nats_messages_reach_users_and_invalid_ones_are_dead_lettered() {
    let Some(js) = nats(&nats_url()).await else {
        return;
    };
    let stream = unique("MPS_DELIVER").replace('-', "_");
    let server = Server::with_config(&nats_config(&nats_url(), &stream, 64), &[]);
    within(WAIT, "the consumer to connect", || async {
        server.request("GET", "/readyz", None, None).await.status == 200
    })
    .await;
    let mut frank = server.connect("frank", "bs", &[]).await;
    const N: u64 = 200;
    for n in 0..N {
        let id = (n % 2 == 0).then(|| format!("nats-{n}"));
        js_publish(
            &js,
            &format!("{stream}.in.default"),
            directed(n, "frank"),
            id,
        )
        .await;
    }
    let mut seen = Vec::new();
    for _ in 0..N {
        let push = frank.next_push(WAIT).await.expect("push");
        let content: serde_json::Value = serde_json::from_str(push.event_data.ext.get()).unwrap();
        seen.push(content["n"].as_u64().unwrap());
    }
    assert_each_once(seen, N, "pushes");
    // The app from the subject's third word.
    js_publish(&js, &format!("{stream}.in.oa"), directed(0, "grace"), None).await;
    within(WAIT, "the message of app oa", || async {
        total(&server, &[("app", "oa"), ("receiver", "grace")]).await == 1
    })
    .await;

    let invalid = [
        ("bad_json", "[1,".to_owned()),
        ("bad_message", r#"{"receiver":["frank"]}"#.to_owned()),
        (
            "invalid_name",
            r#"{"content":1,"receiver":[""]}"#.to_owned(),
        ),
    ];
    let dead_stream = format!("{stream}_DEAD_LETTER");
    for (_, body) in &invalid {
        js_publish(&js, &format!("{stream}.in.default"), body.clone(), None).await;
    }
    within(WAIT, "every dead letter", || async {
        let stored = js.get_stream(&dead_stream).await;
        stored.map(|s| s.cached_info().state.messages).unwrap_or(0) == invalid.len() as u64
    })
    .await;
    let dead = js
        .get_stream(&dead_stream)
        .await
        .expect("dead-letter stream");
    // Deliveries are sent concurrently: dead letters may be stored in any order.
    let mut reasons = BTreeMap::new();
    for seq in 1..=invalid.len() as u64 {
        let message = dead.get_raw_message(seq).await.expect("dead letter");
        let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
        assert!(header("x-mps-error").is_some_and(|e| !e.is_empty()));
        let code = header("x-mps-error-code").expect("error code");
        reasons.insert(code, message.payload.to_vec());
    }
    for (code, body) in &invalid {
        assert_eq!(
            reasons.get(*code).map(Vec::as_slice),
            Some(body.as_bytes()),
            "{code}"
        );
    }
    assert_eq!(total(&server, &[("receiver", "frank")]).await, N);
    let metrics = server.metrics().await;
    let source = format!("source=\"nats:{stream}:mps\"");
    assert_eq!(
        metric(&metrics, "mps_ingest_rejected_total", &[&source]),
        invalid.len() as f64
    );
    delete_streams(&js, &stream).await;
}

#[tokio::test]
async fn nats_kill_9_mid_stream_loses_nothing_and_records_nothing_twice() {
    let Some(js) = nats(&nats_url()).await else {
        return;
    };
    let stream = unique("MPS_KILL").replace('-', "_");
    let mut server = Server::with_config(&nats_config(&nats_url(), &stream, 256), &[]);
    within(WAIT, "the consumer to connect", || async {
        server.request("GET", "/readyz", None, None).await.status == 200
    })
    .await;
    const N: u64 = 3000;
    let publishing = {
        let (js, subject) = (js.clone(), format!("{stream}.in.default"));
        tokio::spawn(async move {
            for batch in 0..N / 100 {
                let sends = (batch * 100..(batch + 1) * 100).map(|n| {
                    let id = Some(format!("kill-{n}"));
                    js_publish(&js, &subject, directed(n, "heidi"), id)
                });
                futures_util::future::join_all(sends).await;
            }
        })
    };
    within(Duration::from_secs(60), "some messages stored", || async {
        total(&server, &[("receiver", "heidi")]).await >= 300
    })
    .await;
    server.kill_and_restart();
    publishing.await.expect("publisher");
    within(Duration::from_secs(60), "every message stored", || async {
        total(&server, &[("receiver", "heidi")]).await >= N
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_each_once(
        numbers(&records(&server, &[("receiver", "heidi")]).await),
        N,
        "records after kill -9",
    );
    let metrics = server.metrics().await;
    let source = format!("source=\"nats:{stream}:mps\"");
    eprintln!(
        "after kill -9: {} redelivered, {} answered as duplicates",
        metric(&metrics, "mps_ingest_redelivered_total", &[&source]) as u64,
        metric(&metrics, "mps_ingest_duplicates_total", &[&source]) as u64,
    );
    let mut heidi = server.connect("heidi", "bs", &[]).await;
    let mut seen = Vec::new();
    for _ in 0..N {
        let push = heidi.next_push(WAIT).await.expect("push");
        let content: serde_json::Value = serde_json::from_str(push.event_data.ext.get()).unwrap();
        seen.push(content["n"].as_u64().unwrap());
    }
    assert_each_once(seen, N, "pushes");
    delete_streams(&js, &stream).await;
}

/// A private `nats-server -js` on a port of its own, restartable on the same port and store.
struct PrivateNats {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl PrivateNats {
    fn start() -> Option<PrivateNats> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let mut nats = PrivateNats {
            child: None,
            port,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        if let Err(e) = nats.spawn() {
            return missing("nats-server", e);
        }
        Some(nats)
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "private nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn nats_consumption_resumes_after_the_server_restarts() {
    let Some(mut private) = PrivateNats::start() else {
        return;
    };
    let Some(js) = nats(&private.url()).await else {
        return;
    };
    let stream = "MPS_RESTART";
    let server = Server::with_config(&nats_config(&private.url(), stream, 32), &[]);
    within(WAIT, "the consumer to connect", || async {
        server.request("GET", "/readyz", None, None).await.status == 200
    })
    .await;
    let subject = format!("{stream}.in.default");
    for n in 0..100 {
        js_publish(&js, &subject, directed(n, "ivan"), Some(format!("r-{n}"))).await;
    }
    within(WAIT, "the first 100", || async {
        total(&server, &[("receiver", "ivan")]).await == 100
    })
    .await;

    private.stop();
    within(
        WAIT,
        "/readyz to say the consumer is disconnected",
        || async {
            let answer = server.request("GET", "/readyz", None, None).await;
            answer.status == 503 && answer.error_code() == "ingest_disconnected"
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    private.spawn().expect("restart nats-server");
    // Published after the restart, once this test's own client is back.
    let js = nats(&private.url()).await.expect("NATS again");
    for n in 100..200 {
        js_publish(&js, &subject, directed(n, "ivan"), Some(format!("r-{n}"))).await;
    }
    within(Duration::from_secs(20), "consumption to resume", || async {
        total(&server, &[("receiver", "ivan")]).await == 200
    })
    .await;
    within(WAIT, "/readyz to recover", || async {
        server.request("GET", "/readyz", None, None).await.status == 200
    })
    .await;
    assert_each_once(
        numbers(&records(&server, &[("receiver", "ivan")]).await),
        200,
        "records",
    );
}

#[tokio::test]
async fn readyz_reports_a_consumer_that_cannot_connect() {
    // A port nothing listens on: mps starts, keeps retrying, and says it is not ready.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Server::with_config(
        &rabbit_config(
            &format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            "nowhere",
            8,
        ),
        &[],
    );
    let answer = server.request("GET", "/readyz", None, None).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.error_code(), "ingest_disconnected");
    assert!(answer.body.contains("rabbitmq:nowhere"), "{}", answer.body);
    // Sending over HTTP still works meanwhile.
    let sent = server
        .api()
        .send(&message(r#"{"n":1}"#, Some(&["judy"])))
        .await
        .expect("send");
    assert!(!sent.duplicate);
}

// ---- Throughput (bench/ingest.sh runs this in release mode) ----

/// Messages from a pre-filled queue to stored and delivered: `n` directed messages to ten
/// connected users. Prints one `ingest-bench` line.
#[tokio::test]
#[ignore = "a measurement: bench/ingest.sh"]
async fn ingest_throughput() {
    let n: u64 = std::env::var("INGEST_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let kind = std::env::var("INGEST_BENCH_SOURCE").unwrap_or_else(|_| "rabbitmq".into());
    let in_flight = 256;
    let body = |i: u64| directed(i, &format!("u{}", i % 10));
    let cleanup: Box<dyn FnOnce() -> futures_util::future::BoxFuture<'static, ()>>;
    let config = if kind == "nats" {
        let Some(js) = nats(&nats_url()).await else {
            return;
        };
        let stream = unique("MPS_BENCH").replace('-', "_");
        let subject = format!("{stream}.in.default");
        js.get_or_create_stream(jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{stream}.in.>")],
            ..Default::default()
        })
        .await
        .expect("stream");
        for batch in 0..n.div_ceil(500) {
            let sends = (batch * 500..((batch + 1) * 500).min(n))
                .map(|i| js_publish(&js, &subject, body(i), None));
            futures_util::future::join_all(sends).await;
        }
        let name = stream.clone();
        cleanup = Box::new(move || Box::pin(async move { delete_streams(&js, &name).await }));
        nats_config(&nats_url(), &stream, in_flight)
    } else {
        let Some(channel) = rabbit().await else {
            return;
        };
        let queue = unique("mps-bench");
        declare(&channel, &queue).await;
        for batch in 0..n.div_ceil(500) {
            let sends = (batch * 500..((batch + 1) * 500).min(n)).map(|i| {
                let (channel, queue, body) = (&channel, &queue, body(i));
                async move { publish(channel, queue, body.as_bytes(), None, &[]).await }
            });
            futures_util::future::join_all(sends).await;
        }
        let name = queue.clone();
        cleanup = Box::new(move || {
            Box::pin(async move {
                delete_queues(&channel, &[&name, &format!("{name}.dead-letter")]).await
            })
        });
        rabbit_config(&amqp_url(), &queue, in_flight as u16)
    };

    let server = Server::with_config(&config, &[("MPS_CONNECTION__QUEUE", "65536")]);
    let mut readers = Vec::new();
    for u in 0..10 {
        let mut client = server.connect(&format!("u{u}"), "bs", &[]).await;
        let expected = n / 10 + u64::from(u < n % 10);
        readers.push(tokio::spawn(async move {
            for _ in 0..expected {
                client
                    .next_push(Duration::from_secs(60))
                    .await
                    .expect("push");
            }
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64
        }));
    }
    let mut last_received = 0;
    for reader in readers {
        last_received = last_received.max(reader.await.expect("reader"));
    }
    let stored = records(&server, &[]).await;
    assert_eq!(stored.len() as u64, n);
    let first = stored.iter().map(|r| r.created).min().unwrap();
    let last = stored.iter().map(|r| r.created).max().unwrap();
    let metrics = server.metrics().await;
    let batches = metric(&metrics, "mps_store_commit_batch_count", &[]);
    let writes = metric(&metrics, "mps_store_commit_batch_sum", &[]);
    println!(
        "ingest-bench source={kind} n={n} in_flight={in_flight} stored_per_s={:.0} \
         delivered_per_s={:.0} writes_per_commit={:.1}",
        n as f64 * 1000.0 / (last - first).max(1) as f64,
        n as f64 * 1000.0 / (last_received - first).max(1) as f64,
        writes / batches.max(1.0),
    );
    cleanup().await;
}
