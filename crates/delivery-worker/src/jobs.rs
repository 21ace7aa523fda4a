//! The job runner: recover, replay and bulk retry jobs of one webhook
//! (`webhook_jobs`, created by the registry), run by any replica.
//!
//! A replica claims a job under a lease (`storage::jobs::claim`, `FOR
//! UPDATE SKIP LOCKED`), fixes its window the first time (`total`,
//! `end_key`, and for a replay the part of the window the stream no longer
//! holds), then works through it in chunks of about one second of work:
//!
//! - recover / retry: failed delivery rows of the webhook, in id order,
//!   once per event, sent again with the next attempt number and the same
//!   event id (so the same `webhook-id` header);
//! - replay: the stored events the webhook's `event_type` matches, read
//!   from the stream in order by an ordered consumer, sent as first
//!   attempts (with the full retry schedule).
//!
//! Every item goes through the normal delivery path ([`Deliverer`]: the
//! webhook's in-flight gate, the global limit, signing, the SSRF guard, the
//! recorder and its retry rows), at most `rate_per_s` per second and a few
//! at a time, so live traffic keeps its share of the webhook's slots.
//! After each chunk the progress (`progress_key`, `done`, `failed`) is
//! written with the lease; a cancelled job stops there. Items whose event
//! already has a row written since the job started are skipped, so a job
//! resumed after a crash re-sends only what was in flight.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull::OrderedConfig},
};
use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Int4, Nullable, Text, Timestamptz};
use diesel_async::RunQueryDsl;
use futures::StreamExt;
use proto_events::{Envelope, Namespace, Pattern};
use storage::jobs::{self, Job, JobKind, JobStatus, Window};
use storage::models::{BodyFormat, DeliveryStatus};
use storage::{DbPool, StorageError};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::Target;
use crate::deliver::{Body, Deliverer, Job as Delivery};
use crate::metrics::Metrics;
use crate::recorder::Record;

/// Settings of the job runner.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// How often queued jobs are looked for.
    pub poll: Duration,
    /// How long a claimed job stays with this replica without progress.
    pub lease: Duration,
    /// Jobs this replica runs at once.
    pub max_jobs: usize,
    /// Deliveries of one job in flight at once.
    pub concurrency: usize,
    /// This replica's name in `lease_owner`.
    pub owner: String,
}

/// What the runner needs.
pub struct JobCtx {
    pub pool: DbPool,
    pub js: jetstream::Context,
    pub ns: Namespace,
    pub deliverer: Arc<Deliverer>,
    pub metrics: Metrics,
    pub cfg: JobsConfig,
}

/// Claims and runs jobs until `stop`; then lets the running ones finish
/// their in-flight deliveries, store their progress and hand the jobs back.
pub async fn run(ctx: Arc<JobCtx>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(ctx.cfg.max_jobs.max(1)));
    let tasks = TaskTracker::new();
    loop {
        let mut claimed = false;
        if let Ok(permit) = slots.clone().try_acquire_owned() {
            match claim(&ctx).await {
                Ok(Some(job)) => {
                    claimed = true;
                    tracing::info!(job_id = job.id, webhook_id = job.webhook_id, kind = %job.kind,
                        resumed = job.progress_key.is_some(), "job claimed");
                    ctx.metrics.job_claimed(job.kind.as_str());
                    let (ctx, stop) = (ctx.clone(), stop.clone());
                    tasks.spawn(async move {
                        ctx.metrics.jobs_running.inc();
                        run_job(&ctx, job, &stop).await;
                        ctx.metrics.jobs_running.dec();
                        drop(permit);
                    });
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot claim jobs"),
            }
        }
        let wait = if claimed {
            Duration::ZERO
        } else {
            ctx.cfg.poll
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    tasks.close();
    tasks.wait().await;
}

async fn claim(ctx: &JobCtx) -> Result<Option<Job>, StorageError> {
    let mut conn = ctx.pool.get().await.map_err(StorageError::from)?;
    jobs::claim(&mut conn, &ctx.cfg.owner, ctx.cfg.lease).await
}

/// Why a job stopped running here.
enum Ended {
    /// Every item of the window was handled.
    Completed,
    /// This replica is stopping; the job is handed back.
    Stopped,
    /// Paused, cancelled, taken over after a lost lease, or its webhook
    /// deleted.
    Lost,
    /// The job cannot go on (the webhook was disabled, the stream is gone).
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the webhook is disabled")]
    Disabled,
    #[error("{0}")]
    Other(String),
}

async fn run_job(ctx: &JobCtx, job: Job, stop: &CancellationToken) {
    let (id, owner) = (job.id, ctx.cfg.owner.clone());
    let job_kind = job.kind.as_str();
    let ended = match drive(ctx, job, stop).await {
        Ok(e) => e,
        Err(e) => {
            // Given back; the next poll (here or elsewhere) resumes it.
            tracing::warn!(job_id = id, error = %e, "job interrupted; it will resume");
            Ended::Stopped
        }
    };
    let result = async {
        let mut conn = ctx.pool.get().await.map_err(StorageError::from)?;
        match &ended {
            Ended::Completed => {
                jobs::finish(&mut conn, id, &owner, JobStatus::Completed, None).await
            }
            Ended::Failed(reason) => {
                jobs::finish(&mut conn, id, &owner, JobStatus::Failed, Some(reason)).await
            }
            Ended::Stopped => jobs::release(&mut conn, id, &owner).await,
            Ended::Lost => Ok(false),
        }
    }
    .await;
    ctx.metrics.job_ended(
        job_kind,
        match &ended {
            Ended::Completed => "completed",
            Ended::Failed(_) => "failed",
            Ended::Stopped => "handed_back",
            Ended::Lost => "stopped",
        },
    );
    match (&ended, result) {
        (Ended::Completed, Ok(true)) => tracing::info!(job_id = id, "job completed"),
        (Ended::Failed(reason), Ok(true)) => {
            tracing::warn!(job_id = id, reason = %reason, "job failed")
        }
        (Ended::Lost, _) => {
            tracing::info!(job_id = id, "job stopped: paused, cancelled or taken over")
        }
        (_, Ok(_)) => {}
        // The lease runs out and another claim resumes it.
        (_, Err(e)) => tracing::warn!(job_id = id, error = %e, "cannot store the job's end"),
    }
}

/// The webhook a job delivers to, read again for every chunk (a rotated
/// secret or a new URL applies at once; a disabled webhook stops the job).
struct Hook {
    target: Target,
    event_type: String,
    is_active: bool,
}

#[derive(diesel::QueryableByName)]
struct HookRow {
    #[diesel(sql_type = Text)]
    url: String,
    #[diesel(sql_type = Text)]
    event_type: String,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    is_active: bool,
    #[diesel(sql_type = Nullable<Text>)]
    secret: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    previous_secret: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    previous_secret_expires_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Text)]
    body_format: BodyFormat,
}

async fn load_hook(pool: &DbPool, webhook_id: i32) -> Result<Option<Hook>, StorageError> {
    use diesel::OptionalExtension;
    let mut conn = pool.get().await?;
    let row: Option<HookRow> = diesel::sql_query(
        "SELECT url, event_type::text AS event_type, is_active, secret::text AS secret, \
           previous_secret::text AS previous_secret, previous_secret_expires_at, body_format \
         FROM webhooks WHERE id = $1",
    )
    .bind::<Int4, _>(webhook_id)
    .get_result(&mut conn)
    .await
    .optional()?;
    Ok(row.map(|r| Hook {
        target: Target::new(
            webhook_id,
            r.url,
            r.secret,
            r.previous_secret,
            r.previous_secret_expires_at,
        )
        .with_body_format(r.body_format),
        event_type: r.event_type,
        is_active: r.is_active,
    }))
}

/// One delivery a job makes.
struct Item {
    /// Its place in the window: a delivery id or a stream sequence.
    key: i64,
    event_id: String,
    event_type: String,
    body: Body,
    attempt_number: i32,
    traceparent: Option<String>,
}

/// What became of one item.
enum Outcome {
    Sent {
        success: bool,
    },
    /// The webhook was busy: a pending row the retry poller sends.
    Queued,
    /// Already delivered since the job started (a resumed job).
    Skipped,
}

/// Spreads a job's deliveries at `rate_per_s`.
struct Pacer {
    next: Instant,
    period: Duration,
}

impl Pacer {
    fn new(rate_per_s: i32) -> Self {
        let rate = f64::from(rate_per_s.max(1));
        Self {
            next: Instant::now(),
            period: Duration::from_secs_f64(1.0 / rate),
        }
    }

    /// When the next delivery may start. Time not used (a slow receiver)
    /// is not saved up for a burst later.
    fn slot(&mut self) -> Instant {
        let now = Instant::now();
        if self.next < now {
            self.next = now;
        }
        let at = self.next;
        self.next += self.period;
        at
    }
}

/// Items of a job whose rows are being written at once (the attempts
/// themselves are limited by `DELIVERY_JOB_CONCURRENCY`).
const RECORDS_IN_FLIGHT: usize = 256;

/// Items per chunk: about a second of work, at least 1, at most 500.
fn chunk_size(rate_per_s: i32) -> usize {
    usize::try_from(rate_per_s.clamp(1, 500)).unwrap_or(1)
}

async fn drive(ctx: &JobCtx, job: Job, stop: &CancellationToken) -> Result<Ended, JobError> {
    let Some(hook) = load_hook(&ctx.pool, job.webhook_id).await? else {
        return Ok(Ended::Lost);
    };
    if !hook.is_active {
        return Ok(Ended::Failed("the webhook is disabled".to_owned()));
    }
    let started_at = job.started_at.unwrap_or_else(Utc::now);
    match job.kind {
        JobKind::Recover | JobKind::Retry => drive_rows(ctx, job, &hook, started_at, stop).await,
        JobKind::Replay => drive_replay(ctx, job, &hook, started_at, stop).await,
    }
}

/// Sends one chunk; returns how many items ended how and whether it was
/// cut short by `stop` (then only the items before `last_key` are done).
struct ChunkResult {
    done: i64,
    failed: i64,
    last_key: Option<i64>,
    stopped: bool,
}

async fn send_chunk(
    ctx: &JobCtx,
    job: &Job,
    started_at: DateTime<Utc>,
    items: Vec<Item>,
    pacer: &mut Pacer,
    stop: &CancellationToken,
) -> Result<(ChunkResult, bool), JobError> {
    let Some(hook) = load_hook(&ctx.pool, job.webhook_id).await? else {
        return Ok((
            ChunkResult {
                done: 0,
                failed: 0,
                last_key: None,
                stopped: true,
            },
            false,
        ));
    };
    if !hook.is_active {
        return Err(JobError::Disabled);
    }
    let seen = already_delivered(&ctx.pool, job.webhook_id, started_at, &items).await?;
    let target = &hook.target;
    let n = items.len();
    let deliverer = &ctx.deliverer;
    // Stops taking new items on shutdown or when the job was cancelled;
    // deliveries already started finish and count.
    let chunk_stop = stop.child_token();
    // Items start strictly in order, at most `concurrency` attempts at once
    // (the permit is held for the HTTP attempt only); writing an attempt's
    // row overlaps with the next attempts.
    let gate = Arc::new(Semaphore::new(ctx.cfg.concurrency.max(1)));
    let results = futures::stream::iter(items)
        .take_until(chunk_stop.clone().cancelled_owned())
        .then(|item| {
            let at = pacer.slot();
            let skip = seen.contains(&item.event_id);
            let gate = gate.clone();
            async move {
                if skip {
                    return (item, None);
                }
                // A slot already passed starts now: the timer's 1 ms
                // granularity would otherwise cap a job below 1,000/s.
                if at > Instant::now() {
                    tokio::time::sleep_until(at).await;
                }
                (item, gate.acquire_owned().await.ok())
            }
        })
        .map(|(item, permit)| async move {
            let Some(permit) = permit else {
                return Ok((item.key, Outcome::Skipped));
            };
            let record = deliverer
                .deliver(Delivery {
                    target,
                    row: None,
                    event_id: Some(&item.event_id),
                    event_type: &item.event_type,
                    body: item.body.clone(),
                    attempt_number: item.attempt_number,
                    traceparent: item.traceparent.as_deref(),
                    from_stream: false,
                })
                .await;
            drop(permit);
            let outcome = match &record {
                Record::Attempted(a) => Outcome::Sent {
                    success: a.verdict == webhook_client::Verdict::Success,
                },
                _ => Outcome::Queued,
            };
            deliverer
                .recorder
                .submit(vec![record])
                .await
                .map_err(|e| JobError::Other(e.to_string()))?;
            Ok::<_, JobError>((item.key, outcome))
        })
        .buffered(RECORDS_IN_FLIGHT);
    let mut results = std::pin::pin!(results);
    let mut out = ChunkResult {
        done: 0,
        failed: 0,
        last_key: None,
        stopped: false,
    };
    let mut handled = 0usize;
    let mut error = None;
    let mut lost = false;
    // A chunk can outlast the lease (slow receivers): renew it meanwhile.
    let mut renew = tokio::time::interval(ctx.cfg.lease / 3);
    renew.tick().await;
    loop {
        let r = tokio::select! {
            r = results.next() => match r {
                Some(r) => r,
                None => break,
            },
            _ = renew.tick() => {
                let idle = ChunkResult { done: 0, failed: 0, last_key: None, stopped: false };
                if !record_progress(ctx, job, &idle).await.unwrap_or(true) {
                    lost = true;
                    chunk_stop.cancel();
                }
                continue;
            }
        };
        match r {
            // The results come in order: everything up to here is done.
            Ok((key, outcome)) if error.is_none() => {
                handled += 1;
                out.done += 1;
                let label = match outcome {
                    Outcome::Sent { success: true } => "success",
                    Outcome::Sent { success: false } => {
                        out.failed += 1;
                        "failed"
                    }
                    Outcome::Queued => "queued",
                    Outcome::Skipped => "skipped",
                };
                ctx.metrics.job_item(job.kind.as_str(), label);
                out.last_key = Some(key);
            }
            Ok(_) => {}
            Err(e) => {
                chunk_stop.cancel();
                error.get_or_insert(e);
            }
        }
    }
    out.stopped = handled < n;
    // Progress before an error is kept; the rest runs again later. After a
    // pause the write still lands (a cancel or a takeover ignores it).
    let keep = record_progress(ctx, job, &out).await? && !lost;
    if let Some(e) = error {
        return Err(e);
    }
    Ok((out, keep))
}

async fn record_progress(ctx: &JobCtx, job: &Job, r: &ChunkResult) -> Result<bool, JobError> {
    let mut conn = ctx.pool.get().await.map_err(StorageError::from)?;
    Ok(jobs::record_progress(
        &mut conn,
        job.id,
        &ctx.cfg.owner,
        r.done,
        r.failed,
        r.last_key,
        ctx.cfg.lease,
    )
    .await?)
}

/// Events of `items` with a row for this webhook written since the job
/// started: sent (or queued) by an earlier run of this job.
async fn already_delivered(
    pool: &DbPool,
    webhook_id: i32,
    since: DateTime<Utc>,
    items: &[Item],
) -> Result<HashSet<String>, StorageError> {
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = Text)]
        event_id: String,
    }
    if items.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<&str> = items.iter().map(|i| i.event_id.as_str()).collect();
    let mut conn = pool.get().await?;
    let rows: Vec<Id> = diesel::sql_query(
        "SELECT DISTINCT event_id::text AS event_id FROM webhook_deliveries \
         WHERE event_id = ANY($1) AND webhook_id = $2 AND created_at >= $3",
    )
    .bind::<Array<Text>, _>(&ids)
    .bind::<Int4, _>(webhook_id)
    .bind::<Timestamptz, _>(since)
    .load(&mut conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.event_id).collect())
}

// ------------------------------------------------------ recover and retry

/// The rows a recover or bulk retry sends again. `$1` webhook, `$2` after
/// this id, `$3` up to this id, `$4`/`$5` the window, `$6` the status.
///
/// - recover: an event's latest row (as of the job's start) failed, and
///   its first attempt lies in the window;
/// - retry: the event's first row with the status in the window, unless
///   the event has a retry pending already.
fn rows_sql(job_kind: JobKind, select: &str, tail: &str) -> String {
    let common = "r.webhook_id = $1 AND r.event_id IS NOT NULL AND r.event_type <> 'webhook.test' \
                  AND r.id > $2 AND r.id <= $3";
    let rule = if job_kind == JobKind::Recover {
        "r.status = 'failed' \
         AND NOT EXISTS (SELECT 1 FROM webhook_deliveries l WHERE l.event_id = r.event_id \
           AND l.webhook_id = r.webhook_id AND l.id > r.id AND l.id <= $3) \
         AND EXISTS (SELECT 1 FROM webhook_deliveries f WHERE f.event_id = r.event_id \
           AND f.webhook_id = r.webhook_id AND f.attempt_number = 1 \
           AND ($4::timestamptz IS NULL OR f.created_at >= $4) \
           AND ($5::timestamptz IS NULL OR f.created_at < $5)) \
         AND $6::text IS NOT NULL"
    } else {
        "r.status = $6 \
         AND ($4::timestamptz IS NULL OR r.created_at >= $4) \
         AND ($5::timestamptz IS NULL OR r.created_at < $5) \
         AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e WHERE e.event_id = r.event_id \
           AND e.webhook_id = r.webhook_id AND e.status = $6 AND e.id < r.id \
           AND ($4::timestamptz IS NULL OR e.created_at >= $4) \
           AND ($5::timestamptz IS NULL OR e.created_at < $5)) \
         AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p WHERE p.event_id = r.event_id \
           AND p.webhook_id = r.webhook_id AND p.status = 'pending')"
    };
    format!("SELECT {select} FROM webhook_deliveries r WHERE {common} AND {rule} {tail}")
}

#[derive(diesel::QueryableByName)]
struct RowItem {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    event_id: String,
    #[diesel(sql_type = Text)]
    event_type: String,
    #[diesel(sql_type = Text)]
    payload: String,
    #[diesel(sql_type = Nullable<Text>)]
    traceparent: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    body: Option<String>,
    #[diesel(sql_type = Int4)]
    last_attempt: i32,
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn drive_rows(
    ctx: &JobCtx,
    mut job: Job,
    hook: &Hook,
    started_at: DateTime<Utc>,
    stop: &CancellationToken,
) -> Result<Ended, JobError> {
    let format = hook.target.body_format;
    let status = job.delivery_status.unwrap_or(DeliveryStatus::Failed);
    let end_key = match job.end_key {
        Some(k) => k,
        None => {
            let mut conn = ctx.pool.get().await.map_err(StorageError::from)?;
            // Every id handed out so far: rows written after this are the
            // job's own (or live traffic), never part of its window.
            let end: Count = diesel::sql_query(
                "SELECT CASE WHEN is_called THEN last_value ELSE 0 END::int8 AS n \
                 FROM webhook_deliveries_id_seq",
            )
            .get_result(&mut conn)
            .await
            .map_err(StorageError::from)?;
            let total: Count = diesel::sql_query(rows_sql(job.kind, "count(*)::int8 AS n", ""))
                .bind::<Int4, _>(job.webhook_id)
                .bind::<BigInt, _>(0i64)
                .bind::<BigInt, _>(end.n)
                .bind::<Nullable<Timestamptz>, _>(job.since)
                .bind::<Nullable<Timestamptz>, _>(job.until)
                .bind::<Text, _>(status)
                .get_result(&mut conn)
                .await
                .map_err(StorageError::from)?;
            let window = Window {
                total: total.n,
                end_key: end.n,
                unavailable: 0,
                progress_key: Some(0),
            };
            if !jobs::set_window(&mut conn, job.id, &ctx.cfg.owner, window).await? {
                return Ok(Ended::Lost);
            }
            tracing::info!(job_id = job.id, total = total.n, "job window fixed");
            job.progress_key = Some(0);
            end.n
        }
    };
    let chunk = chunk_size(job.rate_per_s);
    let mut pacer = Pacer::new(job.rate_per_s);
    let mut after = job.progress_key.unwrap_or(0);
    let select = "r.id, r.event_id::text AS event_id, r.event_type::text AS event_type, \
                  r.payload::text AS payload, r.traceparent::text AS traceparent, r.body, \
                  (SELECT max(m.attempt_number) FROM webhook_deliveries m \
                   WHERE m.event_id = r.event_id AND m.webhook_id = r.webhook_id) AS last_attempt";
    let sql = rows_sql(job.kind, select, "ORDER BY r.id LIMIT $7");
    loop {
        if stop.is_cancelled() {
            return Ok(Ended::Stopped);
        }
        let rows: Vec<RowItem> = {
            let mut conn = ctx.pool.get().await.map_err(StorageError::from)?;
            diesel::sql_query(sql.as_str())
                .bind::<Int4, _>(job.webhook_id)
                .bind::<BigInt, _>(after)
                .bind::<BigInt, _>(end_key)
                .bind::<Nullable<Timestamptz>, _>(job.since)
                .bind::<Nullable<Timestamptz>, _>(job.until)
                .bind::<Text, _>(status)
                .bind::<BigInt, _>(i64::try_from(chunk).unwrap_or(100))
                .load(&mut conn)
                .await
                .map_err(StorageError::from)?
        };
        if rows.is_empty() {
            return Ok(Ended::Completed);
        }
        let items = rows
            .into_iter()
            .map(|r| Item {
                key: r.id,
                event_id: r.event_id,
                event_type: r.event_type,
                body: Body::of_row(r.payload, r.body, format),
                attempt_number: r.last_attempt.saturating_add(1),
                traceparent: r.traceparent,
            })
            .collect();
        match send_chunk(ctx, &job, started_at, items, &mut pacer, stop).await {
            Ok((r, keep)) => {
                if let Some(k) = r.last_key {
                    after = k;
                }
                if !keep {
                    return Ok(Ended::Lost);
                }
                if r.stopped {
                    return Ok(Ended::Stopped);
                }
            }
            Err(JobError::Disabled) => {
                return Ok(Ended::Failed("the webhook is disabled".to_owned()));
            }
            Err(e) => return Err(e),
        }
    }
}

// ---------------------------------------------------------------- replay

/// The one subject filter that selects a webhook's events (NATS 2.9 takes
/// one filter per consumer; every pattern is one subject).
pub fn filter_subject(ns: &Namespace, pattern: &Pattern) -> String {
    match pattern {
        Pattern::All => ns.events_filter(),
        Pattern::Family(family) => ns.event_subject(&format!("{family}>")),
        Pattern::Exact(t) => ns.event_subject(t.as_str()),
    }
}

fn to_nats_time(t: DateTime<Utc>) -> Result<time::OffsetDateTime, JobError> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(
        t.timestamp_nanos_opt().unwrap_or(0),
    ))
    .map_err(|e| JobError::Other(format!("time out of range: {e}")))
}

fn from_nats_time(t: time::OffsetDateTime) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX))
}

/// How long a replay waits for the next stored event before it asks the
/// server whether there is one.
const REPLAY_IDLE: Duration = Duration::from_secs(3);

async fn drive_replay(
    ctx: &JobCtx,
    mut job: Job,
    hook: &Hook,
    started_at: DateTime<Utc>,
    stop: &CancellationToken,
) -> Result<Ended, JobError> {
    let pattern = match Pattern::parse(&hook.event_type) {
        Ok(p) => p,
        Err(e) => return Ok(Ended::Failed(e.to_string())),
    };
    let format = hook.target.body_format;
    let mut stream = match ctx.js.get_stream(ctx.ns.stream()).await {
        Ok(s) => s,
        Err(e) => {
            return Err(JobError::Other(format!(
                "cannot open the events stream: {e}"
            )));
        }
    };
    let info = stream
        .info()
        .await
        .map_err(|e| JobError::Other(format!("cannot read the events stream: {e}")))?;
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let first_seq = i64::try_from(first).unwrap_or(i64::MAX);
    let mut window = None;
    if job.end_key.is_none() {
        // Sequences of the window the stream no longer holds (of any type:
        // what they were is not known any more).
        let unavailable = match (job.since_seq, job.since) {
            (Some(s), _) => (first_seq - s.saturating_add(1)).max(0),
            (None, Some(since)) if first > 1 => match stream.get_raw_message(first).await {
                Ok(m) if from_nats_time(m.time) > since => first_seq - 1,
                _ => 0,
            },
            _ => 0,
        };
        window = Some(Window {
            total: 0,
            end_key: i64::try_from(last).unwrap_or(i64::MAX),
            unavailable,
            progress_key: job.since_seq,
        });
        job.end_key = Some(i64::try_from(last).unwrap_or(i64::MAX));
        job.progress_key = job.since_seq;
    }
    let end_key = u64::try_from(job.end_key.unwrap_or(0)).unwrap_or(0);
    let deliver_policy = match (job.progress_key, job.since) {
        (Some(k), _) => DeliverPolicy::ByStartSequence {
            start_sequence: u64::try_from(k.saturating_add(1)).unwrap_or(1).max(1),
        },
        (None, Some(since)) => DeliverPolicy::ByStartTime {
            start_time: to_nats_time(since)?,
        },
        (None, None) => DeliverPolicy::All,
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter_subject(&ctx.ns, &pattern),
            deliver_policy,
            description: Some(format!("delivery-worker replay job {}", job.id)),
            ..Default::default()
        })
        .await
        .map_err(|e| JobError::Other(format!("cannot open a replay consumer: {e}")))?;
    let pending = consumer.cached_info().num_pending;
    if let Some(mut w) = window {
        w.total = i64::try_from(pending).unwrap_or(i64::MAX);
        let mut conn = ctx.pool.get().await.map_err(StorageError::from)?;
        if !jobs::set_window(&mut conn, job.id, &ctx.cfg.owner, w).await? {
            return Ok(Ended::Lost);
        }
        tracing::info!(
            job_id = job.id,
            total = w.total,
            unavailable = w.unavailable,
            end_seq = w.end_key,
            "replay window fixed"
        );
    }
    let mut progress = job.progress_key.unwrap_or(0);
    if pending == 0 || u64::try_from(progress).unwrap_or(0) >= end_key {
        return Ok(Ended::Completed);
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| JobError::Other(format!("cannot read the replay consumer: {e}")))?;
    let chunk = chunk_size(job.rate_per_s);
    let mut pacer = Pacer::new(job.rate_per_s);
    let mut finished = false;
    while !finished {
        if stop.is_cancelled() {
            return Ok(Ended::Stopped);
        }
        let mut items = Vec::with_capacity(chunk);
        // Skipped messages (past `until`, not an envelope) still move the
        // progress on.
        let mut last_seen = None;
        while items.len() < chunk {
            let next = tokio::select! {
                _ = stop.cancelled() => break,
                n = tokio::time::timeout(REPLAY_IDLE, messages.next()) => n,
            };
            let msg = match next {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => {
                    return Err(JobError::Other(format!("replay consumer failed: {e}")));
                }
                Ok(None) => {
                    return Err(JobError::Other("replay consumer ended".to_owned()));
                }
                // Nothing more arrived: the window's last events were not
                // of this webhook's types, or were removed meanwhile.
                Err(_) => {
                    finished = true;
                    break;
                }
            };
            let Ok(info) = msg.info() else { continue };
            let (seq, left, published) = (info.stream_sequence, info.pending, info.published);
            if seq > end_key {
                finished = true;
                break;
            }
            let seq_key = i64::try_from(seq).unwrap_or(i64::MAX);
            if job.until.is_some_and(|u| from_nats_time(published) >= u) {
                finished = true;
                last_seen = Some(seq_key);
                break;
            }
            if left == 0 || seq == end_key {
                finished = true;
            }
            match Envelope::parse(&msg.payload) {
                Ok(env) if pattern.matches(env.event_type) => {
                    let traceparent = msg
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("traceparent"))
                        .map(|v| v.as_str().to_owned())
                        .filter(|v| v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()));
                    let canonical = Body::canonical(&serde_json::Value::Object(env.payload));
                    items.push(Item {
                        key: seq_key,
                        event_id: env.id,
                        event_type: env.event_type.as_str().to_owned(),
                        body: Body::of_event(&canonical, &msg.payload, format),
                        attempt_number: 1,
                        traceparent,
                    });
                }
                // Dead-lettered by the consumer; nothing to send.
                _ => last_seen = Some(seq_key),
            }
            if finished {
                break;
            }
        }
        let n = items.len();
        let (r, keep) = if n > 0 {
            match send_chunk(ctx, &job, started_at, items, &mut pacer, stop).await {
                Ok(x) => x,
                Err(JobError::Disabled) => {
                    return Ok(Ended::Failed("the webhook is disabled".to_owned()));
                }
                Err(e) => return Err(e),
            }
        } else {
            let r = ChunkResult {
                done: 0,
                failed: 0,
                last_key: last_seen,
                stopped: false,
            };
            let keep = record_progress(ctx, &job, &r).await?;
            (r, keep)
        };
        if let Some(k) = r.last_key {
            progress = progress.max(k);
        }
        if !keep {
            return Ok(Ended::Lost);
        }
        if r.stopped {
            return Ok(Ended::Stopped);
        }
        if let Some(k) = last_seen
            && k > progress
        {
            let r = ChunkResult {
                done: 0,
                failed: 0,
                last_key: Some(k),
                stopped: false,
            };
            if !record_progress(ctx, &job, &r).await? {
                return Ok(Ended::Lost);
            }
            progress = k;
        }
    }
    Ok(Ended::Completed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn one_filter_subject_per_pattern() {
        let ns = Namespace::new("p").unwrap();
        let f = |s: &str| filter_subject(&ns, &Pattern::parse(s).unwrap());
        assert_eq!(f("*"), "p.events.>");
        assert_eq!(f("ticket.*"), "p.events.ticket.>");
        assert_eq!(f("user.created"), "p.events.user.created");
    }

    #[tokio::test]
    async fn the_pacer_spreads_slots_and_saves_no_burst() {
        let mut p = Pacer::new(10);
        let a = p.slot();
        let b = p.slot();
        assert_eq!(b - a, Duration::from_millis(100));
        tokio::time::sleep(Duration::from_millis(350)).await;
        let c = p.slot();
        assert!(c >= Instant::now() - Duration::from_millis(5));
        assert_eq!(chunk_size(0), 1);
        assert_eq!(chunk_size(50), 50);
        assert_eq!(chunk_size(100_000), 500);
    }
}
