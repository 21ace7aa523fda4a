//! `bench outbox`: the transactional outbox through `outbox-relay`.
//!
//! Two measurements on a temporary database of the outbox migration, with
//! the `outbox-relay` binary as a child process:
//! 1. **Throughput**: `--events` committed rows (a `payment.completed`
//!    envelope each) are waiting when the relay starts; reported is the rate
//!    from the first to the last event stored in the stream, and the relay's
//!    CPU time per event.
//! 2. **Latency**: with the relay idle and listening, events are committed
//!    one transaction each at `--rate` per second for `--duration`; each
//!    event's latency runs from just before its `COMMIT` is sent to its
//!    arrival through an ordered JetStream consumer (so it is stored).
//!    Reported are p50, p99 and max.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures::StreamExt;
use parking_lot::Mutex;
use proto_events::Namespace;
use proto_events::nats::{FirstConnect, NatsArgs};
use storage::testing::TestDb;

use crate::PostgresArgs;
use crate::delivery::cpu_seconds;
use crate::stats::Latencies;

/// Outbox relay benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Rows waiting in the outbox for the throughput run.
    #[arg(long, default_value_t = 200_000)]
    pub events: u64,
    /// Commits per second in the latency run (one event per transaction).
    #[arg(long, default_value_t = 500)]
    pub rate: u64,
    /// Length of the latency run.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// `RELAY_BATCH_SIZE` of the relay under test.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    #[command(flatten)]
    pub postgres: PostgresArgs,
    /// The relay binary (default: next to this executable).
    #[arg(long)]
    pub relay_bin: Option<std::path::PathBuf>,
}

pub async fn run(nats: &NatsArgs, args: Args) -> anyhow::Result<()> {
    let bin = crate::service_binary(args.relay_bin.as_deref(), "outbox-relay", "--relay-bin")?;
    let db = args.postgres.temporary_db().await?;
    let ns = Namespace::unique();
    let client = nats.connect("bench", FirstConnect::FailFast).await?;
    let js = jetstream::new(client);
    let result = bench(nats, &js, &ns, &db, &bin, &args).await;
    let _ = js.delete_stream(ns.stream()).await;
    let _ = js.delete_stream(ns.deadletter_stream()).await;
    drop(db);
    result
}

fn start_relay(
    bin: &std::path::Path,
    db: &TestDb,
    nats: &NatsArgs,
    ns: &Namespace,
    batch_size: usize,
) -> anyhow::Result<tokio::process::Child> {
    tokio::process::Command::new(bin)
        .env("OUTBOX_DATABASE_URL", &db.url)
        .env("NATS_URL", &nats.nats_url)
        .env("NATS_PREFIX", ns.prefix())
        .env("RELAY_BIND", "127.0.0.1:0")
        .env("RELAY_BATCH_SIZE", batch_size.to_string())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))
}

fn envelope_sql(payload_index: &str) -> String {
    format!(
        "jsonb_build_object('id', gen_random_uuid()::text, 'type', 'payment.completed', \
           'timestamp', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
           'payload', jsonb_build_object('transaction_id', {payload_index}, 'user_id', 42, \
             'type', 'deposit', 'amount_kopeks', 15050, 'amount_rubles', '150.50', \
             'payment_method', 'yookassa', 'external_id', gen_random_uuid()::text, \
             'is_completed', true, 'description', 'Пополнение баланса 💰'))"
    )
}

async fn stream_len(js: &jetstream::Context, ns: &Namespace) -> u64 {
    match js.get_stream(ns.stream()).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

async fn bench(
    nats: &NatsArgs,
    js: &jetstream::Context,
    ns: &Namespace,
    db: &TestDb,
    bin: &std::path::Path,
    args: &Args,
) -> anyhow::Result<()> {
    let mut conn = AsyncPgConnection::establish(&db.url).await?;
    conn.batch_execute(outbox_relay::MIGRATION_SQL).await?;
    ns.ensure_streams(js).await?;

    // ---- throughput -------------------------------------------------------
    let filled = Instant::now();
    conn.batch_execute(&format!(
        "INSERT INTO event_outbox (envelope) SELECT {} FROM generate_series(1, {}) g",
        envelope_sql("g"),
        args.events
    ))
    .await?;
    println!(
        "outbox filled with {} events in {:.1} s",
        args.events,
        filled.elapsed().as_secs_f64()
    );
    let mut relay = start_relay(bin, db, nats, ns, args.batch_size)?;
    let pid = relay.id();
    let cpu_before = pid.and_then(|p| cpu_seconds(Some(p)));
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<Instant> = None;
    let mut last_n = 0;
    while Instant::now() < deadline {
        let n = stream_len(js, ns).await;
        if n > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        last_n = n;
        if n >= args.events {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done = Instant::now();
    let cpu_after = pid.and_then(|p| cpu_seconds(Some(p)));
    anyhow::ensure!(
        last_n == args.events,
        "only {last_n} of {} events reached the stream",
        args.events
    );
    let secs = done
        .duration_since(first.unwrap_or(done))
        .as_secs_f64()
        .max(1e-6);
    println!(
        "throughput  {} events outbox -> JetStream in {:.2} s: {:.0} events/s (batch {})",
        args.events,
        secs,
        args.events as f64 / secs,
        args.batch_size
    );
    if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
        println!(
            "relay cpu   {:.2} s, {:.1} µs per event",
            b - a,
            (b - a) * 1e6 / args.events as f64
        );
    }

    // ---- latency at a steady rate ------------------------------------------
    let stream = js.get_stream(ns.stream()).await?;
    let sent: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<u64>>> = Arc::default();
    // How long the bot's own COMMIT took (its WAL flush is part of every
    // latency above; the rest is NOTIFY, the relay and JetStream).
    let commits: Arc<Mutex<Vec<u64>>> = Arc::default();
    let total = args.rate * args.duration.as_secs().max(1);
    let mut messages = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: format!("_bench.outbox.{}", uuid::Uuid::new_v4().simple()),
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await?
        .messages()
        .await?;
    let receiver = {
        let (sent, latencies) = (sent.clone(), latencies.clone());
        tokio::spawn(async move {
            let mut got = 0;
            while got < total {
                let Ok(Some(Ok(m))) =
                    tokio::time::timeout(Duration::from_secs(10), messages.next()).await
                else {
                    break;
                };
                let at = Instant::now();
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m.payload) else {
                    continue;
                };
                let Some(i) = v["payload"]["transaction_id"].as_i64() else {
                    continue;
                };
                if let Some(t0) = sent.lock().remove(&i) {
                    latencies
                        .lock()
                        .push(at.duration_since(t0).as_micros() as u64);
                    got += 1;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let every = Duration::from_secs_f64(1.0 / args.rate as f64);
    let insert = format!(
        "INSERT INTO event_outbox (envelope) VALUES ({})",
        envelope_sql("$1::int8")
    );
    // A few connections so a slow commit does not hold up the schedule.
    let producers = 4u64;
    let mut tasks = Vec::new();
    let start = tokio::time::Instant::now();
    for p in 0..producers {
        let (url, sent, insert, commits) = (
            db.url.clone(),
            sent.clone(),
            insert.clone(),
            commits.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut conn = AsyncPgConnection::establish(&url).await?;
            let mut i = p;
            while i < total {
                tokio::time::sleep_until(start + every * i as u32).await;
                let id = 1_000_000_000 + i as i64;
                conn.batch_execute("BEGIN").await?;
                diesel::sql_query(&insert)
                    .bind::<diesel::sql_types::BigInt, _>(id)
                    .execute(&mut conn)
                    .await?;
                let t0 = Instant::now();
                sent.lock().insert(id, t0);
                conn.batch_execute("COMMIT").await?;
                commits.lock().push(t0.elapsed().as_micros() as u64);
                i += producers;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let _ = receiver.await;
    let _ = relay.start_kill();
    let _ = relay.wait().await;
    let lat = std::mem::take(&mut *latencies.lock());
    anyhow::ensure!(
        lat.len() as u64 == total,
        "only {} of {total} events arrived",
        lat.len()
    );
    let lat = Latencies::of_micros(lat)?;
    println!(
        "latency     commit -> stored in stream at {}/s for {:?} ({} events): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        args.rate,
        args.duration,
        total,
        lat.percentile_ms(50.0),
        lat.percentile_ms(99.0),
        lat.max_ms()
    );
    let commits = Latencies::of_micros(std::mem::take(&mut *commits.lock()))?;
    println!(
        "  of which the bot's COMMIT itself: p50 {:.2} ms, p99 {:.2} ms",
        commits.percentile_ms(50.0),
        commits.percentile_ms(99.0)
    );
    Ok(())
}
