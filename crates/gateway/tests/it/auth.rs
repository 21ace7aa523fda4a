//! Token rules and close codes (docs/contract.md, "WebSocket"), revocation while connected,
//! the origin allow-list and the connection cap.

use std::time::Duration;

use crate::helpers::{Backing, TestApp, Ws};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_closes_1008() {
    let b = Backing::new().await;
    let app = TestApp::spawn(b.config()).await;
    for query in ["", "?token=", "?api_key=%20"] {
        let mut ws = app.connect(query).await;
        assert_eq!(
            ws.expect_close().await,
            (1008, "Unauthorized: No token provided".to_owned()),
            "query {query:?}"
        );
    }
    let m = app.metrics().await;
    assert!(
        m.contains(r#"gateway_clients_closed_total{reason="no_token"} 3"#),
        "{m}"
    );
    app.stop().await;
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_revoked_or_expired_token_closes_1008() {
    let b = Backing::new().await;
    let app = TestApp::spawn(b.config()).await;
    let (revoked_id, revoked) = b.new_token(None).await;
    b.revoke(revoked_id).await;
    let (_, expired) = b
        .new_token(Some(chrono::Utc::now() - chrono::Duration::minutes(1)))
        .await;
    for token in ["nope", revoked.as_str(), expired.as_str()] {
        let mut ws = app.connect(&format!("?token={token}")).await;
        assert_eq!(
            ws.expect_close().await,
            (1008, "Unauthorized: Invalid token".to_owned())
        );
    }
    app.stop().await;
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_token_source_is_accepted() {
    let b = Backing::new().await;
    let app = TestApp::spawn(b.config()).await;
    let welcome = r#"{"type":"connection","status":"connected","message":"WebSocket connection established"}"#;
    let url = app.ws_url("");
    let bearer = format!("Bearer {}", b.token);
    let cases: Vec<(String, Vec<(&'static str, &str)>)> = vec![
        (app.ws_url(&format!("?token={}", b.token)), vec![]),
        (app.ws_url(&format!("?api_key={}", b.token)), vec![]),
        (url.clone(), vec![("authorization", bearer.as_str())]),
        (url.clone(), vec![("x-api-key", b.token.as_str())]),
    ];
    for (url, headers) in cases {
        let mut ws = Ws::connect(&url, &headers).await;
        assert_eq!(ws.next_text().await, welcome, "{url} {headers:?}");
        ws.roundtrip().await;
    }
    app.stop().await;
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_token_closes_its_sockets_only() {
    let b = Backing::new().await;
    let app = TestApp::spawn(b.config()).await;
    let (doomed_id, doomed) = b.new_token(None).await;
    let mut a1 = app.connect_ok(&doomed).await;
    let mut a2 = app.connect_ok(&doomed).await;
    let mut other = app.connect_ok(&b.token).await;
    b.revoke(doomed_id).await;
    for ws in [&mut a1, &mut a2] {
        assert_eq!(
            ws.expect_close().await,
            (1008, "Unauthorized: Invalid token".to_owned())
        );
    }
    other.roundtrip().await;
    let seq = b
        .publish("user.created", crate::helpers::user_payload(1))
        .await;
    assert_eq!(other.next_event().await["seq"], seq);
    let m = app.metrics().await;
    assert!(
        m.contains(r#"gateway_clients_closed_total{reason="token_revoked"} 2"#),
        "{m}"
    );
    app.stop().await;
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_allow_list() {
    let b = Backing::new().await;
    let mut cfg = b.config();
    cfg.allowed_origins = vec!["https://admin.example.com".into()];
    let app = TestApp::spawn(cfg).await;
    let url = app.ws_url(&format!("?token={}", b.token));
    // a foreign page is refused before the upgrade
    let req = app
        .http
        .get(app.url(&format!("/ws?token={}", b.token)))
        .header("Origin", "https://evil.example.com")
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(req.status(), 403);
    let mut ok = Ws::connect(&url, &[("origin", "https://admin.example.com")]).await;
    ok.next_text().await;
    ok.roundtrip().await;
    // non-browser clients send no Origin
    let mut plain = Ws::connect(&url, &[]).await;
    plain.next_text().await;
    app.stop().await;
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_refused_with_1013() {
    let b = Backing::new().await;
    let mut cfg = b.config();
    cfg.max_connections = 2;
    let app = TestApp::spawn(cfg).await;
    let _a = app.connect_ok(&b.token).await;
    let mut second = app.connect_ok(&b.token).await;
    let mut third = app.connect(&format!("?token={}", b.token)).await;
    let (code, reason) = third.expect_close().await;
    assert_eq!(code, 1013);
    assert!(reason.contains("too many connections"), "{reason}");
    // a slot frees up when a client leaves
    second.inner.close(None).await.unwrap();
    drop(second);
    let deadline = tokio::time::Instant::now() + crate::helpers::WAIT;
    loop {
        let mut ws = app.connect(&format!("?token={}", b.token)).await;
        match ws.next_frame().await {
            crate::helpers::Frame::Text(_) => break,
            _ => {
                assert!(tokio::time::Instant::now() < deadline, "slot never freed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    app.stop().await;
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_refuses_with_1013_and_reports_not_ready() {
    let b = Backing::new().await;
    let mut cfg = b.config();
    // nothing listens on port 1
    cfg.database = storage::DatabaseArgs::for_url("postgres://postgres@127.0.0.1:1/nope");
    let app = TestApp::spawn_unready(cfg).await;
    let res = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 503);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_ne!(body["checks"]["postgres"], "ok", "{body}");
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let mut ws = app.connect(&format!("?token={}", b.token)).await;
    let (code, reason) = ws.expect_close().await;
    assert_eq!(code, 1013);
    assert!(reason.contains("cannot be checked"), "{reason}");
    app.stop().await;
    b.cleanup().await;
}
