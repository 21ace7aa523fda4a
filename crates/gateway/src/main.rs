//! `gateway`: the WebSocket fan-out service.

use clap::Parser;
use gateway::{Application, Config};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    telemetry::install_crypto_provider();
    let config = Config::parse();
    telemetry::init_logging(&config.log);
    let shutdown = telemetry::shutdown_on_signals();
    let result = async {
        let app = Application::build(config).await?;
        app.run_until_stopped(shutdown).await
    }
    .await;
    telemetry::finish("gateway", result)
}
