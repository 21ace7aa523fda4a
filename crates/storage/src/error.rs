//! The storage error and how callers classify it.

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::deadpool::PoolError;

/// A failure talking to Postgres.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database query failed: {0}")]
    Query(#[from] DieselError),
    #[error("no database connection available: {0}")]
    Pool(#[from] PoolError),
    #[error("cannot connect to the database: {0}")]
    Connect(#[from] diesel::ConnectionError),
    #[error("migration failed: {0}")]
    Migration(String),
    /// The database belongs to someone else (the bot): not retried.
    #[error("{0}")]
    ForeignDatabase(String),
    #[error("invalid database configuration: {0}")]
    Config(String),
    /// A secret could not be sealed, or a stored one opened (a key missing
    /// from `SECRETS_KEY_FILE`, a damaged value). Never names the value.
    #[error("secrets at rest: {0}")]
    Secrets(String),
}

impl From<crate::secrets::SealError> for StorageError {
    fn from(e: crate::secrets::SealError) -> Self {
        StorageError::Secrets(e.to_string())
    }
}

impl From<crate::secrets::ResealError> for StorageError {
    fn from(e: crate::secrets::ResealError) -> Self {
        StorageError::Secrets(e.to_string())
    }
}

impl From<crate::secrets::OpenError> for StorageError {
    fn from(e: crate::secrets::OpenError) -> Self {
        StorageError::Secrets(e.to_string())
    }
}

impl StorageError {
    /// The database is down, slow or out of connections: a 503.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StorageError::Pool(_) | StorageError::Connect(_) => true,
            StorageError::Query(DieselError::DatabaseError(kind, info)) => {
                matches!(
                    kind,
                    DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand
                ) || (matches!(kind, DatabaseErrorKind::Unknown) && {
                    // Connection-level trouble the driver reports as
                    // "unknown" (server shutting down, connection reset,
                    // timeouts).
                    let m = info.message().to_ascii_lowercase();
                    [
                        "connection",
                        "shutting down",
                        "starting up",
                        "timeout",
                        "terminating",
                    ]
                    .iter()
                    .any(|w| m.contains(w))
                })
            }
            _ => false,
        }
    }

    /// A conflict between transactions or a read-only server (a failover
    /// under way): worth retrying, a 503.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StorageError::Query(DieselError::DatabaseError(
                DatabaseErrorKind::SerializationFailure | DatabaseErrorKind::ReadOnlyTransaction,
                _
            ))
        )
    }

    /// A constraint (unique, foreign key, check, not null) refused the
    /// write: a 409.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            StorageError::Query(DieselError::DatabaseError(
                DatabaseErrorKind::UniqueViolation
                    | DatabaseErrorKind::ForeignKeyViolation
                    | DatabaseErrorKind::CheckViolation
                    | DatabaseErrorKind::NotNullViolation,
                _
            ))
        )
    }

    /// No row matched.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::Query(DieselError::NotFound))
    }
}
