//! Bad messages go to the dead-letter stream with a reason.

use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures::StreamExt;
use proto_events::EventType;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn bad_messages_are_dead_lettered_with_a_reason_and_good_ones_still_flow() {
    let app = spawn_app(|_| {}).await;
    let rx = Receiver::start(Reply::ok()).await;
    let hook = insert_webhook(&app.pool, &rx.url("/h"), "*", None, true).await;
    app.notify_changed().await;
    let js = app.publisher.jetstream().clone();
    let bad: [(&str, &[u8], &str); 4] = [
        ("user.created", b"{not json", "not valid JSON"),
        (
            "user.created",
            br#"{"id":"x1","type":"user.created","timestamp":"2024-01-15T10:30:00Z"}"#,
            "'payload' is missing",
        ),
        (
            "user.deleted",
            br#"{"id":"x2","type":"user.deleted","timestamp":"2024-01-15T10:30:00Z","payload":{}}"#,
            "unknown event type 'user.deleted'",
        ),
        ("ticket.created", b"[1,2]", "not a JSON object"),
    ];
    for (i, (ty, body, _)) in bad.iter().enumerate() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("X-Origin", format!("test-{i}").as_str());
        headers.insert("Nats-Msg-Id", format!("bad-{i}").as_str());
        js.publish_with_headers(
            app.ns.event_subject(ty),
            headers,
            bytes::Bytes::from_static(body),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let good = app
        .publish(EventType::UserCreated, json!({"user_id": 5}))
        .await;
    rx.wait_for_path("/h", 1, Duration::from_secs(10)).await;
    settled_rows(&app.pool, hook, 1).await;

    let dl = js.get_stream(app.ns.deadletter_stream()).await.unwrap();
    let consumer = dl
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut msgs = consumer
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    while let Some(Ok(m)) = msgs.next().await {
        got.push(m);
        if got.len() == bad.len() {
            break;
        }
    }
    assert_eq!(got.len(), bad.len(), "every bad message is dead-lettered");
    for (i, (ty, body, reason)) in bad.iter().enumerate() {
        let m = got
            .iter()
            .find(|m| {
                m.headers
                    .as_ref()
                    .and_then(|h| h.get("X-Origin"))
                    .map(|v| v.as_str().to_owned())
                    == Some(format!("test-{i}"))
            })
            .unwrap_or_else(|| panic!("dead letter {i} missing"));
        assert_eq!(
            m.subject.as_str(),
            app.ns.deadletter_subject(&app.ns.event_subject(ty))
        );
        assert_eq!(m.payload.as_ref(), *body, "original body kept");
        let h = m.headers.as_ref().unwrap();
        let why = h
            .get(proto_events::deadletter::DEADLETTER_REASON)
            .unwrap()
            .as_str();
        assert!(why.contains(reason), "{why} should contain {reason}");
    }
    assert_eq!(rx.on("/h").len(), 1);
    assert_eq!(
        deliveries(&app.pool, hook).await[0].event_id.as_deref(),
        Some(good.as_str())
    );
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics.contains("delivery_dead_letters_total 4"),
        "{metrics}"
    );
    app.cleanup().await;
}

/// A consumer over the whole dead-letter stream of `app`.
async fn dead_letters(app: &TestApp, want: usize) -> Vec<async_nats::jetstream::Message> {
    let js = app.publisher.jetstream().clone();
    let dl = js.get_stream(app.ns.deadletter_stream()).await.unwrap();
    let consumer = dl
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut msgs = consumer
        .fetch()
        .max_messages(want)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    while let Some(Ok(m)) = msgs.next().await {
        got.push(m);
        if got.len() == want {
            break;
        }
    }
    got
}

#[tokio::test]
async fn a_bad_message_of_the_maximum_size_is_dead_lettered_truncated_and_acked() {
    let app = spawn_app(|_| {}).await;
    let js = app.publisher.jetstream().clone();
    let max_payload = app.client.server_info().max_payload;
    assert!(max_payload > 0, "the server announced its max_payload");
    let body = bytes::Bytes::from(vec![b'z'; max_payload]);
    let ack = js
        .publish(app.ns.event_subject("user.created"), body)
        .await
        .unwrap()
        .await
        .unwrap();

    let got = eventually(Duration::from_secs(15), "the dead letter", || async {
        let got = dead_letters(&app, 1).await;
        (!got.is_empty()).then_some(got)
    })
    .await;
    let m = &got[0];
    assert_eq!(
        m.subject.as_str(),
        app.ns
            .deadletter_subject(&app.ns.event_subject("user.created"))
    );
    let h = m.headers.as_ref().unwrap();
    let header = |name: &str| {
        h.get(name)
            .unwrap_or_else(|| panic!("header {name} missing"))
            .as_str()
            .to_owned()
    };
    assert!(header(proto_events::deadletter::DEADLETTER_REASON).contains("not valid JSON"));
    assert_eq!(
        header(proto_events::deadletter::DEADLETTER_ORIGINAL_SIZE),
        max_payload.to_string()
    );
    assert_eq!(
        header(proto_events::deadletter::DEADLETTER_STREAM_SEQUENCE),
        ack.sequence.to_string()
    );
    assert_eq!(
        header(proto_events::deadletter::DEADLETTER_TRUNCATED),
        "true"
    );
    assert!(!m.payload.is_empty() && m.payload.len() < max_payload);
    assert!(m.payload.iter().all(|b| *b == b'z'), "a prefix of the body");

    // Acked: the durable consumer's ack floor moves past it, nothing pending.
    let consumer_acked = eventually(Duration::from_secs(10), "the ack", || async {
        let stream = js.get_stream(app.ns.stream()).await.unwrap();
        let mut c: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer("delivery-worker").await.unwrap();
        let info = c.info().await.unwrap();
        (info.ack_floor.stream_sequence >= ack.sequence && info.num_ack_pending == 0).then_some(())
    })
    .await;
    let () = consumer_acked;
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics.contains("delivery_dead_letters_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("delivery_dead_letters_truncated_total 1"),
        "{metrics}"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_bad_message_that_cannot_be_dead_lettered_is_given_up_after_a_few_tries() {
    let app = spawn_app(|_| {}).await;
    let js = app.publisher.jetstream().clone();
    // Nowhere to put dead letters: every dead-letter publish fails.
    js.delete_stream(app.ns.deadletter_stream()).await.unwrap();
    let ack = js
        .publish(app.ns.event_subject("user.created"), "{not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "the message given up", || async {
        let stream = js.get_stream(app.ns.stream()).await.unwrap();
        let mut c: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer("delivery-worker").await.unwrap();
        let info = c.info().await.unwrap();
        (info.ack_floor.stream_sequence >= ack.sequence && info.num_ack_pending == 0).then_some(())
    })
    .await;
    // Still stored in the events stream, where the log line points.
    let stream = js.get_stream(app.ns.stream()).await.unwrap();
    let kept = stream.get_raw_message(ack.sequence).await.unwrap();
    assert_eq!(kept.payload.as_ref(), b"{not json");
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics.contains("delivery_dead_letter_failures_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("delivery_dead_letters_total 0"),
        "{metrics}"
    );
    app.cleanup().await;
}
