//! webhook-registry: the token-protected REST API for webhooks and their
//! deliveries (docs/contract.md, "REST API"), the owner of the migrations, and the token
//! management CLI.
//!
//! [`Application::build`] binds the listener (port 0 in tests) and
//! [`Application::run_until_stopped`] serves until a cancellation token
//! fires. The route table is [`routes::configure`].

pub mod auth;
pub mod bot_sync;
pub mod cli;
pub mod config;
pub mod error;
pub mod extract;
pub mod head_guard;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod pull;
pub mod routes;
pub mod startup;
pub mod state;
pub mod subscription;
pub mod test_delivery;

pub use config::{Cli, Command, Config, TokenCommand};
pub use startup::Application;
