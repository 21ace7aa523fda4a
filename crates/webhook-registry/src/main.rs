use clap::Parser;
use webhook_registry::{Application, Cli, Command, cli};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::install_crypto_provider();
    let Cli { config, command } = Cli::parse();
    telemetry::init_logging(&config.log);
    let result = match command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let shutdown = telemetry::shutdown_on_signals();
            Application::build(config)
                .await?
                .run_until_stopped(shutdown)
                .await
        }
        Command::Migrate => cli::migrate(&config).await,
        Command::Prune { older_than } => {
            cli::prune(&config, older_than, &mut std::io::stdout()).await
        }
        Command::Token { command } => cli::token(&config, command, &mut std::io::stdout()).await,
    };
    telemetry::flush();
    result
}
