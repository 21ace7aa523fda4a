//! The registry's queries. Each takes a connection so it can run inside a
//! transaction.

use chrono::{DateTime, Utc};
use diesel::dsl::{count_star, now};
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use storage::StorageError;
use storage::models::{Delivery, NewDelivery, Webhook, delivery_status};
use storage::schema::{webhook_deliveries as d, webhooks as w};

/// A new `webhooks` row (no `Debug`: it holds the secret).
#[derive(Insertable)]
#[diesel(table_name = w)]
pub struct NewWebhook {
    pub name: String,
    pub url: String,
    pub secret: Option<String>,
    pub event_type: String,
    pub is_active: bool,
    pub description: Option<String>,
}

/// The columns a PATCH may change (`None` = unchanged, `Some(None)` = NULL).
#[derive(Default, AsChangeset)]
#[diesel(table_name = w)]
pub struct WebhookChanges {
    pub name: Option<String>,
    pub url: Option<String>,
    pub event_type: Option<String>,
    pub secret: Option<Option<String>>,
    pub description: Option<Option<String>>,
    pub is_active: Option<bool>,
    pub disabled_reason: Option<Option<String>>,
    pub failing_since: Option<Option<DateTime<Utc>>>,
    pub previous_secret: Option<Option<String>>,
    pub previous_secret_expires_at: Option<Option<DateTime<Utc>>>,
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

/// A page of webhooks, newest first, and the size of the filtered set.
pub async fn list_webhooks(
    conn: &mut AsyncPgConnection,
    event_type: Option<&str>,
    is_active: Option<bool>,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Webhook>, i64), StorageError> {
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

/// Deletes a webhook (its deliveries go by `ON DELETE CASCADE`).
pub async fn delete_webhook(conn: &mut AsyncPgConnection, id: i32) -> Result<bool, StorageError> {
    let n = diesel::delete(w::table.find(id)).execute(conn).await?;
    Ok(n == 1)
}

#[derive(Debug, QueryableByName)]
pub struct StatsRow {
    #[diesel(sql_type = BigInt)]
    pub total_webhooks: i64,
    #[diesel(sql_type = BigInt)]
    pub active_webhooks: i64,
    #[diesel(sql_type = BigInt)]
    pub total_deliveries: i64,
    #[diesel(sql_type = BigInt)]
    pub successful_deliveries: i64,
    #[diesel(sql_type = BigInt)]
    pub failed_deliveries: i64,
}

pub async fn stats(conn: &mut AsyncPgConnection) -> Result<StatsRow, StorageError> {
    Ok(diesel::sql_query(
        "SELECT \
           (SELECT count(*) FROM webhooks) AS total_webhooks, \
           (SELECT count(*) FROM webhooks WHERE is_active) AS active_webhooks, \
           count(*) AS total_deliveries, \
           count(*) FILTER (WHERE status = 'success') AS successful_deliveries, \
           count(*) FILTER (WHERE status = 'failed') AS failed_deliveries \
         FROM webhook_deliveries",
    )
    .get_result(conn)
    .await?)
}

macro_rules! deliveries_page {
    ($conn:expr, $webhook_id:expr, $q:expr, $limit:expr, $offset:expr) => {{
        let (mut c1, mut c2, mut c3) = (&*$conn, &*$conn, &*$conn);
        let exists = diesel::select(diesel::dsl::exists(w::table.find($webhook_id)))
            .get_result::<bool>(&mut c1);
        let page = $q
            .order((d::created_at.desc(), d::id.desc()))
            .limit($limit)
            .offset($offset)
            .select(Delivery::as_select())
            .load::<Delivery>(&mut c2);
        let total = $q.select(count_star()).get_result::<i64>(&mut c3);
        futures::try_join!(exists, page, total)?
    }};
}

/// A page of a webhook's deliveries, newest first, with the filtered
/// total; `None` when the webhook does not exist.
pub async fn list_deliveries(
    conn: &mut AsyncPgConnection,
    webhook_id: i32,
    status: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<Option<(Vec<Delivery>, i64)>, StorageError> {
    let mine = d::table.filter(d::webhook_id.eq(webhook_id));
    let (exists, items, total) = match status {
        None => deliveries_page!(conn, webhook_id, mine, limit, offset),
        Some(s) => deliveries_page!(
            conn,
            webhook_id,
            mine.filter(d::status.eq(s)),
            limit,
            offset
        ),
    };
    Ok(exists.then_some((items, total)))
}

/// Sets a new secret; the old one (if any) keeps signing until
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

/// Records the test endpoint's attempt and counts it on the webhook.
pub async fn record_attempt(
    conn: &mut AsyncPgConnection,
    new: NewDelivery,
) -> Result<Delivery, StorageError> {
    conn.transaction::<_, StorageError, _>(async |c| {
        let success = new.status == delivery_status::SUCCESS;
        let webhook_id = new.webhook_id;
        let row = diesel::insert_into(d::table)
            .values(new)
            .returning(Delivery::as_returning())
            .get_result(c)
            .await?;
        let bump = diesel::update(w::table.find(webhook_id));
        if success {
            bump.set((
                w::success_count.eq(w::success_count + 1),
                w::last_triggered_at.eq(now),
            ))
            .execute(c)
            .await?;
        } else {
            bump.set((
                w::failure_count.eq(w::failure_count + 1),
                w::last_triggered_at.eq(now),
            ))
            .execute(c)
            .await?;
        }
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

/// Queues a new attempt of a delivery: a `pending` row due now with the
/// next attempt number of that event × webhook. When an attempt of the
/// same event is already pending, that one is returned instead.
pub async fn queue_retry(
    conn: &mut AsyncPgConnection,
    webhook_id: i32,
    delivery_id: i32,
) -> Result<Retry, StorageError> {
    conn.transaction::<_, StorageError, _>(async |c| {
        // Lock the webhook so two retries of one event cannot both insert.
        let found: Option<i32> = w::table
            .find(webhook_id)
            .select(w::id)
            .for_update()
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
                    .filter(d::status.eq(delivery_status::PENDING))
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
                (original.status == delivery_status::PENDING).then(|| original.clone()),
                original.attempt_number,
            ),
        };
        if let Some(row) = pending {
            return Ok(Retry::Queued {
                row: Box::new(row),
                already: true,
            });
        }
        let row = diesel::insert_into(d::table)
            .values(NewDelivery {
                webhook_id,
                event_type: original.event_type.clone(),
                payload: original.payload.clone(),
                response_status: None,
                response_body: None,
                status: delivery_status::PENDING.to_owned(),
                error_message: None,
                attempt_number: max_attempt.saturating_add(1),
                delivered_at: None,
                next_retry_at: Some(Utc::now()),
                event_id: original.event_id.clone(),
                traceparent: original.traceparent.clone(),
            })
            .returning(Delivery::as_returning())
            .get_result(c)
            .await?;
        Ok(Retry::Queued {
            row: Box::new(row),
            already: false,
        })
    })
    .await
}
