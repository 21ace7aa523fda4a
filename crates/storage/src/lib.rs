//! Postgres storage shared by the bedolaga services: the diesel schema of
//! the migrations in `migrations/`, row types, the pool, and API tokens.

pub mod bot;
pub mod counts;
mod deadline;
pub mod deliveries;
mod error;
pub mod history;
pub mod jobs;
mod migrate;
pub mod models;
mod pool;
pub mod schema;
mod text_enum;
pub mod tokens;

#[cfg(feature = "testing")]
pub mod testing;

pub use error::StorageError;
pub use migrate::{BOTS_DATABASE, MIGRATIONS, pending_migrations, run_migrations};
pub use pool::{DatabaseArgs, DbConn, DbPool, PoolConfig, SILENCE_MARGIN, build_pool, ping};

/// The database of an unconfigured deployment (docs/configuration.md).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/bedolaga_events";
