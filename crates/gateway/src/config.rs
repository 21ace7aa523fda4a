//! The gateway's configuration: every setting a flag and an environment
//! variable (docs/configuration.md).

use std::time::Duration;

use secrecy::SecretString;

/// Settings of one gateway process.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "gateway",
    version,
    about = "WebSocket fan-out of bedolaga events"
)]
pub struct Config {
    /// PostgreSQL (API tokens are checked against `web_api_tokens`).
    #[command(flatten)]
    pub database: storage::DatabaseArgs,
    #[command(flatten)]
    pub nats: proto_events::nats::NatsArgs,
    /// Address to listen on (WebSocket `/ws`, console `/`, health and metrics).
    #[arg(long, env = "GATEWAY_BIND", default_value = "127.0.0.1:8081")]
    pub bind: String,
    /// Comma-separated `Origin` values allowed to open `/ws` (empty: any;
    /// the token is required anyway). Requests without `Origin` (non-browser
    /// clients) are always allowed.
    #[arg(
        long,
        env = "GATEWAY_ALLOWED_ORIGINS",
        default_value = "",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,
    /// Most WebSocket connections held at once; further clients are closed
    /// with 1013 right after the handshake.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,
    /// Most messages queued for one client; past it the client switches to
    /// catch-up from the stream (closed with 1013 only when
    /// `GATEWAY_MAX_CATCHUP_CLIENTS` are catching up already).
    #[arg(long, env = "GATEWAY_CLIENT_QUEUE_MESSAGES", default_value_t = 1024)]
    pub client_queue_messages: usize,
    /// Most bytes queued for one client; past it the client switches to
    /// catch-up, as for `GATEWAY_CLIENT_QUEUE_MESSAGES`.
    #[arg(long, env = "GATEWAY_CLIENT_QUEUE_BYTES", default_value_t = 1024 * 1024)]
    pub client_queue_bytes: usize,
    /// How often the server pings each client.
    #[arg(long, env = "GATEWAY_PING_INTERVAL", default_value = "25s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,
    /// A client that sent nothing (not even a pong) for this long is closed.
    #[arg(long, env = "GATEWAY_PONG_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub pong_timeout: Duration,
    /// How often the tokens of open connections are checked again; revoked
    /// or expired ones are closed with 1008.
    #[arg(long, env = "GATEWAY_TOKEN_RECHECK", default_value = "2s", value_parser = humantime::parse_duration)]
    pub token_recheck: Duration,
    /// Largest inbound WebSocket message (bytes).
    #[arg(long, env = "GATEWAY_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,
    /// Most events one resume may replay; older `since` values get
    /// `resync_required` instead.
    #[arg(long, env = "GATEWAY_MAX_REPLAY", default_value_t = 100_000)]
    pub max_replay: u64,
    /// Kernel send buffer per client socket in bytes (0: the system default).
    /// Smaller values bound kernel memory per slow client.
    #[arg(long, env = "GATEWAY_SOCKET_SEND_BUFFER", default_value_t = 0)]
    pub socket_send_buffer: usize,
    /// A client whose socket takes no bytes for this long (it stopped
    /// reading) is disconnected.
    #[arg(long, env = "GATEWAY_WRITE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,
    /// Clients that may be in catch-up mode at once (fed from the stream
    /// after their queue overflowed); past it a lagging client is closed
    /// with 1013.
    #[arg(long, env = "GATEWAY_MAX_CATCHUP_CLIENTS", default_value_t = 256)]
    pub max_catchup_clients: usize,
    /// How many events a client may fall behind before catch-up gives up
    /// and sends `resync_required`.
    #[arg(long, env = "GATEWAY_CATCHUP_MAX_EVENTS", default_value_t = 100_000)]
    pub catchup_max_events: u64,
    /// How old the next event a catching-up client needs may be before
    /// catch-up gives up and sends `resync_required`.
    #[arg(long, env = "GATEWAY_CATCHUP_MAX_AGE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub catchup_max_age: Duration,
    /// How long shutdown waits for clients to take their 1001 close frame.
    #[arg(long, env = "GATEWAY_SHUTDOWN_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// HTTP worker threads (0: one per core).
    #[arg(long, env = "GATEWAY_WORKERS", default_value_t = 0)]
    pub workers: usize,
    /// Digest of token hashes, as the bot's setting: sha256, sha384 or sha512.
    #[arg(long, env = "WEB_API_TOKEN_HASH_ALGORITHM", default_value = "sha256")]
    pub token_hash_algorithm: storage::tokens::HashAlgorithm,
    /// Key for the bot's HMAC token hashes (empty: plain digests). With a
    /// key, plain digests (legacy) are still accepted.
    #[arg(
        long,
        env = "WEB_API_TOKEN_HMAC_SECRET",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub token_hmac_secret: SecretString,
    #[command(flatten)]
    pub log: telemetry::LogArgs,
}

impl Config {
    /// The configuration `gateway` would use with no flags: defaults
    /// plus whatever the environment sets (tests start from this and
    /// override fields).
    pub fn from_env() -> Result<Self, clap::Error> {
        <Self as clap::Parser>::try_parse_from(["gateway"])
    }

    /// The origins allowed to connect, trimmed, without empty entries.
    pub fn origins(&self) -> Vec<String> {
        self.allowed_origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|o| !o.is_empty())
            .collect()
    }

    /// Checks values that clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.ping_interval.is_zero() || self.pong_timeout.is_zero() {
            return Err("ping interval and pong timeout must be positive".into());
        }
        if self.write_timeout.is_zero() {
            return Err("write timeout must be positive".into());
        }
        if self.token_recheck.is_zero() {
            return Err("token recheck interval must be positive".into());
        }
        if self.client_queue_messages == 0 || self.client_queue_bytes == 0 {
            return Err("client queue limits must be positive".into());
        }
        if self.max_connections == 0 {
            return Err("max connections must be positive".into());
        }
        self.nats.validate().map_err(|e| e.to_string())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::Parser;

    use super::*;

    #[test]
    fn defaults_match_the_parser() {
        let parsed = Config::try_parse_from(["gateway", "--bind", "127.0.0.1:8081"]).unwrap();
        assert_eq!(parsed.bind, "127.0.0.1:8081");
        assert!(parsed.validate().is_ok());
        let help = <Config as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        for want in [
            "GATEWAY_BIND",
            "GATEWAY_ALLOWED_ORIGINS",
            "GATEWAY_MAX_CONNECTIONS",
            "GATEWAY_TOKEN_RECHECK",
            "WEB_API_TOKEN_HMAC_SECRET",
            "WEB_API_TOKEN_HASH_ALGORITHM",
            "[default: 25s]",
            "[default: 60s]",
        ] {
            assert!(help.contains(want), "--help lacks {want}");
        }
    }

    #[test]
    fn the_hash_algorithm_is_checked_at_start() {
        let c = Config::try_parse_from(["gateway", "--token-hash-algorithm", "SHA384"]).unwrap();
        assert_eq!(
            c.token_hash_algorithm,
            storage::tokens::HashAlgorithm::Sha384
        );
        let err = Config::try_parse_from(["gateway", "--token-hash-algorithm", "md5"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("sha256, sha384 or sha512"), "{err}");
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let mut c = Config::try_parse_from(["gateway"]).unwrap();
        c.token_hmac_secret = "hunter2".into();
        c.database = storage::DatabaseArgs::for_url("postgres://u:pw@h/db");
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2") && !s.contains("pw@"), "{s}");
    }

    #[test]
    fn origins_are_normalised() {
        let c = Config::try_parse_from([
            "gateway",
            "--allowed-origins",
            "https://Admin.example.com/, ,http://localhost:3000",
        ])
        .unwrap();
        assert_eq!(
            c.origins(),
            vec!["https://admin.example.com", "http://localhost:3000"]
        );
    }
}
