//! The delivery policy fields of a webhook (docs/contract.md, "Delivery
//! policy") and its circuit as the worker leaves it.

use diesel_async::RunQueryDsl;
use reqwest::StatusCode;
use serde_json::{Value, json};
use storage::testing::diesel_async;

use crate::helpers::spawn_app;

fn locs(body: &Value) -> Vec<String> {
    body["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["loc"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().map_or_else(|| l.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(".")
        })
        .collect()
}

#[tokio::test]
async fn a_new_webhook_has_no_policy_and_a_closed_circuit() {
    let app = spawn_app().await;
    let w = app.create_webhook("a", "https://example.com/a", "*").await;
    assert_eq!(w["rate_limit_per_s"], Value::Null);
    assert_eq!(w["rate_burst"], Value::Null);
    assert_eq!(w["ordered"], false);
    assert_eq!(w["ordered_since"], Value::Null);
    assert_eq!(w["circuit_threshold"], Value::Null);
    assert_eq!(w["circuit_cooldown_s"], Value::Null);
    assert_eq!(
        w["circuit"],
        json!({"state": "closed", "since": null, "consecutive_failures": 0})
    );
}

#[tokio::test]
async fn policy_fields_round_trip_through_create_get_and_list() {
    let app = spawn_app().await;
    let (status, w) = app
        .post(
            "/webhooks",
            json!({
                "name": "limited", "url": "https://example.com/a", "event_type": "*",
                "rate_limit_per_s": 2.5, "rate_burst": 10, "ordered": true,
                "circuit_threshold": 3, "circuit_cooldown_s": 120,
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{w}");
    assert_eq!(w["rate_limit_per_s"], 2.5);
    assert_eq!(w["rate_burst"], 10);
    assert_eq!(w["ordered"], true);
    assert!(w["ordered_since"].is_string(), "{w}");
    assert_eq!(w["circuit_threshold"], 3);
    assert_eq!(w["circuit_cooldown_s"], 120);
    let id = w["id"].as_i64().unwrap();
    let (_, got) = app.get(&format!("/webhooks/{id}")).await;
    assert_eq!(got, w);
    let (_, page) = app.get("/webhooks").await;
    assert_eq!(page["items"][0], w);
    // Sending back what was read changes nothing, ordered_since included.
    let (status, again) = app.patch(&format!("/webhooks/{id}"), got.clone()).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    for f in [
        "rate_limit_per_s",
        "rate_burst",
        "ordered",
        "ordered_since",
        "circuit_threshold",
        "circuit_cooldown_s",
    ] {
        assert_eq!(again[f], w[f], "{f}");
    }
}

#[tokio::test]
async fn patch_sets_clears_and_keeps_policy_fields() {
    let app = spawn_app().await;
    let w = app.create_webhook("a", "https://example.com/a", "*").await;
    let path = format!("/webhooks/{}", w["id"]);

    let (status, w) = app
        .patch(&path, json!({"rate_limit_per_s": 5, "rate_burst": 20}))
        .await;
    assert_eq!(status, StatusCode::OK, "{w}");
    assert_eq!(
        (w["rate_limit_per_s"].as_f64(), w["rate_burst"].as_i64()),
        (Some(5.0), Some(20))
    );

    // Absent: unchanged.
    let (_, w) = app.patch(&path, json!({"name": "b"})).await;
    assert_eq!(w["rate_limit_per_s"], 5.0);
    assert_eq!(w["rate_burst"], 20);

    // The burst alone may go back to the default.
    let (_, w) = app.patch(&path, json!({"rate_burst": null})).await;
    assert_eq!(w["rate_burst"], Value::Null);
    assert_eq!(w["rate_limit_per_s"], 5.0);

    // Clearing the rate clears its burst too.
    let (_, w) = app.patch(&path, json!({"rate_burst": 7})).await;
    assert_eq!(w["rate_burst"], 7);
    let (status, w) = app.patch(&path, json!({"rate_limit_per_s": null})).await;
    assert_eq!(status, StatusCode::OK, "{w}");
    assert_eq!(w["rate_limit_per_s"], Value::Null);
    assert_eq!(w["rate_burst"], Value::Null);

    // Ordered: on starts it now, unchanged keeps the time, off clears it.
    let (_, w) = app.patch(&path, json!({"ordered": true})).await;
    let since = w["ordered_since"].clone();
    assert!(since.is_string(), "{w}");
    let (_, w) = app.patch(&path, json!({"ordered": "yes"})).await;
    assert_eq!(w["ordered_since"], since);
    let (_, w) = app.patch(&path, json!({"ordered": null})).await;
    assert_eq!(w["ordered"], true);
    let (_, w) = app.patch(&path, json!({"ordered": false})).await;
    assert_eq!(w["ordered"], false);
    assert_eq!(w["ordered_since"], Value::Null);

    // Circuit overrides, and back to the worker's settings.
    let (_, w) = app
        .patch(
            &path,
            json!({"circuit_threshold": 1, "circuit_cooldown_s": 604800}),
        )
        .await;
    assert_eq!(
        (
            w["circuit_threshold"].as_i64(),
            w["circuit_cooldown_s"].as_i64()
        ),
        (Some(1), Some(604800))
    );
    let (_, w) = app
        .patch(
            &path,
            json!({"circuit_threshold": null, "circuit_cooldown_s": null}),
        )
        .await;
    assert_eq!(w["circuit_threshold"], Value::Null);
    assert_eq!(w["circuit_cooldown_s"], Value::Null);
}

#[tokio::test]
async fn bad_policy_values_are_422_with_the_field_named() {
    let app = spawn_app().await;
    let base = json!({"name": "a", "url": "https://example.com/a", "event_type": "*"});
    let with = |extra: Value| {
        let mut b = base.clone();
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    for (extra, loc, kind) in [
        (
            json!({"rate_limit_per_s": 0}),
            "body.rate_limit_per_s",
            "greater_than",
        ),
        (
            json!({"rate_limit_per_s": -1.5}),
            "body.rate_limit_per_s",
            "greater_than",
        ),
        (
            json!({"rate_limit_per_s": 100000.5}),
            "body.rate_limit_per_s",
            "less_than_equal",
        ),
        (
            json!({"rate_limit_per_s": "fast"}),
            "body.rate_limit_per_s",
            "float_type",
        ),
        (
            json!({"rate_limit_per_s": 1, "rate_burst": 0}),
            "body.rate_burst",
            "greater_than_equal",
        ),
        (
            json!({"rate_limit_per_s": 1, "rate_burst": 1.5}),
            "body.rate_burst",
            "int_type",
        ),
        (json!({"rate_burst": 5}), "body.rate_burst", "value_error"),
        (json!({"ordered": "maybe"}), "body.ordered", "bool_parsing"),
        (
            json!({"circuit_threshold": 0}),
            "body.circuit_threshold",
            "greater_than_equal",
        ),
        (
            json!({"circuit_threshold": 1000001}),
            "body.circuit_threshold",
            "less_than_equal",
        ),
        (
            json!({"circuit_cooldown_s": 604801}),
            "body.circuit_cooldown_s",
            "less_than_equal",
        ),
    ] {
        let (status, body) = app.post("/webhooks", with(extra.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{extra}: {body}");
        assert_eq!(locs(&body), [loc], "{extra}: {body}");
        assert_eq!(body["detail"][0]["type"], kind, "{extra}: {body}");
    }
    let (_, body) = app.post("/webhooks", with(json!({"rate_burst": 5}))).await;
    assert!(
        body["detail"][0]["msg"]
            .as_str()
            .unwrap()
            .contains("rate_limit_per_s"),
        "{body}"
    );

    // A burst on a webhook without a rate: the request is valid, the
    // webhook as stored does not take it.
    let w = app.create_webhook("b", "https://example.com/b", "*").await;
    let (status, body) = app
        .patch(&format!("/webhooks/{}", w["id"]), json!({"rate_burst": 3}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("rate_limit_per_s"),
        "{body}"
    );
    let (status, body) = app
        .patch(
            &format!("/webhooks/{}", w["id"]),
            json!({"circuit_cooldown_s": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(locs(&body), ["body.circuit_cooldown_s"]);
}

#[tokio::test]
async fn a_pull_webhook_takes_no_policy() {
    let app = spawn_app().await;
    let (status, body) = app
        .post(
            "/webhooks",
            json!({"name": "p", "mode": "pull", "event_type": "*", "ordered": true, "rate_limit_per_s": 3}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(locs(&body), ["body.rate_limit_per_s", "body.ordered"]);
    assert!(
        body["detail"][0]["msg"]
            .as_str()
            .unwrap()
            .contains("pull webhook")
    );

    // Without a policy (null, false: what it reads back) it is fine.
    let (status, w) = app
        .post(
            "/webhooks",
            json!({"name": "p", "mode": "pull", "event_type": "*", "ordered": false, "rate_limit_per_s": null}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{w}");
    let path = format!("/webhooks/{}", w["id"]);
    let (status, _) = app.patch(&path, w.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app.patch(&path, json!({"circuit_threshold": 2})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("circuit_threshold"),
        "{body}"
    );
}

#[tokio::test]
async fn the_circuit_is_read_from_the_workers_table() {
    let app = spawn_app().await;
    let w = app.create_webhook("a", "https://example.com/a", "*").await;
    let other = app.create_webhook("b", "https://example.com/b", "*").await;
    let id = w["id"].as_i64().unwrap() as i32;
    let mut conn = app.conn().await;
    storage::testing::diesel::sql_query(
        "INSERT INTO webhook_circuit (webhook_id, state, since, consecutive_failures) \
         VALUES ($1, 'open', '2026-12-07T10:00:00Z', 7)",
    )
    .bind::<storage::testing::diesel::sql_types::Int4, _>(id)
    .execute(&mut conn)
    .await
    .unwrap();
    let open = json!({"state": "open", "since": "2026-12-07T10:00:00Z", "consecutive_failures": 7});
    let (_, got) = app.get(&format!("/webhooks/{id}")).await;
    assert_eq!(got["circuit"], open);
    let (_, page) = app.get("/webhooks").await;
    let items = page["items"].as_array().unwrap();
    let of = |wid: &Value| items.iter().find(|i| i["id"] == *wid).unwrap()["circuit"].clone();
    assert_eq!(of(&w["id"]), open);
    assert_eq!(of(&other["id"])["state"], "closed");
    let (_, patched) = app
        .patch(&format!("/webhooks/{id}"), json!({"name": "c"}))
        .await;
    assert_eq!(patched["circuit"], open);
    storage::testing::diesel::sql_query(
        "UPDATE webhook_circuit SET state = 'half_open' WHERE webhook_id = $1",
    )
    .bind::<storage::testing::diesel::sql_types::Int4, _>(id)
    .execute(&mut conn)
    .await
    .unwrap();
    let (_, got) = app.get(&format!("/webhooks/{id}")).await;
    assert_eq!(got["circuit"]["state"], "half_open");
}
