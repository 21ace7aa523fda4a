//! Logging, metrics and shutdown plumbing shared by the bedolaga services.
