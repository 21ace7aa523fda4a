//! Benchmarks of the running system.

pub mod delivery;
pub mod fanout;
pub mod floor;
pub mod history;
pub mod outbox;
pub mod replay;
mod stats;
