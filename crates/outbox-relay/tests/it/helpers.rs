//! A fresh outbox database and a unique NATS namespace per test, and the
//! relay started on them on port 0.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use outbox_relay::{Application, Config, Relay};
use proto_events::Namespace;
use std::sync::Arc;
use storage::testing::TestDb;
use tokio_util::sync::CancellationToken;

pub use test_support::nats_url;

/// The bot's database with the outbox migration applied, and a namespace.
pub struct TestOutbox {
    pub db: TestDb,
    pub ns: Namespace,
    pub js: jetstream::Context,
}

impl TestOutbox {
    pub async fn new() -> Self {
        if std::env::var("TEST_LOG").is_ok() {
            telemetry::init_logging(&telemetry::LogArgs {
                log_format: telemetry::LogFormat::Text,
                log_filter: "info,outbox_relay=debug".into(),
                otel_endpoint: None,
                otel_service_name: None,
            });
        }
        let db = TestDb::empty().await.expect("test database");
        outbox_relay::migrate(&db.url).await.expect("migration");
        let ns = Namespace::unique();
        let client = async_nats::connect(nats_url()).await.expect("NATS");
        let js = jetstream::new(client);
        Self { db, ns, js }
    }

    pub fn config(&self) -> Config {
        let mut c = Config::for_database(&self.db.url);
        c.nats.nats_url = nats_url();
        c.nats.nats_prefix = self.ns.prefix().to_owned();
        c.bind = "127.0.0.1:0".parse().unwrap();
        c.stats_interval = Duration::from_millis(100);
        c
    }

    pub async fn conn(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.db.url).await.unwrap()
    }

    /// Inserts `n` `user.created` events with `user_id` from `first`, in one
    /// transaction.
    pub async fn insert(&self, first: i64, n: i64) {
        let mut conn = self.conn().await;
        conn.batch_execute(&format!(
            "INSERT INTO event_outbox (envelope) \
             SELECT jsonb_build_object('id', gen_random_uuid()::text, 'type', 'user.created', \
               'timestamp', '2026-01-01T00:00:00Z', \
               'payload', jsonb_build_object('user_id', g, 'first_name', 'Иван 👋')) \
             FROM generate_series({first}, {}) g",
            first + n - 1
        ))
        .await
        .unwrap();
    }

    pub async fn outbox_len(&self) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = self.conn().await;
        let n: N = diesel::sql_query("SELECT count(*) AS n FROM event_outbox")
            .get_result(&mut conn)
            .await
            .unwrap();
        n.n
    }

    /// Messages in the events stream (0 while it does not exist).
    pub async fn stream_len(&self) -> u64 {
        match self.js.get_stream(self.ns.stream()).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        }
    }

    pub async fn wait_stream_len(&self, want: u64, within: Duration) -> u64 {
        let start = Instant::now();
        loop {
            let n = self.stream_len().await;
            if n >= want || start.elapsed() > within {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every stored message as (sequence, Nats-Msg-Id, envelope).
    pub async fn stored(&self) -> Vec<(u64, String, serde_json::Value)> {
        let stream = self.js.get_stream(self.ns.stream()).await.unwrap();
        let n = self.stream_len().await;
        let mut out = Vec::new();
        for seq in 1..=n {
            let m = stream.get_raw_message(seq).await.unwrap();
            let id = m
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            out.push((seq, id, serde_json::from_slice(&m.payload).unwrap()));
        }
        out
    }

    pub async fn cleanup(&self) {
        let _ = self.js.delete_stream(self.ns.stream()).await;
        let _ = self.js.delete_stream(self.ns.deadletter_stream()).await;
    }
}

/// A relay running in this process.
pub struct TestRelay {
    pub port: u16,
    pub relay: Arc<Relay>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestRelay {
    pub async fn spawn(config: Config) -> Self {
        let app = Application::build(config).await.expect("relay builds");
        let port = app.port();
        let relay = app.relay();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        Self {
            port,
            relay,
            shutdown,
            task,
        }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://127.0.0.1:{}{path}", self.port))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("relay stops within 10 s")
            .unwrap()
            .unwrap();
    }
}
