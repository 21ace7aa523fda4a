//! The PostgreSQL server every database benchmark works on.

use anyhow::Context as _;
use storage::testing::TestDb;

/// The PostgreSQL server of a benchmark: where its temporary databases
/// are created, or the running worker's database (`delivery --worker
/// external`).
#[derive(Debug, Clone, clap::Args)]
pub struct PostgresArgs {
    /// PostgreSQL URL: the server for the temporary databases (made
    /// through its `postgres` database), or the database of an external
    /// worker.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = storage::DEFAULT_DATABASE_URL,
        hide_env_values = true
    )]
    pub database_url: String,
}

impl PostgresArgs {
    /// A fresh, migrated database `bench_<uuid>` on this server (created
    /// through its `postgres` database), dropped with the value.
    pub(crate) async fn temporary_db(&self) -> anyhow::Result<TestDb> {
        let admin_url = storage::testing::with_database(&self.database_url, "postgres")?;
        TestDb::on_server(&admin_url, "bench")
            .await
            .with_context(|| {
                format!(
                    "cannot create a temporary database on {}",
                    proto_events::redact_url(&admin_url)
                )
            })
    }
}
