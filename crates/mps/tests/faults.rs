//! Faults: silent peers, slow consumers, `kill -9` and SIGTERM, against the real binary.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use mps_client::proto::Status;
use mps_client::{Api, PushClient};
use tokio::sync::Semaphore;

#[tokio::test]
async fn heartbeat_drops_a_peer_that_stops_reading_and_keeps_one_that_reads() {
    let server = Server::with_env(&[
        ("MPS_CONNECTION__HEARTBEAT", "1"),
        ("MPS_CONNECTION__TIMEOUT", "3"),
    ]);
    let mut reader = server.connect("reader", "bs", &[]).await;
    assert_eq!((reader.session.heartbeat, reader.session.timeout), (1, 3));
    // The bounds below leave room for a loaded machine: a silent peer goes after 3 to 4 s.
    // Opens its session, then never reads again: it never sees the pings, so never answers.
    let deaf = server.open_raw("deaf", "bs", &[]).await;
    // Stops reading too, but while a burst is on its way: the server's writes to it block on
    // full socket buffers (its queue of 1024 never overflows).
    let flooded = server.open_raw("flooded", "bs", &["flood"]).await;
    server.wait_clients("deaf", 1).await;
    let since = Instant::now();
    let pad = "x".repeat(32 * 1024);
    let api = server.api();
    for n in 0..300 {
        let burst = mps_client::proto::SendMessage {
            component: Some("flood".into()),
            ..message(&format!(r#"{{"n":{n},"pad":"{pad}"}}"#), None)
        };
        api.send(&burst).await.unwrap();
    }

    // The reader reads (and so answers pings) for 4 s, receiving nothing else.
    let reading = tokio::spawn(async move {
        let outcome = reader.next_push(Duration::from_secs(4)).await;
        assert!(
            matches!(outcome, Err(mps_client::Error::Timeout)),
            "{outcome:?}"
        );
        reader
    });
    server.wait_clients("deaf", 0).await;
    let dropped_after = since.elapsed();
    assert!(
        dropped_after < Duration::from_secs(8),
        "dropped after {dropped_after:?}"
    );
    server.wait_clients("flooded", 0).await;
    let flooded_after = since.elapsed();
    assert!(
        flooded_after < Duration::from_secs(9),
        "flooded dropped after {flooded_after:?}"
    );
    let mut reader = reading.await.unwrap();
    assert!(since.elapsed() >= Duration::from_secs(4));
    assert_eq!(
        server.client_ids("reader").await.len(),
        1,
        "the reader survives"
    );
    reader.ping().await.unwrap();
    let sent = server
        .api()
        .send(&message(r#"{"still":"here"}"#, Some(&["reader"])))
        .await
        .unwrap();
    assert_eq!(reader.next_push(WAIT).await.unwrap().id, sent.id);
    drop((deaf, flooded));
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("mps_disconnects_total{reason=\"heartbeat_timeout\"}"),
        "{metrics}"
    );
}

/// Reads a raw socket to its end; returns the ids of directed pushes in it and the close code.
async fn drain(mut ws: RawWs) -> (HashSet<String>, u16) {
    let mut ids = HashSet::new();
    let read = async {
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Text(text))) => {
                    let frame: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
                    if frame["Message"]["ack"] == true {
                        ids.insert(frame["Message"]["id"].as_str().unwrap().to_owned());
                    }
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    return frame.map(|f| f.code.into()).unwrap_or(1005);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return 1006,
            }
        }
    };
    let code = tokio::time::timeout(WAIT, read).await.expect("drained");
    (ids, code)
}

#[tokio::test]
async fn a_slow_consumer_is_dropped_without_holding_up_others_or_losing_directed_messages() {
    let server = Server::with_env(&[("MPS_CONNECTION__QUEUE", "8")]);
    let api = server.api();
    // Stops reading right after its open.
    let slow = server.open_raw("slow", "bs", &[]).await;
    let mut fast = server.connect("fast", "bs", &[]).await;

    // The fast reader returns a permit per message, so that at most 4 are in flight to it:
    // its queue of 8 never fills, while the slow one's does once its socket is full.
    let window = Arc::new(Semaphore::new(4));
    const MAX: usize = 2000;
    let reader_window = window.clone();
    let reader = tokio::spawn(async move {
        let mut ids = Vec::new();
        loop {
            let push = fast.next_push(WAIT).await.unwrap();
            reader_window.add_permits(1);
            if push.event_data.ext.get() == r#""end""# {
                return (ids, fast);
            }
            ids.push(push.id);
        }
    });

    let pad = "x".repeat(16 * 1024);
    let mut broadcast = Vec::new();
    let mut directed = Vec::new();
    let mut slow_gone = None;
    for n in 0..MAX {
        window.acquire().await.unwrap().forget();
        let content = format!(r#"{{"n":{n},"pad":"{pad}"}}"#);
        broadcast.push(api.send(&message(&content, None)).await.unwrap().id);
        if n % 25 == 0 {
            let to_slow = message(&format!(r#"{{"directed":{n}}}"#), Some(&["slow"]));
            directed.push(api.send(&to_slow).await.unwrap().id);
        }
        if n % 50 == 49 && server.client_ids("slow").await.is_empty() {
            slow_gone = Some(n + 1);
            break;
        }
    }
    let Some(sent) = slow_gone else {
        let metrics = server.metrics().await;
        let overflows: Vec<_> = metrics
            .lines()
            .filter(|l| l.contains("slow_consumer"))
            .collect();
        panic!("the slow consumer was never dropped; {overflows:?}");
    };
    // More directed messages while it is offline.
    for n in 0..5 {
        let to_slow = message(&format!(r#"{{"offline":{n}}}"#), Some(&["slow"]));
        directed.push(api.send(&to_slow).await.unwrap().id);
    }
    window.acquire().await.unwrap().forget();
    api.send(&message(r#""end""#, None)).await.unwrap();
    let (received, mut fast) = reader.await.unwrap();
    assert_eq!(received.len(), sent, "the fast client got every broadcast");
    assert_eq!(received, broadcast, "in order");
    assert_eq!(server.client_ids("fast").await.len(), 1);
    fast.ping().await.unwrap();

    // What reached the old socket before it was dropped is recorded as delivered; everything
    // else is still pending and comes on reconnect.
    let (on_old_socket, code) = drain(slow).await;
    assert!(code == 4429 || code == 1006, "closed with {code}");
    let mut pending = BTreeSet::new();
    for id in &directed {
        let status = api.message(id).await.unwrap().recipients.unwrap()[0].status;
        match status {
            Status::Pending => {
                pending.insert(id.clone());
            }
            Status::Delivered => assert!(on_old_socket.contains(id), "{id} delivered but unseen"),
            other => panic!("{id} is {other:?}"),
        }
    }
    assert!(pending.len() >= 5, "{pending:?}");
    let mut again = server.connect("slow", "bs", &[]).await;
    let mut redelivered = BTreeSet::new();
    while redelivered.len() < pending.len() {
        redelivered.insert(again.next_push(WAIT).await.unwrap().id);
    }
    assert_eq!(redelivered, pending);
    let all: HashSet<_> = directed.iter().cloned().collect();
    let seen: HashSet<_> = on_old_socket
        .union(&redelivered.into_iter().collect())
        .cloned()
        .collect();
    assert_eq!(seen, all, "no directed message is lost");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("mps_slow_consumer_disconnects_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn directed_messages_survive_kill_9() {
    let mut server = Server::start();
    let api = server.api();
    let mut tasks = Vec::new();
    for task in 0..20 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..25 {
                let content = format!(r#"{{"task":{task},"n":{n}}}"#);
                if let Ok(sent) = api.send(&message(&content, Some(&["carol"]))).await {
                    ids.push(sent.id);
                }
            }
            ids
        }));
    }
    let mut accepted = HashSet::new();
    for task in tasks {
        accepted.extend(task.await.unwrap());
    }
    assert_eq!(accepted.len(), 500, "every send was answered 2xx");

    server.kill_and_restart();
    let mut carol = server.connect("carol", "cs", &[]).await;
    let mut got = HashSet::new();
    let mut last = String::new();
    while got.len() < accepted.len() {
        let push = carol.next_push(WAIT).await.unwrap();
        assert!(
            push.id.parse::<u64>().unwrap() > last.parse().unwrap_or(0),
            "oldest first"
        );
        last = push.id.clone();
        assert!(got.insert(push.id), "no duplicates");
    }
    assert_eq!(got, accepted);
}

#[tokio::test]
async fn acks_survive_kill_9_and_acked_messages_are_not_redelivered() {
    let mut server = Server::start();
    let api = server.api();
    let mut ids = Vec::new();
    for n in 0..20 {
        let content = format!(r#"{{"n":{n}}}"#);
        ids.push(
            api.send(&message(&content, Some(&["dan"])))
                .await
                .unwrap()
                .id,
        );
    }
    // Half acked by HTTP straight from pending, a quarter over the WebSocket after delivery.
    let token = server.token("dan").await;
    let client_api = Api::new(&server.http(), "");
    assert_eq!(client_api.ack(&token, &ids[..10]).await.unwrap().acked, 10);
    let mut dan = server.connect("dan", "ios", &[]).await;
    for id in &ids[10..] {
        assert_eq!(&dan.next_push(WAIT).await.unwrap().id, id);
    }
    assert_eq!(dan.ack(&ids[10..15]).await.unwrap(), 5);
    drop(dan);

    server.kill_and_restart();
    let api = server.api();
    for id in &ids[..15] {
        let status = api.message(id).await.unwrap().recipients.unwrap()[0].status;
        assert_eq!(status, Status::Acked, "{id}");
    }
    // The last five were written to a socket: delivered, or pending again if that record was
    // not committed before the kill. Only pending ones come again.
    let mut pending = BTreeSet::new();
    for id in &ids[15..] {
        match api.message(id).await.unwrap().recipients.unwrap()[0].status {
            Status::Pending => {
                pending.insert(id.clone());
            }
            Status::Delivered => {}
            other => panic!("{id} is {other:?}"),
        }
    }
    let mut dan = server.connect("dan", "ios", &[]).await;
    let mut again = BTreeSet::new();
    while again.len() < pending.len() {
        again.insert(dan.next_push(WAIT).await.unwrap().id);
    }
    assert_eq!(again, pending);
    // Nothing else: the next push is a fresh message.
    let fresh = api
        .send(&message(r#"{"fresh":1}"#, Some(&["dan"])))
        .await
        .unwrap()
        .id;
    assert_eq!(dan.next_push(WAIT).await.unwrap().id, fresh);
    assert_eq!(
        dan.ack(&ids).await.unwrap(),
        5,
        "only the last five were not acked"
    );
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits_cleanly() {
    let mut server = Server::start();
    let mut protocol = server.connect("alice", "bs", &[]).await;
    let mut raw = server.open_raw("bob", "ios", &[]).await;
    let token = server.token("carol").await;
    let mut simple = PushClient::connect_simple(&format!("ws://{}/websocket/{token}", server.addr))
        .await
        .unwrap();
    server.wait_clients("carol", 1).await;

    let started = Instant::now();
    let stopping = tokio::task::spawn_blocking(move || {
        let clean = server.terminate();
        (clean, server)
    });
    assert_eq!(protocol.closed(WAIT).await.unwrap().0, 1001);
    assert_eq!(simple.closed(WAIT).await.unwrap().0, 1001);
    assert_eq!(until_close(&mut raw).await, (vec![], 1001));
    let (clean, server) = stopping.await.unwrap();
    assert!(clean, "exit status 0");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let refused = tokio::net::TcpStream::connect(&server.addr).await;
    assert!(refused.is_err(), "nothing listens any more");
}
