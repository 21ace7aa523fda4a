//! Welcome, ping/pong, invalid JSON, errors, event shape, subscriptions,
//! several clients.

use serde_json::{Value, json};

use crate::helpers::{Backing, TestApp, ticket_payload, user_payload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_ping_invalid_json_and_unknown_types() {
    let b = Backing::new().await;
    let app = TestApp::spawn(b.config()).await;
    let mut ws = app.connect_ok(&b.token).await;
    ws.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(ws.next_text().await, r#"{"type":"pong"}"#);
    // invalid JSON is ignored: the next answer is the pong of the next ping
    ws.send_text("{this is not json").await;
    ws.send_text("[1,2,3]").await;
    ws.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(ws.next_text().await, r#"{"type":"pong"}"#);
    // unknown types get an error and the connection stays open
    ws.send_json(json!({"type": "dance"})).await;
    let err = ws.next_json().await;
    assert_eq!(err["type"], "error");
    assert!(err["message"].as_str().unwrap().contains("dance"), "{err}");
    ws.send_json(json!({"type": "subscribe", "events": ["nope.*"]}))
        .await;
    let err = ws.next_json().await;
    assert_eq!(err["type"], "error");
    assert!(err["message"].as_str().unwrap().contains("nope.*"), "{err}");
    ws.roundtrip().await;
    app.stop().await;
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_receive_events_in_the_seed_shape() {
    let b = Backing::new().await;
    let app = TestApp::spawn(b.config()).await;
    let mut a = app.connect_ok(&b.token).await;
    let mut c = app.connect_ok(&b.token).await;
    let payload = user_payload(7);
    let seq = b.publish("user.created", payload.clone()).await;
    for ws in [&mut a, &mut c] {
        let text = ws.next_text().await;
        assert!(
            text.starts_with(r#"{"type":"user.created","payload":{"#),
            "key order: {text}"
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["payload"], payload);
        assert_eq!(v["seq"], seq);
        assert!(v["id"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(v["timestamp"].as_str().is_some());
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = vec!["type", "payload", "timestamp", "id", "seq", "epoch"];
        want.sort_unstable();
        assert_eq!(keys, want);
    }
    let m = app
        .metrics_with(&[
            "gateway_connections_open 2",
            "gateway_event_to_send_seconds_count 2",
        ])
        .await;
    assert!(m.contains("gateway_connections_open 2"), "{m}");
    assert!(m.contains("gateway_event_to_send_seconds_count 2"), "{m}");
    assert!(m.contains("gateway_messages_sent_total"), "{m}");
    app.stop().await;
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_filter_events() {
    let b = Backing::new().await;
    let app = TestApp::spawn(b.config()).await;
    let mut tickets = app.connect_ok(&b.token).await;
    let mut users = app.connect_ok(&b.token).await;
    let mut all = app.connect_ok(&b.token).await;
    tickets
        .send_json(json!({"type": "subscribe", "events": ["ticket.*"]}))
        .await;
    assert_eq!(
        tickets.next_json().await,
        json!({"type": "subscribed", "events": ["ticket.*"]})
    );
    users
        .send_json(json!({"type": "subscribe", "events": ["user.created", "payment.completed"]}))
        .await;
    assert_eq!(users.next_json().await["type"], "subscribed");
    all.send_json(json!({"type": "subscribe", "events": ["*"]}))
        .await;
    assert_eq!(all.next_json().await["type"], "subscribed");

    let s1 = b.publish("user.created", user_payload(1)).await;
    let s2 = b.publish("ticket.created", ticket_payload(2)).await;
    let s3 = b
        .publish(
            "ticket.status_changed",
            json!({"ticket_id": 2, "user_id": 1, "old_status": "open", "new_status": "closed", "closed_at": null}),
        )
        .await;
    let s4 = b.publish("user.created", user_payload(4)).await;

    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(tickets.next_event().await["seq"].as_u64().unwrap());
    }
    assert_eq!(got, vec![s2, s3]);
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(users.next_event().await["seq"].as_u64().unwrap());
    }
    assert_eq!(got, vec![s1, s4]);
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(all.next_event().await["seq"].as_u64().unwrap());
    }
    assert_eq!(got, vec![s1, s2, s3, s4]);
    // nothing else arrived for the filtered clients
    tickets.roundtrip().await;
    users.roundtrip().await;
    app.stop().await;
    b.cleanup().await;
}
