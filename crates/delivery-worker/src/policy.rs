//! When a failed attempt is retried.

use std::time::Duration;

use rand::Rng;
use webhook_client::{AttemptOutcome, Verdict};

/// The retry schedule: `delays[k-1]` is the wait after failed attempt `k`.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    delays: Vec<Duration>,
}

impl RetryPolicy {
    pub fn new(delays: Vec<Duration>) -> Self {
        Self { delays }
    }

    /// Number of attempts an event gets at most (the first plus the retries).
    pub fn max_attempts(&self) -> usize {
        self.delays.len() + 1
    }

    /// How long to wait before the next attempt after attempt number
    /// `attempt` (1-based) ended with `outcome`; `None` when it is not retried:
    /// success, `410 Gone`, an SSRF refusal, or an exhausted schedule.
    ///
    /// The scheduled delay gets ±20 % jitter. A `Retry-After` (429/503) is
    /// honoured as given but bounded by the next two schedule steps.
    pub fn next_delay(&self, attempt: i32, outcome: &AttemptOutcome) -> Option<Duration> {
        if outcome.verdict != Verdict::Failed {
            return None;
        }
        let idx = usize::try_from(attempt).ok()?.checked_sub(1)?;
        let step = *self.delays.get(idx)?;
        if let Some(after) = outcome.retry_after {
            let following = self.delays.get(idx + 1).copied().unwrap_or(step);
            return Some(after.min(step + following));
        }
        Some(jitter(step))
    }
}

/// `d` × a uniform factor in [0.8, 1.2].
pub fn jitter(d: Duration) -> Duration {
    let factor = rand::rng().random_range(0.8..=1.2);
    d.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure() -> AttemptOutcome {
        AttemptOutcome {
            error: Some("HTTP 500".into()),
            response_status: Some(500),
            ..AttemptOutcome::default()
        }
    }

    #[test]
    fn follows_the_schedule_with_jitter() {
        let p = RetryPolicy::new(vec![Duration::from_secs(5), Duration::from_secs(300)]);
        assert_eq!(p.max_attempts(), 3);
        for _ in 0..100 {
            let d = p.next_delay(1, &failure()).unwrap_or_default();
            assert!(
                d >= Duration::from_secs(4) && d <= Duration::from_secs(6),
                "{d:?}"
            );
            let d = p.next_delay(2, &failure()).unwrap_or_default();
            assert!(d >= Duration::from_secs(240) && d <= Duration::from_secs(360));
        }
        assert_eq!(p.next_delay(3, &failure()), None);
        assert_eq!(p.next_delay(0, &failure()), None);
    }

    #[test]
    fn final_outcomes_are_not_retried() {
        let p = RetryPolicy::new(vec![Duration::from_secs(5)]);
        let ok = AttemptOutcome {
            verdict: Verdict::Success,
            ..AttemptOutcome::default()
        };
        let gone = AttemptOutcome {
            verdict: Verdict::Gone,
            ..failure()
        };
        let refused = AttemptOutcome {
            verdict: Verdict::Refused,
            ..failure()
        };
        assert_eq!(p.next_delay(1, &ok), None);
        assert_eq!(p.next_delay(1, &gone), None);
        assert_eq!(p.next_delay(1, &refused), None);
        assert_eq!(RetryPolicy::new(vec![]).next_delay(1, &failure()), None);
    }

    #[test]
    fn retry_after_is_bounded_by_two_steps() {
        let p = RetryPolicy::new(vec![
            Duration::from_secs(5),
            Duration::from_secs(60),
            Duration::from_secs(600),
        ]);
        let with = |s| AttemptOutcome {
            retry_after: Some(Duration::from_secs(s)),
            response_status: Some(429),
            ..failure()
        };
        assert_eq!(p.next_delay(1, &with(2)), Some(Duration::from_secs(2)));
        assert_eq!(p.next_delay(1, &with(30)), Some(Duration::from_secs(30)));
        assert_eq!(p.next_delay(1, &with(3600)), Some(Duration::from_secs(65)));
        // The last step has no follower: bounded by twice itself.
        assert_eq!(
            p.next_delay(3, &with(3600)),
            Some(Duration::from_secs(1200))
        );
        assert_eq!(p.next_delay(4, &with(1)), None);
    }
}
