use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use reqwest::StatusCode;
use serde_json::{Value, json};
use storage::models::Delivery;
use storage::schema::webhook_deliveries as d;
use storage::testing::{diesel, diesel_async};

use crate::helpers::{TRACEPARENT, spawn_app};

const FIELDS: [&str; 13] = [
    "id",
    "webhook_id",
    "event_type",
    "payload",
    "response_status",
    "response_body",
    "status",
    "error_message",
    "attempt_number",
    "created_at",
    "delivered_at",
    "next_retry_at",
    "event_id",
];

fn ids(page: &Value) -> Vec<i64> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn deliveries_are_listed_newest_first_with_a_status_filter() {
    let app = spawn_app().await;
    let hook = app.create_webhook("a", "https://example.com/a", "*").await;
    let other = app.create_webhook("b", "https://example.com/b", "*").await;
    let id = hook["id"].as_i64().unwrap() as i32;
    let mut rows = Vec::new();
    for (i, status) in ["success", "failed", "failed", "pending", "success"]
        .iter()
        .enumerate()
    {
        rows.push(
            app.insert_delivery(id, status, &format!("e{i}"), 1)
                .await
                .id as i64,
        );
    }
    app.insert_delivery(other["id"].as_i64().unwrap() as i32, "failed", "x", 1)
        .await;

    let (status, page) = app.get(&format!("/webhooks/{id}/deliveries")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total"], 5);
    assert_eq!(page["limit"], 50);
    assert_eq!(page["offset"], 0);
    let mut expected = rows.clone();
    expected.reverse();
    assert_eq!(ids(&page), expected);
    let first = &page["items"][0];
    let mut keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    let mut want = FIELDS.to_vec();
    want.sort();
    assert_eq!(keys, want);
    assert_eq!(
        first["payload"],
        json!({"user_id": 1, "first_name": "Иван 🎉"})
    );
    assert_eq!(first["webhook_id"], id);

    let (_, page) = app
        .get(&format!("/webhooks/{id}/deliveries?status=failed"))
        .await;
    assert_eq!(page["total"], 2);
    assert_eq!(ids(&page), vec![rows[2], rows[1]]);
    let (_, page) = app
        .get(&format!(
            "/webhooks/{id}/deliveries?status=success&limit=1&offset=1"
        ))
        .await;
    assert_eq!(page["total"], 2);
    assert_eq!(ids(&page), vec![rows[0]]);

    let (status, resp) = app
        .get(&format!("/webhooks/{id}/deliveries?status=delivered"))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        resp,
        json!({"detail": [{"type": "enum", "loc": ["query", "status"],
            "msg": "Input should be 'pending', 'success' or 'failed'", "input": "delivered",
            "ctx": {"expected": "'pending', 'success' or 'failed'"}}]})
    );
    let (status, _) = app
        .get(&format!("/webhooks/{id}/deliveries?limit=201"))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn retry_queues_a_pending_attempt_for_the_worker() {
    let app = spawn_app().await;
    let hook = app.create_webhook("a", "https://example.com/a", "*").await;
    let id = hook["id"].as_i64().unwrap() as i32;
    let first = app.insert_delivery(id, "failed", "evt-1", 1).await;
    let second = app.insert_delivery(id, "failed", "evt-1", 2).await;

    let (status, resp) = app
        .post(
            &format!("/webhooks/{id}/deliveries/{}/retry", first.id),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(resp["status"], "queued");
    assert_eq!(resp["retry_of"], first.id);
    assert_eq!(resp["attempt_number"], 3);
    assert_eq!(resp["already_queued"], false);
    let queued_id = resp["delivery_id"].as_i64().unwrap();

    let mut conn = app.conn().await;
    let row: Delivery = d::table
        .find(queued_id)
        .select(Delivery::as_select())
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!(row.status.as_str(), "pending");
    assert_eq!(row.event_id.as_deref(), Some("evt-1"));
    assert_eq!(row.payload, first.payload);
    assert_eq!(row.event_type, first.event_type);
    assert_eq!(row.attempt_number, 3);
    assert_eq!(
        row.traceparent.as_deref(),
        Some(TRACEPARENT),
        "trace context kept"
    );
    let due = row.next_retry_at.expect("due time");
    assert!((chrono::Utc::now() - due).num_seconds().abs() < 60);

    // Asking again while it waits does not queue a second attempt.
    let (status, again) = app
        .post(
            &format!("/webhooks/{id}/deliveries/{}/retry", second.id),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(again["delivery_id"], queued_id);
    assert_eq!(again["already_queued"], true);
    let pending: i64 = d::table
        .filter(d::webhook_id.eq(id))
        .filter(d::status.eq("pending"))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(pending, 1);

    // A delivery of another webhook, or none at all.
    let other = app.create_webhook("b", "https://example.com/b", "*").await;
    let (status, resp) = app
        .post(
            &format!("/webhooks/{}/deliveries/{}/retry", other["id"], first.id),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, resp),
        (
            StatusCode::NOT_FOUND,
            json!({"detail": "Delivery not found"})
        )
    );
    let (status, resp) = app
        .post(
            &format!("/webhooks/{id}/deliveries/999999/retry"),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, resp),
        (
            StatusCode::NOT_FOUND,
            json!({"detail": "Delivery not found"})
        )
    );
    let (status, resp) = app
        .post(
            &format!("/webhooks/999999/deliveries/{}/retry", first.id),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, resp),
        (
            StatusCode::NOT_FOUND,
            json!({"detail": "Webhook not found"})
        )
    );
}
