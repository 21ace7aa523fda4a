//! `spawn_app()`: the real registry on port 0 against a fresh, migrated
//! database and a unique NATS prefix; typed request helpers. The webhook
//! receiver is `test_support::Receiver`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use proto_events::Namespace;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use storage::testing::TestDb;
use storage::tokens::{TokenHasher, TokenSpec};
use storage::{DbConn, DbPool};
use tokio_util::sync::CancellationToken;
use webhook_registry::{Application, Config};

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    /// A valid token (SHA-256 hashed unless the config set an HMAC key).
    pub token: String,
    pub pool: DbPool,
    pub ns: Namespace,
    pub config: Config,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    // Dropped last: the database goes after the app stopped using it.
    pub db: TestDb,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the app with a config adjusted by `tweak`, and waits until it is
/// ready.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    telemetry::init_test_logging();
    let db = TestDb::new().await.expect("test database");
    let ns = Namespace::unique();
    let mut config = Config::for_tests(&db.url, ns.prefix());
    tweak(&mut config);
    let pool = db.pool().expect("pool");
    let hasher = config.token_hasher();
    let token = create_token(&pool, &hasher, "tests", None).await;
    let app = start(config.clone()).await;
    let (addr, shutdown, task) = app;
    let t = TestApp {
        addr,
        base: format!("http://{addr}"),
        client: reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client"),
        token,
        pool,
        ns,
        config,
        shutdown,
        task: Some(task),
        db,
    };
    t.wait_ready().await;
    t
}

/// Builds and runs an app; returns its address, its stop token and task.
pub async fn start(
    config: Config,
) -> (
    SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let app = Application::build(config).await.expect("build app");
    let addr = app.local_addr();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    (addr, shutdown, task)
}

pub async fn create_token(
    pool: &DbPool,
    hasher: &TokenHasher,
    name: &str,
    expires_at: Option<DateTime<Utc>>,
) -> String {
    let mut conn = pool.get().await.expect("conn");
    let (_, token) = storage::tokens::create_token(
        &mut conn,
        hasher,
        TokenSpec {
            name: name.to_owned(),
            expires_at,
            ..TokenSpec::default()
        },
    )
    .await
    .expect("create token");
    token
}

/// Polls `check` every 100 ms until it is true or `secs` passed.
pub async fn eventually<F, Fut>(secs: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

impl TestApp {
    pub async fn wait_ready(&self) {
        let ok = eventually(15, || async {
            self.client
                .get(format!("{}/readyz", self.base))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        })
        .await;
        assert!(ok, "the app did not become ready");
    }

    pub async fn conn(&self) -> DbConn {
        self.pool.get().await.expect("conn")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with the app's token (as `X-API-Key`).
    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .header("X-API-Key", &self.token)
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut rb = self.req(method, path);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None).await
    }

    /// A webhook's secret as stored, opened with the tests' key (`None`
    /// when there is none).
    pub async fn stored_secret(&self, id: i32) -> Option<String> {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use storage::schema::webhooks as w;
        use storage::testing::{diesel, diesel_async};
        let stored: Option<String> = w::table
            .find(id)
            .select(w::secret)
            .first(&mut self.conn().await)
            .await
            .expect("webhook");
        let keys = storage::SecretsArgs::for_tests().keyring().expect("keys");
        stored.map(|s| {
            assert!(s.starts_with("sealed:v1:"), "stored in clear");
            keys.open(storage::subscription::purpose::SECRET, &s)
                .expect("opens")
        })
    }

    /// Creates a webhook and returns it.
    pub async fn create_webhook(&self, name: &str, url: &str, event_type: &str) -> Value {
        let (status, body) = self
            .post(
                "/webhooks",
                json!({"name": name, "url": url, "event_type": event_type}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// Inserts a delivery row directly.
    pub async fn insert_delivery(
        &self,
        webhook_id: i32,
        status: &str,
        event_id: &str,
        attempt: i32,
    ) -> storage::models::Delivery {
        let mut conn = self.conn().await;
        storage::deliveries::insert(
            &mut conn,
            storage::models::NewDelivery {
                webhook_id,
                event_type: "user.created".into(),
                payload: json!({"user_id": 1, "first_name": "Иван 🎉"}),
                response_status: (status != "pending").then_some(if status == "success" {
                    200
                } else {
                    500
                }),
                response_body: None,
                status: status.parse().unwrap(),
                error_message: None,
                attempt_number: attempt,
                delivered_at: None,
                next_retry_at: None,
                event_id: Some(event_id.into()),
                traceparent: Some(TRACEPARENT.into()),
                body: None,
            },
        )
        .await
        .expect("insert delivery")
    }

    /// Stops the app; true when it ended without an error within 20 s.
    /// The database stays until `self` is dropped.
    pub async fn stop_now(&mut self) -> bool {
        self.shutdown.cancel();
        let Some(task) = self.task.take() else {
            return false;
        };
        let ok = matches!(
            tokio::time::timeout(Duration::from_secs(20), task).await,
            Ok(Ok(Ok(())))
        );
        ok
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        // Delete this test's streams (best effort) on a runtime of our own.
        let ns = self.ns.clone();
        let url = self.config.nats.nats_url.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(Ok(client)) =
                    tokio::time::timeout(Duration::from_secs(2), async_nats::connect(url)).await
                else {
                    return;
                };
                let js = async_nats::jetstream::new(client);
                let _ = js.delete_stream(ns.stream()).await;
                let _ = js.delete_stream(ns.deadletter_stream()).await;
            });
        })
        .join();
    }
}

/// The trace context seeded deliveries were published with.
pub const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
