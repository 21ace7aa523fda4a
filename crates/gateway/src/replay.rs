//! Resume: replays stored events after a stream sequence through a
//! separate ordered consumer, or says the client must resync. The stream's
//! epoch (its creation time) names the stream a sequence belongs to, so a
//! `since` from a deleted and recreated stream is never trusted.

use std::sync::Arc;

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull::Ordered, pull::OrderedConfig},
    stream::Info,
};
use proto_events::Namespace;

/// The epoch of a stream: its creation time in nanoseconds since 1970, as
/// a decimal string (sequence numbers start again in a new stream).
pub fn epoch(info: &Info) -> Arc<str> {
    info.created.unix_timestamp_nanos().to_string().into()
}

/// How a resume starts.
pub enum Start {
    /// `since` is older than the stream keeps, from another stream, or
    /// otherwise unusable.
    Resync {
        first_seq: u64,
        epoch: Arc<str>,
        message: String,
    },
    /// Nothing stored after `since`.
    UpToDate { epoch: Arc<str> },
    /// Replay messages up to and including `until` (the stream's last
    /// sequence when the replay began).
    Replay {
        messages: Box<Ordered>,
        /// The stream's first kept sequence when the replay began.
        first_seq: u64,
        until: u64,
        epoch: Arc<str>,
    },
}

/// Decides how to resume after `since` (from the stream `client_epoch`,
/// if the client knows it) and opens the replay consumer.
pub async fn start(
    js: &jetstream::Context,
    ns: &Namespace,
    since: u64,
    client_epoch: Option<&str>,
    max_replay: u64,
) -> anyhow::Result<Start> {
    let mut stream = js.get_stream(ns.stream()).await?;
    let info = stream.info().await?;
    let epoch = epoch(info);
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let resync = |message: String| Start::Resync {
        first_seq: first,
        epoch: epoch.clone(),
        message,
    };
    if let Some(theirs) = client_epoch.filter(|e| !e.is_empty())
        && theirs != &*epoch
    {
        return Ok(resync(format!(
            "since={since} is from another stream (epoch {}, now {epoch}); reload",
            theirs.chars().take(40).collect::<String>()
        )));
    }
    if since > last {
        return Ok(resync(format!(
            "since={since} is newer than the last stored event ({last}); the stream was reset, reload"
        )));
    }
    if since == last {
        return Ok(Start::UpToDate { epoch });
    }
    if since.saturating_add(1) < first {
        return Ok(resync(format!(
            "events after {since} are no longer kept (oldest kept: {first}); reload"
        )));
    }
    if last - since > max_replay {
        return Ok(resync(format!(
            "{} events to replay, more than the limit of {max_replay}; reload",
            last - since
        )));
    }
    let messages = open(js, ns, since + 1).await?;
    Ok(Start::Replay {
        messages,
        first_seq: first,
        until: last,
        epoch,
    })
}

/// The stream's first kept sequence (for `resync_required`).
pub async fn first_seq(js: &jetstream::Context, ns: &Namespace) -> anyhow::Result<u64> {
    let stream = js.get_stream(ns.stream()).await?;
    Ok(stream.cached_info().state.first_sequence)
}

/// An ordered consumer over every event from `start_sequence` on.
pub async fn open(
    js: &jetstream::Context,
    ns: &Namespace,
    start_sequence: u64,
) -> anyhow::Result<Box<Ordered>> {
    let stream = js.get_stream_no_info(ns.stream()).await?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: ns.events_filter(),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence },
            description: Some("gateway replay".to_owned()),
            ..Default::default()
        })
        .await?;
    Ok(Box::new(consumer.messages().await?))
}
