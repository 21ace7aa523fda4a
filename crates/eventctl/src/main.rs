//! `eventctl`: publish, simulate, tail and inspect bedolaga events.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    telemetry::install_crypto_provider();
    let cli = eventctl::Cli::parse();
    telemetry::init_logging(&cli.log);
    let result = eventctl::run(cli).await;
    // A command's error goes to stderr only, not into the log as well.
    telemetry::flush();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eventctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
