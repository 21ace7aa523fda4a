//! The bedolaga event contract.
//!
//! Everything the publisher (the bot), the gateway and the delivery worker
//! must agree on lives here: the envelope ([`Envelope`]), the catalogue of
//! event types and their payloads ([`EventType`], [`payload`]), the NATS
//! subjects and stream ([`Namespace`]), the event-type patterns webhooks and
//! WebSocket clients subscribe with ([`Pattern`]), the canonical JSON that
//! webhook bodies are signed over ([`canonical`]), a publisher that returns
//! only once JetStream stored the event ([`Publisher`]), the notice that
//! tells delivery workers a webhook changed ([`WebhookChange`]) and the
//! headers of a dead letter ([`deadletter`]). A webhook's payload filter
//! ([`Filter`], the language in [`filter`]) lives here too, beside the
//! payloads it reads.
//!
//! With the `config` feature, [`nats`] holds the NATS settings every binary
//! shares (`NATS_URL` list, credentials, TLS, stream settings) and the
//! function that connects with them. It is a feature so that a publisher
//! embedded in another program does not pull in clap.

pub mod bot_json;
pub mod canonical;
mod catalogue;
mod change;
mod cursor;
pub mod deadletter;
mod envelope;
pub mod filter;
mod namespace;
#[cfg(feature = "config")]
pub mod nats;
mod pattern;
pub mod payload;
mod publisher;
mod redact;

pub use catalogue::{EventType, OPERATOR_FAMILY, UnknownEventType};
pub use change::{ChangeOp, WebhookChange};
pub use cursor::{Cursor, InvalidCursor};
pub use envelope::{Envelope, EnvelopeError, format_timestamp, new_event_id};
pub use filter::{Filter, FilterError, FilterPathItem};
pub use namespace::{
    DEFAULT_MAX_AGE, DEFAULT_STREAM, InvalidPrefix, Namespace, StreamDifference, StreamSettings,
};
pub use pattern::{InvalidPattern, Pattern, PatternSet};
pub use publisher::{PublishError, Published, Publisher};
pub use redact::redact_url;

/// The live event view: the browser client of the gateway's `/ws`
/// (docs/contract.md, "WebSocket") with its controls (type filters, pause,
/// resume with `since`/`epoch`, catching up), an ES module. The gateway's
/// console serves it as `/live.js` and the webhook-registry's portal as
/// `/portal/live.js`, so both behave the same.
pub const LIVE_JS: &str = include_str!("../static/live.js");
