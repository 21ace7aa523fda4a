//! `delivery-worker`: consumes events and delivers signed webhooks.

use delivery_worker::{Application, Config};

// glibc malloc spent about a quarter of the worker's CPU under load (many
// short-lived request buffers across threads); mimalloc is much cheaper.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    telemetry::install_crypto_provider();
    let (config, renamed) = telemetry::settings::parse::<Config>(delivery_worker::config::RENAMED);
    telemetry::init_logging(&config.log);
    for warning in renamed {
        tracing::warn!("{warning}");
    }
    tracing::info!(?config, database = %config.database.redacted_url(), "starting delivery-worker");
    let result = async {
        let app = Application::build(config).await?;
        app.run_until_stopped(telemetry::shutdown_on_signals())
            .await
    }
    .await;
    telemetry::finish("delivery-worker", result)
}
