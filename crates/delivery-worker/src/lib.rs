//! delivery-worker: consumes `events.>` through one durable pull consumer
//! shared by every replica, signs and POSTs each event's payload to the
//! matching webhooks, records every attempt, retries on a schedule, and
//! disables webhooks that are gone or have failed for too long.
//!
//! Pieces: [`cache`] (active webhooks by type, reloaded on registry change
//! notices), [`consumer`] (JetStream, dead letters, acks), [`deliver`] (one
//! attempt through `webhook-client`), [`recorder`] (batched row writes),
//! [`retries`] (the durable retry queue), [`policy`] (the schedule),
//! [`jobs`] (recover, replay and bulk retry jobs).

pub mod cache;
pub mod config;
pub mod consumer;
pub mod deliver;
pub mod jobs;
pub mod metrics;
pub mod operator;
pub mod ordered;
pub mod policy;
pub mod recorder;
pub mod retries;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use async_nats::connection::State;
use proto_events::nats::FirstConnect;
use proto_events::{ChangeOp, Namespace, WebhookChange};
use storage::DbPool;
use telemetry::ops::{Ops, Readiness};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use webhook_client::{SenderConfig, WebhookSender};

pub use config::Config;

use crate::cache::{Gates, WebhookCache};
use crate::consumer::ConsumerCtx;
use crate::deliver::Deliverer;
use crate::metrics::Metrics;
use crate::policy::RetryPolicy;
use crate::recorder::{Recorder, RecorderConfig};
use crate::retries::PollerConfig;

/// A built worker: listener bound, connections opening in the background.
pub struct Application {
    config: Config,
    addr: SocketAddr,
    server: actix_web::dev::Server,
    ns: Namespace,
    pool: DbPool,
    client: async_nats::Client,
    cache: WebhookCache,
    deliverer: Arc<Deliverer>,
    operator: operator::OperatorEvents,
    recorder_task: tokio::task::JoinHandle<()>,
    consumer_ready: Arc<AtomicBool>,
    metrics: Metrics,
}

impl Application {
    /// Validates the config, binds the ops listener and prepares every part.
    /// NATS and Postgres may be down: both are retried in the background.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let ns = config.nats.namespace()?;
        let schedule = config.parsed_schedule()?;
        let metrics = Metrics::new();
        // "Fast" recycling: a checked-out connection is not pinged first (one
        // round trip less per recorder batch); a dead one fails the batch's
        // first statement, and the recorder writes the batch again.
        let pool = storage::build_pool(
            config.database.url(),
            &storage::PoolConfig {
                fast_recycle: true,
                ..config.database.pool_config()
            },
        )?;
        let client = config
            .nats
            .connect("delivery-worker", FirstConnect::RetryInBackground)
            .await?;

        let keys = config.secrets.keyring()?;
        let sender = WebhookSender::new(SenderConfig {
            connect_timeout: config.connect_timeout,
            total_timeout: config.total_timeout,
            allow_private_targets: config.allow_private_targets,
            pool_idle_per_host: config.max_per_webhook.max(8),
            proxy: config.http_proxy.clone(),
            ..SenderConfig::default()
        })?;
        if let Some(proxy) = &config.http_proxy {
            tracing::info!(%proxy, "deliveries go through an HTTP proxy");
        }
        let cache = WebhookCache::new();
        let operator = operator::OperatorEvents::new(
            async_nats::jetstream::new(client.clone()),
            ns.clone(),
            metrics.clone(),
        );
        // A webhook disabled, or whose circuit moved, is announced to every
        // replica (each reloads its cache) and to the operator.
        let on_moved: recorder::MovedHook = {
            let client = client.clone();
            let subject = ns.webhooks_changed_subject();
            let cache = cache.clone();
            let operator = operator.clone();
            Arc::new(move |moved: &[storage::attempts::Moved]| {
                operator.moved(moved);
                let changed: std::collections::BTreeSet<i32> = moved
                    .iter()
                    .filter(|m| {
                        !matches!(
                            m.change,
                            storage::attempts::Change::Failing { .. }
                                | storage::attempts::Change::Recovered { .. }
                        )
                    })
                    .map(|m| m.webhook_id)
                    .collect();
                if changed.is_empty() {
                    return;
                }
                cache.request_reload();
                for id in changed {
                    let body = WebhookChange::new(id, ChangeOp::Updated).to_payload();
                    let (client, subject) = (client.clone(), subject.clone());
                    tokio::spawn(async move {
                        let _ = client.publish(subject, body).await;
                    });
                }
            })
        };
        let (recorder, recorder_task) = Recorder::start(
            pool.clone(),
            RecorderConfig {
                max_rows: config.record_batch,
                linger: config.record_linger,
                health: storage::attempts::HealthSettings {
                    disable_after: config.disable_after,
                    circuit: config.circuit(),
                },
                concurrency: config.record_flushes,
            },
            metrics.clone(),
            on_moved,
        );
        let deliverer = Arc::new(Deliverer {
            sender,
            gates: Gates::new(config.max_per_webhook),
            global: Arc::new(Semaphore::new(config.max_in_flight)),
            policy: RetryPolicy::new(schedule),
            queue_wait: config.queue_wait,
            metrics: metrics.clone(),
            recorder,
            keys: keys.clone(),
            pool: pool.clone(),
            cache: cache.clone(),
            circuit: config.circuit(),
            probe_lease: config.total_timeout + Duration::from_secs(30),
            hints: Default::default(),
        });

        let consumer_ready = Arc::new(AtomicBool::new(false));
        let readiness = readiness(&client, &pool, &consumer_ready, &cache);
        let ops = Ops {
            readiness,
            metrics: metrics.registry.clone(),
        };
        let (server, addr) = telemetry::ops::serve_ops(config.bind, ops)?;
        Ok(Self {
            config,
            addr,
            server,
            ns,
            pool,
            client,
            cache,
            deliverer,
            operator,
            recorder_task,
            consumer_ready,
            metrics,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Runs until `shutdown`; then stops pulling, lets in-flight work finish
    /// for up to the shutdown grace, hands the rest back, flushes the
    /// recorder, and returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            config,
            addr,
            server,
            ns,
            pool,
            client,
            cache,
            deliverer,
            operator,
            recorder_task,
            consumer_ready,
            metrics,
        } = self;
        let server_handle = server.handle();
        let server_task = tokio::spawn(server);
        let background = CancellationToken::new();
        let tracker = TaskTracker::new();
        let hard_stop = CancellationToken::new();
        let js = async_nats::jetstream::new(client.clone());

        let refresher = tokio::spawn(cache.clone().run_refresher(
            pool.clone(),
            deliverer.keys.clone(),
            client.clone(),
            ns.clone(),
            config.cache_refresh,
            metrics.clone(),
            background.clone(),
        ));
        let stats = tokio::spawn(retries::run_stats(
            pool.clone(),
            Some((js.clone(), ns.stream().to_owned(), config.consumer.clone())),
            metrics.clone(),
            Duration::from_secs(5),
            background.clone(),
        ));

        let pauses = Arc::new(consumer::PauseWatch::default());
        let pause_watch = tokio::spawn(pauses.clone().run(background.clone()));
        let job_ctx = Arc::new(jobs::JobCtx {
            pool: pool.clone(),
            js: js.clone(),
            ns: ns.clone(),
            deliverer: deliverer.clone(),
            metrics: metrics.clone(),
            cfg: jobs::JobsConfig {
                poll: config.job_poll,
                lease: config.job_lease,
                max_jobs: config.max_jobs,
                concurrency: config.job_concurrency,
                owner: replica_name(),
            },
            operator,
        });
        let ctx = Arc::new(ConsumerCtx {
            js,
            ns,
            pool: pool.clone(),
            cache: cache.clone(),
            deliverer: deliverer.clone(),
            name: config.consumer.clone(),
            batch_size: config.batch_size,
            ack_wait: config.ack_wait,
            max_ack_pending: config.max_ack_pending,
            messages: Arc::new(Semaphore::new(config.max_messages)),
            ready: consumer_ready,
            tracker: tracker.clone(),
            hard_stop: hard_stop.clone(),
            reconnects: consumer::Reconnects::default(),
            pauses: pauses.clone(),
        });
        let ordered_ctx = Arc::new(ordered::OrderedCtx {
            js: ctx.js.clone(),
            ns: ctx.ns.clone(),
            pool: pool.clone(),
            cache: cache.clone(),
            deliverer: deliverer.clone(),
            name: config.consumer.clone(),
            ack_wait: config.ack_wait,
        });
        let intake = {
            let (ctx, shutdown, pool, deliverer, tracker, hard_stop) = (
                ctx.clone(),
                shutdown.clone(),
                pool.clone(),
                deliverer.clone(),
                tracker.clone(),
                hard_stop.clone(),
            );
            let lease = config.total_timeout + config.queue_wait + Duration::from_secs(60);
            let poller_cfg = PollerConfig {
                every: config.retry_poll,
                batch: config.retry_batch,
                lease,
            };
            tokio::spawn(async move {
                // Nothing is consumed before the webhooks are known.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = cache.wait_loaded() => {}
                }
                tracing::info!(active_webhooks = cache.len(), "webhook cache ready");
                let poller = retries::run_poller(
                    pool,
                    deliverer,
                    poller_cfg,
                    tracker,
                    shutdown.clone(),
                    hard_stop,
                );
                tokio::join!(
                    consumer::run(ctx, shutdown.clone()),
                    poller,
                    jobs::run(job_ctx, shutdown.clone()),
                    ordered::run(ordered_ctx, shutdown)
                );
            })
        };

        tracing::info!(addr = %addr, "delivery-worker started");
        shutdown.cancelled().await;
        tracing::info!("shutting down: no new work is taken");
        let _ = intake.await;
        drop(ctx);
        tracker.close();
        if tokio::time::timeout(config.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace over; handing unfinished events back to JetStream");
            hard_stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
        }
        drop(deliverer);
        if tokio::time::timeout(Duration::from_secs(10), recorder_task)
            .await
            .is_err()
        {
            tracing::warn!("the recorder did not finish in time");
        }
        background.cancel();
        // Both may be inside a NATS request that only ends with its timeout
        // (an unreachable server): they get a moment, then they are dropped.
        tokio::join!(
            stop_within(refresher, BACKGROUND_STOP),
            stop_within(stats, BACKGROUND_STOP),
            stop_within(pause_watch, BACKGROUND_STOP)
        );
        // A flush waits for a connection, which may never come.
        if client.connection_state() != State::Connected
            || tokio::time::timeout(BACKGROUND_STOP, client.flush())
                .await
                .is_err()
        {
            tracing::warn!("NATS unreachable at shutdown; unsent notices dropped");
        }
        server_handle.stop(true).await;
        let _ = server_task.await;
        tracing::info!("delivery-worker stopped");
        Ok(())
    }
}

/// This replica's name in job leases: host and a random suffix.
fn replica_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".to_owned());
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(40)
        .collect();
    format!("{host}-{:08x}", rand::random::<u32>())
}

/// How long background loops get to end after the shutdown signal.
const BACKGROUND_STOP: Duration = Duration::from_secs(2);

/// Waits for `task` up to `limit`, then aborts it.
async fn stop_within(mut task: tokio::task::JoinHandle<()>, limit: Duration) {
    if tokio::time::timeout(limit, &mut task).await.is_err() {
        task.abort();
        let _ = task.await;
    }
}

fn readiness(
    client: &async_nats::Client,
    pool: &DbPool,
    consumer_ready: &Arc<AtomicBool>,
    cache: &WebhookCache,
) -> Readiness {
    let cache = cache.clone();
    Readiness::new()
        .probe("nats", proto_events::nats::round_trip_probe(client))
        .probe("database", storage::ping_probe(pool))
        .flag("consumer", consumer_ready.clone(), "not consuming yet")
        .state("webhooks", move || {
            if cache.is_loaded() {
                Ok(())
            } else {
                Err("webhooks not loaded yet".to_owned())
            }
        })
}
