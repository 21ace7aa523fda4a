//! `bench history`: the cost of delivery-history reads and of a
//! retention drop as the history grows.
//!
//! For each size in `--rows`, fills a temporary database with that many
//! delivery rows spread over `--days` days and `--webhooks` webhooks
//! (`--failed-permille` of them failed), with counters as the worker keeps
//! them, starts the `webhook-registry` binary on it, and measures p50/p99
//! of `GET /webhooks/stats`, a first page of a webhook's deliveries, the
//! same by `status=failed`, a deep page reached by `next_cursor` and, for
//! comparison, the same depth by `offset`. Then drops the oldest day's
//! partition while a writer inserts delivery rows, and reports how long
//! the drop took and the writer's slowest insert meanwhile. The last line
//! gives each read's p99 at the largest size over its p99 at the smallest.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use serde_json::Value;
use storage::testing::TestDb;

use crate::PostgresArgs;
use crate::stats::Latencies;
use proto_events::nats::NatsArgs;

/// History benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// History sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "50000,50000000")]
    pub rows: Vec<u64>,
    /// Days the rows are spread over (one partition each).
    #[arg(long, default_value_t = 30)]
    pub days: u32,
    /// Webhooks the rows belong to.
    #[arg(long, default_value_t = 1000)]
    pub webhooks: u32,
    /// Failed rows per thousand.
    #[arg(long, default_value_t = 20)]
    pub failed_permille: u32,
    /// Requests measured per read.
    #[arg(long, default_value_t = 300)]
    pub samples: usize,
    /// Pages of 200 rows walked by cursor to reach the deep page.
    #[arg(long, default_value_t = 25)]
    pub deep_pages: usize,
    #[command(flatten)]
    pub postgres: PostgresArgs,
    /// The registry binary (default: next to this executable).
    #[arg(long)]
    pub registry_bin: Option<std::path::PathBuf>,
}

/// The request path of the `i`th sample of a read.
type PathOf<'a> = Box<dyn Fn(usize) -> String + 'a>;

/// p50 and p99 of one read, in ms.
#[derive(Debug, Clone, Copy)]
struct Read {
    p50: f64,
    p99: f64,
}

struct SizeResult {
    rows: u64,
    reads: Vec<(&'static str, Read)>,
    drop_ms: f64,
    dropped_rows: i64,
    insert_max_ms: f64,
    insert_p99_ms: f64,
    bytes_per_row: f64,
}

pub async fn run(nats: &NatsArgs, args: Args) -> anyhow::Result<()> {
    let bin = crate::service_binary(
        args.registry_bin.as_deref(),
        "webhook-registry",
        "--registry-bin",
    )?;
    let mut results = Vec::new();
    for &rows in &args.rows {
        let db = args.postgres.temporary_db().await?;
        let r = measure(nats, &args, &bin, &db, rows).await;
        drop(db);
        let r = r?;
        print_size(&r);
        results.push(r);
    }
    if let (Some(small), Some(large)) = (results.first(), results.last())
        && results.len() > 1
    {
        let ratios: Vec<String> = small
            .reads
            .iter()
            .zip(&large.reads)
            .map(|((name, s), (_, l))| format!("{name} {:.2}", l.p99 / s.p99))
            .collect();
        println!(
            "p99 ratio {} rows / {} rows: {}",
            large.rows,
            small.rows,
            ratios.join(", ")
        );
    }
    Ok(())
}

fn print_size(r: &SizeResult) {
    println!("history of {} rows:", r.rows);
    for (name, read) in &r.reads {
        println!(
            "  {name:<28} p50 {:>7.2} ms   p99 {:>7.2} ms",
            read.p50, read.p99
        );
    }
    println!(
        "  drop one day ({} rows)        {:.1} ms; concurrent inserts p99 {:.2} ms, max {:.2} ms",
        r.dropped_rows, r.drop_ms, r.insert_p99_ms, r.insert_max_ms
    );
    println!(
        "  disk per row (table + indexes) {:.0} bytes",
        r.bytes_per_row
    );
}

async fn sql(conn: &mut diesel_async::AsyncPgConnection, q: &str) -> anyhow::Result<()> {
    use diesel_async::RunQueryDsl;
    diesel::sql_query(q)
        .execute(conn)
        .await
        .with_context(|| format!("running {q}"))?;
    Ok(())
}

async fn fill(
    conn: &mut diesel_async::AsyncPgConnection,
    args: &Args,
    rows: u64,
) -> anyhow::Result<()> {
    let days = u64::from(args.days.max(1));
    let per_day = rows / days;
    sql(conn, "SET synchronous_commit = off").await?;
    sql(
        conn,
        &format!(
            "INSERT INTO webhooks (name, url, event_type) \
             SELECT 'bench-' || g, 'https://receiver.example/' || g, 'user.created' \
             FROM generate_series(1, {}) g",
            args.webhooks
        ),
    )
    .await?;
    let today = Utc::now().date_naive();
    let first = today - chrono::Duration::days(i64::try_from(days)?);
    storage::history::ensure_partitions(conn, first, today + chrono::Duration::days(7)).await?;
    let started = Instant::now();
    for d in 0..days {
        let day = first + chrono::Duration::days(i64::try_from(d)?);
        // Rows as the worker writes them: a realistic payload, an event id,
        // the receiver's answer; spread evenly over the day.
        sql(
            conn,
            &format!(
                "INSERT INTO webhook_deliveries (webhook_id, event_type, payload, response_status, \
                   response_body, status, error_message, attempt_number, created_at, delivered_at, \
                   event_id) \
                 SELECT 1 + (g::int8 * 7919) % {webhooks}, 'user.created', \
                   jsonb_build_object('user_id', g, 'telegram_id', 100000000 + g, \
                     'username', 'user' || g, 'first_name', 'Иван', 'last_name', NULL, \
                     'referral_code', 'ref' || g, 'referred_by_id', NULL), \
                   CASE WHEN f THEN 500 ELSE 200 END, CASE WHEN f THEN 'boom' ELSE 'ok' END, \
                   CASE WHEN f THEN 'failed' ELSE 'success' END, \
                   CASE WHEN f THEN 'HTTP 500' END, 1, t, CASE WHEN f THEN NULL ELSE t END, \
                   '01J' || lpad(to_hex(g), 23, '0') \
                 FROM (SELECT g, g % 1000 < {failed} AS f, \
                         '{day} 00:00:00+00'::timestamptz + (g * 86400.0 / {per_day}) * interval '1 second' AS t \
                       FROM generate_series(0, {last}) g) s",
                webhooks = args.webhooks,
                failed = args.failed_permille,
                last = per_day.saturating_sub(1),
            ),
        )
        .await?;
        eprintln!(
            "  filled {}/{} days ({} rows, {:.0} rows/s)",
            d + 1,
            days,
            (d + 1) * per_day,
            ((d + 1) * per_day) as f64 / started.elapsed().as_secs_f64()
        );
    }
    // The counters the worker keeps with its rows.
    sql(
        conn,
        "INSERT INTO webhook_delivery_counts (webhook_id, day, status, n) \
         SELECT webhook_id, (created_at AT TIME ZONE 'UTC')::date, status, count(*) \
         FROM webhook_deliveries GROUP BY 1, 2, 3",
    )
    .await?;
    sql(
        conn,
        "INSERT INTO delivery_day_counts (day, status, n) \
         SELECT day, status, sum(n) FROM webhook_delivery_counts GROUP BY 1, 2",
    )
    .await?;
    sql(conn, "VACUUM ANALYZE webhook_deliveries").await?;
    sql(conn, "VACUUM ANALYZE webhook_delivery_counts").await?;
    sql(conn, "VACUUM ANALYZE delivery_day_counts").await?;
    Ok(())
}

async fn measure(
    nats: &NatsArgs,
    args: &Args,
    bin: &std::path::Path,
    db: &TestDb,
    rows: u64,
) -> anyhow::Result<SizeResult> {
    use diesel_async::AsyncConnection as _;
    eprintln!("filling {rows} rows over {} days", args.days);
    let mut conn = diesel_async::AsyncPgConnection::establish(&db.url).await?;
    fill(&mut conn, args, rows).await?;
    let (_, token) = storage::tokens::create_token(
        &mut conn,
        &storage::tokens::TokenHasher::new(None),
        storage::tokens::TokenSpec {
            name: "bench".into(),
            ..Default::default()
        },
    )
    .await?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let mut child = tokio::process::Command::new(bin)
        .env("SECRETS_KEY_FILE", storage::testing::key_file())
        .env("DATABASE_URL", &db.url)
        .env("NATS_URL", &nats.nats_url)
        .env(
            "NATS_PREFIX",
            format!("bench{}", uuid::Uuid::new_v4().simple()),
        )
        .env("REGISTRY_BIND", format!("127.0.0.1:{port}"))
        // The bench drops partitions itself.
        .env("DELIVERY_RETENTION", "0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let result = measure_reads(args, &db.url, port, &token, &mut conn, rows).await;
    let _ = child.kill().await;
    result
}

async fn measure_reads(
    args: &Args,
    db_url: &str,
    port: u16,
    token: &str,
    conn: &mut diesel_async::AsyncPgConnection,
    rows: u64,
) -> anyhow::Result<SizeResult> {
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().no_proxy().build()?;
    let get = |path: String| {
        let req = client.get(format!("{base}{path}")).bearer_auth(token);
        async move {
            let started = Instant::now();
            let resp = req.send().await?;
            let status = resp.status();
            let body: Value = resp.json().await?;
            anyhow::ensure!(status.is_success(), "{status}: {body}");
            Ok::<_, anyhow::Error>((started.elapsed(), body))
        }
    };
    // Ready?
    let deadline = Instant::now() + Duration::from_secs(60);
    while get("/webhooks/stats".into()).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the registry did not come up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let hooks = u64::from(args.webhooks.max(1));
    let hook = |i: usize| 1 + (i as u64 * 37) % hooks;
    // The deep page: walk by cursor from the top of one webhook's history.
    let mut cursor = String::new();
    for _ in 0..args.deep_pages {
        let (_, page) = get(format!("/webhooks/1/deliveries?limit=200{cursor}")).await?;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    let depth = args.deep_pages * 200;
    let reads: [(&'static str, PathOf<'_>); 5] = [
        (
            "GET /webhooks/stats",
            Box::new(|_| "/webhooks/stats".to_owned()),
        ),
        (
            "deliveries?limit=50",
            Box::new(move |i| format!("/webhooks/{}/deliveries?limit=50", hook(i))),
        ),
        (
            "deliveries?status=failed",
            Box::new(move |i| format!("/webhooks/{}/deliveries?status=failed&limit=50", hook(i))),
        ),
        (
            "deep page by cursor",
            Box::new(move |_| format!("/webhooks/1/deliveries?limit=50{cursor}")),
        ),
        (
            "same depth by offset",
            Box::new(move |_| format!("/webhooks/1/deliveries?limit=50&offset={depth}")),
        ),
    ];
    let mut out = Vec::new();
    for (name, path) in &reads {
        for i in 0..20 {
            get(path(i)).await?;
        }
        let mut us = Vec::with_capacity(args.samples);
        for i in 0..args.samples {
            let (took, _) = get(path(i)).await?;
            us.push(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        }
        let us = Latencies::of_micros(us)?;
        out.push((
            *name,
            Read {
                p50: us.percentile_ms(50.0),
                p99: us.percentile_ms(99.0),
            },
        ));
    }

    // Size on disk per row, over the whole history.
    #[derive(diesel::QueryableByName)]
    struct Bytes {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let bytes: Bytes = diesel_async::RunQueryDsl::get_result(
        diesel::sql_query(
            "SELECT COALESCE(sum(pg_total_relation_size(inhrelid)), 0)::int8 AS n \
         FROM pg_inherits WHERE inhparent = 'webhook_deliveries'::regclass",
        ),
        conn,
    )
    .await?;
    let bytes_per_row = bytes.n as f64 / rows.max(1) as f64;

    // The retention drop of the oldest day, with a writer inserting rows
    // (batches of 100, as the recorder does) the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(insert_load(db_url.to_owned(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let oldest = storage::history::partitions(conn)
        .await?
        .into_iter()
        .next()
        .context("no partition")?;
    let started = Instant::now();
    let dropped = storage::history::drop_partition(conn, &oldest).await?;
    let drop_ms = started.elapsed().as_secs_f64() * 1000.0;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let lat = Latencies::of_micros(writer.await??)?;
    Ok(SizeResult {
        rows,
        reads: out,
        drop_ms,
        dropped_rows: dropped.rows,
        insert_max_ms: lat.max_ms(),
        insert_p99_ms: lat.percentile_ms(99.0),
        bytes_per_row,
    })
}

/// Inserts batches of 100 rows with their counters until `stop`; returns
/// each batch's latency in µs.
async fn insert_load(db_url: String, stop: Arc<AtomicBool>) -> anyhow::Result<Vec<u64>> {
    use diesel_async::AsyncConnection as _;
    let mut conn = diesel_async::AsyncPgConnection::establish(&db_url).await?;
    let mut lat = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        conn.transaction::<_, anyhow::Error, _>(async |c| {
            sql(
                c,
                "WITH ins AS (INSERT INTO webhook_deliveries (webhook_id, event_type, payload, \
                   status, created_at) \
                 SELECT 1 + g % 10, 'user.created', '{\"user_id\": 1}', 'success', now() \
                 FROM generate_series(1, 100) g RETURNING webhook_id) \
                 INSERT INTO webhook_delivery_counts AS c (webhook_id, day, status, n) \
                 SELECT webhook_id, (now() AT TIME ZONE 'UTC')::date, 'success', count(*) \
                 FROM ins GROUP BY 1 ORDER BY 1 \
                 ON CONFLICT (webhook_id, day, status) DO UPDATE SET n = c.n + excluded.n",
            )
            .await
        })
        .await?;
        lat.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(lat)
}
