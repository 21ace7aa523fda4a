//! Resume with `since`: no gap and no duplicate while events keep
//! arriving; resync when too old; filters apply to the replay.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::helpers::{Backing, TestApp, ticket_payload, user_payload};

/// Publishes events until stopped; returns the last sequence.
fn publish_in_background(
    b: &Backing,
    stop: Arc<AtomicBool>,
    last: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let publisher = b.publisher.clone();
    tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let p = publisher
                .publish_value("user.created", user_payload(n))
                .await
                .expect("publish");
            last.store(p.sequence, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

async fn read_until(ws: &mut crate::helpers::Ws, last: u64, seqs: &mut Vec<u64>) {
    while seqs.last().copied().unwrap_or(0) < last {
        let v = ws.next_event().await;
        seqs.push(v["seq"].as_u64().unwrap());
    }
}

fn assert_contiguous(seqs: &[u64], from: u64, to: u64) {
    let want: Vec<u64> = (from..=to).collect();
    assert_eq!(seqs.len(), want.len(), "gap or duplicate: {seqs:?}");
    assert_eq!(seqs, want.as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_with_since_has_no_gap_and_no_duplicate_under_load() {
    let b = Backing::new().await;
    let app = TestApp::spawn(b.config()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicU64::new(0));

    for round in 0..3 {
        // a first connection sees some events, then drops
        let mut ws = app.connect_ok(&b.token).await;
        let publisher = publish_in_background(&b, stop.clone(), last.clone());
        let mut first = Vec::new();
        for _ in 0..20 {
            first.push(ws.next_event().await["seq"].as_u64().unwrap());
        }
        let seen = *first.last().unwrap();
        drop(ws);
        // events keep arriving while the client is away and while it resumes
        tokio::time::sleep(Duration::from_millis(100 + round * 50)).await;
        let mut ws = app
            .connect(&format!("?token={}&since={seen}", b.token))
            .await;
        assert_eq!(ws.next_json().await["type"], "connection");
        let mut seqs = Vec::new();
        let mut resumed = None;
        // read a while after the hand-over with the publisher running
        while seqs.len() < 150 {
            let v = ws.next_json().await;
            if v["type"] == "resumed" {
                resumed = Some(v);
                continue;
            }
            seqs.push(v["seq"].as_u64().expect("event"));
        }
        stop.store(true, Ordering::SeqCst);
        publisher.await.unwrap();
        stop.store(false, Ordering::SeqCst);
        let end = last.load(Ordering::SeqCst);
        read_until(&mut ws, end, &mut seqs).await;
        assert_contiguous(&seqs, seen + 1, end);
        let resumed = resumed.expect("a resumed message");
        assert_eq!(resumed["since"], seen);
    }
    app.stop().await;
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_message_replays_with_the_filter() {
    let b = Backing::new().await;
    let app = TestApp::spawn(b.config()).await;
    let base = b.publish("user.created", user_payload(0)).await;
    let t1 = b.publish("ticket.created", ticket_payload(1)).await;
    b.publish("user.created", user_payload(2)).await;
    let t2 = b.publish("ticket.created", ticket_payload(3)).await;
    let mut ws = app.connect_ok(&b.token).await;
    ws.send_json(json!({"type": "subscribe", "events": ["ticket.*"]}))
        .await;
    assert_eq!(ws.next_json().await["type"], "subscribed");
    ws.send_json(json!({"type": "resume", "since": base})).await;
    assert_eq!(ws.next_event().await["seq"], t1);
    assert_eq!(ws.next_event().await["seq"], t2);
    let resumed = ws.next_json().await;
    assert_eq!(resumed["type"], "resumed");
    assert_eq!(resumed["replayed"], 2);
    // live events continue after the replay
    b.publish("user.created", user_payload(4)).await;
    let t3 = b.publish("ticket.created", ticket_payload(5)).await;
    assert_eq!(ws.next_event().await["seq"], t3);
    // a resume that is already up to date replays nothing
    ws.send_json(json!({"type": "resume", "since": t3})).await;
    let up = ws.next_json().await;
    assert_eq!(
        (up["type"].as_str(), up["replayed"].as_u64()),
        (Some("resumed"), Some(0))
    );
    // a malformed resume is an error, not a disconnect
    ws.send_json(json!({"type": "resume", "since": "x"})).await;
    assert_eq!(ws.next_json().await["type"], "error");
    app.stop().await;
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_old_since_asks_for_a_resync_then_continues_live() {
    let b = Backing::new().await;
    let app = TestApp::spawn(b.config()).await;
    for n in 0..5 {
        b.publish("user.created", user_payload(n)).await;
    }
    // the stream forgets everything stored so far
    let js = async_nats::jetstream::new(b.nats.clone());
    let mut stream = js.get_stream(b.ns.stream()).await.unwrap();
    stream.purge().await.unwrap();
    let first = stream.info().await.unwrap().state.first_sequence;
    assert_eq!(first, 6);

    let mut ws = app.connect(&format!("?token={}&since=2", b.token)).await;
    assert_eq!(ws.next_json().await["type"], "connection");
    let msg = ws.next_json().await;
    assert_eq!(msg["type"], "resync_required", "{msg}");
    assert_eq!(msg["since"], 2);
    assert_eq!(msg["first_seq"], first);
    assert!(msg["message"].as_str().is_some());
    let seq = b.publish("user.created", user_payload(9)).await;
    assert_eq!(ws.next_event().await["seq"], seq);

    // a since beyond the stream (another stream incarnation) also resyncs
    let mut ws = app
        .connect(&format!("?token={}&since=999999", b.token))
        .await;
    assert_eq!(ws.next_json().await["type"], "connection");
    assert_eq!(ws.next_json().await["type"], "resync_required");
    let m = app.metrics().await;
    assert!(m.contains("gateway_resync_required_total 2"), "{m}");
    app.stop().await;
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_in_the_url_filter_the_replay_and_live_events() {
    let b = Backing::new().await;
    let app = TestApp::spawn(b.config()).await;
    let base = b.publish("user.created", user_payload(0)).await;
    b.publish("user.created", user_payload(1)).await;
    let t1 = b.publish("ticket.created", ticket_payload(2)).await;
    let mut ws = app
        .connect(&format!(
            "?token={}&since={base}&events=ticket.*,payment.completed",
            b.token
        ))
        .await;
    assert_eq!(ws.next_json().await["type"], "connection");
    assert_eq!(
        ws.next_json().await,
        json!({"type": "subscribed", "events": ["ticket.*", "payment.completed"]})
    );
    assert_eq!(ws.next_event().await["seq"], t1);
    let resumed = ws.next_json().await;
    assert_eq!(resumed["type"], "resumed");
    assert_eq!(resumed["replayed"], 1);
    b.publish("user.created", user_payload(3)).await;
    let t2 = b.publish("ticket.created", ticket_payload(4)).await;
    assert_eq!(ws.next_event().await["seq"], t2);
    // a bad pattern in the URL is reported; the connection stays open
    let mut bad = app
        .connect(&format!("?token={}&events=nope.*", b.token))
        .await;
    assert_eq!(bad.next_json().await["type"], "connection");
    assert_eq!(bad.next_json().await["type"], "error");
    bad.roundtrip().await;
    app.stop().await;
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_since_from_another_stream_epoch_asks_for_a_resync() {
    let b = Backing::new().await;
    let app = TestApp::spawn(b.config()).await;
    let mut ws = app.connect_ok(&b.token).await;
    let s1 = b.publish("user.created", user_payload(1)).await;
    let ev = ws.next_event().await;
    let epoch = ev["epoch"]
        .as_str()
        .expect("events carry the epoch")
        .to_owned();
    assert!(!epoch.is_empty());
    b.publish("user.created", user_payload(2)).await;

    // the right epoch replays
    let mut ws = app
        .connect(&format!("?token={}&since={s1}&epoch={epoch}", b.token))
        .await;
    assert_eq!(ws.next_json().await["type"], "connection");
    assert_eq!(ws.next_event().await["seq"], s1 + 1);
    let resumed = ws.next_json().await;
    assert_eq!(resumed["type"], "resumed");
    assert_eq!(resumed["epoch"], epoch.as_str());

    // another epoch (a recreated stream) does not, in the URL or in resume
    let mut ws = app
        .connect(&format!("?token={}&since={s1}&epoch=12345", b.token))
        .await;
    assert_eq!(ws.next_json().await["type"], "connection");
    let msg = ws.next_json().await;
    assert_eq!(msg["type"], "resync_required", "{msg}");
    assert_eq!(msg["epoch"], epoch.as_str());
    assert!(msg["message"].as_str().unwrap().contains("another stream"));
    ws.send_json(json!({"type": "resume", "since": s1, "epoch": "12345"}))
        .await;
    assert_eq!(ws.next_json().await["type"], "resync_required");
    ws.send_json(json!({"type": "resume", "since": s1, "epoch": epoch}))
        .await;
    assert_eq!(ws.next_event().await["seq"], s1 + 1);

    // the stream is deleted and recreated: its epoch changes
    let js = async_nats::jetstream::new(b.nats.clone());
    js.delete_stream(b.ns.stream()).await.unwrap();
    b.publisher.ensure_stream().await.unwrap();
    let mut ws = app
        .connect(&format!("?token={}&since=1&epoch={epoch}", b.token))
        .await;
    assert_eq!(ws.next_json().await["type"], "connection");
    let msg = ws.next_json().await;
    assert_eq!(msg["type"], "resync_required", "{msg}");
    assert_ne!(msg["epoch"], epoch.as_str());
    app.stop().await;
    b.cleanup().await;
}
