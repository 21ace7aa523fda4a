//! Integration tests of the delivery worker against the real NATS and
//! Postgres, with local receivers. `TEST_LOG=1` shows the worker's logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod deadletter;
mod delivery;
mod helpers;
mod jobs;
mod process;
mod retries;
mod scaling;
