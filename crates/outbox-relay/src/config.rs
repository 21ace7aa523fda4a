//! The relay's configuration: every setting a flag and an environment
//! variable (the shared names of docs/configuration.md, where they
//! exist), validated once at start.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// `outbox-relay`: publishes the bot's transactional outbox to JetStream.
#[derive(Debug, Parser)]
#[command(name = "outbox-relay", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do; `run` when omitted.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum Command {
    /// Relay outbox rows to JetStream (the default).
    Run,
    /// Create the `event_outbox` table and its NOTIFY trigger in the bot's
    /// database if missing (the same SQL the Python package ships), then exit.
    Migrate,
}

/// `outbox-relay` settings.
#[derive(Debug, Clone, clap::Args)]
#[command(
    mut_arg("database_url", |a| a
        .env("OUTBOX_DATABASE_URL")
        .help("The bot's PostgreSQL database, which holds `event_outbox` (the password is never logged). Required: it is not this project's database")
        .default_value(None)
        .global(false)
        .required(true)),
    mut_arg("database_pool_size", |a| a
        .env("OUTBOX_DATABASE_POOL_SIZE")
        .help("Database connections kept by this replica (one more listens for NOTIFY)")
        .default_value("4")),
    mut_arg("database_pool_timeout", |a| a.env("OUTBOX_DATABASE_POOL_TIMEOUT")),
)]
pub struct Config {
    /// The bot's database (`OUTBOX_DATABASE_URL`, `OUTBOX_DATABASE_POOL_*`).
    #[command(flatten)]
    pub database: storage::DatabaseArgs,
    #[command(flatten)]
    pub nats: proto_events::nats::NatsArgs,
    /// Where `/healthz`, `/readyz` and `/metrics` listen.
    #[arg(long, env = "RELAY_BIND", default_value = "127.0.0.1:8083")]
    pub bind: SocketAddr,
    /// Rows claimed, published and deleted per transaction.
    #[arg(long, env = "RELAY_BATCH_SIZE", default_value_t = 1000)]
    pub batch_size: usize,
    /// Look for rows at least this often when no NOTIFY arrives (a lost
    /// listener connection, rows left by a failed batch).
    #[arg(long, env = "RELAY_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// How long JetStream may take to acknowledge a batch before it is
    /// rolled back and tried again.
    #[arg(long, env = "RELAY_PUBLISH_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub publish_timeout: Duration,
    /// How often outbox depth and oldest-row age are measured for `/metrics`.
    #[arg(long, env = "RELAY_STATS_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub stats_interval: Duration,
    /// Create the outbox table at start when missing (`outbox-relay migrate`).
    #[arg(long, env = "RELAY_AUTO_MIGRATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub auto_migrate: bool,
    #[command(flatten)]
    pub log: telemetry::LogArgs,
}

/// A setting that does not make sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Nats(#[from] proto_events::nats::NatsError),
    #[error("RELAY_BATCH_SIZE must be 1 to 5000 (JetStream acks in flight per batch)")]
    BatchSize,
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("{0} must be at least 1ms")]
    TooShort(&'static str),
}

impl Config {
    /// Defaults for everything, as `--help` lists them, on a database (for tests).
    pub fn for_database(database_url: &str) -> Self {
        Cli::parse_from(["outbox-relay", "--database-url", database_url]).config
    }

    /// Checks every setting once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.nats.validate()?;
        if self.batch_size == 0 || self.batch_size > 5000 {
            return Err(ConfigError::BatchSize);
        }
        if self.database.database_pool_size == 0 {
            return Err(ConfigError::Zero("OUTBOX_DATABASE_POOL_SIZE"));
        }
        for (name, d) in [
            ("RELAY_POLL_INTERVAL", self.poll_interval),
            ("RELAY_PUBLISH_TIMEOUT", self.publish_timeout),
            ("RELAY_STATS_INTERVAL", self.stats_interval),
        ] {
            if d < Duration::from_millis(1) {
                return Err(ConfigError::TooShort(name));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_are_valid_and_debug_hides_secrets() {
        let mut c = Config::for_database("postgres://bot:hunter2@db/bot");
        c.validate().unwrap();
        assert_eq!(c.bind.port(), 8083);
        assert_eq!(c.batch_size, 1000);
        c.nats.nats_url = "nats://a:4222, nats://tok3n@b:4222".into();
        c.validate().unwrap();
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("tok3n"),
            "{debug}"
        );
        c.batch_size = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_database_url_is_required() {
        assert!(
            Cli::try_parse_from(["outbox-relay"]).is_err()
                || std::env::var("OUTBOX_DATABASE_URL").is_ok()
        );
        let command = <Cli as clap::CommandFactory>::command();
        command.clone().debug_assert();
        let help = command.clone().render_long_help().to_string();
        for want in [
            "OUTBOX_DATABASE_URL",
            "OUTBOX_DATABASE_POOL_SIZE",
            "OUTBOX_DATABASE_POOL_TIMEOUT",
            "The bot's PostgreSQL database",
            "[default: 4]",
        ] {
            assert!(help.contains(want), "--help lacks {want}: {help}");
        }
        assert!(!help.contains(storage::DEFAULT_DATABASE_URL), "{help}");
    }
}
