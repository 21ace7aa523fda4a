//! The messages of `/ws` and `/sse` (docs/contract.md, "WebSocket" and
//! "Server-Sent Events"): the same JSON over either transport.

use bytes::Bytes;
use proto_events::{Envelope, EventType, PatternSet};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::wire;

/// The first message of every accepted connection, byte for byte as in the
/// seed.
pub const WELCOME: &str =
    r#"{"type":"connection","status":"connected","message":"WebSocket connection established"}"#;
/// The first message of an SSE stream (`event: connection`).
pub const SSE_WELCOME: &str =
    r#"{"type":"connection","status":"connected","message":"SSE stream established"}"#;

/// The answer to a client `{"type":"ping"}`.
pub const PONG: &str = r#"{"type":"pong"}"#;

/// The 1008 close reasons (docs/contract.md, "Close codes").
pub const NO_TOKEN: &str = "Unauthorized: No token provided";
pub const INVALID_TOKEN: &str = "Unauthorized: Invalid token";

/// How a connection carries messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `GET /ws`: WebSocket frames.
    WebSocket,
    /// `GET /sse`: a `text/event-stream` body.
    Sse,
}

impl Transport {
    /// One message of this connection (not an event) as sent: a text frame,
    /// or an SSE event named `kind` (the message's `type`), except that
    /// `error` is named `server_error`: an `EventSource` reports its own
    /// connection failures as `error`.
    pub fn message(self, kind: &str, json: &str) -> Bytes {
        match self {
            Self::WebSocket => wire::frame(wire::OP_TEXT, json.as_bytes()),
            Self::Sse => {
                let name = if kind == "error" {
                    "server_error"
                } else {
                    kind
                };
                sse_event(Some(name), None, json)
            }
        }
    }
}

/// One SSE event: `event:` (when named), `id:` (when given), the JSON as
/// `data:` lines and the blank line that ends it. JSON has no line breaks
/// except as whitespace between tokens (the publisher's own layout of a
/// payload); each line becomes its own `data:` line, which the client
/// joins back with `\n`.
pub fn sse_event(kind: Option<&str>, id: Option<&str>, json: &str) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + 48);
    if let Some(kind) = kind {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.as_bytes());
        out.push(b'\n');
    }
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    for line in json.split(['\n', '\r']).filter(|l| !l.is_empty()) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out.into()
}

/// One event as clients receive it, serialised and framed once per
/// transport and shared.
#[derive(Debug, Clone)]
pub struct EventFrame {
    /// The JetStream stream sequence.
    pub seq: u64,
    pub event_type: EventType,
    /// The whole WebSocket text frame (header and JSON), written as is into
    /// every WebSocket client's socket.
    wire: Bytes,
    /// Bytes of the header at the start of `wire`.
    head: usize,
    /// The same JSON as an SSE event whose `id:` is the event's cursor,
    /// written as is into every SSE client's socket. Built with the frame:
    /// one more copy of the JSON per event, none per client.
    sse: Bytes,
    /// When the event was published (its envelope timestamp), for the
    /// event→send latency histogram.
    pub published: Option<std::time::SystemTime>,
}

impl EventFrame {
    pub fn new(
        seq: u64,
        event_type: EventType,
        json: &str,
        epoch: &str,
        published: Option<std::time::SystemTime>,
    ) -> Self {
        let wire = wire::frame(wire::OP_TEXT, json.as_bytes());
        let id = proto_events::Cursor::new(epoch, seq).to_string();
        Self {
            seq,
            event_type,
            head: wire.len() - json.len(),
            wire,
            sse: sse_event(None, Some(&id), json),
            published,
        }
    }

    /// The WebSocket frame as sent: header and JSON.
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// The event as sent over `transport`.
    pub fn bytes(&self, transport: Transport) -> &[u8] {
        match transport {
            Transport::WebSocket => &self.wire,
            Transport::Sse => &self.sse,
        }
    }

    /// The JSON text the frame carries.
    pub fn json(&self) -> &[u8] {
        &self.wire[self.head..]
    }

    /// Bytes this frame occupies in a client queue: its JSON.
    pub fn cost(&self) -> usize {
        self.wire.len() - self.head
    }
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow)]
    payload: &'a RawValue,
}

#[derive(Serialize)]
struct Outbound<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    payload: &'a RawValue,
    timestamp: &'a str,
    id: &'a str,
    seq: u64,
    epoch: &'a str,
}

/// Why a stored message cannot be sent to clients.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Envelope(#[from] proto_events::EnvelopeError),
    #[error("envelope JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Turns a stored envelope into the client message
/// `{"type","payload","timestamp","id","seq","epoch"}`. The payload's bytes
/// are passed through as the publisher wrote them (key order included).
/// `epoch` names the stream the sequence belongs to.
pub fn event_frame(body: &[u8], seq: u64, epoch: &str) -> Result<EventFrame, FrameError> {
    let (event_type, text, published) = event_text(body, seq, epoch)?;
    Ok(EventFrame::new(seq, event_type, &text, epoch, published))
}

/// The client message of [`event_frame`] alone (for `/poll` pages), with
/// the event's type and publication time.
pub fn event_text(
    body: &[u8],
    seq: u64,
    epoch: &str,
) -> Result<(EventType, String, Option<std::time::SystemTime>), FrameError> {
    let env = Envelope::parse(body)?;
    let raw: RawEnvelope<'_> = serde_json::from_slice(body)?;
    let text = serde_json::to_string(&Outbound {
        event_type: env.event_type.as_str(),
        payload: raw.payload,
        timestamp: &env.timestamp,
        id: &env.id,
        seq,
        epoch,
    })?;
    let published = chrono::DateTime::parse_from_rfc3339(&env.timestamp)
        .ok()
        .map(std::time::SystemTime::from);
    Ok((env.event_type, text, published))
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

#[derive(Serialize)]
struct SubscribedOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    events: &'a [String],
}

#[derive(Serialize)]
struct ResyncOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    since: u64,
    first_seq: u64,
    epoch: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
struct ResumedOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    since: u64,
    replayed: u64,
    last_seq: u64,
    epoch: &'a str,
}

fn to_text(v: &impl Serialize) -> String {
    // Structs of strings and integers always serialise.
    serde_json::to_string(v).unwrap_or_default()
}

/// `{"type":"error","message":…}`.
pub fn error_message(message: &str) -> String {
    to_text(&ErrorOut {
        kind: "error",
        message,
    })
}

/// `{"type":"subscribed","events":[…]}`.
pub fn subscribed_message(events: &[String]) -> String {
    to_text(&SubscribedOut {
        kind: "subscribed",
        events,
    })
}

/// `{"type":"resync_required","since":N,"first_seq":F,"epoch":E,"message":…}`.
pub fn resync_message(since: u64, first_seq: u64, epoch: &str, message: &str) -> String {
    to_text(&ResyncOut {
        kind: "resync_required",
        since,
        first_seq,
        epoch,
        message,
    })
}

/// `{"type":"resumed","since":N,"replayed":K,"last_seq":S,"epoch":E}`, sent
/// when a replay has caught up and live events follow.
pub fn resumed_message(since: u64, replayed: u64, last_seq: u64, epoch: &str) -> String {
    to_text(&ResumedOut {
        kind: "resumed",
        since,
        replayed,
        last_seq,
        epoch,
    })
}

#[derive(Serialize)]
struct CatchingUpOut {
    #[serde(rename = "type")]
    kind: &'static str,
    since: u64,
    behind: u64,
}

/// `{"type":"catching_up","since":N,"behind":K}`: the client fell behind;
/// events after `N` now come from the stream at the pace it reads, then
/// `caught_up`, then live events again.
pub fn catching_up_message(since: u64, behind: u64) -> String {
    to_text(&CatchingUpOut {
        kind: "catching_up",
        since,
        behind,
    })
}

/// `{"type":"caught_up","since":N,"replayed":K,"last_seq":S,"epoch":E}`:
/// the catch-up is over, live events follow with no gap.
pub fn caught_up_message(since: u64, replayed: u64, last_seq: u64, epoch: &str) -> String {
    to_text(&ResumedOut {
        kind: "caught_up",
        since,
        replayed,
        last_seq,
        epoch,
    })
}

/// A client request as sent: a JSON object tagged by `type`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Request {
    Ping,
    Subscribe {
        events: Vec<String>,
    },
    Resume {
        since: u64,
        #[serde(default)]
        epoch: Option<String>,
    },
}

/// What a client asked for.
#[derive(Debug, PartialEq)]
pub enum ClientMessage {
    Ping,
    Subscribe {
        set: PatternSet,
        events: Vec<String>,
    },
    Resume {
        since: u64,
        /// The stream epoch the client's `since` belongs to.
        epoch: Option<String>,
    },
    /// Valid JSON but not a request we know; answered with an error.
    Unknown(String),
    /// Not JSON (or not a JSON object): logged and ignored.
    Invalid,
}

/// Parses one text frame from a client.
pub fn parse_client(text: &str) -> ClientMessage {
    // Only a JSON object is a request; anything else is ignored like
    // invalid JSON.
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return ClientMessage::Invalid;
    };
    if !value.is_object() {
        return ClientMessage::Invalid;
    }
    let kind = match value.get("type") {
        Some(serde_json::Value::String(k)) => k.chars().take(64).collect::<String>(),
        Some(_) => return ClientMessage::Unknown("'type' must be a string".into()),
        None => return ClientMessage::Unknown("message has no 'type'".into()),
    };
    match serde_json::from_value::<Request>(value) {
        Ok(Request::Ping) => ClientMessage::Ping,
        Ok(Request::Subscribe { events }) => {
            match PatternSet::parse(events.iter().map(String::as_str)) {
                Ok(set) => ClientMessage::Subscribe { set, events },
                Err(e) => ClientMessage::Unknown(e.to_string()),
            }
        }
        Ok(Request::Resume { since, epoch }) => ClientMessage::Resume { since, epoch },
        Err(_) => ClientMessage::Unknown(match kind.as_str() {
            "subscribe" => "subscribe needs 'events': a list of event types or patterns".into(),
            "resume" => "resume needs 'since': the last stream sequence received (an integer >= 0), and optionally 'epoch': the stream epoch it belongs to (a string)".into(),
            other => format!("unknown message type '{other}'; expected ping, subscribe or resume"),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn frames_keep_the_seed_key_order_and_the_payload_bytes() {
        let body = br#"{"id":"e1","type":"ticket.created","timestamp":"2024-01-15T10:30:00Z","payload":{"z":1,"a":"\u043f\u0440\u0438\u0432\u0435\u0442"}}"#;
        let f = event_frame(body, 42, "1700000000").unwrap();
        assert_eq!(
            std::str::from_utf8(f.json()).unwrap(),
            r#"{"type":"ticket.created","payload":{"z":1,"a":"\u043f\u0440\u0438\u0432\u0435\u0442"},"timestamp":"2024-01-15T10:30:00Z","id":"e1","seq":42,"epoch":"1700000000"}"#
        );
        assert_eq!(f.event_type, EventType::TicketCreated);
        // framed once: a final text frame with a 16-bit length, then the JSON
        let n = u16::try_from(f.json().len()).unwrap().to_be_bytes();
        assert_eq!(&f.wire()[..4], &[0x81, 126, n[0], n[1]]);
        assert_eq!(&f.wire()[4..], f.json());
        assert_eq!(f.cost(), f.json().len());
        assert!(f.published.is_some());
        assert!(event_frame(b"{", 1, "e").is_err());
        assert!(
            event_frame(
                br#"{"id":"e1","type":"nope","timestamp":"2024-01-15T10:30:00Z","payload":{}}"#,
                1,
                "e"
            )
            .is_err()
        );
    }

    #[test]
    fn client_messages() {
        assert_eq!(parse_client(r#"{"type":"ping"}"#), ClientMessage::Ping);
        assert_eq!(parse_client("not json"), ClientMessage::Invalid);
        assert_eq!(parse_client("[1,2]"), ClientMessage::Invalid);
        assert_eq!(
            parse_client(r#"{"type":"resume","since":7}"#),
            ClientMessage::Resume {
                since: 7,
                epoch: None
            }
        );
        assert_eq!(
            parse_client(r#"{"type":"resume","since":7,"epoch":"e1"}"#),
            ClientMessage::Resume {
                since: 7,
                epoch: Some("e1".into())
            }
        );
        assert!(matches!(
            parse_client(r#"{"type":"resume","since":"x"}"#),
            ClientMessage::Unknown(m) if m.contains("since")
        ));
        assert!(matches!(
            parse_client(r#"{"type":"subscribe","events":[1]}"#),
            ClientMessage::Unknown(m) if m.contains("events")
        ));
        assert!(matches!(
            parse_client(r#"{"type":7}"#),
            ClientMessage::Unknown(m) if m.contains("string")
        ));
        assert!(matches!(
            parse_client(r#"{"type":"resume","since":-1}"#),
            ClientMessage::Unknown(_)
        ));
        match parse_client(r#"{"type":"subscribe","events":["ticket.*","user.created"]}"#) {
            ClientMessage::Subscribe { set, events } => {
                assert!(set.matches(EventType::TicketMessageAdded));
                assert!(!set.matches(EventType::PaymentCompleted));
                assert_eq!(events, vec!["ticket.*", "user.created"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_client(r#"{"type":"subscribe","events":["nope.*"]}"#),
            ClientMessage::Unknown(m) if m.contains("nope.*")
        ));
        assert!(matches!(
            parse_client(r#"{"type":"dance"}"#),
            ClientMessage::Unknown(m) if m.contains("dance")
        ));
    }

    #[test]
    fn fixed_messages() {
        let w: serde_json::Value = serde_json::from_str(WELCOME).unwrap();
        assert_eq!(w["type"], "connection");
        assert_eq!(
            resync_message(3, 10, "17", "gone"),
            r#"{"type":"resync_required","since":3,"first_seq":10,"epoch":"17","message":"gone"}"#
        );
        assert_eq!(
            resumed_message(3, 2, 5, "17"),
            r#"{"type":"resumed","since":3,"replayed":2,"last_seq":5,"epoch":"17"}"#
        );
    }
}
