//! The worker's configuration: every setting a flag and an environment
//! variable (docs/configuration.md), validated once at start.

use std::net::SocketAddr;
use std::time::Duration;

/// `delivery-worker` settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "delivery-worker",
    version,
    about = "Delivers bedolaga events to webhooks",
    mut_arg("database_pool_size", |a| a.default_value("12")),
)]
pub struct Config {
    /// Postgres (connections kept by this replica: DATABASE_POOL_SIZE).
    #[command(flatten)]
    pub database: storage::DatabaseArgs,
    #[command(flatten)]
    pub nats: proto_events::nats::NatsArgs,
    /// The keys that open webhook secrets (`SECRETS_KEY_FILE`).
    #[command(flatten)]
    pub secrets: storage::SecretsArgs,
    /// An HTTP proxy every delivery (and OAuth2 token request) goes
    /// through, `http://[user:password@]host:port`, e.g. for a fixed egress
    /// address; direct when unset. The SSRF guard still checks each target
    /// before the proxy is asked. Its password is never logged.
    #[arg(long, env = "DELIVERY_HTTP_PROXY", hide_env_values = true)]
    pub http_proxy: Option<webhook_client::ProxyUrl>,
    /// Where `/healthz`, `/readyz` and `/metrics` listen.
    #[arg(long, env = "WORKER_BIND", default_value = "127.0.0.1:8082")]
    pub bind: SocketAddr,
    /// Allow deliveries to loopback, private, link-local and metadata addresses.
    #[arg(long, env = "DELIVERY_ALLOW_PRIVATE_TARGETS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_private_targets: bool,
    /// Delays before each retry after the first attempt, comma-separated
    /// (humantime, e.g. `5s,5m,30m`); empty: no retries.
    #[arg(
        long,
        env = "DELIVERY_RETRY_SCHEDULE",
        default_value = "5s,5m,30m,2h,5h,10h,10h"
    )]
    pub retry_schedule: String,
    /// Disable a webhook that has failed without a single success this long.
    #[arg(long, env = "DELIVERY_DISABLE_AFTER", default_value = "5d", value_parser = humantime::parse_duration)]
    pub disable_after: Duration,
    /// Consecutive failed attempts that open a webhook's circuit (a
    /// webhook's `circuit_threshold` overrides it).
    #[arg(long, env = "DELIVERY_CIRCUIT_THRESHOLD", default_value_t = 5)]
    pub circuit_threshold: u32,
    /// How long an open circuit waits before its probe (a webhook's
    /// `circuit_cooldown_s` overrides it).
    #[arg(long, env = "DELIVERY_CIRCUIT_COOLDOWN", default_value = "60s", value_parser = humantime::parse_duration)]
    pub circuit_cooldown: Duration,
    /// Durable consumer name shared by every replica.
    #[arg(long, env = "DELIVERY_CONSUMER", default_value = "delivery-worker")]
    pub consumer: String,
    /// Webhook requests in flight in this replica.
    #[arg(long, env = "DELIVERY_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: usize,
    /// Webhook requests in flight per webhook in this replica.
    #[arg(long, env = "DELIVERY_MAX_PER_WEBHOOK", default_value_t = 16)]
    pub max_per_webhook: usize,
    /// How long a delivery waits for a busy webhook before it is queued in
    /// the database for later (keeps the consumer moving past slow receivers).
    #[arg(long, env = "DELIVERY_QUEUE_WAIT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub queue_wait: Duration,
    /// Events processed concurrently by this replica (messages not yet acked).
    #[arg(long, env = "DELIVERY_MAX_MESSAGES", default_value_t = 2048)]
    pub max_messages: usize,
    /// Messages pulled from JetStream per request.
    #[arg(long, env = "DELIVERY_BATCH_SIZE", default_value_t = 256)]
    pub batch_size: usize,
    /// JetStream ack wait of the durable consumer (extended with progress acks).
    #[arg(long, env = "DELIVERY_ACK_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ack_wait: Duration,
    /// Unacknowledged messages the consumer allows across all replicas.
    #[arg(long, env = "DELIVERY_MAX_ACK_PENDING", default_value_t = 20000)]
    pub max_ack_pending: i64,
    /// Reload the active webhooks at least this often (change notices reload at once).
    #[arg(long, env = "DELIVERY_CACHE_REFRESH", default_value = "30s", value_parser = humantime::parse_duration)]
    pub cache_refresh: Duration,
    /// How often due retries are looked for (sooner while there are more).
    #[arg(long, env = "DELIVERY_RETRY_POLL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub retry_poll: Duration,
    /// Due retries claimed per poll.
    #[arg(long, env = "DELIVERY_RETRY_BATCH", default_value_t = 200)]
    pub retry_batch: usize,
    /// Attempt rows written per database statement at most.
    #[arg(long, env = "DELIVERY_RECORD_BATCH", default_value_t = 2000)]
    pub record_batch: usize,
    /// How long the recorder gathers rows before writing them.
    #[arg(long, env = "DELIVERY_RECORD_LINGER", default_value = "5ms", value_parser = humantime::parse_duration)]
    pub record_linger: Duration,
    /// Batches the recorder writes at a time (each on its own connection).
    #[arg(long, env = "DELIVERY_RECORD_FLUSHES", default_value_t = 2)]
    pub record_flushes: usize,
    /// TCP connect timeout of a webhook POST.
    #[arg(long, env = "DELIVERY_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Total timeout of a webhook POST (connect, send, response).
    #[arg(long, env = "DELIVERY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub total_timeout: Duration,
    /// How often queued recover, replay and retry jobs are looked for.
    #[arg(long, env = "DELIVERY_JOB_POLL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub job_poll: Duration,
    /// How long a claimed job stays with this replica without a sign of
    /// life (renewed while it runs; another replica resumes it after).
    #[arg(long, env = "DELIVERY_JOB_LEASE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub job_lease: Duration,
    /// Jobs this replica runs at once.
    #[arg(long, env = "DELIVERY_MAX_JOBS", default_value_t = 2)]
    pub max_jobs: usize,
    /// Deliveries of one job in flight at once. 1 keeps a replay in stream
    /// order at the receiver; more is faster but may reorder neighbours.
    /// Keep it below DELIVERY_MAX_PER_WEBHOOK so live events keep slots.
    #[arg(long, env = "DELIVERY_JOB_CONCURRENCY", default_value_t = 1)]
    pub job_concurrency: usize,
    /// How long shutdown waits for in-flight work before handing it back.
    #[arg(long, env = "DELIVERY_SHUTDOWN_GRACE", default_value = "15s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    #[command(flatten)]
    pub log: telemetry::LogArgs,
}

/// Variables renamed to the `DELIVERY_` scheme; the old names are still read.
pub const RENAMED: &[telemetry::settings::Renamed] = &[telemetry::settings::Renamed {
    old: "SHUTDOWN_GRACE",
    new: "DELIVERY_SHUTDOWN_GRACE",
}];

/// A setting that does not make sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("DELIVERY_RETRY_SCHEDULE: '{item}' is not a duration: {reason}")]
    Schedule { item: String, reason: String },
    #[error(transparent)]
    Nats(#[from] proto_events::nats::NatsError),
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("DELIVERY_ACK_WAIT must be at least 1s")]
    AckWait,
    #[error("DELIVERY_JOB_LEASE must be at least 3s")]
    JobLease,
    #[error("DELIVERY_CIRCUIT_COOLDOWN must be 1s to 7d")]
    Cooldown,
}

impl Config {
    /// The circuit breaker's settings.
    pub fn circuit(&self) -> storage::attempts::CircuitSettings {
        storage::attempts::CircuitSettings {
            threshold: i32::try_from(self.circuit_threshold).unwrap_or(i32::MAX),
            cooldown: self.circuit_cooldown,
        }
    }

    /// Defaults for everything, as `--help` lists them (for tests).
    pub fn defaults() -> Self {
        <Self as clap::Parser>::parse_from(["delivery-worker"])
    }

    /// Parses `DELIVERY_RETRY_SCHEDULE`.
    pub fn parsed_schedule(&self) -> Result<Vec<Duration>, ConfigError> {
        parse_schedule(&self.retry_schedule)
    }

    /// Checks every setting once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.parsed_schedule()?;
        self.nats.validate()?;
        if self.ack_wait < Duration::from_secs(1) {
            return Err(ConfigError::AckWait);
        }
        if self.job_lease < Duration::from_secs(3) {
            return Err(ConfigError::JobLease);
        }
        if self.circuit_cooldown < Duration::from_secs(1)
            || self.circuit_cooldown > Duration::from_secs(7 * 86_400)
        {
            return Err(ConfigError::Cooldown);
        }
        for (name, v) in [
            ("DELIVERY_MAX_IN_FLIGHT", self.max_in_flight),
            ("DELIVERY_MAX_PER_WEBHOOK", self.max_per_webhook),
            ("DELIVERY_MAX_MESSAGES", self.max_messages),
            ("DELIVERY_BATCH_SIZE", self.batch_size),
            ("DELIVERY_RETRY_BATCH", self.retry_batch),
            ("DELIVERY_RECORD_BATCH", self.record_batch),
            ("DELIVERY_RECORD_FLUSHES", self.record_flushes),
            ("DATABASE_POOL_SIZE", self.database.database_pool_size),
            ("DELIVERY_MAX_JOBS", self.max_jobs),
            ("DELIVERY_JOB_CONCURRENCY", self.job_concurrency),
            (
                "DELIVERY_CIRCUIT_THRESHOLD",
                usize::try_from(self.circuit_threshold).unwrap_or(1),
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        Ok(())
    }
}

/// `5s,5m,30m` → durations; empty (or only spaces) → no retries.
pub fn parse_schedule(s: &str) -> Result<Vec<Duration>, ConfigError> {
    s.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            humantime::parse_duration(item).map_err(|e| ConfigError::Schedule {
                item: item.to_owned(),
                reason: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn schedules() {
        assert_eq!(
            parse_schedule("5s,5m,30m,2h").unwrap(),
            vec![
                Duration::from_secs(5),
                Duration::from_secs(300),
                Duration::from_secs(1800),
                Duration::from_secs(7200)
            ]
        );
        assert!(parse_schedule("").unwrap().is_empty());
        assert!(parse_schedule(" ").unwrap().is_empty());
        assert_eq!(
            parse_schedule("500ms, 1s").unwrap(),
            vec![Duration::from_millis(500), Duration::from_secs(1)]
        );
        assert!(parse_schedule("5x").is_err());
    }

    #[test]
    fn defaults_are_valid_and_debug_hides_the_password() {
        let mut c = Config::defaults();
        c.validate().unwrap();
        assert_eq!(c.parsed_schedule().unwrap().len(), 7);
        assert_eq!(c.disable_after, Duration::from_secs(5 * 86400));
        assert_eq!(c.database.database_pool_size, 12);
        c.database = storage::DatabaseArgs::for_url("postgres://u:hunter2@h/db");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
