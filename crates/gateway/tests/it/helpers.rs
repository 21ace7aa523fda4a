//! Starting real gateways against a fresh database and NATS namespace, and
//! a small WebSocket client.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use gateway::{Application, Config};
use proto_events::{Namespace, Publisher};
use serde_json::{Value, json};
use storage::testing::TestDb;
use storage::tokens::{TokenHasher, TokenSpec, create_token};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// How long a test waits for something asynchronous.
pub const WAIT: Duration = Duration::from_secs(10);

pub use test_support::nats_url;

/// The shared backing services of one test: a database with a token, a
/// NATS namespace and a publisher.
pub struct Backing {
    pub db: TestDb,
    pub ns: Namespace,
    pub nats: async_nats::Client,
    pub publisher: Publisher,
    pub token: String,
    pub token_id: i32,
}

impl Backing {
    pub async fn new() -> Self {
        telemetry::init_test_logging();
        let db = TestDb::new().await.expect("test database");
        let ns = Namespace::unique();
        let nats = async_nats::connect(nats_url()).await.expect("NATS");
        let publisher = Publisher::new(nats.clone(), ns.clone());
        publisher.ensure_stream().await.expect("streams");
        let mut b = Self {
            db,
            ns,
            nats,
            publisher,
            token: String::new(),
            token_id: 0,
        };
        let (id, token) = b.new_token(None).await;
        b.token = token;
        b.token_id = id;
        b
    }

    /// A new active token; `(id, token)`.
    pub async fn new_token(
        &self,
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> (i32, String) {
        let pool = self.db.pool().expect("pool");
        let mut conn = pool.get().await.expect("connection");
        let (row, token) = create_token(
            &mut conn,
            &TokenHasher::new(None),
            TokenSpec {
                name: format!("test-{}", uuid::Uuid::new_v4().simple()),
                expires_at,
                ..Default::default()
            },
        )
        .await
        .expect("token");
        (row.id, token)
    }

    pub async fn revoke(&self, id: i32) {
        let pool = self.db.pool().expect("pool");
        let mut conn = pool.get().await.expect("connection");
        assert!(storage::tokens::revoke_token(&mut conn, id).await.unwrap());
    }

    /// Publishes one event; returns its stream sequence.
    pub async fn publish(&self, event_type: &str, payload: Value) -> u64 {
        self.publisher
            .publish_value(event_type, payload)
            .await
            .expect("publish")
            .sequence
    }

    pub fn config(&self) -> Config {
        let mut c = Config::from_env().expect("config");
        c.database = storage::DatabaseArgs::for_url(&self.db.url);
        c.nats.nats_url = nats_url();
        c.nats.nats_prefix = self.ns.prefix().to_owned();
        c.bind = "127.0.0.1:0".to_owned();
        c.allowed_origins = Vec::new();
        c.max_connections = 1000;
        c.client_queue_messages = 1024;
        c.client_queue_bytes = 1024 * 1024;
        c.ping_interval = Duration::from_secs(25);
        c.pong_timeout = Duration::from_secs(60);
        c.token_recheck = Duration::from_millis(300);
        c.max_frame_bytes = 64 * 1024;
        c.max_replay = 100_000;
        c.socket_send_buffer = 0;
        c.shutdown_grace = Duration::from_secs(5);
        c.write_timeout = Duration::from_secs(30);
        c.max_catchup_clients = 256;
        c.catchup_max_events = 100_000;
        c.catchup_max_age = Duration::from_secs(300);
        c.workers = 2;
        c.token_hmac_secret = "".into();
        c
    }

    /// Deletes the test's streams.
    pub async fn cleanup(&self) {
        let js = async_nats::jetstream::new(self.nats.clone());
        let _ = js.delete_stream(self.ns.stream()).await;
        let _ = js.delete_stream(self.ns.deadletter_stream()).await;
    }
}

/// One running gateway.
pub struct TestApp {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub http: reqwest::Client,
}

impl TestApp {
    /// Starts a gateway and waits until `/readyz` says ready.
    pub async fn spawn(config: Config) -> Self {
        let t = Self::spawn_unready(config).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ready = t
                .http
                .get(t.url("/readyz"))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateway never became ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        t
    }

    /// Starts a gateway without waiting for its dependencies.
    pub async fn spawn_unready(config: Config) -> Self {
        let app = Application::build(config).await.expect("build");
        let addr = app.local_addr();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let http = reqwest::Client::builder().no_proxy().build().expect("http");
        Self {
            addr,
            shutdown,
            handle,
            http,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws{query}", self.addr)
    }

    pub async fn connect(&self, query: &str) -> Ws {
        Ws::connect(&self.ws_url(query), &[]).await
    }

    /// Connects with the token in the query and reads the welcome message.
    pub async fn connect_ok(&self, token: &str) -> Ws {
        let mut ws = self.connect(&format!("?token={token}")).await;
        let welcome = ws.next_text().await;
        assert_eq!(
            welcome,
            r#"{"type":"connection","status":"connected","message":"WebSocket connection established"}"#
        );
        ws
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// The metrics once they hold every one of `lines` (the hub counts a
    /// frame after writing it, so a client may read it first), or as they
    /// are after a few seconds.
    pub async fn metrics_with(&self, lines: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let m = self.metrics().await;
            if lines.iter().all(|l| m.contains(l)) || tokio::time::Instant::now() >= deadline {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the gateway and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.handle).await;
    }
}

/// What a test reads off a socket.
#[derive(Debug)]
pub enum Frame {
    Text(String),
    Close(u16, String),
    /// The connection ended without a close frame.
    Ended,
}

pub struct Ws {
    pub inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    pub async fn connect(url: &str, headers: &[(&'static str, &str)]) -> Self {
        let mut req = url.into_client_request().expect("request");
        for (k, v) in headers {
            req.headers_mut()
                .insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        let (inner, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("WebSocket handshake");
        Self { inner }
    }

    /// Connects over a socket with a tiny receive buffer (a client that
    /// will stop reading).
    pub async fn connect_small_buffer(url: &str, addr: SocketAddr) -> Self {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        sock.set_recv_buffer_size(4096).expect("rcvbuf");
        sock.connect(&addr.into()).expect("connect");
        sock.set_nonblocking(true).expect("nonblocking");
        let std: std::net::TcpStream = sock.into();
        let tcp = TcpStream::from_std(std).expect("tokio stream");
        let req = url.into_client_request().expect("request");
        let (inner, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp))
            .await
            .expect("WebSocket handshake");
        Self { inner }
    }

    /// The next text or close, skipping pings and pongs.
    pub async fn next_frame(&mut self) -> Frame {
        self.next_frame_within(WAIT).await
    }

    pub async fn next_frame_within(&mut self, wait: Duration) -> Frame {
        loop {
            let next = tokio::time::timeout(wait, self.inner.next())
                .await
                .expect("timed out waiting for a WebSocket frame");
            match next {
                Some(Ok(Message::Text(t))) => return Frame::Text(t.to_string()),
                Some(Ok(Message::Close(Some(c)))) => {
                    return Frame::Close(u16::from(c.code), c.reason.to_string());
                }
                Some(Ok(Message::Close(None))) => return Frame::Close(1005, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Frame::Ended,
            }
        }
    }

    pub async fn next_text(&mut self) -> String {
        match self.next_frame().await {
            Frame::Text(t) => t,
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    pub async fn next_json(&mut self) -> Value {
        serde_json::from_str(&self.next_text().await).expect("JSON from the server")
    }

    /// The next event message (one with a `seq`), skipping others.
    pub async fn next_event(&mut self) -> Value {
        loop {
            let v = self.next_json().await;
            if v.get("seq").is_some() {
                return v;
            }
        }
    }

    /// Reads until the close frame, skipping text; returns code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.next_frame().await {
                Frame::Text(_) => continue,
                Frame::Close(code, reason) => return (code, reason),
                Frame::Ended => panic!("connection ended without a close frame"),
            }
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.inner
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    /// Sends a ping message and waits for the pong, proving that everything
    /// sent before it has been handled.
    pub async fn roundtrip(&mut self) {
        self.send_json(json!({"type": "ping"})).await;
        loop {
            if self.next_text().await == r#"{"type":"pong"}"# {
                return;
            }
        }
    }
}

pub fn user_payload(n: u64) -> Value {
    json!({"user_id": n, "telegram_id": 1000 + n, "username": format!("u{n}"),
        "first_name": "Иван 🚀", "last_name": null, "referral_code": "ref", "referred_by_id": null})
}

pub fn ticket_payload(n: u64) -> Value {
    json!({"ticket_id": n, "user_id": 1, "title": "help", "status": "open",
        "priority": "normal", "has_media": false})
}
