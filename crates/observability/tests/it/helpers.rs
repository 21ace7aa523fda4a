//! The whole system in one process: the registry, a delivery worker, a
//! gateway and the outbox relay on port 0, against a fresh database and a
//! unique NATS namespace; a WebSocket client. The webhook receiver and the
//! NATS URL come from `test_support`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use futures::{SinkExt, StreamExt};
use proto_events::{Envelope, EventType, Namespace, Publisher};
use serde_json::{Value, json};
use storage::testing::TestDb;
use storage::tokens::{TokenHasher, TokenSpec, create_token};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub use test_support::{Receiver, nats_url};

/// How long a test waits for something asynchronous.
pub const WAIT: Duration = Duration::from_secs(20);

/// One running service.
pub struct Service {
    pub name: &'static str,
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Service {
    fn spawn<F>(
        name: &'static str,
        addr: SocketAddr,
        run: impl FnOnce(CancellationToken) -> F,
    ) -> Self
    where
        F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(stop.clone()));
        Self {
            name,
            addr,
            stop,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn shut_down(self) {
        self.stop.cancel();
        match tokio::time::timeout(WAIT, self.task).await {
            Ok(Ok(Ok(()))) => {}
            other => panic!("{} did not stop cleanly: {other:?}", self.name),
        }
    }
}

/// Every service, started on one database and namespace.
pub struct System {
    pub db: TestDb,
    pub ns: Namespace,
    pub nats: async_nats::Client,
    pub publisher: Publisher,
    /// An API token for the registry and the gateway.
    pub token: String,
    pub http: reqwest::Client,
    pub registry: Service,
    pub worker: Service,
    pub gateway: Service,
    pub relay: Service,
}

impl System {
    /// Starts the four services and waits until each `/readyz` says ready.
    pub async fn start() -> Self {
        let db = TestDb::new().await.expect("test database");
        // The bot's outbox in the same database, as docker-compose.yml has it.
        outbox_relay::migrate(&db.url)
            .await
            .expect("outbox migration");
        let ns = Namespace::unique();
        let nats = async_nats::connect(nats_url()).await.expect("NATS");
        let publisher = Publisher::new(nats.clone(), ns.clone());
        publisher.ensure_stream().await.expect("streams");
        let token = {
            let pool = db.pool().expect("pool");
            let mut conn = pool.get().await.expect("connection");
            let (_, token) = create_token(
                &mut conn,
                &TokenHasher::new(None),
                TokenSpec {
                    name: "observability".to_owned(),
                    ..Default::default()
                },
            )
            .await
            .expect("token");
            token
        };
        let nats_url = nats_url();
        let key_file = storage::testing::key_file();
        let key_file = key_file.to_str().expect("a UTF-8 temporary path");
        let keys = ["--secrets-key-file", key_file];
        let common = [
            "--database-url",
            db.url.as_str(),
            "--nats-url",
            nats_url.as_str(),
            "--nats-prefix",
            ns.prefix(),
            "--bind",
            "127.0.0.1:0",
        ];

        let cli = webhook_registry::Cli::try_parse_from(
            ["webhook-registry"]
                .into_iter()
                .chain(common)
                .chain(keys)
                .chain(["--allow-private-targets", "true"]),
        )
        .expect("registry flags");
        let app = webhook_registry::Application::build(cli.config)
            .await
            .expect("registry");
        let registry = Service::spawn("webhook-registry", app.local_addr(), |stop| {
            app.run_until_stopped(stop)
        });

        let config = delivery_worker::Config::try_parse_from(
            ["delivery-worker"]
                .into_iter()
                .chain(common)
                .chain(keys)
                .chain([
                    "--allow-private-targets",
                    "true",
                    "--retry-schedule",
                    "1s",
                    "--retry-poll",
                    "200ms",
                ]),
        )
        .expect("worker flags");
        let app = delivery_worker::Application::build(config)
            .await
            .expect("worker");
        let worker = Service::spawn("delivery-worker", app.local_addr(), |stop| {
            app.run_until_stopped(stop)
        });

        let config = gateway::Config::try_parse_from(
            ["gateway"]
                .into_iter()
                .chain(common)
                .chain(["--workers", "1"]),
        )
        .expect("gateway flags");
        let app = gateway::Application::build(config).await.expect("gateway");
        let gateway = Service::spawn("gateway", app.local_addr(), |stop| {
            app.run_until_stopped(stop)
        });

        let cli = outbox_relay::Cli::try_parse_from(
            ["outbox-relay"]
                .into_iter()
                .chain(common)
                .chain(["--stats-interval", "100ms"]),
        )
        .expect("relay flags");
        let app = outbox_relay::Application::build(cli.config)
            .await
            .expect("relay");
        let relay = Service::spawn("outbox-relay", app.local_addr(), |stop| {
            app.run_until_stopped(stop)
        });

        let system = Self {
            db,
            ns,
            nats,
            publisher,
            token,
            http: reqwest::Client::builder().no_proxy().build().expect("http"),
            registry,
            worker,
            gateway,
            relay,
        };
        for service in system.services() {
            system.wait_ready(service).await;
        }
        system
    }

    pub fn services(&self) -> [&Service; 4] {
        [&self.registry, &self.worker, &self.gateway, &self.relay]
    }

    async fn wait_ready(&self, service: &Service) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let answer = self.http.get(service.url("/readyz")).send().await;
            let (ready, body) = match answer {
                Ok(r) => (r.status().is_success(), r.text().await.unwrap_or_default()),
                Err(e) => (false, e.to_string()),
            };
            if ready {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never became ready: {body}",
                service.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of a service's `/metrics`.
    pub async fn scrape(&self, service: &Service) -> String {
        let r = self
            .http
            .get(service.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(r.status(), 200, "/metrics of {}", service.name);
        r.text().await.expect("metrics text")
    }

    /// Waits until the worker has `n` active webhooks loaded (it reloads
    /// when the registry's change notice arrives).
    pub async fn wait_webhooks_loaded(&self, n: usize) {
        let want = format!("\ndelivery_webhooks_cached {n}\n");
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.scrape(&self.worker).await.contains(&want) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the worker never loaded {n} webhooks"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A registry request with the token.
    pub fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.registry.url(path))
            .bearer_auth(&self.token)
    }

    /// Creates a webhook for `event_type` through the API; its id.
    pub async fn create_webhook(&self, url: &str, event_type: &str) -> i64 {
        let r = self
            .api(reqwest::Method::POST, "/webhooks")
            .json(&json!({"name": "observability", "url": url, "event_type": event_type}))
            .send()
            .await
            .expect("POST /webhooks");
        assert_eq!(r.status(), 201);
        let body: Value = r.json().await.expect("webhook");
        body["id"].as_i64().expect("id")
    }

    /// Publishes an event, with a `traceparent` header when given.
    pub async fn publish(&self, event_type: EventType, payload: Value, traceparent: Option<&str>) {
        let Value::Object(map) = payload else {
            panic!("payload must be an object")
        };
        let mut headers = async_nats::HeaderMap::new();
        if let Some(tp) = traceparent {
            headers.insert("traceparent", tp);
        }
        self.publisher
            .publish_with_headers(&Envelope::new(event_type, map), headers)
            .await
            .expect("publish");
    }

    /// A WebSocket client of the gateway, past its welcome message.
    pub async fn ws(&self) -> Ws {
        let url = format!("ws://{}/ws?token={}", self.gateway.addr, self.token);
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("WebSocket");
        let mut ws = Ws(stream);
        let welcome = ws.next_json().await;
        assert_eq!(welcome["type"], "connection", "{welcome}");
        ws
    }

    /// Stops every service and removes the test's streams.
    pub async fn stop(self) {
        let js = async_nats::jetstream::new(self.nats.clone());
        for service in [self.relay, self.gateway, self.worker, self.registry] {
            service.shut_down().await;
        }
        let _ = js.delete_stream(self.ns.stream()).await;
        let _ = js.delete_stream(self.ns.deadletter_stream()).await;
    }
}

pub struct Ws(WebSocketStream<MaybeTlsStream<TcpStream>>);

impl Ws {
    /// The next text message as JSON (pings are answered by the library).
    pub async fn next_json(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.0.next())
                .await
                .expect("a WebSocket message in time")
                .expect("an open WebSocket")
                .expect("a WebSocket frame");
            if let Message::Text(text) = msg {
                return serde_json::from_str(&text).expect("JSON");
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.0.send(Message::Close(None)).await;
        let _ = tokio::time::timeout(WAIT, async { while self.0.next().await.is_some() {} }).await;
    }
}
