//! The `eventctl` command line: publish one event, simulate the bot's
//! traffic, tail live events, inspect and re-publish dead letters, and
//! check a service's health. The benchmarks are the `bench` crate's.

pub mod deadletters;
pub mod health;
mod publish;
pub mod tail;

use clap::{Parser, Subcommand};

/// Publish, simulate, tail and inspect bedolaga events.
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
    }
}
