//! Every limit of docs/security.md against the real binary, each with a small configured
//! value: the documented close code or HTTP status (with a JSON error body), the count in
//! `mps_limit_rejections_total{limit}`, and a server that still serves afterwards.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Asserts that each limit was counted, and that the server still answers.
async fn counted(server: &Server, limits: &[&str]) {
    let metrics = server.metrics().await;
    for limit in limits {
        let label = format!("limit=\"{limit}\"");
        assert!(
            metric(&metrics, "mps_limit_rejections_total", &[&label]) > 0.0,
            "{label} not counted in:\n{metrics}"
        );
    }
}

/// A client token for `user`, signed here so that getting it opens no connection.
fn token(user: &str) -> String {
    signed_token(JWT_SECRET, user, unix_now() + 3600)
}

/// Opens `/ws` and sends the open frame of `user`; returns the socket, nothing read yet.
async fn open_ws(server: &Server, user: &str) -> RawWs {
    let mut ws = raw_ws(&server.ws()).await;
    send_text(&mut ws, open_text(&token(user), user, "bs", &[])).await;
    ws
}

/// Expects the open answer to be accepted.
async fn opened(ws: &mut RawWs) {
    let answer = next_json(ws).await;
    assert_eq!(answer["Type"], 2, "{answer}");
    assert!(answer["Session"]["id"].is_string(), "{answer}");
}

/// Expects a `Type` 2 refusal with `code`, then the close `close`.
async fn refused_open(ws: &mut RawWs, code: &str, close: u16) {
    let (frames, closed) = until_close(ws).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["Type"], 2, "{frames:?}");
    assert_eq!(frames[0]["Error"]["code"], code, "{frames:?}");
    assert_eq!(closed, close, "{frames:?}");
}

/// Asserts a refusal by a limit: `status`, the JSON `code`, and a `Retry-After` of seconds.
fn limited(answer: &HttpResponse, status: u16, code: &str) {
    assert_eq!(answer.status, status, "{answer:?}");
    assert_eq!(answer.error_code(), code, "{answer:?}");
    let retry: u64 = answer
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After: {answer:?}"))
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry >= 1, "{answer:?}");
}

#[tokio::test]
async fn oversize_frames_and_bodies_are_refused_with_1009_and_413() {
    let server = Server::with_env(&[
        ("MPS_CONNECTION__MAX_FRAME", "1024"),
        ("MPS_MESSAGES__MAX_BODY", "1024"),
    ]);
    let mut ws = open_ws(&server, "alice").await;
    opened(&mut ws).await;
    let big = format!(r#"{{"Type":5,"Seq":1,"pad":"{}"}}"#, "x".repeat(2000));
    send_text(&mut ws, big).await;
    assert_eq!(until_close(&mut ws).await, (vec![], 1009));

    let body = format!(
        r#"{{"content":"{}","receiver":["alice"],"type":0}}"#,
        "x".repeat(2000)
    );
    let answer = server.admin_post("/api/v1/messages", &body).await;
    assert_eq!(answer.status, 413, "{answer:?}");
    assert_eq!(answer.error_code(), "too_large");
    counted(&server, &["frame_size", "body_size"]).await;
}

#[tokio::test]
async fn a_user_over_its_connections_is_refused_on_every_transport() {
    let server = Server::with_env(&[("MPS_LIMITS__CONNECTIONS_PER_USER", "2")]);
    let mut first = open_ws(&server, "alice").await;
    opened(&mut first).await;
    let mut second = open_ws(&server, "alice").await;
    opened(&mut second).await;

    let mut third = open_ws(&server, "alice").await;
    refused_open(&mut third, "too_many_connections", 4429).await;
    let simple = server
        .upgrade_request(&format!("/websocket/{}", token("alice")))
        .await;
    limited(&simple, 429, "too_many_connections");
    assert!(simple.header("upgrade").is_none(), "{simple:?}");
    let alice = token("alice");
    for path in [
        format!("/sse?token={alice}"),
        format!("/poll?token={alice}&timeout=0"),
    ] {
        let answer = server.request("GET", &path, None, None).await;
        limited(&answer, 429, "too_many_connections");
    }

    // Others are not affected, and a place freed is taken again.
    let mut bob = open_ws(&server, "bob").await;
    opened(&mut bob).await;
    first.close(None).await.unwrap();
    server.wait_clients("alice", 1).await;
    let mut again = open_ws(&server, "alice").await;
    opened(&mut again).await;
    counted(&server, &["connections_per_user"]).await;
}

/// Opens `count` TCP connections that the server has admitted: each asks for `/healthz` and
/// stays open (keep-alive). A connection refused with 429 or 503, because one the test closed
/// before is still being counted, is tried again.
async fn held_sockets(server: &Server, count: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while held.len() < count {
        let mut stream = TcpStream::connect(&server.addr).await.expect("connect");
        let request = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
        stream.write_all(request.as_bytes()).await.expect("write");
        if answer_status(&mut stream).await == Some(200) {
            held.push(stream);
        } else {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server never admitted {count} connections"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    held
}

/// Reads one HTTP answer (head and a `content-length` body) and returns its status.
async fn answer_status(stream: &mut TcpStream) -> Option<u16> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if raw.len() >= end + 4 + length {
                    return text.split(' ').nth(1)?.parse().ok();
                }
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()
        .flatten()
}

/// Waits until the server counts `open` connections besides the one asking (a closed socket is
/// counted until the server has seen it close).
async fn serving_again(server: &Server, open: usize) {
    eventually(
        "the server to count only the connections left open",
        || async {
            let answer = server.request("GET", "/metrics", None, None).await;
            answer.status == 200
                && answer
                    .body
                    .lines()
                    .any(|l| l == format!("mps_sockets_open {}", open + 1))
        },
    )
    .await;
}

#[tokio::test]
async fn connections_per_address_are_limited_with_429() {
    let server = Server::with_env(&[("MPS_LIMITS__CONNECTIONS_PER_ADDRESS", "3")]);
    // Upgraded sockets count as long as they are open, like any other.
    let mut ws = open_ws(&server, "alice").await;
    opened(&mut ws).await;
    let held = held_sockets(&server, 2).await;
    let answer = server.request("GET", "/healthz", None, None).await;
    limited(&answer, 429, "too_many_connections");
    drop(held);
    serving_again(&server, 1).await;
    let held = held_sockets(&server, 2).await;
    let refused = server
        .upgrade_request(&format!("/websocket/{}", token("bob")))
        .await;
    limited(&refused, 429, "too_many_connections");
    drop((held, ws));
    serving_again(&server, 0).await;
    counted(&server, &["connections_per_address"]).await;
}

#[tokio::test]
async fn a_full_node_answers_503_and_takes_connections_again_when_they_close() {
    let server = Server::with_env(&[("MPS_LIMITS__MAX_CONNECTIONS", "3")]);
    let mut ws = open_ws(&server, "alice").await;
    opened(&mut ws).await;
    let sse = server
        .sse(&format!("token={}", token("bob")), &[])
        .await
        .expect("SSE stream");
    let held = held_sockets(&server, 1).await;
    let answer = server.request("GET", "/healthz", None, None).await;
    limited(&answer, 503, "server_full");
    let answer = server
        .request(
            "POST",
            "/api/v1/collect",
            Some(&format!("Bearer {}", token("carol"))),
            None,
        )
        .await;
    limited(&answer, 503, "server_full");
    drop((held, sse));
    serving_again(&server, 1).await;
    // The WebSocket kept its place and still works.
    send_text(&mut ws, r#"{"Type":5,"Seq":9}"#).await;
    assert_eq!(next_json(&mut ws).await["Type"], 6);
    counted(&server, &["max_connections"]).await;
}

/// Whether the server has closed `stream`: reads for `wait`; `None` when it is still open.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(wait, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| got)
}

#[tokio::test]
async fn slow_request_heads_and_bodies_are_cut_off() {
    let server = Server::with_env(&[("MPS_LIMITS__REQUEST_TIMEOUT", "1")]);
    // Slowloris: the head dribbles in, a byte at a time, and never ends.
    let mut dribbler = TcpStream::connect(&server.addr).await.unwrap();
    dribbler
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let cut = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a dribbled request head was never cut off"
        );
        if dribbler.write_all(b"X").await.is_err() {
            break Vec::new();
        }
        if let Some(answer) = closed_within(&mut dribbler, Duration::from_millis(200)).await {
            break answer;
        }
    };
    assert!(
        cut.is_empty(),
        "no answer to an unfinished request: {cut:?}"
    );

    // A connection that sends nothing at all is closed too.
    let mut silent = TcpStream::connect(&server.addr).await.unwrap();
    assert!(closed_within(&mut silent, WAIT).await.is_some());

    // A body that never arrives in full: 408 with a JSON error.
    let request = format!(
        "POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"content\":"
    );
    let answer = raw_http(&server.addr, &request).await;
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(answer.error_code(), "request_timeout");

    assert_eq!(
        server.request("GET", "/healthz", None, None).await.status,
        200
    );
    counted(&server, &["request_timeout"]).await;
}

#[tokio::test]
async fn a_websocket_that_never_opens_is_closed_with_4408() {
    let server = Server::with_env(&[("MPS_CONNECTION__OPEN_TIMEOUT", "1")]);
    let mut silent = raw_ws(&server.ws()).await;
    assert_eq!(until_close(&mut silent).await, (vec![], 4408));
    counted(&server, &["open_timeout"]).await;
}

#[tokio::test]
async fn a_client_over_its_message_rate_is_closed_with_4429_and_others_carry_on() {
    let server = Server::with_env(&[
        ("MPS_LIMITS__MESSAGE_RATE", "5"),
        ("MPS_LIMITS__MESSAGE_BURST", "5"),
    ]);
    let mut steady = open_ws(&server, "steady").await;
    opened(&mut steady).await;
    let mut flood = open_ws(&server, "flood").await;
    opened(&mut flood).await;
    for seq in 0..50 {
        if flood
            .send(WsMessage::text(format!(r#"{{"Type":5,"Seq":{seq}}}"#)))
            .await
            .is_err()
        {
            break;
        }
    }
    let (frames, code) = until_close(&mut flood).await;
    assert_eq!(code, 4429, "{frames:?}");
    let last = frames.last().expect("an error frame before the close");
    assert_eq!(last["Type"], 9, "{frames:?}");
    assert_eq!(last["Error"]["code"], "rate_limited", "{frames:?}");
    let pongs = frames.iter().filter(|f| f["Type"] == 6).count();
    assert!((5..50).contains(&pongs), "{pongs} pongs: {frames:?}");

    // Under the rate (at most one frame per 300 ms against 5 a second), nothing is refused.
    for seq in 0..8 {
        send_text(&mut steady, format!(r#"{{"Type":5,"Seq":{seq}}}"#)).await;
        let pong = next_json(&mut steady).await;
        assert_eq!(
            (pong["Type"].as_u64(), pong["Seq"].as_u64()),
            (Some(6), Some(seq))
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    counted(&server, &["message_rate"]).await;
}

/// Sends requests until one is refused; fails if none is within `tries`.
async fn until_refused<F, Fut>(tries: usize, mut request: F) -> HttpResponse
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = HttpResponse>,
{
    for _ in 0..tries {
        let answer = request().await;
        if answer.status != 200 {
            return answer;
        }
    }
    panic!("{tries} requests and none was refused");
}

#[tokio::test]
async fn api_requests_are_rate_limited_per_key_with_429_and_retry_after() {
    let server = Server::with_env(&[
        ("MPS_LIMITS__API_RATE", "1"),
        ("MPS_LIMITS__API_BURST", "2"),
        ("MPS_LIMITS__CLIENT_RATE", "1"),
        ("MPS_LIMITS__CLIENT_BURST", "2"),
    ]);
    let answer = until_refused(50, || server.admin("GET", "/api/v1/stats")).await;
    limited(&answer, 429, "rate_limited");

    let alice = format!("Bearer {}", token("alice"));
    let answer = until_refused(50, || {
        server.request("POST", "/api/v1/collect", Some(&alice), Some("{}"))
    })
    .await;
    limited(&answer, 429, "rate_limited");
    // Per key: another user is not held up by alice.
    let bob = format!("Bearer {}", token("bob"));
    let answer = server
        .request("POST", "/api/v1/collect", Some(&bob), Some("{}"))
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    // Logins count too: alice's WebSocket opens are refused with 4429 while she is over.
    let mut refused = false;
    for _ in 0..20 {
        let mut ws = open_ws(&server, "alice").await;
        let (frames, code) = match next_seen(&mut ws).await {
            Seen::Json(answer) if answer["Session"].is_object() => continue,
            Seen::Json(answer) => {
                let (_, code) = until_close(&mut ws).await;
                (vec![answer], code)
            }
            Seen::Closed(code) => (vec![], code),
        };
        assert_eq!(frames[0]["Error"]["code"], "rate_limited", "{frames:?}");
        assert_eq!(code, 4429);
        refused = true;
        break;
    }
    assert!(refused, "alice's opens were never refused");
    counted(&server, &["api_rate", "client_rate"]).await;
}

#[tokio::test]
async fn subscriptions_per_connection_are_limited() {
    let server = Server::with_env(&[
        ("MPS_TOPICS__MAX_SUBSCRIPTIONS", "2"),
        ("MPS_CONNECTION__MAX_COMPONENTS", "2"),
    ]);
    let mut ws = raw_ws(&server.ws()).await;
    let open = serde_json::json!({
        "Type": 1, "Seq": 1,
        "Client": {"topics": ["a/1", "a/2", "a/3"]},
        "Security": {"token": token("alice")},
    });
    send_text(&mut ws, open.to_string()).await;
    refused_open(&mut ws, "invalid_topic", 4400).await;

    let mut ws = raw_ws(&server.ws()).await;
    let open = serde_json::json!({
        "Type": 1, "Seq": 1,
        "Client": {"topics": ["a/1", "a/2"], "componentSet": ["c1", "c2"]},
        "Security": {"token": token("alice")},
    });
    send_text(&mut ws, open.to_string()).await;
    opened(&mut ws).await;
    send_text(
        &mut ws,
        r#"{"Type":8,"Seq":2,"Client":{"componentSet":["c1","c2","c3"]}}"#,
    )
    .await;
    let error = next_json(&mut ws).await;
    assert_eq!(error["Type"], 9, "{error}");
    assert_eq!(error["Error"]["code"], "invalid_client", "{error}");
    assert_eq!(error["Seq"], 2, "{error}");

    let answer = server
        .request(
            "GET",
            &format!("/sse?token={}&topics=a/1,a/2,a/3", token("bob")),
            None,
            None,
        )
        .await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(answer.error_code(), "invalid_topic");
    counted(&server, &["subscriptions"]).await;
}

#[tokio::test]
async fn topic_names_are_limited_in_length_and_depth() {
    let server = Server::with_env(&[
        ("MPS_TOPICS__MAX_LENGTH", "16"),
        ("MPS_TOPICS__MAX_DEPTH", "3"),
    ]);
    for topic in ["a/b/c/d", "abcdefghijklmnopq"] {
        let body = format!(r#"{{"content":1,"topic":"{topic}","type":0}}"#);
        let answer = server.admin_post("/api/v1/messages", &body).await;
        assert_eq!(answer.status, 400, "{topic}: {answer:?}");
        assert_eq!(answer.error_code(), "invalid_topic");
    }
    let answer = server
        .request(
            "GET",
            &format!("/poll?token={}&timeout=0&topics=a/%2B/c/%23", token("bob")),
            None,
            None,
        )
        .await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(answer.error_code(), "invalid_topic");
    assert_eq!(
        server
            .admin_post(
                "/api/v1/messages",
                r#"{"content":1,"topic":"a/b/c","type":0}"#
            )
            .await
            .status,
        201
    );
    counted(&server, &["topic_length", "topic_depth"]).await;
}
