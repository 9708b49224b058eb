//! mps, the message push service.
//!
//! Layout:
//! - [`config`]: defaults, TOML file, `MPS_*` environment and flags, merged.
//! - [`audience`]: audience expressions over users' tags and attributes: parser, SQL, bench.
//! - [`auth`]: the one place that checks client tokens (JWT) and the admin key.
//! - [`id`]: sortable, cluster-unique message ids.
//! - [`store`]: durable directed messages and per-recipient status ([`store::Store`]; SQLite
//!   embedded by default, PostgreSQL in a cluster).
//! - [`broker`]: fan-out of live messages between nodes ([`broker::Broker`]; in-process, or
//!   Redis pub/sub in a cluster).
//! - [`presence`]: who is online on every node ([`presence::Presence`]; the hub, or a registry
//!   in Redis in a cluster).
//! - [`cluster`]: the Redis connections and key names shared by the cluster's broker and
//!   registry.
//! - [`formats`]: per-agent shapes of a message (its `formats`, the apps' templates).
//! - [`hub`]: the connections of this node, indexed by user and component, each with a bounded
//!   outbound queue.
//! - [`engine`]: the delivery engine: accepts messages, stores, publishes, backlogs, acks.
//! - [`transport`]: thin adapters from client connections (WebSocket) to the engine.
//! - [`ingest`]: consumers of message queues (RabbitMQ, NATS JetStream) that send what back ends
//!   publish there, acked once durable, invalid messages dead-lettered.
//! - [`preferences`]: users' muted components and channels and quiet hours for vendor push and
//!   e-mail.
//! - [`push`]: vendor push (APNs, FCM, Web Push) to devices with no live connection.
//! - [`channels`]: the webhook and e-mail channels of directed messages, and the chain that
//!   runs later channels from the store for recipients who have not acked.
//! - [`api`]: the HTTP API under `/api/v1`, health and metrics.
//! - [`limits`]: connection counts, rate limits and the accounting of refusals.
//! - [`listener`]: accepts TCP connections within the limits and serves HTTP/1.1 on them.
//! - [`tls`]: TLS on the client listener, its certificate reloaded on SIGHUP.
//! - [`origin`]: the browser origins allowed on the browser-facing routes, and their CORS.
//! - [`state`]: what every handler and session of a running server shares.
//! - [`server`]: wiring, sweeper and graceful shutdown; [`server::run`] runs a whole server
//!   in-process.
//! - [`shutdown`]: the one shutdown: a token every long-lived task watches, a tracker of them.
//! - [`telemetry`]: logs and Prometheus metrics.
//! - [`cli`]: the operator commands (`mps send`, `mps clients`, `mps messages`), clients of
//!   the HTTP API.
//! - [`topic`]: topic names and MQTT-style patterns (`+`, `#`).
//! - [`webhooks`]: signed HTTP callbacks to back ends on client and message events.
//! - [`words`]: the shared vocabulary that every layer may use.

pub mod api;
pub mod audience;
pub mod auth;
pub mod broker;
pub mod channels;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod formats;
pub mod hub;
pub mod id;
pub mod ingest;
pub mod limits;
pub mod listener;
pub mod origin;
pub mod preferences;
pub mod presence;
pub mod push;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod topic;
pub mod transport;
pub mod webhooks;
pub mod words;
