//! mps, the message push service.
//!
//! Layout, by layer (a module imports only its own layer and those below; docs/architecture.md
//! has the table, and `tests/layers.rs` keeps it so):
//!
//! 0. Words:
//!    - [`id`]: sortable, cluster-unique message ids.
//!    - [`shutdown`]: the one shutdown: a token every long-lived task watches, a tracker of them.
//!    - [`topic`]: topic names and MQTT-style patterns (`+`, `#`).
//!    - [`retry`]: the one retry policy (exponential backoff, cap, full jitter, attempts).
//!    - [`words`]: the shared vocabulary that every layer may use (ways and devices, agent
//!      filters, name checks, the invalid-input error).
//!    - [`config`]: every configuration section; defaults, TOML file, `MPS_*` environment and
//!      flags, merged.
//! 1. Domain rules:
//!    - [`audience`]: audience expressions over users' tags and attributes: parser and SQL.
//!    - [`formats`]: per-agent shapes of a message (its `formats`, the apps' templates).
//!    - [`preferences`]: users' muted components and channels and quiet hours for vendor push
//!      and e-mail.
//!    - [`auth`]: the one place that checks client tokens (JWT) and the admin key.
//!    - [`limits`]: connection counts, rate limits and the accounting of refusals and bad
//!      input.
//!    - [`telemetry`]: logs and Prometheus metrics.
//! 2. [`hub`]: the connections of this node, indexed by user and component, each with a bounded
//!    outbound queue.
//! 3. Ports:
//!    - [`store`]: durable directed messages and per-recipient status ([`store::Store`];
//!      SQLite embedded by default, PostgreSQL in a cluster).
//!    - [`broker`]: fan-out of live messages between nodes ([`broker::Broker`]; in-process, or
//!      Redis pub/sub in a cluster).
//!    - [`presence`]: who is online on every node ([`presence::Presence`]; the hub, or a
//!      registry in Redis in a cluster).
//!    - [`cluster`]: the Redis connections and key names shared by the cluster's broker and
//!      registry.
//! 4. Outbound channels:
//!    - [`push`]: vendor push (APNs, FCM, Web Push) to devices with no live connection.
//!    - [`channels`]: the webhook and e-mail channels of directed messages, and the chain that
//!      runs later channels from the store for recipients who have not acked.
//!    - [`webhooks`]: signed HTTP callbacks to back ends on client and message events.
//! 5. [`engine`]: the delivery engine: accepts messages, stores, publishes, backlogs, acks.
//! 6. Surfaces:
//!    - [`state`]: what every handler and session of a running server shares.
//!    - [`http`]: the API error and the error answers every HTTP surface shares.
//!    - [`api`]: the HTTP API under `/api/v1`, health and metrics.
//!    - [`transport`]: thin adapters from client connections (WebSocket, SSE, polling) to the
//!      engine.
//!    - [`ingest`]: consumers of message queues (RabbitMQ, NATS JetStream) that send what back
//!      ends publish there, acked once durable, invalid messages dead-lettered.
//!    - [`listener`]: accepts TCP connections within the limits and serves HTTP/1.1 on them.
//!    - [`origin`]: the browser origins allowed on the browser-facing routes, and their CORS.
//!    - [`tls`]: TLS on the client listener, its certificate reloaded on SIGHUP.
//! 7. Wiring:
//!    - [`server`]: wiring, sweeper and graceful shutdown; [`server::run`] runs a whole server
//!      in-process.
//!    - [`cli`]: the operator commands (`mps send`, `mps clients`, `mps messages`), clients of
//!      the HTTP API, and `mps bench audience`.

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
pub mod http;
pub mod hub;
pub mod id;
pub mod ingest;
pub mod limits;
pub mod listener;
pub mod origin;
pub mod preferences;
pub mod presence;
pub mod push;
pub mod retry;
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
