//! Recover, replay and bulk retry: jobs the registry records and the
//! delivery worker runs (docs/architecture.md, "Replay, recover and bulk
//! retry"). A new job answers 202; while the webhook has an unfinished
//! job, a new request answers 200 with that one.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use storage::jobs::{self, Changed, Created, JobKind, NewJob};
use storage::models::DeliveryStatus;
use tracing::instrument;

use crate::error::{ApiError, ErrorOut, HttpValidationError};
use crate::extract::{FromQuery, JsonBody, Query, path_id};
use crate::model::{BulkRetryIn, JobOut, JobPage, RecoverIn, ReplayIn};
use crate::model::{LIMIT, OFFSET};
use crate::state::AppState;
use storage::webhooks as db;

fn webhook_id(raw: &str) -> Result<i32, ApiError> {
    path_id(raw, "webhook_id", ApiError::webhook_not_found())
}

fn job_not_found() -> ApiError {
    ApiError::NotFound("Job not found")
}

/// What recover, replay and bulk retry answer.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // describes the responses; `start` builds them
enum JobStarted {
    #[response(status = 202, description = "Job queued; `Location` names it")]
    Queued(JobOut),
    #[response(
        status = 200,
        description = "The webhook already has an unfinished job: that one"
    )]
    Existing(JobOut),
    #[response(status = 401, description = "Missing or invalid token")]
    Unauthorized(ErrorOut),
    #[response(status = 404, description = "No such webhook")]
    NoWebhook(ErrorOut),
    #[response(
        status = 409,
        description = "The webhook is disabled, or a pull webhook (nothing is sent to it)"
    )]
    Disabled(ErrorOut),
    #[response(status = 413, description = "Body too large")]
    TooLarge(ErrorOut),
    #[response(status = 422, description = "Validation error")]
    Invalid(HttpValidationError),
}

/// Records a job for an active webhook, or finds its unfinished one.
async fn start(state: &AppState, new: NewJob) -> Result<HttpResponse, ApiError> {
    let id = new.webhook_id;
    let mut conn = state.conn().await?;
    let webhook = db::get_webhook(&mut conn, id)
        .await?
        .ok_or_else(ApiError::webhook_not_found)?;
    if webhook.is_pull() {
        return Err(ApiError::pull_only());
    }
    if !webhook.is_active {
        return Err(ApiError::Conflict(
            "Webhook is disabled; enable it before starting a job".to_owned(),
        ));
    }
    let job_kind = new.kind;
    match jobs::create(&mut conn, new).await? {
        Created::New(job) => {
            tracing::info!(webhook_id = id, job_id = job.id, kind = %job_kind, "job queued");
            Ok(HttpResponse::Accepted()
                .insert_header((header::LOCATION, format!("/webhooks/{id}/jobs/{}", job.id)))
                .json(JobOut::from(job)))
        }
        Created::Existing(job) => Ok(HttpResponse::Ok()
            .insert_header((header::LOCATION, format!("/webhooks/{id}/jobs/{}", job.id)))
            .json(JobOut::from(job))),
    }
}

/// Re-send every event of a window whose last attempt failed.
#[utoipa::path(
    post, path = "/webhooks/{webhook_id}/recover", tag = "jobs",
    params(("webhook_id" = i32, Path, description = "Webhook id")),
    request_body = RecoverIn,
    responses(JobStarted),
    security(("bearer" = []), ("api_key" = []))
)]
#[instrument(skip_all)]
pub async fn recover(
    state: web::Data<AppState>,
    path: web::Path<String>,
    JsonBody(input): JsonBody<RecoverIn>,
) -> Result<HttpResponse, ApiError> {
    let id = webhook_id(&path)?;
    start(
        &state,
        NewJob {
            webhook_id: id,
            kind: JobKind::Recover,
            since: Some(input.since),
            until: input.until,
            since_seq: None,
            delivery_status: Some(DeliveryStatus::Failed),
            rate_per_s: input.rate_per_s.unwrap_or(state.job_default_rate_per_s),
        },
    )
    .await
}

/// Deliver the stored events of a window from the stream, in order.
#[utoipa::path(
    post, path = "/webhooks/{webhook_id}/replay", tag = "jobs",
    params(("webhook_id" = i32, Path, description = "Webhook id")),
    request_body(content = Option<ReplayIn>, description = "Optional; an empty body replays everything the stream holds"),
    responses(JobStarted),
    security(("bearer" = []), ("api_key" = []))
)]
#[instrument(skip_all)]
pub async fn replay(
    state: web::Data<AppState>,
    path: web::Path<String>,
    JsonBody(input): JsonBody<ReplayIn>,
) -> Result<HttpResponse, ApiError> {
    let id = webhook_id(&path)?;
    // Neither given: everything the stream holds.
    let since_seq = match (input.since, input.since_seq) {
        (None, None) => Some(0),
        (_, s) => s,
    };
    start(
        &state,
        NewJob {
            webhook_id: id,
            kind: JobKind::Replay,
            since: input.since,
            until: input.until,
            since_seq,
            delivery_status: None,
            rate_per_s: input.rate_per_s.unwrap_or(state.job_default_rate_per_s),
        },
    )
    .await
}

/// Retry every matching failed delivery of the webhook.
#[utoipa::path(
    post, path = "/webhooks/{webhook_id}/deliveries/retry", tag = "jobs",
    params(("webhook_id" = i32, Path, description = "Webhook id")),
    request_body(content = Option<BulkRetryIn>, description = "Optional; an empty body retries every failed delivery"),
    responses(JobStarted),
    security(("bearer" = []), ("api_key" = []))
)]
#[instrument(skip_all)]
pub async fn bulk_retry(
    state: web::Data<AppState>,
    path: web::Path<String>,
    JsonBody(input): JsonBody<BulkRetryIn>,
) -> Result<HttpResponse, ApiError> {
    let id = webhook_id(&path)?;
    start(
        &state,
        NewJob {
            webhook_id: id,
            kind: JobKind::Retry,
            since: input.since,
            until: input.until,
            since_seq: None,
            delivery_status: Some(input.status.unwrap_or(DeliveryStatus::Failed)),
            rate_per_s: input.rate_per_s.unwrap_or(state.job_default_rate_per_s),
        },
    )
    .await
}

/// Query of `GET /webhooks/{id}/jobs`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobParams {
    #[param(value_type = Option<i64>)]
    pub limit: i64,
    #[param(value_type = Option<i64>)]
    pub offset: i64,
}

impl FromQuery for JobParams {
    fn from_query(q: &mut Query) -> Self {
        Self {
            limit: q.param(&LIMIT),
            offset: q.param(&OFFSET),
        }
    }
}

/// A webhook's jobs, newest first.
#[utoipa::path(
    get, path = "/webhooks/{webhook_id}/jobs", tag = "jobs",
    params(("webhook_id" = i32, Path, description = "Webhook id"), JobParams),
    responses(
        (status = 200, description = "A page of jobs", body = JobPage),
        (status = 401, description = "Missing or invalid token", body = ErrorOut),
        (status = 404, description = "No such webhook", body = ErrorOut),
        (status = 422, description = "Validation error", body = HttpValidationError),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[instrument(skip_all)]
pub async fn list(
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let params = Query::read::<JobParams>(req.query_string());
    let id = webhook_id(&path)?;
    let JobParams { limit, offset } = params?;
    let mut conn = state.conn().await?;
    db::get_webhook(&mut conn, id)
        .await?
        .ok_or_else(ApiError::webhook_not_found)?;
    let (items, total) = jobs::list(&mut conn, id, limit, offset).await?;
    Ok(HttpResponse::Ok().json(JobPage {
        items: items.into_iter().map(JobOut::from).collect(),
        total,
        limit,
        offset,
    }))
}

/// The path of one job, `/webhooks/{webhook_id}/jobs/{job_id}`: what the
/// OpenAPI document names and what the handlers parse the raw segments
/// into (a number out of range is 404, not 422).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct JobPath {
    /// Webhook id
    pub webhook_id: i32,
    /// Job id
    pub job_id: i64,
}

/// What every operation on one job may answer besides its own.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // describes the responses; `ApiError` builds them
enum JobErrors {
    #[response(status = 401, description = "Missing or invalid token")]
    Unauthorized(ErrorOut),
    #[response(status = 404, description = "No such webhook or job")]
    NotFound(ErrorOut),
    #[response(status = 422, description = "Id is not an integer")]
    Invalid(HttpValidationError),
}

impl JobPath {
    fn parse(path: web::Path<(String, String)>) -> Result<Self, ApiError> {
        let (webhook_id, job_id) = path.into_inner();
        Ok(Self {
            webhook_id: self::webhook_id(&webhook_id)?,
            job_id: path_id(&job_id, "job_id", job_not_found())?,
        })
    }
}

/// One job: its status and progress.
#[utoipa::path(
    get, path = "/webhooks/{webhook_id}/jobs/{job_id}", tag = "jobs",
    params(JobPath),
    responses(
        (status = 200, description = "The job", body = JobOut),
        JobErrors,
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[instrument(skip_all)]
pub async fn get(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let JobPath { webhook_id, job_id } = JobPath::parse(path)?;
    let mut conn = state.conn().await?;
    let job = jobs::get(&mut conn, webhook_id, job_id)
        .await?
        .ok_or_else(job_not_found)?;
    Ok(HttpResponse::Ok().json(JobOut::from(job)))
}

/// Cancel a job: the worker stops after the deliveries in flight. A
/// finished job is returned as it is.
#[utoipa::path(
    delete, path = "/webhooks/{webhook_id}/jobs/{job_id}", tag = "jobs",
    params(JobPath),
    responses(
        (status = 200, description = "The job, cancelled unless it had finished", body = JobOut),
        JobErrors,
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[instrument(skip_all)]
pub async fn cancel(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let JobPath { webhook_id, job_id } = JobPath::parse(path)?;
    let mut conn = state.conn().await?;
    let job = jobs::cancel(&mut conn, webhook_id, job_id)
        .await?
        .ok_or_else(job_not_found)?;
    tracing::info!(webhook_id, job_id, status = %job.status, "job cancel requested");
    Ok(HttpResponse::Ok().json(JobOut::from(job)))
}

/// Pause a queued or running job: the worker stops after the deliveries in
/// flight, keeping the job's progress; no worker runs it until it is
/// resumed. It stays the webhook's one unfinished job.
#[utoipa::path(
    post, path = "/webhooks/{webhook_id}/jobs/{job_id}/pause", tag = "jobs",
    params(JobPath),
    responses(
        (status = 200, description = "The job, paused", body = JobOut),
        (status = 409, description = "The job has finished", body = ErrorOut),
        JobErrors,
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[instrument(skip_all)]
pub async fn pause(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    change(state, path, Change::Pause).await
}

/// Resume a paused job where it stopped. A queued or running job is
/// returned as it is.
#[utoipa::path(
    post, path = "/webhooks/{webhook_id}/jobs/{job_id}/resume", tag = "jobs",
    params(JobPath),
    responses(
        (status = 200, description = "The job, queued to run again", body = JobOut),
        (status = 409, description = "The job has finished", body = ErrorOut),
        JobErrors,
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[instrument(skip_all)]
pub async fn resume(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    change(state, path, Change::Resume).await
}

/// A pause or a resume.
#[derive(Clone, Copy)]
enum Change {
    Pause,
    Resume,
}

/// Pauses or resumes the job the path names; a finished job is a 409.
async fn change(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    change: Change,
) -> Result<HttpResponse, ApiError> {
    let JobPath { webhook_id, job_id } = JobPath::parse(path)?;
    let mut conn = state.conn().await?;
    let (changed, what) = match change {
        Change::Pause => (jobs::pause(&mut conn, webhook_id, job_id).await?, "paused"),
        Change::Resume => (
            jobs::resume(&mut conn, webhook_id, job_id).await?,
            "resumed",
        ),
    };
    match changed.ok_or_else(job_not_found)? {
        Changed::Done(job) => {
            tracing::info!(webhook_id, job_id, status = %job.status, "job {what}");
            Ok(HttpResponse::Ok().json(JobOut::from(job)))
        }
        Changed::Refused(job) => Err(ApiError::Conflict(format!(
            "Job is {}; only an unfinished job can be {what}",
            job.status
        ))),
    }
}
