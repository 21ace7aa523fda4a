//! Delivery history at scale: keyset paging, 64-bit ids through the API,
//! totals from the counters, partitions made ahead by the running service.

use std::collections::HashSet;
use storage::testing::{diesel, diesel_async};

use diesel_async::RunQueryDsl;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{eventually, spawn_app};

fn items(page: &Value) -> Vec<Value> {
    page["items"].as_array().unwrap().clone()
}

async fn exec(app: &crate::helpers::TestApp, sql: &str) {
    let mut conn = app.conn().await;
    diesel::sql_query(sql)
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test]
async fn cursor_paging_returns_every_row_once_in_order() {
    let app = spawn_app().await;
    let hook = app.create_webhook("a", "https://example.com/a", "*").await;
    let id = hook["id"].as_i64().unwrap() as i32;
    let other = app.create_webhook("b", "https://example.com/b", "*").await;
    let mut expected = HashSet::new();
    let mut failed = HashSet::new();
    for i in 0..137 {
        let status = if i % 3 == 0 { "failed" } else { "success" };
        let row = app.insert_delivery(id, status, &format!("e{i}"), 1).await;
        expected.insert(row.id);
        if status == "failed" {
            failed.insert(row.id);
        }
    }
    app.insert_delivery(other["id"].as_i64().unwrap() as i32, "failed", "x", 1)
        .await;
    // Rows that share a created_at: the id breaks the tie.
    exec(
        &app,
        &format!(
            "UPDATE webhook_deliveries SET created_at = date_trunc('second', created_at) \
             WHERE webhook_id = {id}"
        ),
    )
    .await;

    for (filter, want) in [("", &expected), ("&status=failed", &failed)] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let path = match &cursor {
                None => format!("/webhooks/{id}/deliveries?limit=20{filter}"),
                Some(c) => format!("/webhooks/{id}/deliveries?limit=20{filter}&cursor={c}"),
            };
            let (status, page) = app.get(&path).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            assert_eq!(page["total"].as_u64().unwrap() as usize, want.len());
            pages += 1;
            let keys: Vec<(String, i64)> = items(&page)
                .iter()
                .map(|i| {
                    (
                        i["created_at"].as_str().unwrap().to_owned(),
                        i["id"].as_i64().unwrap(),
                    )
                })
                .collect();
            seen.extend(keys);
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
            assert!(pages < 20, "paging does not end");
        }
        let ids: Vec<i64> = seen.iter().map(|(_, id)| *id).collect();
        let unique: HashSet<i64> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "a row came twice ({filter})");
        assert_eq!(&unique, want, "{filter}");
        // Newest first: created_at descending, then id descending.
        let mut sorted = seen.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(seen, sorted, "{filter}");
    }

    // offset keeps working beside the cursor; a bad cursor is a 422.
    let (_, first) = app.get(&format!("/webhooks/{id}/deliveries?limit=5")).await;
    let (_, skipped) = app
        .get(&format!("/webhooks/{id}/deliveries?limit=5&offset=5"))
        .await;
    let c = first["next_cursor"].as_str().unwrap();
    let (_, after) = app
        .get(&format!("/webhooks/{id}/deliveries?limit=5&cursor={c}"))
        .await;
    assert_eq!(items(&skipped), items(&after));
    let (status, body) = app
        .get(&format!("/webhooks/{id}/deliveries?cursor=nonsense"))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["detail"][0]["loc"][1], "cursor");
    // a cursor the pattern allows but older than PostgreSQL's earliest
    // timestamp: nothing is older (it was a 500, found by schemathesis)
    for c in ["-214407299781668740.1241247", "-999999999999999999.1"] {
        let (status, body) = app
            .get(&format!(
                "/webhooks/{id}/deliveries?limit=1&status=success&cursor={c}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(items(&body).len(), 0, "{body}");
    }
    // and the latest one the pattern allows: everything is older
    let (status, body) = app
        .get(&format!(
            "/webhooks/{id}/deliveries?limit=5&cursor=999999999999999999.1"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(items(&body), items(&first));
}

#[tokio::test]
async fn ids_beyond_int4_round_trip_through_the_api() {
    let app = spawn_app().await;
    let hook = app.create_webhook("a", "https://example.com/a", "*").await;
    let id = hook["id"].as_i64().unwrap() as i32;
    exec(
        &app,
        "SELECT setval('webhook_deliveries_id_seq', 5000000000)",
    )
    .await;
    exec(
        &app,
        &format!(
            "UPDATE webhooks SET success_count = 4000000000, failure_count = 3000000000 \
             WHERE id = {id}"
        ),
    )
    .await;
    let row = app.insert_delivery(id, "failed", "big", 1).await;
    assert_eq!(row.id, 5_000_000_001);

    let (status, page) = app.get(&format!("/webhooks/{id}/deliveries")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["items"][0]["id"], 5_000_000_001i64);
    let (_, w) = app.get(&format!("/webhooks/{id}")).await;
    assert_eq!(w["success_count"], 4_000_000_000i64);
    assert_eq!(w["failure_count"], 3_000_000_000i64);

    let (status, retry) = app
        .post(
            &format!("/webhooks/{id}/deliveries/5000000001/retry"),
            Value::Null,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{retry}");
    assert_eq!(retry["retry_of"], 5_000_000_001i64);
    assert_eq!(retry["delivery_id"], 5_000_000_002i64);
}

#[tokio::test]
async fn stats_and_totals_come_from_the_counters_and_follow_deletes() {
    let app = spawn_app().await;
    let a = app.create_webhook("a", "https://example.com/a", "*").await;
    let b = app.create_webhook("b", "https://example.com/b", "*").await;
    let (a, b) = (
        a["id"].as_i64().unwrap() as i32,
        b["id"].as_i64().unwrap() as i32,
    );
    for (hook, status) in [(a, "success"), (a, "failed"), (a, "success"), (b, "failed")] {
        app.insert_delivery(hook, status, "e", 1).await;
    }
    let (_, s) = app.get("/webhooks/stats").await;
    assert_eq!(s["total_deliveries"], 4);
    assert_eq!(s["successful_deliveries"], 2);
    assert_eq!(s["failed_deliveries"], 2);
    assert_eq!(s["success_rate"], 50.0);
    let (_, page) = app
        .get(&format!("/webhooks/{a}/deliveries?status=success"))
        .await;
    assert_eq!(page["total"], 2);

    let (status, _) = app.delete(&format!("/webhooks/{a}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, s) = app.get("/webhooks/stats").await;
    assert_eq!(s["total_deliveries"], 1);
    assert_eq!(s["failed_deliveries"], 1);
    storage::testing::assert_counts_match_rows(&mut *app.conn().await).await;
}

#[tokio::test]
async fn the_service_creates_partitions_ahead_after_a_restart() {
    let app = spawn_app().await;
    app.wait_ready().await;
    // Lose the partitions ahead (as if the registry had been down for
    // weeks), then start a registry again on the same database.
    let ahead: Vec<String> = (1..=2)
        .map(|d| {
            (chrono::Utc::now().date_naive() + chrono::Duration::days(d))
                .format("webhook_deliveries_p%Y%m%d")
                .to_string()
        })
        .collect();
    for p in &ahead {
        exec(&app, &format!("DROP TABLE IF EXISTS {p}")).await;
    }
    let (_, stop, task) = crate::helpers::start(app.config.clone()).await;
    let found = eventually(10, || async {
        let mut conn = app.conn().await;
        let parts = storage::history::partitions(&mut conn).await.unwrap();
        ahead.iter().all(|p| parts.iter().any(|x| &x.name == p))
    })
    .await;
    stop.cancel();
    let _ = task.await;
    assert!(found, "partitions ahead were not created");
}
