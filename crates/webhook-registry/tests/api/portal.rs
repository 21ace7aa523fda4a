//! The portal's page and files, the hourly delivery counts behind its chart,
//! and the readiness of the other services as the registry sees them. The
//! browser suite is `deploy/portal-test.sh` (puppeteer-core in Chromium and
//! Firefox against the built services).

use chrono::{DurationRound, TimeDelta, Utc};
use diesel_async::RunQueryDsl;
use reqwest::StatusCode;
use serde_json::{Value, json};
use storage::testing::{diesel, diesel_async};
use test_support::{Receiver, Reply};

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test]
async fn the_portal_is_served_with_a_strict_policy() {
    let app = spawn_app().await;
    let res = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let h = res.headers().clone();
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'; script-src 'self'; style-src 'self';"));
    assert!(csp.contains("connect-src 'self' ws://127.0.0.1:8081 http://127.0.0.1:8081;"));
    assert!(!csp.contains("unsafe"));
    let page = res.text().await.unwrap();
    assert!(page.contains("<meta name=\"gateway-url\" content=\"ws://127.0.0.1:8081/ws\">"));
    assert!(page.contains("src=\"portal/app.js\""));

    // The live view is the gateway console's file, byte for byte.
    let live = app
        .client
        .get(app.url("/portal/live.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    assert!(
        live.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert_eq!(live.text().await.unwrap(), proto_events::LIVE_JS);
    let css = app
        .client
        .get(app.url("/portal/portal.css"))
        .send()
        .await
        .unwrap();
    assert!(
        css.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );

    let (status, body) = app.get("/portal/nope.js").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({"detail": "Not Found"}));
    let res = app.client.post(app.url("/")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn hourly_counts_cover_every_hour_of_the_window() {
    let app = spawn_app().await;
    let hook = app
        .create_webhook("chart", "http://127.0.0.1:9/hook", "user.created")
        .await;
    let id = hook["id"].as_i64().unwrap() as i32;
    let other = app
        .create_webhook("other", "http://127.0.0.1:9/hook", "user.created")
        .await;
    let other_id = other["id"].as_i64().unwrap() as i32;
    let mut ids = Vec::new();
    for (status, hours_ago) in [
        ("success", 0),
        ("success", 0),
        ("failed", 0),
        ("pending", 0),
        ("success", 3),
        ("failed", 3),
        ("failed", 23),
    ] {
        let row = app
            .insert_delivery(id, status, &format!("ev-{}", ids.len()), 1)
            .await;
        ids.push((row.id, hours_ago));
    }
    app.insert_delivery(other_id, "success", "ev-other", 1)
        .await;
    let mut conn = app.conn().await;
    // Yesterday's partition, should the maintenance task not have run yet.
    diesel::sql_query(
        "SELECT webhook_deliveries_ensure_partitions(current_date - 1, current_date + 1)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    for (row, hours_ago) in &ids {
        if *hours_ago > 0 {
            diesel::sql_query(format!(
                "UPDATE webhook_deliveries SET created_at = now() - interval '{hours_ago} hours' \
                 WHERE id = {row}"
            ))
            .execute(&mut conn)
            .await
            .unwrap();
        }
    }

    let (status, body) = app.get(&format!("/webhooks/{id}/deliveries/hourly")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["webhook_id"], id);
    assert_eq!(body["hours"], 24);
    let buckets = body["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 24);
    let this_hour = Utc::now().duration_trunc(TimeDelta::hours(1)).unwrap();
    let hour = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    assert_eq!(hour(&buckets[23]["hour"]), this_hour);
    assert_eq!(hour(&buckets[0]["hour"]), this_hour - TimeDelta::hours(23));
    assert_eq!(hour(&body["to"]), this_hour + TimeDelta::hours(1));
    let sum = |key: &str| {
        buckets
            .iter()
            .map(|b| b[key].as_i64().unwrap())
            .sum::<i64>()
    };
    assert_eq!((sum("success"), sum("failed"), sum("pending")), (3, 3, 1));
    // The current hour holds the fresh rows (unless the hour turned while
    // the test ran, in which case the totals above still hold).
    let now_bucket = &buckets[23];
    if now_bucket["success"] == 2 {
        assert_eq!(now_bucket["failed"], 1);
        assert_eq!(now_bucket["pending"], 1);
    }

    let (status, body) = app
        .get(&format!("/webhooks/{id}/deliveries/hourly?hours=2"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["buckets"].as_array().unwrap().len(), 2);

    let (status, body) = app
        .get(&format!("/webhooks/{id}/deliveries/hourly?hours=0"))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["detail"][0]["loc"], json!(["query", "hours"]));
    let (status, _) = app.get("/webhooks/999999/deliveries/hourly").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let res = app
        .client
        .get(app.url(&format!("/webhooks/{id}/deliveries/hourly")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn readiness_of_the_other_services_comes_from_the_configured_urls_only() {
    let worker = Receiver::start(Reply::with_body(
        200,
        r#"{"status":"ready","checks":{"nats":"ok"}}"#,
    ))
    .await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let worker_url = format!("http://{}/readyz", worker.addr);
    let app = spawn_app_with(|c| {
        c.gateway_url = format!("ws://127.0.0.1:{closed_port}/ws");
        c.worker_ready_url = worker_url.clone();
    })
    .await;
    let res = app
        .client
        .get(app.url("/services/readiness"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // A URL in the query is not looked at.
    let (status, body) = app
        .get("/services/readiness?url=http://169.254.169.254/")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let services = body["services"].as_array().unwrap();
    assert_eq!(services.len(), 2);
    assert_eq!(services[0]["name"], "gateway");
    assert_eq!(
        services[0]["url"],
        format!("http://127.0.0.1:{closed_port}/readyz")
    );
    assert_eq!(services[0]["ready"], false);
    assert_eq!(services[0]["error"], "cannot connect");
    assert_eq!(services[1]["name"], "delivery-worker");
    assert_eq!(services[1]["url"], worker_url);
    assert_eq!(services[1]["ready"], true);
    assert_eq!(services[1]["status_code"], 200);
    assert_eq!(services[1]["checks"], json!({"nats": "ok"}));
}

#[tokio::test]
async fn the_catalogue_carries_an_example_of_each_type() {
    let app = spawn_app().await;
    let (status, body) = app.get("/events/types").await;
    assert_eq!(status, StatusCode::OK);
    for item in body["items"].as_array().unwrap() {
        assert!(item["example"].is_object(), "{item}");
    }
}
