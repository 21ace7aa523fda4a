//! Background jobs of one webhook: recover, replay and bulk retry
//! (docs/architecture.md, "Replay, recover and bulk retry").
//!
//! The registry creates a job (at most one unfinished job per webhook, kept
//! by a partial unique index), pauses, resumes and cancels it; a
//! delivery-worker replica
//! claims it with `FOR UPDATE SKIP LOCKED` and a lease, stores its window
//! when it starts and its progress as it goes, and finishes it. A replica
//! that stops hands the job back; one that dies loses the lease, and the
//! next claim resumes the job after its stored `progress_key`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Double, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use strum::VariantArray;

use crate::StorageError;
use crate::models::DeliveryStatus;
use crate::schema::webhook_jobs;

crate::text_enum::text_enum! {
    /// What a job does.
    pub enum JobKind {
        Recover,
        Replay,
        Retry,
    }
}

crate::text_enum::text_enum! {
    /// Where a job is. `queued`, `running` and `paused` are unfinished; only
    /// `queued` (and `running` with a lapsed lease) is claimed.
    pub enum JobStatus {
        Queued,
        Running,
        Paused,
        Completed,
        Cancelled,
        Failed,
    }
}

impl JobStatus {
    /// The statuses of a webhook's one unfinished job.
    pub const UNFINISHED: [JobStatus; 3] =
        [JobStatus::Queued, JobStatus::Running, JobStatus::Paused];

    pub fn is_finished(self) -> bool {
        !Self::UNFINISHED.contains(&self)
    }
}

/// A `webhook_jobs` row.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = webhook_jobs, check_for_backend(diesel::pg::Pg))]
pub struct Job {
    pub id: i64,
    pub webhook_id: i32,
    pub kind: JobKind,
    pub status: JobStatus,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub since_seq: Option<i64>,
    pub delivery_status: Option<DeliveryStatus>,
    pub rate_per_s: i32,
    pub total: Option<i64>,
    pub done: i64,
    pub failed: i64,
    pub unavailable: i64,
    pub progress_key: Option<i64>,
    pub end_key: Option<i64>,
    pub error: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl Job {
    pub fn is_finished(&self) -> bool {
        self.status.is_finished()
    }
}

/// A job to create.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = webhook_jobs, check_for_backend(diesel::pg::Pg))]
pub struct NewJob {
    pub webhook_id: i32,
    pub kind: JobKind,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub since_seq: Option<i64>,
    pub delivery_status: Option<DeliveryStatus>,
    pub rate_per_s: i32,
}

/// What [`create`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// A new job.
    New(Job),
    /// The webhook already had an unfinished job: that one.
    Existing(Job),
}

/// Creates a job unless the webhook has an unfinished one, which is
/// returned instead. The webhook must exist (a foreign key violation
/// otherwise).
pub async fn create(conn: &mut AsyncPgConnection, new: NewJob) -> Result<Created, StorageError> {
    use webhook_jobs::dsl as j;
    // The unfinished job may finish between the insert and the read; a few
    // rounds settle it.
    for _ in 0..5 {
        let inserted: Option<Job> = diesel::insert_into(j::webhook_jobs)
            .values(new.clone())
            .on_conflict_do_nothing()
            .returning(Job::as_returning())
            .get_result(conn)
            .await
            .optional()?;
        if let Some(job) = inserted {
            return Ok(Created::New(job));
        }
        let active: Option<Job> = j::webhook_jobs
            .filter(j::webhook_id.eq(new.webhook_id))
            .filter(j::status.eq_any(JobStatus::UNFINISHED))
            .select(Job::as_select())
            .first(conn)
            .await
            .optional()?;
        if let Some(job) = active {
            return Ok(Created::Existing(job));
        }
    }
    Err(StorageError::Config(
        "the webhook's jobs keep changing; try again".to_owned(),
    ))
}

/// One job of one webhook.
pub async fn get(
    conn: &mut AsyncPgConnection,
    webhook_id: i32,
    job_id: i64,
) -> Result<Option<Job>, StorageError> {
    use webhook_jobs::dsl as j;
    Ok(j::webhook_jobs
        .filter(j::id.eq(job_id))
        .filter(j::webhook_id.eq(webhook_id))
        .select(Job::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// A webhook's jobs, newest first.
pub async fn list(
    conn: &mut AsyncPgConnection,
    webhook_id: i32,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Job>, i64), StorageError> {
    use webhook_jobs::dsl as j;
    let total: i64 = j::webhook_jobs
        .filter(j::webhook_id.eq(webhook_id))
        .count()
        .get_result(conn)
        .await?;
    let items = j::webhook_jobs
        .filter(j::webhook_id.eq(webhook_id))
        .order(j::id.desc())
        .limit(limit)
        .offset(offset)
        .select(Job::as_select())
        .load(conn)
        .await?;
    Ok((items, total))
}

/// Cancels an unfinished job (also a paused one); the worker running it
/// stops at its next progress write. A finished job is returned as it is.
pub async fn cancel(
    conn: &mut AsyncPgConnection,
    webhook_id: i32,
    job_id: i64,
) -> Result<Option<Job>, StorageError> {
    use webhook_jobs::dsl as j;
    let cancelled: Option<Job> = diesel::update(
        j::webhook_jobs
            .filter(j::id.eq(job_id))
            .filter(j::webhook_id.eq(webhook_id))
            .filter(j::status.eq_any(JobStatus::UNFINISHED)),
    )
    .set((
        j::status.eq(JobStatus::Cancelled),
        j::finished_at.eq(diesel::dsl::now),
        j::updated_at.eq(diesel::dsl::now),
        j::lease_owner.eq(None::<String>),
        j::lease_until.eq(None::<DateTime<Utc>>),
    ))
    .returning(Job::as_returning())
    .get_result(conn)
    .await
    .optional()?;
    match cancelled {
        Some(job) => Ok(Some(job)),
        None => get(conn, webhook_id, job_id).await,
    }
}

/// What [`pause`] and [`resume`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Changed {
    /// The job now has the asked-for status (or already had it).
    Done(Job),
    /// The job is finished (or, for a resume, not paused): as it is.
    Refused(Job),
}

/// Pauses a queued or running job. A running job's replica finishes the
/// deliveries in flight, stores their progress and stops; no replica
/// claims a paused job.
pub async fn pause(
    conn: &mut AsyncPgConnection,
    webhook_id: i32,
    job_id: i64,
) -> Result<Option<Changed>, StorageError> {
    let from = [JobStatus::Queued, JobStatus::Running];
    transition(conn, webhook_id, job_id, &from, JobStatus::Paused, &[]).await
}

/// Resumes a paused job: queued again, claimable by any replica at once,
/// its progress kept. A job already queued or running is left as it is.
pub async fn resume(
    conn: &mut AsyncPgConnection,
    webhook_id: i32,
    job_id: i64,
) -> Result<Option<Changed>, StorageError> {
    let already = [JobStatus::Queued, JobStatus::Running];
    transition(
        conn,
        webhook_id,
        job_id,
        &[JobStatus::Paused],
        JobStatus::Queued,
        &already,
    )
    .await
}

/// Moves a job from one of `from` to `to`; a job already in `to` or in
/// `already` is [`Changed::Done`] as it is, any other [`Changed::Refused`].
async fn transition(
    conn: &mut AsyncPgConnection,
    webhook_id: i32,
    job_id: i64,
    from: &[JobStatus],
    to: JobStatus,
    already: &[JobStatus],
) -> Result<Option<Changed>, StorageError> {
    use webhook_jobs::dsl as j;
    let moved: Option<Job> = diesel::update(
        j::webhook_jobs
            .filter(j::id.eq(job_id))
            .filter(j::webhook_id.eq(webhook_id))
            .filter(j::status.eq_any(from)),
    )
    .set((j::status.eq(to), j::updated_at.eq(diesel::dsl::now)))
    .returning(Job::as_returning())
    .get_result(conn)
    .await
    .optional()?;
    if let Some(job) = moved {
        return Ok(Some(Changed::Done(job)));
    }
    Ok(get(conn, webhook_id, job_id).await?.map(|job| {
        if job.status == to || already.contains(&job.status) {
            Changed::Done(job)
        } else {
            Changed::Refused(job)
        }
    }))
}

/// Claims the oldest job that is queued or whose lease ran out, for
/// `owner` and `lease`; `started_at` is set the first time. Only kinds this
/// build knows are claimed (a newer replica runs the others).
pub async fn claim(
    conn: &mut AsyncPgConnection,
    owner: &str,
    lease: Duration,
) -> Result<Option<Job>, StorageError> {
    Ok(diesel::sql_query(
        "WITH next AS ( \
           SELECT id FROM webhook_jobs \
           WHERE (status = 'queued' OR (status = 'running' AND lease_until < now())) \
             AND kind = ANY($3) \
           ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED \
         ) \
         UPDATE webhook_jobs j SET status = 'running', lease_owner = $1, \
           lease_until = now() + make_interval(secs => $2), \
           started_at = COALESCE(j.started_at, now()), updated_at = now() \
         FROM next WHERE j.id = next.id \
         RETURNING j.*",
    )
    .bind::<Text, _>(owner)
    .bind::<Double, _>(lease.as_secs_f64())
    .bind::<Array<Text>, _>(
        JobKind::VARIANTS
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>(),
    )
    .get_result(conn)
    .await
    .optional()?)
}

/// The window a job covers, fixed when it first starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub total: i64,
    pub end_key: i64,
    pub unavailable: i64,
    pub progress_key: Option<i64>,
}

/// Stores the window of a job `owner` holds; `false` when it lost the job.
pub async fn set_window(
    conn: &mut AsyncPgConnection,
    job_id: i64,
    owner: &str,
    window: Window,
) -> Result<bool, StorageError> {
    use webhook_jobs::dsl as j;
    let n = diesel::update(
        j::webhook_jobs
            .filter(j::id.eq(job_id))
            .filter(j::lease_owner.eq(owner))
            .filter(j::status.eq(JobStatus::Running)),
    )
    .set((
        j::total.eq(window.total),
        j::end_key.eq(window.end_key),
        j::unavailable.eq(window.unavailable),
        j::progress_key.eq(window.progress_key),
        j::updated_at.eq(diesel::dsl::now),
    ))
    .execute(conn)
    .await?;
    Ok(n == 1)
}

/// Adds progress to a job `owner` holds and renews its lease; `false` when
/// the job was paused, cancelled or taken over (the caller stops). A paused
/// job still takes the progress of what was in flight when it was paused.
pub async fn record_progress(
    conn: &mut AsyncPgConnection,
    job_id: i64,
    owner: &str,
    done: i64,
    failed: i64,
    progress_key: Option<i64>,
    lease: Duration,
) -> Result<bool, StorageError> {
    let n = diesel::sql_query(
        "UPDATE webhook_jobs SET done = done + $3, failed = failed + $4, \
           progress_key = COALESCE($5, progress_key), \
           lease_until = now() + make_interval(secs => $6), updated_at = now() \
         WHERE id = $1 AND lease_owner = $2 AND status IN ('running', 'paused') \
         RETURNING status",
    )
    .bind::<BigInt, _>(job_id)
    .bind::<Text, _>(owner)
    .bind::<BigInt, _>(done)
    .bind::<BigInt, _>(failed)
    .bind::<Nullable<BigInt>, _>(progress_key)
    .bind::<Double, _>(lease.as_secs_f64())
    .get_result::<StatusRow>(conn)
    .await
    .optional()?;
    Ok(n.is_some_and(|r| r.status == JobStatus::Running))
}

#[derive(QueryableByName)]
struct StatusRow {
    #[diesel(sql_type = Text)]
    status: JobStatus,
}

/// Ends a job `owner` holds with `final_status` (`completed` or `failed`).
/// A completed job's `total` becomes what it handled.
pub async fn finish(
    conn: &mut AsyncPgConnection,
    job_id: i64,
    owner: &str,
    final_status: JobStatus,
    error: Option<&str>,
) -> Result<bool, StorageError> {
    let n = diesel::sql_query(
        "UPDATE webhook_jobs SET status = $3, error = $4, finished_at = now(), updated_at = now(), \
           total = CASE WHEN $3 = 'completed' THEN done ELSE total END, \
           lease_owner = NULL, lease_until = NULL \
         WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
    )
    .bind::<BigInt, _>(job_id)
    .bind::<Text, _>(owner)
    .bind::<Text, _>(final_status)
    .bind::<Nullable<Text>, _>(error)
    .execute(conn)
    .await?;
    Ok(n == 1)
}

/// Hands a job back (this replica is stopping): queued again, claimable by
/// any replica at once, its progress kept.
pub async fn release(
    conn: &mut AsyncPgConnection,
    job_id: i64,
    owner: &str,
) -> Result<bool, StorageError> {
    let n = diesel::sql_query(
        "UPDATE webhook_jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL, \
           updated_at = now() \
         WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
    )
    .bind::<BigInt, _>(job_id)
    .bind::<Text, _>(owner)
    .execute(conn)
    .await?;
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use strum::VariantArray;

    use super::{JobKind, JobStatus};

    fn names<T: Copy + Into<&'static str>>(all: &[T]) -> Vec<&'static str> {
        all.iter().map(|v| (*v).into()).collect()
    }

    #[test]
    fn kinds_and_statuses_keep_the_stored_strings() {
        assert_eq!(names(JobKind::VARIANTS), ["recover", "replay", "retry"]);
        assert_eq!(
            names(JobStatus::VARIANTS),
            [
                "queued",
                "running",
                "paused",
                "completed",
                "cancelled",
                "failed"
            ]
        );
        assert_eq!(JobKind::Replay.as_str(), "replay");
        assert_eq!("paused".parse::<JobStatus>().unwrap(), JobStatus::Paused);
        assert_eq!(
            serde_json::to_string(&JobStatus::Cancelled).unwrap(),
            "\"cancelled\""
        );
        assert_eq!(
            names(&JobStatus::UNFINISHED),
            ["queued", "running", "paused"]
        );
        assert!(JobStatus::Completed.is_finished() && !JobStatus::Paused.is_finished());
    }
}

// ------------------------------------------------ the rows a job sends again

/// The WHERE clause of the rows a recover sends again (`r` is the row):
/// an event's latest row (as of the job's window) failed, and its first
/// attempt lies in the window. Binds: `$1` webhook, `$2` after this id,
/// `$3` up to this id, `$4`/`$5` the window, `$6` the status (unused).
macro_rules! recover_rows {
    () => {
        "r.webhook_id = $1 AND r.event_id IS NOT NULL AND r.event_type <> 'webhook.test' \
         AND r.id > $2 AND r.id <= $3 AND r.status = 'failed' \
         AND NOT EXISTS (SELECT 1 FROM webhook_deliveries l WHERE l.event_id = r.event_id \
           AND l.webhook_id = r.webhook_id AND l.id > r.id AND l.id <= $3) \
         AND EXISTS (SELECT 1 FROM webhook_deliveries f WHERE f.event_id = r.event_id \
           AND f.webhook_id = r.webhook_id AND f.attempt_number = 1 \
           AND ($4::timestamptz IS NULL OR f.created_at >= $4) \
           AND ($5::timestamptz IS NULL OR f.created_at < $5)) \
         AND $6::text IS NOT NULL"
    };
}

/// The WHERE clause of the rows a bulk retry sends again: an event's first
/// row with the status in the window, unless the event has a retry pending
/// already. Binds as [`recover_rows`].
macro_rules! retry_rows {
    () => {
        "r.webhook_id = $1 AND r.event_id IS NOT NULL AND r.event_type <> 'webhook.test' \
         AND r.id > $2 AND r.id <= $3 AND r.status = $6 \
         AND ($4::timestamptz IS NULL OR r.created_at >= $4) \
         AND ($5::timestamptz IS NULL OR r.created_at < $5) \
         AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e WHERE e.event_id = r.event_id \
           AND e.webhook_id = r.webhook_id AND e.status = $6 AND e.id < r.id \
           AND ($4::timestamptz IS NULL OR e.created_at >= $4) \
           AND ($5::timestamptz IS NULL OR e.created_at < $5)) \
         AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p WHERE p.event_id = r.event_id \
           AND p.webhook_id = r.webhook_id AND p.status = 'pending')"
    };
}

/// A chunk of rows: `$7` rows after `$2`, in id order, each with the
/// event's highest attempt number.
macro_rules! rows_chunk {
    ($rule:expr) => {
        concat!(
            "SELECT r.id, r.event_id::text AS event_id, r.event_type::text AS event_type, \
               r.payload::text AS payload, r.traceparent::text AS traceparent, r.body, \
               (SELECT max(m.attempt_number) FROM webhook_deliveries m \
                WHERE m.event_id = r.event_id AND m.webhook_id = r.webhook_id) AS last_attempt \
             FROM webhook_deliveries r WHERE ",
            $rule,
            " ORDER BY r.id LIMIT $7"
        )
    };
}

macro_rules! rows_count {
    ($rule:expr) => {
        concat!(
            "SELECT count(*)::int8 AS n FROM webhook_deliveries r WHERE ",
            $rule
        )
    };
}

/// The delivery rows a recover or bulk retry job sends again.
#[derive(Debug, Clone, Copy)]
pub struct RowsToResend {
    /// Recover or retry (a replay reads the stream, not rows).
    pub kind: JobKind,
    pub webhook_id: i32,
    /// The window's end: the last delivery id handed out when the job
    /// started (rows written later are the job's own, or live traffic).
    pub end_key: i64,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// The status a bulk retry selects.
    pub status: DeliveryStatus,
}

/// One row a job sends again.
#[derive(Debug, QueryableByName)]
pub struct RowToResend {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub event_id: String,
    #[diesel(sql_type = Text)]
    pub event_type: String,
    #[diesel(sql_type = Text)]
    pub payload: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub traceparent: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub body: Option<String>,
    /// The event's highest attempt number for the webhook.
    #[diesel(sql_type = diesel::sql_types::Int4)]
    pub last_attempt: i32,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

impl RowsToResend {
    /// The last delivery id handed out so far: the end of a new window.
    pub async fn current_end(conn: &mut AsyncPgConnection) -> Result<i64, StorageError> {
        let end: Count = diesel::sql_query(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END::int8 AS n \
             FROM webhook_deliveries_id_seq",
        )
        .get_result(conn)
        .await?;
        Ok(end.n)
    }

    /// How many rows the window holds.
    pub async fn count(&self, conn: &mut AsyncPgConnection) -> Result<i64, StorageError> {
        let sql = match self.kind {
            JobKind::Recover => rows_count!(recover_rows!()),
            _ => rows_count!(retry_rows!()),
        };
        let n: Count = self.bind(sql, 0).get_result(conn).await?;
        Ok(n.n)
    }

    /// Up to `limit` rows after the row `after`, in id order.
    pub async fn chunk(
        &self,
        conn: &mut AsyncPgConnection,
        after: i64,
        limit: i64,
    ) -> Result<Vec<RowToResend>, StorageError> {
        let sql = match self.kind {
            JobKind::Recover => rows_chunk!(recover_rows!()),
            _ => rows_chunk!(retry_rows!()),
        };
        Ok(self
            .bind(sql, after)
            .bind::<BigInt, _>(limit)
            .load(conn)
            .await?)
    }

    /// `$1` to `$6` of both statements.
    fn bind(
        &self,
        sql: &'static str,
        after: i64,
    ) -> diesel::query_builder::BoxedSqlQuery<
        'static,
        diesel::pg::Pg,
        diesel::query_builder::SqlQuery,
    > {
        diesel::sql_query(sql)
            .into_boxed()
            .bind::<diesel::sql_types::Int4, _>(self.webhook_id)
            .bind::<BigInt, _>(after)
            .bind::<BigInt, _>(self.end_key)
            .bind::<Nullable<diesel::sql_types::Timestamptz>, _>(self.since)
            .bind::<Nullable<diesel::sql_types::Timestamptz>, _>(self.until)
            .bind::<Text, _>(self.status)
    }
}

/// The events of `event_ids` with a row for this webhook written since
/// `since` (sent, or queued, by an earlier run of a job that started then).
pub async fn already_delivered(
    conn: &mut AsyncPgConnection,
    webhook_id: i32,
    since: DateTime<Utc>,
    event_ids: &[&str],
) -> Result<std::collections::HashSet<String>, StorageError> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = Text)]
        event_id: String,
    }
    if event_ids.is_empty() {
        return Ok(Default::default());
    }
    let rows: Vec<Id> = diesel::sql_query(
        "SELECT DISTINCT event_id::text AS event_id FROM webhook_deliveries \
         WHERE event_id = ANY($1) AND webhook_id = $2 AND created_at >= $3",
    )
    .bind::<Array<Text>, _>(event_ids)
    .bind::<diesel::sql_types::Int4, _>(webhook_id)
    .bind::<diesel::sql_types::Timestamptz, _>(since)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.event_id).collect())
}
