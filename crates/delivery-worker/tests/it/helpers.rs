//! Test plumbing: a worker on port 0 against a fresh database and a unique
//! NATS namespace, and row helpers; the local receivers, `eventually` and
//! the NATS URL come from `test_support`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use storage::testing::{diesel, diesel_async};

use delivery_worker::{Application, Config};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use proto_events::{ChangeOp, Envelope, EventType, Namespace, Publisher, WebhookChange};
use serde_json::Value;
use storage::models::{Delivery, Webhook};
use storage::testing::TestDb;
use storage::{DbPool, schema};
use tokio_util::sync::CancellationToken;

pub use test_support::{Receiver, Reply, eventually, nats_url};

pub struct TestApp {
    pub addr: SocketAddr,
    pub db: Arc<TestDb>,
    pub pool: DbPool,
    pub ns: Namespace,
    pub publisher: Publisher,
    pub client: async_nats::Client,
    pub shutdown: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Test defaults: loopback allowed, short retries and timeouts.
pub fn test_config(db_url: &str, ns: &Namespace) -> Config {
    let mut c = Config::defaults();
    c.database.database_url = db_url.into();
    c.nats.nats_url = nats_url();
    c.nats.nats_prefix = ns.prefix().to_owned();
    c.bind = "127.0.0.1:0".parse().unwrap();
    c.allow_private_targets = true;
    c.retry_schedule = "1s,1s".to_owned();
    c.total_timeout = Duration::from_secs(3);
    c.connect_timeout = Duration::from_secs(2);
    c.retry_poll = Duration::from_millis(200);
    c.shutdown_grace = Duration::from_secs(5);
    c.consumer = "delivery-worker".to_owned();
    c.secrets = storage::SecretsArgs::for_tests();
    // Receivers here fail on purpose; the circuit breaker (tested in
    // storage and end to end) would hold their retries for its cooldown.
    c.circuit_threshold = 1_000_000;
    c
}

pub async fn spawn_app(tweak: impl FnOnce(&mut Config)) -> TestApp {
    telemetry::init_test_logging();
    let db = Arc::new(TestDb::new().await.expect("test database"));
    let ns = Namespace::unique();
    spawn_app_on(db, ns, tweak).await
}

/// Another worker on the same database and namespace.
pub async fn spawn_app_on(
    db: Arc<TestDb>,
    ns: Namespace,
    tweak: impl FnOnce(&mut Config),
) -> TestApp {
    let mut config = test_config(&db.url, &ns);
    tweak(&mut config);
    let app = Application::build(config).await.expect("build");
    let addr = app.local_addr();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let client = async_nats::connect(nats_url()).await.expect("nats");
    let publisher = Publisher::new(client.clone(), ns.clone());
    publisher.ensure_stream().await.expect("streams");
    let pool = db.pool().expect("pool");
    let app = TestApp {
        addr,
        db,
        pool,
        ns,
        publisher,
        client,
        shutdown,
        task: Some(task),
    };
    app.wait_ready().await;
    app
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = reqwest::get(self.url(path)).await.expect("GET");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let (status, body) = self.get("/readyz").await;
            if status == 200 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "worker not ready: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes a payload; returns the event id.
    pub async fn publish(&self, event_type: EventType, payload: Value) -> String {
        let Value::Object(map) = payload else {
            panic!("payload must be an object")
        };
        let env = Envelope::new(event_type, map);
        self.publisher.publish(&env).await.expect("publish");
        env.id
    }

    /// Tells the worker(s) that webhooks changed.
    pub async fn notify_changed(&self) {
        self.client
            .publish(
                self.ns.webhooks_changed_subject(),
                WebhookChange::new(0, ChangeOp::Updated).to_payload(),
            )
            .await
            .unwrap();
        self.client.flush().await.unwrap();
        // Let the reload happen.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    pub async fn stop(mut self) -> TestApp {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("worker stops in time")
                .expect("worker task")
                .expect("worker exit");
        }
        self
    }

    pub async fn cleanup(self) {
        let ns = self.ns.clone();
        let client = self.client.clone();
        let me = self.stop().await;
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_stream(ns.stream()).await;
        let _ = js.delete_stream(ns.deadletter_stream()).await;
        drop(me);
    }
}

pub async fn insert_webhook(
    pool: &DbPool,
    url: &str,
    event_type: &str,
    secret: Option<&str>,
    active: bool,
) -> i32 {
    use schema::webhooks::dsl as w;
    let mut conn = pool.get().await.unwrap();
    diesel::insert_into(w::webhooks)
        .values((
            w::name.eq("test"),
            w::url.eq(url),
            w::event_type.eq(event_type),
            w::secret.eq(secret),
            w::is_active.eq(active),
        ))
        .returning(w::id)
        .get_result(&mut conn)
        .await
        .unwrap()
}

pub async fn webhook(pool: &DbPool, id: i32) -> Webhook {
    use schema::webhooks::dsl as w;
    let mut conn = pool.get().await.unwrap();
    w::webhooks
        .find(id)
        .select(Webhook::as_select())
        .first(&mut conn)
        .await
        .unwrap()
}

pub async fn deliveries(pool: &DbPool, webhook_id: i32) -> Vec<Delivery> {
    use schema::webhook_deliveries::dsl as d;
    let mut conn = pool.get().await.unwrap();
    d::webhook_deliveries
        .filter(d::webhook_id.eq(webhook_id))
        .order((d::attempt_number.asc(), d::id.asc()))
        .select(Delivery::as_select())
        .load(&mut conn)
        .await
        .unwrap()
}

pub async fn exec(pool: &DbPool, sql: &str) {
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query(sql).execute(&mut conn).await.unwrap();
}

/// Rows of a webhook once `n` exist and none is pending.
pub async fn settled_rows(pool: &DbPool, webhook_id: i32, n: usize) -> Vec<Delivery> {
    eventually(Duration::from_secs(20), "delivery rows", || async {
        let rows = deliveries(pool, webhook_id).await;
        (rows.len() >= n && rows.iter().all(|r| r.status.as_str() != "pending")).then_some(rows)
    })
    .await
}

/// The value of an unlabelled sample in a Prometheus text page (0 when absent).
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

/// The built `delivery-worker` binary on a fresh port, with test timings
/// and `extra` settings on top.
pub fn start_binary(db: &TestDb, ns: &Namespace, extra: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_delivery-worker"));
    cmd.env("SECRETS_KEY_FILE", storage::testing::key_file());
    cmd.env("DATABASE_URL", &db.url)
        .env("NATS_URL", nats_url())
        .env("NATS_PREFIX", ns.prefix())
        .env("WORKER_BIND", "127.0.0.1:0")
        .env("DELIVERY_ALLOW_PRIVATE_TARGETS", "true")
        .env("DELIVERY_RETRY_SCHEDULE", "1s,1s,1s")
        .env("DELIVERY_ACK_WAIT", "2s")
        .env("DELIVERY_RETRY_POLL", "200ms")
        .env("DELIVERY_SHUTDOWN_GRACE", "5s")
        .env(
            "RUST_LOG",
            std::env::var("TEST_LOG").map(|_| "info").unwrap_or("error"),
        )
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
    cmd.spawn().expect("start delivery-worker")
}
