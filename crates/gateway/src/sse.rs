//! `GET /sse`: the event stream as Server-Sent Events. The connection is
//! taken before actix-http sees it (an `EventSource` request carries no
//! `Upgrade` header, and actix hands over only upgrades): [`is_sse`] peeks
//! at its first bytes, [`serve`] reads the request head, and the
//! connection then runs as a WebSocket does ([`crate::conn`]), with SSE
//! framing: one event per stream event whose `id:` is its cursor, the
//! other messages as named events, comment heartbeats, and the response
//! body ending when the connection does.
//!
//! actix answers one request per connection (no keep-alive), so every
//! `GET /sse` is the first request of its connection. One that still
//! reaches actix (its first bytes came too slowly to be recognised) is
//! redirected to itself with `connection: close`: the client asks again on
//! a new connection, which lands here.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use storage::tokens::{Presented, presented_token};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::conn::{self, Accepted};
use crate::metrics::CloseKind;
use crate::protocol::Transport;
use crate::state::AppState;
use crate::ws::{WsQuery, origin_allowed};

/// How a connection that is an SSE request starts.
const REQUEST_LINE: &[u8] = b"GET /sse";
/// How long a new connection may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request head read.
const MAX_HEAD: usize = 16 * 1024;
/// Most headers in a request head.
const MAX_HEADERS: usize = 64;

/// How long a client waits before it reconnects (sent first; the browser's
/// `EventSource` obeys it).
pub const RETRY: &[u8] = b"retry: 1000\n\n";
/// A comment line that keeps proxies and the client's idle timers from
/// closing a quiet stream.
pub const HEARTBEAT: &[u8] = b": ping\n\n";

/// Whether the connection's first request is `GET /sse`: peeks (without
/// reading) until its first bytes decide, or the client sends nothing for
/// [`HEAD_TIMEOUT`] (then actix answers it as it would).
pub async fn is_sse(tcp: &TcpStream) -> bool {
    let mut buf = [0u8; REQUEST_LINE.len() + 1];
    let decide = async {
        loop {
            let n = match tcp.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            let seen = &buf[..n.min(REQUEST_LINE.len())];
            if !REQUEST_LINE.starts_with(seen) {
                return false;
            }
            if n > REQUEST_LINE.len() {
                return matches!(buf[REQUEST_LINE.len()], b' ' | b'?');
            }
            // a request line cut short (rare): wait for the rest
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(HEAD_TIMEOUT, decide)
        .await
        .unwrap_or(false)
}

/// The request head of an SSE request, as far as it matters here.
#[derive(Debug, Default)]
struct Head {
    query: String,
    authorization: Option<Vec<u8>>,
    api_key: Option<Vec<u8>>,
    origin: Option<String>,
    last_event_id: Option<String>,
}

/// Reads the request head (up to the blank line); `None` when it never
/// comes whole or is not HTTP.
async fn read_head(tcp: &mut TcpStream) -> Option<Head> {
    let mut buf = BytesMut::with_capacity(2048);
    let read = async {
        loop {
            if buf.len() >= MAX_HEAD || tcp.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Some(end + 4);
            }
        }
    };
    let end = tokio::time::timeout(HEAD_TIMEOUT, read).await.ok()??;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(&buf[..end]), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let target = req.path.unwrap_or("");
    let mut head = Head {
        query: target
            .split_once('?')
            .map(|(_, q)| q.to_owned())
            .unwrap_or_default(),
        ..Head::default()
    };
    for h in req.headers.iter() {
        let text = || {
            std::str::from_utf8(h.value)
                .ok()
                .map(|v| v.trim().to_owned())
        };
        if h.name.eq_ignore_ascii_case("authorization") {
            head.authorization = Some(h.value.to_vec());
        } else if h.name.eq_ignore_ascii_case("x-api-key") {
            head.api_key = Some(h.value.to_vec());
        } else if h.name.eq_ignore_ascii_case("origin") {
            head.origin = text();
        } else if h.name.eq_ignore_ascii_case("last-event-id") {
            head.last_event_id = text().filter(|v| !v.is_empty());
        }
    }
    Some(head)
}

/// The `200` that starts the event stream. A browser page from another
/// origin may read it when that origin is allowed (`GATEWAY_ORIGINS`).
fn ok_head(origin: Option<&str>) -> Bytes {
    let mut head = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncache-control: no-store\r\nx-accel-buffering: no\r\nconnection: close\r\n",
    );
    if let Some(origin) = origin {
        head.push_str("access-control-allow-origin: ");
        head.push_str(origin);
        head.push_str("\r\nvary: origin\r\n");
    }
    head.push_str("\r\n");
    head.into()
}

/// A whole HTTP answer with a JSON `{"detail"}` body, closing the
/// connection.
pub fn http_error(status: &str, extra_headers: &str, detail: &str) -> Bytes {
    let body = serde_json::json!({ "detail": detail }).to_string();
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    )
    .into()
}

/// The HTTP status (and headers) that refuse an SSE request for the
/// reason a WebSocket would be closed with.
pub fn refusal_status(kind: CloseKind) -> (&'static str, &'static str) {
    match kind {
        CloseKind::NoToken | CloseKind::InvalidToken | CloseKind::Revoked => {
            ("401 Unauthorized", "www-authenticate: Bearer\r\n")
        }
        CloseKind::TooManyConnections | CloseKind::AuthUnavailable => {
            ("503 Service Unavailable", "retry-after: 5\r\n")
        }
        _ => ("400 Bad Request", ""),
    }
}

/// The last event of a stream the server ends: `event: close` with the
/// code and reason a WebSocket would get in its close frame.
pub fn close_event(code: u16, reason: &str) -> Bytes {
    let json = serde_json::json!({ "type": "close", "code": code, "reason": reason });
    Transport::Sse.message("close", &json.to_string())
}

/// Serves one SSE request on a connection [`is_sse`] picked.
pub async fn serve(state: Arc<AppState>, mut tcp: TcpStream) {
    let _tracked = state.tracker.token();
    let Some(head) = read_head(&mut tcp).await else {
        let answer = http_error("400 Bad Request", "", "Bad request");
        let _ = tokio::time::timeout(conn::CLOSE_TIMEOUT, tcp.write_all(&answer)).await;
        return;
    };
    if !origin_allowed(&state.settings.origins, head.origin.as_deref()) {
        let answer = http_error("403 Forbidden", "", "Origin not allowed");
        let _ = tokio::time::timeout(conn::CLOSE_TIMEOUT, tcp.write_all(&answer)).await;
        return;
    }
    let query = WsQuery::parse(&head.query);
    let token = query
        .token
        .clone()
        .or_else(|| query.api_key.clone())
        .or_else(|| {
            match presented_token(head.authorization.as_deref(), head.api_key.as_deref()) {
                Presented::Token(t) => Some(t.to_owned()),
                Presented::None | Presented::Unreadable => None,
            }
        });
    let ip = tcp.peer_addr().ok().map(|a| a.ip().to_string());
    // A browser's reconnect sends Last-Event-ID; a page that opens a new
    // EventSource (its filter changed) passes it in the query.
    let start = query.sse_start(head.last_event_id.as_deref());
    let accepted = Accepted {
        head: ok_head(head.origin.as_deref()),
        state,
        tcp,
        transport: Transport::Sse,
        read: BytesMut::new(),
        token,
        ip,
        start,
    };
    Box::pin(accepted.serve()).await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn events_are_framed_with_their_cursor() {
        let f = crate::protocol::EventFrame::new(
            7,
            proto_events::EventType::UserCreated,
            "{\"a\":\n1}",
            "123",
            None,
        );
        assert_eq!(
            f.bytes(Transport::Sse),
            b"id: 123:7\ndata: {\"a\":\ndata: 1}\n\n"
        );
        assert_eq!(
            &Transport::Sse.message("resumed", "{}")[..],
            b"event: resumed\ndata: {}\n\n"
        );
        assert!(close_event(1001, "bye").starts_with(b"event: close\ndata: {"));
    }

    #[test]
    fn refusals() {
        assert_eq!(refusal_status(CloseKind::NoToken).0, "401 Unauthorized");
        assert_eq!(
            refusal_status(CloseKind::TooManyConnections).0,
            "503 Service Unavailable"
        );
        let e = http_error("403 Forbidden", "", "Origin not allowed");
        let text = std::str::from_utf8(&e).unwrap();
        assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"detail\":\"Origin not allowed\"}"));
    }
}
