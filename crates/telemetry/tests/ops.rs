//! `/healthz`, `/readyz` and `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use actix_web::{App, test};
use futures::FutureExt;
use telemetry::metrics::{Counter, MetricsRegistry};
use telemetry::ops::{Ops, Readiness, configure};

#[actix_web::test]
async fn ready_only_when_every_check_passes() {
    let metrics = Arc::new(MetricsRegistry::new());
    let events = Counter::<u64>::default();
    metrics.register("events_seen", "Events seen", events.clone());
    events.inc_by(3);
    let readiness = Readiness::new()
        .with("postgres", || async { Ok(()) }.boxed())
        .with("nats", || async { Err("disconnected".to_owned()) }.boxed());
    let app = test::init_service(App::new().configure(|c| {
        configure(
            c,
            Ops {
                readiness,
                metrics: metrics.clone(),
            },
        )
    }))
    .await;

    let res = test::call_service(&app, test::TestRequest::get().uri("/healthz").to_request()).await;
    assert_eq!(res.status(), 200);

    let res = test::call_service(&app, test::TestRequest::get().uri("/readyz").to_request()).await;
    assert_eq!(res.status(), 503);
    let body: serde_json::Value = test::read_body_json(res).await;
    assert_eq!(
        body,
        serde_json::json!({"status": "not ready", "checks": {"postgres": "ok", "nats": "disconnected"}})
    );

    let res = test::call_service(&app, test::TestRequest::get().uri("/metrics").to_request()).await;
    assert_eq!(res.status(), 200);
    let text = String::from_utf8(test::read_body(res).await.to_vec()).unwrap();
    assert!(text.contains("events_seen_total 3"), "{text}");
    // The readiness checks, as /readyz saw them, once each.
    assert!(text.contains("\nservice_ready 0\n"), "{text}");
    assert!(
        text.contains("\nservice_ready_check{check=\"postgres\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("\nservice_ready_check{check=\"nats\"} 0\n"),
        "{text}"
    );
    assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[actix_web::test]
async fn ready_when_all_pass() {
    let readiness = Readiness::new().with("postgres", || async { Ok(()) }.boxed());
    let app = test::init_service(App::new().configure(|c| {
        configure(
            c,
            Ops {
                readiness,
                metrics: Arc::new(MetricsRegistry::new()),
            },
        )
    }))
    .await;
    let res = test::call_service(&app, test::TestRequest::get().uri("/readyz").to_request()).await;
    assert_eq!(res.status(), 200);
    let res = test::call_service(&app, test::TestRequest::get().uri("/metrics").to_request()).await;
    let text = String::from_utf8(test::read_body(res).await.to_vec()).unwrap();
    assert!(text.contains("\nservice_ready 1\n"), "{text}");
}
