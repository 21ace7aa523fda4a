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
///
/// The migration harness is blocking, so it runs on a blocking thread; that
/// works on any tokio runtime, including actix's current-thread one.
pub async fn run_migrations(database_url: &str) -> Result<Vec<String>, StorageError> {
    let url = database_url.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url)
            .map_err(|e| StorageError::Migration(format!("cannot connect: {e}")))?;
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map_err(|e| StorageError::Migration(e.to_string()))?;
        Ok(applied.iter().map(|v| v.to_string()).collect())
    })
    .await
    .map_err(|e| StorageError::Migration(format!("migration task failed: {e}")))?
}
