//! `/healthz`, `/readyz` and `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use actix_web::{App, test};
use telemetry::metrics::{Counter, MetricsRegistry};
use telemetry::ops::{Ops, Readiness, configure};

#[actix_web::test]
async fn ready_only_when_every_check_passes() {
    let metrics = Arc::new(MetricsRegistry::new());
    let events = Counter::<u64>::default();
    metrics.register("events_seen", "Events seen", events.clone());
    events.inc_by(3);
    let readiness = Readiness::new()
        .probe("postgres", || async { Ok::<(), String>(()) })
        .state("nats", || Err("disconnected".to_owned()));
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
    let readiness = Readiness::new()
        .probe("postgres", || async { Ok::<(), String>(()) })
        .flag("migrations", Arc::new(AtomicBool::new(true)), "pending");
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

#[actix_web::test]
async fn a_slow_probe_and_an_unset_flag_fail_their_checks() {
    // Paused time: the probe's timeout elapses as soon as nothing else runs.
    tokio::time::pause();
    let migrated = Arc::new(AtomicBool::new(false));
    let readiness = Readiness::new()
        .probe("database", || async {
            tokio::time::sleep(telemetry::ops::PROBE_TIMEOUT * 2).await;
            Ok::<(), String>(())
        })
        .flag("migrations", migrated.clone(), "migrations not applied yet")
        .state("nats", || Ok(()));
    let (ok, report) = readiness.run().await;
    assert!(!ok);
    assert_eq!(
        report,
        serde_json::json!({
            "database": "no answer within 2s",
            "migrations": "migrations not applied yet",
            "nats": "ok",
        })
    );
    // Names keep the order they were added in.
    let names: Vec<_> = readiness
        .results()
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["database", "migrations", "nats"]);

    migrated.store(true, std::sync::atomic::Ordering::Release);
    let (_, report) = readiness.run().await;
    assert_eq!(report["migrations"], "ok");
}
