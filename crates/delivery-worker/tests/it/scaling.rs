//! Several replicas on one consumer; a replica killed mid-run.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use storage::testing::{diesel, diesel_async};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use proto_events::{EventType, Namespace, Publisher};
use serde_json::json;
use storage::testing::TestDb;

use crate::helpers::*;

#[tokio::test]
async fn two_workers_share_one_consumer_without_duplicates() {
    let tweak = |c: &mut delivery_worker::Config| {
        c.batch_size = 5;
        c.max_messages = 10;
    };
    let a = spawn_app(tweak).await;
    let b = spawn_app_on(a.db.clone(), a.ns.clone(), tweak).await;
    let rx = Receiver::start(Reply::slow(200, Duration::from_millis(5))).await;
    let hook = insert_webhook(&a.pool, &rx.url("/h"), "*", Some("k"), true).await;
    a.notify_changed().await;
    let n = 300;
    let mut ids = HashSet::new();
    for i in 0..n {
        ids.insert(
            a.publish(EventType::TicketMessageAdded, json!({"ticket_id": i}))
                .await,
        );
    }
    rx.wait_for_path("/h", n, Duration::from_secs(30)).await;
    let rows = settled_rows(&a.pool, hook, n).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = rx.on("/h");
    assert_eq!(got.len(), n, "every event once");
    let msg_ids: HashSet<_> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    assert_eq!(msg_ids.len(), n, "no duplicates");
    assert_eq!(rows.len(), n);
    let row_events: HashSet<_> = rows.iter().filter_map(|r| r.event_id.clone()).collect();
    assert_eq!(row_events, ids);
    assert_eq!(webhook(&a.pool, hook).await.success_count, n as i64);
    storage::testing::assert_counts_match_rows(&mut a.pool.get().await.unwrap()).await;
    let (_, ma) = a.get("/metrics").await;
    let (_, mb) = b.get("/metrics").await;
    let (ea, eb) = (
        metric(&ma, "delivery_events_total"),
        metric(&mb, "delivery_events_total"),
    );
    assert_eq!(ea + eb, n as u64);
    assert!(ea > 0 && eb > 0, "both replicas worked: {ea} + {eb}");
    b.stop().await;
    a.cleanup().await;
}

#[tokio::test]
async fn a_worker_killed_mid_run_loses_nothing() {
    telemetry::init_test_logging();
    let db = Arc::new(TestDb::new().await.unwrap());
    let ns = Namespace::unique();
    let pool = db.pool().unwrap();
    let client = async_nats::connect(nats_url()).await.unwrap();
    let publisher = Publisher::new(client.clone(), ns.clone());
    publisher.ensure_stream().await.unwrap();
    // A slow receiver holds requests while the worker is killed.
    let rx = Receiver::start(Reply::slow(200, Duration::from_millis(300))).await;
    let h1 = insert_webhook(&pool, &rx.url("/one"), "*", Some("k1"), true).await;
    let h2 = insert_webhook(&pool, &rx.url("/two"), "ticket.*", None, true).await;

    let mut first = start_binary(&db, &ns, &[]);
    let n = 60;
    let mut events = Vec::new();
    for i in 0..n {
        let p = proto_events::Envelope::new(
            EventType::TicketCreated,
            json!({"ticket_id": i, "title": "Проблема 🚨"})
                .as_object()
                .unwrap()
                .clone(),
        );
        publisher.publish(&p).await.unwrap();
        events.push(p.id);
    }
    // Let it get going, then kill -9 while requests are in flight.
    // (some attempts recorded, others still held by the receiver).
    eventually(Duration::from_secs(20), "first rows", || async {
        use storage::schema::webhook_deliveries::dsl as d;
        let mut conn = pool.get().await.ok()?;
        let n: i64 = d::webhook_deliveries
            .count()
            .get_result(&mut conn)
            .await
            .ok()?;
        (n >= 10).then_some(())
    })
    .await;
    first.kill().expect("SIGKILL");
    first.wait().unwrap();
    let received_before_kill = rx.count();
    let recorded_before_kill = {
        use storage::schema::webhook_deliveries::dsl as d;
        let mut conn = pool.get().await.unwrap();
        d::webhook_deliveries
            .count()
            .get_result::<i64>(&mut conn)
            .await
            .unwrap() as usize
    };

    let mut second = start_binary(&db, &ns, &[]);
    let expected: HashSet<(String, i32)> = events
        .iter()
        .flat_map(|e| [(e.clone(), h1), (e.clone(), h2)])
        .collect();
    let success = eventually(
        Duration::from_secs(60),
        "every event × webhook delivered",
        || async {
            use storage::schema::webhook_deliveries::dsl as d;
            let mut conn = pool.get().await.ok()?;
            let rows: Vec<(Option<String>, i32)> = d::webhook_deliveries
                .filter(d::status.eq("success"))
                .select((d::event_id, d::webhook_id))
                .load(&mut conn)
                .await
                .ok()?;
            let got: HashSet<(String, i32)> = rows
                .iter()
                .filter_map(|(e, w)| Some((e.clone()?, *w)))
                .collect();
            (got == expected).then_some(rows)
        },
    )
    .await;
    // Duplicates only for deliveries that were in flight when the first
    // worker died (receivers de-duplicate them by webhook-id).
    let mut per: HashMap<(Option<String>, i32), usize> = HashMap::new();
    for r in &success {
        *per.entry(r.clone()).or_default() += 1;
    }
    let dupes: usize = per.values().map(|c| c - 1).sum();
    eprintln!(
        "before the kill: {received_before_kill} requests, {recorded_before_kill} rows; \
         after: {} success rows, {dupes} duplicate rows, {} requests",
        success.len(),
        rx.count()
    );
    let in_flight_at_kill = received_before_kill - recorded_before_kill;
    assert!(
        dupes <= in_flight_at_kill,
        "{dupes} duplicate rows > {in_flight_at_kill} requests in flight at the kill"
    );
    assert!(
        rx.count() <= expected.len() + in_flight_at_kill,
        "only requests in flight at the kill are repeated"
    );
    for r in rx.on("/one") {
        assert!(webhook_client::verify_x_webhook_signature(
            "k1",
            &r.body,
            r.header("x-webhook-signature").unwrap()
        ));
    }

    // SIGTERM: a graceful stop with exit code 0.
    test_support::terminate(second.id()).expect("SIGTERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "worker did not stop in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(exit.code(), Some(0), "graceful shutdown exits 0");
    let js = async_nats::jetstream::new(client);
    let _ = js.delete_stream(ns.stream()).await;
    let _ = js.delete_stream(ns.deadletter_stream()).await;
}
