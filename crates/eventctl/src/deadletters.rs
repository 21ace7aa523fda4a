//! `eventctl deadletters`: the dead-letter stream, one JSON line per
//! message with the reason the worker gave, and re-publishing one after it
//! was fixed.

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use proto_events::deadletter::{
    DEADLETTER_ORIGINAL_SIZE, DEADLETTER_REASON, DEADLETTER_STREAM_SEQUENCE, DEADLETTER_TRUNCATED,
};
use proto_events::nats::{FirstConnect, NatsArgs};
use proto_events::{Envelope, EventType, Namespace, Publisher};
use serde_json::{Value, json};

use crate::tail::Sink;

/// `eventctl deadletters`
#[derive(Debug, Clone, clap::Args)]
pub struct DeadlettersArgs {
    /// List at most this many, the newest.
    #[arg(long, default_value_t = 100)]
    pub limit: u64,
    /// Re-publish the dead letter with this sequence (of the dead-letter
    /// stream) to its original subject.
    #[arg(long, value_name = "SEQ")]
    pub republish: Option<u64>,
    /// With --republish: the fixed message, a whole envelope or only its
    /// payload object (the type then comes from the subject, with a new id).
    /// Without it the original body is re-published if it is valid now.
    #[arg(long, requires = "republish")]
    pub payload: Option<String>,
}

fn header<'a>(h: &'a async_nats::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.as_str())
}

/// Lists dead letters or re-publishes one.
pub async fn run(
    nats: &NatsArgs,
    ns: Namespace,
    args: DeadlettersArgs,
    sink: Sink<'_>,
) -> anyhow::Result<()> {
    let client = nats.connect("eventctl", FirstConnect::FailFast).await?;
    let js = jetstream::new(client.clone());
    let mut stream = js
        .get_stream(ns.deadletter_stream())
        .await
        .with_context(|| format!("no stream {}", ns.deadletter_stream()))?;
    if let Some(seq) = args.republish {
        let msg = stream
            .get_raw_message(seq)
            .await
            .with_context(|| format!("no dead letter {seq}"))?;
        let dl_prefix = ns.deadletter_subject("");
        let original = match msg.subject.as_str().strip_prefix(dl_prefix.as_str()) {
            Some(rest) if ns.prefix().is_empty() => rest.to_owned(),
            Some(rest) => format!("{}.{rest}", ns.prefix()),
            None => bail!("{} is not a dead-letter subject", msg.subject),
        };
        let type_name = ns.event_type_of(&original).unwrap_or_default().to_owned();
        let body = args
            .payload
            .as_deref()
            .map_or(msg.payload.to_vec(), |p| p.as_bytes().to_vec());
        let envelope = match Envelope::parse(&body) {
            Ok(e) => e,
            Err(as_envelope) => match (
                serde_json::from_slice::<Value>(&body),
                type_name.parse::<EventType>(),
            ) {
                (Ok(Value::Object(payload)), Ok(t)) if args.payload.is_some() => {
                    Envelope::new(t, payload)
                }
                _ => bail!(
                    "still not a valid event ({as_envelope}); pass the fixed message with --payload"
                ),
            },
        };
        if envelope.event_type.as_str() != type_name {
            tracing::info!(from = %type_name, to = envelope.event_type.as_str(), "re-published under the type it names");
        }
        let published = Publisher::new(client, ns.clone())
            .publish(&envelope)
            .await?;
        sink(
            &json!({
                "republished": seq,
                "id": published.id,
                "type": envelope.event_type.as_str(),
                "seq": published.sequence,
                "duplicate": published.duplicate,
            })
            .to_string(),
        )?;
        return Ok(());
    }
    let info = stream.info().await?;
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    if info.state.messages == 0 {
        return Ok(());
    }
    let from = last.saturating_sub(args.limit.saturating_sub(1)).max(first);
    for seq in from..=last {
        let msg = match stream.get_raw_message(seq).await {
            Ok(m) => m,
            // Deleted or purged meanwhile.
            Err(_) => continue,
        };
        let h = &msg.headers;
        let line = json!({
            "seq": seq,
            "subject": msg.subject.as_str(),
            "reason": header(h, DEADLETTER_REASON),
            "original_seq": header(h, DEADLETTER_STREAM_SEQUENCE).and_then(|s| s.parse::<u64>().ok()),
            "original_size": header(h, DEADLETTER_ORIGINAL_SIZE).and_then(|s| s.parse::<u64>().ok()),
            "truncated": header(h, DEADLETTER_TRUNCATED) == Some("true"),
            "time": chrono::DateTime::from_timestamp(msg.time.unix_timestamp(), msg.time.nanosecond())
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            "body": String::from_utf8_lossy(&msg.payload),
        });
        sink(&line.to_string())?;
    }
    Ok(())
}
