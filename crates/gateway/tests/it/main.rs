//! Integration tests of the gateway against the real NATS and Postgres.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod bot;
mod catchup;
mod closing;
mod cluster;
mod console;
mod hardening;
mod helpers;
mod protect;
mod protocol;
mod raw;
mod resume;
mod shutdown;
mod sse;
