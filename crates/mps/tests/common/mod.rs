//! Starts the real `mps` binary on an ephemeral port with a temporary data directory, as a user
//! would, and gives tests its addresses and clients.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mps_client::proto::{ClientInfo, SendMessage};
use mps_client::{Api, PushClient};
use serde_json::value::RawValue;

pub const ADMIN_KEY: &str = "test-admin-key";
pub const JWT_SECRET: &str = "test-jwt-secret";
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Server {
    child: Child,
    /// The client listener (`https://` when TLS is on).
    pub addr: String,
    /// The admin listener, when `admin_listen` is set.
    pub admin_addr: Option<String>,
    pub data: tempfile::TempDir,
    env: Vec<(String, String)>,
    args: Vec<String>,
    /// Where the server's stderr goes (`with_log`), else the test's own stderr.
    log: Option<std::path::PathBuf>,
}

impl Server {
    pub fn start() -> Server {
        Server::with_env(&[])
    }

    /// Starts with extra `MPS_*` variables (`("MPS_CONNECTION__QUEUE", "4")`).
    pub fn with_env(env: &[(&str, &str)]) -> Server {
        Server::with_data(tempfile::tempdir().expect("temp dir"), env)
    }

    /// Starts with its data directory in `data` (on a small file system, say) and extra `MPS_*`
    /// variables.
    pub fn with_data(data: tempfile::TempDir, env: &[(&str, &str)]) -> Server {
        let env: Vec<_> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, addr, admin_addr) = spawn(data.path(), &env, &[], "127.0.0.1:0", None);
        Server {
            child,
            addr,
            admin_addr,
            data,
            env,
            args: Vec::new(),
            log: None,
        }
    }

    /// Starts with extra `MPS_*` variables, its log (stderr) written to a file that
    /// [`Server::log`] reads.
    pub fn with_log(env: &[(&str, &str)]) -> Server {
        let data = tempfile::tempdir().expect("temp dir");
        let env: Vec<_> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let log = data.path().join("server.log");
        let (child, addr, admin_addr) = spawn(data.path(), &env, &[], "127.0.0.1:0", Some(&log));
        Server {
            child,
            addr,
            admin_addr,
            data,
            env,
            args: Vec::new(),
            log: Some(log),
        }
    }

    /// What the server has logged so far (started `with_log`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.as_ref().expect("started with_log")).expect("read log")
    }

    /// Starts with a TOML configuration file (`--config`) and extra `MPS_*` variables, its log
    /// (stderr) written to a file that [`Server::log`] reads.
    pub fn with_config_and_log(toml: &str, env: &[(&str, &str)]) -> Server {
        let data = tempfile::tempdir().expect("temp dir");
        let file = data.path().join("mps.toml");
        std::fs::write(&file, toml).expect("write config");
        let env: Vec<_> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let args = vec!["--config".to_owned(), file.display().to_string()];
        let log = data.path().join("server.log");
        let (child, addr, admin_addr) = spawn(data.path(), &env, &args, "127.0.0.1:0", Some(&log));
        Server {
            child,
            addr,
            admin_addr,
            data,
            env,
            args,
            log: Some(log),
        }
    }

    /// Starts with a TOML configuration file (`--config`) and extra `MPS_*` variables.
    pub fn with_config(toml: &str, env: &[(&str, &str)]) -> Server {
        let data = tempfile::tempdir().expect("temp dir");
        let file = data.path().join("mps.toml");
        std::fs::write(&file, toml).expect("write config");
        let env: Vec<_> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let args = vec!["--config".to_owned(), file.display().to_string()];
        let (child, addr, admin_addr) = spawn(data.path(), &env, &args, "127.0.0.1:0", None);
        Server {
            child,
            addr,
            admin_addr,
            data,
            env,
            args,
            log: None,
        }
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The back end's API client: on the admin listener when there is one.
    pub fn api(&self) -> Api {
        match &self.admin_addr {
            Some(admin) => Api::new(&format!("http://{admin}"), ADMIN_KEY),
            None => Api::new(&self.http(), ADMIN_KEY),
        }
    }

    /// `kill -9`, then start again on the same port and data directory.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.restart();
    }

    /// `kill -9`, and wait for the process to be gone.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    /// Starts the (killed or stopped) server again on the same port and data directory.
    pub fn restart(&mut self) {
        let (child, addr, admin_addr) = spawn(
            self.data.path(),
            &self.env,
            &self.args,
            &self.addr,
            self.log.as_deref(),
        );
        self.child = child;
        self.addr = addr;
        self.admin_addr = admin_addr;
    }

    /// Sends `signal` (`"HUP"`) to the server.
    pub fn signal(&self, signal: &str) {
        unsafe_kill(self.child.id(), signal);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        unsafe_kill(self.child.id(), "TERM");
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }

    pub async fn token(&self, user: &str) -> String {
        self.api().token(user).await.expect("token").token
    }

    /// Opens a Message Push Protocol session as `user` with `agent` and components.
    pub async fn connect(&self, user: &str, agent: &str, components: &[&str]) -> PushClient {
        let token = self.token(user).await;
        PushClient::open(&self.ws(), &token, client_info(user, agent, components))
            .await
            .expect("open session")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

fn spawn(
    data: &std::path::Path,
    env: &[(String, String)],
    args: &[String],
    listen: &str,
    log: Option<&std::path::Path>,
) -> (Child, String, Option<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mps"));
    command
        .args(["serve", "--listen", listen, "--admin-key", ADMIN_KEY])
        .args(args)
        .args(["--jwt-secret", JWT_SECRET, "--data-dir"])
        .arg(data)
        .env("RUST_LOG", "warn")
        // Exact resume sets; the overlap has its own test and may be set through `env`.
        .env("MPS_TOPICS__RESUME_OVERLAP_MS", "0")
        .stdout(Stdio::piped())
        .stderr(match log {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("open the server log"),
            ),
            None => Stdio::inherit(),
        });
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("spawn mps");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    // The admin listener, when there is one, is announced before the client listener.
    let mut admin_addr = None;
    let addr = loop {
        let line = lines
            .next()
            .expect("mps exited before listening")
            .expect("read stdout");
        if let Some(rest) = line.strip_prefix("mps admin listening on http://") {
            admin_addr = Some(rest.trim().to_owned());
        }
        if let Some(rest) = line
            .strip_prefix("mps listening on http://")
            .or_else(|| line.strip_prefix("mps listening on https://"))
        {
            break rest.trim().to_owned();
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr, admin_addr)
}

pub fn client_info(user: &str, agent: &str, components: &[&str]) -> ClientInfo {
    ClientInfo {
        agent: Some(agent.into()),
        user: Some(user.into()),
        way: Some("websocket".into()),
        component_set: Some(components.iter().map(|c| c.to_string()).collect()),
        ..ClientInfo::default()
    }
}

/// A send request with JSON content.
pub fn message(content: &str, receiver: Option<&[&str]>) -> SendMessage {
    SendMessage {
        content: RawValue::from_string(content.to_owned()).expect("json"),
        receiver: receiver.map(|r| r.iter().map(|s| s.to_string()).collect()),
        title: Some("title".into()),
        kind: 0,
        component: None,
        topic: None,
        agents: None,
        ttl: None,
        sender: Some("tests".into()),
        app: None,
        id: None,
        push: None,
        channels: None,
        audience: None,
        live: false,
        formats: None,
    }
}

/// A send request to `topic` with JSON content.
pub fn topic_message(topic: &str, content: &str) -> SendMessage {
    SendMessage {
        topic: Some(topic.into()),
        ..message(content, None)
    }
}

impl Server {
    /// Publishes `content` to `topic`; returns the message id.
    pub async fn publish(&self, topic: &str, content: &str) -> String {
        let sent = self
            .api()
            .send(&topic_message(topic, content))
            .await
            .expect("publish to topic");
        assert_eq!(sent.class, mps_client::proto::DeliveryClass::Topic);
        sent.id
    }

    /// A token whose `topics` claim lists `topics`.
    pub async fn topic_token(&self, user: &str, topics: &[&str]) -> String {
        self.api()
            .token_with(&mps_client::proto::TokenRequest {
                user: user.to_owned(),
                app: None,
                ttl: None,
                topics: Some(topics.iter().map(|t| t.to_string()).collect()),
            })
            .await
            .expect("token")
            .token
    }

    /// Opens a session as `user` subscribed to topic `patterns`, resuming after `last_id`.
    pub async fn connect_topics(
        &self,
        user: &str,
        patterns: &[&str],
        last_id: Option<&str>,
    ) -> PushClient {
        let token = self.token(user).await;
        let client = ClientInfo {
            topics: Some(patterns.iter().map(|p| p.to_string()).collect()),
            last_id: last_id.map(str::to_owned),
            ..client_info(user, "bs", &[])
        };
        PushClient::open(&self.ws(), &token, client)
            .await
            .expect("open session")
    }

    /// Opens `GET /sse?{query}` with extra request headers.
    pub async fn sse(
        &self,
        query: &str,
        headers: &[(&str, &str)],
    ) -> mps_client::Result<mps_client::Sse> {
        mps_client::Sse::connect(&format!("{}/sse?{query}", self.http()), headers).await
    }
}

/// The `Message` ids of a list of pushed messages.
pub fn ids_of(messages: &[mps_client::proto::PushedMessage]) -> Vec<String> {
    messages.iter().map(|m| m.id.clone()).collect()
}

// ---- Helpers for raw WebSocket, HTTP and polling, shared by the integration tests. ----

pub type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Polls `check` until it returns true, failing after `WAIT`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The exact open frame a browser sends, as raw text.
pub fn open_text(token: &str, user: &str, agent: &str, components: &[&str]) -> String {
    serde_json::json!({
        "Type": 1,
        "Seq": 231,
        "Version": 1,
        "Client": {"agent": agent, "user": user, "way": "websocket", "componentSet": components},
        "Security": {"token": token},
    })
    .to_string()
}

/// A WebSocket to `url` with no session opened.
pub async fn raw_ws(url: &str) -> RawWs {
    tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connect")
        .0
}

/// What a raw WebSocket saw next.
#[derive(Debug)]
pub enum Seen {
    Json(serde_json::Value),
    /// Close code (1006 when the stream ended without a close frame).
    Closed(u16),
}

/// The next text frame (as JSON) or the close, skipping pings and pongs; fails after `WAIT`.
pub async fn next_seen(ws: &mut RawWs) -> Seen {
    use futures_util::StreamExt;
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Text(text))) => {
                    return Seen::Json(serde_json::from_str(text.as_str()).expect("json frame"));
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    return Seen::Closed(frame.map(|f| f.code.into()).unwrap_or(1005));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Seen::Closed(1006),
            }
        }
    })
    .await
    .expect("nothing from the server in time")
}

/// The next text frame as JSON; panics on a close.
pub async fn next_json(ws: &mut RawWs) -> serde_json::Value {
    match next_seen(ws).await {
        Seen::Json(value) => value,
        Seen::Closed(code) => panic!("closed with {code} while a frame was expected"),
    }
}

/// Reads until the close; returns the frames seen before it and the close code.
pub async fn until_close(ws: &mut RawWs) -> (Vec<serde_json::Value>, u16) {
    let mut frames = Vec::new();
    loop {
        match next_seen(ws).await {
            Seen::Json(value) => frames.push(value),
            Seen::Closed(code) => return (frames, code),
        }
    }
}

pub async fn send_text(ws: &mut RawWs, text: impl Into<String>) {
    use futures_util::SinkExt;
    ws.send(WsMessage::text(text.into())).await.expect("send");
}

impl Server {
    /// A raw WebSocket on `/ws` with a session opened by the browser's open frame; the open
    /// answer has been read.
    pub async fn open_raw(&self, user: &str, agent: &str, components: &[&str]) -> RawWs {
        let token = self.token(user).await;
        let mut ws = raw_ws(&self.ws()).await;
        send_text(&mut ws, open_text(&token, user, agent, components)).await;
        let answer = next_json(&mut ws).await;
        assert_eq!(answer["Type"], 2, "open answer: {answer}");
        assert!(answer["Session"]["id"].is_string(), "open answer: {answer}");
        ws
    }

    /// A GET with the headers of a WebSocket upgrade, written by hand, so that a refusal is
    /// seen exactly as the server answers it.
    pub async fn upgrade_request(&self, path: &str) -> HttpResponse {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            self.addr
        );
        raw_http(&self.addr, &request).await
    }

    /// `GET /metrics` text.
    pub async fn metrics(&self) -> String {
        let response = self.request("GET", "/metrics", None, None).await;
        assert_eq!(response.status, 200);
        response.body
    }

    /// One plain HTTP/1.1 request (`auth` is the whole `Authorization` value); no client
    /// library in between, so tests see exactly what the server answers.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<&str>,
    ) -> HttpResponse {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        if let Some(auth) = auth {
            head.push_str(&format!("Authorization: {auth}\r\n"));
        }
        let body = body.unwrap_or("");
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        raw_http(&self.addr, &format!("{head}\r\n{body}")).await
    }

    /// A JSON `POST` with the admin key.
    pub async fn admin_post(&self, path: &str, body: &str) -> HttpResponse {
        self.request(
            "POST",
            path,
            Some(&format!("Bearer {ADMIN_KEY}")),
            Some(body),
        )
        .await
    }

    /// `request` with the admin key.
    pub async fn admin(&self, method: &str, path: &str) -> HttpResponse {
        self.request(method, path, Some(&format!("Bearer {ADMIN_KEY}")), None)
            .await
    }

    /// Connection ids of the online clients of `user`.
    pub async fn client_ids(&self, user: &str) -> Vec<String> {
        self.api()
            .clients()
            .await
            .expect("clients")
            .into_iter()
            .filter(|c| c.user == user)
            .map(|c| c.id)
            .collect()
    }

    /// Waits until `user` has exactly `count` connections listed.
    pub async fn wait_clients(&self, user: &str, count: usize) {
        eventually(&format!("{user} to have {count} connections"), || async {
            self.client_ids(user).await.len() == count
        })
        .await;
    }
}

/// Sums the samples of metric `name` whose labels contain every one of `labels`
/// (`limit="body_size"`), in a `/metrics` text.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A client token signed with `secret` for `user`, expiring at `exp` (Unix seconds).
pub fn signed_token(secret: &str, user: &str, exp: i64) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": user, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign token")
}

/// Sends a broadcast marker; returns its id. A connection that skipped the message before it
/// sees the marker as its next push, so "did not get it" needs no sleep.
pub async fn marker(server: &Server, name: &str) -> String {
    let result = server
        .api()
        .send(&message(&format!(r#"{{"marker":"{name}"}}"#), None))
        .await
        .unwrap();
    assert_eq!(result.class, mps_client::proto::DeliveryClass::Broadcast);
    result.id
}

/// The id of the next push of `client`.
pub async fn next_id(client: &mut PushClient) -> String {
    client.next_push(WAIT).await.unwrap().id
}

/// A header of a request to a receiver in the test, empty when absent.
pub fn header(headers: &axum::http::HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Checks a channel or webhook request the way docs/webhooks.md tells back ends to: a JSON body
/// signed with `secret` over `timestamp.body`, at most five minutes old.
pub fn signed_request(secret: &str, headers: &axum::http::HeaderMap, body: &[u8]) -> bool {
    use hmac::{Hmac, Mac};
    let timestamp = header(headers, "x-mps-timestamp");
    let signature = header(headers, "x-mps-signature");
    let fresh = timestamp
        .parse::<i64>()
        .is_ok_and(|t| (unix_now() - t).abs() <= 300);
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let signed = signature
        .strip_prefix("sha256=")
        .and_then(|hex| hex::decode(hex).ok())
        .is_some_and(|sig| mac.verify_slice(&sig).is_ok());
    fresh && signed && header(headers, "content-type") == "application/json"
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// The code of a `mps_client::Error::Refused`, with its HTTP status.
pub fn refused(error: mps_client::Error) -> (u16, String) {
    match error {
        mps_client::Error::Refused { status, error } => (status, error.code),
        other => panic!("expected a refusal, got {other}"),
    }
}

/// An HTTP answer: status, lower-cased headers and the (de-chunked) body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The body as an API error `{"error":{"code","message"}}`; returns the code.
    pub fn error_code(&self) -> String {
        let body: mps_client::proto::ErrorResponse = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not an error body ({e}): {}", self.body));
        assert!(!body.error.message.is_empty(), "{}", self.body);
        body.error.code
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Writes `request` as is to `addr` and reads one answer: up to its `Content-Length`, else until
/// the server closes.
pub async fn raw_http(addr: &str, request: &str) -> HttpResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let read = async {
        let mut buf = [0u8; 8192];
        loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if length.is_some_and(|length| raw.len() >= end + 4 + length) {
                    break;
                }
            }
            let n = stream.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("answer in time");
    let text = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
            if size == 0 {
                break;
            }
            out.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}
