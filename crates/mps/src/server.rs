//! Wiring: builds the store, broker, hub, channels and engine from the configuration, serves
//! HTTP and WebSocket on the client listener (with TLS when configured; SIGHUP reloads its
//! certificate) and the admin routes on it or on their own listener (`admin_listen`), runs the
//! expiry sweeper, and shuts everything down in one go ([`run`]; [`serve`] on SIGTERM or
//! Ctrl-C): stop accepting, close connections with "going away", let consumers settle, then let
//! the channels, webhooks and delivery recorder finish, within `shutdown_timeout`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::broker::redis::RedisBroker;
use crate::broker::{Broker, LocalBroker};
use crate::channels::Channels;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::engine::Engine;
use crate::hub::{CloseReason, Hub};
use crate::ingest::Ingest;
use crate::limits::{Admission, RequestRates};
use crate::presence::redis::RedisPresence;
use crate::presence::{LocalPresence, Presence};
use crate::push::Pushers;
use crate::push::fallback::Fallback;
use crate::shutdown::Tasks;
use crate::state::ServerState;
use crate::store::Store;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;
use crate::store::timed::TimedStore;
use crate::webhooks::Webhooks;

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

impl Secrets {
    /// What `mps token` needs: the JWT secret as `serve` finds it (generated in the data
    /// directory when there is none, for the server started there later). The admin key is
    /// neither read nor written; a throwaway one stands in, since issuing never checks it.
    pub fn for_tokens(config: &Config) -> anyhow::Result<Secrets> {
        Ok(Secrets {
            admin_key: hex::encode(rand::random::<[u8; 24]>()),
            jwt_secret: secret(
                &config.auth.jwt_secret,
                &config.data_dir,
                "jwt.secret",
                true,
            )?,
        })
    }
}

/// The admin key as an operator command finds it: configured, else `admin.key` in the data
/// directory; never generated.
pub fn admin_key(config: &Config) -> anyhow::Result<String> {
    secret(&config.admin_key, &config.data_dir, "admin.key", false)
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

/// The sockets a server answers on, bound before it runs so that its caller knows their
/// addresses (the configured ports may be 0).
pub struct Listeners {
    pub client: TcpListener,
    /// The admin routes' own listener (`admin_listen`).
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds `listen` and `admin_listen`.
    pub fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let client = listen(config.listen).with_context(|| format!("binding {}", config.listen))?;
        let admin = match config.admin_listen {
            Some(addr) => Some(listen(addr).with_context(|| format!("binding {addr}"))?),
            None => None,
        };
        Ok(Listeners { client, admin })
    }
}

/// How a shutdown went.
#[derive(Debug)]
pub struct Stopped {
    /// Tasks still running when `shutdown_timeout` was up (0 when everything stopped).
    pub lingering: usize,
}

/// Runs the server until SIGTERM or Ctrl-C.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&config)?;
    let stop = CancellationToken::new();
    let signalled = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signalled.cancel();
    });
    let stopped = run(config, listeners, stop).await?;
    if stopped.lingering > 0 {
        tracing::warn!(
            tasks = stopped.lingering,
            "shutdown_timeout passed: cutting off what has not finished"
        );
    }
    Ok(())
}

/// Runs a whole server in the current runtime on `listeners` until `stop` is cancelled, then
/// shuts it down within `shutdown_timeout`. Everything it starts belongs to it, so one process
/// can run several servers, each with its own configuration (the tests do).
pub async fn run(
    config: Config,
    listeners: Listeners,
    stop: CancellationToken,
) -> anyhow::Result<Stopped> {
    let bound = Duration::from_secs(config.shutdown_timeout);
    let tls = crate::tls::Tls::from_config(&config.tls)
        .context("TLS certificate and key")?
        .map(Arc::new);
    let work = Tasks::new();
    // What started before a step failed stops with it.
    let state = build(config, &listeners, tls.is_some(), &work)
        .await
        .inspect_err(|_| work.stop())?;
    if let Err(e) = start(&state, listeners, tls, &work) {
        shut_down(&state, &work, bound).await;
        return Err(e);
    }
    stop.cancelled().await;
    Ok(shut_down(&state, &work, bound).await)
}

/// A node's hub with the broker and registry that go with it.
type Joined = (Arc<Hub>, Arc<dyn Broker>, Arc<dyn Presence>);

/// Joins the cluster at `url`: the hub reports to the Redis broker and registry.
fn join_cluster(config: &Config, url: &str, hub: Hub, tasks: &Tasks) -> anyhow::Result<Joined> {
    crate::telemetry::preregister_cluster();
    if config.store.postgres_url.is_none() {
        tracing::warn!(
            "cluster.redis_url without store.postgres_url: each node keeps its own store, so a \
             message stored on one node is not in another node's backlog"
        );
    }
    let cluster =
        Arc::new(Cluster::new(&config.cluster, url, config.node_id).context("cluster.redis_url")?);
    let (broker_tx, broker_rx) = tokio::sync::mpsc::unbounded_channel();
    let (presence_tx, presence_rx) = tokio::sync::mpsc::unbounded_channel();
    let hub = Arc::new(hub.with_observer(broker_tx).with_observer(presence_tx));
    let broker = RedisBroker::start(cluster.clone(), hub.clone(), broker_rx, tasks)
        .context("Redis subscriber")?;
    let presence = RedisPresence::start(
        cluster,
        hub.clone(),
        config.cluster.presence_ttl,
        presence_rx,
        tasks,
    );
    Ok((hub, Arc::new(broker), Arc::new(presence)))
}

/// Builds the store, the outbound channels, the hub and the engine, and the state that every
/// handler shares; the back end's tasks run on `work`.
async fn build(
    config: Config,
    listeners: &Listeners,
    tls: bool,
    work: &Tasks,
) -> anyhow::Result<Arc<ServerState>> {
    let metrics = crate::telemetry::init_metrics()?;
    let secrets = Secrets::resolve(&config, true)?;
    let auth = authenticator(&config, &secrets)?;
    let pushers = Arc::new(Pushers::from_config(&config.push).context("push configuration")?);
    let store = open_store(&config).await?;
    let node = config.node_name();
    let webhooks =
        Webhooks::start(&config.webhooks, &node, config.node_id, work).context("webhooks")?;
    let channels = Channels::start(&config.push.apps, store.clone(), webhooks.clone(), work)?;
    let hub = Hub::new(&node, config.node_id, config.connection.queue)
        .with_user_limit(config.limits.connections_per_user);
    let (hub, broker, presence): Joined = match &config.cluster.redis_url {
        Some(url) => join_cluster(&config, url, hub, work)?,
        None => {
            let hub = Arc::new(hub);
            (
                hub.clone(),
                Arc::new(LocalBroker::new(hub.clone())),
                Arc::new(LocalPresence::new(hub)),
            )
        }
    };
    let push = Fallback::start(
        store.clone(),
        presence.clone(),
        pushers,
        webhooks.clone(),
        work,
    );
    crate::channels::chain::start(store.clone(), push.clone(), channels.clone(), work);
    let engine = Engine::new(
        store,
        broker,
        presence.clone(),
        &config,
        push,
        channels,
        work,
    );
    work.spawn_until_stopped(engine.clone().catch_up_after_reconnects(hub.clone()));
    let edge = Tasks::new();
    let ingest = Ingest::start(
        &config.ingest,
        engine.clone(),
        config.messages.max_body,
        &edge,
    )
    .context("message queue ingestion")?;
    Ok(Arc::new(ServerState {
        auth,
        engine,
        hub,
        presence,
        ingest,
        webhooks,
        metrics,
        started: Instant::now(),
        local_addr: listeners.client.local_addr()?,
        tls,
        admission: Admission::new(&config.limits),
        rates: RequestRates::new(&config.limits),
        edge,
        config,
    }))
}

/// The store the configuration names, timed: PostgreSQL, or SQLite in the data directory.
async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
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
    Ok(Arc::new(TimedStore::new(store)))
}

/// Starts the sweeper and the heartbeats on `work`, and the listeners on the clients' side
/// of the state.
fn start(
    state: &Arc<ServerState>,
    listeners: Listeners,
    tls: Option<Arc<crate::tls::Tls>>,
    work: &Tasks,
) -> anyhow::Result<()> {
    let config = &state.config;
    work.spawn_until_stopped(sweep(state.clone()));
    work.spawn_until_stopped(
        state
            .hub
            .clone()
            .heartbeats(Duration::from_secs(config.connection.heartbeat.max(1))),
    );
    if config.connection.conformance_echo {
        tracing::warn!("connection.conformance_echo is on: /conformance/echo echoes anyone");
    }
    let request_timeout = Duration::from_secs(config.limits.request_timeout);
    if let Some(admin) = listeners.admin {
        let admin_addr = admin.local_addr()?;
        // Its own connection counts, so that a flood of clients does not lock operators out.
        let edge = crate::listener::Edge {
            admission: Admission::new(&config.limits),
            request_timeout,
            tls: None,
            tasks: state.edge.clone(),
        };
        let admin_app = admin_app(config).with_state(state.clone());
        state
            .edge
            .spawn(crate::listener::serve(admin, admin_app, edge));
        println!("mps admin listening on http://{admin_addr}");
        tracing::info!(%admin_addr, "admin routes on their own listener");
    }
    if let Some(tls) = &tls {
        crate::telemetry::preregister_tls();
        work.spawn_until_stopped(reload_on_sighup(tls.clone()));
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let local_addr = state.local_addr;
    println!("mps listening on {scheme}://{local_addr}");
    println!(
        "mps data in {} (admin key: {})",
        config.data_dir.display(),
        if config.admin_key.is_some() {
            "configured".to_owned()
        } else {
            config.data_dir.join("admin.key").display().to_string()
        }
    );
    tracing::info!(%local_addr, node = %state.hub.node(), "mps serving");
    let edge = crate::listener::Edge {
        admission: state.admission.clone(),
        request_timeout,
        tls,
        tasks: state.edge.clone(),
    };
    let app = app(config).with_state(state.clone());
    state
        .edge
        .spawn(crate::listener::serve(listeners.client, app, edge));
    Ok(())
}

/// Stops the clients' side first (the listeners stop accepting, connections are closed with
/// "going away", consumers settle what they took), then the back end, whose queues still
/// take what the clients' side left them (disconnect events, delivery records), all within
/// `bound`.
async fn shut_down(state: &ServerState, work: &Tasks, bound: Duration) -> Stopped {
    let deadline = tokio::time::Instant::now() + bound;
    tracing::info!("shutting down: closing connections");
    state.edge.stop();
    state.hub.close_all(CloseReason::Shutdown);
    let edge = state.edge.stopped(bound).await;
    work.stop();
    let rest = deadline.saturating_duration_since(tokio::time::Instant::now());
    let lingering = edge + work.stopped(rest).await;
    tracing::info!("stopped");
    Stopped { lingering }
}

/// The HTTP service of the client listener, before state: every route of
/// [`crate::api::router`] (the one table, which the OpenAPI document is made from), or only the
/// client routes when `admin_listen` gives the admin routes their own listener, and the layers
/// around them. Routes are added there, never here.
pub fn app(config: &Config) -> Router<Arc<ServerState>> {
    let router = if config.admin_listen.is_some() {
        crate::api::client_router()
    } else {
        crate::api::router().0
    };
    let router = match crate::origin::Origins::from_config(&config.http.allowed_origins) {
        Some(origins) => router.layer(axum::middleware::from_fn_with_state(
            origins,
            crate::origin::check,
        )),
        None => router,
    };
    layers(router, config)
}

/// The HTTP service of the admin listener (`admin_listen`), before state.
pub fn admin_app(config: &Config) -> Router<Arc<ServerState>> {
    layers(crate::api::admin_router(), config)
}

/// The layers around every route of every listener.
fn layers(router: Router<Arc<ServerState>>, config: &Config) -> Router<Arc<ServerState>> {
    use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
    let request_id = axum::http::HeaderName::from_static(crate::telemetry::REQUEST_ID);
    // The last layer is the outermost: an odd request id is dropped, the request id is set
    // (when the caller sent none) before the request span is made, and copied onto the answer.
    router
        .layer(DefaultBodyLimit::max(config.messages.max_body))
        .layer(axum::middleware::from_fn(crate::telemetry::count_responses))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(crate::telemetry::request_span),
        )
        .layer(SetRequestIdLayer::new(
            request_id,
            crate::telemetry::MakeRequestId,
        ))
        .layer(axum::middleware::map_request(
            crate::telemetry::drop_odd_request_id,
        ))
}

/// Reloads the TLS certificate and key on every SIGHUP; a file that does not load is logged
/// and the certificate in use stays.
async fn reload_on_sighup(tls: Arc<crate::tls::Tls>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP: no TLS reloads");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        match tls.reload() {
            Ok(()) => tracing::info!("SIGHUP: reloaded the TLS certificate and key"),
            Err(e) => tracing::error!(
                error = %e,
                "SIGHUP: the TLS certificate or key did not load; keeping the one in use"
            ),
        }
    }
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

/// Marks expired recipients, deletes old expired records, trims topic logs and removes device
/// registrations not refreshed for `push.expire_after`, periodically.
async fn sweep(state: Arc<ServerState>) {
    let every = Duration::from_secs(state.config.messages.sweep_interval.max(1));
    let keep = (state.config.messages.keep_expired as i64).saturating_mul(1000);
    let device_life = (state.config.push.expire_after as i64).saturating_mul(1000);
    loop {
        tokio::time::sleep(every).await;
        let now = crate::id::now_ms() as i64;
        let report = state.webhooks.expired_room();
        match state.engine.store().sweep(now, keep, report).await {
            Ok(swept) => {
                metrics::counter!("mps_expired_total").increment(swept.expired);
                let unlisted = swept.expired.saturating_sub(swept.reported.len() as u64);
                state
                    .webhooks
                    .expired(&swept.reported, if report > 0 { unlisted } else { 0 });
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
        match state
            .engine
            .store()
            .expire_devices(now.saturating_sub(device_life))
            .await
        {
            Ok(0) => {}
            Ok(removed) => {
                metrics::counter!("mps_devices_removed_total", "reason" => "expired")
                    .increment(removed);
                tracing::info!(
                    removed,
                    "expired device registrations not refreshed in time"
                );
            }
            Err(e) => tracing::warn!(error = %e, "expiring device registrations failed"),
        }
    }
}
