//! One trace across the services: the registry's requests continue the
//! caller's `traceparent`, and the worker's deliveries (first attempt and
//! retry) and the gateway's fan-out of an event are spans in the
//! publisher's trace. The spans are read back from an OTLP/HTTP receiver
//! in this process, as the exporter sends them.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use parking_lot::Mutex;
use prost::Message;
use proto_events::EventType;
use serde_json::json;

use crate::helpers::{Receiver, System, WAIT};

/// One exported span, ids in hex.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    kind: i32,
    attributes: HashMap<String, String>,
}

/// An OTLP/HTTP receiver: decodes every `POST /v1/traces` body.
fn otlp_receiver() -> (String, Arc<Mutex<Vec<Exported>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let spans = Arc::new(Mutex::new(Vec::new()));
    let record = spans.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let Some((path, body)) = read_post(&mut stream) else {
                continue;
            };
            let ok = path == "/v1/traces"
                && ExportTraceServiceRequest::decode(body.as_slice())
                    .map(|req| record.lock().extend(flatten(req)))
                    .is_ok();
            let status = if ok { "200 OK" } else { "400 Bad Request" };
            let _ = stream.write_all(
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    (endpoint, spans)
}

fn read_post(stream: &mut std::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut length = 0;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((path, body))
}

fn flatten(req: ExportTraceServiceRequest) -> Vec<Exported> {
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let resource: HashMap<String, String> = rs
            .resource
            .map(|r| attributes(r.attributes))
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                out.push(Exported {
                    service: service.clone(),
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    name: span.name,
                    kind: span.kind,
                    attributes: attributes(span.attributes),
                });
            }
        }
    }
    out
}

fn attributes(
    kvs: Vec<opentelemetry_proto::tonic::common::v1::KeyValue>,
) -> HashMap<String, String> {
    kvs.into_iter()
        .map(|kv| {
            let value = match kv.value.and_then(|v| v.value) {
                Some(AnyValue::StringValue(s)) => s,
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key, value)
        })
        .collect()
}

/// A fresh sampled W3C traceparent: `(header, trace id, span id)`.
fn new_traceparent() -> (String, String, String) {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    (format!("00-{trace}-{span}-01"), trace, span)
}

/// `(trace id, parent span id)` of a traceparent header.
fn ids(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    (parts[1].to_owned(), parts[2].to_owned())
}

struct Spans(Arc<Mutex<Vec<Exported>>>);

impl Spans {
    /// Waits (the batch exporter sends every few seconds) until a span
    /// called `name` of trace `trace_id` has arrived.
    async fn wait(&self, trace_id: &str, name: &str) -> Exported {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let found = self
                .0
                .lock()
                .iter()
                .find(|s| s.trace_id == trace_id && s.name == name)
                .cloned();
            if let Some(s) = found {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no span {name:?} in trace {trace_id}; spans of it: {:#?}",
                self.of_trace(trace_id)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn of_trace(&self, trace_id: &str) -> Vec<Exported> {
        self.0
            .lock()
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

fn assert_module(span: &Exported, crate_name: &str) {
    let module = span
        .attributes
        .get("code.module.name")
        .unwrap_or_else(|| panic!("span without its module: {span:#?}"));
    assert!(
        module.starts_with(&format!("{crate_name}::")),
        "{} comes from {module}, not {crate_name}",
        span.name
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_every_service_join_the_callers_trace() {
    let (endpoint, exported) = otlp_receiver();
    let test_log = std::env::var_os("TEST_LOG").is_some();
    // The log output is off unless TEST_LOG is set; exported spans do not
    // depend on it.
    telemetry::init_logging(&telemetry::LogArgs {
        log_format: telemetry::LogFormat::Text,
        log_filter: if test_log { "info" } else { "off" }.to_owned(),
        otel_endpoint: Some(endpoint),
        otel_service_name: Some("bedolaga-events-it".to_owned()),
    });
    let spans = Spans(exported);
    let system = System::start().await;
    // The test ping succeeds, the event's first attempt fails, its retry
    // succeeds.
    let receiver = Receiver::start_scripted(vec![200, 500, 200]).await;

    // The registry: a request span continuing the caller's trace, with the
    // handler's span inside it.
    let (api_tp, api_trace, api_parent) = new_traceparent();
    let r = system
        .api(reqwest::Method::POST, "/webhooks")
        .header("traceparent", &api_tp)
        .json(
            &json!({"name": "traced", "url": receiver.url("/hook"), "event_type": "user.created"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let webhook: serde_json::Value = r.json().await.unwrap();
    let request = spans.wait(&api_trace, "POST /webhooks").await;
    assert_eq!(request.parent_span_id, api_parent);
    assert_eq!(request.kind, SpanKind::Server as i32);
    assert_eq!(request.attributes["http.route"], "/webhooks");
    assert_eq!(request.attributes["http.response.status_code"], "201");
    assert_eq!(request.service, "bedolaga-events-it");
    assert_module(&request, "webhook_registry");
    let handler = spans.wait(&api_trace, "create").await;
    assert_eq!(handler.parent_span_id, request.span_id);

    // A test delivery is sent as part of its request's trace.
    let (test_tp, test_trace, _) = new_traceparent();
    let r = system
        .api(
            reqwest::Method::POST,
            &format!("/webhooks/{}/test", webhook["id"]),
        )
        .header("traceparent", &test_tp)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ping = receiver.wait_for(1, WAIT).await.remove(0);
    let (ping_trace, _) = ids(ping.header("traceparent").unwrap());
    assert_eq!(ping_trace, test_trace);
    spans
        .wait(&test_trace, "POST /webhooks/{webhook_id}/test")
        .await;

    // The publisher's event: the gateway's fan-out and the worker's
    // deliveries are its children.
    let mut ws = system.ws().await;
    system.wait_webhooks_loaded(1).await;
    let (pub_tp, pub_trace, pub_parent) = new_traceparent();
    system
        .publish(EventType::UserCreated, json!({"user_id": 7}), Some(&pub_tp))
        .await;
    let event = ws.next_json().await;
    assert_eq!(event["payload"]["user_id"], 7, "{event}");

    let fan_out = spans.wait(&pub_trace, "fan_out").await;
    assert_eq!(fan_out.parent_span_id, pub_parent);
    assert_eq!(fan_out.kind, SpanKind::Consumer as i32);
    assert_eq!(fan_out.attributes["event_type"], "user.created");
    assert_eq!(fan_out.attributes["clients"], "1");
    assert_module(&fan_out, "gateway");

    let got = receiver.wait_for(3, WAIT).await;
    let deliver = spans.wait(&pub_trace, "deliver_event").await;
    assert_eq!(deliver.parent_span_id, pub_parent);
    assert_module(&deliver, "delivery_worker");
    // The receiver sees the worker's span as its parent.
    assert_eq!(
        ids(got[1].header("traceparent").unwrap()),
        (pub_trace.clone(), deliver.span_id.clone())
    );
    let retry = spans.wait(&pub_trace, "retry_delivery").await;
    assert_eq!(retry.parent_span_id, deliver.span_id);
    assert_eq!(retry.attributes["attempt_number"], "2");
    assert_module(&retry, "delivery_worker");
    assert_eq!(
        ids(got[2].header("traceparent").unwrap()),
        (pub_trace.clone(), retry.span_id.clone())
    );

    ws.close().await;
    system.stop().await;
}
