//! `bench fanout`: WebSocket fan-out through a running gateway.
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
use proto_events::nats::{FirstConnect, NatsArgs};
use proto_events::{Namespace, Publisher};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::stats::Latencies;

/// Options of `bench fanout`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The gateway's WebSocket URL.
    #[arg(long, env = "GATEWAY_WS_URL", default_value = "ws://127.0.0.1:8081/ws")]
    pub url: String,
    /// How the gateway's clients read: `ws` (its `/ws`), or `sse` (its
    /// `/sse` beside it) alone, e.g. to measure the memory of idle SSE
    /// connections on a fresh gateway (`--peer sse` runs both, the
    /// WebSocket first, so the SSE run's memory then reuses what the
    /// WebSocket run freed).
    #[arg(long, value_enum, default_value = "ws")]
    pub transport: Transport,
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
    /// Also run the same load, in the same run, against peer servers and
    /// print their columns (comma-separated; `nchan`: nginx with the nchan
    /// module; `floor`: `bench fanout-floor`).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub peer: Vec<Peer>,
    /// nchan's WebSocket subscriber URL.
    #[arg(long, default_value = "ws://127.0.0.1:8090/sub")]
    pub peer_sub_url: String,
    /// nchan's HTTP publisher URL (each event is POSTed there).
    #[arg(long, default_value = "http://127.0.0.1:8090/pub")]
    pub peer_pub_url: String,
    /// nchan's process ids (nginx master and workers), for RSS and CPU.
    #[arg(long, value_delimiter = ',')]
    pub peer_pids: Vec<u32>,
    /// The floor server's WebSocket subscriber URL.
    #[arg(long, default_value = "ws://127.0.0.1:8092/sub")]
    pub floor_sub_url: String,
    /// The floor server's HTTP publisher URL.
    #[arg(long, default_value = "http://127.0.0.1:8092/pub")]
    pub floor_pub_url: String,
    /// The floor server's process id, for RSS and CPU.
    #[arg(long, value_delimiter = ',')]
    pub floor_pids: Vec<u32>,
}

/// How the gateway's clients read the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Ws,
    Sse,
}

/// A server to compare the gateway with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Peer {
    /// nginx with the nchan module: `location /sub { nchan_subscriber
    /// websocket; }`, `location /pub { nchan_publisher; }`, one channel.
    Nchan,
    /// `bench fanout-floor`: one `send(2)` per event per client
    /// and nothing else, the kernel's share of any fan-out server.
    Floor,
    /// The same gateway's `/sse` (Server-Sent Events over HTTP), beside
    /// its WebSocket.
    Sse,
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

/// Resident memory of several processes in KiB (`None` without pids).
fn rss_sum(pids: &[u32]) -> anyhow::Result<Option<u64>> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut sum = 0;
    for p in pids {
        sum += rss_kib(*p)?;
    }
    Ok(Some(sum))
}

/// CPU seconds of several processes.
fn cpu_sum(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| cpu_secs(&p.to_string())).sum()
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

/// Counts one received event that carries its send time.
fn received(text: &str, origin: Instant, stats: &Stats, local: &mut Vec<u32>) {
    if let Some(sent) = sent_ns(text) {
        let lat = now_ns().saturating_sub(sent) / 1000;
        local.push(u32::try_from(lat).unwrap_or(u32::MAX));
        stats.delivered.fetch_add(1, Ordering::Relaxed);
        let at = u64::try_from(origin.elapsed().as_micros()).unwrap_or(u64::MAX);
        stats.last_delivery_us.fetch_max(at, Ordering::Relaxed);
    }
}

/// One SSE client: a `GET` of the `http://…/sse?…` URL over a plain
/// socket; every event block (up to a blank line) is one message.
async fn sse_client(
    origin: Instant,
    url: String,
    stats: Arc<Stats>,
    permits: Arc<Semaphore>,
    ready: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let open = async {
        let u = reqwest::Url::parse(&url).ok()?;
        let addr = format!("{}:{}", u.host_str()?, u.port_or_known_default()?);
        let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let target = match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        };
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            u.host_str()?
        );
        tcp.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::with_capacity(4096);
        // the head, and the first message (`connection`) proving the token
        loop {
            if tcp.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
            let text = String::from_utf8_lossy(&buf);
            if !text.starts_with("HTTP/1.1 200") && text.contains("\r\n") {
                return None;
            }
            if let Some(i) = text.find("\"type\":\"connection\"")
                && let Some(end) = text[i..].find("\n\n")
            {
                buf.drain(..i + end + 2);
                return Some((tcp, buf));
            }
        }
    };
    let connected = {
        let _permit = permits.acquire().await;
        tokio::time::timeout(Duration::from_secs(30), open)
            .await
            .ok()
            .flatten()
    };
    let Some((mut tcp, mut buf)) = connected else {
        stats.failed.fetch_add(1, Ordering::SeqCst);
        ready.notify_one();
        return;
    };
    stats.connected.fetch_add(1, Ordering::SeqCst);
    ready.notify_one();
    let mut local = Vec::new();
    loop {
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            if let Ok(text) = std::str::from_utf8(&buf[..end]) {
                received(text, origin, &stats, &mut local);
            }
            buf.drain(..end + 2);
        }
        let read = tokio::select! {
            () = stop.cancelled() => break,
            r = tcp.read_buf(&mut buf) => r,
        };
        match read {
            Ok(0) | Err(_) => {
                stats.closed.fetch_add(1, Ordering::SeqCst);
                break;
            }
            Ok(_) => {}
        }
    }
    stats.latencies.lock().extend_from_slice(&local);
}

async fn client(
    origin: Instant,
    url: String,
    stats: Arc<Stats>,
    permits: Arc<Semaphore>,
    ready: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
    welcome: bool,
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
    let welcomed = !welcome
        || matches!(
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
            Some(Ok(Message::Text(t))) => received(&t, origin, &stats, &mut local),
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

/// Where the events of a run are published.
#[derive(Debug, Clone)]
enum Sink {
    /// The gateway's stream, through NATS.
    Nats { nats: Box<NatsArgs>, ns: Namespace },
    /// An HTTP publisher endpoint (nchan's `/pub`), one POST per event.
    Http { url: String },
}

/// The payload every event carries: the same bytes for every server.
fn bench_payload(n: u64, padding: &str) -> serde_json::Value {
    serde_json::json!({
        "ticket_id": n,
        "message_id": n,
        "user_id": 1,
        "is_from_admin": false,
        "message_text": padding,
        "has_media": false,
        "status": "open",
        "bench_sent_ns": now_ns() as u64,
    })
}

/// A kept-alive HTTP/1.1 connection that POSTs bodies and reads answers.
struct HttpPoster {
    tcp: tokio::io::BufReader<tokio::net::TcpStream>,
    host: String,
    path: String,
}

impl HttpPoster {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .context("the peer publisher URL must start with http://")?;
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let tcp = tokio::net::TcpStream::connect(host)
            .await
            .with_context(|| format!("cannot connect to {host}"))?;
        tcp.set_nodelay(true)?;
        Ok(Self {
            tcp: tokio::io::BufReader::new(tcp),
            host: host.to_owned(),
            path: format!("/{path}"),
        })
    }

    async fn post(&mut self, body: &str) -> anyhow::Result<()> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let req = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.path,
            self.host,
            body.len()
        );
        self.tcp.get_mut().write_all(req.as_bytes()).await?;
        let mut status = String::new();
        self.tcp.read_line(&mut status).await?;
        anyhow::ensure!(
            status.starts_with("HTTP/1.1 20"),
            "the peer refused a publish: {}",
            status.trim()
        );
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            anyhow::ensure!(self.tcp.read_line(&mut line).await? > 0, "peer closed");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse()?;
            }
        }
        let mut sink = vec![0u8; length];
        self.tcp.read_exact(&mut sink).await?;
        Ok(())
    }
}

/// Publishes `rate` events per second for `duration`; returns how many.
async fn publish_at_rate(
    sink: Sink,
    rate: u64,
    duration: Duration,
    payload_bytes: usize,
) -> anyhow::Result<u64> {
    let padding = "x".repeat(payload_bytes);
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = (rate as f64 * duration.as_secs_f64()).round() as u64;
    let mut published = 0;
    match sink {
        Sink::Nats { nats, ns } => {
            let nats = nats
                .connect("bench-fanout-publisher", FirstConnect::FailFast)
                .await?;
            let publisher = Publisher::new(nats, ns);
            publisher.ensure_stream().await?;
            while published < total {
                tick.tick().await;
                publisher
                    .publish_value("ticket.message_added", bench_payload(published, &padding))
                    .await
                    .context("publish")?;
                published += 1;
            }
        }
        Sink::Http { url } => {
            let mut poster = HttpPoster::connect(&url).await?;
            while published < total {
                tick.tick().await;
                // the shape of a gateway event message, so both servers
                // move the same bytes
                let body = serde_json::json!({
                    "type": "ticket.message_added",
                    "payload": bench_payload(published, &padding),
                    "timestamp": chrono::Utc::now().to_rfc3339(),
                    "id": uuid::Uuid::now_v7().to_string(),
                    "seq": published,
                })
                .to_string();
                poster.post(&body).await?;
                published += 1;
            }
        }
    }
    Ok(published)
}

/// One server under the load.
struct Target {
    name: &'static str,
    /// The WebSocket URL clients open.
    url: String,
    pids: Vec<u32>,
    /// Whether the server greets with the seed's welcome message.
    welcome: bool,
    /// Clients read Server-Sent Events (an `http://` URL), not a WebSocket.
    sse: bool,
    sink: Sink,
}

/// What one run measured.
#[derive(Debug, Default)]
struct Report {
    held: usize,
    failed: usize,
    ramp_secs: f64,
    rss_before: Option<u64>,
    rss_idle: Option<u64>,
    rss_busy: Option<u64>,
    kib_per_idle: Option<f64>,
    published: u64,
    publish_secs: f64,
    delivered: u64,
    expected: u64,
    rate: f64,
    p50: f64,
    p99: f64,
    max: f64,
    server_cpu: Option<f64>,
    loadgen_cpu: Option<f64>,
    us_per_message: Option<f64>,
    close_codes: std::collections::BTreeMap<u16, usize>,
}

/// Opens the clients, measures idle memory, publishes at the rate and
/// collects what arrived.
async fn measure(target: &Target, args: &Args) -> anyhow::Result<Report> {
    let rss_before = rss_sum(&target.pids)?;
    let stats = Arc::new(Stats::default());
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let ready = Arc::new(tokio::sync::Notify::new());
    let stop = CancellationToken::new();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        let (url, stats, permits, ready, stop) = (
            target.url.clone(),
            stats.clone(),
            permits.clone(),
            ready.clone(),
            stop.clone(),
        );
        tasks.push(if target.sse {
            tokio::spawn(sse_client(started, url, stats, permits, ready, stop))
        } else {
            tokio::spawn(client(
                started,
                url,
                stats,
                permits,
                ready,
                stop,
                target.welcome,
            ))
        });
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
        "{}: connected {connected} clients in {:.1}s ({failed} failed)",
        target.name,
        ramp.as_secs_f64()
    );
    anyhow::ensure!(connected > 0, "no client could connect to {}", target.url);

    tokio::time::sleep(args.settle).await;
    let rss_idle = rss_sum(&target.pids)?;

    let cpu_before = (cpu_sum(&target.pids), cpu_secs("self"));
    // Publish from a thread and runtime of its own, so thousands of busy
    // client tasks never delay a publish (that would inflate latency).
    let publish_started = Instant::now();
    let published = if args.rate > 0 {
        let (sink, rate, duration, bytes) = (
            target.sink.clone(),
            args.rate,
            args.duration,
            args.payload_bytes,
        );
        let thread = std::thread::spawn(move || -> anyhow::Result<u64> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(publish_at_rate(sink, rate, duration, bytes))
        });
        tokio::task::spawn_blocking(move || thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the publisher thread panicked"))??
    } else {
        tokio::time::sleep(args.duration).await;
        0
    };
    let publish_secs = publish_started.elapsed().as_secs_f64();
    let rss_busy = rss_sum(&target.pids)?;

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
    let cpu_after = (cpu_sum(&target.pids), cpu_secs("self"));
    let busy_secs = publish_started.elapsed().as_secs_f64();
    let cpu_share = |before: Option<f64>, after: Option<f64>| match (before, after) {
        (Some(a), Some(b)) if busy_secs > 0.0 => Some((b - a) / busy_secs),
        _ => None,
    };
    let server_cpu = cpu_share(cpu_before.0, cpu_after.0);
    let loadgen_cpu = cpu_share(cpu_before.1, cpu_after.1);
    let held = connected - stats.closed.load(Ordering::SeqCst);
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let delivered = stats.delivered.load(Ordering::SeqCst);
    let lat = Latencies::of_micros(stats.latencies.lock().drain(..).map(u64::from))?;
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
    let kib_per_idle = match (rss_before, rss_idle) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / connected as f64),
        _ => None,
    };
    let close_codes = stats.close_codes.lock().clone();
    Ok(Report {
        held,
        failed,
        ramp_secs: ramp.as_secs_f64(),
        rss_before,
        rss_idle,
        rss_busy,
        kib_per_idle,
        published,
        publish_secs,
        delivered,
        expected,
        rate,
        p50: lat.percentile_ms(50.0),
        p99: lat.percentile_ms(99.0),
        max: lat.max_ms(),
        server_cpu,
        loadgen_cpu,
        us_per_message: server_cpu
            .filter(|_| delivered > 0)
            .map(|c| c * busy_secs * 1e6 / delivered as f64),
        close_codes,
    })
}

fn print_report(name: &str, url: &str, args: &Args, r: &Report) {
    println!("bench fanout: {name} {url}");
    println!("  clients requested     {}", args.clients);
    println!(
        "  connections held      {} (failed {}, ramp {:.1}s)",
        r.held, r.failed, r.ramp_secs
    );
    if let (Some(a), Some(b), Some(per)) = (r.rss_before, r.rss_idle, r.kib_per_idle) {
        println!(
            "  server RSS            {a} KiB before, {b} KiB with idle clients: {per:.1} KiB per connection"
        );
    }
    if let Some(b) = r.rss_busy {
        println!("  server RSS busy       {b} KiB");
    }
    if r.published > 0 {
        println!(
            "  published             {} events in {:.1}s ({:.0}/s)",
            r.published,
            r.publish_secs,
            r.published as f64 / r.publish_secs
        );
        println!(
            "  delivered             {} of {} ({:.0} msg/s)",
            r.delivered, r.expected, r.rate
        );
        println!(
            "  latency publish→client p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            r.p50, r.p99, r.max
        );
        let fmt = |c: Option<f64>| c.map_or("n/a".to_owned(), |c| format!("{c:.2} cores"));
        println!(
            "  CPU while publishing  server {}, this load generator {}",
            fmt(r.server_cpu),
            fmt(r.loadgen_cpu)
        );
        if let Some(us) = r.us_per_message {
            println!(
                "  server CPU per message {us:.2} µs (CPU time: waiting behind other processes does not count)"
            );
        }
    }
    if !r.close_codes.is_empty() {
        println!("  closed by the server  {:?}", r.close_codes);
    }
}

fn report_json(r: &Report) -> serde_json::Value {
    serde_json::json!({
        "held": r.held,
        "failed": r.failed,
        "rss_before_kib": r.rss_before,
        "rss_idle_kib": r.rss_idle,
        "rss_busy_kib": r.rss_busy,
        "kib_per_idle_connection": r.kib_per_idle,
        "published": r.published,
        "delivered": r.delivered,
        "expected": r.expected,
        "delivered_per_sec": r.rate,
        "p50_ms": r.p50,
        "p99_ms": r.p99,
        "max_ms": r.max,
        "close_codes": r.close_codes,
        "server_cpu_cores": r.server_cpu,
        "server_cpu_us_per_message": r.us_per_message,
        "loadgen_cpu_cores": r.loadgen_cpu,
    })
}

/// Runs the benchmark (against the gateway, then the peer if asked) and
/// prints the report.
pub async fn run(nats: &NatsArgs, ns: Namespace, args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.clients > 0, "--clients must be at least 1");
    // Fail early when NATS is not there.
    nats.connect("bench-fanout", FirstConnect::FailFast).await?;
    let sep = if args.url.contains('?') { '&' } else { '?' };
    let mut targets = Vec::new();
    if args.transport == Transport::Ws {
        targets.push(Target {
            name: "gateway",
            url: format!("{}{sep}token={}", args.url, args.token),
            pids: args.gateway_pid.into_iter().collect(),
            welcome: true,
            sse: false,
            sink: Sink::Nats {
                nats: Box::new(nats.clone()),
                ns: ns.clone(),
            },
        });
    }
    if args.peer.contains(&Peer::Sse) || args.transport == Transport::Sse {
        let mut url = reqwest::Url::parse(&args.url)?;
        let scheme = if url.scheme() == "wss" {
            "https"
        } else {
            "http"
        };
        url.set_scheme(scheme)
            .map_err(|()| anyhow::anyhow!("--url {}: not a ws:// URL", args.url))?;
        url.set_path("/sse");
        targets.push(Target {
            name: "gateway-sse",
            url: format!("{url}{sep}token={}", args.token),
            pids: args.gateway_pid.into_iter().collect(),
            welcome: true,
            sse: true,
            sink: Sink::Nats {
                nats: Box::new(nats.clone()),
                ns,
            },
        });
    }
    for peer in &args.peer {
        let (name, sub, publish, pids) = match peer {
            Peer::Sse => continue,
            Peer::Nchan => (
                "nchan",
                &args.peer_sub_url,
                &args.peer_pub_url,
                &args.peer_pids,
            ),
            Peer::Floor => (
                "floor",
                &args.floor_sub_url,
                &args.floor_pub_url,
                &args.floor_pids,
            ),
        };
        targets.push(Target {
            name,
            url: sub.clone(),
            pids: pids.clone(),
            welcome: false,
            sse: false,
            sink: Sink::Http {
                url: publish.clone(),
            },
        });
    }
    let mut reports = Vec::new();
    for t in &targets {
        let r = measure(t, &args).await?;
        print_report(t.name, &args.url_display(t), &args, &r);
        reports.push(r);
        // let the closed connections of one run go before the next
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let report = |name: &str| {
        targets
            .iter()
            .zip(&reports)
            .find(|(t, _)| t.name == name)
            .map(|(_, r)| r)
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "n/a".to_owned(),
    };
    let gateway = report("gateway");
    if let (Some(g), Some(e)) = (gateway, report("gateway-sse")) {
        println!("gateway SSE / gateway WebSocket, same run:");
        println!(
            "  CPU per delivered message {} (goal ≤ 1.20)",
            ratio(e.us_per_message, g.us_per_message)
        );
        println!(
            "  memory per idle connection {} ({} KiB vs {} KiB)",
            ratio(e.kib_per_idle, g.kib_per_idle),
            e.kib_per_idle
                .map_or("n/a".to_owned(), |k| format!("{k:.1}")),
            g.kib_per_idle
                .map_or("n/a".to_owned(), |k| format!("{k:.1}"))
        );
        println!("  p99 {:.2} ms vs {:.2} ms", e.p99, g.p99);
    }
    if let (Some(g), Some(p)) = (gateway, report("nchan")) {
        println!("gateway / nchan, same run:");
        println!(
            "  CPU per delivered message {} (goal ≤ 0.70)",
            ratio(g.us_per_message, p.us_per_message)
        );
        println!(
            "  memory per idle connection {} (goal ≤ 1.00)",
            ratio(g.kib_per_idle, p.kib_per_idle)
        );
        println!("  p99 {:.2} ms vs {:.2} ms", g.p99, p.p99);
    }
    if let Some(f) = report("floor") {
        println!("floor (one write per event per client), same run:");
        if let Some(p) = report("nchan") {
            println!(
                "  CPU per delivered message, floor / nchan {}",
                ratio(f.us_per_message, p.us_per_message)
            );
        }
        if let Some(g) = gateway {
            println!(
                "  CPU per delivered message, gateway / floor {}",
                ratio(g.us_per_message, f.us_per_message)
            );
        }
    }
    if args.json {
        let names: Vec<&str> = targets.iter().map(|t| t.name).collect();
        let mut out = serde_json::Map::new();
        out.insert("clients".into(), args.clients.into());
        out.insert("rate".into(), args.rate.into());
        for (n, r) in names.iter().zip(&reports) {
            out.insert((*n).to_owned(), report_json(r));
        }
        println!("{}", serde_json::Value::Object(out));
    }
    Ok(())
}

impl Args {
    /// The URL of a target without its token.
    fn url_display(&self, t: &Target) -> String {
        if t.name == "gateway" {
            self.url.clone()
        } else if t.name == "gateway-sse" {
            t.url.split_once("token=").map_or(t.url.clone(), |(u, _)| {
                u.trim_end_matches(['?', '&']).to_owned()
            })
        } else {
            t.url.clone()
        }
    }
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
}
