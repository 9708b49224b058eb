//! The TCP listener: accepts connections, admits them against the connection limits (in total
//! and per remote address), completes the TLS handshake when TLS is on (within
//! `limits.request_timeout`), serves HTTP/1.1 with upgrades through hyper with a deadline on each
//! request head (slowloris), and shuts down gracefully when its [`Tasks`] stop: stop accepting,
//! let the requests in flight finish, close idle connections.
//!
//! Each socket carries its [`Permit`] until it closes, including after an upgrade to
//! WebSocket, so the counts are of open sockets, not of requests.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::http::ApiError;
use crate::limits::{Admission, Full, Limit, Permit, rejected};
use crate::shutdown::Tasks;
use crate::tls::Tls;

/// Seconds a refused client is told to wait (`Retry-After`).
const RETRY_AFTER: u64 = 5;

/// What a listener needs besides its socket and routes.
pub struct Edge {
    /// Connections in total and per address.
    pub admission: Arc<Admission>,
    /// `limits.request_timeout`: for the TLS handshake, then for each request head.
    pub request_timeout: Duration,
    /// TLS for every accepted connection, when on.
    pub tls: Option<Arc<Tls>>,
    /// Where its connections run; their stop is the listener's.
    pub tasks: Tasks,
}

/// Serves `app` on `listener` until the edge's tasks stop; its connections, tasks of the
/// same tracker, then finish their requests in flight (upgraded WebSockets are sessions of
/// their own).
pub async fn serve(listener: TcpListener, app: Router, edge: Edge) {
    let Edge {
        admission,
        request_timeout,
        tls,
        tasks,
    } = edge;
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            _ = tasks.stopping() => break,
        };
        let tls = tls.clone();
        let permit = match admission.admit(remote.ip()) {
            Ok(permit) => permit,
            Err(full) => {
                let limit = match full {
                    Full::Node => Limit::MaxConnections,
                    Full::Address => Limit::ConnectionsPerAddress,
                };
                rejected(limit);
                if let Some(permit) = admission.refusing(remote.ip()) {
                    tasks.spawn(refuse(stream, permit, remote, tls, full, request_timeout));
                }
                continue;
            }
        };
        let app = app.clone();
        let stop = tasks.token();
        tasks.spawn(async move {
            let Some(stream) = secure(stream, tls, remote, request_timeout).await else {
                return;
            };
            let io = Counted {
                stream,
                _permit: permit,
            };
            connection(io, remote, app, request_timeout, stop).await;
        });
    }
}

/// The accepted socket as it is served: as is, or after the TLS handshake. A handshake that
/// fails or does not finish within `timeout` is counted and logged, and the socket closed.
async fn secure(
    stream: TcpStream,
    tls: Option<Arc<Tls>>,
    remote: SocketAddr,
    timeout: Duration,
) -> Option<Stream> {
    let Some(tls) = tls else {
        return Some(Stream::Plain(stream));
    };
    let timeout = timeout.max(Duration::from_millis(100));
    let reason = match tokio::time::timeout(timeout, tls.acceptor().accept(stream)).await {
        Ok(Ok(stream)) => return Some(Stream::Tls(Box::new(stream))),
        Ok(Err(e)) => {
            tracing::info!(%remote, error = %e, "TLS handshake failed");
            "error"
        }
        Err(_) => {
            tracing::info!(%remote, "TLS handshake not finished in time");
            "timeout"
        }
    };
    metrics::counter!("mps_tls_handshake_failures_total", "reason" => reason).increment(1);
    None
}

/// Serves one admitted connection until it closes, is upgraded, or shutdown asks it to end.
async fn connection(
    io: Counted,
    remote: SocketAddr,
    app: Router,
    request_timeout: Duration,
    stop: CancellationToken,
) {
    let served = Arc::new(AtomicBool::new(false));
    let seen = served.clone();
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        seen.store(true, Ordering::Relaxed);
        request.extensions_mut().insert(ConnectInfo(remote));
        app.clone().oneshot(request)
    });
    let conn = http1(request_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result
        && e.is_timeout()
        && !served.load(Ordering::Relaxed)
    {
        // A connection that never completed a request head in time (an idle keep-alive
        // connection timing out after its requests is not a refusal).
        rejected(Limit::RequestTimeout);
    }
}

fn http1(request_timeout: Duration) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(request_timeout.max(Duration::from_millis(100)));
    builder
}

/// Answers every request on a connection over a limit with 503 (the node is full) or 429 (its
/// address has too many), then closes it; past [`crate::limits::MAX_REFUSING`] such answers at
/// once, new ones are closed without an answer (the caller gets no `permit` for them).
async fn refuse(
    stream: TcpStream,
    permit: Permit,
    remote: SocketAddr,
    tls: Option<Arc<Tls>>,
    full: Full,
    request_timeout: Duration,
) {
    let (status, code, message) = match full {
        Full::Node => (
            StatusCode::SERVICE_UNAVAILABLE,
            "server_full",
            "the server has as many connections as it takes; retry later",
        ),
        Full::Address => (
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            "too many connections from your address",
        ),
    };
    let Some(stream) = secure(stream, tls, remote, request_timeout).await else {
        return;
    };
    let service = hyper::service::service_fn(move |_: Request<Incoming>| async move {
        let mut response = ApiError::new(status, code, message)
            .retry_after(RETRY_AFTER)
            .into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        Ok::<_, std::convert::Infallible>(response)
    });
    let io = TokioIo::new(Counted {
        stream,
        _permit: permit,
    });
    let _ = http1(request_timeout)
        .keep_alive(false)
        .serve_connection(io, service)
        .await;
}

/// An accept error: a connection that went away before it was accepted is nothing; running out
/// of file descriptors (or another resource) is waited out briefly instead of spinning.
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    rejected(Limit::AcceptFailed);
    tracing::error!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A socket with its place in the connection counts, freed when the socket is dropped.
struct Counted {
    stream: Stream,
    _permit: Permit,
}

/// A served socket: plain TCP, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.stream {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
