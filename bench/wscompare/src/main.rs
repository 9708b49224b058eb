//! wscompare: axum 0.8 built-in WebSocket (tokio-tungstenite) vs fastwebsockets 0.10
//! for an idle-heavy fan-out push server.
//!
//! Usage:
//!   wscompare server --lib tungstenite|fast --port P [--read-buf 4096] [--write-buf 0] [--max-msg 4096]
//!   wscompare client --conns N --addr 127.0.0.1:P --src-ips 127.0.0.2..127.0.0.21 [--concurrency 256]
//!
//! Server endpoints:
//!   GET  /ws                       WebSocket upgrade
//!   POST /pub?n=200&interval_ms=100  push the same ~100-byte text frame n times to every connection
//!   GET  /count                    number of registered connections
use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

// ---------------------------------------------------------------- registry

/// Per-connection shared state: wake-up + outbound queue of pre-serialized payloads.
struct ConnShared {
    notify: Notify,
    queue: Mutex<VecDeque<Bytes>>,
}

const MAX_QUEUE: usize = 1024; // slow-consumer guard: drop oldest beyond this

#[derive(Default)]
struct Registry {
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<ConnShared>>>,
}

impl Registry {
    fn register(&self) -> (u64, Arc<ConnShared>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let c = Arc::new(ConnShared { notify: Notify::new(), queue: Mutex::new(VecDeque::new()) });
        self.conns.lock().unwrap().insert(id, c.clone());
        (id, c)
    }
    fn unregister(&self, id: u64) {
        self.conns.lock().unwrap().remove(&id);
    }
    fn count(&self) -> usize {
        self.conns.lock().unwrap().len()
    }
    /// Push the same Bytes (refcount clone, no copy) to every connection.
    fn publish(&self, payload: &Bytes) {
        let snapshot: Vec<Arc<ConnShared>> = self.conns.lock().unwrap().values().cloned().collect();
        for c in snapshot {
            {
                let mut q = c.queue.lock().unwrap();
                if q.len() >= MAX_QUEUE {
                    q.pop_front();
                }
                q.push_back(payload.clone());
            }
            c.notify.notify_one(); // stores a permit if the task is not currently waiting
        }
    }
}

struct App {
    reg: Registry,
    payload: Bytes,
    read_buf: usize,
    write_buf: usize,
    max_msg: usize,
}

fn make_payload() -> Bytes {
    // ~100 byte pre-serialized JSON text frame
    let s = r#"{"type":"tick","sym":"ABCD","px":12345.6789,"qty":100,"ts":1700000000000,"seq":42,"pad":"xxxxxxxx"}"#;
    Bytes::from_static(s.as_bytes())
}

fn parse_query(q: Option<&str>) -> (u64, u64) {
    let (mut n, mut iv) = (1u64, 0u64);
    if let Some(q) = q {
        for kv in q.split('&') {
            let mut it = kv.splitn(2, '=');
            match (it.next(), it.next()) {
                (Some("n"), Some(v)) => n = v.parse().unwrap_or(1),
                (Some("interval_ms"), Some(v)) => iv = v.parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    (n, iv)
}

fn spawn_publisher(app: Arc<App>, n: u64, interval_ms: u64) {
    tokio::spawn(async move {
        for _ in 0..n {
            app.reg.publish(&app.payload);
            if interval_ms > 0 {
                tokio::time::sleep(Duration::from_millis(interval_ms)).await;
            }
        }
    });
}

// ---------------------------------------------------------------- (a) axum / tungstenite

mod tung {
    use super::*;
    use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
    use axum::extract::{RawQuery, State};
    use axum::response::Response;
    use axum::routing::{get, post};
    use axum::Router;

    async fn ws_handler(ws: WebSocketUpgrade, State(app): State<Arc<App>>) -> Response {
        ws.read_buffer_size(app.read_buf)
            .write_buffer_size(app.write_buf)
            .max_message_size(app.max_msg)
            .max_frame_size(app.max_msg)
            .on_upgrade(move |socket| conn(socket, app))
    }

    async fn conn(mut socket: WebSocket, app: Arc<App>) {
        let (id, shared) = app.reg.register();
        'outer: loop {
            tokio::select! {
                _ = shared.notify.notified() => {
                    loop {
                        let next = shared.queue.lock().unwrap().pop_front();
                        let Some(b) = next else { break };
                        // axum's Text needs Utf8Bytes; TryFrom<Bytes> validates UTF-8 (no copy).
                        let t = Utf8Bytes::try_from(b).expect("utf8");
                        if socket.send(Message::Text(t)).await.is_err() {
                            break 'outer;
                        }
                    }
                }
                msg = socket.recv() => match msg {  // cancel-safe (Stream::next)
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(_)) => {} // ignore; pings are auto-answered by tungstenite
                }
            }
        }
        app.reg.unregister(id);
    }

    async fn pub_handler(State(app): State<Arc<App>>, RawQuery(q): RawQuery) -> &'static str {
        let (n, iv) = parse_query(q.as_deref());
        spawn_publisher(app, n, iv);
        "ok\n"
    }

    async fn count_handler(State(app): State<Arc<App>>) -> String {
        format!("{}\n", app.reg.count())
    }

    pub async fn serve(app: Arc<App>, port: u16) -> anyhow::Result<()> {
        let router = Router::new()
            .route("/ws", get(ws_handler))
            .route("/pub", post(pub_handler))
            .route("/count", get(count_handler))
            .with_state(app);
        let listener = bind_listener(port)?;
        axum::serve(listener, router).await?;
        Ok(())
    }
}

// ---------------------------------------------------------------- (b) fastwebsockets + hyper 1

mod fast {
    use super::*;
    use fastwebsockets::{upgrade, Frame, OpCode, Payload, WebSocketError, WebSocketRead};
    use http_body_util::{Either, Empty, Full};
    use hyper::body::Incoming;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper::{Method, Request, Response, StatusCode};
    use hyper_util::rt::TokioIo;

    type Io = TokioIo<hyper::upgrade::Upgraded>;
    type Rd = WebSocketRead<tokio::io::ReadHalf<Io>>;

    /// Read exactly one (non-ignored) frame; takes and returns ownership so the future can be
    /// kept alive across select! iterations (fastwebsockets' read_frame is not cancel-safe).
    async fn read_one(mut rd: Rd) -> (Rd, Result<Option<(OpCode, Vec<u8>)>, WebSocketError>) {
        let mut nosend = |_f: Frame<'_>| async { Ok::<(), std::io::Error>(()) };
        let r = match rd.read_frame(&mut nosend).await {
            Ok(f) => match f.opcode {
                OpCode::Ping | OpCode::Close => Ok(Some((f.opcode, f.payload.to_vec()))),
                _ => Ok(None), // ignore data frames without copying
            },
            Err(e) => Err(e),
        };
        (rd, r)
    }

    async fn conn(fut: upgrade::UpgradeFut, app: Arc<App>) {
        let Ok(ws) = fut.await else { return };
        let (mut rd, mut wr) = ws.split(tokio::io::split);
        rd.set_max_message_size(app.max_msg);
        rd.set_auto_pong(false); // handled below (write half is owned by this task)
        rd.set_auto_close(false);
        let (id, shared) = app.reg.register();
        let read = read_one(rd);
        tokio::pin!(read);
        'outer: loop {
            tokio::select! {
                _ = shared.notify.notified() => {
                    loop {
                        let next = shared.queue.lock().unwrap().pop_front();
                        let Some(b) = next else { break };
                        if wr.write_frame(Frame::text(Payload::Borrowed(&b))).await.is_err() {
                            break 'outer;
                        }
                    }
                }
                (rd, r) = &mut read => {
                    match r {
                        Err(_) => break,
                        Ok(Some((OpCode::Close, _))) => {
                            let _ = wr.write_frame(Frame::close(1000, &[])).await;
                            break;
                        }
                        Ok(Some((OpCode::Ping, p))) => {
                            if wr.write_frame(Frame::pong(Payload::Owned(p))).await.is_err() { break; }
                        }
                        _ => {}
                    }
                    read.set(read_one(rd));
                }
            }
        }
        app.reg.unregister(id);
    }

    type Body = Either<Empty<Bytes>, Full<Bytes>>;

    async fn handle(mut req: Request<Incoming>, app: Arc<App>) -> Result<Response<Body>, WebSocketError> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/ws") => {
                let (resp, fut) = upgrade::upgrade(&mut req)?;
                tokio::spawn(conn(fut, app));
                Ok(resp.map(Either::Left))
            }
            (&Method::POST, "/pub") => {
                let (n, iv) = parse_query(req.uri().query());
                spawn_publisher(app, n, iv);
                Ok(Response::new(Either::Right(Full::new(Bytes::from_static(b"ok\n")))))
            }
            (&Method::GET, "/count") => {
                let s = format!("{}\n", app.reg.count());
                Ok(Response::new(Either::Right(Full::new(Bytes::from(s)))))
            }
            _ => {
                let mut r = Response::new(Either::Left(Empty::new()));
                *r.status_mut() = StatusCode::NOT_FOUND;
                Ok(r)
            }
        }
    }

    pub async fn serve(app: Arc<App>, port: u16) -> anyhow::Result<()> {
        let listener = bind_listener(port)?;
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("accept error: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let app = app.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(req, app.clone()));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    }
}

fn bind_listener(port: u16) -> anyhow::Result<tokio::net::TcpListener> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.set_reuseaddr(true)?;
    sock.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
    Ok(sock.listen(4096)?)
}

// ---------------------------------------------------------------- client (tokio-tungstenite)

mod client {
    use super::*;
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    use tokio_tungstenite::tungstenite::Message;

    pub static CONNECTED: AtomicU64 = AtomicU64::new(0);
    pub static FAILED: AtomicU64 = AtomicU64::new(0);
    pub static RECV: AtomicU64 = AtomicU64::new(0);

    fn parse_ips(s: &str) -> Vec<Ipv4Addr> {
        let (a, b) = s.split_once("..").expect("--src-ips A..B");
        let a: Ipv4Addr = a.parse().unwrap();
        let b: Ipv4Addr = if b.is_empty() { Ipv4Addr::new(127, 0, 0, 41) } else { b.parse().unwrap() };
        (u32::from(a)..=u32::from(b)).map(Ipv4Addr::from).collect()
    }

    async fn one(addr: SocketAddr, src: Ipv4Addr, permit: tokio::sync::OwnedSemaphorePermit) {
        let res = async {
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind(SocketAddr::from((src, 0)))?;
            let stream = sock.connect(addr).await?;
            let cfg = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
            let url = format!("ws://{addr}/ws");
            let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(cfg)).await?;
            anyhow::Ok(ws)
        }
        .await;
        drop(permit);
        let mut ws = match res {
            Ok(ws) => ws,
            Err(e) => {
                if FAILED.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("connect error: {e}");
                }
                return;
            }
        };
        CONNECTED.fetch_add(1, Ordering::Relaxed);
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Text(_)) => {
                    RECV.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Message::Close(_)) | Err(_) => break,
                _ => {}
            }
        }
        CONNECTED.fetch_sub(1, Ordering::Relaxed);
    }

    pub async fn run(conns: usize, addr: SocketAddr, ips: &str, concurrency: usize) -> anyhow::Result<()> {
        let ips = parse_ips(ips);
        let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
        tokio::spawn(async {
            let start = std::time::Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                println!(
                    "t={:.2} connected={} failed={} recv={}",
                    start.elapsed().as_secs_f64(),
                    CONNECTED.load(Ordering::Relaxed),
                    FAILED.load(Ordering::Relaxed),
                    RECV.load(Ordering::Relaxed)
                );
            }
        });
        for i in 0..conns {
            let permit = sem.clone().acquire_owned().await?;
            let src = ips[i % ips.len()];
            tokio::spawn(one(addr, src, permit));
        }
        std::future::pending::<()>().await;
        Ok(())
    }
}

// ---------------------------------------------------------------- main

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("");
    match mode {
        "server" => {
            let lib = arg(&args, "--lib").unwrap_or_else(|| "tungstenite".into());
            let port: u16 = arg(&args, "--port").map(|p| p.parse().unwrap()).unwrap_or(9000);
            let app = Arc::new(App {
                reg: Registry::default(),
                payload: make_payload(),
                read_buf: arg(&args, "--read-buf").map(|v| v.parse().unwrap()).unwrap_or(4096),
                write_buf: arg(&args, "--write-buf").map(|v| v.parse().unwrap()).unwrap_or(0),
                max_msg: arg(&args, "--max-msg").map(|v| v.parse().unwrap()).unwrap_or(4096),
            });
            eprintln!("server lib={lib} port={port} payload={}B", app.payload.len());
            match lib.as_str() {
                "tungstenite" => tung::serve(app, port).await,
                "fast" => fast::serve(app, port).await,
                other => anyhow::bail!("unknown --lib {other}"),
            }
        }
        "client" => {
            let conns: usize = arg(&args, "--conns").map(|v| v.parse().unwrap()).unwrap_or(1000);
            assert!(conns <= 19_000, "per-process fd cap is 20k; use <= 19000 conns");
            let addr: SocketAddr = arg(&args, "--addr").unwrap_or_else(|| "127.0.0.1:9000".into()).parse()?;
            let ips = arg(&args, "--src-ips").unwrap_or_else(|| "127.0.0.2..127.0.0.21".into());
            let conc: usize = arg(&args, "--concurrency").map(|v| v.parse().unwrap()).unwrap_or(256);
            client::run(conns, addr, &ips, conc).await
        }
        _ => {
            eprintln!("usage: wscompare server --lib tungstenite|fast --port P | client --conns N --addr A --src-ips 127.0.0.2..127.0.0.21");
            std::process::exit(2)
        }
    }
}
