//! Rust client for mps: [`PushClient`] speaks the Message Push Protocol over WebSocket like a
//! browser or desktop client would; [`Sse`] reads `GET /sse` like `EventSource` would; [`Api`]
//! calls the HTTP API like a back end would, and polls `GET /poll` like a polling client. The
//! tests and the benchmark are built on it.

mod sse;

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use mps_proto::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use mps_proto as proto;
pub use sse::{Sse, SseBlock};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// The server answered with an error frame or error body.
    #[error("server refused ({status}): {} {}", .error.code, .error.message)]
    Refused { status: u16, error: ErrorBody },
    /// The server closed the connection.
    #[error("closed by server: {code} {reason}")]
    Closed { code: u16, reason: String },
    #[error("timed out")]
    Timeout,
    #[error("unexpected: {0}")]
    Unexpected(String),
}

pub type Result<T> = std::result::Result<T, Error>;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long [`PushClient::close`] waits for the server's half of the closing handshake.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// A long connection speaking the Message Push Protocol.
pub struct PushClient {
    ws: Ws,
    /// Frames that arrived while waiting for a reply.
    buffered: VecDeque<Frame>,
    next_seq: u64,
    pub session: SessionInfo,
    /// The server's close (code, reason), once it has closed: every later read returns it.
    closed_by_server: Option<(u16, String)>,
}

impl PushClient {
    /// Connects to `url` (for example `ws://127.0.0.1:8080/ws`) and opens a session with the
    /// original open frame shape.
    pub async fn open(url: &str, token: &str, client: ClientInfo) -> Result<PushClient> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        let mut this = PushClient {
            ws,
            buffered: VecDeque::new(),
            next_seq: 1,
            session: SessionInfo::default(),
            closed_by_server: None,
        };
        let open = Frame {
            version: Some(PROTOCOL_VERSION),
            client: Some(ClientInfo {
                way: client.way.clone().or(Some("websocket".into())),
                ..client
            }),
            security: Some(Security {
                token: token.to_owned(),
            }),
            ..Frame::reply(frame::kind::OPEN, Some(231))
        };
        this.send(&open).await?;
        let reply = this.reply(231).await?;
        match reply.session {
            Some(session) if reply.kind == frame::kind::OPEN_ACK => {
                this.session = session;
                Ok(this)
            }
            _ => Err(Error::Unexpected(format!("open answered with {reply:?}"))),
        }
    }

    /// Wraps an already connected WebSocket (the `/websocket/{token}` endpoint).
    pub async fn connect_simple(url: &str) -> Result<PushClient> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(PushClient {
            ws,
            buffered: VecDeque::new(),
            next_seq: 1,
            session: SessionInfo::default(),
            closed_by_server: None,
        })
    }

    /// Sends any frame.
    pub async fn send(&mut self, frame: &Frame) -> Result<()> {
        let text = serde_json::to_string(frame)?;
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// Sends a raw WebSocket message (tests of bad input).
    pub async fn send_raw(&mut self, message: Message) -> Result<()> {
        self.ws.send(message).await?;
        Ok(())
    }

    /// The next frame from the server, buffered ones first.
    pub async fn next_frame(&mut self) -> Result<Frame> {
        if let Some(frame) = self.buffered.pop_front() {
            return Ok(frame);
        }
        self.read_frame().await
    }

    async fn read_frame(&mut self) -> Result<Frame> {
        loop {
            if let Some((code, reason)) = &self.closed_by_server {
                return Err(Error::Closed {
                    code: *code,
                    reason: reason.clone(),
                });
            }
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text)?),
                Some(Ok(Message::Close(frame))) => {
                    // tungstenite queues the answering close frame; it only goes out when the
                    // stream is driven again, and the caller may never read again.
                    let _ = self.ws.flush().await;
                    self.closed_by_server = Some(close_of(frame));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => self.closed_by_server = Some((1006, "stream ended".into())),
            }
        }
    }

    /// The next pushed message, within `wait`.
    pub async fn next_push(&mut self, wait: Duration) -> Result<PushedMessage> {
        tokio::time::timeout(wait, async {
            loop {
                let frame = self.next_frame().await?;
                if let Some(message) = frame.message {
                    return Ok(message);
                }
            }
        })
        .await
        .map_err(|_| Error::Timeout)?
    }

    /// Waits for the frame answering `seq`, buffering the others.
    async fn reply(&mut self, seq: u64) -> Result<Frame> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let frame = self.read_frame().await?;
                if frame.seq == Some(seq) && frame.message.is_none() {
                    if let Some(error) = frame.error {
                        return Err(Error::Refused { status: 0, error });
                    }
                    return Ok(frame);
                }
                self.buffered.push_back(frame);
            }
        })
        .await
        .map_err(|_| Error::Timeout)?
    }

    /// Sends a request frame with a fresh `Seq` and waits for its answer.
    pub async fn request(&mut self, mut frame: Frame) -> Result<Frame> {
        let seq = self.next_seq;
        self.next_seq += 1;
        frame.seq = Some(seq);
        self.send(&frame).await?;
        self.reply(seq).await
    }

    /// Acknowledges messages; returns how many changed to `acked`.
    pub async fn ack(&mut self, ids: &[String]) -> Result<u64> {
        let reply = self
            .request(Frame {
                ids: Some(ids.to_vec()),
                ..Frame::reply(frame::kind::ACK, None)
            })
            .await?;
        Ok(reply.acked.unwrap_or(0))
    }

    pub async fn ping(&mut self) -> Result<()> {
        self.request(Frame::reply(frame::kind::PING, None))
            .await
            .map(|_| ())
    }

    /// Replaces the component set.
    pub async fn subscribe(&mut self, components: &[&str]) -> Result<()> {
        self.request(Frame {
            client: Some(ClientInfo {
                component_set: Some(components.iter().map(|c| c.to_string()).collect()),
                ..ClientInfo::default()
            }),
            ..Frame::reply(frame::kind::SUBSCRIBE, None)
        })
        .await
        .map(|_| ())
    }

    /// Replaces the topic patterns (`Type` 8 with `Client.topics`); returns the patterns the
    /// server confirmed.
    pub async fn set_topics(&mut self, topics: &[&str]) -> Result<Vec<String>> {
        let reply = self
            .request(Frame {
                client: Some(ClientInfo {
                    topics: Some(topics.iter().map(|t| t.to_string()).collect()),
                    ..ClientInfo::default()
                }),
                ..Frame::reply(frame::kind::SUBSCRIBE, None)
            })
            .await?;
        Ok(reply.client.and_then(|c| c.topics).unwrap_or_default())
    }

    /// Reads until the server closes; returns its close code and reason.
    pub async fn closed(&mut self, wait: Duration) -> Result<(u16, String)> {
        tokio::time::timeout(wait, async {
            loop {
                match self.read_frame().await {
                    Ok(_) => continue,
                    Err(Error::Closed { code, reason }) => return Ok((code, reason)),
                    Err(e) => return Err(e),
                }
            }
        })
        .await
        .map_err(|_| Error::Timeout)?
    }

    /// Closes the connection with the WebSocket closing handshake: sends a close frame (unless
    /// the server closed first, which is not an error) and waits briefly for the server's.
    pub async fn close(mut self) -> Result<()> {
        use tokio_tungstenite::tungstenite::Error as WsError;
        if self.closed_by_server.is_some() {
            return Ok(());
        }
        match self.ws.close(None).await {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {}
            Err(e) => return Err(e.into()),
        }
        // The server's close frame ends the handshake; then the stream ends.
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
        Ok(())
    }
}

/// The code and reason of a close frame (1005 when it carried none).
fn close_of(frame: Option<CloseFrame>) -> (u16, String) {
    match frame {
        Some(f) => (f.code.into(), f.reason.to_string()),
        None => (1005, String::new()),
    }
}

/// Sends a request; a non-2xx answer becomes [`Error::Refused`] with the server's error body.
async fn fetch(
    request: reqwest::RequestBuilder,
) -> Result<(reqwest::header::HeaderMap, bytes::Bytes)> {
    let response = request.send().await?;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await?;
    if !status.is_success() {
        let error = serde_json::from_slice::<ErrorResponse>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| ErrorBody {
                code: "unknown".into(),
                message: String::from_utf8_lossy(&bytes).into_owned(),
            });
        return Err(Error::Refused {
            status: status.as_u16(),
            error,
        });
    }
    Ok((headers, bytes))
}

/// The answer to a poll.
#[derive(Debug, Clone)]
pub struct Polled {
    /// Oldest first.
    pub messages: Vec<PushedMessage>,
    /// The `MPS-Reset` header: topic patterns whose history no longer reaches back to `since`.
    pub reset: Option<Vec<String>>,
}

/// The back-end HTTP API.
#[derive(Clone)]
pub struct Api {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Api {
    /// `base` is `http://host:port`; `key` the admin key.
    pub fn new(base: &str, key: &str) -> Api {
        Api {
            base: base.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    async fn call<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<T> {
        let (_, bytes) = fetch(request).await?;
        if bytes.is_empty() {
            return Ok(serde_json::from_str("null")?);
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key)
    }

    pub async fn send(&self, message: &SendMessage) -> Result<SendResult> {
        self.call(
            self.admin(reqwest::Method::POST, "/api/v1/messages")
                .json(message),
        )
        .await
    }

    pub async fn token(&self, user: &str) -> Result<TokenResponse> {
        self.token_with(&TokenRequest {
            user: user.to_owned(),
            app: None,
            ttl: None,
            topics: None,
        })
        .await
    }

    pub async fn token_with(&self, request: &TokenRequest) -> Result<TokenResponse> {
        self.call(
            self.admin(reqwest::Method::POST, "/api/v1/tokens")
                .json(request),
        )
        .await
    }

    /// Pages message records; `query` holds the filter pairs (`status`, `receiver`, `page`...).
    pub async fn messages<Q: Serialize + ?Sized>(&self, query: &Q) -> Result<Page<MessageRecord>> {
        self.call(
            self.admin(reqwest::Method::GET, "/api/v1/messages")
                .query(query),
        )
        .await
    }

    pub async fn message(&self, id: &str) -> Result<MessageRecord> {
        self.call(self.admin(reqwest::Method::GET, &format!("/api/v1/messages/{id}")))
            .await
    }

    pub async fn delete(&self, id: &str) -> Result<()> {
        self.call::<Option<()>>(
            self.admin(reqwest::Method::DELETE, &format!("/api/v1/messages/{id}")),
        )
        .await
        .map(|_| ())
    }

    pub async fn clients(&self) -> Result<Vec<OnlineClient>> {
        self.call(self.admin(reqwest::Method::GET, "/api/v1/clients"))
            .await
    }

    pub async fn disconnect(&self, id: &str) -> Result<()> {
        self.call::<Option<()>>(self.admin(
            reqwest::Method::POST,
            &format!("/api/v1/clients/{id}/disconnect"),
        ))
        .await
        .map(|_| ())
    }

    /// Pull: a client collects its pending messages with its own token.
    pub async fn collect(&self, token: &str) -> Result<Collected> {
        self.call(
            self.http
                .post(format!("{}/api/v1/collect", self.base))
                .bearer_auth(token),
        )
        .await
    }

    /// A poll (`GET /poll`) with the client's token; `query` holds the other parameters
    /// (`timeout`, `since`, `topics`, `components`, `agent`). Returns when the server answers:
    /// at once when messages are owed, else when one arrives or the timeout passes.
    pub async fn poll<Q: Serialize + ?Sized>(&self, token: &str, query: &Q) -> Result<Polled> {
        let (headers, bytes) = fetch(
            self.http
                .get(format!("{}/poll", self.base))
                .bearer_auth(token)
                .query(query),
        )
        .await?;
        let reset = headers
            .get("mps-reset")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').map(str::to_owned).collect());
        Ok(Polled {
            messages: serde_json::from_slice(&bytes)?,
            reset,
        })
    }

    /// The URL of the event stream with this query (`token`, `topics`, `components`...).
    pub fn sse_url<Q: Serialize + ?Sized>(&self, query: &Q) -> Result<String> {
        let url = reqwest::Url::parse(&format!("{}/sse", self.base))
            .map_err(|e| Error::Unexpected(e.to_string()))?;
        let request = self.http.get(url).query(query).build()?;
        Ok(request.url().to_string())
    }

    /// Replaces a user's tags (in the default app).
    pub async fn set_tags(&self, user: &str, tags: &[&str]) -> Result<UserTags> {
        let body = TagsRequest {
            app: None,
            tags: tags.iter().map(|t| t.to_string()).collect(),
        };
        self.call(
            self.admin(reqwest::Method::PUT, &format!("/api/v1/users/{user}/tags"))
                .json(&body),
        )
        .await
    }

    /// Replaces a user's attributes (in the default app).
    pub async fn set_attributes(
        &self,
        user: &str,
        attributes: &[(&str, &str)],
    ) -> Result<UserAttributes> {
        let body = AttributesRequest {
            app: None,
            attributes: attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        self.call(
            self.admin(
                reqwest::Method::PUT,
                &format!("/api/v1/users/{user}/attributes"),
            )
            .json(&body),
        )
        .await
    }

    /// A client acks by HTTP with its own token.
    pub async fn ack(&self, token: &str, ids: &[String]) -> Result<AckResult> {
        let body = AckRequest { ids: ids.to_vec() };
        self.call(
            self.http
                .post(format!("{}/api/v1/ack", self.base))
                .bearer_auth(token)
                .json(&body),
        )
        .await
    }
}
