//! The one error type of the API and its mapping to HTTP, in one place.
//!
//! Every failure answers JSON: `{"detail": "..."}` for plain errors and
//! FastAPI's `{"detail": [{"type", "loc", "msg", "input"?, "ctx"?}]}` for
//! validation errors (what the bot's clients already parse).

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use serde_json::{Value, json};
use storage::StorageError;
use utoipa::ToSchema;

use crate::head_guard::Refusal;

/// One element of a validation error's `loc`: a name or a position.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum LocItem {
    Name(String),
    Index(u64),
}

impl From<&str> for LocItem {
    fn from(s: &str) -> Self {
        LocItem::Name(s.to_owned())
    }
}

/// One bad field, as FastAPI (pydantic v2) reports it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FieldError {
    /// Machine-readable kind, e.g. `missing`, `string_too_long`, `value_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Where: `["body", "url"]`, `["query", "limit"]`, `["path", "webhook_id"]`.
    pub loc: Vec<LocItem>,
    pub msg: String,
    /// The offending value (never for secrets).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub input: Option<Value>,
    /// Details such as limits (`{"max_length": 255}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub ctx: Option<Value>,
}

impl FieldError {
    pub fn new(loc: &[&str], kind: &str, msg: impl Into<String>) -> Self {
        Self {
            kind: kind.to_owned(),
            loc: loc.iter().map(|s| LocItem::from(*s)).collect(),
            msg: msg.into(),
            input: None,
            ctx: None,
        }
    }

    pub fn input(mut self, input: Value) -> Self {
        self.input = Some(input);
        self
    }

    pub fn ctx(mut self, ctx: Value) -> Self {
        self.ctx = Some(ctx);
        self
    }

    /// `missing` / "Field required".
    pub fn missing(loc: &[&str]) -> Self {
        Self::new(loc, "missing", "Field required")
    }

    /// pydantic's `value_error` from a custom validator.
    pub fn value_error(loc: &[&str], reason: &str) -> Self {
        Self::new(loc, "value_error", format!("Value error, {reason}"))
            .ctx(json!({ "error": reason }))
    }
}

/// `{"detail": "..."}`
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorOut {
    pub detail: String,
}

/// `{"detail": [FieldError, ...]}` (422)
#[derive(Debug, Serialize, ToSchema)]
pub struct HttpValidationError {
    pub detail: Vec<FieldError>,
}

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    MethodNotAllowed(&'static str),
    #[error("{0}")]
    Conflict(String),
    /// A pull cursor that does not name a position of the stream: 409 with
    /// the cursor to read on from (`restart`).
    #[error("{detail}")]
    StaleCursor { detail: String, restart: String },
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("{0}")]
    Unavailable(&'static str),
    /// A request head the connection guard refused (`head_guard`).
    #[error("{}", .0.detail())]
    Refused(Refusal),
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn one(e: FieldError) -> Self {
        ApiError::Validation(vec![e])
    }

    pub fn webhook_not_found() -> Self {
        ApiError::NotFound("Webhook not found")
    }

    /// Sending to a pull webhook (a test, a retry, a job): nothing is ever
    /// sent to one.
    pub fn pull_only() -> Self {
        ApiError::Conflict(
            "This is a pull webhook: nothing is sent to it; its owner reads its events with GET /webhooks/{id}/pull"
                .to_owned(),
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) | ApiError::StaleCursor { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Refused(why) => {
                StatusCode::from_u16(why.status()).unwrap_or(StatusCode::BAD_REQUEST)
            }
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status_code());
        match self {
            ApiError::Validation(errors) => resp.json(HttpValidationError {
                detail: errors.clone(),
            }),
            ApiError::Unauthorized(detail) => resp
                .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
                .json(json!({ "detail": detail })),
            ApiError::Unavailable(detail) => resp
                .insert_header((header::RETRY_AFTER, "5"))
                .json(json!({ "detail": detail })),
            ApiError::PayloadTooLarge(limit) => resp.json(json!({
                "detail": format!("Request body too large (limit {limit} bytes)")
            })),
            ApiError::Internal => resp.json(json!({ "detail": "Internal server error" })),
            ApiError::StaleCursor { detail, restart } => {
                resp.json(json!({ "detail": detail, "restart": restart }))
            }
            other => resp.json(json!({ "detail": other.to_string() })),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "database unavailable");
            return ApiError::Unavailable("Service unavailable: the database cannot be reached");
        }
        if e.is_transient() {
            tracing::warn!(error = %e, "transient database error");
            return ApiError::Unavailable("Service unavailable: please retry");
        }
        if e.is_conflict() {
            tracing::info!(error = %e, "write refused by a constraint");
            return ApiError::Conflict(
                "The request conflicts with the current state of the resource".to_owned(),
            );
        }
        if e.is_not_found() {
            return ApiError::NotFound("Not Found");
        }
        tracing::error!(error = %e, "database error");
        ApiError::Internal
    }
}
