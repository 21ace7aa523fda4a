//! The bedolaga event contract.
//!
//! Everything the publisher (the bot), the gateway and the delivery worker
//! must agree on lives here: the envelope ([`Envelope`]), the catalogue of
//! event types and their payloads ([`EventType`], [`payload`]), the NATS
//! subjects and stream ([`Namespace`]), the event-type patterns webhooks and
//! WebSocket clients subscribe with ([`Pattern`]), the canonical JSON that
//! webhook bodies are signed over ([`canonical`]) and a publisher that returns
//! only once JetStream stored the event ([`Publisher`]).

pub mod canonical;
mod catalogue;
mod envelope;
mod namespace;
mod pattern;
pub mod payload;
mod publisher;

pub use catalogue::{EventType, UnknownEventType};
pub use envelope::{Envelope, EnvelopeError, new_event_id};
pub use namespace::{DEFAULT_STREAM, InvalidPrefix, Namespace};
pub use pattern::{InvalidPattern, Pattern, PatternSet};
pub use publisher::{PublishError, Published, Publisher};
