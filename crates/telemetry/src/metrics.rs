//! A Prometheus registry wrapper and the metric types services use.

use parking_lot::Mutex;
use prometheus_client::encoding::text::{encode, encode_eof, encode_registry};
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

/// Holds every metric of one service and renders the text format.
#[derive(Default)]
pub struct MetricsRegistry {
    registry: Mutex<Registry>,
}

impl MetricsRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a metric under `name` (without the `_total` suffix for
    /// counters; the encoder adds it).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry.lock().register(name, help, metric);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry.lock());
        out
    }

    /// The Prometheus text exposition of these metrics followed by those
    /// of `extra` (metrics computed for this one scrape).
    pub fn render_with(&self, extra: &Registry) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry.lock());
        let _ = encode_registry(&mut out, extra);
        let _ = encode_eof(&mut out);
        out
    }
}

/// Latency buckets from 0.5 ms to about 16 s, in seconds.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}
