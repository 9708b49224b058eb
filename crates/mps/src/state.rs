//! What every handler and session of a running server shares ([`ServerState`]): built once by
//! the wiring ([`crate::server`]) and handed to the API, the transports and the listeners.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::{Authenticator, Identity};
use crate::config::Config;
use crate::engine::Engine;
use crate::http::ApiError;
use crate::hub::Hub;
use crate::ingest::Ingest;
use crate::limits::{Admission, RequestRates};
use crate::presence::Presence;
use crate::shutdown::Tasks;
use crate::webhooks::Webhooks;

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
    /// The back ends' event callbacks: sessions report connects and disconnects to them.
    pub webhooks: Arc<Webhooks>,
    pub metrics: PrometheusHandle,
    pub started: Instant,
    /// The address actually bound (the configured port may be 0).
    pub local_addr: SocketAddr,
    /// Whether the client listener speaks TLS (`wss://` URLs).
    pub tls: bool,
    /// Connections in total and per address (`limits.*connections*`).
    pub admission: Arc<Admission>,
    /// Request rates per admin key and per client-token user.
    pub rates: RequestRates,
    /// The tasks of the clients' side (listeners, connections, sessions, consumers): the
    /// first to stop on shutdown.
    pub edge: Tasks,
}

impl ServerState {
    pub fn shutting_down(&self) -> bool {
        self.edge.is_stopping()
    }

    /// Counts a request or login of a client-token user against `limits.client_rate`.
    pub fn client_request(&self, identity: &Identity) -> Result<(), ApiError> {
        self.rates
            .client(identity)
            .map_err(|wait| ApiError::rate_limited(crate::limits::Limit::ClientRate, wait))
    }

    /// Counts a request with the admin key against `limits.api_rate`.
    pub fn admin_request(&self) -> Result<(), ApiError> {
        self.rates
            .admin()
            .map_err(|wait| ApiError::rate_limited(crate::limits::Limit::ApiRate, wait))
    }

    /// Client-facing WebSocket URLs per network line; the listener's own when none configured.
    pub fn client_urls(&self) -> BTreeMap<String, String> {
        if self.config.lines.is_empty() {
            let scheme = if self.tls { "wss" } else { "ws" };
            BTreeMap::from([(
                "default".to_owned(),
                format!("{scheme}://{}/ws", self.local_addr),
            )])
        } else {
            self.config.lines.clone()
        }
    }
}
