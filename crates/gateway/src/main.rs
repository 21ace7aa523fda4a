//! `gateway`: the WebSocket fan-out service.

use clap::Parser;
use gateway::{Application, Config};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    telemetry::install_crypto_provider();
    let config = Config::parse();
    telemetry::init_logging(&config.log);
    let shutdown = telemetry::shutdown_on_signals();
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "gateway cannot start");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = app.run_until_stopped(shutdown).await;
    telemetry::flush();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "gateway failed");
            std::process::ExitCode::FAILURE
        }
    }
}
