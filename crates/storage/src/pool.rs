//! The Postgres connection pool (diesel-async over deadpool).

use std::time::Duration;

use diesel_async::AsyncPgConnection;
use diesel_async::RunQueryDsl;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};

use crate::StorageError;

/// The pool every service uses.
pub type DbPool = Pool<AsyncPgConnection>;
/// A connection checked out of [`DbPool`].
pub type DbConn = Object<AsyncPgConnection>;

/// Pool size and timeouts.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub max_size: usize,
    /// How long a caller waits for a free connection before a 503.
    pub wait_timeout: Duration,
    /// How long opening a new connection may take.
    pub create_timeout: Duration,
    /// How long the health check of a reused connection may take.
    pub recycle_timeout: Duration,
    /// Skip the `SELECT 1` health check when a connection is checked out
    /// (one round trip less per request). A connection that died is then
    /// noticed on its first query, which fails, and is discarded.
    pub fast_recycle: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_size: 16,
            wait_timeout: Duration::from_secs(5),
            create_timeout: Duration::from_secs(5),
            recycle_timeout: Duration::from_secs(5),
            fast_recycle: false,
        }
    }
}

/// Builds a pool. Connections are opened lazily, so this succeeds while the
/// database is down; [`ping`] tells whether it is reachable.
pub fn build_pool(database_url: &str, cfg: &PoolConfig) -> Result<DbPool, StorageError> {
    let mut manager_config = ManagerConfig::<AsyncPgConnection>::default();
    if cfg.fast_recycle {
        manager_config.recycling_method = RecyclingMethod::Fast;
    }
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        database_url,
        manager_config,
    );
    Pool::builder(manager)
        .max_size(cfg.max_size)
        .wait_timeout(Some(cfg.wait_timeout))
        .create_timeout(Some(cfg.create_timeout))
        .recycle_timeout(Some(cfg.recycle_timeout))
        // Timeouts need a runtime; without it deadpool panics.
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| StorageError::Config(e.to_string()))
}

/// Checks out a connection and runs `SELECT 1`.
pub async fn ping(pool: &DbPool) -> Result<(), StorageError> {
    let mut conn = pool.get().await?;
    diesel::sql_query("SELECT 1").execute(&mut conn).await?;
    Ok(())
}

/// Hides the password (and, outside PostgreSQL URLs, a lone user name,
/// which NATS uses as a token) of a URL for log lines.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let scheme = &url[..scheme_end];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                // A user name alone is no secret for PostgreSQL, but it is
                // the token in `nats://token@host`.
                None if scheme.starts_with("postgres") => url.to_owned(),
                None => format!("{}***{}", &url[..scheme_end + 3], &url[at..]),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(redact_url("nats://s3cret@h:4222"), "nats://***@h:4222");
        assert_eq!(redact_url("nats://u:p@h:4222"), "nats://u:***@h:4222");
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }
}
