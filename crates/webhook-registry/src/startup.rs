//! Building and running the service.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_http::{HttpService, KeepAlive};
use actix_service::{IntoServiceFactory as _, ServiceFactoryExt as _, fn_service, map_config};
use actix_web::dev::{AppConfig, Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::rt::net::TcpStream;
use actix_web::{App, web};
use anyhow::Context;
use proto_events::Namespace;
use proto_events::nats::FirstConnect;
use secrecy::ExposeSecret as _;
use storage::tokens::{AuthCacheConfig, TokenAuth, TokenHasher};
use storage::{DbPool, PoolConfig};
use telemetry::backoff::Backoff;
use telemetry::metrics::MetricsRegistry;
use telemetry::ops::{Ops, Readiness};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use webhook_client::{SenderConfig, WebhookSender};

use crate::config::Config;
use crate::extract::BodyRules;
use crate::head_guard::HeadGuard;
use crate::metrics::{HttpMetrics, track};
use crate::notify::{self, Notifier, Op};
use crate::routes::{self, openapi::OpenApiJson};
use crate::state::AppState;

/// Name of the token ensured from `WEB_API_DEFAULT_TOKEN`.
pub const DEFAULT_TOKEN_NAME: &str = "default";

/// A built, bound, not yet running registry.
pub struct Application {
    addr: SocketAddr,
    server: Server,
    handle: ServerHandle,
    config: Config,
    pool: DbPool,
    auth: TokenAuth,
    nats: async_nats::Client,
    ns: Namespace,
    ready: Arc<AtomicBool>,
    notices: mpsc::Receiver<(i32, Op)>,
    keys: storage::secrets::Keyring,
    stopping: CancellationToken,
}

impl Application {
    /// Connects lazily (Postgres and NATS may be down: both are retried in
    /// the background) and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.nats.validate()?;
        let ns = config.nats.namespace()?;
        let pool = build_pool(&config)?;
        let hasher = config.token_hasher();
        let keys = config.secrets.keyring()?;
        let auth = TokenAuth::new(pool.clone(), hasher, AuthCacheConfig::default());
        let sender = WebhookSender::new(SenderConfig {
            allow_private_targets: config.allow_private_targets,
            ..SenderConfig::default()
        })?;
        let nats = config
            .nats
            .connect("webhook-registry", FirstConnect::RetryInBackground)
            .await?;
        let (notifier, notices) = Notifier::new();
        let ready = Arc::new(AtomicBool::new(false));
        let stopping = CancellationToken::new();

        let metrics = Arc::new(MetricsRegistry::new());
        let http_metrics = HttpMetrics::register(&metrics);
        let ops = Ops {
            readiness: readiness(
                pool.clone(),
                nats.clone(),
                ready.clone(),
                if config.migrate_at_start() {
                    "not applied yet (waiting for the database)"
                } else {
                    "schema not at the latest migration yet (waiting for `webhook-registry migrate`)"
                },
            ),
            metrics,
        };
        let state = web::Data::new(AppState {
            pool: pool.clone(),
            auth: auth.clone(),
            sender,
            keys: keys.clone(),
            notifier,
            ready: ready.clone(),
            rotation_grace: config.secret_rotation_grace,
            job_default_rate_per_s: config.job_default_rate_per_s,
            trust_forwarded_for: config.trust_forwarded_for,
            js: async_nats::jetstream::new(nats.clone()),
            ns: ns.clone(),
            stopping: stopping.clone(),
        });
        let rules = web::Data::new(BodyRules {
            limit: config.max_body_bytes,
            allow_private_targets: config.allow_private_targets,
        });
        let openapi = web::Data::new(OpenApiJson::render()?);
        let portal = web::Data::new(routes::portal::Portal::new(&config)?);
        let http_metrics = web::Data::new(http_metrics);

        let listener = TcpListener::bind(config.bind)
            .with_context(|| format!("cannot listen on {}", config.bind))?;
        let addr = listener.local_addr()?;
        let builder = actix_server::Server::build();
        let shutdown_signal = builder.graceful_shutdown_signal();
        // actix-web's `HttpServer`, built by hand so that each connection
        // is read through `HeadGuard` (JSON answers for request heads
        // actix-http would refuse with an empty body). The timeouts are
        // `HttpServer`'s defaults.
        let mut builder = builder
            .listen("webhook-registry", listener, move || {
                let app = App::new()
                    .app_data(state.clone())
                    .app_data(rules.clone())
                    .app_data(openapi.clone())
                    .app_data(portal.clone())
                    .app_data(http_metrics.clone())
                    .wrap(from_fn(track))
                    .configure(|cfg| telemetry::ops::configure(cfg, ops.clone()))
                    .configure(routes::configure)
                    .default_service(web::to(routes::default_not_found))
                    .into_factory()
                    .map_err(|e: actix_web::Error| e.error_response());
                let signal = shutdown_signal.clone();
                fn_service(|io: TcpStream| {
                    let peer = io.peer_addr().ok();
                    futures::future::ready(Ok((HeadGuard::new(io), peer)))
                })
                .and_then(
                    HttpService::build()
                        .keep_alive(KeepAlive::default())
                        .client_request_timeout(Duration::from_secs(5))
                        .client_disconnect_timeout(Duration::from_secs(1))
                        .local_addr(addr)
                        .graceful_shutdown_signal(move || {
                            let signal = signal.clone();
                            async move { signal.notified().await }
                        })
                        .h1(map_config(app, |()| AppConfig::default())),
                )
            })?
            .disable_signals()
            .shutdown_timeout(15);
        if config.workers > 0 {
            builder = builder.workers(config.workers);
        }
        let server = builder.run();
        let handle = server.handle();
        tracing::info!(%addr, database = %config.database.redacted_url(),
            nats = %config.nats.redacted_urls(), "webhook-registry listening");
        Ok(Self {
            addr,
            server,
            handle,
            config,
            pool,
            auth,
            nats,
            ns,
            ready,
            notices,
            keys,
            stopping,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs until `shutdown` is cancelled (or the server stops), then stops
    /// taking requests, finishes those in flight and flushes token usage.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            server,
            handle,
            config,
            pool,
            auth,
            nats,
            ns,
            ready,
            notices,
            keys,
            stopping,
            ..
        } = self;
        let background = shutdown.child_token();
        let maintenance = tokio::spawn(maintain_history(
            pool.clone(),
            config.history_policy(),
            config.maintenance_every,
            ready.clone(),
            background.clone(),
        ));
        let bot_sync = config.bot_database_url().map(|url| {
            tokio::spawn(crate::bot_sync::run(
                pool.clone(),
                url.to_owned(),
                config.bot_token_sync_interval,
                ready.clone(),
                background.clone(),
            ))
        });
        let (fatal_tx, mut fatal) = tokio::sync::oneshot::channel();
        let bootstrap = tokio::spawn(bootstrap(
            config.clone(),
            pool,
            auth.hasher().clone(),
            keys,
            ready,
            fatal_tx,
            background.clone(),
        ));
        let streams = tokio::spawn(ensure_streams(nats.clone(), ns.clone(), background.clone()));
        let notifier = tokio::spawn(notify::run(
            nats.clone(),
            ns.webhooks_changed_subject(),
            notices,
            background.clone(),
        ));
        let flusher_stop = background.clone();
        let flusher = tokio::spawn(
            auth.clone()
                .run_last_used_flusher(async move { flusher_stop.cancelled().await }),
        );

        let mut server = tokio::spawn(server);
        let result = tokio::select! {
            res = &mut server => res.map_err(anyhow::Error::from).and_then(|r| r.map_err(Into::into)),
            () = shutdown.cancelled() => {
                tracing::info!("stopping: finishing requests in flight");
                stopping.cancel();
                handle.stop(true).await;
                server.await.map_err(anyhow::Error::from).and_then(|r| r.map_err(Into::into))
            }
            Ok(e) = &mut fatal => {
                tracing::error!(error = %e, "cannot start");
                handle.stop(true).await;
                let _ = server.await;
                Err(e)
            }
        };
        background.cancel();
        let _ = bootstrap.await;
        let _ = maintenance.await;
        let _ = streams.await;
        let _ = notifier.await;
        let _ = flusher.await;
        if let Some(sync) = bot_sync {
            let _ = sync.await;
        }
        // Connections opened on the HTTP workers' runtimes die with them, so
        // the flusher's last write can hit one; the pool then drops it and a
        // retry opens a fresh connection here.
        for _ in 0..3 {
            match auth.flush_last_used().await {
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "retrying the last token-usage flush");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        tracing::info!("webhook-registry stopped");
        result
    }
}

/// The pool with "fast" recycling: a checked-out connection is not pinged
/// first (the default costs one extra round trip per request).
fn build_pool(config: &Config) -> Result<DbPool, storage::StorageError> {
    storage::build_pool(
        config.database.url(),
        &PoolConfig {
            max_size: config.database.database_pool_size.max(1),
            fast_recycle: true,
            ..config.database.pool_config()
        },
    )
}

fn readiness(
    pool: DbPool,
    nats: async_nats::Client,
    ready: Arc<AtomicBool>,
    not_ready: &'static str,
) -> Readiness {
    Readiness::new()
        .probe("database", move || {
            let pool = pool.clone();
            async move { storage::ping(&pool).await }
        })
        .flag("migrations", ready, not_ready)
        .probe("nats", move || {
            let nats = nats.clone();
            async move { proto_events::nats::round_trip(&nats).await }
        })
}

/// Applies migrations (unless turned off) and ensures the default token,
/// retrying with backoff until the database answers; then opens the API.
/// A database that is the bot's own (docs/architecture.md, "Moving over from
/// the bot") is not
/// retried: the error goes to `fatal` and the registry stops.
async fn bootstrap(
    config: Config,
    pool: DbPool,
    hasher: TokenHasher,
    keys: storage::secrets::Keyring,
    ready: Arc<AtomicBool>,
    fatal: tokio::sync::oneshot::Sender<anyhow::Error>,
    stop: CancellationToken,
) {
    let mut backoff = retry_backoff();
    loop {
        let delay = backoff.next_delay();
        match bootstrap_once(&config, &pool, &hasher, &keys).await {
            Ok(()) => {
                ready.store(true, Ordering::Release);
                tracing::info!("database ready; API open");
                return;
            }
            Err(e @ storage::StorageError::ForeignDatabase(_)) => {
                let _ = fatal.send(anyhow::Error::new(e).context(format!(
                    "refusing to migrate {}",
                    config.database.redacted_url()
                )));
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?delay,
                    "database not ready; /webhooks answers 503 until it is");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// The waits of the start-up retries (database, streams).
fn retry_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(500), Duration::from_secs(15))
}

async fn bootstrap_once(
    config: &Config,
    pool: &DbPool,
    hasher: &TokenHasher,
    keys: &storage::secrets::Keyring,
) -> Result<(), storage::StorageError> {
    if config.migrate_at_start() {
        let applied = storage::run_migrations(config.database.url()).await?;
        if applied.is_empty() {
            tracing::info!("migrations: up to date");
        } else {
            tracing::info!(?applied, "migrations applied");
        }
    } else {
        // Someone else migrates (`webhook-registry migrate`, e.g. a
        // Kubernetes Job): the API opens only once the schema is the one
        // this binary expects.
        let pending = storage::pending_migrations(config.database.url()).await?;
        if !pending.is_empty() {
            return Err(storage::StorageError::Migration(format!(
                "{} migration(s) not applied yet (first: {}); waiting for `webhook-registry migrate`",
                pending.len(),
                pending[0]
            )));
        }
    }
    if let Some(token) = config
        .default_token
        .as_ref()
        .map(|t| t.expose_secret())
        .filter(|t| !t.is_empty())
    {
        let mut conn = pool.get().await?;
        let row =
            storage::tokens::ensure_token(&mut conn, hasher, token, DEFAULT_TOKEN_NAME).await?;
        tracing::info!(token_id = row.id, "WEB_API_DEFAULT_TOKEN ensured active");
    }
    // Secrets written before sealing (or under an older key) are sealed
    // with the newest key, so a dump never holds one in clear.
    let mut conn = pool.get().await?;
    let sealed = storage::webhooks::seal_all(&mut conn, keys).await?;
    if sealed.values > 0 {
        tracing::info!(
            webhooks = sealed.changed,
            values = sealed.values,
            key = keys.newest_id(),
            "stored secrets sealed with the newest key"
        );
    }
    Ok(())
}

/// Creates delivery-history partitions ahead and applies the retention,
/// at start (once migrations are applied) and then every `every`. Replicas
/// take turns through an advisory lock.
async fn maintain_history(
    pool: DbPool,
    policy: storage::history::HistoryPolicy,
    every: Duration,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    loop {
        let wait = if !ready.load(Ordering::Acquire) {
            Duration::from_millis(200)
        } else {
            match maintain_once(&pool, policy).await {
                Ok(()) => every,
                Err(e) => {
                    tracing::warn!(error = %e, "delivery history maintenance failed; retrying in 30s");
                    Duration::from_secs(30).min(every)
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
    }
}

async fn maintain_once(
    pool: &DbPool,
    policy: storage::history::HistoryPolicy,
) -> Result<(), storage::StorageError> {
    let mut conn = pool.get().await?;
    let report = storage::history::maintain(&mut conn, policy, chrono::Utc::now()).await?;
    if report.skipped {
        tracing::debug!("delivery history maintenance runs in another replica");
    }
    if report.created > 0 {
        tracing::info!(
            created = report.created,
            "delivery history partitions created"
        );
    }
    for d in &report.dropped {
        tracing::info!(partition = %d.partition.name, rows = d.rows, bytes = d.bytes,
            moved_pending = d.moved_pending, "delivery history partition dropped (retention)");
    }
    Ok(())
}

/// Creates the JetStream streams (every service does, so no early event is
/// lost: docs/contract.md, "NATS"), retrying until NATS is there.
async fn ensure_streams(nats: async_nats::Client, ns: Namespace, stop: CancellationToken) {
    let js = async_nats::jetstream::new(nats);
    let mut backoff = retry_backoff();
    loop {
        let delay = backoff.next_delay();
        // A request to an unreachable server only ends with its timeout:
        // shutdown does not wait for it.
        let created = tokio::select! {
            created = ns.ensure_streams(&js) => created,
            () = stop.cancelled() => return,
        };
        match created {
            Ok(_) => {
                tracing::info!(stream = ns.stream(), "JetStream streams ready");
                return;
            }
            Err(e) => tracing::warn!(error = %e, retry_in = ?delay,
                "cannot create JetStream streams yet (NATS down?)"),
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return,
        }
    }
}
