//! `eventctl`: publish, simulate and benchmark bedolaga events.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    telemetry::install_crypto_provider();
    let cli = eventctl::Cli::parse();
    telemetry::init_logging(&cli.log);
    match eventctl::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eventctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
