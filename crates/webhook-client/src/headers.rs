//! Custom request headers a webhook may add to every POST.
//!
//! They go after the sender's own headers and can never replace one:
//! [`check_custom_header`] refuses, case-insensitively,
//! - hop-by-hop headers (RFC 9110 7.6.1 and the proxy ones): `Connection`,
//!   `Keep-Alive`, `Proxy-Authenticate`, `Proxy-Authorization`, `TE`,
//!   `Trailer`, `Transfer-Encoding`, `Upgrade`;
//! - what the HTTP client sets from the request itself: `Host`,
//!   `Content-Length`, `Content-Type`, `Expect` (no `100-continue` here);
//! - the webhook's own headers: `X-Webhook-Signature`, `X-Webhook-Event`,
//!   `X-Webhook-Id`, `webhook-id`, `webhook-timestamp`, `webhook-signature`,
//!   `traceparent` (and `tracestate`, which belongs to it);
//! - `User-Agent`: receivers allow-list deliveries by it, so it stays ours.
//!
//! `Authorization` is allowed here, but a webhook with receiver
//! authentication ([`crate::Auth`]) must not also carry a custom
//! `Authorization`: the caller (the API) refuses that pair. The sender
//! enforces the same order anyway: a custom header whose name is already
//! set (ours, or the `Authorization` of [`crate::Auth`]) is dropped.

use reqwest::header::{HeaderName, HeaderValue};

/// Names [`check_custom_header`] refuses (lowercase), with the reason.
const REFUSED: &[(&str, &str)] = &[
    ("connection", "a hop-by-hop header"),
    ("keep-alive", "a hop-by-hop header"),
    ("proxy-authenticate", "a hop-by-hop header"),
    ("proxy-authorization", "a hop-by-hop header"),
    ("te", "a hop-by-hop header"),
    ("trailer", "a hop-by-hop header"),
    ("transfer-encoding", "a hop-by-hop header"),
    ("upgrade", "a hop-by-hop header"),
    ("host", "set by the HTTP client"),
    ("content-length", "set by the HTTP client"),
    ("content-type", "set by the sender"),
    ("expect", "set by the HTTP client"),
    ("user-agent", "set by the sender"),
    ("x-webhook-signature", "a webhook header"),
    ("x-webhook-event", "a webhook header"),
    ("x-webhook-id", "a webhook header"),
    ("webhook-id", "a webhook header"),
    ("webhook-timestamp", "a webhook header"),
    ("webhook-signature", "a webhook header"),
    ("traceparent", "a trace context header"),
    ("tracestate", "a trace context header"),
];

/// The names [`check_custom_header`] refuses, lowercase (what the API's
/// schema states).
pub fn refused_header_names() -> impl Iterator<Item = &'static str> {
    REFUSED.iter().map(|(n, _)| *n)
}

/// Checks one custom header and returns it ready to send, the value marked
/// sensitive (never printed by `Debug` of a header map). The error is a
/// sentence naming the header (never the value).
pub fn check_custom_header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))?;
    if let Some((_, why)) = REFUSED.iter().find(|(n, _)| *n == parsed.as_str()) {
        return Err(format!("header {name} cannot be set: it is {why}"));
    }
    let mut value = HeaderValue::from_str(value).map_err(|_| {
        format!("the value of header {name} is not a valid header value (visible ASCII, spaces and tabs only)")
    })?;
    value.set_sensitive(true);
    Ok((parsed, value))
}

/// Whether the sender drops a custom header of this (already lowercase) name.
pub(crate) fn is_refused(name: &HeaderName) -> bool {
    REFUSED.iter().any(|(n, _)| *n == name.as_str())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn ordinary_headers_pass_and_are_sensitive() {
        let (n, v) = check_custom_header("X-Tenant", "acme 42").unwrap();
        assert_eq!(n.as_str(), "x-tenant");
        assert_eq!(v.to_str().unwrap(), "acme 42");
        assert!(v.is_sensitive());
        assert!(check_custom_header("Authorization", "Token abc").is_ok());
        assert!(check_custom_header("Accept", "application/json").is_ok());
    }

    #[test]
    fn ours_and_hop_by_hop_are_refused_in_any_case() {
        for name in [
            "Connection",
            "KEEP-ALIVE",
            "proxy-authorization",
            "Proxy-Authenticate",
            "te",
            "Trailer",
            "Transfer-Encoding",
            "upgrade",
            "Host",
            "content-length",
            "Content-Type",
            "User-Agent",
            "x-webhook-signature",
            "X-Webhook-Event",
            "X-WEBHOOK-ID",
            "Webhook-Id",
            "webhook-timestamp",
            "WEBHOOK-SIGNATURE",
            "Traceparent",
            "Expect",
        ] {
            let err = check_custom_header(name, "v").unwrap_err();
            assert!(
                err.starts_with(&format!("header {name} cannot be set: it is ")),
                "{err}"
            );
        }
    }

    #[test]
    fn invalid_names_and_values_are_refused_without_the_value() {
        let err = check_custom_header("X Bad", "v").unwrap_err();
        assert_eq!(err, "\"X Bad\" is not a valid header name");
        assert!(check_custom_header("", "v").is_err());
        assert!(check_custom_header("X-Ok:", "v").is_err());
        let err = check_custom_header("X-Ok", "secret\r\nInjected: 1").unwrap_err();
        assert!(err.starts_with("the value of header X-Ok is not"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        assert!(check_custom_header("X-Ok", "tab\tok").is_ok());
    }
}
