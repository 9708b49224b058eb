//! The network edge: TLS on the client listener (`https://`, `wss://`, a certificate reloaded on
//! SIGHUP), the browser origin allow-list and CORS, the admin listener, and secrets kept out of
//! the logs.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

// ---- TLS ----

/// A self-signed certificate for 127.0.0.1 written as `cert.pem` and `key.pem` into `dir`
/// (replacing what is there); returns it.
fn certificate(dir: &Path) -> CertificateDer<'static> {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("self-signed certificate");
    std::fs::write(dir.join("cert.pem"), made.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), made.signing_key.serialize_pem()).unwrap();
    made.cert.der().clone()
}

/// A server with TLS on the client listener (the files of `dir`) and the admin routes on a
/// plain listener of their own, logging to a file, with extra `MPS_*` variables.
fn tls_server(dir: &Path, env: &[(&str, &str)]) -> Server {
    let cert = dir.join("cert.pem").display().to_string();
    let key = dir.join("key.pem").display().to_string();
    let mut all = vec![
        ("MPS_TLS__CERT", cert.as_str()),
        ("MPS_TLS__KEY", key.as_str()),
        ("MPS_ADMIN_LISTEN", "127.0.0.1:0"),
        ("RUST_LOG", "info"),
    ];
    all.extend_from_slice(env);
    Server::with_log(&all)
}

/// `GET /metrics` of the admin listener.
async fn admin_metrics(server: &Server) -> String {
    let admin = server.admin_addr.as_deref().expect("an admin listener");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    raw_http(admin, &request).await.body
}

/// A TLS connection to `addr` trusting only `trusted`, with no session kept from earlier ones.
async fn tls_connect(addr: &str, trusted: &[CertificateDer<'static>]) -> TlsStream<TcpStream> {
    let mut roots = RootCertStore::empty();
    for cert in trusted {
        roots.add(cert.clone()).expect("a trust anchor");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1".to_owned()).unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

/// `GET path` over TLS: the whole answer as text, and the certificate the server showed.
async fn https_get(
    addr: &str,
    trusted: &[CertificateDer<'static>],
    path: &str,
) -> (String, CertificateDer<'static>) {
    let mut tls = tls_connect(addr, trusted).await;
    let served = tls.get_ref().1.peer_certificates().expect("a certificate")[0].clone();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    (String::from_utf8(read_all(&mut tls).await).unwrap(), served)
}

/// Everything `stream` sends until it closes (or fails), within `WAIT`.
async fn read_all(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(WAIT, async {
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    answer
}

/// The next text frame of a WebSocket over TLS, as JSON.
async fn next_tls_json(
    ws: &mut tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>,
) -> serde_json::Value {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("a frame");
        if let WsMessage::Text(text) = frame {
            return serde_json::from_str(text.as_str()).expect("JSON");
        }
    }
}

#[tokio::test]
async fn tls_serves_https_and_wss_and_refuses_plain_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let cert = certificate(dir.path());
    let server = tls_server(dir.path(), &[]);

    let (answer, served) = https_get(&server.addr, std::slice::from_ref(&cert), "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    assert_eq!(served, cert);

    // Tokens come with the wss:// URL; a WebSocket over TLS opens a session and receives a
    // message.
    let issued = server.api().token("alice").await.unwrap();
    assert_eq!(issued.urls["default"], format!("wss://{}/ws", server.addr));
    let token = issued.token;
    let tls = tls_connect(&server.addr, std::slice::from_ref(&cert)).await;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://{}/ws", server.addr), tls)
        .await
        .expect("WebSocket over TLS");
    let open = open_text(&token, "alice", "bs", &[]);
    ws.send(WsMessage::text(open)).await.unwrap();
    assert_eq!(next_tls_json(&mut ws).await["Type"], 2);
    server
        .api()
        .send(&message(r#"{"over":"tls"}"#, Some(&["alice"])))
        .await
        .unwrap();
    let pushed = next_tls_json(&mut ws).await;
    assert_eq!(pushed["Type"], 3, "{pushed}");
    assert!(pushed.to_string().contains(r#""over":"tls""#), "{pushed}");

    // Plain HTTP on the TLS port gets no HTTP answer, and the server goes on.
    let mut plain = TcpStream::connect(&server.addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_all(&mut plain).await;
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
    let (answer, _) = https_get(&server.addr, std::slice::from_ref(&cert), "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    eventually("the failed handshake counted", || async {
        let metrics = admin_metrics(&server).await;
        metric(
            &metrics,
            "mps_tls_handshake_failures_total",
            &["reason=\"error\""],
        ) >= 1.0
    })
    .await;
    assert!(server.log().contains("TLS handshake failed"));
    assert!(
        server
            .api()
            .clients()
            .await
            .unwrap()
            .iter()
            .any(|c| c.user == "alice")
    );
}

/// A connection that never starts its handshake is closed after `limits.request_timeout`.
#[tokio::test]
async fn a_silent_tls_client_is_cut_off_after_the_request_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let cert = certificate(dir.path());
    let server = tls_server(dir.path(), &[("MPS_LIMITS__REQUEST_TIMEOUT", "1")]);
    let before = admin_metrics(&server).await;
    assert_eq!(
        metric(
            &before,
            "mps_tls_handshake_failures_total",
            &["reason=\"timeout\""]
        ),
        0.0,
        "the series is there from the start: {before}"
    );
    let mut silent = TcpStream::connect(&server.addr).await.unwrap();
    let started = std::time::Instant::now();
    assert!(read_all(&mut silent).await.is_empty());
    assert!(
        started.elapsed() < WAIT,
        "closed by the server, not the test's wait"
    );
    eventually("the timeout counted", || async {
        let metrics = admin_metrics(&server).await;
        metric(
            &metrics,
            "mps_tls_handshake_failures_total",
            &["reason=\"timeout\""],
        ) == 1.0
    })
    .await;
    let (answer, _) = https_get(&server.addr, std::slice::from_ref(&cert), "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_keeps_it_when_the_new_one_is_bad() {
    let dir = tempfile::tempdir().unwrap();
    let first = certificate(dir.path());
    let server = tls_server(dir.path(), &[]);
    let (_, served) = https_get(&server.addr, std::slice::from_ref(&first), "/healthz").await;
    assert_eq!(served, first);

    let second = certificate(dir.path());
    assert_ne!(first, second);
    let both = [first.clone(), second.clone()];
    // An open connection keeps its certificate; new ones get the new one.
    let kept = tls_connect(&server.addr, &both).await;
    server.signal("HUP");
    eventually("the new certificate served", || async {
        https_get(&server.addr, &both, "/healthz").await.1 == second
    })
    .await;
    assert_eq!(kept.get_ref().1.peer_certificates().unwrap()[0], first);

    // A file that does not load: logged, and the certificate in use stays.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    server.signal("HUP");
    eventually("the failed reload logged", || async {
        server.log().contains("did not load")
    })
    .await;
    let (answer, served) = https_get(&server.addr, &both, "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(served, second);
}

// ---- Browser origins ----

const ALLOWED: &str = "https://app.example";
const OTHER: &str = "https://evil.example";

/// One request written by hand with extra headers.
async fn call(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" {
        head.push_str("Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
    } else {
        head.push_str("\r\n");
    }
    raw_http(addr, &head).await
}

/// The preflight of a page of `origin` before it posts an ack.
async fn preflight(addr: &str, origin: &str) -> HttpResponse {
    call(
        addr,
        "OPTIONS",
        "/api/v1/ack",
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization, content-type",
            ),
        ],
    )
    .await
}

const UPGRADE: [(&str, &str); 4] = [
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

#[tokio::test]
async fn origins_off_the_list_are_refused_and_listed_ones_get_cors() {
    let origins = format!(r#"["{ALLOWED}"]"#);
    let server = Server::with_env(&[("MPS_HTTP__ALLOWED_ORIGINS", &origins)]);
    let token = server.token("alice").await;
    let bearer = format!("Bearer {token}");
    let poll = "/poll?timeout=0";

    // An allowed origin: served, with CORS.
    let answer = call(
        &server.addr,
        "GET",
        poll,
        &[("Origin", ALLOWED), ("Authorization", &bearer)],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("access-control-allow-origin"), Some(ALLOWED));
    assert!(answer.header("vary").unwrap().contains("origin"));
    let mut request = server.ws().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", ALLOWED.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    send_text(&mut ws, open_text(&token, "alice", "bs", &[])).await;
    assert_eq!(next_json(&mut ws).await["Type"], 2);

    // No Origin (not a browser): served as before, without CORS.
    let answer = call(&server.addr, "GET", poll, &[("Authorization", &bearer)]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("access-control-allow-origin"), None);

    // Another origin: 403 on the WebSocket upgrades, SSE, polls and the SDK's calls.
    let refused = [
        call(
            &server.addr,
            "GET",
            "/ws",
            &[&UPGRADE[..], &[("Origin", OTHER)]].concat(),
        )
        .await,
        call(
            &server.addr,
            "GET",
            &format!("/websocket/{token}"),
            &[&UPGRADE[..], &[("Origin", OTHER)]].concat(),
        )
        .await,
        call(
            &server.addr,
            "GET",
            &format!("/sse?token={token}"),
            &[("Origin", OTHER)],
        )
        .await,
        call(
            &server.addr,
            "GET",
            poll,
            &[("Origin", OTHER), ("Authorization", &bearer)],
        )
        .await,
        call(
            &server.addr,
            "POST",
            "/api/v1/ack",
            &[("Origin", OTHER), ("Authorization", &bearer)],
        )
        .await,
    ];
    for answer in &refused {
        assert_eq!(answer.status, 403, "{answer:?}");
        assert_eq!(answer.error_code(), "origin_not_allowed");
        assert_eq!(answer.header("access-control-allow-origin"), None);
    }

    // Preflights: answered for the allowed origin, refused for another.
    let answer = preflight(&server.addr, ALLOWED).await;
    assert_eq!(answer.status, 204, "{answer:?}");
    assert_eq!(answer.header("access-control-allow-origin"), Some(ALLOWED));
    assert!(
        answer
            .header("access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );
    let allowed_headers = answer.header("access-control-allow-headers").unwrap();
    assert!(allowed_headers.contains("authorization") && allowed_headers.contains("content-type"));
    assert_eq!(preflight(&server.addr, OTHER).await.status, 403);

    // Routes that are not the browser's ignore Origin.
    let answer = call(&server.addr, "GET", "/healthz", &[("Origin", OTHER)]).await;
    assert_eq!(answer.status, 200);
    let admin = format!("Bearer {ADMIN_KEY}");
    let answer = call(
        &server.addr,
        "GET",
        "/api/v1/clients",
        &[("Origin", OTHER), ("Authorization", &admin)],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    let metrics = server.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "mps_limit_rejections_total",
            &["limit=\"origin\""]
        ),
        6.0,
        "five refusals and a refused preflight"
    );
}

#[tokio::test]
async fn without_an_allow_list_every_origin_passes_without_cors() {
    let server = Server::start();
    let token = server.token("bob").await;
    let answer = call(
        &server.addr,
        "GET",
        "/poll?timeout=0",
        &[
            ("Origin", OTHER),
            ("Authorization", &format!("Bearer {token}")),
        ],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("access-control-allow-origin"), None);
}

// ---- The admin listener ----

/// Admin routes, each with the answer it gives on the listener that serves it.
const ADMIN_ROUTES: [(&str, &str, u16); 6] = [
    ("GET", "/metrics", 200),
    ("GET", "/api/openapi.json", 200),
    ("GET", "/console/", 200),
    ("GET", "/api/v1/clients", 200),
    ("GET", "/api/v1/stats", 200),
    ("POST", "/api/v1/messages", 400),
];

#[tokio::test]
async fn admin_routes_are_only_on_the_admin_listener_when_it_is_set() {
    let server = Server::with_env(&[("MPS_ADMIN_LISTEN", "127.0.0.1:0")]);
    let admin = server
        .admin_addr
        .clone()
        .expect("the admin listener announced");
    assert_ne!(admin, server.addr);
    let key = format!("Bearer {ADMIN_KEY}");
    for (method, path, status) in ADMIN_ROUTES {
        let on_client = call(&server.addr, method, path, &[("Authorization", &key)]).await;
        assert_eq!(
            on_client.status, 404,
            "{method} {path} on the client listener"
        );
        assert_eq!(on_client.error_code(), "not_found");
        let on_admin = call(&admin, method, path, &[("Authorization", &key)]).await;
        assert_eq!(
            on_admin.status, status,
            "{method} {path}: {}",
            on_admin.body
        );
    }
    // Health checks on both; clients on the client listener only.
    for addr in [&server.addr, &admin] {
        assert_eq!(call(addr, "GET", "/healthz", &[]).await.status, 200);
    }
    assert_eq!(call(&admin, "GET", "/sse", &[]).await.status, 404);

    // A message sent on the admin listener reaches a client of the client listener.
    let mut alice = server.connect("alice", "bs", &[]).await;
    let sent = server
        .api()
        .send(&message("1", Some(&["alice"])))
        .await
        .unwrap();
    assert_eq!(alice.next_push(WAIT).await.unwrap().id, sent.id);
}

#[tokio::test]
async fn without_an_admin_listener_one_listener_serves_everything() {
    let server = Server::start();
    assert_eq!(server.admin_addr, None);
    let key = format!("Bearer {ADMIN_KEY}");
    for (method, path, status) in ADMIN_ROUTES {
        let answer = call(&server.addr, method, path, &[("Authorization", &key)]).await;
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.body);
    }
}

// ---- Secrets ----

const WEBHOOK_SECRET: &str = "whsec-do-not-log-3f9a1c";

/// With every log on (`trace`, JSON), requests carrying the admin key, client tokens (headers,
/// query and path), a configured webhook secret and an APNs key that signs provider tokens for
/// a push leave none of them in the log.
#[tokio::test]
async fn secrets_never_reach_the_logs() {
    let apns = mps_standins::ApnsStandIn::start().await;
    let server = Server::with_config_and_log(
        &format!(
            r#"
[log]
format = "json"

[[webhooks]]
url = "http://127.0.0.1:1/hook"
secret = "{WEBHOOK_SECRET}"
attempts = 1

[push.apps.default.apns]
key_file = "{key_file}"
key_id = "{key_id}"
team_id = "{team_id}"
topic = "{topic}"
endpoint = "{endpoint}"
ca_file = "{ca_file}"
"#,
            key_file = apns.key_file().display(),
            key_id = mps_standins::ApnsStandIn::KEY_ID,
            team_id = mps_standins::ApnsStandIn::TEAM_ID,
            topic = mps_standins::ApnsStandIn::TOPIC,
            endpoint = apns.endpoint(),
            ca_file = apns.ca_file().display(),
        ),
        &[("RUST_LOG", "trace")],
    );
    let token = server.token("alice").await;
    let key = format!("Bearer {ADMIN_KEY}");
    let bearer = format!("Bearer {token}");
    let addr = server.addr.clone();

    assert_eq!(
        call(&addr, "GET", "/api/v1/clients", &[("Authorization", &key)])
            .await
            .status,
        200
    );
    let wrong = call(
        &addr,
        "GET",
        "/api/v1/clients",
        &[("Authorization", "Bearer a-wrong-key-9d2e")],
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(
        call(
            &addr,
            "POST",
            "/api/v1/collect",
            &[("Authorization", &bearer)]
        )
        .await
        .status,
        200
    );
    let polled = call(&addr, "GET", &format!("/poll?token={token}&timeout=0"), &[]).await;
    assert_eq!(polled.status, 200, "{}", polled.body);
    let mut events = server.sse(&format!("token={token}"), &[]).await.unwrap();
    drop(events.next_block(WAIT).await);
    drop(events);

    let mut ws = raw_ws(&format!("ws://{addr}/ws?token={token}")).await;
    send_text(&mut ws, open_text(&token, "alice", "bs", &[])).await;
    assert_eq!(next_json(&mut ws).await["Type"], 2);
    let mut simple = raw_ws(&format!("ws://{addr}/websocket/{token}")).await;
    server
        .api()
        .send(&message("1", Some(&["alice"])))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["Type"], 3);
    assert_eq!(next_json(&mut simple).await["Type"], 3);
    // An offline user with an iPhone: the message is pushed through APNs with a signed
    // provider token.
    let bob = format!("Bearer {}", server.token("bob").await);
    let device = r#"{"device": "iphone", "way": "apns", "token": "5a1f3c0e9b7d4a2e8f6c1b3d5e7f9a0b2c4d6e8f0a1b3c5d7e9f1a3b5c7d9e0f"}"#;
    let created = server
        .request("POST", "/api/v1/devices", Some(&bob), Some(device))
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    server
        .api()
        .send(&message(r#"{"text":"hi"}"#, Some(&["bob"])))
        .await
        .unwrap();
    eventually("the push at APNs", || async { apns.accepted().len() == 1 }).await;
    send_text(&mut ws, r#"{"Type":7,"Seq":9}"#).await;
    let _ = until_close(&mut ws).await;
    drop(simple);
    eventually("both sessions logged closed", || async {
        server.log().matches("client disconnected").count() >= 2
    })
    .await;

    let log = server.log();
    assert!(
        log.contains("/websocket/{token}"),
        "the pattern stands for the path"
    );
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "every log on"
    );
    let signature = token.rsplit('.').next().unwrap();
    let provider_tokens = apns.provider_tokens();
    assert!(!provider_tokens.is_empty());
    let apns_key = std::fs::read_to_string(apns.key_file()).unwrap();
    let apns_key_body = apns_key
        .lines()
        .find(|l| !l.starts_with("-----"))
        .expect("a PEM body line");
    for (what, secret) in [
        ("the admin key", ADMIN_KEY),
        ("the JWT secret", JWT_SECRET),
        ("a wrong admin key", "a-wrong-key-9d2e"),
        ("the client token", token.as_str()),
        ("the token's signature", signature),
        ("the webhook secret", WEBHOOK_SECRET),
        ("the APNs key", apns_key_body),
        ("an APNs provider token", provider_tokens[0].as_str()),
        (
            "an APNs provider token's signature",
            provider_tokens[0].rsplit('.').next().unwrap(),
        ),
    ] {
        if let Some(line) = log.lines().find(|l| l.contains(secret)) {
            panic!("{what} is in the log: {line}");
        }
    }
}
