//! Spans reach an OTLP/HTTP collector, and `traceparent` values continue
//! remote traces. One test: the subscriber is global to the process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

/// A one-thread HTTP server that reports each request's line and
/// content type, and answers 200.
fn collector() -> (String, mpsc::Receiver<(String, String, usize)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let (mut content_type, mut length) = (String::new(), 0usize);
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (k, v) = line.split_once(':').unwrap();
                match k.to_ascii_lowercase().as_str() {
                    "content-type" => content_type = v.trim().to_owned(),
                    "content-length" => length = v.trim().parse().unwrap(),
                    _ => {}
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .unwrap();
            let _ = tx.send((request_line.trim_end().to_owned(), content_type, body.len()));
        }
    });
    (format!("http://{addr}"), rx)
}

#[test]
fn spans_are_exported_and_remote_parents_are_kept() {
    let (endpoint, requests) = collector();
    telemetry::init_logging(&telemetry::LogArgs {
        log_format: telemetry::LogFormat::Text,
        log_filter: "info".into(),
        otel_endpoint: Some(endpoint),
        otel_service_name: Some("telemetry-test".into()),
    });

    let remote = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let span = tracing::info_span!("deliver", event_id = "e1");
    telemetry::trace::set_remote_parent(&span, remote, None);
    let child = telemetry::trace::traceparent_of(&span).expect("a sampled span has a traceparent");
    // Same trace, new span id.
    assert!(
        child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{child}"
    );
    assert_ne!(child, remote);
    span.in_scope(|| tracing::info!("inside"));
    drop(span);

    telemetry::flush();
    let (line, content_type, len) = requests.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(line, "POST /v1/traces HTTP/1.1");
    assert_eq!(content_type, "application/x-protobuf");
    assert!(len > 0);
}
