//! Webhooks and their deliveries as the registry and the worker read them:
//! CRUD, statistics, delivery pages, the test endpoint's attempt and
//! manual retries. Each query takes a connection so it can run inside a
//! transaction; writers of delivery rows keep the lock order of
//! [`crate::attempts`].

use crate::attempts::{WebhookBump, bump_webhooks};
use crate::models::{BodyFormat, Delivery, DeliveryStatus, NewDelivery, Webhook};
use crate::schema::{webhook_deliveries as d, webhooks as w};
use crate::secrets::Keyring;
use crate::subscription::{SignatureScheme, purpose};
use crate::{DbPool, StorageError};
use chrono::{DateTime, Utc};
use diesel::dsl::{count_star, now};
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::Value;

/// A new `webhooks` row (no `Debug`: it holds the secret, sealed).
#[derive(Insertable)]
#[diesel(table_name = w)]
pub struct NewWebhook {
    pub name: String,
    /// `None` for a pull webhook.
    pub url: Option<String>,
    /// Sealed (`crate::secrets`).
    pub secret: Option<String>,
    pub event_type: String,
    pub is_active: bool,
    pub description: Option<String>,
    pub body_format: BodyFormat,
    pub event_types: Option<Vec<String>>,
    pub payload_filter: Option<Value>,
    pub headers: Option<Value>,
    pub auth: Option<Value>,
    pub signature_scheme: SignatureScheme,
    pub mode: crate::models::WebhookMode,
    #[diesel(embed)]
    pub policy: DeliveryPolicy,
}

/// A push webhook's delivery settings (docs/contract.md, "Delivery
/// policy"): `None` is unlimited, or the worker's setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Insertable)]
#[diesel(table_name = w)]
pub struct DeliveryPolicy {
    pub rate_limit_per_s: Option<f64>,
    pub rate_burst: Option<i32>,
    pub ordered: bool,
    /// Set with `ordered` (the time it was switched on), `None` without.
    pub ordered_since: Option<DateTime<Utc>>,
    pub circuit_threshold: Option<i32>,
    pub circuit_cooldown_s: Option<i32>,
}

/// The columns a PATCH may change (`None` = unchanged, `Some(None)` = NULL).
/// Secrets in it are sealed.
#[derive(Default, AsChangeset)]
#[diesel(table_name = w)]
pub struct WebhookChanges {
    pub name: Option<String>,
    pub url: Option<String>,
    pub event_type: Option<String>,
    pub event_types: Option<Option<Vec<String>>>,
    pub payload_filter: Option<Option<Value>>,
    pub headers: Option<Option<Value>>,
    pub auth: Option<Option<Value>>,
    pub signature_scheme: Option<SignatureScheme>,
    pub secret: Option<Option<String>>,
    pub description: Option<Option<String>>,
    pub is_active: Option<bool>,
    pub disabled_reason: Option<Option<String>>,
    pub failing_since: Option<Option<DateTime<Utc>>>,
    pub previous_secret: Option<Option<String>>,
    pub previous_secret_expires_at: Option<Option<DateTime<Utc>>>,
    pub body_format: Option<BodyFormat>,
    pub rate_limit_per_s: Option<Option<f64>>,
    pub rate_burst: Option<Option<i32>>,
    pub ordered: Option<bool>,
    pub ordered_since: Option<Option<DateTime<Utc>>>,
    pub circuit_threshold: Option<Option<i32>>,
    pub circuit_cooldown_s: Option<Option<i32>>,
}

pub async fn insert_webhook(
    conn: &mut AsyncPgConnection,
    new: NewWebhook,
) -> Result<Webhook, StorageError> {
    Ok(diesel::insert_into(w::table)
        .values(new)
        .returning(Webhook::as_returning())
        .get_result(conn)
        .await?)
}

pub async fn get_webhook(
    conn: &mut AsyncPgConnection,
    id: i32,
) -> Result<Option<Webhook>, StorageError> {
    Ok(w::table
        .find(id)
        .select(Webhook::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// The page and the total of one (non-boxed, so prepared-statement cached)
/// query, pipelined on one connection through shared references.
macro_rules! page_and_total {
    ($conn:expr, $q:expr, $limit:expr, $offset:expr) => {{
        let (mut c1, mut c2) = (&*$conn, &*$conn);
        let page = $q
            .order((w::created_at.desc(), w::id.desc()))
            .limit($limit)
            .offset($offset)
            .select(Webhook::as_select())
            .load::<Webhook>(&mut c1);
        let total = $q.select(count_star()).get_result::<i64>(&mut c2);
        futures::try_join!(page, total)?
    }};
}

/// A page of webhooks, newest first, and the size of the filtered set:
/// those whose `event_type` is `event_type`, whose patterns include one of
/// `any_pattern` (the patterns that match an event type: the type, its
/// family's and `*`), and that are active or not.
pub async fn list_webhooks(
    conn: &mut AsyncPgConnection,
    event_type: Option<&str>,
    any_pattern: Option<&[String]>,
    is_active: Option<bool>,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Webhook>, i64), StorageError> {
    if let Some(patterns) = any_pattern {
        return list_matching(conn, event_type, patterns, is_active, limit, offset).await;
    }
    // One static query shape per filter combination: boxed queries are not
    // kept as prepared statements, these are.
    Ok(match (event_type, is_active) {
        (None, None) => page_and_total!(conn, w::table, limit, offset),
        (Some(t), None) => {
            page_and_total!(conn, w::table.filter(w::event_type.eq(t)), limit, offset)
        }
        (None, Some(a)) => {
            page_and_total!(conn, w::table.filter(w::is_active.eq(a)), limit, offset)
        }
        (Some(t), Some(a)) => page_and_total!(
            conn,
            w::table
                .filter(w::event_type.eq(t))
                .filter(w::is_active.eq(a)),
            limit,
            offset
        ),
    })
}

/// [`list_webhooks`] with patterns: a webhook of one pattern has it in
/// `event_type`, one of several in `event_types` (GIN-indexed).
async fn list_matching(
    conn: &mut AsyncPgConnection,
    event_type: Option<&str>,
    patterns: &[String],
    is_active: Option<bool>,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Webhook>, i64), StorageError> {
    let query = || {
        let mut q = w::table
            .filter(
                w::event_types
                    .is_null()
                    .and(w::event_type.eq_any(patterns))
                    .or(w::event_types.overlaps_with(patterns).assume_not_null()),
            )
            .into_boxed();
        if let Some(t) = event_type {
            q = q.filter(w::event_type.eq(t));
        }
        if let Some(a) = is_active {
            q = q.filter(w::is_active.eq(a));
        }
        q
    };
    let (mut c1, mut c2) = (&*conn, &*conn);
    let page = query()
        .order((w::created_at.desc(), w::id.desc()))
        .limit(limit)
        .offset(offset)
        .select(Webhook::as_select())
        .load::<Webhook>(&mut c1);
    let total = query().count().get_result::<i64>(&mut c2);
    Ok(futures::try_join!(page, total)?)
}

pub async fn update_webhook(
    conn: &mut AsyncPgConnection,
    id: i32,
    changes: WebhookChanges,
) -> Result<Option<Webhook>, StorageError> {
    Ok(diesel::update(w::table.find(id))
        .set((changes, w::updated_at.eq(now)))
        .returning(Webhook::as_returning())
        .get_result(conn)
        .await
        .optional()?)
}

/// Changes a webhook by what `changes` makes of its current row, which is
/// locked meanwhile (so two PATCHes that each keep part of what is stored
/// do not undo each other). `Ok(None)`: no such webhook; `Ok(Some(Err))`:
/// `changes` refused, nothing written.
pub async fn update_webhook_with<E: Send>(
    conn: &mut AsyncPgConnection,
    id: i32,
    changes: impl FnOnce(&Webhook) -> Result<WebhookChanges, E> + Send,
) -> Result<Option<Result<Webhook, E>>, StorageError> {
    conn.transaction::<_, StorageError, _>(async |c| {
        let current: Option<Webhook> = w::table
            .find(id)
            .select(Webhook::as_select())
            .for_no_key_update()
            .first(c)
            .await
            .optional()?;
        let Some(current) = current else {
            return Ok(None);
        };
        match changes(&current) {
            Ok(changes) => Ok(update_webhook(c, id, changes).await?.map(Ok)),
            Err(e) => Ok(Some(Err(e))),
        }
    })
    .await
}

/// Deletes a webhook, its deliveries (its counters go by `ON DELETE
/// CASCADE`), and takes its rows out of the per-day totals.
pub async fn delete_webhook(conn: &mut AsyncPgConnection, id: i32) -> Result<bool, StorageError> {
    conn.transaction::<_, StorageError, _>(async |c| {
        // Writers of its rows hold a key-share lock on the webhook row until
        // they commit (`attempts::lock_webhooks`); this waits for them, so
        // their rows are there to delete, and later ones find it gone.
        let found: Option<i32> = w::table
            .find(id)
            .select(w::id)
            .for_update()
            .first(c)
            .await
            .optional()?;
        if found.is_none() {
            return Ok(false);
        }
        crate::counts::forget_webhook(c, id).await?;
        diesel::delete(
            crate::schema::webhook_deliveries::table
                .filter(crate::schema::webhook_deliveries::webhook_id.eq(id)),
        )
        .execute(c)
        .await?;
        let n = diesel::delete(w::table.find(id)).execute(c).await?;
        Ok(n == 1)
    })
    .await
}

/// The numbers of `GET /webhooks/stats`.
#[derive(Debug)]
pub struct StatsRow {
    pub total_webhooks: i64,
    pub active_webhooks: i64,
    pub deliveries: crate::counts::Totals,
}

/// Webhook counts and delivery totals; the totals come from the counters,
/// so the cost does not grow with history.
pub async fn stats(conn: &mut AsyncPgConnection) -> Result<StatsRow, StorageError> {
    let (mut c1, mut c2) = (&*conn, &*conn);
    let total = w::table.select(count_star()).get_result::<i64>(&mut c1);
    let active = w::table
        .filter(w::is_active)
        .select(count_star())
        .get_result::<i64>(&mut c2);
    let (total_webhooks, active_webhooks) = futures::try_join!(total, active)?;
    let deliveries = crate::counts::totals(conn).await?;
    Ok(StatsRow {
        total_webhooks,
        active_webhooks,
        deliveries,
    })
}

/// Where a page of deliveries starts: after the row with this sort key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: i64,
}

impl Cursor {
    /// What a cursor looks like: `<created_at µs since 1970>.<id>`, each at
    /// most 18 digits so both always fit their types. The OpenAPI document
    /// and [`Cursor::decode`] use this same pattern. Clients treat it as
    /// opaque: pass back the `next_cursor` they were given.
    pub const PATTERN: &'static str = "^-?[0-9]{1,18}\\.[0-9]{1,18}$";

    /// PostgreSQL's earliest timestamp (4714-11-24 BC, Julian day 0) in µs
    /// since 1970. The pattern allows earlier ones, which PostgreSQL
    /// refuses; no row is that old, so such a cursor means the same as
    /// this one (nothing older) and is read as it.
    const EARLIEST_MICROS: i64 = -210_866_803_200_000_000;

    pub fn encode(&self) -> String {
        format!("{}.{}", self.created_at.timestamp_micros(), self.id)
    }

    pub fn decode(s: &str) -> Option<Self> {
        static PATTERN: std::sync::LazyLock<Option<regex::Regex>> =
            std::sync::LazyLock::new(|| regex::Regex::new(Cursor::PATTERN).ok());
        if !PATTERN.as_ref()?.is_match(s) {
            return None;
        }
        let (micros, id) = s.split_once('.')?;
        Some(Self {
            created_at: DateTime::from_timestamp_micros(
                micros.parse::<i64>().ok()?.max(Self::EARLIEST_MICROS),
            )?,
            id: id.parse().ok()?,
        })
    }
}

/// A page of a webhook's deliveries, newest first, with the filtered total
/// (from the counters); `None` when the webhook does not exist. With a
/// cursor, the page starts after it (keyset paging: the same cost at any
/// depth); `offset` skips rows after that.
pub async fn list_deliveries(
    conn: &mut AsyncPgConnection,
    webhook_id: i32,
    status: Option<DeliveryStatus>,
    cursor: Option<Cursor>,
    limit: i64,
    offset: i64,
) -> Result<Option<(Vec<Delivery>, i64)>, StorageError> {
    use diesel::dsl::sql;
    use diesel::sql_types::{Bool, Timestamptz};
    let mut q = d::table
        .filter(d::webhook_id.eq(webhook_id))
        .select(Delivery::as_select())
        .order((d::created_at.desc(), d::id.desc()))
        .limit(limit)
        .offset(offset)
        .into_boxed();
    if let Some(s) = status {
        q = q.filter(d::status.eq(s));
    }
    if let Some(c) = cursor {
        // The plain bound lets the planner skip newer partitions; the row
        // comparison is the keyset condition in the index's order.
        q = q.filter(d::created_at.le(c.created_at)).filter(
            sql::<Bool>("(webhook_deliveries.created_at, webhook_deliveries.id) < (")
                .bind::<Timestamptz, _>(c.created_at)
                .sql(", ")
                .bind::<BigInt, _>(c.id)
                .sql(")"),
        );
    }
    let (mut c1, mut c2) = (&*conn, &*conn);
    let exists =
        diesel::select(diesel::dsl::exists(w::table.find(webhook_id))).get_result::<bool>(&mut c1);
    let page = q.load::<Delivery>(&mut c2);
    let (exists, items) = futures::try_join!(exists, page)?;
    if !exists {
        return Ok(None);
    }
    let total = crate::counts::webhook_total(conn, webhook_id, status).await?;
    Ok(Some((items, total)))
}

/// Delivery rows of one webhook per UTC hour and status, created in
/// `from..to`; `None` when the webhook does not exist. An index-only range
/// scan of `(webhook_id, status, created_at)` over the partitions of the
/// window (one or two days for 24 hours): it reads the webhook's rows of
/// those hours and no other webhook's (docs/architecture.md, "Delivery
/// history").
pub async fn hourly_deliveries(
    conn: &mut AsyncPgConnection,
    webhook_id: i32,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Option<Vec<HourCount>>, StorageError> {
    use diesel::sql_types::{Int4, Timestamptz};
    let (mut c1, mut c2) = (&*conn, &*conn);
    let exists =
        diesel::select(diesel::dsl::exists(w::table.find(webhook_id))).get_result::<bool>(&mut c1);
    let counts = diesel::sql_query(
        "SELECT date_trunc('hour', created_at, 'UTC') AS hour, status::text AS status, \
                count(*)::int8 AS n \
         FROM webhook_deliveries \
         WHERE webhook_id = $1 AND status IN ('pending', 'success', 'failed') \
           AND created_at >= $2 AND created_at < $3 \
         GROUP BY 1, 2",
    )
    .bind::<Int4, _>(webhook_id)
    .bind::<Timestamptz, _>(from)
    .bind::<Timestamptz, _>(to)
    .load::<HourCount>(&mut c2);
    let (exists, counts) = futures::try_join!(exists, counts)?;
    Ok(exists.then_some(counts))
}

/// One row of [`hourly_deliveries`].
#[derive(Debug, QueryableByName)]
pub struct HourCount {
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub hour: DateTime<Utc>,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub status: DeliveryStatus,
    #[diesel(sql_type = BigInt)]
    pub n: i64,
}

/// Sets a new secret (sealed); the old one (if any) keeps signing until
/// `previous_until` (`None` = dropped at once). Returns the row and the
/// previous secret's expiry.
pub async fn rotate_secret(
    conn: &mut AsyncPgConnection,
    id: i32,
    new_secret: String,
    previous_until: Option<DateTime<Utc>>,
) -> Result<Option<Webhook>, StorageError> {
    conn.transaction::<_, StorageError, _>(async |c| {
        let current: Option<Option<String>> = w::table
            .find(id)
            .select(w::secret)
            .for_update()
            .first(c)
            .await
            .optional()?;
        let Some(current) = current else {
            return Ok(None);
        };
        let previous = current.filter(|s| !s.is_empty());
        let until = previous.as_ref().and(previous_until);
        let previous = until.and(previous);
        let row = diesel::update(w::table.find(id))
            .set((
                w::secret.eq(Some(new_secret)),
                w::previous_secret.eq(previous),
                w::previous_secret_expires_at.eq(until),
                w::updated_at.eq(now),
            ))
            .returning(Webhook::as_returning())
            .get_result(c)
            .await?;
        Ok(Some(row))
    })
    .await
}

/// Records the test endpoint's attempt and counts it on the webhook (the
/// worker's bump, which leaves `failing_since` alone for a test).
pub async fn record_attempt(
    conn: &mut AsyncPgConnection,
    new: NewDelivery,
) -> Result<Delivery, StorageError> {
    conn.transaction::<_, StorageError, _>(async |c| {
        let success = new.status == DeliveryStatus::Success;
        let webhook_id = new.webhook_id;
        let row = crate::deliveries::insert(c, new).await?;
        let at = row.delivered_at.unwrap_or(row.created_at);
        let bump = WebhookBump::counted_only(webhook_id, success, at);
        bump_webhooks(c, &[bump], None).await?;
        Ok(row)
    })
    .await
}

/// What a manual retry did.
pub enum Retry {
    WebhookMissing,
    DeliveryMissing,
    Queued { row: Box<Delivery>, already: bool },
}

/// The first key of the advisory lock that serialises manual retries of
/// one webhook (the second is the webhook id).
const RETRY_LOCK_CLASS: i32 = 72_635;

/// Queues a new attempt of a delivery: a `pending` row due now with the
/// next attempt number of that event × webhook. When an attempt of the
/// same event is already pending, that one is returned instead.
pub async fn queue_retry(
    conn: &mut AsyncPgConnection,
    webhook_id: i32,
    delivery_id: i64,
) -> Result<Retry, StorageError> {
    conn.transaction::<_, StorageError, _>(async |c| {
        // Two retries of one webhook's events run one at a time, so both
        // cannot insert. An advisory lock, not the webhook row, which comes
        // after the counters in the lock order (crate::attempts).
        diesel::sql_query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind::<diesel::sql_types::Int4, _>(RETRY_LOCK_CLASS)
            .bind::<diesel::sql_types::Int4, _>(webhook_id)
            .execute(c)
            .await?;
        let found: Option<i32> = w::table
            .find(webhook_id)
            .select(w::id)
            .first(c)
            .await
            .optional()?;
        if found.is_none() {
            return Ok(Retry::WebhookMissing);
        }
        let original: Option<Delivery> = d::table
            .filter(d::id.eq(delivery_id))
            .filter(d::webhook_id.eq(webhook_id))
            .select(Delivery::as_select())
            .first(c)
            .await
            .optional()?;
        let Some(original) = original else {
            return Ok(Retry::DeliveryMissing);
        };
        let (pending, max_attempt) = match &original.event_id {
            Some(event_id) => {
                let pending: Option<Delivery> = d::table
                    .filter(d::webhook_id.eq(webhook_id))
                    .filter(d::event_id.eq(event_id))
                    .filter(d::status.eq(DeliveryStatus::Pending))
                    .order(d::id.desc())
                    .select(Delivery::as_select())
                    .first(c)
                    .await
                    .optional()?;
                let max: Option<i32> = d::table
                    .filter(d::webhook_id.eq(webhook_id))
                    .filter(d::event_id.eq(event_id))
                    .select(diesel::dsl::max(d::attempt_number))
                    .first(c)
                    .await?;
                (pending, max.unwrap_or(original.attempt_number))
            }
            None => (
                (original.status == DeliveryStatus::Pending).then(|| original.clone()),
                original.attempt_number,
            ),
        };
        if let Some(row) = pending {
            return Ok(Retry::Queued {
                row: Box::new(row),
                already: true,
            });
        }
        let row = crate::deliveries::insert(
            c,
            NewDelivery {
                webhook_id,
                event_type: original.event_type.clone(),
                payload: original.payload.clone(),
                response_status: None,
                response_body: None,
                status: DeliveryStatus::Pending,
                error_message: None,
                attempt_number: max_attempt.saturating_add(1),
                delivered_at: None,
                next_retry_at: Some(Utc::now()),
                event_id: original.event_id.clone(),
                traceparent: original.traceparent.clone(),
                body: original.body.clone(),
            },
        )
        .await?;
        Ok(Retry::Queued {
            row: Box::new(row),
            already: false,
        })
    })
    .await
}

/// Every active push webhook (those the worker POSTs to), by id.
pub async fn active(pool: &DbPool) -> Result<Vec<Webhook>, StorageError> {
    let mut conn = pool.get().await?;
    Ok(w::table
        .filter(w::is_active.eq(true))
        .filter(w::mode.eq(crate::models::WebhookMode::Push))
        .select(Webhook::as_select())
        .order(w::id.asc())
        .load(&mut conn)
        .await?)
}

/// What [`seal_all`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SealReport {
    /// Webhooks read.
    pub webhooks: u64,
    /// Webhooks with a value sealed anew.
    pub changed: u64,
    /// Values sealed anew: in clear before, or under an older key.
    pub values: u64,
}

/// Seals every secret of every webhook that is in clear (rows written
/// before sealing, or by hand) or sealed under an older key than the
/// newest of `keys`; the values are otherwise unchanged. One transaction
/// per webhook, each row locked while it is rewritten, so it can run while
/// the services do. A value that does not open with `keys` stops it with an
/// error and nothing of that webhook changed.
pub async fn seal_all(
    conn: &mut AsyncPgConnection,
    keys: &Keyring,
) -> Result<SealReport, StorageError> {
    let ids: Vec<i32> = w::table.select(w::id).order(w::id).load(conn).await?;
    let mut report = SealReport::default();
    for id in ids {
        let values = conn
            .transaction::<_, StorageError, _>(async |c| reseal_webhook(c, keys, id).await)
            .await?;
        report.webhooks += 1;
        if values > 0 {
            report.changed += 1;
            report.values += values;
        }
    }
    Ok(report)
}

/// Reseals one webhook's values in the caller's transaction; how many
/// changed.
async fn reseal_webhook(
    c: &mut AsyncPgConnection,
    keys: &Keyring,
    id: i32,
) -> Result<u64, StorageError> {
    type Secrets = (Option<String>, Option<String>, Option<Value>, Option<Value>);
    let row: Option<Secrets> = w::table
        .find(id)
        .select((w::secret, w::previous_secret, w::headers, w::auth))
        .for_update()
        .first(c)
        .await
        .optional()?;
    let Some((secret, previous, headers, auth)) = row else {
        return Ok(0);
    };
    let mut n = 0u64;
    let mut reseal = |purpose: &str, v: &str| -> Result<Option<String>, StorageError> {
        let new = keys.reseal(purpose, v)?;
        n += u64::from(new.is_some());
        Ok(new)
    };
    let secret = match &secret {
        Some(s) => reseal(purpose::SECRET, s)?,
        None => None,
    };
    let previous = match &previous {
        Some(s) => reseal(purpose::SECRET, s)?,
        None => None,
    };
    let mut stored_headers = crate::subscription::headers_of(headers.as_ref());
    let mut headers_changed = false;
    for h in &mut stored_headers {
        if let Some(v) = &h.sealed
            && let Some(new) = reseal(purpose::HEADER, v)?
        {
            h.sealed = Some(new);
            headers_changed = true;
        }
    }
    let mut stored_auth = crate::subscription::auth_of(auth.as_ref());
    let mut auth_changed = false;
    if let Some(a) = &mut stored_auth
        && let Some(new) = reseal(purpose::AUTH, a.credential())?
    {
        *a = a.clone().with_credential(new);
        auth_changed = true;
    }
    if n == 0 {
        return Ok(0);
    }
    let changes = WebhookChanges {
        secret: secret.map(Some),
        previous_secret: previous.map(Some),
        headers: headers_changed.then(|| crate::subscription::headers_column(&stored_headers)),
        auth: auth_changed.then(|| crate::subscription::auth_column(stored_auth.as_ref())),
        ..WebhookChanges::default()
    };
    // updated_at is left alone: nothing a client set has changed.
    diesel::update(w::table.find(id))
        .set(changes)
        .execute(c)
        .await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::Cursor;

    #[test]
    fn cursors_round_trip_and_only_the_pattern_is_accepted() {
        let c = Cursor {
            created_at: chrono::DateTime::from_timestamp_micros(1_764_583_200_123_456).unwrap(),
            id: 5_000_000_001,
        };
        assert_eq!(c.encode(), "1764583200123456.5000000001");
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        let re = regex::Regex::new(Cursor::PATTERN).unwrap();
        for bad in [
            "",
            "1",
            "1.",
            ".1",
            "+1.2",
            "1.2 ",
            "1.-2",
            "1234567890123456789.1",
            "a.b",
        ] {
            assert!(Cursor::decode(bad).is_none(), "{bad:?}");
            assert!(!re.is_match(bad), "{bad:?}");
        }
        assert!(Cursor::decode("-5.0").is_some());
        // before PostgreSQL's earliest timestamp: read as that one
        let earliest = Cursor::decode("-210866803200000000.7").unwrap();
        assert_eq!(
            Cursor::decode("-214407299781668740.7"),
            Some(earliest),
            "clamped"
        );
        assert_eq!(Cursor::decode("-999999999999999999.7"), Some(earliest));
    }
}
