//! Faults that are not crashes: a worker paused past its ack wait, a
//! frozen nats-server, a frozen PostgreSQL (postmaster and backends
//! stopped), and a receiver behind a silent network. Each ends with the
//! common checks (one success row per event × webhook, counters equal to
//! rows, every repeated request carrying the same `webhook-id`) and
//! asserts the bound the fault is documented with (docs/contract.md,
//! "Faults").

use std::collections::HashSet;
use std::time::{Duration, Instant};

use e2e::deployment::{Dependency, Deployment};
use e2e::eventually;
use e2e::nats::NatsServers;
use e2e::postgres::PrivatePostgres;
use e2e::process::{TempDir, metric_value};
use e2e::publish::PublishRun;
use e2e::signal::{self, Blackhole};
use e2e::ws::ResumingClient;
use proto_events::Namespace;
use storage::testing::TestDb;

use crate::checks::{IN_FLIGHT, SETTLE, assert_ws_saw_every_event_once, shared_nats_url, window};

const EVENTS: u64 = 600;
const DELIVERIES: usize = (EVENTS + EVENTS / 2) as usize;

/// `/readyz` names a frozen dependency within the probe timeout (2 s) of
/// the first request after it froze; polled every 100 ms, each answer
/// taking up to that long, with a generous margin for a loaded machine.
const NOTICED: Duration = Duration::from_secs(8);

/// A REST request on a frozen database answers 503 within
/// `DATABASE_STATEMENT_TIMEOUT` (5 s) plus 1 s; the margin is for a loaded
/// machine.
const REST_BOUND: Duration = Duration::from_secs(9);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end to end: deploy/test.sh --e2e"]
async fn worker_paused_past_the_ack_wait_records_each_success_once() {
    let dir = TempDir::new("worker-pause");
    let db = TestDb::new().await.unwrap();
    // Slow answers keep work in flight, so the paused worker holds some.
    let mut d = Deployment::start(
        dir.path(),
        &db.url,
        &shared_nats_url(),
        Namespace::unique(),
        &[("DELIVERY_ACK_WAIT", "3s")],
    )
    .await;
    d.set_receiver_delay(Duration::from_millis(300));
    d.start_worker().await;
    let run = PublishRun::start(d.publisher().await, EVENTS, 150);
    d.receiver
        .wait_for(DELIVERIES / 4, Duration::from_secs(30))
        .await;

    let paused_at = Instant::now();
    let held = d.workers[0].metric("delivery_messages_in_flight").await;
    let paused = signal::pause(vec![d.workers[0].pid()]);
    // Well past the ack wait: the other worker gets the held messages.
    tokio::time::sleep(Duration::from_secs(8)).await;
    paused.resume();
    let resumed_at = Instant::now();

    let events = run.finish().await;
    let outcome = d.check_delivered(&events, SETTLE).await;
    // Repeated requests come from work held by the paused worker.
    let repeated = outcome.assert_repeats_within(window(
        paused_at,
        resumed_at,
        IN_FLIGHT + Duration::from_secs(3),
        Duration::from_secs(2),
    ));
    let refused: f64 = {
        let mut n = 0.0;
        for w in &d.workers {
            n += w.metric("delivery_duplicates_refused").await;
        }
        n
    };
    eprintln!(
        "worker 1 paused {:?} holding {held} messages: {} requests for {DELIVERIES} deliveries, \
         {repeated} webhook-ids repeated, {refused} duplicate successes refused",
        resumed_at - paused_at,
        outcome.received.len(),
    );
    d.delete_streams().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end to end: deploy/test.sh --e2e"]
async fn nats_server_frozen_is_noticed_and_loses_nothing() {
    let dir = TempDir::new("nats-freeze");
    let db = TestDb::new().await.unwrap();
    let nats = NatsServers::single(dir.path()).await;
    let mut d =
        Deployment::start(dir.path(), &db.url, &nats.urls(), Namespace::default(), &[]).await;
    let ws = ResumingClient::connect(&d.ws_url(), &d.token).await;
    let run = PublishRun::start(d.publisher().await, EVENTS, 150);
    d.receiver
        .wait_for(DELIVERIES / 3, Duration::from_secs(30))
        .await;

    let frozen_at = Instant::now();
    let frozen = signal::pause(vec![nats.pid(0)]);
    d.wait_all_not_ready(Dependency::Nats, NOTICED).await;
    let noticed = frozen_at.elapsed();
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(frozen_at.elapsed())).await;
    frozen.resume();
    let thawed_at = Instant::now();
    d.wait_all_ready().await;
    let ready_again = thawed_at.elapsed();

    let events = run.finish().await;
    assert_eq!(events.len(), EVENTS as usize);
    let outcome = d.check_delivered(&events, SETTLE).await;
    let repeated =
        outcome.assert_repeats_within(window(frozen_at, thawed_at, IN_FLIGHT, IN_FLIGHT));
    let seen = assert_ws_saw_every_event_once(ws, &events).await;
    eprintln!(
        "nats frozen for {:?}: every service unready after {noticed:?}, ready {ready_again:?} \
         after it resumed; {} requests for {DELIVERIES} deliveries, {repeated} repeated; \
         websocket: {} connections",
        thawed_at - frozen_at,
        outcome.received.len(),
        seen.connections
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end to end: deploy/test.sh --e2e"]
async fn postgres_frozen_bounds_requests_and_hands_back_held_messages() {
    let dir = TempDir::new("pg-freeze");
    let pg = PrivatePostgres::start(dir.path());
    let db_url = pg.create_database("bedolaga_events").await;
    // The default ack wait: a message held until it runs out would show.
    // Few message slots: work waiting to be recorded takes them all, and
    // what the pull brings meanwhile must be handed back, not held.
    let mut d = Deployment::start(
        dir.path(),
        &db_url,
        &shared_nats_url(),
        Namespace::unique(),
        &[
            ("DELIVERY_ACK_WAIT", "30s"),
            ("DELIVERY_MAX_MESSAGES", "32"),
            ("DELIVERY_BATCH_SIZE", "32"),
        ],
    )
    .await;
    let hook = d.hooks[0].id;
    // Publishing goes on through the freeze.
    let run = PublishRun::start(d.publisher().await, EVENTS, 40);
    d.receiver
        .wait_for(DELIVERIES / 4, Duration::from_secs(30))
        .await;
    // The registry holds an open connection: the case that used to wait.
    let (status, _, _) = d.timed_get(&format!("/webhooks/{hook}")).await;
    assert_eq!(status, Some(200));

    let frozen_at = Instant::now();
    let frozen = signal::pause(pg.pids());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, retry_after, took) = d.timed_get(&format!("/webhooks/{hook}")).await;
    assert_eq!(
        status,
        Some(503),
        "a REST request on a frozen database answers 503 (after {took:?})"
    );
    assert!(retry_after.is_some(), "the 503 says when to retry");
    assert!(
        took <= REST_BOUND,
        "the 503 took {took:?}, more than {REST_BOUND:?}"
    );
    d.wait_all_not_ready(Dependency::Postgres, NOTICED).await;
    tokio::time::sleep(Duration::from_secs(12).saturating_sub(frozen_at.elapsed())).await;
    frozen.resume();
    let thawed_at = Instant::now();
    d.wait_all_ready().await;

    let events = run.finish().await;
    // Everything arrives well before the 30 s ack wait would have run out
    // for messages the worker held while it could not record.
    let expected = d.expected_ids(&events);
    let drained = eventually(
        Duration::from_secs(25),
        "every delivery after the freeze",
        || {
            let expected = &expected;
            let received = d.receiver.received();
            async move {
                let ok: HashSet<String> = received
                    .iter()
                    .filter(|r| r.status == Some(200))
                    .filter_map(|r| r.header("webhook-id").map(str::to_owned))
                    .collect();
                expected.is_subset(&ok).then_some(())
            }
        },
    );
    drained.await;
    let drain_took = thawed_at.elapsed();
    let outcome = d.check_delivered(&events, SETTLE).await;
    let repeated = outcome.assert_repeats_within(window(
        frozen_at,
        frozen_at,
        IN_FLIGHT,
        Duration::from_secs(8),
    ));
    let metrics = d.workers[0].metrics().await;
    let handed_back = metric_value(&metrics, "delivery_handed_back");
    assert!(
        handed_back > 0.0,
        "messages that came while attempts could not be recorded were handed back"
    );
    eprintln!(
        "postgres frozen for {:?}: GET /webhooks/{hook} answered 503 in {took:?}; every delivery \
         {drain_took:?} after it resumed; {} requests for {DELIVERIES} deliveries, {} rows ({} \
         failed), {repeated} repeated; {} messages handed back",
        thawed_at - frozen_at,
        outcome.received.len(),
        outcome.rows.len(),
        outcome.rows_with("failed"),
        handed_back,
    );
    d.delete_streams().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end to end: deploy/test.sh --e2e"]
async fn receiver_behind_a_silent_network_gets_every_event_later() {
    let dir = TempDir::new("blackhole");
    let db = TestDb::new().await.unwrap();
    let d = Deployment::start(
        dir.path(),
        &db.url,
        &shared_nats_url(),
        Namespace::unique(),
        &[],
    )
    .await;
    let run = PublishRun::start(d.publisher().await, EVENTS, 150);
    d.receiver
        .wait_for(DELIVERIES / 4, Duration::from_secs(30))
        .await;

    let hole = match Blackhole::start(d.receiver.port()) {
        Ok(h) => h,
        Err(why) => {
            eprintln!("SKIPPED: cannot blackhole the receiver: {why}");
            drop(run);
            return;
        }
    };
    let cut_at = Instant::now();
    let before = d.receiver.count();
    tokio::time::sleep(Duration::from_secs(8)).await;
    // A silent receiver is not a dependency: the worker stays ready.
    let (status, body) = d.workers[0].readyz().await.expect("worker /readyz");
    assert_eq!(status, 200, "{body}");
    let during = d.receiver.count() - before;
    hole.lift();
    let lifted_at = Instant::now();

    let events = run.finish().await;
    let outcome = d.check_delivered(&events, SETTLE).await;
    let repeated = outcome.assert_repeats_within(window(cut_at, lifted_at, IN_FLIGHT, IN_FLIGHT));
    let failed = outcome.rows_with("failed");
    assert!(
        failed > 0,
        "attempts into the silent network failed and were retried"
    );
    eprintln!(
        "receiver cut off for {:?} ({during} requests got through meanwhile): {} requests for \
         {DELIVERIES} deliveries, {} rows ({failed} failed), {repeated} repeated",
        lifted_at - cut_at,
        outcome.received.len(),
        outcome.rows.len(),
    );
    d.delete_streams().await;
}
