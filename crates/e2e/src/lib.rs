//! End-to-end test harness: the built `webhook-registry`, `delivery-worker`
//! and `gateway` binaries as processes, NATS servers and a PostgreSQL of a
//! test's own (so a test may kill or stop them), a recording webhook
//! receiver (`test_support::Receiver`), a resuming WebSocket client, and
//! the checks every fault test ends with (nothing lost, counters equal
//! rows, duplicates only from in-flight work).
//!
//! The tests live in `tests/e2e` and run with `deploy/test.sh --e2e`, which
//! builds the binaries first. This crate is test code: a failed step panics
//! with what was expected, which is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod deployment;
pub mod nats;
pub mod postgres;
pub mod process;
pub mod publish;
pub mod signal;
pub mod ws;

use std::future::Future;
use std::time::Duration;

/// Polls `check` every 100 ms until it gives `Some`; panics naming `what`
/// after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    test_support::eventually_every(within, Duration::from_millis(100), what, check).await
}
