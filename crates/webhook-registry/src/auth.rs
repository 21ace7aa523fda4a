//! Token authentication for every `/webhooks` route: `Authorization:
//! Bearer <token>` or `X-API-Key: <token>` (read by
//! [`storage::tokens::presented_token`]), checked by the shared
//! [`storage::tokens::TokenAuth`] (3 s cache, batched `last_used_*` writes).

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};
use storage::tokens::{self, Presented};

use crate::error::ApiError;
use crate::state::AppState;

pub const MISSING: &str = "Missing API key";
pub const INVALID: &str = "Invalid or expired API key";

/// The token of a request ([`tokens::presented_token`]).
pub fn presented(headers: &HeaderMap) -> Presented<'_> {
    tokens::presented_token(
        headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()),
        headers.get("x-api-key").map(|v| v.as_bytes()),
    )
}

/// The client address recorded as `last_used_ip`: the peer, or the
/// forwarded client when the proxy is trusted.
fn client_ip(req: &ServiceRequest, trust_forwarded: bool) -> Option<String> {
    if trust_forwarded {
        let info = req.connection_info();
        return info.realip_remote_addr().map(|a| {
            // "ip:port" or "[v6]:port" or a bare ip
            a.parse::<std::net::SocketAddr>()
                .map(|s| s.ip().to_string())
                .unwrap_or_else(|_| a.to_owned())
        });
    }
    req.peer_addr().map(|a| a.ip().to_string())
}

/// Middleware: 503 until the database is ready, 401 without a usable
/// token; otherwise the [`storage::tokens::Principal`] goes into the
/// request extensions.
pub async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or(ApiError::Internal)?;
    if !state.is_ready() {
        return Err(ApiError::Unavailable("Service unavailable: the database is not ready").into());
    }
    let principal = {
        let token = match presented(req.headers()) {
            Presented::None => return Err(ApiError::Unauthorized(MISSING).into()),
            Presented::Unreadable => return Err(ApiError::Unauthorized(INVALID).into()),
            Presented::Token(t) => t.to_owned(),
        };
        let ip = client_ip(&req, state.trust_forwarded_for);
        state
            .auth
            .authenticate(&token, ip.as_deref())
            .await
            .map_err(ApiError::from)?
    };
    match principal {
        Some(p) => {
            req.extensions_mut().insert(p);
            next.call(req).await
        }
        None => Err(ApiError::Unauthorized(INVALID).into()),
    }
}
