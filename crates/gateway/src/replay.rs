//! Resume: replays stored events after a stream sequence through a
//! separate ordered consumer, or says the client must resync.

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull::Ordered, pull::OrderedConfig},
};
use proto_events::Namespace;

/// How a resume starts.
pub enum Start {
    /// `since` is older than the stream keeps (or otherwise unusable).
    Resync { first_seq: u64, message: String },
    /// Nothing stored after `since`.
    UpToDate,
    /// Replay messages up to and including `until` (the stream's last
    /// sequence when the replay began).
    Replay { messages: Box<Ordered>, until: u64 },
}

/// Decides how to resume after `since` and opens the replay consumer.
pub async fn start(
    js: &jetstream::Context,
    ns: &Namespace,
    since: u64,
    max_replay: u64,
) -> anyhow::Result<Start> {
    let mut stream = js.get_stream(ns.stream()).await?;
    let state = stream.info().await?.state.clone();
    let (first, last) = (state.first_sequence, state.last_sequence);
    if since > last {
        return Ok(Start::Resync {
            first_seq: first,
            message: format!(
                "since={since} is newer than the last stored event ({last}); the stream was reset, reload"
            ),
        });
    }
    if since == last {
        return Ok(Start::UpToDate);
    }
    if since.saturating_add(1) < first {
        return Ok(Start::Resync {
            first_seq: first,
            message: format!(
                "events after {since} are no longer kept (oldest kept: {first}); reload"
            ),
        });
    }
    if last - since > max_replay {
        return Ok(Start::Resync {
            first_seq: first,
            message: format!(
                "{} events to replay, more than the limit of {max_replay}; reload",
                last - since
            ),
        });
    }
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: ns.events_filter(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: since + 1,
            },
            description: Some("gateway resume".to_owned()),
            ..Default::default()
        })
        .await?;
    let messages = consumer.messages().await?;
    Ok(Start::Replay {
        messages: Box::new(messages),
        until: last,
    })
}
