//! Fresh, migrated databases for integration tests.
//!
//! Each [`TestDb`] is a new database named `test_<uuid>` on the server of
//! `TEST_DATABASE_URL` (default: the local Postgres as `postgres`). It is
//! dropped when the value is dropped.

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::{DbPool, PoolConfig, StorageError, build_pool, run_migrations};

/// A database that exists for one test.
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin_url: String,
}

fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn with_database(server: &str, db: &str) -> String {
    match server.rfind('/') {
        Some(i) if i > server.find("://").map_or(0, |j| j + 2) => {
            let (base, rest) = server.split_at(i);
            let query = rest.find('?').map_or("", |q| &rest[q..]);
            format!("{base}/{db}{query}")
        }
        _ => format!("{server}/{db}"),
    }
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
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let admin_url = server_url();
        let mut conn = AsyncPgConnection::establish(&admin_url)
            .await
            .map_err(|e| StorageError::Config(format!("cannot reach the test server: {e}")))?;
        diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await?;
        let url = with_database(&admin_url, &name);
        Ok(Self {
            name,
            url,
            admin_url,
        })
    }

    /// A pool on this database.
    pub fn pool(&self) -> Result<DbPool, StorageError> {
        build_pool(&self.url, &PoolConfig::default())
    }
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

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn swaps_the_database_name() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/postgres?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}
