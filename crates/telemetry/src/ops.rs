//! `/healthz`, `/readyz` and `/metrics` for actix-web services.
//!
//! `/metrics` also runs the readiness checks and reports them as
//! `service_ready` (1 when `/readyz` would answer 200) and
//! `service_ready_check{check}`, so an alert can tell a running but unready
//! service from one that is down.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::{HttpResponse, web};
use futures::FutureExt;
use futures::future::{BoxFuture, Either};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{Map, Value, json};

use crate::metrics::MetricsRegistry;

/// How long a probe may take before it counts as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

type StateFn = dyn Fn() -> Result<(), String> + Send + Sync;
type ProbeFn = dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync;

/// One readiness check.
#[derive(Clone)]
enum Check {
    /// Looks at state the service keeps anyway (a flag, a connection
    /// state): answered in place, no future, no allocation.
    State(Arc<StateFn>),
    /// A round trip to a dependency, bounded by [`PROBE_TIMEOUT`]. Its
    /// future is boxed inside, once per run of the checks.
    Probe(Arc<ProbeFn>),
}

/// Named dependency checks behind `/readyz`.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Check)>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a check of state the service already keeps; it must not block.
    pub fn state<F>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Result<(), String> + Send + Sync + 'static,
    {
        self.checks.push((name, Check::State(Arc::new(check))));
        self
    }

    /// Adds a check that passes once `flag` is set; `not_yet` is the
    /// report until then.
    pub fn flag(self, name: &'static str, flag: Arc<AtomicBool>, not_yet: &'static str) -> Self {
        self.state(name, move || {
            if flag.load(Ordering::Acquire) {
                Ok(())
            } else {
                Err(not_yet.to_owned())
            }
        })
    }

    /// Adds a round trip to a dependency. An answer later than
    /// [`PROBE_TIMEOUT`] fails the check.
    pub fn probe<F, Fut, E>(mut self, name: &'static str, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Display,
    {
        let run = move || {
            let attempt = tokio::time::timeout(PROBE_TIMEOUT, probe());
            async move {
                match attempt.await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
                }
            }
            .boxed()
        };
        self.checks.push((name, Check::Probe(Arc::new(run))));
        self
    }

    /// Runs every check (the probes concurrently); each check's name and
    /// outcome, in the order they were added.
    pub async fn results(&self) -> Vec<(&'static str, Result<(), String>)> {
        futures::future::join_all(self.checks.iter().map(|(name, check)| {
            let outcome = match check {
                Check::State(state) => Either::Left(futures::future::ready(state())),
                Check::Probe(probe) => Either::Right(probe()),
            };
            outcome.map(move |r| (*name, r))
        }))
        .await
    }

    /// Runs every check; `(all ok, per-check report)`.
    pub async fn run(&self) -> (bool, Value) {
        let results = self.results().await;
        let mut report = Map::new();
        let mut ok = true;
        for (name, result) in results {
            match result {
                Ok(()) => {
                    report.insert(name.to_owned(), json!("ok"));
                }
                Err(e) => {
                    ok = false;
                    report.insert(name.to_owned(), json!(e));
                }
            }
        }
        (ok, Value::Object(report))
    }
}

/// What the ops routes need.
#[derive(Clone)]
pub struct Ops {
    pub readiness: Readiness,
    pub metrics: Arc<MetricsRegistry>,
}

/// Mounts `/healthz`, `/readyz` and `/metrics`.
pub fn configure(cfg: &mut web::ServiceConfig, ops: Ops) {
    cfg.app_data(web::Data::new(ops))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
}

/// An HTTP server with the ops routes only, for a service that serves
/// nothing else (the delivery worker, the outbox relay): one worker
/// thread, no signal handling of its own (the service stops it), 2 s for
/// requests in flight at shutdown. Returns it with the address it listens on.
pub fn serve_ops(
    bind: std::net::SocketAddr,
    ops: Ops,
) -> std::io::Result<(actix_web::dev::Server, std::net::SocketAddr)> {
    let listener = std::net::TcpListener::bind(bind)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {bind}: {e}")))?;
    let addr = listener.local_addr()?;
    let server = actix_web::HttpServer::new(move || {
        let ops = ops.clone();
        actix_web::App::new().configure(move |cfg| configure(cfg, ops))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(2)
    .listen(listener)?
    .run();
    Ok((server, addr))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn readyz(ops: web::Data<Ops>) -> HttpResponse {
    let (ok, checks) = ops.readiness.run().await;
    if ok {
        HttpResponse::Ok().json(json!({"status": "ready", "checks": checks}))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({"status": "not ready", "checks": checks}))
    }
}

async fn metrics(ops: web::Data<Ops>) -> HttpResponse {
    let results = ops.readiness.results().await;
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(ops.metrics.render_with(&readiness_metrics(&results)))
}

/// `service_ready` and `service_ready_check{check}` for one run of the checks.
fn readiness_metrics(results: &[(&'static str, Result<(), String>)]) -> Registry {
    let mut registry = Registry::default();
    let ready = Gauge::<i64>::default();
    ready.set(i64::from(results.iter().all(|(_, r)| r.is_ok())));
    registry.register(
        "service_ready",
        "1 when every readiness check passes (/readyz answers 200), else 0",
        ready,
    );
    let checks = Family::<[(&'static str, &'static str); 1], Gauge>::default();
    for (name, result) in results {
        checks
            .get_or_create(&[("check", name)])
            .set(i64::from(result.is_ok()));
    }
    registry.register(
        "service_ready_check",
        "1 when this readiness check passes, else 0",
        checks,
    );
    registry
}
