//! The listener every stand-in runs on: TLS with a throwaway CA (its root written as PEM for the
//! client's `ca_file`), ALPN, HTTP/2 (or HTTP/1.1 where the real service also speaks it), and
//! counters of what the client did on the wire.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::Version;
use axum::middleware::{self, Next};
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Which application protocols the listener offers in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// HTTP/2 only (APNs): a connection that does not negotiate `h2` is closed unanswered.
    H2Only,
    /// HTTP/2 preferred, HTTP/1.1 accepted (Google's and the browsers' push services).
    H2OrHttp1,
}

/// What the client did on the wire, for assertions: connections, requests, HTTP versions,
/// requests in flight. Also a gate that holds requests before they are answered, so a test can
/// see how many a client keeps in flight at once.
#[derive(Default)]
pub struct Traffic {
    connections: AtomicUsize,
    /// Connections closed because they did not negotiate HTTP/2 where it is required.
    refused: AtomicUsize,
    requests: AtomicUsize,
    http2_requests: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    gate: GateCell,
}

struct GateCell(watch::Sender<bool>);

impl Default for GateCell {
    fn default() -> Self {
        GateCell(watch::Sender::new(false))
    }
}

impl Traffic {
    /// TLS connections accepted and served.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Connections closed for not negotiating HTTP/2 where only HTTP/2 is spoken.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    /// Requests received, answered or not.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Requests that came over HTTP/2.
    pub fn http2_requests(&self) -> usize {
        self.http2_requests.load(Ordering::SeqCst)
    }

    /// Requests received and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests ever in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// Holds every request (counted as in flight) until [`Traffic::release`].
    pub fn hold(&self) {
        self.gate.0.send_replace(true);
    }

    /// Lets held requests, and all later ones, be answered.
    pub fn release(&self) {
        self.gate.0.send_replace(false);
    }
}

/// Leaves the in-flight count when the request is answered or its client goes away.
struct InFlight<'a>(&'a Traffic);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn count(State(traffic): State<Arc<Traffic>>, request: Request, next: Next) -> Response {
    traffic.requests.fetch_add(1, Ordering::SeqCst);
    if request.version() == Version::HTTP_2 {
        traffic.http2_requests.fetch_add(1, Ordering::SeqCst);
    }
    let now = traffic.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    traffic.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _in_flight = InFlight(&traffic);
    let mut gate = traffic.gate.0.subscribe();
    // The sender lives as long as `traffic`, so this only ends when the gate opens.
    let _ = gate.wait_for(|held| !held).await;
    next.run(request).await
}

/// A running stand-in listener. Stops accepting when dropped; the temporary directory with the
/// CA file (and whatever key files the stand-in wrote beside it) goes with it.
pub struct Server {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    ca_file: PathBuf,
    traffic: Arc<Traffic>,
    accept: JoinHandle<()>,
}

impl Server {
    /// Binds 127.0.0.1 on a free port and serves `router` over TLS.
    pub async fn start(router: Router, alpn: Alpn) -> Server {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (config, ca_pem) = tls_config(alpn);
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_pem).expect("writing the stand-in's CA");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1");
        let addr = listener.local_addr().expect("local address");
        let traffic = Arc::new(Traffic::default());
        let router = router.layer(middleware::from_fn_with_state(traffic.clone(), count));
        let accept = tokio::spawn(accept(
            listener,
            TlsAcceptor::from(Arc::new(config)),
            router,
            alpn,
            traffic.clone(),
        ));
        Server {
            addr,
            dir,
            ca_file,
            traffic,
            accept,
        }
    }

    /// `https://127.0.0.1:PORT`, the origin of everything this server answers.
    pub fn origin(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// PEM file of the root certificate the server's certificate chains to.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// A directory that lives as long as the server, for the key files a test hands to mps.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    alpn: Alpn,
    traffic: Arc<Traffic>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let traffic = traffic.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
            if !h2 && alpn == Alpn::H2Only {
                traffic.refused.fetch_add(1, Ordering::SeqCst);
                return;
            }
            traffic.connections.fetch_add(1, Ordering::SeqCst);
            let io = TokioIo::new(tls);
            let service = TowerToHyperService::new(router);
            if h2 {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service)
                    .await;
            } else {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            }
        });
    }
}

/// A fresh CA and a certificate it signed for `127.0.0.1` and `localhost`; returns the server
/// configuration and the CA's PEM.
fn tls_config(alpn: Alpn) -> (ServerConfig, String) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mps stand-in CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().expect("server key");
    let mut leaf_params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("server parameters");
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "mps stand-in");
    let leaf = leaf_params
        .signed_by(&leaf_key, &issuer)
        .expect("server certificate");

    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .expect("server certificate and key");
    config.alpn_protocols = match alpn {
        Alpn::H2Only => vec![b"h2".to_vec()],
        Alpn::H2OrHttp1 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    };
    (config, ca_cert.pem())
}
