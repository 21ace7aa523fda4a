//! Signed POSTs, matching, recording.

use std::time::Duration;

use proto_events::EventType;
use serde_json::{Value, json};

use crate::helpers::*;

const SEED_CHECK: &str = r#"
import hmac, hashlib, json, os, sys

def verify_webhook_signature(payload: dict, signature_header: str, secret: str) -> bool:
    payload_json = json.dumps(payload, sort_keys=True)
    expected_signature = hmac.new(
        secret.encode('utf-8'),
        payload_json.encode('utf-8'),
        hashlib.sha256
    ).hexdigest()
    received_signature = signature_header.replace('sha256=', '')
    return hmac.compare_digest(expected_signature, received_signature)

payload = json.loads(sys.stdin.buffer.read())
ok = verify_webhook_signature(payload, os.environ["SIG"], os.environ["SECRET"])
sys.exit(0 if ok else 3)
"#;

fn python_available() -> bool {
    std::process::Command::new("python3")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Runs the seed document's Python verification on a received request.
fn seed_python_verifies(body: &[u8], sig: &str, secret: &str) -> bool {
    python_verifies(SEED_CHECK, body, sig, secret)
}

/// Runs a Python verification script (body on stdin, `SIG` and `SECRET` in
/// the environment); true when it exits 0.
fn python_verifies(script: &str, body: &[u8], sig: &str, secret: &str) -> bool {
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("SIG", sig)
        .env("SECRET", secret)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body).unwrap();
    child.wait().unwrap().success()
}

#[tokio::test]
async fn signed_post_verifies_with_the_seed_snippet_raw_hmac_and_standard_webhooks() {
    let app = spawn_app(|_| {}).await;
    let rx = Receiver::start(Reply::ok()).await;
    let secret = "s3cr3t-ключ-🔑";
    let hook = insert_webhook(
        &app.pool,
        &rx.url("/hook"),
        "user.created",
        Some(secret),
        true,
    )
    .await;
    let rotated = insert_webhook(
        &app.pool,
        &rx.url("/rotated"),
        "user.created",
        Some("new-secret"),
        true,
    )
    .await;
    exec(
        &app.pool,
        &format!(
            "UPDATE webhooks SET previous_secret = 'old-secret', \
             previous_secret_expires_at = now() + interval '1 hour' WHERE id = {rotated}"
        ),
    )
    .await;
    app.notify_changed().await;

    let payload = json!({
        "user_id": 123, "telegram_id": 456789, "username": "тест_юзер",
        "first_name": "Иван 😀", "last_name": "Петров 🇷🇺", "referral_code": "ref\"ABC\\123",
        "referred_by_id": null, "balance": 10.5, "nested": {"z": [1, 2.0, "ё"], "a": true},
        "tiny": 1e-7
    });
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", traceparent);
    let Value::Object(map) = payload.clone() else {
        unreachable!()
    };
    let env = proto_events::Envelope::new(EventType::UserCreated, map);
    app.publisher
        .publish_with_headers(&env, headers)
        .await
        .unwrap();

    let got = rx.wait_for_path("/hook", 1, Duration::from_secs(10)).await;
    let r = &got[0];
    let expected_body = proto_events::canonical::to_canonical_vec(&payload);
    assert_eq!(r.body, expected_body, "body is the canonical payload");
    assert!(r.body.is_ascii());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-webhook-event"), Some("user.created"));
    assert_eq!(r.header("x-webhook-id"), Some(hook.to_string().as_str()));
    assert!(r.header("user-agent").unwrap().contains("bedolaga"));
    assert_eq!(r.header("traceparent"), Some(traceparent));
    let sig = r.header("x-webhook-signature").unwrap();
    assert!(
        webhook_client::verify_x_webhook_signature(secret, &r.body, sig),
        "raw-body HMAC"
    );
    // The same check by hand with ring.
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    assert_eq!(
        sig,
        format!(
            "sha256={}",
            hex::encode(ring::hmac::sign(&key, &r.body).as_ref())
        )
    );
    let msg_id = r.header("webhook-id").unwrap();
    assert_eq!(msg_id, webhook_client::message_id(&env.id, hook));
    let ts: i64 = r.header("webhook-timestamp").unwrap().parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - ts).abs() < 60);
    let std_sig = r.header("webhook-signature").unwrap();
    assert!(webhook_client::verify_standard_signature(
        secret, msg_id, ts, &r.body, std_sig
    ));
    if python_available() {
        assert!(
            seed_python_verifies(&r.body, sig, secret),
            "the seed's Python snippet verifies"
        );
        assert!(
            !seed_python_verifies(&r.body, sig, "wrong"),
            "and rejects a wrong secret"
        );
    } else {
        eprintln!("python3 not found: seed snippet check skipped");
    }

    // Rotation: both secrets sign the Standard Webhooks header.
    let rot = &rx
        .wait_for_path("/rotated", 1, Duration::from_secs(10))
        .await[0];
    let (id, ts) = (
        rot.header("webhook-id").unwrap(),
        rot.header("webhook-timestamp").unwrap().parse().unwrap(),
    );
    let s = rot.header("webhook-signature").unwrap();
    assert_eq!(s.split(' ').count(), 2);
    assert!(webhook_client::verify_standard_signature(
        "new-secret",
        id,
        ts,
        &rot.body,
        s
    ));
    assert!(webhook_client::verify_standard_signature(
        "old-secret",
        id,
        ts,
        &rot.body,
        s
    ));
    assert!(webhook_client::verify_x_webhook_signature(
        "new-secret",
        &rot.body,
        rot.header("x-webhook-signature").unwrap()
    ));

    // Recorded, counters bumped.
    let rows = settled_rows(&app.pool, hook, 1).await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.status.as_str(), "success");
    assert_eq!(row.response_status, Some(200));
    assert_eq!(row.attempt_number, 1);
    assert_eq!(row.event_id.as_deref(), Some(env.id.as_str()));
    assert_eq!(row.event_type, "user.created");
    assert_eq!(row.payload, payload);
    assert!(row.delivered_at.is_some());
    assert!(row.next_retry_at.is_none());
    let w = eventually(Duration::from_secs(10), "counters", || async {
        let w = webhook(&app.pool, hook).await;
        (w.success_count == 1).then_some(w)
    })
    .await;
    assert_eq!(w.failure_count, 0);
    assert!(w.last_triggered_at.is_some());
    app.cleanup().await;
}

#[tokio::test]
async fn patterns_match_and_inactive_or_invalid_webhooks_get_nothing() {
    let app = spawn_app(|_| {}).await;
    let rx = Receiver::start(Reply::ok()).await;
    let ticket = insert_webhook(&app.pool, &rx.url("/ticket"), "ticket.*", None, true).await;
    let all = insert_webhook(&app.pool, &rx.url("/all"), "*", Some(""), true).await;
    let user = insert_webhook(&app.pool, &rx.url("/user"), "user.created", None, true).await;
    let off = insert_webhook(&app.pool, &rx.url("/off"), "*", None, false).await;
    let bad = insert_webhook(&app.pool, &rx.url("/bad"), "user.deleted", None, true).await;
    app.notify_changed().await;

    app.publish(EventType::TicketCreated, json!({"ticket_id": 1}))
        .await;
    app.publish(EventType::UserCreated, json!({"user_id": 2}))
        .await;
    app.publish(EventType::PaymentCompleted, json!({"transaction_id": 3}))
        .await;

    rx.wait_for_path("/all", 3, Duration::from_secs(10)).await;
    rx.wait_for_path("/ticket", 1, Duration::from_secs(10))
        .await;
    rx.wait_for_path("/user", 1, Duration::from_secs(10)).await;
    settled_rows(&app.pool, all, 3).await;
    settled_rows(&app.pool, ticket, 1).await;
    settled_rows(&app.pool, user, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.on("/ticket").len(), 1);
    assert_eq!(
        rx.on("/ticket")[0].header("x-webhook-event"),
        Some("ticket.created")
    );
    assert_eq!(rx.on("/user").len(), 1);
    assert_eq!(rx.on("/all").len(), 3);
    // An empty secret means unsigned, as in the seed.
    assert!(rx.on("/all")[0].header("x-webhook-signature").is_none());
    assert!(rx.on("/all")[0].header("webhook-signature").is_none());
    assert!(rx.on("/off").is_empty());
    assert!(rx.on("/bad").is_empty());
    assert!(deliveries(&app.pool, off).await.is_empty());
    assert!(deliveries(&app.pool, bad).await.is_empty());

    // A webhook created later is picked up by the change notice.
    let late = insert_webhook(&app.pool, &rx.url("/late"), "payment.completed", None, true).await;
    app.notify_changed().await;
    app.publish(EventType::PaymentCompleted, json!({"transaction_id": 4}))
        .await;
    rx.wait_for_path("/late", 1, Duration::from_secs(10)).await;
    settled_rows(&app.pool, late, 1).await;
    app.cleanup().await;
}

#[tokio::test]
async fn timeouts_are_recorded_as_failures() {
    let app = spawn_app(|c| {
        c.total_timeout = Duration::from_secs(1);
        c.retry_schedule = String::new();
    })
    .await;
    let rx = Receiver::start(Reply::Hang).await;
    let hook = insert_webhook(&app.pool, &rx.url("/slow"), "*", None, true).await;
    app.notify_changed().await;
    app.publish(EventType::UserCreated, json!({"user_id": 1}))
        .await;
    let rows = settled_rows(&app.pool, hook, 1).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status.as_str(), "failed");
    assert_eq!(rows[0].response_status, None);
    assert!(
        rows[0]
            .error_message
            .as_deref()
            .unwrap()
            .contains("timeout"),
        "{:?}",
        rows[0].error_message
    );
    assert!(rows[0].next_retry_at.is_none(), "no schedule: no retry");
    let w = webhook(&app.pool, hook).await;
    assert_eq!((w.success_count, w.failure_count), (0, 1));
    assert!(w.failing_since.is_some());
    app.cleanup().await;
}

#[tokio::test]
async fn long_response_bodies_are_cut_to_1000_characters() {
    let app = spawn_app(|_| {}).await;
    let rx = Receiver::start(Reply::with_body(200, "я".repeat(3000))).await;
    let hook = insert_webhook(&app.pool, &rx.url("/long"), "*", None, true).await;
    app.notify_changed().await;
    app.publish(EventType::TicketCreated, json!({"ticket_id": 1}))
        .await;
    let rows = settled_rows(&app.pool, hook, 1).await;
    assert_eq!(
        rows[0].response_body.as_deref().unwrap().chars().count(),
        1000
    );
    app.cleanup().await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = spawn_app(|_| {}).await;
    let (status, body) = app.get("/healthz").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    for check in ["nats", "database", "consumer", "webhooks"] {
        assert!(body.contains(check), "{body}");
    }
    let rx = Receiver::start(Reply::ok()).await;
    insert_webhook(&app.pool, &rx.url("/m"), "*", None, true).await;
    app.notify_changed().await;
    app.publish(EventType::UserCreated, json!({"user_id": 1}))
        .await;
    rx.wait_for_path("/m", 1, Duration::from_secs(10)).await;
    let metrics = eventually(Duration::from_secs(10), "metrics", || async {
        let (_, m) = app.get("/metrics").await;
        m.contains("delivery_attempts_total{outcome=\"success\"} 1")
            .then_some(m)
    })
    .await;
    for name in [
        "delivery_attempt_duration_seconds_bucket",
        "delivery_dead_letters_total",
        "delivery_in_flight",
        "delivery_retries_due",
        "delivery_retries_pending",
        "delivery_consumer_lag",
        "delivery_events_total",
    ] {
        assert!(metrics.contains(name), "{name} missing in\n{metrics}");
    }
    app.cleanup().await;
}

#[tokio::test]
async fn a_dead_receiver_does_not_hold_up_the_others() {
    let app = spawn_app(|c| {
        c.max_per_webhook = 2;
        c.queue_wait = Duration::from_millis(300);
        c.total_timeout = Duration::from_secs(30);
        c.shutdown_grace = Duration::from_secs(1);
    })
    .await;
    let dead = Receiver::start(Reply::Hang).await;
    let fast = Receiver::start(Reply::ok()).await;
    let stuck = insert_webhook(&app.pool, &dead.url("/dead"), "*", None, true).await;
    let fine = insert_webhook(&app.pool, &fast.url("/fast"), "*", None, true).await;
    app.notify_changed().await;
    let n = 20;
    for i in 0..n {
        app.publish(EventType::TicketCreated, json!({"ticket_id": i}))
            .await;
    }
    // Every event reaches the fast receiver and is recorded well before the
    // dead one could have been tried 20 times two at a time (300 s).
    fast.wait_for_path("/fast", n, Duration::from_secs(10))
        .await;
    settled_rows(&app.pool, fine, n).await;
    // The dead receiver holds two requests; the other deliveries to it were
    // parked as pending rows (no attempt yet), so their events could be acked.
    let parked = eventually(Duration::from_secs(10), "parked deliveries", || async {
        let rows = deliveries(&app.pool, stuck).await;
        let pending = rows
            .iter()
            .filter(|r| r.status.as_str() == "pending")
            .count();
        (pending >= n - 2).then_some(pending)
    })
    .await;
    assert!(parked >= n - 2);
    assert!(
        dead.on("/dead").len() <= 2,
        "at most DELIVERY_MAX_PER_WEBHOOK at once"
    );
    let (_, metrics) = app.get("/metrics").await;
    assert!(!metrics.contains("delivery_queued_total 0"), "{metrics}");
    assert!(metrics.contains("delivery_consumer_lag"), "{metrics}");
    app.cleanup().await;
}

/// What receivers written against the bot do: parse the body, serialise it
/// again as the bot does, HMAC that.
const BOT_CHECK: &str = r#"
import hmac, hashlib, json, os, sys
body = sys.stdin.buffer.read()
payload_json = json.dumps(json.loads(body), ensure_ascii=False)
expected = hmac.new(os.environ["SECRET"].encode(), payload_json.encode(), hashlib.sha256).hexdigest()
sys.exit(0 if hmac.compare_digest(expected, os.environ["SIG"].replace("sha256=", "")) else 3)
"#;

fn bot_receiver_verifies(body: &[u8], sig: &str, secret: &str) -> bool {
    python_verifies(BOT_CHECK, body, sig, secret)
}

#[tokio::test]
async fn a_bot_format_webhook_gets_the_bots_bytes_and_its_retry_sends_them_again() {
    let app = spawn_app(|c| c.retry_schedule = "1s".into()).await;
    // The first attempt fails, the retry succeeds.
    let rx = Receiver::start_with(|_, n| {
        if n >= 1 {
            Reply::ok()
        } else {
            Reply::with_body(500, "not yet")
        }
    })
    .await;
    let canonical = Receiver::start(Reply::ok()).await;
    let secret = "секрет-бота";
    let hook = insert_webhook(&app.pool, &rx.url("/bot"), "payment.*", Some(secret), true).await;
    exec(
        &app.pool,
        &format!("UPDATE webhooks SET body_format = 'bot' WHERE id = {hook}"),
    )
    .await;
    let other = insert_webhook(
        &app.pool,
        &canonical.url("/canonical"),
        "payment.*",
        Some(secret),
        true,
    )
    .await;
    app.notify_changed().await;

    // An envelope as the bot's package writes it: Python's json.dumps of
    // the envelope, keys in the bot's order, Cyrillic unescaped, the bot's
    // own timestamp format.
    let payload_text = r#"{"user_id": 7, "amount_kopeks": 150000, "description": "Пополнение баланса 💳", "is_completed": false, "note": "tab\tand \"quotes\"", "a": 2.5}"#;
    let envelope = format!(
        r#"{{"id": "{}", "type": "payment.completed", "timestamp": "2026-08-20 09:39:04.123456+00:00", "payload": {payload_text}}}"#,
        proto_events::new_event_id()
    );
    app.publisher
        .jetstream()
        .publish(
            app.publisher
                .namespace()
                .event_subject(EventType::PaymentCompleted.as_str()),
            envelope.clone().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let got = rx.wait_for_path("/bot", 2, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 2, "first attempt and its retry");
    for r in &got {
        assert_eq!(
            std::str::from_utf8(&r.body).unwrap(),
            payload_text,
            "the bot's bytes, also on the retry"
        );
        let sig = r.header("x-webhook-signature").unwrap();
        assert!(webhook_client::verify_x_webhook_signature(
            secret, &r.body, sig
        ));
        if python_available() {
            assert!(
                bot_receiver_verifies(&r.body, sig, secret),
                "the bot's receivers verify"
            );
            assert!(!bot_receiver_verifies(&r.body, sig, "wrong"));
        }
    }
    // The canonical webhook beside it gets the canonical body of the same event.
    let c = &canonical
        .wait_for_path("/canonical", 1, Duration::from_secs(10))
        .await[0];
    let parsed: Value = serde_json::from_str(payload_text).unwrap();
    assert_eq!(c.body, proto_events::canonical::to_canonical_vec(&parsed));
    // Rows: the payload as an object, the bot's bytes kept for the retry.
    let rows = settled_rows(&app.pool, hook, 2).await;
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!(r.payload, parsed);
        assert_eq!(r.body.as_deref(), Some(payload_text));
    }
    let rows = settled_rows(&app.pool, other, 1).await;
    assert_eq!(rows[0].body, None, "canonical rows keep no body");
    app.cleanup().await;
}

#[tokio::test]
async fn pull_webhooks_are_never_delivered_to() {
    let app = spawn_app(|_| {}).await;
    let rx = Receiver::start(Reply::ok()).await;
    let push = insert_webhook(&app.pool, &rx.url("/push"), "*", None, true).await;
    let pull = insert_webhook(&app.pool, &rx.url("/pull"), "*", None, true).await;
    exec(
        &app.pool,
        &format!("UPDATE webhooks SET mode = 'pull', url = NULL WHERE id = {pull}"),
    )
    .await;
    // A pending row of a pull webhook (never written by the services) is
    // not claimed either.
    exec(
        &app.pool,
        &format!(
            "INSERT INTO webhook_deliveries (webhook_id, event_type, payload, status, \
             attempt_number, next_retry_at, event_id) \
             VALUES ({pull}, 'user.created', '{{}}', 'pending', 2, now(), 'e-pull')"
        ),
    )
    .await;
    app.notify_changed().await;
    app.publish(EventType::UserCreated, json!({"user_id": 1}))
        .await;
    let rows = settled_rows(&app.pool, push, 1).await;
    assert_eq!(rows[0].status.as_str(), "success");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pulled = deliveries(&app.pool, pull).await;
    assert_eq!(pulled.len(), 1, "only the pending row: {pulled:?}");
    assert_eq!(pulled[0].status.as_str(), "pending");
    assert!(rx.on("/pull").is_empty());
    assert_eq!(rx.on("/push").len(), 1);
    app.cleanup().await;
}
