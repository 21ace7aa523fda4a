//! The HTTP side: one pooled reqwest client, an SSRF-checking resolver, the
//! optional egress proxy ([`crate::proxy`]), receiver authentication
//! ([`crate::auth`]), and the per-attempt outcome.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER,
};
use reqwest::{Method, StatusCode};

use crate::auth::{self, Auth, OAuth2Client, Slot, Token, TokenCache, parse_token_response};
use crate::ed25519::standard_signature_ed25519;
use crate::proxy::ProxyUrl;
use crate::signing::{Signing, standard_signature, x_webhook_signature};
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
static FORM_URLENCODED: HeaderValue = HeaderValue::from_static("application/x-www-form-urlencoded");

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
    /// Egress HTTP proxy for every request (default none: direct). See
    /// [`crate::proxy`] for how the SSRF guard works with it.
    pub proxy: Option<ProxyUrl>,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(10),
            max_response_bytes: 64 * 1024,
            allow_private_targets: false,
            pool_idle_per_host: 64,
            proxy: None,
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

/// One webhook POST to make. `Debug` never shows the secrets, the URL or
/// the custom header values.
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
    /// HMAC secrets or ed25519 keys; [`Signing::NONE`] = unsigned.
    pub signing: Signing<'a>,
    /// The webhook's own headers, sent after the sender's (see
    /// [`crate::check_custom_header`]); one whose name the sender already
    /// set is dropped.
    pub headers: &'a [(HeaderName, HeaderValue)],
    /// Receiver authentication (`Authorization`), if any.
    pub auth: Option<&'a Auth>,
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
            .field("signing", &self.signing)
            .field(
                "headers",
                &format_args!("<{} redacted>", self.headers.len()),
            )
            .field("auth", &self.auth)
            .field("traceparent", &self.traceparent)
            .finish()
    }
}

/// One event for one webhook, as every delivery sends it: signed with the
/// webhook's secrets or keys, `webhook-id` made from the event's id and the
/// webhook ([`crate::message_id`]). `Debug` is not derived: it holds the
/// secrets.
pub struct Event<'a> {
    pub url: &'a str,
    pub webhook_id: i32,
    pub event_type: &'a str,
    /// The event's id, the same on every attempt of the event.
    pub event_id: &'a str,
    /// Canonical JSON bytes, POSTed and signed as is.
    pub body: bytes::Bytes,
    /// As in [`Outbound::signing`].
    pub signing: Signing<'a>,
    /// As in [`Outbound::headers`].
    pub headers: &'a [(HeaderName, HeaderValue)],
    /// As in [`Outbound::auth`].
    pub auth: Option<&'a Auth>,
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

/// Signs and POSTs webhooks. Cheap to clone (shares the connection pool
/// and the OAuth2 token cache).
#[derive(Clone)]
pub struct WebhookSender {
    client: reqwest::Client,
    cfg: Arc<SenderConfig>,
    tokens: Arc<TokenCache>,
}

impl fmt::Debug for WebhookSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSender")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl WebhookSender {
    /// Builds the client once: timeouts, no redirects, the configured proxy
    /// or none (never the environment's), the `USER_AGENT`, connection
    /// pooling, and the SSRF-checking resolver. Does not need a global
    /// rustls `CryptoProvider` (reqwest falls back to its own aws-lc-rs
    /// provider).
    ///
    /// With a proxy, reqwest resolves only the proxy's host: the resolver
    /// then checks nothing (the proxy is normally private) and destinations
    /// are checked before each request instead ([`crate::proxy`]).
    pub fn new(cfg: SenderConfig) -> Result<Self, BuildError> {
        let builder = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.total_timeout)
            .redirect(reqwest::redirect::Policy::none())
            // reqwest's default policy resends requests an HTTP/2 or HTTP/3
            // server refused unprocessed; this client speaks HTTP/1.1 only,
            // where it never resends, yet it copies every request (headers,
            // extensions) before sending it, in case (BENCHMARKS.md, issue 29).
            .retry(reqwest::retry::never().max_retries_per_request(0))
            .user_agent(USER_AGENT)
            .pool_max_idle_per_host(cfg.pool_idle_per_host)
            .http1_title_case_headers()
            .dns_resolver(Arc::new(GuardedResolver {
                check: !cfg.allow_private_targets && cfg.proxy.is_none(),
            }));
        let builder = match &cfg.proxy {
            Some(proxy) => {
                builder.proxy(proxy.to_reqwest().map_err(|source| BuildError { source })?)
            }
            None => builder.no_proxy(),
        };
        let client = builder.build().map_err(|source| BuildError { source })?;
        Ok(Self {
            client,
            cfg: Arc::new(cfg),
            tokens: Arc::new(TokenCache::default()),
        })
    }

    /// The configuration this sender was built with.
    #[must_use]
    pub fn config(&self) -> &SenderConfig {
        &self.cfg
    }

    /// Makes one attempt. Never panics and never returns an error: every
    /// failure is described in the outcome.
    ///
    /// With [`Auth::OAuth2`] the attempt includes getting a token when none
    /// is cached (a failure there is the outcome, `OAuth2 token request
    /// failed: …`), and, when the receiver answers 401 to a cached token,
    /// one new token and one resend, whose answer is the outcome. The
    /// latency covers all of it; each request has the configured timeouts.
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
            signing: event.signing,
            headers: event.headers,
            auth: event.auth,
            traceparent: event.traceparent,
        })
        .await
    }

    async fn attempt(&self, req: &Outbound<'_>) -> AttemptOutcome {
        let url = match self.checked_url(req.url).await {
            Ok(u) => u,
            Err(outcome) => return outcome,
        };
        let headers = match build_headers(req) {
            Ok(h) => h,
            Err(e) => return failed(e),
        };
        if let Some(Auth::OAuth2(client)) = req.auth {
            return self.attempt_oauth2(req, client, url, headers).await;
        }
        match self.post(url, headers, req.body.clone()).await {
            Ok(resp) => self.read_response(resp).await,
            Err(outcome) => outcome,
        }
    }

    /// One attempt with an OAuth2 token: a 401 to a cached token drops it,
    /// and the request is sent once more with a new one.
    async fn attempt_oauth2(
        &self,
        req: &Outbound<'_>,
        client: &OAuth2Client,
        url: reqwest::Url,
        mut headers: HeaderMap,
    ) -> AttemptOutcome {
        let slot = self.tokens.slot(req.webhook_id, client);
        let (token, fresh) = match self.token(&slot, client, None).await {
            Ok(t) => t,
            Err(outcome) => return outcome,
        };
        headers.insert(AUTHORIZATION, token.header.clone());
        let resp = match self
            .post(url.clone(), headers.clone(), req.body.clone())
            .await
        {
            Ok(resp) => resp,
            Err(outcome) => return outcome,
        };
        if fresh || resp.status() != StatusCode::UNAUTHORIZED {
            return self.read_response(resp).await;
        }
        drop(resp);
        let (token, _) = match self.token(&slot, client, Some(token.serial)).await {
            Ok(t) => t,
            Err(outcome) => return outcome,
        };
        headers.insert(AUTHORIZATION, token.header);
        match self.post(url, headers, req.body.clone()).await {
            Ok(resp) => self.read_response(resp).await,
            Err(outcome) => outcome,
        }
    }

    /// The slot's token, fetched when there is none usable or the one there
    /// is `stale` (it got a 401). The slot's lock is held while fetching, so
    /// deliveries waiting for it find the new token. `true` when fetched now.
    async fn token(
        &self,
        slot: &Slot,
        client: &OAuth2Client,
        stale: Option<u64>,
    ) -> Result<(Token, bool), AttemptOutcome> {
        let mut guard = slot.token.lock().await;
        if let Some(token) = Slot::current(&guard, stale) {
            return Ok((token, false));
        }
        *guard = None;
        let (header, expires_in) = self.fetch_token(client).await?;
        Ok((slot.store(&mut guard, header, expires_in), true))
    }

    /// The client credentials grant, through the same client (SSRF guard,
    /// proxy, timeouts) as deliveries. Errors never carry the secret or
    /// the token.
    async fn fetch_token(
        &self,
        client: &OAuth2Client,
    ) -> Result<(HeaderValue, Option<u64>), AttemptOutcome> {
        let url = self
            .checked_url(&client.token_url)
            .await
            .map_err(token_failure)?;
        let mut headers = HeaderMap::with_capacity(3);
        headers.insert(CONTENT_TYPE, FORM_URLENCODED.clone());
        headers.insert(ACCEPT, APPLICATION_JSON.clone());
        headers.insert(AUTHORIZATION, client.client_auth());
        let resp = self
            .post(url, headers, bytes::Bytes::from(client.form()))
            .await
            .map_err(token_failure)?;
        let status = resp.status();
        let body = read_capped(resp, self.cfg.max_response_bytes).await;
        if !status.is_success() {
            return Err(token_failure(failed(format!("HTTP {}", status.as_u16()))));
        }
        parse_token_response(&body).ok_or_else(|| token_failure(failed("invalid response".into())))
    }

    /// Parses `raw` and applies the SSRF guard where the resolver cannot:
    /// to literal IP hosts (reqwest never hands them to the resolver) and,
    /// with a proxy, to the resolved destination (reqwest resolves only the
    /// proxy then).
    async fn checked_url(&self, raw: &str) -> Result<reqwest::Url, AttemptOutcome> {
        let url = reqwest::Url::parse(raw).map_err(|e| failed(format!("invalid URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(failed(format!("unsupported URL scheme {:?}", url.scheme())));
        }
        let refused = |refusal: Refusal| AttemptOutcome {
            verdict: Verdict::Refused,
            error: Some(refusal.to_string()),
            ..AttemptOutcome::default()
        };
        match url.host() {
            None => return Err(failed("URL has no host".to_owned())),
            _ if self.cfg.allow_private_targets => {}
            Some(url::Host::Ipv4(ip)) => check_literal(IpAddr::V4(ip)).map_err(refused)?,
            Some(url::Host::Ipv6(ip)) => check_literal(IpAddr::V6(ip)).map_err(refused)?,
            Some(url::Host::Domain(host)) if self.cfg.proxy.is_some() => {
                match resolve(host, true).await {
                    Ok(_) => {}
                    Err(Unresolved::Refused(r)) => return Err(refused(r)),
                    Err(Unresolved::Failed(e)) => return Err(failed(e.to_string())),
                }
            }
            Some(url::Host::Domain(_)) => {}
        }
        Ok(url)
    }

    /// Sends one POST; a failure before a response is described.
    async fn post(
        &self,
        url: reqwest::Url,
        headers: HeaderMap,
        body: bytes::Bytes,
    ) -> Result<reqwest::Response, AttemptOutcome> {
        let mut request = reqwest::Request::new(Method::POST, url);
        *request.headers_mut() = headers;
        *request.body_mut() = Some(reqwest::Body::from(body));
        self.client
            .execute(request)
            .await
            .map_err(|err| self.describe_error(&err))
    }

    async fn read_response(&self, resp: reqwest::Response) -> AttemptOutcome {
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

        // A body that fails mid-way (timeout, reset) keeps what was read: the
        // status already tells what the receiver decided.
        let buf = read_capped(resp, self.cfg.max_response_bytes).await;

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

    /// Describes a request that got no response; with a proxy, a failure to
    /// connect names it (credentials hidden).
    fn describe_error(&self, err: &reqwest::Error) -> AttemptOutcome {
        let mut outcome = self.describe_failure(err);
        if let (Some(proxy), Some(error)) = (&self.cfg.proxy, &mut outcome.error)
            && err.is_connect()
        {
            error.push_str(&format!(" (via proxy {proxy})"));
        }
        outcome
    }

    fn describe_failure(&self, err: &reqwest::Error) -> AttemptOutcome {
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

/// A token request that did not give a token: the attempt fails (or stays
/// refused) without a response of its own.
fn token_failure(outcome: AttemptOutcome) -> AttemptOutcome {
    AttemptOutcome {
        verdict: match outcome.verdict {
            Verdict::Refused => Verdict::Refused,
            _ => Verdict::Failed,
        },
        error: Some(format!(
            "OAuth2 token request failed: {}",
            outcome.error.as_deref().unwrap_or("no token")
        )),
        ..AttemptOutcome::default()
    }
}

/// At most `cap` bytes of the body; what was read when it fails mid-way.
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Vec<u8> {
    let mut buf: Vec<u8> = Vec::new();
    while buf.len() < cap {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(cap - buf.len());
                buf.extend_from_slice(&chunk[..take]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    buf
}

fn check_literal(ip: IpAddr) -> Result<(), Refusal> {
    match is_forbidden(ip) {
        Some(reason) => Err(Refusal::Literal { ip, reason }),
        None => Ok(()),
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

    match req.signing {
        Signing::Hmac(secrets) => hmac_headers(&mut h, req, secrets),
        Signing::Ed25519(keys) => {
            if !keys.is_empty() {
                let standard =
                    standard_signature_ed25519(req.message_id, req.timestamp, &req.body, keys);
                if let Ok(mut v) = HeaderValue::try_from(standard) {
                    v.set_sensitive(true);
                    h.insert(WEBHOOK_SIGNATURE.clone(), v);
                }
            }
        }
    }
    if let Some(tp) = req
        .traceparent
        .and_then(|tp| HeaderValue::from_str(tp).ok())
    {
        h.insert(TRACEPARENT.clone(), tp);
    }
    match req.auth {
        Some(Auth::Basic { username, password }) => {
            h.insert(AUTHORIZATION, auth::basic(username, password));
        }
        Some(Auth::Bearer { token }) => {
            let v = auth::bearer(token)
                .ok_or_else(|| "bearer token is not a valid header value".to_owned())?;
            h.insert(AUTHORIZATION, v);
        }
        // The token is fetched later; its place is kept from custom headers.
        Some(Auth::OAuth2(_)) => {
            h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer"));
        }
        None => {}
    }
    // Chosen before any is added, so a custom name may repeat.
    let custom: Vec<_> = req
        .headers
        .iter()
        .filter(|(name, _)| !h.contains_key(name) && !crate::headers::is_refused(name))
        .collect();
    for (name, value) in custom {
        let mut value = value.clone();
        value.set_sensitive(true);
        h.append(name.clone(), value);
    }
    Ok(h)
}

fn hmac_headers(h: &mut HeaderMap, req: &Outbound<'_>, secrets: &[&str]) {
    // Empty strings mean "no secret"; the common case has none and borrows.
    let secrets: Cow<'_, [&str]> = if secrets.iter().any(|s| s.is_empty()) {
        Cow::Owned(secrets.iter().copied().filter(|s| !s.is_empty()).collect())
    } else {
        Cow::Borrowed(secrets)
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
            match resolve(name.as_str(), check).await {
                Ok(addrs) => Ok(Box::new(addrs.into_iter()) as Addrs),
                Err(Unresolved::Refused(r)) => Err(Box::new(r) as _),
                Err(Unresolved::Failed(e)) => Err(Box::new(e) as _),
            }
        })
    }
}

enum Unresolved {
    Refused(Refusal),
    Failed(LookupFailed),
}

/// Resolves with tokio and, when `check`, refuses the name if ANY address
/// is forbidden.
async fn resolve(host: &str, check: bool) -> Result<Vec<SocketAddr>, Unresolved> {
    let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((host, 0)).await {
        Ok(it) => it.collect(),
        Err(e) => {
            return Err(Unresolved::Failed(LookupFailed {
                host: host.to_owned(),
                source: Some(e),
            }));
        }
    };
    if addrs.is_empty() {
        return Err(Unresolved::Failed(LookupFailed {
            host: host.to_owned(),
            source: None,
        }));
    }
    if check {
        for addr in &addrs {
            if let Some(reason) = is_forbidden(addr.ip()) {
                return Err(Unresolved::Refused(Refusal::Resolved {
                    host: host.to_owned(),
                    ip: addr.ip(),
                    reason,
                }));
            }
        }
    }
    Ok(addrs)
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
            signing: Signing::Hmac(&secrets),
            headers: &[],
            auth: None,
            traceparent: None,
        };
        let dbg = format!("{o:?}");
        assert!(!dbg.contains("top-secret-value"), "{dbg}");
        assert!(!dbg.contains("url-token"), "{dbg}");
        let h = build_headers(&o).unwrap();
        assert!(!format!("{h:?}").contains("top-secret-value"));
    }
}
