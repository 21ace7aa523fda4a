//! Latency percentiles: one definition for every benchmark.

use hdrhistogram::Histogram;

/// Latencies recorded in microseconds, reported in milliseconds.
///
/// A percentile is HdrHistogram's: the smallest recorded value that at
/// least `p` % of all values are at or below (nearest rank; the 50th of
/// 1..=100 is 50), kept to 3 significant digits (a value is reported as the
/// highest one equal to it at that precision, at most 0.1 % above it).
/// Latencies above an hour count as an hour.
pub(crate) struct Latencies(Histogram<u64>);

/// An hour in microseconds: the highest latency told apart.
const MAX_MICROS: u64 = 3_600_000_000;

impl Latencies {
    /// The latencies `us`, in microseconds.
    pub(crate) fn of_micros(us: impl IntoIterator<Item = u64>) -> anyhow::Result<Self> {
        let mut hist = Histogram::new_with_max(MAX_MICROS, 3)?;
        for v in us {
            hist.saturating_record(v);
        }
        Ok(Self(hist))
    }

    /// The `p`th percentile (0 to 100) in ms; 0 without values.
    pub(crate) fn percentile_ms(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        ms(self.0.value_at_percentile(p))
    }

    /// The highest value in ms; 0 without values.
    pub(crate) fn max_ms(&self) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        ms(self.0.max())
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn percentiles() {
        let l = Latencies::of_micros((1..=100).map(|i| i * 10)).unwrap();
        assert_eq!(l.percentile_ms(50.0), 0.5);
        assert_eq!(l.percentile_ms(99.0), 0.99);
        assert_eq!(l.percentile_ms(100.0), 1.0);
        assert_eq!(l.max_ms(), 1.0);
        let empty = Latencies::of_micros([]).unwrap();
        assert_eq!(empty.percentile_ms(99.0), 0.0);
        assert_eq!(empty.max_ms(), 0.0);
    }

    #[test]
    fn large_values_keep_three_significant_digits() {
        let l = Latencies::of_micros((1..=100).map(|i| i * 1000)).unwrap();
        let p50 = l.percentile_ms(50.0);
        assert!((50.0..=50.05).contains(&p50), "{p50}");
        let max = l.max_ms();
        assert!((100.0..=100.1).contains(&max), "{max}");
        let capped = Latencies::of_micros([u64::MAX]).unwrap().max_ms();
        assert!((3_600_000.0..=3_604_000.0).contains(&capped), "{capped}");
    }
}
