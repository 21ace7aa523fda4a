//! The compiled binary with NATS unreachable and `RUST_LOG=debug`: it serves
//! the API, keeps every configured secret out of its logs, and stops within
//! seconds of SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use storage::testing::TestDb;
use telemetry::testing::drain;
use test_support::free_port;

use crate::helpers::eventually;

const NATS_PASSWORD: &str = "NatsPassw0rdXyz";
const DB_PASSWORD: &str = "DbPassw0rdXyz";
const DEFAULT_TOKEN: &str = "DefaultT0kenXyz0123456789";
const HMAC_SECRET: &str = "HmacS3cretXyz";
const WEBHOOK_SECRET: &str = "WebhookS3cretXyz";
const ROTATED_SECRET: &str = "RotatedS3cretXyz";
const PATCHED_SECRET: &str = "PatchedS3cretXyz";

#[tokio::test]
async fn binary_keeps_secrets_out_of_debug_logs_and_stops_within_seconds_without_nats() {
    let db = TestDb::new().await.unwrap();
    // The test role's password, or one written in for a server that trusts
    // the test user (configured, never checked).
    let (db_url, db_password) = db.url_with_password(DB_PASSWORD);
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_webhook-registry"))
        .env_clear()
        .env("SECRETS_KEY_FILE", storage::testing::key_file())
        .env("DATABASE_URL", &db_url)
        .env(
            "NATS_URL",
            format!("nats://natsuser:{NATS_PASSWORD}@127.0.0.1:1"),
        )
        .env("REGISTRY_BIND", format!("127.0.0.1:{port}"))
        .env("REGISTRY_WORKERS", "1")
        .env("WEB_API_DEFAULT_TOKEN", DEFAULT_TOKEN)
        .env("WEB_API_TOKEN_HMAC_SECRET", HMAC_SECRET)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let readers = [drain(child.stdout.take()), drain(child.stderr.take())];

    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let call = |method: reqwest::Method, path: &str, body: Option<serde_json::Value>| {
        let mut rb = client
            .request(method, format!("{base}{path}"))
            .bearer_auth(DEFAULT_TOKEN);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        rb.send()
    };
    let up = eventually(20, || async {
        call(reqwest::Method::GET, "/webhooks", None)
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    // Secrets pass through every layer that logs: requests, queries, the token check.
    let created = call(
        reqwest::Method::POST,
        "/webhooks",
        Some(json!({"name": "n", "url": "https://example.com/h", "event_type": "*", "secret": WEBHOOK_SECRET})),
    )
    .await
    .unwrap();
    let created_status = created.status();
    let id = created.json::<serde_json::Value>().await.unwrap()["id"].clone();
    let rotated = call(
        reqwest::Method::POST,
        &format!("/webhooks/{id}/rotate-secret"),
        Some(json!({"secret": ROTATED_SECRET})),
    )
    .await
    .unwrap()
    .status();
    let patched = call(
        reqwest::Method::PATCH,
        &format!("/webhooks/{id}"),
        Some(json!({"secret": PATCHED_SECRET})),
    )
    .await
    .unwrap()
    .status();
    // Some NATS reconnect attempts happen meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;

    test_support::terminate(child.id()).expect("SIGTERM");
    let sent = Instant::now();
    let exited = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some((sent.elapsed(), s));
        }
        if sent.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let out: String = readers.into_iter().map(|r| r.join().unwrap()).collect();
    let tail: Vec<&str> = out.lines().rev().take(15).collect();
    assert!(up, "the API never answered: {tail:?}");
    assert_eq!(created_status, StatusCode::CREATED);
    assert_eq!(rotated, StatusCode::OK);
    assert_eq!(patched, StatusCode::OK);
    let (took, status) =
        exited.unwrap_or_else(|| panic!("still running 10 s after SIGTERM: {tail:?}"));
    eprintln!("webhook-registry exited {took:?} after SIGTERM");
    assert!(status.success(), "graceful exit: {status} {tail:?}");
    assert!(
        took < Duration::from_secs(5),
        "exit took {took:?} after SIGTERM: {tail:?}"
    );

    assert!(out.contains("DEBUG"), "debug lines are written");
    for secret in [
        NATS_PASSWORD,
        db_password.as_str(),
        DEFAULT_TOKEN,
        HMAC_SECRET,
        WEBHOOK_SECRET,
        ROTATED_SECRET,
        PATCHED_SECRET,
    ] {
        let leaks: Vec<&str> = out.lines().filter(|l| l.contains(secret)).collect();
        assert!(
            leaks.is_empty(),
            "{secret} appears in {} log lines, e.g. {}",
            leaks.len(),
            leaks[0]
        );
    }
}

/// One raw HTTP/1.1 exchange: the status line's code, and the whole answer.
fn raw_exchange(port: u16, request: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may answer and close before reading everything.
    let _ = s.write_all(request);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let code = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, answer)
}

/// Requests actix-http would refuse before any service sees them (a URI
/// over the http crate's 65,534 bytes, more headers than its 96) are the
/// client's mistake: answered 414 and 431 with a JSON `detail` like every
/// other error, and never logged at ERROR.
#[tokio::test]
async fn requests_the_http_layer_refuses_are_not_logged_as_server_errors() {
    let db = TestDb::new().await.unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_webhook-registry"))
        .env_clear()
        .env("SECRETS_KEY_FILE", storage::testing::key_file())
        .env("DATABASE_URL", &db.url)
        .env("NATS_URL", "nats://127.0.0.1:1")
        .env("REGISTRY_BIND", format!("127.0.0.1:{port}"))
        .env("REGISTRY_WORKERS", "1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let readers = [drain(child.stdout.take()), drain(child.stderr.take())];
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let up = eventually(20, || async {
        client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;

    let long_query = format!(
        "GET /webhooks?q={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let mut many_headers = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..200 {
        many_headers.push_str(&format!("X-H{i}: v\r\n"));
    }
    many_headers.push_str("\r\n");
    let answers = [
        raw_exchange(port, long_query.as_bytes()),
        raw_exchange(port, many_headers.as_bytes()),
    ];
    // Still serving afterwards.
    let after = client
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .map(|r| r.status());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = child.kill();
    let _ = child.wait();
    let out: String = readers.into_iter().map(|r| r.join().unwrap()).collect();
    assert!(up, "the API never answered: {out}");
    assert_eq!(answers[0].0, 414, "{:?}", answers[0].1);
    assert_eq!(answers[1].0, 431, "{:?}", answers[1].1);
    for (_, answer) in &answers {
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((answer, ""));
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{head}"
        );
        let detail: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(detail["detail"].is_string(), "{body}");
    }
    assert_eq!(after.unwrap(), StatusCode::OK);
    let errors: Vec<&str> = out.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "logged at ERROR: {errors:#?}");
}

#[test]
fn without_a_key_file_the_registry_refuses_to_start_and_says_why() {
    for args in [
        &[][..],
        &["import-bot", "--from", "postgres://x@127.0.0.1:1/bot"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_webhook-registry"))
            .env_clear()
            .env("DATABASE_URL", "postgres://x@127.0.0.1:1/none")
            .env("REGISTRY_BIND", format!("127.0.0.1:{}", free_port()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started without a key file");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("SECRETS_KEY_FILE is not set") && said.contains("secrets new-key"),
            "{args:?}: {said}"
        );
    }
}
