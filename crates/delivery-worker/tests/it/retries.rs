//! Retries, Retry-After, disabling, manual retries, SSRF refusals.

use std::time::Duration;

use proto_events::{ChangeOp, EventType, WebhookChange};
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn failed_attempts_are_retried_on_the_schedule_with_one_message_id() {
    let app = spawn_app(|c| c.retry_schedule = "1s,1s".into()).await;
    // /down always fails; /flaky fails once, then succeeds.
    let rx = Receiver::start_with(|r, n| {
        if r.path == "/flaky" && n >= 1 {
            Reply::ok()
        } else {
            Reply::with_body(500, "boom")
        }
    })
    .await;
    let down = insert_webhook(&app.pool, &rx.url("/down"), "*", Some("k"), true).await;
    let flaky = insert_webhook(&app.pool, &rx.url("/flaky"), "*", Some("k"), true).await;
    app.notify_changed().await;
    // Published with a trace context, which every retry carries too.
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", traceparent);
    let Value::Object(map) = json!({"ticket_id": 9}) else {
        unreachable!()
    };
    let env = proto_events::Envelope::new(EventType::TicketStatusChanged, map);
    app.publisher
        .publish_with_headers(&env, headers)
        .await
        .unwrap();
    let event = env.id.clone();

    let rows = settled_rows(&app.pool, down, 3).await;
    assert_eq!(rows.len(), 3, "first attempt + 2 retries");
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.attempt_number, i as i32 + 1);
        assert_eq!(r.status.as_str(), "failed");
        assert_eq!(r.response_status, Some(500));
        assert_eq!(r.response_body.as_deref(), Some("boom"));
        assert_eq!(r.error_message.as_deref(), Some("HTTP 500"));
        assert_eq!(r.event_id.as_deref(), Some(event.as_str()));
        assert_eq!(r.payload, json!({"ticket_id": 9}));
    }
    let r1 = &rows[0];
    let due = r1.next_retry_at.expect("attempt 1 schedules a retry");
    let gap = (due - r1.created_at).num_milliseconds();
    assert!((700..=1300).contains(&gap), "1s ±20 %: {gap} ms");
    assert!(rows[1].next_retry_at.is_some());
    assert!(rows[2].next_retry_at.is_none(), "schedule exhausted");
    let reqs = rx.on("/down");
    assert_eq!(reqs.len(), 3);
    let ids: Vec<_> = reqs
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "same webhook-id on every retry: {ids:?}"
    );
    assert!(
        reqs.iter()
            .all(|r| r.header("traceparent") == Some(traceparent)),
        "traceparent on every attempt"
    );
    assert!(
        reqs.iter()
            .all(|r| webhook_client::verify_x_webhook_signature(
                "k",
                &r.body,
                r.header("x-webhook-signature").unwrap()
            ))
    );
    let w = webhook(&app.pool, down).await;
    assert_eq!((w.success_count, w.failure_count), (0, 3));
    assert!(w.failing_since.is_some());
    assert!(w.is_active);

    let rows = settled_rows(&app.pool, flaky, 2).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].status.as_str(), "failed");
    assert!(rows[0].next_retry_at.is_some());
    assert_eq!(rows[1].status.as_str(), "success");
    assert_eq!(rows[1].attempt_number, 2);
    assert!(rows[1].delivered_at.is_some());
    let w = webhook(&app.pool, flaky).await;
    assert_eq!((w.success_count, w.failure_count), (1, 1));
    assert!(w.failing_since.is_none(), "a success clears failing_since");
    storage::testing::assert_counts_match_rows(&mut app.pool.get().await.unwrap()).await;
    app.cleanup().await;
}

#[tokio::test]
async fn retry_after_on_429_is_honoured() {
    // The schedule alone would wait a minute.
    let app = spawn_app(|c| c.retry_schedule = "60s,60s".into()).await;
    let rx = Receiver::start_with(|_, n| {
        if n == 0 {
            Reply::with_header(429, "Retry-After", "1")
        } else {
            Reply::ok()
        }
    })
    .await;
    let hook = insert_webhook(&app.pool, &rx.url("/rl"), "*", None, true).await;
    app.notify_changed().await;
    app.publish(EventType::UserCreated, json!({"user_id": 1}))
        .await;
    let got = rx.wait_for_path("/rl", 2, Duration::from_secs(15)).await;
    let gap = got[1].at.duration_since(got[0].at).as_millis();
    assert!(gap >= 900, "waited the Retry-After: {gap} ms");
    let rows = settled_rows(&app.pool, hook, 2).await;
    assert_eq!(rows[0].response_status, Some(429));
    let due = rows[0].next_retry_at.unwrap();
    assert!((due - rows[0].created_at).num_milliseconds() < 2000);
    assert_eq!(rows[1].status.as_str(), "success");
    app.cleanup().await;
}

#[tokio::test]
async fn gone_disables_the_webhook() {
    let app = spawn_app(|_| {}).await;
    let rx = Receiver::start(Reply::status(410)).await;
    let other = Receiver::start(Reply::ok()).await;
    let hook = insert_webhook(&app.pool, &rx.url("/gone"), "*", None, true).await;
    let fine = insert_webhook(&app.pool, &other.url("/fine"), "*", None, true).await;
    // Listen for the worker's own change notice.
    let mut notices = app
        .client
        .subscribe(app.ns.webhooks_changed_subject())
        .await
        .unwrap();
    app.client.flush().await.unwrap();
    app.notify_changed().await;
    app.publish(EventType::UserCreated, json!({"user_id": 1}))
        .await;
    let rows = settled_rows(&app.pool, hook, 1).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status.as_str(), "failed");
    assert_eq!(rows[0].response_status, Some(410));
    assert!(rows[0].next_retry_at.is_none(), "410 is not retried");
    assert!(rows[0].error_message.as_deref().unwrap().contains("410"));
    let w = eventually(Duration::from_secs(10), "disabled", || async {
        let w = webhook(&app.pool, hook).await;
        (!w.is_active).then_some(w)
    })
    .await;
    assert_eq!(
        w.disabled_reason.as_deref(),
        Some("receiver answered 410 Gone")
    );
    // The worker announced the change.
    let notice = async {
        use futures::StreamExt;
        while let Some(m) = notices.next().await {
            let notice = WebhookChange::from_payload(&m.payload).unwrap();
            if notice.webhook_id == hook {
                return notice;
            }
        }
        panic!("notices ended")
    };
    let notice = tokio::time::timeout(Duration::from_secs(5), notice)
        .await
        .expect("the worker announces the disabled webhook");
    assert_eq!(notice.op, ChangeOp::Updated);
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.publish(EventType::UserCreated, json!({"user_id": 2}))
        .await;
    other
        .wait_for_path("/fine", 2, Duration::from_secs(10))
        .await;
    settled_rows(&app.pool, fine, 2).await;
    assert_eq!(
        rx.on("/gone").len(),
        1,
        "a disabled webhook gets nothing more"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn failing_too_long_disables_the_webhook() {
    let app = spawn_app(|c| {
        c.retry_schedule = String::new();
        c.disable_after = Duration::from_secs(2);
    })
    .await;
    let rx = Receiver::start(Reply::status(500)).await;
    let hook = insert_webhook(&app.pool, &rx.url("/bad"), "*", None, true).await;
    app.notify_changed().await;
    app.publish(EventType::UserCreated, json!({"user_id": 1}))
        .await;
    settled_rows(&app.pool, hook, 1).await;
    assert!(webhook(&app.pool, hook).await.is_active, "not yet");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    app.publish(EventType::UserCreated, json!({"user_id": 2}))
        .await;
    let w = eventually(Duration::from_secs(10), "disabled", || async {
        let w = webhook(&app.pool, hook).await;
        (!w.is_active).then_some(w)
    })
    .await;
    let reason = w.disabled_reason.unwrap();
    assert!(
        reason.contains("without a single success since"),
        "{reason}"
    );
    assert_eq!(w.failure_count, 2);
    app.cleanup().await;
}

#[tokio::test]
async fn manual_retries_queued_by_the_registry_run() {
    let app = spawn_app(|_| {}).await;
    let rx = Receiver::start(Reply::ok()).await;
    let hook = insert_webhook(
        &app.pool,
        &rx.url("/manual"),
        "user.created",
        Some("k"),
        true,
    )
    .await;
    // What the registry's manual retry inserts.
    storage::deliveries::insert(
        &mut app.pool.get().await.unwrap(),
        storage::models::NewDelivery {
            webhook_id: hook,
            event_type: "user.created".into(),
            payload: json!({"user_id": 7, "name": "Ёж"}),
            response_status: None,
            response_body: None,
            status: storage::models::DeliveryStatus::Pending,
            error_message: None,
            attempt_number: 4,
            delivered_at: None,
            next_retry_at: Some(chrono::Utc::now()),
            event_id: Some("ev-manual".into()),
            traceparent: None,
            body: None,
        },
    )
    .await
    .unwrap();
    let got = rx
        .wait_for_path("/manual", 1, Duration::from_secs(10))
        .await;
    assert_eq!(got[0].body, br#"{"name": "\u0401\u0436", "user_id": 7}"#);
    assert_eq!(
        got[0].header("webhook-id"),
        Some(webhook_client::message_id("ev-manual", hook).as_str())
    );
    let rows = settled_rows(&app.pool, hook, 1).await;
    assert_eq!(rows.len(), 1, "updated in place");
    assert_eq!(rows[0].status.as_str(), "success");
    assert_eq!(rows[0].attempt_number, 4);
    assert!(rows[0].next_retry_at.is_none());
    assert_eq!(webhook(&app.pool, hook).await.success_count, 1);
    storage::testing::assert_counts_match_rows(&mut app.pool.get().await.unwrap()).await;
    app.cleanup().await;
}

#[tokio::test]
async fn ssrf_guard_refuses_private_destinations() {
    let app = spawn_app(|c| c.allow_private_targets = false).await;
    let rx = Receiver::start(Reply::ok()).await;
    let port = rx.addr.port();
    let urls = [
        format!("http://127.0.0.1:{port}/a"),
        format!("http://localhost:{port}/b"),
        format!("http://[::1]:{port}/c"),
        format!("http://[::ffff:127.0.0.1]:{port}/d"),
        "http://10.1.2.3/e".to_owned(),
        "http://192.168.0.1/f".to_owned(),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://100.64.0.1/g".to_owned(),
        "http://[fd00::1]/h".to_owned(),
        "http://[fe80::1]/i".to_owned(),
        "http://0.0.0.0/j".to_owned(),
        "http://224.0.0.1/k".to_owned(),
    ];
    let mut hooks = Vec::new();
    for u in &urls {
        hooks.push(insert_webhook(&app.pool, u, "*", None, true).await);
    }
    app.notify_changed().await;
    app.publish(EventType::UserCreated, json!({"user_id": 1}))
        .await;
    for (hook, url) in hooks.iter().zip(&urls) {
        let rows = settled_rows(&app.pool, *hook, 1).await;
        assert_eq!(rows.len(), 1, "{url}");
        assert_eq!(rows[0].status.as_str(), "failed", "{url}");
        let err = rows[0].error_message.as_deref().unwrap_or_default();
        assert!(err.contains("destination refused"), "{url}: {err}");
        assert!(
            rows[0].next_retry_at.is_none(),
            "{url}: refusals are not retried"
        );
    }
    let localhost = deliveries(&app.pool, hooks[1]).await;
    assert!(
        localhost[0]
            .error_message
            .as_deref()
            .unwrap()
            .contains("localhost resolves to"),
        "{:?}",
        localhost[0].error_message
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.count(), 0, "nothing reached the loopback receiver");
    app.cleanup().await;
}
