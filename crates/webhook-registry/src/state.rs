//! What every handler shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use storage::tokens::TokenAuth;
use storage::{DbConn, DbPool, StorageError};
use webhook_client::WebhookSender;

use crate::error::ApiError;
use crate::notify::Notifier;

/// Shared state of the API (one per process, behind `web::Data`).
pub struct AppState {
    pub pool: DbPool,
    pub auth: TokenAuth,
    pub sender: WebhookSender,
    /// Seals and opens webhook secrets (`SECRETS_KEY_FILE`).
    pub keys: storage::secrets::Keyring,
    pub notifier: Notifier,
    /// Set once the database is reachable and migrated (and the default
    /// token ensured); until then `/webhooks` answers 503.
    pub ready: Arc<AtomicBool>,
    pub rotation_grace: Duration,
    /// `rate_per_s` of jobs whose request names none.
    pub job_default_rate_per_s: i32,
    pub trust_forwarded_for: bool,
    /// Reads the events stream for pull webhooks.
    pub js: async_nats::jetstream::Context,
    pub ns: proto_events::Namespace,
    /// Cancelled when the service stops: requests waiting for events
    /// (`GET /webhooks/{id}/pull?wait=`) answer at once.
    pub stopping: tokio_util::sync::CancellationToken,
}

impl AppState {
    /// A pooled connection, or a 503.
    pub async fn conn(&self) -> Result<DbConn, ApiError> {
        self.pool
            .get()
            .await
            .map_err(|e| ApiError::from(StorageError::from(e)))
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
