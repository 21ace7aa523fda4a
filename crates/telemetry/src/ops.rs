//! `/healthz`, `/readyz` and `/metrics` for actix-web services.
//!
//! `/metrics` also runs the readiness checks and reports them as
//! `service_ready` (1 when `/readyz` would answer 200) and
//! `service_ready_check{check}`, so an alert can tell a running but unready
//! service from one that is down.

use std::sync::Arc;

use actix_web::{HttpResponse, web};
use futures::future::BoxFuture;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{Map, Value, json};

use crate::metrics::MetricsRegistry;

type CheckFn = dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync;

/// Named dependency checks behind `/readyz`.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Arc<CheckFn>)>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a check; it must answer quickly (use timeouts inside).
    pub fn with<F>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    {
        self.checks.push((name, Arc::new(check)));
        self
    }

    /// Runs every check concurrently; each check's name and outcome, in
    /// the order they were added.
    pub async fn results(&self) -> Vec<(&'static str, Result<(), String>)> {
        futures::future::join_all(
            self.checks
                .iter()
                .map(|(name, check)| async move { (*name, check().await) }),
        )
        .await
    }

    /// Runs every check concurrently; `(all ok, per-check report)`.
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
