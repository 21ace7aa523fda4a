//! End-to-end tests of the built binaries under faults: a NATS server
//! killed, PostgreSQL stopped, a worker stopped under load, the gateway
//! restarted under a resuming client, a receiver answering 500, and a
//! NATS cluster losing its stream leader.
//!
//! They are `#[ignore]`d in the normal suite: `deploy/test.sh --e2e` builds
//! the binaries and runs them one at a time. By hand:
//! `cargo build -p webhook-registry -p delivery-worker -p gateway &&
//! cargo test -p e2e -- --ignored --test-threads=1`. `E2E_LOG=debug` raises
//! the services' log level (logs are printed when a test fails).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod checks;
mod cluster;
mod faults;
mod pauses;
mod policy;
mod pull;
mod subscriptions;
