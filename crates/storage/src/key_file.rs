//! `SECRETS_KEY_FILE`: where the registry and the delivery worker find the
//! keys that seal webhook secrets in the database ([`crate::secrets`]).

use std::path::PathBuf;
use std::sync::LazyLock;

use crate::secrets::Keyring;

/// The key file setting every service that reads or writes webhook secrets
/// flattens into its configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct SecretsArgs {
    /// The file of the keys that seal webhook secrets, secret header values
    /// and receiver credentials in the database (AES-256-GCM): one key per
    /// line, `<key id> <base64 of 32 random bytes>`; the last line seals,
    /// every line opens. Shared by the registry and the delivery worker;
    /// required (`webhook-registry secrets new-key` writes a line).
    #[arg(long, env = "SECRETS_KEY_FILE", global = true)]
    pub secrets_key_file: Option<PathBuf>,
    /// Keys given in code (tests), used when no file is named.
    #[arg(skip)]
    given: Option<Keyring>,
}

/// Why the keys could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error(
        "SECRETS_KEY_FILE is not set: webhook secrets are stored encrypted and this service \
         needs the key file to read and write them. Create one once with \
         `webhook-registry secrets new-key --file <path>` (deploy/up.sh does it for local \
         runs), keep it outside the database's backups, and give the same file to the \
         registry and the delivery worker"
    )]
    Missing,
    #[error("SECRETS_KEY_FILE {path}: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: crate::secrets::KeyringError,
    },
}

/// The key of tests (and of benchmarks that start a worker in-process): a
/// fixed, public key, so a registry and a worker started by one test share
/// it and a test can write it into a key file beside another.
pub const TEST_KEY_LINE: &str = "test AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

static TEST_KEYS: LazyLock<Option<Keyring>> = LazyLock::new(|| Keyring::parse(TEST_KEY_LINE).ok());

impl SecretsArgs {
    /// The keys of this process's tests (the environment is not read).
    pub fn for_tests() -> Self {
        Self {
            secrets_key_file: None,
            given: TEST_KEYS.clone(),
        }
    }

    /// The settings for a key file (benchmarks, tools).
    pub fn for_file(path: PathBuf) -> Self {
        Self {
            secrets_key_file: Some(path),
            given: None,
        }
    }

    /// Loads the keyring: the file when one is named, else the keys given
    /// in code; neither is an error that says how to make a file.
    pub fn keyring(&self) -> Result<Keyring, KeyFileError> {
        match (&self.secrets_key_file, &self.given) {
            (Some(path), _) => {
                let keys = Keyring::load(path).map_err(|source| KeyFileError::Unreadable {
                    path: path.display().to_string(),
                    source,
                })?;
                if crate::secrets::loose_permissions(path) {
                    tracing::warn!(
                        path = %path.display(),
                        "SECRETS_KEY_FILE is readable by other users; make it readable by the service only (chmod 600)"
                    );
                }
                Ok(keys)
            }
            (None, Some(keys)) => Ok(keys.clone()),
            (None, None) => Err(KeyFileError::Missing),
        }
    }
}
