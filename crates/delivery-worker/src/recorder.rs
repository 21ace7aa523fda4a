//! Batched writes of attempt rows and webhook counters.
//!
//! Callers submit the rows of one unit of work (one event, or one retried
//! row) and wait until they are committed; the recorder gathers submissions
//! for a few milliseconds (or up to a row limit) and writes each batch as ONE
//! SQL statement: a multi-row INSERT of new rows, an UPDATE of claimed
//! pending rows, and an `UPDATE webhooks ... FROM unnest(...)` that bumps the
//! counters, `last_triggered_at` and `failing_since` in SQL (no
//! read-modify-write between replicas) and disables webhooks that answered
//! 410 or have failed for too long. One statement is one transaction.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, Bool, Double, Int4, Nullable, Text, Timestamptz};
use diesel_async::RunQueryDsl;
use storage::DbPool;
use storage::models::delivery_status::{FAILED, PENDING, SUCCESS};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::metrics::Metrics;

/// A finished attempt.
#[derive(Debug, Clone)]
pub struct Attempted {
    /// The claimed pending row this attempt ran for (updated in place), or
    /// `None` for a first attempt from the stream (inserted).
    pub row: Option<i32>,
    pub webhook_id: i32,
    pub event_id: Option<String>,
    pub event_type: String,
    /// The payload as JSON text (the canonical body).
    pub payload: Arc<str>,
    pub attempt_number: i32,
    pub success: bool,
    pub response_status: Option<i32>,
    pub response_body: Option<String>,
    pub error_message: Option<String>,
    /// When the attempt ended.
    pub at: DateTime<Utc>,
    /// When the next attempt is due, if there is one.
    pub next_retry_at: Option<DateTime<Utc>>,
    /// The receiver answered 410 Gone.
    pub gone: bool,
    /// The event's W3C `traceparent`, carried to its retries.
    pub traceparent: Option<Arc<str>>,
}

/// One row change.
#[derive(Debug, Clone)]
pub enum Record {
    Attempted(Attempted),
    /// A delivery not attempted yet (its webhook was busy): a pending row due at `due`.
    Queued {
        webhook_id: i32,
        event_id: Option<String>,
        event_type: String,
        payload: Arc<str>,
        attempt_number: i32,
        due: DateTime<Utc>,
        traceparent: Option<Arc<str>>,
    },
    /// A claimed pending row given back unattempted, due again at `due`.
    Deferred {
        row: i32,
        due: DateTime<Utc>,
    },
}

/// The rows could not be written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot record delivery attempts: {0}")]
pub struct RecordError(pub String);

struct Submission {
    records: Vec<Record>,
    done: oneshot::Sender<Result<(), RecordError>>,
}

/// Settings of the recorder.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    pub max_rows: usize,
    pub linger: Duration,
    pub disable_after: Duration,
    pub concurrency: usize,
}

/// A handle to submit rows; the recorder stops when every handle is dropped.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Submission>,
}

/// Webhooks the recorder disabled in a batch.
pub type DisabledHook = Arc<dyn Fn(&[(i32, String)]) + Send + Sync>;

impl Recorder {
    /// Starts the recorder task; returns the handle and the task.
    pub fn start(
        pool: DbPool,
        cfg: RecorderConfig,
        metrics: Metrics,
        on_disabled: DisabledHook,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(4096);
        let task = tokio::spawn(run(rx, pool, cfg, metrics, on_disabled));
        (Self { tx }, task)
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
            .map_err(|_| RecordError("recorder stopped".into()))?;
        wait.await
            .map_err(|_| RecordError("recorder stopped".into()))?
    }
}

async fn run(
    mut rx: mpsc::Receiver<Submission>,
    pool: DbPool,
    cfg: RecorderConfig,
    metrics: Metrics,
    on_disabled: DisabledHook,
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
        let (pool, cfg, metrics, hook) = (
            pool.clone(),
            cfg.clone(),
            metrics.clone(),
            on_disabled.clone(),
        );
        tokio::spawn(async move {
            flush(batch, &pool, &cfg, &metrics, &hook).await;
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
    on_disabled: &DisabledHook,
) {
    let mut arrays = Arrays::default();
    arrays.reserve(batch.iter().map(|s| s.records.len()).sum());
    for s in &batch {
        for r in &s.records {
            arrays.push(r);
        }
    }
    arrays.finish_stats();
    let mut result = Err(RecordError("not attempted".into()));
    for attempt in 0..4u32 {
        let started = std::time::Instant::now();
        match write(pool, &arrays, cfg.disable_after).await {
            Ok(disabled) => {
                tracing::debug!(
                    rows = arrays.len(),
                    submissions = batch.len(),
                    ms = started.elapsed().as_secs_f64() * 1000.0,
                    "delivery rows written"
                );
                result = Ok(disabled);
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt = attempt + 1, rows = arrays.len(), "writing delivery rows failed");
                result = Err(RecordError(e));
                tokio::time::sleep(Duration::from_millis(50 * 4u64.pow(attempt))).await;
            }
        }
    }
    let result = match result {
        Ok(disabled) => {
            metrics.record_batches.inc();
            if !disabled.is_empty() {
                for (id, reason) in &disabled {
                    tracing::warn!(webhook_id = id, reason = %reason, "webhook disabled");
                }
                metrics
                    .disabled
                    .inc_by(u64::try_from(disabled.len()).unwrap_or(0));
                on_disabled(&disabled);
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

/// Column arrays of one batch.
#[derive(Default)]
struct Arrays {
    // New rows.
    i_webhook: Vec<i32>,
    i_event_type: Vec<String>,
    i_payload: Vec<Arc<str>>,
    i_response_status: Vec<Option<i32>>,
    i_response_body: Vec<Option<String>>,
    i_status: Vec<&'static str>,
    i_error: Vec<Option<String>>,
    i_attempt: Vec<i32>,
    i_delivered_at: Vec<Option<DateTime<Utc>>>,
    i_next_retry_at: Vec<Option<DateTime<Utc>>>,
    i_event_id: Vec<Option<String>>,
    i_created_at: Vec<DateTime<Utc>>,
    i_traceparent: Vec<Option<Arc<str>>>,
    // Claimed rows updated in place.
    u_id: Vec<i32>,
    u_status: Vec<&'static str>,
    u_response_status: Vec<Option<i32>>,
    u_response_body: Vec<Option<String>>,
    u_error: Vec<Option<String>>,
    u_delivered_at: Vec<Option<DateTime<Utc>>>,
    u_next_retry_at: Vec<Option<DateTime<Utc>>>,
    // Attempts, for the webhook counters.
    attempts: Vec<(i32, DateTime<Utc>, bool, bool)>,
    // Per webhook: id, successes, failures, last attempt, last ok, failing since, gone.
    w_id: Vec<i32>,
    w_ok: Vec<i32>,
    w_bad: Vec<i32>,
    w_last: Vec<DateTime<Utc>>,
    w_ok_last: Vec<bool>,
    w_fail_since: Vec<Option<DateTime<Utc>>>,
    w_gone: Vec<bool>,
}

impl Arrays {
    /// Room for `n` new rows (the usual case: first attempts from the stream).
    fn reserve(&mut self, n: usize) {
        self.i_webhook.reserve(n);
        self.i_event_type.reserve(n);
        self.i_payload.reserve(n);
        self.i_response_status.reserve(n);
        self.i_response_body.reserve(n);
        self.i_status.reserve(n);
        self.i_error.reserve(n);
        self.i_attempt.reserve(n);
        self.i_delivered_at.reserve(n);
        self.i_next_retry_at.reserve(n);
        self.i_event_id.reserve(n);
        self.i_created_at.reserve(n);
        self.i_traceparent.reserve(n);
        self.attempts.reserve(n);
    }

    fn len(&self) -> usize {
        self.i_webhook.len() + self.u_id.len()
    }

    #[allow(clippy::too_many_arguments)]
    fn insert(
        &mut self,
        webhook_id: i32,
        event_type: &str,
        payload: &Arc<str>,
        status: &'static str,
        attempt: i32,
        event_id: Option<&String>,
        created_at: DateTime<Utc>,
        next_retry_at: Option<DateTime<Utc>>,
        traceparent: Option<&Arc<str>>,
    ) {
        self.i_webhook.push(webhook_id);
        self.i_event_type.push(event_type.to_owned());
        self.i_payload.push(payload.clone());
        self.i_status.push(status);
        self.i_attempt.push(attempt);
        self.i_event_id.push(event_id.cloned());
        self.i_created_at.push(created_at);
        self.i_next_retry_at.push(next_retry_at);
        self.i_response_status.push(None);
        self.i_response_body.push(None);
        self.i_error.push(None);
        self.i_delivered_at.push(None);
        self.i_traceparent.push(traceparent.cloned());
    }

    fn push(&mut self, r: &Record) {
        match r {
            Record::Attempted(a) => {
                let status = if a.success { SUCCESS } else { FAILED };
                let delivered_at = a.success.then_some(a.at);
                match a.row {
                    None => {
                        self.insert(
                            a.webhook_id,
                            &a.event_type,
                            &a.payload,
                            status,
                            a.attempt_number,
                            a.event_id.as_ref(),
                            a.at,
                            a.next_retry_at,
                            a.traceparent.as_ref(),
                        );
                        let last = self.i_webhook.len() - 1;
                        self.i_response_status[last] = a.response_status;
                        self.i_response_body[last] = a.response_body.clone();
                        self.i_error[last] = a.error_message.clone();
                        self.i_delivered_at[last] = delivered_at;
                    }
                    Some(id) => {
                        self.u_id.push(id);
                        self.u_status.push(status);
                        self.u_response_status.push(a.response_status);
                        self.u_response_body.push(a.response_body.clone());
                        self.u_error.push(a.error_message.clone());
                        self.u_delivered_at.push(delivered_at);
                        self.u_next_retry_at.push(a.next_retry_at);
                    }
                }
                if let Some(due) = a.next_retry_at {
                    self.insert(
                        a.webhook_id,
                        &a.event_type,
                        &a.payload,
                        PENDING,
                        a.attempt_number + 1,
                        a.event_id.as_ref(),
                        a.at,
                        Some(due),
                        a.traceparent.as_ref(),
                    );
                }
                self.attempts.push((a.webhook_id, a.at, a.success, a.gone));
            }
            Record::Queued {
                webhook_id,
                event_id,
                event_type,
                payload,
                attempt_number,
                due,
                traceparent,
            } => self.insert(
                *webhook_id,
                event_type,
                payload,
                PENDING,
                *attempt_number,
                event_id.as_ref(),
                Utc::now(),
                Some(*due),
                traceparent.as_ref(),
            ),
            Record::Deferred { row, due } => {
                self.u_id.push(*row);
                self.u_status.push(PENDING);
                self.u_response_status.push(None);
                self.u_response_body.push(None);
                self.u_error.push(None);
                self.u_delivered_at.push(None);
                self.u_next_retry_at.push(Some(*due));
            }
        }
    }

    /// Folds the attempts into one counter row per webhook, in id order
    /// (a stable lock order between concurrent batches).
    fn finish_stats(&mut self) {
        let mut attempts = std::mem::take(&mut self.attempts);
        attempts.sort_by_key(|&(id, at, _, _)| (id, at));
        for (id, at, ok, gone) in attempts {
            if self.w_id.last() != Some(&id) {
                self.w_id.push(id);
                self.w_ok.push(0);
                self.w_bad.push(0);
                self.w_last.push(at);
                self.w_ok_last.push(ok);
                self.w_fail_since.push(None);
                self.w_gone.push(false);
            }
            let i = self.w_id.len() - 1;
            if ok {
                self.w_ok[i] += 1;
                self.w_fail_since[i] = None;
            } else {
                self.w_bad[i] += 1;
                if self.w_fail_since[i].is_none() {
                    self.w_fail_since[i] = Some(at);
                }
            }
            self.w_last[i] = at;
            self.w_ok_last[i] = ok;
            self.w_gone[i] |= gone;
        }
    }
}

#[derive(diesel::QueryableByName)]
struct DisabledRow {
    #[diesel(sql_type = Int4)]
    id: i32,
    #[diesel(sql_type = Nullable<Text>)]
    disabled_reason: Option<String>,
}

/// `failing_since` after this batch, as an SQL expression over `w` and `v`.
const FAILING_SINCE: &str = "(CASE WHEN v.ok_last THEN NULL::timestamptz \
     WHEN v.ok > 0 THEN v.fail_since \
     ELSE COALESCE(w.failing_since, v.fail_since) END)";

fn build_statement() -> String {
    let fs = FAILING_SINCE;
    let too_long = format!("COALESCE({fs} < now() - make_interval(secs => $27), false)");
    format!(
        "WITH ins AS ( \
           INSERT INTO webhook_deliveries (webhook_id, event_type, payload, response_status, \
             response_body, status, error_message, attempt_number, delivered_at, next_retry_at, \
             event_id, created_at, traceparent) \
           SELECT v.webhook_id, v.event_type, v.payload::jsonb, v.response_status, v.response_body, \
             v.status, v.error_message, v.attempt_number, v.delivered_at, v.next_retry_at, \
             v.event_id, v.created_at, v.traceparent \
           FROM unnest($1::int4[], $2::text[], $3::text[], $4::int4[], $5::text[], $6::text[], \
             $7::text[], $8::int4[], $9::timestamptz[], $10::timestamptz[], $11::text[], \
             $12::timestamptz[], $29::text[]) \
             AS v(webhook_id, event_type, payload, response_status, response_body, status, \
               error_message, attempt_number, delivered_at, next_retry_at, event_id, created_at, \
               traceparent) \
           WHERE EXISTS (SELECT 1 FROM webhooks x WHERE x.id = v.webhook_id) \
           RETURNING 1 \
         ), upd AS ( \
           UPDATE webhook_deliveries d SET status = v.status, response_status = v.response_status, \
             response_body = v.response_body, error_message = v.error_message, \
             delivered_at = v.delivered_at, next_retry_at = v.next_retry_at \
           FROM unnest($13::int4[], $14::text[], $15::int4[], $16::text[], $17::text[], \
             $18::timestamptz[], $19::timestamptz[]) \
             AS v(id, status, response_status, response_body, error_message, delivered_at, \
               next_retry_at) \
           WHERE d.id = v.id AND d.status = 'pending' \
           RETURNING 1 \
         ), old AS ( \
           SELECT id, is_active FROM webhooks WHERE id = ANY($20::int4[]) \
         ), wh AS ( \
           UPDATE webhooks w SET \
             success_count = w.success_count + v.ok, \
             failure_count = w.failure_count + v.bad, \
             last_triggered_at = GREATEST(w.last_triggered_at, v.last_at), \
             failing_since = {fs}, \
             is_active = w.is_active AND NOT v.gone AND NOT {too_long}, \
             disabled_reason = CASE \
               WHEN NOT w.is_active THEN w.disabled_reason \
               WHEN v.gone THEN 'receiver answered 410 Gone' \
               WHEN {too_long} THEN 'failed without a single success since ' \
                 || to_char({fs} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
                 || ' (DELIVERY_DISABLE_AFTER ' || $28 || ')' \
               ELSE w.disabled_reason END, \
             updated_at = CASE WHEN w.is_active AND (v.gone OR {too_long}) THEN now() \
               ELSE w.updated_at END \
           FROM unnest($20::int4[], $21::int4[], $22::int4[], $23::timestamptz[], $24::bool[], \
             $25::timestamptz[], $26::bool[]) \
             AS v(id, ok, bad, last_at, ok_last, fail_since, gone) \
           WHERE w.id = v.id \
           RETURNING w.id, w.is_active, w.disabled_reason \
         ) \
         SELECT wh.id, wh.disabled_reason FROM wh JOIN old ON old.id = wh.id \
         WHERE old.is_active AND NOT wh.is_active"
    )
}

/// The batch statement, built once.
fn statement() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(build_statement)
}

async fn write(
    pool: &DbPool,
    a: &Arrays,
    disable_after: Duration,
) -> Result<Vec<(i32, String)>, String> {
    let payloads: Vec<&str> = a.i_payload.iter().map(|p| &**p).collect();
    let traceparents: Vec<Option<&str>> = a.i_traceparent.iter().map(|t| t.as_deref()).collect();
    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
    let rows: Vec<DisabledRow> = diesel::sql_query(statement())
        .bind::<Array<Int4>, _>(&a.i_webhook)
        .bind::<Array<Text>, _>(&a.i_event_type)
        .bind::<Array<Text>, _>(&payloads)
        .bind::<Array<Nullable<Int4>>, _>(&a.i_response_status)
        .bind::<Array<Nullable<Text>>, _>(&a.i_response_body)
        .bind::<Array<Text>, _>(&a.i_status)
        .bind::<Array<Nullable<Text>>, _>(&a.i_error)
        .bind::<Array<Int4>, _>(&a.i_attempt)
        .bind::<Array<Nullable<Timestamptz>>, _>(&a.i_delivered_at)
        .bind::<Array<Nullable<Timestamptz>>, _>(&a.i_next_retry_at)
        .bind::<Array<Nullable<Text>>, _>(&a.i_event_id)
        .bind::<Array<Timestamptz>, _>(&a.i_created_at)
        .bind::<Array<Int4>, _>(&a.u_id)
        .bind::<Array<Text>, _>(&a.u_status)
        .bind::<Array<Nullable<Int4>>, _>(&a.u_response_status)
        .bind::<Array<Nullable<Text>>, _>(&a.u_response_body)
        .bind::<Array<Nullable<Text>>, _>(&a.u_error)
        .bind::<Array<Nullable<Timestamptz>>, _>(&a.u_delivered_at)
        .bind::<Array<Nullable<Timestamptz>>, _>(&a.u_next_retry_at)
        .bind::<Array<Int4>, _>(&a.w_id)
        .bind::<Array<Int4>, _>(&a.w_ok)
        .bind::<Array<Int4>, _>(&a.w_bad)
        .bind::<Array<Timestamptz>, _>(&a.w_last)
        .bind::<Array<Bool>, _>(&a.w_ok_last)
        .bind::<Array<Nullable<Timestamptz>>, _>(&a.w_fail_since)
        .bind::<Array<Bool>, _>(&a.w_gone)
        .bind::<Double, _>(disable_after.as_secs_f64())
        .bind::<Text, _>(humantime::format_duration(disable_after).to_string())
        .bind::<Array<Nullable<Text>>, _>(&traceparents)
        .load(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows
        .into_iter()
        .map(|r| (r.id, r.disabled_reason.unwrap_or_default()))
        .collect())
}
