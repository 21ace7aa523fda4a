//! The delivery audit (docs/contract.md, "Delivery audit"): every event the
//! delivery worker processed, and where it stands for each webhook it
//! concerns. `GET /events` pages the events, newest first; `GET
//! /events/{event_id}` shows one with its attempts.

use std::collections::HashMap;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use storage::audit::{
    self as db, Attempt, AuditEvent, AuditState, EventCursor, EventScan, WebhookBrief,
};
use storage::models::DeliveryStatus;
use strum::VariantArray;
use tracing::instrument;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorOut, FieldError, HttpValidationError};
use crate::extract::{FromQuery, IntParam, Query};
use crate::model::rfc3339;
use crate::state::AppState;

/// Events per page: 50 unless asked, at most 200.
pub const EVENTS_LIMIT: IntParam = crate::model::LIMIT;

/// With a `state` filter, a request reads at most this many events per
/// event it may return: the page may then be short, or empty, while
/// `next_cursor` goes on.
pub const STATE_SCAN_FACTOR: i64 = 4;

/// How long a read of the events stream for a payload may take.
const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// One attempt (or queued attempt) of an event to a webhook.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AttemptOut {
    pub delivery_id: i64,
    pub attempt_number: i32,
    /// `pending`, `success` or `failed`.
    #[schema(value_type = String)]
    pub status: DeliveryStatus,
    pub response_status: Option<i32>,
    pub error_message: Option<String>,
    #[serde(serialize_with = "rfc3339::ser")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339::ser_opt")]
    pub delivered_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339::ser_opt")]
    pub next_retry_at: Option<DateTime<Utc>>,
    /// Why a pending row waits unattempted: `rate_limit`, `circuit` or
    /// `busy`; `null` otherwise.
    pub held: Option<String>,
}

impl From<&Attempt> for AttemptOut {
    fn from(a: &Attempt) -> Self {
        Self {
            delivery_id: a.id,
            attempt_number: a.attempt_number,
            status: a.status,
            response_status: a.response_status,
            error_message: a.error_message.clone(),
            created_at: a.created_at,
            delivered_at: a.delivered_at,
            next_retry_at: a.next_retry_at,
            held: a.held.clone(),
        }
    }
}

/// Where an event stands for one webhook.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditWebhookOut {
    pub webhook_id: i32,
    /// `null` when the webhook was deleted.
    pub name: Option<String>,
    /// `succeeded`, `retrying`, `rate_limited`, `circuit_open`, `queued`,
    /// `exhausted`, `failed`, `disabled`, `filtered_out` or `deleted`.
    #[schema(value_type = String)]
    pub state: AuditState,
    /// When the next attempt is due, while one is pending.
    #[serde(serialize_with = "rfc3339::ser_opt")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Its delivery rows of the event, oldest first.
    pub attempts: Vec<AttemptOut>,
}

/// `GET /events/{event_id}`
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditEventOut {
    pub event_id: String,
    pub event_type: String,
    /// Its sequence in the events stream.
    pub stream_sequence: i64,
    #[serde(serialize_with = "rfc3339::ser")]
    pub published_at: DateTime<Utc>,
    /// When the delivery worker processed it (first, if it did twice).
    #[serde(serialize_with = "rfc3339::ser")]
    pub processed_at: DateTime<Utc>,
    /// The event's payload: from one of its deliveries, else from the
    /// events stream; `null` when neither holds it.
    #[schema(value_type = Option<Object>)]
    pub payload: Option<Value>,
    /// Why `payload` is `null`; absent when it is shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_unavailable: Option<String>,
    /// Every webhook it matched or whose filter refused it.
    pub webhooks: Vec<AuditWebhookOut>,
}

/// One event of `GET /events`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditSummaryOut {
    pub event_id: String,
    pub event_type: String,
    pub stream_sequence: i64,
    #[serde(serialize_with = "rfc3339::ser")]
    pub published_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339::ser")]
    pub processed_at: DateTime<Utc>,
    /// How many webhooks it concerns (matched or filtered out).
    pub webhooks: i64,
    /// How many of them are in each state (states with none left out),
    /// e.g. `{"succeeded": 3, "retrying": 1}`.
    #[schema(value_type = Object)]
    pub states: Map<String, Value>,
}

/// `GET /events`
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditSummaryOut>,
    /// Pass as `cursor` for what follows; `null` when nothing older is
    /// left. With `state`, a page may be short or empty while this is set.
    pub next_cursor: Option<String>,
}

/// The webhooks an event concerns, each with its rows and state.
fn webhooks_of(
    event: &AuditEvent,
    briefs: &HashMap<i32, WebhookBrief>,
    rows: &[Attempt],
) -> Vec<AuditWebhookOut> {
    event
        .webhook_ids()
        .into_iter()
        .map(|id| {
            let mine: Vec<&Attempt> = rows
                .iter()
                .filter(|r| r.webhook_id == id && r.event_id.as_deref() == Some(&event.event_id))
                .collect();
            let brief = briefs.get(&id);
            let filtered = event.filtered.contains(&id) && !event.matched.contains(&id);
            let standing = db::standing(brief, filtered, &mine);
            AuditWebhookOut {
                webhook_id: id,
                name: brief.map(|b| b.name.clone()),
                state: standing.state,
                next_attempt_at: standing.next_attempt_at,
                attempts: mine.into_iter().map(AttemptOut::from).collect(),
            }
        })
        .collect()
}

/// The webhooks of `events` that still exist, and their delivery rows of
/// those events.
async fn rows_of(
    conn: &mut storage::Connection,
    events: &[AuditEvent],
) -> Result<(HashMap<i32, WebhookBrief>, Vec<Attempt>), ApiError> {
    let mut ids: Vec<i32> = events.iter().flat_map(AuditEvent::webhook_ids).collect();
    ids.sort_unstable();
    ids.dedup();
    let briefs = db::webhooks(conn, &ids)
        .await?
        .into_iter()
        .map(|b| (b.id, b))
        .collect();
    let event_ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    let from = events.iter().map(|e| e.processed_at).min();
    let rows = match from {
        Some(from) => db::attempts(conn, &event_ids, from).await?,
        None => Vec::new(),
    };
    Ok((briefs, rows))
}

/// Query of `GET /events`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only events of this type.
    #[param(rename = "type")]
    pub event_type: Option<String>,
    /// Processed at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Processed before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// Only events with at least one webhook in this state.
    #[param(value_type = Option<String>)]
    pub state: Option<AuditState>,
    /// Page size.
    #[param(value_type = Option<i64>)]
    pub limit: i64,
    /// Continue after this point: the `next_cursor` of the previous page.
    #[param(value_type = Option<String>)]
    pub cursor: Option<EventCursor>,
}

impl FromQuery for ListParams {
    fn from_query(q: &mut Query) -> Self {
        let event_type = q.string("type");
        if let Some(t) = &event_type
            && t.parse::<proto_events::EventType>().is_err()
        {
            q.refuse(
                FieldError::value_error(
                    &["query", "type"],
                    &format!(
                        "unknown event type; valid: {}",
                        proto_events::EventType::names().join(", ")
                    ),
                )
                .input(Value::String(t.clone())),
            );
        }
        let since = q.time("since");
        let until = q.time("until");
        // `until` before `since` is an empty range: an empty page.
        Self {
            event_type,
            since,
            until,
            state: q.one_of("state", AuditState::VARIANTS),
            limit: q.param(&EVENTS_LIMIT),
            cursor: q.event_cursor("cursor"),
        }
    }
}

/// The events the delivery worker processed, newest first.
#[utoipa::path(
    get, path = "/events", tag = "audit",
    params(ListParams),
    responses(
        (status = 200, description = "A page of events with their states", body = AuditPage),
        (status = 401, description = "Missing or invalid token", body = ErrorOut),
        (status = 422, description = "Validation error", body = HttpValidationError),
        (status = 503, description = "Database unavailable", body = ErrorOut),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[instrument(skip_all)]
pub async fn list(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let ListParams {
        event_type,
        since,
        until,
        state: wanted,
        limit,
        cursor,
    } = Query::read(req.query_string())?;
    let rows = if wanted.is_some() {
        limit * STATE_SCAN_FACTOR
    } else {
        limit
    };
    let mut conn = state.conn().await?;
    let scanned = db::scan_events(
        &mut conn,
        &EventScan {
            event_type,
            since,
            until,
            after: cursor,
            rows,
        },
    )
    .await?;
    let (briefs, attempts) = rows_of(&mut conn, &scanned.events).await?;
    let mut items = Vec::new();
    let mut next = scanned.next.clone();
    for (event, key) in scanned.events.iter().zip(&scanned.keys) {
        let webhooks = webhooks_of(event, &briefs, &attempts);
        if let Some(w) = wanted
            && !webhooks.iter().any(|h| h.state == w)
        {
            continue;
        }
        items.push(summary(event, &webhooks));
        if items.len() as i64 == limit {
            // A full page: what follows starts after this event, unless
            // this was the last one read anyway.
            if key != scanned.keys.last().unwrap_or(key) || scanned.next.is_some() {
                next = Some(key.clone());
            }
            break;
        }
    }
    Ok(HttpResponse::Ok().json(AuditPage {
        items,
        next_cursor: next.map(|c| c.encode()),
    }))
}

fn summary(event: &AuditEvent, webhooks: &[AuditWebhookOut]) -> AuditSummaryOut {
    let mut states = Map::new();
    for s in AuditState::VARIANTS {
        let n = webhooks.iter().filter(|w| w.state == *s).count();
        if n > 0 {
            states.insert(s.as_str().to_owned(), Value::from(n));
        }
    }
    AuditSummaryOut {
        event_id: event.event_id.clone(),
        event_type: event.event_type.clone(),
        stream_sequence: event.stream_seq,
        published_at: event.published_at,
        processed_at: event.processed_at,
        webhooks: webhooks.len() as i64,
        states,
    }
}

/// One processed event: its payload, and where it stands for each webhook.
#[utoipa::path(
    get, path = "/events/{event_id}", tag = "audit",
    params(("event_id" = String, Path, description = "The event's id (the envelope's `id`)")),
    responses(
        (status = 200, description = "The event", body = AuditEventOut),
        (status = 401, description = "Missing or invalid token", body = ErrorOut),
        (status = 404, description = "The delivery worker never processed it (or its day is no longer kept)", body = ErrorOut),
        (status = 503, description = "Database unavailable", body = ErrorOut),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[instrument(skip_all)]
pub async fn get(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let event_id = path.into_inner();
    let mut conn = state.conn().await?;
    let event = db::event(&mut conn, &event_id)
        .await?
        .ok_or(ApiError::NotFound("Event not found"))?;
    let (briefs, attempts) = rows_of(&mut conn, std::slice::from_ref(&event)).await?;
    let stored = db::payload(&mut conn, &event.event_id, event.processed_at).await?;
    drop(conn);
    let (payload, payload_unavailable) = match stored {
        Some(p) => (Some(p), None),
        None => match from_stream(&state, &event).await {
            Ok(p) => (Some(p), None),
            Err(why) => (None, Some(why)),
        },
    };
    let webhooks = webhooks_of(&event, &briefs, &attempts);
    Ok(HttpResponse::Ok().json(AuditEventOut {
        event_id: event.event_id,
        event_type: event.event_type,
        stream_sequence: event.stream_seq,
        published_at: event.published_at,
        processed_at: event.processed_at,
        payload,
        payload_unavailable,
        webhooks,
    }))
}

/// The event's payload read from the events stream by its sequence, or why
/// it cannot be.
async fn from_stream(state: &AppState, event: &AuditEvent) -> Result<Value, String> {
    let Ok(seq) = u64::try_from(event.stream_seq) else {
        return Err("no delivery holds it and its stream sequence is not valid".to_owned());
    };
    let read = async {
        let stream = state.js.get_stream_no_info(state.ns.stream()).await?;
        stream
            .get_raw_message(seq)
            .await
            .map_err(async_nats::Error::from)
    };
    let msg = match tokio::time::timeout(STREAM_READ_TIMEOUT, read).await {
        Ok(Ok(msg)) => msg,
        Ok(Err(e)) => {
            let gone = e
                .downcast_ref::<async_nats::jetstream::stream::RawMessageError>()
                .is_some_and(|e| e.kind() == LastRawMessageErrorKind::NoMessageFound);
            if gone {
                return Err(format!(
                    "no delivery holds it and the events stream no longer keeps sequence {seq}"
                ));
            }
            tracing::warn!(error = %e, seq, "the events stream cannot be read");
            return Err("no delivery holds it and the events stream cannot be read now".to_owned());
        }
        Err(_) => {
            return Err(
                "no delivery holds it and the events stream did not answer in time".to_owned(),
            );
        }
    };
    match proto_events::Envelope::parse(&msg.payload) {
        Ok(envelope) if envelope.id == event.event_id => Ok(Value::Object(envelope.payload)),
        _ => Err(format!(
            "no delivery holds it and sequence {seq} of the events stream now holds another event \
             (the stream was recreated)"
        )),
    }
}
