//! The HTTP side: one pooled reqwest client, an SSRF-checking resolver, and
//! the per-attempt outcome.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};

use crate::signing::{standard_signature, x_webhook_signature};
use crate::ssrf::{article, is_forbidden};
use crate::{MAX_STORED_BODY_CHARS, USER_AGENT};

static X_WEBHOOK_EVENT: HeaderName = HeaderName::from_static("x-webhook-event");
static X_WEBHOOK_ID: HeaderName = HeaderName::from_static("x-webhook-id");
static X_WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("x-webhook-signature");
static WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
static WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
static WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Settings of a [`WebhookSender`].
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// TCP connect timeout (default 5 s).
    pub connect_timeout: Duration,
    /// Whole attempt, from connecting to the end of the response body (default 10 s).
    pub total_timeout: Duration,
    /// At most this many response-body bytes are read (default 64 KiB).
    pub max_response_bytes: usize,
    /// Allow loopback/private/link-local/metadata destinations (default false).
    pub allow_private_targets: bool,
    /// Idle keep-alive connections kept per host (default 64).
    pub pool_idle_per_host: usize,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(10),
            max_response_bytes: 64 * 1024,
            allow_private_targets: false,
            pool_idle_per_host: 64,
        }
    }
}

/// The HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the webhook HTTP client: {source}")]
pub struct BuildError {
    #[source]
    source: reqwest::Error,
}

/// One webhook POST to make. `Debug` never shows the secrets or the URL.
pub struct Outbound<'a> {
    pub url: &'a str,
    pub webhook_id: i32,
    pub event_type: &'a str,
    /// `webhook-id` header (see [`crate::message_id`]).
    pub message_id: &'a str,
    /// `webhook-timestamp` header (unix seconds).
    pub timestamp: i64,
    /// Canonical JSON bytes, POSTed and signed as is.
    pub body: bytes::Bytes,
    /// Current secret first, then still-valid previous ones; empty = unsigned.
    /// Empty strings are ignored (an empty secret means "no secret", as in the seed).
    pub secrets: &'a [&'a str],
    /// W3C trace context, passed through when present (dropped if not a valid header value).
    pub traceparent: Option<&'a str>,
}

impl fmt::Debug for Outbound<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbound")
            .field("url", &"<redacted>")
            .field("webhook_id", &self.webhook_id)
            .field("event_type", &self.event_type)
            .field("message_id", &self.message_id)
            .field("timestamp", &self.timestamp)
            .field("body_len", &self.body.len())
            .field(
                "secrets",
                &format_args!("<{} redacted>", self.secrets.len()),
            )
            .field("traceparent", &self.traceparent)
            .finish()
    }
}

/// One event for one webhook, as every delivery sends it: signed with the
/// webhook's secrets, `webhook-id` made from the event's id and the webhook
/// ([`crate::message_id`]). `Debug` is not derived: it holds the secrets.
pub struct Event<'a> {
    pub url: &'a str,
    pub webhook_id: i32,
    pub event_type: &'a str,
    /// The event's id, the same on every attempt of the event.
    pub event_id: &'a str,
    /// Canonical JSON bytes, POSTed and signed as is.
    pub body: bytes::Bytes,
    /// As in [`Outbound::secrets`].
    pub secrets: &'a [&'a str],
    pub traceparent: Option<&'a str>,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verdict {
    /// Status 200..=299.
    Success,
    /// No response, or a status that is neither 2xx nor 410.
    #[default]
    Failed,
    /// Status 410: the receiver asks to stop.
    Gone,
    /// SSRF refusal: no request was sent.
    Refused,
}

/// What happened to one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AttemptOutcome {
    pub verdict: Verdict,
    pub response_status: Option<u16>,
    /// Lossy UTF-8 of at most `max_response_bytes`, cut to
    /// [`MAX_STORED_BODY_CHARS`] characters. `Some` whenever a response arrived.
    pub response_body: Option<String>,
    /// Reason of a failure (`None` on success). Names at most the host, never
    /// the URL or a secret.
    pub error: Option<String>,
    pub latency: Duration,
    /// From `Retry-After` (seconds or HTTP date) on 429 and 503 only.
    pub retry_after: Option<Duration>,
}

impl AttemptOutcome {
    /// The receiver answered 2xx.
    pub fn is_success(&self) -> bool {
        self.verdict == Verdict::Success
    }
}

/// Signs and POSTs webhooks. Cheap to clone (shares the connection pool).
#[derive(Clone)]
pub struct WebhookSender {
    client: reqwest::Client,
    cfg: Arc<SenderConfig>,
}

impl fmt::Debug for WebhookSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSender")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl WebhookSender {
    /// Builds the client once: timeouts, no redirects, no proxy, the
    /// `USER_AGENT`, connection pooling, and the SSRF-checking resolver.
    /// Does not need a global rustls `CryptoProvider` (reqwest falls back to
    /// its own aws-lc-rs provider).
    pub fn new(cfg: SenderConfig) -> Result<Self, BuildError> {
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.total_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(USER_AGENT)
            .pool_max_idle_per_host(cfg.pool_idle_per_host)
            .http1_title_case_headers()
            .dns_resolver(Arc::new(GuardedResolver {
                check: !cfg.allow_private_targets,
            }))
            .build()
            .map_err(|source| BuildError { source })?;
        Ok(Self {
            client,
            cfg: Arc::new(cfg),
        })
    }

    /// The configuration this sender was built with.
    #[must_use]
    pub fn config(&self) -> &SenderConfig {
        &self.cfg
    }

    /// Makes one attempt. Never panics and never returns an error: every
    /// failure is described in the outcome.
    pub async fn send(&self, req: &Outbound<'_>) -> AttemptOutcome {
        let started = Instant::now();
        let mut outcome = self.attempt(req).await;
        outcome.latency = started.elapsed();
        outcome
    }

    /// Makes one attempt of `event`, timestamped `now`.
    pub async fn send_event(&self, event: Event<'_>, now: DateTime<Utc>) -> AttemptOutcome {
        let message_id = crate::message_id(event.event_id, event.webhook_id);
        self.send(&Outbound {
            url: event.url,
            webhook_id: event.webhook_id,
            event_type: event.event_type,
            message_id: &message_id,
            timestamp: now.timestamp(),
            body: event.body,
            secrets: event.secrets,
            traceparent: event.traceparent,
        })
        .await
    }

    async fn attempt(&self, req: &Outbound<'_>) -> AttemptOutcome {
        let url = match reqwest::Url::parse(req.url) {
            Ok(u) => u,
            Err(e) => return failed(format!("invalid URL: {e}")),
        };
        if !matches!(url.scheme(), "http" | "https") {
            return failed(format!("unsupported URL scheme {:?}", url.scheme()));
        }
        // reqwest never hands an IP-literal host to the resolver: check it here.
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => None,
            None => return failed("URL has no host".to_owned()),
        };
        if !self.cfg.allow_private_targets
            && let Some(ip) = literal
            && let Some(reason) = is_forbidden(ip)
        {
            return AttemptOutcome {
                verdict: Verdict::Refused,
                error: Some(Refusal::Literal { ip, reason }.to_string()),
                ..AttemptOutcome::default()
            };
        }
        let headers = match build_headers(req) {
            Ok(h) => h,
            Err(e) => return failed(e),
        };

        let mut request = reqwest::Request::new(Method::POST, url);
        *request.headers_mut() = headers;
        *request.body_mut() = Some(reqwest::Body::from(req.body.clone()));

        match self.client.execute(request).await {
            Ok(resp) => self.read_response(resp).await,
            Err(err) => self.describe_error(&err),
        }
    }

    async fn read_response(&self, mut resp: reqwest::Response) -> AttemptOutcome {
        let status = resp.status();
        let retry_after = if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            resp.headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, Utc::now()))
        } else {
            None
        };

        let cap = self.cfg.max_response_bytes;
        let mut buf: Vec<u8> = Vec::new();
        // A body that fails mid-way (timeout, reset) keeps what was read: the
        // status already tells what the receiver decided.
        while buf.len() < cap {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    let take = chunk.len().min(cap - buf.len());
                    buf.extend_from_slice(&chunk[..take]);
                }
                Ok(None) | Err(_) => break,
            }
        }
        drop(resp);

        let code = status.as_u16();
        let verdict = if status.is_success() {
            Verdict::Success
        } else if status == StatusCode::GONE {
            Verdict::Gone
        } else {
            Verdict::Failed
        };
        let error = if verdict == Verdict::Success {
            None
        } else if status.is_redirection() {
            Some(format!("redirect ({code}) not followed"))
        } else {
            Some(format!("HTTP {code}"))
        };
        AttemptOutcome {
            verdict,
            response_status: Some(code),
            response_body: Some(stored_body(&buf)),
            error,
            latency: Duration::ZERO,
            retry_after,
        }
    }

    fn describe_error(&self, err: &reqwest::Error) -> AttemptOutcome {
        let chain =
            || std::iter::successors(Some(err as &(dyn StdError + 'static)), |&e| e.source());
        if let Some(refusal) = chain().find_map(|e| e.downcast_ref::<Refusal>()) {
            return AttemptOutcome {
                verdict: Verdict::Refused,
                error: Some(refusal.to_string()),
                ..AttemptOutcome::default()
            };
        }
        if let Some(lookup) = chain().find_map(|e| e.downcast_ref::<LookupFailed>()) {
            return failed(lookup.to_string());
        }
        if err.is_timeout() {
            return failed(if err.is_connect() {
                format!(
                    "connect timeout after {}",
                    humantime::format_duration(self.cfg.connect_timeout)
                )
            } else {
                format!(
                    "timeout after {}",
                    humantime::format_duration(self.cfg.total_timeout)
                )
            });
        }
        if let Some(io) = chain().find_map(|e| e.downcast_ref::<io::Error>()) {
            let known = match io.kind() {
                io::ErrorKind::ConnectionRefused => Some("connection refused"),
                io::ErrorKind::ConnectionReset => Some("connection reset by peer"),
                io::ErrorKind::ConnectionAborted => Some("connection aborted"),
                io::ErrorKind::NetworkUnreachable => Some("network unreachable"),
                io::ErrorKind::HostUnreachable => Some("host unreachable"),
                io::ErrorKind::AddrNotAvailable => Some("address not available"),
                _ => None,
            };
            if let Some(known) = known {
                return failed(known.to_owned());
            }
        }
        // The innermost error that is not reqwest's own (whose Display would
        // repeat the URL).
        let detail = chain()
            .filter(|e| !e.is::<reqwest::Error>())
            .last()
            .map(ToString::to_string);
        let what = if err.is_connect() {
            "connection failed"
        } else {
            "request failed"
        };
        failed(match detail {
            Some(d) => format!("{what}: {d}"),
            None => what.to_owned(),
        })
    }
}

fn failed(error: String) -> AttemptOutcome {
    AttemptOutcome {
        error: Some(error),
        ..AttemptOutcome::default()
    }
}

fn build_headers(req: &Outbound<'_>) -> Result<HeaderMap, String> {
    let mut h = HeaderMap::with_capacity(12);
    h.insert(CONTENT_TYPE, APPLICATION_JSON.clone());
    let event = HeaderValue::from_str(req.event_type)
        .map_err(|_| "event type is not a valid header value".to_owned())?;
    h.insert(X_WEBHOOK_EVENT.clone(), event);
    h.insert(X_WEBHOOK_ID.clone(), HeaderValue::from(req.webhook_id));
    let msg_id = HeaderValue::from_str(req.message_id)
        .map_err(|_| "message id is not a valid header value".to_owned())?;
    h.insert(WEBHOOK_ID.clone(), msg_id);
    h.insert(WEBHOOK_TIMESTAMP.clone(), HeaderValue::from(req.timestamp));

    // Empty strings mean "no secret"; the common case has none and borrows.
    let secrets: Cow<'_, [&str]> = if req.secrets.iter().any(|s| s.is_empty()) {
        Cow::Owned(
            req.secrets
                .iter()
                .copied()
                .filter(|s| !s.is_empty())
                .collect(),
        )
    } else {
        Cow::Borrowed(req.secrets)
    };
    if let Some(current) = secrets.first() {
        // Signatures are hex/base64 ASCII: always valid header values.
        if let Ok(mut v) = HeaderValue::try_from(x_webhook_signature(current, &req.body)) {
            v.set_sensitive(true);
            h.insert(X_WEBHOOK_SIGNATURE.clone(), v);
        }
        let standard = standard_signature(req.message_id, req.timestamp, &req.body, &secrets);
        if let Ok(mut v) = HeaderValue::try_from(standard) {
            v.set_sensitive(true);
            h.insert(WEBHOOK_SIGNATURE.clone(), v);
        }
    }
    if let Some(tp) = req
        .traceparent
        .and_then(|tp| HeaderValue::from_str(tp).ok())
    {
        h.insert(TRACEPARENT.clone(), tp);
    }
    Ok(h)
}

/// Lossy UTF-8 without NUL characters (PostgreSQL text cannot hold them),
/// cut to [`MAX_STORED_BODY_CHARS`] characters on a char boundary.
pub(crate) fn stored_body(bytes: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(bytes).into_owned();
    s.retain(|c| c != '\0');
    if let Some((idx, _)) = s.char_indices().nth(MAX_STORED_BODY_CHARS) {
        s.truncate(idx);
    }
    s
}

/// `Retry-After`: delay-seconds, or an HTTP date (IMF-fixdate, RFC 850 or
/// asctime). A date in the past gives zero.
pub(crate) fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse::<u64>().ok().map(Duration::from_secs);
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(SystemTime::from(now))
            .unwrap_or(Duration::ZERO),
    )
}

/// An SSRF refusal. Names the host (never the URL) and the reason.
#[derive(Debug)]
enum Refusal {
    Literal {
        ip: IpAddr,
        reason: &'static str,
    },
    Resolved {
        host: String,
        ip: IpAddr,
        reason: &'static str,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Literal { ip, reason } => write!(
                f,
                "destination refused: {ip} is {} {reason}",
                article(reason)
            ),
            Self::Resolved { host, ip, reason } => write!(
                f,
                "destination refused: {host} resolves to {ip}, {} {reason}",
                article(reason)
            ),
        }
    }
}

impl StdError for Refusal {}

#[derive(Debug)]
struct LookupFailed {
    host: String,
    source: Option<io::Error>,
}

impl fmt::Display for LookupFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(e) => write!(f, "DNS lookup failed for {}: {e}", self.host),
            None => write!(f, "DNS lookup failed for {}: no addresses", self.host),
        }
    }
}

impl StdError for LookupFailed {}

/// Resolves with tokio (`getaddrinfo` on the blocking pool) and, when
/// `check`, refuses the name if ANY address is forbidden. reqwest connects
/// only to the addresses returned here, so the connection is pinned to
/// checked addresses (no DNS-rebinding window).
struct GuardedResolver {
    check: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let check = self.check;
        Box::pin(async move {
            let host = name.as_str();
            let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((host, 0)).await {
                Ok(it) => it.collect(),
                Err(e) => {
                    return Err(Box::new(LookupFailed {
                        host: host.to_owned(),
                        source: Some(e),
                    }) as _);
                }
            };
            if addrs.is_empty() {
                return Err(Box::new(LookupFailed {
                    host: host.to_owned(),
                    source: None,
                }) as _);
            }
            if check {
                for addr in &addrs {
                    if let Some(reason) = is_forbidden(addr.ip()) {
                        return Err(Box::new(Refusal::Resolved {
                            host: host.to_owned(),
                            ip: addr.ip(),
                            reason,
                        }) as _);
                    }
                }
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn stored_bodies_drop_nul_and_keep_whole_characters() {
        assert_eq!(stored_body(b"ok\0done"), "okdone");
        let long = "я".repeat(1500);
        let stored = stored_body(long.as_bytes());
        assert_eq!(stored.chars().count(), MAX_STORED_BODY_CHARS);
        assert!(stored.chars().all(|c| c == 'я'));
    }

    #[test]
    fn retry_after_forms() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:29:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed Oct 21 07:28:05 2015", now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after("99999999999999999999999", now), None);
    }

    #[test]
    fn stored_body_cuts_on_chars() {
        let s = "ж".repeat(1500);
        let cut = stored_body(s.as_bytes());
        assert_eq!(cut.chars().count(), MAX_STORED_BODY_CHARS);
        assert_eq!(cut.len(), MAX_STORED_BODY_CHARS * 2);
        // A byte cap that splits a char gives a replacement char, not a panic.
        let bytes = &"жж".as_bytes()[..3];
        assert_eq!(stored_body(bytes), "ж\u{fffd}");
        assert_eq!(stored_body(b"ok"), "ok");
    }

    #[test]
    fn human_durations() {
        // The form timeouts take in attempt errors ("timeout after 1s 500ms").
        let human = |d| humantime::format_duration(d).to_string();
        assert_eq!(human(Duration::from_secs(10)), "10s");
        assert_eq!(human(Duration::from_millis(1500)), "1s 500ms");
        assert_eq!(human(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn outbound_debug_hides_secrets_and_url() {
        let secrets = ["top-secret-value"];
        let o = Outbound {
            url: "https://example.com/hook?token=url-token",
            webhook_id: 1,
            event_type: "user.created",
            message_id: "msg_1",
            timestamp: 1,
            body: bytes::Bytes::from_static(b"{}"),
            secrets: &secrets,
            traceparent: None,
        };
        let dbg = format!("{o:?}");
        assert!(!dbg.contains("top-secret-value"), "{dbg}");
        assert!(!dbg.contains("url-token"), "{dbg}");
        let h = build_headers(&o).unwrap();
        assert!(!format!("{h:?}").contains("top-secret-value"));
    }
}
