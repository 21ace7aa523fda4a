//! Test plumbing: a worker on port 0 against a fresh database and a unique
//! NATS namespace, local receivers, and row helpers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use delivery_worker::{Application, Config};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use parking_lot::Mutex;
use proto_events::{ChangeOp, Envelope, EventType, Namespace, Publisher, WebhookChange};
use serde_json::Value;
use storage::models::{Delivery, Webhook};
use storage::testing::TestDb;
use storage::{DbPool, schema};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub const NATS_URL: &str = "nats://127.0.0.1:4222";

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
    c.nats.nats_url = NATS_URL.to_owned();
    c.nats.nats_prefix = ns.prefix().to_owned();
    c.bind = "127.0.0.1:0".parse().unwrap();
    c.allow_private_targets = true;
    c.retry_schedule = "1s,1s".to_owned();
    c.total_timeout = Duration::from_secs(3);
    c.connect_timeout = Duration::from_secs(2);
    c.retry_poll = Duration::from_millis(200);
    c.shutdown_grace = Duration::from_secs(5);
    c.consumer = "delivery-worker".to_owned();
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
    let client = async_nats::connect(NATS_URL).await.expect("nats");
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

/// Polls `check` until it returns `Some` or `secs` pass.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rows of a webhook once `n` exist and none is pending.
pub async fn settled_rows(pool: &DbPool, webhook_id: i32, n: usize) -> Vec<Delivery> {
    eventually(20, "delivery rows", || async {
        let rows = deliveries(pool, webhook_id).await;
        (rows.len() >= n && rows.iter().all(|r| r.status.as_str() != "pending")).then_some(rows)
    })
    .await
}

// ---------------------------------------------------------------- receiver

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: DateTime<Utc>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
pub enum Reply {
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
        delay: Duration,
    },
    /// Never answer.
    Hang,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Reply::Respond {
            status,
            headers: vec![],
            body: String::new(),
            delay: Duration::ZERO,
        }
    }
    pub fn ok() -> Self {
        Self::status(200)
    }
    pub fn slow(status: u16, delay: Duration) -> Self {
        Reply::Respond {
            status,
            headers: vec![],
            body: String::new(),
            delay,
        }
    }
    pub fn with_header(status: u16, name: &str, value: &str) -> Self {
        Reply::Respond {
            status,
            headers: vec![(name.into(), value.into())],
            body: String::new(),
            delay: Duration::ZERO,
        }
    }
}

type ReplyFn = Arc<dyn Fn(&Received, usize) -> Reply + Send + Sync>;

/// An HTTP/1.1 receiver on 127.0.0.1 that records every request; the reply
/// is chosen per request (with the number of earlier requests on that path).
pub struct Receiver {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    notify: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    pub async fn start(reply: Reply) -> Self {
        Self::start_with(move |_, _| reply.clone()).await
    }

    pub async fn start_with(f: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static) -> Self {
        let f: ReplyFn = Arc::new(f);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let notify = Arc::new(Notify::new());
        let (rec, n) = (received.clone(), notify.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (rec, n, f) = (rec.clone(), n.clone(), f.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, rec, n, f).await;
                });
            }
        });
        Self {
            addr,
            received,
            notify,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn count(&self) -> usize {
        self.received.lock().len()
    }

    pub fn on(&self, path: &str) -> Vec<Received> {
        self.received
            .lock()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits until at least `n` requests arrived on `path`.
    pub async fn wait_for(&self, path: &str, n: usize, secs: u64) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.on(path);
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path}: {} of {n} requests",
                got.len()
            );
            let _ = tokio::time::timeout(Duration::from_millis(100), self.notify.notified()).await;
        }
    }
}

async fn serve(
    mut stream: TcpStream,
    rec: Arc<Mutex<Vec<Received>>>,
    notify: Arc<Notify>,
    f: ReplyFn,
) -> std::io::Result<()> {
    loop {
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let path = lines
            .next()
            .unwrap_or_default()
            .split(' ')
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.to_owned(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = buf[head_end + 4..].to_vec();
        while body.len() < len {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            body.extend_from_slice(&chunk[..n]);
        }
        let r = Received {
            path: path.clone(),
            headers,
            body,
            at: Utc::now(),
        };
        let reply = {
            let mut all = rec.lock();
            let earlier = all.iter().filter(|x| x.path == path).count();
            let reply = f(&r, earlier);
            all.push(r);
            reply
        };
        notify.notify_waiters();
        match reply {
            Reply::Hang => {
                tokio::time::sleep(Duration::from_secs(300)).await;
                return Ok(());
            }
            Reply::Respond {
                status,
                headers,
                body,
                delay,
            } => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let mut out = format!(
                    "HTTP/1.1 {status} Status\r\nContent-Length: {}\r\n",
                    body.len()
                );
                for (n, v) in headers {
                    out.push_str(&format!("{n}: {v}\r\n"));
                }
                out.push_str("\r\n");
                out.push_str(&body);
                stream.write_all(out.as_bytes()).await?;
            }
        }
    }
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
    cmd.env("DATABASE_URL", &db.url)
        .env("NATS_URL", NATS_URL)
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
