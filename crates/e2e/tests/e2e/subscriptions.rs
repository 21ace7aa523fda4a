//! Subscriptions end to end, through the built binaries: webhooks created
//! through the API with several patterns and a payload filter, custom
//! headers, each kind of receiver auth and an ed25519 key, delivered by a
//! worker that goes out through a real HTTP proxy (tinyproxy); then a new
//! key in the key file, everything resealed, and a new worker that still
//! signs with the same secrets.

use std::time::Duration;

use e2e::deployment::Deployment;
use e2e::process::TempDir;
use proto_events::{Envelope, EventType, Namespace};
use reqwest::Method;
use serde_json::{Value, json};
use storage::testing::TestDb;
use test_support::tinyproxy::TinyProxy;
use test_support::{Received, Receiver, Reply};

use crate::checks::shared_nats_url;

const WITHIN: Duration = Duration::from_secs(20);

fn event(t: EventType, payload: Value) -> Envelope {
    let Value::Object(map) = payload else {
        unreachable!("payloads are objects")
    };
    Envelope::new(t, map)
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.header(name)
        .unwrap_or_else(|| panic!("no {name} header: {:?}", r.headers))
}

/// The HMAC signature of `r` verifies with `secret`, both ways.
fn assert_hmac(r: &Received, secret: &str) {
    assert!(webhook_client::verify_x_webhook_signature(
        secret,
        &r.body,
        header(r, "x-webhook-signature")
    ));
    let ts: i64 = header(r, "webhook-timestamp").parse().unwrap();
    assert!(webhook_client::verify_standard_signature(
        secret,
        header(r, "webhook-id"),
        ts,
        &r.body,
        header(r, "webhook-signature")
    ));
}

/// The ed25519 signature of `r` verifies with `public_key`.
fn assert_ed25519(r: &Received, public_key: &str) {
    let ts: i64 = header(r, "webhook-timestamp").parse().unwrap();
    assert!(
        webhook_client::verify_standard_signature_ed25519(
            public_key,
            header(r, "webhook-id"),
            ts,
            &r.body,
            header(r, "webhook-signature")
        ),
        "v1a under {public_key}"
    );
    assert_eq!(r.header("x-webhook-signature"), None);
}

fn user(id: i64) -> Envelope {
    event(
        EventType::UserCreated,
        json!({"user_id": id, "telegram_id": id * 10, "username": "u", "first_name": "Иван", "last_name": null, "referral_code": "r", "referred_by_id": null}),
    )
}

fn deposit(id: i64, kopeks: i64) -> Envelope {
    event(
        EventType::PaymentCompleted,
        json!({"transaction_id": id, "user_id": 7, "type": "deposit", "amount_kopeks": kopeks, "amount_rubles": kopeks as f64 / 100.0, "payment_method": "sbp", "external_id": null, "is_completed": true, "description": null}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end to end: deploy/test.sh --e2e"]
async fn subscriptions_reach_real_receivers_through_a_proxy_and_survive_a_new_key() {
    let dir = TempDir::new("subscriptions");
    let db = TestDb::new().await.unwrap();
    // A key file of this test's own, so a key can be added to it later.
    let key_file = dir.path().join("secrets.key");
    std::fs::write(&key_file, format!("{}\n", storage::TEST_KEY_LINE)).unwrap();
    let tokens = Receiver::start(Reply::with_body(
        200,
        r#"{"access_token":"issued-token-1","token_type":"Bearer","expires_in":3600}"#,
    ))
    .await;
    let proxy = TinyProxy::start("");
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port());
    let key_path = key_file.to_str().unwrap().to_owned();
    let mut d = Deployment::start(
        dir.path(),
        &db.url,
        &shared_nats_url(),
        Namespace::unique(),
        &[
            ("SECRETS_KEY_FILE", key_path.as_str()),
            ("DELIVERY_HTTP_PROXY", proxy_url.as_str()),
        ],
    )
    .await;
    let rx = |path: &str| d.receiver.url(path);

    // Two patterns and a filter: users, and deposits of 1,000 roubles or more.
    let crm = json!({
        "name": "crm", "url": rx("/crm"), "secret": "crm-secret",
        "event_types": ["user.created", "payment.completed"],
        "filter": {"or": [
            {"path": "telegram_id", "exists": true},
            {"and": [{"path": "type", "eq": "deposit"}, {"path": "amount_kopeks", "gte": 100000}]}
        ]},
        "headers": {"X-Source": "bedolaga", "X-Api-Key": {"value": "header-secret", "secret": true}},
        "auth": {"type": "basic", "username": "robot", "password": "basic-password"}
    });
    let bearer = json!({"name": "bearer", "url": rx("/bearer"), "event_type": "user.created",
        "auth": {"type": "bearer", "token": "static-bearer-token"}});
    let oauth = json!({"name": "oauth", "url": rx("/oauth"), "event_type": "user.created",
        "auth": {"type": "oauth2", "token_url": tokens.url("/token"), "client_id": "bot", "client_secret": "client-secret", "scope": "hooks"}});
    let ed = json!({"name": "ed", "url": rx("/ed"), "event_type": "user.created", "signature_scheme": "ed25519"});
    let crm = d.create_webhook_from(crm).await;
    d.create_webhook_from(bearer).await;
    d.create_webhook_from(oauth).await;
    let ed = d.create_webhook_from(ed).await;
    let public_key = ed["public_key"].as_str().unwrap().to_owned();
    assert!(public_key.starts_with("whpk_"));
    // A worker that has all of them.
    d.kill_workers();
    d.start_worker().await;

    let publisher = d.publisher().await;
    let events = [
        user(1),
        deposit(10, 50_000),
        deposit(11, 150_000),
        event(
            EventType::TicketCreated,
            json!({"ticket_id": 1, "user_id": 7, "title": "t", "priority": "normal", "user_reply_block_permanent": false, "user_reply_block_until": null}),
        ),
        user(2),
        user(3),
    ];
    for e in &events {
        publisher.publish(e).await.unwrap();
    }

    // crm: exactly the users and the large deposit, in headers and auth as set.
    d.receiver.wait_for_path("/crm", 4, WITHIN).await;
    // A fifth (the small deposit) would have come by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got: Vec<Received> = d.receiver.on("/crm");
    let types: Vec<&str> = got.iter().map(|r| header(r, "x-webhook-event")).collect();
    assert_eq!(got.len(), 4, "{types:?}");
    assert_eq!(
        types.iter().filter(|t| **t == "payment.completed").count(),
        1
    );
    let big = got
        .iter()
        .find(|r| header(r, "x-webhook-event") == "payment.completed")
        .unwrap();
    let body: Value = serde_json::from_slice(&big.body).unwrap();
    assert_eq!(body["amount_kopeks"], 150_000);
    for r in &got {
        assert_eq!(header(r, "x-source"), "bedolaga");
        assert_eq!(header(r, "x-api-key"), "header-secret");
        // base64("robot:basic-password")
        assert_eq!(
            header(r, "authorization"),
            "Basic cm9ib3Q6YmFzaWMtcGFzc3dvcmQ="
        );
        assert_hmac(r, "crm-secret");
        // Through the proxy.
        assert!(
            r.header("via").is_some_and(|v| v.contains("tinyproxy")),
            "{:?}",
            r.headers
        );
    }
    // The filtered deposit is no delivery: no row.
    let crm_id = crm["id"].as_i64().unwrap();
    let (_, page) = d
        .api(Method::GET, &format!("/webhooks/{crm_id}/deliveries"), None)
        .await;
    assert_eq!(page["total"], 4, "{page}");

    for r in d.receiver.wait_for_path("/bearer", 3, WITHIN).await {
        assert_eq!(header(&r, "authorization"), "Bearer static-bearer-token");
    }
    for r in d.receiver.wait_for_path("/oauth", 3, WITHIN).await {
        assert_eq!(header(&r, "authorization"), "Bearer issued-token-1");
    }
    // One token for the three deliveries, asked for with the client's
    // credentials, through the proxy too.
    let asked = tokens.received();
    assert_eq!(asked.len(), 1, "token requests: {}", asked.len());
    let form = String::from_utf8_lossy(&asked[0].body).into_owned();
    assert!(form.contains("grant_type=client_credentials"), "{form}");
    assert!(form.contains("scope=hooks"), "{form}");
    assert!(asked[0].header("via").is_some());
    for r in d.receiver.wait_for_path("/ed", 3, WITHIN).await {
        assert_ed25519(&r, &public_key);
    }
    assert!(
        proxy
            .requests()
            .iter()
            .any(|l| l.starts_with("POST http://127.0.0.1")),
        "{}",
        proxy.log()
    );

    // No secret in clear in the database.
    let dump = webhooks_as_text(&db.url).await;
    for secret in [
        "crm-secret",
        "header-secret",
        "basic-password",
        "static-bearer-token",
        "client-secret",
        "whsk_",
    ] {
        assert!(!dump.contains(secret), "{secret} in clear: {dump}");
    }

    // A new key: the registry's CLI reseals everything under it, a new
    // worker opens it and signs with the same secrets as before.
    let line = storage::secrets::Keyring::generate_key_line("k2").unwrap();
    std::fs::write(&key_file, format!("{}\n{line}\n", storage::TEST_KEY_LINE)).unwrap();
    let out = std::process::Command::new(e2e::process::binary("webhook-registry"))
        .env_clear()
        .env("SECRETS_KEY_FILE", &key_file)
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .args(["secrets", "seal"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("with key k2"), "{said}");
    let dump = webhooks_as_text(&db.url).await;
    assert!(!dump.contains("sealed:v1:test:"), "all under k2: {dump}");
    d.kill_workers();
    d.start_worker().await;
    publisher.publish(&user(4)).await.unwrap();
    let crm_got = d.receiver.wait_for_path("/crm", 5, WITHIN).await;
    let last = crm_got.last().unwrap();
    assert_hmac(last, "crm-secret");
    assert_eq!(header(last, "x-api-key"), "header-secret");
    let ed_got = d.receiver.wait_for_path("/ed", 4, WITHIN).await;
    assert_ed25519(ed_got.last().unwrap(), &public_key);
}

/// Every `webhooks` row as text, as a dump would hold it.
async fn webhooks_as_text(db_url: &str) -> String {
    use storage::testing::diesel;
    use storage::testing::diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Dump {
        #[diesel(sql_type = diesel::sql_types::Text)]
        t: String,
    }
    let mut conn = storage::connect(db_url).await.unwrap();
    let d: Dump = diesel::sql_query(
        "SELECT coalesce(string_agg(row_to_json(w)::text, E'\\n'), '') AS t FROM webhooks w",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    d.t
}
