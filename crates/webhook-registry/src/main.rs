use webhook_registry::{Application, Cli, Command, cli};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    telemetry::install_crypto_provider();
    let (Cli { config, command }, renamed) =
        telemetry::settings::parse::<Cli>(webhook_registry::config::RENAMED);
    telemetry::init_logging(&config.log);
    for warning in renamed {
        tracing::warn!("{warning}");
    }
    let result = match command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let shutdown = telemetry::shutdown_on_signals();
            async {
                let app = Application::build(config).await?;
                app.run_until_stopped(shutdown).await
            }
            .await
        }
        Command::Migrate => cli::migrate(&config).await,
        Command::Prune { older_than } => {
            cli::prune(&config, older_than, &mut std::io::stdout()).await
        }
        Command::ImportBot {
            from,
            history,
            dry_run,
        } => cli::import_bot(&config, from, history, dry_run, &mut std::io::stdout()).await,
        Command::Token { command } => cli::token(&config, command, &mut std::io::stdout()).await,
        Command::Secrets { command } => {
            cli::secrets(&config, command, &mut std::io::stdout()).await
        }
    };
    telemetry::finish("webhook-registry", result)
}
