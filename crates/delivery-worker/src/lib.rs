//! delivery-worker (being built).
