//! outbox-relay: the bot's side of "no event is lost between the commit and
//! NATS". The bot writes each event into `event_outbox` in the transaction
//! that makes the change (the Python package `bedolaga_events` does it);
//! this service publishes committed rows to JetStream in id order, each
//! with its envelope id as `Nats-Msg-Id`, and deletes them only once
//! JetStream has stored them (see [`relay`] for the exact protocol). It
//! wakes on `LISTEN event_outbox` and polls as a fallback; any number of
//! replicas may run against one outbox (`FOR UPDATE SKIP LOCKED`).

pub mod config;
pub mod metrics;
pub mod relay;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::context::ContextBuilder;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use proto_events::nats::FirstConnect;
use storage::{DbPool, PoolConfig};
use telemetry::ops::{Ops, Readiness};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use config::{Cli, Command, Config};
pub use metrics::Metrics;
pub use relay::{MIGRATION_SQL, Relay};

/// Creates `event_outbox` and its trigger if missing, and upgrades an
/// outbox of an earlier version (an `envelope jsonb` column becomes `json`,
/// which keeps the text the bot wrote); idempotent.
pub async fn migrate(database_url: &str) -> anyhow::Result<()> {
    let mut conn = AsyncPgConnection::establish(database_url)
        .await
        .with_context(|| {
            format!(
                "cannot connect to {}",
                proto_events::redact_url(database_url)
            )
        })?;
    conn.batch_execute(MIGRATION_SQL)
        .await
        .context("the outbox migration failed")?;
    tracing::info!("event_outbox is in place");
    Ok(())
}

/// A built relay: listener bound, connections opening in the background.
pub struct Application {
    config: Config,
    addr: SocketAddr,
    server: actix_web::dev::Server,
    client: async_nats::Client,
    relay: Arc<Relay>,
}

impl Application {
    /// Validates the config, binds the ops listener and connects. NATS and
    /// PostgreSQL may be down: both are retried in the background.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        if config.auto_migrate {
            migrate(config.database.url()).await?;
        }
        let ns = config.nats.namespace()?;
        let metrics = Metrics::default();
        let pool = storage::build_pool(
            config.database.url(),
            &PoolConfig {
                // No `SELECT 1` per checkout: one round trip less per batch;
                // a dead connection fails its batch, which is retried.
                fast_recycle: true,
                ..config.database.pool_config()
            },
        )?;
        let client = config
            .nats
            .connect("outbox-relay", FirstConnect::RetryInBackground)
            .await?;
        let js = ContextBuilder::new()
            .timeout(config.publish_timeout)
            .build(client.clone());
        let relay = Arc::new(Relay {
            pool: pool.clone(),
            js,
            ns,
            batch_size: config.batch_size,
            publish_timeout: config.publish_timeout,
            metrics: metrics.clone(),
            stream_ready: AtomicBool::new(false),
        });
        let ops = Ops {
            readiness: readiness(&client, &pool, &relay),
            metrics: metrics.registry.clone(),
        };
        let (server, addr) = telemetry::ops::serve_ops(config.bind, ops)?;
        Ok(Self {
            config,
            addr,
            server,
            client,
            relay,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The relay itself (tests drive batches and read metrics through it).
    pub fn relay(&self) -> Arc<Relay> {
        self.relay.clone()
    }

    /// Runs until `shutdown`; then finishes the batch in progress (its acks
    /// are awaited and it is committed or rolled back), and returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            config,
            addr,
            server,
            client,
            relay,
        } = self;
        let server_handle = server.handle();
        let server_task = tokio::spawn(server);
        let background = CancellationToken::new();
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(relay::listen(
            config.database.url().to_owned(),
            wake.clone(),
            relay.metrics.clone(),
            background.clone(),
        ));
        let stats = tokio::spawn(relay::run_stats(
            relay.clone(),
            config.stats_interval,
            background.clone(),
        ));
        tracing::info!(addr = %addr, "outbox-relay started");
        relay::run(
            relay.clone(),
            client.clone(),
            wake,
            config.poll_interval,
            shutdown,
        )
        .await;
        tracing::info!("shutting down: the batch in progress is finished");
        background.cancel();
        for task in [listener, stats] {
            let mut task = task;
            if tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        server_handle.stop(true).await;
        let _ = server_task.await;
        tracing::info!("outbox-relay stopped");
        Ok(())
    }
}

fn readiness(client: &async_nats::Client, pool: &DbPool, relay: &Arc<Relay>) -> Readiness {
    let relay = relay.clone();
    Readiness::new()
        .probe("nats", proto_events::nats::round_trip_probe(client))
        .probe("database", storage::ping_probe(pool))
        .state("stream", move || {
            if relay.stream_ready.load(Ordering::Acquire) {
                Ok(())
            } else {
                Err("events stream not confirmed yet".to_owned())
            }
        })
}
