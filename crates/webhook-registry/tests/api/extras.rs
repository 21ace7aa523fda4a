use std::time::Duration;
use storage::testing::{diesel, diesel_async};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use futures::StreamExt;
use proto_events::{ChangeOp, WebhookChange};
use reqwest::StatusCode;
use serde_json::{Value, json};
use storage::models::{Delivery, Webhook};
use storage::schema::{webhook_deliveries as d, webhooks as w};
use test_support::{Receiver, Reply};
use webhook_client::{verify_standard_signature, verify_x_webhook_signature};

use crate::helpers::{TestApp, spawn_app};

/// The webhook's row, its secrets opened.
async fn webhook_row(app: &TestApp, id: i32) -> Webhook {
    let mut conn = app.conn().await;
    let mut row: Webhook = w::table
        .find(id)
        .select(Webhook::as_select())
        .first(&mut conn)
        .await
        .unwrap();
    let keys = storage::SecretsArgs::for_tests().keyring().unwrap();
    let open = |s: Option<String>| {
        s.map(|s| {
            assert!(s.starts_with("sealed:v1:"), "stored in clear");
            keys.open(storage::subscription::purpose::SECRET, &s)
                .unwrap()
        })
    };
    row.secret = open(row.secret);
    row.previous_secret = open(row.previous_secret);
    row
}

#[tokio::test]
async fn test_endpoint_sends_a_signed_event_and_records_it() {
    let app = spawn_app().await;
    let mut receiver = Receiver::start(Reply::with_body(200, "{\"ok\":true}")).await;
    let (_, hook) = app
        .post(
            "/webhooks",
            json!({"name": "t", "url": receiver.url("/hook"), "event_type": "user.created", "secret": "s3cr3t"}),
        )
        .await;
    let id = hook["id"].as_i64().unwrap() as i32;

    let (status, out) = app.post(&format!("/webhooks/{id}/test"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["success"], true);
    assert_eq!(out["response_status"], 200);
    assert_eq!(out["response_body"], "{\"ok\":true}");
    assert_eq!(out["error"], Value::Null);
    assert!(out["latency_ms"].is_u64());

    let got = receiver.next().await;
    let body: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["webhook_id"], id);
    assert_eq!(body["event"], "webhook.test");
    assert_eq!(body["message"], "Test delivery from bedolaga-events");
    assert!(chrono::DateTime::parse_from_rfc3339(body["sent_at"].as_str().unwrap()).is_ok());
    // Canonical (Python json.dumps(sort_keys=True)) bytes.
    assert_eq!(got.body, proto_events::canonical::to_canonical_vec(&body));
    assert_eq!(got.header("x-webhook-event"), Some("webhook.test"));
    assert_eq!(got.header("x-webhook-id"), Some(id.to_string().as_str()));
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert!(verify_x_webhook_signature(
        "s3cr3t",
        &got.body,
        got.header("x-webhook-signature").unwrap()
    ));
    let msg_id = got.header("webhook-id").unwrap();
    let ts: i64 = got.header("webhook-timestamp").unwrap().parse().unwrap();
    assert!(verify_standard_signature(
        "s3cr3t",
        msg_id,
        ts,
        &got.body,
        got.header("webhook-signature").unwrap()
    ));

    // Recorded as a delivery and counted.
    let mut conn = app.conn().await;
    let row: Delivery = d::table
        .find(out["delivery_id"].as_i64().unwrap())
        .select(Delivery::as_select())
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!(row.webhook_id, id);
    assert_eq!(row.event_type, "webhook.test");
    assert_eq!(row.status.as_str(), "success");
    assert_eq!(row.response_status, Some(200));
    assert_eq!(row.payload, body);
    assert!(row.delivered_at.is_some());
    let hook = webhook_row(&app, id).await;
    assert_eq!(hook.success_count, 1);
    assert!(hook.last_triggered_at.is_some());
    let (_, page) = app.get(&format!("/webhooks/{id}/deliveries")).await;
    assert_eq!(page["total"], 1);
}

#[tokio::test]
async fn test_endpoint_reports_failures() {
    let app = spawn_app().await;
    let mut receiver = Receiver::start(Reply::with_body(500, "boom")).await;
    let hook = app.create_webhook("t", &receiver.url("/hook"), "*").await;
    let id = hook["id"].as_i64().unwrap() as i32;
    let (status, out) = app.post(&format!("/webhooks/{id}/test"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(out["success"], false);
    assert_eq!(out["response_status"], 500);
    assert_eq!(out["response_body"], "boom");
    assert_eq!(out["error"], "HTTP 500");
    let got = receiver.next().await;
    assert_eq!(
        got.header("x-webhook-signature"),
        None,
        "no secret, no signature"
    );
    assert_eq!(webhook_row(&app, id).await.failure_count, 1);
    let (_, page) = app
        .get(&format!("/webhooks/{id}/deliveries?status=failed"))
        .await;
    assert_eq!(page["total"], 1);

    // Nobody listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let hook = app
        .create_webhook("t2", &format!("http://{closed}/x"), "*")
        .await;
    let (_, out) = app
        .post(&format!("/webhooks/{}/test", hook["id"]), json!({}))
        .await;
    assert_eq!(out["success"], false);
    assert_eq!(out["response_status"], Value::Null);
    assert!(out["error"].as_str().unwrap().contains("refused"), "{out}");
}

#[tokio::test]
async fn rotation_keeps_the_old_secret_signing_during_the_grace_period() {
    let app = spawn_app().await;
    let mut receiver = Receiver::start(Reply::with_body(204, "")).await;
    let (_, hook) = app
        .post(
            "/webhooks",
            json!({"name": "r", "url": receiver.url("/hook"), "event_type": "*", "secret": "old-secret"}),
        )
        .await;
    let id = hook["id"].as_i64().unwrap() as i32;

    // Empty body: generated secret, default grace (24 h).
    let resp = app
        .req(
            reqwest::Method::POST,
            &format!("/webhooks/{id}/rotate-secret"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let out: Value = resp.json().await.unwrap();
    let new_secret = out["secret"].as_str().unwrap().to_owned();
    assert!(new_secret.len() >= 32);
    assert_eq!(out["webhook"]["id"], id);
    let until =
        chrono::DateTime::parse_from_rfc3339(out["previous_secret_expires_at"].as_str().unwrap())
            .unwrap();
    let hours = (until.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_minutes();
    assert!((23 * 60..=24 * 60).contains(&hours), "{hours}");
    // Never shown again.
    let (_, got) = app.get(&format!("/webhooks/{id}")).await;
    assert!(!got.to_string().contains(&new_secret));
    let row = webhook_row(&app, id).await;
    assert_eq!(row.secret.as_deref(), Some(new_secret.as_str()));
    assert_eq!(row.previous_secret.as_deref(), Some("old-secret"));

    // Deliveries carry both signatures.
    let (_, out) = app.post(&format!("/webhooks/{id}/test"), json!({})).await;
    assert_eq!(out["success"], true, "{out}");
    let got = receiver.next().await;
    let sig = got.header("webhook-signature").unwrap();
    assert_eq!(sig.split(' ').count(), 2, "{sig}");
    let msg_id = got.header("webhook-id").unwrap();
    let ts: i64 = got.header("webhook-timestamp").unwrap().parse().unwrap();
    assert!(verify_standard_signature(
        &new_secret,
        msg_id,
        ts,
        &got.body,
        sig
    ));
    assert!(verify_standard_signature(
        "old-secret",
        msg_id,
        ts,
        &got.body,
        sig
    ));
    assert!(verify_x_webhook_signature(
        &new_secret,
        &got.body,
        got.header("x-webhook-signature").unwrap()
    ));

    // A given secret and no grace: not echoed, the old one stops at once.
    let (status, out) = app
        .post(
            &format!("/webhooks/{id}/rotate-secret"),
            json!({"secret": "chosen-secret", "grace_period_seconds": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(out.get("secret").is_none(), "{out}");
    assert_eq!(out["previous_secret_expires_at"], Value::Null);
    assert!(!out.to_string().contains("chosen-secret"));
    app.post(&format!("/webhooks/{id}/test"), json!({})).await;
    let got = receiver.next().await;
    let sig = got.header("webhook-signature").unwrap();
    assert_eq!(sig.split(' ').count(), 1);
    let msg_id = got.header("webhook-id").unwrap();
    let ts: i64 = got.header("webhook-timestamp").unwrap().parse().unwrap();
    assert!(verify_standard_signature(
        "chosen-secret",
        msg_id,
        ts,
        &got.body,
        sig
    ));

    // Validation.
    let (status, resp) = app
        .post(
            &format!("/webhooks/{id}/rotate-secret"),
            json!({"grace_period_seconds": -5}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        resp["detail"][0]["loc"],
        json!(["body", "grace_period_seconds"])
    );
    let (status, resp) = app
        .post(
            &format!("/webhooks/{id}/rotate-secret"),
            json!({"secret": ""}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(resp["detail"][0]["type"], "string_too_short");
}

#[tokio::test]
async fn event_catalogue_and_openapi_document() {
    let app = spawn_app().await;
    let resp = app
        .client
        .get(app.url("/events/types"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cat: Value = resp.json().await.unwrap();
    let names: Vec<&str> = cat["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert_eq!(names, proto_events::EventType::names());
    for item in cat["items"].as_array().unwrap() {
        assert!(item["schema"].is_object());
        assert!(item["description"].is_string());
    }
    assert!(
        cat["patterns"]
            .as_array()
            .unwrap()
            .contains(&json!("ticket.*"))
    );

    let resp = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let doc: Value = resp.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/webhooks", "post"),
        ("/webhooks", "get"),
        ("/webhooks/stats", "get"),
        ("/webhooks/{webhook_id}", "get"),
        ("/webhooks/{webhook_id}", "patch"),
        ("/webhooks/{webhook_id}", "delete"),
        ("/webhooks/{webhook_id}/deliveries", "get"),
        ("/webhooks/{webhook_id}/deliveries/hourly", "get"),
        ("/services/readiness", "get"),
        (
            "/webhooks/{webhook_id}/deliveries/{delivery_id}/retry",
            "post",
        ),
        ("/webhooks/{webhook_id}/test", "post"),
        ("/webhooks/{webhook_id}/rotate-secret", "post"),
        ("/events/types", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path}"
        );
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["api_key"]["name"], "X-API-Key");
    let webhook = &doc["components"]["schemas"]["WebhookOut"]["properties"];
    assert!(webhook.get("secret").is_none());
    assert!(webhook.get("disabled_reason").is_some());
}

#[tokio::test]
async fn metrics_count_requests_by_route_method_and_status() {
    let app = spawn_app().await;
    app.get("/webhooks").await;
    app.get("/webhooks/abc").await;
    app.client.get(app.url("/webhooks")).send().await.unwrap();
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            r#"registry_http_requests_total{route="/webhooks",method="GET",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(
        r#"registry_http_requests_total{route="/webhooks",method="GET",status="401"} 1"#
    ));
    assert!(text.contains(r#"route="/webhooks/{webhook_id}",method="GET",status="422""#));
    assert!(text.contains("registry_http_request_duration_seconds_bucket"));
}

#[tokio::test]
async fn writes_publish_change_notices() {
    let app = spawn_app().await;
    let nats = async_nats::connect(app.config.nats.nats_url.as_str())
        .await
        .unwrap();
    let mut sub = nats
        .subscribe(app.ns.webhooks_changed_subject())
        .await
        .unwrap();
    nats.flush().await.unwrap();

    let hook = app.create_webhook("n", "https://example.com/n", "*").await;
    let id = hook["id"].as_i64().unwrap();
    app.patch(&format!("/webhooks/{id}"), json!({"name": "m"}))
        .await;
    app.post(&format!("/webhooks/{id}/rotate-secret"), json!({}))
        .await;
    app.delete(&format!("/webhooks/{id}")).await;
    // Reads publish nothing.
    app.get(&format!("/webhooks/{id}")).await;

    let mut ops = Vec::new();
    for _ in 0..4 {
        let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("a change notice")
            .unwrap();
        let notice = WebhookChange::from_payload(&msg.payload).unwrap();
        assert_eq!(i64::from(notice.webhook_id), id);
        ops.push(notice.op);
    }
    assert_eq!(
        ops,
        [
            ChangeOp::Created,
            ChangeOp::Updated,
            ChangeOp::Rotated,
            ChangeOp::Deleted
        ]
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err(),
        "unexpected extra notice"
    );
}
