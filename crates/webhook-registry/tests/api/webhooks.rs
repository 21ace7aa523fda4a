use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use reqwest::StatusCode;
use serde_json::{Value, json};
use storage::schema::{webhook_deliveries as d, webhooks as w};
use storage::testing::{diesel, diesel_async};

use crate::helpers::spawn_app;

const FIELDS: [&str; 29] = [
    "id",
    "name",
    "url",
    "event_type",
    "is_active",
    "description",
    "created_at",
    "updated_at",
    "last_triggered_at",
    "failure_count",
    "success_count",
    "disabled_reason",
    "failing_since",
    "body_format",
    // Subscriptions (added after the seed's fields).
    "event_types",
    "filter",
    "headers",
    "auth",
    "signature_scheme",
    "public_key",
    // Pull webhooks.
    "mode",
    "pull_cursor",
    // Delivery policy.
    "rate_limit_per_s",
    "rate_burst",
    "ordered",
    "ordered_since",
    "circuit_threshold",
    "circuit_cooldown_s",
    "circuit",
];

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

fn sorted(fields: &[&str]) -> Vec<String> {
    let mut k: Vec<String> = fields.iter().map(|s| (*s).to_owned()).collect();
    k.sort();
    k
}

#[tokio::test]
async fn create_returns_the_webhook_without_its_secret() {
    let app = spawn_app().await;
    let (status, body) = app
        .post(
            "/webhooks",
            json!({
                "name": "My Webhook",
                "url": "https://example.com/webhook",
                "event_type": "user.created",
                "secret": "optional-secret-for-signing",
                "description": "Webhook для новых пользователей 🎉",
                "unknown_field": "ignored"
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(keys(&body), sorted(&FIELDS));
    assert_eq!(body["name"], "My Webhook");
    assert_eq!(body["url"], "https://example.com/webhook");
    assert_eq!(body["event_type"], "user.created");
    assert_eq!(body["is_active"], true);
    assert_eq!(body["description"], "Webhook для новых пользователей 🎉");
    assert_eq!(body["failure_count"], 0);
    assert_eq!(body["success_count"], 0);
    assert_eq!(body["last_triggered_at"], Value::Null);
    assert_eq!(body["disabled_reason"], Value::Null);
    assert_eq!(
        body["body_format"], "canonical",
        "the default for new webhooks"
    );
    let created = body["created_at"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(created).is_ok(),
        "{created}"
    );
    assert!(!body.to_string().contains("optional-secret-for-signing"));

    // Stored with the secret.
    let id = body["id"].as_i64().unwrap() as i32;
    let secret = app.stored_secret(id).await;
    assert_eq!(secret.as_deref(), Some("optional-secret-for-signing"));

    let (status, got) = app.get(&format!("/webhooks/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, body);
    assert!(!got.to_string().contains("optional-secret"));

    // The bot's body format can be asked for.
    let (status, bot) = app
        .post(
            "/webhooks",
            json!({"name": "b", "url": "https://example.com/b", "event_type": "user.created",
                   "body_format": "bot"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{bot}");
    assert_eq!(bot["body_format"], "bot");

    // Patterns are accepted too.
    for pattern in ["ticket.*", "*"] {
        let hook = app
            .create_webhook("p", "https://example.com/p", pattern)
            .await;
        assert_eq!(hook["event_type"], pattern);
    }
}

#[tokio::test]
async fn unknown_webhooks_are_404() {
    let app = spawn_app().await;
    let nf = json!({"detail": "Webhook not found"});
    assert_eq!(
        app.get("/webhooks/12345").await,
        (StatusCode::NOT_FOUND, nf.clone())
    );
    assert_eq!(
        app.patch("/webhooks/12345", json!({"name": "x"})).await,
        (StatusCode::NOT_FOUND, nf.clone())
    );
    assert_eq!(
        app.delete("/webhooks/12345").await,
        (StatusCode::NOT_FOUND, nf.clone())
    );
    assert_eq!(
        app.get("/webhooks/12345/deliveries").await,
        (StatusCode::NOT_FOUND, nf.clone())
    );
    assert_eq!(
        app.post("/webhooks/12345/test", json!({})).await,
        (StatusCode::NOT_FOUND, nf.clone())
    );
    assert_eq!(
        app.post("/webhooks/12345/rotate-secret", json!({})).await,
        (StatusCode::NOT_FOUND, nf.clone())
    );
    // Out of the id range: still a 404, not a 500.
    assert_eq!(
        app.get("/webhooks/99999999999999").await,
        (StatusCode::NOT_FOUND, nf.clone())
    );
    assert_eq!(app.get("/webhooks/-1").await, (StatusCode::NOT_FOUND, nf));
}

#[tokio::test]
async fn patch_changes_only_the_given_fields() {
    let app = spawn_app().await;
    let (_, created) = app
        .post(
            "/webhooks",
            json!({"name": "a", "url": "https://example.com/a", "event_type": "user.created",
                   "secret": "s1", "description": "d"}),
        )
        .await;
    let id = created["id"].as_i64().unwrap() as i32;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;

    let (status, patched) = app
        .patch(
            &format!("/webhooks/{id}"),
            json!({"name": "Updated Name", "is_active": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["name"], "Updated Name");
    assert_eq!(patched["is_active"], false);
    for same in ["url", "event_type", "description", "created_at", "id"] {
        assert_eq!(patched[same], created[same], "{same}");
    }
    assert!(patched["updated_at"].as_str().unwrap() > created["updated_at"].as_str().unwrap());

    // A client that sends back the object it read (no secret, or a null
    // one) keeps signing: null leaves a field unchanged, as in the bot.
    let mut read_back = patched.clone();
    read_back["secret"] = Value::Null;
    let (status, same) = app.patch(&format!("/webhooks/{id}"), read_back).await;
    assert_eq!(status, StatusCode::OK, "{same}");
    let mut conn = app.conn().await;
    let secret = app.stored_secret(id).await;
    assert_eq!(secret.as_deref(), Some("s1"), "null kept the secret");
    assert_eq!(same["description"], "d");

    // An empty string clears the description and the secret; a new URL is
    // validated and kept; the body format can be switched.
    let (status, patched) = app
        .patch(
            &format!("/webhooks/{id}"),
            json!({"description": "", "secret": "", "url": "https://example.org/new",
                   "body_format": "bot"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["description"], Value::Null);
    assert_eq!(patched["url"], "https://example.org/new");
    assert_eq!(patched["name"], "Updated Name");
    assert_eq!(patched["body_format"], "bot");
    let secret = app.stored_secret(id).await;
    assert_eq!(secret, None);

    // Setting a secret stores it and never shows it.
    let (_, patched) = app
        .patch(
            &format!("/webhooks/{id}"),
            json!({"secret": "new-secret-value"}),
        )
        .await;
    assert!(!patched.to_string().contains("new-secret-value"));
    let secret = app.stored_secret(id).await;
    assert_eq!(secret.as_deref(), Some("new-secret-value"));

    // Re-activating clears what the worker set when it disabled the hook.
    diesel::update(w::table.find(id))
        .set((
            w::is_active.eq(false),
            w::disabled_reason.eq(Some("receiver answered 410 Gone")),
            w::failing_since.eq(Some(chrono::Utc::now())),
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    let (_, got) = app.get(&format!("/webhooks/{id}")).await;
    assert_eq!(got["disabled_reason"], "receiver answered 410 Gone");
    let (_, patched) = app
        .patch(&format!("/webhooks/{id}"), json!({"is_active": true}))
        .await;
    assert_eq!(patched["is_active"], true);
    assert_eq!(patched["disabled_reason"], Value::Null);
    let failing: Option<chrono::DateTime<chrono::Utc>> = w::table
        .find(id)
        .select(w::failing_since)
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!(failing, None);
}

#[tokio::test]
async fn delete_is_204_and_takes_the_deliveries() {
    let app = spawn_app().await;
    let hook = app
        .create_webhook("a", "https://example.com/a", "user.created")
        .await;
    let id = hook["id"].as_i64().unwrap() as i32;
    app.insert_delivery(id, "success", "e1", 1).await;
    app.insert_delivery(id, "failed", "e2", 1).await;
    let resp = app
        .req(reqwest::Method::DELETE, &format!("/webhooks/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.bytes().await.unwrap().is_empty());
    assert_eq!(
        app.get(&format!("/webhooks/{id}")).await.0,
        StatusCode::NOT_FOUND
    );
    let mut conn = app.conn().await;
    let left: i64 = d::table
        .filter(d::webhook_id.eq(id))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn list_filters_pages_and_orders_newest_first() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let t = if i % 2 == 0 {
            "user.created"
        } else {
            "ticket.*"
        };
        let hook = app
            .create_webhook(&format!("h{i}"), "https://example.com/h", t)
            .await;
        ids.push(hook["id"].as_i64().unwrap());
    }
    // Deactivate two user.created hooks.
    for id in [ids[0], ids[2]] {
        app.patch(&format!("/webhooks/{id}"), json!({"is_active": false}))
            .await;
    }

    let (status, page) = app.get("/webhooks").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["total"], 7);
    assert_eq!(page["limit"], 50);
    assert_eq!(page["offset"], 0);
    let got: Vec<i64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_i64().unwrap())
        .collect();
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(got, newest_first);
    for item in page["items"].as_array().unwrap() {
        assert_eq!(keys(item), sorted(&FIELDS));
    }

    let (_, page) = app.get("/webhooks?limit=3&offset=2").await;
    assert_eq!(page["total"], 7);
    assert_eq!(page["limit"], 3);
    assert_eq!(page["offset"], 2);
    let got: Vec<i64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, newest_first[2..5].to_vec());

    let (_, page) = app.get("/webhooks?event_type=user.created").await;
    assert_eq!(page["total"], 4);
    let (_, page) = app
        .get("/webhooks?event_type=user.created&is_active=true")
        .await;
    assert_eq!(page["total"], 2);
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let (_, page) = app.get("/webhooks?is_active=false").await;
    assert_eq!(page["total"], 2);
    let (_, page) = app.get("/webhooks?event_type=ticket.%2A&limit=1").await;
    assert_eq!(page["total"], 3);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);

    // Beyond the end: an empty page with the right total.
    let (status, page) = app.get("/webhooks?offset=1000000000000").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["items"], json!([]));
    assert_eq!(page["total"], 7);
    // Limits at the edges.
    assert_eq!(app.get("/webhooks?limit=200").await.0, StatusCode::OK);
    assert_eq!(app.get("/webhooks?limit=1").await.0, StatusCode::OK);
}

#[tokio::test]
async fn stats_count_webhooks_and_deliveries() {
    let app = spawn_app().await;
    let (status, stats) = app.get("/webhooks/stats").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        stats,
        json!({"total_webhooks": 0, "active_webhooks": 0, "total_deliveries": 0,
               "successful_deliveries": 0, "failed_deliveries": 0, "success_rate": 0.0})
    );
    let a = app
        .create_webhook("a", "https://example.com/a", "user.created")
        .await;
    let b = app.create_webhook("b", "https://example.com/b", "*").await;
    app.patch(
        &format!("/webhooks/{}", b["id"]),
        json!({"is_active": false}),
    )
    .await;
    let id = a["id"].as_i64().unwrap() as i32;
    app.insert_delivery(id, "success", "e1", 1).await;
    app.insert_delivery(id, "success", "e2", 1).await;
    app.insert_delivery(id, "failed", "e3", 1).await;
    let (_, stats) = app.get("/webhooks/stats").await;
    assert_eq!(
        stats,
        json!({"total_webhooks": 2, "active_webhooks": 1, "total_deliveries": 3,
               "successful_deliveries": 2, "failed_deliveries": 1, "success_rate": 66.67})
    );
}
