//! Ordered webhooks (docs/contract.md, "Delivery policy"): one event at a
//! time, in stream order, across every replica and restart.
//!
//! Each ordered webhook has its own durable consumer on the events stream,
//! `<DELIVERY_CONSUMER>-ordered-<id>`, starting at the time it became
//! ordered, with at most one unacknowledged message: JetStream hands the
//! next event to any replica only once the one before is acknowledged. A
//! failed attempt is recorded and its message handed back with the retry
//! schedule's delay (the message stays the one pending, so later events
//! wait behind it); once it succeeds, or its retries are exhausted (then it
//! is recorded as failed), it is acknowledged and the next event goes. A
//! replica killed mid-delivery leaves the message unacknowledged: after the
//! ack wait it goes to another replica, which first reads what was
//! recorded for it (a recorded success is not sent again).
//!
//! The shared consumer (`crate::consumer`) skips ordered webhooks for
//! events published since they became ordered; earlier events were
//! delivered as before.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use proto_events::{Envelope, Namespace, Pattern, PatternSet};
use storage::DbPool;
use tokio_util::sync::CancellationToken;
use webhook_client::Verdict;

use crate::cache::{Target, WebhookCache};
use crate::deliver::{Body, Deliverer, Job};
use crate::recorder::Record;

/// What the ordered consumers need.
pub struct OrderedCtx {
    pub js: jetstream::Context,
    pub ns: Namespace,
    pub pool: DbPool,
    pub cache: WebhookCache,
    pub deliverer: Arc<Deliverer>,
    /// `DELIVERY_CONSUMER`: the consumers are named after it.
    pub name: String,
    pub ack_wait: Duration,
}

impl OrderedCtx {
    fn consumer_name(&self, webhook_id: i32) -> String {
        format!("{}-ordered-{webhook_id}", self.name)
    }
}

struct Running {
    since: DateTime<Utc>,
    patterns: Vec<String>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Keeps one delivery loop per ordered webhook running until `stop`; drops
/// the consumer of a webhook that is no longer ordered.
pub async fn run(ctx: Arc<OrderedCtx>, stop: CancellationToken) {
    let mut running: HashMap<i32, Running> = HashMap::new();
    let sweep_every = Duration::from_secs(30);
    let mut sweep =
        tokio::time::interval_at(tokio::time::Instant::now() + sweep_every, sweep_every);
    loop {
        let wanted: HashMap<i32, (DateTime<Utc>, Vec<String>)> = ctx
            .cache
            .ordered()
            .into_iter()
            .filter_map(|(t, patterns)| Some((t.id, (t.policy.ordered_since?, patterns))))
            .collect();
        let ended: Vec<i32> = running
            .iter()
            .filter(|(id, r)| {
                wanted
                    .get(id)
                    .is_none_or(|(since, p)| *since != r.since || *p != r.patterns)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ended {
            if let Some(r) = running.remove(&id) {
                r.stop.cancel();
                let _ = r.task.await;
                drop_consumer(&ctx, id).await;
            }
        }
        for (id, (since, patterns)) in wanted {
            if running.contains_key(&id) {
                continue;
            }
            let token = stop.child_token();
            let task = tokio::spawn(run_one(
                ctx.clone(),
                id,
                since,
                patterns.clone(),
                token.clone(),
            ));
            running.insert(
                id,
                Running {
                    since,
                    patterns,
                    stop: token,
                    task,
                },
            );
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = sweep.tick() => {
                // A NATS request may wait for its timeout: never past a stop.
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = sweep_consumers(&ctx, &running) => {}
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    for (_, r) in running {
        r.stop.cancel();
        let _ = r.task.await;
    }
}

async fn drop_consumer(ctx: &OrderedCtx, webhook_id: i32) {
    let name = ctx.consumer_name(webhook_id);
    let drop = async {
        let stream = ctx.js.get_stream(ctx.ns.stream()).await.ok()?;
        stream.delete_consumer(&name).await.ok()
    };
    // Bounded: NATS may be away; the sweep removes it later.
    if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), drop).await {
        tracing::info!(webhook_id, consumer = %name, "ordered consumer removed");
    }
}

/// Removes ordered consumers of webhooks no replica orders any more (a
/// webhook deleted or switched while every worker was down).
async fn sweep_consumers(ctx: &OrderedCtx, running: &HashMap<i32, Running>) {
    let prefix = format!("{}-ordered-", ctx.name);
    let Ok(mut stream) = ctx.js.get_stream(ctx.ns.stream()).await else {
        return;
    };
    let mut names = stream.consumer_names();
    let mut orphans = Vec::new();
    while let Some(Ok(name)) = names.next().await {
        if let Some(id) = name
            .strip_prefix(&prefix)
            .and_then(|id| id.parse::<i32>().ok())
            && !running.contains_key(&id)
        {
            orphans.push(id);
        }
    }
    if orphans.is_empty() || !ctx.cache.is_loaded() {
        return;
    }
    for id in orphans {
        // The cache may be behind the database: ask it.
        if let Ok(w) = storage::webhooks::active(&ctx.pool).await
            && w.iter().any(|w| w.id == id && w.ordered)
        {
            continue;
        }
        drop_consumer(ctx, id).await;
        let _ = stream.info().await;
    }
}

/// The filter subject of an ordered consumer: the webhook's pattern when it
/// has one (NATS 2.9 takes one filter), else every event.
fn filter_of(ns: &Namespace, patterns: &[String]) -> String {
    match patterns {
        [one] => match Pattern::parse(one) {
            Ok(p) => crate::jobs::filter_subject(ns, &p),
            Err(_) => ns.events_filter(),
        },
        _ => ns.events_filter(),
    }
}

async fn open(
    ctx: &OrderedCtx,
    webhook_id: i32,
    since: DateTime<Utc>,
    patterns: &[String],
) -> Result<pull::Stream, String> {
    let stream = ctx
        .js
        .get_stream(ctx.ns.stream())
        .await
        .map_err(|e| format!("cannot open the events stream: {e}"))?;
    let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(
        since.timestamp_nanos_opt().unwrap_or(0),
    ))
    .map_err(|e| format!("time out of range: {e}"))?;
    let name = ctx.consumer_name(webhook_id);
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            &name,
            pull::Config {
                durable_name: Some(name.clone()),
                description: Some(format!(
                    "bedolaga delivery-worker: webhook {webhook_id}, in order"
                )),
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartTime { start_time },
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: ctx.ack_wait,
                max_deliver: -1,
                // One at a time: the next event is handed out only once
                // this one is acknowledged.
                max_ack_pending: 1,
                filter_subject: filter_of(&ctx.ns, patterns),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("cannot open consumer '{name}': {e}"))?;
    consumer
        .stream()
        .max_messages_per_batch(1)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| format!("cannot pull from consumer '{name}': {e}"))
}

async fn run_one(
    ctx: Arc<OrderedCtx>,
    webhook_id: i32,
    since: DateTime<Utc>,
    patterns: Vec<String>,
    stop: CancellationToken,
) {
    let set = PatternSet::parse(patterns.iter().map(String::as_str)).unwrap_or(PatternSet::none());
    tracing::info!(webhook_id, %since, "delivering in order");
    'outer: while !stop.is_cancelled() {
        let mut messages = match open(&ctx, webhook_id, since, &patterns).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(webhook_id, error = %e, "ordered consumer not open; retrying");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => break 'outer,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(msg)) => handle(&ctx, webhook_id, set, &msg, &stop).await,
                // While another replica holds the one message in flight
                // the server may send nothing, heartbeats included.
                Some(Err(e)) if e.kind() == pull::MessagesErrorKind::MissingHeartbeat => {
                    tracing::debug!(webhook_id, error = %e, "no heartbeat from the ordered consumer");
                }
                Some(Err(e)) => {
                    tracing::warn!(webhook_id, error = %e, "error while pulling ordered events");
                    if matches!(
                        e.kind(),
                        pull::MessagesErrorKind::ConsumerDeleted
                            | pull::MessagesErrorKind::NoResponders
                    ) {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue 'outer;
                    }
                }
                None => continue 'outer,
            }
        }
    }
}

/// What becomes of one message.
enum Outcome {
    Ack,
    Retry(Duration),
    /// Shutting down (or the webhook is gone): hand it back now.
    GiveBack,
}

/// Delivers one message (with progress acks while it takes) and settles it.
async fn handle(
    ctx: &OrderedCtx,
    webhook_id: i32,
    patterns: PatternSet,
    msg: &jetstream::Message,
    stop: &CancellationToken,
) {
    let work = deliver(ctx, webhook_id, patterns, msg, stop);
    tokio::pin!(work);
    let mut progress = tokio::time::interval(ctx.ack_wait / 3);
    progress.tick().await;
    let outcome = loop {
        tokio::select! {
            o = &mut work => break o,
            _ = progress.tick() => {
                let _ = msg.ack_with(AckKind::Progress).await;
            }
        }
    };
    let settled = match outcome {
        Outcome::Ack => msg.ack().await,
        Outcome::Retry(delay) => msg.ack_with(AckKind::Nak(Some(delay))).await,
        Outcome::GiveBack => msg.ack_with(AckKind::Nak(None)).await,
    };
    if let Err(e) = settled {
        tracing::warn!(webhook_id, error = %e, "cannot settle an ordered event; it will come back");
    }
}

async fn deliver(
    ctx: &OrderedCtx,
    webhook_id: i32,
    patterns: PatternSet,
    msg: &jetstream::Message,
    stop: &CancellationToken,
) -> Outcome {
    // A bad message is the shared consumer's to dead-letter.
    let Ok(event) = Envelope::parse(&msg.payload) else {
        return Outcome::Ack;
    };
    let Some(target) = current_target(&ctx.cache, webhook_id) else {
        return Outcome::GiveBack;
    };
    if !patterns.matches(event.event_type)
        || crate::consumer::operator_subject(&event) == Some(i64::from(webhook_id))
        || !target.takes(&event.payload)
    {
        return Outcome::Ack;
    }
    let (succeeded, failed) = match storage::deliveries::attempts_of(
        &ctx.pool, webhook_id, &event.id,
    )
    .await
    {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(webhook_id, error = %e, "cannot read the event's attempts; retrying");
            return Outcome::Retry(Duration::from_secs(2));
        }
    };
    if succeeded {
        return Outcome::Ack;
    }
    // Held by the circuit or the rate limit: wait here, holding the later
    // events behind this one.
    while let Some(hold) = ctx.deliverer.admit(&target, false).await {
        let wait = (hold.due - Utc::now())
            .to_std()
            .unwrap_or_default()
            .clamp(Duration::from_millis(50), Duration::from_secs(30));
        tokio::select! {
            _ = stop.cancelled() => return Outcome::GiveBack,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    let canonical = Body::canonical(&serde_json::Value::Object(event.payload));
    let body = Body::of_event(&canonical, &msg.payload, target.body_format);
    let traceparent = msg
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .map(|v| v.as_str())
        .filter(|v| v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()));
    let record = ctx
        .deliverer
        .send_now(Job {
            target: &target,
            row: None,
            event_id: Some(&event.id),
            event_type: event.event_type.as_str(),
            body,
            attempt_number: failed.saturating_add(1),
            traceparent,
            from_stream: true,
            ordered: true,
            stream_time: msg
                .info()
                .ok()
                .map(|i| crate::jobs::from_nats_time(i.published)),
        })
        .await;
    let next = match &record {
        Record::Attempted(a) => (a.verdict == Verdict::Success, a.next_retry_at),
        _ => (false, None),
    };
    if let Err(e) = ctx.deliverer.recorder.submit(vec![record]).await {
        tracing::warn!(webhook_id, error = %e, "cannot record an ordered delivery; it will be sent again");
        return Outcome::Retry(Duration::from_secs(2));
    }
    match next {
        (true, _) | (false, None) => Outcome::Ack,
        (false, Some(at)) => Outcome::Retry((at - Utc::now()).to_std().unwrap_or_default()),
    }
}

fn current_target(cache: &WebhookCache, webhook_id: i32) -> Option<Arc<Target>> {
    cache
        .ordered()
        .into_iter()
        .find(|(t, _)| t.id == webhook_id)
        .map(|(t, _)| t)
}
