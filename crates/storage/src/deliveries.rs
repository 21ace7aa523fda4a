//! Single delivery rows with their counters (the worker's batches are in
//! [`crate::attempts`]), the success locks, and what is recorded of an
//! event.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Int4, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::counts::{self, CountDeltas};
use crate::models::{Delivery, NewDelivery};
use crate::schema::webhook_deliveries;
use crate::{DbPool, StorageError};

/// Inserts one delivery row and counts it, in one transaction (a savepoint
/// of the caller's, when more is written with it). A webhook deleted
/// meanwhile gets no row: `NotFound`.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    new: NewDelivery,
) -> Result<Delivery, StorageError> {
    use diesel::SelectableHelper;
    use diesel_async::AsyncConnection;
    conn.transaction::<_, StorageError, _>(async |c| {
        // The key-share lock keeps the webhook until the transaction ends.
        if crate::attempts::lock_webhooks(c, &[new.webhook_id])
            .await?
            .is_empty()
        {
            return Err(StorageError::Query(diesel::result::Error::NotFound));
        }
        let row = diesel::insert_into(webhook_deliveries::table)
            .values(new)
            .returning(Delivery::as_returning())
            .get_result(c)
            .await?;
        let mut deltas = CountDeltas::default();
        deltas.add(
            row.webhook_id,
            counts::day_of(row.created_at),
            row.status.as_str(),
            1,
        );
        counts::apply(c, &deltas).await?;
        Ok(row)
    })
    .await
}

/// What is recorded for these (webhook, event) keys: for each key with a
/// `success` or `pending` row, when the latest success was delivered and
/// whether an attempt is pending.
///
/// First takes a transaction-level advisory lock per key, in key order, so
/// two writers of the same key (two worker replicas recording copies of
/// one event) wait for each other and the second sees the first's row:
/// `webhook_deliveries` is partitioned by `created_at`, so no unique index
/// on (event, webhook) can hold this rule. Call it inside the transaction
/// that writes the rows.
pub async fn lock_successes(
    conn: &mut AsyncPgConnection,
    keys: &[SuccessKey<'_>],
) -> Result<HashMap<(i32, String), Recorded>, StorageError> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let webhook: Vec<i32> = keys.iter().map(|k| k.webhook_id).collect();
    let event: Vec<&str> = keys.iter().map(|k| k.event_id).collect();
    let since: Vec<Option<DateTime<Utc>>> = keys
        .iter()
        .map(|k| k.stream_time.map(|t| t - SINCE_MARGIN))
        .collect();
    crate::prepared::query(
        "SELECT count(pg_advisory_xact_lock(s.k))::int8 AS n FROM ( \
           SELECT DISTINCT hashtextextended(v.w::text || '/' || v.e, $3) AS k \
           FROM unnest($1::int4[], $2::text[]) AS v(w, e) ORDER BY 1 \
         ) s",
    )
    .bind::<Array<Int4>, _>(&webhook)
    .bind::<Array<Text>, _>(&event)
    .bind::<BigInt, _>(SUCCESS_LOCK_SEED)
    .execute(conn)
    .await?;
    // One lookup per key in the (event_id, webhook_id) index of each
    // partition its rows can be in, whatever the statistics say. The
    // statement is prepared once: a join the planner may turn into a hash
    // join would keep a plan made while today's partition was small (a scan
    // of the whole partition per batch once it is not). The lower bound on
    // `created_at` lets the executor skip the older partitions key by key;
    // the status is tested in the aggregate, not in the WHERE clause, so
    // that no (webhook_id, status, …) index looks better to the planner on
    // a partition without statistics (one scan of all the webhook's rows
    // per key).
    let found: Vec<Success> = crate::prepared::query(
        "SELECT v.w AS webhook_id, v.e AS event_id, s.delivered_at, s.pending \
         FROM (SELECT w, e, min(COALESCE(since, '-infinity')) AS since \
               FROM unnest($1::int4[], $2::text[], $3::timestamptz[]) AS v(w, e, since) \
               GROUP BY w, e) v \
         CROSS JOIN LATERAL ( \
           SELECT max(COALESCE(d.delivered_at, d.created_at)) \
               FILTER (WHERE d.status = 'success') AS delivered_at, \
             COALESCE(bool_or(d.status = 'pending'), false) AS pending \
           FROM webhook_deliveries d \
           WHERE d.event_id = v.e AND d.webhook_id = v.w \
             AND d.created_at >= v.since \
         ) s \
         WHERE s.delivered_at IS NOT NULL OR s.pending",
    )
    .bind::<Array<Int4>, _>(&webhook)
    .bind::<Array<Text>, _>(&event)
    .bind::<Array<Nullable<Timestamptz>>, _>(&since)
    .load(conn)
    .await?;
    Ok(found
        .into_iter()
        .map(|s| {
            let recorded = Recorded {
                last_success: s.delivered_at,
                pending: s.pending,
            };
            ((s.webhook_id, s.event_id), recorded)
        })
        .collect())
}

/// A (webhook, event) key of [`lock_successes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuccessKey<'a> {
    pub webhook_id: i32,
    pub event_id: &'a str,
    /// When the event was stored in the stream (a delivery from the
    /// stream): no row of the key is older, so the partitions before this
    /// less [`SINCE_MARGIN`] are not read. `None`: every partition is.
    pub stream_time: Option<DateTime<Utc>>,
}

impl<'a> SuccessKey<'a> {
    /// A key whose rows may be in any partition.
    pub fn any_time(webhook_id: i32, event_id: &'a str) -> Self {
        Self {
            webhook_id,
            event_id,
            stream_time: None,
        }
    }
}

/// How much earlier than [`SuccessKey::stream_time`] the lookup still
/// looks: rows are stamped with the writing replica's clock, the
/// stream's time is the NATS server's. A day costs one more partition read
/// per key (yesterday's) and leaves room for any clock a replica could run
/// with.
///
/// There is no upper bound, though each partition created ahead
/// (`DELIVERY_PARTITIONS_AHEAD`, two days by default) is probed per key,
/// empty. One was tried (`created_at <`
/// this clock plus the margin): on a fresh database, whose partitions have
/// no statistics, the lookup then ran into the statement timeout in some
/// batches of most `bench delivery` runs (its plan there was not looked
/// into), so it was not kept.
const SINCE_MARGIN: chrono::TimeDelta = chrono::TimeDelta::days(1);

/// What [`lock_successes`] found for one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recorded {
    /// When the latest success was delivered.
    pub last_success: Option<DateTime<Utc>>,
    /// An attempt is pending (a retry or a parked delivery).
    pub pending: bool,
}

/// Seed of the advisory-lock keys of [`lock_successes`] (keeps them apart
/// from the project's other advisory locks).
const SUCCESS_LOCK_SEED: i64 = 7_263_541;

#[derive(diesel::QueryableByName)]
struct Success {
    #[diesel(sql_type = Int4)]
    webhook_id: i32,
    #[diesel(sql_type = Text)]
    event_id: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<Timestamptz>)]
    delivered_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pending: bool,
}

/// The webhooks with a row of this event.
pub async fn recorded_webhooks(pool: &DbPool, event_id: &str) -> Result<Vec<i32>, StorageError> {
    use diesel::{ExpressionMethods, QueryDsl};
    use webhook_deliveries::dsl as d;
    let mut conn = pool.get().await?;
    Ok(d::webhook_deliveries
        .filter(d::event_id.eq(event_id))
        .select(d::webhook_id)
        .distinct()
        .load(&mut conn)
        .await?)
}

/// What is recorded of one event for one webhook: whether it succeeded,
/// and how many attempts failed (an ordered webhook's next attempt number
/// is one more).
pub async fn attempts_of(
    pool: &DbPool,
    webhook_id: i32,
    event_id: &str,
) -> Result<(bool, i32), StorageError> {
    #[derive(diesel::QueryableByName)]
    struct Attempts {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        succeeded: bool,
        #[diesel(sql_type = Int4)]
        failed: i32,
    }
    let mut conn = pool.get().await?;
    let a: Attempts = diesel::sql_query(
        "SELECT COALESCE(bool_or(status = 'success'), false) AS succeeded, \
           (count(*) FILTER (WHERE status = 'failed'))::int4 AS failed \
         FROM webhook_deliveries WHERE event_id = $1 AND webhook_id = $2",
    )
    .bind::<Text, _>(event_id)
    .bind::<Int4, _>(webhook_id)
    .get_result(&mut conn)
    .await?;
    Ok((a.succeeded, a.failed))
}
