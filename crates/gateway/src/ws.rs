//! `GET /ws`: the handshake checks (origin, connection cap, token) and one
//! task per connection that `select!`s over its outbound queue, a resume
//! replay, client frames, the heartbeat and close requests.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use actix_web::http::header::{self, HeaderMap};
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{
    AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, ProtocolError, Session,
};
use async_nats::jetstream;
use bytestring::ByteString;
use futures::future::LocalBoxFuture;
use futures::{FutureExt, StreamExt};
use proto_events::PatternSet;
use serde::Deserialize;
use std::future::Future as _;
use tokio::time::Instant;

use crate::hub::{Client, Close, Take};
use crate::metrics::CloseKind;
use crate::protocol::{self, ClientMessage};
use crate::replay;
use crate::startup::AppState;

/// How long a close frame may take to get into a stalled connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A replay that yields nothing for this long has failed.
const REPLAY_IDLE: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Deserialize)]
struct WsQuery {
    token: Option<String>,
    api_key: Option<String>,
    since: Option<String>,
    /// The initial filter, comma-separated (`ticket.*,user.created`); it
    /// applies to a `since` replay too.
    events: Option<String>,
}

/// The token from `?token=`, `?api_key=`, `Authorization: Bearer` or
/// `X-API-Key`, in that order; empty values count as absent.
fn find_token(headers: &HeaderMap, q: &WsQuery) -> Option<String> {
    let from_query = [q.token.as_deref(), q.api_key.as_deref()]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|t| !t.is_empty())
        .map(str::to_owned);
    from_query.or_else(|| {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty());
        let api_key = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty());
        bearer.or(api_key).map(str::to_owned)
    })
}

/// Whether a browser page from this `Origin` may connect.
fn origin_allowed(allowed: &[String], origin: Option<&header::HeaderValue>) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(origin) = origin else {
        // Not a browser: it could send any Origin anyway; the token decides.
        return true;
    };
    let origin = origin
        .to_str()
        .unwrap_or("")
        .trim()
        .trim_end_matches('/')
        .to_ascii_lowercase();
    allowed.contains(&origin)
}

/// One open WebSocket connection counted against `GATEWAY_MAX_CONNECTIONS`.
struct Slot {
    state: Arc<AppState>,
}

impl Slot {
    fn acquire(state: &Arc<AppState>) -> Option<Self> {
        let max = state.settings.max_connections;
        let taken = state
            .open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        taken.then(|| {
            state.metrics.connections_open.inc();
            state.metrics.connections_total.inc();
            Self {
                state: state.clone(),
            }
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.state.open.fetch_sub(1, Ordering::SeqCst);
        self.state.metrics.connections_open.dec();
    }
}

/// `GET /ws`.
pub async fn ws(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    if !origin_allowed(&state.settings.origins, req.headers().get(header::ORIGIN)) {
        return Ok(
            HttpResponse::Forbidden().json(serde_json::json!({"detail": "Origin not allowed"}))
        );
    }
    let query = web::Query::<WsQuery>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default();
    let token = find_token(req.headers(), &query);
    let since = query.since.as_deref().map(|s| s.trim().parse::<u64>());
    let events = query.events.as_deref().map(|e| {
        let items: Vec<String> = e
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        PatternSet::parse(items.iter().map(String::as_str))
            .map(|set| (set, items))
            .map_err(|e| e.to_string())
    });
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let max = state.settings.max_frame_bytes;
    let stream = stream
        .max_frame_size(max)
        .aggregate_continuations()
        .max_continuation_size(max);
    let ip = req.peer_addr().map(|a| a.ip().to_string());
    let accepted = Accepted {
        state: state.into_inner(),
        session,
        stream,
        token,
        ip,
        start: Start { since, events },
    };
    // One future per connection, holding everything once (nesting async
    // calls that take these by value would store them twice).
    actix_web::rt::spawn(accepted.serve());
    Ok(response)
}

/// Sends a close frame (boxed: it is rare, and keeps connection tasks small).
fn close_session(session: Session, close: Close) -> LocalBoxFuture<'static, ()> {
    let reason = CloseReason {
        code: close.code,
        description: Some(close.reason),
    };
    async move {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.close(Some(reason))).await;
    }
    .boxed_local()
}

/// An upgraded connection whose token is not checked yet.
struct Accepted {
    state: Arc<AppState>,
    session: Session,
    stream: AggregatedMessageStream,
    token: Option<String>,
    ip: Option<String>,
    start: Start,
}

impl Accepted {
    async fn serve(mut self) {
        let Some(slot) = Slot::acquire(&self.state) else {
            self.refuse(Close::new(
                CloseCode::Again,
                "Try again later: too many connections",
                CloseKind::TooManyConnections,
            ))
            .await;
            return;
        };
        let principal = match Box::pin(self.authenticate()).await {
            Ok(p) => p,
            Err(close) => {
                self.refuse(close).await;
                drop(slot);
                return;
            }
        };
        let filter = match &self.start.events {
            Some(Ok((set, _))) => Some(*set),
            _ => None,
        };
        let state = self.state.clone();
        let client = state.hub.register_local(principal.token_id, filter);
        tracing::debug!(
            client = client.id,
            token_id = principal.token_id,
            "client connected"
        );
        let mut conn = Conn {
            state: state.clone(),
            session: self.session.clone(),
            client: client.clone(),
            local: VecDeque::new(),
        };
        let start = std::mem::replace(
            &mut self.start,
            Start {
                since: None,
                events: None,
            },
        );
        let stop = conn.run(&mut self.stream, start).await;
        state.hub.unregister(&client);
        Box::pin(conn.finish(stop)).await;
        drop(slot);
        tracing::debug!(client = client.id, "client disconnected");
    }

    /// The token's principal, or how to refuse the connection.
    async fn authenticate(&mut self) -> Result<storage::tokens::Principal, Close> {
        let Some(token) = self.token.take() else {
            return Err(Close::new(
                CloseCode::Policy,
                protocol::NO_TOKEN,
                CloseKind::NoToken,
            ));
        };
        match self
            .state
            .auth
            .authenticate(&token, self.ip.as_deref())
            .await
        {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(Close::new(
                CloseCode::Policy,
                protocol::INVALID_TOKEN,
                CloseKind::InvalidToken,
            )),
            Err(e) => {
                tracing::warn!(error = %e, "cannot check a WebSocket token: the database is unavailable");
                Err(Close::new(
                    CloseCode::Again,
                    "Try again later: the token cannot be checked now",
                    CloseKind::AuthUnavailable,
                ))
            }
        }
    }

    async fn refuse(&self, close: Close) {
        self.state.metrics.closed(close.kind);
        close_session(self.session.clone(), close).await;
    }
}

/// What the connection URL asked for besides the token.
struct Start {
    since: Option<Result<u64, std::num::ParseIntError>>,
    events: Option<Result<(PatternSet, Vec<String>), String>>,
}

/// Why the connection loop ended.
enum Stop {
    /// The server closes with this code and reason.
    Close(Close),
    /// The client sent a close frame; echo it.
    ClientClose(Option<CloseReason>),
    /// The connection is gone; nothing can be sent.
    Gone,
}

struct ReplayState {
    messages: Box<async_nats::jetstream::consumer::pull::Ordered>,
    idle: Pin<Box<tokio::time::Sleep>>,
    since: u64,
    until: u64,
    sent: u64,
}

enum ReplayItem {
    Message(Box<jetstream::Message>),
    Failed(String),
}

/// Polls the replay, if one runs; a replay that yields nothing for
/// [`REPLAY_IDLE`] has failed.
fn poll_replay(replay: &mut Option<Box<ReplayState>>, cx: &mut Context<'_>) -> Poll<ReplayItem> {
    let Some(r) = replay.as_mut() else {
        return Poll::Pending;
    };
    match r.messages.poll_next_unpin(cx) {
        Poll::Ready(Some(Ok(m))) => {
            r.idle.as_mut().reset(Instant::now() + REPLAY_IDLE);
            Poll::Ready(ReplayItem::Message(Box::new(m)))
        }
        Poll::Ready(Some(Err(e))) => Poll::Ready(ReplayItem::Failed(e.to_string())),
        Poll::Ready(None) => Poll::Ready(ReplayItem::Failed("the replay stream ended".into())),
        Poll::Pending => match r.idle.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(ReplayItem::Failed("the replay stalled".into())),
            Poll::Pending => Poll::Pending,
        },
    }
}

struct Conn {
    state: Arc<AppState>,
    session: Session,
    client: Arc<Client>,
    /// Frames taken from the hub queue, being written.
    local: VecDeque<Arc<protocol::EventFrame>>,
}

enum Wake {
    Kill,
    Data,
    Replay(ReplayItem),
    Inbound(Option<Result<AggregatedMessage, ProtocolError>>),
    Timer,
}

impl Conn {
    async fn run(&mut self, stream: &mut AggregatedMessageStream, start: Start) -> Stop {
        let mut replay: Option<Box<ReplayState>> = None;
        if let Err(stop) = Box::pin(self.open(start, &mut replay)).await {
            return stop;
        }
        let (ping_interval, pong_timeout) = (
            self.state.settings.ping_interval,
            self.state.settings.pong_timeout,
        );
        // One timer for both heartbeat duties: the next ping, and the
        // moment the client has been silent for `pong_timeout`.
        let mut last_seen = Instant::now();
        let mut next_ping = last_seen + ping_interval;
        let timer = tokio::time::sleep_until(next_ping.min(last_seen + pong_timeout));
        tokio::pin!(timer);
        loop {
            let wake = tokio::select! {
                biased;
                () = self.client.kill.notified() => Wake::Kill,
                () = self.client.wake.notified() => Wake::Data,
                item = std::future::poll_fn(|cx| poll_replay(&mut replay, cx)) => Wake::Replay(item),
                m = stream.next() => Wake::Inbound(m),
                () = &mut timer => Wake::Timer,
            };
            let result = match wake {
                Wake::Kill => match self.client.take_close() {
                    Some(c) => Err(Stop::Close(c)),
                    None => Ok(()),
                },
                Wake::Data => self.drain().await,
                Wake::Replay(item) => Box::pin(self.on_replay(item, &mut replay)).await,
                Wake::Inbound(m) => {
                    last_seen = Instant::now();
                    Box::pin(self.on_inbound(m, &mut replay)).await
                }
                Wake::Timer => {
                    let now = Instant::now();
                    if now >= last_seen + pong_timeout {
                        Err(Stop::Close(Close::new(
                            CloseCode::Normal,
                            format!(
                                "Ping timeout: nothing received for {}",
                                humantime::format_duration(pong_timeout)
                            ),
                            CloseKind::PingTimeout,
                        )))
                    } else {
                        let sent = if now >= next_ping {
                            next_ping = now + ping_interval;
                            Box::pin(self.session.ping(b""))
                                .await
                                .map_err(|_| Stop::Gone)
                        } else {
                            Ok(())
                        };
                        timer
                            .as_mut()
                            .reset(next_ping.min(last_seen + pong_timeout));
                        sent
                    }
                }
            };
            if let Err(stop) = result {
                return stop;
            }
        }
    }

    /// What a connection does first: the welcome message, the answer to
    /// `events=` and the replay of `since=`.
    async fn open(
        &mut self,
        start: Start,
        replay: &mut Option<Box<ReplayState>>,
    ) -> Result<(), Stop> {
        self.send(ByteString::from_static(protocol::WELCOME))
            .await?;
        let reply = match &start.events {
            Some(Ok((_, events))) => Some(protocol::subscribed_message(events)),
            Some(Err(e)) => Some(protocol::error_message(e)),
            None => None,
        };
        if let Some(reply) = reply {
            self.send(reply.into()).await?;
        }
        match start.since {
            Some(Ok(since)) => self.begin_resume(since, replay).await,
            Some(Err(_)) => {
                let text = protocol::error_message("'since' must be a non-negative integer");
                self.send(text.into()).await
            }
            None => Ok(()),
        }
    }

    /// Sends one text message, unless the connection is told to close
    /// while the write waits (a stalled client).
    async fn send(&mut self, text: ByteString) -> Result<(), Stop> {
        let write = self.session.text(text);
        tokio::pin!(write);
        loop {
            tokio::select! {
                biased;
                r = &mut write => {
                    self.state.metrics.messages_sent.inc();
                    return r.map_err(|_| Stop::Gone);
                }
                () = self.client.kill.notified() => {
                    if let Some(c) = self.client.take_close() {
                        return Err(Stop::Close(c));
                    }
                }
            }
        }
    }

    async fn drain(&mut self) -> Result<(), Stop> {
        match self.client.take(&mut self.local) {
            Take::Close(c) => return Err(Stop::Close(c)),
            Take::Nothing => return Ok(()),
            Take::Frames => {}
        }
        while let Some(frame) = self.local.pop_front() {
            self.send(frame.text.clone()).await?;
            if let Some(published) = frame.published
                && let Ok(d) = SystemTime::now().duration_since(published)
            {
                self.state.metrics.event_to_send.observe(d.as_secs_f64());
            }
        }
        if self.local.capacity() > 64 {
            self.local = VecDeque::new();
        }
        Ok(())
    }

    async fn on_inbound(
        &mut self,
        m: Option<Result<AggregatedMessage, ProtocolError>>,
        replay: &mut Option<Box<ReplayState>>,
    ) -> Result<(), Stop> {
        let max = self.state.settings.max_frame_bytes;
        match m {
            None => Err(Stop::Gone),
            Some(Err(ProtocolError::Overflow)) => Err(Stop::Close(Close::new(
                CloseCode::Size,
                format!("Message too big: the limit is {max} bytes"),
                CloseKind::FrameTooLarge,
            ))),
            Some(Err(ProtocolError::Io(_))) => Err(Stop::Gone),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "WebSocket protocol error");
                Err(Stop::Close(Close::new(
                    CloseCode::Protocol,
                    "Protocol error",
                    CloseKind::ProtocolError,
                )))
            }
            Some(Ok(AggregatedMessage::Text(text))) => self.on_text(&text, replay).await,
            Some(Ok(AggregatedMessage::Binary(bytes))) => match std::str::from_utf8(&bytes) {
                Ok(text) => self.on_text(text, replay).await,
                Err(_) => {
                    tracing::debug!("ignoring a binary message that is not UTF-8 JSON");
                    Ok(())
                }
            },
            Some(Ok(AggregatedMessage::Ping(bytes))) => {
                self.session.pong(&bytes).await.map_err(|_| Stop::Gone)
            }
            Some(Ok(AggregatedMessage::Pong(_))) => Ok(()),
            Some(Ok(AggregatedMessage::Close(reason))) => Err(Stop::ClientClose(reason)),
        }
    }

    async fn on_text(
        &mut self,
        text: &str,
        replay: &mut Option<Box<ReplayState>>,
    ) -> Result<(), Stop> {
        match protocol::parse_client(text) {
            ClientMessage::Ping => self.send(ByteString::from_static(protocol::PONG)).await,
            ClientMessage::Subscribe { set, events } => {
                self.client.set_filter(set);
                self.send(protocol::subscribed_message(&events).into())
                    .await
            }
            ClientMessage::Resume { since } => Box::pin(self.begin_resume(since, replay)).await,
            ClientMessage::Unknown(message) => {
                self.send(protocol::error_message(&message).into()).await
            }
            ClientMessage::Invalid => {
                tracing::debug!(
                    client = self.client.id,
                    "ignoring a message that is not JSON"
                );
                Ok(())
            }
        }
    }

    async fn begin_resume(
        &mut self,
        since: u64,
        replay: &mut Option<Box<ReplayState>>,
    ) -> Result<(), Stop> {
        // A new resume replaces one in progress.
        *replay = None;
        self.client.pause();
        let started = replay::start(
            &self.state.js,
            &self.state.ns,
            since,
            self.state.settings.max_replay,
        )
        .await;
        match started {
            Ok(replay::Start::UpToDate) => {
                self.client.resume_after(since);
                self.send(protocol::resumed_message(since, 0, since).into())
                    .await
            }
            Ok(replay::Start::Resync { first_seq, message }) => {
                self.state.metrics.resyncs.inc();
                self.client.resume_after(0);
                self.send(protocol::resync_message(since, first_seq, &message).into())
                    .await
            }
            Ok(replay::Start::Replay { messages, until }) => {
                *replay = Some(Box::new(ReplayState {
                    messages,
                    idle: Box::pin(tokio::time::sleep(REPLAY_IDLE)),
                    since,
                    until,
                    sent: 0,
                }));
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a replay");
                self.state.metrics.resyncs.inc();
                self.client.resume_after(0);
                self.send(
                    protocol::resync_message(since, 0, "stored events cannot be read now; reload")
                        .into(),
                )
                .await
            }
        }
    }

    async fn on_replay(
        &mut self,
        item: ReplayItem,
        replay: &mut Option<Box<ReplayState>>,
    ) -> Result<(), Stop> {
        let Some(r) = replay.as_mut() else {
            return Ok(());
        };
        let msg = match item {
            ReplayItem::Message(m) => m,
            ReplayItem::Failed(e) => {
                let since = r.since;
                *replay = None;
                tracing::warn!(error = %e, "replay failed");
                self.state.metrics.resyncs.inc();
                self.client.resume_after(0);
                return self
                    .send(
                        protocol::resync_message(since, 0, "the replay was interrupted; reload")
                            .into(),
                    )
                    .await;
            }
        };
        let (seq, pending) = match msg.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(_) => return Ok(()),
        };
        if seq > r.since {
            match protocol::event_frame(&msg.payload, seq) {
                Ok(frame) if self.client.filter().matches(frame.event_type) => {
                    r.sent += 1;
                    self.state.metrics.replayed.inc();
                    self.send(frame.text).await?;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(seq, error = %e, "replay skips an invalid message"),
            }
        }
        let r = match replay.as_mut() {
            Some(r) => r,
            None => return Ok(()),
        };
        if seq >= r.until || pending == 0 {
            let last = seq.max(r.until);
            let (since, sent) = (r.since, r.sent);
            *replay = None;
            self.client.resume_after(last);
            self.send(protocol::resumed_message(since, sent, last).into())
                .await?;
        }
        Ok(())
    }

    async fn finish(self, stop: Stop) {
        let metrics = &self.state.metrics;
        match stop {
            Stop::Close(c) => {
                metrics.closed(c.kind);
                close_session(self.session, c).await;
            }
            Stop::ClientClose(reason) => {
                metrics.closed(CloseKind::ClientClosed);
                let echo = reason.map(|r| CloseReason {
                    code: r.code,
                    description: None,
                });
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.session.close(echo)).await;
            }
            Stop::Gone => metrics.closed(CloseKind::ClientClosed),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use actix_web::http::header::HeaderValue;

    use super::*;

    #[test]
    fn token_sources_in_order() {
        let mut h = HeaderMap::new();
        let q = WsQuery::default();
        assert_eq!(find_token(&h, &q), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(find_token(&h, &q).as_deref(), Some("abc"));
        let mut h2 = HeaderMap::new();
        h2.insert(
            header::HeaderName::from_static("x-api-key"),
            HeaderValue::from_static("k"),
        );
        assert_eq!(find_token(&h2, &q).as_deref(), Some("k"));
        let q = WsQuery {
            token: Some(String::new()),
            api_key: Some("fromquery".into()),
            ..Default::default()
        };
        assert_eq!(find_token(&h, &q).as_deref(), Some("fromquery"));
    }

    #[test]
    fn origins() {
        let allowed = vec!["https://admin.example.com".to_owned()];
        assert!(origin_allowed(
            &[],
            Some(&HeaderValue::from_static("https://x"))
        ));
        assert!(origin_allowed(&allowed, None));
        assert!(origin_allowed(
            &allowed,
            Some(&HeaderValue::from_static("https://Admin.example.com"))
        ));
        assert!(!origin_allowed(
            &allowed,
            Some(&HeaderValue::from_static("https://evil.example.com"))
        ));
    }
}
