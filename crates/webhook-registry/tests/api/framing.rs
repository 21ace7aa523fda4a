//! Requests on one keep-alive connection, written as raw bytes: bodies
//! framed by length and by chunks pass through the connection guard, and a
//! head actix-http would refuse gets the API's JSON error in its turn.

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::spawn_app;

/// Splits a byte stream of HTTP/1.1 responses (each with Content-Length)
/// into (status, body) pairs.
fn responses(mut raw: &[u8]) -> Vec<(u16, String, String)> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let body = &raw[end + 4..(end + 4 + len).min(raw.len())];
        out.push((status, head, String::from_utf8_lossy(body).into_owned()));
        raw = &raw[(end + 4 + len).min(raw.len())..];
    }
    out
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_and_a_bad_head_last_as_json() {
    let app = spawn_app().await;
    let token = &app.token;
    let body = r#"{"name":"framed","url":"https://example.com/hook","event_type":"*"}"#;
    let (first, second) = body.split_at(10);
    let mut sent = format!(
        "POST /webhooks HTTP/1.1\r\nHost: x\r\nX-API-Key: {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    sent.push_str(&format!(
        "POST /webhooks HTTP/1.1\r\nHost: x\r\nX-API-Key: {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
        first.len(),
        second.len()
    ));
    sent.push_str(&format!(
        "GET /webhooks?limit=10 HTTP/1.1\r\nHost: x\r\nX-API-Key: {token}\r\n\r\n"
    ));
    sent.push_str("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..120 {
        sent.push_str(&format!("X-H{i}: v\r\n"));
    }
    sent.push_str("\r\n");

    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(sent.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("the connection is closed after the refused head")
        .unwrap();
    let got = responses(&raw);
    let statuses: Vec<u16> = got.iter().map(|r| r.0).collect();
    assert_eq!(statuses, [201, 201, 200, 431], "{got:#?}");
    let listed: Value = serde_json::from_str(&got[2].2).unwrap();
    assert_eq!(listed["total"], 2, "{listed}");
    let (_, head, body) = &got[3];
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let detail: Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        detail["detail"],
        "Request header fields too large: more than 96 headers"
    );
}

#[tokio::test]
async fn the_refusal_path_asked_directly_is_the_same_error_or_404() {
    let app = spawn_app().await;
    let (status, body) = app.get("/_refused/uri-too-long").await;
    assert_eq!(status.as_u16(), 414);
    assert!(body["detail"].as_str().unwrap().starts_with("URI too long"));
    let (status, _) = app.get("/_refused/whatever").await;
    assert_eq!(status.as_u16(), 404);
}
