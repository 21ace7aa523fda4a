//! One deployment of the services as built binaries against a given
//! database and NATS: the registry (token from its CLI, webhooks through
//! its REST API), delivery workers, a gateway and a webhook receiver; and
//! the checks a fault test ends with.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use proto_events::nats::{FirstConnect, NatsArgs};
use proto_events::{Namespace, Pattern, Publisher};
use serde_json::{Value, json};
use test_support::{Received, Receiver, Reply};

use crate::eventually;
use crate::process::{Service, binary};
use crate::publish::Event;

/// How long a service may take to become ready.
pub const READY: Duration = Duration::from_secs(30);

/// A webhook the deployment created.
#[derive(Debug, Clone)]
pub struct Hook {
    pub id: i32,
    pub pattern: Pattern,
}

/// A dependency a test takes away.
#[derive(Debug, Clone, Copy)]
pub enum Dependency {
    Nats,
    Postgres,
}

/// One `webhook_deliveries` row.
#[derive(Debug, Clone)]
pub struct Row {
    pub event_id: Option<String>,
    pub webhook_id: i32,
    pub status: String,
}

/// What every service of a deployment is given.
struct Settings {
    db_url: String,
    nats_url: String,
    ns: Namespace,
    /// Given to every service on top of the rest.
    extra_env: Vec<(String, String)>,
}

impl Settings {
    fn common_env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("DATABASE_URL", self.db_url.as_str()),
            ("NATS_URL", self.nats_url.as_str()),
            ("NATS_PREFIX", self.ns.prefix()),
            ("DELIVERY_ALLOW_PRIVATE_TARGETS", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        env.push(("RUST_LOG".to_owned(), log_level()));
        env
    }

    /// The common settings and `more`, then the extra settings (which
    /// win: the last value of a variable is the one a service gets).
    fn with(&self, more: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = self.common_env();
        env.extend(more.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        env.extend(self.extra_env.iter().cloned());
        env
    }

    fn registry_env(&self) -> Vec<(String, String)> {
        self.with(&[("REGISTRY_WORKERS", "1"), ("REGISTRY_DB_POOL_SIZE", "4")])
    }

    fn worker_env(&self) -> Vec<(String, String)> {
        self.with(&[
            ("DATABASE_POOL_SIZE", "4"),
            // Ten quick retries ride out a receiver or database outage of
            // several seconds.
            ("DELIVERY_RETRY_SCHEDULE", "1s,1s,1s,1s,1s,1s,1s,1s,1s,1s"),
            // Fault tests fail receivers on purpose; the circuit breaker
            // would hold their retries (the policy test sets its own).
            ("DELIVERY_CIRCUIT_THRESHOLD", "1000000"),
            ("DELIVERY_ACK_WAIT", "3s"),
            ("DELIVERY_RETRY_POLL", "200ms"),
            ("DELIVERY_TIMEOUT", "3s"),
            ("DELIVERY_CONNECT_TIMEOUT", "2s"),
            ("DELIVERY_SHUTDOWN_GRACE", "10s"),
        ])
    }

    fn gateway_env(&self) -> Vec<(String, String)> {
        self.with(&[("GATEWAY_WORKERS", "1"), ("GATEWAY_SHUTDOWN_GRACE", "2s")])
    }
}

pub struct Deployment {
    pub registry: Service,
    pub workers: Vec<Service>,
    pub gateway: Option<Service>,
    /// Records every request with the status it answered: 200, or 500
    /// while [`Deployment::set_receiver_failing`] says so.
    pub receiver: Receiver,
    receiver_failing: Arc<AtomicBool>,
    /// How long the receiver takes to answer, in milliseconds.
    receiver_delay_ms: Arc<AtomicU64>,
    pub hooks: Vec<Hook>,
    pub token: String,
    pub db_url: String,
    pub nats_url: String,
    pub ns: Namespace,
    settings: Settings,
    dir: PathBuf,
    workers_started: usize,
    gateways_started: usize,
    http: reqwest::Client,
}

fn log_level() -> String {
    std::env::var("E2E_LOG").unwrap_or_else(|_| "info".to_owned())
}

impl Deployment {
    /// Starts the registry, creates a token with its CLI and two webhooks
    /// through its API (`*` and `ticket.*`, both to the receiver), then one
    /// worker and one gateway, and waits until all are ready. `extra_env`
    /// goes to every service (e.g. stream settings).
    pub async fn start(
        dir: &Path,
        db_url: &str,
        nats_url: &str,
        ns: Namespace,
        extra_env: &[(&str, &str)],
    ) -> Self {
        Self::start_inner(dir, db_url, nats_url, ns, extra_env, None).await
    }

    /// Like [`Deployment::start`] with webhooks to `receiver` (e.g. a lean
    /// one for a long run: the recording receiver keeps every request);
    /// the failing and delay switches then do nothing.
    pub async fn start_with_receiver(
        dir: &Path,
        db_url: &str,
        nats_url: &str,
        ns: Namespace,
        extra_env: &[(&str, &str)],
        receiver: Receiver,
    ) -> Self {
        Self::start_inner(dir, db_url, nats_url, ns, extra_env, Some(receiver)).await
    }

    async fn start_inner(
        dir: &Path,
        db_url: &str,
        nats_url: &str,
        ns: Namespace,
        extra_env: &[(&str, &str)],
        receiver: Option<Receiver>,
    ) -> Self {
        let settings = Settings {
            db_url: db_url.to_owned(),
            nats_url: nats_url.to_owned(),
            ns,
            extra_env: extra_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let registry = Service::start(
            "registry",
            "webhook-registry",
            "REGISTRY_BIND",
            &settings.registry_env(),
            dir,
        );
        let receiver_failing = Arc::new(AtomicBool::new(false));
        let receiver_delay_ms = Arc::new(AtomicU64::new(0));
        let (failing, delay) = (receiver_failing.clone(), receiver_delay_ms.clone());
        let receiver = match receiver {
            Some(r) => r,
            None => {
                Receiver::start_with(move |_, _| {
                    let delay = Duration::from_millis(AtomicU64::load(&delay, Ordering::SeqCst));
                    if AtomicBool::load(&failing, Ordering::SeqCst) {
                        Reply::with_body(500, "failing on purpose")
                    } else if delay.is_zero() {
                        Reply::ok()
                    } else {
                        Reply::slow(200, delay)
                    }
                })
                .await
            }
        };
        let mut d = Self {
            registry,
            workers: Vec::new(),
            gateway: None,
            receiver,
            receiver_failing,
            receiver_delay_ms,
            hooks: Vec::new(),
            token: String::new(),
            db_url: settings.db_url.clone(),
            nats_url: settings.nats_url.clone(),
            ns: settings.ns.clone(),
            settings,
            dir: dir.to_path_buf(),
            workers_started: 0,
            gateways_started: 0,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("HTTP client"),
        };
        d.registry.wait_ready(READY).await;
        d.token = d.create_token();
        for (name, pattern) in [("all", "*"), ("tickets", "ticket.*")] {
            let id = d.create_webhook(name, pattern).await;
            d.hooks.push(Hook {
                id,
                pattern: Pattern::parse(pattern).expect("pattern"),
            });
        }
        d.start_worker().await;
        d.start_gateway(None).await;
        d
    }

    /// `webhook-registry token create`: the token alone on stdout.
    fn create_token(&self) -> String {
        let out = Command::new(binary("webhook-registry"))
            .env_clear()
            .env("SECRETS_KEY_FILE", storage::testing::key_file())
            .env("DATABASE_URL", &self.db_url)
            .env("RUST_LOG", "warn")
            .args(["token", "create", "--name", "e2e"])
            .output()
            .expect("run webhook-registry token create");
        assert!(
            out.status.success(),
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(!token.is_empty() && !token.contains('\n'), "one token line");
        token
    }

    /// `POST /webhooks` to the receiver's `/<name>`; returns the id.
    pub async fn create_webhook(&self, name: &str, pattern: &str) -> i32 {
        let resp = self
            .http
            .post(self.registry.url("/webhooks"))
            .bearer_auth(&self.token)
            .json(&json!({
                "name": name,
                "url": self.receiver.url(&format!("/{name}")),
                "event_type": pattern,
                "secret": format!("secret-{name}"),
            }))
            .send()
            .await
            .expect("POST /webhooks");
        assert_eq!(resp.status().as_u16(), 201, "create webhook {name}");
        let body: Value = resp.json().await.expect("webhook JSON");
        body["id"].as_i64().expect("webhook id") as i32
    }

    /// `method path` on the registry's API with the deployment's token and
    /// a JSON body: the status and the JSON answer (`null` when empty).
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut rb = self
            .http
            .request(method, self.registry.url(path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.expect("registry request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("registry answer");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("registry JSON")
        };
        (status, value)
    }

    /// Creates a webhook from a full request body and counts it among the
    /// deployment's webhooks (workers wait for all of them to be loaded);
    /// returns it as the API shows it.
    pub async fn create_webhook_from(&mut self, body: Value) -> Value {
        let (status, hook) = self
            .api(reqwest::Method::POST, "/webhooks", Some(body))
            .await;
        assert_eq!(status, 201, "create webhook: {hook}");
        let first = hook["event_type"].as_str().expect("event_type");
        self.hooks.push(Hook {
            id: hook["id"].as_i64().expect("webhook id") as i32,
            pattern: Pattern::parse(first).expect("pattern"),
        });
        hook
    }

    /// Stops the registry (SIGTERM) and starts it again on the same
    /// address; waits until it is ready.
    pub async fn restart_registry(&mut self) {
        let status = self.registry.terminate(READY).await;
        assert!(status.success(), "the registry stopped cleanly: {status}");
        let addr = self.registry.addr;
        self.registry = Service::start_on(
            "registry",
            "webhook-registry",
            "REGISTRY_BIND",
            addr,
            &self.settings.registry_env(),
            &self.dir,
        );
        self.registry.wait_ready(READY).await;
    }

    /// Stops every worker (SIGKILL).
    pub fn kill_workers(&mut self) {
        for w in &mut self.workers {
            w.kill();
        }
        self.workers.clear();
    }

    /// From now on the receiver answers 500 (`true`) or 200 (`false`).
    pub fn set_receiver_failing(&self, failing: bool) {
        self.receiver_failing.store(failing, Ordering::SeqCst);
    }

    /// From now on the receiver answers after `delay`.
    pub fn set_receiver_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.receiver_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// `GET path` on the registry with the deployment's token: the status,
    /// its `Retry-After` header, and how long the answer took (`None`
    /// when nothing answered within the client's 10 s).
    pub async fn timed_get(&self, path: &str) -> (Option<u16>, Option<String>, Duration) {
        let started = Instant::now();
        let resp = self
            .http
            .get(self.registry.url(path))
            .bearer_auth(&self.token)
            .send()
            .await;
        let took = started.elapsed();
        match resp {
            Ok(r) => {
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                (Some(r.status().as_u16()), retry_after, took)
            }
            Err(_) => (None, None, took),
        }
    }

    /// The services' `/readyz` at once: `(name, status, body)` each.
    pub async fn readiness(&self) -> Vec<(String, Option<u16>, Value)> {
        let mut all = Vec::new();
        for s in self.services() {
            let answer = s.readyz().await;
            all.push((
                s.name.clone(),
                answer.as_ref().map(|a| a.0),
                answer.map(|a| a.1).unwrap_or(Value::Null),
            ));
        }
        all
    }

    /// The `NATS_URL` given to services started from now on.
    pub fn set_nats_url(&mut self, url: &str) {
        self.settings.nats_url = url.to_owned();
    }

    /// Starts one more worker and waits until it is ready with every
    /// webhook loaded; returns its index in `workers`.
    pub async fn start_worker(&mut self) -> usize {
        self.workers_started += 1;
        let name = format!("worker-{}", self.workers_started);
        let mut w = Service::start(
            &name,
            "delivery-worker",
            "WORKER_BIND",
            &self.settings.worker_env(),
            &self.dir,
        );
        w.wait_ready(READY).await;
        let hooks = self.hooks.len() as f64;
        eventually(READY, "the worker has every webhook", || async {
            (w.metric("delivery_webhooks_cached").await == hooks).then_some(())
        })
        .await;
        self.workers.push(w);
        self.workers.len() - 1
    }

    /// Starts the gateway (on `addr` when given: a restart on the same
    /// port) and waits until it is ready.
    pub async fn start_gateway(&mut self, addr: Option<SocketAddr>) {
        assert!(self.gateway.is_none(), "a gateway is already running");
        self.gateways_started += 1;
        let name = format!("gateway-{}", self.gateways_started);
        let env = self.settings.gateway_env();
        let mut g = match addr {
            Some(addr) => {
                Service::start_on(&name, "gateway", "GATEWAY_BIND", addr, &env, &self.dir)
            }
            None => Service::start(&name, "gateway", "GATEWAY_BIND", &env, &self.dir),
        };
        g.wait_ready(READY).await;
        self.gateway = Some(g);
    }

    pub fn ws_url(&self) -> String {
        let g = self.gateway.as_ref().expect("a gateway");
        format!("ws://{}/ws", g.addr)
    }

    /// A publisher on the deployment's NATS (every URL of the list).
    pub async fn publisher(&self) -> Publisher {
        let client = NatsArgs::for_url(&self.nats_url)
            .connect("e2e-publisher", FirstConnect::RetryInBackground)
            .await
            .expect("connect the publisher");
        let publisher = Publisher::new(client, self.ns.clone());
        publisher.ensure_stream().await.expect("the events stream");
        publisher
    }

    fn services(&self) -> Vec<&Service> {
        let mut all = vec![&self.registry];
        all.extend(self.workers.iter());
        all.extend(self.gateway.iter());
        all
    }

    /// Waits until every running service says ready.
    pub async fn wait_all_ready(&mut self) {
        self.registry.wait_ready(READY).await;
        for w in &mut self.workers {
            w.wait_ready(READY).await;
        }
        if let Some(g) = self.gateway.as_mut() {
            g.wait_ready(READY).await;
        }
    }

    /// Waits until every running service's `/readyz` answers 503 naming
    /// `dep` as down.
    pub async fn wait_all_not_ready(&self, dep: Dependency, within: Duration) {
        for s in self.services() {
            let check = match (dep, s.name.starts_with("gateway")) {
                (Dependency::Nats, _) => "nats",
                (Dependency::Postgres, true) => "postgres",
                (Dependency::Postgres, false) => "database",
            };
            s.wait_not_ready(check, within).await;
        }
    }

    /// The `webhook-id` of every event × matching webhook.
    pub fn expected_ids(&self, events: &[Event]) -> HashSet<String> {
        events
            .iter()
            .flat_map(|e| {
                self.hooks
                    .iter()
                    .filter(|h| h.pattern.matches(e.event_type))
                    .map(|h| webhook_client::message_id(&e.id, h.id))
            })
            .collect()
    }

    /// Every delivery row; `None` while the database cannot be read.
    pub async fn rows(&self) -> Option<Vec<Row>> {
        use storage::schema::webhook_deliveries::dsl as d;
        let mut conn = AsyncPgConnection::establish(&self.db_url).await.ok()?;
        let rows: Vec<(Option<String>, i32, String)> = d::webhook_deliveries
            .select((d::event_id, d::webhook_id, d::status))
            .load(&mut conn)
            .await
            .ok()?;
        Some(
            rows.into_iter()
                .map(|(event_id, webhook_id, status)| Row {
                    event_id,
                    webhook_id,
                    status,
                })
                .collect(),
        )
    }

    async fn get_json(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(self.registry.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().await.expect("JSON")
    }

    /// Waits until every expected delivery succeeded, nothing is pending
    /// and nothing more arrives; then checks what the receiver, the rows,
    /// the registry's counters and statistics say about it.
    pub async fn check_delivered(&self, events: &[Event], within: Duration) -> Outcome {
        let expected = self.expected_ids(events);
        let last: Cell<Option<(usize, usize)>> = Cell::new(None);
        let rows = eventually(within, "every delivery recorded as a success", || {
            let (expected, last) = (&expected, &last);
            async move {
                let rows = self.rows().await?;
                let done: HashSet<String> = rows
                    .iter()
                    .filter(|r| r.status == "success")
                    .filter_map(|r| {
                        Some(webhook_client::message_id(
                            r.event_id.as_ref()?,
                            r.webhook_id,
                        ))
                    })
                    .collect();
                let settled = &done == expected && rows.iter().all(|r| r.status != "pending");
                // Settled twice in a row with nothing new in between.
                let now = (rows.len(), self.receiver.count());
                let stable = settled && last.get() == Some(now);
                last.set(settled.then_some(now));
                stable.then_some(rows)
            }
        })
        .await;
        let received = self.receiver.received();
        let outcome = Outcome::new(rows, received, &expected);

        // Counters: the registry's statistics and each webhook's counts
        // equal the rows, and the counter tables equal the rows.
        let stats = self.get_json("/webhooks/stats").await;
        let (success, failed) = (outcome.rows_with("success"), outcome.rows_with("failed"));
        assert_eq!(stats["total_deliveries"], outcome.rows.len(), "{stats}");
        assert_eq!(stats["successful_deliveries"], success, "{stats}");
        assert_eq!(stats["failed_deliveries"], failed, "{stats}");
        for h in &self.hooks {
            let w = self.get_json(&format!("/webhooks/{}", h.id)).await;
            let of = |s: &str| {
                outcome
                    .rows
                    .iter()
                    .filter(|r| r.webhook_id == h.id && r.status == s)
                    .count()
            };
            assert_eq!(w["success_count"], of("success"), "webhook {}: {w}", h.id);
            assert_eq!(w["failure_count"], of("failed"), "webhook {}: {w}", h.id);
        }
        let mut conn = AsyncPgConnection::establish(&self.db_url)
            .await
            .expect("connect to the database");
        storage::testing::assert_counts_match_rows(&mut conn).await;
        outcome
    }

    /// Deletes the deployment's streams (for a NATS shared with others).
    pub async fn delete_streams(&self) {
        let client = async_nats::connect(self.nats_url.as_str())
            .await
            .expect("NATS");
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_stream(self.ns.stream()).await;
        let _ = js.delete_stream(self.ns.deadletter_stream()).await;
    }
}

/// The Standard Webhooks `webhook-id` of a request
/// (`msg_<event id>_<webhook id>`).
fn webhook_id(r: &Received) -> &str {
    r.header("webhook-id").unwrap_or_default()
}

/// What was delivered, from the receiver's and the database's side.
#[derive(Debug)]
pub struct Outcome {
    pub rows: Vec<Row>,
    pub received: Vec<Received>,
    /// `webhook-id`s answered 200 more than once: the receiver got the
    /// event twice (what a receiver de-duplicates by `webhook-id`).
    pub duplicates: Vec<String>,
    /// Requests no row records (an attempt whose result was lost and that
    /// was made again), by `webhook-id`.
    pub unrecorded: Vec<String>,
}

impl Outcome {
    fn new(rows: Vec<Row>, received: Vec<Received>, expected: &HashSet<String>) -> Self {
        let mut ok: HashMap<&str, usize> = HashMap::new();
        let mut requests: HashMap<&str, usize> = HashMap::new();
        for r in &received {
            assert!(
                expected.contains(webhook_id(r)),
                "a request nobody expected: {r:?}"
            );
            *requests.entry(webhook_id(r)).or_default() += 1;
            if r.status == Some(200) {
                *ok.entry(webhook_id(r)).or_default() += 1;
            }
        }
        let answered: HashSet<String> = ok.keys().map(|k| (*k).to_owned()).collect();
        assert_eq!(
            answered.len(),
            expected.len(),
            "every event × webhook received and answered 200"
        );
        assert_eq!(&answered, expected);
        let mut row_count: HashMap<String, usize> = HashMap::new();
        for r in &rows {
            let id = webhook_client::message_id(r.event_id.as_deref().unwrap_or(""), r.webhook_id);
            *row_count.entry(id).or_default() += 1;
        }
        let successes = rows.iter().filter(|r| r.status == "success").count();
        let mut success_rows: HashMap<String, usize> = HashMap::new();
        for r in rows.iter().filter(|r| r.status == "success") {
            let id = webhook_client::message_id(r.event_id.as_deref().unwrap_or(""), r.webhook_id);
            *success_rows.entry(id).or_default() += 1;
        }
        let twice: Vec<(&String, usize)> = success_rows
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, _)| (id, requests.get(id.as_str()).copied().unwrap_or(0)))
            .take(5)
            .collect();
        assert!(
            twice.is_empty(),
            "webhook-ids with more than one success row (id, requests): {twice:?}"
        );
        assert_eq!(
            successes,
            expected.len(),
            "one success row per event × webhook (a second one means work already \
             recorded was done again)"
        );
        // Every success row is a request the receiver answered 200 (a
        // failed row may be an attempt that never reached it: a silent
        // network).
        for (id, n) in &success_rows {
            let answered = ok.get(id.as_str()).copied().unwrap_or(0);
            assert!(
                *n <= answered,
                "{id}: {n} success rows but {answered} answered requests"
            );
        }
        let duplicates = ok
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, _)| (*id).to_owned())
            .collect();
        let unrecorded = requests
            .iter()
            .filter(|(id, n)| **n > row_count.get(**id).copied().unwrap_or(0))
            .map(|(id, _)| (*id).to_owned())
            .collect();
        Self {
            rows,
            received,
            duplicates,
            unrecorded,
        }
    }

    pub fn rows_with(&self, status: &str) -> usize {
        self.rows.iter().filter(|r| r.status == status).count()
    }

    pub fn answered(&self, status: u16) -> usize {
        self.received
            .iter()
            .filter(|r| r.status == Some(status))
            .count()
    }

    /// Every request is one row: none lost, none repeated.
    pub fn assert_exact(&self) {
        assert!(
            self.duplicates.is_empty(),
            "duplicates: {:?}",
            self.duplicates
        );
        assert!(
            self.unrecorded.is_empty(),
            "unrecorded: {:?}",
            self.unrecorded
        );
        assert_eq!(self.rows.len(), self.received.len(), "one row per request");
        assert_eq!(self.rows_with("success"), self.answered(200));
        assert_eq!(self.rows_with("failed"), self.answered(500));
    }

    /// Every duplicate or unrecorded attempt was first sent inside
    /// `window` (the work in flight while a dependency was away); returns
    /// how many `webhook-id`s were affected.
    pub fn assert_repeats_within(&self, window: (Instant, Instant)) -> usize {
        let repeated: HashSet<&String> = self.duplicates.iter().chain(&self.unrecorded).collect();
        for id in &repeated {
            let first = self
                .received
                .iter()
                .filter(|r| webhook_id(r) == id.as_str())
                .map(|r| r.at)
                .min()
                .expect("a repeated id was received");
            assert!(
                first >= window.0 && first <= window.1,
                "{id} was repeated, but its first request came {:?} {} the fault window",
                if first < window.0 {
                    window.0 - first
                } else {
                    first - window.1
                },
                if first < window.0 { "before" } else { "after" }
            );
        }
        repeated.len()
    }
}
