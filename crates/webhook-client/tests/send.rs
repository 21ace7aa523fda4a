#![allow(clippy::unwrap_used, clippy::expect_used)]
//! End-to-end tests of `WebhookSender` against real receivers on local sockets.

use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use test_support::{Received, Receiver, Reply};
use webhook_client::{
    AttemptOutcome, MAX_STORED_BODY_CHARS, Outbound, SenderConfig, Signing, USER_AGENT, Verdict,
    WebhookSender, message_id, verify_standard_signature, verify_x_webhook_signature,
};

const TS: i64 = 1_760_000_000;

fn sender(allow_private: bool) -> WebhookSender {
    WebhookSender::new(SenderConfig {
        allow_private_targets: allow_private,
        ..SenderConfig::default()
    })
    .expect("client builds")
}

fn outbound<'a>(url: &'a str, body: &'static [u8], secrets: &'a [&'a str]) -> Outbound<'a> {
    Outbound {
        url,
        webhook_id: 7,
        event_type: "user.created",
        message_id: "msg_evt1_7",
        timestamp: TS,
        body: Bytes::from_static(body),
        signing: Signing::Hmac(secrets),
        headers: &[],
        auth: None,
        traceparent: None,
    }
}

const BODY: &[u8] = br#"{"first_name": "\u0418\u0432\u0430\u043d", "user_id": 1}"#;

async fn post_to(reply: Reply) -> (AttemptOutcome, Received) {
    let mut rx = Receiver::start(reply).await;
    let url = rx.url("/hook");
    let out = sender(true).send(&outbound(&url, BODY, &["s"])).await;
    let got = rx.next().await;
    (out, got)
}

#[tokio::test]
async fn client_builds_without_a_global_crypto_provider() {
    // A plain #[tokio::test] installs no rustls CryptoProvider: building must not panic.
    let s = WebhookSender::new(SenderConfig::default()).expect("client builds");
    assert_eq!(s.config().total_timeout, Duration::from_secs(10));
    assert_eq!(s.config().connect_timeout, Duration::from_secs(5));
    assert_eq!(s.config().max_response_bytes, 64 * 1024);
    assert!(!s.config().allow_private_targets);
}

#[tokio::test]
async fn https_to_a_plain_http_server_fails_cleanly() {
    // Exercises the TLS stack without a global CryptoProvider: the peer answers
    // the ClientHello with plain HTTP, which must be a failure, not a panic.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 512];
        let n = sock.read(&mut buf).await.unwrap();
        sock.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        buf[0] // 0x16 = TLS handshake record
            + u8::from(n == 0)
    });
    let url = format!("https://127.0.0.1:{port}/hook?token=abc");
    let out = sender(true).send(&outbound(&url, BODY, &["s"])).await;
    assert_eq!(server.await.unwrap(), 0x16, "a TLS ClientHello was sent");
    assert_eq!(out.verdict, Verdict::Failed);
    assert_eq!(out.response_status, None);
    let err = out.error.expect("error");
    eprintln!("https to plain HTTP: {err}");
    assert!(err.starts_with("connection failed: "), "{err}");
    assert!(!err.contains("token"), "{err}");
    assert!(out.latency < Duration::from_secs(4), "{:?}", out.latency);
}

#[tokio::test]
async fn headers_are_exact_and_signatures_verify() {
    let mut rx = Receiver::start(Reply::with_body(200, "ok")).await;
    let url = rx.url("/hook?token=abc");
    let secrets = ["current-secret", "previous-secret"];
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut req = outbound(&url, BODY, &secrets);
    req.traceparent = Some(tp);
    let out = sender(true).send(&req).await;
    let got = rx.next().await;

    assert_eq!(out.verdict, Verdict::Success, "{out:?}");
    assert_eq!(out.response_status, Some(200));
    assert_eq!(out.response_body.as_deref(), Some("ok"));
    assert_eq!(out.error, None);
    assert_eq!(out.retry_after, None);

    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/hook?token=abc");
    assert_eq!(got.body, BODY);

    let mut names: Vec<String> = got
        .headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    names.sort();
    let mut expected = vec![
        "accept",
        "content-length",
        "content-type",
        "host",
        "traceparent",
        "user-agent",
        "webhook-id",
        "webhook-signature",
        "webhook-timestamp",
        "x-webhook-event",
        "x-webhook-id",
        "x-webhook-signature",
    ];
    expected.sort_unstable();
    assert_eq!(names, expected, "{:?}", got.headers);
    for n in &expected {
        assert_eq!(got.header_count(n), 1, "{n} sent once");
    }
    // The seed's spelling goes on the wire.
    assert!(
        got.headers.iter().any(|(n, _)| n == "X-Webhook-Signature"),
        "{:?}",
        got.headers
    );

    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("user-agent"), Some(USER_AGENT));
    assert!(USER_AGENT.starts_with("bedolaga-events/0.1.0 "));
    assert_eq!(got.header("x-webhook-event"), Some("user.created"));
    assert_eq!(got.header("x-webhook-id"), Some("7"));
    assert_eq!(got.header("webhook-id"), Some("msg_evt1_7"));
    assert_eq!(got.header("webhook-timestamp"), Some("1760000000"));
    assert_eq!(got.header("traceparent"), Some(tp));
    assert_eq!(
        got.header("content-length"),
        Some(BODY.len().to_string().as_str())
    );

    // X-Webhook-Signature: raw-body HMAC with the current secret only.
    let x_sig = got.header("x-webhook-signature").unwrap();
    assert!(x_sig.starts_with("sha256="));
    assert_eq!(x_sig.len(), 7 + 64);
    assert!(
        x_sig[7..]
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    );
    assert!(verify_x_webhook_signature(
        "current-secret",
        &got.body,
        x_sig
    ));
    assert!(!verify_x_webhook_signature(
        "previous-secret",
        &got.body,
        x_sig
    ));
    assert!(!verify_x_webhook_signature("current-secret", b"{}", x_sig));

    // Standard Webhooks: one v1 entry per secret, both verify.
    let std_sig = got.header("webhook-signature").unwrap();
    let entries: Vec<&str> = std_sig.split(' ').collect();
    assert_eq!(entries.len(), 2, "{std_sig}");
    assert!(entries.iter().all(|e| e.starts_with("v1,")));
    for secret in secrets {
        assert!(verify_standard_signature(
            secret,
            "msg_evt1_7",
            TS,
            &got.body,
            std_sig
        ));
    }
    assert!(!verify_standard_signature(
        "other",
        "msg_evt1_7",
        TS,
        &got.body,
        std_sig
    ));
    assert!(!verify_standard_signature(
        "current-secret",
        "msg_evt1_7",
        TS + 1,
        &got.body,
        std_sig
    ));
    assert!(!verify_standard_signature(
        "current-secret",
        "msg_other",
        TS,
        &got.body,
        std_sig
    ));
}

#[tokio::test]
async fn unsigned_when_no_secret() {
    let mut rx = Receiver::start(Reply::status(204)).await;
    let url = rx.url("/");
    let out = sender(true).send(&outbound(&url, BODY, &[])).await;
    let got = rx.next().await;
    assert_eq!(out.verdict, Verdict::Success, "{out:?}");
    assert_eq!(out.response_status, Some(204));
    assert_eq!(out.response_body.as_deref(), Some(""));
    assert_eq!(got.header("x-webhook-signature"), None);
    assert_eq!(got.header("webhook-signature"), None);
    assert_eq!(got.header("traceparent"), None);
    assert_eq!(got.header("webhook-id"), Some("msg_evt1_7"));
    assert_eq!(got.header("webhook-timestamp"), Some("1760000000"));

    // An empty string secret is "no secret" too.
    let out = sender(true).send(&outbound(&url, BODY, &[""])).await;
    let got = rx.next().await;
    assert_eq!(out.verdict, Verdict::Success);
    assert_eq!(got.header("x-webhook-signature"), None);
    assert_eq!(got.header("webhook-signature"), None);
}

fn python3() -> Option<&'static str> {
    Command::new("python3")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| "python3")
}

fn run_python(script: &str, args: &[&str], stdin: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The seed's verification snippet, verbatim, plus a raw-body and a Standard
/// Webhooks check done independently in Python.
const PY_VERIFY: &str = r#"
import hmac
import hashlib
import json
import base64
import sys

def verify_webhook_signature(payload: dict, signature_header: str, secret: str) -> bool:
    payload_json = json.dumps(payload, sort_keys=True)
    expected_signature = hmac.new(
        secret.encode('utf-8'),
        payload_json.encode('utf-8'),
        hashlib.sha256
    ).hexdigest()
    received_signature = signature_header.replace('sha256=', '')
    return hmac.compare_digest(expected_signature, received_signature)

raw = sys.stdin.buffer.read()
header, secret, std_header, msg_id, ts = sys.argv[1:6]
payload = json.loads(raw.decode('utf-8'))
raw_ok = hmac.compare_digest(
    hmac.new(secret.encode('utf-8'), raw, hashlib.sha256).hexdigest(),
    header.replace('sha256=', ''))
signed = (msg_id + '.' + ts + '.').encode('utf-8') + raw
std_expected = 'v1,' + base64.b64encode(hmac.new(secret.encode('utf-8'), signed, hashlib.sha256).digest()).decode()
std_ok = std_expected in std_header.split(' ')
print(verify_webhook_signature(payload, header, secret), raw_ok, std_ok)
"#;

const PY_PAYLOAD: &str = r#"
import json, sys
payload = {
    "user_id": 42,
    "telegram_id": 123456789,
    "username": "ivan_😀",
    "first_name": "Иван",
    "last_name": "Петров 🚀 ёжик",
    "referral_code": "REF-Ж",
    "referred_by_id": None,
    "nested": {"b": [1, 2.5, None, True, "𝄞"], "a": "Ω"},
}
sys.stdout.write(json.dumps(payload, sort_keys=True))
"#;

#[tokio::test]
async fn seed_python_snippet_verifies_cyrillic_and_emoji() {
    if python3().is_none() {
        eprintln!("python3 not found: skipping the seed snippet check");
        return;
    }
    let body = run_python(PY_PAYLOAD, &[], b"");
    assert!(body.is_ascii(), "json.dumps escapes non-ASCII: {body}");
    assert!(body.contains(r"\u0418\u0432\u0430\u043d"), "{body}");
    assert!(
        body.contains(r"\ud83d\ude00"),
        "surrogate pair for 😀: {body}"
    );

    let mut rx = Receiver::start(Reply::status(200)).await;
    let url = rx.url("/webhook");
    let secret = "секрет-🔑-key";
    let secrets = [secret, "old-secret"];
    let req = Outbound {
        url: &url,
        webhook_id: 1,
        event_type: "user.created",
        message_id: "msg_e-42_1",
        timestamp: TS,
        body: Bytes::from(body.clone()),
        signing: Signing::Hmac(&secrets),
        headers: &[],
        auth: None,
        traceparent: None,
    };
    let out = sender(true).send(&req).await;
    assert_eq!(out.verdict, Verdict::Success, "{out:?}");
    let got = rx.next().await;
    assert_eq!(got.body, body.as_bytes());
    let x_sig = got.header("x-webhook-signature").unwrap().to_owned();
    let std_sig = got.header("webhook-signature").unwrap().to_owned();
    let ts = TS.to_string();

    let verdict = run_python(
        PY_VERIFY,
        &[&x_sig, secret, &std_sig, "msg_e-42_1", &ts],
        &got.body,
    );
    assert_eq!(verdict.trim(), "True True True", "python verdict");
    // The previous secret verifies the Standard Webhooks header but not X-Webhook-Signature.
    let verdict = run_python(
        PY_VERIFY,
        &[&x_sig, "old-secret", &std_sig, "msg_e-42_1", &ts],
        &got.body,
    );
    assert_eq!(verdict.trim(), "False False True", "python verdict");
    let verdict = run_python(
        PY_VERIFY,
        &[&x_sig, "wrong", &std_sig, "msg_e-42_1", &ts],
        &got.body,
    );
    assert_eq!(verdict.trim(), "False False False", "python verdict");
}

#[tokio::test]
async fn error_status_keeps_a_body_excerpt_cut_on_characters() {
    let long = "Ошибка🚀".repeat(5000 / 7 + 1); // > 5000 chars, 2- and 4-byte chars
    assert!(long.chars().count() >= 5000);
    let (out, _) = post_to(Reply::with_body(500, long.clone())).await;
    assert_eq!(out.verdict, Verdict::Failed);
    assert_eq!(out.response_status, Some(500));
    assert_eq!(out.error.as_deref(), Some("HTTP 500"));
    let stored = out.response_body.unwrap();
    assert_eq!(stored.chars().count(), MAX_STORED_BODY_CHARS);
    let expected: String = long.chars().take(MAX_STORED_BODY_CHARS).collect();
    assert_eq!(stored, expected);
    assert_eq!(out.retry_after, None);
}

#[tokio::test]
async fn response_reading_stops_at_the_byte_cap() {
    let mut rx = Receiver::start(Reply::with_body(
        200,
        "abcdefghijklmnopqrstuvwxyz".repeat(10_000),
    ))
    .await;
    let url = rx.url("/");
    let s = WebhookSender::new(SenderConfig {
        allow_private_targets: true,
        max_response_bytes: 10,
        ..SenderConfig::default()
    })
    .unwrap();
    let out = s.send(&outbound(&url, BODY, &[])).await;
    rx.next().await;
    assert_eq!(out.verdict, Verdict::Success, "{out:?}");
    assert_eq!(out.response_body.as_deref(), Some("abcdefghij"));
}

#[tokio::test]
async fn too_many_requests_with_retry_after_seconds() {
    let (out, _) = post_to(Reply::with_header(429, "Retry-After", "7")).await;
    assert_eq!(out.verdict, Verdict::Failed);
    assert_eq!(out.response_status, Some(429));
    assert_eq!(out.error.as_deref(), Some("HTTP 429"));
    assert_eq!(out.retry_after, Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn unavailable_with_retry_after_http_date() {
    let when = chrono::Utc::now() + chrono::Duration::seconds(120);
    let date = when.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    let (out, _) = post_to(Reply::with_header(503, "Retry-After", &date)).await;
    assert_eq!(out.verdict, Verdict::Failed);
    assert_eq!(out.response_status, Some(503));
    let ra = out.retry_after.expect("retry_after parsed");
    assert!(
        ra > Duration::from_secs(100) && ra <= Duration::from_secs(120),
        "{ra:?}"
    );
}

#[tokio::test]
async fn retry_after_ignored_on_other_statuses() {
    let (out, _) = post_to(Reply::with_header(500, "Retry-After", "7")).await;
    assert_eq!(out.retry_after, None);
    let (out, _) = post_to(Reply::with_header(200, "Retry-After", "7")).await;
    assert_eq!(out.verdict, Verdict::Success);
    assert_eq!(out.retry_after, None);
}

#[tokio::test]
async fn gone_is_flagged() {
    let (out, _) = post_to(Reply::status(410)).await;
    assert_eq!(out.verdict, Verdict::Gone);
    assert_eq!(out.response_status, Some(410));
    assert_eq!(out.error.as_deref(), Some("HTTP 410"));
    let (out, _) = post_to(Reply::status(404)).await;
    assert_eq!(out.verdict, Verdict::Failed);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let mut target = Receiver::start(Reply::status(200)).await;
    let location = target.url("/landing");
    let (out, got) = post_to(Reply::with_header(302, "Location", &location)).await;
    assert_eq!(got.method, "POST");
    assert_eq!(out.verdict, Verdict::Failed);
    assert_eq!(out.response_status, Some(302));
    assert_eq!(out.error.as_deref(), Some("redirect (302) not followed"));
    assert!(target.untouched_after(Duration::from_millis(300)).await);

    let (out, _) = post_to(Reply::with_header(307, "Location", &location)).await;
    assert_eq!(out.error.as_deref(), Some("redirect (307) not followed"));
    assert!(target.untouched_after(Duration::from_millis(300)).await);
}

#[tokio::test]
async fn timeout_when_the_receiver_never_answers() {
    let mut rx = Receiver::start(Reply::Hang).await;
    let url = rx.url("/slow");
    let s = WebhookSender::new(SenderConfig {
        allow_private_targets: true,
        total_timeout: Duration::from_secs(1),
        ..SenderConfig::default()
    })
    .unwrap();
    let out = s.send(&outbound(&url, BODY, &["s"])).await;
    let got = rx.next().await;
    assert_eq!(got.body, BODY);
    assert_eq!(out.verdict, Verdict::Failed);
    assert_eq!(out.response_status, None);
    assert_eq!(out.error.as_deref(), Some("timeout after 1s"));
    assert!(
        out.latency >= Duration::from_millis(950),
        "{:?}",
        out.latency
    );
    assert!(out.latency < Duration::from_secs(5), "{:?}", out.latency);
}

#[tokio::test]
async fn connection_refused() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/hook?token=secret-token");
    let out = sender(true).send(&outbound(&url, BODY, &["s"])).await;
    assert_eq!(out.verdict, Verdict::Failed);
    assert_eq!(out.response_status, None);
    assert_eq!(out.error.as_deref(), Some("connection refused"));
}

#[tokio::test]
async fn invalid_url_is_a_failure() {
    let out = sender(true).send(&outbound("not a url", BODY, &[])).await;
    assert_eq!(out.verdict, Verdict::Failed);
    assert!(out.error.unwrap().starts_with("invalid URL"));
    let out = sender(true)
        .send(&outbound("ftp://127.0.0.1/x", BODY, &[]))
        .await;
    assert_eq!(out.verdict, Verdict::Failed);
    assert!(out.error.unwrap().contains("scheme"));
}

fn assert_refused(out: &AttemptOutcome, needle: &str) {
    assert_eq!(out.verdict, Verdict::Refused, "{out:?}");
    assert_eq!(out.response_status, None);
    assert_eq!(out.response_body, None);
    let err = out.error.as_deref().unwrap();
    assert!(err.starts_with("destination refused: "), "{err}");
    assert!(err.contains(needle), "{err} should contain {needle}");
    assert!(!err.contains("token"), "URL leaked: {err}");
    assert!(!err.contains("/hook"), "URL leaked: {err}");
}

#[tokio::test]
async fn ssrf_literal_addresses_are_refused_without_a_request() {
    let mut rx = Receiver::start(Reply::status(200)).await;
    let port = rx.port();
    let s = sender(false);
    let cases = [
        (
            format!("http://127.0.0.1:{port}/hook?token=t"),
            "127.0.0.1 is a loopback address",
        ),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/hook?token=t"),
            "::ffff:127.0.0.1 is a loopback address",
        ),
        (
            format!("http://[::1]:{port}/hook?token=t"),
            "::1 is a loopback address",
        ),
        (
            "http://169.254.169.254/latest/meta-data/hook?token=t".to_owned(),
            "169.254.169.254 is a cloud metadata address",
        ),
        (
            "http://10.1.2.3/hook?token=t".to_owned(),
            "10.1.2.3 is a private address",
        ),
        // Other spellings of loopback normalised by the URL parser.
        (
            format!("http://2130706433:{port}/hook?token=t"),
            "127.0.0.1 is a loopback address",
        ),
        (
            format!("http://0x7f.1:{port}/hook?token=t"),
            "127.0.0.1 is a loopback address",
        ),
    ];
    for (url, needle) in &cases {
        let out = s.send(&outbound(url, BODY, &["s"])).await;
        assert_refused(&out, needle);
        assert!(out.latency < Duration::from_millis(500), "no network wait");
    }
    assert!(rx.untouched_after(Duration::from_millis(200)).await);
}

#[tokio::test]
async fn ssrf_hostname_resolving_to_loopback_is_refused_by_the_resolver() {
    let mut rx = Receiver::start(Reply::status(200)).await;
    let url = format!("http://localhost:{}/hook?token=t", rx.port());
    let out = sender(false).send(&outbound(&url, BODY, &["s"])).await;
    assert_refused(&out, "localhost resolves to ");
    assert!(out.error.as_deref().unwrap().contains("loopback address"));
    assert!(rx.untouched_after(Duration::from_millis(200)).await);
}

async fn assert_delivered(s: &WebhookSender, rx: &mut Receiver, url: &str) {
    let out = s.send(&outbound(url, BODY, &["s"])).await;
    assert_eq!(out.verdict, Verdict::Success, "{url}: {out:?}");
    let got = rx.next().await;
    assert_eq!(got.body, BODY);
}

#[tokio::test]
async fn private_targets_allowed_when_configured() {
    let s = sender(true);
    let mut rx = Receiver::start(Reply::status(200)).await;
    let port = rx.port();
    assert_delivered(&s, &mut rx, &format!("http://127.0.0.1:{port}/hook")).await;
    assert_delivered(&s, &mut rx, &format!("http://localhost:{port}/hook")).await;
    match Receiver::start_on("[::1]:0", Reply::status(200)).await {
        Ok(mut rx6) => {
            let url = format!("http://[::1]:{}/hook", rx6.port());
            assert_delivered(&s, &mut rx6, &url).await;
            // IPv4-mapped IPv6 reaches the IPv4 receiver through a dual-stack socket.
            let url = format!("http://[::ffff:127.0.0.1]:{port}/hook");
            assert_delivered(&s, &mut rx, &url).await;
        }
        Err(e) => eprintln!("IPv6 loopback unavailable ({e}): skipping [::1] cases"),
    }
}

#[tokio::test]
async fn pooled_sender_handles_concurrent_sends() {
    let mut rx = Receiver::start(Reply::status(200)).await;
    let url = rx.url("/hook");
    let s = sender(true);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let s = s.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mid = message_id("evt", i);
            let req = Outbound {
                url: &url,
                webhook_id: i,
                event_type: "ticket.created",
                message_id: &mid,
                timestamp: TS,
                body: Bytes::from_static(BODY),
                signing: Signing::Hmac(&["k"]),
                headers: &[],
                auth: None,
                traceparent: None,
            };
            s.send(&req).await
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().is_success());
    }
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(rx.next().await.header("x-webhook-id").unwrap().to_owned());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 50);
}
