//! Recover, replay and bulk retry jobs run by the worker: an outage
//! recovered once per event, a late webhook replayed in order, pacing,
//! cancelling, a restart mid-way, a crashed replica's job taken over, and a
//! replay window older than the stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use storage::testing::{diesel, diesel_async};

use chrono::Utc;
use diesel_async::RunQueryDsl;
use proto_events::EventType;
use serde_json::{Value, json};
use storage::DbPool;
use storage::jobs::{self, Created, Job, NewJob};
use storage::models::NewDelivery;

use crate::helpers::*;

async fn create_job(pool: &DbPool, new: NewJob) -> Job {
    let mut conn = pool.get().await.unwrap();
    match jobs::create(&mut conn, new).await.unwrap() {
        Created::New(j) => j,
        Created::Existing(j) => panic!("an unfinished job already exists: {j:?}"),
    }
}

fn job(webhook_id: i32, kind: jobs::JobKind, rate_per_s: i32) -> NewJob {
    NewJob {
        webhook_id,
        kind,
        since: None,
        until: None,
        since_seq: None,
        delivery_status: Some(storage::models::DeliveryStatus::Failed),
        rate_per_s,
    }
}

async fn read_job(pool: &DbPool, webhook_id: i32, id: i64) -> Job {
    let mut conn = pool.get().await.unwrap();
    jobs::get(&mut conn, webhook_id, id).await.unwrap().unwrap()
}

async fn wait_status(pool: &DbPool, j: &Job, status: &str, secs: u64) -> Job {
    eventually(
        Duration::from_secs(secs),
        &format!("job {} {status}", j.id),
        || async {
            let now = read_job(pool, j.webhook_id, j.id).await;
            (now.status.as_str() == status).then_some(now)
        },
    )
    .await
}

async fn assert_counts(pool: &DbPool) {
    let mut conn = pool.get().await.unwrap();
    storage::testing::assert_counts_match_rows(&mut conn).await;
}

/// The event ids of the requests a receiver got on `path` (from the
/// Standard Webhooks `webhook-id`, `msg_<event>_<webhook>`).
fn event_ids(rx: &Receiver, path: &str) -> Vec<String> {
    rx.on(path)
        .iter()
        .map(|r| {
            let id = r.header("webhook-id").unwrap();
            let rest = id.strip_prefix("msg_").unwrap();
            rest[..rest.rfind('_').unwrap()].to_owned()
        })
        .collect()
}

fn counts(ids: &[String]) -> HashMap<&str, usize> {
    let mut m = HashMap::new();
    for i in ids {
        *m.entry(i.as_str()).or_default() += 1;
    }
    m
}

#[tokio::test]
async fn a_receiver_down_for_a_window_gets_every_event_once_after_recover() {
    let app = spawn_app(|c| c.retry_schedule = "200ms".into()).await;
    let up = Arc::new(AtomicBool::new(true));
    let rx = {
        let up = up.clone();
        Receiver::start_with(move |_, _| {
            if AtomicBool::load(&up, Ordering::SeqCst) {
                Reply::ok()
            } else {
                Reply::status(503)
            }
        })
        .await
    };
    let hook = insert_webhook(&app.pool, &rx.url("/r"), "*", Some("k"), true).await;
    app.notify_changed().await;
    let before = app
        .publish(EventType::UserCreated, json!({"user_id": 0}))
        .await;
    rx.wait_for_path("/r", 1, Duration::from_secs(10)).await;

    up.store(false, Ordering::SeqCst);
    let since = Utc::now();
    let mut lost = Vec::new();
    for i in 1..=10 {
        lost.push(
            app.publish(EventType::UserCreated, json!({"user_id": i}))
                .await,
        );
    }
    // Each event: the first attempt and one retry, both failed.
    let rows = settled_rows(&app.pool, hook, 1 + 20).await;
    assert_eq!(
        rows.iter()
            .filter(|r| r.status.as_str() == "failed")
            .count(),
        20
    );
    let outage_requests = rx.on("/r").len();

    up.store(true, Ordering::SeqCst);
    let j = create_job(
        &app.pool,
        NewJob {
            since: Some(since - chrono::Duration::seconds(1)),
            ..job(hook, jobs::JobKind::Recover, 100)
        },
    )
    .await;
    let done = wait_status(&app.pool, &j, "completed", 20).await;
    assert_eq!(done.total, Some(10));
    assert_eq!((done.done, done.failed), (10, 0));
    assert!(done.started_at.is_some() && done.finished_at.is_some());

    let after: Vec<String> = event_ids(&rx, "/r")[outage_requests..].to_vec();
    let c = counts(&after);
    assert_eq!(after.len(), 10, "{after:?}");
    for id in &lost {
        assert_eq!(c.get(id.as_str()), Some(&1), "{id} once");
    }
    assert!(
        !c.contains_key(before.as_str()),
        "delivered before: not sent again"
    );
    // New attempts with the next attempt number, recorded and counted.
    let rows = deliveries(&app.pool, hook).await;
    let recovered: Vec<_> = rows.iter().filter(|r| r.attempt_number == 3).collect();
    assert_eq!(recovered.len(), 10);
    assert!(recovered.iter().all(|r| r.status.as_str() == "success"));
    assert_counts(&app.pool).await;

    // A second recover finds nothing left to do.
    let again = create_job(
        &app.pool,
        NewJob {
            since: Some(since - chrono::Duration::seconds(1)),
            ..job(hook, jobs::JobKind::Recover, 100)
        },
    )
    .await;
    let again = wait_status(&app.pool, &again, "completed", 20).await;
    assert_eq!((again.total, again.done), (Some(0), 0));
    app.cleanup().await;
}

#[tokio::test]
async fn a_webhook_created_after_100_events_gets_all_of_them_in_order() {
    let app = spawn_app(|_| {}).await;
    let rx = Receiver::start(Reply::ok()).await;
    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(
            app.publish(EventType::UserCreated, json!({"user_id": i}))
                .await,
        );
        // Other types in between, which the webhook does not take.
        if i % 10 == 0 {
            app.publish(EventType::TicketCreated, json!({"ticket_id": i}))
                .await;
        }
    }
    let hook = insert_webhook(&app.pool, &rx.url("/late"), "user.created", Some("k"), true).await;
    app.notify_changed().await;
    let j = create_job(
        &app.pool,
        NewJob {
            since_seq: Some(0),
            delivery_status: None,
            ..job(hook, jobs::JobKind::Replay, 2000)
        },
    )
    .await;
    let done = wait_status(&app.pool, &j, "completed", 30).await;
    assert_eq!((done.total, done.done, done.failed), (Some(100), 100, 0));
    assert_eq!(done.unavailable, 0);
    assert_eq!(
        event_ids(&rx, "/late"),
        ids,
        "every event once, in stream order"
    );
    let reqs = rx.on("/late");
    for (i, r) in reqs.iter().enumerate() {
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body, json!({"user_id": i}));
        assert_eq!(r.header("x-webhook-event"), Some("user.created"));
        assert!(webhook_client::verify_x_webhook_signature(
            "k",
            &r.body,
            r.header("x-webhook-signature").unwrap()
        ));
    }
    let rows = deliveries(&app.pool, hook).await;
    assert_eq!(rows.len(), 100);
    assert!(
        rows.iter()
            .all(|r| r.status.as_str() == "success" && r.attempt_number == 1)
    );
    assert_counts(&app.pool).await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_job_is_paced_and_can_be_cancelled() {
    let app = spawn_app(|_| {}).await;
    let rx = Receiver::start(Reply::ok()).await;
    for i in 0..60 {
        app.publish(EventType::UserCreated, json!({"user_id": i}))
            .await;
    }
    let hook = insert_webhook(&app.pool, &rx.url("/slow"), "*", None, true).await;
    app.notify_changed().await;
    let j = create_job(
        &app.pool,
        NewJob {
            since_seq: Some(0),
            ..job(hook, jobs::JobKind::Replay, 10)
        },
    )
    .await;
    let got = rx.wait_for_path("/slow", 15, Duration::from_secs(10)).await;
    let spread = got[14].at.duration_since(got[0].at);
    assert!(
        spread >= Duration::from_millis(1200),
        "15 deliveries at 10/s take about 1.4 s, took {spread:?}"
    );
    {
        let mut conn = app.pool.get().await.unwrap();
        let c = jobs::cancel(&mut conn, hook, j.id).await.unwrap().unwrap();
        assert_eq!(c.status.as_str(), "cancelled");
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let n = rx.count();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(rx.count(), n, "nothing sent after the cancel took effect");
    assert!(n < 60, "stopped early: {n}");
    let after = read_job(&app.pool, hook, j.id).await;
    assert_eq!(after.status.as_str(), "cancelled");
    // A cancelled webhook's next job may start.
    let next = create_job(&app.pool, job(hook, jobs::JobKind::Retry, 10)).await;
    wait_status(&app.pool, &next, "completed", 10).await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_job_survives_a_restart_mid_way_without_duplicates() {
    let db = Arc::new(storage::testing::TestDb::new().await.unwrap());
    let ns = proto_events::Namespace::unique();
    let tweak = |c: &mut delivery_worker::Config| c.job_concurrency = 2;
    let first = spawn_app_on(db.clone(), ns.clone(), tweak).await;
    let rx = Receiver::start(Reply::slow(200, Duration::from_millis(20))).await;
    let mut ids = Vec::new();
    for i in 0..150 {
        ids.push(
            first
                .publish(EventType::PaymentCompleted, json!({"transaction_id": i}))
                .await,
        );
    }
    let hook = insert_webhook(&first.pool, &rx.url("/r"), "payment.*", None, true).await;
    first.notify_changed().await;
    let j = create_job(
        &first.pool,
        NewJob {
            since_seq: Some(0),
            ..job(hook, jobs::JobKind::Replay, 50)
        },
    )
    .await;
    rx.wait_for_path("/r", 40, Duration::from_secs(20)).await;
    let first = first.stop().await;
    let handed_back = read_job(&first.pool, hook, j.id).await;
    assert_eq!(handed_back.status.as_str(), "queued", "{handed_back:?}");
    assert!(handed_back.done >= 40 && handed_back.done < 150);
    assert_eq!(
        usize::try_from(handed_back.done).unwrap(),
        rx.count(),
        "the progress says exactly what was sent"
    );
    drop(first);

    let second = spawn_app_on(db.clone(), ns.clone(), tweak).await;
    let done = wait_status(&second.pool, &j, "completed", 30).await;
    assert_eq!((done.done, done.failed), (150, 0));
    let got = event_ids(&rx, "/r");
    assert_eq!(got.len(), 150, "no duplicates after a clean restart");
    assert!(counts(&got).values().all(|n| *n == 1));
    assert_counts(&second.pool).await;
    second.cleanup().await;
}

#[tokio::test]
async fn a_dead_replicas_job_is_taken_over_and_skips_what_it_sent() {
    let app = spawn_app(|c| c.job_lease = Duration::from_secs(3)).await;
    let rx = Receiver::start(Reply::ok()).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            app.publish(EventType::UserCreated, json!({"user_id": i}))
                .await,
        );
    }
    let hook = insert_webhook(&app.pool, &rx.url("/r"), "*", None, true).await;
    // A job another replica ran up to sequence 5 and then died holding it,
    // after sending (and recording) events 6 and 7.
    let started = Utc::now() - chrono::Duration::seconds(30);
    let id: i64 = {
        #[derive(diesel::QueryableByName)]
        struct Id {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            id: i64,
        }
        let mut conn = app.pool.get().await.unwrap();
        let row: Id = diesel::sql_query(format!(
            "INSERT INTO webhook_jobs (webhook_id, kind, status, since_seq, rate_per_s, total, \
               done, progress_key, end_key, lease_owner, lease_until, started_at) \
             VALUES ({hook}, 'replay', 'running', 0, 500, 20, 5, 5, 20, 'dead-replica', \
               now() + interval '1 second', '{}') RETURNING id",
            started.to_rfc3339()
        ))
        .get_result(&mut conn)
        .await
        .unwrap();
        for e in &ids[5..7] {
            storage::deliveries::insert(
                &mut conn,
                NewDelivery {
                    webhook_id: hook,
                    event_type: "user.created".into(),
                    payload: json!({}),
                    response_status: Some(200),
                    response_body: None,
                    status: storage::models::DeliveryStatus::Success,
                    error_message: None,
                    attempt_number: 1,
                    delivered_at: Some(Utc::now()),
                    next_retry_at: None,
                    event_id: Some(e.clone()),
                    traceparent: None,
                    body: None,
                },
            )
            .await
            .unwrap();
        }
        row.id
    };
    app.notify_changed().await;
    let j = read_job(&app.pool, hook, id).await;
    let done = wait_status(&app.pool, &j, "completed", 20).await;
    assert_eq!(done.done, 20, "5 before, 2 skipped, 13 sent");
    assert_eq!(event_ids(&rx, "/r"), ids[7..].to_vec());
    assert_counts(&app.pool).await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_replay_older_than_the_stream_says_what_is_unavailable() {
    let app = spawn_app(|_| {}).await;
    let rx = Receiver::start(Reply::ok()).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            app.publish(EventType::UserCreated, json!({"user_id": i}))
                .await,
        );
    }
    // The first four are gone (age or size limits do the same).
    let js = async_nats::jetstream::new(app.client.clone());
    let stream = js.get_stream(app.ns.stream()).await.unwrap();
    stream.purge().sequence(5).await.unwrap();
    let hook = insert_webhook(&app.pool, &rx.url("/r"), "user.created", None, true).await;
    let j = create_job(
        &app.pool,
        NewJob {
            since_seq: Some(0),
            delivery_status: None,
            ..job(hook, jobs::JobKind::Replay, 1000)
        },
    )
    .await;
    let done = wait_status(&app.pool, &j, "completed", 20).await;
    assert_eq!(done.unavailable, 4);
    assert_eq!((done.total, done.done), (Some(6), 6));
    assert_eq!(event_ids(&rx, "/r"), ids[4..].to_vec());

    // By time: a window from before the first stored event.
    let j = create_job(
        &app.pool,
        NewJob {
            since: Some(Utc::now() - chrono::Duration::hours(1)),
            delivery_status: None,
            ..job(hook, jobs::JobKind::Replay, 1000)
        },
    )
    .await;
    let done = wait_status(&app.pool, &j, "completed", 20).await;
    assert_eq!(done.unavailable, 4, "an upper bound: sequences 1-4");
    assert_eq!(done.done, 6);
    app.cleanup().await;
}

#[tokio::test]
async fn bulk_retry_sends_each_failed_event_once_unless_a_retry_is_pending() {
    let app = spawn_app(|_| {}).await;
    let rx = Receiver::start(Reply::ok()).await;
    let hook = insert_webhook(&app.pool, &rx.url("/r"), "*", None, true).await;
    let mut conn = app.pool.get().await.unwrap();
    let row = |event: &str, status: &str, attempt: i32| NewDelivery {
        webhook_id: hook,
        event_type: "user.created".into(),
        payload: json!({"event": event}),
        response_status: None,
        response_body: None,
        status: status.parse().unwrap(),
        error_message: None,
        attempt_number: attempt,
        delivered_at: None,
        next_retry_at: (status == "pending").then(|| Utc::now() + chrono::Duration::hours(5)),
        event_id: Some(event.into()),
        traceparent: None,
        body: None,
    };
    for (event, status, attempt) in [
        ("a", "failed", 1),
        ("a", "failed", 2),
        // Failed, then succeeded: recover leaves it, bulk retry sends it.
        ("b", "failed", 1),
        ("b", "success", 2),
        // A retry is pending already.
        ("c", "failed", 1),
        ("c", "pending", 2),
        ("d", "success", 1),
    ] {
        storage::deliveries::insert(&mut conn, row(event, status, attempt))
            .await
            .unwrap();
    }
    drop(conn);
    let j = create_job(&app.pool, job(hook, jobs::JobKind::Retry, 100)).await;
    let done = wait_status(&app.pool, &j, "completed", 20).await;
    assert_eq!((done.total, done.done), (Some(2), 2));
    let mut got = event_ids(&rx, "/r");
    got.sort();
    assert_eq!(got, ["a", "b"]);
    let rows = deliveries(&app.pool, hook).await;
    let a3 = rows
        .iter()
        .find(|r| r.event_id.as_deref() == Some("a") && r.attempt_number == 3);
    assert!(
        a3.is_some_and(|r| r.status.as_str() == "success"),
        "next attempt number"
    );

    // Recover over the same rows: only the event whose last attempt failed
    // (none now: a and b succeeded, c has a retry pending).
    let j = create_job(
        &app.pool,
        NewJob {
            since: Some(Utc::now() - chrono::Duration::hours(1)),
            ..job(hook, jobs::JobKind::Recover, 100)
        },
    )
    .await;
    let done = wait_status(&app.pool, &j, "completed", 20).await;
    assert_eq!(done.total, Some(0));
    assert_counts(&app.pool).await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_paused_job_keeps_its_progress_and_resumes_where_it_stopped() {
    let app = spawn_app(|c| c.job_poll = Duration::from_millis(100)).await;
    let rx = Receiver::start(Reply::ok()).await;
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(
            app.publish(EventType::UserCreated, json!({"user_id": i}))
                .await,
        );
    }
    let hook = insert_webhook(&app.pool, &rx.url("/p"), "*", None, true).await;
    app.notify_changed().await;
    let j = create_job(
        &app.pool,
        NewJob {
            since_seq: Some(0),
            ..job(hook, jobs::JobKind::Replay, 20)
        },
    )
    .await;
    rx.wait_for_path("/p", 10, Duration::from_secs(10)).await;
    {
        let mut conn = app.pool.get().await.unwrap();
        let changed = jobs::pause(&mut conn, hook, j.id).await.unwrap().unwrap();
        assert!(matches!(changed, jobs::Changed::Done(ref p) if p.status.as_str() == "paused"));
    }
    // The chunk in flight ends (about a second at 20/s), then nothing more.
    eventually(
        Duration::from_secs(10),
        "the worker lets go of the paused job",
        || async {
            let before = rx.count();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            (rx.count() == before).then_some(())
        },
    )
    .await;
    let sent = rx.count();
    let now = read_job(&app.pool, hook, j.id).await;
    assert_eq!(
        now.status.as_str(),
        "paused",
        "no replica claims a paused job"
    );
    assert!(sent < 60, "paused before the end: {sent}");
    assert_eq!(
        usize::try_from(now.done).unwrap(),
        sent,
        "the progress counts what was in flight at the pause"
    );
    {
        let mut conn = app.pool.get().await.unwrap();
        // A second job of the webhook finds the paused one.
        match jobs::create(&mut conn, job(hook, jobs::JobKind::Retry, 10))
            .await
            .unwrap()
        {
            Created::Existing(e) => assert_eq!(e.id, j.id),
            Created::New(n) => panic!("a paused job is the webhook's unfinished job: {n:?}"),
        }
        let changed = jobs::resume(&mut conn, hook, j.id).await.unwrap().unwrap();
        assert!(matches!(changed, jobs::Changed::Done(ref r) if r.status.as_str() == "queued"));
    }
    let done = wait_status(&app.pool, &j, "completed", 30).await;
    assert_eq!((done.done, done.failed), (60, 0));
    assert_eq!(event_ids(&rx, "/p"), ids, "every event once, in order");
    {
        let mut conn = app.pool.get().await.unwrap();
        // A finished job is neither paused nor resumed.
        let again = jobs::pause(&mut conn, hook, j.id).await.unwrap().unwrap();
        assert!(matches!(again, jobs::Changed::Refused(ref f) if f.status.as_str() == "completed"));
        let again = jobs::resume(&mut conn, hook, j.id).await.unwrap().unwrap();
        assert!(matches!(again, jobs::Changed::Refused(_)));
        assert!(
            jobs::pause(&mut conn, hook, j.id + 1000)
                .await
                .unwrap()
                .is_none()
        );
    }
    let (_, text) = app.get("/metrics").await;
    let m = |name: &str| metric(&text, name);
    assert_eq!(m("delivery_jobs_claimed_total{kind=\"replay\"}"), 2);
    assert_eq!(
        m("delivery_jobs_ended_total{kind=\"replay\",end=\"stopped\"}"),
        1
    );
    assert_eq!(
        m("delivery_jobs_ended_total{kind=\"replay\",end=\"completed\"}"),
        1
    );
    assert_eq!(
        m("delivery_job_items_total{kind=\"replay\",outcome=\"success\"}"),
        60
    );
    assert_eq!(m("delivery_jobs_running"), 0);
    assert_counts(&app.pool).await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_job_survives_kill_9_of_its_worker() {
    // An in-process worker consumes the events before the webhook exists,
    // so only the replay job delivers them.
    let app = spawn_app(|_| {}).await;
    let n = 200;
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            app.publish(EventType::UserCreated, json!({"user_id": i}))
                .await,
        );
    }
    eventually(
        Duration::from_secs(20),
        "the live consumer took every event",
        || async {
            let (_, text) = app.get("/metrics").await;
            (metric(&text, "delivery_events_total") == n as u64).then_some(())
        },
    )
    .await;
    let app = app.stop().await;
    let rx = Receiver::start(Reply::slow(200, Duration::from_millis(30))).await;
    let hook = insert_webhook(&app.pool, &rx.url("/k"), "user.created", None, true).await;
    let j = create_job(
        &app.pool,
        NewJob {
            since_seq: Some(0),
            delivery_status: None,
            ..job(hook, jobs::JobKind::Replay, 100)
        },
    )
    .await;
    let fast_jobs = [
        ("DELIVERY_JOB_LEASE", "3s"),
        ("DELIVERY_JOB_POLL", "200ms"),
        ("DELIVERY_JOB_CONCURRENCY", "2"),
    ];
    let mut first = start_binary(&app.db, &app.ns, &fast_jobs);
    rx.wait_for_path("/k", 50, Duration::from_secs(30)).await;
    first.kill().expect("SIGKILL");
    first.wait().unwrap();
    let received_before_kill = rx.count();
    let recorded_before_kill = deliveries(&app.pool, hook).await.len();
    let stored = read_job(&app.pool, hook, j.id).await;
    assert_eq!(
        stored.status.as_str(),
        "running",
        "the dead worker still holds it"
    );

    let mut second = start_binary(&app.db, &app.ns, &fast_jobs);
    let done = wait_status(&app.pool, &j, "completed", 60).await;
    second.kill().expect("SIGKILL");
    second.wait().unwrap();
    assert_eq!((done.done, done.failed), (n as i64, 0));
    let got = event_ids(&rx, "/k");
    let per = counts(&got);
    assert_eq!(per.len(), n, "every event arrived");
    assert!(ids.iter().all(|id| per.contains_key(id.as_str())));
    let dupes = got.len() - n;
    let in_flight_at_kill = received_before_kill - recorded_before_kill;
    eprintln!(
        "before the kill: {received_before_kill} requests, {recorded_before_kill} rows, \
         progress {}; after: {} requests, {dupes} repeated",
        stored.done,
        got.len()
    );
    assert!(
        dupes <= in_flight_at_kill,
        "{dupes} repeated > {in_flight_at_kill} requests in flight at the kill"
    );
    assert_counts(&app.pool).await;
    app.cleanup().await;
}
