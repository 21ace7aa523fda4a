//! Logging, metrics, health endpoints, shutdown plumbing and the retry
//! loops' [`backoff::Backoff`] shared by the bedolaga services.

pub mod backoff;
pub mod metrics;
pub mod ops;
pub mod settings;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace;

use std::fmt;

use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::filter::{FilterFn, LevelFilter};
use tracing_subscriber::layer::{Context, Filter, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
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
/// endpoint is configured. `RUST_LOG` filters the log lines only: exported
/// spans are those at `info` and above whatever it says, so a quiet log
/// (`RUST_LOG=warn`) still yields whole traces. Later calls (tests) are
/// ignored. Call [`flush`] before the process exits so the last spans are
/// sent.
pub fn init_logging(args: &LogArgs) {
    // Already initialised (several services in one test process): fine.
    let _ = subscriber(args).try_init();
}

/// The subscriber [`init_logging`] installs.
pub fn subscriber(args: &LogArgs) -> Box<dyn Subscriber + Send + Sync> {
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
                Ok(layer) => Some(
                    layer.with_filter(
                        LevelFilter::INFO
                            .and(NoClientParseErrors)
                            .and(FilterFn::new(no_credentials)),
                    ),
                ),
                Err(e) => {
                    eprintln!("OpenTelemetry export disabled: {e}");
                    None
                }
            }
        });
    // Filters per layer only, and no layer that is not there: a filter
    // added as a layer of its own, or an absent (`None`) layer, takes every
    // callsite, so every span would be built, entered and dropped whatever
    // `RUST_LOG` says (about 3 % of the delivery worker's CPU at
    // saturation, for a span per event that nothing reads).
    match otel {
        Some(otel) => with_log_lines(tracing_subscriber::registry().with(otel), args, filter),
        None => with_log_lines(tracing_subscriber::registry(), args, filter),
    }
}

/// `base` with the log lines' layer (stderr, in `args.log_format`, what
/// `filter` lets through).
fn with_log_lines<S>(
    base: S,
    args: &LogArgs,
    filter: EnvFilter,
) -> Box<dyn Subscriber + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync + 'static,
{
    let filter = filter
        .and(NoClientParseErrors)
        .and(FilterFn::new(no_credentials));
    match args.log_format {
        LogFormat::Json => Box::new(
            base.with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_filter(filter),
            ),
        ),
        LogFormat::Text => Box::new(
            base.with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            ),
        ),
    }
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

/// Where and how actix-http reports the end of a connection whose request
/// it could not parse (actix-http 3.x, `h1/dispatcher.rs`:
/// `error!("stream error: {}", &err)` with a `DispatchError::Parse`).
const DISPATCHER_TARGET: &str = "actix_http::h1::dispatcher";
const PARSE_ERROR_LINE: &str = "stream error: request parse error: ";

/// Drops actix-http's ERROR line for requests it could not parse: a bad
/// request line or header, a URI the `http` crate refuses (longer than
/// 65,534 bytes), more than 96 headers or a head over 128 KiB. actix-http
/// answers those 400 or 431 itself, before any service sees them; they are
/// the client's mistake, not a server error. The dispatcher logs the same
/// error at TRACE where it finds it (`parse error …`, `request head was too
/// big …`), so `RUST_LOG=actix_http=trace` still shows them. Every other
/// dispatcher error (I/O, timeouts, a failing service) is kept.
pub struct NoClientParseErrors;

impl<S: Subscriber> Filter<S> for NoClientParseErrors {
    fn enabled(&self, _: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _: &Context<'_, S>) -> bool {
        !is_client_parse_error(event)
    }
}

fn is_client_parse_error(event: &Event<'_>) -> bool {
    let meta = event.metadata();
    if *meta.level() != Level::ERROR || meta.target() != DISPATCHER_TARGET {
        return false;
    }
    struct Message(Option<String>);
    impl Visit for Message {
        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            if field.name() == "message" {
                self.0 = Some(format!("{value:?}"));
            }
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "message" {
                self.0 = Some(value.to_owned());
            }
        }
    }
    let mut message = Message(None);
    event.record(&mut message);
    message.0.is_some_and(|m| m.starts_with(PARSE_ERROR_LINE))
}

/// Sends the spans still buffered by the OpenTelemetry exporter.
pub fn flush() {
    trace::shutdown();
}

/// How every binary's `main` ends, whether it failed to start, failed
/// later or stopped cleanly: a failure is logged and printed to stderr
/// (`name: error`, with its causes), then telemetry is flushed.
pub fn finish<E: fmt::Display>(name: &str, result: Result<(), E>) -> std::process::ExitCode {
    let code = match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "{name} failed");
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    };
    flush();
    code
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn client_parse_errors_are_not_logged_other_dispatcher_errors_are() {
        let buf = Buffer::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .with_filter(NoClientParseErrors),
        );
        tracing::subscriber::with_default(subscriber, || {
            let parse = "request parse error: URI error: uri too long";
            tracing::error!(target: "actix_http::h1::dispatcher", "stream error: {}", parse);
            tracing::error!(target: "actix_http::h1::dispatcher", "stream error: {}",
                "request parse error: message head is too large");
            // Kept: other errors of the dispatcher, the same text elsewhere
            // or at another level.
            tracing::error!(target: "actix_http::h1::dispatcher", "stream error: {}",
                "I/O error: broken pipe");
            tracing::error!(target: "actix_http::h1::dispatcher", "Upgrade handler error: x");
            tracing::warn!(target: "actix_http::h1::dispatcher", "stream error: {}", parse);
            tracing::error!(target: "my_service", "stream error: {}", parse);
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(!out.contains("message head is too large"), "{out}");
        assert!(out.contains("I/O error: broken pipe"), "{out}");
        assert!(out.contains("Upgrade handler error"), "{out}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("WARN") && l.contains("uri too long"))
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("my_service") && l.contains("uri too long"))
        );
    }
}
