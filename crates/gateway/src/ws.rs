//! `GET /ws`: the handshake (origin, WebSocket headers) on the HTTP
//! connection actix hands over, then one task per connection that owns the
//! TCP socket: it reads and checks client frames itself ([`crate::wire`]),
//! writes event frames straight from the shared buffers, and closes the
//! socket as soon as the closing handshake is done.

use std::convert::Infallible;
use std::sync::Arc;

use actix_codec::Framed;
use actix_http::header::{self, HeaderMap};
use actix_http::{Request, h1};
use storage::tokens::{Presented, presented_token};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::conn::{self, Start};
use crate::state::AppState;

/// What the query string of `/ws` or `/sse` asked for. A parameter given
/// twice counts once, the first time (`token`, `api_key`, `since`; an
/// empty token counts as absent); every `events` list is combined.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct WsQuery {
    pub(crate) token: Option<String>,
    pub(crate) api_key: Option<String>,
    since: Option<String>,
    /// `/sse`: the cursor to resume after when no `Last-Event-ID` header
    /// says (a page that opens a new `EventSource` cannot set that header).
    last_event_id: Option<String>,
    /// The initial filter, comma-separated (`ticket.*,user.created`); it
    /// applies to a `since` replay too.
    events: Option<Vec<String>>,
    epoch: Option<String>,
}

impl WsQuery {
    pub(crate) fn parse(query: &str) -> Self {
        let mut q = Self::default();
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            let non_empty = || Some(v.trim().to_owned()).filter(|t| !t.is_empty());
            match &*k {
                "token" if q.token.is_none() => q.token = non_empty(),
                "api_key" if q.api_key.is_none() => q.api_key = non_empty(),
                "since" if q.since.is_none() => q.since = Some(v.trim().to_owned()),
                "epoch" if q.epoch.is_none() => q.epoch = Some(v.trim().to_owned()),
                "last_event_id" if q.last_event_id.is_none() => q.last_event_id = non_empty(),
                "events" => push_patterns(&mut q.events, &v),
                _ => {}
            }
        }
        q
    }

    fn start(self) -> Start {
        let since = self.since.as_deref().map(|s| {
            s.parse::<u64>()
                .map_err(|_| "'since' must be a non-negative integer".to_owned())
        });
        self.start_at(since, self.epoch.clone())
    }

    /// How an SSE stream starts: after the cursor of `Last-Event-ID` (the
    /// header, else the `last_event_id` parameter), else after `since` (of
    /// `epoch`) as on `/ws`.
    pub(crate) fn sse_start(self, last_event_id: Option<&str>) -> Start {
        match last_event_id.or(self.last_event_id.as_deref()) {
            Some(id) => {
                let (since, epoch) = match id.parse::<proto_events::Cursor>() {
                    Ok(c) => (Ok(c.seq), Some(c.epoch)),
                    Err(e) => (Err(format!("Last-Event-ID {:?}: {e}", truncate(id))), None),
                };
                self.start_at(Some(since), epoch)
            }
            None => self.start(),
        }
    }

    fn start_at(&self, since: Option<Result<u64, String>>, epoch: Option<String>) -> Start {
        let events = self.events.clone().map(|items| {
            proto_events::PatternSet::parse(items.iter().map(String::as_str))
                .map(|set| (set, items))
                .map_err(|e| e.to_string())
        });
        Start {
            since,
            epoch,
            events,
        }
    }
}

/// Adds the patterns of one comma-separated `events` parameter to the
/// list (which then exists, even when the parameter is empty).
pub(crate) fn push_patterns(list: &mut Option<Vec<String>>, value: &str) {
    list.get_or_insert_with(Vec::new).extend(
        value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
    );
}

/// At most 40 characters of what a client sent, for a message.
fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// The token from `?token=`, `?api_key=`, `Authorization: Bearer` or
/// `X-API-Key`, in that order; empty values count as absent.
fn find_token(headers: &HeaderMap, q: &WsQuery) -> Option<String> {
    q.token.clone().or_else(|| q.api_key.clone()).or_else(|| {
        // An unreadable header counts as no token here (the close code is
        // the same as for a missing one).
        match presented_token(
            headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()),
            headers.get("x-api-key").map(|v| v.as_bytes()),
        ) {
            Presented::Token(t) => Some(t.to_owned()),
            Presented::None | Presented::Unreadable => None,
        }
    })
}

/// Whether a browser page from this `Origin` may connect.
pub(crate) fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(origin) = origin else {
        // Not a browser: it could send any Origin anyway; the token decides.
        return true;
    };
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    allowed.contains(&origin)
}

/// Writes a whole HTTP answer with a JSON body and ends the connection.
async fn respond(mut tcp: TcpStream, status: &str, extra_headers: &str, detail: &str) {
    let answer = crate::sse::http_error(status, extra_headers, detail);
    let write = async {
        tcp.write_all(&answer).await?;
        tcp.shutdown().await
    };
    let _ = tokio::time::timeout(conn::CLOSE_TIMEOUT, write).await;
}

/// Every HTTP request that asks for an upgrade lands here, with the
/// connection: `/ws` becomes a WebSocket, anything else is answered and
/// closed.
pub async fn upgrade(
    state: Arc<AppState>,
    req: Request,
    framed: Framed<TcpStream, h1::Codec>,
) -> Result<(), Infallible> {
    let _tracked = state.tracker.token();
    let actix_codec::FramedParts {
        io: mut tcp,
        read_buf,
        write_buf,
        ..
    } = framed.into_parts();
    if !write_buf.is_empty() && tcp.write_all(&write_buf).await.is_err() {
        return Ok(());
    }
    // actix's buffers are not kept for the life of the connection
    drop(write_buf);
    if req.path() != "/ws" {
        Box::pin(respond(tcp, "404 Not Found", "", "Not Found")).await;
        return Ok(());
    }
    // an unreadable Origin is no allowed one
    let origin = req
        .head()
        .headers()
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or(""));
    if !origin_allowed(&state.settings.origins, origin) {
        Box::pin(respond(tcp, "403 Forbidden", "", "Origin not allowed")).await;
        return Ok(());
    }
    if let Err(e) = actix_http::ws::verify_handshake(req.head()) {
        match e {
            actix_http::ws::HandshakeError::GetMethodRequired => {
                respond(
                    tcp,
                    "405 Method Not Allowed",
                    "allow: GET\r\n",
                    &e.to_string(),
                )
                .await;
            }
            _ => Box::pin(respond(tcp, "400 Bad Request", "", &e.to_string())).await,
        }
        return Ok(());
    }
    let accept = req
        .head()
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|key| actix_http::ws::hash_key(key.as_bytes()))
        .unwrap_or_default();
    let mut head = Vec::with_capacity(160);
    head.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ",
    );
    head.extend_from_slice(&accept);
    head.extend_from_slice(b"\r\n\r\n");
    if tcp.write_all(&head).await.is_err() {
        return Ok(());
    }
    let query = WsQuery::parse(req.uri().query().unwrap_or(""));
    let token = find_token(req.head().headers(), &query);
    let ip = req.peer_addr().map(|a| a.ip().to_string());
    drop(head);
    let accepted = conn::Accepted {
        state: state.clone(),
        tcp,
        transport: crate::protocol::Transport::WebSocket,
        head: bytes::Bytes::new(),
        read: read_buf,
        token,
        ip,
        start: query.start(),
    };
    drop(req);
    // boxed: the handshake's state above is not kept for the life of the
    // connection
    Box::pin(accepted.serve()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use actix_http::header::HeaderValue;

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
        let q = WsQuery::parse("token=&api_key=fromquery");
        assert_eq!(find_token(&h, &q).as_deref(), Some("fromquery"));
    }

    #[test]
    fn repeated_parameters() {
        let q = WsQuery::parse(
            "token=&token=a%20&token=b&since=5&since=7&events=ticket.*&events=user.created,%20&epoch=e1&epoch=e2",
        );
        assert_eq!(q.token.as_deref(), Some("a"));
        assert_eq!(q.since.as_deref(), Some("5"));
        assert_eq!(q.epoch.as_deref(), Some("e1"));
        assert_eq!(
            q.events,
            Some(vec!["ticket.*".to_owned(), "user.created".to_owned()])
        );
        assert_eq!(WsQuery::parse(""), WsQuery::default());
        // an empty events parameter still asks for a (empty) filter answer
        assert_eq!(WsQuery::parse("events=").events, Some(vec![]));
    }

    #[test]
    fn origins() {
        let allowed = vec!["https://admin.example.com".to_owned()];
        assert!(origin_allowed(&[], Some("https://x")));
        assert!(origin_allowed(&allowed, None));
        assert!(origin_allowed(&allowed, Some("https://Admin.example.com")));
        assert!(!origin_allowed(&allowed, Some("https://evil.example.com")));
    }
}
