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
        refuse_the_bots_database(conn)?;
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
        refuse_the_bots_database(conn)?;
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

/// What `migrate` says on the bot's own database.
pub const BOTS_DATABASE: &str = "this database holds the Bedolaga bot's tables (web_api_tokens \
     exists) and none of bedolaga-events' migrations: give bedolaga-events a database of its own \
     (the same server is fine, e.g. CREATE DATABASE bedolaga_events) and copy the bot's tokens, \
     webhooks and history into it with `webhook-registry import-bot --from <the bot's DATABASE_URL>`";

/// Refuses a database that holds the bot's tables but none of our
/// migrations: both own a `web_api_tokens` and `webhooks`, so migrating it
/// would fail halfway (`relation "web_api_tokens" already exists`) or, worse,
/// mix the two schemas.
fn refuse_the_bots_database(
    conn: &mut AsyncConnectionWrapper<AsyncPgConnection>,
) -> Result<(), StorageError> {
    #[derive(diesel::QueryableByName)]
    struct Found {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        bots: bool,
    }
    let found: Found = diesel::RunQueryDsl::get_result(
        diesel::sql_query(
            "SELECT to_regclass('web_api_tokens') IS NOT NULL \
               AND to_regclass('__diesel_schema_migrations') IS NULL AS bots",
        ),
        conn,
    )
    .map_err(|e| StorageError::Migration(format!("cannot inspect the database: {e}")))?;
    if found.bots {
        return Err(StorageError::ForeignDatabase(BOTS_DATABASE.to_owned()));
    }
    Ok(())
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
