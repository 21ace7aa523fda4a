//! The soak: events at a steady rate for a long while, with a fault every
//! few minutes taken in turn from a worker killed with SIGKILL (a new one
//! started), worker 1 paused with SIGSTOP past its ack wait, and the
//! database restarted; then what was lost (must be 0), the duplicate
//! success rows (must be 0), the duplicate POSTs (same `webhook-id`
//! answered twice), and each service's RSS and open files at start and
//! end. Not part of CI: run it with `deploy/soak.sh` (settings there).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use e2e::deployment::Deployment;
use e2e::postgres::PrivatePostgres;
use e2e::process::{Service, TempDir};
use e2e::publish::PublishRun;
use e2e::signal;
use proto_events::Namespace;
use test_support::{Receiver, Reply};

fn setting(name: &str, default: &str) -> Duration {
    let text = std::env::var(name).unwrap_or_else(|_| default.to_owned());
    humantime::parse_duration(&text).unwrap_or_else(|e| panic!("{name}={text}: {e}"))
}

/// RSS in KiB and open file descriptors of a process.
fn footprint(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss, fds)
}

fn footprints(d: &Deployment) -> Vec<(String, u32, u64, usize)> {
    let mut all: Vec<&Service> = vec![&d.registry];
    all.extend(d.workers.iter().filter(|w| w.pid() != 0));
    all.extend(d.gateway.iter());
    all.into_iter()
        .map(|s| {
            let (rss, fds) = footprint(s.pid());
            (s.name.clone(), s.pid(), rss, fds)
        })
        .collect()
}

#[derive(QueryableByName)]
struct Key {
    #[diesel(sql_type = diesel::sql_types::Text)]
    event_id: String,
    #[diesel(sql_type = diesel::sql_types::Int4)]
    webhook_id: i32,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

async fn count(conn: &mut AsyncPgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<Count>(conn)
        .await
        .map(|c| c.n)
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the soak: deploy/soak.sh"]
async fn soak() {
    let duration = setting("SOAK_DURATION", "30m");
    let rate: u64 = std::env::var("SOAK_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(300);
    let every = setting("SOAK_FAULT_EVERY", "2m");
    let pause_for = setting("SOAK_PAUSE", "15s");
    let settle = setting("SOAK_SETTLE", "10m");
    let n = rate * duration.as_secs();

    let dir = TempDir::new("soak");
    let mut pg = PrivatePostgres::start(dir.path());
    let db_url = pg.create_database("bedolaga_events").await;
    // A lean receiver: counts 200s by webhook-id, keeps no request.
    let answered: Arc<parking_lot::Mutex<HashMap<String, u32>>> = Arc::default();
    let seen = answered.clone();
    let receiver = Receiver::start_lean("127.0.0.1:0", move |req| {
        if let Some(id) = req.header("webhook-id") {
            *seen.lock().entry(id.to_owned()).or_default() += 1;
        }
        Reply::ok()
    })
    .await
    .expect("the receiver");
    let mut d = Deployment::start_with_receiver(
        dir.path(),
        &db_url,
        &test_support::nats_url(),
        Namespace::unique(),
        &[],
        receiver,
    )
    .await;
    d.start_worker().await;
    let at_start = footprints(&d);
    eprintln!(
        "soak: {n} events at {rate}/s for {duration:?}, a fault every {every:?}; \
         services: {at_start:?}"
    );

    let started = Instant::now();
    let run = PublishRun::start(d.publisher().await, n, rate);
    let mut faults: Vec<String> = Vec::new();
    let mut next = started + every;
    while started.elapsed() + Duration::from_secs(1) < duration {
        let now = Instant::now();
        if now < next {
            tokio::time::sleep((next - now).min(Duration::from_secs(1))).await;
            continue;
        }
        next += every;
        let t = started.elapsed().as_secs();
        let fault = match faults.len() % 3 {
            0 => {
                // The newest worker: worker 1 lives through the whole run
                // (it takes the SIGSTOPs), so its RSS and open files at
                // start and end say whether a worker leaks.
                let victim = d
                    .workers
                    .iter()
                    .rposition(|w| w.pid() != 0)
                    .filter(|&i| i > 0)
                    .expect("a running worker besides worker 1");
                d.workers[victim].kill();
                d.start_worker().await;
                format!("{t}s: kill -9 of worker {}", victim + 1)
            }
            1 => {
                let victim = 0;
                let paused = signal::pause(vec![d.workers[victim].pid()]);
                tokio::time::sleep(pause_for).await;
                paused.resume();
                format!("{t}s: SIGSTOP of worker {} for {pause_for:?}", victim + 1)
            }
            _ => {
                pg.stop();
                tokio::time::sleep(Duration::from_secs(5)).await;
                pg.start_again();
                format!("{t}s: database restarted (down 5 s)")
            }
        };
        // Worker 1's footprint after each fault: a leak shows as a trend.
        let (rss, fds) = footprint(d.workers[0].pid());
        let fault = format!("{fault} (worker 1 then: {rss} KiB RSS, {fds} open files)");
        eprintln!("soak: {fault}");
        faults.push(fault);
    }
    let events = run.finish().await;
    let published_in = started.elapsed();
    let expected = d.expected_ids(&events);

    // Settled: a success for every expected delivery, nothing pending.
    let mut conn = AsyncPgConnection::establish(&db_url).await.expect("db");
    let want = expected.len() as i64;
    let deadline = Instant::now() + settle;
    loop {
        let done = count(
            &mut conn,
            "SELECT count(*)::int8 AS n FROM (SELECT DISTINCT event_id, webhook_id \
             FROM webhook_deliveries WHERE status = 'success') s",
        )
        .await;
        let pending = count(
            &mut conn,
            "SELECT count(*)::int8 AS n FROM webhook_deliveries WHERE status = 'pending'",
        )
        .await;
        if (done >= want && pending == 0) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let settled_in = started.elapsed() - published_in;
    let at_end = footprints(&d);

    let keys: Vec<Key> = diesel::sql_query(
        "SELECT event_id::text AS event_id, webhook_id, count(*)::int8 AS n \
         FROM webhook_deliveries WHERE status = 'success' GROUP BY 1, 2",
    )
    .load(&mut conn)
    .await
    .expect("success rows");
    let delivered: HashSet<String> = keys
        .iter()
        .map(|k| webhook_client::message_id(&k.event_id, k.webhook_id))
        .collect();
    let lost = expected.difference(&delivered).count();
    let duplicate_rows: i64 = keys.iter().map(|k| k.n - 1).sum();
    let rows = count(
        &mut conn,
        "SELECT count(*)::int8 AS n FROM webhook_deliveries",
    )
    .await;
    let failed = count(
        &mut conn,
        "SELECT count(*)::int8 AS n FROM webhook_deliveries WHERE status = 'failed'",
    )
    .await;
    let counters_off = count(
        &mut conn,
        "SELECT count(*)::int8 AS n FROM webhooks w WHERE w.success_count <> \
         (SELECT count(*) FROM webhook_deliveries d WHERE d.webhook_id = w.id \
          AND d.status = 'success') OR w.failure_count <> \
         (SELECT count(*) FROM webhook_deliveries d WHERE d.webhook_id = w.id \
          AND d.status = 'failed')",
    )
    .await;
    storage::testing::assert_counts_match_rows(&mut conn).await;
    let (posts, duplicate_posts) = {
        let seen = answered.lock();
        let posts: u32 = seen.values().sum();
        (posts, seen.values().filter(|n| **n > 1).count())
    };
    let mut worker_metrics = String::new();
    for w in d.workers.iter().filter(|w| w.pid() != 0) {
        let _ = write!(
            worker_metrics,
            " {}: {} duplicate successes refused, {} handed back;",
            w.name,
            w.metric("delivery_duplicates_refused").await,
            w.metric("delivery_handed_back").await
        );
    }

    let mut report = String::new();
    let _ = writeln!(
        report,
        "soak report: {} events at {rate}/s over {published_in:?} (settled {settled_in:?} later), \
         {} expected deliveries",
        events.len(),
        expected.len()
    );
    for f in &faults {
        let _ = writeln!(report, "  fault {f}");
    }
    let _ = writeln!(
        report,
        "  events lost (deliveries without a success): {lost}"
    );
    let _ = writeln!(report, "  duplicate success rows: {duplicate_rows}");
    let _ = writeln!(
        report,
        "  POSTs answered: {posts}; webhook-ids answered more than once: {duplicate_posts}"
    );
    let _ = writeln!(
        report,
        "  rows: {rows} ({failed} failed); webhooks whose counters differ from the rows: \
         {counters_off}; counter tables equal the rows"
    );
    let _ = writeln!(report, " {worker_metrics}");
    let _ = writeln!(
        report,
        "  service (pid): RSS KiB / open files, start -> end"
    );
    for (name, pid, rss, fds) in &at_end {
        let start = at_start.iter().find(|s| &s.0 == name);
        match start {
            Some((_, p0, r0, f0)) if p0 == pid => {
                let _ = writeln!(report, "    {name} ({pid}): {r0} / {f0} -> {rss} / {fds}");
            }
            _ => {
                let _ = writeln!(
                    report,
                    "    {name} ({pid}, started mid-run): {rss} / {fds} at the end"
                );
            }
        }
    }
    eprintln!("{report}");
    if let Ok(path) = std::env::var("SOAK_REPORT") {
        std::fs::write(&path, &report).expect("write the report");
    }
    d.delete_streams().await;
    assert_eq!(lost, 0, "events lost");
    assert_eq!(duplicate_rows, 0, "duplicate success rows");
    assert_eq!(counters_off, 0, "webhook counters equal the rows");
}
