//! Command line and environment configuration (docs/configuration.md).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use telemetry::LogArgs;

/// `webhook-registry`: the REST API for webhooks, deliveries and tokens.
#[derive(Debug, Parser)]
#[command(name = "webhook-registry", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do; `serve` when omitted.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve the REST API (the default).
    Serve,
    /// Apply pending migrations and exit.
    Migrate,
    /// Drop delivery history older than a duration now (whole days) and
    /// print what was removed.
    Prune {
        /// e.g. `30d`, `12h`; `DELIVERY_RETENTION` when omitted.
        #[arg(long)]
        older_than: Option<storage::history::Retention>,
    },
    /// Copy the bot's tokens, webhooks and (with `--history`) delivery
    /// history into this database (migrated first); safe to run again.
    /// Prints what was created, updated, unchanged and skipped.
    ImportBot {
        /// The bot's PostgreSQL URL (read only); `BOT_DATABASE_URL` when
        /// omitted.
        #[arg(long, hide_env_values = true)]
        from: Option<SecretString>,
        /// Also copy the delivery rows created within this duration, e.g. `30d`.
        #[arg(long, value_parser = humantime::parse_duration)]
        history: Option<Duration>,
        /// Do everything in one transaction and roll it back: print what
        /// would be done, write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Secrets at rest: make a key, seal what is stored.
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
}

/// `webhook-registry secrets …`
#[derive(Debug, Clone, Subcommand)]
pub enum SecretsCommand {
    /// Add a new key to a key file (created, mode 600, when missing); the
    /// new key is the one that seals from then on. Prints the key id.
    NewKey {
        /// The key file; `SECRETS_KEY_FILE` when omitted.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
        /// Only when the file has no key yet (a deployment's first start;
        /// run again, it changes nothing).
        #[arg(long)]
        if_missing: bool,
    },
    /// Seal every stored secret that is in clear or sealed under an older
    /// key with the newest key of `SECRETS_KEY_FILE` (after a `new-key`;
    /// the registry also does it at start). Prints what it changed.
    Seal,
}

/// `webhook-registry token …`
#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Create a token; prints the token alone on stdout (shown only once).
    Create {
        /// A name to recognise the token by.
        #[arg(long)]
        name: String,
        /// Lifetime, e.g. `30d`, `12h`, `90m`; no expiry when omitted.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
    },
    /// List tokens (id, name, prefix, state, dates; never the tokens).
    List,
    /// Deactivate a token; it stops working within a few seconds.
    Revoke {
        /// The token's id (from `token list`).
        id: i32,
    },
}

/// Every setting of the service. Secrets are hidden from `--help` values
/// and from `Debug`.
/// Variables renamed to the `REGISTRY_` scheme; the old names are still read.
pub const RENAMED: &[telemetry::settings::Renamed] = &[
    telemetry::settings::Renamed {
        old: "SECRET_ROTATION_GRACE",
        new: "REGISTRY_SECRET_ROTATION_GRACE",
    },
    telemetry::settings::Renamed {
        old: "JOB_DEFAULT_RATE_PER_S",
        new: "REGISTRY_JOB_DEFAULT_RATE_PER_S",
    },
];

#[derive(Debug, Clone, Args)]
#[command(
    mut_arg("database_pool_size", |a| a.long("db-pool-size").env("REGISTRY_DB_POOL_SIZE")),
    mut_arg("database_pool_timeout", |a| a.long("db-pool-timeout").env("REGISTRY_DB_POOL_TIMEOUT")),
)]
pub struct Config {
    /// Address the REST API listens on.
    #[arg(
        long,
        env = "REGISTRY_BIND",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub bind: SocketAddr,

    /// PostgreSQL; the pool's settings are named `--db-pool-size`
    /// (`REGISTRY_DB_POOL_SIZE`) and `--db-pool-timeout`
    /// (`REGISTRY_DB_POOL_TIMEOUT`) here.
    #[command(flatten)]
    pub database: storage::DatabaseArgs,

    /// NATS (change notices for delivery workers, the streams at start).
    #[command(flatten)]
    pub nats: proto_events::nats::NatsArgs,

    /// The keys of secrets at rest.
    #[command(flatten)]
    pub secrets: storage::SecretsArgs,

    /// Key for HMAC token hashes (the bot's scheme); plain digests when
    /// unset. With a key, plain digests (legacy) are still accepted.
    #[arg(
        long,
        env = "WEB_API_TOKEN_HMAC_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub token_hmac_secret: Option<SecretString>,

    /// Digest of token hashes, as the bot's setting: sha256, sha384 or sha512.
    #[arg(
        long,
        env = "WEB_API_TOKEN_HASH_ALGORITHM",
        default_value = "sha256",
        global = true
    )]
    pub token_hash_algorithm: storage::tokens::HashAlgorithm,

    /// The bot's PostgreSQL: when set, the bot's API tokens are copied
    /// into ours every BOT_TOKEN_SYNC_INTERVAL (read only), and it is
    /// `import-bot`'s default `--from`.
    #[arg(long, env = "BOT_DATABASE_URL", hide_env_values = true, global = true)]
    pub bot_database_url: Option<SecretString>,

    /// How often the bot's tokens are synced (with BOT_DATABASE_URL).
    #[arg(long, env = "BOT_TOKEN_SYNC_INTERVAL", default_value = "2s",
          value_parser = parse_positive_duration, global = true)]
    pub bot_token_sync_interval: Duration,

    /// A token ensured active at start.
    #[arg(
        long,
        env = "WEB_API_DEFAULT_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub default_token: Option<SecretString>,

    /// Allow webhook URLs on loopback, private, link-local and similar addresses.
    #[arg(long, env = "DELIVERY_ALLOW_PRIVATE_TARGETS", default_value = "false",
          action = ArgAction::Set, global = true)]
    pub allow_private_targets: bool,

    /// Largest accepted request body in bytes (413 above).
    #[arg(long, env = "REGISTRY_MAX_BODY_BYTES", default_value_t = 64 * 1024, global = true)]
    pub max_body_bytes: usize,

    /// Apply migrations at start (`true`/`false`).
    #[arg(long, env = "REGISTRY_AUTO_MIGRATE", default_value = "true",
          action = ArgAction::Set, global = true)]
    pub auto_migrate: bool,

    /// Do not apply migrations at start (same as REGISTRY_AUTO_MIGRATE=false).
    #[arg(long, global = true)]
    pub no_migrate: bool,

    /// How long the previous secret keeps signing after a rotation.
    #[arg(long, env = "REGISTRY_SECRET_ROTATION_GRACE", default_value = "24h",
          value_parser = humantime::parse_duration, global = true)]
    pub secret_rotation_grace: Duration,

    /// Deliveries per second of a recover, replay or bulk retry job whose
    /// request names no `rate_per_s`.
    #[arg(long, env = "REGISTRY_JOB_DEFAULT_RATE_PER_S", default_value_t = 50,
          value_parser = clap::value_parser!(i32).range(1..=10_000), global = true)]
    pub job_default_rate_per_s: i32,

    /// Take the client IP (for tokens' last_used_ip) from X-Forwarded-For /
    /// Forwarded; only behind a proxy you trust.
    #[arg(long, env = "REGISTRY_TRUST_FORWARDED_FOR", default_value = "false",
          action = ArgAction::Set, global = true)]
    pub trust_forwarded_for: bool,

    /// Delivery rows older than this are dropped, one day's partition at
    /// a time (`0` keeps everything).
    #[arg(long, env = "DELIVERY_RETENTION", default_value = "30d", global = true)]
    pub delivery_retention: storage::history::Retention,

    /// Days of delivery-history partitions created ahead of today.
    #[arg(long, env = "DELIVERY_PARTITIONS_AHEAD", default_value_t = 2, global = true,
          value_parser = clap::value_parser!(u32).range(1..=366))]
    pub partitions_ahead: u32,

    /// How often partitions are created and the retention applied.
    #[arg(long, env = "DELIVERY_MAINTENANCE_EVERY", default_value = "1h",
          value_parser = humantime::parse_duration, global = true)]
    pub maintenance_every: Duration,

    /// The gateway's WebSocket URL as the browser reaches it (the portal's
    /// live view connects there).
    #[arg(
        long,
        env = "REGISTRY_GATEWAY_URL",
        default_value = "ws://127.0.0.1:8081/ws",
        value_parser = parse_ws_url,
        global = true
    )]
    pub gateway_url: String,

    /// The gateway's readiness URL as the registry reaches it (the portal's
    /// overview); derived from REGISTRY_GATEWAY_URL when unset (ws→http,
    /// wss→https, path /readyz).
    #[arg(long, env = "REGISTRY_GATEWAY_READY_URL", value_parser = parse_http_url, global = true)]
    pub gateway_ready_url: Option<String>,

    /// The delivery worker's readiness URL as the registry reaches it (the
    /// portal's overview).
    #[arg(
        long,
        env = "REGISTRY_WORKER_READY_URL",
        default_value = "http://127.0.0.1:8082/readyz",
        value_parser = parse_http_url,
        global = true
    )]
    pub worker_ready_url: String,

    /// HTTP worker threads (0 = one per CPU).
    #[arg(long, env = "REGISTRY_WORKERS", default_value_t = 0, global = true)]
    pub workers: usize,

    #[command(flatten)]
    pub log: LogArgs,
}

/// A duration above zero.
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be above zero".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// `REGISTRY_GATEWAY_URL`: an absolute `ws://` or `wss://` URL.
fn parse_ws_url(s: &str) -> Result<String, String> {
    match url::Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "ws" | "wss") && u.host().is_some() => Ok(s.to_owned()),
        Ok(_) => Err("expected a ws:// or wss:// URL with a host".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// A readiness URL: an absolute `http://` or `https://` URL.
fn parse_http_url(s: &str) -> Result<String, String> {
    match url::Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(s.to_owned()),
        Ok(_) => Err("expected an http:// or https:// URL with a host".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

impl Config {
    /// Where the portal's overview asks the gateway whether it is ready:
    /// `REGISTRY_GATEWAY_READY_URL`, or `/readyz` on the host of
    /// `REGISTRY_GATEWAY_URL` (`ws` → `http`, `wss` → `https`).
    pub fn gateway_ready_url(&self) -> Option<url::Url> {
        if let Some(u) = &self.gateway_ready_url {
            return url::Url::parse(u).ok();
        }
        let u = url::Url::parse(&self.gateway_url).ok()?;
        let scheme = if u.scheme() == "wss" { "https" } else { "http" };
        let mut http = url::Url::parse(&format!("{scheme}://placeholder/")).ok()?;
        http.set_host(u.host_str()).ok()?;
        http.set_port(u.port()).ok()?;
        http.set_path("/readyz");
        Some(http)
    }

    /// How the delivery history is kept.
    pub fn history_policy(&self) -> storage::history::HistoryPolicy {
        storage::history::HistoryPolicy {
            retention: self.delivery_retention.0,
            days_ahead: self.partitions_ahead,
        }
    }

    /// How tokens are hashed: `WEB_API_TOKEN_HASH_ALGORITHM`, HMAC-keyed
    /// with `WEB_API_TOKEN_HMAC_SECRET` when that is set.
    pub fn token_hasher(&self) -> storage::tokens::TokenHasher {
        storage::tokens::TokenHasher::with_algorithm(
            self.token_hash_algorithm,
            self.token_hmac_secret.as_ref().map(|s| s.expose_secret()),
        )
    }

    /// `BOT_DATABASE_URL`, when set and not empty.
    pub fn bot_database_url(&self) -> Option<&str> {
        self.bot_database_url
            .as_ref()
            .map(|s| s.expose_secret())
            .filter(|s| !s.trim().is_empty())
    }

    /// Whether migrations run at start.
    pub fn migrate_at_start(&self) -> bool {
        self.auto_migrate && !self.no_migrate
    }

    /// The settings of a test: everything local, `bind` on port 0, private
    /// targets allowed (test receivers are on loopback).
    pub fn for_tests(database_url: &str, nats_prefix: &str) -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            database: storage::DatabaseArgs {
                database_pool_size: 8,
                ..storage::DatabaseArgs::for_url(database_url)
            },
            nats: proto_events::nats::NatsArgs {
                nats_prefix: nats_prefix.to_owned(),
                ..proto_events::nats::NatsArgs::for_url(
                    &std::env::var("TEST_NATS_URL")
                        .unwrap_or_else(|_| proto_events::nats::DEFAULT_NATS_URL.to_owned()),
                )
            },
            secrets: storage::SecretsArgs::for_tests(),
            token_hmac_secret: None,
            token_hash_algorithm: storage::tokens::HashAlgorithm::Sha256,
            bot_database_url: None,
            bot_token_sync_interval: Duration::from_secs(2),
            default_token: None,
            allow_private_targets: true,
            max_body_bytes: 64 * 1024,
            auto_migrate: true,
            no_migrate: false,
            secret_rotation_grace: Duration::from_secs(24 * 3600),
            job_default_rate_per_s: 50,
            trust_forwarded_for: false,
            workers: 1,
            gateway_url: "ws://127.0.0.1:8081/ws".to_owned(),
            gateway_ready_url: None,
            worker_ready_url: "http://127.0.0.1:8082/readyz".to_owned(),
            delivery_retention: storage::history::Retention(Some(Duration::from_secs(30 * 86_400))),
            partitions_ahead: 2,
            maintenance_every: Duration::from_secs(3600),
            log: LogArgs {
                log_format: telemetry::LogFormat::Text,
                log_filter: "info".to_owned(),
                otel_endpoint: None,
                otel_service_name: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_gateway_readiness_url_follows_the_gateway_url() {
        let mut c = Config::for_tests("postgres://h/db", "");
        assert_eq!(
            c.gateway_ready_url().unwrap().as_str(),
            "http://127.0.0.1:8081/readyz"
        );
        c.gateway_url = "wss://events.example.com/ws".to_owned();
        assert_eq!(
            c.gateway_ready_url().unwrap().as_str(),
            "https://events.example.com/readyz"
        );
        c.gateway_ready_url = Some("http://gateway:8081/readyz".to_owned());
        assert_eq!(
            c.gateway_ready_url().unwrap().as_str(),
            "http://gateway:8081/readyz"
        );
        assert!(parse_ws_url("http://x/ws").is_err());
        assert!(parse_http_url("ws://x/readyz").is_err());
    }

    #[test]
    fn debug_hides_secrets() {
        let mut c = Config::for_tests("postgres://u:pw@h/db", "");
        c.token_hmac_secret = Some("hmac-key-value".into());
        c.default_token = Some("default-token-value".into());
        c.bot_database_url = Some("postgres://bot:botpw@h/bot".into());
        let s = format!("{c:?}");
        assert!(!s.contains("hmac-key-value") && !s.contains("default-token-value"));
        assert!(!s.contains("botpw"), "{s}");
        let cli = Cli::try_parse_from([
            "webhook-registry",
            "import-bot",
            "--from",
            "postgres://bot:frompw@h/bot",
        ])
        .unwrap();
        assert!(!format!("{cli:?}").contains("frompw"));
        assert!(!s.contains(":pw@"));
    }

    #[test]
    fn parses_subcommands_and_flags() {
        let cli = Cli::try_parse_from([
            "webhook-registry",
            "token",
            "create",
            "--name",
            "x",
            "--expires-in",
            "30d",
        ])
        .unwrap();
        match cli.command {
            Some(Command::Token {
                command: TokenCommand::Create { expires_in, .. },
            }) => assert_eq!(expires_in, Some(Duration::from_secs(30 * 86400))),
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from([
            "webhook-registry",
            "serve",
            "--no-migrate",
            "--auto-migrate",
            "true",
        ])
        .unwrap();
        assert!(!cli.config.migrate_at_start());
        let cli = Cli::try_parse_from([
            "webhook-registry",
            "migrate",
            "--db-pool-size",
            "3",
            "--db-pool-timeout",
            "2s",
        ])
        .unwrap();
        assert_eq!(cli.config.database.database_pool_size, 3);
        assert_eq!(
            cli.config.database.database_pool_timeout,
            Duration::from_secs(2)
        );
        let cli = Cli::try_parse_from([
            "webhook-registry",
            "import-bot",
            "--history",
            "30d",
            "--dry-run",
            "--token-hash-algorithm",
            "SHA512",
        ])
        .unwrap();
        assert_eq!(
            cli.config.token_hash_algorithm,
            storage::tokens::HashAlgorithm::Sha512
        );
        match cli.command {
            Some(Command::ImportBot {
                from: None,
                history,
                dry_run: true,
            }) => assert_eq!(history, Some(Duration::from_secs(30 * 86400))),
            other => panic!("{other:?}"),
        }
        let err = Cli::try_parse_from(["webhook-registry", "--token-hash-algorithm", "md5"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("sha256, sha384 or sha512"), "{err}");
        assert!(
            Cli::try_parse_from(["webhook-registry", "--bot-token-sync-interval", "0s"]).is_err()
        );
        let help = Cli::command_for_tests().render_long_help().to_string();
        for want in [
            "REGISTRY_DB_POOL_SIZE",
            "REGISTRY_DB_POOL_TIMEOUT",
            "DATABASE_URL",
            "WEB_API_TOKEN_HASH_ALGORITHM",
            "BOT_DATABASE_URL",
            "BOT_TOKEN_SYNC_INTERVAL",
        ] {
            assert!(help.contains(want), "--help lacks {want}");
        }
        Cli::command_for_tests().debug_assert();
    }

    impl Cli {
        fn command_for_tests() -> clap::Command {
            <Cli as clap::CommandFactory>::command()
        }
    }
}
