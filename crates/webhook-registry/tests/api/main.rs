//! Integration tests of the webhook registry: the real service on port 0
//! against a fresh, migrated database and a unique NATS prefix.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod audit;
mod auth;
mod bot;
mod cli;
mod deliveries;
mod extras;
mod framing;
mod helpers;
mod history;
mod jobs;
mod policy;
mod portal;
mod process;
mod pull;
mod resilience;
mod subscriptions;
mod validation;
mod webhooks;
