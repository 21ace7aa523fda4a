//! The embedded migrations of the top-level `migrations/` folder.

use diesel::Connection;
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::StorageError;

/// Every migration, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// Applies the pending migrations and returns their versions. Safe to run
/// again (and from several processes: each migration runs in a transaction
/// and the version table has a primary key).
pub async fn run_migrations(database_url: &str) -> Result<Vec<String>, StorageError> {
    with_harness(database_url, |conn| {
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map_err(|e| StorageError::Migration(e.to_string()))?;
        Ok(applied.iter().map(|v| v.to_string()).collect())
    })
    .await
}

/// The versions of the embedded migrations the database does not have
/// yet, oldest first; empty when its schema is the one this binary
/// expects. Used by a service that leaves migrating to someone else
/// (`webhook-registry migrate`, e.g. a Kubernetes Job) to wait for it.
pub async fn pending_migrations(database_url: &str) -> Result<Vec<String>, StorageError> {
    with_harness(database_url, |conn| {
        let pending = conn
            .pending_migrations(MIGRATIONS)
            .map_err(|e| StorageError::Migration(e.to_string()))?;
        Ok(pending
            .iter()
            .map(|m| m.name().version().to_string())
            .collect())
    })
    .await
}

/// Runs `work` on a fresh connection to the database. The migration
/// harness is blocking, so it runs on a blocking thread; that works on any
/// tokio runtime, including actix's current-thread one.
async fn with_harness<T, F>(database_url: &str, work: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce(&mut AsyncConnectionWrapper<AsyncPgConnection>) -> Result<T, StorageError>
        + Send
        + 'static,
{
    let url = database_url.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url)
            .map_err(|e| StorageError::Migration(format!("cannot connect: {e}")))?;
        work(&mut conn)
    })
    .await
    .map_err(|e| StorageError::Migration(format!("migration task failed: {e}")))?
}
