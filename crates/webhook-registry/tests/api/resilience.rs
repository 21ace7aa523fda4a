use std::time::Duration;
use storage::testing::{diesel, diesel_async};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use reqwest::StatusCode;
use serde_json::{Value, json};
use storage::tokens::TokenHasher;
use webhook_registry::Config;

use crate::helpers::{create_token, eventually, start};

fn server() -> String {
    storage::testing::server_url().unwrap()
}

#[tokio::test]
async fn database_down_at_start_then_up() {
    telemetry::init_test_logging();
    // A database that does not exist yet.
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    let admin = server();
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    let mut config = Config::for_tests(&url, proto_events::Namespace::unique().prefix());
    config.default_token = Some("late-bootstrap-token".into());
    let (addr, shutdown, task) = start(config).await;
    let client = reqwest::Client::new();
    let base = format!("http://{addr}");

    let healthz = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), StatusCode::OK);
    let readyz = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(readyz.status(), StatusCode::SERVICE_UNAVAILABLE);
    let report: Value = readyz.json().await.unwrap();
    assert_ne!(report["checks"]["database"], "ok");
    let resp = client
        .get(format!("{base}/webhooks"))
        .header("X-API-Key", "late-bootstrap-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = resp.json().await.unwrap();
    assert!(body["detail"].is_string());

    // The database appears: migrations run, the default token is ensured.
    let mut conn = AsyncPgConnection::establish(&admin).await.unwrap();
    diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .unwrap();
    let up = eventually(30, || async {
        client
            .get(format!("{base}/webhooks"))
            .header("X-API-Key", "late-bootstrap-token")
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await;
    assert!(up, "the API did not open once the database was there");
}

/// With `REGISTRY_AUTO_MIGRATE=false` (migrations run by a separate
/// `webhook-registry migrate`, e.g. a Kubernetes Job) the registry is not
/// ready and keeps the API closed until the schema is at the latest
/// migration, then opens without a restart.
#[tokio::test]
async fn without_auto_migrate_the_api_waits_for_the_latest_schema() {
    telemetry::init_test_logging();
    let total =
        diesel::migration::MigrationSource::<diesel::pg::Pg>::migrations(&storage::MIGRATIONS)
            .unwrap()
            .len();
    let db = storage::testing::TestDb::migrated_to(total - 1)
        .await
        .unwrap();
    let pending = storage::pending_migrations(&db.url).await.unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    let mut config = Config::for_tests(&db.url, proto_events::Namespace::unique().prefix());
    config.auto_migrate = false;
    config.default_token = Some("waits-for-schema-token".into());
    let (addr, shutdown, task) = start(config).await;
    let client = reqwest::Client::new();
    let base = format!("http://{addr}");

    // The database answers, but the schema is one migration behind: the
    // registry must neither migrate it nor open the API.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let readyz = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(readyz.status(), StatusCode::SERVICE_UNAVAILABLE);
    let report: Value = readyz.json().await.unwrap();
    assert_eq!(report["checks"]["database"], "ok", "{report}");
    let migrations = report["checks"]["migrations"].to_string();
    assert!(migrations.contains("webhook-registry migrate"), "{report}");
    let resp = client
        .get(format!("{base}/webhooks"))
        .header("X-API-Key", "waits-for-schema-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(storage::pending_migrations(&db.url).await.unwrap(), pending);

    // `webhook-registry migrate` runs elsewhere: the API opens.
    storage::run_migrations(&db.url).await.unwrap();
    assert!(
        storage::pending_migrations(&db.url)
            .await
            .unwrap()
            .is_empty()
    );
    let up = eventually(30, || async {
        client
            .get(format!("{base}/webhooks"))
            .header("X-API-Key", "waits-for-schema-token")
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    assert!(up, "the API did not open once the schema was migrated");
    assert_eq!(ready.status(), StatusCode::OK);
}

#[tokio::test]
async fn database_going_away_is_a_503_not_a_500() {
    let app = crate::helpers::spawn_app().await;
    let hasher = TokenHasher::new(None);
    let token = create_token(&app.pool, &hasher, "x", None).await;
    assert_eq!(app.get("/webhooks").await.0, StatusCode::OK);
    // Drop the database under the running app.
    let mut conn = AsyncPgConnection::establish(&server()).await.unwrap();
    diesel::sql_query(format!("DROP DATABASE \"{}\" WITH (FORCE)", app.db.name))
        .execute(&mut conn)
        .await
        .unwrap();
    // Cached auth still passes; the query fails: 503 with a JSON body.
    let mut saw_503 = false;
    for _ in 0..20 {
        let resp = app
            .client
            .post(app.url("/webhooks"))
            .header("X-API-Key", &token)
            .json(&json!({"name": "a", "url": "https://example.com/a", "event_type": "*"}))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        assert!(body["detail"].is_string(), "{body}");
        assert!(!body.to_string().contains("postgres"), "{body}");
        if status == StatusCode::SERVICE_UNAVAILABLE {
            saw_503 = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(saw_503);
}

#[tokio::test]
async fn stopping_finishes_cleanly_and_flushes_token_usage() {
    use diesel::{ExpressionMethods, QueryDsl};
    use storage::schema::web_api_tokens as t;
    let mut app = crate::helpers::spawn_app().await;
    assert_eq!(app.get("/webhooks").await.0, StatusCode::OK);
    let pool = app.pool.clone();
    // Stop before the periodic flush (every 5 s): the final flush records it.
    let result = app.stop_now().await;
    assert!(result, "the app did not stop cleanly");
    let mut conn = pool.get().await.unwrap();
    let used: Option<chrono::DateTime<chrono::Utc>> = t::table
        .filter(t::name.eq("tests"))
        .select(t::last_used_at)
        .first(&mut conn)
        .await
        .unwrap();
    assert!(used.is_some());
}
