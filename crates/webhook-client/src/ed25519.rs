//! Asymmetric signatures: Standard Webhooks `v1a` (ed25519).
//!
//! A webhook that signs with ed25519 keeps the 32-byte seed of its key; the
//! receiver only needs the public key. `webhook-signature` then carries one
//! `v1a,<base64 ed25519 signature over "{msg_id}.{timestamp}.{body}">` entry
//! per key (current first, then a previous one during rotation grace).
//!
//! Text forms: `whsk_<base64 of the 32-byte seed>` (secret key) and
//! `whpk_<base64 of the 32-byte public key>` (public key), standard base64
//! with padding.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, Ed25519KeyPair, KeyPair as _};

const SECRET_PREFIX: &str = "whsk_";
const PUBLIC_PREFIX: &str = "whpk_";
const V1A_PREFIX: &str = "v1a,";
const SEED_LEN: usize = 32;

/// Why a key text was refused. Never repeats the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("signing key must start with {SECRET_PREFIX}")]
    SecretPrefix,
    #[error("public key must start with {PUBLIC_PREFIX}")]
    PublicPrefix,
    #[error("key is not valid base64")]
    Base64,
    #[error("key must be 32 bytes, got {0}")]
    Length(usize),
    #[error("cannot generate a signing key: no system randomness")]
    Random,
}

/// An ed25519 signing key made from a 32-byte seed. `Debug` shows the public
/// key only; the seed leaves only through [`Ed25519Key::secret_text`].
pub struct Ed25519Key {
    seed: [u8; SEED_LEN],
    pair: Ed25519KeyPair,
}

impl Ed25519Key {
    /// A new key from the system's secure randomness.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; SEED_LEN];
        SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| KeyError::Random)?;
        Ok(Self::from_seed(seed))
    }

    /// The key of a 32-byte seed.
    #[must_use]
    pub fn from_seed(seed: [u8; SEED_LEN]) -> Self {
        // Any 32 bytes are a valid ed25519 seed; ring's "unchecked" only
        // means there is no public key to compare with.
        let pair = match Ed25519KeyPair::from_seed_unchecked(&seed) {
            Ok(pair) => pair,
            Err(_) => unreachable!("every 32-byte seed is an ed25519 key"),
        };
        Self { seed, pair }
    }

    /// Parses `whsk_<base64 seed>` (surrounding whitespace ignored).
    pub fn from_secret_text(text: &str) -> Result<Self, KeyError> {
        let b64 = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(KeyError::SecretPrefix)?;
        Ok(Self::from_seed(decode_32(b64)?))
    }

    /// `whsk_<base64 seed>`: what to store. Secret.
    #[must_use]
    pub fn secret_text(&self) -> String {
        format!("{SECRET_PREFIX}{}", B64.encode(self.seed))
    }

    /// `whpk_<base64 public key>`: what the receiver configures.
    #[must_use]
    pub fn public_key_text(&self) -> String {
        format!(
            "{PUBLIC_PREFIX}{}",
            B64.encode(self.pair.public_key().as_ref())
        )
    }

    fn sign_standard(&self, msg_id: &str, ts: &str, body: &[u8]) -> signature::Signature {
        self.pair.sign(&signed_message(msg_id, ts, body))
    }
}

impl Clone for Ed25519Key {
    fn clone(&self) -> Self {
        Self::from_seed(self.seed)
    }
}

impl PartialEq for Ed25519Key {
    fn eq(&self, other: &Self) -> bool {
        self.pair.public_key().as_ref() == other.pair.public_key().as_ref()
    }
}

impl Eq for Ed25519Key {}

impl fmt::Debug for Ed25519Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ed25519Key")
            .field("public_key", &self.public_key_text())
            .finish_non_exhaustive()
    }
}

fn decode_32(b64: &str) -> Result<[u8; SEED_LEN], KeyError> {
    let bytes = B64.decode(b64).map_err(|_| KeyError::Base64)?;
    <[u8; SEED_LEN]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length(bytes.len()))
}

fn signed_message(msg_id: &str, ts: &str, body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(msg_id.len() + ts.len() + body.len() + 2);
    msg.extend_from_slice(msg_id.as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(ts.as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(body);
    msg
}

/// Standard Webhooks `webhook-signature` value for ed25519 keys:
/// space-separated `v1a,<base64 signature over "{msg_id}.{timestamp}.{body}">`,
/// one entry per key, in the given order. Empty for no keys.
#[must_use]
pub fn standard_signature_ed25519(
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
    keys: &[&Ed25519Key],
) -> String {
    let ts = timestamp.to_string();
    // "v1a," + 88 base64 chars + separator
    let mut out = String::with_capacity(keys.len() * 93);
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(V1A_PREFIX);
        B64.encode_string(key.sign_standard(msg_id, &ts, body), &mut out);
    }
    out
}

/// Checks a `webhook-signature` header against a `whpk_` public key: true if
/// any `v1a,<base64>` entry is a valid signature. Other versions are
/// ignored; a malformed public key verifies nothing.
#[must_use]
pub fn verify_standard_signature_ed25519(
    public_key_text: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
) -> bool {
    let Some(public) = public_key_text
        .trim()
        .strip_prefix(PUBLIC_PREFIX)
        .and_then(|b64| decode_32(b64).ok())
    else {
        return false;
    };
    let key = signature::UnparsedPublicKey::new(&signature::ED25519, public);
    let msg = signed_message(msg_id, &timestamp.to_string(), body);
    header
        .split_ascii_whitespace()
        .filter_map(|entry| entry.strip_prefix(V1A_PREFIX))
        .filter_map(|b64| B64.decode(b64).ok())
        .any(|sig| key.verify(&msg, &sig).is_ok())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn text_forms_round_trip_and_debug_hides_the_seed() {
        let key = Ed25519Key::generate().unwrap();
        let secret = key.secret_text();
        assert!(secret.starts_with("whsk_"));
        assert_eq!(B64.decode(&secret[5..]).unwrap().len(), 32);
        let again = Ed25519Key::from_secret_text(&secret).unwrap();
        assert_eq!(again, key);
        assert_eq!(again.public_key_text(), key.public_key_text());
        let dbg = format!("{key:?}");
        assert!(!dbg.contains(&secret[5..]), "{dbg}");
        assert!(dbg.contains(&key.public_key_text()), "{dbg}");
    }

    #[test]
    fn bad_key_texts_are_refused_without_echo() {
        assert_eq!(
            Ed25519Key::from_secret_text("whpk_AAAA"),
            Err(KeyError::SecretPrefix)
        );
        assert_eq!(
            Ed25519Key::from_secret_text("whsk_not base64!"),
            Err(KeyError::Base64)
        );
        assert_eq!(
            Ed25519Key::from_secret_text(&format!("whsk_{}", B64.encode([1u8; 31]))),
            Err(KeyError::Length(31))
        );
        assert_eq!(
            KeyError::Length(31).to_string(),
            "key must be 32 bytes, got 31"
        );
    }

    #[test]
    fn rfc8032_test_vector_1() {
        // RFC 8032 section 7.1, TEST 1: empty message.
        let seed: [u8; 32] =
            hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .unwrap()
                .try_into()
                .unwrap();
        let key = Ed25519Key::from_seed(seed);
        let public = B64.decode(&key.public_key_text()[5..]).unwrap();
        assert_eq!(
            hex::encode(public),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        let sig = key.pair.sign(b"");
        assert_eq!(
            hex::encode(sig.as_ref()),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
    }

    #[test]
    fn each_entry_verifies_under_its_own_key_only() {
        let current = Ed25519Key::generate().unwrap();
        let previous = Ed25519Key::generate().unwrap();
        let body = "{\"name\":\"Иван 🚀\"}".as_bytes();
        let header =
            standard_signature_ed25519("msg_1", 1_700_000_000, body, &[&current, &previous]);
        let entries: Vec<&str> = header.split(' ').collect();
        assert_eq!(entries.len(), 2);
        assert!(entries.iter().all(|e| e.starts_with("v1a,")));
        for (key, own, other) in [
            (&current, entries[0], entries[1]),
            (&previous, entries[1], entries[0]),
        ] {
            let pk = key.public_key_text();
            assert!(verify_standard_signature_ed25519(
                &pk,
                "msg_1",
                1_700_000_000,
                body,
                own
            ));
            assert!(!verify_standard_signature_ed25519(
                &pk,
                "msg_1",
                1_700_000_000,
                body,
                other
            ));
            assert!(verify_standard_signature_ed25519(
                &pk,
                "msg_1",
                1_700_000_000,
                body,
                &header
            ));
            assert!(!verify_standard_signature_ed25519(
                &pk,
                "msg_2",
                1_700_000_000,
                body,
                &header
            ));
            assert!(!verify_standard_signature_ed25519(
                &pk,
                "msg_1",
                1_700_000_001,
                body,
                &header
            ));
            assert!(!verify_standard_signature_ed25519(
                &pk,
                "msg_1",
                1_700_000_000,
                b"{}",
                &header
            ));
        }
        assert!(standard_signature_ed25519("m", 1, b"", &[]).is_empty());
        assert!(!verify_standard_signature_ed25519(
            "whpk_x", "msg_1", 1, body, &header
        ));
    }
}
