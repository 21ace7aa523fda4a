//! `eventctl health URL` as docker-compose.yml runs it: the built binary
//! against a local HTTP server that answers 200 or 503, and a closed port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Answers `/ok` with 200 and everything else with 503, one request per
/// connection.
async fn server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]);
                let status = if head.starts_with("GET /ok ") {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let resp =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

async fn health(url: String) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_eventctl"))
            .args(["health", &url, "--timeout", "2s"])
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn health_succeeds_only_on_a_2xx_answer() {
    let base = server().await;

    let (ok, stderr) = health(format!("{base}/ok")).await;
    assert!(ok, "{stderr}");

    let (ok, stderr) = health(format!("{base}/readyz")).await;
    assert!(!ok);
    assert!(stderr.contains("503"), "{stderr}");

    // Nothing listens there any more.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let (ok, stderr) = health(format!("http://{addr}/healthz")).await;
    assert!(!ok);
    assert!(stderr.contains("no answer"), "{stderr}");
}
