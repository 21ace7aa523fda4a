//! What every connection shares: the hub, token checks, the broker, the
//! settings, the connection cap and the tracker that shutdown waits on.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use proto_events::Namespace;
use storage::tokens::TokenAuth;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::hub::Hub;
use crate::metrics::Metrics;

/// Per-connection settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub origins: Vec<String>,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub write_timeout: Duration,
    pub max_frame_bytes: usize,
    pub max_replay: u64,
    pub catchup: CatchupLimits,
}

/// Limits of catch-up mode (a client whose queue overflowed is fed from
/// the stream instead of being dropped).
#[derive(Debug, Clone, Copy)]
pub struct CatchupLimits {
    /// Clients in catch-up at once; past it a lagging client is closed
    /// with 1013 as before.
    pub max_clients: usize,
    /// How many events a client may fall behind before it is told to
    /// resync instead.
    pub max_events: u64,
    /// How old the next event a client needs may be before it is told to
    /// resync instead.
    pub max_age: Duration,
}

/// Shared by every request and connection.
pub struct AppState {
    pub hub: Arc<Hub>,
    pub auth: TokenAuth,
    pub js: jetstream::Context,
    pub ns: Namespace,
    pub metrics: Metrics,
    pub settings: Settings,
    /// One permit per open WebSocket connection (`GATEWAY_MAX_CONNECTIONS`).
    pub connections: Arc<Semaphore>,
    /// One permit per client in catch-up mode.
    pub catchups: Arc<Semaphore>,
    /// Every connection task; shutdown waits for them.
    pub tracker: TaskTracker,
}

impl AppState {
    /// Connections open now.
    pub fn open_connections(&self, max: usize) -> usize {
        max.saturating_sub(self.connections.available_permits())
    }
}
