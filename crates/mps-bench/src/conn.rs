//! Connections to the server under test: TCP sockets spread over source addresses, WebSocket
//! subscribers (mps: `/ws` and the open frame; Nchan: `/sub/CHANNEL`), Server-Sent Events
//! subscribers, client tokens, and publishing over HTTP.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use mps_client::proto::{ClientInfo, Frame, PROTOCOL_VERSION, Security, frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::stats::Histogram;
use crate::{Common, Target, Transport};

/// How long one connection (TCP, upgrade and open) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// What a run shares: where the server is, how to reach it, credentials.
pub struct Ctx {
    pub target: Target,
    /// `host:port`, for `Host` headers and URLs.
    pub authority: String,
    /// `http://host:port`.
    pub base: String,
    pub server: SocketAddr,
    /// Where subscribers connect: subscriber `index` to `nodes[index % nodes.len()]` (one node
    /// unless several `--url`s were given). Publishing and API calls go to the first.
    pub nodes: Vec<Node>,
    sources: Vec<IpAddr>,
    pub admin_key: String,
    jwt_secret: Option<String>,
    api: mps_client::Api,
    connecting: Semaphore,
    ws_config: WebSocketConfig,
    pub http: reqwest::Client,
    /// Time from starting a connection (once a connecting slot is free) to subscribed.
    pub connect_latency: Histogram,
}

/// What a subscriber subscribes to.
#[derive(Clone, Debug, Default)]
pub struct Subscription {
    /// mps components (`componentSet`, `components=`).
    pub components: Vec<String>,
    /// mps topic patterns (`topics`).
    pub topics: Vec<String>,
    /// Nchan channel id.
    pub channel: String,
}

/// One server subscribers connect to (a node, with several `--url`s).
pub struct Node {
    /// `host:port`, for `Host` headers and URLs.
    pub authority: String,
    pub server: SocketAddr,
}

impl Node {
    /// Parses and resolves `url` (`http://host:port`), which must be on loopback.
    async fn resolve(url: &str) -> anyhow::Result<Node> {
        let authority = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("--url must be http://host:port"))?
            .trim_end_matches('/')
            .to_owned();
        let server = tokio::net::lookup_host(&authority)
            .await
            .with_context(|| format!("resolving {authority}"))?
            .next()
            .ok_or_else(|| anyhow!("{authority} resolves to nothing"))?;
        if !server.ip().is_loopback() {
            bail!("only loopback servers may be targeted, not {}", server.ip());
        }
        Ok(Node { authority, server })
    }
}

impl Ctx {
    pub async fn new(common: &Common) -> anyhow::Result<Ctx> {
        let mut nodes = Vec::with_capacity(common.urls.len());
        for url in &common.urls {
            nodes.push(Node::resolve(url).await?);
        }
        let Some(first) = nodes.first() else {
            bail!("no --url");
        };
        let (authority, server) = (first.authority.clone(), first.server);
        let sources = match server.ip() {
            IpAddr::V4(_) if nodes.iter().all(|n| n.server.is_ipv4()) => (0..common.source_addrs)
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2u8.saturating_add(i))))
                .collect(),
            _ => Vec::new(),
        };
        let base = format!("http://{authority}");
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()?;
        Ok(Ctx {
            target: common.target,
            api: mps_client::Api::new(&base, &common.admin_key),
            authority,
            base,
            server,
            nodes,
            sources,
            admin_key: common.admin_key.clone(),
            jwt_secret: common.jwt_secret.clone(),
            connecting: Semaphore::new(common.connect_concurrency.max(1)),
            ws_config: WebSocketConfig::default()
                .read_buffer_size(common.read_buffer.max(64))
                .write_buffer_size(0)
                .max_message_size(Some(16 << 20)),
            http,
            connect_latency: Histogram::default(),
        })
    }

    /// The node subscriber `index` connects to.
    pub fn node(&self, index: usize) -> &Node {
        &self.nodes[index % self.nodes.len()]
    }

    /// A TCP connection to the node of `index`, from the source address chosen by `index`.
    pub async fn tcp(&self, index: usize) -> std::io::Result<TcpStream> {
        let server = self.node(index).server;
        let socket = match server {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if !self.sources.is_empty() {
            let source = self.sources[index % self.sources.len()];
            socket.bind(SocketAddr::new(source, 0))?;
        }
        let stream = socket.connect(server).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// A client token for `user`: signed here with `--jwt-secret`, or issued by the API.
    pub async fn token(&self, user: &str) -> anyhow::Result<String> {
        match &self.jwt_secret {
            Some(secret) => sign(secret, user),
            None => Ok(self
                .api
                .token(user)
                .await
                .context("POST /api/v1/tokens (or pass --jwt-secret)")?
                .token),
        }
    }

    /// Opens subscriber `index` (user `bench{index}` on mps) on its node and waits until it is
    /// subscribed.
    pub async fn subscribe(
        &self,
        transport: Transport,
        index: usize,
        subscription: &Subscription,
    ) -> anyhow::Result<Subscriber> {
        let user = user_name(index);
        // Tokens are made before taking a connecting slot: API calls are not connects.
        let token = match self.target {
            Target::Mps => Some(self.token(&user).await?),
            Target::Nchan => None,
        };
        let authority = &self.node(index).authority;
        let _slot = self.connecting.acquire().await?;
        let started = std::time::Instant::now();
        let subscriber = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let stream = self.tcp(index).await.context("connect")?;
            match (self.target, transport) {
                (Target::Mps, Transport::Ws) => {
                    let token = token.unwrap_or_default();
                    let ws = self.websocket(stream, authority, "/ws").await?;
                    open_session(ws, &user, &token, subscription).await
                }
                (Target::Nchan, Transport::Ws) => {
                    let path = format!("/sub/{}", subscription.channel);
                    Ok(Subscriber::Ws(
                        self.websocket(stream, authority, &path).await?,
                    ))
                }
                (Target::Mps, Transport::Sse) => {
                    let mut path = format!("/sse?token={}", token.unwrap_or_default());
                    if !subscription.components.is_empty() {
                        path.push_str("&components=");
                        path.push_str(&subscription.components.join(","));
                    }
                    if !subscription.topics.is_empty() {
                        path.push_str("&topics=");
                        path.push_str(&query_escape(&subscription.topics.join(",")));
                    }
                    Ok(Subscriber::Sse(Sse::open(stream, authority, &path).await?))
                }
                (Target::Nchan, Transport::Sse) => {
                    let path = format!("/sub/{}", subscription.channel);
                    Ok(Subscriber::Sse(Sse::open(stream, authority, &path).await?))
                }
            }
        })
        .await
        .map_err(|_| anyhow!("connect timed out after {CONNECT_TIMEOUT:?}"))??;
        self.connect_latency
            .record(started.elapsed().as_nanos() as u64);
        Ok(subscriber)
    }

    async fn websocket(
        &self,
        stream: TcpStream,
        authority: &str,
        path: &str,
    ) -> anyhow::Result<Ws> {
        let url = format!("ws://{authority}{path}");
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(self.ws_config))
                .await
                .with_context(|| format!("WebSocket upgrade on {path}"))?;
        Ok(ws)
    }

    /// `POST` a JSON body with the admin key; the status and body of the answer.
    pub async fn post_admin(&self, path: &str, body: Vec<u8>) -> anyhow::Result<(u16, Vec<u8>)> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.admin_key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.bytes().await?.to_vec()))
    }

    /// Publishes `content` (JSON text) live: mps: a component (or topic) message over
    /// `POST /api/v1/messages`; Nchan: the raw content to `POST /pub/CHANNEL`.
    pub async fn publish(&self, subscription: &Subscription, content: &str) -> anyhow::Result<()> {
        match self.target {
            Target::Mps => {
                let mut body = serde_json::json!({"title": "bench", "type": 0, "sender": "bench"});
                body["content"] = serde_json::from_str(content)?;
                if let Some(topic) = subscription.topics.first() {
                    body["topic"] = topic.as_str().into();
                } else if let Some(component) = subscription.components.first() {
                    body["component"] = component.as_str().into();
                }
                let (status, answer) = self
                    .post_admin("/api/v1/messages", serde_json::to_vec(&body)?)
                    .await?;
                if status != 201 {
                    bail!(
                        "POST /api/v1/messages answered {status}: {}",
                        String::from_utf8_lossy(&answer)
                    );
                }
            }
            Target::Nchan => {
                let response = self
                    .http
                    .post(format!("{}/pub/{}", self.base, subscription.channel))
                    .header("content-type", "application/json")
                    .body(content.to_owned())
                    .send()
                    .await?;
                let status = response.status();
                let _ = response.bytes().await?;
                if !status.is_success() {
                    bail!("POST /pub answered {status}");
                }
            }
        }
        Ok(())
    }
}

/// The user of connection `index`: every connection is its own user.
pub fn user_name(index: usize) -> String {
    format!("bench{index}")
}

/// An HS256 client token: `sub` = user, expiring in a day.
pub fn sign(secret: &str, user: &str) -> anyhow::Result<String> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 86_400;
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": user, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

fn query_escape(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b',' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

type Ws = WebSocketStream<TcpStream>;

/// Sends the open frame on `/ws` and waits for the answer (`Type` 2 with a `Session`).
async fn open_session(
    mut ws: Ws,
    user: &str,
    token: &str,
    subscription: &Subscription,
) -> anyhow::Result<Subscriber> {
    let open = Frame {
        version: Some(PROTOCOL_VERSION),
        client: Some(ClientInfo {
            agent: Some("bs".into()),
            user: Some(user.to_owned()),
            way: Some("websocket".into()),
            component_set: (!subscription.components.is_empty())
                .then(|| subscription.components.clone()),
            ..ClientInfo::default()
        }),
        security: Some(Security {
            token: token.to_owned(),
        }),
        ..Frame::reply(frame::kind::OPEN, Some(231))
    };
    let mut open = serde_json::to_value(&open)?;
    if !subscription.topics.is_empty() {
        open["Client"]["topics"] = serde_json::to_value(&subscription.topics)?;
    }
    ws.send(Message::text(open.to_string())).await?;
    loop {
        let message = ws
            .next()
            .await
            .ok_or_else(|| anyhow!("closed before the open answer"))??;
        match message {
            Message::Text(text) => {
                let answer: Frame = serde_json::from_str(text.as_str())?;
                if answer.kind != frame::kind::OPEN_ACK {
                    continue;
                }
                if let Some(error) = answer.error {
                    bail!("open refused: {} {}", error.code, error.message);
                }
                if answer.session.is_none() {
                    bail!("open answered without a session: {text}");
                }
                return Ok(Subscriber::Ws(ws));
            }
            Message::Close(close) => bail!("closed before the open answer: {close:?}"),
            _ => {}
        }
    }
}

/// A connected subscriber.
pub enum Subscriber {
    Ws(Ws),
    Sse(Sse),
}

impl Subscriber {
    /// Calls `on_message` with the text of each message (a WebSocket text frame, an SSE `data:`
    /// line) until the server closes or the connection fails.
    pub async fn run(&mut self, on_message: &mut (dyn FnMut(&[u8]) + Send)) -> anyhow::Result<()> {
        match self {
            Subscriber::Ws(ws) => {
                while let Some(message) = ws.next().await {
                    match message? {
                        Message::Text(text) => on_message(text.as_bytes()),
                        Message::Binary(data) => on_message(&data),
                        Message::Close(close) => bail!("closed by the server: {close:?}"),
                        _ => {}
                    }
                }
                bail!("stream ended")
            }
            Subscriber::Sse(sse) => sse.run(on_message).await,
        }
    }

    /// A polite close (WebSocket close frame); errors are ignored.
    pub async fn close(self) {
        match self {
            Subscriber::Ws(mut ws) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
            }
            Subscriber::Sse(sse) => drop(sse),
        }
    }
}

/// A Server-Sent Events stream read by hand, with small buffers.
pub struct Sse {
    stream: TcpStream,
    buf: Vec<u8>,
    chunked: Option<Dechunk>,
    line: Vec<u8>,
    /// Bytes after the response head read with it.
    pending: Vec<u8>,
}

impl Sse {
    async fn open(mut stream: TcpStream, authority: &str, path: &str) -> anyhow::Result<Sse> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: text/event-stream\r\n\
             Cache-Control: no-cache\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::with_capacity(1024);
        let mut buf = vec![0u8; 2048];
        let end = loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                bail!(
                    "closed before the SSE answer: {}",
                    String::from_utf8_lossy(&head)
                );
            }
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            if head.len() > 16 * 1024 {
                bail!("SSE answer head too long");
            }
        };
        let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
        let status = text.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            let body = String::from_utf8_lossy(&head[end + 4..]).into_owned();
            bail!("SSE answered {status}: {}", body.trim());
        }
        let chunked = text
            .lines()
            .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
        Ok(Sse {
            stream,
            buf,
            chunked: chunked.then(Dechunk::default),
            line: Vec::with_capacity(256),
            pending: head[end + 4..].to_vec(),
        })
    }

    async fn run(&mut self, on_message: &mut (dyn FnMut(&[u8]) + Send)) -> anyhow::Result<()> {
        let pending = std::mem::take(&mut self.pending);
        self.feed(&pending, on_message)?;
        loop {
            let n = self.stream.read(&mut self.buf).await?;
            if n == 0 {
                bail!("SSE stream ended");
            }
            let Sse {
                buf, chunked, line, ..
            } = self;
            feed(chunked, line, &buf[..n], on_message)?;
        }
    }

    fn feed(
        &mut self,
        bytes: &[u8],
        on_message: &mut (dyn FnMut(&[u8]) + Send),
    ) -> anyhow::Result<()> {
        feed(&mut self.chunked, &mut self.line, bytes, on_message)
    }
}

fn feed(
    chunked: &mut Option<Dechunk>,
    line: &mut Vec<u8>,
    bytes: &[u8],
    on_message: &mut (dyn FnMut(&[u8]) + Send),
) -> anyhow::Result<()> {
    let mut lines = |data: &[u8]| split_lines(line, data, on_message);
    match chunked {
        Some(dechunk) => {
            if dechunk.feed(bytes, &mut lines) {
                bail!("SSE stream ended (last chunk)");
            }
        }
        None => lines(bytes),
    }
    Ok(())
}

/// Appends `data` to the partial `line`; calls `on_message` with the payload of each complete
/// `data:` line.
fn split_lines(line: &mut Vec<u8>, mut data: &[u8], on_message: &mut (dyn FnMut(&[u8]) + Send)) {
    while let Some(nl) = data.iter().position(|&b| b == b'\n') {
        let whole: &[u8] = if line.is_empty() {
            &data[..nl]
        } else {
            line.extend_from_slice(&data[..nl]);
            line
        };
        let whole = whole.strip_suffix(b"\r").unwrap_or(whole);
        if let Some(payload) = whole.strip_prefix(b"data:") {
            on_message(payload.strip_prefix(b" ").unwrap_or(payload));
        }
        line.clear();
        data = &data[nl + 1..];
    }
    line.extend_from_slice(data);
}

/// Decodes HTTP/1.1 chunked transfer encoding as it arrives.
#[derive(Default)]
pub struct Dechunk {
    state: ChunkState,
    size: usize,
    in_extension: bool,
}

#[derive(Default, Clone, Copy)]
enum ChunkState {
    #[default]
    Size,
    Data(usize),
    /// The CRLF after a chunk's data.
    AfterData,
}

impl Dechunk {
    /// Passes the payload bytes in `input` to `out`; true once the last (empty) chunk is seen.
    pub fn feed(&mut self, mut input: &[u8], out: &mut impl FnMut(&[u8])) -> bool {
        while !input.is_empty() {
            match self.state {
                ChunkState::Size => {
                    let b = input[0];
                    input = &input[1..];
                    match b {
                        b'\n' => {
                            if self.size == 0 {
                                return true;
                            }
                            self.state = ChunkState::Data(self.size);
                            self.size = 0;
                            self.in_extension = false;
                        }
                        b';' => self.in_extension = true,
                        _ if self.in_extension => {}
                        _ => {
                            if let Some(digit) = (b as char).to_digit(16) {
                                self.size = self.size * 16 + digit as usize;
                            }
                        }
                    }
                }
                ChunkState::Data(left) => {
                    let take = left.min(input.len());
                    out(&input[..take]);
                    input = &input[take..];
                    self.state = if take == left {
                        ChunkState::AfterData
                    } else {
                        ChunkState::Data(left - take)
                    };
                }
                ChunkState::AfterData => {
                    let b = input[0];
                    input = &input[1..];
                    if b == b'\n' {
                        self.state = ChunkState::Size;
                    }
                }
            }
        }
        false
    }
}

/// Finds the unsigned integer after `key` (`"mpsb_seq":`) in `text`.
pub fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let start = text.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = &text[start..];
    let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if len == 0 {
        return None;
    }
    std::str::from_utf8(&digits[..len]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(chunks: &[&[u8]], chunked: bool) -> Vec<String> {
        let mut dechunk = chunked.then(Dechunk::default);
        let mut line = Vec::new();
        let mut seen = Vec::new();
        for chunk in chunks {
            let _ = feed(&mut dechunk, &mut line, chunk, &mut |p: &[u8]| {
                seen.push(String::from_utf8_lossy(p).into_owned())
            });
        }
        seen
    }

    #[test]
    fn sse_lines_plain_and_split() {
        let seen = lines_of(
            &[
                b"retry: 3000\n\nid: 1\ndata: {\"a\"",
                b":1}\n\n: ping\n\ndata:x\r\n\r\n",
            ],
            false,
        );
        assert_eq!(seen, vec!["{\"a\":1}", "x"]);
    }

    #[test]
    fn sse_lines_chunked_split_anywhere() {
        let body = b"id: 1\ndata: {\"mpsb_seq\":7}\n\n";
        let mut wire = format!("{:x};ext=1\r\n", body.len()).into_bytes();
        wire.extend_from_slice(body);
        wire.extend_from_slice(b"\r\n");
        wire.extend_from_slice(b"5\r\ndata:\r\n3\r\n 9\n\r\n0\r\n\r\n");
        for cut in 0..wire.len() {
            let seen = lines_of(&[&wire[..cut], &wire[cut..]], true);
            assert_eq!(seen, vec!["{\"mpsb_seq\":7}", "9"], "cut at {cut}");
        }
    }

    #[test]
    fn numbers_after_keys() {
        let text = br#"{"Type":3,"Message":{"EventData":{"ext":{"mpsb_seq":12,"mpsb_ts":1763780000000000000}}}}"#;
        assert_eq!(number_after(text, b"\"mpsb_seq\":"), Some(12));
        assert_eq!(
            number_after(text, b"\"mpsb_ts\":"),
            Some(1763780000000000000)
        );
        assert_eq!(number_after(text, b"\"nothing\":"), None);
    }

    #[test]
    fn tokens_are_jwts() {
        let token = sign("s", "bench1").unwrap();
        assert_eq!(token.split('.').count(), 3);
    }
}
