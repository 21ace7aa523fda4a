//! The worker's Prometheus metrics.

use std::sync::Arc;
use std::time::Duration;

use telemetry::metrics::{Counter, Family, Gauge, Histogram, MetricsRegistry, latency_histogram};

type Labels = [(&'static str, &'static str); 1];
type JobLabels = [(&'static str, &'static str); 2];

/// Every metric of the worker; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Arc<MetricsRegistry>,
    /// Attempts by outcome: success, failed, refused.
    deliveries: Family<Labels, Counter>,
    /// Attempt latency in seconds.
    pub attempt_latency: Histogram,
    pub events: Counter,
    pub dead_letters: Counter,
    /// Dead letters whose body was cut to fit the broker's `max_payload`.
    pub dead_letters_truncated: Counter,
    /// Bad messages given up because they could not be dead-lettered.
    pub dead_letter_failures: Counter,
    /// Deliveries parked in the database because their webhook was busy.
    pub queued: Counter,
    pub disabled: Counter,
    pub in_flight: Gauge,
    pub messages_in_flight: Gauge,
    pub retries_due: Gauge,
    pub retries_pending: Gauge,
    pub consumer_lag: Gauge,
    pub webhooks_cached: Gauge,
    pub record_batches: Counter,
    pub record_errors: Counter,
    /// Successes not recorded because the event already had one for the
    /// webhook (a duplicate POST: the receiver got the webhook-id twice).
    pub duplicates_refused: Counter,
    /// Messages handed back (nak) while attempts could not be recorded.
    pub handed_back: Counter,
    /// Messages checked against the recorded rows before sending because
    /// they may have been handed to another replica meanwhile, by outcome.
    stale_checks: Family<Labels, Counter>,
    /// Jobs claimed (started or resumed) by kind.
    jobs_claimed: Family<Labels, Counter>,
    /// Jobs that stopped running here, by kind and how.
    jobs_ended: Family<JobLabels, Counter>,
    /// Items of jobs handled, by kind and outcome.
    job_items: Family<JobLabels, Counter>,
    /// Jobs running on this replica.
    pub jobs_running: Gauge,
    /// Deliveries held by their webhook's rate limit.
    pub rate_limited: Counter,
    /// Webhooks by circuit state, as this replica's cache last read them.
    circuits: Family<Labels, Gauge>,
    /// Operator events published, by outcome.
    operator_events: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Self {
            registry: Arc::new(MetricsRegistry::new()),
            deliveries: Family::default(),
            attempt_latency: latency_histogram(),
            events: Counter::default(),
            dead_letters: Counter::default(),
            dead_letters_truncated: Counter::default(),
            dead_letter_failures: Counter::default(),
            queued: Counter::default(),
            disabled: Counter::default(),
            in_flight: Gauge::default(),
            messages_in_flight: Gauge::default(),
            retries_due: Gauge::default(),
            retries_pending: Gauge::default(),
            consumer_lag: Gauge::default(),
            webhooks_cached: Gauge::default(),
            record_batches: Counter::default(),
            record_errors: Counter::default(),
            duplicates_refused: Counter::default(),
            handed_back: Counter::default(),
            stale_checks: Family::default(),
            jobs_claimed: Family::default(),
            jobs_ended: Family::default(),
            job_items: Family::default(),
            jobs_running: Gauge::default(),
            rate_limited: Counter::default(),
            circuits: Family::default(),
            operator_events: Family::default(),
        };
        let r = &m.registry;
        r.register(
            "delivery_attempts",
            "Webhook delivery attempts by outcome",
            m.deliveries.clone(),
        );
        r.register(
            "delivery_attempt_duration_seconds",
            "Duration of one webhook POST",
            m.attempt_latency.clone(),
        );
        r.register("delivery_events", "Events consumed", m.events.clone());
        r.register(
            "delivery_dead_letters",
            "Messages moved to the dead-letter stream",
            m.dead_letters.clone(),
        );
        r.register(
            "delivery_dead_letters_truncated",
            "Dead letters whose body was cut to the broker's max_payload",
            m.dead_letters_truncated.clone(),
        );
        r.register(
            "delivery_dead_letter_failures",
            "Bad messages given up (left in the events stream) because they could not be dead-lettered",
            m.dead_letter_failures.clone(),
        );
        r.register(
            "delivery_queued",
            "Deliveries queued in the database because their webhook was busy",
            m.queued.clone(),
        );
        r.register(
            "delivery_rate_limited",
            "Deliveries held because their webhook's rate limit was reached",
            m.rate_limited.clone(),
        );
        r.register(
            "delivery_circuits",
            "Active webhooks by circuit state (closed, open, half_open)",
            m.circuits.clone(),
        );
        r.register(
            "delivery_operator_events",
            "Operator events published, by outcome (published, failed)",
            m.operator_events.clone(),
        );
        r.register(
            "delivery_webhooks_disabled",
            "Webhooks disabled by the worker (410 Gone or failing too long)",
            m.disabled.clone(),
        );
        r.register(
            "delivery_in_flight",
            "Webhook requests in flight",
            m.in_flight.clone(),
        );
        r.register(
            "delivery_messages_in_flight",
            "Events being processed (not yet acked)",
            m.messages_in_flight.clone(),
        );
        r.register(
            "delivery_retries_due",
            "Pending attempts whose time has come",
            m.retries_due.clone(),
        );
        r.register(
            "delivery_retries_pending",
            "Pending attempts in the retry queue",
            m.retries_pending.clone(),
        );
        r.register(
            "delivery_consumer_lag",
            "Messages of the stream the durable consumer has not delivered yet",
            m.consumer_lag.clone(),
        );
        r.register(
            "delivery_webhooks_cached",
            "Active webhooks in the cache",
            m.webhooks_cached.clone(),
        );
        r.register(
            "delivery_record_batches",
            "Batches of attempt rows written",
            m.record_batches.clone(),
        );
        r.register(
            "delivery_record_errors",
            "Batches of attempt rows that could not be written",
            m.record_errors.clone(),
        );
        r.register(
            "delivery_duplicates_refused",
            "Successes not recorded because the event already had a success row for the webhook \
             (the receiver got the same webhook-id twice)",
            m.duplicates_refused.clone(),
        );
        r.register(
            "delivery_handed_back",
            "Messages handed back to JetStream (nak with a short delay) while attempts could not \
             be recorded",
            m.handed_back.clone(),
        );
        r.register(
            "delivery_redelivery_checks",
            "Messages checked against the recorded rows before sending because they may have \
             been handed out again (redelivered, held past the ack wait, or held across a pause \
             of this process), by outcome: sent, skipped (already recorded)",
            m.stale_checks.clone(),
        );
        r.register(
            "delivery_jobs_claimed",
            "Recover, replay and retry jobs claimed (started or resumed) by kind",
            m.jobs_claimed.clone(),
        );
        r.register(
            "delivery_jobs_ended",
            "Jobs that stopped running on this replica, by kind and end \
             (completed, failed, handed_back on shutdown or error, stopped by a pause, cancel or takeover)",
            m.jobs_ended.clone(),
        );
        r.register(
            "delivery_job_items",
            "Items of jobs handled, by kind and outcome (success, failed, queued for a busy webhook, \
             skipped as already sent)",
            m.job_items.clone(),
        );
        r.register(
            "delivery_jobs_running",
            "Jobs running on this replica",
            m.jobs_running.clone(),
        );
        m
    }

    /// Counts the webhooks of a message checked before sending.
    pub fn redelivery_check(&self, outcome: &'static str, n: u64) {
        self.stale_checks
            .get_or_create(&[("outcome", outcome)])
            .inc_by(n);
    }

    /// Counts a claimed job.
    /// Sets the count of webhooks per circuit state.
    pub fn set_circuits(&self, closed: i64, open: i64, half_open: i64) {
        for (state, n) in [("closed", closed), ("open", open), ("half_open", half_open)] {
            self.circuits.get_or_create(&[("state", state)]).set(n);
        }
    }

    pub fn operator_event(&self, outcome: &'static str) {
        self.operator_events
            .get_or_create(&[("outcome", outcome)])
            .inc();
    }

    pub fn job_claimed(&self, kind: &'static str) {
        self.jobs_claimed.get_or_create(&[("kind", kind)]).inc();
    }

    /// Counts a job that stopped running here.
    pub fn job_ended(&self, kind: &'static str, end: &'static str) {
        self.jobs_ended
            .get_or_create(&[("kind", kind), ("end", end)])
            .inc();
    }

    /// Counts one item of a job.
    pub fn job_item(&self, kind: &'static str, outcome: &'static str) {
        self.job_items
            .get_or_create(&[("kind", kind), ("outcome", outcome)])
            .inc();
    }

    /// Counts one finished attempt.
    pub fn attempt(&self, outcome: &'static str, latency: Duration) {
        self.deliveries.get_or_create(&[("outcome", outcome)]).inc();
        self.attempt_latency.observe(latency.as_secs_f64());
    }
}
