use std::process::{Command, Output};
use storage::testing::{diesel, diesel_async};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use reqwest::StatusCode;
use storage::models::ApiToken;
use storage::schema::web_api_tokens as t;
use storage::testing::TestDb;
use storage::tokens::TokenHasher;

use crate::helpers::{eventually, spawn_app};

fn run(db_url: &str, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_webhook-registry"));
    cmd.env_clear()
        .env("SECRETS_KEY_FILE", storage::testing::key_file())
        .env("DATABASE_URL", db_url)
        .args(args);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.output().expect("run webhook-registry")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn migrate_applies_the_migrations_and_exits_zero() {
    let db = TestDb::empty().await.unwrap();
    let out = run(&db.url, &["migrate"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pool = db.pool().unwrap();
    let mut conn = pool.get().await.unwrap();
    let n: i64 = t::table.count().get_result(&mut conn).await.unwrap();
    assert_eq!(n, 0);
    // Again: nothing to do, still 0.
    let out = run(&db.url, &["migrate"], &[]);
    assert!(out.status.success());
}

#[tokio::test]
async fn token_create_list_revoke() {
    let app = spawn_app().await;
    let url = app.db.url.clone();
    let out = run(
        &url,
        &[
            "token",
            "create",
            "--name",
            "ci-bot",
            "--expires-in",
            "30d",
            "--description",
            "for CI",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = stdout(&out);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 1, "the token alone on stdout: {printed:?}");
    let token = lines[0].to_owned();
    assert!(token.starts_with("bdl_") && token.len() > 40);

    // Only the hash is stored; the token works against the API.
    let mut conn = app.conn().await;
    let row: ApiToken = t::table
        .filter(t::name.eq("ci-bot"))
        .select(ApiToken::as_select())
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!(row.token_hash, TokenHasher::new(None).hash(&token));
    assert_eq!(row.description.as_deref(), Some("for CI"));
    let days = (row.expires_at.unwrap() - chrono::Utc::now()).num_hours();
    assert!((29 * 24..=30 * 24).contains(&days), "{days}");
    let resp = app
        .client
        .get(app.url("/webhooks"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // list shows id, name, prefix, state, never the token or its hash.
    let out = run(&url, &["token", "list"], &[]);
    assert!(out.status.success());
    let listed = stdout(&out);
    assert!(listed.contains("ci-bot") && listed.contains(&token[..8]) && listed.contains("active"));
    assert!(!listed.contains(&token) && !listed.contains(&row.token_hash));

    // revoke: stops working within seconds.
    let out = run(&url, &["token", "revoke", &row.id.to_string()], &[]);
    assert!(out.status.success());
    let listed = stdout(&run(&url, &["token", "list"], &[]));
    assert!(
        listed
            .lines()
            .any(|l| l.contains("ci-bot") && l.contains("revoked")),
        "{listed}"
    );
    let stopped = eventually(10, || async {
        app.client
            .get(app.url("/webhooks"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status()
            == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(stopped);

    // Errors: unknown id, bad duration, missing name.
    assert!(
        !run(&url, &["token", "revoke", "987654"], &[])
            .status
            .success()
    );
    assert!(
        !run(
            &url,
            &["token", "create", "--name", "x", "--expires-in", "soon"],
            &[]
        )
        .status
        .success()
    );
    assert!(!run(&url, &["token", "create"], &[]).status.success());
}

#[tokio::test]
async fn token_create_uses_the_hmac_key_when_set() {
    let app = spawn_app_hmac().await;
    let out = run(
        &app.db.url,
        &["token", "create", "--name", "h"],
        &[("WEB_API_TOKEN_HMAC_SECRET", "k3y")],
    );
    assert!(out.status.success());
    let token = stdout(&out).trim().to_owned();
    let resp = app
        .client
        .get(app.url("/webhooks"))
        .header("X-API-Key", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

async fn spawn_app_hmac() -> crate::helpers::TestApp {
    crate::helpers::spawn_app_with(|c| c.token_hmac_secret = Some("k3y".into())).await
}

#[tokio::test]
async fn prune_drops_old_days_and_prints_what_it_removed() {
    let db = TestDb::new().await.unwrap();
    let pool = db.pool().unwrap();
    let mut conn = pool.get().await.unwrap();
    let today = chrono::Utc::now().date_naive();
    storage::history::ensure_partitions(&mut conn, today - chrono::Duration::days(12), today)
        .await
        .unwrap();
    diesel::sql_query(
        "INSERT INTO webhooks (name, url, event_type) VALUES ('a', 'https://a.example', '*')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    for (days_ago, status) in [
        (11, "success"),
        (11, "pending"),
        (10, "failed"),
        (1, "success"),
    ] {
        let at = chrono::Utc::now() - chrono::Duration::days(days_ago);
        diesel::sql_query(format!(
            "WITH ins AS (INSERT INTO webhook_deliveries (webhook_id, event_type, payload, status, \
               created_at, next_retry_at) VALUES (1, 'user.created', '{{}}', '{status}', \
               '{}', now()) RETURNING webhook_id, created_at, status) \
             INSERT INTO webhook_delivery_counts (webhook_id, day, status, n) \
             SELECT webhook_id, (created_at AT TIME ZONE 'UTC')::date, status, 1 FROM ins \
             ON CONFLICT (webhook_id, day, status) DO UPDATE SET n = webhook_delivery_counts.n + 1",
            at.to_rfc3339()
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    diesel::sql_query(
        "INSERT INTO delivery_day_counts (day, status, n) \
         SELECT day, status, sum(n) FROM webhook_delivery_counts GROUP BY 1, 2",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    let out = run(&db.url, &["prune", "--older-than", "5d"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    let eleven = (today - chrono::Duration::days(11))
        .format("%Y%m%d")
        .to_string();
    assert!(
        text.contains(&format!("dropped webhook_deliveries_p{eleven}")),
        "{text}"
    );
    assert!(text.contains("kept 1 pending deliveries"), "{text}");
    assert!(text.contains("2 rows"), "{text}");
    let last = text.lines().last().unwrap_or_default();
    assert!(last.starts_with("pruned 7 partitions, 2 rows"), "{text}");
    let left: i64 = storage::schema::webhook_deliveries::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 2, "the pending row and yesterday's row stay");
    storage::testing::assert_counts_match_rows(&mut conn).await;

    // Retention 0 keeps everything.
    let out = run(&db.url, &["prune"], &[("DELIVERY_RETENTION", "0")]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("nothing to prune"));
}
