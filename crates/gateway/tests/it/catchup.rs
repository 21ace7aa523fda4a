//! Catch-up mode: a client whose queue overflows is fed from the stream at
//! the pace it reads and handed back to live events with no gap and no
//! duplicate; its limits; a client that stops reading is still dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Backing, TestApp, WAIT, Ws, user_payload};

/// Publishes `n` events in concurrent batches; returns the sequences.
async fn publish_many(b: &Backing, n: u64, gate: impl Fn(u64) -> bool) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut i = 0;
    while i < n {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !gate(i) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the fast client was held up at {i}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let batch = (n - i).min(50);
        let sends = (i..i + batch).map(|k| {
            b.publisher
                .publish_value("ticket.message_added", json!({"ticket_id": 1, "message_id": k, "user_id": 1,
                    "is_from_admin": false, "message_text": "x".repeat(300), "has_media": false, "status": "open"}))
        });
        for r in futures::future::join_all(sends).await {
            seqs.push(r.expect("publish").sequence);
        }
        i += batch;
    }
    seqs.sort_unstable();
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_every_event_once_in_order_without_a_close() {
    let b = Backing::new().await;
    let mut cfg = b.config();
    cfg.client_queue_messages = 64;
    cfg.client_queue_bytes = 64 * 1024;
    cfg.socket_send_buffer = 16 * 1024;
    let app = TestApp::spawn(cfg).await;
    let url = app.ws_url(&format!("?token={}", b.token));
    let mut slow = Ws::connect_small_buffer(&url, app.addr).await;
    assert_eq!(slow.next_json().await["type"], "connection");
    let mut fast = app.connect_ok(&b.token).await;
    let total = 20_000u64;

    let fast_seen = Arc::new(AtomicU64::new(0));
    let counter = fast_seen.clone();
    let fast_reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while (seqs.len() as u64) < total {
            seqs.push(fast.next_event().await["seq"].as_u64().unwrap());
            counter.fetch_add(1, Ordering::SeqCst);
        }
        seqs
    });
    // the slow reader pauses often while the publisher runs
    let slow_reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        let mut kinds = Vec::new();
        while (seqs.len() as u64) < total {
            let v: Value = slow.next_json().await;
            match v["seq"].as_u64() {
                Some(seq) => seqs.push(seq),
                None => kinds.push(v),
            }
            if seqs.len() % 200 == 0 && seqs.len() < 15_000 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // what follows the last event (a caught_up, at least), up to a pong
        slow.send_json(json!({"type": "ping"})).await;
        loop {
            let v = slow.next_json().await;
            if v["type"] == "pong" {
                break;
            }
            kinds.push(v);
        }
        (seqs, kinds)
    });
    let published = publish_many(&b, total, |i| fast_seen.load(Ordering::SeqCst) + 400 >= i).await;

    let fast_seqs = tokio::time::timeout(Duration::from_secs(60), fast_reader)
        .await
        .expect("the fast client was held up")
        .unwrap();
    assert_eq!(fast_seqs, published);
    let (seqs, kinds) = tokio::time::timeout(Duration::from_secs(120), slow_reader)
        .await
        .expect("the slow client did not get every event")
        .unwrap();
    assert_eq!(seqs.len(), published.len(), "gap or duplicate");
    assert_eq!(seqs, published, "every event once, in order");
    let types: Vec<&str> = kinds.iter().filter_map(|k| k["type"].as_str()).collect();
    assert!(types.contains(&"catching_up"), "{kinds:?}");
    assert!(types.contains(&"caught_up"), "{kinds:?}");
    assert!(!types.contains(&"resync_required"), "{kinds:?}");
    let caught = kinds.iter().find(|k| k["type"] == "caught_up").unwrap();
    assert!(caught["epoch"].as_str().is_some_and(|e| !e.is_empty()));

    let m = app.metrics().await;
    assert!(!m.contains("slow_client"), "{m}");
    assert!(m.contains("gateway_catchup_clients 0"), "{m}");
    let started = metric(&m, "gateway_catchups_started_total");
    assert!(started >= 1, "{m}");
    assert_eq!(metric(&m, "gateway_catchups_finished_total"), started);
    assert!(metric(&m, "gateway_catchup_events_sent_total") > 0, "{m}");
    app.stop().await;
    b.cleanup().await;
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_too_far_behind_is_told_to_resync_then_gets_live_events() {
    let b = Backing::new().await;
    let mut cfg = b.config();
    cfg.client_queue_messages = 16;
    cfg.socket_send_buffer = 8 * 1024;
    cfg.catchup_max_events = 100;
    let app = TestApp::spawn(cfg).await;
    let url = app.ws_url(&format!("?token={}", b.token));
    let mut slow = Ws::connect_small_buffer(&url, app.addr).await;
    assert_eq!(slow.next_json().await["type"], "connection");
    // the client reads nothing while 2,000 events go by
    let published = publish_many(&b, 2000, |_| true).await;
    let mut seqs = Vec::new();
    let resync = loop {
        let v = slow.next_json().await;
        if v["type"] == "resync_required" {
            break v;
        }
        if let Some(s) = v["seq"].as_u64() {
            seqs.push(s);
        }
    };
    assert!(
        resync["message"]
            .as_str()
            .unwrap()
            .contains("catch-up limit"),
        "{resync}"
    );
    assert!(resync["epoch"].as_str().is_some());
    // the stream's first kept sequence, as a resume's resync gives it
    assert!(
        resync["first_seq"].as_u64().is_some_and(|f| f >= 1),
        "{resync}"
    );
    // live events follow
    let last = b.publish("user.created", user_payload(1)).await;
    loop {
        let v = slow.next_json().await;
        if v["seq"].as_u64() == Some(last) {
            break;
        }
    }
    assert!(seqs.len() < published.len());
    app.stop().await;
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped() {
    let b = Backing::new().await;
    let mut cfg = b.config();
    cfg.client_queue_messages = 16;
    cfg.socket_send_buffer = 8 * 1024;
    cfg.write_timeout = Duration::from_secs(1);
    let app = TestApp::spawn(cfg).await;
    let url = app.ws_url(&format!("?token={}", b.token));
    let stalled = Ws::connect_small_buffer(&url, app.addr).await;
    // a client that keeps reading stays
    let mut reader = app.connect_ok(&b.token).await;
    let reading = tokio::spawn(async move {
        for _ in 0..1000 {
            reader.next_event().await;
        }
        reader
    });
    publish_many(&b, 1000, |_| true).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = app.metrics().await;
        if m.contains(r#"gateway_clients_closed_total{reason="write_timeout"} 1"#) {
            assert!(m.contains("gateway_connections_open 1"), "{m}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled client was not dropped: {m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut reader = reading.await.unwrap();
    reader.roundtrip().await;
    drop(stalled);
    app.stop().await;
    b.cleanup().await;
}

/// A reader slower than the stream keeps the gateway's queue for it full,
/// so the gateway stops reading its socket (backpressure) and does not see
/// its pongs; the events it takes still show that it is alive, so it is
/// not closed for a ping timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_whose_pongs_wait_is_not_timed_out() {
    let b = Backing::new().await;
    let mut cfg = b.config();
    cfg.ping_interval = Duration::from_millis(300);
    cfg.pong_timeout = Duration::from_secs(1);
    cfg.socket_send_buffer = 8 * 1024;
    let app = TestApp::spawn(cfg).await;
    let url = app.ws_url(&format!("?token={}", b.token));
    let mut slow = Ws::connect_small_buffer(&url, app.addr).await;
    assert_eq!(slow.next_json().await["type"], "connection");
    let total = 1500u64;
    let published = publish_many(&b, total, |_| true).await;
    // about 4 s of steady reading, four times the pong timeout
    let started = tokio::time::Instant::now();
    let mut seqs = Vec::new();
    while (seqs.len() as u64) < total {
        match slow.next_frame().await {
            crate::helpers::Frame::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if let Some(seq) = v["seq"].as_u64() {
                    seqs.push(seq);
                }
            }
            other => panic!("after {} events: {other:?}", seqs.len()),
        }
        tokio::time::sleep(Duration::from_micros(2500)).await;
    }
    assert!(started.elapsed() > Duration::from_secs(3));
    assert_eq!(seqs, published, "every event once, in order");
    app.stop().await;
    b.cleanup().await;
}
