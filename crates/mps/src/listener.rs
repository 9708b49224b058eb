//! The TCP listener: accepts connections, admits them against the connection limits (in total
//! and per remote address), serves HTTP/1.1 with upgrades through hyper with a deadline on each
//! request head (slowloris), and shuts down gracefully: stop accepting, let the requests in
//! flight finish, close idle connections.
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
use tokio::sync::watch;
use tower::ServiceExt;

use crate::api::ApiError;
use crate::limits::{Admission, Full, Limit, Permit, rejected};

/// Seconds a refused client is told to wait (`Retry-After`).
const RETRY_AFTER: u64 = 5;

/// Serves `app` on `listener` until `shutdown` resolves, then waits for the connections'
/// requests in flight (upgraded WebSockets are not waited for: they are the hub's).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    admission: Arc<Admission>,
    request_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    // Every connection task holds a receiver; when all are dropped, everything has finished.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let permit = match admission.admit(remote.ip()) {
            Ok(permit) => permit,
            Err(full) => {
                refuse(&admission, stream, remote, full, request_timeout);
                continue;
            }
        };
        let app = app.clone();
        let stop = stop_rx.clone();
        tokio::spawn(connection(
            stream,
            permit,
            remote,
            app,
            request_timeout,
            stop,
        ));
    }
    drop(stop_rx);
    let _ = stop_tx.send(true);
    stop_tx.closed().await;
}

/// Serves one admitted connection until it closes, is upgraded, or shutdown asks it to end.
async fn connection(
    stream: TcpStream,
    permit: Permit,
    remote: SocketAddr,
    app: Router,
    request_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let served = Arc::new(AtomicBool::new(false));
    let seen = served.clone();
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        seen.store(true, Ordering::Relaxed);
        request.extensions_mut().insert(ConnectInfo(remote));
        app.clone().oneshot(request)
    });
    let io = TokioIo::new(Counted {
        stream,
        _permit: permit,
    });
    let conn = http1(request_timeout)
        .serve_connection(io, service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        // The only change ever sent is the stop.
        Ok(()) = stop.changed() => {
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
/// once, new ones are closed without an answer.
fn refuse(
    admission: &Arc<Admission>,
    stream: TcpStream,
    remote: SocketAddr,
    full: Full,
    request_timeout: Duration,
) {
    let (limit, status, code, message) = match full {
        Full::Node => (
            Limit::MaxConnections,
            StatusCode::SERVICE_UNAVAILABLE,
            "server_full",
            "the server has as many connections as it takes; retry later",
        ),
        Full::Address => (
            Limit::ConnectionsPerAddress,
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            "too many connections from your address",
        ),
    };
    rejected(limit);
    let Some(permit) = admission.refusing(remote.ip()) else {
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
    let conn = http1(request_timeout)
        .keep_alive(false)
        .serve_connection(io, service);
    tokio::spawn(async move {
        let _ = conn.await;
    });
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
    stream: TcpStream,
    _permit: Permit,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
