//! mps, the message push service.
//!
//! Layout:
//! - [`config`]: defaults, TOML file, `MPS_*` environment and flags, merged.
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
//! - [`hub`]: the connections of this node, indexed by user and component, each with a bounded
//!   outbound queue.
//! - [`engine`]: the delivery engine: accepts messages, stores, publishes, backlogs, acks.
//! - [`transport`]: thin adapters from client connections (WebSocket) to the engine.
//! - [`ingest`]: consumers of message queues (RabbitMQ, NATS JetStream) that send what back ends
//!   publish there, acked once durable, invalid messages dead-lettered.
//! - [`api`]: the HTTP API under `/api/v1`, health and metrics.
//! - [`server`]: wiring, listener, sweeper and graceful shutdown.
//! - [`telemetry`]: logs and Prometheus metrics.
//! - [`topic`]: topic names and MQTT-style patterns (`+`, `#`).

pub mod api;
pub mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod hub;
pub mod id;
pub mod ingest;
pub mod presence;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod topic;
pub mod transport;
