//! `bench delivery`: webhook delivery throughput and latency.
//!
//! Starts a fast local HTTP/1.1 receiver (`test_support::Receiver`, lean:
//! nothing recorded) that checks every signature (the
//! seed's `X-Webhook-Signature` over the raw body and the Standard Webhooks
//! `webhook-signature`), registers webhooks pointing at it, publishes N
//! events at a chosen rate (or as fast as JetStream acknowledges), and
//! reports deliveries/s (received and recorded), publish→receive latency
//! percentiles and errors.
//!
//! Where the worker runs (`--worker`): `spawn` (default): the
//! `delivery-worker` binary as a child process (as in production, with its
//! own allocator and CPU accounting), or `in-process` inside this process,
//! both on a fresh temporary database and a unique NATS namespace that are
//! removed at the end; or `external`: a running worker with the same
//! `NATS_PREFIX` and `DATABASE_URL` (webhooks are inserted into that
//! database, announced with a change notice, and deleted at the end).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use parking_lot::Mutex;
use proto_events::nats::{FirstConnect, NatsArgs};
use proto_events::{ChangeOp, Envelope, EventType, Namespace, Publisher, WebhookChange};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::PostgresArgs;
use crate::stats::Latencies;

/// Where the delivery worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkerMode {
    /// In this process, on a temporary database and a unique namespace.
    InProcess,
    /// The `delivery-worker` binary (`--worker-bin`, default: next to this
    /// executable) as a child process, on a temporary database and a unique
    /// namespace: the worker gets its own process, as in production.
    Spawn,
    /// A running worker (same DATABASE_URL and NATS_PREFIX).
    External,
}

/// Webhook delivery benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events to publish.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Events per second; 0 publishes as fast as JetStream acknowledges.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Webhooks registered (each receives every event).
    #[arg(long, default_value_t = 1)]
    pub webhooks: u32,
    #[command(flatten)]
    pub postgres: PostgresArgs,
    /// Where the worker runs.
    #[arg(long, value_enum, default_value_t = WorkerMode::Spawn)]
    pub worker: WorkerMode,
    /// The worker binary for `--worker spawn`.
    #[arg(long)]
    pub worker_bin: Option<std::path::PathBuf>,
    /// In-process worker: DELIVERY_MAX_IN_FLIGHT.
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,
    /// In-process worker: DELIVERY_MAX_PER_WEBHOOK.
    #[arg(long, default_value_t = 64)]
    pub max_per_webhook: usize,
    /// In-process worker: DELIVERY_MAX_MESSAGES.
    #[arg(long, default_value_t = 4096)]
    pub max_messages: usize,
    /// Give up when nothing progresses for this many seconds.
    #[arg(long, default_value_t = 60)]
    pub idle_timeout: u64,
    /// Published events awaiting their JetStream ack at most.
    #[arg(long, default_value_t = 1024)]
    pub publish_window: usize,
    /// A payload filter (JSON) on every webhook, e.g. one every event
    /// passes, to measure what evaluating it costs: `{"and": [{"path":
    /// "status", "eq": "open"}, {"path": "user_id", "gte": 1}, {"not":
    /// {"path": "has_media", "eq": true}}]}`.
    #[arg(long)]
    pub filter: Option<String>,
    /// Custom headers on every webhook (every other one secret, sealed).
    #[arg(long, default_value_t = 0)]
    pub headers: usize,
    /// Receiver auth on every webhook (its credential sealed).
    #[arg(long, value_enum, default_value_t = BenchAuth::None)]
    pub auth: BenchAuth,
    /// Three more webhooks that take every event and build backlogs while
    /// the measured ones run: one limited to 2 requests/s, one ordered
    /// whose receiver fails (its first event holds the rest), one whose
    /// receiver fails until its circuit opens. Only the measured webhooks
    /// are counted.
    #[arg(long, default_value_t = false)]
    pub policy_backlogs: bool,
    /// Days of delivery history before the run: a partition for each of
    /// the last N days, each with `--history-rows` rows (of a disabled
    /// webhook, not counted), analysed, as a deployment that keeps its
    /// history has them. 0: a fresh database (today's partition and the
    /// two days ahead only).
    #[arg(long, default_value_t = 0)]
    pub history_days: u32,
    /// Rows in each day of `--history-days`.
    #[arg(long, default_value_t = 20_000)]
    pub history_rows: u32,
    /// Publish every event first and start the worker only then: it drains
    /// a stored backlog, and the rate and the CPU per delivery count the
    /// drain alone (from the worker's start to the last row), not the
    /// publishing. Publish→receive latency is then the time an event
    /// waited in the backlog and is not reported. Not with `--worker
    /// external`.
    #[arg(long, default_value_t = false)]
    pub backlog: bool,
}

/// The receiver auth of the benchmark's webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchAuth {
    None,
    Basic,
    Bearer,
}

/// The subscription columns of the benchmark's webhooks, sealed with the
/// tests' key (which the worker it starts is given).
struct Subscription {
    filter: Option<Value>,
    headers: Option<Value>,
    auth: Option<Value>,
}

impl Subscription {
    fn of(args: &Args) -> anyhow::Result<Self> {
        use storage::subscription::{StoredAuth, StoredHeader, purpose};
        let keys = storage::SecretsArgs::for_tests().keyring()?;
        let filter = match &args.filter {
            Some(text) => {
                let v: Value = serde_json::from_str(text).context("--filter is not JSON")?;
                proto_events::filter::Filter::parse(&v)
                    .map_err(|e| anyhow::anyhow!("--filter: {e}"))?;
                Some(v)
            }
            None => None,
        };
        let mut headers = Vec::with_capacity(args.headers);
        for i in 0..args.headers {
            let value = format!("bench-header-value-{i}");
            headers.push(if i % 2 == 1 {
                StoredHeader {
                    name: format!("X-Bench-Secret-{i}"),
                    value: None,
                    sealed: Some(keys.seal(purpose::HEADER, &value)?),
                }
            } else {
                StoredHeader {
                    name: format!("X-Bench-{i}"),
                    value: Some(value),
                    sealed: None,
                }
            });
        }
        let auth = match args.auth {
            BenchAuth::None => None,
            BenchAuth::Basic => Some(StoredAuth::Basic {
                username: "bench".into(),
                password: "bench-password".into(),
            }),
            BenchAuth::Bearer => Some(StoredAuth::Bearer {
                token: "bench-token".into(),
            }),
        }
        .map(|a| a.sealed(&keys))
        .transpose()?;
        Ok(Self {
            filter,
            headers: storage::subscription::headers_column(&headers),
            auth: storage::subscription::auth_column(auth.as_ref()),
        })
    }
}

/// What the receiver saw.
#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) latencies_us: Vec<u64>,
    /// Deliveries of events marked `bench_backlog` (replayed history,
    /// whose publish→receive time says nothing about live latency).
    pub(crate) backlog: u64,
    ids: HashSet<String>,
    pub(crate) duplicates: u64,
    pub(crate) bad_signatures: u64,
    unreadable: u64,
    last_receive: Option<Instant>,
}

pub(crate) struct Receiver {
    secret: String,
    pub(crate) seen: Mutex<Seen>,
    pub(crate) received: AtomicU64,
}

pub(crate) fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Receiver {
    fn check(&self, req: &test_support::Request<'_>) {
        let now = unix_micros();
        let get = |name: &str| req.header(name);
        let body = req.body();
        let x_sig_ok = get("x-webhook-signature")
            .is_some_and(|s| webhook_client::verify_x_webhook_signature(&self.secret, body, s));
        let msg_id = get("webhook-id").unwrap_or_default();
        let std_ok = match (
            get("webhook-timestamp").and_then(|t| t.parse::<i64>().ok()),
            get("webhook-signature"),
        ) {
            (Some(ts), Some(sig)) => {
                webhook_client::verify_standard_signature(&self.secret, msg_id, ts, body, sig)
            }
            _ => false,
        };
        let parsed = serde_json::from_slice::<Value>(body).ok();
        let backlog = parsed
            .as_ref()
            .is_some_and(|v| v.get("bench_backlog").is_some());
        let sent = parsed
            .as_ref()
            .and_then(|v| v.get("bench_sent_us").and_then(Value::as_u64));
        let mut seen = self.seen.lock();
        if backlog {
            seen.backlog += 1;
        }
        seen.last_receive = Some(Instant::now());
        if !(x_sig_ok && std_ok) {
            seen.bad_signatures += 1;
        }
        match sent {
            Some(_) if backlog => {}
            Some(t) => seen.latencies_us.push(now.saturating_sub(t)),
            None => seen.unreadable += 1,
        }
        if !seen.ids.insert(msg_id.to_owned()) {
            seen.duplicates += 1;
        }
        drop(seen);
        self.received.fetch_add(1, Ordering::Relaxed);
    }
}

/// The receiver on a free loopback port until `stop` is cancelled.
pub(crate) async fn start_receiver(
    secret: String,
    stop: CancellationToken,
) -> anyhow::Result<(SocketAddr, Arc<Receiver>)> {
    let rx = Arc::new(Receiver {
        secret,
        seen: Mutex::new(Seen::default()),
        received: AtomicU64::new(0),
    });
    let state = rx.clone();
    let server = test_support::Receiver::start_lean("127.0.0.1:0", move |req| {
        state.check(req);
        test_support::Reply::ok()
    })
    .await?;
    let addr = server.addr;
    tokio::spawn(async move {
        stop.cancelled().await;
        drop(server);
    });
    Ok((addr, rx))
}

/// `--history-days`: past partitions with rows of a disabled webhook, then
/// ANALYZE, so the success check meets the partitions a deployment keeps.
async fn insert_history(
    pool: &storage::DbPool,
    run_id: &str,
    days: u32,
    rows: u32,
) -> anyhow::Result<()> {
    use diesel::sql_types::{Int4, Text};
    use diesel_async::RunQueryDsl;
    let started = Instant::now();
    let mut conn = pool.get().await?;
    let today = chrono::Utc::now().date_naive();
    storage::history::ensure_partitions(
        &mut conn,
        // A row's time is up to a day before its day's (below).
        today - chrono::Duration::days(i64::from(days) + 1),
        today - chrono::Duration::days(1),
    )
    .await?;
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = Int4)]
        id: i32,
    }
    let webhook = diesel::sql_query(
        "INSERT INTO webhooks (name, url, event_type, secret, is_active, description) \
         VALUES ('bench-' || $1 || '-history', 'http://127.0.0.1:9/', '*', 'history', false, \
           'bench delivery history (deleted with the database)') RETURNING id",
    )
    .bind::<Text, _>(run_id)
    .get_result::<Id>(&mut conn)
    .await?
    .id;
    // A day a statement: each stays within the pool's statement timeout.
    for day in 1..=i32::try_from(days)? {
        diesel::sql_query(
            "INSERT INTO webhook_deliveries (webhook_id, event_type, payload, status, \
               response_status, attempt_number, delivered_at, event_id, created_at) \
             SELECT $1, 'ticket.message_added', '{\"ticket_id\": 1}', 'success', 200, 1, t, \
               'history-' || $2 || '-' || n, t \
             FROM generate_series(1, $3) n, \
               LATERAL (SELECT now() - make_interval(days => $2, secs => n % 86000) AS t) at",
        )
        .bind::<Int4, _>(webhook)
        .bind::<Int4, _>(day)
        .bind::<Int4, _>(i32::try_from(rows)?)
        .execute(&mut conn)
        .await?;
    }
    diesel::sql_query("ANALYZE webhook_deliveries")
        .execute(&mut conn)
        .await?;
    println!(
        "history    {days} past days × {rows} rows written and analysed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The `--policy-backlogs` webhooks: rate-limited (to a receiver that
/// answers), ordered and circuit-breaking (to one that fails).
async fn insert_policy_backlogs(
    pool: &storage::DbPool,
    run_id: &str,
    secret: &str,
    addr: SocketAddr,
) -> anyhow::Result<Vec<i32>> {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use storage::schema::webhooks::dsl as w;
    let mut conn = pool.get().await?;
    let mut ids = Vec::new();
    for (name, path, rate, ordered) in [
        ("limited", "/ok/limited", Some(2.0), false),
        ("ordered", "/fail/ordered", None, true),
        ("circuit", "/fail/circuit", None, false),
    ] {
        let id: i32 = diesel::insert_into(w::webhooks)
            .values((
                w::name.eq(format!("bench-{run_id}-{name}")),
                w::url.eq(format!("http://{addr}{path}")),
                w::event_type.eq("*"),
                w::secret.eq(secret),
                w::is_active.eq(true),
                w::description.eq("bench delivery backlog (deleted at the end)"),
                w::rate_limit_per_s.eq(rate),
                w::ordered.eq(ordered),
                w::ordered_since.eq(ordered.then(chrono::Utc::now)),
            ))
            .returning(w::id)
            .get_result(&mut conn)
            .await?;
        ids.push(id);
    }
    Ok(ids)
}

async fn count_rows(pool: &storage::DbPool, ids: &[i32]) -> anyhow::Result<(i64, i64)> {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use storage::models::DeliveryStatus;
    use storage::schema::webhook_deliveries::dsl as d;
    let mut conn = pool.get().await?;
    let mut counts = [0; 2];
    let statuses = [DeliveryStatus::Success, DeliveryStatus::Failed];
    for (n, status) in counts.iter_mut().zip(statuses) {
        *n = d::webhook_deliveries
            .filter(d::webhook_id.eq_any(ids))
            .filter(d::status.eq(status))
            .count()
            .get_result(&mut conn)
            .await?;
    }
    let [ok, failed] = counts;
    Ok((ok, failed))
}

/// The settings of a worker run in this process: on the database `db_url`
/// and the namespace `ns`, on a free port, allowed to deliver to this
/// machine's receiver; everything else at its default.
pub(crate) fn in_process_config(
    nats: &NatsArgs,
    ns: &Namespace,
    db_url: &str,
) -> anyhow::Result<delivery_worker::Config> {
    let mut cfg = delivery_worker::Config::defaults();
    cfg.database.database_url = db_url.into();
    cfg.nats = NatsArgs {
        nats_prefix: ns.prefix().to_owned(),
        ..nats.clone()
    };
    cfg.bind = "127.0.0.1:0".parse()?;
    cfg.allow_private_targets = true;
    // The benchmark's webhooks are written in clear, which opens without a
    // key; the worker still needs a keyring to start.
    if cfg.secrets.secrets_key_file.is_none() {
        cfg.secrets = storage::SecretsArgs::for_tests();
    }
    Ok(cfg)
}

/// Runs the benchmark and prints the report.
pub async fn run(nats: &NatsArgs, ns: Namespace, args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.events > 0 && args.webhooks > 0,
        "--events and --webhooks must be positive"
    );
    anyhow::ensure!(
        !(args.backlog && args.worker == WorkerMode::External),
        "--backlog starts the worker after publishing: not with --worker external"
    );
    // A temporary database, dropped at the end; or the external worker's.
    let (temporary, ns) = match args.worker {
        WorkerMode::InProcess | WorkerMode::Spawn => {
            let ns = if ns.prefix().is_empty() {
                Namespace::unique()
            } else {
                ns
            };
            (Some(args.postgres.temporary_db().await?), ns)
        }
        WorkerMode::External => (None, ns),
    };
    let db_url = temporary
        .as_ref()
        .map_or(args.postgres.database_url.as_str(), |db| db.url.as_str());
    let result = bench(nats, &ns, db_url, &args).await;
    if args.worker != WorkerMode::External {
        let client = nats.connect("bench", FirstConnect::FailFast).await;
        if let Ok(client) = client {
            let js = async_nats::jetstream::new(client);
            let _ = js.delete_stream(ns.stream()).await;
            let _ = js.delete_stream(ns.deadletter_stream()).await;
        }
    }
    drop(temporary);
    result
}

async fn bench(nats: &NatsArgs, ns: &Namespace, db_url: &str, args: &Args) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let secret = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let (addr, rx) = start_receiver(secret.clone(), stop.clone()).await?;
    let pool = storage::build_pool(db_url, &storage::PoolConfig::default())?;
    let client = nats.connect("bench", FirstConnect::FailFast).await?;
    let publisher = Publisher::new(client.clone(), ns.clone());
    publisher.ensure_stream().await?;

    // Register the webhooks.
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let mut ids = Vec::new();
    let mut ids_policy: Vec<i32> = Vec::new();
    {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use storage::schema::webhooks::dsl as w;
        let mut conn = pool.get().await?;
        let sub = Subscription::of(args)?;
        for i in 0..args.webhooks {
            let id: i32 = diesel::insert_into(w::webhooks)
                .values((
                    w::name.eq(format!("bench-{run_id}-{i}")),
                    w::url.eq(format!("http://{addr}/hook/{i}")),
                    w::event_type.eq("*"),
                    w::secret.eq(&secret),
                    w::is_active.eq(true),
                    w::description.eq("bench delivery (deleted at the end)"),
                    w::payload_filter.eq(&sub.filter),
                    w::headers.eq(&sub.headers),
                    w::auth.eq(&sub.auth),
                ))
                .returning(w::id)
                .get_result(&mut conn)
                .await?;
            ids.push(id);
        }
    }
    if args.history_days > 0 {
        insert_history(&pool, &run_id, args.history_days, args.history_rows).await?;
    }
    if args.policy_backlogs {
        let failing = test_support::Receiver::start_lean("127.0.0.1:0", |req| {
            if req.path().starts_with("/ok") {
                test_support::Reply::ok()
            } else {
                test_support::Reply::status(500)
            }
        })
        .await?;
        let failing_addr = failing.addr;
        let stop = stop.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            drop(failing);
        });
        ids_policy = insert_policy_backlogs(&pool, &run_id, &secret, failing_addr).await?;
    }
    let expected = args.events * u64::from(args.webhooks);
    println!(
        "bench delivery: {} events × {} webhook(s) = {expected} deliveries, rate {}, worker {:?}",
        args.events,
        args.webhooks,
        if args.rate > 0.0 {
            format!("{}/s", args.rate)
        } else {
            "max".to_owned()
        },
        args.worker
    );

    // Publish, with the worker running (or before it starts: `--backlog`).
    // The window (`started`, `cpu_start`) opens before the worker starts or
    // before the first publish.
    let (worker, started, cpu_start, (published_in, publish_errors)) = if args.backlog {
        let published = publish(args, &publisher).await;
        let (cpu, started) = (Cpu::now(true), Instant::now());
        let worker = start_worker(nats, ns, db_url, args, &client, &ids, &stop).await?;
        (worker, started, cpu, published)
    } else {
        let worker = start_worker(nats, ns, db_url, args, &client, &ids, &stop).await?;
        let (cpu, started) = (Cpu::now(false), Instant::now());
        (worker, started, cpu, publish(args, &publisher).await)
    };
    let worker_start = if cpu_start.worker_fresh {
        Some(0.0)
    } else {
        worker.cpu()
    };

    // Wait for every delivery, then for every row.
    let idle = Duration::from_secs(args.idle_timeout);
    let mut last = (0u64, Instant::now());
    loop {
        let n = rx.received.load(Ordering::Relaxed);
        if n >= expected {
            break;
        }
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > idle {
            println!(
                "receiver idle for {}s at {n}/{expected}; giving up",
                args.idle_timeout
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut last = (0i64, Instant::now());
    let (recorded, failed_rows, recorded_at) = loop {
        let (ok, failed) = count_rows(&pool, &ids).await?;
        if ok + failed >= i64::try_from(expected).unwrap_or(i64::MAX) {
            break (ok, failed, started.elapsed());
        }
        if ok + failed != last.0 {
            last = (ok + failed, Instant::now());
        } else if last.1.elapsed() > idle {
            println!(
                "rows idle for {}s at {ok}/{expected}; giving up",
                args.idle_timeout
            );
            break (ok, failed, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let seen = std::mem::take(&mut *rx.seen.lock());
    let received = rx.received.load(Ordering::Relaxed);
    let received_in = seen
        .last_receive
        .map(|t| t.duration_since(started))
        .unwrap_or_default();
    let latency = Latencies::of_micros(seen.latencies_us.iter().copied())?;
    let secs = |d: Duration| d.as_secs_f64().max(1e-9);
    println!(
        "published  {} events in {:.2}s ({:.0}/s), {publish_errors} publish errors",
        args.events,
        published_in.as_secs_f64(),
        args.events as f64 / secs(published_in)
    );
    let from = if args.backlog {
        "worker start"
    } else {
        "first publish"
    };
    println!(
        "received   {received} deliveries in {:.2}s: {:.0} deliveries/s ({from} → last receive)",
        received_in.as_secs_f64(),
        received as f64 / secs(received_in)
    );
    println!(
        "recorded   {recorded} success rows, {failed_rows} failed rows in {:.2}s: {:.0} recorded deliveries/s",
        recorded_at.as_secs_f64(),
        recorded as f64 / secs(recorded_at)
    );
    if args.backlog {
        println!("latency    n/a: every event waited in the backlog (--backlog)");
    } else {
        println!(
            "latency    publish→receive p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            latency.percentile_ms(50.0),
            latency.percentile_ms(99.0),
            latency.max_ms()
        );
    }
    let cpu_end = Cpu::now(false);
    let worker_end = worker.cpu();
    let per_delivery = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if received > 0 => {
            format!(
                "{:.1}s ({:.0} µs/delivery)",
                b - a,
                (b - a) * 1e6 / received as f64
            )
        }
        _ => "n/a".to_owned(),
    };
    println!(
        "cpu        this process (publisher + receivers{}) {}, worker process {}",
        if args.worker == WorkerMode::InProcess {
            " + worker"
        } else {
            ""
        },
        per_delivery(cpu_start.this, cpu_end.this),
        per_delivery(worker_start, worker_end)
    );
    println!(
        "cpu        PostgreSQL (every postgres process) {}, NATS (every nats-server) {}",
        per_delivery(Some(cpu_start.postgres), Some(cpu_end.postgres)),
        per_delivery(Some(cpu_start.nats), Some(cpu_end.nats))
    );
    let missing = expected.saturating_sub(seen.ids.len() as u64);
    println!(
        "errors     {} bad signatures, {} duplicates, {} unreadable bodies, {missing} missing, {failed_rows} failed attempts",
        seen.bad_signatures, seen.duplicates, seen.unreadable
    );

    // Clean up.
    stop.cancel();
    worker.stop().await;
    if args.worker == WorkerMode::External {
        let mut conn = pool.get().await?;
        for &id in ids.iter().chain(&ids_policy) {
            storage::webhooks::delete_webhook(&mut conn, id).await?;
        }
        drop(conn);
    }
    if args.worker == WorkerMode::External {
        let _ = client
            .publish(
                ns.webhooks_changed_subject(),
                WebhookChange::new(ids.first().copied().unwrap_or_default(), ChangeOp::Deleted)
                    .to_payload(),
            )
            .await;
        let _ = client.flush().await;
    }
    anyhow::ensure!(
        seen.bad_signatures == 0 && missing == 0 && failed_rows == 0,
        "the benchmark saw errors"
    );
    Ok(())
}

/// Starts the worker under test (`--worker`) and waits until it is ready.
async fn start_worker(
    nats: &NatsArgs,
    ns: &Namespace,
    db_url: &str,
    args: &Args,
    client: &async_nats::Client,
    ids: &[i32],
    stop: &CancellationToken,
) -> anyhow::Result<Worker> {
    Ok(match args.worker {
        WorkerMode::InProcess => {
            let mut cfg = in_process_config(nats, ns, db_url)?;
            cfg.max_in_flight = args.max_in_flight;
            cfg.max_per_webhook = args.max_per_webhook;
            cfg.max_messages = args.max_messages;
            let app = delivery_worker::Application::build(cfg).await?;
            let worker_addr = app.local_addr();
            let handle = tokio::spawn(app.run_until_stopped(stop.clone()));
            wait_ready(worker_addr).await?;
            Worker::InProcess(handle)
        }
        WorkerMode::Spawn => {
            let bin = crate::service_binary(
                args.worker_bin.as_deref(),
                "delivery-worker",
                "--worker-bin",
            )?;
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let worker_addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let child = tokio::process::Command::new(&bin)
                // The benchmark writes its webhooks in clear; the worker
                // still needs a key file to start.
                .env("SECRETS_KEY_FILE", storage::testing::key_file())
                .env("DATABASE_URL", db_url)
                .env("NATS_URL", &nats.nats_url)
                .env("NATS_PREFIX", ns.prefix())
                .env("WORKER_BIND", worker_addr.to_string())
                .env("DELIVERY_ALLOW_PRIVATE_TARGETS", "true")
                .env("DELIVERY_MAX_IN_FLIGHT", args.max_in_flight.to_string())
                .env("DELIVERY_MAX_PER_WEBHOOK", args.max_per_webhook.to_string())
                .env("DELIVERY_MAX_MESSAGES", args.max_messages.to_string())
                .env("RUST_LOG", "warn")
                .kill_on_drop(true)
                .spawn()
                .with_context(|| {
                    format!(
                        "cannot start {} (build it with `cargo build --release -p delivery-worker`, \
                         or pass --worker-bin or --worker in-process)",
                        bin.display()
                    )
                })?;
            wait_ready(worker_addr).await?;
            Worker::Child(child)
        }
        WorkerMode::External => {
            client
                .publish(
                    ns.webhooks_changed_subject(),
                    WebhookChange::new(ids.first().copied().unwrap_or_default(), ChangeOp::Created)
                        .to_payload(),
                )
                .await?;
            client.flush().await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            Worker::External
        }
    })
}

/// Publishes `--events` events at `--rate` (or as fast as JetStream
/// acknowledges) and waits for every ack: how long it took, and the
/// publishes that failed.
async fn publish(args: &Args, publisher: &Publisher) -> (Duration, u64) {
    let started = Instant::now();
    let mut acks = FuturesUnordered::new();
    let mut publish_errors = 0u64;
    for i in 0..args.events {
        if args.rate > 0.0 {
            let due = started + Duration::from_secs_f64(i as f64 / args.rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let payload = json!({
            "ticket_id": i, "message_id": i, "user_id": 42, "is_from_admin": false,
            "message_text": "Здравствуйте! Не работает VPN 😢", "has_media": false,
            "status": "open", "bench_sent_us": unix_micros(),
        });
        let Value::Object(map) = payload else {
            continue;
        };
        let env = Envelope::new(EventType::TicketMessageAdded, map);
        match publisher.send(&env, async_nats::HeaderMap::new()).await {
            Ok(ack) => acks.push(ack.into_future()),
            Err(_) => publish_errors += 1,
        }
        while acks.len() >= args.publish_window.max(1) {
            if let Some(Err(_)) = acks.next().await {
                publish_errors += 1;
            }
        }
    }
    while let Some(r) = acks.next().await {
        if r.is_err() {
            publish_errors += 1;
        }
    }
    (started.elapsed(), publish_errors)
}

/// CPU seconds so far: this process, every `postgres` and every
/// `nats-server` process.
struct Cpu {
    this: Option<f64>,
    postgres: f64,
    nats: f64,
    /// Read before the worker process started (`--backlog`): all of its
    /// CPU falls in the window.
    worker_fresh: bool,
}

impl Cpu {
    fn now(worker_fresh: bool) -> Self {
        Self {
            this: cpu_seconds(None),
            postgres: cpu_of_named("postgres"),
            nats: cpu_of_named("nats-server"),
            worker_fresh,
        }
    }
}

/// CPU seconds (user + system) used so far by a process (`None`: this one),
/// from `/proc` (Linux; `None` elsewhere). Assumes the usual 100 ticks/s.
pub(crate) fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    stat_ticks(pid, false)
}

/// `/proc/<pid>/stat`'s user + system ticks in seconds, with those of its
/// exited and reaped children when `children`.
fn stat_ticks(pid: Option<u32>, children: bool) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let last = if children { 14 } else { 12 };
    let mut ticks = 0u64;
    for i in 11..=last {
        ticks += fields.get(i)?.parse::<u64>().ok()?;
    }
    Some(ticks as f64 / 100.0)
}

/// CPU seconds so far of every process named `comm`, with their exited
/// children's (PostgreSQL's backends come and go: one that ended counts in
/// the postmaster that reaped it).
pub(crate) fn cpu_of_named(comm: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .filter_map(|pid| stat_ticks(Some(pid), true))
        .sum()
}

/// The worker under test.
enum Worker {
    InProcess(tokio::task::JoinHandle<anyhow::Result<()>>),
    Child(tokio::process::Child),
    External,
}

impl Worker {
    /// CPU seconds used by the worker process, when it is a child.
    fn cpu(&self) -> Option<f64> {
        match self {
            Worker::Child(c) => cpu_seconds(c.id()),
            _ => None,
        }
    }

    /// Stops it gracefully (SIGTERM for a child).
    async fn stop(self) {
        match self {
            Worker::InProcess(handle) => {
                let _ = tokio::time::timeout(Duration::from_secs(30), handle).await;
            }
            Worker::Child(child) => stop_child(child, Duration::from_secs(30)).await,
            Worker::External => {}
        }
    }
}

/// Stops a service started as a child: SIGTERM, then SIGKILL when it has
/// not exited within `grace`.
pub(crate) async fn stop_child(mut child: tokio::process::Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = test_support::terminate(pid);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// Waits until the worker's `/readyz` answers 200.
pub(crate) async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready(addr).await {
        anyhow::ensure!(Instant::now() < deadline, "the worker did not get ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// `GET /readyz` answers 200.
async fn ready(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return false;
    };
    let req = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    out.starts_with(b"HTTP/1.1 200")
}
