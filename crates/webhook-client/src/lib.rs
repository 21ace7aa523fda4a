//! webhook-client: signs and POSTs webhooks.
//!
//! Shared by the delivery-worker and the webhook-registry's test endpoint.
//! Every POST carries the bot's headers (`X-Webhook-Event`, `X-Webhook-Id`,
//! `X-Webhook-Signature: sha256=<hex>`) and the Standard Webhooks headers
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`).
//! Destinations are checked against an SSRF guard ([`ssrf`]).

mod sender;
mod signing;
pub mod ssrf;

pub use sender::{
    AttemptOutcome, BuildError, Event, Outbound, SenderConfig, Verdict, WebhookSender,
};
pub use signing::{
    message_id, standard_signature, verify_standard_signature, verify_x_webhook_signature,
    x_webhook_signature,
};

/// `User-Agent` of every webhook POST.
pub const USER_AGENT: &str = concat!(
    "bedolaga-events/",
    env!("CARGO_PKG_VERSION"),
    " (+webhook delivery)"
);

/// Stored response bodies are cut to this many characters (not bytes).
pub const MAX_STORED_BODY_CHARS: usize = 1000;
