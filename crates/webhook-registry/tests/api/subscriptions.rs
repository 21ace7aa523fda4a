//! Subscriptions through the API: several patterns, payload filters,
//! custom headers, receiver auth and ed25519 signing keys; what is shown
//! and what is stored (sealed, never in clear).

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use reqwest::StatusCode;
use serde_json::{Value, json};
use storage::schema::webhooks as w;
use storage::subscription::{StoredAuth, purpose};
use storage::testing::{diesel, diesel_async};

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

/// The whole `webhooks` row as text, as a dump would hold it.
async fn row_text(app: &TestApp, id: i64) -> String {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        t: String,
    }
    let r: Row =
        diesel::sql_query("SELECT row_to_json(w)::text AS t FROM webhooks w WHERE id = $1")
            .bind::<diesel::sql_types::Int4, _>(i32::try_from(id).unwrap())
            .get_result(&mut app.conn().await)
            .await
            .unwrap();
    r.t
}

fn keys() -> storage::secrets::Keyring {
    storage::SecretsArgs::for_tests().keyring().unwrap()
}

fn loc(body: &Value) -> Vec<Value> {
    body["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["loc"].clone())
        .collect()
}

fn full() -> Value {
    json!({
        "name": "crm",
        "url": "https://crm.example/hook",
        "event_types": ["payment.completed", "user.created"],
        "secret": "hmac-secret-value-1",
        "filter": {"or": [
            {"path": "user_id", "exists": true},
            {"and": [{"path": "type", "eq": "deposit"}, {"path": "amount_kopeks", "gte": 100000}]}
        ]},
        "headers": {
            "X-Source": "bedolaga",
            "X-Api-Key": {"value": "header-secret-value-2", "secret": true}
        },
        "auth": {"type": "basic", "username": "robot", "password": "basic-password-3"}
    })
}

const PLAINTEXTS: [&str; 3] = [
    "hmac-secret-value-1",
    "header-secret-value-2",
    "basic-password-3",
];

#[tokio::test]
async fn several_patterns_filter_headers_and_auth_are_shown_without_secrets_and_stored_sealed() {
    let app = spawn_app().await;
    let (status, hook) = app.post("/webhooks", full()).await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    assert_eq!(hook["event_type"], "payment.completed");
    assert_eq!(
        hook["event_types"],
        json!(["payment.completed", "user.created"])
    );
    assert_eq!(hook["filter"]["or"][1]["and"][1]["gte"], json!(100000));
    assert_eq!(
        hook["headers"],
        json!({"X-Source": "bedolaga", "X-Api-Key": {"secret": true}})
    );
    assert_eq!(hook["auth"], json!({"type": "basic", "username": "robot"}));
    assert_eq!(hook["signature_scheme"], "hmac");
    assert_eq!(hook["public_key"], Value::Null);
    let text = hook.to_string();
    for secret in PLAINTEXTS {
        assert!(!text.contains(secret), "{secret} shown: {text}");
    }
    let id = hook["id"].as_i64().unwrap();
    let row = row_text(&app, id).await;
    for secret in PLAINTEXTS {
        assert!(!row.contains(secret), "{secret} stored in clear: {row}");
    }
    assert!(row.contains("sealed:v1:"), "{row}");

    // What is sealed opens to what was given.
    let stored: (Option<String>, Option<Value>) = w::table
        .find(i32::try_from(id).unwrap())
        .select((w::secret, w::auth))
        .first(&mut app.conn().await)
        .await
        .unwrap();
    let k = keys();
    assert_eq!(
        k.open(purpose::SECRET, stored.0.as_deref().unwrap())
            .unwrap(),
        "hmac-secret-value-1"
    );
    let auth = storage::subscription::auth_of(stored.1.as_ref()).unwrap();
    assert!(matches!(
        auth.opened(&k).unwrap(),
        StoredAuth::Basic { ref password, .. } if password == "basic-password-3"
    ));

    // Sent back as read, everything stored is kept; the secret header and
    // the password included.
    let (status, again) = app.patch(&format!("/webhooks/{id}"), hook.clone()).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    let mut same = hook.clone();
    same["updated_at"] = again["updated_at"].clone();
    assert_eq!(again, same);
    let after: (Option<Value>, Option<Value>) = w::table
        .find(i32::try_from(id).unwrap())
        .select((w::headers, w::auth))
        .first(&mut app.conn().await)
        .await
        .unwrap();
    let sending = storage::subscription::Sending {
        url: String::new(),
        body_format: storage::models::BodyFormat::Canonical,
        signature_scheme: storage::subscription::SignatureScheme::Hmac,
        secret: None,
        previous_secret: None,
        previous_secret_expires_at: None,
        headers: after.0,
        auth: after.1,
    };
    let opened = sending.open(&k).unwrap();
    assert!(
        opened
            .headers
            .contains(&("X-Api-Key".to_owned(), "header-secret-value-2".to_owned()))
    );
    assert!(
        matches!(opened.auth, Some(StoredAuth::Basic { ref password, .. }) if password == "basic-password-3")
    );
}

#[tokio::test]
async fn a_one_type_webhook_keeps_the_seed_shape_and_event_type_edits_the_first_pattern() {
    let app = spawn_app().await;
    let hook = app
        .create_webhook("seed", "https://a.example/h", "user.created")
        .await;
    assert_eq!(hook["event_type"], "user.created");
    assert_eq!(hook["event_types"], json!(["user.created"]));
    assert_eq!(hook["filter"], Value::Null);
    assert_eq!(hook["headers"], json!({}));
    assert_eq!(hook["auth"], Value::Null);
    let id = hook["id"].as_i64().unwrap();

    // A seed client changes `event_type` only.
    let (status, h) = app
        .patch(
            &format!("/webhooks/{id}"),
            json!({"event_type": "ticket.*"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{h}");
    assert_eq!(h["event_types"], json!(["ticket.*"]));

    // Several patterns; then `event_type` alone changes the first.
    let (_, h) = app
        .patch(
            &format!("/webhooks/{id}"),
            json!({"event_types": ["ticket.*", "payment.completed", "user.created"]}),
        )
        .await;
    assert_eq!(h["event_type"], "ticket.*");
    let mut read = h.clone();
    read["event_type"] = json!("user.created");
    let (status, h) = app.patch(&format!("/webhooks/{id}"), read).await;
    assert_eq!(status, StatusCode::OK, "{h}");
    assert_eq!(
        h["event_types"],
        json!(["user.created", "payment.completed"]),
        "the first replaced, the repeat dropped"
    );
    // Back to one: the column of several is cleared.
    let (_, h) = app
        .patch(
            &format!("/webhooks/{id}"),
            json!({"event_types": ["payment.*"]}),
        )
        .await;
    assert_eq!(h["event_type"], "payment.*");
    let several: Option<Vec<String>> = w::table
        .find(i32::try_from(id).unwrap())
        .select(w::event_types)
        .first(&mut app.conn().await)
        .await
        .unwrap();
    assert_eq!(several, None);

    // The filter, headers and auth are removed by their empty forms.
    let (_, h) = app
        .patch(
            &format!("/webhooks/{id}"),
            json!({"filter": {"path": "user_id", "gt": 5}, "headers": {"X-A": "1"}, "auth": {"type": "bearer", "token": "t0ken-value"}}),
        )
        .await;
    assert_eq!(h["auth"], json!({"type": "bearer"}));
    let (_, h) = app
        .patch(
            &format!("/webhooks/{id}"),
            json!({"filter": {}, "headers": {}, "auth": {"type": "none"}}),
        )
        .await;
    assert_eq!(h["filter"], Value::Null);
    assert_eq!(h["headers"], json!({}));
    assert_eq!(h["auth"], Value::Null);
}

#[tokio::test]
async fn list_finds_the_webhooks_an_event_type_goes_to() {
    let app = spawn_app().await;
    let mk = |name: &str, types: Value| json!({"name": name, "url": "https://a.example/h", "event_types": types});
    for (name, types) in [
        ("exact", json!(["payment.completed"])),
        ("family", json!(["payment.*"])),
        ("all", json!(["*"])),
        ("several", json!(["user.created", "payment.completed"])),
        ("other", json!(["user.created"])),
        ("others", json!(["ticket.*", "user.created"])),
    ] {
        let (status, b) = app.post("/webhooks", mk(name, types)).await;
        assert_eq!(status, StatusCode::CREATED, "{b}");
    }
    let (status, page) = app.get("/webhooks?matching=payment.completed").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let mut names: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["all", "exact", "family", "several"]);
    assert_eq!(page["total"], 4);
    // `event_type` keeps its meaning: the stored value, exactly.
    let (_, page) = app.get("/webhooks?event_type=user.created").await;
    assert_eq!(page["total"], 2, "other and several: {page}");
    let (status, body) = app.get("/webhooks?matching=payment.*").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(loc(&body), [json!(["query", "matching"])]);
}

#[tokio::test]
async fn wrong_parts_are_pointed_at() {
    let app = spawn_app_with(|c| c.allow_private_targets = false).await;
    let base = || json!({"name": "x", "url": "https://a.example/h", "event_type": "user.created"});
    let cases: Vec<(Value, Value)> = vec![
        (
            json!({"filter": {"and": [{"path": "type", "eq": "deposit"}, {"path": "amount_kopeks", "gte": "a lot"}]}}),
            json!(["body", "filter", "and", 1, "gte"]),
        ),
        (
            json!({"filter": {"nope": 1}}),
            json!(["body", "filter", "nope"]),
        ),
        (
            json!({"headers": {"Host": "evil.example"}}),
            json!(["body", "headers", "Host"]),
        ),
        (
            json!({"headers": {"content-type": "text/plain"}}),
            json!(["body", "headers", "content-type"]),
        ),
        (
            json!({"headers": {"X-Webhook-Signature": "x"}}),
            json!(["body", "headers", "X-Webhook-Signature"]),
        ),
        (
            json!({"headers": {"Connection": "close"}}),
            json!(["body", "headers", "Connection"]),
        ),
        (
            json!({"headers": {"Bad Name": "x"}}),
            json!(["body", "headers", "Bad Name"]),
        ),
        (
            json!({"headers": {"X-A": "line\nbreak"}}),
            json!(["body", "headers", "X-A"]),
        ),
        (
            json!({"event_types": ["user.created", "user.created"]}),
            json!(["body", "event_types", 1]),
        ),
        (
            json!({"event_types": ["user.created", "user.deleted"]}),
            json!(["body", "event_types", 1]),
        ),
        (json!({"event_types": []}), json!(["body", "event_types"])),
        (
            json!({"auth": {"type": "oauth2", "token_url": "http://127.0.0.1:9/token", "client_id": "c", "client_secret": "s"}}),
            json!(["body", "auth", "token_url"]),
        ),
        (
            json!({"auth": {"type": "basic", "username": "u"}}),
            json!(["body", "auth", "password"]),
        ),
        (
            json!({"auth": {"type": "digest"}}),
            json!(["body", "auth", "type"]),
        ),
        (
            json!({"signature_scheme": "ed25519", "secret": "not-a-key"}),
            json!(["body", "secret"]),
        ),
    ];
    for (extra, expected) in cases {
        let mut body = base();
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, answer) = app.post("/webhooks", body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} -> {answer}"
        );
        assert!(
            loc(&answer).contains(&expected),
            "{body}: expected {expected}, got {answer}"
        );
        let text = answer.to_string();
        for secret in ["\"s\"", "\"y\""] {
            assert!(!text.contains(&format!("\"input\":{secret}")), "{text}");
        }
    }
}

#[tokio::test]
async fn ed25519_webhooks_show_their_public_key_and_rotate_it() {
    let app = spawn_app().await;
    let (status, hook) = app
        .post(
            "/webhooks",
            json!({"name": "ed", "url": "https://a.example/h", "event_type": "*", "signature_scheme": "ed25519"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    assert_eq!(hook["signature_scheme"], "ed25519");
    let public = hook["public_key"].as_str().unwrap().to_owned();
    assert!(public.starts_with("whpk_"), "{public}");
    let id = hook["id"].as_i64().unwrap();
    let row = row_text(&app, id).await;
    assert!(!row.contains("whsk_"), "signing key in clear: {row}");

    let (status, rotated) = app
        .post(&format!("/webhooks/{id}/rotate-secret"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert_eq!(
        rotated["secret"],
        Value::Null,
        "the private key is never shown"
    );
    let new_public = rotated["webhook"]["public_key"].as_str().unwrap();
    assert!(new_public.starts_with("whpk_") && new_public != public);
    assert!(!rotated["previous_secret_expires_at"].is_null());
    let row = row_text(&app, id).await;
    assert!(!row.contains("whsk_"), "{row}");

    // Back to HMAC: unsigned until a secret is set; no public key.
    let (_, h) = app
        .patch(
            &format!("/webhooks/{id}"),
            json!({"signature_scheme": "hmac"}),
        )
        .await;
    assert_eq!(h["public_key"], Value::Null);
    let secret: Option<String> = w::table
        .find(i32::try_from(id).unwrap())
        .select(w::secret)
        .first(&mut app.conn().await)
        .await
        .unwrap();
    assert_eq!(secret, None);
}

#[tokio::test]
async fn rows_in_clear_are_sealed_at_start_and_a_new_key_reseals_everything() {
    let app = spawn_app().await;
    let hook = app.create_webhook("old", "https://a.example/h", "*").await;
    let id = i32::try_from(hook["id"].as_i64().unwrap()).unwrap();
    // As a row written before sealing holds it.
    diesel::update(w::table.find(id))
        .set((
            w::secret.eq("legacy-secret-4"),
            w::previous_secret.eq("legacy-previous-5"),
            w::headers.eq(json!([{"name": "X-K", "sealed": "legacy-header-6"}])),
            w::auth.eq(json!({"type": "bearer", "token": "legacy-token-7"})),
        ))
        .execute(&mut app.conn().await)
        .await
        .unwrap();
    let k1 = keys();
    let report = storage::webhooks::seal_all(&mut *app.conn().await, &k1)
        .await
        .unwrap();
    assert_eq!(report.values, 4, "{report:?}");
    let row = row_text(&app, i64::from(id)).await;
    for legacy in [
        "legacy-secret-4",
        "legacy-previous-5",
        "legacy-header-6",
        "legacy-token-7",
    ] {
        assert!(!row.contains(legacy), "{legacy} in clear: {row}");
    }
    // Again: nothing left to do.
    let again = storage::webhooks::seal_all(&mut *app.conn().await, &k1)
        .await
        .unwrap();
    assert_eq!(again.values, 0);

    // A second key: everything moves to it, and opens to the same values.
    let dir = tempfile_dir();
    let file = dir.join("keys");
    let line = storage::secrets::Keyring::generate_key_line("k2").unwrap();
    std::fs::write(&file, format!("{}\n{line}\n", storage::TEST_KEY_LINE)).unwrap();
    let both = storage::secrets::Keyring::load(&file).unwrap();
    assert_eq!(both.newest_id(), "k2");
    let moved = storage::webhooks::seal_all(&mut *app.conn().await, &both)
        .await
        .unwrap();
    assert_eq!(moved.values, 4);
    let row: storage::models::Webhook = w::table
        .find(id)
        .select(storage::models::Webhook::as_select())
        .first(&mut app.conn().await)
        .await
        .unwrap();
    assert!(both.is_sealed_with_newest(row.secret.as_deref().unwrap()));
    let opened = row.sending().unwrap().open(&both).unwrap();
    assert_eq!(opened.secret.as_deref(), Some("legacy-secret-4"));
    assert_eq!(
        opened.headers,
        [("X-K".to_owned(), "legacy-header-6".to_owned())]
    );
    std::fs::remove_dir_all(dir).ok();
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("bedolaga-keys-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
