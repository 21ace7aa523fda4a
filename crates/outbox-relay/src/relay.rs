//! The relay loop: claim a batch of outbox rows, publish them, commit.
//!
//! One batch is one PostgreSQL transaction:
//! 1. `DELETE … WHERE id IN (SELECT id … ORDER BY id LIMIT n FOR UPDATE SKIP
//!    LOCKED) RETURNING …` claims the oldest rows no other replica holds.
//!    The delete is not visible to anyone until the commit, and the row
//!    locks keep every other replica away from these rows meanwhile.
//! 2. Every row is published in id order, its envelope id as `Nats-Msg-Id`,
//!    and every JetStream ack is awaited.
//! 3. Only when all acks arrived is the transaction committed; then the
//!    rows are gone. If anything failed (NATS down, timeout) the transaction
//!    is rolled back and the rows that were acknowledged are deleted alone,
//!    so the rest are tried again by the next batch, here or elsewhere.
//!
//! A relay killed between 2 and 3 leaves its rows (PostgreSQL rolls the
//! transaction back when the connection drops); they are published again
//! with the same `Nats-Msg-Id`, and JetStream drops the copies it already
//! stored within its duplicate window (two minutes).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Double, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures::StreamExt;
use proto_events::Namespace;
use storage::DbPool;
use telemetry::backoff::Backoff;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The NOTIFY channel of the migration's trigger.
pub const CHANNEL: &str = "event_outbox";

/// The outbox table and trigger, as the Python package ships them (one
/// idempotent script that also upgrades older outboxes). The envelope
/// column is `json`: `envelope::text` below is the text the bot wrote, key
/// order included.
pub const MIGRATION_SQL: &str =
    include_str!("../../../clients/python/bedolaga_events/migrations/0001_event_outbox.up.sql");

const CLAIM: &str = "DELETE FROM event_outbox WHERE id IN ( \
       SELECT id FROM event_outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED \
     ) RETURNING id, envelope ->> 'id' AS event_id, envelope ->> 'type' AS event_type, \
       envelope::text AS body, created_at";

const DELETE_ACKED: &str = "DELETE FROM event_outbox WHERE id = ANY($1)";

/// Depth is counted exactly up to this many rows; above, estimated from
/// the id range (a count over a large backlog would be slow).
const DEPTH_CAP: i64 = 100_000;

#[derive(diesel::QueryableByName)]
struct Row {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    event_id: String,
    #[diesel(sql_type = Text)]
    event_type: String,
    #[diesel(sql_type = Text)]
    body: String,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
}

/// Why a batch was not committed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database: {0}")]
    Db(#[from] diesel::result::Error),
    #[error("no database connection: {0}")]
    Pool(String),
    #[error("JetStream did not store the batch: {0}")]
    Publish(String),
    #[error("JetStream stored {acked} of {total} events: {reason}")]
    Partial {
        acked: usize,
        total: usize,
        reason: String,
        acked_ids: Vec<i64>,
        stream_missing: bool,
    },
}

/// What one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    pub published: usize,
    pub duplicates: usize,
}

/// Publishes outbox batches; shared by the loop and the tests.
pub struct Relay {
    pub pool: DbPool,
    pub js: jetstream::Context,
    pub ns: Namespace,
    pub batch_size: usize,
    pub publish_timeout: Duration,
    pub metrics: Metrics,
    pub stream_ready: AtomicBool,
}

impl Relay {
    /// Creates the events stream if needed (once, and again after JetStream
    /// said it is missing).
    pub async fn ensure_stream(&self) -> Result<(), RelayError> {
        if AtomicBool::load(&self.stream_ready, Ordering::Acquire) {
            return Ok(());
        }
        tokio::time::timeout(self.publish_timeout, self.ns.ensure_streams(&self.js))
            .await
            .map_err(|_| RelayError::Publish("timed out creating the stream".into()))?
            .map_err(|e| RelayError::Publish(format!("cannot create the stream: {e}")))?;
        self.stream_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Relays one batch; returns what was published.
    pub async fn relay_batch(&self) -> Result<BatchOutcome, RelayError> {
        let mut conn = self
            .pool
            .get()
            .await
            .map_err(|e| RelayError::Pool(e.to_string()))?;
        let limit = i64::try_from(self.batch_size).unwrap_or(1000);
        let result = conn
            .transaction::<_, RelayError, _>(async |c| {
                // This commit need not wait for the WAL flush: a delete lost
                // in a database crash brings its rows back, and they are
                // published again with the same Nats-Msg-Id (dropped by
                // JetStream). Not waiting keeps the next batch from queueing
                // behind an fsync.
                c.batch_execute("SET LOCAL synchronous_commit TO off")
                    .await?;
                let rows: Vec<Row> = diesel::sql_query(CLAIM)
                    .bind::<BigInt, _>(limit)
                    .load(c)
                    .await?;
                if rows.is_empty() {
                    return Ok(BatchOutcome::default());
                }
                self.publish_rows(rows).await
            })
            .await;
        match result {
            Err(RelayError::Partial {
                acked,
                total,
                reason,
                acked_ids,
                stream_missing,
            }) => {
                if stream_missing {
                    self.stream_ready.store(false, Ordering::Release);
                }
                // The batch was rolled back; what JetStream did store is
                // removed now so it is not sent again.
                if !acked_ids.is_empty() {
                    diesel::sql_query(DELETE_ACKED)
                        .bind::<diesel::sql_types::Array<BigInt>, _>(&acked_ids)
                        .execute(&mut conn)
                        .await?;
                    self.metrics.published.inc_by(acked as u64);
                }
                Err(RelayError::Partial {
                    acked,
                    total,
                    reason,
                    acked_ids: Vec::new(),
                    stream_missing,
                })
            }
            Ok(outcome) => {
                if outcome.published > 0 {
                    self.metrics.published.inc_by(outcome.published as u64);
                    self.metrics.duplicates.inc_by(outcome.duplicates as u64);
                    self.metrics.batches.inc();
                }
                Ok(outcome)
            }
            Err(e) => Err(e),
        }
    }

    /// Publishes rows in id order and waits for every ack.
    async fn publish_rows(&self, mut rows: Vec<Row>) -> Result<BatchOutcome, RelayError> {
        // RETURNING gives no order.
        rows.sort_unstable_by_key(|r| r.id);
        let total = rows.len();
        let mut ids = Vec::with_capacity(total);
        let mut created = Vec::with_capacity(total);
        let mut acks = Vec::with_capacity(total);
        let send = async {
            for row in rows {
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", row.event_id.as_str());
                let subject = self.ns.event_subject(&row.event_type);
                ids.push(row.id);
                created.push(row.created_at);
                acks.push(
                    self.js
                        .publish_with_headers(subject, headers, Bytes::from(row.body))
                        .await,
                );
            }
        };
        // Sending waits for room in the client's buffer, which never comes
        // while NATS is unreachable: bounded like the acks.
        if tokio::time::timeout(self.publish_timeout, send)
            .await
            .is_err()
        {
            return Err(RelayError::Publish(
                "NATS did not take the messages in time".into(),
            ));
        }
        let results = futures::future::join_all(acks.into_iter().map(|sent| async move {
            match sent {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            }
        }))
        .await;
        let now = Utc::now();
        let mut outcome = BatchOutcome::default();
        let mut acked_ids = Vec::new();
        let mut failure: Option<(String, bool)> = None;
        for ((id, created_at), result) in ids.into_iter().zip(created).zip(results) {
            match result {
                Ok(ack) => {
                    acked_ids.push(id);
                    outcome.published += 1;
                    if ack.duplicate {
                        outcome.duplicates += 1;
                    }
                    let lag = (now - created_at).num_microseconds().unwrap_or(0).max(0);
                    self.metrics.lag.observe(lag as f64 / 1e6);
                }
                Err(e) => {
                    if failure.is_none() {
                        let missing = e.kind() == PublishErrorKind::StreamNotFound;
                        failure = Some((e.to_string(), missing));
                    }
                }
            }
        }
        match failure {
            None => Ok(outcome),
            Some((reason, stream_missing)) => Err(RelayError::Partial {
                acked: acked_ids.len(),
                total,
                reason,
                acked_ids,
                stream_missing,
            }),
        }
    }

    /// Measures outbox depth and the oldest row's age into the gauges.
    pub async fn measure(&self) -> Result<(i64, f64), RelayError> {
        #[derive(diesel::QueryableByName)]
        struct Stats {
            #[diesel(sql_type = BigInt)]
            capped: i64,
            #[diesel(sql_type = Nullable<BigInt>)]
            span: Option<i64>,
            #[diesel(sql_type = Nullable<Double>)]
            oldest: Option<f64>,
        }
        let mut conn = self
            .pool
            .get()
            .await
            .map_err(|e| RelayError::Pool(e.to_string()))?;
        let s: Stats = diesel::sql_query(format!(
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM event_outbox LIMIT {DEPTH_CAP}) s) AS capped, \
               (SELECT max(id) - min(id) + 1 FROM event_outbox) AS span, \
               (SELECT extract(epoch FROM clock_timestamp() - created_at)::float8 \
                  FROM event_outbox ORDER BY id LIMIT 1) AS oldest"
        ))
        .get_result(&mut conn)
        .await?;
        let depth = if s.capped < DEPTH_CAP {
            s.capped
        } else {
            s.span.unwrap_or(s.capped).max(s.capped)
        };
        let oldest = s.oldest.unwrap_or(0.0).max(0.0);
        self.metrics.depth.set(depth);
        self.metrics.oldest_age.set(oldest);
        Ok((depth, oldest))
    }
}

/// Relays until `shutdown`: a batch after every wake-up (NOTIFY), every
/// `poll` without one, back to back while batches come back full. A batch
/// in progress is finished before returning.
pub async fn run(
    relay: Arc<Relay>,
    client: async_nats::Client,
    wake: Arc<Notify>,
    poll: Duration,
    shutdown: CancellationToken,
) {
    let mut backoff = backoff();
    while !shutdown.is_cancelled() {
        if client.connection_state() != async_nats::connection::State::Connected {
            // Nothing is claimed while NATS is away (async-nats reconnects).
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            continue;
        }
        let step = async {
            relay.ensure_stream().await?;
            relay.relay_batch().await
        };
        match step.await {
            Ok(outcome) if outcome.published >= relay.batch_size => {
                backoff.reset();
                continue;
            }
            Ok(_) => {
                backoff.reset();
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(poll) => {}
                }
            }
            Err(e) => {
                relay.metrics.errors.inc();
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?wait, "outbox batch not relayed");
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// The waits after failed batches and lost LISTEN connections.
fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
}

/// How often the LISTEN connection is checked with a query: a dropped
/// connection ends no stream by itself.
const LISTEN_CHECK: Duration = Duration::from_secs(10);

/// Holds a connection in `LISTEN event_outbox` and wakes the loop on every
/// notice; reconnects when it fails (the poll covers the gap, and a wake-up
/// follows every reconnect).
pub async fn listen(
    database_url: String,
    wake: Arc<Notify>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut backoff = backoff();
    while !shutdown.is_cancelled() {
        let wait = backoff.next_delay();
        match listen_once(&database_url, &wake, &metrics, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                metrics.listening.set(0);
                tracing::warn!(error = %e, retry_in = ?wait, "outbox LISTEN connection failed");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn listen_once(
    database_url: &str,
    wake: &Notify,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let mut conn = AsyncPgConnection::establish(database_url)
        .await
        .map_err(|e| e.to_string())?;
    diesel::sql_query(format!("LISTEN {CHANNEL}"))
        .execute(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    metrics.listening.set(1);
    tracing::info!("listening for outbox notices");
    // Rows may have been inserted while no one listened.
    wake.notify_one();
    loop {
        let check = {
            let notices = conn.notifications_stream();
            tokio::pin!(notices);
            let deadline = tokio::time::sleep(LISTEN_CHECK);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = &mut deadline => break true,
                    n = notices.next() => match n {
                        Some(Ok(_)) => wake.notify_one(),
                        Some(Err(e)) => return Err(e.to_string()),
                        None => return Err("notice stream ended".into()),
                    },
                }
            }
        };
        if check {
            tokio::time::timeout(
                Duration::from_secs(5),
                diesel::sql_query("SELECT 1").execute(&mut conn),
            )
            .await
            .map_err(|_| "LISTEN connection check timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        }
    }
}

/// Updates the depth and age gauges every `every` until `shutdown`.
pub async fn run_stats(relay: Arc<Relay>, every: Duration, shutdown: CancellationToken) {
    loop {
        if let Err(e) = relay.measure().await {
            tracing::debug!(error = %e, "outbox stats not measured");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
