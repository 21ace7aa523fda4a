//! Delivery history: the partitioning migration, partitions ahead,
//! retention and the row counters, against the real Postgres.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{Duration, NaiveDate, Utc};
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use storage::history::{self, HistoryPolicy};
use storage::testing::{TestDb, assert_counts_match_rows};

#[derive(diesel::QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn count(conn: &mut AsyncPgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<N>(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .n
}

async fn exec(conn: &mut AsyncPgConnection, sql: &str) {
    diesel::sql_query(sql)
        .execute(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

async fn partition_days(conn: &mut AsyncPgConnection) -> Vec<NaiveDate> {
    history::partitions(conn)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.day)
        .collect()
}

#[tokio::test]
async fn the_migration_converts_a_populated_table_without_losing_a_row() {
    // The schema before partitioning, with the bot's kind of data in it:
    // rows over several days, every status, ids near the int4 limit.
    let db = TestDb::migrated_to(3).await.unwrap();
    let pool = db.pool().unwrap();
    let mut conn = pool.get().await.unwrap();
    exec(
        &mut conn,
        "INSERT INTO webhooks (name, url, event_type, success_count, failure_count) \
         SELECT 'w' || g, 'https://example.com/' || g, 'user.created', 2147483000, 7 \
         FROM generate_series(1, 3) g",
    )
    .await;
    exec(
        &mut conn,
        "SELECT setval('webhook_deliveries_id_seq', 2147480000)",
    )
    .await;
    exec(
        &mut conn,
        "INSERT INTO webhook_deliveries (webhook_id, event_type, payload, status, created_at, \
           next_retry_at, event_id, response_body) \
         SELECT 1 + g % 3, 'user.created', jsonb_build_object('user_id', g, 'name', 'Иван 🎉'), \
           (ARRAY['success', 'failed', 'pending'])[1 + g % 3], now() - g * interval '37 minutes', \
           CASE WHEN g % 3 = 2 THEN now() END, 'ev-' || g, 'body ' || g \
         FROM generate_series(1, 500) g",
    )
    .await;
    #[derive(diesel::QueryableByName, PartialEq, Debug)]
    struct Digest {
        #[diesel(sql_type = Text)]
        digest: String,
    }
    let digest_sql = "SELECT md5(string_agg(row(id, webhook_id, event_type, payload, status, \
        created_at, next_retry_at, event_id, response_body)::text, ',' ORDER BY id)) AS digest \
        FROM webhook_deliveries";
    let before: Digest = diesel::sql_query(digest_sql)
        .get_result(&mut conn)
        .await
        .unwrap();
    drop(conn);

    let applied = storage::run_migrations(&db.url).await.unwrap();
    // The partitioning migration and every later one.
    assert_eq!(
        applied.iter().map(String::as_str).next(),
        Some("20261201000004"),
        "{applied:?}"
    );

    let mut conn = pool.get().await.unwrap();
    let after: Digest = diesel::sql_query(digest_sql)
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(before, after, "every row carried over unchanged");
    assert_eq!(
        count(&mut conn, "SELECT count(*) AS n FROM webhook_deliveries").await,
        500
    );
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) AS n FROM ONLY webhook_deliveries"
        )
        .await,
        0,
        "the parent holds no rows itself"
    );
    assert_counts_match_rows(&mut conn).await;
    // Partitions for every day with rows and two days ahead (the
    // conversion creates a week ahead; a later migration keeps two).
    let days = partition_days(&mut conn).await;
    assert!(days.contains(&(today() + Duration::days(2))), "{days:?}");
    assert!(!days.contains(&(today() + Duration::days(3))), "{days:?}");
    // Ids go on past the int4 limit; counters are 64-bit.
    const INSERT_ONE: &str = "INSERT INTO webhook_deliveries (webhook_id, event_type, payload) \
         VALUES (1, 'user.created', '{}') RETURNING id AS n";
    exec(
        &mut conn,
        "UPDATE webhooks SET success_count = success_count + 2147483000",
    )
    .await;
    let id = count(&mut conn, INSERT_ONE).await;
    assert_eq!(id, 2147480501);
    exec(
        &mut conn,
        "SELECT setval('webhook_deliveries_id_seq', 3000000000)",
    )
    .await;
    let id = count(&mut conn, INSERT_ONE).await;
    assert_eq!(id, 3000000001);
}

#[tokio::test]
async fn maintenance_creates_partitions_ahead_and_again_after_a_restart() {
    let db = TestDb::new().await.unwrap();
    let pool = db.pool().unwrap();
    let mut conn = pool.get().await.unwrap();
    let policy = HistoryPolicy {
        retention: None,
        days_ahead: 10,
    };
    let r = history::maintain(&mut conn, policy, Utc::now())
        .await
        .unwrap();
    assert!(!r.skipped);
    let days = partition_days(&mut conn).await;
    for ahead in -1..=10 {
        assert!(
            days.contains(&(today() + Duration::days(ahead))),
            "{ahead}: {days:?}"
        );
    }
    // A partition lost (e.g. dropped by hand) comes back on the next run.
    let tomorrow = today() + Duration::days(1);
    exec(
        &mut conn,
        &format!(
            "DROP TABLE webhook_deliveries_p{}",
            tomorrow.format("%Y%m%d")
        ),
    )
    .await;
    let r = history::maintain(&mut conn, policy, Utc::now())
        .await
        .unwrap();
    assert_eq!(r.created, 1);
    assert!(partition_days(&mut conn).await.contains(&tomorrow));
    // Idempotent, and another holder of the lock makes it skip.
    assert_eq!(
        history::maintain(&mut conn, policy, Utc::now())
            .await
            .unwrap()
            .created,
        0
    );
    let mut other = pool.get().await.unwrap();
    exec(&mut other, "SELECT pg_advisory_lock(7263540002)").await;
    assert!(
        history::maintain(&mut conn, policy, Utc::now())
            .await
            .unwrap()
            .skipped
    );
    exec(&mut other, "SELECT pg_advisory_unlock(7263540002)").await;
    assert!(
        !history::maintain(&mut conn, policy, Utc::now())
            .await
            .unwrap()
            .skipped
    );
}

#[tokio::test]
async fn retention_drops_only_whole_days_past_the_cutoff_and_keeps_pending_rows() {
    let db = TestDb::new().await.unwrap();
    let pool = db.pool().unwrap();
    let mut conn = pool.get().await.unwrap();
    history::ensure_partitions(&mut conn, today() - Duration::days(45), today())
        .await
        .unwrap();
    exec(
        &mut conn,
        "INSERT INTO webhooks (name, url, event_type) VALUES ('a', 'https://a.example', '*'), \
         ('b', 'https://b.example', '*')",
    )
    .await;
    // 3 rows per hour for 45 days, two webhooks, every status; pending rows
    // (a disabled webhook's queue, say) in the oldest days too.
    for (webhook, status, step) in [
        (1, "success", "1 hour"),
        (2, "failed", "3 hours"),
        (1, "pending", "11 hours"),
    ] {
        let mut new = storage::counts::CountDeltas::default();
        #[derive(diesel::QueryableByName)]
        struct Day {
            #[diesel(sql_type = diesel::sql_types::Date)]
            day: NaiveDate,
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let days: Vec<Day> = diesel::sql_query(format!(
            "WITH ins AS (INSERT INTO webhook_deliveries (webhook_id, event_type, payload, status, \
               created_at, next_retry_at) \
             SELECT {webhook}, 'user.created', '{{}}', '{status}', t, t \
             FROM generate_series(now() - interval '45 days', now(), interval '{step}') t \
             RETURNING created_at) \
             SELECT (created_at AT TIME ZONE 'UTC')::date AS day, count(*)::int8 AS n \
             FROM ins GROUP BY 1"
        ))
        .load(&mut conn)
        .await
        .unwrap();
        for d in days {
            new.add(webhook, d.day, status, d.n);
        }
        storage::counts::apply(&mut conn, &new).await.unwrap();
    }
    assert_counts_match_rows(&mut conn).await;
    let pending_before = count(
        &mut conn,
        "SELECT count(*) AS n FROM webhook_deliveries WHERE status = 'pending'",
    )
    .await;
    let total_before = count(&mut conn, "SELECT count(*) AS n FROM webhook_deliveries").await;

    let now = Utc::now();
    let cutoff = now - Duration::days(30);
    let dropped = history::drop_older_than(&mut conn, cutoff).await.unwrap();
    // Whole days before the cutoff's day: partitions whose end <= cutoff.
    let first_kept = cutoff.date_naive();
    assert!(!dropped.is_empty());
    for d in &dropped {
        assert!(d.partition.day < first_kept, "{d:?}");
        assert!(d.rows > 0 && d.bytes > 0, "{d:?}");
    }
    let days = partition_days(&mut conn).await;
    assert_eq!(days[0], first_kept, "{days:?}");

    // No pending row was lost: they moved to today's partition.
    let moved: i64 = dropped.iter().map(|d| d.moved_pending).sum();
    assert!(moved > 0);
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) AS n FROM webhook_deliveries WHERE status = 'pending'",
        )
        .await,
        pending_before
    );
    let rows_dropped: i64 = dropped.iter().map(|d| d.rows).sum();
    assert_eq!(
        count(&mut conn, "SELECT count(*) AS n FROM webhook_deliveries").await,
        total_before - rows_dropped
    );
    // Nothing left before the cutoff's day but moved pending rows, and the
    // counters still equal the rows.
    assert_eq!(
        count(
            &mut conn,
            &format!(
                "SELECT count(*) AS n FROM webhook_deliveries WHERE created_at < '{}'",
                first_kept
            ),
        )
        .await,
        0
    );
    assert_counts_match_rows(&mut conn).await;
    // A second run finds nothing more to drop.
    assert!(
        history::drop_older_than(&mut conn, cutoff)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn deleting_a_webhook_keeps_the_totals_exact() {
    let db = TestDb::new().await.unwrap();
    let pool = db.pool().unwrap();
    let mut conn = pool.get().await.unwrap();
    exec(
        &mut conn,
        "INSERT INTO webhooks (name, url, event_type) VALUES ('a', 'https://a.example', '*'), \
         ('b', 'https://b.example', '*')",
    )
    .await;
    use storage::models::DeliveryStatus::{Failed, Success};
    for (webhook, status) in [(1, Success), (1, Failed), (2, Success)] {
        storage::deliveries::insert(
            &mut conn,
            storage::models::NewDelivery {
                webhook_id: webhook,
                event_type: "user.created".into(),
                payload: serde_json::json!({}),
                response_status: None,
                response_body: None,
                status,
                error_message: None,
                attempt_number: 1,
                delivered_at: None,
                next_retry_at: None,
                event_id: None,
                traceparent: None,
                body: None,
            },
        )
        .await
        .unwrap();
    }
    assert_eq!(storage::counts::totals(&mut conn).await.unwrap().total, 3);
    assert_eq!(
        storage::counts::webhook_total(&mut conn, 1, Some(Failed))
            .await
            .unwrap(),
        1
    );
    assert!(
        storage::webhooks::delete_webhook(&mut conn, 1)
            .await
            .unwrap()
    );
    assert_counts_match_rows(&mut conn).await;
    let t = storage::counts::totals(&mut conn).await.unwrap();
    assert_eq!((t.total, t.success, t.failed), (1, 1, 0));
}

#[test]
fn retention_settings() {
    assert_eq!(history::parse_retention("0"), Ok(None));
    assert_eq!(
        history::parse_retention("30d"),
        Ok(Some(std::time::Duration::from_secs(30 * 86_400)))
    );
    assert!(history::parse_retention("soon").is_err());
}
