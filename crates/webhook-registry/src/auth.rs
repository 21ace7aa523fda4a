//! Token authentication for every `/webhooks` route: `Authorization:
//! Bearer <token>` or `X-API-Key: <token>`, checked by the shared
//! [`storage::tokens::TokenAuth`] (3 s cache, batched `last_used_*` writes).

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};

use crate::error::ApiError;
use crate::state::AppState;

pub const MISSING: &str = "Missing API key";
pub const INVALID: &str = "Invalid or expired API key";

/// What the request carried.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    None,
    /// Present but not visible ASCII: can never be a valid token.
    Unreadable,
    Token(&'a str),
}

/// The token of a request: a Bearer `Authorization` first, then
/// `X-API-Key`. Empty values count as missing.
pub fn presented(headers: &HeaderMap) -> Presented<'_> {
    let mut unreadable = false;
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        match v.to_str() {
            Ok(s) => {
                let s = s.trim();
                if let Some((scheme, rest)) = s.split_once(' ')
                    && scheme.eq_ignore_ascii_case("bearer")
                    && !rest.trim().is_empty()
                {
                    return Presented::Token(rest.trim());
                }
            }
            Err(_) => unreadable = true,
        }
    }
    if let Some(v) = headers.get("x-api-key") {
        match v.to_str() {
            Ok(s) if !s.trim().is_empty() => return Presented::Token(s.trim()),
            Ok(_) => {}
            Err(_) => unreadable = true,
        }
    }
    if unreadable {
        Presented::Unreadable
    } else {
        Presented::None
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn map(pairs: &[(&'static str, &'static [u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                h.insert(header::HeaderName::from_static(k), v);
            }
        }
        h
    }

    #[test]
    fn token_sources() {
        assert_eq!(presented(&map(&[])), Presented::None);
        assert_eq!(
            presented(&map(&[("authorization", b"Bearer abc")])),
            Presented::Token("abc")
        );
        assert_eq!(
            presented(&map(&[("authorization", b"bearer  abc ")])),
            Presented::Token("abc")
        );
        assert_eq!(
            presented(&map(&[("x-api-key", b"k1")])),
            Presented::Token("k1")
        );
        assert_eq!(
            presented(&map(&[
                ("authorization", b"Basic Zm9v"),
                ("x-api-key", b"k2")
            ])),
            Presented::Token("k2")
        );
        assert_eq!(
            presented(&map(&[("authorization", b"Bearer ")])),
            Presented::None
        );
        assert_eq!(
            presented(&map(&[("x-api-key", b"\xff\xfe")])),
            Presented::Unreadable
        );
    }
}
