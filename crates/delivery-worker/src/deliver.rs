//! One delivery attempt: limits, signing and POSTing (via `webhook-client`),
//! and the row that records it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use storage::attempts::{CircuitSettings, Held};
use storage::models::BodyFormat;
use storage::models::CircuitState;
use storage::policy::{CircuitTake, RateTake, take_circuit, take_rate};
use tokio::sync::Semaphore;
use webhook_client::{AttemptOutcome, Event, Verdict, WebhookSender};

use crate::cache::{Gates, Target};
use crate::metrics::Metrics;
use crate::policy::RetryPolicy;
use crate::recorder::{Attempted, EventCopy, Record, Recorder};
use storage::attempts::RowRef;

impl Hold {
    /// Every slot was busy: due in about a second.
    fn busy() -> Self {
        Self {
            due: Utc::now() + crate::policy::jitter(Duration::from_secs(1)),
            why: Held::Busy,
        }
    }
}

/// What is delivered: one event (or one stored payload) to one webhook.
pub struct Job<'a> {
    pub target: &'a Target,
    /// The claimed pending row, for retries.
    pub row: Option<RowRef>,
    pub event_id: Option<&'a str>,
    pub event_type: &'a str,
    pub body: Body,
    pub attempt_number: i32,
    pub traceparent: Option<&'a str>,
    /// A first delivery from the event stream (see `recorder`).
    pub from_stream: bool,
    /// From an ordered webhook's consumer (see `recorder`).
    pub ordered: bool,
    /// When the event was stored in the stream, for a delivery from it
    /// (`storage::deliveries::SuccessKey::stream_time`).
    pub stream_time: Option<DateTime<Utc>>,
}

impl Job<'_> {
    /// What the delivery's records keep of it.
    fn into_copy(self) -> EventCopy {
        EventCopy {
            webhook_id: self.target.id,
            event_id: self.event_id.map(str::to_owned),
            event_type: self.event_type.to_owned(),
            payload: self.body.payload,
            body: self.body.raw,
            attempt_number: self.attempt_number,
            traceparent: self.traceparent.map(Arc::from),
            from_stream: self.from_stream,
            ordered: self.ordered,
            stream_time: self.stream_time,
        }
    }
}

/// What one delivery POSTs, and what its row keeps of it.
#[derive(Clone)]
pub struct Body {
    /// The bytes POSTed and signed.
    pub bytes: Bytes,
    /// The payload as JSON text, stored as the row's `payload` (jsonb).
    pub payload: Arc<str>,
    /// `bytes` as text when they are not the canonical body of `payload`
    /// (the `bot` format, whose key order jsonb does not keep): stored as
    /// the row's `body`, so that a retry sends the same bytes.
    pub raw: Option<Arc<str>>,
}

impl Body {
    /// The canonical body of a payload.
    pub fn canonical(payload: &serde_json::Value) -> Self {
        let bytes = proto_events::canonical::to_canonical_vec(payload);
        // Canonical JSON is ASCII, so this never replaces anything.
        let payload: Arc<str> = Arc::from(String::from_utf8_lossy(&bytes).as_ref());
        Self {
            bytes: Bytes::from(bytes),
            payload,
            raw: None,
        }
    }

    /// The same payload in the bot's format, `text` being its bytes
    /// (`proto_events::bot_json`).
    pub fn bot(&self, text: String) -> Self {
        Self {
            raw: Some(Arc::from(text.as_str())),
            bytes: Bytes::from(text),
            payload: self.payload.clone(),
        }
    }

    /// The body of an event (its envelope as published, and the canonical
    /// body of its payload) for a webhook of `format`.
    pub fn of_event(canonical: &Body, envelope: &[u8], format: BodyFormat) -> Self {
        match format {
            BodyFormat::Canonical => canonical.clone(),
            // `payload_of` fails only for a message that has no payload
            // object, which was dead-lettered before this.
            BodyFormat::Bot => match proto_events::bot_json::payload_of(envelope) {
                Some(text) => canonical.bot(text),
                None => canonical.clone(),
            },
        }
    }

    /// The body of a stored row (`payload` as text, and the bytes an earlier
    /// attempt sent, if the row kept them) for a webhook that is now of
    /// `format`. A row of a `bot` webhook sends its stored bytes; without
    /// them (the format was changed since) the stored payload is written in
    /// the bot's format in the order jsonb keeps.
    pub fn of_row(payload: String, stored: Option<String>, format: BodyFormat) -> Self {
        match (format, serde_json::from_str::<serde_json::Value>(&payload)) {
            (BodyFormat::Canonical, Ok(v)) => Self::canonical(&v),
            (BodyFormat::Bot, Ok(_)) => {
                let text = stored.unwrap_or_else(|| proto_events::bot_json::reformat(&payload));
                Self {
                    raw: Some(Arc::from(text.as_str())),
                    bytes: Bytes::from(text),
                    payload: Arc::from(payload),
                }
            }
            // Not JSON: never written by this project; sent as it is.
            (_, Err(_)) => Self {
                payload: Arc::from(payload.as_str()),
                bytes: Bytes::from(payload),
                raw: None,
            },
        }
    }
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
    /// Open the secrets of webhooks read for retries and jobs.
    pub keys: storage::secrets::Keyring,
    /// The shared rate limiters and circuits.
    pub pool: storage::DbPool,
    /// The webhooks' policies, for targets read from rows.
    pub cache: crate::cache::WebhookCache,
    pub circuit: CircuitSettings,
    /// How long a probe may be in flight before another replica may send one.
    pub probe_lease: Duration,
    /// What this replica last heard of a webhook's open circuit or
    /// saturated rate limit: until when deliveries are held anyway
    /// ([`Deliverer::held_anyway`]).
    pub hints: parking_lot::Mutex<std::collections::HashMap<(i32, Held), DateTime<Utc>>>,
}

/// How far ahead a rate-limited delivery takes its slot and waits for it
/// (beyond, it is held as a pending row).
pub const RATE_HORIZON: Duration = Duration::from_secs(1);

/// A delivery the webhook's policy holds: try again at `due`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub due: DateTime<Utc>,
    pub why: Held,
}

impl Deliverer {
    /// Attempts the delivery (or parks it when the webhook is busy) and
    /// returns the row change to record.
    pub async fn deliver(&self, job: Job<'_>) -> Record {
        let webhook_id = job.target.id;
        // Boxed: its database calls (a webhook with a policy only) would
        // otherwise make every delivery's future, waiting or not, as large
        // as theirs.
        let admitted = if job.target.policy.is_free() {
            None
        } else {
            Box::pin(self.admit(job.target, job.row.is_none())).await
        };
        if let Some(hold) = admitted {
            tracing::debug!(webhook_id, ?hold, "delivery held by the webhook's policy");
            return self.park(job, hold);
        }
        let gate = match self.gates.acquire(webhook_id, self.queue_wait).await {
            Ok(p) => p,
            Err(busy) => {
                tracing::debug!(webhook_id, ?busy, "webhook busy; delivery queued for later");
                return self.park(job, Hold::busy());
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
                return self.park(job, Hold::busy());
            }
        };
        self.metrics.in_flight.inc();
        // Boxed: the request's future is the largest part of a delivery's,
        // needed only while it is sent; inline, every message's task would
        // carry its size (twice: an awaited future is built, then moved)
        // from its spawn on, waiting or not.
        let outcome = Box::pin(self.attempt(&job)).await;
        self.metrics.in_flight.dec();
        drop(global);
        drop(gate);
        self.to_record(job, outcome)
    }

    /// Whether the webhook's policy lets a delivery go now (`fresh`: a
    /// delivery not yet held, which may be held from what this replica
    /// already knows, [`Deliverer::held_anyway`]): its circuit
    /// (open: held until the cooldown ends, unless this delivery wins the
    /// probe) and its rate limit (a slot within [`RATE_HORIZON`] is waited
    /// for here; a later one holds the delivery). A webhook without either
    /// asks nothing of the database.
    pub async fn admit(&self, target: &Target, fresh: bool) -> Option<Hold> {
        if target.policy.is_free() {
            return None;
        }
        // A held row whose time has come asks the database: held again
        // from the hint, it would never go.
        if fresh && let Some(hold) = self.held_anyway(target) {
            return Some(hold);
        }
        let retry_soon = |why| Hold {
            due: Utc::now() + chrono::Duration::seconds(1),
            why,
        };
        if target
            .policy
            .circuit
            .is_some_and(|c| c != CircuitState::Closed)
        {
            let take = take_circuit(
                &self.pool,
                target.id,
                self.circuit.cooldown,
                self.probe_lease,
            );
            match take.await {
                Ok(CircuitTake::Closed) => {}
                Ok(CircuitTake::Probe) => {
                    tracing::info!(
                        webhook_id = target.id,
                        "circuit half-open: sending the probe"
                    );
                }
                // Open: due when the cooldown ends. A probe in flight: due
                // in a second; the retry queue leaves the row alone until
                // the probe's outcome closes or reopens the circuit.
                Ok(CircuitTake::Hold { until, probing }) => {
                    let soon = Utc::now() + chrono::Duration::seconds(1);
                    if !probing {
                        self.hints.lock().insert((target.id, Held::Circuit), until);
                    }
                    return Some(Hold {
                        due: if probing { soon } else { until.max(soon) },
                        why: Held::Circuit,
                    });
                }
                Err(e) => {
                    tracing::warn!(webhook_id = target.id, error = %e, "cannot read the webhook's circuit; holding the delivery");
                    return Some(retry_soon(Held::Circuit));
                }
            }
        }
        if let Some(limit) = target.policy.rate {
            match self.take_slot(target.id, limit).await {
                Ok(None) => {}
                Ok(Some(due)) => {
                    self.hints.lock().insert((target.id, Held::RateLimit), due);
                    self.metrics.rate_limited.inc();
                    return Some(Hold {
                        due,
                        why: Held::RateLimit,
                    });
                }
                Err(e) => {
                    tracing::warn!(webhook_id = target.id, error = %e, "cannot take from the webhook's rate limit; holding the delivery");
                    return Some(retry_soon(Held::RateLimit));
                }
            }
        }
        None
    }

    /// A delivery held without asking the database: the webhook's circuit
    /// was open until later than a second from now, or its rate limit's
    /// queue reached more than two seconds ahead, when this replica last
    /// asked. Every held delivery would otherwise cost a round trip (and
    /// the limiter's row lock) per event. A rate-held delivery is queued
    /// one period after the last one this replica queued; when its time
    /// comes it takes from the shared limiter like any other.
    fn held_anyway(&self, target: &Target) -> Option<Hold> {
        let now = Utc::now();
        let mut hints = self.hints.lock();
        if target.policy.circuit == Some(CircuitState::Open)
            && let Some(until) = hints.get(&(target.id, Held::Circuit)).copied()
        {
            if until > now + chrono::Duration::seconds(1) {
                return Some(Hold {
                    due: until,
                    why: Held::Circuit,
                });
            }
            hints.remove(&(target.id, Held::Circuit));
        }
        if let Some(limit) = target.policy.rate
            && let Some(tail) = hints.get_mut(&(target.id, Held::RateLimit))
        {
            let ahead = chrono::Duration::from_std(RATE_HORIZON * 2).unwrap_or_default();
            if *tail > now + ahead {
                let period = chrono::Duration::microseconds((1e6 / limit.per_s) as i64);
                *tail += period;
                self.metrics.rate_limited.inc();
                return Some(Hold {
                    due: *tail,
                    why: Held::RateLimit,
                });
            }
            hints.remove(&(target.id, Held::RateLimit));
        }
        None
    }

    /// Takes a slot of the shared rate limit and waits for it: `None` to
    /// send now, or when to try again. A wait that ends late (this process
    /// was not scheduled in time) gives its slot up and takes another:
    /// sent late, it would arrive next to the following slot's request and
    /// crowd the receiver's window. Two late wake-ups in a row hold the
    /// delivery.
    async fn take_slot(
        &self,
        webhook_id: i32,
        limit: storage::policy::RateLimit,
    ) -> Result<Option<DateTime<Utc>>, storage::StorageError> {
        let late = Duration::from_secs_f64(0.5 / limit.per_s)
            .clamp(Duration::from_millis(5), Duration::from_millis(100));
        for _ in 0..2 {
            match take_rate(&self.pool, webhook_id, limit, RATE_HORIZON).await? {
                RateTake::Go(wait) if wait.is_zero() => return Ok(None),
                RateTake::Go(wait) => {
                    let slot = tokio::time::Instant::now() + wait;
                    tokio::time::sleep_until(slot).await;
                    if slot.elapsed() <= late {
                        return Ok(None);
                    }
                    tracing::debug!(
                        webhook_id,
                        "woke up late for a rate-limit slot; taking another"
                    );
                }
                RateTake::Hold { due } => return Ok(Some(due)),
            }
        }
        Ok(Some(Utc::now() + chrono::Duration::milliseconds(200)))
    }

    /// A delivery not attempted now: a pending row due at `hold.due` (a
    /// claimed retry row is given back the same way).
    fn park(&self, job: Job<'_>, hold: Hold) -> Record {
        self.metrics.queued.inc();
        let Hold { due, why } = hold;
        match job.row {
            Some(row) => Record::Deferred {
                row,
                due,
                held: why,
            },
            None => Record::Queued {
                copy: job.into_copy(),
                due,
                held: why,
            },
        }
    }

    /// Attempts the delivery now (no per-webhook gate: for a caller that
    /// sends one at a time, after [`Deliverer::admit`]) and returns its record.
    pub async fn send_now(&self, job: Job<'_>) -> Record {
        let global = self.global.clone().acquire_owned().await;
        self.metrics.in_flight.inc();
        let outcome = self.attempt(&job).await;
        self.metrics.in_flight.dec();
        drop(global);
        self.to_record(job, outcome)
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
        let keys = job.target.signing_now(now);
        let outcome = self
            .sender
            .send_event(
                Event {
                    url: &job.target.url,
                    webhook_id: job.target.id,
                    event_type: job.event_type,
                    event_id: event_key,
                    body: job.body.bytes.clone(),
                    signing: keys.signing(),
                    headers: &job.target.headers,
                    auth: job.target.auth.as_ref(),
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
            copy: job.into_copy(),
            verdict: outcome.verdict,
            response_status: outcome.response_status.map(i32::from),
            response_body: outcome.response_body,
            error_message,
            at,
            next_retry_at,
        })
    }
}
