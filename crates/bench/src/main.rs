//! `bench`: benchmarks of the bedolaga event services.

use clap::Parser;

// `bench delivery --worker in-process` runs the worker in this process; it
// allocates many short-lived buffers across threads, where mimalloc is much
// cheaper than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    telemetry::install_crypto_provider();
    let cli = bench::Cli::parse();
    telemetry::init_logging(&cli.log);
    let result = bench::run(cli).await;
    // A benchmark's error goes to stderr only, not into the log as well.
    telemetry::flush();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
