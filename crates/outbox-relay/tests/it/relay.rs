use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;

use crate::helpers::{TestOutbox, TestRelay};

#[tokio::test]
async fn relays_committed_rows_in_id_order_then_deletes_them() {
    let t = TestOutbox::new().await;
    t.insert(1, 250).await;
    let mut cfg = t.config();
    cfg.batch_size = 100;
    let relay = TestRelay::spawn(cfg).await;
    assert_eq!(t.wait_stream_len(250, Duration::from_secs(10)).await, 250);

    let stored = t.stored().await;
    for (i, (seq, msg_id, env)) in stored.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
        assert_eq!(env["payload"]["user_id"], i as i64 + 1, "id order");
        assert_eq!(
            env["id"].as_str().unwrap(),
            msg_id,
            "Nats-Msg-Id is the envelope id"
        );
        assert_eq!(env["payload"]["first_name"], "Иван 👋");
        let raw = serde_json::to_vec(env).unwrap();
        proto_events::Envelope::parse(&raw).expect("the Rust side accepts the envelope");
    }
    // Deleted once stored.
    let start = Instant::now();
    while t.outbox_len().await > 0 && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(t.outbox_len().await, 0);

    assert_eq!(relay.get("/healthz").await.0, 200);
    let (status, body) = relay.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, metrics) = relay.get("/metrics").await;
    assert!(
        metrics.contains("outbox_relay_published_total 250"),
        "{metrics}"
    );
    assert!(
        metrics.contains("outbox_relay_duplicates_total 0"),
        "{metrics}"
    );
    assert!(metrics.contains("outbox_depth 0"), "{metrics}");
    assert!(metrics.contains("outbox_oldest_age_seconds"), "{metrics}");
    relay.stop().await;
    t.cleanup().await;
}

#[tokio::test]
async fn a_notify_wakes_the_relay_long_before_the_poll() {
    let t = TestOutbox::new().await;
    let mut cfg = t.config();
    cfg.poll_interval = Duration::from_secs(60);
    let relay = TestRelay::spawn(cfg).await;
    // Let the listener and the stream come up.
    let start = Instant::now();
    while relay.relay.metrics.listening.get() != 1 && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for round in 0..3 {
        let sent = Instant::now();
        t.insert(round, 1).await;
        assert_eq!(
            t.wait_stream_len(round as u64 + 1, Duration::from_secs(5))
                .await,
            round as u64 + 1
        );
        assert!(
            sent.elapsed() < Duration::from_secs(2),
            "took {:?}",
            sent.elapsed()
        );
    }
    relay.stop().await;
    t.cleanup().await;
}

#[tokio::test]
async fn rows_left_when_nothing_listens_are_found_by_the_poll() {
    let t = TestOutbox::new().await;
    // Rows from before the relay started: no notice will come for them.
    t.insert(1, 10).await;
    let mut cfg = t.config();
    cfg.poll_interval = Duration::from_millis(200);
    let relay = TestRelay::spawn(cfg).await;
    assert_eq!(t.wait_stream_len(10, Duration::from_secs(10)).await, 10);
    relay.stop().await;
    t.cleanup().await;
}

#[tokio::test]
async fn two_relays_never_publish_a_row_twice() {
    let t = TestOutbox::new().await;
    let mut cfg = t.config();
    cfg.batch_size = 50;
    let a = TestRelay::spawn(cfg.clone()).await;
    let b = TestRelay::spawn(cfg).await;
    let total = 3000;
    for chunk in 0..30 {
        t.insert(chunk * 100 + 1, 100).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        t.wait_stream_len(total, Duration::from_secs(20)).await,
        total
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(t.stream_len().await, total);
    let (pa, pb) = (
        a.relay.metrics.published.get(),
        b.relay.metrics.published.get(),
    );
    assert_eq!(pa + pb, total, "a {pa} + b {pb}");
    assert_eq!(a.relay.metrics.duplicates.get(), 0);
    assert_eq!(b.relay.metrics.duplicates.get(), 0);
    let ids: HashSet<_> = t.stored().await.into_iter().map(|(_, id, _)| id).collect();
    assert_eq!(ids.len() as u64, total);
    assert_eq!(t.outbox_len().await, 0);
    a.stop().await;
    b.stop().await;
    t.cleanup().await;
}

#[tokio::test]
async fn a_row_jetstream_already_has_is_dropped_as_a_duplicate() {
    let t = TestOutbox::new().await;
    let id = uuid::Uuid::now_v7().to_string();
    let body = serde_json::json!({
        "id": id, "type": "ticket.created", "timestamp": "2026-01-01T00:00:00Z",
        "payload": {"ticket_id": 1, "user_id": 2, "title": "t", "status": "open",
                    "priority": "normal", "has_media": false}
    });
    // As if a relay had published the row and died before its commit.
    t.ns.ensure_streams(&t.js).await.unwrap();
    let mut h = HeaderMap::new();
    h.insert("Nats-Msg-Id", id.as_str());
    t.js.publish_with_headers(
        t.ns.event_subject("ticket.created"),
        h,
        body.to_string().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let mut conn = t.conn().await;
    {
        use diesel_async::RunQueryDsl;
        diesel::sql_query("INSERT INTO event_outbox (envelope) VALUES ($1::jsonb)")
            .bind::<diesel::sql_types::Text, _>(body.to_string())
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let relay = TestRelay::spawn(t.config()).await;
    let start = Instant::now();
    while relay.relay.metrics.duplicates.get() == 0 && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(relay.relay.metrics.duplicates.get(), 1);
    assert_eq!(t.stream_len().await, 1);
    assert_eq!(t.outbox_len().await, 0);
    relay.stop().await;
    t.cleanup().await;
}

#[tokio::test]
async fn migration_is_idempotent_and_refuses_bad_envelopes() {
    let t = TestOutbox::new().await;
    outbox_relay::migrate(&t.db.url).await.unwrap();
    let mut conn = t.conn().await;
    use diesel_async::RunQueryDsl;
    for bad in [
        r#"{"id":"","type":"user.created","timestamp":"x","payload":{}}"#,
        r#"{"id":"a","type":"user created","timestamp":"x","payload":{}}"#,
        r#"{"id":"a","type":"user.created","timestamp":"x","payload":[]}"#,
        r#"{"type":"user.created","timestamp":"x","payload":{}}"#,
        r#"{"id":"a","timestamp":"x","payload":{}}"#,
        r#"{"id":"a","type":"user.created","payload":{}}"#,
        r#"{"id":"a","type":"user.created","timestamp":"x"}"#,
    ] {
        let r = diesel::sql_query("INSERT INTO event_outbox (envelope) VALUES ($1::jsonb)")
            .bind::<diesel::sql_types::Text, _>(bad)
            .execute(&mut conn)
            .await;
        assert!(r.is_err(), "{bad} was accepted");
    }
}

#[tokio::test]
async fn shutdown_finishes_and_leaves_unrelayed_rows_in_place() {
    let t = TestOutbox::new().await;
    let relay = TestRelay::spawn(t.config()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped = Instant::now();
    relay.stop().await;
    assert!(stopped.elapsed() < Duration::from_secs(5));
    // Nothing relays now: rows wait for the next relay.
    t.insert(1, 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(t.outbox_len().await, 5);
    let relay = TestRelay::spawn(t.config()).await;
    assert_eq!(t.wait_stream_len(5, Duration::from_secs(10)).await, 5);
    relay.stop().await;
    t.cleanup().await;
}

/// The outbox as issue 14 created it: `envelope jsonb`, checks on jsonb.
const JSONB_OUTBOX: &str = r"
DROP TABLE event_outbox;
CREATE TABLE event_outbox (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    envelope   JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT event_outbox_id_ok CHECK (coalesce(
        jsonb_typeof(envelope -> 'id') = 'string'
        AND length(envelope ->> 'id') BETWEEN 1 AND 64, false)),
    CONSTRAINT event_outbox_type_ok CHECK (coalesce(
        (envelope ->> 'type') ~ '^[a-z0-9_]+(\.[a-z0-9_]+)+$', false)),
    CONSTRAINT event_outbox_timestamp_ok CHECK (coalesce(jsonb_typeof(envelope -> 'timestamp') = 'string', false)),
    CONSTRAINT event_outbox_payload_ok CHECK (coalesce(jsonb_typeof(envelope -> 'payload') = 'object', false))
);
CREATE TRIGGER event_outbox_notify
    AFTER INSERT ON event_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION event_outbox_notify();
";

#[tokio::test]
async fn migrate_turns_a_jsonb_outbox_into_json_and_the_text_is_published_as_written() {
    use diesel::sql_types::Text;
    use diesel_async::{RunQueryDsl, SimpleAsyncConnection};

    #[derive(diesel::QueryableByName)]
    struct ColumnType {
        #[diesel(sql_type = Text)]
        t: String,
    }
    let t = TestOutbox::new().await;
    let mut conn = t.conn().await;
    conn.batch_execute(JSONB_OUTBOX).await.unwrap();
    // A row waiting in the old outbox survives the upgrade.
    t.insert(1, 1).await;
    let column_type = "SELECT format_type(atttypid, atttypmod) AS t FROM pg_attribute \
         WHERE attrelid = 'event_outbox'::regclass AND attname = 'envelope'";
    let before: ColumnType = diesel::sql_query(column_type)
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(before.t, "jsonb");
    outbox_relay::migrate(&t.db.url).await.unwrap();
    outbox_relay::migrate(&t.db.url).await.unwrap();
    let after: ColumnType = diesel::sql_query(column_type)
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(after.t, "json");
    assert_eq!(t.outbox_len().await, 1);
    // The checks hold on the json column.
    for bad in [
        r#"{"id":"","type":"user.created","timestamp":"x","payload":{}}"#,
        r#"{"id":"a","type":"user created","timestamp":"x","payload":{}}"#,
        r#"{"id":"a","type":"user.created","timestamp":"x","payload":[]}"#,
        r#"{"id":"a","type":"user.created","payload":{}}"#,
    ] {
        let r = diesel::sql_query("INSERT INTO event_outbox (envelope) VALUES ($1::json)")
            .bind::<Text, _>(bad)
            .execute(&mut conn)
            .await;
        assert!(r.is_err(), "{bad} was accepted");
    }
    // Unsorted keys, Python's spacing, raw UTF-8: published byte for byte.
    let body = r#"{"id": "order-1", "type": "user.created", "timestamp": "2026-01-01T00:00:00Z", "payload": {"user_id": 2, "telegram_id": 5, "username": null, "first_name": "Иван 👋", "a": [3, 1]}}"#;
    diesel::sql_query("INSERT INTO event_outbox (envelope) VALUES ($1::json)")
        .bind::<Text, _>(body)
        .execute(&mut conn)
        .await
        .unwrap();
    let relay = TestRelay::spawn(t.config()).await;
    assert_eq!(t.wait_stream_len(2, Duration::from_secs(10)).await, 2);
    let stream = t.js.get_stream(t.ns.stream()).await.unwrap();
    let m = stream.get_raw_message(2).await.unwrap();
    assert_eq!(std::str::from_utf8(&m.payload).unwrap(), body);
    assert_eq!(
        m.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some("order-1")
    );
    relay.stop().await;
    t.cleanup().await;
}
