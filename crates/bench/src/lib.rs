//! The `bench` command: benchmarks of the running system (end-to-end
//! latency, webhook delivery,
//! WebSocket fan-out and its floor, delivery history, replay under load,
//! the outbox relay). BENCHMARKS.md records what they measured.

pub mod delivery;
pub mod e2e;
pub mod fanout;
pub mod floor;
pub mod history;
pub mod outbox;
mod postgres;
pub mod replay;
mod stats;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

pub use postgres::PostgresArgs;

/// Benchmarks of the bedolaga event services.
#[derive(Debug, Parser)]
#[command(name = "bench", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub benchmark: Benchmark,
    #[command(flatten)]
    pub nats: proto_events::nats::NatsArgs,
    #[command(flatten)]
    pub log: telemetry::LogArgs,
}

/// One benchmark: what it measures, with its own options.
#[derive(Debug, Subcommand)]
pub enum Benchmark {
    /// Webhook delivery throughput and latency through the delivery worker.
    Delivery(delivery::Args),
    /// From the bot's commit (or a direct publish) to the webhook receiver
    /// and the WebSocket client, per hop.
    E2e(e2e::Args),
    /// WebSocket fan-out through the gateway.
    Fanout(fanout::Args),
    /// The least work a WebSocket fan-out server can do (one send per
    /// event per client), as a peer for `bench fanout --peer floor`.
    FanoutFloor(floor::Args),
    /// Delivery-history reads and retention drops at growing history sizes.
    History(history::Args),
    /// Live delivery latency while a replay job of a large backlog runs.
    Replay(replay::Args),
    /// The transactional outbox through outbox-relay: drain throughput and
    /// commit-to-stream latency.
    Outbox(outbox::Args),
}

/// The binary of the service `name` that a benchmark starts: `given`
/// (its `flag`), or else the file of that name next to this executable
/// (`target/release/`), which must exist.
pub(crate) fn service_binary(
    given: Option<&Path>,
    name: &str,
    flag: &str,
) -> anyhow::Result<PathBuf> {
    let bin = match given {
        Some(b) => b.to_owned(),
        None => std::env::current_exe()?.with_file_name(name),
    };
    anyhow::ensure!(
        bin.exists(),
        "{} not found: build it (cargo build --release -p {name}) or pass {flag}",
        bin.display()
    );
    Ok(bin)
}

/// Runs one benchmark.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    cli.nats.validate()?;
    let ns = cli.nats.namespace()?;
    match cli.benchmark {
        Benchmark::Delivery(args) => delivery::run(&cli.nats, ns, args).await,
        Benchmark::E2e(args) => e2e::run(&cli.nats, args).await,
        Benchmark::Fanout(args) => fanout::run(&cli.nats, ns, args).await,
        Benchmark::FanoutFloor(args) => {
            tokio::task::spawn_blocking(move || floor::run(args)).await?
        }
        Benchmark::Replay(args) => replay::run(&cli.nats, ns, args).await,
        Benchmark::History(args) => history::run(&cli.nats, args).await,
        Benchmark::Outbox(args) => outbox::run(&cli.nats, args).await,
    }
}
