//! The retry queue: pending `webhook_deliveries` rows due at
//! `next_retry_at` (scheduled retries, deliveries parked while a webhook was
//! busy, and the registry's manual retries).
//!
//! Any replica claims due rows with `FOR UPDATE SKIP LOCKED` and leases them
//! by pushing `next_retry_at` forward, so each row is attempted by one
//! replica; if that replica dies, the lease runs out and another one takes
//! the row. The attempt then updates the row in place (and inserts the next
//! pending row when another retry is due), through the recorder.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use storage::DbPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::cache::Target;
use crate::deliver::{Body, Deliverer, Job};
use crate::metrics::Metrics;
use crate::recorder::Record;
use storage::attempts::{Claimed, RowRef, claim_due};

/// Settings of the poller.
#[derive(Debug, Clone)]
pub struct PollerConfig {
    pub every: Duration,
    pub batch: usize,
    /// How long a claimed row stays reserved for this replica.
    pub lease: Duration,
}

/// Claims and runs due rows until `stop`.
pub async fn run_poller(
    pool: DbPool,
    deliverer: Arc<Deliverer>,
    cfg: PollerConfig,
    tracker: TaskTracker,
    stop: CancellationToken,
    hard_stop: CancellationToken,
) {
    loop {
        let room = deliverer.global.available_permits().min(cfg.batch);
        let mut claimed_all = false;
        if room > 0 {
            match claim_due(
                &pool,
                i64::try_from(room).unwrap_or(1),
                cfg.lease,
                deliverer.circuit.cooldown,
            )
            .await
            {
                Ok(rows) => {
                    claimed_all = rows.len() == room;
                    if !rows.is_empty() {
                        tracing::debug!(rows = rows.len(), "claimed due deliveries");
                    }
                    for row in rows {
                        let (d, hard) = (deliverer.clone(), hard_stop.clone());
                        tracker.spawn(async move { run_one(&d, row, &hard).await });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot claim due deliveries"),
            }
        }
        let wait = if claimed_all {
            Duration::from_millis(20)
        } else {
            cfg.every
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn run_one(deliverer: &Deliverer, row: Claimed, hard_stop: &CancellationToken) {
    let id = RowRef {
        id: row.id,
        created_at: row.created_at,
    };
    let target = match Target::open(row.webhook_id, &row.sending(), &deliverer.keys) {
        Ok(t) => t.with_policy(deliverer.cache.policy(row.webhook_id)),
        Err(e) => {
            // Left pending: it is claimed again after its lease, and sent
            // once the key file opens the webhook's secrets again.
            tracing::error!(webhook_id = row.webhook_id, error = %e, "retry not sent: the webhook cannot be delivered to as stored");
            return;
        }
    };
    let body = Body::of_row(row.payload, row.body, row.body_format);
    // With trace export on, the attempt is a span in the event's trace (a
    // child of the attempt before it) and names itself to the receiver;
    // otherwise the stored traceparent is passed on as it is.
    let span = tracing::info_span!(
        "retry_delivery",
        delivery_id = row.id,
        webhook_id = row.webhook_id,
        attempt_number = row.attempt_number,
        event_type = %row.event_type,
    );
    if let Some(tp) = &row.traceparent {
        telemetry::trace::set_remote_parent(&span, tp, None);
    }
    let traceparent = telemetry::trace::traceparent_of(&span).or(row.traceparent);
    let delivery = deliverer.deliver(Job {
        target: &target,
        row: Some(id),
        event_id: row.event_id.as_deref(),
        event_type: &row.event_type,
        body,
        attempt_number: row.attempt_number,
        traceparent: traceparent.as_deref(),
        from_stream: false,
        ordered: false,
        // The event's time is not kept with the row: every partition.
        stream_time: None,
    });
    let record = tokio::select! {
        r = delivery.instrument(span) => r,
        // Shutting down: give the row back to any replica now.
        _ = hard_stop.cancelled() => Record::Deferred { row: id, due: Utc::now(), held: storage::attempts::Held::Busy },
    };
    if let Err(e) = deliverer.recorder.submit(vec![record]).await {
        // The lease runs out and the row is attempted again.
        tracing::warn!(error = %e, delivery_id = id.id, "cannot record a retry; it will run again");
    }
}

/// Refreshes the queue gauges (and the consumer lag) every few seconds.
pub async fn run_stats(
    pool: DbPool,
    consumer: Option<(async_nats::jetstream::Context, String, String)>,
    metrics: Metrics,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        if let Ok((due, pending)) = storage::attempts::queue_size(&pool).await {
            metrics.retries_due.set(due);
            metrics.retries_pending.set(pending);
        }
        if let Some((js, stream, name)) = &consumer
            && let Ok(c) = js
                .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
                    name.as_str(),
                    stream.as_str(),
                )
                .await
            && let Ok(info) = c.get_info().await
        {
            metrics
                .consumer_lag
                .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
