//! Several gateway replicas on one stream: each delivers every event.

use crate::helpers::{Backing, TestApp, user_payload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_both_deliver_every_event() {
    let b = Backing::new().await;
    let g1 = TestApp::spawn(b.config()).await;
    let g2 = TestApp::spawn(b.config()).await;
    let mut c1 = g1.connect_ok(&b.token).await;
    let mut c2 = g2.connect_ok(&b.token).await;
    let mut seqs = Vec::new();
    for n in 0..10 {
        seqs.push(b.publish("user.created", user_payload(n)).await);
    }
    for ws in [&mut c1, &mut c2] {
        let mut got = Vec::new();
        for _ in 0..10 {
            got.push(ws.next_event().await["seq"].as_u64().unwrap());
        }
        assert_eq!(got, seqs);
    }
    // a client that moves to the other replica resumes there without a gap
    let since = seqs[4];
    drop(c1);
    let mut moved = g2
        .connect(&format!("?token={}&since={since}", b.token))
        .await;
    assert_eq!(moved.next_json().await["type"], "connection");
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(moved.next_event().await["seq"].as_u64().unwrap());
    }
    assert_eq!(got, seqs[5..].to_vec());
    g1.stop().await;
    g2.stop().await;
    b.cleanup().await;
}
