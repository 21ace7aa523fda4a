//! The `eventctl` command line: publish one event, simulate the bot's
//! traffic, tail live events, inspect and re-publish dead letters, check
//! a service's health, and benchmark the delivery worker and the gateway.

pub mod bench;
pub mod deadletters;
pub mod health;
mod publish;
pub mod tail;

use clap::{Parser, Subcommand};

/// Publish, simulate and benchmark bedolaga events.
#[derive(Debug, Parser)]
#[command(name = "eventctl", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub nats: proto_events::nats::NatsArgs,
    #[command(flatten)]
    pub log: telemetry::LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish one event and print its id and stream sequence.
    Publish(publish::PublishArgs),
    /// Publish a stream of realistic events of every type.
    Simulate(publish::SimulateArgs),
    /// Print live events as JSON lines, from NATS or through a gateway.
    Tail(tail::TailArgs),
    /// List dead letters with their reasons, or re-publish a fixed one.
    Deadletters(deadletters::DeadlettersArgs),
    /// GET a service's /healthz or /readyz; exit 0 on a 2xx answer
    /// (container health checks).
    Health(health::HealthArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Webhook delivery throughput and latency through the delivery worker.
    Delivery(bench::delivery::Args),
    /// WebSocket fan-out through the gateway.
    Fanout(bench::fanout::Args),
    /// The least work a WebSocket fan-out server can do (one send per
    /// event per client), as a peer for `bench fanout --peer floor`.
    FanoutFloor(bench::floor::Args),
    /// Delivery-history reads and retention drops at growing history sizes.
    History(bench::history::Args),
    /// Live delivery latency while a replay job of a large backlog runs.
    Replay(bench::replay::Args),
    /// The transactional outbox through outbox-relay: drain throughput and
    /// commit-to-stream latency.
    Outbox(bench::outbox::Args),
}

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    cli.nats.validate()?;
    let ns = cli.nats.namespace()?;
    match cli.command {
        Command::Publish(args) => publish::publish(&cli.nats, ns, args).await,
        Command::Simulate(args) => publish::simulate(&cli.nats, ns, args).await,
        Command::Tail(args) => {
            let stop = tokio_util::sync::CancellationToken::new();
            let on_signal = stop.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                on_signal.cancel();
            });
            let mut sink = tail::stdout_sink();
            tail::tail(&cli.nats, ns, args, &mut sink, stop).await
        }
        Command::Deadletters(args) => {
            let mut sink = tail::stdout_sink();
            deadletters::run(&cli.nats, ns, args, &mut sink).await
        }
        Command::Health(args) => health::check(&args).await,
        Command::Bench(BenchCommand::Delivery(args)) => {
            bench::delivery::run(&cli.nats, ns, args).await
        }
        Command::Bench(BenchCommand::Fanout(args)) => bench::fanout::run(&cli.nats, ns, args).await,
        Command::Bench(BenchCommand::FanoutFloor(args)) => {
            tokio::task::spawn_blocking(move || bench::floor::run(args)).await?
        }
        Command::Bench(BenchCommand::Replay(args)) => bench::replay::run(&cli.nats, ns, args).await,
        Command::Bench(BenchCommand::History(args)) => bench::history::run(&cli.nats, args).await,
        Command::Bench(BenchCommand::Outbox(args)) => bench::outbox::run(&cli.nats, args).await,
    }
}
