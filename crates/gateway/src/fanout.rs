//! The live source: one ordered (ephemeral) JetStream consumer per gateway
//! replica on the events stream, so every replica sees every event with its
//! stream sequence, feeding the [`Hub`].

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use futures::StreamExt;
use proto_events::Namespace;
use telemetry::backoff::Backoff;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::event_frame;

/// Consumes events until `shutdown`; recreates the consumer after errors,
/// starting after the last sequence seen so no event is skipped.
pub async fn run(
    js: jetstream::Context,
    ns: Namespace,
    hub: Arc<Hub>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    // 200 ms after a consumer that ended; 400 ms, 800 ms, … 5 s after
    // consecutive failures.
    let mut backoff = Backoff::new(Duration::from_millis(400), Duration::from_secs(5));
    while !shutdown.is_cancelled() {
        // Creating the stream or the consumer waits for JetStream's request
        // timeout while NATS is unreachable; shutdown does not wait for it.
        let consumed = tokio::select! {
            r = consume(&js, &ns, &hub, &metrics, &shutdown) => r,
            () = shutdown.cancelled() => break,
        };
        let wait = match consumed {
            Ok(()) => {
                backoff.reset();
                Duration::from_millis(200)
            }
            Err(e) => {
                tracing::warn!(error = %e, stream = ns.stream(), "event consumer failed; retrying");
                backoff.next_delay()
            }
        };
        hub.set_live(false);
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    hub.set_live(false);
}

async fn consume(
    js: &jetstream::Context,
    ns: &Namespace,
    hub: &Hub,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let stream = ns.ensure_streams(js).await?;
    // The first consumer starts after the stream's last event; a consumer
    // rebuilt after an error starts after the last event seen, so events
    // stored while it was down still reach live clients (even when none
    // had arrived before the error).
    let info = stream.cached_info();
    let epoch = crate::replay::epoch(info);
    if hub.set_epoch(epoch.clone()) {
        // A new stream (first start, or the stream was recreated): its
        // sequences start again; go on after its last event.
        hub.restart_at(info.state.last_sequence);
    }
    let deliver_policy = DeliverPolicy::ByStartSequence {
        start_sequence: hub.last_seq() + 1,
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: ns.events_filter(),
            deliver_policy,
            description: Some("gateway fan-out".to_owned()),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    hub.set_live(true);
    tracing::info!(stream = ns.stream(), "receiving events");
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = messages.next() => next,
        };
        let msg = match next {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("the consumer's message stream ended"),
        };
        let seq = match msg.info() {
            Ok(info) => info.stream_sequence,
            Err(e) => {
                tracing::warn!(error = %e, "message without JetStream metadata");
                continue;
            }
        };
        if seq <= hub.last_seq() {
            continue;
        }
        let span = fan_out_span(&msg, seq, hub.len());
        span.in_scope(|| match event_frame(&msg.payload, seq, &epoch) {
            Ok(frame) => {
                span.record("event_type", frame.event_type.as_str());
                hub.dispatch(frame);
            }
            Err(e) => {
                metrics.events_invalid.inc();
                tracing::warn!(seq, subject = %msg.subject, error = %e, "skipping a stored message that is not a valid event");
                hub.skip(seq);
            }
        });
    }
}

/// The span of one event's fan-out: a child of the publisher's span when
/// the message carries a `traceparent` (and `tracestate`) header. It covers
/// building the frame and handing it to every worker thread's clients;
/// the socket writes that follow are shared by many events and not traced.
fn fan_out_span(msg: &jetstream::Message, seq: u64, clients: usize) -> tracing::Span {
    let span = tracing::info_span!(
        "fan_out",
        otel.kind = "consumer",
        messaging.message.id = tracing::field::Empty,
        event_seq = seq,
        event_type = tracing::field::Empty,
        clients,
    );
    if let Some(headers) = msg.headers.as_ref() {
        if let Some(id) = headers.get("Nats-Msg-Id") {
            span.record("messaging.message.id", id.as_str());
        }
        if let Some(traceparent) = headers.get("traceparent") {
            let tracestate = headers.get("tracestate").map(|v| v.as_str());
            telemetry::trace::set_remote_parent(&span, traceparent.as_str(), tracestate);
        }
    }
    span
}
