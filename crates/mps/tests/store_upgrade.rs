//! Stores written by an earlier release (`fixtures/`, see its README) opened by this build: the
//! store migrates in place, every record survives, and the store keeps working.
//!
//! The PostgreSQL test loads the dump into a database of its own (`MPS_TEST_POSTGRES_URL`,
//! default `postgres://postgres@127.0.0.1:5432/test`, names the server). A missing server fails
//! the test under `CI=true` and skips it (with the reason) elsewhere.

mod common;

use std::path::Path;

use common::*;
use serde_json::{Value, json};

const SQLITE_FIXTURE: &str = "tests/fixtures/sqlite-d65078b.db";
const POSTGRES_FIXTURE: &str = "tests/fixtures/postgres-d65078b.sql";

/// The fixtures' topic messages are older than the default retention: keep them.
const KEEP_TOPICS: (&str, &str) = ("MPS_TOPICS__RETENTION", "1577836800");

#[tokio::test]
async fn a_sqlite_store_of_the_release_before_migrates_in_place() {
    let data = tempfile::tempdir().unwrap();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        manifest.join(SQLITE_FIXTURE),
        data.path().join("messages.db"),
    )
    .unwrap();
    let mut server = Server::with_data(data, &[KEEP_TOPICS]);
    everything_survived(&server).await;
    still_works(&server).await;
    assert!(server.terminate());

    let db = rusqlite::Connection::open(server.data.path().join("messages.db")).unwrap();
    let versions: Vec<i64> = db
        .prepare("SELECT version FROM mps_migrations ORDER BY version")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
}

#[tokio::test]
async fn a_postgres_store_of_the_release_before_migrates_in_place() {
    let Some(database) = Database::load().await else {
        return;
    };
    let mut server = Server::with_env(&[("MPS_STORE__POSTGRES_URL", &database.url), KEEP_TOPICS]);
    everything_survived(&server).await;
    still_works(&server).await;
    assert!(server.terminate());

    let (client, connection) = tokio_postgres::connect(&database.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let versions: Vec<i32> = client
        .query("SELECT version FROM mps_migrations ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
    drop(client);
    database.drop().await;
}

async fn get_json(server: &Server, path: &str) -> Value {
    let response = server.admin("GET", path).await;
    assert_eq!(response.status, 200, "{path}: {}", response.body);
    serde_json::from_str(&response.body).unwrap()
}

/// The record of the fixture's message with this title (the newest, when two have it).
async fn record(server: &Server, title: &str) -> Value {
    let page = get_json(server, "/api/v1/messages?size=100").await;
    let id = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["title"] == title)
        .unwrap_or_else(|| panic!("no message {title}: {page}"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    get_json(server, &format!("/api/v1/messages/{id}")).await
}

fn statuses(record: &Value) -> Vec<(String, String)> {
    record["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let field = |name: &str| r[name].as_str().unwrap().to_owned();
            (field("user"), field("status"))
        })
        .collect()
}

fn pair(user: &str, status: &str) -> (String, String) {
    (user.to_owned(), status.to_owned())
}

async fn everything_survived(server: &Server) {
    let page = get_json(server, "/api/v1/messages?size=100").await;
    assert_eq!(page["total"], 6, "{page}");

    let first = record(server, "first").await;
    assert_eq!(
        statuses(&first),
        [pair("alice", "acked"), pair("bob", "pending")]
    );
    assert_eq!(
        (&first["sender"], &first["component"], &first["type"]),
        (&json!("report-server"), &json!("esbm"), &json!(1))
    );
    assert_eq!(first["content"], json!({"n": 1}));

    let second = record(server, "second").await;
    assert_eq!(second["agents"], json!(["ios"]));
    assert_eq!(statuses(&second), [pair("alice", "delivered")]);

    let later = record(server, "later").await;
    assert_eq!(
        statuses(&later),
        [pair("bob", "pending"), pair("carol", "pending")]
    );
    for recipient in later["recipients"].as_array().unwrap() {
        assert!(
            recipient["channels"]["webhook"].is_object(),
            "the chain step: {recipient}"
        );
    }

    let vips = record(server, "to vips").await;
    assert_eq!(vips["formats"], json!({"ios": {"title": "vip!"}}));
    assert_eq!(statuses(&vips), [pair("alice", "delivered")]);

    let keyed = record(server, "keyed").await;
    assert_eq!(statuses(&keyed), [pair("carol", "pending")]);
    let again = server
        .admin_post(
            "/api/v1/messages",
            r#"{"content": {"n": 3}, "receiver": ["carol"], "id": "order-42"}"#,
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    let again: Value = serde_json::from_str(&again.body).unwrap();
    assert_eq!(
        (&again["id"], &again["duplicate"]),
        (&keyed["id"], &json!(true))
    );

    let devices = get_json(server, "/api/v1/devices?user=alice").await;
    assert_eq!(devices["total"], 1, "{devices}");
    let device = &devices["items"][0];
    assert_eq!(
        (&device["device"], &device["way"], &device["token"]),
        (
            &json!("pixel-1"),
            &json!("fcm"),
            &json!("dQw4w9WgXcQ:APA91b-fixture")
        )
    );

    let tags = get_json(server, "/api/v1/users/alice/tags").await;
    assert_eq!(tags["tags"], json!(["beta", "vip"]));
    let attributes = get_json(server, "/api/v1/users/alice/attributes").await;
    assert_eq!(
        attributes["attributes"],
        json!({"lang": "zh", "region": "cn"})
    );
    let preferences = get_json(server, "/api/v1/users/alice/preferences").await;
    assert_eq!(preferences["muted_components"], json!(["oa"]));
    assert_eq!(preferences["quiet_hours"]["utc_offset"], "+08:00");

    // The retained topic log, replayed to a client resuming from the start.
    let mut client = server
        .connect_topics("dave", &["alarms/#"], Some("1"))
        .await;
    let mut topics = Vec::new();
    for _ in 0..2 {
        let push = client.next_push(WAIT).await.unwrap();
        topics.push(push.topic.unwrap_or_default());
    }
    assert_eq!(topics, ["alarms/site1", "alarms/site2"]);
    client.close().await.unwrap();
}

/// Bob collects his backlog and acks it, then gets and acks a new message.
async fn still_works(server: &Server) {
    let token = format!("Bearer {}", server.token("bob").await);
    let collect = || async {
        let response = server
            .request("POST", "/api/v1/collect", Some(&token), Some("{}"))
            .await;
        assert_eq!(response.status, 200, "{}", response.body);
        let body: Value = serde_json::from_str(&response.body).unwrap();
        body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let ack = |ids: Vec<String>| {
        let token = token.clone();
        async move {
            let body = json!({ "ids": ids }).to_string();
            let response = server
                .request("POST", "/api/v1/ack", Some(&token), Some(&body))
                .await;
            assert_eq!(response.status, 200, "{}", response.body);
            serde_json::from_str::<Value>(&response.body).unwrap()["acked"].clone()
        }
    };
    let backlog = collect().await;
    assert_eq!(backlog.len(), 2, "first and later: {backlog:?}");
    assert_eq!(ack(backlog).await, 2);

    let sent = server
        .admin_post(
            "/api/v1/messages",
            r#"{"content": {"n": 7}, "receiver": ["bob"], "title": "after the upgrade"}"#,
        )
        .await;
    assert_eq!(sent.status, 201, "{}", sent.body);
    let id = serde_json::from_str::<Value>(&sent.body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(collect().await, std::slice::from_ref(&id));
    assert_eq!(ack(vec![id.clone()]).await, 1);
    let record = get_json(server, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(statuses(&record), [pair("bob", "acked")]);
}

/// A fresh database holding the PostgreSQL fixture, dropped at the end of the test.
struct Database {
    base: String,
    name: String,
    url: String,
}

impl Database {
    async fn load() -> Option<Database> {
        let base = std::env::var("MPS_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let (client, connection) = match tokio_postgres::connect(&base, tokio_postgres::NoTls).await
        {
            Ok(connected) => connected,
            Err(e) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "PostgreSQL at {base} is needed under CI: {e}"
                );
                eprintln!("skipped: PostgreSQL at {base} unavailable ({e})");
                return None;
            }
        };
        tokio::spawn(connection);
        let name = format!("mps_upgrade_{}", hex::encode(rand::random::<[u8; 6]>()));
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let url = with_database(&base, &name);
        let (loader, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dump = std::fs::read_to_string(manifest.join(POSTGRES_FIXTURE)).unwrap();
        // psql's meta-commands (`\restrict`) are not SQL.
        let sql: String = dump
            .lines()
            .filter(|line| !line.starts_with('\\'))
            .map(|line| format!("{line}\n"))
            .collect();
        loader.batch_execute(&sql).await.unwrap();
        Some(Database { base, name, url })
    }

    async fn drop(self) {
        if let Ok((client, connection)) =
            tokio_postgres::connect(&self.base, tokio_postgres::NoTls).await
        {
            tokio::spawn(connection);
            let _ = client
                .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
                .await;
        }
    }
}

/// `base` with its database replaced by `name`.
fn with_database(base: &str, name: &str) -> String {
    let (address, query) = match base.split_once('?') {
        Some((address, query)) => (address, Some(query)),
        None => (base, None),
    };
    let server = address
        .rsplit_once('/')
        .map_or(address, |(server, _)| server);
    match query {
        Some(query) => format!("{server}/{name}?{query}"),
        None => format!("{server}/{name}"),
    }
}
