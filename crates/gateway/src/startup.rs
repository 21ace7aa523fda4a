//! Building and running the gateway: the HTTP server, the fan-out consumer,
//! the token re-check loop and shutdown.

use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_http::HttpService;
use actix_service::{
    IntoServiceFactory as _, Service as _, ServiceFactory as _, ServiceFactoryExt as _, fn_factory,
    fn_service, map_config,
};
use actix_web::dev::AppConfig;
use actix_web::{App, HttpResponse, web};
use anyhow::Context as _;
use async_nats::jetstream;
use proto_events::nats::FirstConnect;
use secrecy::ExposeSecret as _;
use storage::DbPool;
use storage::tokens::{AuthCacheConfig, TokenAuth, TokenHasher};
use telemetry::ops::{Ops, Readiness};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::hub::{Hub, QueueLimits};
use crate::metrics::Metrics;
use crate::state::{AppState, CatchupLimits, Settings};

/// A built gateway: the listener is bound, nothing runs yet.
pub struct Application {
    addr: SocketAddr,
    server: actix_web::dev::Server,
    state: Arc<AppState>,
    pool: DbPool,
    nats: async_nats::Client,
    max_connections: usize,
    token_recheck: Duration,
    shutdown_grace: Duration,
}

impl Application {
    /// Binds the listener and connects (lazily) to NATS and Postgres; a
    /// broker or database that is down is retried in the background.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        let ns = config.nats.namespace()?;
        let pool = storage::build_pool(config.database.url(), &config.database.pool_config())?;
        let auth = TokenAuth::new(
            pool.clone(),
            TokenHasher::with_algorithm(
                config.token_hash_algorithm,
                Some(config.token_hmac_secret.expose_secret()),
            ),
            AuthCacheConfig::default(),
        );
        let nats = config
            .nats
            .connect("bedolaga-gateway", FirstConnect::RetryInBackground)
            .await?;
        let js = jetstream::new(nats.clone());
        let metrics = Metrics::new();
        let hub = Arc::new(Hub::new(
            QueueLimits {
                messages: config.client_queue_messages,
                bytes: config.client_queue_bytes,
            },
            metrics.clone(),
        ));
        let state = Arc::new(AppState {
            hub,
            auth,
            js,
            ns,
            metrics: metrics.clone(),
            settings: Settings {
                origins: config.origins(),
                ping_interval: config.ping_interval,
                pong_timeout: config.pong_timeout,
                write_timeout: config.write_timeout,
                max_frame_bytes: config.max_frame_bytes,
                max_replay: config.max_replay,
                catchup: CatchupLimits {
                    max_clients: config.max_catchup_clients,
                    max_events: config.catchup_max_events,
                    max_age: config.catchup_max_age,
                },
            },
            connections: Arc::new(Semaphore::new(config.max_connections)),
            catchups: Arc::new(Semaphore::new(config.max_catchup_clients)),
            tracker: TaskTracker::new(),
        });
        let readiness = readiness(&pool, &nats, &state.hub);
        let ops = Ops {
            readiness,
            metrics: metrics.registry.clone(),
        };
        let listener = listen(&config.bind)?;
        let addr = listener.local_addr()?;
        let send_buffer = config.socket_send_buffer;
        let user_timeout = config.pong_timeout;
        let factory_state = state.clone();
        // actix-web's routes for plain HTTP; a request that asks for an
        // upgrade gets the connection itself (`ws::upgrade`), so a
        // WebSocket is one task that owns its socket. A connection whose
        // first request is `GET /sse` never reaches actix (`sse::is_sse`):
        // it is served the same way.
        let builder = actix_server::Server::build();
        // On a graceful stop actix-http closes idle keep-alive connections
        // (a scraper's `/metrics`) at once instead of when they time out.
        let shutdown_signal = builder.graceful_shutdown_signal();
        let mut server = builder
            .listen("gateway", listener, move || {
                let signal = shutdown_signal.clone();
                let ops = ops.clone();
                let data = web::Data::from(factory_state.clone());
                let ws_state = factory_state.clone();
                let sse_state = factory_state.clone();
                let app = App::new()
                    .app_data(data)
                    .configure(|cfg| routes(cfg, ops))
                    .into_factory()
                    .map_err(|e: actix_web::Error| e.error_response());
                let http = HttpService::build()
                    .graceful_shutdown_signal(move || {
                        let signal = signal.clone();
                        async move { signal.notified().await }
                    })
                    // One request per connection: a `GET /sse` must arrive
                    // first on its connection to be taken (`sse::is_sse`).
                    // The gateway's other answers are small and rare
                    // (pages, probes, metrics, long-polls).
                    .keep_alive(actix_http::KeepAlive::Disabled)
                    .client_request_timeout(Duration::from_secs(5))
                    .client_disconnect_timeout(Duration::from_secs(1))
                    .on_connect_ext(move |io: &actix_web::rt::net::TcpStream, _| {
                        tune_socket(io, send_buffer, user_timeout)
                    })
                    .upgrade(fn_factory(move || {
                        let state = ws_state.clone();
                        async move {
                            Ok::<_, ()>(fn_service(move |(req, framed)| {
                                crate::ws::upgrade(state.clone(), req, framed)
                            }))
                        }
                    }))
                    .finish(map_config(app, |()| AppConfig::default()))
                    .tcp();
                fn_factory(move || {
                    let http = http.new_service(());
                    let state = sse_state.clone();
                    async move {
                        let http = Rc::new(http.await?);
                        Ok::<_, ()>(fn_service(move |tcp: actix_web::rt::net::TcpStream| {
                            let (http, state) = (http.clone(), state.clone());
                            async move {
                                if crate::sse::is_sse(&tcp).await {
                                    tune_socket(&tcp, send_buffer, user_timeout);
                                    crate::sse::serve(state, tcp).await;
                                    Ok(())
                                } else {
                                    http.call(tcp).await
                                }
                            }
                        }))
                    }
                })
            })?
            .disable_signals()
            .shutdown_timeout(config.shutdown_grace.as_secs().max(1))
            // Our own cap answers with a close code; keep actix's above it.
            .max_concurrent_connections(config.max_connections + 1024);
        if config.workers > 0 {
            server = server.workers(config.workers);
        }
        let server = server.run();
        tracing::info!(%addr, database = %config.database.redacted_url(), nats = %config.nats.redacted_urls(), stream = state.ns.stream(), "gateway listening");
        Ok(Self {
            addr,
            server,
            state,
            pool,
            nats,
            max_connections: config.max_connections,
            token_recheck: config.token_recheck,
            shutdown_grace: config.shutdown_grace,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown`, then closes every client with 1001 and
    /// stops.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            server,
            state,
            pool,
            nats,
            max_connections,
            token_recheck,
            shutdown_grace,
            ..
        } = self;
        let handle = server.handle();
        let server_task = tokio::spawn(server);
        let stop_background = CancellationToken::new();
        let fanout = tokio::spawn(crate::fanout::run(
            state.js.clone(),
            state.ns.clone(),
            state.hub.clone(),
            state.metrics.clone(),
            stop_background.clone(),
        ));
        let recheck = tokio::spawn(recheck_tokens(
            state.hub.clone(),
            pool.clone(),
            token_recheck,
            stop_background.clone(),
        ));
        let flusher = tokio::spawn(
            state
                .auth
                .clone()
                .run_last_used_flusher(stop_background.clone().cancelled_owned()),
        );

        shutdown.cancelled().await;
        tracing::info!(
            clients = state.open_connections(max_connections),
            "shutting down: closing every client with 1001"
        );
        state.hub.close_all();
        state.tracker.close();
        if tokio::time::timeout(shutdown_grace, state.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                clients = state.open_connections(max_connections),
                "shutdown grace over; dropping the connections left"
            );
        }
        stop_background.cancel();
        handle.stop(true).await;
        let _ = server_task.await;
        let _ = tokio::join!(fanout, recheck, flusher);
        // Nothing is in flight to a server that is not there; and a drain
        // with the server away would wait for it.
        if nats.connection_state() == async_nats::connection::State::Connected {
            let _ = tokio::time::timeout(Duration::from_secs(2), nats.drain()).await;
        }
        tracing::info!("gateway stopped");
        Ok(())
    }
}

/// A listener with a backlog for bursts of thousands of connections.
fn listen(bind: &str) -> anyhow::Result<TcpListener> {
    let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(bind)
        .with_context(|| format!("cannot resolve {bind}"))?
        .next()
        .with_context(|| format!("cannot resolve {bind}"))?;
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())
        .and_then(|()| sock.listen(4096))
        .with_context(|| format!("cannot listen on {bind}"))?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

/// Sets per-socket options on every accepted connection.
fn tune_socket(tcp: &actix_web::rt::net::TcpStream, send_buffer: usize, user_timeout: Duration) {
    let _ = tcp.set_nodelay(true);
    let sock = socket2::SockRef::from(tcp);
    if send_buffer > 0 {
        let _ = sock.set_send_buffer_size(send_buffer);
    }
    // A peer that stops reading (zero window) or vanishes is dropped by the
    // kernel after this long, so a stalled socket cannot linger forever.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = sock.set_tcp_user_timeout(Some(user_timeout));
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = user_timeout;
}

/// The route table.
pub fn routes(cfg: &mut web::ServiceConfig, ops: Ops) {
    telemetry::ops::configure(cfg, ops);
    cfg.route("/", web::get().to(console))
        .route("/console.js", web::get().to(console_js))
        .route("/live.js", web::get().to(live_js))
        .route("/favicon.ico", web::get().to(no_icon))
        .route("/ws", web::get().to(not_an_upgrade))
        .route("/sse", web::get().to(sse_again))
        .route("/poll", web::get().to(crate::poll::poll));
}

/// `GET /sse` that reached actix (its first bytes came too slowly to be
/// recognised): asked again on a new connection (actix keeps none open),
/// which the SSE server takes (`sse::is_sse`). Browsers and `curl -L`
/// follow this.
async fn sse_again(req: actix_web::HttpRequest) -> HttpResponse {
    let target = match req.uri().query() {
        Some(q) => format!("/sse?{q}"),
        None => "/sse".to_owned(),
    };
    HttpResponse::TemporaryRedirect()
        .insert_header(("Location", target))
        .insert_header(("Connection", "close"))
        .insert_header(("Cache-Control", "no-store"))
        .finish()
}

/// `GET /ws` without the WebSocket upgrade headers.
async fn not_an_upgrade() -> HttpResponse {
    HttpResponse::BadRequest().json(serde_json::json!({"detail": "WebSocket upgrade required"}))
}

async fn console() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .insert_header((
            "Content-Security-Policy",
            "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src 'self'; connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .body(crate::CONSOLE_HTML)
}

fn script(body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(body)
}

/// The console has no icon: an empty answer, so that a browser's own
/// request for one is neither a 404 nor blocked by the page's policy.
async fn no_icon() -> HttpResponse {
    HttpResponse::NoContent()
        .insert_header(("Cache-Control", "max-age=86400"))
        .finish()
}

async fn console_js() -> HttpResponse {
    script(crate::CONSOLE_JS)
}

async fn live_js() -> HttpResponse {
    script(proto_events::LIVE_JS)
}

fn readiness(pool: &DbPool, nats: &async_nats::Client, hub: &Arc<Hub>) -> Readiness {
    let (pool, nats, hub) = (pool.clone(), nats.clone(), hub.clone());
    Readiness::new()
        .probe("postgres", move || {
            let pool = pool.clone();
            async move { storage::ping(&pool).await }
        })
        .probe("nats", move || {
            let nats = nats.clone();
            async move { proto_events::nats::round_trip(&nats).await }
        })
        .state("fanout", move || {
            if hub.is_live() {
                Ok(())
            } else {
                Err("the events consumer is not running".to_owned())
            }
        })
}

/// Every `interval`, asks the database which token ids of open
/// connections are still usable (one query) and closes the others with
/// 1008. A database outage closes nothing.
async fn recheck_tokens(hub: Arc<Hub>, pool: DbPool, interval: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ids = hub.token_ids();
        if ids.is_empty() {
            continue;
        }
        let usable = async {
            let mut conn = pool.get().await?;
            storage::tokens::usable_ids(&mut conn, &ids).await
        };
        match tokio::time::timeout(Duration::from_secs(5), usable).await {
            Ok(Ok(usable)) => {
                let closed = hub.close_revoked(&usable);
                if closed > 0 {
                    tracing::info!(
                        closed,
                        "closed connections whose token was revoked or expired"
                    );
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot re-check tokens; keeping connections"),
            Err(_) => tracing::warn!("token re-check timed out; keeping connections"),
        }
    }
}
