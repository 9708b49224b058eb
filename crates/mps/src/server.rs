//! Wiring: builds the store, broker, hub and engine from the configuration, serves HTTP and
//! WebSocket on one listener, runs the expiry sweeper, and shuts down gracefully on SIGTERM or
//! Ctrl-C (stop accepting, close connections with "going away", let the store finish).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::any;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::broker::LocalBroker;
use crate::config::Config;
use crate::engine::Engine;
use crate::hub::{CloseReason, Hub};
use crate::ingest::Ingest;
use crate::presence::{LocalPresence, Presence};
use crate::store::Store;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;

/// What every handler and session shares.
pub struct ServerState {
    pub config: Config,
    pub auth: Authenticator,
    pub engine: Arc<Engine>,
    pub hub: Arc<Hub>,
    /// Online clients of every node (this node's hub when not in a cluster).
    pub presence: Arc<dyn Presence>,
    /// Message queue consumers; `/readyz` asks whether they are connected.
    pub ingest: Arc<Ingest>,
    pub metrics: PrometheusHandle,
    pub started: Instant,
    /// The address actually bound (the configured port may be 0).
    pub local_addr: SocketAddr,
    shutting_down: AtomicBool,
}

impl ServerState {
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// Client-facing WebSocket URLs per network line; the listener's own when none configured.
    pub fn client_urls(&self) -> BTreeMap<String, String> {
        if self.config.lines.is_empty() {
            BTreeMap::from([("default".to_owned(), format!("ws://{}/ws", self.local_addr))])
        } else {
            self.config.lines.clone()
        }
    }
}

/// Secrets that `serve` and `token` both need: from the configuration, else from the data
/// directory, else generated there (mode 0600) on first start.
pub struct Secrets {
    pub admin_key: String,
    pub jwt_secret: String,
}

impl Secrets {
    pub fn resolve(config: &Config, generate: bool) -> anyhow::Result<Secrets> {
        Ok(Secrets {
            admin_key: secret(&config.admin_key, &config.data_dir, "admin.key", generate)?,
            jwt_secret: secret(
                &config.auth.jwt_secret,
                &config.data_dir,
                "jwt.secret",
                generate,
            )?,
        })
    }
}

fn secret(
    configured: &Option<String>,
    dir: &Path,
    file: &str,
    generate: bool,
) -> anyhow::Result<String> {
    if let Some(value) = configured {
        return Ok(value.clone());
    }
    let path = dir.join(file);
    if let Ok(text) = std::fs::read_to_string(&path) {
        return Ok(text.trim().to_owned());
    }
    anyhow::ensure!(
        generate,
        "no {file} in {} and none configured; run `mps serve` once first",
        dir.display()
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let value = hex::encode(rand::random::<[u8; 24]>());
    write_private(&path, &value).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("mps: generated {} (keep it secret)", path.display());
    Ok(value)
}

fn write_private(path: &Path, value: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{value}")?;
    file.sync_all()
}

/// Builds the authenticator from the configuration and resolved secrets.
pub fn authenticator(config: &Config, secrets: &Secrets) -> anyhow::Result<Authenticator> {
    Authenticator::new(&config.auth, secrets.admin_key.clone(), &secrets.jwt_secret)
        .context("auth configuration")
}

/// Runs the server until SIGTERM or Ctrl-C.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let metrics = crate::telemetry::init_metrics()?;
    let secrets = Secrets::resolve(&config, true)?;
    let auth = authenticator(&config, &secrets)?;
    let store: Arc<dyn Store> = match &config.store.postgres_url {
        Some(url) => Arc::new(
            PostgresStore::connect(url, config.store.postgres_pool)
                .await
                .context("opening the PostgreSQL store")?,
        ),
        None => Arc::new(
            SqliteStore::open(&config.data_dir)
                .with_context(|| format!("opening the store in {}", config.data_dir.display()))?,
        ),
    };
    let node = config.node_name();
    let hub = Hub::new(&node, config.node_id, config.connection.queue);
    let (hub, broker, presence): crate::cluster::Joined = match &config.cluster.redis_url {
        Some(url) => crate::cluster::join(&config, url, hub, store.clone())?,
        None => {
            let hub = Arc::new(hub);
            (
                hub.clone(),
                Arc::new(LocalBroker::new(hub.clone())),
                Arc::new(LocalPresence::new(hub)),
            )
        }
    };
    let engine = Engine::new(
        store.clone(),
        broker,
        config.node_id,
        config.messages.clone(),
        config.topics.clone(),
    );
    let ingest = Ingest::start(&config.ingest, engine.clone(), config.messages.max_body)
        .context("message queue ingestion")?;
    let listener = listen(config.listen).with_context(|| format!("binding {}", config.listen))?;
    let local_addr = listener.local_addr()?;
    let state = Arc::new(ServerState {
        auth,
        engine,
        hub: hub.clone(),
        presence,
        ingest,
        metrics,
        started: Instant::now(),
        local_addr,
        shutting_down: AtomicBool::new(false),
        config,
    });
    tokio::spawn(sweep(state.clone()));

    let app = Router::new()
        .route("/ws", any(crate::transport::ws::protocol_ws))
        .route("/websocket/{token}", any(crate::transport::ws::simple_ws))
        .route("/sse", axum::routing::get(crate::transport::sse::sse))
        .route("/poll", axum::routing::get(crate::transport::poll::poll))
        .merge(crate::api::routes())
        .layer(DefaultBodyLimit::max(state.config.messages.max_body))
        .with_state(state.clone());

    println!("mps listening on http://{local_addr}");
    println!(
        "mps data in {} (admin key: {})",
        state.config.data_dir.display(),
        if state.config.admin_key.is_some() {
            "configured".to_owned()
        } else {
            state
                .config
                .data_dir
                .join("admin.key")
                .display()
                .to_string()
        }
    );
    tracing::info!(%local_addr, node = %node, "mps serving");

    let stopping = state.clone();
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown_signal().await;
        stopping.shutting_down.store(true, Ordering::Relaxed);
        tracing::info!("shutting down: closing connections");
        stopping.hub.close_all(CloseReason::Shutdown);
    })
    .await?;

    // Deliveries being sent are settled; the rest stay in their queues.
    state.ingest.stop(Duration::from_secs(5)).await;
    // Upgraded connections outlive the HTTP server; give them a moment to send their close.
    let deadline = Instant::now() + Duration::from_secs(5);
    while hub.count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Binds the listener with a deep accept backlog: a burst of reconnecting clients must not
/// overflow it (each overflow costs a client a one-second SYN retry).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Marks expired recipients and deletes old expired records, periodically.
async fn sweep(state: Arc<ServerState>) {
    let every = Duration::from_secs(state.config.messages.sweep_interval.max(1));
    let keep = (state.config.messages.keep_expired as i64).saturating_mul(1000);
    loop {
        tokio::time::sleep(every).await;
        let now = crate::id::now_ms() as i64;
        match state.engine.store().sweep(now, keep).await {
            Ok(swept) => {
                metrics::counter!("mps_expired_total").increment(swept.expired);
                if swept.expired + swept.deleted > 0 {
                    tracing::info!(
                        expired = swept.expired,
                        deleted = swept.deleted,
                        "swept expired messages"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "sweep failed"),
        }
        match state.engine.trim_topics(now).await {
            Ok(0) => {}
            Ok(dropped) => tracing::info!(dropped, "trimmed topic logs"),
            Err(e) => tracing::warn!(error = %e, "trimming topic logs failed"),
        }
    }
}
