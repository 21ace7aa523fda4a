//! `GET /webhooks/{id}/pull`: a pull webhook's owner reads its events and
//! acknowledges what it read by asking for the next page.

use std::sync::LazyLock;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use proto_events::filter::Filter;
use proto_events::{Cursor, PatternSet};
use regex::Regex;
use serde::Serialize;
use serde_json::value::RawValue;
use storage::models::Webhook;
use storage::pull::{self as db, Read};
use tracing::instrument;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorOut, FieldError, HttpValidationError};
use crate::extract::{FromQuery, IntParam, Query, path_id};
use crate::pull::{Scan, Start, StreamState, scan};
use crate::state::AppState;

/// Events per page: 100 unless asked, at most 1000.
pub const PULL_LIMIT: IntParam = IntParam {
    name: "limit",
    default: 100,
    min: 1,
    max: Some(1000),
};

/// Seconds to wait for a matching event when there is none: 0 to 60.
pub const WAIT: IntParam = IntParam {
    name: "wait",
    default: 0,
    min: 0,
    max: Some(60),
};

/// What a pull cursor looks like: `<epoch>:<sequence>`, the `cursor` of an
/// event or the `next` of a page. The OpenAPI document states this pattern
/// and the server checks it.
pub const CURSOR_PATTERN: &str = "^[0-9]{1,20}:[0-9]{1,18}$";

/// Query of `GET /webhooks/{id}/pull`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PullParams {
    /// Acknowledges every event up to this position and reads after it:
    /// the `next` of the previous page (or the `cursor` of the last event
    /// handled). Absent: after the acknowledged position, or from the
    /// webhook's creation before the first acknowledgement.
    #[param(value_type = Option<String>)]
    pub cursor: Option<Cursor>,
    /// Events per page (1–1000).
    #[param(value_type = Option<i64>)]
    pub limit: i64,
    /// Seconds to wait for a matching event when there is none yet (0–60).
    #[param(value_type = Option<i64>)]
    pub wait: i64,
}

impl FromQuery for PullParams {
    fn from_query(q: &mut Query) -> Self {
        Self {
            cursor: cursor(q),
            limit: q.param(&PULL_LIMIT),
            wait: q.param(&WAIT),
        }
    }
}

fn cursor(q: &mut Query) -> Option<Cursor> {
    static PATTERN: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(CURSOR_PATTERN).ok());
    let v = q.string("cursor")?;
    let fits = PATTERN.as_ref().is_some_and(|p| p.is_match(&v));
    match v.parse::<Cursor>() {
        Ok(c) if fits => Some(c),
        _ => {
            q.errors.push(
                FieldError::value_error(
                    &["query", "cursor"],
                    "not a cursor: '<epoch>:<sequence>', the next of a page or the cursor of an event",
                )
                .input(serde_json::Value::String(v)),
            );
            None
        }
    }
}

/// One event of a pull page.
#[derive(Debug, Serialize, ToSchema)]
pub struct PullEventOut {
    /// Its position: asking with it acknowledges it and everything before.
    pub cursor: String,
    pub event_id: String,
    pub event_type: String,
    /// The envelope's timestamp, as published.
    pub timestamp: String,
    /// The event's payload, as the publisher wrote it.
    #[schema(value_type = Object)]
    pub payload: Box<RawValue>,
    /// 1 the first time this event is served, more when it is served again
    /// (its read was not acknowledged).
    pub attempt_number: i32,
}

/// A page of a pull webhook's events.
#[derive(Debug, Serialize, ToSchema)]
pub struct PullPage {
    /// Matching events, oldest first.
    pub events: Vec<PullEventOut>,
    /// Ask with this next time: it acknowledges this page. It moves past
    /// events the webhook does not take, so a selective filter still makes
    /// progress.
    pub next: String,
    /// Events after the position read from are no longer kept (older than
    /// the stream's retention): the page starts at the oldest kept one.
    pub skipped: bool,
    /// The acknowledged position after this request; `null` before the
    /// first acknowledgement.
    pub acknowledged: Option<String>,
}

/// Read the events of a pull webhook, acknowledging those up to `cursor`.
#[utoipa::path(
    get, path = "/webhooks/{webhook_id}/pull", tag = "webhooks",
    params(("webhook_id" = i32, Path, description = "Webhook id"), PullParams),
    responses(
        (status = 200, description = "A page of events (possibly empty)", body = PullPage),
        (status = 401, description = "Missing or invalid token", body = ErrorOut),
        (status = 404, description = "No such webhook", body = ErrorOut),
        (status = 409, description = "Not a pull webhook, a disabled one, or a cursor that names no position of the stream (another epoch, beyond its end); then `restart` is the cursor to read on from", body = ErrorOut),
        (status = 422, description = "Validation error", body = HttpValidationError),
        (status = 503, description = "Database or event stream unavailable", body = ErrorOut),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[instrument(skip_all, fields(webhook_id))]
pub async fn pull(
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let params = Query::read::<PullParams>(req.query_string());
    let id: i32 = path_id(&path, "webhook_id", ApiError::webhook_not_found())?;
    tracing::Span::current().record("webhook_id", id);
    let params = params?;
    let webhook = {
        let mut conn = state.conn().await?;
        storage::webhooks::get_webhook(&mut conn, id)
            .await?
            .ok_or_else(ApiError::webhook_not_found)?
    };
    if !webhook.is_pull() {
        return Err(ApiError::Conflict(
            "This is a push webhook: its events are POSTed to its URL, not pulled".to_owned(),
        ));
    }
    if !webhook.is_active {
        return Err(ApiError::Conflict(
            "Webhook is disabled; enable it to read its events".to_owned(),
        ));
    }
    let (patterns, filter) = subscription(&webhook)?;
    let stream = StreamState::read(&state.js, &state.ns).await?;
    let (start, skipped, acknowledged) = start(&state, &webhook, &stream, params.cursor).await?;
    let limit = usize::try_from(params.limit).unwrap_or(1);
    let wait = Duration::from_secs(u64::try_from(params.wait).unwrap_or(0));
    let found = scan(
        &state.js,
        &state.ns,
        &stream,
        start,
        &Scan {
            patterns: &patterns,
            filter: filter.as_ref(),
            limit,
            wait,
            stop: &state.stopping,
        },
    )
    .await?;
    let next = match (found.last_seen, start) {
        (Some(seq), _) => seq,
        (None, Start::After(seq)) => seq.max(stream.first.saturating_sub(1)),
        // Nothing stored since the webhook was created: everything the
        // stream holds is before it.
        (None, Start::Since(_)) => stream.last,
    };
    let reads: Vec<Read> = found
        .events
        .iter()
        .map(|f| Read {
            event_id: f.envelope.id.clone(),
            event_type: f.envelope.event_type.as_str().to_owned(),
            payload: f.payload.clone(),
            traceparent: f.traceparent.clone(),
        })
        .collect();
    let attempts = db::record_reads(&state.pool, id, &reads, Utc::now()).await?;
    if attempts.len() != reads.len() {
        // Deleted while it was read.
        return Err(ApiError::webhook_not_found());
    }
    let mut events = Vec::with_capacity(found.events.len());
    for (f, attempt_number) in found.events.into_iter().zip(attempts) {
        events.push(PullEventOut {
            cursor: Cursor::new(stream.epoch.clone(), f.seq).to_string(),
            event_id: f.envelope.id,
            event_type: f.envelope.event_type.as_str().to_owned(),
            timestamp: f.envelope.timestamp,
            payload: RawValue::from_string(f.payload.to_string())
                .map_err(|_| ApiError::Internal)?,
            attempt_number,
        });
    }
    tracing::info!(events = events.len(), next, skipped, "pull page served");
    Ok(HttpResponse::Ok().json(PullPage {
        events,
        next: Cursor::new(stream.epoch.clone(), next).to_string(),
        skipped,
        acknowledged: acknowledged.map(|c| c.to_string()),
    }))
}

/// The webhook's patterns and filter, as stored.
fn subscription(webhook: &Webhook) -> Result<(PatternSet, Option<Filter>), ApiError> {
    let patterns = PatternSet::parse(webhook.patterns()).map_err(|e| {
        tracing::error!(webhook_id = webhook.id, error = %e, "stored patterns do not parse");
        ApiError::Internal
    })?;
    let filter = webhook
        .payload_filter
        .as_ref()
        .map(Filter::parse)
        .transpose()
        .map_err(|e| {
            tracing::error!(webhook_id = webhook.id, error = %e.message, "stored filter does not parse");
            ApiError::Internal
        })?;
    Ok((patterns, filter))
}

/// Where the page starts, whether events before it are no longer kept, and
/// the acknowledged position (stored first when `given` moves it on).
async fn start(
    state: &AppState,
    webhook: &Webhook,
    stream: &StreamState,
    given: Option<Cursor>,
) -> Result<(Start, bool, Option<Cursor>), ApiError> {
    let stored = webhook.pull_cursor();
    // A stored position of this stream, still in it.
    let usable = stored
        .clone()
        .filter(|s| s.epoch == stream.epoch && s.seq <= stream.last);
    let restart = usable.clone().unwrap_or_else(|| stream.restart());
    let (from, acknowledged) = match given {
        Some(c) => {
            stream.check(&c, &restart)?;
            let seq = i64::try_from(c.seq).map_err(|_| ApiError::Internal)?;
            let mut conn = state.conn().await?;
            db::acknowledge(&mut conn, webhook.id, &c.epoch, seq).await?;
            // Never backwards: the stored one when it is further on.
            let acknowledged = match usable {
                Some(s) if s.seq > c.seq => s,
                _ => c.clone(),
            };
            (Some(c.seq), Some(acknowledged))
        }
        None => match (usable, stored) {
            (Some(s), _) => (Some(s.seq), Some(s)),
            (None, Some(s)) => {
                stream.check(&s, &restart)?;
                (Some(s.seq), Some(s))
            }
            (None, None) => (None, None),
        },
    };
    Ok(match from {
        Some(seq) => (
            Start::After(seq),
            seq.saturating_add(1) < stream.first,
            acknowledged,
        ),
        None => {
            let since: DateTime<Utc> = webhook.created_at;
            let skipped = stream.first > 1 && stream.first_time > since;
            (Start::Since(since), skipped, acknowledged)
        }
    })
}
