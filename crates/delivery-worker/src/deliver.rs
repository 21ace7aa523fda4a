//! One delivery attempt: limits, signing and POSTing (via `webhook-client`),
//! and the row that records it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use tokio::sync::Semaphore;
use webhook_client::{AttemptOutcome, Event, Verdict, WebhookSender};

use crate::cache::{Gates, Target};
use crate::db::RowRef;
use crate::metrics::Metrics;
use crate::policy::RetryPolicy;
use crate::recorder::{Attempted, Record, Recorder};

/// What is delivered: one event (or one stored payload) to one webhook.
pub struct Job<'a> {
    pub target: &'a Target,
    /// The claimed pending row, for retries.
    pub row: Option<RowRef>,
    pub event_id: Option<&'a str>,
    pub event_type: &'a str,
    /// Canonical JSON of the payload: the body POSTed and signed.
    pub body: Bytes,
    /// The same bytes as text, stored as the row's payload.
    pub payload: Arc<str>,
    pub attempt_number: i32,
    pub traceparent: Option<&'a str>,
}

/// Everything a delivery needs; shared by the consumer and the retry poller.
pub struct Deliverer {
    pub sender: WebhookSender,
    pub gates: Gates,
    pub global: Arc<Semaphore>,
    pub policy: RetryPolicy,
    pub queue_wait: Duration,
    pub metrics: Metrics,
    pub recorder: Recorder,
}

impl Deliverer {
    /// Attempts the delivery (or parks it when the webhook is busy) and
    /// returns the row change to record.
    pub async fn deliver(&self, job: Job<'_>) -> Record {
        let webhook_id = job.target.id;
        let gate = match self.gates.acquire(webhook_id, self.queue_wait).await {
            Ok(p) => p,
            Err(busy) => {
                tracing::debug!(webhook_id, ?busy, "webhook busy; delivery queued for later");
                return self.park(job);
            }
        };
        // The global limit is waited for no longer than the webhook's: when
        // every slot is taken by slow receivers, the delivery is parked too,
        // so the consumer keeps moving and a claimed retry never outlives
        // its lease while it waits.
        let global = match tokio::time::timeout(
            self.queue_wait,
            self.global.clone().acquire_owned(),
        )
        .await
        {
            Ok(permit) => permit,
            Err(_) => {
                drop(gate);
                tracing::debug!(
                    webhook_id,
                    "all delivery slots busy; delivery queued for later"
                );
                return self.park(job);
            }
        };
        self.metrics.in_flight.inc();
        let outcome = self.attempt(&job).await;
        self.metrics.in_flight.dec();
        drop(global);
        drop(gate);
        self.to_record(job, outcome)
    }

    /// A delivery not attempted now: a pending row due in about a second
    /// (a claimed retry row is given back the same way).
    fn park(&self, job: Job<'_>) -> Record {
        self.metrics.queued.inc();
        let due = Utc::now() + crate::policy::jitter(Duration::from_secs(1));
        match job.row {
            Some(row) => Record::Deferred { row, due },
            None => Record::Queued {
                webhook_id: job.target.id,
                event_id: job.event_id.map(str::to_owned),
                event_type: job.event_type.to_owned(),
                payload: job.payload,
                attempt_number: job.attempt_number,
                due,
                traceparent: job.traceparent.map(Arc::from),
            },
        }
    }

    async fn attempt(&self, job: &Job<'_>) -> AttemptOutcome {
        let now = Utc::now();
        let fallback;
        let event_key = match job.event_id {
            Some(id) => id,
            None => {
                fallback = format!("delivery-{}", job.row.map_or(0, |r| r.id));
                &fallback
            }
        };
        let secrets = job.target.signing_secrets(now);
        let outcome = self
            .sender
            .send_event(
                Event {
                    url: &job.target.url,
                    webhook_id: job.target.id,
                    event_type: job.event_type,
                    event_id: event_key,
                    body: job.body.clone(),
                    secrets: &secrets,
                    traceparent: job.traceparent,
                },
                now,
            )
            .await;
        let label = match outcome.verdict {
            Verdict::Success => "success",
            Verdict::Refused => "refused",
            Verdict::Failed | Verdict::Gone => "failed",
        };
        self.metrics.attempt(label, outcome.latency);
        if !outcome.is_success() {
            tracing::debug!(
                webhook_id = job.target.id,
                attempt = job.attempt_number,
                error = outcome.error.as_deref().unwrap_or(""),
                "delivery attempt failed"
            );
        }
        if outcome.verdict == Verdict::Refused {
            tracing::warn!(
                webhook_id = job.target.id,
                error = outcome.error.as_deref().unwrap_or(""),
                "delivery refused by the SSRF guard"
            );
        }
        outcome
    }

    fn to_record(&self, job: Job<'_>, outcome: AttemptOutcome) -> Record {
        let at = Utc::now();
        let next_retry_at = self
            .policy
            .next_delay(job.attempt_number, &outcome)
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .map(|d| at + d);
        let error_message = match (&outcome.error, outcome.verdict) {
            (Some(e), Verdict::Gone) => {
                Some(format!("{e}: receiver answered 410 Gone; webhook disabled"))
            }
            (e, _) => e.clone(),
        };
        Record::Attempted(Attempted {
            row: job.row,
            webhook_id: job.target.id,
            event_id: job.event_id.map(str::to_owned),
            event_type: job.event_type.to_owned(),
            payload: job.payload,
            attempt_number: job.attempt_number,
            verdict: outcome.verdict,
            response_status: outcome.response_status.map(i32::from),
            response_body: outcome.response_body,
            error_message,
            at,
            next_retry_at,
            traceparent: job.traceparent.map(Arc::from),
        })
    }
}
