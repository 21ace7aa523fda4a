//! The relay's Prometheus metrics.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use telemetry::metrics::{Counter, Gauge, Histogram, MetricsRegistry, latency_histogram};

/// Every metric of the relay; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Arc<MetricsRegistry>,
    /// Rows waiting in the outbox (exact up to a cap, estimated above it).
    pub depth: Gauge,
    /// Age of the oldest waiting row, in seconds.
    pub oldest_age: Gauge<f64, AtomicU64>,
    /// Events JetStream acknowledged (their rows then deleted); `rate()` of
    /// it is the published/s.
    pub published: Counter,
    /// Acks that said JetStream already had the event (a row published again
    /// after a crash or a failed batch): dropped by JetStream, not stored twice.
    pub duplicates: Counter,
    pub batches: Counter,
    /// Batches rolled back (NATS or PostgreSQL failed); their rows stay.
    pub errors: Counter,
    /// 1 while the NOTIFY listener connection is up.
    pub listening: Gauge,
    /// From a row's `created_at` to JetStream's ack, in seconds.
    pub lag: Histogram,
}

impl Default for Metrics {
    /// The relay's metrics, registered.
    fn default() -> Self {
        let m = Self {
            registry: Arc::new(MetricsRegistry::new()),
            depth: Gauge::default(),
            oldest_age: Gauge::default(),
            published: Counter::default(),
            duplicates: Counter::default(),
            batches: Counter::default(),
            errors: Counter::default(),
            listening: Gauge::default(),
            lag: latency_histogram(),
        };
        let r = &m.registry;
        r.register(
            "outbox_depth",
            "Rows waiting in event_outbox",
            m.depth.clone(),
        );
        r.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest row waiting in event_outbox",
            m.oldest_age.clone(),
        );
        r.register(
            "outbox_relay_published",
            "Outbox events stored by JetStream and deleted from the outbox",
            m.published.clone(),
        );
        r.register(
            "outbox_relay_duplicates",
            "Outbox events JetStream already had (dropped by its duplicate window)",
            m.duplicates.clone(),
        );
        r.register(
            "outbox_relay_batches",
            "Batches committed",
            m.batches.clone(),
        );
        r.register(
            "outbox_relay_errors",
            "Batches rolled back because NATS or PostgreSQL failed",
            m.errors.clone(),
        );
        r.register(
            "outbox_relay_listening",
            "1 while the LISTEN connection is up",
            m.listening.clone(),
        );
        r.register(
            "outbox_relay_lag_seconds",
            "Time from an outbox row's created_at to JetStream's ack",
            m.lag.clone(),
        );
        m
    }
}
