use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

fn valid() -> Value {
    json!({"name": "n", "url": "https://example.com/h", "event_type": "user.created"})
}

fn with(field: &str, value: Value) -> Value {
    let mut v = valid();
    v[field] = value;
    v
}

/// `(type, loc)` of every error of a 422.
fn errors(body: &Value) -> Vec<(String, Vec<Value>)> {
    body["detail"]
        .as_array()
        .unwrap_or_else(|| panic!("no detail list: {body}"))
        .iter()
        .map(|e| {
            assert!(e["msg"].is_string(), "{e}");
            (
                e["type"].as_str().unwrap().to_owned(),
                e["loc"].as_array().unwrap().clone(),
            )
        })
        .collect()
}

async fn raw(
    app: &TestApp,
    method: Method,
    path: &str,
    ct: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut rb = app.req(method, path).body(body);
    if let Some(ct) = ct {
        rb = rb.header("Content-Type", ct);
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}")),
    )
}

#[tokio::test]
async fn body_fields_are_validated_like_fastapi() {
    let app = spawn_app().await;
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"url": "https://example.com/h", "event_type": "user.created"}),
            "missing",
            "name",
        ),
        (with("name", json!("")), "string_too_short", "name"),
        (
            with("name", json!("x".repeat(256))),
            "string_too_long",
            "name",
        ),
        (with("name", json!(12)), "string_type", "name"),
        (with("name", Value::Null), "string_type", "name"),
        (
            with("event_type", json!("user.deleted")),
            "value_error",
            "event_type",
        ),
        (
            with("event_type", json!("x".repeat(51))),
            "string_too_long",
            "event_type",
        ),
        (
            with("event_type", json!(["user.created"])),
            "string_type",
            "event_type",
        ),
        (
            with("secret", json!("s".repeat(129))),
            "string_too_long",
            "secret",
        ),
        (with("secret", json!(true)), "string_type", "secret"),
        (with("url", json!("not a url")), "value_error", "url"),
        (with("url", json!("/relative/path")), "value_error", "url"),
        (
            with("url", json!("ftp://example.com/x")),
            "value_error",
            "url",
        ),
        (
            with("url", json!("https://user:pw@example.com/x")),
            "value_error",
            "url",
        ),
        (with("url", json!("http://")), "value_error", "url"),
        (
            with("description", json!({"a": 1})),
            "string_type",
            "description",
        ),
        (with("name", json!("nul\u{0}byte")), "value_error", "name"),
    ];
    for (body, kind, field) in cases {
        let (status, resp) = app.post("/webhooks", body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} -> {resp}");
        assert_eq!(
            errors(&resp),
            vec![(kind.to_owned(), vec![json!("body"), json!(field)])],
            "{body} -> {resp}"
        );
        // A password in a refused URL is not echoed back.
        assert!(!resp.to_string().contains("user:pw@"), "{resp}");
    }
    // Several bad fields are all reported, in field order.
    let (status, resp) = app
        .post(
            "/webhooks",
            json!({"name": "", "event_type": "nope", "secret": 5}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let got: Vec<String> = errors(&resp)
        .into_iter()
        .map(|(_, loc)| loc[1].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, ["name", "url", "event_type", "secret"]);
    // The secret is never echoed back.
    let (_, resp) = app
        .post(
            "/webhooks",
            with("secret", json!(format!("TOPSECRET{}", "s".repeat(200)))),
        )
        .await;
    assert!(!resp.to_string().contains("TOPSECRET"), "{resp}");
    // The unknown type error names the valid ones.
    let (_, resp) = app
        .post("/webhooks", with("event_type", json!("user.deleted")))
        .await;
    let msg = resp["detail"][0]["msg"].as_str().unwrap();
    for t in proto_events::EventType::names() {
        assert!(msg.contains(t), "{msg}");
    }
    // Full shape of one error.
    let (_, resp) = app.post("/webhooks", with("name", json!(""))).await;
    assert_eq!(
        resp,
        json!({"detail": [{"type": "string_too_short", "loc": ["body", "name"],
            "msg": "String should have at least 1 character", "input": "",
            "ctx": {"min_length": 1}}]})
    );
    let (_, resp) = app
        .post(
            "/webhooks",
            json!({"url": "https://example.com/h", "event_type": "*"}),
        )
        .await;
    assert_eq!(
        resp,
        json!({"detail": [{"type": "missing", "loc": ["body", "name"], "msg": "Field required", "input": null}]})
    );
}

#[tokio::test]
async fn patch_bodies_are_validated() {
    let app = spawn_app_with(|c| c.allow_private_targets = false).await;
    let hook = app
        .create_webhook("a", "https://example.com/a", "user.created")
        .await;
    let path = format!("/webhooks/{}", hook["id"]);
    for (body, kind, field) in [
        (json!({"name": ""}), "string_too_short", "name"),
        (json!({"name": 5}), "string_type", "name"),
        (json!({"url": "http://10.0.0.1/x"}), "value_error", "url"),
        (json!({"is_active": "maybe"}), "bool_parsing", "is_active"),
        (json!({"is_active": [1]}), "bool_type", "is_active"),
        (json!({"body_format": "xml"}), "enum", "body_format"),
        (
            json!({"secret": "s".repeat(129)}),
            "string_too_long",
            "secret",
        ),
    ] {
        let (status, resp) = app.patch(&path, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} -> {resp}");
        assert_eq!(
            errors(&resp),
            vec![(kind.to_owned(), vec![json!("body"), json!(field)])]
        );
    }
    // Nothing changed.
    let (_, now) = app.get(&path).await;
    assert_eq!(now, hook);
    // `null` leaves every field as it is (the bot's rule).
    let nulls = json!({"name": null, "url": null, "event_type": null, "secret": null,
                       "description": null, "is_active": null, "body_format": null});
    let (status, resp) = app.patch(&path, nulls).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    for same in [
        "name",
        "url",
        "event_type",
        "description",
        "is_active",
        "body_format",
    ] {
        assert_eq!(resp[same], hook[same], "{same}");
    }
}

#[tokio::test]
async fn malformed_bodies_and_content_types() {
    let app = spawn_app().await;
    // Malformed JSON: json_invalid at the byte position.
    let (status, resp) = raw(
        &app,
        Method::POST,
        "/webhooks",
        Some("application/json"),
        br#"{"name": }"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(resp["detail"][0]["type"], "json_invalid");
    assert_eq!(resp["detail"][0]["msg"], "JSON decode error");
    assert_eq!(resp["detail"][0]["loc"], json!(["body", 9]));
    // Invalid UTF-8.
    let (status, resp) = raw(
        &app,
        Method::POST,
        "/webhooks",
        Some("application/json"),
        b"{\"name\": \"\xff\xfe\"}".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(resp["detail"][0]["type"], "json_invalid");
    // Not an object.
    for body in [&b"[1,2]"[..], b"\"text\"", b"42"] {
        let (status, resp) = raw(
            &app,
            Method::POST,
            "/webhooks",
            Some("application/json"),
            body.to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            errors(&resp),
            vec![("model_attributes_type".to_owned(), vec![json!("body")])]
        );
        assert!(!resp.to_string().contains("ECHO-ME-NOT"), "{resp}");
    }
    // Empty body.
    let (status, resp) = raw(
        &app,
        Method::POST,
        "/webhooks",
        Some("application/json"),
        Vec::new(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        errors(&resp),
        vec![("missing".to_owned(), vec![json!("body")])]
    );
    // A non-JSON content type is not parsed (as in FastAPI), and the raw
    // body, which may hold the secret, is not echoed.
    let body = serde_json::to_vec(&with("secret", json!("ECHO-ME-NOT"))).unwrap();
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let (status, resp) = raw(&app, Method::POST, "/webhooks", Some(ct), body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{ct}");
        assert_eq!(
            errors(&resp),
            vec![("model_attributes_type".to_owned(), vec![json!("body")])]
        );
    }
    // No content type, a JSON subtype, or a charset parameter: parsed as JSON.
    for ct in [
        None,
        Some("application/json; charset=utf-8"),
        Some("application/vnd.api+json"),
    ] {
        let (status, resp) = raw(&app, Method::POST, "/webhooks", ct, body.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{ct:?}: {resp}");
    }
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let app = spawn_app_with(|c| c.max_body_bytes = 1024).await;
    let big = with("description", json!("x".repeat(2000)));
    let (status, resp) = app.post("/webhooks", big.clone()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(resp["detail"].as_str().unwrap().contains("1024"));
    // Also when sent chunked, without a Content-Length.
    let bytes = serde_json::to_vec(&big).unwrap();
    let mut sock = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let mut req = format!(
        "POST /webhooks HTTP/1.1\r\nHost: x\r\nX-API-Key: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        app.token
    )
    .into_bytes();
    for c in bytes.chunks(100) {
        req.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        req.extend_from_slice(c);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The server may answer before reading everything.
    let _ = sock.write_all(&req).await;
    let mut answer = Vec::new();
    let _ = sock.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"detail\""), "{answer}");
    let hook = app.create_webhook("a", "https://example.com/a", "*").await;
    let (status, _) = app
        .patch(
            &format!("/webhooks/{}", hook["id"]),
            json!({"description": "y".repeat(4000)}),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn query_strings_and_path_ids_are_validated() {
    let app = spawn_app().await;
    let cases = [
        ("/webhooks?limit=0", "greater_than_equal", "limit"),
        ("/webhooks?limit=201", "less_than_equal", "limit"),
        (
            "/webhooks?limit=99999999999999999999999999",
            "less_than_equal",
            "limit",
        ),
        ("/webhooks?limit=abc", "int_parsing", "limit"),
        ("/webhooks?offset=-1", "greater_than_equal", "offset"),
        ("/webhooks?offset=1.5", "int_parsing", "offset"),
        // Beyond int64: refused like `limit`, never clamped.
        (
            "/webhooks?offset=9223372036854775808",
            "less_than_equal",
            "offset",
        ),
        ("/webhooks?is_active=maybe", "bool_parsing", "is_active"),
        ("/webhooks?event_type=%00", "value_error", "event_type"),
    ];
    for (path, kind, field) in cases {
        let (status, resp) = app.get(path).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {resp}");
        assert_eq!(
            errors(&resp),
            vec![(kind.to_owned(), vec![json!("query"), json!(field)])],
            "{path}"
        );
    }
    let (_, resp) = app.get("/webhooks?limit=500").await;
    assert_eq!(
        resp,
        json!({"detail": [{"type": "less_than_equal", "loc": ["query", "limit"],
            "msg": "Input should be less than or equal to 200", "input": "500", "ctx": {"le": 200}}]})
    );
    // pydantic's lax booleans.
    for v in ["true", "1", "yes", "on", "false", "0", "no", "off"] {
        assert_eq!(
            app.get(&format!("/webhooks?is_active={v}")).await.0,
            StatusCode::OK,
            "{v}"
        );
    }
    // Non-numeric ids.
    for path in ["/webhooks/abc", "/webhooks/1.5", "/webhooks/abc/deliveries"] {
        let (status, resp) = app.get(path).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}");
        assert_eq!(
            errors(&resp),
            vec![(
                "int_parsing".to_owned(),
                vec![json!("path"), json!("webhook_id")]
            )]
        );
    }
    let (status, resp) = app.post("/webhooks/1/deliveries/x/retry", json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{resp}");
    // Unknown routes and methods answer JSON.
    assert_eq!(
        app.get("/nope").await,
        (StatusCode::NOT_FOUND, json!({"detail": "Not Found"}))
    );
    assert_eq!(
        app.call(Method::PUT, "/webhooks/1", Some(json!({}))).await,
        (
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"detail": "Method Not Allowed"})
        )
    );
    // With the Allow header RFC 9110 requires.
    for (method, path, allow) in [
        (Method::PUT, "/webhooks/1", "GET, PATCH, DELETE"),
        (Method::DELETE, "/webhooks", "GET, POST"),
        (Method::GET, "/webhooks/1/test", "POST"),
        (Method::TRACE, "/events/types", "GET"),
    ] {
        let resp = app.req(method.clone(), path).send().await.unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(
            resp.headers().get("allow").and_then(|v| v.to_str().ok()),
            Some(allow),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn sql_looking_strings_are_just_strings() {
    let app = spawn_app().await;
    let evil = "x'); DROP TABLE webhooks; --";
    let hook = app
        .post(
            "/webhooks",
            json!({"name": evil, "url": "https://example.com/a?q=' OR 1=1 --",
            "event_type": "*", "description": "\" OR \"\"=\""}),
        )
        .await;
    assert_eq!(hook.0, StatusCode::CREATED);
    assert_eq!(hook.1["name"], evil);
    let (status, page) = app.get("/webhooks?event_type=%27%20OR%201%3D1%20--").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["total"], 0);
    let (_, page) = app.get("/webhooks").await;
    assert_eq!(page["total"], 1);
}

#[tokio::test]
async fn internal_destinations_are_refused_unless_allowed() {
    let app = spawn_app_with(|c| c.allow_private_targets = false).await;
    for url in [
        "http://127.0.0.1/hook",
        "http://127.1.2.3:8080/hook",
        "http://localhost/hook",
        "http://api.localhost/hook",
        "http://10.1.2.3/hook",
        "http://172.16.0.1/hook",
        "http://192.168.1.10/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.0.1/hook",
        "http://0.0.0.0/hook",
        "http://[::1]/hook",
        "http://[fe80::1]/hook",
        "http://[fd00::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[fd00:ec2::254]/hook",
    ] {
        let (status, resp) = app.post("/webhooks", with("url", json!(url))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {resp}");
        assert_eq!(
            errors(&resp),
            vec![("value_error".to_owned(), vec![json!("body"), json!("url")])]
        );
        assert!(
            resp["detail"][0]["msg"]
                .as_str()
                .unwrap()
                .contains("not allowed"),
            "{resp}"
        );
    }
    assert_eq!(
        app.post("/webhooks", with("url", json!("https://93.184.215.14/x")))
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(
        app.post(
            "/webhooks",
            with("url", json!("https://[2606:4700::1111]/x"))
        )
        .await
        .0,
        StatusCode::CREATED
    );

    let open = spawn_app_with(|c| c.allow_private_targets = true).await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
    ] {
        assert_eq!(
            open.post("/webhooks", with("url", json!(url))).await.0,
            StatusCode::CREATED,
            "{url}"
        );
    }
    // Credentials are refused even then.
    assert_eq!(
        open.post("/webhooks", with("url", json!("http://u:p@127.0.0.1/x")))
            .await
            .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
}

#[tokio::test]
async fn patch_changes_the_event_type_and_validates_it() {
    let app = spawn_app().await;
    let hook = app
        .create_webhook("a", "https://example.com/a", "user.created")
        .await;
    let path = format!("/webhooks/{}", hook["id"]);
    let (status, resp) = app.patch(&path, json!({"event_type": "ticket.*"})).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(resp["event_type"], "ticket.*");
    for (body, kind) in [
        (json!({"event_type": "user.deleted"}), "value_error"),
        (json!({"event_type": 7}), "string_type"),
        (json!({"event_type": ""}), "string_too_short"),
        (json!({"event_type": "x".repeat(51)}), "string_too_long"),
    ] {
        let (status, resp) = app.patch(&path, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} -> {resp}");
        assert_eq!(
            errors(&resp),
            vec![(kind.to_owned(), vec![json!("body"), json!("event_type")])]
        );
    }
    assert_eq!(app.get(&path).await.1["event_type"], "ticket.*");
}

#[tokio::test]
async fn urls_without_an_authority_or_with_spaces_are_refused() {
    let app = spawn_app().await;
    let hook = app
        .create_webhook("a", "https://example.com/a", "user.created")
        .await;
    let path = format!("/webhooks/{}", hook["id"]);
    for url in [
        "http:///x",
        "https:///example.com/h",
        "http:/example.com/h",
        "http:example.com/h",
        " https://example.com/h",
        "https://example.com/h ",
        "\thttps://example.com/h",
        "https://example.com/h\n",
        "https://exa\nmple.com/h",
        "https://example.com/a\tb",
    ] {
        let (status, resp) = app.post("/webhooks", with("url", json!(url))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url:?}: {resp}");
        assert_eq!(
            errors(&resp),
            vec![("value_error".to_owned(), vec![json!("body"), json!("url")])],
            "{url:?}"
        );
        assert_eq!(resp["detail"][0]["input"], json!(url), "{url:?}");
        let (status, _) = app.patch(&path, json!({"url": url})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url:?}");
    }
    // Stored exactly as sent when valid.
    let (status, resp) = app
        .post(
            "/webhooks",
            with("url", json!("HTTPS://Example.com:443/a?b=c")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{resp}");
    assert_eq!(resp["url"], "HTTPS://Example.com:443/a?b=c");
    // A name of spaces is a name (FastAPI's `min_length` counts them too).
    let (status, resp) = app.post("/webhooks", with("name", json!("   "))).await;
    assert_eq!(status, StatusCode::CREATED, "{resp}");
    assert_eq!(resp["name"], "   ");
}
