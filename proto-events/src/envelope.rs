//! The JSON envelope every event travels in (docs/contract.md, "Envelope").

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{EventType, UnknownEventType};

/// `{"id","type","timestamp","payload"}` as published on `events.<type>`.
///
/// The payload stays a JSON object so that fields unknown to this version
/// pass through byte-for-byte in meaning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub timestamp: String,
    pub payload: Map<String, Value>,
}

/// Why a message is not a valid envelope; the text goes into the
/// dead-letter reason header.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("body is not valid JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("body is not a JSON object")]
    NotObject,
    #[error("envelope field '{0}' is missing")]
    Missing(&'static str),
    #[error("envelope field '{field}' must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("envelope field 'id' must be 1 to 64 characters without control characters")]
    BadId,
    #[error("payload contains a NUL character (\\u0000), which cannot be stored")]
    NulInPayload,
    #[error("envelope field 'timestamp' is not an RFC 3339 time: {0}")]
    BadTimestamp(String),
    #[error(transparent)]
    UnknownType(#[from] UnknownEventType),
}

/// A new event id: a UUIDv7, so ids sort by creation time.
pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl Envelope {
    /// A new envelope with a fresh id and the current time.
    pub fn new(event_type: EventType, payload: Map<String, Value>) -> Self {
        Self {
            id: new_event_id(),
            event_type,
            timestamp: format_timestamp(Utc::now()),
            payload,
        }
    }

    /// Parses and checks a message body, naming the first problem found.
    pub fn parse(body: &[u8]) -> Result<Self, EnvelopeError> {
        let value: Value = serde_json::from_slice(body).map_err(EnvelopeError::NotJson)?;
        let Value::Object(mut obj) = value else {
            return Err(EnvelopeError::NotObject);
        };
        let id = take_string(&mut obj, "id")?;
        if id.is_empty() || id.len() > 64 || id.chars().any(char::is_control) {
            return Err(EnvelopeError::BadId);
        }
        let type_name = take_string(&mut obj, "type")?;
        let timestamp = take_string(&mut obj, "timestamp")?;
        parse_timestamp(&timestamp)
            .ok_or_else(|| EnvelopeError::BadTimestamp(timestamp.clone()))?;
        let payload = match obj.remove("payload") {
            None => return Err(EnvelopeError::Missing("payload")),
            Some(Value::Object(p)) => p,
            Some(_) => {
                return Err(EnvelopeError::WrongType {
                    field: "payload",
                    expected: "an object",
                });
            }
        };
        let event_type = type_name.parse::<EventType>()?;
        // PostgreSQL text and jsonb cannot hold U+0000; such an event could
        // never be recorded, so it is refused here (and dead-lettered).
        if payload.iter().any(|(k, v)| k.contains('\0') || has_nul(v)) {
            return Err(EnvelopeError::NulInPayload);
        }
        Ok(Self {
            id,
            event_type,
            timestamp,
            payload,
        })
    }

    /// The envelope as JSON bytes, as published.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing a struct of strings and a JSON map cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn take_string(obj: &mut Map<String, Value>, field: &'static str) -> Result<String, EnvelopeError> {
    match obj.remove(field) {
        None => Err(EnvelopeError::Missing(field)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(EnvelopeError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

/// RFC 3339 in UTC with microseconds and a `Z`.
pub fn format_timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Accepts RFC 3339 (with `T` or, as Python's `str(datetime)` writes it, a
/// space between date and time) and, for the bot's older messages, a naive
/// ISO time read as UTC (`2024-01-15T10:30:00`, `2024-01-15 10:30:00.123456`).
pub(crate) fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|f| chrono::NaiveDateTime::parse_from_str(s, f).ok())
        .map(|n| n.and_utc())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_a_good_envelope() {
        let e = Envelope::parse(
            br#"{"id":"a1","type":"user.created","timestamp":"2024-01-15T10:30:00","payload":{"user_id":1,"x":{"y":2}}}"#,
        )
        .unwrap();
        assert_eq!(e.event_type, EventType::UserCreated);
        assert_eq!(e.payload["x"]["y"], 2);
        let back = Envelope::parse(&e.to_bytes()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn reads_the_bots_timestamps() {
        let utc = |s: &str| parse_timestamp(s).map(format_timestamp);
        let want = Some("2024-01-15T10:30:00.123456Z".to_owned());
        // Naive (the bot before 2026-02), read as UTC.
        assert_eq!(utc("2024-01-15 10:30:00.123456"), want);
        assert_eq!(utc("2024-01-15T10:30:00.123456"), want);
        // Python's str(datetime.now(UTC)).
        assert_eq!(utc("2024-01-15 10:30:00.123456+00:00"), want);
        assert_eq!(utc("2024-01-15 13:30:00.123456+03:00"), want);
        assert_eq!(
            utc("2024-01-15 10:30:00"),
            Some("2024-01-15T10:30:00.000000Z".to_owned())
        );
        assert_eq!(utc("2024-01-15"), None);
        assert_eq!(utc("15.01.2024 10:30"), None);
    }

    #[test]
    fn names_the_problem() {
        let cases: [(&[u8], &str); 10] = [
            (br#"{"id":"a\u0000","type":"user.created","timestamp":"2024-01-15T10:30:00Z","payload":{}}"#, "without control characters"),
            (br#"{"id":"1","type":"user.created","timestamp":"2024-01-15T10:30:00Z","payload":{"a":[{"b":"x\u0000"}]}}"#, "NUL character"),
            (br#"{"id":"1","type":"user.created","timestamp":"2024-01-15T10:30:00Z","payload":{"k\u0000":1}}"#, "NUL character"),
            (b"{nope", "not valid JSON"),
            (b"[1]", "not a JSON object"),
            (br#"{"type":"user.created","timestamp":"2024-01-15T10:30:00Z","payload":{}}"#, "'id' is missing"),
            (br#"{"id":"1","type":"user.created","timestamp":"2024-01-15T10:30:00Z"}"#, "'payload' is missing"),
            (br#"{"id":"1","type":"user.created","timestamp":"2024-01-15T10:30:00Z","payload":[]}"#, "'payload' must be an object"),
            (br#"{"id":"1","type":"user.deleted","timestamp":"2024-01-15T10:30:00Z","payload":{}}"#, "unknown event type 'user.deleted'"),
            (br#"{"id":"1","type":"user.created","timestamp":"yesterday","payload":{}}"#, "not an RFC 3339 time"),
        ];
        for (body, want) in cases {
            let err = Envelope::parse(body).unwrap_err().to_string();
            assert!(err.contains(want), "{err} should contain {want}");
        }
    }
}
