//! The durable pull consumer on `EVENTS`: every replica opens it by the same
//! name, so the server splits the messages between them.
//!
//! Each message becomes a task: parse (or dead-letter), match, deliver to
//! every matching webhook concurrently, wait until the attempt rows are
//! committed, then ack. While that runs, progress acks keep JetStream from
//! redelivering it. A message whose rows cannot be written is nak'ed and
//! comes back later: at-least-once.
//!
//! A message that may have been handed out again meanwhile (redelivered;
//! held longer than the ack wait since this process took it; or held
//! across a pause of this process, see [`PauseWatch`]) is checked against
//! the recorded rows first: webhooks that already have a row for the event
//! are skipped. The recorder refuses a second success anyway; this check
//! keeps the duplicate POSTs down. While attempts cannot be recorded the
//! worker takes no new message and hands back what it still receives (nak
//! with a short delay) instead of letting it wait out the ack wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use bytes::Bytes;
use futures::StreamExt;
use proto_events::deadletter::{
    DEADLETTER_ORIGINAL_SIZE, DEADLETTER_REASON, DEADLETTER_STREAM_SEQUENCE, DEADLETTER_TRUNCATED,
};
use proto_events::{Envelope, Namespace};
use storage::DbPool;
use storage::models::BodyFormat;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::cache::{Target, WebhookCache};
use crate::deliver::{Body, Deliverer, Job};
use crate::recorder::Record;
use storage::audit::SeenEvent;

/// What the consumer needs.
pub struct ConsumerCtx {
    pub js: jetstream::Context,
    pub ns: Namespace,
    pub pool: DbPool,
    pub cache: WebhookCache,
    pub deliverer: Arc<Deliverer>,
    pub name: String,
    pub batch_size: usize,
    pub ack_wait: Duration,
    pub max_ack_pending: i64,
    pub messages: Arc<Semaphore>,
    pub ready: Arc<AtomicBool>,
    pub tracker: TaskTracker,
    /// Cancelled when in-flight work must be handed back now.
    pub hard_stop: CancellationToken,
    pub reconnects: Reconnects,
    pub pauses: Arc<PauseWatch>,
}

/// How often the pull loop, waiting for a free message slot, looks whether
/// attempts can still be recorded.
const RECHECK: Duration = Duration::from_millis(250);

/// How long a message handed back while the database is away waits before
/// JetStream offers it again (to any replica).
const GIVE_BACK_DELAY: Duration = Duration::from_secs(1);

/// Notices that this process did not run for a while (SIGSTOP, a VM or
/// swap stall, a starved runtime): a ticker on the monotonic clock, which
/// keeps running while the process is stopped, sees a gap.
#[derive(Default)]
pub struct PauseWatch {
    /// When the latest pause ended, and how long it was.
    last: parking_lot::Mutex<Option<(tokio::time::Instant, Duration)>>,
}

/// The ticker's period, and the gap beyond it that counts as a pause.
const PAUSE_TICK: Duration = Duration::from_millis(200);
const PAUSE_MIN: Duration = Duration::from_secs(1);
/// How soon after a pause the messages received before it are read.
const BUFFER_GRACE: Duration = Duration::from_secs(1);

impl PauseWatch {
    /// Ticks until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(PAUSE_TICK) => {}
            }
            let now = tokio::time::Instant::now();
            let gap = now - last;
            if gap > PAUSE_TICK + PAUSE_MIN {
                *self.last.lock() = Some((now, gap));
                tracing::warn!(
                    paused_ms = u64::try_from(gap.as_millis()).unwrap_or(u64::MAX),
                    "this process did not run for a while; messages held across the pause \
                     are checked against the recorded rows before sending"
                );
            }
            last = now;
        }
    }

    /// The length of a pause that may have let a message taken at `taken`
    /// be handed out again: one that ended after it was taken, or just
    /// before (it waited in the client's or the kernel's buffer, which is
    /// read within [`BUFFER_GRACE`] of the resume).
    fn held_across(&self, taken: tokio::time::Instant) -> Option<Duration> {
        self.last
            .lock()
            .filter(|(end, _)| *end + BUFFER_GRACE >= taken)
            .map(|(_, len)| len)
    }
}

/// Notices reconnects of the NATS client. A server that crashed forgets the
/// acks and delivery counts it had not written to disk yet, so after a
/// reconnect it may send work this worker already did as a first delivery
/// (`delivered == 1`); events published before the reconnect are therefore
/// checked against the rows like any redelivery.
#[derive(Default)]
pub struct Reconnects {
    /// `(connects seen, when a reconnect was first noticed)`.
    state: parking_lot::Mutex<(u64, Option<time::OffsetDateTime>)>,
}

/// Connections the client made so far (the first and every reconnect).
fn connects(client: &async_nats::Client) -> u64 {
    client
        .statistics()
        .connects
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Allowance for the broker's clock running ahead of this host's.
const CLOCK_SKEW: time::Duration = time::Duration::seconds(2);

impl Reconnects {
    /// Whether an event published at `published` may have been delivered
    /// to this worker before the client's latest reconnect.
    fn may_repeat(&self, client: &async_nats::Client, published: time::OffsetDateTime) -> bool {
        let connects = connects(client);
        let mut state = self.state.lock();
        // The first connect is not a reconnect.
        if connects > 1 && connects > state.0 {
            state.1 = Some(time::OffsetDateTime::now_utc());
        }
        state.0 = state.0.max(connects);
        state.1.is_some_and(|at| published < at + CLOCK_SKEW)
    }
}

impl ConsumerCtx {
    async fn open(&self) -> Result<pull::Stream, String> {
        let stream = self
            .ns
            .ensure_streams(&self.js)
            .await
            .map_err(|e| format!("cannot create the streams: {e}"))?;
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                &self.name,
                pull::Config {
                    durable_name: Some(self.name.clone()),
                    description: Some("bedolaga delivery-worker (shared by every replica)".into()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: self.ack_wait,
                    max_deliver: -1,
                    max_ack_pending: self.max_ack_pending,
                    filter_subject: self.ns.events_filter(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("cannot open consumer '{}': {e}", self.name))?;
        consumer
            .stream()
            .max_messages_per_batch(self.batch_size)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| format!("cannot pull from consumer '{}': {e}", self.name))
    }
}

/// Pulls until `stop`; every message runs as a task on `ctx.tracker`.
pub async fn run(ctx: Arc<ConsumerCtx>, stop: CancellationToken) {
    let mut failures = 0u32;
    'outer: loop {
        let mut messages = tokio::select! {
            _ = stop.cancelled() => break,
            opened = ctx.open() => match opened {
                Ok(m) => {
                    if failures > 0 {
                        tracing::info!(consumer = %ctx.name, "consuming events again");
                    } else {
                        tracing::info!(consumer = %ctx.name, stream = ctx.ns.stream(), "consuming events");
                    }
                    failures = 0;
                    ctx.ready.store(true, Ordering::Relaxed);
                    m
                }
                Err(e) => {
                    failures += 1;
                    ctx.ready.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, "consumer not ready; retrying");
                    let wait = Duration::from_millis(250 * u64::from(failures.min(20)));
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(wait) => continue,
                    }
                }
            },
        };
        loop {
            if ctx.deliverer.recorder.is_failing() {
                if !wait_for_database(&ctx, &mut messages, &stop).await {
                    break 'outer;
                }
                continue;
            }
            // Every message slot may be taken by work waiting to be
            // recorded: look at the recorder again now and then, so that
            // what the pull brings meanwhile is handed back.
            let permit = tokio::select! {
                _ = stop.cancelled() => break 'outer,
                p = ctx.messages.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break 'outer,
                },
                _ = tokio::time::sleep(RECHECK) => continue,
            };
            let next = tokio::select! {
                _ = stop.cancelled() => break 'outer,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(msg)) if ctx.deliverer.recorder.is_failing() => {
                    hand_back(&ctx, &msg).await;
                }
                Some(Ok(msg)) => {
                    let ctx2 = ctx.clone();
                    let taken = tokio::time::Instant::now();
                    ctx.tracker.spawn(async move {
                        ctx2.deliverer.metrics.messages_in_flight.inc();
                        handle(&ctx2, msg, taken).await;
                        ctx2.deliverer.metrics.messages_in_flight.dec();
                        drop(permit);
                    });
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "error while pulling messages");
                    if matches!(
                        e.kind(),
                        pull::MessagesErrorKind::ConsumerDeleted
                            | pull::MessagesErrorKind::NoResponders
                    ) {
                        ctx.ready.store(false, Ordering::Relaxed);
                        continue 'outer;
                    }
                }
                None => {
                    tracing::warn!("message stream ended; reopening");
                    continue 'outer;
                }
            }
        }
    }
    ctx.ready.store(false, Ordering::Relaxed);
    tracing::info!("stopped pulling events");
}

/// While attempts cannot be recorded, works no new message until the
/// database answers: a webhook sent now could not be recorded either and
/// would be sent again when its message comes back. What the pull still
/// brings is handed back at once (nak, redelivered after
/// [`GIVE_BACK_DELAY`], to any replica) rather than held until its ack
/// wait runs out. `false` on stop.
async fn wait_for_database(
    ctx: &ConsumerCtx,
    messages: &mut pull::Stream,
    stop: &CancellationToken,
) -> bool {
    tracing::warn!("attempts cannot be recorded; taking no new events until the database answers");
    let mut handed_back = 0u64;
    let mut ping = Box::pin(tokio::time::sleep(Duration::ZERO));
    let answered = loop {
        tokio::select! {
            _ = stop.cancelled() => break false,
            next = messages.next() => {
                if let Some(Ok(msg)) = next {
                    hand_back(ctx, &msg).await;
                    handed_back += 1;
                }
            }
            _ = &mut ping => {
                let probe = tokio::time::timeout(Duration::from_secs(2), storage::ping(&ctx.pool));
                if matches!(probe.await, Ok(Ok(()))) {
                    break true;
                }
                ping.as_mut().reset(tokio::time::Instant::now() + Duration::from_millis(500));
            }
        }
    };
    if handed_back > 0 {
        tracing::info!(
            handed_back,
            "messages handed back while the database was away"
        );
    }
    if answered {
        ctx.deliverer.recorder.clear_failing();
        tracing::info!("the database answers again; taking events");
    }
    answered
}

/// Gives a message back to JetStream unworked: offered again (to any
/// replica) after [`GIVE_BACK_DELAY`].
async fn hand_back(ctx: &ConsumerCtx, msg: &jetstream::Message) {
    match msg.ack_with(AckKind::Nak(Some(GIVE_BACK_DELAY))).await {
        Ok(()) => {
            ctx.deliverer.metrics.handed_back.inc();
        }
        Err(e) => tracing::debug!(error = %e, "cannot hand a message back"),
    }
}

/// What to do with a message once processing ended.
enum Verdict {
    Ack,
    /// Give it back to JetStream, redelivered after this delay.
    Retry(Duration),
    /// Never redeliver it (`AckKind::Term`).
    GiveUp,
    /// Neither ack nor nak: a stale copy the server has handed out again
    /// (or will, once its ack wait runs out).
    Leave,
}

async fn handle(ctx: &ConsumerCtx, msg: jetstream::Message, taken: tokio::time::Instant) {
    let work = process(ctx, &msg, taken);
    tokio::pin!(work);
    let mut progress = tokio::time::interval(ctx.ack_wait / 3);
    progress.tick().await;
    let verdict = loop {
        tokio::select! {
            v = &mut work => break Some(v),
            _ = ctx.hard_stop.cancelled() => break None,
            _ = progress.tick() => {
                if let Err(e) = msg.ack_with(AckKind::Progress).await {
                    tracing::debug!(error = %e, "progress ack failed");
                }
            }
        }
    };
    let result = match verdict {
        Some(Verdict::Ack) => msg.ack().await,
        Some(Verdict::Retry(delay)) => msg.ack_with(AckKind::Nak(Some(delay))).await,
        Some(Verdict::GiveUp) => msg.ack_with(AckKind::Term).await,
        Some(Verdict::Leave) => Ok(()),
        // Shutting down: hand the message back for another replica.
        None => msg.ack_with(AckKind::Nak(None)).await,
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot acknowledge a message; it will be redelivered");
    }
}

async fn process(
    ctx: &ConsumerCtx,
    msg: &jetstream::Message,
    taken: tokio::time::Instant,
) -> Verdict {
    let event = match Envelope::parse(&msg.payload) {
        Ok(e) => e,
        // The rare paths' futures are boxed (here and below): held inline,
        // they would make every message's task as large as theirs (a
        // database query's, a publish's), all of it moved into the task
        // when it is spawned.
        Err(e) => return Box::pin(dead_letter(ctx, msg, &e.to_string())).await,
    };
    ctx.deliverer.metrics.events.inc();
    let info = msg.info().ok();
    let published = info.as_ref().map_or_else(chrono::Utc::now, |i| {
        crate::jobs::from_nats_time(i.published)
    });
    let mut targets = ctx.cache.matching(event.event_type);
    // An operator event is never delivered to the webhook it is about.
    if let Some(about) = operator_subject(&event) {
        targets.retain(|t| i64::from(t.id) != about);
    }
    // A webhook whose filter refuses the event has nothing to do with it:
    // no attempt and no row; the audit names it.
    let (mut targets, refused): (Vec<_>, Vec<_>) =
        targets.into_iter().partition(|t| t.takes(&event.payload));
    let seen = SeenEvent {
        event_id: event.id.clone(),
        event_type: event.event_type.as_str().to_owned(),
        stream_seq: info
            .as_ref()
            .map_or(0, |i| i64::try_from(i.stream_sequence).unwrap_or(i64::MAX)),
        published_at: published,
        processed_at: chrono::Utc::now(),
        matched: targets.iter().map(|t| t.id).collect(),
        filtered: refused.iter().map(|t| t.id).collect(),
    };
    // An ordered webhook's own consumer delivers what was published since
    // it became ordered (`crate::ordered`).
    targets.retain(|t| !t.policy.orders(published));
    if targets.is_empty() {
        return match ctx
            .deliverer
            .recorder
            .submit(vec![Record::Seen(seen)])
            .await
        {
            Ok(()) => Verdict::Ack,
            Err(e) => {
                tracing::warn!(error = %e, event_id = %event.id, "event will be redelivered");
                Verdict::Retry(Duration::from_secs(5))
            }
        };
    }
    // A message that may have been handed out again (a replica died, a
    // write failed, the server lost its delivery state: see `Reconnects`;
    // or this process held it past the ack wait, or across a pause, while
    // another replica got it) skips the webhooks that already have a row
    // for this event.
    let pause = ctx.pauses.held_across(taken);
    if pause.is_some_and(|p| p >= ctx.ack_wait / 2) {
        // Held across a pause of half the ack wait or more: the server has
        // most likely handed this copy to another replica already, which
        // may still be sending it (not recorded yet, so a check would not
        // see it). Left alone, it comes back after its ack wait if nobody
        // acked it.
        ctx.deliverer.metrics.redelivery_check("left", 1);
        return Verdict::Leave;
    }
    let held_too_long = taken.elapsed() >= ctx.ack_wait || pause.is_some();
    let redelivered = held_too_long
        || info.as_ref().is_some_and(|i| {
            i.delivered > 1 || ctx.reconnects.may_repeat(&ctx.js.client(), i.published)
        });
    if redelivered {
        match Box::pin(storage::deliveries::recorded_webhooks(&ctx.pool, &event.id)).await {
            Ok(done) => {
                let before = targets.len();
                targets.retain(|t| !done.contains(&t.id));
                let metrics = &ctx.deliverer.metrics;
                let skipped = (before - targets.len()) as u64;
                metrics.redelivery_check("skipped", skipped);
                metrics.redelivery_check("sent", targets.len() as u64);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot check earlier deliveries; retrying the event later");
                return Verdict::Retry(Duration::from_secs(5));
            }
        }
        if targets.is_empty() {
            return Verdict::Ack;
        }
    }
    let canonical = Body::canonical(&serde_json::Value::Object(event.payload));
    // Written once per event, and only when a webhook asks for it.
    let bot = targets
        .iter()
        .any(|t| t.body_format == BodyFormat::Bot)
        .then(|| Body::of_event(&canonical, &msg.payload, BodyFormat::Bot));
    let traceparent = msg
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .map(|v| v.as_str())
        // A W3C traceparent is 55 visible ASCII characters; anything else is
        // not passed on (and could not be stored with the retry rows).
        .filter(|v| v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned);
    let event_type = event.event_type.as_str();
    // With trace export on, the deliveries are a span in the publisher's
    // trace and receivers get that span as their parent; otherwise the
    // publisher's traceparent is passed on as it came.
    let span = tracing::info_span!("deliver_event", event_id = %event.id, event_type);
    if let Some(tp) = &traceparent {
        telemetry::trace::set_remote_parent(&span, tp, None);
    }
    let traceparent = telemetry::trace::traceparent_of(&span).or(traceparent);
    let job = job_builder(|target| Job {
        target,
        row: None,
        event_id: Some(&event.id),
        event_type,
        body: match (&bot, target.body_format) {
            (Some(bot), BodyFormat::Bot) => bot.clone(),
            _ => canonical.clone(),
        },
        attempt_number: 1,
        traceparent: traceparent.as_deref(),
        from_stream: true,
        ordered: false,
        stream_time: Some(published),
    });
    // Each delivery is recorded as soon as it ends (a slow receiver does not
    // hold back the rows of the others); the event is acked once all are.
    // The audit's record of the event goes with the first one.
    let deliver_and_record = |target, seen: Option<SeenEvent>| {
        let job = job(target);
        async move {
            let record = ctx.deliverer.deliver(job).await;
            let mut records = vec![record];
            records.extend(seen.map(Record::Seen));
            ctx.deliverer.recorder.submit(records).await
        }
    };
    let mut seen = Some(seen);
    let results = if let [target] = targets.as_slice() {
        // The common case, without a heap-allocated set of futures.
        vec![
            deliver_and_record(&**target, seen.take())
                .instrument(span)
                .await,
        ]
    } else {
        futures::future::join_all(
            targets
                .iter()
                .map(|t| deliver_and_record(&**t, seen.take())),
        )
        .instrument(span)
        .await
    };
    match results.into_iter().find_map(Result::err) {
        None => Verdict::Ack,
        Some(e) => {
            tracing::warn!(error = %e, event_id = %event.id, "event will be redelivered");
            Verdict::Retry(Duration::from_secs(5))
        }
    }
}

/// The webhook an operator event is about (its payload's `webhook_id`).
pub fn operator_subject(event: &Envelope) -> Option<i64> {
    if !event.event_type.is_operator() {
        return None;
    }
    event.payload.get("webhook_id")?.as_i64()
}

/// Names the closure's argument type, so that its body may read the target.
fn job_builder<'a, F: Fn(&'a Target) -> Job<'a>>(f: F) -> F {
    f
}

/// How often a bad message is tried on the dead-letter stream before it is
/// given up: terminated, left in the events stream (which keeps it until its
/// age limit) and logged with its stream sequence.
const DEADLETTER_TRIES: i64 = 5;

/// Header wire size: `NATS/1.0\r\n`, each `name: value\r\n`, `\r\n`
/// (what the client and server compare with `max_payload`, with the body).
fn header_size(headers: &async_nats::HeaderMap) -> usize {
    let mut n = "NATS/1.0\r\n\r\n".len();
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        for v in values {
            n += name.len() + ": \r\n".len() + v.as_str().len();
        }
    }
    n
}

/// The dead letter of `msg`: its headers (unless they alone would not fit),
/// the reason, its size and stream sequence, and as much of its body as
/// fits in `max_payload`.
fn dead_letter_message(
    msg: &jetstream::Message,
    reason: &str,
    max_payload: usize,
) -> (async_nats::HeaderMap, Bytes, bool) {
    let mut ours = async_nats::HeaderMap::new();
    ours.insert(DEADLETTER_REASON, reason);
    ours.insert(
        DEADLETTER_ORIGINAL_SIZE,
        msg.payload.len().to_string().as_str(),
    );
    if let Ok(info) = msg.info() {
        ours.insert(
            DEADLETTER_STREAM_SEQUENCE,
            info.stream_sequence.to_string().as_str(),
        );
    }
    let mut headers = async_nats::HeaderMap::new();
    if let Some(orig) = &msg.headers {
        for (name, values) in orig.iter() {
            // Expectation headers would make the dead-letter publish fail.
            if AsRef::<str>::as_ref(name)
                .to_ascii_lowercase()
                .starts_with("nats-expected")
            {
                continue;
            }
            for v in values {
                headers.append(name.clone(), v.clone());
            }
        }
    }
    for (name, values) in ours.iter() {
        for v in values {
            headers.insert(name.clone(), v.clone());
        }
    }
    // Room for the truncation marker, so adding it never overflows.
    let marker = DEADLETTER_TRUNCATED.len() + ": true\r\n".len();
    if header_size(&headers) + marker > max_payload / 2 {
        // Huge original headers: keep only ours, so most of the body fits.
        headers = ours;
    }
    if header_size(&headers) + msg.payload.len() <= max_payload {
        return (headers, msg.payload.clone(), false);
    }
    headers.insert(DEADLETTER_TRUNCATED, "true");
    let room = max_payload.saturating_sub(header_size(&headers));
    (
        headers,
        msg.payload.slice(..room.min(msg.payload.len())),
        true,
    )
}

async fn dead_letter(ctx: &ConsumerCtx, msg: &jetstream::Message, reason: &str) -> Verdict {
    let subject = ctx.ns.deadletter_subject(msg.subject.as_str());
    let clean: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let max_payload = ctx.js.client().server_info().max_payload;
    let (headers, body, truncated) = dead_letter_message(msg, &clean, max_payload);
    let published = match ctx
        .js
        .publish_with_headers(subject.clone(), headers, body)
        .await
    {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let info = msg.info().ok();
    let sequence = info.as_ref().map_or(0, |i| i.stream_sequence);
    match published {
        Ok(()) => {
            let metrics = &ctx.deliverer.metrics;
            metrics.dead_letters.inc();
            if truncated {
                metrics.dead_letters_truncated.inc();
            }
            tracing::warn!(subject = %msg.subject, deadletter = %subject, stream_sequence = sequence,
                size = msg.payload.len(), truncated, reason = %clean, "message dead-lettered");
            Verdict::Ack
        }
        Err(e) => {
            let delivered = info.as_ref().map_or(1, |i| i.delivered);
            if delivered >= DEADLETTER_TRIES {
                ctx.deliverer.metrics.dead_letter_failures.inc();
                tracing::error!(error = %e, subject = %msg.subject, stream = ctx.ns.stream(),
                    stream_sequence = sequence, size = msg.payload.len(), reason = %clean, tries = delivered,
                    "cannot dead-letter a bad message; giving it up (it stays in the events stream at this sequence)");
                return Verdict::GiveUp;
            }
            tracing::warn!(error = %e, subject = %msg.subject, stream_sequence = sequence,
                tries = delivered, "cannot dead-letter a bad message; retrying later");
            // 1 s, 2 s, 4 s, 8 s: a short outage of the dead-letter stream
            // is bridged, a lasting one does not keep the message forever.
            let exp = u32::try_from(delivered.clamp(1, 4) - 1).unwrap_or(0);
            Verdict::Retry(Duration::from_secs(1 << exp))
        }
    }
}
