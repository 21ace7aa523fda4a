//! eventctl (being built).
