//! webhook-registry (being built).
