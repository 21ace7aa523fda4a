//! Recording delivery attempts: the worker's batches (new rows, claimed
//! pending rows updated or removed, their counters) and the webhooks'
//! counters, `last_triggered_at` and `failing_since`, bumped in SQL (no
//! read-modify-write between replicas), which disables webhooks that
//! answered 410 or have failed for too long. The registry's test attempts
//! count through the same bump ([`crate::webhooks::record_attempt`]).
//!
//! # Lock order
//! Every writer of delivery rows takes, inside its transaction and each in
//! key order:
//! 1. the success locks of its (webhook, event) keys
//!    ([`crate::deliveries::lock_successes`]);
//! 2. a key-share lock on the `webhooks` rows its new rows belong to
//!    ([`lock_webhooks`]: a webhook is not deleted under them);
//! 3. the counter rows of `webhook_delivery_counts` ([`counts::apply`]);
//! 4. the `webhooks` rows ([`bump_webhooks`]; a key-share lock does not
//!    stand in the way of these updates).
//!
//! Concurrent batches, test attempts and manual retries then wait for each
//! other but never deadlock. A writer that must serialise on a webhook
//! before writing rows (a manual retry) takes an advisory lock instead of
//! the webhook row, which would come before the counters.
//!
//! Rows are passed as column arrays and expanded with `unnest`, so a batch
//! of any size is one statement per table.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Bool, Double, Int4, Int8, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::counts::{self, CountDelta, CountDeltas};
use crate::deliveries::Recorded;
use crate::models::{BodyFormat, DeliveryStatus};
use crate::{DbPool, StorageError};

/// A stored delivery row: its id and its partition key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowRef {
    pub id: i64,
    pub created_at: DateTime<Utc>,
}

/// One new `webhook_deliveries` row.
#[derive(Debug, Clone)]
pub struct NewRow {
    pub webhook_id: i32,
    pub event_type: String,
    /// The payload as JSON text.
    pub payload: Arc<str>,
    /// The bytes sent, when they are not the canonical body of `payload`.
    pub body: Option<Arc<str>>,
    pub status: DeliveryStatus,
    pub response_status: Option<i32>,
    pub response_body: Option<String>,
    pub error_message: Option<String>,
    pub attempt_number: i32,
    pub delivered_at: Option<DateTime<Utc>>,
    pub next_retry_at: Option<DateTime<Utc>>,
    pub event_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub traceparent: Option<Arc<str>>,
    /// Why a pending row waits unattempted ([`Held`]).
    pub held: Option<Held>,
}

crate::text_enum::text_enum! {
    /// Why a pending row waits without having been attempted.
    pub enum Held {
        /// The webhook's rate limit: it drains at the limit.
        #[strum(serialize = "rate_limit")]
        RateLimit,
        /// The webhook's circuit is open.
        Circuit,
        /// Every slot of the webhook (or of the worker) was busy.
        Busy,
    }
}

/// The new row of a claimed pending row: the outcome of its attempt, or
/// `pending` again when it was given back unattempted.
#[derive(Debug, Clone)]
pub struct ClaimedUpdate {
    pub row: RowRef,
    pub status: DeliveryStatus,
    pub response_status: Option<i32>,
    pub response_body: Option<String>,
    pub error_message: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub next_retry_at: Option<DateTime<Utc>>,
    /// Given back unattempted: why ([`Held`]).
    pub held: Option<Held>,
}

/// What a batch did to one webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookBump {
    pub webhook_id: i32,
    pub successes: i64,
    pub failures: i64,
    /// When the last attempt ended, and whether it succeeded.
    pub last_at: DateTime<Utc>,
    pub last_ok: bool,
    /// The first failure after the batch's last success, if any.
    pub failing_since: Option<DateTime<Utc>>,
    /// The failures after the batch's last success.
    pub trailing_failures: i64,
    /// A receiver answered 410 Gone.
    pub gone: bool,
    /// Whether the attempts speak of the receiver's health: they move
    /// `failing_since` and may disable the webhook. The registry's test
    /// attempts only count.
    pub health: bool,
}

impl WebhookBump {
    /// One attempt that counts but says nothing of the receiver's health
    /// (a test delivery).
    pub fn counted_only(webhook_id: i32, success: bool, at: DateTime<Utc>) -> Self {
        Self {
            webhook_id,
            successes: i64::from(success),
            failures: i64::from(!success),
            last_at: at,
            last_ok: success,
            failing_since: None,
            trailing_failures: 0,
            gone: false,
            health: false,
        }
    }
}

/// A webhook the batch switched off, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disabled {
    pub webhook_id: i32,
    pub reason: String,
}

/// A change of a webhook's health a batch made (the operator events of
/// docs/contract.md, "Operator events").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub webhook_id: i32,
    pub name: String,
    /// When the attempt that made it ended.
    pub at: DateTime<Utc>,
    pub change: Change,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Disabled {
        reason: String,
    },
    /// Its first failure after a success.
    Failing {
        since: DateTime<Utc>,
    },
    /// A success after failures since `failing_since`.
    Recovered {
        failing_since: DateTime<Utc>,
    },
    CircuitOpened {
        failures: i32,
        cooldown_s: i32,
    },
    CircuitClosed,
}

/// Takes a key-share lock on the rows of the webhooks `ids` that exist and
/// returns those ids. Until the transaction ends, none of them can be
/// deleted ([`crate::webhooks::delete_webhook`] locks the row for update
/// first), so rows written for them meanwhile are deleted with them: what
/// a foreign key would check row by row, once per webhook.
pub async fn lock_webhooks(
    conn: &mut AsyncPgConnection,
    ids: &[i32],
) -> Result<Vec<i32>, StorageError> {
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = Int4)]
        id: i32,
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let locked: Vec<Id> = crate::prepared::query(
        "SELECT id FROM webhooks WHERE id = ANY($1::int4[]) ORDER BY id FOR KEY SHARE",
    )
    .bind::<Array<Int4>, _>(ids)
    .load(conn)
    .await?;
    Ok(locked.into_iter().map(|r| r.id).collect())
}

/// Inserts `rows` (those of webhooks that still exist) and returns what
/// they add to the counters. The statement first takes the key-share locks
/// [`lock_webhooks`] takes, in the same order, so a batch costs one round
/// trip for both.
pub async fn insert_rows(
    conn: &mut AsyncPgConnection,
    rows: &[NewRow],
) -> Result<Vec<CountDelta>, StorageError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut webhooks: Vec<i32> = rows.iter().map(|r| r.webhook_id).collect();
    webhooks.sort_unstable();
    webhooks.dedup();
    let webhook: Vec<i32> = rows.iter().map(|r| r.webhook_id).collect();
    let event_type: Vec<&str> = rows.iter().map(|r| r.event_type.as_str()).collect();
    let payload: Vec<&str> = rows.iter().map(|r| &*r.payload).collect();
    let status: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
    let response_status: Vec<Option<i32>> = rows.iter().map(|r| r.response_status).collect();
    let response_body: Vec<Option<&str>> =
        rows.iter().map(|r| r.response_body.as_deref()).collect();
    let error: Vec<Option<&str>> = rows.iter().map(|r| r.error_message.as_deref()).collect();
    let attempt: Vec<i32> = rows.iter().map(|r| r.attempt_number).collect();
    let delivered_at: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.delivered_at).collect();
    let next_retry_at: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.next_retry_at).collect();
    let event_id: Vec<Option<&str>> = rows.iter().map(|r| r.event_id.as_deref()).collect();
    let created_at: Vec<DateTime<Utc>> = rows.iter().map(|r| r.created_at).collect();
    let traceparent: Vec<Option<&str>> = rows.iter().map(|r| r.traceparent.as_deref()).collect();
    let body: Vec<Option<&str>> = rows.iter().map(|r| r.body.as_deref()).collect();
    let held: Vec<Option<&str>> = rows.iter().map(|r| r.held.map(Held::as_str)).collect();
    Ok(crate::prepared::query(
        // `live` is materialized: its locks are taken in id order (the lock
        // order above), each before any row of its webhook is inserted.
        "WITH live AS MATERIALIZED ( \
           SELECT id FROM webhooks WHERE id = ANY($16::int4[]) ORDER BY id FOR KEY SHARE \
         ), ins AS ( \
           INSERT INTO webhook_deliveries (webhook_id, event_type, payload, status, \
             response_status, response_body, error_message, attempt_number, delivered_at, \
             next_retry_at, event_id, created_at, traceparent, body, held) \
           SELECT v.webhook_id, v.event_type, v.payload::jsonb, v.status, v.response_status, \
             v.response_body, v.error_message, v.attempt_number, v.delivered_at, \
             v.next_retry_at, v.event_id, v.created_at, v.traceparent, v.body, v.held \
           FROM unnest($1::int4[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::text[], \
             $7::text[], $8::int4[], $9::timestamptz[], $10::timestamptz[], $11::text[], \
             $12::timestamptz[], $13::text[], $14::text[], $15::text[]) \
             AS v(webhook_id, event_type, payload, status, response_status, response_body, \
               error_message, attempt_number, delivered_at, next_retry_at, event_id, \
               created_at, traceparent, body, held) \
           WHERE v.webhook_id IN (SELECT id FROM live) \
           RETURNING webhook_id, created_at, status \
         ) \
         SELECT webhook_id, (created_at AT TIME ZONE 'UTC')::date AS day, status::text AS status, \
           count(*)::int8 AS n \
         FROM ins GROUP BY 1, 2, 3",
    )
    .bind::<Array<Int4>, _>(&webhook)
    .bind::<Array<Text>, _>(&event_type)
    .bind::<Array<Text>, _>(&payload)
    .bind::<Array<Text>, _>(&status)
    .bind::<Array<Nullable<Int4>>, _>(&response_status)
    .bind::<Array<Nullable<Text>>, _>(&response_body)
    .bind::<Array<Nullable<Text>>, _>(&error)
    .bind::<Array<Int4>, _>(&attempt)
    .bind::<Array<Nullable<Timestamptz>>, _>(&delivered_at)
    .bind::<Array<Nullable<Timestamptz>>, _>(&next_retry_at)
    .bind::<Array<Nullable<Text>>, _>(&event_id)
    .bind::<Array<Timestamptz>, _>(&created_at)
    .bind::<Array<Nullable<Text>>, _>(&traceparent)
    .bind::<Array<Nullable<Text>>, _>(&body)
    .bind::<Array<Nullable<Text>>, _>(&held)
    .bind::<Array<Int4>, _>(&webhooks)
    .load(conn)
    .await?)
}

#[derive(diesel::QueryableByName)]
struct Updated {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Int4)]
    webhook_id: i32,
    #[diesel(sql_type = diesel::sql_types::Date)]
    day: chrono::NaiveDate,
    #[diesel(sql_type = Text)]
    status: String,
}

/// Updates claimed rows that are still pending and returns what that
/// changes in the counters (each row leaves `pending` for its new status)
/// and the ids of the rows updated (a row no longer pending is left).
pub async fn update_claimed(
    conn: &mut AsyncPgConnection,
    updates: &[ClaimedUpdate],
) -> Result<(Vec<CountDelta>, HashSet<i64>), StorageError> {
    if updates.is_empty() {
        return Ok((Vec::new(), HashSet::new()));
    }
    let id: Vec<i64> = updates.iter().map(|u| u.row.id).collect();
    let created_at: Vec<DateTime<Utc>> = updates.iter().map(|u| u.row.created_at).collect();
    let status: Vec<&str> = updates.iter().map(|u| u.status.as_str()).collect();
    let response_status: Vec<Option<i32>> = updates.iter().map(|u| u.response_status).collect();
    let response_body: Vec<Option<&str>> =
        updates.iter().map(|u| u.response_body.as_deref()).collect();
    let error: Vec<Option<&str>> = updates.iter().map(|u| u.error_message.as_deref()).collect();
    let delivered_at: Vec<Option<DateTime<Utc>>> = updates.iter().map(|u| u.delivered_at).collect();
    let next_retry_at: Vec<Option<DateTime<Utc>>> =
        updates.iter().map(|u| u.next_retry_at).collect();
    let held: Vec<Option<&str>> = updates.iter().map(|u| u.held.map(Held::as_str)).collect();
    // `created_at` names the partition, so each row is found in one index.
    let changed: Vec<Updated> = crate::prepared::query(
        "WITH upd AS ( \
           UPDATE webhook_deliveries d SET status = v.status, \
             response_status = v.response_status, response_body = v.response_body, \
             error_message = v.error_message, delivered_at = v.delivered_at, \
             next_retry_at = v.next_retry_at, held = v.held \
           FROM unnest($1::int8[], $2::timestamptz[], $3::text[], $4::int4[], $5::text[], \
             $6::text[], $7::timestamptz[], $8::timestamptz[], $9::text[]) \
             AS v(id, created_at, status, response_status, response_body, error_message, \
               delivered_at, next_retry_at, held) \
           WHERE d.id = v.id AND d.created_at = v.created_at AND d.status = 'pending' \
           RETURNING d.id, d.webhook_id, d.created_at, d.status \
         ) \
         SELECT id, webhook_id, (created_at AT TIME ZONE 'UTC')::date AS day, \
           status::text AS status \
         FROM upd",
    )
    .bind::<Array<Int8>, _>(&id)
    .bind::<Array<Timestamptz>, _>(&created_at)
    .bind::<Array<Text>, _>(&status)
    .bind::<Array<Nullable<Int4>>, _>(&response_status)
    .bind::<Array<Nullable<Text>>, _>(&response_body)
    .bind::<Array<Nullable<Text>>, _>(&error)
    .bind::<Array<Nullable<Timestamptz>>, _>(&delivered_at)
    .bind::<Array<Nullable<Timestamptz>>, _>(&next_retry_at)
    .bind::<Array<Nullable<Text>>, _>(&held)
    .load(conn)
    .await?;
    let mut deltas = Vec::with_capacity(changed.len() * 2);
    let mut ids = HashSet::with_capacity(changed.len());
    for u in changed {
        ids.insert(u.id);
        deltas.push(CountDelta {
            webhook_id: u.webhook_id,
            day: u.day,
            status: DeliveryStatus::Pending.as_str().to_owned(),
            n: -1,
        });
        deltas.push(CountDelta {
            webhook_id: u.webhook_id,
            day: u.day,
            status: u.status,
            n: 1,
        });
    }
    Ok((deltas, ids))
}

#[derive(diesel::QueryableByName)]
struct MovedRow {
    #[diesel(sql_type = Int4)]
    id: i32,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Timestamptz)]
    last_at: DateTime<Utc>,
    #[diesel(sql_type = Bool)]
    disabled: bool,
    #[diesel(sql_type = Nullable<Text>)]
    disabled_reason: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    old_failing: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    new_failing: Option<DateTime<Utc>>,
}

/// `failing_since` after the batch, as an SQL expression over `w` and `v`.
const FAILING_SINCE: &str = "(CASE WHEN NOT v.health THEN w.failing_since \
     WHEN v.ok_last THEN NULL::timestamptz \
     WHEN v.ok > 0 THEN v.fail_since \
     ELSE COALESCE(w.failing_since, v.fail_since) END)";

fn bump_statement() -> String {
    let fs = FAILING_SINCE;
    let too_long =
        format!("COALESCE(v.health AND {fs} < now() - make_interval(secs => $8), false)");
    format!(
        "WITH old AS ( \
           SELECT id, is_active, failing_since FROM webhooks WHERE id = ANY($1::int4[]) \
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
                 || ' (DELIVERY_DISABLE_AFTER ' || $9 || ')' \
               ELSE w.disabled_reason END, \
             updated_at = CASE WHEN w.is_active AND (v.gone OR {too_long}) THEN now() \
               ELSE w.updated_at END \
           FROM unnest($1::int4[], $2::int8[], $3::int8[], $4::timestamptz[], $5::bool[], \
             $6::timestamptz[], $7::bool[], $10::bool[]) \
             AS v(id, ok, bad, last_at, ok_last, fail_since, gone, health) \
           WHERE w.id = v.id \
           RETURNING w.id, w.name, w.is_active, w.disabled_reason, w.failing_since, v.last_at \
         ) \
         SELECT wh.id, wh.name::text AS name, wh.last_at, \
           (old.is_active AND NOT wh.is_active) AS disabled, wh.disabled_reason, \
           old.failing_since AS old_failing, wh.failing_since AS new_failing \
         FROM wh JOIN old ON old.id = wh.id \
         WHERE (old.is_active AND NOT wh.is_active) \
           OR ((old.failing_since IS NULL) <> (wh.failing_since IS NULL))"
    )
}

/// Adds the batch's attempts to the webhooks' counters and statistics and
/// disables webhooks that answered 410 or have failed for longer than
/// `disable_after` (`None`: disables none). `bumps` must be sorted by
/// webhook id (the lock order). Returns the webhooks disabled, and those
/// that started failing or recovered.
pub async fn bump_webhooks(
    conn: &mut AsyncPgConnection,
    bumps: &[WebhookBump],
    disable_after: Option<Duration>,
) -> Result<Vec<Moved>, StorageError> {
    if bumps.is_empty() {
        return Ok(Vec::new());
    }
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(bump_statement);
    let id: Vec<i32> = bumps.iter().map(|b| b.webhook_id).collect();
    let ok: Vec<i64> = bumps.iter().map(|b| b.successes).collect();
    let bad: Vec<i64> = bumps.iter().map(|b| b.failures).collect();
    let last_at: Vec<DateTime<Utc>> = bumps.iter().map(|b| b.last_at).collect();
    let last_ok: Vec<bool> = bumps.iter().map(|b| b.last_ok).collect();
    let failing_since: Vec<Option<DateTime<Utc>>> = bumps.iter().map(|b| b.failing_since).collect();
    let gone: Vec<bool> = bumps.iter().map(|b| b.gone).collect();
    let health: Vec<bool> = bumps.iter().map(|b| b.health).collect();
    let rows: Vec<MovedRow> = crate::prepared::query(sql.as_str())
        .bind::<Array<Int4>, _>(&id)
        .bind::<Array<BigInt>, _>(&ok)
        .bind::<Array<BigInt>, _>(&bad)
        .bind::<Array<Timestamptz>, _>(&last_at)
        .bind::<Array<Bool>, _>(&last_ok)
        .bind::<Array<Nullable<Timestamptz>>, _>(&failing_since)
        .bind::<Array<Bool>, _>(&gone)
        .bind::<Nullable<Double>, _>(disable_after.map(|d| d.as_secs_f64()))
        .bind::<Nullable<Text>, _>(disable_after.map(|d| humantime::format_duration(d).to_string()))
        .bind::<Array<Bool>, _>(&health)
        .load(conn)
        .await?;
    let mut moved = Vec::new();
    for r in rows {
        let change = match (r.old_failing, r.new_failing) {
            (None, Some(since)) => Some(Change::Failing { since }),
            (Some(failing_since), None) => Some(Change::Recovered { failing_since }),
            _ => None,
        };
        let mv = |change| Moved {
            webhook_id: r.id,
            name: r.name.clone(),
            at: r.last_at,
            change,
        };
        moved.extend(change.map(mv));
        if r.disabled {
            moved.push(mv(Change::Disabled {
                reason: r.disabled_reason.clone().unwrap_or_default(),
            }));
        }
    }
    Ok(moved)
}

/// The webhooks among `moved` that were disabled.
pub fn disabled(moved: &[Moved]) -> Vec<Disabled> {
    moved
        .iter()
        .filter_map(|m| match &m.change {
            Change::Disabled { reason } => Some(Disabled {
                webhook_id: m.webhook_id,
                reason: reason.clone(),
            }),
            _ => None,
        })
        .collect()
}

/// The circuit breaker's settings (docs/contract.md, "Delivery policy"):
/// a webhook's own override wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitSettings {
    /// Consecutive failures that open it.
    pub threshold: i32,
    /// How long it stays open before a probe.
    pub cooldown: Duration,
}

impl Default for CircuitSettings {
    fn default() -> Self {
        Self {
            threshold: 5,
            cooldown: Duration::from_secs(60),
        }
    }
}

/// Moves the circuits of the bumped webhooks (health attempts only), after
/// [`bump_webhooks`] locked their rows in the same transaction: counts the
/// failures since the last success, opens a circuit at its threshold (or
/// when its probe failed), closes it on a success. A webhook whose circuit
/// is closed with no failures keeps no row (nothing is written for it).
async fn move_circuits(
    conn: &mut AsyncPgConnection,
    bumps: &[WebhookBump],
    settings: CircuitSettings,
) -> Result<Vec<Moved>, StorageError> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = Int4)]
        id: i32,
        #[diesel(sql_type = Text)]
        name: String,
        #[diesel(sql_type = Text)]
        state: String,
        #[diesel(sql_type = Int4)]
        n: i32,
        #[diesel(sql_type = Timestamptz)]
        last_at: DateTime<Utc>,
        #[diesel(sql_type = Int4)]
        cooldown: i32,
    }
    let bumps: Vec<&WebhookBump> = bumps.iter().filter(|b| b.health).collect();
    if bumps.is_empty() {
        return Ok(Vec::new());
    }
    let id: Vec<i32> = bumps.iter().map(|b| b.webhook_id).collect();
    let ok: Vec<i64> = bumps.iter().map(|b| b.successes).collect();
    let trail: Vec<i64> = bumps.iter().map(|b| b.trailing_failures).collect();
    let last_ok: Vec<bool> = bumps.iter().map(|b| b.last_ok).collect();
    let last_at: Vec<DateTime<Utc>> = bumps.iter().map(|b| b.last_at).collect();
    let cooldown = i32::try_from(settings.cooldown.as_secs()).unwrap_or(i32::MAX);
    let rows: Vec<Row> = crate::prepared::query(
        "WITH v AS ( \
           SELECT * FROM unnest($1::int4[], $2::int8[], $3::int8[], $4::bool[], $5::timestamptz[]) \
             AS v(id, ok, trail, last_ok, last_at) \
         ), old AS ( \
           SELECT v.*, w.name, COALESCE(c.state, 'closed') AS old_state, c.since AS old_since, \
             COALESCE(c.consecutive_failures, 0) AS old_n, \
             COALESCE(w.circuit_threshold, $6) AS threshold, \
             COALESCE(w.circuit_cooldown_s, $7) AS cooldown \
           FROM v JOIN webhooks w ON w.id = v.id \
           LEFT JOIN webhook_circuit c ON c.webhook_id = v.id \
         ), new AS ( \
           SELECT old.*, k.n, CASE \
               WHEN last_ok THEN 'closed' \
               WHEN old_state = 'half_open' THEN 'open' \
               WHEN k.n >= threshold THEN 'open' \
               ELSE old_state END AS state \
           FROM old, LATERAL (SELECT LEAST(CASE WHEN ok > 0 THEN trail \
             ELSE old_n + trail END, 2147483647)::int4 AS n) k \
         ), up AS ( \
           INSERT INTO webhook_circuit (webhook_id, state, since, consecutive_failures) \
           SELECT id, state, CASE WHEN state <> old_state THEN last_at \
             ELSE COALESCE(old_since, last_at) END, n \
           FROM new WHERE state <> old_state OR n <> old_n \
           ON CONFLICT (webhook_id) DO UPDATE SET state = EXCLUDED.state, \
             since = EXCLUDED.since, consecutive_failures = EXCLUDED.consecutive_failures \
         ) \
         SELECT id, name::text AS name, state, n, last_at, cooldown FROM new \
         WHERE (state = 'open' AND old_state = 'closed') \
            OR (state = 'closed' AND old_state <> 'closed')",
    )
    .bind::<Array<Int4>, _>(&id)
    .bind::<Array<BigInt>, _>(&ok)
    .bind::<Array<BigInt>, _>(&trail)
    .bind::<Array<Bool>, _>(&last_ok)
    .bind::<Array<Timestamptz>, _>(&last_at)
    .bind::<Int4, _>(settings.threshold)
    .bind::<Int4, _>(cooldown)
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Moved {
            webhook_id: r.id,
            name: r.name,
            at: r.last_at,
            change: if r.state == "open" {
                Change::CircuitOpened {
                    failures: r.n,
                    cooldown_s: r.cooldown,
                }
            } else {
                Change::CircuitClosed
            },
        })
        .collect())
}

/// One batch of the recorder.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub inserts: Vec<NewRow>,
    pub updates: Vec<ClaimedUpdate>,
    /// Claimed pending rows made redundant by a success recorded after
    /// they were queued: removed.
    pub deletes: Vec<RowRef>,
    /// (webhook, event) keys a stream delivery just succeeded for: their
    /// pending attempts are redundant and removed.
    pub superseded: Vec<(i32, String)>,
    /// Every attempt, for the webhooks' counters.
    pub attempts: Vec<AttemptSummary>,
    /// The events processed, for the audit.
    pub events: Vec<crate::audit::SeenEvent>,
}

/// One attempt as the webhook's counters see it.
#[derive(Debug, Clone, Copy)]
pub struct AttemptSummary {
    pub webhook_id: i32,
    /// When it ended.
    pub at: DateTime<Utc>,
    pub success: bool,
    pub gone: bool,
    /// The claimed row it updates, if any: it counts only when that row
    /// was still pending.
    pub claimed: Option<i64>,
}

/// How a batch moves the webhooks' health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSettings {
    /// Failing without a success for this long disables a webhook.
    pub disable_after: Duration,
    pub circuit: CircuitSettings,
}

/// Writes a batch inside the caller's transaction, in the lock order (the
/// module docs; the caller took the success locks): the rows and their
/// counters, then the webhooks, bumped by the attempts that counted, then
/// their circuits. Returns the webhooks' health changes and how many
/// claimed successes found their row no longer pending (superseded by a
/// stream delivery: duplicates, not counted).
pub async fn write_batch(
    c: &mut AsyncPgConnection,
    batch: &Batch,
    health: HealthSettings,
) -> Result<(Vec<Moved>, u64), StorageError> {
    crate::audit::insert_events(c, &batch.events).await?;
    let mut deltas = CountDeltas::default();
    deltas.extend(insert_rows(c, &batch.inserts).await?);
    let (updated, ids) = update_claimed(c, &batch.updates).await?;
    deltas.extend(updated);
    deltas.extend(delete_claimed(c, &batch.deletes).await?);
    deltas.extend(delete_pending(c, &batch.superseded).await?);
    counts::apply(c, &deltas).await?;
    let mut missed = 0u64;
    let counted: Vec<AttemptSummary> = batch
        .attempts
        .iter()
        .filter(|a| {
            let counts = a.claimed.is_none_or(|id| ids.contains(&id));
            if !counts && a.success {
                missed += 1;
            }
            counts
        })
        .copied()
        .collect();
    let bumps = fold_attempts(counted);
    let mut moved = bump_webhooks(c, &bumps, Some(health.disable_after)).await?;
    moved.extend(move_circuits(c, &bumps, health.circuit).await?);
    Ok((moved, missed))
}

/// Folds the attempts into one bump per webhook, in id order (the lock
/// order between concurrent batches).
pub fn fold_attempts(mut attempts: Vec<AttemptSummary>) -> Vec<WebhookBump> {
    attempts.sort_by_key(|a| (a.webhook_id, a.at));
    let mut bumps: Vec<WebhookBump> = Vec::new();
    for AttemptSummary {
        webhook_id: id,
        at,
        success: ok,
        gone,
        ..
    } in attempts
    {
        if bumps.last().map(|b| b.webhook_id) != Some(id) {
            bumps.push(WebhookBump {
                webhook_id: id,
                successes: 0,
                failures: 0,
                last_at: at,
                last_ok: ok,
                failing_since: None,
                trailing_failures: 0,
                gone: false,
                health: true,
            });
        }
        let Some(b) = bumps.last_mut() else { continue };
        if ok {
            b.successes += 1;
            b.failing_since = None;
            b.trailing_failures = 0;
        } else {
            b.failures += 1;
            b.trailing_failures += 1;
            if b.failing_since.is_none() {
                b.failing_since = Some(at);
            }
        }
        b.last_at = at;
        b.last_ok = ok;
        b.gone |= gone;
    }
    bumps
}

/// What [`record`] wrote: the webhooks it disabled and the successes it
/// refused as duplicates.
#[derive(Debug, Default)]
pub struct Written {
    /// The webhooks' health changes (disabled, failing, recovered, circuits).
    pub moved: Vec<Moved>,
    pub refused: u64,
}

/// Records one batch in one transaction: takes the success locks of `keys`
/// and reads what is recorded for them, lets `to_batch` turn that into the
/// batch (and a count of successes it refused), and writes it
/// ([`write_batch`]). When a row finds no partition (the registry, which
/// creates them ahead, has not run for a while), creates the partitions
/// around today and writes again.
pub async fn record(
    pool: &DbPool,
    keys: &[crate::deliveries::SuccessKey<'_>],
    health: HealthSettings,
    to_batch: impl Fn(HashMap<(i32, String), Recorded>) -> (Batch, u64) + Sync,
) -> Result<Written, StorageError> {
    let mut conn = pool.get().await?;
    match record_once(&mut conn, keys, health, &to_batch).await {
        Err(StorageError::Query(e)) if crate::history::is_missing_partition(&e) => {
            let today = Utc::now().date_naive();
            let created = crate::history::ensure_partitions(
                &mut conn,
                today - chrono::Duration::days(1),
                today + chrono::Duration::days(2),
            )
            .await?;
            tracing::warn!(
                created,
                "delivery rows found no partition; created partitions"
            );
            record_once(&mut conn, keys, health, &to_batch).await
        }
        other => other,
    }
}

async fn record_once(
    conn: &mut AsyncPgConnection,
    keys: &[crate::deliveries::SuccessKey<'_>],
    health: HealthSettings,
    to_batch: &(impl Fn(HashMap<(i32, String), Recorded>) -> (Batch, u64) + Sync),
) -> Result<Written, StorageError> {
    conn.transaction::<_, StorageError, _>(async |c| {
        let recorded = crate::deliveries::lock_successes(c, keys).await?;
        let (batch, refused) = to_batch(recorded);
        let (moved, missed) = write_batch(c, &batch, health).await?;
        Ok(Written {
            moved,
            refused: refused + missed,
        })
    })
    .await
}

/// Deletes the pending rows of these (webhook, event) keys and returns
/// what that takes off the counters.
pub async fn delete_pending(
    conn: &mut AsyncPgConnection,
    keys: &[(i32, String)],
) -> Result<Vec<CountDelta>, StorageError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let webhook: Vec<i32> = keys.iter().map(|k| k.0).collect();
    let event: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    Ok(crate::prepared::query(
        "WITH del AS ( \
           DELETE FROM webhook_deliveries d \
           USING unnest($1::int4[], $2::text[]) AS v(w, e) \
           WHERE d.webhook_id = v.w AND d.event_id = v.e AND d.status = 'pending' \
           RETURNING d.webhook_id, d.created_at, d.status \
         ) \
         SELECT webhook_id, (created_at AT TIME ZONE 'UTC')::date AS day, status::text AS status, \
           -count(*)::int8 AS n \
         FROM del GROUP BY 1, 2, 3",
    )
    .bind::<Array<Int4>, _>(&webhook)
    .bind::<Array<Text>, _>(&event)
    .load(conn)
    .await?)
}

/// Deletes claimed rows that are still pending and returns what that
/// takes off the counters.
pub async fn delete_claimed(
    conn: &mut AsyncPgConnection,
    rows: &[RowRef],
) -> Result<Vec<CountDelta>, StorageError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let id: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let created_at: Vec<DateTime<Utc>> = rows.iter().map(|r| r.created_at).collect();
    let gone: Vec<CountDelta> = crate::prepared::query(
        "WITH del AS ( \
           DELETE FROM webhook_deliveries d \
           USING unnest($1::int8[], $2::timestamptz[]) AS v(id, created_at) \
           WHERE d.id = v.id AND d.created_at = v.created_at AND d.status = 'pending' \
           RETURNING d.webhook_id, d.created_at, d.status \
         ) \
         SELECT webhook_id, (created_at AT TIME ZONE 'UTC')::date AS day, status::text AS status, \
           -count(*)::int8 AS n \
         FROM del GROUP BY 1, 2, 3",
    )
    .bind::<Array<Int8>, _>(&id)
    .bind::<Array<Timestamptz>, _>(&created_at)
    .load(conn)
    .await?;
    Ok(gone)
}

/// A due pending row claimed for an attempt, with its webhook.
#[derive(diesel::QueryableByName)]
pub struct Claimed {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Int4)]
    pub webhook_id: i32,
    #[diesel(sql_type = Text)]
    pub event_type: String,
    #[diesel(sql_type = Text)]
    pub payload: String,
    #[diesel(sql_type = Int4)]
    pub attempt_number: i32,
    #[diesel(sql_type = Nullable<Text>)]
    pub event_id: Option<String>,
    #[diesel(sql_type = Text)]
    pub url: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub secret: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub previous_secret: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Text>)]
    pub traceparent: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub body: Option<String>,
    #[diesel(sql_type = Text)]
    pub body_format: BodyFormat,
    #[diesel(sql_type = Text)]
    pub signature_scheme: crate::subscription::SignatureScheme,
    #[diesel(sql_type = Nullable<diesel::sql_types::Jsonb>)]
    pub headers: Option<serde_json::Value>,
    #[diesel(sql_type = Nullable<diesel::sql_types::Jsonb>)]
    pub auth: Option<serde_json::Value>,
}

impl Claimed {
    /// How the retry is sent: the webhook's settings as they are now.
    pub fn sending(&self) -> crate::subscription::Sending {
        crate::subscription::Sending {
            url: self.url.clone(),
            body_format: self.body_format,
            signature_scheme: self.signature_scheme,
            secret: self.secret.clone(),
            previous_secret: self.previous_secret.clone(),
            previous_secret_expires_at: self.previous_secret_expires_at,
            headers: self.headers.clone(),
            auth: self.auth.clone(),
        }
    }
}

const CLAIM: &str = "WITH due AS ( \
       SELECT d.id, d.created_at FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id \
       LEFT JOIN webhook_circuit c ON c.webhook_id = d.webhook_id \
       WHERE d.status = 'pending' AND d.next_retry_at <= now() AND w.is_active \
         AND w.url IS NOT NULL \
         AND (c.state IS NULL OR c.state = 'closed' \
           OR (c.state = 'open' \
             AND c.since + make_interval(secs => COALESCE(w.circuit_cooldown_s, $3)) <= now()) \
           OR (c.state = 'half_open' AND c.since + make_interval(secs => $2) <= now())) \
       ORDER BY d.next_retry_at LIMIT $1 \
       FOR UPDATE OF d SKIP LOCKED \
     ) \
     UPDATE webhook_deliveries d SET next_retry_at = now() + make_interval(secs => $2) \
     FROM due, webhooks w \
     WHERE d.id = due.id AND d.created_at = due.created_at AND w.id = d.webhook_id \
     RETURNING d.id, d.created_at, d.webhook_id, d.event_type, d.payload::text AS payload, d.attempt_number, \
       d.event_id, w.url, w.secret, w.previous_secret, w.previous_secret_expires_at, \
       d.traceparent, d.body, w.body_format, w.signature_scheme, w.headers, w.auth";

/// Claims up to `limit` due pending rows of active webhooks for `lease`,
/// leaving those of webhooks whose circuit is open (its cooldown, the
/// webhook's or `cooldown`, not over) or half-open (a probe in flight for
/// less than `lease`).
pub async fn claim_due(
    pool: &DbPool,
    limit: i64,
    lease: Duration,
    cooldown: Duration,
) -> Result<Vec<Claimed>, StorageError> {
    let mut conn = pool.get().await?;
    Ok(diesel::sql_query(CLAIM)
        .bind::<BigInt, _>(limit)
        .bind::<Double, _>(lease.as_secs_f64())
        .bind::<Double, _>(cooldown.as_secs_f64())
        .load(&mut conn)
        .await?)
}

/// The retry queue's size: pending rows due now, and all pending rows.
pub async fn queue_size(pool: &DbPool) -> Result<(i64, i64), StorageError> {
    #[derive(diesel::QueryableByName)]
    struct QueueSize {
        #[diesel(sql_type = BigInt)]
        due: i64,
        #[diesel(sql_type = BigInt)]
        pending: i64,
    }
    let mut conn = pool.get().await?;
    let s: QueueSize = diesel::sql_query(
        "SELECT count(*) FILTER (WHERE next_retry_at <= now()) AS due, count(*) AS pending \
         FROM webhook_deliveries WHERE status = 'pending'",
    )
    .get_result(&mut conn)
    .await?;
    Ok((s.due, s.pending))
}
