//! What a webhook subscribes to and how its requests are made, as stored:
//! its patterns, payload filter, custom headers, receiver auth and
//! signature scheme (docs/contract.md, "Webhooks"). Secret values (the
//! webhook's secret or signing key, secret header values, receiver
//! credentials) are sealed with the [`Keyring`] before they are written and
//! opened only where a request is made.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::secrets::{Keyring, OpenError, SealError};

/// The purposes secrets are sealed under (the AEAD's associated data), so a
/// sealed value copied into another column does not open there.
pub mod purpose {
    /// `webhooks.secret` and `webhooks.previous_secret`.
    pub const SECRET: &str = "webhooks.secret";
    /// A secret value of `webhooks.headers`.
    pub const HEADER: &str = "webhooks.headers";
    /// A credential of `webhooks.auth`.
    pub const AUTH: &str = "webhooks.auth";
}

crate::text_enum::text_enum! {
    /// How a webhook's deliveries are signed (docs/contract.md, "Webhook
    /// POST").
    pub enum SignatureScheme {
        /// HMAC-SHA256 with the shared secret: `X-Webhook-Signature` and
        /// Standard Webhooks `v1`.
        Hmac,
        /// Ed25519 (Standard Webhooks `v1a`); the secret is the signing key
        /// (`whsk_…`), receivers verify with its public key (`whpk_…`).
        Ed25519,
    }
}

/// One custom header as stored: a plain value, or a sealed one for a value
/// marked secret. No `Debug`: it may hold a secret.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredHeader {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
}

impl StoredHeader {
    /// Whether the value is secret (write-only in the API).
    pub fn is_secret(&self) -> bool {
        self.sealed.is_some()
    }
}

/// Receiver auth as stored, each credential sealed. No `Debug`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StoredAuth {
    Basic {
        username: String,
        password: String,
    },
    Bearer {
        token: String,
    },
    Oauth2 {
        token_url: String,
        client_id: String,
        client_secret: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
    },
}

impl StoredAuth {
    /// `basic`, `bearer` or `oauth2`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Basic { .. } => "basic",
            Self::Bearer { .. } => "bearer",
            Self::Oauth2 { .. } => "oauth2",
        }
    }

    /// The same auth with `credential` in place of its credential.
    pub fn with_credential(mut self, credential: String) -> Self {
        match &mut self {
            Self::Basic { password: c, .. }
            | Self::Bearer { token: c }
            | Self::Oauth2 {
                client_secret: c, ..
            } => *c = credential,
        }
        self
    }

    /// The stored credential.
    pub fn credential(&self) -> &str {
        match self {
            Self::Basic { password, .. } => password,
            Self::Bearer { token } => token,
            Self::Oauth2 { client_secret, .. } => client_secret,
        }
    }

    /// The same auth with its credential opened.
    pub fn opened(&self, keys: &Keyring) -> Result<StoredAuth, OpenError> {
        let plain = open(keys, purpose::AUTH, self.credential())?;
        Ok(self.clone().with_credential(plain))
    }

    /// The same auth with its credential (given in clear) sealed.
    pub fn sealed(self, keys: &Keyring) -> Result<StoredAuth, SealError> {
        let sealed = keys.seal(purpose::AUTH, self.credential())?;
        Ok(self.with_credential(sealed))
    }
}

/// Reads the `headers` column (`None` and anything unreadable: no headers;
/// only the API writes it).
pub fn headers_of(column: Option<&Value>) -> Vec<StoredHeader> {
    column
        .and_then(|v| Vec::<StoredHeader>::deserialize(v).ok())
        .unwrap_or_default()
}

/// Reads the `auth` column.
pub fn auth_of(column: Option<&Value>) -> Option<StoredAuth> {
    column.and_then(|v| StoredAuth::deserialize(v).ok())
}

/// The `headers` column for `headers` (`None` for none).
pub fn headers_column(headers: &[StoredHeader]) -> Option<Value> {
    if headers.is_empty() {
        None
    } else {
        serde_json::to_value(headers).ok()
    }
}

/// The `auth` column for `auth`.
pub fn auth_column(auth: Option<&StoredAuth>) -> Option<Value> {
    auth.and_then(|a| serde_json::to_value(a).ok())
}

/// Opens a stored secret. A value that is not sealed (a row written before
/// sealing, not yet sealed by `webhook-registry secrets seal`) is read as
/// it is, so nothing stops working while old rows wait for it.
pub fn open(keys: &Keyring, purpose: &str, stored: &str) -> Result<String, OpenError> {
    if Keyring::is_sealed(stored) {
        keys.open(purpose, stored)
    } else {
        Ok(stored.to_owned())
    }
}

/// The patterns of a webhook: `event_types` when it has several, else its
/// one `event_type`.
pub fn patterns<'a>(event_type: &'a str, event_types: Option<&'a [String]>) -> Vec<&'a str> {
    match event_types {
        Some(all) if !all.is_empty() => all.iter().map(String::as_str).collect(),
        _ => vec![event_type],
    }
}

/// The `(event_type, event_types)` columns for `patterns` (at least one):
/// the first is `event_type`; `event_types` is kept only for several.
pub fn pattern_columns(patterns: &[String]) -> (String, Option<Vec<String>>) {
    let first = patterns.first().cloned().unwrap_or_default();
    let all = (patterns.len() > 1).then(|| patterns.to_vec());
    (first, all)
}

/// How requests to a webhook are made, as stored (its secrets sealed):
/// what the worker's routing cache, its retries and jobs, and the
/// registry's test endpoint read. No `Debug`: it holds the secrets.
#[derive(Clone)]
pub struct Sending {
    pub url: String,
    pub body_format: crate::models::BodyFormat,
    pub signature_scheme: SignatureScheme,
    pub secret: Option<String>,
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub headers: Option<Value>,
    pub auth: Option<Value>,
}

/// [`Sending`] with its secrets opened. No `Debug`.
pub struct Opened {
    /// The secret (an HMAC key, or an ed25519 signing key `whsk_…`), then
    /// the previous one with the end of its grace period.
    pub secret: Option<String>,
    pub previous: Option<(String, chrono::DateTime<chrono::Utc>)>,
    /// Custom headers, values in clear, in the order stored.
    pub headers: Vec<(String, String)>,
    pub auth: Option<StoredAuth>,
}

impl Sending {
    /// Opens every secret; an empty secret means none.
    pub fn open(&self, keys: &Keyring) -> Result<Opened, OpenError> {
        let secret = self
            .secret
            .as_deref()
            .map(|s| open(keys, purpose::SECRET, s))
            .transpose()?
            .filter(|s| !s.is_empty());
        let previous = match (&self.previous_secret, self.previous_secret_expires_at) {
            (Some(p), Some(until)) => {
                Some((open(keys, purpose::SECRET, p)?, until)).filter(|(p, _)| !p.is_empty())
            }
            _ => None,
        };
        let mut headers = Vec::new();
        for h in headers_of(self.headers.as_ref()) {
            let value = match (h.value, h.sealed) {
                (_, Some(sealed)) => open(keys, purpose::HEADER, &sealed)?,
                (Some(v), None) => v,
                (None, None) => continue,
            };
            headers.push((h.name, value));
        }
        let auth = auth_of(self.auth.as_ref())
            .map(|a| a.opened(keys))
            .transpose()?;
        Ok(Opened {
            secret,
            previous,
            headers,
            auth,
        })
    }
}

impl crate::models::Webhook {
    /// How requests to it are made; `None` for a pull webhook, which has
    /// no URL and is never sent to.
    pub fn sending(&self) -> Option<Sending> {
        Some(Sending {
            url: self.url.clone()?,
            body_format: self.body_format,
            signature_scheme: self.signature_scheme,
            secret: self.secret.clone(),
            previous_secret: self.previous_secret.clone(),
            previous_secret_expires_at: self.previous_secret_expires_at,
            headers: self.headers.clone(),
            auth: self.auth.clone(),
        })
    }
}
