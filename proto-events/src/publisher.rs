//! Publishing events onto JetStream with the guarantees of docs/contract.md,
//! "NATS".

use async_nats::HeaderMap;
use async_nats::jetstream::{
    self,
    context::{PublishAckFuture, PublishErrorKind},
};
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::{Envelope, EventType, Namespace, UnknownEventType};

/// What JetStream answered for a stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The event id (also its `Nats-Msg-Id`).
    pub id: String,
    /// The stream sequence the event was stored at.
    pub sequence: u64,
    /// True when JetStream had already stored an event with this id within
    /// its duplicate window and dropped this one.
    pub duplicate: bool,
}

/// Why an event was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    UnknownType(#[from] UnknownEventType),
    #[error("payload must be a JSON object, got {0}")]
    PayloadNotObject(&'static str),
    #[error("could not create the events stream: {0}")]
    Stream(#[from] jetstream::context::CreateStreamError),
    #[error("JetStream did not store the event: {0}")]
    Publish(#[from] jetstream::context::PublishError),
}

impl PublishError {
    /// Whether trying again later may succeed (the broker was unreachable
    /// or slow), as opposed to a bad event.
    pub fn is_transient(&self) -> bool {
        match self {
            PublishError::UnknownType(_) | PublishError::PayloadNotObject(_) => false,
            PublishError::Stream(_) => true,
            PublishError::Publish(e) => matches!(
                e.kind(),
                PublishErrorKind::TimedOut
                    | PublishErrorKind::BrokenPipe
                    | PublishErrorKind::StreamNotFound
                    | PublishErrorKind::Other
            ),
        }
    }
}

/// Publishes events and returns once JetStream has stored them.
#[derive(Clone)]
pub struct Publisher {
    js: jetstream::Context,
    ns: Namespace,
    stream_ready: std::sync::Arc<OnceCell<()>>,
}

impl Publisher {
    /// A publisher over an existing NATS connection.
    pub fn new(client: async_nats::Client, ns: Namespace) -> Self {
        Self {
            js: jetstream::new(client),
            ns,
            stream_ready: Default::default(),
        }
    }

    /// The namespace events are published in.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// The JetStream context, for callers that need more than publishing.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Creates the streams if missing; done once per publisher.
    pub async fn ensure_stream(&self) -> Result<(), PublishError> {
        self.stream_ready
            .get_or_try_init(|| async { self.ns.ensure_streams(&self.js).await.map(|_| ()) })
            .await?;
        Ok(())
    }

    /// Publishes a payload of the named type in a new envelope.
    pub async fn publish_value(
        &self,
        event_type: &str,
        payload: Value,
    ) -> Result<Published, PublishError> {
        let event_type: EventType = event_type.parse()?;
        let payload = match payload {
            Value::Object(map) => map,
            other => return Err(PublishError::PayloadNotObject(json_kind(&other))),
        };
        self.publish(&Envelope::new(event_type, payload)).await
    }

    /// Publishes an envelope; waits for JetStream's acknowledgement.
    pub async fn publish(&self, event: &Envelope) -> Result<Published, PublishError> {
        self.publish_with_headers(event, HeaderMap::new()).await
    }

    /// Like [`Publisher::publish`], with extra headers (e.g. `traceparent`).
    pub async fn publish_with_headers(
        &self,
        event: &Envelope,
        headers: HeaderMap,
    ) -> Result<Published, PublishError> {
        let ack = self.send(event, headers).await?.await?;
        Ok(Published {
            id: event.id.clone(),
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// Sends an envelope without waiting for JetStream's acknowledgement:
    /// the returned future resolves to it. For callers that keep many
    /// events in flight at once.
    pub async fn send(
        &self,
        event: &Envelope,
        mut headers: HeaderMap,
    ) -> Result<PublishAckFuture, PublishError> {
        self.ensure_stream().await?;
        headers.insert("Nats-Msg-Id", event.id.as_str());
        let subject = self.ns.event_subject(event.event_type.as_str());
        Ok(self
            .js
            .publish_with_headers(subject, headers, event.to_bytes().into())
            .await?)
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
