//! Migrations and token queries against the real Postgres.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use storage::models::{ApiToken, Delivery, Webhook};
use storage::schema::{web_api_tokens, webhook_deliveries, webhooks};
use storage::testing::TestDb;
use storage::tokens::{self, AuthCacheConfig, TokenAuth, TokenHasher, TokenSpec};

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
}

#[tokio::test]
async fn migrate_creates_the_three_tables_and_is_idempotent() {
    let db = TestDb::empty().await.unwrap();
    let applied = storage::run_migrations(&db.url).await.unwrap();
    let on_disk = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().join("up.sql").exists())
        .count();
    assert_eq!(
        applied.len(),
        on_disk,
        "every migration applied: {applied:?}"
    );
    assert!(storage::run_migrations(&db.url).await.unwrap().is_empty());

    let pool = db.pool().unwrap();
    let mut conn = pool.get().await.unwrap();
    let tables: Vec<Name> = diesel::sql_query(
        "SELECT table_name::text AS name FROM information_schema.tables
         WHERE table_schema = 'public' AND table_name NOT LIKE '__diesel%'
           AND table_name NOT LIKE 'webhook\\_deliveries\\_p%'
           AND table_name NOT LIKE 'delivery\\_events\\_p%' ORDER BY 1",
    )
    .load(&mut conn)
    .await
    .unwrap();
    let tables: Vec<_> = tables.into_iter().map(|n| n.name).collect();
    assert_eq!(
        tables,
        [
            "delivery_day_counts",
            "delivery_events",
            "web_api_tokens",
            "webhook_circuit",
            "webhook_deliveries",
            "webhook_delivery_counts",
            "webhook_jobs",
            "webhook_rate",
            "webhooks"
        ]
    );

    // schema.rs agrees with the migrated tables: every column is selected.
    webhooks::table
        .select(Webhook::as_select())
        .load(&mut conn)
        .await
        .unwrap();
    webhook_deliveries::table
        .select(Delivery::as_select())
        .load(&mut conn)
        .await
        .unwrap();
    web_api_tokens::table
        .select(ApiToken::as_select())
        .load(&mut conn)
        .await
        .unwrap();
    storage::schema::webhook_jobs::table
        .select(storage::jobs::Job::as_select())
        .load(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn deleting_a_webhook_deletes_its_deliveries() {
    let db = TestDb::new().await.unwrap();
    let pool = db.pool().unwrap();
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query(
        "INSERT INTO webhooks (name, url, event_type) VALUES ('a', 'https://example.com', '*')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    diesel::sql_query(
        "INSERT INTO webhook_deliveries (webhook_id, event_type, payload) SELECT id, 'user.created', '{}' FROM webhooks",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let n: i64 = webhook_deliveries::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let id: i32 = webhooks::table
        .select(webhooks::id)
        .first(&mut conn)
        .await
        .unwrap();
    assert!(
        storage::webhooks::delete_webhook(&mut conn, id)
            .await
            .unwrap()
    );
    let n: i64 = webhook_deliveries::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

fn fast_cache() -> AuthCacheConfig {
    AuthCacheConfig {
        positive_ttl: Duration::from_millis(200),
        negative_ttl: Duration::from_millis(100),
        last_used_flush: Duration::from_millis(100),
        max_entries: 100,
    }
}

#[tokio::test]
async fn tokens_authenticate_until_revoked_or_expired() {
    let db = TestDb::new().await.unwrap();
    let pool = db.pool().unwrap();
    let hasher = TokenHasher::new(None);
    let mut conn = pool.get().await.unwrap();
    let (row, token) = tokens::create_token(
        &mut conn,
        &hasher,
        TokenSpec {
            name: "ops".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(row.token_hash, hasher.hash(&token));
    assert_ne!(row.token_hash, token);
    assert_eq!(row.token_prefix, &token[..8]);

    let auth = TokenAuth::new(pool.clone(), hasher.clone(), fast_cache());
    let p = auth
        .authenticate(&token, Some("10.0.0.7"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((p.token_id, p.name.as_str()), (row.id, "ops"));
    assert_eq!(auth.authenticate("bdl_wrong", None).await.unwrap(), None);

    // Usage is written by the flusher, not by authenticate.
    let before = tokens::list_tokens(&mut conn).await.unwrap();
    assert!(before[0].last_used_at.is_none());
    assert_eq!(auth.flush_last_used().await.unwrap(), 1);
    let after = tokens::list_tokens(&mut conn).await.unwrap();
    assert_eq!(after[0].last_used_ip.as_deref(), Some("10.0.0.7"));
    assert!(after[0].last_used_at.is_some());
    assert_eq!(auth.flush_last_used().await.unwrap(), 0);

    // Revoked: still cached for at most positive_ttl, then refused.
    assert!(tokens::revoke_token(&mut conn, row.id).await.unwrap());
    assert!(
        !tokens::revoke_token(&mut conn, row.id + 1000)
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(auth.authenticate(&token, None).await.unwrap(), None);
    assert!(
        tokens::usable_ids(&mut conn, &[row.id])
            .await
            .unwrap()
            .is_empty()
    );

    // Expired tokens are refused.
    let (expired, expired_token) = tokens::create_token(
        &mut conn,
        &hasher,
        TokenSpec {
            name: "old".into(),
            expires_at: Some(Utc::now() - chrono::Duration::seconds(1)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(auth.authenticate(&expired_token, None).await.unwrap(), None);
    assert!(
        tokens::usable_ids(&mut conn, &[expired.id])
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn hmac_hashed_tokens_and_bootstrap() {
    let db = TestDb::new().await.unwrap();
    let pool = db.pool().unwrap();
    let hasher = TokenHasher::new(Some("server-side-key"));
    let mut conn = pool.get().await.unwrap();

    let row = tokens::ensure_token(&mut conn, &hasher, "bootstrap-token-1", "default")
        .await
        .unwrap();
    assert_eq!(
        row.token_hash,
        TokenHasher::new(Some("server-side-key")).hash("bootstrap-token-1")
    );
    assert_ne!(
        row.token_hash,
        TokenHasher::new(None).hash("bootstrap-token-1")
    );
    // Ensuring again re-activates instead of duplicating.
    tokens::revoke_token(&mut conn, row.id).await.unwrap();
    let again = tokens::ensure_token(&mut conn, &hasher, "bootstrap-token-1", "default")
        .await
        .unwrap();
    assert_eq!(again.id, row.id);
    assert!(again.is_active);
    assert_eq!(tokens::list_tokens(&mut conn).await.unwrap().len(), 1);

    let auth = TokenAuth::new(pool.clone(), hasher, fast_cache());
    assert!(
        auth.authenticate("bootstrap-token-1", None)
            .await
            .unwrap()
            .is_some()
    );
    // The same token under the plain-SHA-256 scheme does not match.
    let plain = TokenAuth::new(pool, TokenHasher::new(None), fast_cache());
    assert!(
        plain
            .authenticate("bootstrap-token-1", None)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn an_unreachable_database_is_an_unavailable_error() {
    let pool = storage::build_pool(
        "postgres://postgres@127.0.0.1:1/none",
        &storage::PoolConfig {
            wait_timeout: Duration::from_millis(500),
            create_timeout: Duration::from_millis(500),
            ..Default::default()
        },
    )
    .unwrap();
    let err = storage::ping(&pool).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
}

#[tokio::test]
async fn a_flood_of_wrong_tokens_does_not_evict_valid_ones() {
    let db = TestDb::new().await.unwrap();
    let pool = db.pool().unwrap();
    let hasher = TokenHasher::new(None);
    let mut conn = pool.get().await.unwrap();
    let (row, token) = tokens::create_token(
        &mut conn,
        &hasher,
        TokenSpec {
            name: "ops".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let auth = TokenAuth::new(
        pool.clone(),
        hasher,
        AuthCacheConfig {
            positive_ttl: Duration::from_secs(60),
            max_entries: 4,
            ..fast_cache()
        },
    );
    assert!(auth.authenticate(&token, None).await.unwrap().is_some());
    for i in 0..20 {
        assert!(
            auth.authenticate(&format!("bdl_wrong{i}"), None)
                .await
                .unwrap()
                .is_none()
        );
    }
    // Revoked in the database: the answer still comes from the cache, which
    // shows the valid entry survived the flood.
    tokens::revoke_token(&mut conn, row.id).await.unwrap();
    assert!(auth.authenticate(&token, None).await.unwrap().is_some());
}
