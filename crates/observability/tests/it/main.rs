//! The services together: their metrics against the dashboard and alert
//! rules, their traces against the publisher's, the observability files
//! themselves, and the documents that describe the code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod docs;
mod files;
mod helpers;
mod metrics;
mod traces;
