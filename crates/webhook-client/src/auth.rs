//! Receiver authentication: what goes in `Authorization` on each POST.
//!
//! - [`Auth::Basic`]: `Basic base64(username:password)` (RFC 7617);
//! - [`Auth::Bearer`]: `Bearer <token>` (RFC 6750);
//! - [`Auth::OAuth2`]: a token from the client credentials grant (RFC 6749
//!   section 4.4), fetched by the sender and cached per webhook.
//!
//! The OAuth2 token cache lives in the [`crate::WebhookSender`] (shared by
//! its clones). An entry is keyed by the webhook id and holds a fingerprint
//! of the client's settings (token URL, client id, secret, scope): a webhook
//! whose settings changed gets a new entry, never the old token. A token is
//! kept until `expires_in` minus [`EXPIRY_MARGIN`] (without `expires_in`,
//! until the receiver answers 401). Each entry has an async lock held while
//! its token is fetched, so concurrent deliveries of one webhook fetch at
//! most once. Token requests go through the same HTTP client as deliveries:
//! same SSRF guard, proxy and timeouts.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::header::HeaderValue;

/// A token is dropped this long before the `expires_in` it came with.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

/// How a webhook authenticates to its receiver. `Debug` hides the
/// password, token and client secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// HTTP Basic. A username must not contain `:` (RFC 7617), which the
    /// API checks.
    Basic { username: String, password: String },
    /// A static bearer token.
    Bearer { token: String },
    /// OAuth2 client credentials.
    OAuth2(OAuth2Client),
}

/// The settings of the OAuth2 client credentials grant. `Debug` hides the
/// token URL (it may carry a key in its query) and the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuth2Client {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: String,
    /// Sent as `scope` when set.
    pub scope: Option<String>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Self::Bearer { .. } => f
                .debug_struct("Bearer")
                .field("token", &"<redacted>")
                .finish(),
            Self::OAuth2(client) => f.debug_tuple("OAuth2").field(client).finish(),
        }
    }
}

impl fmt::Debug for OAuth2Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2Client")
            .field("token_url", &"<redacted>")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("scope", &self.scope)
            .finish()
    }
}

/// `Basic base64(user:password)`, marked sensitive.
pub(crate) fn basic(user: &str, password: &str) -> HeaderValue {
    let mut v = HeaderValue::try_from(format!(
        "Basic {}",
        B64.encode(format!("{user}:{password}"))
    ))
    // base64 is always a valid header value
    .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    v.set_sensitive(true);
    v
}

/// `Bearer <token>`, marked sensitive; `None` when the token cannot be a
/// header value.
pub(crate) fn bearer(token: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::try_from(format!("Bearer {token}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

impl OAuth2Client {
    /// SHA-256 over the length-prefixed settings.
    fn fingerprint(&self) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let scope = self.scope.as_deref();
        for part in [
            Some(self.token_url.as_str()),
            Some(self.client_id.as_str()),
            Some(self.client_secret.as_str()),
            scope,
        ] {
            match part {
                Some(p) => {
                    ctx.update(&[1]);
                    ctx.update(&(p.len() as u64).to_be_bytes());
                    ctx.update(p.as_bytes());
                }
                None => ctx.update(&[0]),
            }
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// The form body: `grant_type=client_credentials[&scope=...]`.
    pub(crate) fn form(&self) -> String {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if let Some(scope) = &self.scope {
            form.append_pair("scope", scope);
        }
        form.finish()
    }

    /// Client authentication (RFC 6749 2.3.1): HTTP Basic over the
    /// form-urlencoded id and secret.
    pub(crate) fn client_auth(&self) -> HeaderValue {
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        basic(&enc(&self.client_id), &enc(&self.client_secret))
    }
}

/// A cached access token.
#[derive(Clone)]
pub(crate) struct Token {
    /// `Bearer <access_token>`, sensitive.
    pub(crate) header: HeaderValue,
    /// Numbers tokens within one slot, to tell "the token that got the 401"
    /// from one another delivery fetched since.
    pub(crate) serial: u64,
    expires_at: Option<Instant>,
}

impl Token {
    fn usable(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }
}

/// The token of one webhook with one set of settings.
pub(crate) struct Slot {
    fingerprint: [u8; 32],
    pub(crate) token: tokio::sync::Mutex<Option<Token>>,
    next_serial: std::sync::atomic::AtomicU64,
}

impl Slot {
    /// Stores a token freshly fetched with `expires_in` seconds of life.
    pub(crate) fn store(
        &self,
        guard: &mut Option<Token>,
        header: HeaderValue,
        expires_in: Option<u64>,
    ) -> Token {
        let now = Instant::now();
        let token = Token {
            header,
            serial: self
                .next_serial
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            expires_at: expires_in.map(|s| {
                now + Duration::from_secs(s)
                    .checked_sub(EXPIRY_MARGIN)
                    .unwrap_or(Duration::ZERO)
            }),
        };
        *guard = Some(token.clone());
        token
    }

    /// The stored token when it can still be used and is not `stale`.
    pub(crate) fn current(guard: &Option<Token>, stale: Option<u64>) -> Option<Token> {
        guard
            .as_ref()
            .filter(|t| t.usable(Instant::now()) && Some(t.serial) != stale)
            .cloned()
    }
}

/// Tokens by webhook id.
#[derive(Default)]
pub(crate) struct TokenCache {
    slots: Mutex<HashMap<i32, Arc<Slot>>>,
}

impl TokenCache {
    /// The slot of `webhook_id` for these settings; a slot made for other
    /// settings is replaced (its token is never used again).
    pub(crate) fn slot(&self, webhook_id: i32, client: &OAuth2Client) -> Arc<Slot> {
        let fingerprint = client.fingerprint();
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = slots
            .entry(webhook_id)
            .or_insert_with(|| new_slot(fingerprint));
        if slot.fingerprint != fingerprint {
            *slot = new_slot(fingerprint);
        }
        slot.clone()
    }
}

fn new_slot(fingerprint: [u8; 32]) -> Arc<Slot> {
    Arc::new(Slot {
        fingerprint,
        token: tokio::sync::Mutex::new(None),
        next_serial: std::sync::atomic::AtomicU64::new(1),
    })
}

/// What the token endpoint answered: the `Authorization` value and
/// `expires_in`, or `None` when the answer is not a usable bearer token.
pub(crate) fn parse_token_response(body: &[u8]) -> Option<(HeaderValue, Option<u64>)> {
    #[derive(serde::Deserialize)]
    struct Answer {
        access_token: String,
        token_type: String,
        #[serde(default)]
        expires_in: Option<serde_json::Value>,
    }
    let answer: Answer = serde_json::from_slice(body).ok()?;
    if !answer.token_type.eq_ignore_ascii_case("bearer") || answer.access_token.is_empty() {
        return None;
    }
    let expires_in = match answer.expires_in {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => Some(
            n.as_u64()
                .or_else(|| n.as_f64().map(|f| f.max(0.0) as u64))
                .unwrap_or(0),
        ),
        // Some servers send it as a string.
        Some(serde_json::Value::String(s)) => Some(s.trim().parse::<u64>().ok()?),
        Some(_) => return None,
    };
    Some((bearer(&answer.access_token)?, expires_in))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn client() -> OAuth2Client {
        OAuth2Client {
            token_url: "https://auth.example.com/token?key=url-key".into(),
            client_id: "client id&1".into(),
            client_secret: "cl1ent:secret/é".into(),
            scope: Some("webhooks.write read".into()),
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let all = [
            Auth::Basic {
                username: "user".into(),
                password: "basic-pass-word".into(),
            },
            Auth::Bearer {
                token: "bearer-tok-en".into(),
            },
            Auth::OAuth2(client()),
        ];
        let dbg = format!("{all:?}");
        for secret in [
            "basic-pass-word",
            "bearer-tok-en",
            "cl1ent:secret",
            "url-key",
        ] {
            assert!(!dbg.contains(secret), "{dbg}");
        }
        assert!(dbg.contains("user") && dbg.contains("client id&1"), "{dbg}");
    }

    #[test]
    fn header_values() {
        let b = basic("Aladdin", "open sesame");
        assert_eq!(b.to_str().unwrap(), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert!(b.is_sensitive());
        assert_eq!(bearer("abc").unwrap().to_str().unwrap(), "Bearer abc");
        assert!(bearer("a\nb").is_none());
        let c = client();
        assert_eq!(
            c.form(),
            "grant_type=client_credentials&scope=webhooks.write+read"
        );
        let auth = c.client_auth();
        let decoded = B64.decode(&auth.to_str().unwrap()[6..]).unwrap();
        assert_eq!(
            String::from_utf8(decoded).unwrap(),
            "client+id%261:cl1ent%3Asecret%2F%C3%A9"
        );
    }

    #[test]
    fn fingerprints_change_with_every_setting() {
        let base = client().fingerprint();
        assert_eq!(base, client().fingerprint());
        let mut c = client();
        c.client_secret.push('x');
        assert_ne!(c.fingerprint(), base);
        let mut c = client();
        c.scope = None;
        assert_ne!(c.fingerprint(), base);
        let mut c = client();
        c.token_url.push('x');
        assert_ne!(c.fingerprint(), base);
        // Length prefixes keep fields apart.
        let mut a = client();
        a.client_id = "ab".into();
        a.client_secret = "c".into();
        let mut b = client();
        b.client_id = "a".into();
        b.client_secret = "bc".into();
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn token_responses() {
        let (h, exp) = parse_token_response(
            br#"{"access_token":"t1","token_type":"Bearer","expires_in":3600}"#,
        )
        .unwrap();
        assert_eq!(h.to_str().unwrap(), "Bearer t1");
        assert!(h.is_sensitive());
        assert_eq!(exp, Some(3600));
        let (_, exp) =
            parse_token_response(br#"{"access_token":"t1","token_type":"bearer"}"#).unwrap();
        assert_eq!(exp, None);
        let (_, exp) = parse_token_response(
            br#"{"access_token":"t1","token_type":"bearer","expires_in":"60"}"#,
        )
        .unwrap();
        assert_eq!(exp, Some(60));
        for bad in [
            &br#"{"access_token":"t1","token_type":"mac"}"#[..],
            br#"{"access_token":"","token_type":"bearer"}"#,
            br#"{"token_type":"bearer"}"#,
            br#"{"access_token":"a\nb","token_type":"bearer"}"#,
            br#"{"access_token":"t","token_type":"bearer","expires_in":[1]}"#,
            b"not json",
        ] {
            assert!(parse_token_response(bad).is_none());
        }
    }

    #[tokio::test]
    async fn slots_follow_the_settings_and_tokens_expire() {
        let cache = TokenCache::default();
        let a = cache.slot(1, &client());
        assert!(Arc::ptr_eq(&a, &cache.slot(1, &client())));
        assert!(!Arc::ptr_eq(&a, &cache.slot(2, &client())));
        let mut guard = a.token.lock().await;
        let t = a.store(&mut guard, bearer("x").unwrap(), Some(3600));
        assert_eq!(Slot::current(&guard, None).unwrap().serial, t.serial);
        assert!(Slot::current(&guard, Some(t.serial)).is_none());
        // Shorter than the margin: used once, never reused.
        a.store(&mut guard, bearer("y").unwrap(), Some(10));
        assert!(Slot::current(&guard, None).is_none());
        drop(guard);
        let mut changed = client();
        changed.client_secret = "rotated".into();
        let b = cache.slot(1, &changed);
        assert!(!Arc::ptr_eq(&a, &b));
        assert!(b.token.lock().await.is_none());
    }
}
