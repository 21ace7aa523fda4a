//! Delivery history as daily partitions of `webhook_deliveries`: creating
//! them ahead of time and dropping them past the retention
//! (docs/architecture.md, "Delivery history").
//!
//! A partition holds the rows whose `created_at` falls on one UTC day and is
//! named `webhook_deliveries_pYYYYMMDD`. Dropping one is a `DROP TABLE`:
//! no row-by-row DELETE, no vacuum debt. Pending rows (queued attempts) are
//! moved to today's partition first, so a drop never loses a retry.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use diesel::sql_types::{BigInt, Date, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::StorageError;
use crate::counts::{self, CountDelta, CountDeltas};

/// The advisory lock that keeps maintenance to one process at a time.
const MAINTENANCE_LOCK: i64 = 7_263_540_002;
const PARTITION_PREFIX: &str = "webhook_deliveries_p";

/// One daily partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub day: NaiveDate,
}

/// What dropping one partition removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub partition: Partition,
    /// Rows dropped with it.
    pub rows: i64,
    /// Its size on disk, indexes included.
    pub bytes: i64,
    /// Pending rows moved to today's partition instead of being dropped.
    pub moved_pending: i64,
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(diesel::QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    relname: String,
}

/// Creates the missing partitions for the days `first..=last`; returns how
/// many it created. Safe to call from several processes at once.
pub async fn ensure_partitions(
    conn: &mut AsyncPgConnection,
    first: NaiveDate,
    last: NaiveDate,
) -> Result<i64, StorageError> {
    let created: Count =
        diesel::sql_query("SELECT webhook_deliveries_ensure_partitions($1, $2)::int8 AS n")
            .bind::<Date, _>(first)
            .bind::<Date, _>(last)
            .get_result(conn)
            .await?;
    Ok(created.n)
}

/// The partitions that exist, oldest first.
pub async fn partitions(conn: &mut AsyncPgConnection) -> Result<Vec<Partition>, StorageError> {
    let names: Vec<Name> = diesel::sql_query(
        "SELECT c.relname::text AS relname FROM pg_inherits i \
         JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'webhook_deliveries'::regclass ORDER BY 1",
    )
    .load(conn)
    .await?;
    Ok(names
        .into_iter()
        .filter_map(|n| {
            let day =
                NaiveDate::parse_from_str(n.relname.strip_prefix(PARTITION_PREFIX)?, "%Y%m%d")
                    .ok()?;
            Some(Partition {
                name: n.relname,
                day,
            })
        })
        .collect())
}

/// Drops one partition in one transaction: moves its pending rows to
/// today's partition, drops its counter rows, then the table. Readers see
/// the rows and the totals change together.
pub async fn drop_partition(
    conn: &mut AsyncPgConnection,
    partition: &Partition,
) -> Result<Dropped, StorageError> {
    let partition = partition.clone();
    conn.transaction::<_, StorageError, _>(async |c| {
        // DROP TABLE waits for the lock on the parent behind running
        // writes; a bounded wait keeps it from stalling deliveries queued
        // behind it. A timeout fails the drop, which runs again later.
        diesel::sql_query("SET LOCAL lock_timeout = '2s'")
            .execute(c)
            .await?;
        let bytes: Count =
            diesel::sql_query("SELECT pg_total_relation_size($1::text::regclass)::int8 AS n")
                .bind::<Text, _>(&partition.name)
                .get_result(c)
                .await?;
        let from = partition
            .day
            .and_hms_opt(0, 0, 0)
            .unwrap_or_default()
            .and_utc();
        let to = from + chrono::Duration::days(1);
        let moved: Vec<CountDelta> = diesel::sql_query(
            "WITH moved AS ( \
               UPDATE webhook_deliveries SET created_at = now() \
               WHERE created_at >= $1 AND created_at < $2 AND status = 'pending' \
               RETURNING webhook_id, created_at \
             ) \
             SELECT webhook_id, (created_at AT TIME ZONE 'UTC')::date AS day, \
               'pending'::text AS status, count(*)::int8 AS n \
             FROM moved GROUP BY 1, 2",
        )
        .bind::<Timestamptz, _>(from)
        .bind::<Timestamptz, _>(to)
        .load(c)
        .await?;
        let rows: Count = diesel::sql_query(
            "SELECT COALESCE(sum(n), 0)::int8 AS n FROM delivery_day_counts WHERE day = $1",
        )
        .bind::<Date, _>(partition.day)
        .get_result(c)
        .await?;
        diesel::sql_query("DELETE FROM webhook_delivery_counts WHERE day = $1")
            .bind::<Date, _>(partition.day)
            .execute(c)
            .await?;
        diesel::sql_query("DELETE FROM delivery_day_counts WHERE day = $1")
            .bind::<Date, _>(partition.day)
            .execute(c)
            .await?;
        let moved_pending = moved.iter().map(|d| d.n).sum::<i64>();
        let mut deltas = CountDeltas::default();
        deltas.extend(moved);
        counts::apply(c, &deltas).await?;
        // The name comes from pg_class and is quoted as an identifier.
        diesel::sql_query(format!(
            "DROP TABLE \"{}\"",
            partition.name.replace('"', "\"\"")
        ))
        .execute(c)
        .await?;
        // The audit's events of the same day go with their deliveries.
        diesel::sql_query(format!(
            "DROP TABLE IF EXISTS delivery_events_p{}",
            partition.day.format("%Y%m%d")
        ))
        .execute(c)
        .await?;
        Ok(Dropped {
            rows: rows.n - moved_pending,
            bytes: bytes.n,
            moved_pending,
            partition,
        })
    })
    .await
}

/// Drops every partition whose whole day is older than `cutoff`.
pub async fn drop_older_than(
    conn: &mut AsyncPgConnection,
    cutoff: DateTime<Utc>,
) -> Result<Vec<Dropped>, StorageError> {
    let mut dropped = Vec::new();
    for p in partitions(conn).await? {
        let end = (p.day + chrono::Duration::days(1))
            .and_hms_opt(0, 0, 0)
            .unwrap_or_default()
            .and_utc();
        if end <= cutoff {
            dropped.push(drop_partition(conn, &p).await?);
        }
    }
    Ok(dropped)
}

/// How the history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Rows older than this are dropped; `None` keeps everything.
    pub retention: Option<Duration>,
    /// Days of partitions created ahead of today.
    pub days_ahead: u32,
}

/// What one maintenance run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    /// Another process held the maintenance lock, so nothing was done.
    pub skipped: bool,
    pub created: i64,
    pub dropped: Vec<Dropped>,
}

/// Creates the partitions from yesterday to `days_ahead` days ahead and
/// applies the retention, unless another process is doing it right now.
pub async fn maintain(
    conn: &mut AsyncPgConnection,
    policy: HistoryPolicy,
    now: DateTime<Utc>,
) -> Result<MaintenanceReport, StorageError> {
    #[derive(diesel::QueryableByName)]
    struct Locked {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        locked: bool,
    }
    let lock: Locked = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS locked")
        .bind::<BigInt, _>(MAINTENANCE_LOCK)
        .get_result(conn)
        .await?;
    if !lock.locked {
        return Ok(MaintenanceReport {
            skipped: true,
            ..MaintenanceReport::default()
        });
    }
    let result = maintain_locked(conn, policy, now).await;
    // A session lock: released here, or when the connection closes.
    let unlocked = diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(MAINTENANCE_LOCK)
        .execute(conn)
        .await;
    let report = result?;
    unlocked?;
    Ok(report)
}

async fn maintain_locked(
    conn: &mut AsyncPgConnection,
    policy: HistoryPolicy,
    now: DateTime<Utc>,
) -> Result<MaintenanceReport, StorageError> {
    let today = counts::day_of(now);
    let created = ensure_partitions(
        conn,
        today - chrono::Duration::days(1),
        today + chrono::Duration::days(i64::from(policy.days_ahead)),
    )
    .await?;
    let dropped = match policy.retention {
        Some(keep) => {
            let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
            match now.checked_sub_signed(keep) {
                Some(cutoff) => drop_older_than(conn, cutoff).await?,
                None => Vec::new(),
            }
        }
        None => Vec::new(),
    };
    Ok(MaintenanceReport {
        skipped: false,
        created,
        dropped,
    })
}

/// Parses `DELIVERY_RETENTION`: a duration such as `30d` or `12h`; `0`
/// keeps everything.
pub fn parse_retention(s: &str) -> Result<Option<Duration>, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(None);
    }
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Ok(None),
        Ok(d) => Ok(Some(d)),
        Err(e) => Err(format!(
            "invalid duration {s:?} ({e}); use e.g. 30d, 12h or 0"
        )),
    }
}

/// `true` when the error is an insert that found no partition for its row.
pub fn is_missing_partition(e: &diesel::result::Error) -> bool {
    matches!(
        e,
        diesel::result::Error::DatabaseError(_, info)
            if info.message().starts_with("no partition of relation")
    )
}

/// `DELIVERY_RETENTION`: how long delivery rows are kept (`None`: forever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention(pub Option<Duration>);

impl std::str::FromStr for Retention {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_retention(s).map(Retention)
    }
}

impl std::fmt::Display for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            None => f.write_str("0"),
            Some(d) => write!(f, "{}", humantime::format_duration(d)),
        }
    }
}
