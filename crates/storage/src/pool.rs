//! The Postgres connection pool (diesel-async over deadpool) and the
//! database settings every binary reads.

use std::time::Duration;

use diesel_async::AsyncPgConnection;
use diesel_async::RunQueryDsl;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};

use diesel::{ConnectionError, ConnectionResult};
use secrecy::{ExposeSecret, SecretString};

use crate::deadline::Guarded;

use crate::{DEFAULT_DATABASE_URL, StorageError};

/// The database settings shared by every binary, flattened into each
/// service's configuration: the URL and the pool's size and wait.
///
/// The names here are the common ones (`DATABASE_URL`,
/// `DATABASE_POOL_SIZE`, `DATABASE_POOL_TIMEOUT`). A binary whose settings
/// are named or defaulted differently changes them where it flattens this
/// struct, with `#[command(mut_arg("database_pool_size", |a| …))]`, so
/// every deployment keeps the names it has.
///
/// `Debug` shows no password: the URL is a [`SecretString`]; log
/// [`DatabaseArgs::redacted_url`] to say which database is meant.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL (the password is never logged).
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL,
          hide_env_values = true, global = true)]
    pub database_url: SecretString,
    /// Most database connections this process keeps open.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 16, global = true)]
    pub database_pool_size: usize,
    /// How long a caller waits for a free database connection before it
    /// fails (the REST API then answers 503).
    #[arg(long, env = "DATABASE_POOL_TIMEOUT", default_value = "5s",
          value_parser = humantime::parse_duration, global = true)]
    pub database_pool_timeout: Duration,
    /// The longest one SQL statement may run (the server's
    /// `statement_timeout`); a server that sends nothing for this plus one
    /// second while a query waits (frozen, or cut off) has its connection
    /// closed by the client. `0s` turns both off.
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT", default_value = "5s",
          value_parser = humantime::parse_duration, global = true)]
    pub database_statement_timeout: Duration,
}

impl DatabaseArgs {
    /// The settings for one URL with the pool at [`PoolConfig::default`];
    /// the environment is not read (tests and benchmarks).
    pub fn for_url(url: &str) -> Self {
        let pool = PoolConfig::default();
        Self {
            database_url: SecretString::from(url),
            database_pool_size: pool.max_size,
            database_pool_timeout: pool.wait_timeout,
            database_statement_timeout: pool.statement_timeout.unwrap_or(Duration::ZERO),
        }
    }

    /// The URL, password included: for opening connections only.
    pub fn url(&self) -> &str {
        self.database_url.expose_secret()
    }

    /// The URL for logs, its password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        proto_events::redact_url(self.url())
    }

    /// The pool of these settings; other timeouts and the recycling at
    /// their defaults.
    pub fn pool_config(&self) -> PoolConfig {
        PoolConfig {
            max_size: self.database_pool_size,
            wait_timeout: self.database_pool_timeout,
            statement_timeout: Some(self.database_statement_timeout).filter(|t| !t.is_zero()),
            ..PoolConfig::default()
        }
    }
}

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
    /// The server's `statement_timeout` for every pooled connection, and
    /// (plus [`SILENCE_MARGIN`]) how long the client waits for a server
    /// that sends nothing while a query is outstanding before it closes
    /// the connection. `None`: no limit on either.
    pub statement_timeout: Option<Duration>,
}

/// How much longer than `statement_timeout` the client waits for a silent
/// server: a server that runs cancels a slow statement itself first.
pub const SILENCE_MARGIN: Duration = Duration::from_secs(1);

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_size: 16,
            wait_timeout: Duration::from_secs(5),
            create_timeout: Duration::from_secs(5),
            recycle_timeout: Duration::from_secs(5),
            fast_recycle: false,
            statement_timeout: Some(Duration::from_secs(5)),
        }
    }
}

/// Builds a pool. Connections are opened lazily, so this succeeds while the
/// database is down; [`ping`] tells whether it is reachable.
pub fn build_pool(database_url: &str, cfg: &PoolConfig) -> Result<DbPool, StorageError> {
    let mut manager_config = ManagerConfig::<AsyncPgConnection>::default();
    if let Some(limit) = cfg.statement_timeout {
        manager_config.custom_setup =
            Box::new(move |url| Box::pin(connect_guarded(url.to_owned(), limit)));
    }
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

/// Opens a connection with `statement_timeout = limit` whose socket is
/// [`Guarded`] with `limit +` [`SILENCE_MARGIN`]; the driver's connection
/// task runs on its own and ends with the connection.
async fn connect_guarded(url: String, limit: Duration) -> ConnectionResult<AsyncPgConnection> {
    let bad = |e: String| ConnectionError::BadConnection(e);
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| bad(format!("{e}")))?;
    let ms = limit.as_millis();
    let options = match config.get_options() {
        Some(o) if !o.trim().is_empty() => format!("{o} -c statement_timeout={ms}"),
        _ => format!("-c statement_timeout={ms}"),
    };
    config.options(options);
    let silence = limit + SILENCE_MARGIN;
    let hosts = config.get_hosts().to_vec();
    let ports = config.get_ports().to_vec();
    let mut last = String::from("no host in the database URL");
    for (i, host) in hosts.iter().enumerate() {
        let port = ports
            .get(i)
            .or(ports.as_slice().first())
            .copied()
            .unwrap_or(5432);
        let client = match host {
            tokio_postgres::config::Host::Tcp(name) => {
                match tokio::net::TcpStream::connect((name.as_str(), port)).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        start(&config, Guarded::new(s, silence)).await
                    }
                    Err(e) => Err(format!("cannot connect to {name}:{port}: {e}")),
                }
            }
            tokio_postgres::config::Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                match tokio::net::UnixStream::connect(&path).await {
                    Ok(s) => start(&config, Guarded::new(s, silence)).await,
                    Err(e) => Err(format!("cannot connect to {}: {e}", path.display())),
                }
            }
        };
        match client {
            Ok(client) => return AsyncPgConnection::try_from(client).await,
            Err(e) => last = e,
        }
    }
    Err(bad(last))
}

/// The startup over `stream`; spawns the connection task.
async fn start<S>(
    config: &tokio_postgres::Config,
    stream: Guarded<S>,
) -> Result<tokio_postgres::Client, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = config
        .connect_raw(stream, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "database connection closed");
        }
    });
    Ok(client)
}

/// [`ping`] as a readiness probe (`telemetry::ops::Readiness::probe`).
pub fn ping_probe(
    pool: &DbPool,
) -> impl Fn() -> futures::future::BoxFuture<'static, Result<(), StorageError>> + Send + Sync + 'static
{
    let pool = pool.clone();
    move || {
        let pool = pool.clone();
        Box::pin(async move { ping(&pool).await })
    }
}

/// Checks out a connection and runs `SELECT 1`.
pub async fn ping(pool: &DbPool) -> Result<(), StorageError> {
    let mut conn = pool.get().await?;
    diesel::sql_query("SELECT 1").execute(&mut conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        database: DatabaseArgs,
    }

    #[test]
    fn defaults_match_for_url_and_debug_hides_the_password() {
        let parsed = Cli::try_parse_from(["test", "--database-url", DEFAULT_DATABASE_URL])
            .unwrap()
            .database;
        let built = DatabaseArgs::for_url(DEFAULT_DATABASE_URL);
        assert_eq!(parsed.url(), built.url());
        assert_eq!(parsed.database_pool_size, built.database_pool_size);
        assert_eq!(parsed.database_pool_timeout, built.database_pool_timeout);

        let args = DatabaseArgs::for_url("postgres://u:hunter2@h/db");
        assert!(!format!("{args:?}").contains("hunter2"));
        assert_eq!(args.redacted_url(), "postgres://u:***@h/db");
        assert_eq!(args.pool_config().max_size, 16);
    }
}
