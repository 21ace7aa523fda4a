//! Subjects and streams (docs/contract.md, "NATS"), optionally under a prefix.
//!
//! Production uses the bare names: stream `EVENTS` on `events.>`, dead
//! letters on `deadletter.events.<type>` in stream `DEADLETTER`, registry
//! change notices on `control.webhooks.changed`. A prefix (`NATS_PREFIX`)
//! moves all of them under `<prefix>.` with streams `EVENTS_<prefix>` and
//! `DEADLETTER_<prefix>`, so several deployments or test runs can share one
//! NATS server without seeing each other's messages.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

/// The stream name of an unprefixed deployment.
pub const DEFAULT_STREAM: &str = "EVENTS";

/// How long JetStream remembers a `Nats-Msg-Id` to drop duplicate publishes.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How long events are kept by default (what a reconnecting client can replay).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Names of every subject and stream of one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    prefix: String,
    stream: String,
    deadletter_stream: String,
}

impl Default for Namespace {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            stream: DEFAULT_STREAM.to_owned(),
            deadletter_stream: "DEADLETTER".to_owned(),
        }
    }
}

/// A prefix that is not one subject token of letters, digits, `_` or `-`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("NATS prefix '{0}' must be letters, digits, '_' or '-' only")]
pub struct InvalidPrefix(pub String);

impl Namespace {
    /// The namespace for a prefix; the empty prefix is the production layout.
    pub fn new(prefix: &str) -> Result<Self, InvalidPrefix> {
        if prefix.is_empty() {
            return Ok(Self::default());
        }
        if !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(InvalidPrefix(prefix.to_owned()));
        }
        Ok(Self {
            prefix: format!("{prefix}."),
            stream: format!("{DEFAULT_STREAM}_{prefix}"),
            deadletter_stream: format!("DEADLETTER_{prefix}"),
        })
    }

    /// A namespace with a random prefix, for tests.
    pub fn unique() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            prefix: format!("t{id}."),
            stream: format!("{DEFAULT_STREAM}_t{id}"),
            deadletter_stream: format!("DEADLETTER_t{id}"),
        }
    }

    /// The prefix as configured (without the trailing dot).
    pub fn prefix(&self) -> &str {
        self.prefix.strip_suffix('.').unwrap_or("")
    }

    /// The events stream name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The dead-letter stream name.
    pub fn deadletter_stream(&self) -> &str {
        &self.deadletter_stream
    }

    /// `events.<type>` for one event type name.
    pub fn event_subject(&self, event_type: &str) -> String {
        format!("{}events.{event_type}", self.prefix)
    }

    /// `events.>`: every event.
    pub fn events_filter(&self) -> String {
        format!("{}events.>", self.prefix)
    }

    /// The event type named by an event subject, if it is one of ours.
    pub fn event_type_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("events.")
    }

    /// `deadletter.<original subject>`, keeping the prefix in front.
    pub fn deadletter_subject(&self, original: &str) -> String {
        let bare = original
            .strip_prefix(self.prefix.as_str())
            .unwrap_or(original);
        format!("{}deadletter.{bare}", self.prefix)
    }

    /// `deadletter.>`: every dead letter.
    pub fn deadletter_filter(&self) -> String {
        format!("{}deadletter.>", self.prefix)
    }

    /// Where the registry announces that the set of webhooks changed.
    pub fn webhooks_changed_subject(&self) -> String {
        format!("{}control.webhooks.changed", self.prefix)
    }

    /// The events stream: file storage, a duplicate window for
    /// `Nats-Msg-Id`, events kept for `max_age`.
    pub fn stream_config(&self, max_age: Duration) -> stream::Config {
        stream::Config {
            name: self.stream.clone(),
            subjects: vec![self.events_filter()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            duplicate_window: DUPLICATE_WINDOW,
            max_age,
            ..Default::default()
        }
    }

    /// The dead-letter stream: kept 30 days for inspection and replay.
    pub fn deadletter_stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.deadletter_stream.clone(),
            subjects: vec![self.deadletter_filter()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::from_secs(30 * 24 * 3600),
            ..Default::default()
        }
    }

    /// Creates both streams if they are missing; leaves existing ones as
    /// they are (an operator may have tuned their limits).
    pub async fn ensure_streams(
        &self,
        js: &jetstream::Context,
    ) -> Result<stream::Stream, jetstream::context::CreateStreamError> {
        js.get_or_create_stream(self.deadletter_stream_config())
            .await?;
        js.get_or_create_stream(self.stream_config(DEFAULT_MAX_AGE))
            .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn production_layout() {
        let ns = Namespace::default();
        assert_eq!(ns.stream(), "EVENTS");
        assert_eq!(ns.event_subject("ticket.created"), "events.ticket.created");
        assert_eq!(ns.events_filter(), "events.>");
        assert_eq!(
            ns.event_type_of("events.ticket.created"),
            Some("ticket.created")
        );
        assert_eq!(ns.event_type_of("other.ticket.created"), None);
        assert_eq!(
            ns.deadletter_subject("events.user.created"),
            "deadletter.events.user.created"
        );
        assert_eq!(ns.webhooks_changed_subject(), "control.webhooks.changed");
    }

    #[test]
    fn prefixed_layout() {
        let ns = Namespace::new("staging").unwrap();
        assert_eq!(ns.prefix(), "staging");
        assert_eq!(ns.stream(), "EVENTS_staging");
        assert_eq!(
            ns.event_subject("user.created"),
            "staging.events.user.created"
        );
        assert_eq!(
            ns.event_type_of("staging.events.user.created"),
            Some("user.created")
        );
        assert_eq!(
            ns.deadletter_subject("staging.events.user.created"),
            "staging.deadletter.events.user.created"
        );
        assert!(Namespace::new("a.b").is_err());
        assert!(Namespace::new("a>").is_err());
        assert_ne!(Namespace::unique(), Namespace::unique());
    }
}
