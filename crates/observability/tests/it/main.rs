//! The services together: their metrics against the dashboard and alert
//! rules, their traces against the publisher's, and the observability
//! files themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod files;
mod helpers;
mod metrics;
mod traces;
