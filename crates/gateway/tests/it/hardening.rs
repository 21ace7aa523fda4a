//! Hostile WebSocket input, written byte by byte over a raw socket:
//! oversized frames are refused on their header, protocol errors get a
//! close frame with the right code, repeated query parameters are handled
//! consistently.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{Backing, TestApp};
use crate::raw::{self, OP_BINARY, OP_CONT, OP_PING, OP_TEXT, RawWs, Read};

/// How long the server may take to refuse a frame on its header: far less
/// than it would take to send the declared bytes.
const AT_ONCE: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_is_refused_on_its_header_with_1009() {
    let b = Backing::new().await;
    let app = TestApp::spawn(b.config()).await;

    // a binary frame declaring 2^40 bytes: only the header and the mask
    // are sent, and the close comes without waiting for the payload
    let mut ws = RawWs::connect_ok(app.addr, &b.token).await;
    ws.send(&raw::header(0x80 | OP_BINARY, 1 << 40)).await;
    let (code, reason) = ws.expect_close_within(AT_ONCE).await;
    assert_eq!(code, 1009);
    assert_eq!(reason, "Message too big: the limit is 65536 bytes");

    // the same while the client keeps streaming zeros
    let mut ws = RawWs::connect_ok(app.addr, &b.token).await;
    ws.send(&raw::header(0x80 | OP_TEXT, 1 << 40)).await;
    let zeros = vec![0u8; 16 * 1024];
    let writer = {
        let (mut r, mut w) = ws.tcp.into_split();
        let zeros = zeros.clone();
        let task = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for _ in 0..64 {
                if w.write_all(&zeros).await.is_err() {
                    break;
                }
            }
            w
        });
        // read the close while the zeros go out
        let mut buf = Vec::new();
        let deadline = tokio::time::Instant::now() + AT_ONCE;
        let mut chunk = [0u8; 4096];
        loop {
            use tokio::io::AsyncReadExt;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let n = tokio::time::timeout(left, r.read(&mut chunk))
                .await
                .expect("no close while zeros were streamed")
                .unwrap_or(0);
            assert!(n > 0, "the connection ended without a close frame");
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() >= 4 && buf[0] == 0x88 {
                break;
            }
        }
        assert_eq!(u16::from_be_bytes([buf[2], buf[3]]), 1009);
        task
    };
    let _ = writer.await;

    // a single frame just over the limit, sent whole, too
    let mut ws = RawWs::connect_ok(app.addr, &b.token).await;
    ws.send_lossy(&raw::frame(0x80 | OP_TEXT, &vec![b'x'; 64 * 1024 + 1]))
        .await;
    assert_eq!(ws.expect_close().await.0, 1009);

    let m = app.metrics().await;
    assert!(
        m.contains(r#"gateway_clients_closed_total{reason="frame_too_large"} 3"#),
        "{m}"
    );
    app.stop().await;
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragmented_message_past_the_limit_is_refused_with_1009() {
    let b = Backing::new().await;
    let app = TestApp::spawn(b.config()).await;

    // fragments under the limit that add up to it are fine
    let mut ws = RawWs::connect_ok(app.addr, &b.token).await;
    ws.send(&raw::frame(OP_TEXT, br#"{"type":"#)).await;
    ws.send(&raw::frame(0x80 | OP_PING, b"hi")).await; // control frames may interleave
    ws.send(&raw::frame(0x80 | OP_CONT, br#""ping"}"#)).await;
    let mut answers = Vec::new();
    while answers.len() < 2 {
        match ws.read().await {
            Read::Frame(f) => answers.push((f.opcode, f.payload)),
            other => panic!("{other:?}"),
        }
    }
    assert!(
        answers.contains(&(raw::OP_PONG, b"hi".to_vec())),
        "{answers:?}"
    );
    assert!(
        answers.contains(&(OP_TEXT, br#"{"type":"pong"}"#.to_vec())),
        "{answers:?}"
    );

    // 40 KiB + a continuation declaring 40 KiB: refused on the second
    // header, before its payload
    let mut ws = RawWs::connect_ok(app.addr, &b.token).await;
    ws.send(&raw::frame(OP_TEXT, &vec![b' '; 40 * 1024])).await;
    ws.send(&raw::header(OP_CONT, 40 * 1024)).await;
    let (code, reason) = ws.expect_close_within(AT_ONCE).await;
    assert_eq!(code, 1009);
    assert!(reason.contains("65536"), "{reason}");

    // many small fragments past the limit in total
    let mut ws = RawWs::connect_ok(app.addr, &b.token).await;
    ws.send(&raw::frame(OP_BINARY, &[b' '; 1000])).await;
    for _ in 0..70 {
        ws.send_lossy(&raw::frame(OP_CONT, &[b' '; 1000])).await;
    }
    assert_eq!(ws.expect_close().await.0, 1009);
    app.stop().await;
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_get_a_close_frame() {
    let b = Backing::new().await;
    let app = TestApp::spawn(b.config()).await;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "invalid UTF-8 in a text frame",
            raw::frame(0x80 | OP_TEXT, b"{\"type\":\"\xff\xfe\"}"),
            1007,
        ),
        (
            "invalid UTF-8 split over fragments",
            [
                raw::frame(OP_TEXT, b"ok \xe2\x82"),
                raw::frame(0x80 | OP_CONT, b"\x28 no"),
            ]
            .concat(),
            1007,
        ),
        ("RSV1 set", raw::frame(0x80 | 0x40 | OP_TEXT, b"{}"), 1002),
        ("RSV3 set", raw::frame(0x80 | 0x10 | OP_TEXT, b"{}"), 1002),
        ("reserved opcode", raw::frame(0x80 | 0x3, b"x"), 1002),
        (
            "continuation without a start",
            raw::frame(0x80 | OP_CONT, b"x"),
            1002,
        ),
        (
            "a new message inside a fragmented one",
            [raw::frame(OP_TEXT, b"a"), raw::frame(0x80 | OP_TEXT, b"b")].concat(),
            1002,
        ),
        ("a fragmented ping", raw::frame(OP_PING, b"x"), 1002),
        (
            "a ping over 125 bytes",
            raw::frame(0x80 | OP_PING, &[b'p'; 126]),
            1002,
        ),
        ("an unmasked frame", vec![0x81, 0x02, b'{', b'}'], 1002),
        (
            "a close frame with one byte",
            raw::frame(0x80 | raw::OP_CLOSE, &[3]),
            1002,
        ),
        (
            "a close frame with a reserved code",
            raw::close_frame(1005),
            1002,
        ),
        (
            "a close reason that is not UTF-8",
            raw::frame(0x80 | raw::OP_CLOSE, &[0x03, 0xe8, 0xff]),
            1007,
        ),
    ];
    for (what, bytes, want) in cases {
        let mut ws = RawWs::connect_ok(app.addr, &b.token).await;
        ws.send_lossy(&bytes).await;
        let (code, reason) = ws.expect_close().await;
        assert_eq!(code, want, "{what}: {reason}");
        assert!(!reason.is_empty(), "{what}: a reason is given");
        // and then the connection ends
        ws.time_to_eof(Duration::from_secs(5)).await;
    }
    let m = app.metrics().await;
    assert!(
        m.contains(r#"gateway_clients_closed_total{reason="protocol_error"} 13"#),
        "{m}"
    );
    // a binary message that is not UTF-8 is not a protocol error: ignored
    let mut ws = RawWs::connect_ok(app.addr, &b.token).await;
    ws.send(&raw::frame(0x80 | OP_BINARY, b"\xff\xfe")).await;
    ws.send(&raw::frame(0x80 | OP_TEXT, br#"{"type":"ping"}"#))
        .await;
    assert_eq!(ws.next_data().await.text(), r#"{"type":"pong"}"#);
    app.stop().await;
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_query_parameters_are_handled_consistently() {
    let b = Backing::new().await;
    let app = TestApp::spawn(b.config()).await;
    let base = b
        .publish("user.created", crate::helpers::user_payload(1))
        .await;

    // token twice: the first one counts (never a false "no token")
    let mut ws = app
        .connect(&format!("?token={}&token=other", b.token))
        .await;
    assert_eq!(ws.next_json().await["type"], "connection");
    ws.roundtrip().await;
    let mut ws = app
        .connect(&format!("?token=wrong&token={}", b.token))
        .await;
    assert_eq!(
        ws.expect_close().await,
        (1008, "Unauthorized: Invalid token".to_owned())
    );
    // an empty first token does not hide a second one
    let mut ws = app.connect(&format!("?token=&token={}", b.token)).await;
    assert_eq!(ws.next_json().await["type"], "connection");

    // events twice: the lists are combined
    let mut ws = app
        .connect(&format!(
            "?token={}&events=ticket.*&events=user.created",
            b.token
        ))
        .await;
    assert_eq!(ws.next_json().await["type"], "connection");
    assert_eq!(
        ws.next_json().await,
        json!({"type": "subscribed", "events": ["ticket.*", "user.created"]})
    );

    // since twice: the first one counts
    let mut ws = app
        .connect(&format!("?token={}&since={}&since=0", b.token, base - 1))
        .await;
    assert_eq!(ws.next_json().await["type"], "connection");
    assert_eq!(ws.next_event().await["seq"], base);
    let resumed = ws.next_json().await;
    assert_eq!(resumed["type"], "resumed", "{resumed}");
    assert_eq!(resumed["since"], base - 1);
    app.stop().await;
    b.cleanup().await;
}
