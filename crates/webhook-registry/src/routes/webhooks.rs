//! `/webhooks`: the seed's endpoints plus test, retry and secret rotation.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DurationRound, Utc};
use rand::Rng;
use storage::models::DeliveryStatus;
use strum::VariantArray;
use tracing::instrument;

use crate::error::{ApiError, ErrorOut, HttpValidationError};
use crate::extract::{FromQuery, JsonBody, Query, path_id};
use crate::model::{
    DeliveryOut, DeliveryPage, HourBucketOut, HourlyOut, RetryOut, RotateIn, RotateOut, StatsOut,
    TestOut, WebhookIn, WebhookOut, WebhookPage, WebhookPatch,
};
use crate::model::{HOURS, LIMIT, OFFSET, PolicyIn, burst_without_rate};
use crate::notify::Op;
use crate::state::AppState;
use crate::test_delivery;
use storage::audit;
use storage::models::{Circuit, Webhook};
use storage::secrets::Keyring;
use storage::subscription::{
    SignatureScheme, auth_column, auth_of, headers_column, headers_of, pattern_columns, purpose,
};
use storage::webhooks::{self as db, DeliveryPolicy, NewWebhook, Retry, WebhookChanges};
use webhook_client::Ed25519Key;

use crate::error::FieldError;
use crate::subscription;

fn webhook_id(raw: &str) -> Result<i32, ApiError> {
    path_id(raw, "webhook_id", ApiError::webhook_not_found())
}

/// Create a webhook.
#[utoipa::path(
    post, path = "/webhooks", tag = "webhooks",
    request_body = WebhookIn,
    responses(
        (status = 201, description = "Created", body = WebhookOut),
        (status = 401, description = "Missing or invalid token", body = ErrorOut),
        (status = 413, description = "Body too large", body = ErrorOut),
        (status = 422, description = "Validation error", body = HttpValidationError),
        (status = 503, description = "Database unavailable", body = ErrorOut),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[instrument(skip_all)]
pub async fn create(
    state: web::Data<AppState>,
    JsonBody(input): JsonBody<WebhookIn>,
) -> Result<HttpResponse, ApiError> {
    let new = new_webhook(&state.keys, input)?;
    let mut conn = state.conn().await?;
    let row = db::insert_webhook(&mut conn, new).await?;
    tracing::info!(webhook_id = row.id, event_type = %row.event_type, "webhook created");
    state.notifier.notify(row.id, Op::Created);
    // A new webhook has no circuit row: closed.
    Ok(HttpResponse::Created().json(WebhookOut::new(row, &state.keys, Circuit::default())))
}

/// A secret sealed for the `secret` column.
fn seal_secret(keys: &Keyring, secret: &str) -> Result<String, ApiError> {
    keys.seal(purpose::SECRET, secret).map_err(|e| {
        tracing::error!(error = %e, "cannot seal a webhook secret");
        ApiError::Internal
    })
}

/// A new ed25519 signing key (`whsk_…`).
fn new_signing_key() -> Result<String, ApiError> {
    Ed25519Key::generate()
        .map(|k| k.secret_text())
        .map_err(|e| {
            tracing::error!(error = %e, "cannot make a signing key");
            ApiError::Internal
        })
}

/// The row of a new webhook, its secrets sealed.
fn new_webhook(keys: &Keyring, input: WebhookIn) -> Result<NewWebhook, ApiError> {
    let secret = match (input.signature_scheme, input.secret) {
        (SignatureScheme::Ed25519, None) => Some(new_signing_key()?),
        (_, secret) => secret,
    };
    let secret = secret.map(|s| seal_secret(keys, &s)).transpose()?;
    let headers = subscription::seal_headers(keys, input.headers, &[])?;
    let auth = input
        .auth
        .map(|a| subscription::seal_auth(keys, a, None))
        .transpose()?
        .flatten();
    let (event_type, event_types) = pattern_columns(&input.event_types);
    Ok(NewWebhook {
        name: input.name,
        url: input.url,
        secret,
        event_type,
        is_active: true,
        description: input.description,
        body_format: input.body_format,
        event_types,
        payload_filter: input.filter.map(|f| f.to_value()),
        headers: headers_column(&headers),
        auth: auth_column(auth.as_ref()),
        signature_scheme: input.signature_scheme,
        mode: input.mode,
        policy: DeliveryPolicy {
            rate_limit_per_s: input.rate_limit_per_s,
            rate_burst: input.rate_burst,
            ordered: input.ordered,
            ordered_since: input.ordered.then(Utc::now),
            circuit_threshold: input.circuit_threshold,
            circuit_cooldown_s: input.circuit_cooldown_s,
        },
    })
}

/// The policy columns a PATCH changes: a pull webhook has none (a 409,
/// like its URL); clearing the rate clears its burst; a burst needs a rate:
/// one cleared in the same body is a 422, none stored a 409; switching
/// `ordered` on starts it now.
fn policy_changes(
    policy: PolicyIn,
    current: &Webhook,
    changes: &mut WebhookChanges,
) -> Result<(), ApiError> {
    let push_only = policy.push_only();
    if current.is_pull() && !push_only.is_empty() {
        return Err(ApiError::Conflict(format!(
            "{}: a pull webhook has no delivery policy (nothing is POSTed to it)",
            push_only.join(", ")
        )));
    }
    // A burst with the rate cleared in the same body contradicts itself.
    if matches!(policy.rate_burst, Some(Some(_))) && policy.rate_limit_per_s == Some(None) {
        return Err(ApiError::one(burst_without_rate()));
    }
    changes.rate_limit_per_s = policy.rate_limit_per_s;
    changes.rate_burst = match (policy.rate_limit_per_s, policy.rate_burst) {
        (Some(None), None) => Some(None),
        (_, burst) => burst,
    };
    let rate = policy.rate_limit_per_s.unwrap_or(current.rate_limit_per_s);
    let burst = changes.rate_burst.unwrap_or(current.rate_burst);
    // The request alone is valid: it is the webhook as stored (no rate)
    // that a burst does not fit, so a 409 like a URL on a pull webhook.
    if burst.is_some() && rate.is_none() {
        return Err(ApiError::Conflict(
            "rate_burst: this webhook has no rate limit; give rate_limit_per_s too (a burst \
             without a rate means nothing)"
                .to_owned(),
        ));
    }
    match policy.ordered {
        Some(true) if !current.ordered => {
            changes.ordered = Some(true);
            changes.ordered_since = Some(Some(Utc::now()));
        }
        Some(false) if current.ordered => {
            changes.ordered = Some(false);
            changes.ordered_since = Some(None);
        }
        _ => {}
    }
    changes.circuit_threshold = policy.circuit_threshold;
    changes.circuit_cooldown_s = policy.circuit_cooldown_s;
    Ok(())
}

/// What a PATCH changes of `current`: its fields checked against what is
/// stored (a secret header or credential left out keeps the stored one).
fn changes_for(
    keys: &Keyring,
    patch: WebhookPatch,
    current: &Webhook,
) -> Result<WebhookChanges, ApiError> {
    // The mode is fixed at creation: a pull webhook has no URL and a
    // position in the stream, a push webhook a URL and retries.
    if patch.mode.is_some_and(|m| m != current.mode) {
        return Err(ApiError::Conflict(format!(
            "mode: this webhook is a {} webhook and stays one; create a new webhook for the other mode",
            current.mode
        )));
    }
    if current.is_pull() && patch.url.is_some() {
        return Err(ApiError::Conflict(
            "url: a pull webhook has no URL (its mode cannot be changed)".to_owned(),
        ));
    }
    let policy = patch.policy();
    let mut changes = WebhookChanges {
        name: patch.name,
        url: patch.url,
        description: patch.description,
        is_active: patch.is_active,
        body_format: patch.body_format,
        ..WebhookChanges::default()
    };
    // `event_types` when it changes the patterns, else `event_type` as the
    // first of them (a client that knows only `event_type`, or sends back
    // what it read with that one changed).
    let stored: Vec<String> = current.patterns().into_iter().map(str::to_owned).collect();
    let patterns = match (patch.event_types, patch.event_type) {
        (Some(list), _) if list != stored => Some(list),
        (_, Some(first)) if stored.first() != Some(&first) => {
            let mut list = vec![first.clone()];
            list.extend(stored.iter().skip(1).filter(|p| **p != first).cloned());
            Some(list)
        }
        _ => None,
    };
    if let Some(patterns) = patterns {
        let (event_type, event_types) = pattern_columns(&patterns);
        changes.event_type = Some(event_type);
        changes.event_types = Some(event_types);
    }
    if let Some(filter) = patch.filter {
        changes.payload_filter = Some(filter.map(|f| f.to_value()));
    }
    if let Some(given) = patch.headers {
        let stored = headers_of(current.headers.as_ref());
        let sealed = subscription::seal_headers(keys, given, &stored)?;
        changes.headers = Some(headers_column(&sealed));
    }
    if let Some(given) = patch.auth {
        let stored = auth_of(current.auth.as_ref());
        let sealed = subscription::seal_auth(keys, given, stored.as_ref())?;
        changes.auth = Some(auth_column(sealed.as_ref()));
    }
    let scheme = patch.signature_scheme.unwrap_or(current.signature_scheme);
    let scheme_changed = scheme != current.signature_scheme;
    let secret = match (patch.secret, scheme) {
        (Some(Some(s)), SignatureScheme::Ed25519) if Ed25519Key::from_secret_text(&s).is_err() => {
            // A body that says ed25519 was checked with the body: here the
            // stored scheme is ed25519, and this secret does not fit it.
            return Err(ApiError::Conflict(
                "secret: this webhook signs with ed25519; its secret is a signing key, whsk_ \
                 and the base64 of 32 bytes (leave it out, or rotate, to have one generated)"
                    .to_owned(),
            ));
        }
        (Some(secret), _) => Some(secret),
        (None, SignatureScheme::Ed25519) if scheme_changed => Some(Some(new_signing_key()?)),
        // Back to HMAC without a secret: unsigned until one is set.
        (None, SignatureScheme::Hmac) if scheme_changed => Some(None),
        (None, _) => None,
    };
    if let Some(secret) = secret {
        // A direct replacement: the previous secret stops signing at once
        // (rotate-secret is the graceful way).
        changes.secret = Some(secret.map(|s| seal_secret(keys, &s)).transpose()?);
        changes.previous_secret = Some(None);
        changes.previous_secret_expires_at = Some(None);
    }
    if scheme_changed {
        changes.signature_scheme = Some(scheme);
    }
    if patch.is_active == Some(true) {
        changes.disabled_reason = Some(None);
        changes.failing_since = Some(None);
    }
    policy_changes(policy, current, &mut changes)?;
    Ok(changes)
}

/// Query of `GET /webhooks`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only webhooks with exactly this `event_type`.
    pub event_type: Option<String>,
    /// Only webhooks that an event of this type goes to: one of their
    /// patterns matches it (the type, its family pattern or `*`).
    pub matching: Option<String>,
    /// Only active (`true`) or inactive (`false`) webhooks.
    pub is_active: Option<bool>,
    /// Page size.
    #[param(value_type = Option<i64>)]
    pub limit: i64,
    /// Items to skip.
    #[param(value_type = Option<i64>)]
    pub offset: i64,
}

impl FromQuery for ListParams {
    fn from_query(q: &mut Query) -> Self {
        Self {
            event_type: q.string("event_type"),
            matching: q.string("matching"),
            is_active: q.boolean("is_active"),
            limit: q.param(&LIMIT),
            offset: q.param(&OFFSET),
        }
    }
}

/// List webhooks, newest first.
#[utoipa::path(
    get, path = "/webhooks", tag = "webhooks",
    params(ListParams),
    responses(
        (status = 200, description = "A page of webhooks", body = WebhookPage),
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
        matching,
        is_active,
        limit,
        offset,
    } = Query::read(req.query_string())?;
    let patterns = match matching {
        Some(t) => Some(matching_patterns(&t)?),
        None => None,
    };
    let mut conn = state.conn().await?;
    let (items, total) = db::list_webhooks(
        &mut conn,
        event_type.as_deref(),
        patterns.as_deref(),
        is_active,
        limit,
        offset,
    )
    .await?;
    let ids: Vec<i32> = items.iter().map(|w| w.id).collect();
    let mut circuits = audit::circuits(&mut conn, &ids).await?;
    let page = WebhookPage {
        items: items
            .into_iter()
            .map(|w| {
                let circuit = circuits.remove(&w.id).unwrap_or_default();
                WebhookOut::new(w, &state.keys, circuit)
            })
            .collect(),
        total,
        limit,
        offset,
    };
    // Sized up front: a page of 50 is about 16 KB.
    let mut body = Vec::with_capacity(128 + page.items.len() * 400);
    serde_json::to_writer(&mut body, &page).map_err(|e| {
        tracing::error!(error = %e, "cannot serialize a page");
        ApiError::Internal
    })?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

/// The patterns that select events of type `t`: `t`, its family pattern
/// and `*`; a 422 for a type not in the catalogue.
fn matching_patterns(t: &str) -> Result<Vec<String>, ApiError> {
    let Ok(ty) = t.parse::<proto_events::EventType>() else {
        return Err(ApiError::Validation(vec![
            FieldError::value_error(
                &["query", "matching"],
                &format!(
                    "unknown event type; valid: {}",
                    proto_events::EventType::names().join(", ")
                ),
            )
            .input(serde_json::Value::String(t.to_owned())),
        ]));
    };
    let mut patterns = vec![ty.as_str().to_owned(), "*".to_owned()];
    if let Some((family, _)) = ty.as_str().split_once('.') {
        patterns.push(format!("{family}.*"));
    }
    Ok(patterns)
}

/// Overall statistics.
#[utoipa::path(
    get, path = "/webhooks/stats", tag = "webhooks",
    responses(
        (status = 200, description = "Counts and success rate", body = StatsOut),
        (status = 401, description = "Missing or invalid token", body = ErrorOut),
        (status = 503, description = "Database unavailable", body = ErrorOut),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[instrument(skip_all)]
pub async fn stats(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut conn = state.conn().await?;
    let s = db::stats(&mut conn).await?;
    let success_rate = if s.deliveries.total > 0 {
        let rate = s.deliveries.success as f64 / s.deliveries.total as f64 * 100.0;
        (rate * 100.0).round() / 100.0
    } else {
        0.0
    };
    Ok(HttpResponse::Ok().json(StatsOut {
        total_webhooks: s.total_webhooks,
        active_webhooks: s.active_webhooks,
        total_deliveries: s.deliveries.total,
        successful_deliveries: s.deliveries.success,
        failed_deliveries: s.deliveries.failed,
        success_rate,
    }))
}

/// One webhook.
#[utoipa::path(
    get, path = "/webhooks/{webhook_id}", tag = "webhooks",
    params(("webhook_id" = i32, Path, description = "Webhook id")),
    responses(
        (status = 200, description = "The webhook", body = WebhookOut),
        (status = 401, description = "Missing or invalid token", body = ErrorOut),
        (status = 404, description = "No such webhook", body = ErrorOut),
        (status = 422, description = "Id is not an integer", body = HttpValidationError),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[instrument(skip_all)]
pub async fn get(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = webhook_id(&path)?;
    let mut conn = state.conn().await?;
    let row = db::get_webhook(&mut conn, id)
        .await?
        .ok_or_else(ApiError::webhook_not_found)?;
    let circuit = audit::circuit(&mut conn, id).await?;
    Ok(HttpResponse::Ok().json(WebhookOut::new(row, &state.keys, circuit)))
}

/// Change some fields of a webhook.
#[utoipa::path(
    patch, path = "/webhooks/{webhook_id}", tag = "webhooks",
    params(("webhook_id" = i32, Path, description = "Webhook id")),
    request_body = WebhookPatch,
    responses(
        (status = 200, description = "The updated webhook", body = WebhookOut),
        (status = 401, description = "Missing or invalid token", body = ErrorOut),
        (status = 404, description = "No such webhook", body = ErrorOut),
        (status = 409, description = "The request does not fit what is stored (a secret header or credential to keep that is not there; a secret that is not a signing key for an ed25519 webhook)", body = ErrorOut),
        (status = 413, description = "Body too large", body = ErrorOut),
        (status = 422, description = "Validation error", body = HttpValidationError),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[instrument(skip_all)]
pub async fn update(
    state: web::Data<AppState>,
    path: web::Path<String>,
    JsonBody(patch): JsonBody<WebhookPatch>,
) -> Result<HttpResponse, ApiError> {
    let id = webhook_id(&path)?;
    let mut conn = state.conn().await?;
    let row = db::update_webhook_with(&mut conn, id, |current| {
        changes_for(&state.keys, patch, current)
    })
    .await?
    .ok_or_else(ApiError::webhook_not_found)??;
    tracing::info!(webhook_id = id, "webhook updated");
    state.notifier.notify(id, Op::Updated);
    let circuit = audit::circuit(&mut conn, id).await?;
    Ok(HttpResponse::Ok().json(WebhookOut::new(row, &state.keys, circuit)))
}

/// Delete a webhook and its deliveries.
#[utoipa::path(
    delete, path = "/webhooks/{webhook_id}", tag = "webhooks",
    params(("webhook_id" = i32, Path, description = "Webhook id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid token", body = ErrorOut),
        (status = 404, description = "No such webhook", body = ErrorOut),
        (status = 422, description = "Id is not an integer", body = HttpValidationError),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[instrument(skip_all)]
pub async fn delete(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = webhook_id(&path)?;
    let mut conn = state.conn().await?;
    if !db::delete_webhook(&mut conn, id).await? {
        return Err(ApiError::webhook_not_found());
    }
    tracing::info!(webhook_id = id, "webhook deleted");
    state.notifier.notify(id, Op::Deleted);
    Ok(HttpResponse::NoContent().finish())
}

/// Query of `GET /webhooks/{id}/deliveries`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryParams {
    /// `pending`, `success` or `failed`.
    #[param(value_type = Option<String>)]
    pub status: Option<DeliveryStatus>,
    #[param(value_type = Option<i64>)]
    pub limit: i64,
    #[param(value_type = Option<i64>)]
    pub offset: i64,
    /// Start after this point: the `next_cursor` of the previous page.
    /// The same cost at any depth, where `offset` reads every skipped row.
    #[param(value_type = Option<String>)]
    pub cursor: Option<db::Cursor>,
}

impl FromQuery for DeliveryParams {
    fn from_query(q: &mut Query) -> Self {
        Self {
            status: q.one_of("status", DeliveryStatus::VARIANTS),
            limit: q.param(&LIMIT),
            offset: q.param(&OFFSET),
            cursor: q.cursor("cursor"),
        }
    }
}

/// A webhook's delivery history, newest first.
#[utoipa::path(
    get, path = "/webhooks/{webhook_id}/deliveries", tag = "deliveries",
    params(("webhook_id" = i32, Path, description = "Webhook id"), DeliveryParams),
    responses(
        (status = 200, description = "A page of deliveries", body = DeliveryPage),
        (status = 401, description = "Missing or invalid token", body = ErrorOut),
        (status = 404, description = "No such webhook", body = ErrorOut),
        (status = 422, description = "Validation error", body = HttpValidationError),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[instrument(skip_all)]
pub async fn deliveries(
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let params = Query::read::<DeliveryParams>(req.query_string());
    let id = webhook_id(&path)?;
    let DeliveryParams {
        status,
        limit,
        offset,
        cursor,
    } = params?;
    let mut conn = state.conn().await?;
    let (items, total) = db::list_deliveries(&mut conn, id, status, cursor, limit, offset)
        .await?
        .ok_or_else(ApiError::webhook_not_found)?;
    let next_cursor = match items.last() {
        Some(last) if items.len() as i64 == limit => Some(
            db::Cursor {
                created_at: last.created_at,
                id: last.id,
            }
            .encode(),
        ),
        _ => None,
    };
    Ok(HttpResponse::Ok().json(DeliveryPage {
        items: items.into_iter().map(DeliveryOut::from).collect(),
        total,
        limit,
        offset,
        next_cursor,
    }))
}

/// Query of `GET /webhooks/{id}/deliveries/hourly`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HourlyParams {
    /// Hours to cover, ending with the current hour.
    #[param(value_type = Option<i64>)]
    pub hours: i64,
}

impl FromQuery for HourlyParams {
    fn from_query(q: &mut Query) -> Self {
        Self {
            hours: q.param(&HOURS),
        }
    }
}

/// A webhook's delivery rows per hour (by `created_at`, UTC) and status,
/// over the last `hours` hours: the portal's chart.
#[utoipa::path(
    get, path = "/webhooks/{webhook_id}/deliveries/hourly", tag = "deliveries",
    params(("webhook_id" = i32, Path, description = "Webhook id"), HourlyParams),
    responses(
        (status = 200, description = "Counts per hour, oldest first, every hour present", body = HourlyOut),
        (status = 401, description = "Missing or invalid token", body = ErrorOut),
        (status = 404, description = "No such webhook", body = ErrorOut),
        (status = 422, description = "Validation error", body = HttpValidationError),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[instrument(skip_all)]
pub async fn hourly(
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let params = Query::read::<HourlyParams>(req.query_string());
    let id = webhook_id(&path)?;
    let HourlyParams { hours } = params?;
    let now = Utc::now();
    let this_hour = now
        .duration_trunc(chrono::TimeDelta::hours(1))
        .unwrap_or(now);
    let to = this_hour + chrono::TimeDelta::hours(1);
    let from = to - chrono::TimeDelta::hours(hours);
    let mut conn = state.conn().await?;
    let counts = db::hourly_deliveries(&mut conn, id, from, to)
        .await?
        .ok_or_else(ApiError::webhook_not_found)?;
    let mut buckets: Vec<HourBucketOut> = (0..hours)
        .map(|i| HourBucketOut {
            hour: from + chrono::TimeDelta::hours(i),
            success: 0,
            failed: 0,
            pending: 0,
        })
        .collect();
    for c in counts {
        let i = (c.hour - from).num_hours();
        if let Some(b) = usize::try_from(i).ok().and_then(|i| buckets.get_mut(i)) {
            match c.status {
                DeliveryStatus::Success => b.success += c.n,
                DeliveryStatus::Failed => b.failed += c.n,
                DeliveryStatus::Pending => b.pending += c.n,
            }
        }
    }
    Ok(HttpResponse::Ok().json(HourlyOut {
        webhook_id: id,
        hours,
        from,
        to,
        buckets,
    }))
}

/// Send a signed `webhook.test` event to the webhook now and record it.
#[utoipa::path(
    post, path = "/webhooks/{webhook_id}/test", tag = "webhooks",
    params(("webhook_id" = i32, Path, description = "Webhook id")),
    responses(
        (status = 200, description = "The attempt's outcome (also when the receiver failed)", body = TestOut),
        (status = 401, description = "Missing or invalid token", body = ErrorOut),
        (status = 404, description = "No such webhook", body = ErrorOut),
        (status = 409, description = "A pull webhook: nothing is sent to it", body = ErrorOut),
        (status = 422, description = "Id is not an integer", body = HttpValidationError),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[instrument(skip_all, fields(webhook_id))]
pub async fn test(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = webhook_id(&path)?;
    tracing::Span::current().record("webhook_id", id);
    let webhook = {
        let mut conn = state.conn().await?;
        db::get_webhook(&mut conn, id)
            .await?
            .ok_or_else(ApiError::webhook_not_found)?
    };
    // The receiver sees the test delivery as part of the request's trace.
    let traceparent = telemetry::trace::traceparent_of(&tracing::Span::current());
    let (row, latency) = test_delivery::send(&state, &webhook, traceparent).await?;
    let success = row.status == DeliveryStatus::Success;
    tracing::info!(success, status = ?row.response_status, "test delivery sent");
    Ok(HttpResponse::Ok().json(TestOut {
        success,
        response_status: row.response_status,
        response_body: row.response_body,
        error: row.error_message,
        latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
        delivery_id: row.id,
    }))
}

/// Queue a new attempt of a delivery for the delivery worker.
#[utoipa::path(
    post, path = "/webhooks/{webhook_id}/deliveries/{delivery_id}/retry", tag = "deliveries",
    params(
        ("webhook_id" = i32, Path, description = "Webhook id"),
        ("delivery_id" = i64, Path, description = "Delivery id"),
    ),
    responses(
        (status = 202, description = "Queued", body = RetryOut),
        (status = 401, description = "Missing or invalid token", body = ErrorOut),
        (status = 404, description = "No such webhook or delivery", body = ErrorOut),
        (status = 409, description = "A pull webhook: nothing is sent to it", body = ErrorOut),
        (status = 422, description = "Id is not an integer", body = HttpValidationError),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[instrument(skip_all)]
pub async fn retry(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (raw_webhook, raw_delivery) = path.into_inner();
    let id = webhook_id(&raw_webhook)?;
    let delivery_id = path_id(
        &raw_delivery,
        "delivery_id",
        ApiError::NotFound("Delivery not found"),
    )?;
    let mut conn = state.conn().await?;
    if let Some(w) = db::get_webhook(&mut conn, id).await?
        && w.is_pull()
    {
        return Err(ApiError::pull_only());
    }
    match db::queue_retry(&mut conn, id, delivery_id).await? {
        Retry::WebhookMissing => Err(ApiError::webhook_not_found()),
        Retry::DeliveryMissing => Err(ApiError::NotFound("Delivery not found")),
        Retry::Queued { row, already } => {
            tracing::info!(
                webhook_id = id,
                delivery_id,
                queued = row.id,
                already,
                "retry queued"
            );
            Ok(HttpResponse::Accepted().json(RetryOut {
                status: "queued".to_owned(),
                delivery_id: row.id,
                retry_of: delivery_id,
                attempt_number: row.attempt_number,
                next_retry_at: row.next_retry_at,
                already_queued: already,
            }))
        }
    }
}

/// A new random secret: 40 letters and digits (about 238 bits).
pub fn generate_secret() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(40)
        .map(char::from)
        .collect()
}

/// Set a new secret; the previous one keeps signing for a grace period.
#[utoipa::path(
    post, path = "/webhooks/{webhook_id}/rotate-secret", tag = "webhooks",
    params(("webhook_id" = i32, Path, description = "Webhook id")),
    request_body(content = Option<RotateIn>, description = "Optional; an empty body generates a secret and uses the default grace period"),
    responses(
        (status = 200, description = "Rotated; a generated secret is returned this once", body = RotateOut),
        (status = 401, description = "Missing or invalid token", body = ErrorOut),
        (status = 404, description = "No such webhook", body = ErrorOut),
        (status = 409, description = "A secret that is not a signing key for an ed25519 webhook", body = ErrorOut),
        (status = 422, description = "Validation error", body = HttpValidationError),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[instrument(skip_all)]
pub async fn rotate(
    state: web::Data<AppState>,
    path: web::Path<String>,
    JsonBody(input): JsonBody<RotateIn>,
) -> Result<HttpResponse, ApiError> {
    let id = webhook_id(&path)?;
    let mut conn = state.conn().await?;
    let scheme = db::get_webhook(&mut conn, id)
        .await?
        .ok_or_else(ApiError::webhook_not_found)?
        .signature_scheme;
    // An ed25519 webhook gets a new signing key; its public key is in the
    // webhook, and the private key is never shown.
    let (secret, generated) = match (input.secret, scheme) {
        (Some(s), SignatureScheme::Ed25519) if Ed25519Key::from_secret_text(&s).is_err() => {
            return Err(ApiError::Conflict(
                "secret: this webhook signs with ed25519; its secret is a signing key, whsk_ \
                 and the base64 of 32 bytes (leave it out to have one generated)"
                    .to_owned(),
            ));
        }
        (Some(s), _) => (s, false),
        (None, SignatureScheme::Ed25519) => (new_signing_key()?, false),
        (None, SignatureScheme::Hmac) => (generate_secret(), true),
    };
    let sealed = seal_secret(&state.keys, &secret)?;
    let grace = match input.grace_period_seconds {
        Some(s) => chrono::Duration::seconds(s),
        None => chrono::Duration::from_std(state.rotation_grace)
            .unwrap_or_else(|_| chrono::Duration::hours(24)),
    };
    let until = (grace > chrono::Duration::zero()).then(|| Utc::now() + grace);
    let row = db::rotate_secret(&mut conn, id, sealed, until)
        .await?
        .ok_or_else(ApiError::webhook_not_found)?;
    tracing::info!(webhook_id = id, generated, "webhook secret rotated");
    state.notifier.notify(id, Op::Rotated);
    let previous_secret_expires_at = row.previous_secret_expires_at;
    let circuit = audit::circuit(&mut conn, id).await?;
    Ok(HttpResponse::Ok().json(RotateOut {
        webhook: WebhookOut::new(row, &state.keys, circuit),
        secret: generated.then_some(secret),
        previous_secret_expires_at,
    }))
}
