//! `bench e2e`: from the publisher to the webhook receiver and the
//! WebSocket client, with where the time goes per hop.
//!
//! One run starts everything on two temporary databases (ours, migrated;
//! the bot's, with the outbox migration) and a unique NATS namespace:
//! `outbox-relay`, `delivery-worker` and `gateway` as child processes (the
//! release binaries next to this one), a lean HTTP receiver behind one `*`
//! webhook, one WebSocket client on the gateway's `/ws` and a core NATS
//! subscriber on the stream's subjects (the "on NATS" time of each event).
//! Then, for each publisher and each rate, events are published for
//! `--duration` and every event's times are joined by its `bench_seq`:
//!
//! - `outbox`: the bot's way, by `clients/python/bench/e2e_publisher.py`
//!   (`--python`, the Python client's virtualenv): add a row, COMMIT, then
//!   `emit(..., db=db)`, which commits the outbox row, which the relay
//!   publishes. Hops: the caller's COMMIT; `emit` after it (the outbox
//!   row's own commit); the relay (row committed → on NATS: notification,
//!   read, publish, JetStream ack); the worker (on NATS → the POST
//!   received: fetch, sign, send); the gateway (on NATS → the WebSocket
//!   frame received).
//! - `direct`: a JetStream publish from this process (what `emit` without
//!   `db` does); hops: publish → on NATS, then the worker and the gateway.
//!
//! Every time is wall-clock (`CLOCK_REALTIME`, the clock Python's
//! `time.time_ns()` reads too), taken on this machine. CPU per event is
//! reported per process: worker, gateway, relay, PostgreSQL (every
//! `postgres` process), NATS (every `nats-server`), the Python publisher,
//! and this process (receiver, WebSocket client, NATS subscriber, direct
//! publisher).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use futures::{SinkExt as _, StreamExt as _};
use parking_lot::Mutex;
use proto_events::nats::{FirstConnect, NatsArgs};
use proto_events::{Envelope, EventType, Namespace, Publisher};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::PostgresArgs;
use crate::delivery::{cpu_of_named, cpu_seconds, stop_child, wait_ready};
use crate::stats::Latencies;

/// The pause before a run's first CPU reading and its last.
const SETTLE: Duration = Duration::from_secs(2);

/// Who publishes the events of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PublisherKind {
    /// The bot's way: commit, then `emit(db=)` through the outbox and the
    /// relay (Python).
    Outbox,
    /// A JetStream publish from this process.
    Direct,
}

/// End-to-end latency benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events per second of each run, in order.
    #[arg(long, value_delimiter = ',', default_value = "100,500,2000")]
    pub rates: Vec<u32>,
    /// Publishers; each runs at every rate.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "outbox,direct"
    )]
    pub publishers: Vec<PublisherKind>,
    /// How long each run publishes.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// The Python interpreter of the outbox publisher (with the Python
    /// client's packages: SQLAlchemy, asyncpg, nats-py).
    #[arg(long, env = "BENCH_PYTHON", default_value = "python3")]
    pub python: PathBuf,
    /// Publishing processes of the outbox publisher (one Python process
    /// tops out near 300 bot-like operations/s here; the bot runs several
    /// workers too).
    #[arg(long, default_value_t = 2)]
    pub processes: u32,
    /// Operations at a time in each publishing process.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u32,
    #[command(flatten)]
    pub postgres: PostgresArgs,
    /// The `outbox-relay` binary (default: next to this executable).
    #[arg(long)]
    pub relay_bin: Option<PathBuf>,
    /// The `delivery-worker` binary (default: next to this executable).
    #[arg(long)]
    pub worker_bin: Option<PathBuf>,
    /// The `gateway` binary (default: next to this executable).
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The `"bench_seq"` number in a JSON text, found without parsing it
/// (PostgreSQL's `jsonb` output puts a space after the colon, serde none).
fn bench_seq(text: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"bench_seq\"";
    let at = text.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = text[at..]
        .iter()
        .skip_while(|b| b.is_ascii_whitespace() || **b == b':');
    let mut n: Option<u64> = None;
    for b in rest {
        if !b.is_ascii_digit() {
            break;
        }
        n = Some(n.unwrap_or(0) * 10 + u64::from(b - b'0'));
    }
    n
}

/// When each event (by `bench_seq`) was first seen at one place, and how
/// many times it was seen again.
#[derive(Default)]
struct Arrivals {
    at: Mutex<HashMap<u64, u64>>,
    repeats: std::sync::atomic::AtomicU64,
}

impl Arrivals {
    fn saw(&self, text: &[u8]) {
        let now = now_ns();
        if let Some(seq) = bench_seq(text)
            && self.at.lock().insert(seq, now).is_some()
        {
            self.repeats
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn get(&self, seq: u64) -> Option<u64> {
        self.at.lock().get(&seq).copied()
    }

    fn count_in(&self, seqs: &[u64]) -> usize {
        let at = self.at.lock();
        seqs.iter().filter(|s| at.contains_key(s)).count()
    }
}

/// The times of one published event, before it reached NATS.
struct Sent {
    seq: u64,
    /// Before the caller's COMMIT (outbox) or the publish call (direct).
    start: u64,
    /// The caller's COMMIT returned (outbox only).
    committed: Option<u64>,
    /// `emit` returned: the outbox row committed (outbox only).
    emitted: Option<u64>,
}

/// The processes whose CPU a run reports.
struct Processes {
    worker: u32,
    gateway: u32,
    relay: u32,
}

/// CPU seconds so far per reported process.
fn cpu_now(p: &Processes) -> [f64; 6] {
    [
        cpu_seconds(Some(p.worker)).unwrap_or(0.0),
        cpu_seconds(Some(p.gateway)).unwrap_or(0.0),
        cpu_seconds(Some(p.relay)).unwrap_or(0.0),
        cpu_of_named("postgres"),
        cpu_of_named("nats-server"),
        cpu_seconds(None).unwrap_or(0.0),
    ]
}

const CPU_NAMES: [&str; 6] = [
    "worker",
    "gateway",
    "relay",
    "postgres",
    "nats",
    "bench (rx+ws)",
];

/// A service binary as a child process with `env`, ready on `bind`.
async fn start_service(
    bin: &Path,
    env: &[(&str, String)],
    bind_var: &str,
) -> anyhow::Result<(tokio::process::Child, SocketAddr)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut cmd = tokio::process::Command::new(bin);
    cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env(bind_var, addr.to_string())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    wait_ready(addr)
        .await
        .with_context(|| format!("{} did not get ready", bin.display()))?;
    Ok((child, addr))
}

/// Runs the benchmark and prints the report.
pub async fn run(nats: &NatsArgs, args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.rates.is_empty() && args.rates.iter().all(|r| *r > 0),
        "--rates must be positive"
    );
    let bins = [
        crate::service_binary(args.relay_bin.as_deref(), "outbox-relay", "--relay-bin")?,
        crate::service_binary(
            args.worker_bin.as_deref(),
            "delivery-worker",
            "--worker-bin",
        )?,
        crate::service_binary(args.gateway_bin.as_deref(), "gateway", "--gateway-bin")?,
    ];
    let events_db = args.postgres.temporary_db().await?;
    let bot_db = args.postgres.temporary_db().await?;
    let ns = Namespace::unique();
    let client = nats.connect("bench", FirstConnect::FailFast).await?;
    let js = async_nats::jetstream::new(client.clone());
    let result = bench(
        nats,
        &client,
        &ns,
        &events_db.url,
        &bot_db.url,
        &bins,
        &args,
    )
    .await;
    let _ = js.delete_stream(ns.stream()).await;
    let _ = js.delete_stream(ns.deadletter_stream()).await;
    drop((events_db, bot_db));
    result
}

async fn bench(
    nats: &NatsArgs,
    client: &async_nats::Client,
    ns: &Namespace,
    events_url: &str,
    bot_url: &str,
    [relay_bin, worker_bin, gateway_bin]: &[PathBuf; 3],
    args: &Args,
) -> anyhow::Result<()> {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
    let js = async_nats::jetstream::new(client.clone());
    ns.ensure_streams(&js).await?;
    let mut bot = AsyncPgConnection::establish(bot_url).await?;
    bot.batch_execute(outbox_relay::MIGRATION_SQL).await?;
    drop(bot);

    let stop = CancellationToken::new();
    let received = Arc::new(Arrivals::default());
    let rx = received.clone();
    let receiver = test_support::Receiver::start_lean("127.0.0.1:0", move |req| {
        rx.saw(req.body());
        test_support::Reply::ok()
    })
    .await?;

    // One `*` webhook and a token for the WebSocket client.
    let mut events = AsyncPgConnection::establish(events_url).await?;
    {
        use diesel::{ExpressionMethods as _, insert_into};
        use storage::schema::webhooks::dsl as w;
        insert_into(w::webhooks)
            .values((
                w::name.eq("bench-e2e"),
                w::url.eq(format!("http://{}/hook", receiver.addr)),
                w::event_type.eq("*"),
                w::secret.eq("bench-e2e-secret"),
                w::is_active.eq(true),
                w::description.eq("bench e2e (dropped with its database)"),
            ))
            .execute(&mut events)
            .await?;
    }
    let (_, token) = storage::tokens::create_token(
        &mut events,
        &storage::tokens::TokenHasher::new(None),
        storage::tokens::TokenSpec {
            name: "bench-e2e".into(),
            ..Default::default()
        },
    )
    .await?;
    drop(events);

    let common = [
        ("DATABASE_URL", events_url.to_owned()),
        ("NATS_URL", nats.nats_url.clone()),
        ("NATS_PREFIX", ns.prefix().to_owned()),
        (
            "SECRETS_KEY_FILE",
            storage::testing::key_file().display().to_string(),
        ),
    ];
    let mut worker_env = common.to_vec();
    worker_env.push(("DELIVERY_ALLOW_PRIVATE_TARGETS", "true".into()));
    let (worker, _) = start_service(worker_bin, &worker_env, "WORKER_BIND").await?;
    let (gateway, gateway_addr) = start_service(gateway_bin, &common, "GATEWAY_BIND").await?;
    let relay_env = [
        ("OUTBOX_DATABASE_URL", bot_url.to_owned()),
        ("NATS_URL", nats.nats_url.clone()),
        ("NATS_PREFIX", ns.prefix().to_owned()),
    ];
    let (relay, _) = start_service(relay_bin, &relay_env, "RELAY_BIND").await?;
    let processes = Processes {
        worker: worker.id().context("worker pid")?,
        gateway: gateway.id().context("gateway pid")?,
        relay: relay.id().context("relay pid")?,
    };

    // The WebSocket client and the NATS subscriber.
    let on_ws = Arc::new(Arrivals::default());
    let url = format!("ws://{gateway_addr}/ws?token={token}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .context("WebSocket connect")?;
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.contains("\"connection\"") => {}
        other => anyhow::bail!("no welcome from the gateway: {other:?}"),
    }
    {
        let on_ws = on_ws.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    () = stop.cancelled() => break,
                    next = ws.next() => next,
                };
                match next {
                    Some(Ok(Message::Text(t))) => on_ws.saw(t.as_bytes()),
                    Some(Ok(Message::Ping(p))) => {
                        let _ = ws.send(Message::Pong(p)).await;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
        });
    }
    let on_nats = Arc::new(Arrivals::default());
    let tap_client = nats.connect("bench-tap", FirstConnect::FailFast).await?;
    let mut tap = tap_client.subscribe(ns.events_filter()).await?;
    tap_client.flush().await?;
    {
        let on_nats = on_nats.clone();
        tokio::spawn(async move {
            while let Some(m) = tap.next().await {
                on_nats.saw(&m.payload);
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    println!(
        "bench e2e: rates {:?}/s, {:?} each, publishers {:?}; one `*` webhook, one WebSocket client",
        args.rates, args.duration, args.publishers
    );
    let publisher = Publisher::new(client.clone(), ns.clone());
    let mut next_seq = 1_000_000u64;
    let mut failures = Vec::new();
    for kind in &args.publishers {
        for &rate in &args.rates {
            let first = next_seq;
            next_seq += 10_000_000;
            // PostgreSQL's backends count when the postmaster reaps them:
            // let the previous run's connections end before this run counts.
            tokio::time::sleep(SETTLE).await;
            let cpu_before = cpu_now(&processes);
            let started = Instant::now();
            let (sent, python_cpu) = match kind {
                PublisherKind::Outbox => outbox_run(args, nats, ns, bot_url, rate, first).await?,
                PublisherKind::Direct => (direct_run(&publisher, args, rate, first).await?, None),
            };
            let seqs: Vec<u64> = sent.iter().map(|s| s.seq).collect();
            // Every event at both ends, or 10 s after the last publish.
            let deadline = Instant::now() + Duration::from_secs(10);
            while (received.count_in(&seqs) < seqs.len() || on_ws.count_in(&seqs) < seqs.len())
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // This run's closed connections reaped, so they count here.
            tokio::time::sleep(SETTLE).await;
            let cpu_after = cpu_now(&processes);
            let report = Report::of(*kind, rate, &sent, &on_nats, &received, &on_ws)?;
            report.print();
            print_cpu(
                &cpu_before,
                &cpu_after,
                python_cpu,
                sent.len(),
                started.elapsed(),
            );
            if report.missing_rx + report.missing_ws > 0 {
                failures.push(format!("{kind:?} at {rate}/s"));
            }
        }
    }
    stop.cancel();
    drop(receiver);
    for child in [worker, gateway, relay] {
        stop_child(child, Duration::from_secs(10)).await;
    }
    anyhow::ensure!(
        failures.is_empty(),
        "events missing in: {}",
        failures.join(", ")
    );
    Ok(())
}

/// One outbox run: the Python publisher as a child process; its stamps
/// and its CPU seconds.
async fn outbox_run(
    args: &Args,
    nats: &NatsArgs,
    ns: &Namespace,
    bot_url: &str,
    rate: u32,
    first: u64,
) -> anyhow::Result<(Vec<Sent>, Option<f64>)> {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/python/bench/e2e_publisher.py");
    let out = std::env::temp_dir().join(format!("bench-e2e-{}.txt", uuid::Uuid::new_v4()));
    let status = tokio::process::Command::new(&args.python)
        .arg(&script)
        .args(["--database-url", bot_url])
        .args(["--nats-url", &nats.nats_url])
        .args(["--prefix", ns.prefix()])
        .args(["--rate", &rate.to_string()])
        .args(["--duration", &args.duration.as_secs_f64().to_string()])
        .args(["--first-seq", &first.to_string()])
        .args(["--processes", &args.processes.to_string()])
        .args(["--concurrency", &args.concurrency.to_string()])
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .with_context(|| {
            format!(
                "cannot run {} {} (its packages: deploy/lib.sh ensure_python_client_venv)",
                args.python.display(),
                script.display()
            )
        })?;
    let text = std::fs::read_to_string(&out);
    let _ = std::fs::remove_file(&out);
    anyhow::ensure!(status.success(), "the outbox publisher failed ({status})");
    let mut sent = Vec::new();
    let mut cpu = None;
    for line in text?.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["cpu", secs] => cpu = secs.parse().ok(),
            [seq, t0, t1, t2] => sent.push(Sent {
                seq: seq.parse()?,
                start: t0.parse()?,
                committed: Some(t1.parse()?),
                emitted: Some(t2.parse()?),
            }),
            _ => anyhow::bail!("unreadable publisher line {line:?}"),
        }
    }
    Ok((sent, cpu))
}

/// One direct run: JetStream publishes from this process on a fixed
/// schedule, each awaited in the background.
async fn direct_run(
    publisher: &Publisher,
    args: &Args,
    rate: u32,
    first: u64,
) -> anyhow::Result<Vec<Sent>> {
    let total = (f64::from(rate) * args.duration.as_secs_f64()) as u64;
    let mut sent = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let mut acks = futures::stream::FuturesUnordered::new();
    let started = Instant::now();
    for k in 0..total {
        let due = started + Duration::from_secs_f64(k as f64 / f64::from(rate));
        tokio::time::sleep_until(due.into()).await;
        let seq = first + k;
        let serde_json::Value::Object(payload) = json!({
            "user_id": seq, "telegram_id": 100_000 + seq, "username": null,
            "first_name": "Иван", "last_name": "Петров 👨‍💻",
            "referral_code": format!("ref{seq}"), "referred_by_id": null,
            "bench_seq": seq,
        }) else {
            continue;
        };
        let env = Envelope::new(EventType::UserCreated, payload);
        let start = now_ns();
        let ack = publisher.send(&env, async_nats::HeaderMap::new()).await?;
        acks.push(ack.into_future());
        sent.push(Sent {
            seq,
            start,
            committed: None,
            emitted: None,
        });
        // Collect finished acks without waiting.
        while let Some(Some(r)) = futures::FutureExt::now_or_never(acks.next()) {
            r?;
        }
    }
    while let Some(r) = acks.next().await {
        r?;
    }
    Ok(sent)
}

/// One run's latencies, per hop and end to end.
struct Report {
    kind: PublisherKind,
    rate: u32,
    published: usize,
    /// From the first event's start to the last's.
    span: Duration,
    missing_rx: usize,
    missing_ws: usize,
    repeats_rx: u64,
    hops: Vec<(&'static str, Latencies)>,
}

impl Report {
    fn of(
        kind: PublisherKind,
        rate: u32,
        sent: &[Sent],
        on_nats: &Arrivals,
        rx: &Arrivals,
        ws: &Arrivals,
    ) -> anyhow::Result<Self> {
        let us = |from: u64, to: u64| to.saturating_sub(from) / 1000;
        let hop =
            |f: &dyn Fn(&Sent) -> Option<u64>| Latencies::of_micros(sent.iter().filter_map(f));
        let nats_at = |s: &Sent| on_nats.get(s.seq);
        let mut hops = Vec::new();
        let end_to_end = match kind {
            PublisherKind::Outbox => [
                "END TO END commit → receiver",
                "END TO END commit → WebSocket",
            ],
            PublisherKind::Direct => [
                "END TO END publish → receiver",
                "END TO END publish → WebSocket",
            ],
        };
        if kind == PublisherKind::Outbox {
            hops.push((
                "the caller's COMMIT",
                hop(&|s| Some(us(s.start, s.committed?)))?,
            ));
            hops.push((
                "emit after it (outbox row committed)",
                hop(&|s| Some(us(s.committed?, s.emitted?)))?,
            ));
            hops.push((
                "relay: row committed → on NATS",
                hop(&|s| Some(us(s.emitted?, nats_at(s)?)))?,
            ));
        } else {
            hops.push((
                "publish → on NATS",
                hop(&|s| Some(us(s.start, nats_at(s)?)))?,
            ));
        }
        hops.push((
            "worker: on NATS → POST received",
            hop(&|s| Some(us(nats_at(s)?, rx.get(s.seq)?)))?,
        ));
        hops.push((
            "gateway: on NATS → WebSocket frame",
            hop(&|s| Some(us(nats_at(s)?, ws.get(s.seq)?)))?,
        ));
        hops.push((end_to_end[0], hop(&|s| Some(us(s.start, rx.get(s.seq)?)))?));
        hops.push((end_to_end[1], hop(&|s| Some(us(s.start, ws.get(s.seq)?)))?));
        let missing = |a: &Arrivals| sent.iter().filter(|s| a.get(s.seq).is_none()).count();
        let starts = sent.iter().map(|s| s.start);
        let span = starts.clone().max().unwrap_or(0) - starts.min().unwrap_or(0);
        Ok(Self {
            kind,
            rate,
            published: sent.len(),
            span: Duration::from_nanos(span),
            missing_rx: missing(rx),
            missing_ws: missing(ws),
            repeats_rx: rx.repeats.load(std::sync::atomic::Ordering::Relaxed),
            hops,
        })
    }

    fn print(&self) {
        let span = self.span.as_secs_f64().max(1e-9);
        println!(
            "\n{:?} at {}/s: {} events published over {:.1} s ({:.0}/s); missing at the receiver {}, at the WebSocket {}; repeated POSTs so far {}",
            self.kind,
            self.rate,
            self.published,
            span,
            self.published.saturating_sub(1) as f64 / span,
            self.missing_rx,
            self.missing_ws,
            self.repeats_rx,
        );
        println!(
            "  {:<40} {:>9} {:>9} {:>9} {:>9}",
            "hop (ms)", "p50", "p99", "p99.9", "max"
        );
        for (name, l) in &self.hops {
            println!(
                "  {:<40} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                name,
                l.percentile_ms(50.0),
                l.percentile_ms(99.0),
                l.percentile_ms(99.9),
                l.max_ms()
            );
        }
    }
}

fn print_cpu(
    before: &[f64; 6],
    after: &[f64; 6],
    python: Option<f64>,
    events: usize,
    took: Duration,
) {
    let events = events.max(1) as f64;
    let mut parts: Vec<String> = CPU_NAMES
        .iter()
        .zip(before.iter().zip(after))
        .map(|(name, (b, a))| format!("{name} {:.0}", (a - b) * 1e6 / events))
        .collect();
    let mut total: f64 = before.iter().zip(after).map(|(b, a)| a - b).sum();
    if let Some(p) = python {
        parts.push(format!("python publisher {:.0}", p * 1e6 / events));
        total += p;
    }
    println!(
        "  CPU per event (µs): {}; all {:.0} ({:.2} cores over {:.1} s)",
        parts.join(", "),
        total * 1e6 / events,
        total / took.as_secs_f64().max(1e-9),
        took.as_secs_f64()
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn finds_the_sequence_number() {
        assert_eq!(bench_seq(br#"{"a":1,"bench_seq":42}"#), Some(42));
        assert_eq!(
            bench_seq(br#"{"payload": {"bench_seq": 1000017, "x": 2}}"#),
            Some(1_000_017)
        );
        assert_eq!(bench_seq(br#"{"bench_seq_other":3}"#), None);
        assert_eq!(bench_seq(br#"{"user_id":3}"#), None);
    }
}
