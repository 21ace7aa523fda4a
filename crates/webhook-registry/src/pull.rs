//! Reading a pull webhook's events from the stream (docs/contract.md,
//! "Pull webhooks"): where a read starts, the scan through an ordered
//! consumer, and what it found. The route (`routes::pull`) acknowledges,
//! records and answers.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull::OrderedConfig},
    stream::Info,
};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use proto_events::filter::Filter;
use proto_events::{Cursor, Envelope, Namespace, PatternSet};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// Stream messages one request looks at, at most: a selective filter still
/// makes progress (`next` moves past what was scanned) and no request reads
/// the whole stream.
pub const SCAN_LIMIT: u64 = 10_000;

/// How long a message the stream already holds may take to arrive before
/// the page ends with what it has.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The stream as a read sees it when it starts.
pub struct StreamState {
    pub epoch: String,
    /// The first kept sequence (`last + 1` when the stream is empty).
    pub first: u64,
    pub last: u64,
    /// When the first kept message was stored.
    pub first_time: DateTime<Utc>,
    /// When the last message was stored.
    pub last_time: DateTime<Utc>,
}

impl StreamState {
    pub async fn read(js: &jetstream::Context, ns: &Namespace) -> Result<Self, ApiError> {
        let mut stream = js.get_stream(ns.stream()).await.map_err(unavailable)?;
        let info: &Info = stream.info().await.map_err(unavailable)?;
        Ok(Self {
            epoch: info.created.unix_timestamp_nanos().to_string(),
            first: info.state.first_sequence,
            last: info.state.last_sequence,
            first_time: from_nats_time(info.state.first_timestamp),
            last_time: from_nats_time(info.state.last_timestamp),
        })
    }

    /// Where a reader whose position cannot be used reads on: from the
    /// oldest kept event.
    pub fn restart(&self) -> Cursor {
        Cursor::new(self.epoch.clone(), self.first.saturating_sub(1))
    }

    /// `cursor` as a position in this stream, or the 409 that says why it
    /// is not one (`restart` is where to read on from).
    pub fn check(&self, cursor: &Cursor, restart: &Cursor) -> Result<(), ApiError> {
        if cursor.epoch != self.epoch {
            return Err(ApiError::StaleCursor {
                detail: format!(
                    "cursor {cursor} is from another stream (epoch {}, the stream's is {}): the \
                     event stream was recreated; read on from restart",
                    cursor.epoch, self.epoch
                ),
                restart: restart.to_string(),
            });
        }
        if cursor.seq > self.last {
            return Err(ApiError::StaleCursor {
                detail: format!(
                    "cursor {cursor} is beyond the stream's last event ({}); read on from restart",
                    self.last
                ),
                restart: restart.to_string(),
            });
        }
        Ok(())
    }
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "the event stream cannot be read");
    ApiError::Unavailable("Service unavailable: the event stream cannot be reached")
}

fn from_nats_time(t: time::OffsetDateTime) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX))
}

fn to_nats_time(t: DateTime<Utc>) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(
        t.timestamp_nanos_opt().unwrap_or(0),
    ))
    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Where a read starts.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// After this sequence.
    After(u64),
    /// At the first event stored at or after this time (the webhook's
    /// creation: nothing published before it existed is served).
    Since(DateTime<Utc>),
}

/// What a read looks for and how long it may wait.
pub struct Scan<'a> {
    pub patterns: &'a PatternSet,
    pub filter: Option<&'a Filter>,
    pub limit: usize,
    pub wait: Duration,
    pub stop: &'a CancellationToken,
}

/// One matching event found.
pub struct Found {
    pub seq: u64,
    pub envelope: Envelope,
    /// The payload as the publisher wrote it.
    pub payload: Arc<str>,
    pub traceparent: Option<Arc<str>>,
}

/// What a read found, and the last sequence it looked at (`None`: none).
pub struct Scanned {
    pub events: Vec<Found>,
    pub last_seen: Option<u64>,
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow)]
    payload: &'a RawValue,
}

/// Reads the stream from `start` through an ordered consumer: up to
/// `scan.limit` matching events among at most [`SCAN_LIMIT`] messages;
/// with none found in what the stream holds, waits up to `scan.wait` for
/// one to arrive.
pub async fn scan(
    js: &jetstream::Context,
    ns: &Namespace,
    stream: &StreamState,
    start: Start,
    scan: &Scan<'_>,
) -> Result<Scanned, ApiError> {
    let mut out = Scanned {
        events: Vec::new(),
        last_seen: None,
    };
    let nothing_stored = match start {
        Start::After(seq) => seq >= stream.last,
        Start::Since(t) => stream.last == 0 || stream.last_time < t,
    };
    if nothing_stored && scan.wait.is_zero() {
        return Ok(out);
    }
    let deliver_policy = match start {
        Start::After(seq) => DeliverPolicy::ByStartSequence {
            start_sequence: seq.saturating_add(1).max(stream.first).max(1),
        },
        Start::Since(_) if nothing_stored => DeliverPolicy::ByStartSequence {
            start_sequence: stream.last.saturating_add(1).max(1),
        },
        Start::Since(t) => DeliverPolicy::ByStartTime {
            start_time: to_nats_time(t),
        },
    };
    let handle = js
        .get_stream_no_info(ns.stream())
        .await
        .map_err(unavailable)?;
    let consumer = handle
        .create_consumer(OrderedConfig {
            filter_subject: ns.events_filter(),
            deliver_policy,
            description: Some("webhook-registry pull".to_owned()),
            ..Default::default()
        })
        .await
        .map_err(unavailable)?;
    let mut pending = consumer.cached_info().num_pending;
    let mut messages = consumer.messages().await.map_err(unavailable)?;
    let until = tokio::time::Instant::now() + scan.wait;
    let mut scanned = 0u64;
    while out.events.len() < scan.limit && scanned < SCAN_LIMIT {
        let deadline = if pending > 0 {
            tokio::time::Instant::now() + READ_TIMEOUT
        } else if out.events.is_empty() && tokio::time::Instant::now() < until {
            until
        } else {
            break;
        };
        let next = tokio::select! {
            next = tokio::time::timeout_at(deadline, messages.next()) => next,
            () = scan.stop.cancelled() => break,
        };
        let msg = match next {
            Ok(Some(Ok(msg))) => msg,
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %e, "pull read interrupted");
                break;
            }
            Ok(None) | Err(_) => break,
        };
        let Ok(info) = msg.info() else { break };
        let seq = info.stream_sequence;
        pending = info.pending;
        scanned += 1;
        out.last_seen = Some(seq);
        if let Some(found) = matching(&msg, seq, scan) {
            out.events.push(found);
        }
    }
    Ok(out)
}

/// The event in `msg`, when it is a valid envelope the webhook takes.
fn matching(msg: &jetstream::Message, seq: u64, scan: &Scan<'_>) -> Option<Found> {
    // Not an envelope: the worker dead-letters it; a reader skips it.
    let envelope = Envelope::parse(&msg.payload).ok()?;
    if !scan.patterns.matches(envelope.event_type)
        || !scan.filter.is_none_or(|f| f.matches(&envelope.payload))
    {
        return None;
    }
    let raw: RawEnvelope<'_> = serde_json::from_slice(&msg.payload).ok()?;
    let traceparent = msg
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .map(|v| v.as_str())
        .filter(|v| v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(Arc::from);
    Some(Found {
        seq,
        payload: Arc::from(raw.payload.get()),
        envelope,
        traceparent,
    })
}
