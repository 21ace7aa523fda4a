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
use proto_events::filter::Filter;
use proto_events::{EventType, Namespace, PatternSet, WebhookChange};
use storage::models::{BodyFormat, CircuitState};
use storage::policy::RateLimit;
use storage::secrets::Keyring;
use storage::subscription::{Sending, SignatureScheme, StoredAuth};
use storage::{DbPool, StorageError};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use webhook_client::{Auth, Ed25519Key, HeaderName, HeaderValue, OAuth2Client, Signing};

use crate::metrics::Metrics;

/// What the worker needs of a webhook to deliver to it: where, how the
/// body is written, what it is signed with, its headers and auth (secrets
/// opened, held only in memory), and which events it takes.
pub struct Target {
    pub id: i32,
    pub url: String,
    /// How its POST bodies are written.
    pub body_format: BodyFormat,
    keys: Keys,
    /// Custom headers, checked.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub auth: Option<Auth>,
    /// Only events whose payload passes it are delivered.
    pub filter: Option<Filter>,
    /// Its delivery policy (docs/contract.md, "Delivery policy").
    pub policy: Policy,
}

/// How a webhook's deliveries are paced, as the cache last read it.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub name: String,
    pub rate: Option<RateLimit>,
    /// Ordered since then: events published from then on go through the
    /// webhook's own consumer (`ordered`), one at a time.
    pub ordered_since: Option<DateTime<Utc>>,
    /// Its circuit's state: anything but closed asks the database first.
    pub circuit: Option<CircuitState>,
}

impl Policy {
    /// The policy of a webhook as stored, with its circuit's state.
    pub fn of(w: &storage::models::Webhook, circuit: Option<CircuitState>) -> Self {
        Self {
            name: w.name.clone(),
            rate: RateLimit::of(w.rate_limit_per_s, w.rate_burst),
            ordered_since: w.ordered_since.filter(|_| w.ordered),
            circuit,
        }
    }

    /// Whether an event published at `published` is delivered in order.
    pub fn orders(&self, published: DateTime<Utc>) -> bool {
        self.ordered_since.is_some_and(|since| published >= since)
    }

    /// Whether deliveries go without asking the database first.
    pub fn is_free(&self) -> bool {
        self.rate.is_none() && self.circuit.is_none_or(|c| c == CircuitState::Closed)
    }
}

/// What a target signs with: the current key, then the previous one until
/// its rotation grace ends. One per webhook, behind the cache's `Arc`: the
/// size of the ed25519 variant (two key pairs inline) costs nothing.
#[allow(clippy::large_enum_variant)]
enum Keys {
    Hmac {
        current: Option<String>,
        previous: Option<(String, DateTime<Utc>)>,
    },
    Ed25519 {
        current: Option<Ed25519Key>,
        previous: Option<(Ed25519Key, DateTime<Utc>)>,
    },
}

/// The keys valid at one moment, borrowed from a [`Target`].
pub enum SigningNow<'a> {
    Hmac(Vec<&'a str>),
    Ed25519(Vec<&'a Ed25519Key>),
}

impl SigningNow<'_> {
    /// As the sender takes it.
    pub fn signing(&self) -> Signing<'_> {
        match self {
            Self::Hmac(secrets) => Signing::Hmac(secrets),
            Self::Ed25519(keys) => Signing::Ed25519(keys),
        }
    }
}

/// Why a webhook cannot be delivered to as stored.
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    #[error(transparent)]
    Open(#[from] storage::secrets::OpenError),
    #[error("its signing key is not an ed25519 key: {0}")]
    Key(#[from] webhook_client::KeyError),
    #[error("header {0}: {1}")]
    Header(String, String),
}

impl Target {
    /// A target signed with HMAC `secret` (tests and benchmarks).
    pub fn new(id: i32, url: String, secret: Option<String>) -> Self {
        Self {
            id,
            url,
            body_format: BodyFormat::Canonical,
            keys: Keys::Hmac {
                current: secret.filter(|s| !s.is_empty()),
                previous: None,
            },
            headers: Vec::new(),
            auth: None,
            filter: None,
            policy: Policy::default(),
        }
    }

    /// The target of a webhook as stored, its secrets opened with `keys`.
    pub fn open(id: i32, sending: &Sending, keys: &Keyring) -> Result<Self, Unusable> {
        let opened = sending.open(keys)?;
        let keys = match sending.signature_scheme {
            SignatureScheme::Hmac => Keys::Hmac {
                current: opened.secret,
                previous: opened.previous,
            },
            SignatureScheme::Ed25519 => Keys::Ed25519 {
                current: opened
                    .secret
                    .as_deref()
                    .map(Ed25519Key::from_secret_text)
                    .transpose()?,
                previous: match opened.previous {
                    Some((k, until)) => Some((Ed25519Key::from_secret_text(&k)?, until)),
                    None => None,
                },
            },
        };
        let headers = opened
            .headers
            .iter()
            .map(|(name, value)| {
                webhook_client::check_custom_header(name, value)
                    .map_err(|e| Unusable::Header(name.clone(), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            id,
            url: sending.url.clone(),
            body_format: sending.body_format,
            keys,
            headers,
            auth: opened.auth.map(auth_of),
            filter: None,
            policy: Policy::default(),
        })
    }

    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The same target with its bodies written in `format`.
    pub fn with_body_format(mut self, format: BodyFormat) -> Self {
        self.body_format = format;
        self
    }

    /// The same target taking only events that pass `filter`.
    pub fn with_filter(mut self, filter: Option<Filter>) -> Self {
        self.filter = filter;
        self
    }

    /// The same target with a previous HMAC secret valid until `until`.
    pub fn with_previous_secret(mut self, secret: String, until: DateTime<Utc>) -> Self {
        if let Keys::Hmac { previous, .. } = &mut self.keys {
            *previous = Some((secret, until));
        }
        self
    }

    /// Whether an event with this payload goes to it.
    pub fn takes(&self, payload: &serde_json::Map<String, serde_json::Value>) -> bool {
        self.filter.as_ref().is_none_or(|f| f.matches(payload))
    }

    /// The keys valid now: the current one, then the previous one while
    /// its rotation grace lasts.
    pub fn signing_now(&self, now: DateTime<Utc>) -> SigningNow<'_> {
        fn valid<'a, K>(
            current: Option<&'a K>,
            previous: Option<&'a (K, DateTime<Utc>)>,
            now: DateTime<Utc>,
        ) -> Vec<&'a K> {
            let mut out = Vec::with_capacity(2);
            out.extend(current);
            out.extend(previous.filter(|(_, until)| *until > now).map(|(k, _)| k));
            out
        }
        match &self.keys {
            Keys::Hmac { current, previous } => SigningNow::Hmac(
                valid(current.as_ref(), previous.as_ref(), now)
                    .into_iter()
                    .map(String::as_str)
                    .collect(),
            ),
            Keys::Ed25519 { current, previous } => {
                SigningNow::Ed25519(valid(current.as_ref(), previous.as_ref(), now))
            }
        }
    }
}

/// The sender's auth of a stored one (its credential opened).
fn auth_of(a: StoredAuth) -> Auth {
    match a {
        StoredAuth::Basic { username, password } => Auth::Basic { username, password },
        StoredAuth::Bearer { token } => Auth::Bearer { token },
        StoredAuth::Oauth2 {
            token_url,
            client_id,
            client_secret,
            scope,
        } => Auth::OAuth2(OAuth2Client {
            token_url,
            client_id,
            client_secret,
            scope,
        }),
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("id", &self.id)
            .field("headers", &self.headers.len())
            .field("auth", &self.auth.is_some())
            .field("filter", &self.filter.is_some())
            .finish_non_exhaustive()
    }
}

/// One snapshot of the active webhooks, indexed by event type.
#[derive(Default)]
struct Snapshot {
    by_type: [Vec<Arc<Target>>; EventType::ALL.len()],
    /// The ordered webhooks, with their patterns.
    ordered: Vec<(Arc<Target>, Vec<String>)>,
    /// Every active webhook's policy, for deliveries whose target was
    /// read from a row (retries, jobs).
    policies: HashMap<i32, Policy>,
    /// Closed, open and half-open circuits.
    circuit_counts: [i64; 3],
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
    /// The delivery policy of an active webhook (default when unknown).
    pub fn policy(&self, webhook_id: i32) -> Policy {
        self.snapshot
            .load()
            .policies
            .get(&webhook_id)
            .cloned()
            .unwrap_or_default()
    }

    /// The ordered webhooks and their patterns.
    pub fn ordered(&self) -> Vec<(Arc<Target>, Vec<String>)> {
        self.snapshot.load().ordered.clone()
    }

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
    /// A webhook that cannot be used as stored (a pattern or filter that no
    /// longer parses, a secret that does not open with `keys`) is left out
    /// and logged.
    pub async fn refresh(&self, pool: &DbPool, keys: &Keyring) -> Result<usize, StorageError> {
        let rows = storage::webhooks::active(pool).await?;
        let circuits = storage::policy::circuits(pool).await?;
        let mut circuit_counts = [0i64; 3];
        let mut snap = Snapshot::default();
        for w in rows {
            let patterns = match PatternSet::parse(w.patterns()) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(webhook_id = w.id, error = %e, "skipping webhook: a pattern is not valid");
                    continue;
                }
            };
            let filter = match w.payload_filter.as_ref().map(Filter::parse).transpose() {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(webhook_id = w.id, error = %e.message, "skipping webhook: its filter is not valid");
                    continue;
                }
            };
            // A pull webhook's owner reads its events; nothing is POSTed.
            let Some(sending) = w.sending() else {
                continue;
            };
            let policy = Policy::of(&w, circuits.get(&w.id).map(|c| c.state));
            let target = match Target::open(w.id, &sending, keys) {
                Ok(t) => Arc::new(t.with_filter(filter).with_policy(policy)),
                Err(e) => {
                    tracing::error!(webhook_id = w.id, error = %e, "skipping webhook: it cannot be delivered to as stored");
                    continue;
                }
            };
            for t in EventType::ALL {
                if patterns.matches(t) {
                    snap.by_type[t as usize].push(target.clone());
                }
            }
            match target.policy.circuit {
                None | Some(CircuitState::Closed) => circuit_counts[0] += 1,
                Some(CircuitState::Open) => circuit_counts[1] += 1,
                Some(CircuitState::HalfOpen) => circuit_counts[2] += 1,
            }
            snap.policies.insert(w.id, target.policy.clone());
            if target.policy.ordered_since.is_some() {
                let patterns = w.patterns().into_iter().map(str::to_owned).collect();
                snap.ordered.push((target.clone(), patterns));
            }
            snap.count += 1;
        }
        let count = snap.count;
        snap.circuit_counts = circuit_counts;
        self.snapshot.store(Arc::new(snap));
        self.loaded.send_replace(true);
        Ok(count)
    }

    /// Reloads on every change notice and every `every`, until `stop`.
    /// Failed reloads keep the previous snapshot and are retried soon.
    #[allow(clippy::too_many_arguments)]
    pub async fn run_refresher(
        self,
        pool: DbPool,
        keys: Keyring,
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
            match self.refresh(&pool, &keys).await {
                Ok(n) => {
                    failures = 0;
                    metrics
                        .webhooks_cached
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                    let [closed, open, half_open] = self.snapshot.load().circuit_counts;
                    metrics.set_circuits(closed, open, half_open);
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
        let t = Target::new(1, "http://x".into(), Some("new".into()))
            .with_previous_secret("old".into(), now + chrono::Duration::hours(1));
        let names = |s: SigningNow<'_>| match s {
            SigningNow::Hmac(v) => v.into_iter().map(str::to_owned).collect::<Vec<_>>(),
            SigningNow::Ed25519(_) => panic!("hmac expected"),
        };
        assert_eq!(names(t.signing_now(now)), vec!["new", "old"]);
        assert_eq!(
            names(t.signing_now(now + chrono::Duration::hours(2))),
            vec!["new"]
        );
        let none = Target::new(2, "http://x".into(), Some(String::new()));
        assert!(names(none.signing_now(now)).is_empty());
    }
}
