//! Postgres storage shared by the bedolaga services: the diesel schema of
//! the migrations in `migrations/`, row types, the pool, and API tokens.

pub mod attempts;
pub mod audit;
pub mod bot;
pub mod counts;
mod deadline;
pub mod deliveries;
mod error;
pub mod history;
pub mod jobs;
mod key_file;
mod migrate;
pub mod models;
pub mod policy;
mod pool;
pub mod prepared;
pub mod pull;
pub mod schema;
pub mod secrets;
pub mod subscription;
mod text_enum;
pub mod tokens;
pub mod webhooks;

#[cfg(feature = "testing")]
pub mod testing;

pub use error::StorageError;
pub use key_file::{KeyFileError, SecretsArgs, TEST_KEY_LINE};
pub use migrate::{BOTS_DATABASE, MIGRATIONS, pending_migrations, run_migrations};
pub use pool::{
    DatabaseArgs, DbConn, DbPool, PoolConfig, SILENCE_MARGIN, build_pool, ping, ping_probe,
};

/// One connection outside a pool (command-line tools, the bot's database).
pub use diesel_async::AsyncPgConnection as Connection;

/// Opens one connection outside a pool.
pub async fn connect(url: &str) -> Result<Connection, StorageError> {
    use diesel_async::AsyncConnection;
    Ok(Connection::establish(url).await?)
}

/// The database of an unconfigured deployment (docs/configuration.md).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/bedolaga_events";
