//! The publisher against the real NATS JetStream on 127.0.0.1:4222.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_nats::jetstream;
use futures::StreamExt;
use proto_events::{Envelope, EventType, Namespace, PublishError, Publisher};
use serde_json::json;

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

async fn publisher() -> (Publisher, async_nats::Client) {
    let client = async_nats::connect(nats_url())
        .await
        .expect("NATS is running");
    (Publisher::new(client.clone(), Namespace::unique()), client)
}

async fn cleanup(p: &Publisher) {
    let js = p.jetstream();
    let _ = js.delete_stream(p.namespace().stream()).await;
    let _ = js.delete_stream(p.namespace().deadletter_stream()).await;
}

#[tokio::test]
async fn publish_creates_the_stream_stores_the_event_and_drops_duplicates() {
    let (p, _client) = publisher().await;
    let published = p
        .publish_value(
            "ticket.created",
            json!({"ticket_id": 1, "title": "Привет 👋"}),
        )
        .await
        .unwrap();
    assert!(!published.duplicate);
    assert_eq!(published.sequence, 1);

    // The stored message is the envelope on events.<type> with Nats-Msg-Id.
    let mut stream = p
        .jetstream()
        .get_stream(p.namespace().stream())
        .await
        .unwrap();
    assert_eq!(
        stream.info().await.unwrap().config.storage,
        jetstream::stream::StorageType::File
    );
    let raw = stream.get_raw_message(1).await.unwrap();
    assert_eq!(
        raw.subject.as_str(),
        p.namespace().event_subject("ticket.created")
    );
    let env = Envelope::parse(&raw.payload).unwrap();
    assert_eq!(env.id, published.id);
    assert_eq!(env.event_type, EventType::TicketCreated);
    assert_eq!(env.payload["title"], "Привет 👋");
    assert_eq!(
        raw.headers.get("Nats-Msg-Id").unwrap().as_str(),
        published.id
    );

    // The same envelope again is recognised as a duplicate and not stored.
    let again = p.publish(&env).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    cleanup(&p).await;
}

#[tokio::test]
async fn bad_events_are_clear_errors_and_nothing_is_published() {
    let (p, client) = publisher().await;
    let mut sub = client
        .subscribe(p.namespace().events_filter())
        .await
        .unwrap();
    let err = p
        .publish_value("user.deleted", json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::UnknownType(_)));
    assert!(
        err.to_string().contains("valid types: user.created"),
        "{err}"
    );
    assert!(!err.is_transient());
    let err = p
        .publish_value("user.created", json!([1, 2]))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "payload must be a JSON object, got an array"
    );
    client.flush().await.unwrap();
    let nothing = tokio::time::timeout(std::time::Duration::from_millis(200), sub.next()).await;
    assert!(nothing.is_err(), "nothing may be published for a bad event");
    cleanup(&p).await;
}

#[tokio::test]
async fn ensure_streams_is_idempotent() {
    let (p, _client) = publisher().await;
    p.namespace().ensure_streams(p.jetstream()).await.unwrap();
    p.namespace().ensure_streams(p.jetstream()).await.unwrap();
    p.ensure_stream().await.unwrap();
    let info = p
        .jetstream()
        .get_stream(p.namespace().deadletter_stream())
        .await;
    assert!(info.is_ok());
    cleanup(&p).await;
}
