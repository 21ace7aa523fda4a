//! `eventctl bench fanout`: WebSocket fan-out through a running gateway.
//!
//! Opens N clients on `/ws`, measures the gateway's resident memory per
//! idle connection (from `/proc/<pid>/status` when `--gateway-pid` is
//! given), then publishes events carrying their send time at a fixed rate
//! and reports delivered messages per second and publish→client latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use futures::StreamExt;
use parking_lot::Mutex;
use proto_events::{Namespace, Publisher};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Options of `eventctl bench fanout`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The gateway's WebSocket URL.
    #[arg(long, env = "GATEWAY_WS_URL", default_value = "ws://127.0.0.1:8081/ws")]
    pub url: String,
    /// An API token the gateway accepts (`webhook-registry token create`).
    #[arg(long, env = "BENCH_TOKEN", hide_env_values = true)]
    pub token: String,
    /// WebSocket clients to open.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Connections opened at once while ramping up.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Events published per second (0: only hold idle connections).
    #[arg(long, default_value_t = 20)]
    pub rate: u64,
    /// How long to publish (or, with --rate 0, to hold the connections).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Extra payload bytes per event.
    #[arg(long, default_value_t = 200)]
    pub payload_bytes: usize,
    /// The gateway's process id, to report its RSS per connection.
    #[arg(long)]
    pub gateway_pid: Option<u32>,
    /// Wait after connecting before measuring idle memory.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Print the result as one JSON object as well.
    #[arg(long)]
    pub json: bool,
}

/// Shared counters of all client tasks.
#[derive(Default)]
struct Stats {
    connected: AtomicUsize,
    failed: AtomicUsize,
    closed: AtomicUsize,
    delivered: AtomicU64,
    /// Publish→receive latencies in microseconds, merged from clients.
    latencies: Mutex<Vec<u32>>,
    close_codes: Mutex<std::collections::BTreeMap<u16, usize>>,
    /// When the last event arrived, in µs since the benchmark started.
    last_delivery_us: AtomicU64,
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The send time an event carries in its payload (`"bench_sent_ns":N`),
/// found without parsing the whole message.
fn sent_ns(text: &str) -> Option<u128> {
    let key = "\"bench_sent_ns\":";
    let start = text.find(key)? + key.len();
    let digits: &str = &text[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// Resident memory of a process in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS line")
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`
/// (`self` for this process). Assumes the usual 100 clock ticks per second.
fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

async fn client(
    origin: Instant,
    url: String,
    stats: Arc<Stats>,
    permits: Arc<Semaphore>,
    ready: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    let connected = {
        let _permit = permits.acquire().await;
        match tokio::time::timeout(
            Duration::from_secs(30),
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        {
            Ok(Ok((ws, _))) => Some(ws),
            _ => None,
        }
    };
    let Some(mut ws) = connected else {
        stats.failed.fetch_add(1, Ordering::SeqCst);
        ready.notify_one();
        return;
    };
    // the welcome message proves the token was accepted
    let welcomed = matches!(
        tokio::time::timeout(Duration::from_secs(30), ws.next()).await,
        Ok(Some(Ok(Message::Text(t)))) if t.contains("\"connection\"")
    );
    if !welcomed {
        stats.failed.fetch_add(1, Ordering::SeqCst);
        ready.notify_one();
        return;
    }
    stats.connected.fetch_add(1, Ordering::SeqCst);
    ready.notify_one();
    let mut local = Vec::new();
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => break,
            next = ws.next() => next,
        };
        match next {
            Some(Ok(Message::Text(t))) => {
                if let Some(sent) = sent_ns(&t) {
                    let lat = now_ns().saturating_sub(sent) / 1000;
                    local.push(u32::try_from(lat).unwrap_or(u32::MAX));
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                    let at = u64::try_from(origin.elapsed().as_micros()).unwrap_or(u64::MAX);
                    stats.last_delivery_us.fetch_max(at, Ordering::Relaxed);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                *stats.close_codes.lock().entry(code).or_default() += 1;
                stats.closed.fetch_add(1, Ordering::SeqCst);
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                stats.closed.fetch_add(1, Ordering::SeqCst);
                break;
            }
        }
    }
    stats.latencies.lock().extend_from_slice(&local);
    let _ = ws.close(None).await;
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[idx.min(sorted.len() - 1)]) / 1000.0
}

/// Publishes `rate` events per second for `duration`; returns how many.
async fn publish_at_rate(
    nats_url: &str,
    ns: Namespace,
    rate: u64,
    duration: Duration,
    payload_bytes: usize,
) -> anyhow::Result<u64> {
    let nats = async_nats::ConnectOptions::new()
        .name("eventctl-bench-fanout-publisher")
        .connect(nats_url)
        .await
        .with_context(|| format!("cannot connect to NATS at {nats_url}"))?;
    let publisher = Publisher::new(nats, ns);
    publisher.ensure_stream().await?;
    let padding = "x".repeat(payload_bytes);
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = (rate as f64 * duration.as_secs_f64()).round() as u64;
    let mut published = 0;
    while published < total {
        tick.tick().await;
        let payload = serde_json::json!({
            "ticket_id": published,
            "message_id": published,
            "user_id": 1,
            "is_from_admin": false,
            "message_text": padding,
            "has_media": false,
            "status": "open",
            "bench_sent_ns": now_ns() as u64,
        });
        publisher
            .publish_value("ticket.message_added", payload)
            .await
            .context("publish")?;
        published += 1;
    }
    Ok(published)
}

/// Runs the benchmark and prints the report.
pub async fn run(nats_url: &str, ns: Namespace, args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.clients > 0, "--clients must be at least 1");
    // Fail early when NATS is not there.
    async_nats::ConnectOptions::new()
        .name("eventctl-bench-fanout")
        .connect(nats_url)
        .await
        .with_context(|| format!("cannot connect to NATS at {nats_url}"))?;

    let sep = if args.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}token={}", args.url, args.token);
    let rss_before = args.gateway_pid.map(rss_kib).transpose()?;

    let stats = Arc::new(Stats::default());
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let ready = Arc::new(tokio::sync::Notify::new());
    let stop = CancellationToken::new();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        tasks.push(tokio::spawn(client(
            started,
            url.clone(),
            stats.clone(),
            permits.clone(),
            ready.clone(),
            stop.clone(),
        )));
    }
    while stats.connected.load(Ordering::SeqCst) + stats.failed.load(Ordering::SeqCst)
        < args.clients
    {
        let _ = tokio::time::timeout(Duration::from_millis(200), ready.notified()).await;
    }
    let ramp = started.elapsed();
    let connected = stats.connected.load(Ordering::SeqCst);
    let failed = stats.failed.load(Ordering::SeqCst);
    eprintln!(
        "connected {connected} clients in {:.1}s ({failed} failed)",
        ramp.as_secs_f64()
    );
    anyhow::ensure!(connected > 0, "no client could connect to {}", args.url);

    tokio::time::sleep(args.settle).await;
    let rss_idle = args.gateway_pid.map(rss_kib).transpose()?;

    let gateway_pid = args.gateway_pid.map(|p| p.to_string());
    let cpu_before = (gateway_pid.as_deref().and_then(cpu_secs), cpu_secs("self"));
    // Publish from a thread and runtime of its own, so thousands of busy
    // client tasks never delay a publish (that would inflate latency).
    let publish_started = Instant::now();
    let published = if args.rate > 0 {
        let (url, ns, rate, duration, bytes) = (
            nats_url.to_owned(),
            ns.clone(),
            args.rate,
            args.duration,
            args.payload_bytes,
        );
        let thread = std::thread::spawn(move || -> anyhow::Result<u64> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(publish_at_rate(&url, ns, rate, duration, bytes))
        });
        tokio::task::spawn_blocking(move || thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the publisher thread panicked"))??
    } else {
        tokio::time::sleep(args.duration).await;
        0
    };
    let publish_secs = publish_started.elapsed().as_secs_f64();
    let rss_busy = args.gateway_pid.map(rss_kib).transpose()?;

    // let the last events arrive: until all are in or nothing moves for 2 s
    let expected = published * connected as u64;
    let mut seen = stats.delivered.load(Ordering::SeqCst);
    let mut still_since = Instant::now();
    while published > 0 && seen < expected && still_since.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = stats.delivered.load(Ordering::SeqCst);
        if now != seen {
            seen = now;
            still_since = Instant::now();
        }
    }
    let cpu_after = (gateway_pid.as_deref().and_then(cpu_secs), cpu_secs("self"));
    let busy_secs = publish_started.elapsed().as_secs_f64();
    let cpu_share = |before: Option<f64>, after: Option<f64>| match (before, after) {
        (Some(a), Some(b)) if busy_secs > 0.0 => Some((b - a) / busy_secs),
        _ => None,
    };
    let gateway_cpu = cpu_share(cpu_before.0, cpu_after.0);
    let bench_cpu = cpu_share(cpu_before.1, cpu_after.1);
    let held = connected - stats.closed.load(Ordering::SeqCst);
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let delivered = stats.delivered.load(Ordering::SeqCst);
    let mut lat = std::mem::take(&mut *stats.latencies.lock());
    lat.sort_unstable();
    // deliveries per second from the first publish to the last delivery
    let last_delivery = Duration::from_micros(stats.last_delivery_us.load(Ordering::SeqCst));
    let window = last_delivery
        .saturating_sub(publish_started - started)
        .as_secs_f64()
        .max(publish_secs);
    let rate = if window > 0.0 {
        delivered as f64 / window
    } else {
        0.0
    };
    let per_conn = |rss: Option<u64>| match (rss_before, rss) {
        (Some(a), Some(b)) => Some((b.saturating_sub(a)) as f64 / connected as f64),
        _ => None,
    };

    println!("bench fanout: {}", args.url);
    println!("  clients requested     {}", args.clients);
    println!(
        "  connections held      {held} (failed {failed}, ramp {:.1}s)",
        ramp.as_secs_f64()
    );
    if let (Some(a), Some(b)) = (rss_before, rss_idle) {
        println!(
            "  gateway RSS           {a} KiB before, {b} KiB with {connected} idle clients: {:.1} KiB per connection",
            per_conn(rss_idle).unwrap_or(0.0)
        );
    }
    if let Some(b) = rss_busy {
        println!("  gateway RSS busy      {b} KiB");
    }
    if published > 0 {
        println!(
            "  published             {published} events in {publish_secs:.1}s ({:.0}/s)",
            published as f64 / publish_secs
        );
        println!(
            "  delivered             {delivered} of {expected} ({:.0} msg/s)",
            rate
        );
        println!(
            "  latency publish→client p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            percentile(&lat, 0.50),
            percentile(&lat, 0.99),
            percentile(&lat, 1.0)
        );
    }
    if published > 0 {
        let fmt = |c: Option<f64>| c.map_or("n/a".to_owned(), |c| format!("{c:.2} cores"));
        println!(
            "  CPU while publishing  gateway {}, this load generator {}",
            fmt(gateway_cpu),
            fmt(bench_cpu)
        );
        if let Some(c) = gateway_cpu
            && delivered > 0
        {
            println!(
                "  gateway CPU per message {:.1} µs (CPU time: waiting behind other processes does not count)",
                c * busy_secs * 1e6 / delivered as f64
            );
        }
    }
    let codes = stats.close_codes.lock().clone();
    if !codes.is_empty() {
        println!("  closed by the server  {codes:?}");
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "clients": args.clients,
                "held": held,
                "failed": failed,
                "rss_before_kib": rss_before,
                "rss_idle_kib": rss_idle,
                "rss_busy_kib": rss_busy,
                "kib_per_idle_connection": per_conn(rss_idle),
                "published": published,
                "delivered": delivered,
                "expected": expected,
                "delivered_per_sec": rate,
                "p50_ms": percentile(&lat, 0.50),
                "p99_ms": percentile(&lat, 0.99),
                "max_ms": percentile(&lat, 1.0),
                "close_codes": codes,
                "gateway_cpu_cores": gateway_cpu,
                "gateway_cpu_us_per_message": gateway_cpu
                    .filter(|_| delivered > 0)
                    .map(|c| c * busy_secs * 1e6 / delivered as f64),
                "loadgen_cpu_cores": bench_cpu,
            })
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn finds_the_send_time() {
        let t =
            r#"{"type":"ticket.message_added","payload":{"bench_sent_ns":1234567,"x":1},"seq":3}"#;
        assert_eq!(sent_ns(t), Some(1_234_567));
        assert_eq!(sent_ns("{}"), None);
    }

    #[test]
    fn percentiles() {
        let v: Vec<u32> = (1..=100).map(|x| x * 1000).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
    }
}
