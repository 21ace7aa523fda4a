//! Logging, metrics, health endpoints and shutdown plumbing shared by the
//! bedolaga services.

pub mod metrics;
pub mod ops;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace;

use tokio_util::sync::CancellationToken;
use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::FilterFn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The log line format (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging settings every service takes.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter directives, e.g. `info,gateway=debug`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_filter: String,
    /// OTLP/HTTP collector base URL (`/v1/traces` is appended); traces are
    /// exported only when this is set.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otel_endpoint: Option<String>,
    /// The service name traces are reported under.
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub otel_service_name: Option<String>,
}

/// Installs the global subscriber (log lines go to stderr, so a command's
/// stdout carries only its result), and the OpenTelemetry exporter when an
/// endpoint is configured. Later calls (tests) are ignored. Call
/// [`flush`] before the process exits so the last spans are sent.
pub fn init_logging(args: &LogArgs) {
    let filter = EnvFilter::try_new(&args.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let otel = args
        .otel_endpoint
        .as_deref()
        .filter(|e| !e.is_empty())
        .and_then(|endpoint| {
            let name = args
                .otel_service_name
                .clone()
                .unwrap_or_else(default_service_name);
            match trace::otel_layer(endpoint, &name) {
                Ok(layer) => Some(layer),
                Err(e) => {
                    eprintln!("OpenTelemetry export disabled: {e}");
                    None
                }
            }
        });
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(FilterFn::new(no_credentials))
        .with(otel);
    let result = match args.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    };
    // Already initialised (several services in one test process): fine.
    let _ = result;
}

/// Libraries whose debug and trace lines carry credentials: async-nats
/// prints server addresses with their user, password or token
/// (`ServerAddr(Url { password: Some(…) })`), tokio-postgres prints the
/// parameters of every statement (webhook secrets, token hashes).
const CREDENTIAL_TARGETS: [&str; 2] = ["async_nats", "tokio_postgres"];

/// The filter under whatever `RUST_LOG` asks for: lines of
/// [`CREDENTIAL_TARGETS`] above `info` are never written, at any level.
pub fn no_credentials(meta: &Metadata<'_>) -> bool {
    *meta.level() <= Level::INFO
        || !CREDENTIAL_TARGETS.iter().any(|t| {
            meta.target()
                .strip_prefix(t)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
}

/// Sends the spans still buffered by the OpenTelemetry exporter.
pub fn flush() {
    trace::shutdown();
}

fn default_service_name() -> String {
    std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "bedolaga-events".to_owned())
}

/// Logging for tests: on only when `TEST_LOG` is set.
pub fn init_test_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        init_logging(&LogArgs {
            log_format: LogFormat::Text,
            log_filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".into()),
            otel_endpoint: None,
            otel_service_name: None,
        });
    }
}

/// A token cancelled on the first SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        trigger.cancel();
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Installs the process-wide rustls crypto provider (aws-lc-rs). Call at
/// the top of every `main`: with two backends linked, rustls cannot pick
/// one by itself.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
