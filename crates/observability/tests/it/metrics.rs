//! Every metric the dashboard and the alert rules name is exported by a
//! running service, with the labels their matchers use.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use observability::exposition::Exported;
use observability::files::{self, Query};
use observability::promql;
use proto_events::EventType;
use serde_json::json;

use crate::helpers::{Receiver, System, WAIT};

/// Names Prometheus makes itself for every target.
const FROM_PROMETHEUS: [&str; 1] = ["up"];

/// Every query of the dashboards and rule files.
fn queries() -> Vec<Query> {
    let dir = files::deploy_dir();
    let mut out = Vec::new();
    for path in files::files_in(&dir.join("grafana/dashboards"), ".json").unwrap() {
        let text = std::fs::read_to_string(&path).unwrap();
        let dashboard: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
        for mut q in files::dashboard_queries(&dashboard).unwrap() {
            q.origin = format!("{}: {}", shown(&dir, &path), q.origin);
            out.push(q);
        }
    }
    for path in files::files_in(&dir.join("prometheus/rules"), ".yml").unwrap() {
        let text = std::fs::read_to_string(&path).unwrap();
        for mut q in files::rule_queries(&text).unwrap() {
            q.origin = format!("{}: {}", shown(&dir, &path), q.origin);
            out.push(q);
        }
    }
    out
}

/// `path` relative to `deploy/observability/`.
fn shown(dir: &Path, path: &Path) -> String {
    path.strip_prefix(dir).unwrap_or(path).display().to_string()
}

/// Traffic that gives every family samples: API requests, a delivery that
/// fails and is retried, a dead letter, a WebSocket client that receives
/// an event and leaves, one that is refused, and an outbox row.
async fn traffic(system: &System) {
    let receiver = Receiver::start_scripted(vec![500]).await;
    system
        .create_webhook(&receiver.url("/hook"), "user.created")
        .await;
    let r = system
        .api(reqwest::Method::GET, "/webhooks/stats")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = system
        .api(reqwest::Method::GET, "/webhooks/999999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let mut ws = system.ws().await;
    system.wait_webhooks_loaded(1).await;
    system
        .publish(EventType::UserCreated, json!({"user_id": 1}), None)
        .await;
    let event = ws.next_json().await;
    assert_eq!(event["type"], "user.created", "{event}");
    ws.close().await;
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws", system.gateway.addr))
        .await
        .expect("handshake");
    drop(refused);
    // The first attempt answers 500, the retry 200.
    receiver.wait_for(2, WAIT).await;

    system
        .nats
        .publish(system.ns.event_subject("no.such_type"), "{}".into())
        .await
        .unwrap();
    system.nats.flush().await.unwrap();

    let mut conn = AsyncPgConnection::establish(&system.db.url).await.unwrap();
    conn.batch_execute(
        "INSERT INTO event_outbox (envelope) VALUES (jsonb_build_object('id', gen_random_uuid()::text, \
         'type', 'user.created', 'timestamp', '2026-01-01T00:00:00Z', 'payload', '{\"user_id\": 2}'::jsonb))",
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_rules_name_only_exported_metrics() {
    let queries = queries();
    assert!(queries.len() > 20, "only {} queries found", queries.len());

    let system = System::start().await;
    traffic(&system).await;

    // Scrape until the counters of the traffic show (the gauges are
    // refreshed every few seconds, the dead letter is asynchronous).
    let deadline = tokio::time::Instant::now() + WAIT;
    let exported = loop {
        let mut exported = Exported::default();
        for service in system.services() {
            let text = system.scrape(service).await;
            exported
                .add(&text)
                .unwrap_or_else(|e| panic!("/metrics of {}: {e}", service.name));
        }
        let dead_lettered = exported.samples.contains_key("delivery_dead_letters_total")
            && system
                .scrape(&system.worker)
                .await
                .contains("delivery_dead_letters_total 1");
        let relayed = system
            .scrape(&system.relay)
            .await
            .contains("outbox_relay_published_total 1");
        if dead_lettered && relayed {
            break exported;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the traffic never showed in the metrics (dead letter: {dead_lettered}, relayed: {relayed})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let mut problems = BTreeSet::new();
    let mut checked = BTreeSet::new();
    for q in &queries {
        let selectors = match promql::selectors(&q.expr) {
            Ok(s) => s,
            Err(e) => {
                problems.insert(format!("{}: {e}", q.origin));
                continue;
            }
        };
        if selectors.is_empty() {
            problems.insert(format!("{}: names no metric: {:?}", q.origin, q.expr));
        }
        for s in selectors {
            if FROM_PROMETHEUS.contains(&s.metric.as_str()) {
                continue;
            }
            checked.insert(s.metric.clone());
            let Some(labels) = exported.samples.get(&s.metric) else {
                problems.insert(format!(
                    "{}: {} is not exported ({})",
                    q.origin,
                    s.metric,
                    exported.hint(&s.metric)
                ));
                continue;
            };
            for label in &s.labels {
                // `job` and `instance` are added by Prometheus.
                if !labels.contains(label) && label != "job" && label != "instance" {
                    problems.insert(format!(
                        "{}: {} has no label {label} (it has {labels:?})",
                        q.origin, s.metric
                    ));
                }
            }
        }
    }
    system.stop().await;
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.into_iter().collect::<Vec<_>>().join("\n")
    );
    // The check saw every service's metrics.
    for prefix in [
        "delivery_",
        "gateway_",
        "registry_",
        "outbox_",
        "service_ready",
    ] {
        assert!(
            checked.iter().any(|m| m.starts_with(prefix)),
            "no query names a {prefix}* metric"
        );
    }
}
