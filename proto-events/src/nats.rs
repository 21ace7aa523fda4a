//! How every binary reaches NATS (docs/configuration.md): one
//! set of flags and environment variables, flattened into each service's
//! configuration, and one function that opens the connection.
//!
//! - `NATS_URL`: one URL or a comma-separated list (`nats://` or `tls://`;
//!   a bare `host:port` means `nats://`). `user:password@` or `token@` in a
//!   URL authenticates. Credentials are taken out of the URLs before they
//!   reach the client library, so no log line of it can show them, and
//!   every URL is shown redacted ([`NatsArgs::redacted_urls`]).
//! - `NATS_CREDS`: a `.creds` file (user JWT and NKEY seed), decentralised auth.
//! - `NATS_NKEY`: a file holding an NKEY user's seed. A file, not the seed
//!   itself, so the secret stays out of the environment that `ps`, crash
//!   reports and orchestrators show; it is the same form a mounted
//!   Kubernetes secret takes. The seed is never logged.
//! - `NATS_TLS_CA`, `NATS_TLS_CERT` + `NATS_TLS_KEY`: the CA that signed the
//!   servers' certificates and a client certificate for servers that verify
//!   clients. Any of them makes TLS required, so a server that offers no
//!   TLS is refused instead of being talked to in plain text.
//! - `EVENTS_REPLICAS`, `EVENTS_MAX_AGE`, `EVENTS_MAX_BYTES`: the
//!   [`StreamSettings`] streams are created with.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_nats::{ConnectOptions, ServerAddr};

use crate::{InvalidPrefix, Namespace, StreamSettings};

/// `NATS_URL` when unset.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// NATS connection and stream settings shared by every binary.
#[derive(Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL, or a comma-separated list of a cluster's servers
    /// (`nats://` or `tls://`). `user:password@` or `token@` in a URL
    /// authenticates; it is never logged.
    #[arg(long, env = "NATS_URL", default_value = DEFAULT_NATS_URL, hide_env_values = true, global = true)]
    pub nats_url: String,
    /// Prefix of every subject and stream name (empty: the production names).
    #[arg(long, env = "NATS_PREFIX", default_value = "", global = true)]
    pub nats_prefix: String,
    /// NATS credentials file (`.creds`: a user JWT and its NKEY seed).
    #[arg(long, env = "NATS_CREDS", global = true)]
    pub nats_creds: Option<PathBuf>,
    /// File holding the seed (`SU…`) of an NKEY user.
    #[arg(long, env = "NATS_NKEY", global = true)]
    pub nats_nkey: Option<PathBuf>,
    /// PEM file of the CA certificates that signed the servers'
    /// certificates (instead of the system's); TLS is then required.
    #[arg(long, env = "NATS_TLS_CA", global = true)]
    pub nats_tls_ca: Option<PathBuf>,
    /// PEM client certificate for servers that verify clients (with
    /// NATS_TLS_KEY); TLS is then required.
    #[arg(long, env = "NATS_TLS_CERT", global = true)]
    pub nats_tls_cert: Option<PathBuf>,
    /// PEM private key of NATS_TLS_CERT.
    #[arg(long, env = "NATS_TLS_KEY", global = true)]
    pub nats_tls_key: Option<PathBuf>,
    /// Replicas of the events and dead-letter streams when a service
    /// creates them (up to 5; more than 1 needs a JetStream cluster).
    #[arg(long, env = "EVENTS_REPLICAS", default_value_t = 1, global = true,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=5))]
    pub events_replicas: usize,
    /// How long the events stream keeps events when a service creates it
    /// (`0s`: until EVENTS_MAX_BYTES is reached).
    #[arg(long, env = "EVENTS_MAX_AGE", default_value = "7d", global = true,
          value_parser = humantime::parse_duration)]
    pub events_max_age: Duration,
    /// Most bytes the events stream holds when a service creates it, the
    /// oldest events dropped first: a number with an optional unit (`K`,
    /// `M`, `G`, `T`, powers of 1024 as in NATS), or `unlimited`.
    #[arg(
        long,
        env = "EVENTS_MAX_BYTES",
        default_value = "unlimited",
        global = true
    )]
    pub events_max_bytes: ByteLimit,
}

/// `EVENTS_MAX_BYTES`: a byte count, or no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteLimit(pub Option<u64>);

impl FromStr for ByteLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("unlimited") {
            return Ok(Self(None));
        }
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let number: u64 = number.parse().map_err(|_| {
            format!("'{s}' is not a size: expected e.g. 1073741824, 512M, 10G or unlimited")
        })?;
        let shift = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 0,
            "K" | "KB" | "KIB" => 10,
            "M" | "MB" | "MIB" => 20,
            "G" | "GB" | "GIB" => 30,
            "T" | "TB" | "TIB" => 40,
            other => return Err(format!("unknown size unit '{other}' (K, M, G or T)")),
        };
        let bytes = number
            .checked_mul(1 << shift)
            .filter(|b| i64::try_from(*b).is_ok())
            .ok_or_else(|| format!("'{s}' is too large"))?;
        // JetStream reads a zero limit as no limit.
        Ok(Self(Some(bytes).filter(|b| *b > 0)))
    }
}

impl fmt::Display for ByteLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(b) => write!(f, "{b}"),
            None => f.write_str("unlimited"),
        }
    }
}

/// Whether the first connection is retried in the background (services,
/// which must start while NATS is down) or fails at once (commands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstConnect {
    /// Return a client at once and keep trying every server until one answers.
    RetryInBackground,
    /// Try every server once; fail when none answers.
    FailFast,
}

/// The readiness of a connection: ready while connected, else the state
/// it is in (`NATS is disconnected`). For `/readyz`.
pub fn connection_ready(client: &async_nats::Client) -> Result<(), String> {
    match client.connection_state() {
        async_nats::connection::State::Connected => Ok(()),
        other => Err(format!("NATS is {other}")),
    }
}

/// [`round_trip`] as a readiness probe (`telemetry::ops::Readiness::probe`).
pub fn round_trip_probe(
    client: &async_nats::Client,
) -> impl Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync + 'static {
    let client = client.clone();
    move || {
        let client = client.clone();
        Box::pin(async move { round_trip(&client).await })
    }
}

/// The readiness of the server itself: a request to a fresh inbox nobody
/// listens on, which a live server answers at once with "no responders".
/// A connection that looks open to a server that is frozen or cut off
/// (its kernel still acknowledges, so the client notices nothing for up
/// to two missed pings) fails this as soon as the caller's timeout runs
/// out (`telemetry::ops::PROBE_TIMEOUT` in `/readyz`).
pub async fn round_trip(client: &async_nats::Client) -> Result<(), String> {
    connection_ready(client)?;
    match client
        .request(client.new_inbox(), bytes::Bytes::new())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
        Err(e) => Err(format!("NATS does not answer: {e}")),
    }
}

/// A NATS setting that cannot work, or a connection that could not be opened.
/// No variant carries a password, token or seed.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("NATS_URL: no server given")]
    NoServer,
    #[error("NATS_URL: server {position} ({url}) is not valid: {reason}")]
    Url {
        position: usize,
        url: String,
        reason: String,
    },
    #[error(
        "NATS_URL: the servers carry different credentials; give the same ones to all, or to one"
    )]
    MixedCredentials,
    #[error(
        "use one way to authenticate to NATS: NATS_CREDS, NATS_NKEY or credentials in NATS_URL"
    )]
    SeveralAuthMethods,
    #[error("NATS_TLS_CERT and NATS_TLS_KEY go together")]
    ClientCertWithoutKey,
    #[error("NATS_PREFIX: {0}")]
    Prefix(#[from] InvalidPrefix),
    #[error("NATS_CREDS {path}: {reason}")]
    Creds { path: PathBuf, reason: String },
    #[error("NATS_NKEY {path}: {reason}")]
    Nkey { path: PathBuf, reason: String },
    #[error("cannot connect to NATS at {urls}: {source}")]
    Connect {
        urls: String,
        source: async_nats::ConnectError,
    },
}

/// Credentials given in `NATS_URL`.
#[derive(Clone, PartialEq, Eq)]
enum UrlAuth {
    UserPassword(String, String),
    Token(String),
}

/// `NATS_URL` parsed: the servers without credentials, and the credentials.
struct Servers {
    addrs: Vec<ServerAddr>,
    auth: Option<UrlAuth>,
}

impl NatsArgs {
    /// The settings for one URL (or list) with every other value at its
    /// default; the environment is not read (tests and benchmarks).
    pub fn for_url(url: &str) -> Self {
        let streams = StreamSettings::default();
        Self {
            nats_url: url.to_owned(),
            nats_prefix: String::new(),
            nats_creds: None,
            nats_nkey: None,
            nats_tls_ca: None,
            nats_tls_cert: None,
            nats_tls_key: None,
            events_replicas: streams.replicas,
            events_max_age: streams.max_age,
            events_max_bytes: ByteLimit(streams.max_bytes),
        }
    }

    /// The stream settings of `EVENTS_*`.
    pub fn stream_settings(&self) -> StreamSettings {
        StreamSettings {
            replicas: self.events_replicas,
            max_age: self.events_max_age,
            max_bytes: self.events_max_bytes.0,
        }
    }

    /// The namespace of `NATS_PREFIX`, creating streams with `EVENTS_*`.
    pub fn namespace(&self) -> Result<Namespace, InvalidPrefix> {
        Ok(Namespace::new(&self.nats_prefix)?.with_stream_settings(self.stream_settings()))
    }

    /// Every entry of `NATS_URL`, trimmed, without empty ones.
    fn entries(&self) -> impl Iterator<Item = &str> {
        self.nats_url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }

    /// `NATS_URL` for logs: every entry with its password or token hidden.
    pub fn redacted_urls(&self) -> String {
        self.entries()
            .map(crate::redact_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Checks everything that can be checked without a server: the URLs,
    /// the prefix, that one way of authenticating is chosen and that a
    /// client certificate comes with its key.
    pub fn validate(&self) -> Result<(), NatsError> {
        let servers = self.servers()?;
        Namespace::new(&self.nats_prefix)?;
        let methods = [
            self.nats_creds.is_some(),
            self.nats_nkey.is_some(),
            servers.auth.is_some(),
        ];
        if methods.into_iter().filter(|m| *m).count() > 1 {
            return Err(NatsError::SeveralAuthMethods);
        }
        if self.nats_tls_cert.is_some() != self.nats_tls_key.is_some() {
            return Err(NatsError::ClientCertWithoutKey);
        }
        Ok(())
    }

    fn servers(&self) -> Result<Servers, NatsError> {
        let mut addrs = Vec::new();
        let mut auth: Option<UrlAuth> = None;
        for (i, entry) in self.entries().enumerate() {
            let invalid = |reason: String| NatsError::Url {
                position: i + 1,
                url: crate::redact_url(entry),
                reason,
            };
            // The parser's messages name the problem, never the input.
            let mut url = ServerAddr::from_str(entry)
                .map_err(|e| invalid(e.to_string()))?
                .into_inner();
            if url.host_str().is_none_or(str::is_empty) {
                return Err(invalid("no host".to_owned()));
            }
            let user = decode(url.username());
            let found = match url.password() {
                Some(password) => Some(UrlAuth::UserPassword(user, decode(password))),
                None if !user.is_empty() => Some(UrlAuth::Token(user)),
                None => None,
            };
            if let Some(found) = found {
                match &auth {
                    Some(known) if *known != found => return Err(NatsError::MixedCredentials),
                    _ => auth = Some(found),
                }
                url.set_username("")
                    .and_then(|()| url.set_password(None))
                    .map_err(|()| invalid("cannot take the credentials out".to_owned()))?;
            }
            addrs.push(ServerAddr::from_url(url).map_err(|e| invalid(e.to_string()))?);
        }
        if addrs.is_empty() {
            return Err(NatsError::NoServer);
        }
        Ok(Servers { addrs, auth })
    }

    /// The client options of these settings: credentials, TLS, and the
    /// connection name servers show (`nats server report connections`).
    pub async fn connect_options(&self, name: &str) -> Result<ConnectOptions, NatsError> {
        self.validate()?;
        let servers = self.servers()?;
        let mut options = ConnectOptions::new().name(name);
        match servers.auth {
            Some(UrlAuth::UserPassword(user, password)) => {
                options = options.user_and_password(user, password);
            }
            Some(UrlAuth::Token(token)) => options = options.token(token),
            None => {}
        }
        if let Some(path) = &self.nats_creds {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| NatsError::Creds {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
        }
        if let Some(path) = &self.nats_nkey {
            options = options.nkey(read_seed(path).await?);
        }
        let mut tls = false;
        if let Some(ca) = &self.nats_tls_ca {
            options = options.add_root_certificates(ca.clone());
            tls = true;
        }
        if let (Some(cert), Some(key)) = (&self.nats_tls_cert, &self.nats_tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
            tls = true;
        }
        if tls {
            options = options.require_tls(true);
        }
        Ok(options)
    }

    /// Opens the connection every binary uses: all servers of `NATS_URL`
    /// (the client fails over between them and the ones the cluster
    /// announces), the configured credentials and TLS, and connection
    /// events in the log.
    pub async fn connect(
        &self,
        name: &str,
        first: FirstConnect,
    ) -> Result<async_nats::Client, NatsError> {
        let mut options = self
            .connect_options(name)
            .await?
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("connected to NATS"),
                    async_nats::Event::Disconnected
                    | async_nats::Event::ClientError(_)
                    | async_nats::Event::ServerError(_)
                    | async_nats::Event::SlowConsumer(_) => {
                        tracing::warn!(%event, "NATS connection problem; retrying in the background")
                    }
                    other => tracing::info!(event = %other, "NATS connection event"),
                }
            });
        if first == FirstConnect::RetryInBackground {
            options = options.retry_on_initial_connect();
        }
        let servers = self.servers()?;
        options
            .connect(servers.addrs)
            .await
            .map_err(|source| NatsError::Connect {
                urls: self.redacted_urls(),
                source,
            })
    }
}

impl fmt::Debug for NatsArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsArgs")
            .field("nats_url", &self.redacted_urls())
            .field("nats_prefix", &self.nats_prefix)
            .field("nats_creds", &self.nats_creds)
            .field("nats_nkey", &self.nats_nkey)
            .field("nats_tls_ca", &self.nats_tls_ca)
            .field("nats_tls_cert", &self.nats_tls_cert)
            .field("nats_tls_key", &self.nats_tls_key)
            .field("events_replicas", &self.events_replicas)
            .field(
                "events_max_age",
                &humantime::format_duration(self.events_max_age).to_string(),
            )
            .field("events_max_bytes", &self.events_max_bytes.to_string())
            .finish()
    }
}

/// A percent-encoded URL user name or password as the server expects it.
fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The user seed in a `NATS_NKEY` file: the first line that starts with
/// `SU` (a file of the seed alone, or one written by `nk`/`nsc`).
async fn read_seed(path: &Path) -> Result<String, NatsError> {
    let fail = |reason: String| NatsError::Nkey {
        path: path.to_owned(),
        reason,
    };
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let seed = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("SU"))
        .ok_or_else(|| fail("holds no user seed (a line starting with SU)".to_owned()))?;
    // Checked here so a bad seed stops the start with a clear message; the
    // error names the file, never its content.
    nkeys::KeyPair::from_seed(seed).map_err(|_| fail("the seed is not a valid NKEY".to_owned()))?;
    Ok(seed.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        nats: NatsArgs,
    }

    fn parse(args: &[&str]) -> Result<NatsArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied())).map(|c| c.nats)
    }

    #[test]
    fn defaults_match_for_url() {
        let parsed = parse(&["--nats-url", DEFAULT_NATS_URL]).unwrap();
        let built = NatsArgs::for_url(DEFAULT_NATS_URL);
        assert_eq!(format!("{parsed:?}"), format!("{built:?}"));
        assert_eq!(parsed.stream_settings(), StreamSettings::default());
        parsed.validate().unwrap();
    }

    #[test]
    fn a_comma_list_is_every_server_with_credentials_taken_out() {
        let args = NatsArgs::for_url(" nats://u:p%40ss@a:4222, tls://b:4223 ,c,");
        let servers = args.servers().unwrap();
        let urls: Vec<_> = servers
            .addrs
            .iter()
            .map(|a| a.clone().into_inner().to_string())
            .collect();
        assert_eq!(urls, ["nats://a:4222", "tls://b:4223", "nats://c"]);
        assert!(servers.addrs[1].tls_required());
        assert!(matches!(servers.auth,
            Some(UrlAuth::UserPassword(u, p)) if u == "u" && p == "p@ss"));
        let token = NatsArgs::for_url("nats://s3cret@a,nats://s3cret@b")
            .servers()
            .unwrap();
        assert!(matches!(token.auth, Some(UrlAuth::Token(t)) if t == "s3cret"));
    }

    #[test]
    fn bad_lists_are_refused_without_their_secrets() {
        for (url, want) in [
            ("", "no server"),
            (" , ", "no server"),
            ("nats://u:hunter2@a:99999", "server 1"),
            ("nats://a,http://u:hunter2@b", "server 2"),
            (
                "nats://x:hunter2@a,nats://y:hunter2@b",
                "different credentials",
            ),
        ] {
            let e = NatsArgs::for_url(url).validate().unwrap_err().to_string();
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        let mut args = NatsArgs::for_url("nats://tok@a");
        args.nats_nkey = Some("/k".into());
        assert!(matches!(
            args.validate(),
            Err(NatsError::SeveralAuthMethods)
        ));
        let mut args = NatsArgs::for_url("nats://a");
        args.nats_tls_cert = Some("/c".into());
        assert!(matches!(
            args.validate(),
            Err(NatsError::ClientCertWithoutKey)
        ));
    }

    #[test]
    fn debug_and_logs_show_no_secret() {
        let args = NatsArgs::for_url("nats://u:hunter2@a:4222,tls://tok3n@b/,c:4222");
        assert_eq!(
            args.redacted_urls(),
            "nats://u:***@a:4222,tls://***@b/,c:4222"
        );
        let debug = format!("{args:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("tok3n"),
            "{debug}"
        );
    }

    #[test]
    fn stream_settings_parse() {
        let args = parse(&[
            "--events-replicas",
            "3",
            "--events-max-age",
            "2d 12h",
            "--events-max-bytes",
            "10G",
        ])
        .unwrap();
        assert_eq!(
            args.stream_settings(),
            StreamSettings {
                replicas: 3,
                max_age: Duration::from_secs(60 * 3600),
                max_bytes: Some(10 << 30),
            }
        );
        assert!(parse(&["--events-replicas", "0"]).is_err());
        assert!(parse(&["--events-replicas", "7"]).is_err());
        for (text, want) in [
            ("unlimited", None),
            ("0", None),
            ("1048576", Some(1 << 20)),
            ("512 MiB", Some(512 << 20)),
            ("64k", Some(64 << 10)),
            ("1TB", Some(1 << 40)),
        ] {
            assert_eq!(
                text.parse::<ByteLimit>().unwrap(),
                ByteLimit(want),
                "{text}"
            );
        }
        for bad in ["", "ten", "10X", "-1", "99999999999T"] {
            assert!(bad.parse::<ByteLimit>().is_err(), "{bad}");
        }
        let ns = args.namespace().unwrap();
        assert_eq!(ns.stream_config().num_replicas, 3);
        assert_eq!(ns.stream_config().max_bytes, 10 << 30);
        assert_eq!(ns.deadletter_stream_config().num_replicas, 3);
    }
}
