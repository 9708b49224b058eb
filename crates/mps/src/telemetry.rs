//! Logs (text or JSON, to stderr) and the Prometheus recorder behind `/metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::Counter;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

pub fn init_logs(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if config.format.eq_ignore_ascii_case("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Installs the process-wide metrics recorder and describes every metric mps records.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("mps_store_commit_seconds".into()),
            &[
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full("mps_store_commit_batch".into()),
            &[1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 4096.0],
        )?
        .install_recorder()?;
    describe();
    hot();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Handles of the metrics recorded per delivery, looked up once instead of on every write.
pub struct Hot {
    pub frames_sent: Counter,
    pub directed_delivered: Counter,
}

/// The per-delivery metric handles (resolved against the recorder on first use, which is after
/// [`init_metrics`] in a running server).
pub fn hot() -> &'static Hot {
    static HOT: OnceLock<Hot> = OnceLock::new();
    HOT.get_or_init(|| Hot {
        frames_sent: metrics::counter!("mps_frames_sent_total"),
        directed_delivered: metrics::counter!("mps_directed_delivered_total"),
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("mps_connections", "Live client connections on this node");
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
}
