//! `outbox-relay`: publishes the bot's `event_outbox` rows to JetStream.

use clap::Parser;
use outbox_relay::{Application, Cli, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    telemetry::install_crypto_provider();
    let Cli { config, command } = Cli::parse();
    telemetry::init_logging(&config.log);
    let result = match command.unwrap_or(Command::Run) {
        Command::Run => {
            tracing::info!(?config, database = %config.database.redacted_url(), "starting outbox-relay");
            async {
                let app = Application::build(config).await?;
                app.run_until_stopped(telemetry::shutdown_on_signals())
                    .await
            }
            .await
        }
        Command::Migrate => outbox_relay::migrate(config.database.url()).await,
    };
    telemetry::finish("outbox-relay", result)
}
