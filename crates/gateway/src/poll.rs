//! `GET /poll`: the event stream as long-polled JSON pages. A page holds
//! the events after the cursor `after` that the `events` filter selects,
//! and `next`, the cursor to ask with next time. With nothing to return
//! the request waits (`wait`, up to a minute) for the next event and
//! answers as soon as one the filter selects is stored; after `wait` it
//! answers an empty page. Pages are read from the stream itself, so what
//! a page holds never depends on which gateway replica answers.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use futures::StreamExt as _;
use proto_events::{Cursor, PatternSet};
use storage::tokens::{Presented, presented_token};
use tokio::time::Instant;

use crate::protocol;
use crate::replay;
use crate::state::AppState;

/// Events in a page unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 100;
/// The most events in a page.
const MAX_LIMIT: usize = 1000;
/// How long a request waits for an event unless `wait` says otherwise.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// The longest `wait`.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// The most stored events one request reads past (a filter that selects
/// few events still gets an answer, with `next` moved on).
const MAX_SCAN: u64 = 10_000;
/// A read of the stream that yields nothing for this long has failed.
const READ_IDLE: Duration = Duration::from_secs(10);

/// What the query string asked for.
#[derive(Debug, Default)]
struct Query {
    token: Option<String>,
    after: Option<String>,
    events: Option<Vec<String>>,
    limit: Option<String>,
    wait: Option<String>,
}

impl Query {
    fn parse(query: &str) -> Self {
        let mut q = Self::default();
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            let v = v.trim().to_owned();
            match &*k {
                "token" | "api_key" if q.token.is_none() && !v.is_empty() => q.token = Some(v),
                "after" if q.after.is_none() && !v.is_empty() => q.after = Some(v),
                "limit" if q.limit.is_none() => q.limit = Some(v),
                "wait" if q.wait.is_none() => q.wait = Some(v),
                "events" => crate::ws::push_patterns(&mut q.events, &v),
                _ => {}
            }
        }
        q
    }
}

/// A request that asks for something this endpoint cannot give.
fn bad(detail: impl Into<String>) -> HttpResponse {
    HttpResponse::BadRequest().json(serde_json::json!({ "detail": detail.into() }))
}

/// The cursor is not a position in the stream as it is now: the same
/// fields as the WebSocket's `resync_required`, and `next`, a cursor that
/// reads from the oldest kept event on.
fn resync(first_seq: u64, epoch: &str, message: String) -> HttpResponse {
    HttpResponse::Conflict().json(serde_json::json!({
        "type": "resync_required",
        "detail": message,
        "first_seq": first_seq,
        "epoch": epoch,
        "next": Cursor::new(epoch, first_seq.saturating_sub(1)).to_string(),
    }))
}

pub async fn poll(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let state: Arc<AppState> = state.into_inner();
    let q = Query::parse(req.query_string());
    let limit = match q.limit.as_deref().map(str::parse::<usize>) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => return bad(format!("'limit' must be an integer from 1 to {MAX_LIMIT}")),
    };
    let wait = match q.wait.as_deref().map(str::parse::<f64>) {
        None => DEFAULT_WAIT,
        Some(Ok(s)) if (0.0..=MAX_WAIT.as_secs_f64()).contains(&s) => Duration::from_secs_f64(s),
        Some(_) => {
            return bad(format!(
                "'wait' must be a number of seconds from 0 to {}",
                MAX_WAIT.as_secs()
            ));
        }
    };
    let filter = match &q.events {
        None => PatternSet::all(),
        Some(items) => match PatternSet::parse(items.iter().map(String::as_str)) {
            Ok(set) => set,
            Err(e) => return bad(e.to_string()),
        },
    };
    let after = match q.after.as_deref().map(str::parse::<Cursor>) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => return bad(format!("'after': {e}")),
    };
    let headers = req.headers();
    let token = q.token.clone().or_else(|| {
        match presented_token(
            headers.get("authorization").map(|v| v.as_bytes()),
            headers.get("x-api-key").map(|v| v.as_bytes()),
        ) {
            Presented::Token(t) => Some(t.to_owned()),
            Presented::None | Presented::Unreadable => None,
        }
    });
    let Some(token) = token else {
        return HttpResponse::Unauthorized()
            .insert_header(("WWW-Authenticate", "Bearer"))
            .json(serde_json::json!({ "detail": protocol::NO_TOKEN }));
    };
    let ip = req.peer_addr().map(|a| a.ip().to_string());
    match state.auth.authenticate(&token, ip.as_deref()).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return HttpResponse::Unauthorized()
                .insert_header(("WWW-Authenticate", "Bearer"))
                .json(serde_json::json!({ "detail": protocol::INVALID_TOKEN }));
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot check a long-poll token: the database is unavailable");
            return unavailable("the token cannot be checked now");
        }
    }
    match answer(&state, after, filter, limit, Instant::now() + wait).await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the stream for a long-poll");
            unavailable("stored events cannot be read now")
        }
    }
}

fn unavailable(why: &str) -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .insert_header(("Retry-After", "5"))
        .json(serde_json::json!({ "detail": format!("Try again later: {why}") }))
}

/// Reads (and waits for) the page after `after`.
async fn answer(
    state: &AppState,
    after: Option<Cursor>,
    filter: PatternSet,
    limit: usize,
    deadline: Instant,
) -> anyhow::Result<HttpResponse> {
    // Waiting starts before the stream is asked, so that an event stored
    // in between still wakes the request.
    let mut dispatched = pin!(state.hub.next_dispatch());
    dispatched.as_mut().enable();
    let mut stream = state.js.get_stream(state.ns.stream()).await?;
    let info = stream.info().await?;
    let epoch = replay::epoch(info);
    let (first, mut last) = (info.state.first_sequence, info.state.last_sequence);
    let mut pos = match after {
        None => last,
        Some(c) if c.epoch != *epoch => {
            return Ok(resync(
                first,
                &epoch,
                format!(
                    "'after' is from another stream (epoch {}, now {epoch}); read again from the oldest kept event or from now",
                    c.epoch
                ),
            ));
        }
        Some(c) if c.seq > last => {
            return Ok(resync(
                first,
                &epoch,
                format!(
                    "'after' ({}) is newer than the last stored event ({last}); the stream was reset",
                    c.seq
                ),
            ));
        }
        Some(c) if c.seq.saturating_add(1) < first => {
            return Ok(resync(
                first,
                &epoch,
                format!(
                    "events after {} are no longer kept (oldest kept: {first})",
                    c.seq
                ),
            ));
        }
        Some(c) => c.seq,
    };
    loop {
        if last > pos {
            let (texts, reached) = read(state, &epoch, pos, last, filter, limit).await?;
            pos = reached;
            if !texts.is_empty() {
                return Ok(page(&texts, &epoch, pos));
            }
        }
        if Instant::now() >= deadline {
            return Ok(page(&[], &epoch, pos));
        }
        tokio::select! {
            () = &mut dispatched => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
        dispatched.set(state.hub.next_dispatch());
        dispatched.as_mut().enable();
        if *state.hub.epoch() != *epoch && !state.hub.epoch().is_empty() {
            return Ok(resync(
                0,
                &state.hub.epoch(),
                "the stream was recreated while waiting; read again".to_owned(),
            ));
        }
        last = last.max(state.hub.last_seq());
    }
}

/// Reads the stored events after `pos` up to `last` (at most [`MAX_SCAN`]
/// of them) until `limit` are selected: their messages and the sequence
/// reached.
async fn read(
    state: &AppState,
    epoch: &str,
    pos: u64,
    last: u64,
    filter: PatternSet,
    limit: usize,
) -> anyhow::Result<(Vec<String>, u64)> {
    let until = last.min(pos.saturating_add(MAX_SCAN));
    let mut messages = replay::open(&state.js, &state.ns, pos + 1).await?;
    let mut texts = Vec::new();
    let mut reached = pos;
    while reached < until && texts.len() < limit {
        let msg = match tokio::time::timeout(READ_IDLE, messages.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => anyhow::bail!("reading the stream: {e}"),
            Ok(None) | Err(_) => anyhow::bail!("the stream read stalled"),
        };
        let Ok(info) = msg.info() else { continue };
        let seq = info.stream_sequence;
        let pending = info.pending;
        reached = seq;
        match protocol::event_text(&msg.payload, seq, epoch) {
            Ok((event_type, text, _)) if filter.matches(event_type) => texts.push(text),
            Ok(_) => {}
            Err(e) => tracing::debug!(seq, error = %e, "a long-poll skips an invalid message"),
        }
        if pending == 0 {
            // nothing stored after it (yet)
            break;
        }
    }
    state.metrics.messages_sent.inc_by(texts.len() as u64);
    Ok((texts, reached))
}

/// `{"events":[…],"next":"…"}`: each event is the message a WebSocket
/// client gets (already JSON, copied in as it is).
fn page(texts: &[String], epoch: &str, pos: u64) -> HttpResponse {
    let next = serde_json::Value::from(Cursor::new(epoch, pos).to_string());
    let body = format!("{{\"events\":[{}],\"next\":{next}}}", texts.join(","));
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(("Cache-Control", "no-store"))
        .body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query() {
        let q = Query::parse(
            "after=1:2&events=user.*,&events=ticket.created&limit=5&wait=0.5&api_key=k",
        );
        assert_eq!(q.after.as_deref(), Some("1:2"));
        assert_eq!(
            q.events,
            Some(vec!["user.*".to_owned(), "ticket.created".to_owned()])
        );
        assert_eq!(q.limit.as_deref(), Some("5"));
        assert_eq!(q.wait.as_deref(), Some("0.5"));
        assert_eq!(q.token.as_deref(), Some("k"));
    }
}
