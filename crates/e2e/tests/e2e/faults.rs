//! One fault each, mid-run, against the built binaries. Every test ends
//! with the same checks: every event × matching webhook answered 200 by the
//! receiver and recorded as a success, the registry's statistics and each
//! webhook's counters equal the rows, the counter tables equal the rows,
//! and duplicates only for work in flight at the fault (by `webhook-id`).

use std::time::{Duration, Instant};

use e2e::deployment::{Dependency, Deployment};
use e2e::nats::NatsServers;
use e2e::postgres::PrivatePostgres;
use e2e::process::TempDir;
use e2e::publish::PublishRun;
use e2e::ws::ResumingClient;
use proto_events::Namespace;
use storage::testing::TestDb;

use crate::checks::{IN_FLIGHT, SETTLE, assert_ws_saw_every_event_once, shared_nats_url, window};

/// Events per test: users and tickets in turn, so the `*` webhook gets all
/// of them and the `ticket.*` one half.
const EVENTS: u64 = 600;
const DELIVERIES: usize = (EVENTS + EVENTS / 2) as usize;
/// How long a worker may take to notice that it cannot record attempts.
const STOP_NOTICED: Duration = Duration::from_secs(1);

/// A deployment on the machine's PostgreSQL (a database of its own) and
/// NATS (a prefix of its own); the directory and database go with the
/// returned values.
async fn on_shared_services(label: &str) -> (TempDir, TestDb, Deployment) {
    let dir = TempDir::new(label);
    let db = TestDb::new().await.unwrap();
    let d = Deployment::start(
        dir.path(),
        &db.url,
        &shared_nats_url(),
        Namespace::unique(),
        &[],
    )
    .await;
    (dir, db, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end to end: deploy/test.sh --e2e"]
async fn nats_server_killed_mid_run_loses_nothing() {
    let dir = TempDir::new("nats-kill");
    let db = TestDb::new().await.unwrap();
    let mut nats = NatsServers::single(dir.path()).await;
    let mut d =
        Deployment::start(dir.path(), &db.url, &nats.urls(), Namespace::default(), &[]).await;
    let ws = ResumingClient::connect(&d.ws_url(), &d.token).await;
    let run = PublishRun::start(d.publisher().await, EVENTS, 150);
    d.receiver
        .wait_for(DELIVERIES / 3, Duration::from_secs(30))
        .await;

    let down = Instant::now();
    nats.kill(0);
    d.wait_all_not_ready(Dependency::Nats, Duration::from_secs(15))
        .await;
    let stored_while_down = run.stored();
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.restart(0).await;
    d.wait_all_ready().await;
    let up = Instant::now();

    let events = run.finish().await;
    assert_eq!(events.len(), EVENTS as usize);
    let outcome = d.check_delivered(&events, SETTLE).await;
    // Only what was in flight while the server was away may come twice.
    let repeated = outcome.assert_repeats_within(window(down, up, IN_FLIGHT, Duration::ZERO));
    let seen = assert_ws_saw_every_event_once(ws, &events).await;
    eprintln!(
        "nats killed after {stored_while_down} events, back {:?} later; {} requests for \
         {DELIVERIES} deliveries, {repeated} repeated; websocket: {} connections",
        up - down,
        outcome.received.len(),
        seen.connections
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end to end: deploy/test.sh --e2e"]
async fn postgres_stopped_for_ten_seconds_loses_nothing() {
    let dir = TempDir::new("pg-stop");
    let mut pg = PrivatePostgres::start(dir.path());
    let db_url = pg.create_database("bedolaga_events").await;
    let ns = Namespace::unique();
    let mut d = Deployment::start(dir.path(), &db_url, &shared_nats_url(), ns, &[]).await;
    let ws = ResumingClient::connect(&d.ws_url(), &d.token).await;
    let run = PublishRun::start(d.publisher().await, EVENTS, 60);
    d.receiver
        .wait_for(DELIVERIES / 4, Duration::from_secs(30))
        .await;

    let down = Instant::now();
    pg.stop();
    d.wait_all_not_ready(Dependency::Postgres, Duration::from_secs(9))
        .await;
    let remaining = Duration::from_secs(10).saturating_sub(down.elapsed());
    tokio::time::sleep(remaining).await;
    pg.start_again();
    let up = Instant::now();
    d.wait_all_ready().await;

    let events = run.finish().await;
    let outcome = d.check_delivered(&events, SETTLE).await;
    // Only attempts in flight when the database went away may come twice:
    // the worker takes no new events while it cannot record attempts.
    let repeated = outcome.assert_repeats_within(window(down, down, IN_FLIGHT, STOP_NOTICED));
    let seen = assert_ws_saw_every_event_once(ws, &events).await;
    eprintln!(
        "postgres stopped for {:?}: {} requests for {DELIVERIES} deliveries, {} rows \
         ({} failed), {repeated} webhook-ids repeated; websocket: {} connections",
        up - down,
        outcome.received.len(),
        outcome.rows.len(),
        outcome.rows_with("failed"),
        seen.connections
    );
    d.delete_streams().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end to end: deploy/test.sh --e2e"]
async fn worker_stopped_under_load_hands_over_to_another() {
    let (_dir, _db, mut d) = on_shared_services("worker-term").await;
    let run = PublishRun::start(d.publisher().await, EVENTS, 200);
    d.receiver
        .wait_for(DELIVERIES / 3, Duration::from_secs(30))
        .await;

    let status = d.workers[0].terminate(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "a graceful stop exits 0");
    let delivered_by_first = d.receiver.count();
    let second = d.start_worker().await;

    let events = run.finish().await;
    let outcome = d.check_delivered(&events, SETTLE).await;
    // A graceful stop finishes and records what it started: nothing twice.
    outcome.assert_exact();
    let consumed = d.workers[second].metric("delivery_events").await;
    assert!(consumed > 0.0, "the second worker took over");
    eprintln!(
        "first worker stopped after {delivered_by_first} requests; the second consumed \
         {consumed} events; {} requests for {DELIVERIES} deliveries",
        outcome.received.len()
    );
    d.delete_streams().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end to end: deploy/test.sh --e2e"]
async fn gateway_restarted_under_a_resuming_client_misses_nothing() {
    let (_dir, _db, mut d) = on_shared_services("gateway-restart").await;
    let ws = ResumingClient::connect(&d.ws_url(), &d.token).await;
    let run = PublishRun::start(d.publisher().await, EVENTS, 100);

    // A graceful restart, then a crash, on the same address.
    ws.wait_for(EVENTS as usize / 3, Duration::from_secs(30))
        .await;
    let mut gateway = d.gateway.take().unwrap();
    let addr = gateway.addr;
    let status = gateway.terminate(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "a graceful stop exits 0");
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.start_gateway(Some(addr)).await;
    ws.wait_for(EVENTS as usize * 2 / 3, Duration::from_secs(30))
        .await;
    d.gateway.take().unwrap().kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.start_gateway(Some(addr)).await;

    let events = run.finish().await;
    let seen = assert_ws_saw_every_event_once(ws, &events).await;
    assert!(
        seen.connections >= 3 && seen.resumed >= 2,
        "the client resumed after each restart: {} connections, {} resumed",
        seen.connections,
        seen.resumed
    );
    let outcome = d.check_delivered(&events, SETTLE).await;
    outcome.assert_exact();
    d.delete_streams().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end to end: deploy/test.sh --e2e"]
async fn receiver_failing_for_a_while_gets_every_event_later() {
    let (_dir, _db, d) = on_shared_services("receiver-500").await;
    let run = PublishRun::start(d.publisher().await, EVENTS, 150);
    d.receiver
        .wait_for(DELIVERIES / 4, Duration::from_secs(30))
        .await;

    d.set_receiver_failing(true);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // A failing receiver is not a dependency: the worker stays ready.
    let (status, body) = d.workers[0].readyz().await.expect("worker /readyz");
    assert_eq!(status, 200, "{body}");
    d.set_receiver_failing(false);

    let events = run.finish().await;
    let outcome = d.check_delivered(&events, SETTLE).await;
    // Every attempt is a row: the 500s as failed rows, then one success per
    // delivery; retries carry the same webhook-id, and none is sent twice.
    outcome.assert_exact();
    assert!(outcome.answered(500) > 0, "some attempts were answered 500");
    eprintln!(
        "{} requests answered 500, {} answered 200, {} rows",
        outcome.answered(500),
        outcome.answered(200),
        outcome.rows.len()
    );
    d.delete_streams().await;
}
