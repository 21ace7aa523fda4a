//! The bedolaga WebSocket gateway: fans events from the JetStream stream
//! out to admin UIs over `GET /ws` (docs/contract.md, "WebSocket"), with per-client filters,
//! resume after a reconnect, bounded per-client queues, heartbeats, token
//! re-checks and a live console page at `/`.

pub mod config;
mod conn;
mod fanout;
pub mod hub;
pub mod metrics;
mod poll;
pub mod protocol;
mod replay;
mod sse;
pub mod startup;
pub mod state;
pub mod wire;
mod ws;

pub use config::Config;
pub use startup::Application;

/// The live console page served at `/` (plain HTML and JavaScript).
pub const CONSOLE_HTML: &str = include_str!("../static/index.html");
/// The console's script (the token form around the live view).
pub const CONSOLE_JS: &str = include_str!("../static/console.js");
