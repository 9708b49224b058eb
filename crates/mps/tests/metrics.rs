//! `GET /metrics` against docs/metrics.md: a server exercised over every transport and the API
//! shows every metric the page lists as `always`, and nothing the page does not list.

mod common;

use std::collections::BTreeSet;

use common::*;
use mps_client::PushClient;

/// (name, when) of every metric row of docs/metrics.md (`| `mps_x` | type | labels | when |`).
fn documented() -> Vec<(String, String)> {
    let page = include_str!("../../../docs/metrics.md");
    let rows: Vec<(String, String)> = page
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix("`mps_")?.strip_suffix('`')?;
            Some((format!("mps_{name}"), cells.get(4)?.to_string()))
        })
        .collect();
    assert!(rows.len() > 30, "docs/metrics.md has its tables: {rows:?}");
    rows
}

/// The metric families of a Prometheus text answer (its `# TYPE` lines).
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// The value of the sample `series` (name and labels exactly as rendered), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_match_docs_metrics_md() {
    let server = Server::with_env(&[("MPS_LIMITS__CONNECTIONS_PER_USER", "2")]);
    let api = server.api();

    // Every transport, and agents known and unknown.
    let mut alice = server.connect("alice", "ios", &["esbm"]).await;
    let token = server.token("bob").await;
    let mut simple = raw_ws(&format!(
        "ws://{}/websocket/{token}?agent=kiosk",
        server.addr
    ))
    .await;
    let carol = server.token("carol").await;
    let mut events = server.sse(&format!("token={carol}"), &[]).await.unwrap();
    let polled = api.poll(&carol, &[("timeout", "0")]).await.unwrap();
    assert!(polled.messages.is_empty());

    // Every delivery class, a repeat of an idempotency key, an ack, a topic resume.
    let sent = api
        .send(&message(r#"{"n":1}"#, Some(&["alice"])))
        .await
        .unwrap();
    let pushed = alice.next_push(WAIT).await.unwrap();
    assert_eq!(alice.ack(&[pushed.id]).await.unwrap(), 1);
    let keyed = mps_client::proto::SendMessage {
        id: Some("once".into()),
        ..message("1", Some(&["carol"]))
    };
    api.send(&keyed).await.unwrap();
    assert!(api.send(&keyed).await.unwrap().duplicate);
    let topic_id = server.publish("alarms/site1", "2").await;
    let first = server
        .connect_topics("dave", &["alarms/#"], Some("1"))
        .await;
    drop(first);
    let _ = topic_id;
    api.send(&mps_client::proto::SendMessage {
        component: Some("esbm".into()),
        ..message("3", None)
    })
    .await
    .unwrap();
    api.send(&message("4", None)).await.unwrap();
    let _ = next_json(&mut simple).await;
    let _ = events.next_block(WAIT).await;

    // The records: list, get, delete.
    api.messages(&[("size", "5")]).await.unwrap();
    api.message(&sent.id).await.unwrap();
    api.delete(&sent.id).await.unwrap();

    // Errors: no key, a bad body, a refused open, a limit, an operator's disconnect.
    assert_eq!(
        server
            .request("GET", "/api/v1/messages", None, None)
            .await
            .status,
        401
    );
    assert_eq!(server.admin_post("/api/v1/messages", "{").await.status, 400);
    let mut forged = raw_ws(&server.ws()).await;
    send_text(&mut forged, open_text("forged", "eve", "bs", &[])).await;
    let (_, code) = until_close(&mut forged).await;
    assert_eq!(code, 4401);
    let _second = server.connect("alice", "bs", &[]).await;
    let third = PushClient::open(
        &server.ws(),
        &server.token("alice").await,
        client_info("alice", "bs", &[]),
    )
    .await;
    assert!(
        third.is_err(),
        "a third connection of alice is over the limit"
    );
    let id = server.client_ids("alice").await[0].clone();
    api.disconnect(&id).await.unwrap();
    server.wait_clients("alice", 1).await;

    // A device registration, and its removal.
    let answer = server
        .request(
            "POST",
            "/api/v1/devices",
            Some(&format!("Bearer {carol}")),
            Some(r#"{"device":"phone-1","way":"fcm","token":"fcm-token-1"}"#),
        )
        .await;
    assert!(answer.status == 201, "{}", answer.body);
    let answer = server
        .request(
            "DELETE",
            "/api/v1/devices?device=phone-1",
            Some(&format!("Bearer {carol}")),
            None,
        )
        .await;
    assert!(answer.status == 200, "{}", answer.body);

    let text = server.metrics().await;
    let present = families(&text);
    let documented = documented();
    let missing: Vec<_> = documented
        .iter()
        .filter(|(name, when)| when == "always" && !name.contains('*'))
        .filter(|(name, _)| !present.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "documented in docs/metrics.md as always there, but not in /metrics: {missing:?}\n{text}"
    );
    let undocumented: Vec<_> = present
        .iter()
        .filter(|family| {
            !documented
                .iter()
                .any(|(name, _)| match name.strip_suffix('*') {
                    Some(prefix) => family.starts_with(prefix),
                    None => *family == name,
                })
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "in /metrics but not in docs/metrics.md: {undocumented:?}"
    );

    // Labels as documented.
    for series in [
        r#"mps_connections{transport="websocket",agent="ios"}"#,
        r#"mps_connections{transport="websocket-simple",agent="other"}"#,
        r#"mps_connections{transport="sse",agent="bs"}"#,
        r#"mps_messages_accepted_total{class="broadcast"}"#,
        r#"mps_http_responses_total{status="401"}"#,
        r#"mps_http_responses_total{status="400"}"#,
        r#"mps_ws_closes_total{code="4401"}"#,
        r#"mps_ws_closes_total{code="4403"}"#,
        r#"mps_disconnects_total{reason="kicked"}"#,
        r#"mps_api_errors_total{code="missing_token"}"#,
        r#"mps_store_errors_total{op="insert"}"#,
        r#"mps_store_seconds_count{op="insert"}"#,
        r#"mps_store_seconds_count{op="delete"}"#,
        r#"mps_store_seconds_bucket{op="get",le="0.0001"}"#,
        "mps_messages_duplicates_total",
        "mps_acks_total",
    ] {
        assert!(
            sample(&text, series).is_some(),
            "no sample {series} in /metrics:\n{text}"
        );
    }
    assert_eq!(
        sample(
            &text,
            r#"mps_connections{transport="websocket",agent="ios"}"#
        ),
        Some(0.0),
        "alice's ios connection was disconnected"
    );
    assert_eq!(
        sample(&text, r#"mps_store_errors_total{op="insert"}"#),
        Some(0.0)
    );
    assert!(sample(&text, r#"mps_ws_closes_total{code="4403"}"#) >= Some(1.0));
}

/// A node of a cluster shows the `cluster` metrics of docs/metrics.md. Needs Redis
/// (`MPS_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`): a failure under `CI=true` when it
/// is missing, else skipped with the reason.
#[tokio::test]
async fn a_cluster_node_shows_the_cluster_metrics() {
    let url =
        std::env::var("MPS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let address = url
        .trim_start_matches("redis://")
        .split(['/', '?'])
        .next()
        .unwrap()
        .rsplit('@')
        .next()
        .unwrap()
        .to_owned();
    let reachable = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        tokio::net::TcpStream::connect(&address),
    )
    .await;
    if !matches!(reachable, Ok(Ok(_))) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "Redis at {url} is needed under CI"
        );
        eprintln!("skipped: Redis at {url} unavailable");
        return;
    }
    let prefix = format!("mps_metrics_{}", std::process::id());
    let server = Server::with_env(&[
        ("MPS_CLUSTER__REDIS_URL", &url),
        ("MPS_CLUSTER__KEY_PREFIX", &prefix),
    ]);
    let mut alice = server.connect("alice", "bs", &[]).await;
    server
        .api()
        .send(&message("1", Some(&["alice"])))
        .await
        .unwrap();
    alice.next_push(WAIT).await.unwrap();
    let text = server.metrics().await;
    let present = families(&text);
    let missing: Vec<_> = documented()
        .into_iter()
        .filter(|(name, when)| when == "cluster" && !present.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "cluster metrics missing: {missing:?}\n{text}"
    );
    eventually("the subscriber to Redis to be up", || async {
        sample(&server.metrics().await, "mps_cluster_subscribed") == Some(1.0)
    })
    .await;
}
