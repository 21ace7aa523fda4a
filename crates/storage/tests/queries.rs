//! The services' queries against the real Postgres: webhooks and their
//! delivery pages, the worker's batches and retry queue, test attempts,
//! manual retries and the rows a job sends again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel_async::RunQueryDsl;
use storage::attempts::{
    AttemptSummary, Batch, CircuitSettings, ClaimedUpdate, HealthSettings, NewRow, RowRef,
    WebhookBump, bump_webhooks, claim_due, insert_rows, queue_size, record,
};
use storage::deliveries::{Recorded, SuccessKey, lock_successes};
use storage::jobs::{JobKind, RowsToResend};
use storage::models::{BodyFormat, Delivery, DeliveryStatus, NewDelivery, Webhook};
use storage::testing::{TestDb, assert_counts_match_rows};
use storage::webhooks::{self, Cursor, NewWebhook, Retry, WebhookChanges};
use storage::{Connection, DbPool};

async fn webhook(conn: &mut Connection, name: &str, event_type: &str) -> Webhook {
    webhooks::insert_webhook(
        conn,
        NewWebhook {
            name: name.to_owned(),
            url: Some(format!("http://127.0.0.1:9/{name}")),
            secret: Some(format!("secret-{name}")),
            event_type: event_type.to_owned(),
            is_active: true,
            description: None,
            body_format: BodyFormat::Canonical,
            event_types: None,
            payload_filter: None,
            headers: None,
            auth: None,
            signature_scheme: storage::subscription::SignatureScheme::Hmac,
            mode: storage::models::WebhookMode::Push,
            policy: Default::default(),
        },
    )
    .await
    .unwrap()
}

fn row(webhook_id: i32, event: &str, status: DeliveryStatus, attempt: i32) -> NewRow {
    let now = Utc::now();
    NewRow {
        webhook_id,
        event_type: "user.created".to_owned(),
        payload: "{\"n\": 1}".into(),
        body: None,
        status,
        response_status: (status != DeliveryStatus::Pending).then_some(500),
        response_body: None,
        error_message: None,
        attempt_number: attempt,
        delivered_at: (status == DeliveryStatus::Success).then_some(now),
        next_retry_at: (status == DeliveryStatus::Pending).then_some(now),
        event_id: Some(event.to_owned()),
        created_at: now,
        traceparent: None,
        held: None,
    }
}

fn health() -> HealthSettings {
    HealthSettings {
        disable_after: Duration::from_secs(3600),
        circuit: CircuitSettings::default(),
    }
}

fn attempt(webhook_id: i32, success: bool, at: DateTime<Utc>) -> AttemptSummary {
    AttemptSummary {
        webhook_id,
        at,
        success,
        gone: false,
        claimed: None,
    }
}

/// Records `batch` as the worker does (no keys to check).
async fn write(pool: &DbPool, batch: Batch) -> storage::attempts::Written {
    record(pool, &[], health(), |_| (batch.clone(), 0))
        .await
        .unwrap()
}

/// A fresh database, its pool and a connection outside the pool.
async fn fresh() -> (TestDb, DbPool, Connection) {
    let db = TestDb::new().await.unwrap();
    let pool = db.pool().unwrap();
    let conn = storage::connect(&db.url).await.unwrap();
    (db, pool, conn)
}

async fn get(conn: &mut Connection, id: i32) -> Webhook {
    webhooks::get_webhook(conn, id).await.unwrap().unwrap()
}

#[tokio::test]
async fn webhooks_are_created_listed_changed_counted_and_deleted() {
    let (_db, pool, mut conn) = fresh().await;
    let a = webhook(&mut conn, "a", "user.created").await;
    let b = webhook(&mut conn, "b", "user.*").await;
    let c = webhook(&mut conn, "c", "user.created").await;

    let (page, total) = webhooks::list_webhooks(&mut conn, None, None, None, 2, 0)
        .await
        .unwrap();
    assert_eq!(total, 3);
    assert_eq!(page.iter().map(|w| w.id).collect::<Vec<_>>(), [c.id, b.id]);
    let (page, total) = webhooks::list_webhooks(&mut conn, Some("user.created"), None, None, 10, 1)
        .await
        .unwrap();
    assert_eq!((total, page.len()), (2, 1));

    let changed = webhooks::update_webhook(
        &mut conn,
        b.id,
        WebhookChanges {
            is_active: Some(false),
            description: Some(Some("off".to_owned())),
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!changed.is_active);
    assert_eq!(changed.description.as_deref(), Some("off"));
    assert_eq!(changed.url, b.url, "what a PATCH leaves out stays");
    let (_, inactive) = webhooks::list_webhooks(&mut conn, None, None, Some(false), 10, 0)
        .await
        .unwrap();
    assert_eq!(inactive, 1);
    let active: Vec<i32> = webhooks::active(&pool)
        .await
        .unwrap()
        .iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(active, [a.id, c.id]);

    let stats = webhooks::stats(&mut conn).await.unwrap();
    assert_eq!((stats.total_webhooks, stats.active_webhooks), (3, 2));
    assert_eq!(stats.deliveries.total, 0);

    assert!(webhooks::delete_webhook(&mut conn, a.id).await.unwrap());
    assert!(!webhooks::delete_webhook(&mut conn, a.id).await.unwrap());
    assert!(
        webhooks::get_webhook(&mut conn, a.id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        webhooks::update_webhook(&mut conn, a.id, WebhookChanges::default())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_rotated_secret_keeps_the_previous_one_until_its_expiry() {
    let (_db, _, mut conn) = fresh().await;
    let w = webhook(&mut conn, "r", "*").await;
    let until = Utc::now() + chrono::Duration::hours(1);
    let r = webhooks::rotate_secret(&mut conn, w.id, "new".to_owned(), Some(until))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.secret.as_deref(), Some("new"));
    assert_eq!(r.previous_secret, w.secret);
    assert!(r.previous_secret_expires_at.is_some());
    let r = webhooks::rotate_secret(&mut conn, w.id, "newer".to_owned(), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.previous_secret, r.previous_secret_expires_at),
        (None, None)
    );
    assert!(
        webhooks::rotate_secret(&mut conn, 999, "x".to_owned(), None)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_batch_writes_rows_counters_and_webhook_statistics() {
    let (_db, pool, mut conn) = fresh().await;
    let w = webhook(&mut conn, "w", "*").await;
    let t0 = Utc::now();
    let written = write(
        &pool,
        Batch {
            inserts: vec![
                row(w.id, "e1", DeliveryStatus::Success, 1),
                row(w.id, "e2", DeliveryStatus::Failed, 1),
                row(w.id, "e2", DeliveryStatus::Pending, 2),
                // a webhook that does not exist: left out
                row(w.id + 100, "e3", DeliveryStatus::Failed, 1),
            ],
            attempts: vec![attempt(w.id, true, t0), attempt(w.id, false, t0)],
            ..Default::default()
        },
    )
    .await;
    assert!(storage::attempts::disabled(&written.moved).is_empty());
    assert_counts_match_rows(&mut conn).await;
    let after = get(&mut conn, w.id).await;
    assert_eq!((after.success_count, after.failure_count), (1, 1));
    assert!(after.failing_since.is_some(), "failing since the failure");
    assert_eq!(queue_size(&pool).await.unwrap(), (1, 1));
    assert_eq!(
        storage::deliveries::recorded_webhooks(&pool, "e2")
            .await
            .unwrap(),
        [w.id]
    );

    // The poller claims the due row under a lease; claimed again it is not.
    let claimed = claim_due(&pool, 10, Duration::from_secs(60), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].attempt_number, 2);
    assert_eq!(claimed[0].secret, w.secret);
    assert!(
        claim_due(&pool, 10, Duration::from_secs(60), Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty()
    );
    let claimed = RowRef {
        id: claimed[0].id,
        created_at: claimed[0].created_at,
    };
    // Its attempt succeeds: the row leaves `pending`, failing_since clears.
    let t1 = Utc::now();
    write(
        &pool,
        Batch {
            updates: vec![ClaimedUpdate {
                row: claimed,
                status: DeliveryStatus::Success,
                response_status: Some(200),
                response_body: None,
                error_message: None,
                delivered_at: Some(t1),
                next_retry_at: None,
                held: None,
            }],
            attempts: vec![AttemptSummary {
                claimed: Some(claimed.id),
                ..attempt(w.id, true, t1)
            }],
            ..Default::default()
        },
    )
    .await;
    assert_counts_match_rows(&mut conn).await;
    let after = get(&mut conn, w.id).await;
    assert_eq!((after.success_count, after.failure_count), (2, 1));
    assert_eq!(after.failing_since, None);
    assert_eq!(queue_size(&pool).await.unwrap(), (0, 0));

    // An update of a row no longer pending changes nothing and its
    // success is not counted.
    let again = write(
        &pool,
        Batch {
            updates: vec![ClaimedUpdate {
                row: claimed,
                status: DeliveryStatus::Failed,
                response_status: Some(500),
                response_body: None,
                error_message: None,
                delivered_at: None,
                next_retry_at: None,
                held: None,
            }],
            attempts: vec![AttemptSummary {
                claimed: Some(claimed.id),
                ..attempt(w.id, true, t1)
            }],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(again.refused, 1);
    assert_eq!(get(&mut conn, w.id).await.success_count, 2);
}

#[tokio::test]
async fn pending_rows_are_removed_by_key_and_by_claim() {
    let (_db, pool, mut conn) = fresh().await;
    let w = webhook(&mut conn, "p", "*").await;
    write(
        &pool,
        Batch {
            inserts: vec![
                row(w.id, "a", DeliveryStatus::Pending, 2),
                row(w.id, "b", DeliveryStatus::Pending, 2),
                row(w.id, "b", DeliveryStatus::Failed, 1),
            ],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(queue_size(&pool).await.unwrap().1, 2);
    let claimed = claim_due(&pool, 1, Duration::from_secs(60), Duration::from_secs(60))
        .await
        .unwrap();
    let gone = RowRef {
        id: claimed[0].id,
        created_at: claimed[0].created_at,
    };
    let other = if claimed[0].event_id.as_deref() == Some("a") {
        "b"
    } else {
        "a"
    };
    write(
        &pool,
        Batch {
            deletes: vec![gone],
            superseded: vec![(w.id, other.to_owned())],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(queue_size(&pool).await.unwrap(), (0, 0));
    assert_counts_match_rows(&mut conn).await;
    let (rows, total) = webhooks::list_deliveries(&mut conn, w.id, None, None, 10, 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((rows.len(), total), (1, 1), "the failed row stays");
}

#[tokio::test]
async fn the_bump_disables_on_410_and_after_failing_too_long() {
    let (_db, _, mut conn) = fresh().await;
    let gone = webhook(&mut conn, "gone", "*").await;
    let old = webhook(&mut conn, "old", "*").await;
    let fresh = webhook(&mut conn, "fresh", "*").await;
    let now = Utc::now();
    let bump = |id, failing_since: DateTime<Utc>, gone| WebhookBump {
        webhook_id: id,
        successes: 0,
        failures: 1,
        last_at: now,
        last_ok: false,
        failing_since: Some(failing_since),
        trailing_failures: 1,
        gone,
        health: true,
    };
    let disabled = bump_webhooks(
        &mut conn,
        &[
            bump(gone.id, now, true),
            bump(old.id, now - chrono::Duration::days(4), false),
            bump(fresh.id, now, false),
        ],
        Some(Duration::from_secs(3 * 86_400)),
    )
    .await
    .unwrap();
    let reasons: HashMap<i32, String> = storage::attempts::disabled(&disabled)
        .into_iter()
        .map(|d| (d.webhook_id, d.reason))
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert_eq!(reasons[&gone.id], "receiver answered 410 Gone");
    assert!(
        reasons[&old.id].starts_with("failed without a single success since ")
            && reasons[&old.id].ends_with("(DELIVERY_DISABLE_AFTER 3days)"),
        "{}",
        reasons[&old.id]
    );
    assert!(get(&mut conn, fresh.id).await.is_active);
    let old = get(&mut conn, old.id).await;
    assert!(!old.is_active);
    assert_eq!(
        old.disabled_reason.as_deref(),
        Some(reasons[&old.id].as_str())
    );
}

fn test_attempt(webhook_id: i32, status: DeliveryStatus) -> NewDelivery {
    NewDelivery {
        webhook_id,
        event_type: "webhook.test".to_owned(),
        payload: serde_json::json!({"test": true}),
        response_status: Some(if status == DeliveryStatus::Success {
            200
        } else {
            500
        }),
        response_body: None,
        status,
        error_message: None,
        attempt_number: 1,
        delivered_at: (status == DeliveryStatus::Success).then(Utc::now),
        next_retry_at: None,
        event_id: Some(uuid::Uuid::new_v4().to_string()),
        traceparent: None,
        body: None,
    }
}

#[tokio::test]
async fn a_test_attempt_counts_but_leaves_failing_since_alone() {
    let (_db, _, mut conn) = fresh().await;
    let w = webhook(&mut conn, "t", "*").await;
    let failed = webhooks::record_attempt(&mut conn, test_attempt(w.id, DeliveryStatus::Failed))
        .await
        .unwrap();
    assert_eq!(failed.status, DeliveryStatus::Failed);
    let after = get(&mut conn, w.id).await;
    assert_eq!((after.success_count, after.failure_count), (0, 1));
    assert_eq!(after.failing_since, None, "a test says nothing of health");
    assert!(after.last_triggered_at.is_some());
    webhooks::record_attempt(&mut conn, test_attempt(w.id, DeliveryStatus::Success))
        .await
        .unwrap();
    let after = get(&mut conn, w.id).await;
    assert_eq!((after.success_count, after.failure_count), (1, 1));
    assert!(after.is_active);
    assert_counts_match_rows(&mut conn).await;
}

#[tokio::test]
async fn a_manual_retry_queues_one_pending_attempt() {
    let (_db, _, mut conn) = fresh().await;
    let w = webhook(&mut conn, "m", "*").await;
    let mut failed = test_attempt(w.id, DeliveryStatus::Failed);
    failed.event_type = "user.created".to_owned();
    failed.attempt_number = 3;
    let original: Delivery = storage::deliveries::insert(&mut conn, failed)
        .await
        .unwrap();

    let Retry::Queued { row, already } = webhooks::queue_retry(&mut conn, w.id, original.id)
        .await
        .unwrap()
    else {
        panic!("not queued")
    };
    assert!(!already);
    assert_eq!(row.status, DeliveryStatus::Pending);
    assert_eq!(row.attempt_number, 4);
    assert_eq!(row.event_id, original.event_id);
    let Retry::Queued {
        row: again,
        already,
    } = webhooks::queue_retry(&mut conn, w.id, original.id)
        .await
        .unwrap()
    else {
        panic!("not queued")
    };
    assert!(already, "the pending attempt is returned");
    assert_eq!(again.id, row.id);
    assert!(matches!(
        webhooks::queue_retry(&mut conn, w.id, original.id + 1000)
            .await
            .unwrap(),
        Retry::DeliveryMissing
    ));
    assert!(matches!(
        webhooks::queue_retry(&mut conn, w.id + 1000, original.id)
            .await
            .unwrap(),
        Retry::WebhookMissing
    ));
    assert_counts_match_rows(&mut conn).await;
}

#[tokio::test]
async fn delivery_pages_follow_the_cursor_and_hours_are_counted() {
    let (_db, pool, mut conn) = fresh().await;
    let w = webhook(&mut conn, "d", "*").await;
    write(
        &pool,
        Batch {
            inserts: (0..5)
                .map(|i| row(w.id, &format!("e{i}"), DeliveryStatus::Failed, 1))
                .chain([row(w.id, "s", DeliveryStatus::Success, 1)])
                .collect(),
            ..Default::default()
        },
    )
    .await;
    let (first, total) = webhooks::list_deliveries(&mut conn, w.id, None, None, 4, 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first.len(), total), (4, 6));
    let last = first.last().unwrap();
    let cursor = Cursor {
        created_at: last.created_at,
        id: last.id,
    };
    let (rest, _) = webhooks::list_deliveries(&mut conn, w.id, None, Some(cursor), 4, 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest.len(), 2);
    assert!(
        rest.iter()
            .all(|d| (d.created_at, d.id) < (last.created_at, last.id))
    );
    let (failed, failed_total) =
        webhooks::list_deliveries(&mut conn, w.id, Some(DeliveryStatus::Failed), None, 10, 0)
            .await
            .unwrap()
            .unwrap();
    assert_eq!((failed.len(), failed_total), (5, 5));
    assert!(
        webhooks::list_deliveries(&mut conn, w.id + 1, None, None, 10, 0)
            .await
            .unwrap()
            .is_none()
    );

    let now = Utc::now();
    let hours = webhooks::hourly_deliveries(
        &mut conn,
        w.id,
        now - chrono::Duration::hours(1),
        now + chrono::Duration::hours(1),
    )
    .await
    .unwrap()
    .unwrap();
    let by_status: HashMap<DeliveryStatus, i64> = hours.iter().map(|h| (h.status, h.n)).collect();
    assert_eq!(by_status[&DeliveryStatus::Failed], 5);
    assert_eq!(by_status[&DeliveryStatus::Success], 1);
    assert!(
        webhooks::hourly_deliveries(&mut conn, w.id + 1, now, now)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_job_resends_the_rows_its_kind_selects_in_its_window() {
    let (_db, pool, mut conn) = fresh().await;
    let w = webhook(&mut conn, "j", "*").await;
    // Two writes, so the second attempts have the higher ids (the rows of
    // one statement take ids in no set order).
    let first = ["e1", "e2", "e3"]
        .map(|e| row(w.id, e, DeliveryStatus::Failed, 1))
        .to_vec();
    let second = vec![
        // e1 failed again: one event to recover
        row(w.id, "e1", DeliveryStatus::Failed, 2),
        // e2 succeeded: nothing to recover
        row(w.id, "e2", DeliveryStatus::Success, 2),
        // e3 has a retry pending: a bulk retry leaves it
        row(w.id, "e3", DeliveryStatus::Pending, 2),
    ];
    for inserts in [first, second] {
        write(
            &pool,
            Batch {
                inserts,
                ..Default::default()
            },
        )
        .await;
    }
    let end_key = RowsToResend::current_end(&mut conn).await.unwrap();
    let recover = RowsToResend {
        kind: JobKind::Recover,
        webhook_id: w.id,
        end_key,
        since: None,
        until: None,
        status: DeliveryStatus::Failed,
    };
    assert_eq!(recover.count(&mut conn).await.unwrap(), 1);
    let rows = recover.chunk(&mut conn, 0, 10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].event_id.as_str(), rows[0].last_attempt), ("e1", 2));

    let retry = RowsToResend {
        kind: JobKind::Retry,
        ..recover
    };
    assert_eq!(retry.count(&mut conn).await.unwrap(), 2, "e1 and e2");
    let one = retry.chunk(&mut conn, 0, 1).await.unwrap();
    let rest = retry.chunk(&mut conn, one[0].id, 10).await.unwrap();
    let mut events: Vec<&str> = one
        .iter()
        .chain(&rest)
        .map(|r| r.event_id.as_str())
        .collect();
    events.sort_unstable();
    assert_eq!(
        events,
        ["e1", "e2"],
        "in id order, one chunk after the other"
    );
    let narrow = RowsToResend {
        until: Some(Utc::now() - chrono::Duration::hours(1)),
        ..retry
    };
    assert_eq!(
        narrow.count(&mut conn).await.unwrap(),
        0,
        "out of the window"
    );
    let past_end = RowsToResend {
        end_key: 0,
        ..retry
    };
    assert_eq!(past_end.count(&mut conn).await.unwrap(), 0);

    let since = Utc::now() - chrono::Duration::minutes(1);
    let seen = storage::jobs::already_delivered(&mut conn, w.id, since, &["e1", "zz"])
        .await
        .unwrap();
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["e1"]);
    let later = storage::jobs::already_delivered(
        &mut conn,
        w.id,
        Utc::now() + chrono::Duration::minutes(1),
        &["e1"],
    )
    .await
    .unwrap();
    assert!(later.is_empty());
}

#[tokio::test]
async fn a_connection_outside_the_pool_is_refused_with_an_unavailable_error() {
    let err = storage::connect("postgres://nobody@127.0.0.1:1/none")
        .await
        .err()
        .unwrap();
    assert!(err.is_unavailable(), "{err}");
    let (_db, _, mut conn) = fresh().await;
    let n = diesel::sql_query("SELECT 1")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn pull_positions_never_go_back_and_reads_count_as_deliveries() {
    use storage::models::WebhookMode;
    use storage::pull::{self, Read};
    let db = TestDb::new().await.unwrap();
    let pool = db.pool().unwrap();
    let mut conn = pool.get().await.unwrap();
    let hook = webhooks::insert_webhook(
        &mut conn,
        NewWebhook {
            name: "pull".to_owned(),
            url: None,
            secret: None,
            event_type: "*".to_owned(),
            is_active: true,
            description: None,
            body_format: BodyFormat::Canonical,
            event_types: None,
            payload_filter: None,
            headers: None,
            auth: None,
            signature_scheme: storage::subscription::SignatureScheme::Hmac,
            mode: WebhookMode::Pull,
            policy: Default::default(),
        },
    )
    .await
    .unwrap();
    assert!(hook.pull_cursor().is_none());
    assert!(
        pull::acknowledge(&mut conn, hook.id, "7", 10)
            .await
            .unwrap()
    );
    assert!(!pull::acknowledge(&mut conn, hook.id, "7", 4).await.unwrap());
    assert!(
        !pull::acknowledge(&mut conn, hook.id, "7", 10)
            .await
            .unwrap()
    );
    assert!(
        pull::acknowledge(&mut conn, hook.id, "7", 11)
            .await
            .unwrap()
    );
    // a recreated stream: its epoch replaces the old one
    assert!(pull::acknowledge(&mut conn, hook.id, "8", 1).await.unwrap());
    let row = webhooks::get_webhook(&mut conn, hook.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.pull_cursor().unwrap().to_string(), "8:1");
    // a push webhook has no position
    let push = webhook(&mut conn, "push", "*").await;
    assert!(!pull::acknowledge(&mut conn, push.id, "8", 1).await.unwrap());
    // a pull webhook has no URL, a push one must have one
    let bad = diesel_async::RunQueryDsl::execute(
        diesel::sql_query(format!(
            "UPDATE webhooks SET url = NULL WHERE id = {}",
            push.id
        )),
        &mut conn,
    )
    .await;
    assert!(bad.is_err());

    let read = |id: &str| Read {
        event_id: id.to_owned(),
        event_type: "user.created".to_owned(),
        payload: "{\"user_id\": 1}".into(),
        traceparent: None,
    };
    let now = Utc::now();
    let first = pull::record_reads(&pool, hook.id, &[read("e1"), read("e2")], now)
        .await
        .unwrap();
    assert_eq!(first, [1, 1]);
    let again = pull::record_reads(&pool, hook.id, &[read("e2"), read("e3")], now)
        .await
        .unwrap();
    assert_eq!(again, [2, 1]);
    let row = webhooks::get_webhook(&mut conn, hook.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((row.success_count, row.failure_count), (4, 0));
    assert!(row.last_triggered_at.is_some());
    let (items, total) = webhooks::list_deliveries(&mut conn, hook.id, None, None, 50, 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(total, 4);
    assert!(items.iter().all(|d| d.status == DeliveryStatus::Success));
    assert_counts_match_rows(&mut conn).await;
}

#[tokio::test]
async fn the_recorder_statements_are_prepared_once_per_connection() {
    let db = TestDb::new().await.unwrap();
    // One connection: every statement runs on it.
    let cfg = storage::PoolConfig {
        max_size: 1,
        fast_recycle: true,
        ..Default::default()
    };
    let pool = storage::build_pool(&db.url, &cfg).unwrap();
    let mut conn = storage::connect(&db.url).await.unwrap();
    let w = webhook(&mut conn, "w", "*").await;
    let prepared = |pool: DbPool| async move {
        #[derive(diesel::QueryableByName)]
        struct Named {
            #[diesel(sql_type = diesel::sql_types::Text)]
            statement: String,
        }
        let mut c = pool.get().await.unwrap();
        let rows: Vec<Named> = diesel::sql_query("SELECT statement FROM pg_prepared_statements")
            .load(&mut c)
            .await
            .unwrap();
        rows.into_iter().map(|r| r.statement).collect::<Vec<_>>()
    };
    let batch = |event: &str| Batch {
        inserts: vec![row(w.id, event, DeliveryStatus::Success, 1)],
        attempts: vec![attempt(w.id, true, Utc::now())],
        events: vec![storage::audit::SeenEvent {
            event_id: event.to_owned(),
            event_type: "user.created".to_owned(),
            stream_seq: 1,
            published_at: Utc::now(),
            processed_at: Utc::now(),
            matched: vec![w.id],
            filtered: Vec::new(),
        }],
        ..Default::default()
    };
    let keys = |event: &'static str| vec![SuccessKey::any_time(w.id, event)];
    for event in ["e1", "e2", "e3"] {
        let b = batch(event);
        record(&pool, &keys(event), health(), |_| (b.clone(), 0))
            .await
            .unwrap();
    }
    let after_three = prepared(pool.clone()).await;
    let b = batch("e4");
    record(&pool, &keys("e4"), health(), |_| (b.clone(), 0))
        .await
        .unwrap();
    let after_four = prepared(pool.clone()).await;
    for table in [
        "INSERT INTO webhook_deliveries",
        "INSERT INTO delivery_events",
        "FROM webhook_deliveries d",
        "pg_advisory_xact_lock",
        "INSERT INTO webhook_delivery_counts",
        "UPDATE webhooks w",
        "INSERT INTO webhook_circuit",
    ] {
        let n = after_four.iter().filter(|s| s.contains(table)).count();
        assert_eq!(n, 1, "{table} prepared once: {after_four:#?}");
    }
    assert_eq!(
        after_three.len(),
        after_four.len(),
        "nothing prepared again"
    );
    assert_counts_match_rows(&mut conn).await;
}

/// The rows of a webhook in `webhook_deliveries`.
async fn rows_of(pool: &DbPool, webhook_id: i32) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query("SELECT count(*) AS n FROM webhook_deliveries WHERE webhook_id = $1")
        .bind::<diesel::sql_types::Int4, _>(webhook_id)
        .get_result::<N>(&mut conn)
        .await
        .unwrap()
        .n
}

/// A batch writing rows of a webhook holds off its deletion until it
/// commits, and the deletion then takes those rows too; a batch after the
/// deletion writes none (the guard that replaced the foreign key).
#[tokio::test]
async fn a_webhook_deleted_while_a_batch_writes_its_rows_takes_them() {
    use diesel_async::AsyncConnection;
    let (db, pool, mut conn) = fresh().await;
    let w = webhook(&mut conn, "w", "*").await;
    let mut writer = storage::connect(&db.url).await.unwrap();
    let (inserted, on_inserted) = tokio::sync::oneshot::channel();
    let (commit, on_commit) = tokio::sync::oneshot::channel::<()>();
    let batch = tokio::spawn(async move {
        writer
            .transaction::<_, storage::StorageError, _>(async |c| {
                let rows = [row(w.id, "e1", DeliveryStatus::Success, 1)];
                let counted = insert_rows(c, &rows).await?;
                let _ = inserted.send(counted.len());
                let _ = on_commit.await;
                Ok(())
            })
            .await
    });
    assert_eq!(on_inserted.await.unwrap(), 1);
    let deleting = tokio::spawn(async move { webhooks::delete_webhook(&mut conn, w.id).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!deleting.is_finished(), "the deletion waits for the batch");
    commit.send(()).unwrap();
    batch.await.unwrap().unwrap();
    assert!(deleting.await.unwrap().unwrap());
    assert_eq!(rows_of(&pool, w.id).await, 0, "the batch's row went too");
    let mut late = storage::connect(&db.url).await.unwrap();
    let rows = [row(w.id, "e2", DeliveryStatus::Success, 1)];
    assert!(insert_rows(&mut late, &rows).await.unwrap().is_empty());
    assert_eq!(
        rows_of(&pool, w.id).await,
        0,
        "no row for a deleted webhook"
    );
    assert_counts_match_rows(&mut late).await;
}

/// What `lock_successes` finds for `keys`, in a transaction of its own.
async fn successes(url: &str, keys: &[SuccessKey<'_>]) -> HashMap<(i32, String), Recorded> {
    use diesel_async::AsyncConnection;
    let mut conn = storage::connect(url).await.unwrap();
    conn.transaction::<_, storage::StorageError, _>(async |c| lock_successes(c, keys).await)
        .await
        .unwrap()
}

#[tokio::test]
async fn successes_are_looked_for_from_each_keys_lower_bound_on() {
    let (db, pool, mut conn) = fresh().await;
    let w = webhook(&mut conn, "w", "*").await;
    let today = Utc::now().date_naive();
    storage::history::ensure_partitions(&mut conn, today - chrono::Duration::days(3), today)
        .await
        .unwrap();
    // A success two days ago, and a pending attempt now.
    let two_days_ago = Utc::now() - chrono::Duration::days(2);
    let mut old = row(w.id, "old", DeliveryStatus::Success, 1);
    old.created_at = two_days_ago;
    old.delivered_at = Some(two_days_ago);
    write(
        &pool,
        Batch {
            inserts: vec![old, row(w.id, "new", DeliveryStatus::Pending, 2)],
            ..Default::default()
        },
    )
    .await;
    let keys = |stream_time| {
        [
            SuccessKey {
                webhook_id: w.id,
                event_id: "old",
                stream_time,
            },
            SuccessKey {
                webhook_id: w.id,
                event_id: "new",
                stream_time,
            },
            SuccessKey::any_time(w.id, "never"),
        ]
    };
    let old_key = (w.id, "old".to_owned());
    let new_key = (w.id, "new".to_owned());
    let found = successes(&db.url, &keys(None)).await;
    let old_success = found[&old_key].last_success.unwrap();
    assert!((old_success - two_days_ago).num_milliseconds().abs() < 1);
    assert_eq!(
        found[&new_key],
        Recorded {
            last_success: None,
            pending: true
        }
    );
    assert_eq!(found.len(), 2, "a key without rows is not in the answer");
    // An event stored two days ago is looked for from three days ago on:
    // the same; one stored now, from yesterday on: the old success is out
    // of reach (its partition is not read).
    assert_eq!(successes(&db.url, &keys(Some(two_days_ago))).await, found);
    let recent = successes(&db.url, &keys(Some(Utc::now()))).await;
    assert!(!recent.contains_key(&old_key));
    assert!(recent[&new_key].pending);
    // One key twice, once without a bound: every partition is read.
    let twice = [
        SuccessKey {
            webhook_id: w.id,
            event_id: "old",
            stream_time: Some(Utc::now()),
        },
        SuccessKey::any_time(w.id, "old"),
    ];
    assert!(
        successes(&db.url, &twice).await[&old_key]
            .last_success
            .is_some()
    );
}
