use chrono::{Duration as ChronoDuration, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use storage::schema::web_api_tokens as t;
use storage::testing::{diesel, diesel_async};
use storage::tokens::TokenHasher;

use crate::helpers::{create_token, eventually, spawn_app, spawn_app_with};

/// Every route that needs a token, with a method.
const ROUTES: [(&str, &str); 12] = [
    ("POST", "/webhooks"),
    ("GET", "/webhooks"),
    ("GET", "/webhooks/stats"),
    ("GET", "/webhooks/1"),
    ("PATCH", "/webhooks/1"),
    ("DELETE", "/webhooks/1"),
    ("GET", "/webhooks/1/deliveries"),
    ("POST", "/webhooks/1/deliveries/1/retry"),
    ("POST", "/webhooks/1/test"),
    ("POST", "/webhooks/1/rotate-secret"),
    ("GET", "/webhooks/1/deliveries/hourly"),
    ("GET", "/services/readiness"),
];

async fn status_with(
    app: &crate::helpers::TestApp,
    header: Option<(&str, String)>,
) -> (StatusCode, Value) {
    let mut rb = app.client.get(app.url("/webhooks"));
    if let Some((k, v)) = header {
        rb = rb.header(k, v);
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn every_webhooks_route_needs_a_token() {
    let app = spawn_app().await;
    for (method, path) in ROUTES {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let resp = app
            .client
            .request(m.clone(), app.url(path))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            body,
            json!({"detail": "Missing API key"}),
            "{method} {path}"
        );

        let resp = app
            .client
            .request(m, app.url(path))
            .header("Authorization", "Bearer wrong-token")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body, json!({"detail": "Invalid or expired API key"}));
    }
    // Open routes.
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/events/types",
        "/",
        "/portal/app.js",
    ] {
        let resp = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn bearer_and_api_key_headers_work_and_bad_ones_do_not() {
    let app = spawn_app().await;
    let tok = app.token.clone();
    assert_eq!(
        status_with(&app, Some(("Authorization", format!("Bearer {tok}"))))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        status_with(&app, Some(("Authorization", format!("bearer {tok}"))))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        status_with(&app, Some(("X-API-Key", tok.clone()))).await.0,
        StatusCode::OK
    );
    let (s, body) = status_with(&app, None).await;
    assert_eq!(
        (s, body),
        (
            StatusCode::UNAUTHORIZED,
            json!({"detail": "Missing API key"})
        )
    );
    // Another scheme is not a token.
    let (s, body) = status_with(&app, Some(("Authorization", format!("Basic {tok}")))).await;
    assert_eq!(
        (s, body),
        (
            StatusCode::UNAUTHORIZED,
            json!({"detail": "Missing API key"})
        )
    );
    let (s, body) = status_with(&app, Some(("X-API-Key", format!("{tok}x")))).await;
    assert_eq!(
        (s, body),
        (
            StatusCode::UNAUTHORIZED,
            json!({"detail": "Invalid or expired API key"})
        )
    );
    // A very long key is just wrong.
    let (s, _) = status_with(&app, Some(("X-API-Key", "k".repeat(6000)))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn revoked_token_stops_working_within_seconds() {
    let app = spawn_app().await;
    assert_eq!(app.get("/webhooks").await.0, StatusCode::OK);
    let mut conn = app.conn().await;
    let n = diesel::update(t::table.filter(t::name.eq("tests")))
        .set(t::is_active.eq(false))
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let stopped = eventually(10, || async {
        app.get("/webhooks").await
            == (
                StatusCode::UNAUTHORIZED,
                json!({"detail": "Invalid or expired API key"}),
            )
    })
    .await;
    assert!(stopped, "a revoked token kept working");
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let app = spawn_app().await;
    let hasher = TokenHasher::new(None);
    let past = create_token(
        &app.pool,
        &hasher,
        "old",
        Some(Utc::now() - ChronoDuration::hours(1)),
    )
    .await;
    let (s, body) = status_with(&app, Some(("X-API-Key", past))).await;
    assert_eq!(
        (s, body),
        (
            StatusCode::UNAUTHORIZED,
            json!({"detail": "Invalid or expired API key"})
        )
    );
    // A token that expires while cached stops at its expiry.
    let soon = create_token(
        &app.pool,
        &hasher,
        "soon",
        Some(Utc::now() + ChronoDuration::seconds(5)),
    )
    .await;
    assert_eq!(
        status_with(&app, Some(("X-API-Key", soon.clone()))).await.0,
        StatusCode::OK
    );
    let expired = eventually(15, || async {
        status_with(&app, Some(("X-API-Key", soon.clone()))).await.0 == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(expired);
}

#[tokio::test]
async fn hmac_hashed_tokens_when_the_key_is_set() {
    let app = spawn_app_with(|c| c.token_hmac_secret = Some("bot-hmac-key".into())).await;
    // The app's own token was hashed with the HMAC key.
    assert_eq!(app.get("/webhooks").await.0, StatusCode::OK);
    let mut conn = app.conn().await;
    let stored: String = t::table
        .filter(t::name.eq("tests"))
        .select(t::token_hash)
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        stored,
        TokenHasher::new(Some("bot-hmac-key")).hash(&app.token)
    );
    assert_ne!(stored, TokenHasher::new(None).hash(&app.token));
    // A token stored with plain SHA-256 (before the key was set) is still
    // accepted, as the bot accepts it (its legacy fallback).
    let plain = create_token(&app.pool, &TokenHasher::new(None), "plain", None).await;
    assert_eq!(
        status_with(&app, Some(("X-API-Key", plain))).await.0,
        StatusCode::OK
    );
    // One keyed with another secret is not.
    let other = create_token(&app.pool, &TokenHasher::new(Some("other")), "other", None).await;
    assert_eq!(
        status_with(&app, Some(("X-API-Key", other))).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn default_token_is_ensured_at_start() {
    let app = spawn_app_with(|c| c.default_token = Some("bootstrap-token-123".into())).await;
    let (s, _) = status_with(&app, Some(("X-API-Key", "bootstrap-token-123".into()))).await;
    assert_eq!(s, StatusCode::OK);
    let mut conn = app.conn().await;
    let (active, created_by): (bool, Option<String>) = t::table
        .filter(t::token_hash.eq(TokenHasher::new(None).hash("bootstrap-token-123")))
        .select((t::is_active, t::created_by))
        .first(&mut conn)
        .await
        .unwrap();
    assert!(active);
    assert_eq!(created_by.as_deref(), Some("bootstrap"));
}

#[tokio::test]
async fn last_used_is_recorded_in_batches() {
    let app = spawn_app().await;
    for _ in 0..5 {
        assert_eq!(app.get("/webhooks").await.0, StatusCode::OK);
    }
    let recorded = eventually(15, || async {
        let mut conn = app.conn().await;
        let row: (Option<chrono::DateTime<Utc>>, Option<String>) = t::table
            .filter(t::name.eq("tests"))
            .select((t::last_used_at, t::last_used_ip))
            .first(&mut conn)
            .await
            .unwrap();
        row.0.is_some() && row.1.as_deref() == Some("127.0.0.1")
    })
    .await;
    assert!(recorded, "last_used_at/last_used_ip were not written");
}
