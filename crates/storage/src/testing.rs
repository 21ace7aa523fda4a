//! Fresh, migrated databases for integration tests.
//!
//! Each [`TestDb`] is a new database named `test_<uuid>` on the server of
//! `TEST_DATABASE_URL` (default: the local Postgres as `postgres`; the
//! test command, `deploy/test.sh`, sets it to a role of its own that may
//! create databases). It is dropped when the value is dropped.
//! [`TestDb::on_server`] makes one on a server of the caller's choosing
//! (the `bench` crate).

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

/// The query builder, for tests that check or arrange rows with SQL of
/// their own (the services themselves query only through this crate).
pub use {diesel, diesel_async};

use crate::{DbPool, PoolConfig, StorageError, build_pool, run_migrations};

/// A database that exists for one test.
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin_url: String,
}

/// The server tests make their databases on: `TEST_DATABASE_URL`, or else
/// the server of [`DEFAULT_DATABASE_URL`](crate::DEFAULT_DATABASE_URL)
/// through its `postgres` database.
pub fn server_url() -> Result<String, StorageError> {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) => Ok(url),
        Err(_) => with_database(crate::DEFAULT_DATABASE_URL, "postgres"),
    }
}

/// `server` with the database `db` (the URL's path), its query kept.
pub fn with_database(server: &str, db: &str) -> Result<String, StorageError> {
    let mut url = url::Url::parse(server)
        .map_err(|e| StorageError::Config(format!("the database URL does not parse: {e}")))?;
    url.set_path(&format!("/{db}"));
    Ok(url.into())
}

fn with_password(url: &str, fallback: &str) -> (String, String) {
    let mut parsed = url::Url::parse(url)
        .unwrap_or_else(|e| panic!("the test database URL does not parse: {e}"));
    assert!(
        !parsed.username().is_empty(),
        "the test database URL names no user"
    );
    if let Some(password) = parsed.password() {
        return (url.to_owned(), password.to_owned());
    }
    if parsed.set_password(Some(fallback)).is_err() {
        panic!("the test database URL cannot hold a password");
    }
    (parsed.into(), fallback.to_owned())
}

impl TestDb {
    /// Creates and migrates a new database.
    pub async fn new() -> Result<Self, StorageError> {
        let db = Self::empty().await?;
        run_migrations(&db.url).await?;
        Ok(db)
    }

    /// Creates a new database without running migrations.
    pub async fn empty() -> Result<Self, StorageError> {
        Self::create(&server_url()?, "test").await
    }

    /// Creates and migrates a new database named `<prefix>_<uuid>` on the
    /// server of `admin_url`, through the database that URL names (which
    /// must exist); dropped the same way. For benchmarks, which name their
    /// own server.
    pub async fn on_server(admin_url: &str, prefix: &str) -> Result<Self, StorageError> {
        let db = Self::create(admin_url, prefix).await?;
        run_migrations(&db.url).await?;
        Ok(db)
    }

    async fn create(admin_url: &str, prefix: &str) -> Result<Self, StorageError> {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let url = with_database(admin_url, &name)?;
        let mut conn = AsyncPgConnection::establish(admin_url)
            .await
            .map_err(|e| StorageError::Config(format!("cannot reach the database server: {e}")))?;
        diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await?;
        Ok(Self {
            name,
            url,
            admin_url: admin_url.to_owned(),
        })
    }

    /// This database's URL with a password in it, and that password: the
    /// one `TEST_DATABASE_URL` carries, or else `fallback`, written in (a
    /// server that trusts the test user never checks it). For tests that a
    /// configured database password stays out of the logs.
    ///
    /// # Panics
    ///
    /// When the URL names no user.
    pub fn url_with_password(&self, fallback: &str) -> (String, String) {
        with_password(&self.url, fallback)
    }

    /// A pool on this database.
    pub fn pool(&self) -> Result<DbPool, StorageError> {
        build_pool(&self.url, &PoolConfig::default())
    }

    /// Creates a new database with only the first `n` migrations applied
    /// (to test a later migration against data of the earlier schema).
    pub async fn migrated_to(n: usize) -> Result<Self, StorageError> {
        use diesel::Connection;
        use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
        use diesel_migrations::MigrationHarness;
        let db = Self::empty().await?;
        let url = db.url.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn =
                <AsyncConnectionWrapper<AsyncPgConnection> as Connection>::establish(&url)
                    .map_err(|e| StorageError::Migration(e.to_string()))?;
            let mut all = diesel::migration::MigrationSource::<diesel::pg::Pg>::migrations(
                &crate::MIGRATIONS,
            )
            .map_err(|e| StorageError::Migration(e.to_string()))?;
            all.sort_by_key(|m| m.name().version().to_string());
            // Creates the version table.
            conn.applied_migrations()
                .map_err(|e| StorageError::Migration(e.to_string()))?;
            for m in all.iter().take(n) {
                conn.run_migration(m)
                    .map_err(|e| StorageError::Migration(e.to_string()))?;
            }
            Ok::<_, StorageError>(())
        })
        .await
        .map_err(|e| StorageError::Migration(e.to_string()))??;
        Ok(db)
    }
}

/// The bot's own tables as its models create them (`web_api_tokens`,
/// `webhooks`, `webhook_deliveries`), plus one more of its tables and
/// alembic's version table, so that a database made with it looks like the
/// bot's.
pub const BOT_DDL: &str = "\
CREATE TABLE alembic_version (version_num varchar(32) NOT NULL PRIMARY KEY);
INSERT INTO alembic_version VALUES ('0001');
CREATE TABLE users (id serial PRIMARY KEY, telegram_id bigint, first_name varchar(255));
CREATE TABLE web_api_tokens (
    id serial PRIMARY KEY,
    name varchar(255) NOT NULL,
    token_hash varchar(128) NOT NULL UNIQUE,
    token_prefix varchar(32) NOT NULL,
    description text,
    created_at timestamptz,
    updated_at timestamptz,
    expires_at timestamptz,
    last_used_at timestamptz,
    last_used_ip varchar(64),
    is_active boolean NOT NULL DEFAULT true,
    created_by varchar(255)
);
CREATE TABLE webhooks (
    id serial PRIMARY KEY,
    name varchar(255) NOT NULL,
    url text NOT NULL,
    secret varchar(128),
    event_type varchar(50) NOT NULL,
    is_active boolean NOT NULL,
    description text,
    created_at timestamptz,
    updated_at timestamptz,
    last_triggered_at timestamptz,
    failure_count integer NOT NULL,
    success_count integer NOT NULL
);
CREATE TABLE webhook_deliveries (
    id serial PRIMARY KEY,
    webhook_id integer NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_type varchar(50) NOT NULL,
    payload json NOT NULL,
    response_status integer,
    response_body text,
    status varchar(20) NOT NULL,
    error_message text,
    attempt_number integer NOT NULL,
    created_at timestamptz,
    delivered_at timestamptz,
    next_retry_at timestamptz
);";

impl TestDb {
    /// A new database holding the bot's tables (empty), not ours.
    pub async fn bot() -> Result<Self, StorageError> {
        use diesel_async::SimpleAsyncConnection as _;
        let db = Self::create(&server_url()?, "testbot").await?;
        let mut conn = AsyncPgConnection::establish(&db.url)
            .await
            .map_err(|e| StorageError::Config(format!("cannot reach the bot database: {e}")))?;
        conn.batch_execute(BOT_DDL).await?;
        Ok(db)
    }

    /// Inserts a token into the bot's `web_api_tokens` of a database made
    /// by [`TestDb::bot`], as the bot does (`hash` computed by the caller);
    /// returns its id.
    pub async fn add_bot_token(
        &self,
        name: &str,
        hash: &str,
        is_active: bool,
    ) -> Result<i32, StorageError> {
        use diesel::sql_types::{Bool, Int4, Text};
        #[derive(diesel::QueryableByName)]
        struct Id {
            #[diesel(sql_type = Int4)]
            id: i32,
        }
        let mut conn = AsyncPgConnection::establish(&self.url)
            .await
            .map_err(|e| StorageError::Config(format!("cannot reach the bot database: {e}")))?;
        let id: Id = diesel::sql_query(
            "INSERT INTO web_api_tokens (name, token_hash, token_prefix, created_at, updated_at, \
               is_active, created_by) \
             VALUES ($1, $2, left($2, 8), now(), now(), $3, 'admin') RETURNING id",
        )
        .bind::<Text, _>(name)
        .bind::<Text, _>(hash)
        .bind::<Bool, _>(is_active)
        .get_result(&mut conn)
        .await?;
        Ok(id.id)
    }
}

/// Panics unless the delivery counters equal the rows they count, per
/// webhook, day and status and per day and status.
pub async fn assert_counts_match_rows(conn: &mut AsyncPgConnection) {
    #[derive(diesel::QueryableByName, Debug, PartialEq)]
    struct Diff {
        #[diesel(sql_type = diesel::sql_types::Text)]
        what: String,
    }
    let diffs: Vec<Diff> = diesel::sql_query(
        "WITH rows AS ( \
           SELECT webhook_id, (created_at AT TIME ZONE 'UTC')::date AS day, status::text AS status, \
             count(*)::int8 AS n FROM webhook_deliveries GROUP BY 1, 2, 3 \
         ), per_webhook AS ( \
           SELECT webhook_id, day, status::text AS status, n FROM webhook_delivery_counts WHERE n <> 0 \
         ), per_day AS ( \
           SELECT day, status::text AS status, n FROM delivery_day_counts WHERE n <> 0 \
         ), rows_per_day AS ( \
           SELECT day, status, sum(n)::int8 AS n FROM rows GROUP BY 1, 2 \
         ) \
         SELECT format('webhook %s %s %s: rows %s, counter %s', \
           COALESCE(r.webhook_id, c.webhook_id), COALESCE(r.day, c.day), \
           COALESCE(r.status, c.status), r.n, c.n) AS what \
         FROM rows r FULL JOIN per_webhook c USING (webhook_id, day, status) \
         WHERE r.n IS DISTINCT FROM c.n \
         UNION ALL \
         SELECT format('day %s %s: rows %s, counter %s', COALESCE(r.day, c.day), \
           COALESCE(r.status, c.status), r.n, c.n) \
         FROM rows_per_day r FULL JOIN per_day c USING (day, status) \
         WHERE r.n IS DISTINCT FROM c.n",
    )
    .load(conn)
    .await
    .unwrap_or_else(|e| panic!("cannot compare counters with rows: {e}"));
    assert!(diffs.is_empty(), "counters differ from rows: {diffs:?}");
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.admin_url.clone();
        let name = self.name.clone();
        // Dropping runs on its own thread and runtime: Drop cannot await,
        // and the test's runtime may be shutting down.
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = AsyncPgConnection::establish(&admin).await {
                    let _ = diesel::sql_query(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    ))
                    .execute(&mut conn)
                    .await;
                }
            });
        });
        let _ = handle.join();
    }
}

/// A key file holding [`crate::TEST_KEY_LINE`] (mode 600), written once per
/// process: `SECRETS_KEY_FILE` for the services tests start as processes,
/// which then share the key of those started in the process.
pub fn key_file() -> std::path::PathBuf {
    static FILE: std::sync::LazyLock<std::path::PathBuf> = std::sync::LazyLock::new(|| {
        let path = std::env::temp_dir().join(format!(
            "bedolaga-test-keys-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let mut options = std::fs::OpenOptions::new();
        options.create_new(true).write(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        if let Ok(mut f) = options.open(&path) {
            use std::io::Write as _;
            let _ = writeln!(f, "{}", crate::TEST_KEY_LINE);
        }
        path
    });
    FILE.clone()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::{with_database, with_password};

    #[test]
    fn swaps_the_database_name() {
        let swap = |server, db| with_database(server, db).unwrap();
        assert_eq!(
            swap("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            swap("postgres://u@h/postgres?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(
            swap("postgres://postgres@127.0.0.1:5432/bedolaga_events", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            swap("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(swap("postgres://h", "x"), "postgres://h/x");
        assert!(with_database("not a url", "x").is_err());
    }

    #[test]
    fn writes_in_a_password_unless_there_is_one() {
        assert_eq!(
            with_password("postgres://postgres@127.0.0.1:5432/x", "pw"),
            (
                "postgres://postgres:pw@127.0.0.1:5432/x".to_owned(),
                "pw".to_owned()
            )
        );
        assert_eq!(
            with_password("postgres://u:s3cret@h/x?sslmode=disable", "pw"),
            (
                "postgres://u:s3cret@h/x?sslmode=disable".to_owned(),
                "s3cret".to_owned()
            )
        );
    }
}
