//! Counters of delivery rows, kept in the same transaction as the rows so
//! that totals never count history (docs/architecture.md, "Delivery
//! history").
//!
//! `webhook_delivery_counts` holds the rows per webhook, UTC day and status;
//! `delivery_day_counts` the same summed over webhooks. A day is a partition
//! of `webhook_deliveries`, so dropping a partition drops its counter rows
//! and the totals stay exact.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use diesel::sql_types::{Array, BigInt, Date, Int4, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::StorageError;
use crate::models::DeliveryStatus;

/// The UTC day of a row: the partition it lives in.
pub fn day_of(at: DateTime<Utc>) -> NaiveDate {
    at.date_naive()
}

/// A change of the number of rows of one webhook, day and status.
#[derive(Debug, Clone, PartialEq, Eq, diesel::QueryableByName)]
pub struct CountDelta {
    #[diesel(sql_type = Int4)]
    pub webhook_id: i32,
    #[diesel(sql_type = Date)]
    pub day: NaiveDate,
    #[diesel(sql_type = Text)]
    pub status: String,
    #[diesel(sql_type = BigInt)]
    pub n: i64,
}

/// Deltas summed per key, in key order: the order in which the counter rows
/// are locked, the same in every transaction, so writers cannot deadlock.
#[derive(Debug, Default, Clone)]
pub struct CountDeltas(BTreeMap<(i32, NaiveDate, String), i64>);

impl CountDeltas {
    pub fn add(&mut self, webhook_id: i32, day: NaiveDate, status: &str, n: i64) {
        if n != 0 {
            *self
                .0
                .entry((webhook_id, day, status.to_owned()))
                .or_default() += n;
        }
    }

    pub fn extend(&mut self, deltas: impl IntoIterator<Item = CountDelta>) {
        for d in deltas {
            self.add(d.webhook_id, d.day, &d.status, d.n);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.values().all(|n| *n == 0)
    }
}

/// Adds `deltas` to both counter tables.
pub async fn apply(conn: &mut AsyncPgConnection, deltas: &CountDeltas) -> Result<(), StorageError> {
    if deltas.is_empty() {
        return Ok(());
    }
    let mut webhook = Vec::with_capacity(deltas.0.len());
    let mut day = Vec::with_capacity(deltas.0.len());
    let mut status = Vec::with_capacity(deltas.0.len());
    let mut n = Vec::with_capacity(deltas.0.len());
    for ((w, d, s), v) in &deltas.0 {
        webhook.push(*w);
        day.push(*d);
        status.push(s.as_str());
        n.push(*v);
    }
    crate::prepared::query(
        "WITH v AS ( \
           SELECT * FROM unnest($1::int4[], $2::date[], $3::text[], $4::int8[]) \
             AS v(webhook_id, day, status, n) \
         ), per_webhook AS ( \
           INSERT INTO webhook_delivery_counts AS c (webhook_id, day, status, n) \
           SELECT webhook_id, day, status, n FROM v ORDER BY webhook_id, day, status \
           ON CONFLICT (webhook_id, day, status) DO UPDATE SET n = c.n + excluded.n \
           RETURNING 1 \
         ), per_day AS ( \
           INSERT INTO delivery_day_counts AS c (day, status, n) \
           SELECT day, status, sum(n) FROM v GROUP BY day, status ORDER BY day, status \
           ON CONFLICT (day, status) DO UPDATE SET n = c.n + excluded.n \
           RETURNING 1 \
         ) \
         SELECT (SELECT count(*) FROM per_webhook) + (SELECT count(*) FROM per_day) AS n",
    )
    .bind::<Array<Int4>, _>(&webhook)
    .bind::<Array<Date>, _>(&day)
    .bind::<Array<Text>, _>(&status)
    .bind::<Array<BigInt>, _>(&n)
    .execute(conn)
    .await?;
    Ok(())
}

/// Takes a webhook's rows out of the per-day totals; call it in the
/// transaction that deletes the webhook and its deliveries (its own
/// counter rows go with it by `ON DELETE CASCADE`).
pub async fn forget_webhook(
    conn: &mut AsyncPgConnection,
    webhook_id: i32,
) -> Result<(), StorageError> {
    diesel::sql_query(
        "UPDATE delivery_day_counts t SET n = t.n - c.n \
         FROM (SELECT day, status, sum(n) AS n FROM webhook_delivery_counts \
               WHERE webhook_id = $1 GROUP BY day, status ORDER BY day, status) c \
         WHERE t.day = c.day AND t.status = c.status",
    )
    .bind::<Int4, _>(webhook_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Rows of one webhook (and status), from the counters.
pub async fn webhook_total(
    conn: &mut AsyncPgConnection,
    webhook_id: i32,
    status: Option<DeliveryStatus>,
) -> Result<i64, StorageError> {
    #[derive(diesel::QueryableByName)]
    struct Total {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let total: Total = diesel::sql_query(
        "SELECT COALESCE(sum(n), 0)::int8 AS n FROM webhook_delivery_counts \
         WHERE webhook_id = $1 AND ($2::text IS NULL OR status = $2)",
    )
    .bind::<Int4, _>(webhook_id)
    .bind::<Nullable<Text>, _>(status)
    .get_result(conn)
    .await?;
    Ok(total.n)
}

/// Rows of every webhook by status, from the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, diesel::QueryableByName)]
pub struct Totals {
    #[diesel(sql_type = BigInt)]
    pub total: i64,
    #[diesel(sql_type = BigInt)]
    pub success: i64,
    #[diesel(sql_type = BigInt)]
    pub failed: i64,
    #[diesel(sql_type = BigInt)]
    pub pending: i64,
}

pub async fn totals(conn: &mut AsyncPgConnection) -> Result<Totals, StorageError> {
    Ok(diesel::sql_query(
        "SELECT COALESCE(sum(n), 0)::int8 AS total, \
           COALESCE(sum(n) FILTER (WHERE status = 'success'), 0)::int8 AS success, \
           COALESCE(sum(n) FILTER (WHERE status = 'failed'), 0)::int8 AS failed, \
           COALESCE(sum(n) FILTER (WHERE status = 'pending'), 0)::int8 AS pending \
         FROM delivery_day_counts",
    )
    .get_result(conn)
    .await?)
}
