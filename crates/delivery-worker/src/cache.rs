//! The active webhooks, by event type, reloaded on registry change notices
//! and periodically; and the per-webhook concurrency gates.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use parking_lot::Mutex;
use proto_events::{EventType, Namespace, Pattern, WebhookChange};
use storage::models::BodyFormat;
use storage::{DbPool, StorageError};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What the worker needs of a webhook to deliver to it.
pub struct Target {
    pub id: i32,
    pub url: String,
    secret: Option<String>,
    previous_secret: Option<String>,
    previous_secret_expires_at: Option<DateTime<Utc>>,
    /// How its POST bodies are written.
    pub body_format: BodyFormat,
}

impl Target {
    pub fn new(
        id: i32,
        url: String,
        secret: Option<String>,
        previous_secret: Option<String>,
        previous_secret_expires_at: Option<DateTime<Utc>>,
    ) -> Self {
        Self {
            id,
            url,
            secret,
            previous_secret,
            previous_secret_expires_at,
            body_format: BodyFormat::Canonical,
        }
    }

    /// The same target with its bodies written in `format`.
    pub fn with_body_format(mut self, format: BodyFormat) -> Self {
        self.body_format = format;
        self
    }

    /// The secrets valid now: the current one, then the previous one while
    /// its rotation grace lasts. Empty strings mean "no secret".
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<&str> {
        storage::models::signing_secrets(
            self.secret.as_deref(),
            self.previous_secret.as_deref(),
            self.previous_secret_expires_at,
            now,
        )
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("id", &self.id)
            .field("has_secret", &self.secret.is_some())
            .finish_non_exhaustive()
    }
}

/// One snapshot of the active webhooks, indexed by event type.
#[derive(Default)]
struct Snapshot {
    by_type: [Vec<Arc<Target>>; EventType::ALL.len()],
    count: usize,
}

/// The cache; matching an event is one lock-free load and a clone of a list.
#[derive(Clone)]
pub struct WebhookCache {
    snapshot: Arc<ArcSwap<Snapshot>>,
    loaded: Arc<tokio::sync::watch::Sender<bool>>,
    reload: Arc<Notify>,
}

impl Default for WebhookCache {
    fn default() -> Self {
        Self::new()
    }
}

impl WebhookCache {
    pub fn new() -> Self {
        Self {
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::default())),
            loaded: Arc::new(tokio::sync::watch::channel(false).0),
            reload: Arc::new(Notify::new()),
        }
    }

    /// The active webhooks an event of this type goes to.
    pub fn matching(&self, event_type: EventType) -> Vec<Arc<Target>> {
        self.snapshot.load().by_type[event_type as usize].clone()
    }

    /// Number of active webhooks known.
    pub fn len(&self) -> usize {
        self.snapshot.load().count
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a first load succeeded.
    pub fn is_loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    /// Waits for the first successful load.
    pub async fn wait_loaded(&self) {
        let mut rx = self.loaded.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Asks the refresher to reload now.
    pub fn request_reload(&self) {
        self.reload.notify_one();
    }

    /// Reads every active webhook from the database and swaps the snapshot.
    pub async fn refresh(&self, pool: &DbPool) -> Result<usize, StorageError> {
        let rows = storage::webhooks::active(pool).await?;
        let mut snap = Snapshot::default();
        for storage::webhooks::ActiveWebhook {
            id,
            url,
            event_type,
            secret,
            previous_secret,
            previous_secret_expires_at: previous_expires,
            body_format,
        } in rows
        {
            let pattern = match Pattern::parse(&event_type) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(webhook_id = id, error = %e, "skipping webhook: its event_type is not a valid pattern");
                    continue;
                }
            };
            let target = Arc::new(
                Target::new(id, url, secret, previous_secret, previous_expires)
                    .with_body_format(body_format),
            );
            for t in pattern.types() {
                snap.by_type[t as usize].push(target.clone());
            }
            snap.count += 1;
        }
        let count = snap.count;
        self.snapshot.store(Arc::new(snap));
        self.loaded.send_replace(true);
        Ok(count)
    }

    /// Reloads on every change notice and every `every`, until `stop`.
    /// Failed reloads keep the previous snapshot and are retried soon.
    pub async fn run_refresher(
        self,
        pool: DbPool,
        client: async_nats::Client,
        ns: Namespace,
        every: Duration,
        metrics: Metrics,
        stop: CancellationToken,
    ) {
        let notices = self.clone();
        let subject = ns.webhooks_changed_subject();
        let listener = tokio::spawn({
            let stop = stop.clone();
            async move {
                loop {
                    match client.subscribe(subject.clone()).await {
                        Ok(mut sub) => loop {
                            tokio::select! {
                                _ = stop.cancelled() => return,
                                msg = sub.next() => match msg {
                                    Some(m) => {
                                        // Any message reloads; the body only says why.
                                        match WebhookChange::from_payload(&m.payload) {
                                            Ok(c) => tracing::debug!(webhook_id = c.webhook_id, op = c.op.as_str(), "webhook change notice"),
                                            Err(e) => tracing::debug!(error = %e, notice = %String::from_utf8_lossy(&m.payload), "unreadable webhook change notice"),
                                        }
                                        notices.request_reload();
                                    }
                                    None => break,
                                },
                            }
                        },
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot subscribe to webhook change notices; retrying");
                        }
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        });
        let mut failures = 0u32;
        loop {
            match self.refresh(&pool).await {
                Ok(n) => {
                    failures = 0;
                    metrics
                        .webhooks_cached
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                    tracing::debug!(active_webhooks = n, "webhook cache loaded");
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "cannot load webhooks; keeping the previous list");
                }
            }
            let wait = if failures > 0 {
                Duration::from_millis(500 * u64::from(failures.min(10)))
            } else {
                every
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.reload.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        listener.abort();
    }
}

/// Deliveries that may wait for one webhook at once; more are queued in the
/// database at once. High enough for bursts to a fast receiver (those waits
/// are short); the queue wait bounds the waits for a slow one.
const MAX_WAITING: usize = 16_384;

/// Per-webhook concurrency limits.
#[derive(Clone)]
pub struct Gates {
    per_webhook: usize,
    gates: Arc<Mutex<HashMap<i32, Arc<Gate>>>>,
}

struct Gate {
    sem: Arc<Semaphore>,
    waiting: AtomicUsize,
}

/// Why no permit was given.
#[derive(Debug, PartialEq, Eq)]
pub enum Busy {
    /// Many deliveries already wait for this webhook.
    Crowded,
    /// Waited the whole queue wait.
    TimedOut,
}

impl Gates {
    pub fn new(per_webhook: usize) -> Self {
        Self {
            per_webhook,
            gates: Arc::default(),
        }
    }

    fn gate(&self, webhook_id: i32) -> Arc<Gate> {
        let mut map = self.gates.lock();
        if map.len() > 10_000 {
            // Forget idle gates of webhooks that may be gone.
            let full = self.per_webhook;
            map.retain(|_, g| g.sem.available_permits() < full || Arc::strong_count(g) > 1);
        }
        map.entry(webhook_id)
            .or_insert_with(|| {
                Arc::new(Gate {
                    sem: Arc::new(Semaphore::new(self.per_webhook)),
                    waiting: AtomicUsize::new(0),
                })
            })
            .clone()
    }

    /// A permit to send to this webhook, waiting at most `wait`; refused at
    /// once when more than a few rounds of requests already wait.
    pub async fn acquire(
        &self,
        webhook_id: i32,
        wait: Duration,
    ) -> Result<OwnedSemaphorePermit, Busy> {
        let gate = self.gate(webhook_id);
        if let Ok(p) = gate.sem.clone().try_acquire_owned() {
            return Ok(p);
        }
        if gate.waiting.load(Ordering::Relaxed) >= MAX_WAITING {
            return Err(Busy::Crowded);
        }
        gate.waiting.fetch_add(1, Ordering::Relaxed);
        let result = tokio::time::timeout(wait, gate.sem.clone().acquire_owned()).await;
        gate.waiting.fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(Ok(p)) => Ok(p),
            _ => Err(Busy::TimedOut),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn gates_bound_and_time_out() {
        let gates = Gates::new(2);
        let a = gates.acquire(1, Duration::from_millis(10)).await.unwrap();
        let _b = gates.acquire(1, Duration::from_millis(10)).await.unwrap();
        assert_eq!(
            gates
                .acquire(1, Duration::from_millis(10))
                .await
                .unwrap_err(),
            Busy::TimedOut
        );
        // Another webhook is not affected.
        let _c = gates.acquire(2, Duration::from_millis(10)).await.unwrap();
        drop(a);
        let _d = gates.acquire(1, Duration::from_millis(10)).await.unwrap();
    }

    #[test]
    fn secrets_during_rotation() {
        let now = Utc::now();
        let t = Target::new(
            1,
            "http://x".into(),
            Some("new".into()),
            Some("old".into()),
            Some(now + chrono::Duration::hours(1)),
        );
        assert_eq!(t.signing_secrets(now), vec!["new", "old"]);
        assert_eq!(
            t.signing_secrets(now + chrono::Duration::hours(2)),
            vec!["new"]
        );
        let none = Target::new(2, "http://x".into(), Some(String::new()), None, None);
        assert!(none.signing_secrets(now).is_empty());
    }
}
