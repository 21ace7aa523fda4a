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
use futures::StreamExt;
use proto_events::{Envelope, Namespace, Pattern, PatternSet};
use storage::jobs::{self, Job, JobKind, JobStatus, RowsToResend, Window};
use storage::models::DeliveryStatus;
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
    pub operator: crate::operator::OperatorEvents,
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

impl Ended {
    fn disabled() -> Self {
        Ended::Failed("the webhook is disabled".to_owned())
    }
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
    let (id, owner, webhook_id) = (job.id, ctx.cfg.owner.clone(), job.webhook_id);
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
    if matches!(
        (&ended, &result),
        (Ended::Completed | Ended::Failed(_), Ok(true))
    ) {
        announce_end(ctx, webhook_id, id).await;
    }
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

/// Publishes `operator.job.finished` for a job that just ended.
async fn announce_end(ctx: &JobCtx, webhook_id: i32, job_id: i64) {
    let read = async {
        let mut conn = ctx.pool.get().await.map_err(StorageError::from)?;
        jobs::get(&mut conn, webhook_id, job_id).await
    };
    match read.await {
        Ok(Some(job)) => ctx.operator.job_finished(&job),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(job_id, error = %e, "cannot read the finished job; no operator event")
        }
    }
}

/// The webhook a job delivers to, read again for every chunk (a rotated
/// secret or a new URL applies at once; a disabled webhook stops the job).
struct Hook {
    target: Target,
    /// Its patterns, `event_type` first.
    patterns: Vec<String>,
    is_active: bool,
}

async fn load_hook(
    pool: &DbPool,
    keys: &storage::secrets::Keyring,
    webhook_id: i32,
) -> Result<Option<Hook>, StorageError> {
    let mut conn = pool.get().await?;
    let Some(w) = storage::webhooks::get_webhook(&mut conn, webhook_id).await? else {
        return Ok(None);
    };
    let filter = w
        .payload_filter
        .as_ref()
        .map(proto_events::filter::Filter::parse)
        .transpose()
        .map_err(|e| StorageError::Secrets(format!("its filter is not valid: {}", e.message)))?;
    // A pull webhook is never sent to (the registry refuses its jobs).
    let Some(sending) = w.sending() else {
        return Ok(None);
    };
    // A job's deliveries keep to the webhook's rate limit and circuit (the
    // job's own pace aside); they are not ordered.
    let circuit = storage::policy::circuit(pool, webhook_id).await?;
    let mut policy = crate::cache::Policy::of(&w, Some(circuit.state));
    policy.ordered_since = None;
    let target = Target::open(webhook_id, &sending, keys)
        .map_err(|e| StorageError::Secrets(e.to_string()))?
        .with_filter(filter)
        .with_policy(policy);
    Ok(Some(Hook {
        target,
        patterns: w.patterns().into_iter().map(str::to_owned).collect(),
        is_active: w.is_active,
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

async fn drive(ctx: &JobCtx, mut job: Job, stop: &CancellationToken) -> Result<Ended, JobError> {
    let Some(hook) = load_hook(&ctx.pool, &ctx.deliverer.keys, job.webhook_id).await? else {
        return Ok(Ended::Lost);
    };
    if !hook.is_active {
        return Ok(Ended::disabled());
    }
    // The claim sets it; a job resumed after a crash keeps its first start.
    job.started_at.get_or_insert_with(Utc::now);
    match job.kind {
        JobKind::Recover | JobKind::Retry => drive_rows(ctx, job, &hook, stop).await,
        JobKind::Replay => drive_replay(ctx, job, &hook, stop).await,
    }
}

/// What a chunk did, stored with the lease after it: items handled (in
/// order), of those failed, and the key of the last one.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    done: i64,
    failed: i64,
    last_key: Option<i64>,
}

impl Progress {
    /// No item handled, the window passed up to `last_key`.
    fn passed(last_key: Option<i64>) -> Self {
        Self {
            last_key,
            ..Self::default()
        }
    }
}

/// How a chunk ended.
enum ChunkEnd {
    /// Every item was handled.
    Finished,
    /// `stop` cut it short: the items after `last_key` run again later.
    Stopped,
    /// The job is no longer this replica's: paused, cancelled, taken over
    /// or its webhook deleted.
    Lost,
}

impl ChunkEnd {
    /// How the job ends here, unless it goes on to the next chunk.
    fn ended(&self) -> Option<Ended> {
        match self {
            ChunkEnd::Finished => None,
            ChunkEnd::Stopped => Some(Ended::Stopped),
            ChunkEnd::Lost => Some(Ended::Lost),
        }
    }
}

/// Sends one chunk of items with the webhook as it is now, skipping those
/// an earlier run already delivered, and stores the progress.
async fn send_chunk(
    ctx: &JobCtx,
    job: &Job,
    items: Vec<Item>,
    pacer: &mut Pacer,
    stop: &CancellationToken,
) -> Result<(Progress, ChunkEnd), JobError> {
    let Some(hook) = load_hook(&ctx.pool, &ctx.deliverer.keys, job.webhook_id).await? else {
        return Ok((Progress::default(), ChunkEnd::Lost));
    };
    if !hook.is_active {
        return Err(JobError::Disabled);
    }
    let started_at = job.started_at.unwrap_or_else(Utc::now);
    let seen = already_delivered(&ctx.pool, job.webhook_id, started_at, &items).await?;
    let n = items.len();
    // Stops taking new items on shutdown or when the job was cancelled;
    // deliveries already started finish and count.
    let chunk_stop = stop.child_token();
    let results = deliver_in_order(ctx, &hook.target, items, &seen, pacer, &chunk_stop);
    let taken = take_results(ctx, job, results, &chunk_stop).await;
    // Progress before an error is kept; the rest runs again later. After a
    // pause the write still lands (a cancel or a takeover ignores it).
    let kept = record_progress(ctx, job, &taken.progress).await? && !taken.lost;
    if let Some(e) = taken.error {
        return Err(e);
    }
    let end = if !kept {
        ChunkEnd::Lost
    } else if taken.handled < n {
        ChunkEnd::Stopped
    } else {
        ChunkEnd::Finished
    };
    Ok((taken.progress, end))
}

/// The items' deliveries, started strictly in order at the pacer's slots,
/// at most `concurrency` attempts at once (the permit is held for the HTTP
/// attempt only; writing an attempt's row overlaps with the next
/// attempts), until `stop`. Yields each item's key and outcome, in order.
fn deliver_in_order<'a>(
    ctx: &'a JobCtx,
    target: &'a Target,
    items: Vec<Item>,
    seen: &'a HashSet<String>,
    pacer: &'a mut Pacer,
    stop: &CancellationToken,
) -> impl futures::Stream<Item = Result<(i64, Outcome), JobError>> + 'a {
    let gate = Arc::new(Semaphore::new(ctx.cfg.concurrency.max(1)));
    futures::stream::iter(items)
        .take_until(stop.clone().cancelled_owned())
        .then(move |item| {
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
        .map(move |(item, permit)| deliver_item(&ctx.deliverer, target, item, permit))
        .buffered(RECORDS_IN_FLIGHT)
}

/// Delivers one item (none without a permit: already delivered) and
/// submits its row.
async fn deliver_item(
    deliverer: &Deliverer,
    target: &Target,
    item: Item,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Result<(i64, Outcome), JobError> {
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
            ordered: false,
            // A job sends events again, some of them older than any bound.
            stream_time: None,
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
    Ok((item.key, outcome))
}

/// What [`take_results`] saw.
struct Taken {
    progress: Progress,
    handled: usize,
    /// A lease renewal found the job gone.
    lost: bool,
    error: Option<JobError>,
}

/// Takes a chunk's results as they come (in order: everything up to a
/// result is done), renewing the lease meanwhile (a chunk can outlast it
/// with slow receivers). The first error, or a lost lease, stops the chunk.
async fn take_results(
    ctx: &JobCtx,
    job: &Job,
    results: impl futures::Stream<Item = Result<(i64, Outcome), JobError>>,
    chunk_stop: &CancellationToken,
) -> Taken {
    let mut results = std::pin::pin!(results);
    let mut taken = Taken {
        progress: Progress::default(),
        handled: 0,
        lost: false,
        error: None,
    };
    let mut renew = tokio::time::interval(ctx.cfg.lease / 3);
    renew.tick().await;
    loop {
        let r = tokio::select! {
            r = results.next() => match r {
                Some(r) => r,
                None => break,
            },
            _ = renew.tick() => {
                if !record_progress(ctx, job, &Progress::default()).await.unwrap_or(true) {
                    taken.lost = true;
                    chunk_stop.cancel();
                }
                continue;
            }
        };
        match r {
            Ok((key, outcome)) if taken.error.is_none() => {
                taken.handled += 1;
                taken.progress.done += 1;
                let label = match outcome {
                    Outcome::Sent { success: true } => "success",
                    Outcome::Sent { success: false } => {
                        taken.progress.failed += 1;
                        "failed"
                    }
                    Outcome::Queued => "queued",
                    Outcome::Skipped => "skipped",
                };
                ctx.metrics.job_item(job.kind.as_str(), label);
                taken.progress.last_key = Some(key);
            }
            Ok(_) => {}
            Err(e) => {
                chunk_stop.cancel();
                taken.error.get_or_insert(e);
            }
        }
    }
    taken
}

async fn record_progress(ctx: &JobCtx, job: &Job, p: &Progress) -> Result<bool, JobError> {
    let mut conn = ctx.pool.get().await.map_err(StorageError::from)?;
    Ok(jobs::record_progress(
        &mut conn,
        job.id,
        &ctx.cfg.owner,
        p.done,
        p.failed,
        p.last_key,
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
    if items.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<&str> = items.iter().map(|i| i.event_id.as_str()).collect();
    let mut conn = pool.get().await?;
    jobs::already_delivered(&mut conn, webhook_id, since, &ids).await
}

// ------------------------------------------------------ recover and retry

async fn drive_rows(
    ctx: &JobCtx,
    mut job: Job,
    hook: &Hook,
    stop: &CancellationToken,
) -> Result<Ended, JobError> {
    let format = hook.target.body_format;
    let status = job.delivery_status.unwrap_or(DeliveryStatus::Failed);
    let mut rows = RowsToResend {
        kind: job.kind,
        webhook_id: job.webhook_id,
        end_key: job.end_key.unwrap_or(0),
        since: job.since,
        until: job.until,
        status,
    };
    if job.end_key.is_none() {
        let mut conn = ctx.pool.get().await.map_err(StorageError::from)?;
        // Every id handed out so far: rows written after this are the
        // job's own (or live traffic), never part of its window.
        rows.end_key = RowsToResend::current_end(&mut conn).await?;
        let total = rows.count(&mut conn).await?;
        let window = Window {
            total,
            end_key: rows.end_key,
            unavailable: 0,
            progress_key: Some(0),
        };
        if !jobs::set_window(&mut conn, job.id, &ctx.cfg.owner, window).await? {
            return Ok(Ended::Lost);
        }
        tracing::info!(job_id = job.id, total, "job window fixed");
        job.progress_key = Some(0);
    }
    let chunk = chunk_size(job.rate_per_s);
    let mut pacer = Pacer::new(job.rate_per_s);
    let mut after = job.progress_key.unwrap_or(0);
    loop {
        if stop.is_cancelled() {
            return Ok(Ended::Stopped);
        }
        let found = {
            let mut conn = ctx.pool.get().await.map_err(StorageError::from)?;
            let limit = i64::try_from(chunk).unwrap_or(100);
            rows.chunk(&mut conn, after, limit).await?
        };
        if found.is_empty() {
            return Ok(Ended::Completed);
        }
        let items = found
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
        match send_chunk(ctx, &job, items, &mut pacer, stop).await {
            Ok((progress, end)) => {
                if let Some(k) = progress.last_key {
                    after = k;
                }
                if let Some(ended) = end.ended() {
                    return Ok(ended);
                }
            }
            Err(JobError::Disabled) => return Ok(Ended::disabled()),
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

pub(crate) fn from_nats_time(t: time::OffsetDateTime) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX))
}

/// How long a replay waits for the next stored event before it asks the
/// server whether there is one.
const REPLAY_IDLE: Duration = Duration::from_secs(3);

async fn drive_replay(
    ctx: &JobCtx,
    mut job: Job,
    hook: &Hook,
    stop: &CancellationToken,
) -> Result<Ended, JobError> {
    let patterns = match PatternSet::parse(hook.patterns.iter().map(String::as_str)) {
        Ok(p) => p,
        Err(e) => return Ok(Ended::Failed(e.to_string())),
    };
    // One pattern narrows the consumer to its subjects; several (which
    // NATS 2.9 cannot filter on together) read every event and match here.
    let subject = match hook.patterns.as_slice() {
        [one] => Pattern::parse(one).map(|p| filter_subject(&ctx.ns, &p)),
        _ => Ok(ctx.ns.events_filter()),
    };
    let subject = match subject {
        Ok(s) => s,
        Err(e) => return Ok(Ended::Failed(e.to_string())),
    };
    let mut feed = match open_replay(ctx, &mut job, subject, patterns, &hook.target).await? {
        Ok(feed) => feed,
        Err(ended) => return Ok(ended),
    };
    let mut progress = job.progress_key.unwrap_or(0);
    let chunk = chunk_size(job.rate_per_s);
    let mut pacer = Pacer::new(job.rate_per_s);
    let mut finished = false;
    while !finished {
        if stop.is_cancelled() {
            return Ok(Ended::Stopped);
        }
        let read = feed.read_chunk(chunk, job.until, stop).await?;
        finished = read.finished;
        let done = if read.items.is_empty() {
            let p = Progress::passed(read.last_seen);
            if !record_progress(ctx, &job, &p).await? {
                return Ok(Ended::Lost);
            }
            p
        } else {
            let (p, end) = match send_chunk(ctx, &job, read.items, &mut pacer, stop).await {
                Ok(x) => x,
                Err(JobError::Disabled) => return Ok(Ended::disabled()),
                Err(e) => return Err(e),
            };
            if let Some(ended) = end.ended() {
                return Ok(ended);
            }
            p
        };
        if let Some(k) = done.last_key {
            progress = progress.max(k);
        }
        // Skipped messages after the last item still move the progress on.
        if let Some(k) = read.last_seen
            && k > progress
        {
            if !record_progress(ctx, &job, &Progress::passed(Some(k))).await? {
                return Ok(Ended::Lost);
            }
            progress = k;
        }
    }
    Ok(Ended::Completed)
}

/// A replay's reading side: an ordered consumer of the webhook's events
/// from where the job stands, up to the window's end.
struct ReplayFeed {
    messages: jetstream::consumer::pull::Ordered,
    patterns: PatternSet,
    /// The webhook's payload filter.
    filter: Option<proto_events::filter::Filter>,
    format: storage::models::BodyFormat,
    /// The window's last stream sequence.
    end_seq: u64,
}

/// One chunk read from a replay's consumer.
struct ReplayRead {
    items: Vec<Item>,
    /// The last message read that is not an item (past `until`, not an
    /// envelope, not of the webhook's types): the progress moves past it.
    last_seen: Option<i64>,
    /// The window has no more messages.
    finished: bool,
}

/// Opens a replay: fixes its window the first time (its end, and the part
/// the stream no longer holds) and opens the consumer where the job stands.
/// `Err(ended)` when the job ends before it starts (lost, or nothing to
/// send).
async fn open_replay(
    ctx: &JobCtx,
    job: &mut Job,
    filter_subject: String,
    patterns: PatternSet,
    target: &Target,
) -> Result<Result<ReplayFeed, Ended>, JobError> {
    let stream = ctx
        .js
        .get_stream(ctx.ns.stream())
        .await
        .map_err(|e| JobError::Other(format!("cannot open the events stream: {e}")))?;
    let window = if job.end_key.is_none() {
        Some(replay_window(&stream, job).await?)
    } else {
        None
    };
    let end_seq = u64::try_from(job.end_key.unwrap_or(0)).unwrap_or(0);
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
            filter_subject,
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
            return Ok(Err(Ended::Lost));
        }
        tracing::info!(
            job_id = job.id,
            total = w.total,
            unavailable = w.unavailable,
            end_seq = w.end_key,
            "replay window fixed"
        );
    }
    let progress = u64::try_from(job.progress_key.unwrap_or(0)).unwrap_or(0);
    if pending == 0 || progress >= end_seq {
        return Ok(Err(Ended::Completed));
    }
    let messages = consumer
        .messages()
        .await
        .map_err(|e| JobError::Other(format!("cannot read the replay consumer: {e}")))?;
    Ok(Ok(ReplayFeed {
        messages,
        patterns,
        filter: target.filter.clone(),
        format: target.body_format,
        end_seq,
    }))
}

/// A new replay's window (its total is filled in once the consumer says
/// how many messages it holds): it ends at the stream's last sequence; the
/// sequences of the window the stream no longer holds are counted as
/// unavailable (of any type: what they were is not known any more). Sets
/// the job's end and starting point to match.
async fn replay_window(
    stream: &jetstream::stream::Stream,
    job: &mut Job,
) -> Result<Window, JobError> {
    let info = stream
        .get_info()
        .await
        .map_err(|e| JobError::Other(format!("cannot read the events stream: {e}")))?;
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let first_seq = i64::try_from(first).unwrap_or(i64::MAX);
    let unavailable = match (job.since_seq, job.since) {
        (Some(s), _) => (first_seq - s.saturating_add(1)).max(0),
        (None, Some(since)) if first > 1 => match stream.get_raw_message(first).await {
            Ok(m) if from_nats_time(m.time) > since => first_seq - 1,
            _ => 0,
        },
        _ => 0,
    };
    let end_key = i64::try_from(last).unwrap_or(i64::MAX);
    job.end_key = Some(end_key);
    job.progress_key = job.since_seq;
    Ok(Window {
        total: 0,
        end_key,
        unavailable,
        progress_key: job.since_seq,
    })
}

impl ReplayFeed {
    /// Reads up to `chunk` items, stopping early at the window's end, at
    /// `until`, when nothing arrives for [`REPLAY_IDLE`] (the window's last
    /// events were not of this webhook's types, or were removed
    /// meanwhile), or on `stop`.
    async fn read_chunk(
        &mut self,
        chunk: usize,
        until: Option<DateTime<Utc>>,
        stop: &CancellationToken,
    ) -> Result<ReplayRead, JobError> {
        let mut read = ReplayRead {
            items: Vec::with_capacity(chunk),
            last_seen: None,
            finished: false,
        };
        while read.items.len() < chunk {
            let next = tokio::select! {
                _ = stop.cancelled() => break,
                n = tokio::time::timeout(REPLAY_IDLE, self.messages.next()) => n,
            };
            let msg = match next {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => {
                    return Err(JobError::Other(format!("replay consumer failed: {e}")));
                }
                Ok(None) => return Err(JobError::Other("replay consumer ended".to_owned())),
                Err(_) => {
                    read.finished = true;
                    break;
                }
            };
            let Ok(info) = msg.info() else { continue };
            let (seq, left, published) = (info.stream_sequence, info.pending, info.published);
            if seq > self.end_seq {
                read.finished = true;
                break;
            }
            let seq_key = i64::try_from(seq).unwrap_or(i64::MAX);
            if until.is_some_and(|u| from_nats_time(published) >= u) {
                read.finished = true;
                read.last_seen = Some(seq_key);
                break;
            }
            read.finished = left == 0 || seq == self.end_seq;
            match self.item(&msg, seq_key) {
                Some(item) => read.items.push(item),
                // Dead-lettered by the consumer; nothing to send.
                None => read.last_seen = Some(seq_key),
            }
            if read.finished {
                break;
            }
        }
        Ok(read)
    }

    /// The item of a stored event of the webhook's types.
    fn item(&self, msg: &jetstream::Message, key: i64) -> Option<Item> {
        let env = Envelope::parse(&msg.payload).ok()?;
        if !self.patterns.matches(env.event_type)
            || self
                .filter
                .as_ref()
                .is_some_and(|f| !f.matches(&env.payload))
        {
            return None;
        }
        let traceparent = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .map(|v| v.as_str().to_owned())
            .filter(|v| v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()));
        let canonical = Body::canonical(&serde_json::Value::Object(env.payload));
        Some(Item {
            key,
            event_id: env.id,
            event_type: env.event_type.as_str().to_owned(),
            body: Body::of_event(&canonical, &msg.payload, self.format),
            attempt_number: 1,
            traceparent,
        })
    }
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
