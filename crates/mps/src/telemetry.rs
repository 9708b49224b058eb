//! Logs (text or JSON, to stderr) and the Prometheus recorder behind `/metrics`.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge};
use parking_lot::Mutex;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;
use crate::words::TransportKind;

/// Logs to stderr: one line per event, as text or (`log.format = "json"`) one JSON object per
/// line whose event fields are top-level keys, with the request span's fields (`request_id`,
/// `method`, `path`) under `span`.
///
/// Whatever the level, the WebSocket library logs at most at `info`: its `trace` lines hold whole
/// frames, and a client's open frame holds its token.
pub fn init_logs(config: &LogConfig) {
    let mut filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    for quiet in SECRET_BEARING_TARGETS {
        if let Ok(directive) = format!("{quiet}=info").parse() {
            filter = filter.add_directive(directive);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if config.format.eq_ignore_ascii_case("json") {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
}

/// Libraries whose debug and trace lines carry what clients send (frames, tokens in them).
const SECRET_BEARING_TARGETS: [&str; 2] = ["tungstenite", "tokio_tungstenite"];

/// Header carrying the request id, accepted from the caller or generated (a UUID).
pub const REQUEST_ID: &str = "x-request-id";

/// Makes the request id of a request that came without one: a random (version 4) UUID from the
/// thread's random generator, without a system call per request.
#[derive(Clone, Copy, Default)]
pub struct MakeRequestId;

impl tower_http::request_id::MakeRequestId for MakeRequestId {
    fn make_request_id<B>(
        &mut self,
        _: &axum::http::Request<B>,
    ) -> Option<tower_http::request_id::RequestId> {
        let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        let mut text = uuid::Uuid::encode_buffer();
        let text = id.hyphenated().encode_lower(&mut text);
        axum::http::HeaderValue::from_str(text).ok().map(Into::into)
    }
}

/// The request id of a request, when it is a sane one: at most 128 visible ASCII characters
/// (anything else a caller sends is not copied into the logs).
pub fn request_id(headers: &axum::http::HeaderMap) -> Option<Box<str>> {
    let id = headers.get(REQUEST_ID)?.to_str().ok()?;
    (!id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| id.into())
}

/// Drops an `X-Request-Id` that breaks the rule of [`request_id`], so that the server makes
/// one for the request instead of echoing what the caller sent.
pub async fn drop_odd_request_id(mut request: axum::extract::Request) -> axum::extract::Request {
    if request.headers().contains_key(REQUEST_ID) && request_id(request.headers()).is_none() {
        request.headers_mut().remove(REQUEST_ID);
    }
    request
}

/// The span of one HTTP request: method, path and request id; every log line of the request
/// carries them. Never the query, and never a path segment that is a token
/// (`/websocket/{token}`): the route's pattern stands for such a path.
pub fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let id = request_id(request.headers());
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str());
    let path = match route {
        Some(route) if route.contains("{token}") => route,
        _ => request.uri().path(),
    };
    tracing::info_span!(
        "request",
        method = %request.method(),
        path,
        request_id = id.as_deref(),
    )
}

/// Installs the metrics recorder and describes every metric mps records, once per process:
/// the recorder is process-wide by nature, so every server of the process shares it.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    static INSTALLED: Mutex<Option<PrometheusHandle>> = Mutex::new(None);
    let mut installed = INSTALLED.lock();
    if let Some(handle) = &*installed {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("mps_store_commit_seconds".into()),
            &[
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full("mps_store_seconds".into()),
            &[
                0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full("mps_store_commit_batch".into()),
            &[1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 4096.0],
        )?
        .set_buckets_for_metric(
            Matcher::Full("mps_push_seconds".into()),
            &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
        )?
        .install_recorder()?;
    describe();
    hot();
    preregister();
    let upkeep = handle.clone();
    // A thread, not a task: it outlives any one server and its runtime.
    std::thread::Builder::new()
        .name("mps-metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            }
        })?;
    *installed = Some(handle.clone());
    Ok(handle)
}

/// Handles of the metrics recorded per delivery or per connection, looked up once instead of on
/// every write.
pub struct Hot {
    pub frames_sent: Counter,
    pub directed_delivered: Counter,
    /// Frames not queued on a connection: its queue overflowed, or it was closing.
    pub queue_dropped: Counter,
    /// `mps_connections{transport, agent}`, one per [`TransportKind`] × [`AGENTS`].
    connections: Vec<Gauge>,
}

/// Agents of `mps_connections`; any other agent is counted as `other`, so that clients cannot
/// grow the number of series.
pub const AGENTS: [&str; 5] = ["bs", "cs", "ios", "android", "other"];

/// The per-delivery metric handles (resolved against the recorder on first use, which is after
/// [`init_metrics`] in a running server).
pub fn hot() -> &'static Hot {
    static HOT: OnceLock<Hot> = OnceLock::new();
    HOT.get_or_init(|| Hot {
        frames_sent: metrics::counter!("mps_frames_sent_total"),
        directed_delivered: metrics::counter!("mps_directed_delivered_total"),
        queue_dropped: metrics::counter!("mps_queue_dropped_total"),
        connections: TransportKind::ALL
            .iter()
            .flat_map(|t| {
                AGENTS.iter().map(move |a| {
                    metrics::gauge!("mps_connections", "transport" => t.as_str(), "agent" => *a)
                })
            })
            .collect(),
    })
}

impl Hot {
    /// The live-connections gauge of a transport and agent.
    pub fn connections(&self, transport: TransportKind, agent: &str) -> &Gauge {
        let t = TransportKind::ALL
            .iter()
            .position(|t| *t == transport)
            .unwrap_or(0);
        let a = AGENTS
            .iter()
            .position(|a| *a == agent)
            .unwrap_or(AGENTS.len() - 1);
        &self.connections[t * AGENTS.len() + a]
    }
}

/// Counts a WebSocket close the server sends, by code (`mps_ws_closes_total{code}`).
pub fn count_close(code: u16) {
    use mps_proto::close::*;
    let label = match code {
        NORMAL => "1000",
        GOING_AWAY => "1001",
        WS_PROTOCOL => "1002",
        INVALID_UTF8 => "1007",
        TOO_BIG => "1009",
        INTERNAL => "1011",
        PROTOCOL => "4400",
        UNAUTHORIZED => "4401",
        KICKED => "4403",
        TIMEOUT => "4408",
        TOO_MANY => "4429",
        _ => "other",
    };
    metrics::counter!("mps_ws_closes_total", "code" => label).increment(1);
}

/// Middleware counting every HTTP answer by status (`mps_http_responses_total{status}`).
pub async fn count_responses(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("mps_http_responses_total", "status" => status).increment(1);
    response
}

/// The cluster's series, at zero from the moment a node joins (docs/metrics.md, `cluster`).
pub fn preregister_cluster() {
    for name in [
        "mps_cluster_received_total",
        "mps_cluster_publish_failures_total",
        "mps_cluster_resubscribes_total",
        "mps_cluster_resynced_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    metrics::gauge!("mps_cluster_subscribed").set(0.0);
}

/// The TLS series, at zero from the start when TLS is on (docs/metrics.md, `tls`).
pub fn preregister_tls() {
    for reason in ["error", "timeout"] {
        metrics::counter!("mps_tls_handshake_failures_total", "reason" => reason).absolute(0);
    }
}

/// Series whose labels are known in advance start at zero, so that dashboards and alerts see
/// them before the first event.
fn preregister() {
    for class in ["directed", "topic", "component", "broadcast"] {
        metrics::counter!("mps_messages_accepted_total", "class" => class).absolute(0);
    }
    // Polls are not sessions: they count no logins.
    for transport in TransportKind::ALL
        .into_iter()
        .filter(|t| *t != TransportKind::Poll)
    {
        metrics::counter!("mps_logins_total", "transport" => transport.as_str()).absolute(0);
    }
    for endpoint in ["ws", "websocket", "sse"] {
        metrics::counter!("mps_upgrades_total", "endpoint" => endpoint).absolute(0);
    }
    for limit in crate::limits::Limit::ALL {
        metrics::counter!("mps_limit_rejections_total", "limit" => limit.label()).absolute(0);
    }
    for name in [
        "mps_messages_duplicates_total",
        "mps_deliveries_queued_total",
        "mps_acks_total",
        "mps_slow_consumer_disconnects_total",
        "mps_heartbeat_timeouts_total",
        "mps_expired_total",
        "mps_polls_total",
        "mps_topic_replayed_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "mps_sockets_open",
        "Accepted TCP connections open on this node (what the connection limits count), as of the scrape"
    );
    describe_gauge!(
        "mps_connections",
        "Live client connections on this node, by transport and agent"
    );
    describe_counter!(
        "mps_queue_dropped_total",
        "Frames not queued on a connection because its queue overflowed or it was closing"
    );
    describe_counter!(
        "mps_ws_closes_total",
        "WebSocket closes sent by the server, by close code"
    );
    describe_counter!("mps_http_responses_total", "HTTP answers, by status code");
    describe_counter!(
        "mps_tls_handshake_failures_total",
        "TLS handshakes on the client listener that failed or did not finish in time, by reason"
    );
    describe_histogram!(
        "mps_store_seconds",
        "Duration of each store operation, by operation"
    );
    describe_counter!(
        "mps_store_errors_total",
        "Store operations that failed, by operation"
    );
    describe_counter!(
        "mps_upgrades_total",
        "WebSocket upgrade requests, by endpoint"
    );
    describe_counter!("mps_logins_total", "Sessions opened, by transport");
    describe_counter!("mps_disconnects_total", "Sessions ended, by reason");
    describe_counter!(
        "mps_bad_input_total",
        "Rejected client or back-end input, by kind"
    );
    describe_counter!("mps_api_errors_total", "API error answers, by code");
    describe_counter!(
        "mps_limit_rejections_total",
        "Connections, requests and frames refused by a limit, by limit (docs/security.md)"
    );
    describe_counter!(
        "mps_messages_accepted_total",
        "Messages accepted, by delivery class"
    );
    describe_counter!(
        "mps_deliveries_queued_total",
        "Frames queued on connections by fan-out"
    );
    describe_counter!("mps_frames_sent_total", "Push frames written to sockets");
    describe_counter!(
        "mps_directed_delivered_total",
        "Directed messages written to a connection"
    );
    describe_counter!("mps_acks_total", "Recipients moved to acked");
    describe_counter!(
        "mps_slow_consumer_disconnects_total",
        "Connections dropped because their outbound queue overflowed"
    );
    describe_counter!(
        "mps_heartbeat_timeouts_total",
        "Connections dropped for silence"
    );
    describe_counter!(
        "mps_expired_total",
        "Recipients whose message expired unacknowledged"
    );
    describe_histogram!("mps_store_commit_seconds", "Duration of one store commit");
    describe_histogram!("mps_store_commit_batch", "Writes folded into one commit");
    describe_counter!(
        "mps_webhook_events_total",
        "Webhook events, by webhook and result (sent, failed after retries or a refusal, dropped because the queue was full)"
    );
    describe_counter!(
        "mps_webhook_requests_total",
        "Webhook requests, by webhook and outcome (ok, retry, refused)"
    );
    describe_gauge!("mps_webhook_queue", "Webhook events waiting, by webhook");
    describe_counter!(
        "mps_push_total",
        "Vendor pushes settled, by way (apns, fcm, webpush) and outcome (sent, gone, failed)"
    );
    describe_histogram!(
        "mps_push_seconds",
        "Duration of one request to a push vendor, by way"
    );
    describe_counter!(
        "mps_push_retries_total",
        "Vendor push attempts retried after a temporary failure, by way"
    );
    describe_counter!(
        "mps_push_credentials_total",
        "Vendor credentials signed or fetched (APNs provider tokens, FCM access tokens, VAPID tokens), by way"
    );
}

/// Running totals of this node's main counters, for `GET /api/v1/stats` and the console's
/// rates. Read from the Prometheus text, so they are exactly what `/metrics` shows.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Totals {
    /// Messages accepted, every class (`mps_messages_accepted_total`).
    pub messages: u64,
    /// Push frames written to clients (`mps_frames_sent_total`).
    pub deliveries: u64,
    /// Directed messages written to a connection (`mps_directed_delivered_total`).
    pub directed_delivered: u64,
    /// Recipients moved to acked (`mps_acks_total`).
    pub acks: u64,
    /// API error answers (`mps_api_errors_total`).
    pub api_errors: u64,
    /// Rejected client or back-end input (`mps_bad_input_total`); a refused API call counts
    /// here and in `api_errors`.
    pub bad_input: u64,
    /// Sessions opened (`mps_logins_total`).
    pub logins: u64,
    /// Sessions ended (`mps_disconnects_total`).
    pub disconnects: u64,
}

impl Totals {
    /// Sums each counter over its labels in Prometheus text.
    pub fn from_prometheus(text: &str) -> Totals {
        let mut totals = Totals::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or("");
            let field = match name {
                "mps_messages_accepted_total" => &mut totals.messages,
                "mps_frames_sent_total" => &mut totals.deliveries,
                "mps_directed_delivered_total" => &mut totals.directed_delivered,
                "mps_acks_total" => &mut totals.acks,
                "mps_api_errors_total" => &mut totals.api_errors,
                "mps_bad_input_total" => &mut totals.bad_input,
                "mps_logins_total" => &mut totals.logins,
                "mps_disconnects_total" => &mut totals.disconnects,
                _ => continue,
            };
            if let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                *field += value as u64;
            }
        }
        totals
    }
}

/// Sets `mps_allocator_bytes` from the allocator's own statistics, as of now: what the
/// process's heap holds live, in pages it uses, resident, and for the allocator's bookkeeping.
/// The gap between `allocated` and `resident` is fragmentation and pages not yet returned.
#[cfg(not(target_env = "msvc"))]
pub fn allocator_gauges() {
    use tikv_jemalloc_ctl::{epoch, stats};
    // The statistics are a snapshot taken when the epoch advances.
    if epoch::advance().is_err() {
        return;
    }
    type Read = fn() -> tikv_jemalloc_ctl::Result<usize>;
    let kinds: [(&'static str, Read); 5] = [
        ("allocated", stats::allocated::read),
        ("active", stats::active::read),
        ("resident", stats::resident::read),
        ("metadata", stats::metadata::read),
        ("retained", stats::retained::read),
    ];
    for (kind, read) in kinds {
        if let Ok(bytes) = read() {
            metrics::gauge!("mps_allocator_bytes", "kind" => kind).set(bytes as f64);
        }
    }
}

#[cfg(target_env = "msvc")]
pub fn allocator_gauges() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_each_counter_over_its_labels() {
        let text = "# TYPE mps_messages_accepted_total counter\n\
            mps_messages_accepted_total{class=\"directed\"} 3\n\
            mps_messages_accepted_total{class=\"topic\"} 4\n\
            mps_frames_sent_total 10\n\
            mps_acks_total_other 99\n\
            mps_api_errors_total{code=\"bad_json\"} 1\n\
            mps_bad_input_total{kind=\"bad json\"} 2\n";
        let totals = Totals::from_prometheus(text);
        assert_eq!(
            totals,
            Totals {
                messages: 7,
                deliveries: 10,
                api_errors: 1,
                bad_input: 2,
                ..Totals::default()
            }
        );
    }
}
