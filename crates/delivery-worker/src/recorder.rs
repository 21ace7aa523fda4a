//! Batched writes of attempt rows and webhook counters.
//!
//! Callers submit the rows of one unit of work (one event, or one retried
//! row) and wait until they are committed; the recorder gathers submissions
//! for a few milliseconds (or up to a row limit) and writes each batch in ONE
//! transaction ([`storage::attempts::record`]): the new rows, the claimed pending rows
//! updated in place, the row counters, and the webhooks' counters,
//! `last_triggered_at` and `failing_since` bumped in SQL (no
//! read-modify-write between replicas), disabling webhooks that answered
//! 410 or have failed for too long.
//!
//! At most one `success` per event and webhook from the stream path: the
//! transaction first locks and reads the successes already recorded for
//! the batch's keys (`storage::deliveries::lock_successes`); a second
//! success of a stream delivery, or of a retry queued before the first
//! success, is refused (not written, not counted, counted in
//! `delivery_duplicates_refused`: the receiver got that `webhook-id`
//! twice), and such a redundant delivery schedules no further retry.
//! Deliveries an operator asks for again (manual retry, recover, bulk
//! retry, replay) are new deliveries and keep their rows.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use storage::deliveries::{Recorded, SuccessKey};
use storage::models::DeliveryStatus;
use storage::{DbPool, StorageError};
use tokio::sync::{Semaphore, mpsc, oneshot};
use webhook_client::Verdict;

use crate::metrics::Metrics;
use storage::attempts::{
    AttemptSummary, Batch, ClaimedUpdate, HealthSettings, Held, Moved, NewRow, RowRef, Written,
};
use storage::audit::SeenEvent;

/// The copy of an event one webhook gets: what every record of it keeps.
#[derive(Debug, Clone)]
pub struct EventCopy {
    pub webhook_id: i32,
    pub event_id: Option<String>,
    pub event_type: String,
    /// The payload as JSON text (the canonical body).
    pub payload: Arc<str>,
    /// The bytes sent, when they are not the canonical body (`Body::raw`).
    pub body: Option<Arc<str>>,
    pub attempt_number: i32,
    /// The event's W3C `traceparent`, carried to its retries.
    pub traceparent: Option<Arc<str>>,
    /// From the event stream: a first attempt, or one parked from it (its
    /// message may have been handed to another replica too).
    pub from_stream: bool,
    /// From an ordered webhook's consumer: a failure is retried by
    /// redelivering the message (its row keeps `next_retry_at`), not by a
    /// pending row.
    pub ordered: bool,
    /// When the event was stored in the stream, for a delivery from it
    /// (`storage::deliveries::SuccessKey::stream_time`).
    pub stream_time: Option<DateTime<Utc>>,
}

/// A finished attempt.
#[derive(Debug, Clone)]
pub struct Attempted {
    /// The claimed pending row this attempt ran for (updated in place), or
    /// `None` for a first attempt from the stream (inserted).
    pub row: Option<RowRef>,
    pub copy: EventCopy,
    pub verdict: Verdict,
    pub response_status: Option<i32>,
    pub response_body: Option<String>,
    pub error_message: Option<String>,
    /// When the attempt ended.
    pub at: DateTime<Utc>,
    /// When the next attempt is due, if there is one.
    pub next_retry_at: Option<DateTime<Utc>>,
}

/// One row change.
#[derive(Debug, Clone)]
pub enum Record {
    Attempted(Attempted),
    /// A delivery not attempted yet (its webhook was busy, or its policy
    /// held it): a pending row due at `due`.
    Queued {
        copy: EventCopy,
        due: DateTime<Utc>,
        held: Held,
    },
    /// A claimed pending row given back unattempted, due again at `due`.
    Deferred {
        row: RowRef,
        due: DateTime<Utc>,
        held: Held,
    },
    /// An event processed, for the audit.
    Seen(SeenEvent),
}

/// The rows could not be written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordError {
    #[error("the recorder has stopped")]
    Stopped,
    #[error("cannot record delivery attempts: {0}")]
    Database(Arc<StorageError>),
}

struct Submission {
    records: Vec<Record>,
    done: oneshot::Sender<Result<(), RecordError>>,
}

/// Settings of the recorder.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    pub max_rows: usize,
    pub linger: Duration,
    pub health: HealthSettings,
    pub concurrency: usize,
}

/// A handle to submit rows; the recorder stops when every handle is dropped.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Submission>,
    failing: Arc<AtomicBool>,
}

/// The webhooks' health changes a batch made (disabled, failing,
/// recovered, circuits opened or closed).
pub type MovedHook = Arc<dyn Fn(&[Moved]) + Send + Sync>;

impl Recorder {
    /// Starts the recorder task; returns the handle and the task.
    pub fn start(
        pool: DbPool,
        cfg: RecorderConfig,
        metrics: Metrics,
        on_disabled: MovedHook,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(4096);
        let failing = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run(rx, pool, cfg, metrics, on_disabled, failing.clone()));
        (Self { tx, failing }, task)
    }

    /// Whether the latest write failed (set at the first failed try of a
    /// batch, before its retries; cleared by the next write that succeeds
    /// or by [`Recorder::clear_failing`]).
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Forgets a failure (the database answers again).
    pub fn clear_failing(&self) {
        self.failing.store(false, Ordering::Relaxed);
    }

    /// Writes `records` and returns once they are committed.
    pub async fn submit(&self, records: Vec<Record>) -> Result<(), RecordError> {
        if records.is_empty() {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Submission { records, done })
            .await
            .map_err(|_| RecordError::Stopped)?;
        wait.await.map_err(|_| RecordError::Stopped)?
    }
}

async fn run(
    mut rx: mpsc::Receiver<Submission>,
    pool: DbPool,
    cfg: RecorderConfig,
    metrics: Metrics,
    on_disabled: MovedHook,
    failing: Arc<AtomicBool>,
) {
    let flushes = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let cfg = Arc::new(cfg);
    // Group commit: gather for `linger`, then keep gathering while every
    // flush slot is busy, so batches grow with the load.
    while let Some(first) = rx.recv().await {
        let mut rows = first.records.len();
        let mut batch = vec![first];
        let linger = tokio::time::sleep(cfg.linger);
        tokio::pin!(linger);
        let mut lingered = false;
        let mut open = true;
        let permit = loop {
            tokio::select! {
                biased;
                p = flushes.clone().acquire_owned(), if lingered || rows >= cfg.max_rows || !open => {
                    match p {
                        Ok(p) => break p,
                        Err(_) => return,
                    }
                }
                next = rx.recv(), if open && rows < cfg.max_rows => match next {
                    Some(s) => {
                        rows += s.records.len();
                        batch.push(s);
                    }
                    None => open = false,
                },
                _ = &mut linger, if !lingered => lingered = true,
            }
        };
        let (pool, cfg, metrics, hook, failing) = (
            pool.clone(),
            cfg.clone(),
            metrics.clone(),
            on_disabled.clone(),
            failing.clone(),
        );
        tokio::spawn(async move {
            flush(batch, &pool, &cfg, &metrics, &hook, &failing).await;
            drop(permit);
        });
        if !open {
            break;
        }
    }
    // Wait for the last flushes.
    let _ = flushes
        .acquire_many(u32::try_from(cfg.concurrency.max(1)).unwrap_or(1))
        .await;
}

async fn flush(
    batch: Vec<Submission>,
    pool: &DbPool,
    cfg: &RecorderConfig,
    metrics: &Metrics,
    on_disabled: &MovedHook,
    failing: &AtomicBool,
) {
    let records: Vec<&Record> = batch.iter().flat_map(|s| s.records.iter()).collect();
    let n = records.len();
    let mut result = Err(RecordError::Stopped);
    for attempt in 0..4u32 {
        let started = std::time::Instant::now();
        let keys = success_keys(&records);
        let write = storage::attempts::record(pool, &keys, cfg.health, |recorded| {
            to_batch(records.iter().copied(), recorded)
        });
        match write.await {
            Ok(Written { moved, refused }) => {
                if refused > 0 {
                    metrics.duplicates_refused.inc_by(refused);
                    tracing::warn!(
                        refused,
                        "successes not recorded: the event already had one for the webhook \
                         (the receiver got it twice, same webhook-id)"
                    );
                }
                failing.store(false, Ordering::Relaxed);
                tracing::debug!(
                    rows = n,
                    submissions = batch.len(),
                    ms = started.elapsed().as_secs_f64() * 1000.0,
                    "delivery rows written"
                );
                result = Ok(moved);
                break;
            }
            Err(e) => {
                failing.store(true, Ordering::Relaxed);
                tracing::warn!(error = %e, attempt = attempt + 1, rows = n, "writing delivery rows failed");
                result = Err(RecordError::Database(Arc::new(e)));
                tokio::time::sleep(Duration::from_millis(50 * 4u64.pow(attempt))).await;
            }
        }
    }
    let result = match result {
        Ok(moved) => {
            metrics.record_batches.inc();
            if !moved.is_empty() {
                let disabled = storage::attempts::disabled(&moved);
                for d in &disabled {
                    tracing::warn!(webhook_id = d.webhook_id, reason = %d.reason, "webhook disabled");
                }
                metrics
                    .disabled
                    .inc_by(u64::try_from(disabled.len()).unwrap_or(0));
                on_disabled(&moved);
            }
            Ok(())
        }
        Err(e) => {
            metrics.record_errors.inc();
            Err(e)
        }
    };
    for s in batch {
        let _ = s.done.send(result.clone());
    }
}

/// The (webhook, event) keys whose successes the batch must check.
fn success_keys<'a>(records: &[&'a Record]) -> Vec<SuccessKey<'a>> {
    let key = |copy: &'a EventCopy| {
        Some(SuccessKey {
            webhook_id: copy.webhook_id,
            event_id: copy.event_id.as_deref()?,
            stream_time: copy.stream_time,
        })
    };
    records
        .iter()
        .filter_map(|r| match r {
            Record::Attempted(Attempted { copy, .. }) => key(copy),
            Record::Queued { copy, .. } if copy.from_stream => key(copy),
            _ => None,
        })
        .collect()
}

/// Turns the records of a batch into rows, updates and per-webhook bumps,
/// given what is recorded for their keys (`storage::deliveries::lock_successes`);
/// returns the batch and the successes refused.
///
/// A success is refused when it is redundant: a stream delivery of an
/// event that already succeeded for the webhook, or a claimed retry queued
/// before the latest success was delivered (its row is removed). A
/// redundant failure is kept as history but schedules no retry; a stream
/// delivery parked while the key already has a success or a pending
/// attempt is dropped, and so is the retry of a stream failure whose key
/// has one pending already.
fn to_batch<'a>(
    records: impl Iterator<Item = &'a Record>,
    mut recorded: HashMap<(i32, String), Recorded>,
) -> (Batch, u64) {
    let mut batch = Batch::default();
    let mut refused = 0u64;
    for r in records {
        match r {
            Record::Attempted(a) => {
                let c = &a.copy;
                let success = a.verdict == Verdict::Success;
                let key = c.event_id.as_ref().map(|e| (c.webhook_id, e.clone()));
                let known = key
                    .as_ref()
                    .and_then(|k| recorded.get(k))
                    .copied()
                    .unwrap_or_default();
                let earlier = known.last_success;
                // A stream delivery of an event that already succeeded, or
                // a retry queued before the event's latest success.
                let redundant = match a.row {
                    None => c.from_stream && earlier.is_some(),
                    Some(row) => earlier.is_some_and(|at| at > row.created_at),
                };
                if redundant && success {
                    refused += 1;
                    if let Some(row) = a.row {
                        batch.deletes.push(row);
                    }
                    continue;
                }
                // A redundant failure is history, but not retried; nor is a
                // stream failure whose key has an attempt pending already.
                let retry_pending = a.row.is_none() && c.from_stream && known.pending;
                let next_retry_at = if redundant || retry_pending {
                    None
                } else {
                    a.next_retry_at
                };
                if let Some(k) = key {
                    let entry = recorded.entry(k.clone()).or_default();
                    if success {
                        entry.last_success = Some(entry.last_success.map_or(a.at, |t| t.max(a.at)));
                        // The event is delivered: attempts still pending
                        // for it (parked or retried copies) are redundant.
                        if a.row.is_none() && c.from_stream && entry.pending {
                            batch.superseded.push(k);
                            entry.pending = false;
                        }
                    }
                    entry.pending |= next_retry_at.is_some();
                }
                let status = if success {
                    DeliveryStatus::Success
                } else {
                    DeliveryStatus::Failed
                };
                let delivered_at = success.then_some(a.at);
                match a.row {
                    None => batch.inserts.push(NewRow {
                        webhook_id: c.webhook_id,
                        event_type: c.event_type.clone(),
                        payload: c.payload.clone(),
                        body: c.body.clone(),
                        status,
                        response_status: a.response_status,
                        response_body: a.response_body.clone(),
                        error_message: a.error_message.clone(),
                        attempt_number: c.attempt_number,
                        delivered_at,
                        next_retry_at,
                        event_id: c.event_id.clone(),
                        created_at: a.at,
                        traceparent: c.traceparent.clone(),
                        held: None,
                    }),
                    Some(row) => batch.updates.push(ClaimedUpdate {
                        row,
                        status,
                        response_status: a.response_status,
                        response_body: a.response_body.clone(),
                        error_message: a.error_message.clone(),
                        delivered_at,
                        next_retry_at,
                        held: None,
                    }),
                }
                if let Some(due) = next_retry_at
                    && !c.ordered
                {
                    batch
                        .inserts
                        .push(pending_row(c, c.attempt_number + 1, a.at, due));
                }
                batch.attempts.push(AttemptSummary {
                    webhook_id: c.webhook_id,
                    at: a.at,
                    success,
                    gone: a.verdict == Verdict::Gone,
                    claimed: a.row.map(|r| r.id),
                });
            }
            Record::Seen(event) => batch.events.push(event.clone()),
            Record::Queued { copy, due, held } => {
                let key = copy.event_id.as_ref().map(|e| (copy.webhook_id, e.clone()));
                if copy.from_stream
                    && let Some(k) = key
                {
                    let entry = recorded.entry(k).or_default();
                    if entry.last_success.is_some() || entry.pending {
                        // Parked from a second copy of the event: the first
                        // was delivered or is queued already.
                        continue;
                    }
                    entry.pending = true;
                }
                let mut row = pending_row(copy, copy.attempt_number, Utc::now(), *due);
                row.held = Some(*held);
                batch.inserts.push(row)
            }
            Record::Deferred { row, due, held } => batch.updates.push(ClaimedUpdate {
                row: *row,
                status: DeliveryStatus::Pending,
                response_status: None,
                response_body: None,
                error_message: None,
                delivered_at: None,
                next_retry_at: Some(*due),
                held: Some(*held),
            }),
        }
    }
    (batch, refused)
}

/// A pending row of `copy`, attempt `attempt_number`, due at `due`.
fn pending_row(
    copy: &EventCopy,
    attempt_number: i32,
    created_at: DateTime<Utc>,
    due: DateTime<Utc>,
) -> NewRow {
    NewRow {
        webhook_id: copy.webhook_id,
        event_type: copy.event_type.clone(),
        payload: copy.payload.clone(),
        body: copy.body.clone(),
        status: DeliveryStatus::Pending,
        response_status: None,
        response_body: None,
        error_message: None,
        attempt_number,
        delivered_at: None,
        next_retry_at: Some(due),
        event_id: copy.event_id.clone(),
        created_at,
        traceparent: copy.traceparent.clone(),
        held: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(event: &str, from_stream: bool) -> EventCopy {
        EventCopy {
            webhook_id: 7,
            event_id: Some(event.to_owned()),
            event_type: "user.created".to_owned(),
            payload: Arc::from("{}"),
            body: None,
            attempt_number: 1,
            traceparent: None,
            from_stream,
            ordered: false,
            stream_time: None,
        }
    }

    fn attempt(event: &str, ok: bool, row: Option<RowRef>, from_stream: bool) -> Record {
        let at = Utc::now();
        Record::Attempted(Attempted {
            row,
            copy: copy(event, from_stream),
            verdict: if ok {
                Verdict::Success
            } else {
                Verdict::Failed
            },
            response_status: Some(if ok { 200 } else { 500 }),
            response_body: None,
            error_message: None,
            at,
            next_retry_at: (!ok).then(|| at + chrono::Duration::seconds(5)),
        })
    }

    fn parked(event: &str) -> Record {
        Record::Queued {
            copy: copy(event, true),
            due: Utc::now(),
            held: Held::Busy,
        }
    }

    fn delivered(event: &str, at: DateTime<Utc>) -> HashMap<(i32, String), Recorded> {
        HashMap::from([(
            (7, event.to_owned()),
            Recorded {
                last_success: Some(at),
                pending: false,
            },
        )])
    }

    #[test]
    fn a_second_stream_success_is_refused_and_not_counted() {
        let recorded = delivered("e1", Utc::now());
        let records = [attempt("e1", true, None, true)];
        let (batch, refused) = to_batch(records.iter(), recorded);
        assert_eq!(refused, 1);
        assert!(batch.inserts.is_empty());
        assert!(
            batch.attempts.is_empty(),
            "the webhook's counters do not move"
        );
    }

    #[test]
    fn two_successes_of_one_event_in_a_batch_record_one() {
        let records = [
            attempt("e1", true, None, true),
            attempt("e1", true, None, true),
        ];
        let (batch, refused) = to_batch(records.iter(), HashMap::new());
        assert_eq!((batch.inserts.len(), refused), (1, 1));
        assert_eq!(batch.attempts.len(), 1);
    }

    #[test]
    fn a_replay_job_success_is_a_new_delivery() {
        let recorded = delivered("e1", Utc::now());
        let records = [attempt("e1", true, None, false)];
        let (batch, refused) = to_batch(records.iter(), recorded);
        assert_eq!((batch.inserts.len(), refused), (1, 0));
    }

    #[test]
    fn a_retry_queued_before_the_success_is_removed_and_a_later_one_kept() {
        let queued = Utc::now() - chrono::Duration::seconds(60);
        let row = RowRef {
            id: 1,
            created_at: queued,
        };
        let recorded = delivered("e1", queued + chrono::Duration::seconds(1));
        let records = [attempt("e1", true, Some(row), false)];
        let (batch, refused) = to_batch(records.iter(), recorded);
        assert_eq!(refused, 1);
        assert_eq!(batch.deletes.len(), 1);
        assert!(batch.updates.is_empty());

        // A manual retry queued after the success: a deliberate new delivery.
        let recorded = delivered("e1", queued - chrono::Duration::seconds(1));
        let records = [attempt("e1", true, Some(row), false)];
        let (batch, refused) = to_batch(records.iter(), recorded);
        assert_eq!((batch.updates.len(), refused), (1, 0));
    }

    #[test]
    fn a_stale_failure_is_history_without_a_retry_and_a_stale_park_is_dropped() {
        let recorded = delivered("e1", Utc::now());
        let records = [attempt("e1", false, None, true), parked("e1")];
        let (batch, refused) = to_batch(records.iter(), recorded);
        assert_eq!(refused, 0);
        assert_eq!(batch.inserts.len(), 1, "only the failed row");
        assert_eq!(batch.inserts[0].next_retry_at, None);
        assert_eq!(batch.attempts.len(), 1, "the failure counts");
    }

    #[test]
    fn a_stream_success_supersedes_pending_copies() {
        let recorded = HashMap::from([(
            (7, "e1".to_owned()),
            Recorded {
                last_success: None,
                pending: true,
            },
        )]);
        let records = [parked("e1"), attempt("e1", true, None, true)];
        let (batch, refused) = to_batch(records.iter(), recorded);
        assert_eq!(refused, 0);
        // The park is dropped (one is pending already); the success is
        // written and the pending copies go.
        assert_eq!(batch.inserts.len(), 1);
        assert_eq!(batch.superseded, vec![(7, "e1".to_owned())]);
    }
}
