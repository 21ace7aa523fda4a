//! Moving over from the bot: `import-bot`, the token sync while serving,
//! and `migrate` refusing the bot's own database. The bot's database is
//! made from its DDL (`storage::testing::BOT_DDL`) and filled the way the
//! bot fills it: tokens hashed with sha512 + HMAC (one legacy plain hash).

use std::process::{Command, Output};
use std::time::Duration;
use storage::testing::{diesel, diesel_async};

use chrono::{DateTime, SubsecRound as _, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Bool, Int4, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use reqwest::StatusCode;
use serde_json::json;
use storage::models::{BodyFormat, DeliveryStatus, Webhook};
use storage::schema::{webhook_deliveries as d, webhooks as w};
use storage::testing::TestDb;
use storage::tokens::{HashAlgorithm, TokenHasher};

use crate::helpers::{TestApp, eventually, spawn_app_with};

const HMAC_KEY: &str = "bot-hmac-ключ";
const BOOTSTRAP: &str = "bootstrap-token-of-the-bot-0123456789";

/// name, bot_token_id, last_used_ip, created_by
type TokenCols = (String, Option<i32>, Option<String>, Option<String>);
/// webhook_id, status, next_retry_at, error_message
type DeliveryCols = (i32, DeliveryStatus, Option<DateTime<Utc>>, Option<String>);

fn bot_hasher() -> TokenHasher {
    TokenHasher::with_algorithm(HashAlgorithm::Sha512, Some(HMAC_KEY))
}

fn configure(c: &mut webhook_registry::Config) {
    c.token_hash_algorithm = HashAlgorithm::Sha512;
    c.token_hmac_secret = Some(HMAC_KEY.into());
}

fn run(db_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_webhook-registry"))
        .env_clear()
        .env("SECRETS_KEY_FILE", storage::testing::key_file())
        .env("DATABASE_URL", db_url)
        .env("WEB_API_TOKEN_HASH_ALGORITHM", "SHA512")
        .env("WEB_API_TOKEN_HMAC_SECRET", HMAC_KEY)
        .env("NATS_URL", test_support::nats_url())
        .args(args)
        .output()
        .expect("run webhook-registry")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn connect(url: &str) -> AsyncPgConnection {
    AsyncPgConnection::establish(url).await.expect("connect")
}

fn ago(d: chrono::Duration) -> DateTime<Utc> {
    // The bot's timestamps have microseconds, like ours.
    (Utc::now() - d).trunc_subsecs(6)
}

/// Inserts a token into the bot's table; returns its id.
async fn bot_token(
    bot: &mut AsyncPgConnection,
    name: &str,
    hash: &str,
    active: bool,
    last_used_at: Option<DateTime<Utc>>,
) -> i32 {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = Int4)]
        id: i32,
    }
    let id: Id = diesel::sql_query(
        "INSERT INTO web_api_tokens (name, token_hash, token_prefix, description, created_at, \
           updated_at, last_used_at, last_used_ip, is_active, created_by) \
         VALUES ($1, $2, left($2, 8), 'выдан ботом', now() - interval '10 days', \
           now() - interval '1 day', $3, '10.0.0.7', $4, 'admin') RETURNING id",
    )
    .bind::<Text, _>(name)
    .bind::<Text, _>(hash)
    .bind::<Nullable<Timestamptz>, _>(last_used_at)
    .bind::<Bool, _>(active)
    .get_result(bot)
    .await
    .expect("insert bot token");
    id.id
}

#[allow(clippy::too_many_arguments)]
async fn bot_webhook(
    bot: &mut AsyncPgConnection,
    id: i32,
    name: &str,
    event_type: &str,
    secret: Option<&str>,
    description: Option<&str>,
    last_triggered_at: Option<DateTime<Utc>>,
    counts: (i32, i32),
) {
    diesel::sql_query(
        "INSERT INTO webhooks (id, name, url, secret, event_type, is_active, description, \
           created_at, updated_at, last_triggered_at, failure_count, success_count) \
         VALUES ($1, $2, 'https://receiver.example.com/hook?x=1', $3, $4, true, $5, \
           now() - interval '60 days', now() - interval '5 days', $6, $7, $8)",
    )
    .bind::<Int4, _>(id)
    .bind::<Text, _>(name)
    .bind::<Nullable<Text>, _>(secret)
    .bind::<Text, _>(event_type)
    .bind::<Nullable<Text>, _>(description)
    .bind::<Nullable<Timestamptz>, _>(last_triggered_at)
    .bind::<Int4, _>(counts.0)
    .bind::<Int4, _>(counts.1)
    .execute(bot)
    .await
    .expect("insert bot webhook");
}

async fn bot_delivery(
    bot: &mut AsyncPgConnection,
    webhook_id: i32,
    status: &str,
    created_at: DateTime<Utc>,
) {
    diesel::sql_query(
        "INSERT INTO webhook_deliveries (webhook_id, event_type, payload, response_status, \
           response_body, status, error_message, attempt_number, created_at, delivered_at) \
         VALUES ($1, 'ticket.created', '{\"ticket_id\": 7, \"title\": \"Не работает VPN\"}', \
           CASE $2 WHEN 'success' THEN 200 WHEN 'failed' THEN 502 END, \
           CASE $2 WHEN 'pending' THEN NULL ELSE 'ok' END, $2, \
           CASE $2 WHEN 'failed' THEN 'HTTP 502: bad gateway' END, 1, $3, \
           CASE $2 WHEN 'pending' THEN NULL ELSE $3 END)",
    )
    .bind::<Int4, _>(webhook_id)
    .bind::<Text, _>(status)
    .bind::<Timestamptz, _>(created_at)
    .execute(bot)
    .await
    .expect("insert bot delivery");
}

/// The bot's data of the import tests; returns its tokens: (bootstrap,
/// admin, legacy plain hash, revoked).
async fn fill_bot(bot: &mut AsyncPgConnection) -> [String; 4] {
    let h = bot_hasher();
    let admin = "bot-admin-token-ABCDEFGHIJKLMNOPQRSTUVWXYZ".to_owned();
    let legacy = "bot-legacy-token-abcdefghijklmnopqrstuvw".to_owned();
    let revoked = "bot-revoked-token-0000000000000000000000".to_owned();
    bot_token(bot, "Bootstrap Token", &h.hash(BOOTSTRAP), true, None).await;
    bot_token(
        bot,
        "Админка",
        &h.hash(&admin),
        true,
        Some(ago(chrono::Duration::hours(3))),
    )
    .await;
    // Stored before the bot had an HMAC key: the plain sha512 digest.
    bot_token(bot, "Legacy", &h.plain_hash(&legacy), true, None).await;
    bot_token(bot, "Revoked", &h.hash(&revoked), false, None).await;
    bot_webhook(bot, 1, "Bot one", "user.created", None, None, None, (0, 0)).await;
    bot_webhook(
        bot,
        5,
        "Поддержка",
        "ticket.created",
        Some("s3cr3t-бота"),
        Some("Тикеты в CRM — с подписью"),
        Some(ago(chrono::Duration::hours(1))),
        (3, 7),
    )
    .await;
    bot_webhook(
        bot,
        9,
        "Renewals",
        "subscription.renewed",
        Some("other-secret"),
        None,
        None,
        (1, 2),
    )
    .await;
    bot_delivery(bot, 5, "success", ago(chrono::Duration::days(1))).await;
    bot_delivery(bot, 5, "failed", ago(chrono::Duration::days(3))).await;
    bot_delivery(bot, 5, "pending", ago(chrono::Duration::hours(1))).await;
    bot_delivery(bot, 9, "success", ago(chrono::Duration::days(2))).await;
    // Outside --history 30d.
    bot_delivery(bot, 5, "success", ago(chrono::Duration::days(40))).await;
    // Of webhook 1, which is a conflict and not imported.
    bot_delivery(bot, 1, "success", ago(chrono::Duration::days(1))).await;
    [BOOTSTRAP.to_owned(), admin, legacy, revoked]
}

/// Every row of the tables an import writes, as text, and the id sequence.
async fn snapshot(conn: &mut AsyncPgConnection) -> String {
    #[derive(QueryableByName)]
    struct Dump {
        #[diesel(sql_type = Text)]
        dump: String,
    }
    let mut out = String::new();
    for (table, order) in [
        ("web_api_tokens", "id"),
        ("webhooks", "id"),
        ("webhook_deliveries", "id"),
        ("webhook_delivery_counts", "webhook_id, day, status"),
        ("delivery_day_counts", "day, status"),
    ] {
        let d: Dump = diesel::sql_query(format!(
            "SELECT COALESCE(string_agg(x::text, E'\\n' ORDER BY {order}), '') AS dump \
             FROM {table} x"
        ))
        .get_result(conn)
        .await
        .unwrap();
        out.push_str(&format!("== {table}\n{}\n", d.dump));
    }
    let d: Dump = diesel::sql_query(
        "SELECT COALESCE(pg_sequence_last_value('webhooks_id_seq')::text, 'unused') AS dump",
    )
    .get_result(conn)
    .await
    .unwrap();
    out.push_str(&d.dump);
    out
}

async fn status_of(app: &TestApp, token: &str) -> StatusCode {
    app.client
        .get(app.url("/webhooks"))
        .header("X-API-Key", token)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn import_bot_copies_tokens_webhooks_and_history() {
    let bot_db = TestDb::bot().await.unwrap();
    let mut bot = connect(&bot_db.url).await;
    let [bootstrap, admin, legacy, revoked] = fill_bot(&mut bot).await;
    let mut app = spawn_app_with(|c| {
        configure(c);
        // The bot's bootstrap token is also ours: it is adopted, not copied.
        c.default_token = Some(BOOTSTRAP.into());
    })
    .await;
    // A webhook of ours takes id 1 before the import: a conflict.
    let ours = app
        .create_webhook("Ours", "https://ours.example.com/h", "*")
        .await;
    assert_eq!(ours["id"], 1);

    let out = run(
        &app.db.url,
        &["import-bot", "--from", &bot_db.url, "--history", "30d"],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains(
            "tokens:     3 created, 1 updated, 0 unchanged, 0 skipped (1 adopted), 0 deactivated"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("webhooks:   2 created, 0 updated, 0 unchanged, 1 skipped"),
        "{stdout}"
    );
    assert!(
        stdout.contains("deliveries: 4 created, 0 updated, 0 unchanged, 1 skipped (1 pending"),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"webhook 9 "Renewals": "subscription.renewed""#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"webhook 1 "Bot one": id 1 is already webhook "Ours""#),
        "{stdout}"
    );
    assert!(stdout.contains("the id sequence moved to 9"), "{stdout}");
    // Never a secret or a hash.
    for secret in [
        "s3cr3t-бота",
        "other-secret",
        &bot_hasher().hash(&admin)[..16],
    ] {
        assert!(!stdout.contains(secret) && !text(&out.stderr).contains(secret));
    }

    // Tokens: sha512 + HMAC, the legacy plain digest, the adopted bootstrap
    // token; the revoked one stays revoked.
    for token in [&bootstrap, &admin, &legacy] {
        assert_eq!(status_of(&app, token).await, StatusCode::OK, "{token}");
    }
    assert_eq!(status_of(&app, &revoked).await, StatusCode::UNAUTHORIZED);
    let mut conn = app.conn().await;
    let rows: Vec<TokenCols> = storage::schema::web_api_tokens::table
        .order(storage::schema::web_api_tokens::id)
        .select((
            storage::schema::web_api_tokens::name,
            storage::schema::web_api_tokens::bot_token_id,
            storage::schema::web_api_tokens::last_used_ip,
            storage::schema::web_api_tokens::created_by,
        ))
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows.len(), 5, "ours: tests, bootstrap (adopted), 3 copied");
    assert!(rows.contains(&(
        "Bootstrap Token".into(),
        Some(1),
        Some("10.0.0.7".into()),
        Some("admin".into())
    )));
    assert!(rows.iter().any(|r| r.0 == "Админка" && r.1 == Some(2)));

    // Webhooks: same ids, the bot's secret, counters, last_triggered_at,
    // body format `bot`; the unknown event type switched off with a reason.
    let hooks: Vec<Webhook> = w::table
        .order(w::id)
        .select(Webhook::as_select())
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(hooks.iter().map(|h| h.id).collect::<Vec<_>>(), [1, 5, 9]);
    assert_eq!(hooks[0].name, "Ours");
    assert_eq!(hooks[0].body_format, BodyFormat::Canonical);
    let support = &hooks[1];
    assert_eq!(support.name, "Поддержка");
    // Copied sealed, never in clear.
    let stored = support.secret.as_deref().unwrap();
    assert!(stored.starts_with("sealed:v1:"), "{stored}");
    let keys = storage::SecretsArgs::for_tests().keyring().unwrap();
    assert_eq!(
        keys.open(storage::subscription::purpose::SECRET, stored)
            .unwrap(),
        "s3cr3t-бота"
    );
    assert_eq!(
        support.description.as_deref(),
        Some("Тикеты в CRM — с подписью")
    );
    assert_eq!(
        support.url.as_deref(),
        Some("https://receiver.example.com/hook?x=1")
    );
    assert_eq!((support.failure_count, support.success_count), (3, 7));
    assert_eq!(support.body_format, BodyFormat::Bot);
    assert!(support.is_active && support.disabled_reason.is_none());
    let bot_triggered: Option<DateTime<Utc>> =
        diesel::sql_query("SELECT last_triggered_at FROM webhooks WHERE id = 5")
            .get_result::<Triggered>(&mut bot)
            .await
            .unwrap()
            .last_triggered_at;
    assert_eq!(support.last_triggered_at, bot_triggered);
    let renewals = &hooks[2];
    assert!(!renewals.is_active);
    assert_eq!(renewals.body_format, BodyFormat::Bot);
    assert!(
        renewals.disabled_reason.as_deref().is_some_and(
            |r| r.contains("subscription.renewed") && r.contains("not in the catalogue")
        ),
        "{:?}",
        renewals.disabled_reason
    );
    // The API shows them too (with their reason), and the next POST does
    // not collide with an imported id.
    let (s, body) = app.get("/webhooks/9").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["is_active"], false);
    let next = app
        .create_webhook("After", "https://after.example.com/h", "ticket.*")
        .await;
    assert_eq!(next["id"], 10);

    // History: 4 rows in the window of imported webhooks, none due; the
    // bot's pending row is a failed row; counters count each row once and
    // the webhooks' own counters are the bot's.
    let imported: Vec<DeliveryCols> = d::table
        .filter(d::event_id.like("bot:%"))
        .order(d::created_at)
        .select((d::webhook_id, d::status, d::next_retry_at, d::error_message))
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(imported.len(), 4);
    assert!(
        imported
            .iter()
            .all(|r| r.2.is_none() && r.1 != DeliveryStatus::Pending)
    );
    assert!(imported.iter().any(|r| {
        r.1 == DeliveryStatus::Failed
            && r.3
                .as_deref()
                .is_some_and(|m| m.contains("pending in the bot"))
    }));
    storage::testing::assert_counts_match_rows(&mut conn).await;
    assert_eq!(
        storage::counts::webhook_total(&mut conn, 5, None)
            .await
            .unwrap(),
        3
    );
    let (s, stats) = app.get("/webhooks/stats").await;
    assert_eq!(s, StatusCode::OK, "{stats}");
    assert_eq!(stats["total_deliveries"], json!(4), "{stats}");
    let (s, list) = app.get("/webhooks/5/deliveries").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["total"], 3, "{list}");
    let hook: Webhook = w::table
        .find(5)
        .select(Webhook::as_select())
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!((hook.failure_count, hook.success_count), (3, 7));
    drop(conn);

    // A second run changes nothing (the app stopped first, so its usage
    // flusher writes nothing in between).
    assert!(app.stop_now().await);
    let mut conn = connect(&app.db.url).await;
    let before = snapshot(&mut conn).await;
    let out = run(
        &app.db.url,
        &["import-bot", "--from", &bot_db.url, "--history", "30d"],
    );
    let again = text(&out.stdout);
    assert!(out.status.success(), "{again}{}", text(&out.stderr));
    assert!(
        again.contains("tokens:     0 created, 0 updated, 4 unchanged, 0 skipped"),
        "{again}"
    );
    assert!(
        again.contains("webhooks:   0 created, 0 updated, 2 unchanged, 1 skipped"),
        "{again}"
    );
    assert!(
        again.contains("deliveries: 0 created, 0 updated, 4 unchanged, 1 skipped"),
        "{again}"
    );
    assert!(!again.contains("sequence moved"), "{again}");
    assert_eq!(snapshot(&mut conn).await, before);
}

#[derive(QueryableByName)]
struct Triggered {
    #[diesel(sql_type = Nullable<Timestamptz>)]
    last_triggered_at: Option<DateTime<Utc>>,
}

#[tokio::test]
async fn dry_run_writes_nothing_and_prints_the_same_summary() {
    let bot_db = TestDb::bot().await.unwrap();
    let mut bot = connect(&bot_db.url).await;
    fill_bot(&mut bot).await;
    let ours = TestDb::new().await.unwrap();
    let mut conn = connect(&ours.url).await;
    let before = snapshot(&mut conn).await;

    let dry = run(
        &ours.url,
        &[
            "import-bot",
            "--from",
            &bot_db.url,
            "--history",
            "30d",
            "--dry-run",
        ],
    );
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let dry = text(&dry.stdout);
    assert!(dry.starts_with("dry run: nothing was written"), "{dry}");
    assert_eq!(
        snapshot(&mut conn).await,
        before,
        "a dry run wrote something"
    );

    let real = run(
        &ours.url,
        &["import-bot", "--from", &bot_db.url, "--history", "30d"],
    );
    assert!(real.status.success());
    let real = text(&real.stdout);
    assert_eq!(
        dry.lines().skip(1).collect::<Vec<_>>(),
        real.lines().collect::<Vec<_>>()
    );
    assert_ne!(snapshot(&mut conn).await, before);

    // Without --from or BOT_DATABASE_URL: a clear refusal.
    let none = run(&ours.url, &["import-bot"]);
    assert!(!none.status.success());
    assert!(
        text(&none.stderr).contains("--from"),
        "{}",
        text(&none.stderr)
    );
}

#[tokio::test]
async fn migrate_refuses_the_bots_database() {
    let bot_db = TestDb::bot().await.unwrap();
    let out = run(&bot_db.url, &["migrate"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("a database of its own") && err.contains("import-bot --from"),
        "{err}"
    );
    assert!(!err.contains("already exists"), "{err}");
    // Nothing was created in it.
    let mut bot = connect(&bot_db.url).await;
    #[derive(QueryableByName)]
    struct Found {
        #[diesel(sql_type = Bool)]
        found: bool,
    }
    let f: Found = diesel::sql_query(
        "SELECT to_regclass('__diesel_schema_migrations') IS NOT NULL \
           OR to_regclass('webhook_jobs') IS NOT NULL AS found",
    )
    .get_result(&mut bot)
    .await
    .unwrap();
    assert!(!f.found);

    // The registry's start (auto-migrate) stops with the same message.
    let ns = proto_events::Namespace::unique();
    let config = webhook_registry::Config::for_tests(&bot_db.url, ns.prefix());
    let app = webhook_registry::Application::build(config).await.unwrap();
    let stopped = tokio::time::timeout(
        Duration::from_secs(20),
        app.run_until_stopped(tokio_util::sync::CancellationToken::new()),
    )
    .await
    .expect("the registry kept running on the bot's database");
    let err = format!("{:#}", stopped.unwrap_err());
    assert!(err.contains("import-bot --from"), "{err}");
}

#[tokio::test]
async fn tokens_the_bot_issues_later_work_within_seconds() {
    let bot_db = TestDb::bot().await.unwrap();
    let mut bot = connect(&bot_db.url).await;
    let url = bot_db.url.clone();
    let app = spawn_app_with(move |c| {
        configure(c);
        c.bot_database_url = Some(url.into());
    })
    .await;
    let h = bot_hasher();

    // Issued by the bot after the switch: works within a few seconds.
    let fresh = "bot-issued-later-token-1111111111111111";
    let id = bot_token(&mut bot, "issued later", &h.hash(fresh), true, None).await;
    assert_eq!(status_of(&app, fresh).await, StatusCode::UNAUTHORIZED);
    assert!(
        eventually(5, || async {
            status_of(&app, fresh).await == StatusCode::OK
        })
        .await,
        "a token the bot issued did not start working"
    );

    // Revoked in the bot: stops working.
    diesel::sql_query(
        "UPDATE web_api_tokens SET is_active = false, updated_at = now() WHERE id = $1",
    )
    .bind::<Int4, _>(id)
    .execute(&mut bot)
    .await
    .unwrap();
    assert!(
        eventually(8, || async {
            status_of(&app, fresh).await == StatusCode::UNAUTHORIZED
        })
        .await,
        "a token revoked in the bot kept working"
    );

    // A legacy plain hash the bot rehashes keeps working; deleted in the
    // bot: stops working (switched off here, not deleted).
    let legacy = "bot-legacy-later-token-2222222222222222";
    let id = bot_token(&mut bot, "legacy", &h.plain_hash(legacy), true, None).await;
    assert!(
        eventually(5, || async {
            status_of(&app, legacy).await == StatusCode::OK
        })
        .await
    );
    diesel::sql_query("UPDATE web_api_tokens SET token_hash = $2 WHERE id = $1")
        .bind::<Int4, _>(id)
        .bind::<Text, _>(h.hash(legacy))
        .execute(&mut bot)
        .await
        .unwrap();
    let mut conn = app.conn().await;
    let rehashed = eventually(5, || async {
        let n: i64 = storage::schema::web_api_tokens::table
            .filter(storage::schema::web_api_tokens::token_hash.eq(h.hash(legacy)))
            .count()
            .get_result(&mut app.conn().await)
            .await
            .unwrap();
        n == 1
    })
    .await;
    assert!(rehashed);
    assert_eq!(status_of(&app, legacy).await, StatusCode::OK);
    diesel::sql_query("DELETE FROM web_api_tokens WHERE id = $1")
        .bind::<Int4, _>(id)
        .execute(&mut bot)
        .await
        .unwrap();
    assert!(
        eventually(8, || async {
            status_of(&app, legacy).await == StatusCode::UNAUTHORIZED
        })
        .await,
        "a token deleted in the bot kept working"
    );
    let active: bool = storage::schema::web_api_tokens::table
        .filter(storage::schema::web_api_tokens::bot_token_id.eq(id))
        .select(storage::schema::web_api_tokens::is_active)
        .first(&mut conn)
        .await
        .unwrap();
    assert!(!active);
    // Our own token is not the bot's: untouched.
    assert_eq!(status_of(&app, &app.token).await, StatusCode::OK);
}

#[tokio::test]
async fn a_bot_database_that_is_down_does_not_make_the_registry_unready() {
    let app = spawn_app_with(|c| {
        c.bot_database_url = Some("postgres://postgres:pw@127.0.0.1:1/bot".into());
        c.bot_token_sync_interval = Duration::from_millis(200);
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let ready = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(ready, StatusCode::OK);
    assert_eq!(app.get("/webhooks").await.0, StatusCode::OK);
}
