//! Subjects and streams (docs/contract.md, "NATS"), optionally under a prefix.
//!
//! Production uses the bare names: stream `EVENTS` on `events.>`, dead
//! letters on `deadletter.events.<type>` in stream `DEADLETTER`, registry
//! change notices on `control.webhooks.changed`. A prefix (`NATS_PREFIX`)
//! moves all of them under `<prefix>.` with streams `EVENTS_<prefix>` and
//! `DEADLETTER_<prefix>`, so several deployments or test runs can share one
//! NATS server without seeing each other's messages.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, stream};

/// The stream name of an unprefixed deployment.
pub const DEFAULT_STREAM: &str = "EVENTS";

/// How long JetStream remembers a `Nats-Msg-Id` to drop duplicate publishes.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How long events are kept by default (what a reconnecting client can replay).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// How the streams are created when a service finds them missing
/// (`EVENTS_REPLICAS`, `EVENTS_MAX_AGE`, `EVENTS_MAX_BYTES`). Existing
/// streams are never changed: an operator may have tuned them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSettings {
    /// Copies of each stream in a JetStream cluster (1 on a single server).
    /// Applies to the events and the dead-letter stream.
    pub replicas: usize,
    /// How long events are kept (what a reconnecting client can replay);
    /// zero keeps them until `max_bytes` is reached.
    pub max_age: Duration,
    /// Most bytes the events stream holds, the oldest events dropped first;
    /// `None`: no limit.
    pub max_bytes: Option<u64>,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            replicas: 1,
            max_age: DEFAULT_MAX_AGE,
            max_bytes: None,
        }
    }
}

/// One way an existing stream differs from the configured settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamDifference {
    /// The stream's name.
    pub stream: String,
    /// The setting that differs, by its environment variable.
    pub setting: &'static str,
    /// The stream's value, as the setting would be written.
    pub existing: String,
    /// The configured value.
    pub configured: String,
}

impl fmt::Display for StreamDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stream {}: {} is {} but {} is configured",
            self.stream, self.setting, self.existing, self.configured
        )
    }
}

/// Names of every subject and stream of one deployment, and the settings
/// its streams are created with.
#[derive(Debug, Clone)]
pub struct Namespace {
    prefix: String,
    stream: String,
    deadletter_stream: String,
    settings: StreamSettings,
    /// Set once the differences of existing streams have been logged, so
    /// reconnects do not repeat them (shared by clones).
    checked: Arc<AtomicBool>,
}

impl PartialEq for Namespace {
    fn eq(&self, other: &Self) -> bool {
        self.prefix == other.prefix
            && self.stream == other.stream
            && self.deadletter_stream == other.deadletter_stream
            && self.settings == other.settings
    }
}

impl Eq for Namespace {}

impl Default for Namespace {
    fn default() -> Self {
        Self::named(
            String::new(),
            DEFAULT_STREAM.to_owned(),
            "DEADLETTER".to_owned(),
        )
    }
}

/// A prefix that is not one subject token of letters, digits, `_` or `-`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("NATS prefix '{0}' must be letters, digits, '_' or '-' only")]
pub struct InvalidPrefix(pub String);

impl Namespace {
    fn named(prefix: String, stream: String, deadletter_stream: String) -> Self {
        Self {
            prefix,
            stream,
            deadletter_stream,
            settings: StreamSettings::default(),
            checked: Arc::default(),
        }
    }

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
        Ok(Self::named(
            format!("{prefix}."),
            format!("{DEFAULT_STREAM}_{prefix}"),
            format!("DEADLETTER_{prefix}"),
        ))
    }

    /// A namespace with a random prefix, for tests.
    pub fn unique() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self::named(
            format!("t{id}."),
            format!("{DEFAULT_STREAM}_t{id}"),
            format!("DEADLETTER_t{id}"),
        )
    }

    /// The same names with other stream settings.
    pub fn with_stream_settings(mut self, settings: StreamSettings) -> Self {
        self.settings = settings;
        self
    }

    /// The settings missing streams are created with.
    pub fn stream_settings(&self) -> &StreamSettings {
        &self.settings
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
    /// `Nats-Msg-Id`, and the configured replicas, age and size limits.
    pub fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.stream.clone(),
            subjects: vec![self.events_filter()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: self.settings.replicas,
            max_age: self.settings.max_age,
            max_bytes: self
                .settings
                .max_bytes
                .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
            ..Default::default()
        }
    }

    /// The dead-letter stream: kept 30 days for inspection and replay, with
    /// the configured replicas.
    pub fn deadletter_stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.deadletter_stream.clone(),
            subjects: vec![self.deadletter_filter()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            num_replicas: self.settings.replicas,
            max_age: Duration::from_secs(30 * 24 * 3600),
            ..Default::default()
        }
    }

    /// Creates both streams if they are missing; leaves existing ones as
    /// they are (an operator may have tuned their limits). The first time
    /// an existing stream is found to differ from the configured settings,
    /// each difference is logged as a warning.
    pub async fn ensure_streams(
        &self,
        js: &jetstream::Context,
    ) -> Result<stream::Stream, jetstream::context::CreateStreamError> {
        let deadletters = js
            .get_or_create_stream(self.deadletter_stream_config())
            .await?;
        let events = js.get_or_create_stream(self.stream_config()).await?;
        if !self.checked.swap(true, Ordering::AcqRel) {
            let differences = self
                .stream_differences(&events.cached_info().config)
                .into_iter()
                .chain(self.stream_differences(&deadletters.cached_info().config));
            for d in differences {
                tracing::warn!(stream = %d.stream, setting = d.setting, existing = %d.existing,
                    configured = %d.configured,
                    "an existing stream differs from the configured settings; it is left as it is");
            }
        }
        Ok(events)
    }

    /// How an existing stream of this namespace (its configuration as the
    /// server reports it) differs from the configured settings: replicas
    /// for both streams, age and size limits for the events stream too.
    /// A stream of another name has no differences.
    pub fn stream_differences(&self, existing: &stream::Config) -> Vec<StreamDifference> {
        let events = existing.name == self.stream;
        if !events && existing.name != self.deadletter_stream {
            return Vec::new();
        }
        let mut pairs = vec![(
            "EVENTS_REPLICAS",
            existing.num_replicas.max(1).to_string(),
            self.settings.replicas.max(1).to_string(),
        )];
        if events {
            pairs.push((
                "EVENTS_MAX_AGE",
                age_text(existing.max_age),
                age_text(self.settings.max_age),
            ));
            pairs.push((
                "EVENTS_MAX_BYTES",
                bytes_text(u64::try_from(existing.max_bytes).ok().filter(|b| *b > 0)),
                bytes_text(self.settings.max_bytes),
            ));
        }
        pairs
            .into_iter()
            .filter(|(_, existing, configured)| existing != configured)
            .map(|(setting, existing_value, configured)| StreamDifference {
                stream: existing.name.clone(),
                setting,
                existing: existing_value,
                configured,
            })
            .collect()
    }
}

/// A stream age limit as `EVENTS_MAX_AGE` is written (zero: no limit).
fn age_text(age: Duration) -> String {
    if age.is_zero() {
        "unlimited".to_owned()
    } else {
        humantime::format_duration(age).to_string()
    }
}

/// A stream size limit as `EVENTS_MAX_BYTES` is written.
fn bytes_text(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "unlimited".to_owned(), |b| b.to_string())
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
