//! Pull webhooks (docs/contract.md, "Pull webhooks"): the position the
//! owner acknowledged, and the reads recorded as deliveries.
//!
//! A read is recorded like the worker's deliveries ([`crate::attempts`]):
//! one `success` row per event served, counted in the per-day counters and
//! on the webhook, in the same lock order (success locks, counters, the
//! webhook row). An event served again because the owner did not
//! acknowledge it gets the next `attempt_number`.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, Int4, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::attempts::{NewRow, WebhookBump, bump_webhooks, insert_rows};
use crate::counts::{self, CountDeltas};
use crate::models::{DeliveryStatus, WebhookMode};
use crate::schema::webhooks as w;
use crate::{DbPool, StorageError};

/// Stores `epoch:seq` as the acknowledged position of pull webhook
/// `webhook_id` unless it would move it backwards (a lower sequence of the
/// same epoch): concurrent readers may acknowledge in any order. A
/// position of another epoch (the stream was recreated; the caller checked
/// `epoch` is the stream's) replaces the stored one. Returns whether it
/// was stored.
pub async fn acknowledge(
    conn: &mut AsyncPgConnection,
    webhook_id: i32,
    epoch: &str,
    seq: i64,
) -> Result<bool, StorageError> {
    let n = diesel::update(
        w::table
            .find(webhook_id)
            .filter(w::mode.eq(WebhookMode::Pull))
            .filter(
                w::pull_seq
                    .is_null()
                    .or(w::pull_epoch.ne(epoch))
                    .or(w::pull_seq.lt(seq)),
            ),
    )
    .set((w::pull_epoch.eq(epoch), w::pull_seq.eq(seq)))
    .execute(conn)
    .await?;
    Ok(n == 1)
}

/// One event served to the owner of a pull webhook.
#[derive(Debug, Clone)]
pub struct Read {
    pub event_id: String,
    pub event_type: String,
    /// The payload as JSON text.
    pub payload: Arc<str>,
    pub traceparent: Option<Arc<str>>,
}

/// Records `reads` of webhook `webhook_id` as successful deliveries at
/// `at`, each with the next attempt number of its event, in one
/// transaction. Returns the attempt numbers, in the order of `reads`
/// (empty when the webhook no longer exists: nothing is written).
pub async fn record_reads(
    pool: &DbPool,
    webhook_id: i32,
    reads: &[Read],
    at: DateTime<Utc>,
) -> Result<Vec<i32>, StorageError> {
    if reads.is_empty() {
        return Ok(Vec::new());
    }
    let mut conn = pool.get().await?;
    match record_once(&mut conn, webhook_id, reads, at).await {
        Err(StorageError::Query(e)) if crate::history::is_missing_partition(&e) => {
            let today = Utc::now().date_naive();
            crate::history::ensure_partitions(
                &mut conn,
                today - chrono::Duration::days(1),
                today + chrono::Duration::days(2),
            )
            .await?;
            record_once(&mut conn, webhook_id, reads, at).await
        }
        other => other,
    }
}

#[derive(diesel::QueryableByName)]
struct MaxAttempt {
    #[diesel(sql_type = Text)]
    event_id: String,
    #[diesel(sql_type = Int4)]
    attempt: i32,
}

async fn record_once(
    conn: &mut AsyncPgConnection,
    webhook_id: i32,
    reads: &[Read],
    at: DateTime<Utc>,
) -> Result<Vec<i32>, StorageError> {
    conn.transaction::<_, StorageError, _>(async |c| {
        let keys: Vec<crate::deliveries::SuccessKey<'_>> = reads
            .iter()
            .map(|r| crate::deliveries::SuccessKey::any_time(webhook_id, r.event_id.as_str()))
            .collect();
        // The worker's lock order: success locks, counters, webhook row.
        crate::deliveries::lock_successes(c, &keys).await?;
        let events: Vec<&str> = reads.iter().map(|r| r.event_id.as_str()).collect();
        let found: Vec<MaxAttempt> = diesel::sql_query(
            "SELECT event_id::text AS event_id, max(attempt_number) AS attempt \
             FROM webhook_deliveries WHERE webhook_id = $1 AND event_id = ANY($2::text[]) \
             GROUP BY 1",
        )
        .bind::<Int4, _>(webhook_id)
        .bind::<Array<Text>, _>(&events)
        .load(c)
        .await?;
        let mut last: HashMap<String, i32> =
            found.into_iter().map(|m| (m.event_id, m.attempt)).collect();
        let rows: Vec<NewRow> = reads
            .iter()
            .map(|r| {
                // The same event twice in one page counts twice.
                let n = last.entry(r.event_id.clone()).or_insert(0);
                *n = n.saturating_add(1);
                NewRow {
                    webhook_id,
                    event_type: r.event_type.clone(),
                    payload: r.payload.clone(),
                    body: None,
                    status: DeliveryStatus::Success,
                    response_status: None,
                    response_body: None,
                    error_message: None,
                    attempt_number: *n,
                    delivered_at: Some(at),
                    next_retry_at: None,
                    event_id: Some(r.event_id.clone()),
                    created_at: at,
                    traceparent: r.traceparent.clone(),
                    held: None,
                }
            })
            .collect();
        let mut deltas = CountDeltas::default();
        let inserted = insert_rows(c, &rows).await?;
        if inserted.is_empty() {
            return Ok(Vec::new());
        }
        deltas.extend(inserted);
        counts::apply(c, &deltas).await?;
        let n = i64::try_from(rows.len()).unwrap_or(i64::MAX);
        let bump = WebhookBump {
            successes: n,
            ..WebhookBump::counted_only(webhook_id, true, at)
        };
        bump_webhooks(c, &[bump], None).await?;
        Ok(rows.iter().map(|r| r.attempt_number).collect())
    })
    .await
}
