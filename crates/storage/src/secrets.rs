//! Secrets at rest: values such as a webhook's signing secret are stored
//! sealed with AES-256-GCM under a key from a key file, so a copy of the
//! database alone does not give them away.
//!
//! # The key file (`SECRETS_KEY_FILE`)
//!
//! UTF-8 text, one key per line:
//!
//! ```text
//! # comments and blank lines are ignored
//! 2026-01 q0rT1...base64 of 32 random bytes...=
//! 2026-06 Zk9a...=
//! ```
//!
//! Each line is a key id (1 to 32 characters of `A-Z a-z 0-9 _ -`, unique in
//! the file), whitespace, and the standard base64 (with padding) of 32
//! random bytes. The last key is the newest: it seals every new value. All
//! keys open. [`Keyring::generate_key_line`] makes a new line. Errors name
//! the line, never the key material. The file should be readable by the
//! service's user alone ([`loose_permissions`]).
//!
//! Rotation: append a new key as the last line and restart; values sealed
//! under older keys still open, and [`Keyring::reseal`] moves them to the
//! newest key. A key can leave the file once no stored value uses it.
//!
//! # The sealed form
//!
//! `sealed:v1:<key-id>:<payload>`, where `<payload>` is the URL-safe base64
//! without padding of the 12-byte nonce, the ciphertext and the 16-byte tag.
//! The nonce is random for each seal. The associated data is the value's
//! purpose (such as `webhooks.secret`), so a sealed value copied into
//! another column does not open there.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// What every sealed value starts with.
const PREFIX: &str = "sealed:v1:";
/// AES-256 keys are 32 bytes.
const KEY_LEN: usize = 32;
/// The GCM tag after the ciphertext.
const TAG_LEN: usize = 16;
/// The longest key id.
const MAX_ID_LEN: usize = 32;

/// The keys of the key file; the last one seals. Cloning is cheap.
#[derive(Clone)]
pub struct Keyring {
    inner: Arc<Inner>,
}

struct Inner {
    newest: Key,
    /// The older keys, in file order.
    older: Vec<Key>,
    rng: SystemRandom,
}

struct Key {
    id: String,
    key: LessSafeKey,
}

/// A key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("cannot read the secrets key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A bad line; the message never quotes key material.
    #[error("secrets key file, line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("the secrets key file holds no key; add a line `<key-id> <base64 of 32 random bytes>`")]
    NoKey,
    #[error("a key id is 1 to 32 characters of A-Z, a-z, 0-9, _ and -")]
    InvalidId,
    #[error("the system random source failed")]
    Random,
}

/// A value that could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("cannot seal a secret: the system random source failed")]
    Random,
    #[error("cannot seal a secret: encryption failed")]
    Encrypt,
}

/// A stored value that could not be opened. No variant shows the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the stored value is not sealed (it does not start with `sealed:v1:`)")]
    NotSealed,
    #[error("the sealed value is malformed")]
    Malformed,
    #[error("the value is sealed with key `{0}`, which the secrets key file does not hold")]
    UnknownKey(String),
    #[error(
        "the sealed value does not authenticate: it was altered, sealed for another purpose, \
         or sealed with a different key of the same id"
    )]
    Authentication,
}

/// A stored value that could not be moved to the newest key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResealError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Seal(#[from] SealError),
}

impl Keyring {
    /// Reads and parses the key file at `path`.
    pub fn load(path: &Path) -> Result<Keyring, KeyringError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyringError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses the text of a key file (see the module documentation).
    pub fn parse(text: &str) -> Result<Keyring, KeyringError> {
        let mut keys: Vec<(usize, Key)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |message: String| KeyringError::Line {
                line: line_no,
                message,
            };
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            let [id, material] = fields[..] else {
                let found = match fields.len() {
                    1 => "1 field".to_owned(),
                    n => format!("{n} fields"),
                };
                return Err(bad(format!(
                    "expected `<key-id> <base64 of 32 random bytes>`; found {found}"
                )));
            };
            if !valid_id(id) {
                return Err(bad(KeyringError::InvalidId.to_string()));
            }
            if let Some((first, _)) = keys.iter().find(|(_, k)| k.id == id) {
                return Err(bad(format!(
                    "key id `{id}` appears again (first on line {first})"
                )));
            }
            let bytes = STANDARD
                .decode(material)
                .map_err(|_| bad("the key is not standard base64".to_owned()))?;
            if bytes.len() != KEY_LEN {
                return Err(bad(format!(
                    "the key is {} bytes; it must be {KEY_LEN} random bytes",
                    bytes.len()
                )));
            }
            let key = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| bad("the key is not a usable AES-256 key".to_owned()))?;
            keys.push((
                line_no,
                Key {
                    id: id.to_owned(),
                    key: LessSafeKey::new(key),
                },
            ));
        }
        let mut keys = keys.into_iter().map(|(_, k)| k).collect::<Vec<_>>();
        let newest = keys.pop().ok_or(KeyringError::NoKey)?;
        Ok(Keyring {
            inner: Arc::new(Inner {
                newest,
                older: keys,
                rng: SystemRandom::new(),
            }),
        })
    }

    /// A new key file line: `id`, a space and 32 fresh random bytes in
    /// standard base64.
    pub fn generate_key_line(id: &str) -> Result<String, KeyringError> {
        if !valid_id(id) {
            return Err(KeyringError::InvalidId);
        }
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KeyringError::Random)?;
        Ok(format!("{id} {}", STANDARD.encode(bytes)))
    }

    /// A keyring of one fresh random key, `test`. For tests: values sealed
    /// with it open nowhere else.
    #[allow(
        clippy::expect_used,
        reason = "tests only; the system random source does not fail"
    )]
    pub fn for_tests() -> Keyring {
        let line = Self::generate_key_line("test").expect("a random key");
        Self::parse(&line).expect("a generated key line parses")
    }

    /// The id of the key that seals.
    pub fn newest_id(&self) -> &str {
        &self.inner.newest.id
    }

    /// Every key id, oldest first.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.inner
            .older
            .iter()
            .chain([&self.inner.newest])
            .map(|k| k.id.as_str())
    }

    /// Seals `plaintext` with the newest key for `purpose` (such as
    /// `webhooks.secret`): `sealed:v1:<key-id>:<payload>`.
    pub fn seal(&self, purpose: &str, plaintext: &str) -> Result<String, SealError> {
        let key = &self.inner.newest;
        let mut nonce = [0u8; NONCE_LEN];
        self.inner
            .rng
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut buf = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(plaintext.as_bytes());
        let tag = key
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose.as_bytes()),
                &mut buf[NONCE_LEN..],
            )
            .map_err(|_| SealError::Encrypt)?;
        buf.extend_from_slice(tag.as_ref());
        Ok(format!(
            "{PREFIX}{}:{}",
            key.id,
            URL_SAFE_NO_PAD.encode(&buf)
        ))
    }

    /// Opens a value sealed for `purpose` with any key of the ring.
    pub fn open(&self, purpose: &str, stored: &str) -> Result<String, OpenError> {
        let (id, payload) = split_sealed(stored)?;
        let key = self
            .key(id)
            .ok_or_else(|| OpenError::UnknownKey(id.to_owned()))?;
        let mut buf = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| OpenError::Malformed)?;
        if buf.len() < NONCE_LEN + TAG_LEN {
            return Err(OpenError::Malformed);
        }
        let (nonce, sealed) = buf.split_at_mut(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError::Malformed)?;
        let plaintext = key
            .key
            .open_in_place(nonce, Aad::from(purpose.as_bytes()), sealed)
            .map_err(|_| OpenError::Authentication)?;
        // What authenticates was sealed from a `&str`.
        String::from_utf8(plaintext.to_vec()).map_err(|_| OpenError::Malformed)
    }

    /// Whether `stored` is in the sealed form (it may still fail to open).
    /// A plaintext that happens to start with `sealed:v1:` counts as sealed.
    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(PREFIX)
    }

    /// Whether `stored` is sealed under the newest key.
    pub fn is_sealed_with_newest(&self, stored: &str) -> bool {
        split_sealed(stored).is_ok_and(|(id, _)| id == self.newest_id())
    }

    /// Moves a stored value to the newest key: `Some` with the new sealed
    /// value when `stored` is plaintext (not sealed) or sealed under an
    /// older key, `None` when it is sealed under the newest key and opens.
    pub fn reseal(&self, purpose: &str, stored: &str) -> Result<Option<String>, ResealError> {
        if !Self::is_sealed(stored) {
            return Ok(Some(self.seal(purpose, stored)?));
        }
        let plaintext = self.open(purpose, stored)?;
        if self.is_sealed_with_newest(stored) {
            return Ok(None);
        }
        Ok(Some(self.seal(purpose, &plaintext)?))
    }

    fn key(&self, id: &str) -> Option<&Key> {
        std::iter::once(&self.inner.newest)
            .chain(&self.inner.older)
            .find(|k| k.id == id)
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("key_ids", &self.key_ids().collect::<Vec<_>>())
            .field("newest", &self.newest_id())
            .finish()
    }
}

/// Whether the file at `path` can be read, written or run by its group or
/// others (mode & 0o077), for a start-up warning. False when the file
/// cannot be inspected ([`Keyring::load`] reports that) and off Unix.
pub fn loose_permissions(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

fn valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The key id and payload of a sealed value.
fn split_sealed(stored: &str) -> Result<(&str, &str), OpenError> {
    let rest = stored.strip_prefix(PREFIX).ok_or(OpenError::NotSealed)?;
    match rest.split_once(':') {
        Some((id, payload)) if valid_id(id) => Ok((id, payload)),
        _ => Err(OpenError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const PURPOSE: &str = "webhooks.secret";

    fn line(id: &str) -> String {
        Keyring::generate_key_line(id).unwrap()
    }

    /// The base64 key material of a generated line.
    fn material(line: &str) -> &str {
        line.split_once(' ').unwrap().1
    }

    #[test]
    fn round_trip() {
        let ring = Keyring::for_tests();
        for secret in ["whsec_abc", "", "ключ с пробелами", &"x".repeat(10_000)] {
            let sealed = ring.seal(PURPOSE, secret).unwrap();
            assert!(sealed.starts_with("sealed:v1:test:"), "{sealed}");
            assert!(!sealed.contains(secret) || secret.is_empty());
            assert!(Keyring::is_sealed(&sealed));
            assert!(ring.is_sealed_with_newest(&sealed));
            assert_eq!(ring.open(PURPOSE, &sealed).unwrap(), secret);
        }
    }

    #[test]
    fn each_seal_takes_a_fresh_nonce() {
        let ring = Keyring::for_tests();
        let a = ring.seal(PURPOSE, "same").unwrap();
        let b = ring.seal(PURPOSE, "same").unwrap();
        assert_ne!(a, b);
        let nonce = |s: &str| {
            let payload = s.rsplit_once(':').unwrap().1;
            URL_SAFE_NO_PAD.decode(payload).unwrap()[..NONCE_LEN].to_vec()
        };
        assert_ne!(nonce(&a), nonce(&b));
        // Nonce, plaintext, tag.
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(a.rsplit_once(':').unwrap().1)
                .unwrap()
                .len(),
            NONCE_LEN + 4 + TAG_LEN
        );
    }

    #[test]
    fn another_purpose_does_not_open() {
        let ring = Keyring::for_tests();
        let sealed = ring.seal(PURPOSE, "s3cret").unwrap();
        assert_eq!(
            ring.open("tokens.secret", &sealed),
            Err(OpenError::Authentication)
        );
        assert_eq!(ring.open("", &sealed), Err(OpenError::Authentication));
    }

    #[test]
    fn tampering_does_not_open() {
        let ring = Keyring::for_tests();
        let sealed = ring.seal(PURPOSE, "s3cret").unwrap();
        let (head, payload) = sealed.rsplit_once(':').unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(payload).unwrap();
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x01;
            let forged = format!("{head}:{}", URL_SAFE_NO_PAD.encode(&flipped));
            assert_eq!(
                ring.open(PURPOSE, &forged),
                Err(OpenError::Authentication),
                "byte {i}"
            );
        }
        let truncated = format!(
            "{head}:{}",
            URL_SAFE_NO_PAD.encode(&bytes[..bytes.len() - 1])
        );
        assert_eq!(
            ring.open(PURPOSE, &truncated),
            Err(OpenError::Authentication)
        );
        let extended = format!("{sealed}AA");
        assert!(ring.open(PURPOSE, &extended).is_err());
    }

    #[test]
    fn malformed_values_are_named_without_their_content() {
        let ring = Keyring::for_tests();
        let sealed = ring.seal(PURPOSE, "s3cret").unwrap();
        let payload = sealed.rsplit_once(':').unwrap().1;
        for (stored, want) in [
            ("plain-secret", OpenError::NotSealed),
            ("sealed:v2:test:AAAA", OpenError::NotSealed),
            ("sealed:v1:", OpenError::Malformed),
            ("sealed:v1:test", OpenError::Malformed),
            ("sealed:v1::AAAA", OpenError::Malformed),
            ("sealed:v1:bad id:AAAA", OpenError::Malformed),
            ("sealed:v1:test:not base64!", OpenError::Malformed),
            ("sealed:v1:test:AAAA", OpenError::Malformed),
            ("sealed:v1:test:", OpenError::Malformed),
        ] {
            let e = ring.open(PURPOSE, stored).unwrap_err();
            assert_eq!(e, want, "{stored}");
            let shown = e.to_string();
            assert!(
                !shown.contains("AAAA") && !shown.contains("plain-secret"),
                "{shown}"
            );
        }
        let e = ring
            .open(PURPOSE, &format!("sealed:v1:gone:{payload}"))
            .unwrap_err();
        assert_eq!(e, OpenError::UnknownKey("gone".into()));
        assert!(!e.to_string().contains(payload));
        assert!(!OpenError::Authentication.to_string().contains(payload));
    }

    #[test]
    fn rotation() {
        let k1 = line("k1");
        let k2 = line("k2");
        let old = Keyring::parse(&k1).unwrap();
        let both = Keyring::parse(&format!("# rotated in June\n{k1}\n\n{k2}\n")).unwrap();
        assert_eq!(old.newest_id(), "k1");
        assert_eq!(both.newest_id(), "k2");
        assert_eq!(both.key_ids().collect::<Vec<_>>(), ["k1", "k2"]);

        // What the old ring sealed opens with the new one.
        let v1 = old.seal(PURPOSE, "s3cret").unwrap();
        assert!(v1.starts_with("sealed:v1:k1:"));
        assert_eq!(both.open(PURPOSE, &v1).unwrap(), "s3cret");
        assert!(old.is_sealed_with_newest(&v1));
        assert!(!both.is_sealed_with_newest(&v1));

        // Reseal moves it to k2, once.
        let v2 = both.reseal(PURPOSE, &v1).unwrap().unwrap();
        assert!(v2.starts_with("sealed:v1:k2:"));
        assert!(both.is_sealed_with_newest(&v2));
        assert_eq!(both.open(PURPOSE, &v2).unwrap(), "s3cret");
        assert_eq!(both.reseal(PURPOSE, &v2).unwrap(), None);

        // k2 values do not open with the old ring.
        assert_eq!(
            old.open(PURPOSE, &v2),
            Err(OpenError::UnknownKey("k2".into()))
        );

        // A plaintext value is sealed; a broken one is an error.
        let sealed = both.reseal(PURPOSE, "legacy").unwrap().unwrap();
        assert_eq!(both.open(PURPOSE, &sealed).unwrap(), "legacy");
        assert_eq!(
            both.reseal("tokens.secret", &v1),
            Err(ResealError::Open(OpenError::Authentication))
        );
        assert_eq!(
            both.reseal("tokens.secret", &v2),
            Err(ResealError::Open(OpenError::Authentication))
        );

        // A different key under a known id does not open.
        let impostor = Keyring::parse(&line("k1")).unwrap();
        assert_eq!(impostor.open(PURPOSE, &v1), Err(OpenError::Authentication));
    }

    #[test]
    fn parse_errors_name_the_line_and_not_the_key() {
        let k1 = line("k1");
        let key = material(&k1).to_owned();
        let short = STANDARD.encode([7u8; 16]);
        let cases = [
            (String::new(), None, "holds no key"),
            ("# only a comment\n\n".to_owned(), None, "holds no key"),
            (format!("{key}\n"), Some(1), "found 1 field"),
            (format!("# c\n{k1} extra\n"), Some(2), "found 3 fields"),
            (
                format!("bad.id {key}"),
                Some(1),
                "a key id is 1 to 32 characters",
            ),
            (
                format!("{} {key}", "a".repeat(33)),
                Some(1),
                "a key id is 1 to 32",
            ),
            (
                format!("{k1}\n\nk1 {key}"),
                Some(3),
                "key id `k1` appears again (first on line 1)",
            ),
            (format!("k1 {key}!"), Some(1), "not standard base64"),
            (
                format!("k1 {}", &key[..key.len() - 1]),
                Some(1),
                "not standard base64",
            ),
            (
                format!("k1 {short}"),
                Some(1),
                "the key is 16 bytes; it must be 32",
            ),
        ];
        for (text, want_line, want) in cases {
            let e = Keyring::parse(&text).unwrap_err();
            let shown = e.to_string();
            match (&e, want_line) {
                (KeyringError::Line { line, .. }, Some(n)) => assert_eq!(*line, n, "{shown}"),
                (KeyringError::NoKey, None) => {}
                _ => panic!("{shown}"),
            }
            assert!(shown.contains(want), "{shown}");
            if let Some(n) = want_line {
                assert!(shown.contains(&format!("line {n}:")), "{shown}");
            }
            assert!(!shown.contains(&key[..8]), "{shown}");
            assert!(!shown.contains(&short[..8]), "{shown}");
            assert!(!format!("{e:?}").contains(&key[..8]), "{e:?}");
        }
        // Surrounding whitespace and tabs are fine.
        let ring = Keyring::parse(&format!("  k1\t{key}  \r\n")).unwrap();
        assert_eq!(ring.newest_id(), "k1");
    }

    #[test]
    fn generated_lines() {
        let l = line("2026-06_a");
        let (id, key) = l.split_once(' ').unwrap();
        assert_eq!(id, "2026-06_a");
        assert_eq!(STANDARD.decode(key).unwrap().len(), KEY_LEN);
        assert_ne!(line("a"), line("a"));
        assert!(matches!(
            Keyring::generate_key_line("no spaces"),
            Err(KeyringError::InvalidId)
        ));
        assert!(matches!(
            Keyring::generate_key_line(""),
            Err(KeyringError::InvalidId)
        ));
    }

    #[test]
    fn debug_shows_only_key_ids() {
        let k1 = line("k1");
        let k2 = line("k2");
        let ring = Keyring::parse(&format!("{k1}\n{k2}")).unwrap();
        let shown = format!("{ring:?}");
        assert_eq!(shown, r#"Keyring { key_ids: ["k1", "k2"], newest: "k2" }"#);
        assert!(!shown.contains(&material(&k1)[..8]));
        let clone = ring.clone();
        assert!(Arc::ptr_eq(&clone.inner, &ring.inner));
    }

    #[test]
    fn load_and_permissions() {
        let dir = std::env::temp_dir().join(format!("secrets-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("keys");
        std::fs::write(&path, format!("{}\n", line("k1"))).unwrap();
        assert_eq!(Keyring::load(&path).unwrap().newest_id(), "k1");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let set = |mode| {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap()
            };
            set(0o600);
            assert!(!loose_permissions(&path));
            set(0o400);
            assert!(!loose_permissions(&path));
            set(0o640);
            assert!(loose_permissions(&path));
            set(0o604);
            assert!(loose_permissions(&path));
        }
        let missing = dir.join("missing");
        assert!(!loose_permissions(&missing));
        let e = Keyring::load(&missing).unwrap_err();
        assert!(matches!(e, KeyringError::Read { .. }));
        assert!(e.to_string().contains("missing"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
