//! `bench replay`: live delivery latency while a replay job runs.
//!
//! On a temporary database and a unique NATS namespace, with an in-process
//! delivery worker and the signature-checking receiver of `bench delivery`:
//!
//! 1. publishes `--backlog` events before any webhook exists (history);
//! 2. registers one webhook for every type;
//! 3. baseline: publishes live events at `--live-rate` for `--seconds` and
//!    measures publish→receive;
//! 4. starts a replay job of the backlog (`since_seq: 0`, `until`: the end
//!    of the backlog) at `--replay-rate` and publishes live events to the
//!    same webhook for `--seconds` again, measuring the live ones only;
//! 5. cancels the job if it is still running and reports both phases.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use proto_events::nats::{FirstConnect, NatsArgs};
use proto_events::{ChangeOp, Envelope, EventType, Namespace, Publisher, WebhookChange};
use serde_json::{Value, json};
use storage::testing::TestDb;
use tokio_util::sync::CancellationToken;

use crate::PostgresArgs;
use crate::delivery::{in_process_config, start_receiver, unix_micros, wait_ready};
use crate::stats::Latencies;

/// Replay-under-load benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Stored events the replay sends.
    #[arg(long, default_value_t = 50_000)]
    pub backlog: u64,
    /// Replay job rate (`rate_per_s`).
    #[arg(long, default_value_t = 2000)]
    pub replay_rate: i32,
    /// Live events per second in both phases.
    #[arg(long, default_value_t = 200.0)]
    pub live_rate: f64,
    /// Length of each phase.
    #[arg(long, default_value_t = 15)]
    pub seconds: u64,
    /// DELIVERY_JOB_CONCURRENCY of the worker.
    #[arg(long, default_value_t = 1)]
    pub job_concurrency: usize,
    #[command(flatten)]
    pub postgres: PostgresArgs,
}

/// Runs the benchmark and prints the report.
pub async fn run(nats: &NatsArgs, ns: Namespace, args: Args) -> anyhow::Result<()> {
    let ns = if ns.prefix().is_empty() {
        Namespace::unique()
    } else {
        ns
    };
    let db = args.postgres.temporary_db().await?;
    let result = bench(nats, &ns, &db, &args).await;
    if let Ok(client) = nats.connect("bench", FirstConnect::FailFast).await {
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_stream(ns.stream()).await;
        let _ = js.delete_stream(ns.deadletter_stream()).await;
    }
    drop(db);
    result
}

fn payload(i: u64, backlog: bool) -> serde_json::Map<String, Value> {
    let mut v = json!({
        "ticket_id": i, "message_id": i, "user_id": 42, "is_from_admin": false,
        "message_text": "Здравствуйте! Не работает VPN 😢", "has_media": false,
        "status": "open", "bench_sent_us": unix_micros(),
    });
    if backlog {
        v["bench_backlog"] = json!(true);
    }
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// Publishes `n` events (at `rate` per second, or as fast as acked when 0).
async fn publish(publisher: &Publisher, n: u64, rate: f64, backlog: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut acks = FuturesUnordered::new();
    for i in 0..n {
        if rate > 0.0 {
            tokio::time::sleep_until((started + Duration::from_secs_f64(i as f64 / rate)).into())
                .await;
        }
        let env = Envelope::new(EventType::TicketMessageAdded, payload(i, backlog));
        let ack = publisher.send(&env, async_nats::HeaderMap::new()).await?;
        acks.push(ack.into_future());
        while acks.len() >= 512 {
            if let Some(r) = acks.next().await {
                r?;
            }
        }
    }
    while let Some(r) = acks.next().await {
        r?;
    }
    Ok(())
}

struct Phase {
    live: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

fn take_phase(rx: &crate::delivery::Receiver) -> anyhow::Result<Phase> {
    let us = std::mem::take(&mut rx.seen.lock().latencies_us);
    let live = us.len();
    let lat = Latencies::of_micros(us)?;
    Ok(Phase {
        live,
        p50: lat.percentile_ms(50.0),
        p99: lat.percentile_ms(99.0),
        max: lat.max_ms(),
    })
}

async fn bench(nats: &NatsArgs, ns: &Namespace, db: &TestDb, args: &Args) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let secret = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let (addr, rx) = start_receiver(secret.clone(), stop.clone()).await?;
    let pool = storage::build_pool(&db.url, &storage::PoolConfig::default())?;
    let client = nats.connect("bench", FirstConnect::FailFast).await?;
    let publisher = Publisher::new(client.clone(), ns.clone());
    publisher.ensure_stream().await?;
    let js = publisher.jetstream().clone();
    println!(
        "bench replay: backlog {} events, replay {}/s (job concurrency {}), live {}/s, {} s per phase",
        args.backlog, args.replay_rate, args.job_concurrency, args.live_rate, args.seconds
    );

    let t = Instant::now();
    publish(&publisher, args.backlog, 0.0, true).await?;
    let backlog_end = chrono::Utc::now();
    println!("backlog    published in {:.1} s", t.elapsed().as_secs_f64());

    let mut cfg = in_process_config(nats, ns, &db.url)?;
    cfg.job_concurrency = args.job_concurrency;
    cfg.job_poll = Duration::from_millis(200);
    let app = delivery_worker::Application::build(cfg).await?;
    let worker_addr = app.local_addr();
    let worker = tokio::spawn(app.run_until_stopped(stop.clone()));
    wait_ready(worker_addr).await?;
    // The worker acks the backlog (no webhook yet) before the phases start.
    let consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream("delivery-worker", ns.stream())
        .await?;
    loop {
        let info = consumer.get_info().await?;
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let webhook_id: i32 = {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use storage::schema::webhooks::dsl as w;
        let mut conn = pool.get().await?;
        diesel::insert_into(w::webhooks)
            .values((
                w::name.eq("bench-replay"),
                w::url.eq(format!("http://{addr}/hook")),
                w::event_type.eq("*"),
                w::secret.eq(&secret),
                w::is_active.eq(true),
            ))
            .returning(w::id)
            .get_result(&mut conn)
            .await?
    };
    client
        .publish(
            ns.webhooks_changed_subject(),
            WebhookChange::new(webhook_id, ChangeOp::Created).to_payload(),
        )
        .await?;
    client.flush().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let live_n = (args.live_rate * args.seconds as f64) as u64;
    publish(&publisher, live_n, args.live_rate, false).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = take_phase(&rx)?;

    let job = {
        let mut conn = pool.get().await?;
        match storage::jobs::create(
            &mut conn,
            storage::jobs::NewJob {
                webhook_id,
                kind: storage::jobs::JobKind::Replay,
                since: None,
                until: Some(backlog_end),
                since_seq: Some(0),
                delivery_status: None,
                rate_per_s: args.replay_rate,
            },
        )
        .await?
        {
            storage::jobs::Created::New(j) | storage::jobs::Created::Existing(j) => j,
        }
    };
    let backlog_before = rx.seen.lock().backlog;
    let t = Instant::now();
    publish(&publisher, live_n, args.live_rate, false).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let under = take_phase(&rx)?;
    let replayed = rx.seen.lock().backlog - backlog_before;
    let elapsed = t.elapsed().as_secs_f64();
    let state = {
        let mut conn = pool.get().await?;
        let j = storage::jobs::get(&mut conn, webhook_id, job.id)
            .await?
            .context("the job vanished")?;
        if !j.is_finished() {
            storage::jobs::cancel(&mut conn, webhook_id, job.id).await?;
        }
        j
    };
    let (bad, dups) = {
        let s = rx.seen.lock();
        (s.bad_signatures, s.duplicates)
    };
    println!(
        "baseline   live {} deliveries: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        baseline.live, baseline.p50, baseline.p99, baseline.max
    );
    println!(
        "replaying  live {} deliveries: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        under.live, under.p50, under.p99, under.max
    );
    println!(
        "replay     {replayed} backlog deliveries in {elapsed:.1} s ({:.0}/s); job {} at the end: done {} of {:?}",
        replayed as f64 / elapsed.max(1e-9),
        state.status,
        state.done,
        state.total
    );
    println!(
        "errors     {bad} bad signatures, {dups} duplicates, received {}",
        rx.received.load(Ordering::Relaxed)
    );
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), worker).await;
    Ok(())
}
