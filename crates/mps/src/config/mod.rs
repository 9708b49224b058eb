//! Configuration: every section's type (the larger ones in `ingest.rs`, `push.rs` and
//! `webhooks.rs`), and how they merge: defaults, then a TOML file, then `MPS_*` environment
//! variables, then command-line flags (later wins). `mps serve --print-config` shows the merged
//! result. It imports only the shared words, so every layer may read its own section.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use serde_json::Value;

mod ingest;
mod push;
mod webhooks;

pub use ingest::{IngestConfig, NatsConfig, RabbitMqConfig};
pub use push::{
    ApnsConfig, AppPush, EmailConfig, FcmConfig, PushConfig, TlsMode, WebPushConfig,
    WebhookChannelConfig,
};
pub use webhooks::WebhookConfig;

/// Everything `mps serve` can be told.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the HTTP and WebSocket listener.
    pub listen: SocketAddr,
    /// Address of a second, plain-HTTP listener for the admin-key API, `/metrics`, `/console`
    /// and the OpenAPI document; when set they are served only there (the client listener
    /// answers 404 for them), so that a firewall can keep them off the internet.
    pub admin_listen: Option<SocketAddr>,
    /// Seconds a shutdown (SIGTERM, Ctrl-C) may take: closing the clients' connections,
    /// settling what consumers took, sending what the channels and webhooks hold, recording
    /// deliveries. What has not finished by then is cut off.
    pub shutdown_timeout: u64,
    /// Where the embedded store and generated secrets live.
    pub data_dir: PathBuf,
    /// Key for the back-end API (`Authorization: Bearer KEY`). Generated into the data
    /// directory on first start when unset.
    pub admin_key: Option<String>,
    /// Name of this node, shown on its clients; defaults to the host name.
    pub node: Option<String>,
    /// Node number mixed into message ids so that ids from several nodes never collide (0-1023).
    pub node_id: u16,
    pub log: LogConfig,
    /// TLS on the client listener (`wss://`, `https://`).
    pub tls: TlsConfig,
    /// What browsers may do: the origins allowed to connect and call the browser-facing routes.
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub connection: ConnectionConfig,
    pub messages: MessagesConfig,
    pub topics: TopicsConfig,
    pub store: StoreConfig,
    pub cluster: ClusterConfig,
    pub limits: LimitsConfig,
    /// Message queues to consume messages from (`[[ingest.rabbitmq]]`, `[[ingest.nats]]`).
    pub ingest: IngestConfig,
    /// Vendor push (APNs, FCM, Web Push) credentials per app and device-data rules.
    pub push: PushConfig,
    /// Signed HTTP callbacks to back ends on client and message events (`[[webhooks]]`).
    pub webhooks: Vec<WebhookConfig>,
    /// Per-app settings: `[apps.<app>.formats.<agent>]` templates of the shape an agent's
    /// clients get (docs/formats.md).
    pub apps: BTreeMap<String, AppConfig>,
    /// Client-facing base URLs per network line (for example `intranet` and `internet`),
    /// returned with every issued token. Empty means the listener's own address.
    pub lines: BTreeMap<String, String>,
}

/// `[apps.<app>]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppConfig {
    /// Templates per agent (`ios`, `android`) or vendor (`apns`, `fcm`, `webpush`).
    pub formats: BTreeMap<String, Template>,
}

/// `[apps.<app>.formats.<agent>]`: the title and content an agent's clients get, as templates
/// over the message: a string `"${path}"` is replaced by the value at `path` (any JSON), and
/// `${path}` inside a longer string by its text. Paths: `id`, `title`, `type`, `component`,
/// `topic`, `sender`, `created`, `content` and `content.a.b` (into the content).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Template {
    pub title: Option<String>,
    pub content: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A `tracing` filter such as `info` or `mps=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

/// `[tls]`: both set turns TLS on for the client listener. SIGHUP reloads both files; new
/// connections get the new certificate, and a file that does not load keeps the old one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the certificate chain, the server's certificate first.
    pub cert: Option<PathBuf>,
    /// PEM file of the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

/// `[http]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Origins (`https://app.example.com`) whose pages may open WebSockets and call the
    /// browser-facing routes; a request with another `Origin` is answered 403. These origins get
    /// CORS answers. `"*"` allows every origin (with CORS); empty (the default) checks nothing
    /// and sends no CORS headers. Requests without `Origin` (non-browser clients) always pass.
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `HS256` (default), `RS256` or `ES256`.
    pub algorithm: String,
    /// Shared secret for HS256. Generated into the data directory on first start when unset.
    pub jwt_secret: Option<String>,
    /// PEM public key file for RS256/ES256 verification.
    pub public_key_file: Option<PathBuf>,
    /// PEM private key file for RS256/ES256 signing (`mps token`, `POST /api/v1/tokens`).
    pub private_key_file: Option<PathBuf>,
    /// Default lifetime of issued client tokens, seconds.
    pub token_ttl: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionConfig {
    /// Seconds between server pings.
    pub heartbeat: u64,
    /// A peer that sends nothing (not even a pong) for this many seconds is dropped.
    pub timeout: u64,
    /// Seconds a new WebSocket has to send its open frame.
    pub open_timeout: u64,
    /// Largest accepted client frame or message, bytes.
    pub max_frame: usize,
    /// Outbound frames a connection may have queued before it is dropped as a slow consumer.
    pub queue: usize,
    /// Error frames tolerated on one connection before it is closed for protocol abuse.
    pub max_errors: u32,
    /// Mounts `GET /conformance/echo`, an unauthenticated WebSocket echo on the same stack as
    /// `/ws`, for the Autobahn conformance suite. Never in production.
    pub conformance_echo: bool,
    /// Most components one connection may list in its `componentSet`.
    pub max_components: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessagesConfig {
    /// Default lifetime of a directed message, seconds (3 days).
    pub ttl: u64,
    /// Largest accepted lifetime, seconds.
    pub max_ttl: u64,
    /// How long expired records are kept before the sweeper deletes them, seconds.
    pub keep_expired: u64,
    /// Seconds between sweeps.
    pub sweep_interval: u64,
    /// Most recipients one message may name.
    pub max_recipients: usize,
    /// Largest accepted API request body, bytes.
    pub max_body: usize,
    /// Seconds an idempotency key (`id` of a message) keeps a repeat from being sent again.
    pub idempotency_window: u64,
    /// Most users one audience may resolve to (a larger audience is refused, not cut).
    pub max_audience: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicsConfig {
    /// Seconds a topic message stays in its retained log.
    pub retention: u64,
    /// Most messages kept per topic.
    pub retention_count: u64,
    /// Per-topic overrides; the first whose pattern matches the topic applies.
    pub retain: Vec<TopicRetention>,
    /// Longest topic name or pattern, bytes.
    pub max_length: usize,
    /// Most levels in a topic name or pattern.
    pub max_depth: usize,
    /// Most topic patterns one connection may subscribe to.
    pub max_subscriptions: usize,
    /// When true, a token without a `topics` claim may subscribe to no topic (default: any).
    pub require_claim: bool,
    /// How far (ms) before a client's last id a resume replays again. Ids are assigned before
    /// the store commit, so concurrent publishes can reach a client out of id order; the
    /// overlap re-sends them (clients drop repeats by id) instead of losing one. 0 turns it off.
    pub resume_overlap_ms: u64,
}

/// What one client, address, user or credential may use (docs/security.md has the table of
/// every limit, its answer and its metric).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most connections (TCP, of any kind) this node holds; more are answered 503. 0: the
    /// process's open-files limit less [`RESERVED_FILES`].
    pub max_connections: usize,
    /// Most connections from one remote address; more are answered 429. 0: no limit (behind a
    /// reverse proxy every client has the proxy's address).
    pub connections_per_address: usize,
    /// Most sessions (WebSocket, SSE, long poll) of one user on this node; 0: no limit.
    pub connections_per_user: usize,
    /// Seconds a client has to send a request's head, and again its body (slowloris); also how
    /// long an idle keep-alive connection stays open.
    pub request_timeout: u64,
    /// Frames a second one WebSocket connection may send, sustained; 0: no limit.
    pub message_rate: u32,
    /// Frames a WebSocket connection may send at once above the rate.
    pub message_burst: u32,
    /// Requests a second with the admin key; 0: no limit.
    pub api_rate: u32,
    pub api_burst: u32,
    /// Requests and logins a second per client-token user (collect, ack, SSE, polls, WebSocket
    /// opens); 0: no limit.
    pub client_rate: u32,
    pub client_burst: u32,
}

/// File descriptors kept for the store, the listener and outgoing connections when
/// `limits.max_connections` is derived from the open-files limit.
pub const RESERVED_FILES: usize = 512;

impl LimitsConfig {
    /// The connection cap in force: configured, else derived from the open-files limit.
    pub fn max_connections(&self) -> usize {
        if self.max_connections > 0 {
            return self.max_connections;
        }
        open_files_limit()
            .map(|files| files.saturating_sub(RESERVED_FILES).max(64))
            .unwrap_or(usize::MAX)
    }
}

/// The soft open-files limit of this process, from `/proc/self/limits`.
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 0,
            connections_per_address: 0,
            connections_per_user: 64,
            request_timeout: 10,
            message_rate: 100,
            message_burst: 200,
            api_rate: 0,
            api_burst: 1000,
            client_rate: 50,
            client_burst: 100,
        }
    }
}

/// Where messages are stored: the embedded SQLite store in `data_dir` unless a PostgreSQL URL
/// is given.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `postgres://user@host:5432/db` (libpq URL or key=value form): store messages in
    /// PostgreSQL, shared by every node of a cluster.
    pub postgres_url: Option<String>,
    /// Most PostgreSQL connections this node opens (one of them is the group-commit writer).
    pub postgres_pool: usize,
}

/// Scale-out over Redis: fan-out between nodes and the cluster-wide registry of online clients.
/// Off (a single node) unless `redis_url` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://host:6379/0`: join the cluster of the nodes sharing this Redis.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel, so that several clusters can share one Redis.
    pub key_prefix: String,
    /// Seconds a node's registry entries outlive its last refresh; a crashed node's clients
    /// leave the list within this time. Refreshed every third of it.
    pub presence_ttl: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            postgres_url: None,
            postgres_pool: 16,
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: None,
            key_prefix: "mps".into(),
            presence_ttl: 15,
        }
    }
}

/// Retention of the topics matching `pattern`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRetention {
    pub pattern: String,
    pub seconds: Option<u64>,
    pub count: Option<u64>,
}

impl TopicsConfig {
    /// (seconds, count) kept for a topic.
    pub fn retention_of(&self, topic: &str) -> (u64, u64) {
        let rule = self
            .retain
            .iter()
            .find(|r| crate::topic::matches(&r.pattern, topic));
        (
            rule.and_then(|r| r.seconds).unwrap_or(self.retention),
            rule.and_then(|r| r.count).unwrap_or(self.retention_count),
        )
    }

    pub fn limits(&self) -> crate::topic::Limits {
        crate::topic::Limits {
            max_length: self.max_length,
            max_depth: self.max_depth,
        }
    }
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            retention: 24 * 3600,
            retention_count: 1000,
            retain: Vec::new(),
            max_length: 256,
            max_depth: 16,
            max_subscriptions: 256,
            require_claim: false,
            resume_overlap_ms: 1000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: None,
            shutdown_timeout: 10,
            data_dir: PathBuf::from("mps-data"),
            admin_key: None,
            node: None,
            node_id: 0,
            log: LogConfig::default(),
            tls: TlsConfig::default(),
            http: HttpConfig::default(),
            auth: AuthConfig::default(),
            connection: ConnectionConfig::default(),
            messages: MessagesConfig::default(),
            topics: TopicsConfig::default(),
            store: StoreConfig::default(),
            cluster: ClusterConfig::default(),
            limits: LimitsConfig::default(),
            ingest: IngestConfig::default(),
            push: PushConfig::default(),
            webhooks: Vec::new(),
            apps: BTreeMap::new(),
            lines: BTreeMap::new(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            algorithm: "HS256".into(),
            jwt_secret: None,
            public_key_file: None,
            private_key_file: None,
            token_ttl: 24 * 3600,
        }
    }
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            heartbeat: 25,
            timeout: 60,
            open_timeout: 10,
            max_frame: 64 * 1024,
            queue: 1024,
            max_errors: 10,
            conformance_echo: false,
            max_components: 256,
        }
    }
}

impl Default for MessagesConfig {
    fn default() -> Self {
        MessagesConfig {
            ttl: 3 * 24 * 3600,
            max_ttl: 30 * 24 * 3600,
            keep_expired: 24 * 3600,
            sweep_interval: 60,
            max_recipients: 10_000,
            max_body: 1024 * 1024,
            idempotency_window: 24 * 3600,
            max_audience: 1_000_000,
        }
    }
}

/// Values given on the command line; `None` leaves the lower layers alone.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthOverrides>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreOverrides>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterOverrides>,
}

#[derive(Debug, Default, Serialize)]
pub struct StoreOverrides {
    pub postgres_url: String,
}

#[derive(Debug, Default, Serialize)]
pub struct ClusterOverrides {
    pub redis_url: String,
}

#[derive(Debug, Default, Serialize)]
pub struct AuthOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<String>,
}

impl Config {
    /// Merges defaults, the TOML file (if any), `MPS_*` variables (`MPS_CONNECTION__QUEUE=64`
    /// sets `connection.queue`; `MPS_JWT_SECRET` is accepted for `auth.jwt_secret`) and flags.
    pub fn load(file: Option<&Path>, flags: Overrides) -> Result<Config, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            .merge(
                Env::prefixed("MPS_")
                    // `MPS_TEST_*` name the services test suites use, not settings.
                    .filter(|key| !key.as_str().to_ascii_lowercase().starts_with("test_"))
                    .map(|key| {
                        if key.as_str().eq_ignore_ascii_case("jwt_secret") {
                            "auth.jwt_secret".into()
                        } else {
                            key.as_str().replace("__", ".").into()
                        }
                    })
                    // Read by the operator commands (`mps send --url`), not settings.
                    .ignore(&["config", "url"]),
            )
            .merge(Serialized::defaults(flags))
            .extract()
            .map_err(Box::new)
    }

    /// The configuration as TOML, with secrets masked.
    pub fn to_toml_masked(&self) -> String {
        let mut shown = self.clone();
        if shown.admin_key.is_some() {
            shown.admin_key = Some("<hidden>".into());
        }
        if shown.auth.jwt_secret.is_some() {
            shown.auth.jwt_secret = Some("<hidden>".into());
        }
        for url in [&mut shown.store.postgres_url, &mut shown.cluster.redis_url] {
            if let Some(shown_url) = url.as_deref().map(mask_password) {
                *url = Some(shown_url);
            }
        }
        for url in shown.ingest.urls_mut() {
            *url = mask_password(url);
        }
        for hook in &mut shown.webhooks {
            hook.secret = "<hidden>".into();
            hook.url = mask_password(&hook.url);
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "mps".into())
        })
    }
}

/// A URL with its password (`scheme://user:PASSWORD@host`) replaced.
pub fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((credentials, host)) if credentials.contains(':') => {
            let user = credentials.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:<hidden>@{host}")
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)] // figment's test jail returns its own error type
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mps.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\nadmin_key = \"from-file\"\n[connection]\nqueue = 7\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("MPS_ADMIN_KEY", "from-env");
            jail.set_env("MPS_CONNECTION__HEARTBEAT", "3");
            let config = Config::load(
                Some(&file),
                Overrides {
                    listen: Some("127.0.0.1:9001".parse().unwrap()),
                    ..Overrides::default()
                },
            )
            .unwrap();
            assert_eq!(config.listen.port(), 9001);
            assert_eq!(config.admin_key.as_deref(), Some("from-env"));
            assert_eq!(config.connection.queue, 7);
            assert_eq!(config.connection.heartbeat, 3);
            assert_eq!(config.cluster.redis_url, None);
            assert_eq!(config.store.postgres_url, None);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn cluster_urls_from_env_and_flags_and_masked() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("MPS_CLUSTER__REDIS_URL", "redis://127.0.0.1:7000");
            jail.set_env("MPS_CLUSTER__PRESENCE_TTL", "5");
            jail.set_env("MPS_TEST_POSTGRES_URL", "postgres://ignored");
            let config = Config::load(
                None,
                Overrides {
                    store: Some(StoreOverrides {
                        postgres_url: "postgres://mps:secret@db/mps".into(),
                    }),
                    ..Overrides::default()
                },
            )
            .unwrap();
            assert_eq!(
                config.cluster.redis_url.as_deref(),
                Some("redis://127.0.0.1:7000")
            );
            assert_eq!(config.cluster.presence_ttl, 5);
            let shown = config.to_toml_masked();
            assert!(shown.contains("postgres://mps:<hidden>@db/mps"), "{shown}");
            assert!(!shown.contains("secret"), "{shown}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn edge_settings_from_env() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("MPS_ADMIN_LISTEN", "127.0.0.1:9090");
            jail.set_env("MPS_TLS__CERT", "/etc/mps/cert.pem");
            jail.set_env("MPS_TLS__KEY", "/etc/mps/key.pem");
            jail.set_env(
                "MPS_HTTP__ALLOWED_ORIGINS",
                r#"["https://a.example", "http://localhost:3000"]"#,
            );
            let config = Config::load(None, Overrides::default()).unwrap();
            assert_eq!(config.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
            assert_eq!(config.tls.cert, Some(PathBuf::from("/etc/mps/cert.pem")));
            assert_eq!(config.tls.key, Some(PathBuf::from("/etc/mps/key.pem")));
            assert_eq!(
                config.http.allowed_origins,
                ["https://a.example", "http://localhost:3000"]
            );
            Ok(())
        });
    }
}
