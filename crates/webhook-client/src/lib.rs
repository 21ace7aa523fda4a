//! webhook-client: signs and POSTs webhooks.
//!
//! Shared by the delivery-worker and the webhook-registry's test endpoint.
//! Every POST carries the bot's headers (`X-Webhook-Event`, `X-Webhook-Id`,
//! and with HMAC secrets `X-Webhook-Signature: sha256=<hex>`) and the
//! Standard Webhooks headers (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64>` with HMAC secrets or
//! `v1a,<base64>` with ed25519 keys, see [`Signing`]), then the receiver's
//! `Authorization` ([`Auth`]) and the webhook's custom headers
//! ([`check_custom_header`]). Destinations are checked against an SSRF
//! guard ([`ssrf`]), also behind an egress proxy ([`proxy`]).

mod auth;
pub mod ed25519;
mod headers;
pub mod proxy;
mod sender;
mod signing;
pub mod ssrf;

pub use auth::{Auth, EXPIRY_MARGIN, OAuth2Client};
pub use ed25519::{
    Ed25519Key, KeyError, standard_signature_ed25519, verify_standard_signature_ed25519,
};
pub use headers::{check_custom_header, refused_header_names};
pub use proxy::{ProxyUrl, ProxyUrlError};
/// The header types of [`Outbound::headers`].
pub use reqwest::header::{HeaderName, HeaderValue};
pub use sender::{
    AttemptOutcome, BuildError, Event, Outbound, SenderConfig, Verdict, WebhookSender,
};
pub use signing::{
    Signing, message_id, standard_signature, verify_standard_signature, verify_x_webhook_signature,
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
