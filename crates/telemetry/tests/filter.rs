//! What the log filter leaves out is not built at all: a span below
//! `RUST_LOG` (and not exported) costs nothing on a hot path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use telemetry::{LogArgs, LogFormat};

fn args(filter: &str, format: LogFormat) -> LogArgs {
    LogArgs {
        log_format: format,
        log_filter: filter.into(),
        otel_endpoint: None,
        otel_service_name: None,
    }
}

#[test]
fn spans_below_the_log_filter_are_not_created() {
    for format in [LogFormat::Text, LogFormat::Json] {
        tracing::subscriber::with_default(telemetry::subscriber(&args("warn", format)), || {
            assert!(tracing::info_span!("quiet").is_disabled(), "{format:?}");
            assert!(!tracing::warn_span!("loud").is_disabled(), "{format:?}");
        });
        tracing::subscriber::with_default(telemetry::subscriber(&args("info", format)), || {
            assert!(!tracing::info_span!("shown").is_disabled(), "{format:?}");
            assert!(tracing::debug_span!("hidden").is_disabled(), "{format:?}");
        });
    }
}
