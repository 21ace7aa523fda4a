//! What signs a webhook POST ([`Signing`]), and the HMAC-SHA256 signatures:
//! the bot's `X-Webhook-Signature` and the Standard Webhooks
//! `webhook-signature` (docs/contract.md, "Webhook POST"). Verification is
//! constant-time (`ring::hmac::verify`). The ed25519 (`v1a`) side is in
//! [`crate::ed25519`].

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::hmac;

use crate::ed25519::Ed25519Key;

const SHA256_PREFIX: &str = "sha256=";
const V1_PREFIX: &str = "v1,";

/// What a webhook signs its POSTs with.
///
/// - `Hmac(secrets)`: the current secret first, then still-valid previous
///   ones. `X-Webhook-Signature` is made with the first;
///   `webhook-signature` carries one `v1,` entry per secret. Empty strings
///   are ignored (an empty secret means "no secret", as in the seed), so
///   `Hmac(&[])` sends an unsigned POST.
/// - `Ed25519(keys)`: the current key first, then the previous one during
///   rotation grace. `webhook-signature` carries one `v1a,` entry per key;
///   no `X-Webhook-Signature` is sent (it needs a shared secret).
///
/// `Debug` shows the kind and the count only.
#[derive(Clone, Copy)]
pub enum Signing<'a> {
    Hmac(&'a [&'a str]),
    Ed25519(&'a [&'a Ed25519Key]),
}

impl Signing<'_> {
    /// No signature at all.
    pub const NONE: Signing<'static> = Signing::Hmac(&[]);
}

impl Default for Signing<'_> {
    fn default() -> Self {
        Signing::NONE
    }
}

impl fmt::Debug for Signing<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hmac(secrets) => write!(f, "Hmac(<{} redacted>)", secrets.len()),
            Self::Ed25519(keys) => write!(f, "Ed25519(<{} keys>)", keys.len()),
        }
    }
}

fn key(secret: &str) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes())
}

/// The `X-Webhook-Signature` value, as in the seed:
/// `"sha256=<lowercase hex HMAC-SHA256(secret utf-8, body)>"`.
#[must_use]
pub fn x_webhook_signature(secret: &str, body: &[u8]) -> String {
    let tag = hmac::sign(&key(secret), body);
    let mut hexed = [0u8; 64];
    let mut out = String::with_capacity(SHA256_PREFIX.len() + hexed.len());
    out.push_str(SHA256_PREFIX);
    // A SHA-256 tag is 32 bytes, so 64 hex digits always fit.
    if hex::encode_to_slice(tag.as_ref(), &mut hexed).is_ok() {
        out.extend(hexed.iter().map(|&b| char::from(b)));
    }
    out
}

fn standard_tag(key: &hmac::Key, msg_id: &str, timestamp: &str, body: &[u8]) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(msg_id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.as_bytes());
    ctx.update(b".");
    ctx.update(body);
    ctx.sign()
}

/// Standard Webhooks `webhook-signature` value: space-separated
/// `v1,<base64 HMAC-SHA256(key = secret's UTF-8 bytes, msg = "{msg_id}.{timestamp}.{body}")>`,
/// one entry per secret, in the given order. Empty for no secrets.
///
/// The key is the secret's UTF-8 bytes as stored; receivers using a stock
/// Standard Webhooks library configure `"whsec_" + base64(secret)`.
#[must_use]
pub fn standard_signature(msg_id: &str, timestamp: i64, body: &[u8], secrets: &[&str]) -> String {
    let ts = timestamp.to_string();
    // "v1," + 44 base64 chars + separator
    let mut out = String::with_capacity(secrets.len() * 48);
    for (i, secret) in secrets.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(V1_PREFIX);
        B64.encode_string(standard_tag(&key(secret), msg_id, &ts, body), &mut out);
    }
    out
}

/// Constant-time check of an `X-Webhook-Signature` header
/// (`sha256=<hex>`; the prefix may be omitted, hex is case-insensitive).
#[must_use]
pub fn verify_x_webhook_signature(secret: &str, body: &[u8], header: &str) -> bool {
    let header = header.trim();
    let hexed = header.strip_prefix(SHA256_PREFIX).unwrap_or(header);
    let mut tag = [0u8; 32];
    if hex::decode_to_slice(hexed, &mut tag).is_err() {
        return false;
    }
    hmac::verify(&key(secret), body, &tag).is_ok()
}

/// Constant-time check of a Standard Webhooks `webhook-signature` header:
/// true if any `v1,<base64>` entry matches. Other versions are ignored.
#[must_use]
pub fn verify_standard_signature(
    secret: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
) -> bool {
    let key = key(secret);
    let ts = timestamp.to_string();
    let mut msg = Vec::with_capacity(msg_id.len() + ts.len() + body.len() + 2);
    msg.extend_from_slice(msg_id.as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(ts.as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(body);
    header
        .split_ascii_whitespace()
        .filter_map(|entry| entry.strip_prefix(V1_PREFIX))
        .filter_map(|b64| B64.decode(b64).ok())
        .fold(false, |found, candidate| {
            found | hmac::verify(&key, &msg, &candidate).is_ok()
        })
}

/// The Standard Webhooks message id for an event × webhook, stable across
/// retries: `msg_{event_id}_{webhook_id}`.
#[must_use]
pub fn message_id(event_id: &str, webhook_id: i32) -> String {
    format!("msg_{event_id}_{webhook_id}")
}
