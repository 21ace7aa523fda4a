//! Integration tests of outbox-relay against the real PostgreSQL and NATS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod envelope;
mod helpers;
mod relay;
