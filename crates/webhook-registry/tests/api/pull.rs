//! Pull webhooks: created without a URL, read with
//! `GET /webhooks/{id}/pull`, acknowledged by the next cursor, every read
//! recorded as a delivery (docs/contract.md, "Pull webhooks").

use std::time::{Duration, Instant};

use proto_events::Publisher;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

async fn publisher(app: &TestApp) -> Publisher {
    let client = async_nats::connect(&app.config.nats.nats_url)
        .await
        .expect("nats");
    let p = Publisher::new(client, app.ns.clone());
    p.ensure_stream().await.expect("stream");
    p
}

async fn publish(p: &Publisher, event_type: &str, payload: Value) -> String {
    p.publish_value(event_type, payload)
        .await
        .expect("published")
        .id
}

async fn pull_webhook(app: &TestApp, body: Value) -> i64 {
    let mut body = body;
    body["name"] = json!("puller");
    body["mode"] = json!("pull");
    let (status, w) = app.post("/webhooks", body).await;
    assert_eq!(status, StatusCode::CREATED, "{w}");
    w["id"].as_i64().unwrap()
}

fn ids(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_pull_webhook_has_no_url_and_nothing_is_sent_to_it() {
    let app = spawn_app().await;
    let (status, w) = app
        .post(
            "/webhooks",
            json!({"name": "p", "mode": "pull", "event_type": "user.created"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{w}");
    assert_eq!(w["mode"], "pull");
    assert_eq!(w["url"], Value::Null);
    assert_eq!(w["pull_cursor"], Value::Null);
    let id = w["id"].as_i64().unwrap();

    // a URL is refused for a pull webhook and required for a push one
    let (status, e) = app
        .post(
            "/webhooks",
            json!({"name": "p", "mode": "pull", "url": "https://example.com/h", "event_type": "*"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(e["detail"][0]["loc"], json!(["body", "url"]));
    let (status, e) = app
        .post("/webhooks", json!({"name": "p", "event_type": "*"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(e["detail"][0]["type"], "missing");
    assert_eq!(e["detail"][0]["loc"], json!(["body", "url"]));
    let (status, e) = app
        .post(
            "/webhooks",
            json!({"name": "p", "mode": "poll", "event_type": "*"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        e["detail"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["loc"] == json!(["body", "mode"])),
        "{e}"
    );

    // the mode stays; sending back what was read works
    let (status, _) = app
        .patch(&format!("/webhooks/{id}"), json!({"mode": "push"}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = app
        .patch(
            &format!("/webhooks/{id}"),
            json!({"url": "https://example.com/h"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, read) = app.get(&format!("/webhooks/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    let mut back = read.clone();
    back["name"] = json!("renamed");
    let (status, changed) = app.patch(&format!("/webhooks/{id}"), back).await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["name"], "renamed");
    assert_eq!(changed["mode"], "pull");

    // nothing is sent to it
    for (path, body) in [
        (format!("/webhooks/{id}/test"), json!({})),
        (format!("/webhooks/{id}/replay"), json!({})),
        (
            format!("/webhooks/{id}/recover"),
            json!({"since": "2024-01-01T00:00:00Z"}),
        ),
        (format!("/webhooks/{id}/deliveries/retry"), json!({})),
    ] {
        let (status, e) = app.post(&path, body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{path}: {e}");
        assert!(e["detail"].as_str().unwrap().contains("pull"), "{e}");
    }

    // a push webhook is not pulled
    let push = app
        .create_webhook("push", "https://example.com/h", "*")
        .await;
    assert_eq!(push["mode"], "push");
    let (status, _) = app.get(&format!("/webhooks/{}/pull", push["id"])).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = app.get("/webhooks/999999/pull").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_owner_reads_matching_events_and_acknowledges_with_the_next_cursor() {
    let app = spawn_app().await;
    let p = publisher(&app).await;
    let before = publish(&p, "user.created", json!({"user_id": 0})).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let id = pull_webhook(
        &app,
        json!({
            "event_types": ["user.created", "payment.completed"],
            "filter": {"path": "user_id", "lt": 100},
        }),
    )
    .await;
    let first = publish(&p, "user.created", json!({"user_id": 1, "b": 2, "a": 1})).await;
    publish(&p, "ticket.created", json!({"user_id": 2})).await;
    publish(&p, "payment.completed", json!({"user_id": 500})).await;
    let second = publish(&p, "payment.completed", json!({"user_id": 3})).await;

    // the first page: only what came after the webhook, filtered
    let (status, page) = app.get(&format!("/webhooks/{id}/pull?limit=1")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(ids(&page), [first.as_str()]);
    let e = &page["events"][0];
    assert_eq!(e["event_type"], "user.created");
    assert_eq!(e["payload"], json!({"user_id": 1, "b": 2, "a": 1}));
    assert_eq!(e["attempt_number"], 1);
    assert_eq!(page["next"], e["cursor"]);
    assert_eq!(page["acknowledged"], Value::Null);
    assert_eq!(page["skipped"], false);
    assert!(!ids(&page).contains(&before));

    // not acknowledged: served again
    let (_, again) = app.get(&format!("/webhooks/{id}/pull")).await;
    assert_eq!(ids(&again), [first.clone(), second.clone()]);
    assert_eq!(again["events"][0]["attempt_number"], 2);
    assert_eq!(again["events"][1]["attempt_number"], 1);

    // the next cursor acknowledges the first page
    let next = page["next"].as_str().unwrap();
    let (_, page2) = app.get(&format!("/webhooks/{id}/pull?cursor={next}")).await;
    assert_eq!(ids(&page2), [second.as_str()]);
    assert_eq!(page2["acknowledged"], next);
    let (_, w) = app.get(&format!("/webhooks/{id}")).await;
    assert_eq!(w["pull_cursor"], next);

    // an older cursor does not move the position back
    let (_, page3) = app
        .get(&format!(
            "/webhooks/{id}/pull?cursor={}",
            page2["next"].as_str().unwrap()
        ))
        .await;
    assert!(ids(&page3).is_empty());
    let end = page3["next"].as_str().unwrap().to_owned();
    let (_, back) = app.get(&format!("/webhooks/{id}/pull?cursor={next}")).await;
    assert_eq!(back["acknowledged"], page2["next"]);
    let (_, empty) = app.get(&format!("/webhooks/{id}/pull?cursor={end}")).await;
    assert!(ids(&empty).is_empty());
    assert_eq!(empty["next"], end);

    // every read is a delivery: 1 + 2 + 1 (+ the one re-read by going back)
    let (_, deliveries) = app.get(&format!("/webhooks/{id}/deliveries")).await;
    assert_eq!(deliveries["total"], 5, "{deliveries}");
    assert!(
        deliveries["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["status"] == "success" && d["event_id"].is_string())
    );
    let (_, w) = app.get(&format!("/webhooks/{id}")).await;
    assert_eq!(w["success_count"], 5);
    let (_, stats) = app.get("/webhooks/stats").await;
    assert_eq!(stats["successful_deliveries"], 5);
}

#[tokio::test]
async fn cursors_that_name_no_position_are_refused() {
    let app = spawn_app().await;
    let p = publisher(&app).await;
    let id = pull_webhook(&app, json!({"event_type": "*"})).await;
    publish(&p, "user.created", json!({"user_id": 1})).await;
    let (_, page) = app.get(&format!("/webhooks/{id}/pull")).await;
    let next = page["next"].as_str().unwrap().to_owned();
    let (epoch, seq) = next.split_once(':').unwrap();

    let (status, e) = app
        .get(&format!("/webhooks/{id}/pull?cursor=1:{seq}"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{e}");
    assert!(
        e["detail"].as_str().unwrap().contains("another stream"),
        "{e}"
    );
    assert_eq!(e["restart"], format!("{epoch}:0"));
    let (status, e) = app
        .get(&format!("/webhooks/{id}/pull?cursor={epoch}:99999"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{e}");
    assert!(e["detail"].as_str().unwrap().contains("beyond"), "{e}");
    // neither moved the position
    let (_, w) = app.get(&format!("/webhooks/{id}")).await;
    assert_eq!(w["pull_cursor"], Value::Null);

    for query in [
        "cursor=abc",
        "cursor=1:",
        "cursor=%201:2",
        "limit=0",
        "limit=1001",
        "wait=61",
        "wait=-1",
    ] {
        let (status, e) = app.get(&format!("/webhooks/{id}/pull?{query}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {e}");
        assert_eq!(e["detail"][0]["loc"][0], "query", "{query}");
    }

    // a disabled webhook is not read
    app.patch(&format!("/webhooks/{id}"), json!({"is_active": false}))
        .await;
    let (status, _) = app.get(&format!("/webhooks/{id}/pull")).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_read_waits_for_an_event_published_meanwhile() {
    let app = spawn_app().await;
    let p = publisher(&app).await;
    let id = pull_webhook(&app, json!({"event_type": "ticket.*"})).await;
    let started = Instant::now();
    let (_, empty) = app.get(&format!("/webhooks/{id}/pull?wait=1")).await;
    assert!(ids(&empty).is_empty());
    assert!(started.elapsed() >= Duration::from_millis(900));

    let waiting = {
        let app_url = app.url(&format!("/webhooks/{id}/pull?wait=20"));
        let req = app.client.get(app_url).header("X-API-Key", &app.token);
        tokio::spawn(async move { req.send().await.unwrap().json::<Value>().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish(&p, "user.created", json!({"user_id": 1})).await;
    let wanted = publish(&p, "ticket.created", json!({"ticket_id": 7})).await;
    let started = Instant::now();
    let page = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("answered once the event came")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(ids(&page), [wanted]);
}
