//! `GET /sse` and `GET /poll`: the stream over plain HTTP. SSE resumes by
//! `Last-Event-ID` with no gap and no duplicate, says `resync_required`
//! for a cursor of another stream, refuses like `/ws` does and catches a
//! slow reader up; a long-poll answers on the next stored event, or with
//! an empty page after `wait`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::{Backing, TestApp, WAIT, ticket_payload, user_payload};

/// One SSE event as a client parses it.
#[derive(Debug, Default, Clone)]
struct SseEvent {
    event: Option<String>,
    id: Option<String>,
    data: String,
}

impl SseEvent {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("SSE data is JSON")
    }
}

/// A minimal SSE client over a raw socket (what `curl -N` does).
struct Sse {
    tcp: TcpStream,
    buf: Vec<u8>,
    status: u16,
    head: String,
}

impl Sse {
    async fn open(app: &TestApp, target: &str, headers: &[(&str, &str)]) -> Self {
        let tcp = TcpStream::connect(app.addr).await.expect("connect");
        Self::open_on(tcp, app, target, headers).await
    }

    /// Opens the stream over a socket with a tiny receive buffer (a reader
    /// that falls behind at once when it pauses).
    async fn open_small_buffer(app: &TestApp, target: &str) -> Self {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        sock.set_recv_buffer_size(4096).expect("rcvbuf");
        sock.connect(&app.addr.into()).expect("connect");
        sock.set_nonblocking(true).expect("nonblocking");
        let tcp = TcpStream::from_std(sock.into()).expect("tokio stream");
        Self::open_on(tcp, app, target, &[]).await
    }

    async fn open_on(
        mut tcp: TcpStream,
        app: &TestApp,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Self {
        let mut req = format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n",
            app.addr
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        tcp.write_all(req.as_bytes()).await.expect("request");
        let mut s = Self {
            tcp,
            buf: Vec::new(),
            status: 0,
            head: String::new(),
        };
        let end = loop {
            if let Some(i) = s.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(s.fill().await, "connection ended before the response head");
        };
        s.head = String::from_utf8(s.buf.drain(..end).collect()).expect("head");
        s.status = s.head[9..12].parse().expect("status");
        s
    }

    /// Reads more bytes; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
            .await
            .expect("timed out waiting for SSE bytes")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next event (comments skipped); `None` when the stream ended.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..i + 2).collect();
                let text = String::from_utf8(block).expect("UTF-8");
                let mut ev = SseEvent::default();
                let mut data = Vec::new();
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("data: ") {
                        data.push(v);
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        ev.id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        ev.event = Some(v.to_owned());
                    }
                }
                if data.is_empty() {
                    continue; // a comment or `retry:`
                }
                ev.data = data.join("\n");
                return Some(ev);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn next_some(&mut self) -> SseEvent {
        self.next().await.expect("the stream ended")
    }

    /// The next stream event (one with an `id:`), skipping named events.
    async fn next_event(&mut self) -> SseEvent {
        loop {
            let e = self.next_some().await;
            if e.id.is_some() {
                return e;
            }
        }
    }
}

fn sse_target(token: &str, extra: &str) -> String {
    format!("/sse?token={token}{extra}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_as_sse_with_cursors_and_filters() {
    let b = Backing::new().await;
    let app = TestApp::spawn(b.config()).await;
    let auth = format!("Bearer {}", b.token);
    let mut s = Sse::open(&app, "/sse?events=ticket.*", &[("Authorization", &auth)]).await;
    assert_eq!(s.status, 200, "{}", s.head);
    assert!(
        s.head.contains("content-type: text/event-stream"),
        "{}",
        s.head
    );
    let hello = s.next_some().await;
    assert_eq!(hello.event.as_deref(), Some("connection"));
    let sub = s.next_some().await;
    assert_eq!(sub.event.as_deref(), Some("subscribed"));
    assert_eq!(sub.json()["events"], json!(["ticket.*"]));

    b.publish("user.created", user_payload(1)).await;
    let seq = b.publish("ticket.created", ticket_payload(2)).await;
    let e = s.next_some().await;
    assert_eq!(e.event, None, "stream events are unnamed (`message`)");
    let v = e.json();
    assert_eq!(v["type"], "ticket.created");
    assert_eq!(v["seq"], seq);
    assert_eq!(v["payload"]["ticket_id"], 2);
    let epoch = v["epoch"].as_str().unwrap().to_owned();
    assert_eq!(e.id, Some(format!("{epoch}:{seq}")));

    // the same event over /ws is the same JSON
    let mut ws = app.connect_ok(&b.token).await;
    let seq2 = b.publish("ticket.created", ticket_payload(3)).await;
    let over_ws = ws.next_event().await;
    let over_sse = s.next_event().await.json();
    assert_eq!(over_ws, over_sse);
    assert_eq!(over_sse["seq"], seq2);
    app.stop().await;
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_resumes_with_no_gap_and_no_duplicate_under_load() {
    let b = Backing::new().await;
    let app = TestApp::spawn(b.config()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (publisher, stop, last) = (b.publisher.clone(), stop.clone(), last.clone());
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
    };
    let mut seqs: Vec<u64> = Vec::new();
    let mut last_id: Option<String> = None;
    for round in 0..4u64 {
        let headers: Vec<(&str, &str)> = match &last_id {
            Some(id) => vec![("Last-Event-ID", id.as_str())],
            None => vec![],
        };
        let mut s = Sse::open(&app, &sse_target(&b.token, ""), &headers).await;
        assert_eq!(s.status, 200);
        let mut got = 0;
        while got < 40 {
            let e = s.next_some().await;
            match e.event.as_deref() {
                None => {
                    seqs.push(e.json()["seq"].as_u64().unwrap());
                    last_id = e.id.clone();
                    got += 1;
                }
                Some("resync_required") => panic!("resync on a valid cursor: {}", e.data),
                Some(_) => {}
            }
        }
        drop(s);
        tokio::time::sleep(Duration::from_millis(50 + round * 40)).await;
    }
    stop.store(true, Ordering::SeqCst);
    publisher.await.unwrap();
    let first = seqs[0];
    let want: Vec<u64> = (first..first + seqs.len() as u64).collect();
    assert_eq!(seqs, want, "every event once, in order, across reconnects");
    app.stop().await;
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_of_another_stream_or_no_cursor_gets_resync_required_then_live_events() {
    let b = Backing::new().await;
    let app = TestApp::spawn(b.config()).await;
    b.publish("user.created", user_payload(1)).await;
    for bad in ["1:1", "not-a-cursor"] {
        let mut s = Sse::open(&app, &sse_target(&b.token, ""), &[("Last-Event-ID", bad)]).await;
        assert_eq!(s.status, 200);
        let resync = loop {
            let e = s.next_some().await;
            if e.event.as_deref() == Some("resync_required") {
                break e.json();
            }
            assert!(e.id.is_none(), "an event before the resync: {e:?}");
        };
        assert!(
            resync["epoch"].as_str().is_some_and(|e| !e.is_empty()),
            "{resync}"
        );
        let seq = b.publish("user.created", user_payload(2)).await;
        let e = s.next_event().await;
        assert_eq!(e.json()["seq"], seq, "live events follow the resync");
    }
    app.stop().await;
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_http_errors_and_a_revoked_token_ends_the_stream() {
    let b = Backing::new().await;
    let mut cfg = b.config();
    cfg.allowed_origins = vec!["https://admin.example.com".to_owned()];
    let app = TestApp::spawn(cfg).await;
    let s = Sse::open(&app, "/sse", &[]).await;
    assert_eq!(s.status, 401, "{}", s.head);
    let s = Sse::open(&app, "/sse?token=wrong", &[]).await;
    assert_eq!(s.status, 401);
    let s = Sse::open(
        &app,
        &sse_target(&b.token, ""),
        &[("Origin", "https://evil.example.com")],
    )
    .await;
    assert_eq!(s.status, 403);
    let s = Sse::open(
        &app,
        &sse_target(&b.token, ""),
        &[("Origin", "https://admin.example.com")],
    )
    .await;
    assert_eq!(s.status, 200);
    assert!(
        s.head
            .contains("access-control-allow-origin: https://admin.example.com"),
        "{}",
        s.head
    );
    drop(s);

    // an HTTP client that keeps connections alive still gets the stream:
    // the gateway's other answers close theirs
    for _ in 0..3 {
        let r = app.http.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(r.headers()["connection"], "close");
        let r = app
            .http
            .get(app.url("/sse?token=x&events=user.*"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }

    let (id, token) = b.new_token(None).await;
    let mut s = Sse::open(&app, &sse_target(&token, ""), &[]).await;
    assert_eq!(s.status, 200);
    b.revoke(id).await;
    let close = loop {
        match s.next().await {
            Some(e) if e.event.as_deref() == Some("close") => break e.json(),
            Some(_) => continue,
            None => panic!("the stream ended without a close event"),
        }
    };
    assert_eq!(close["code"], 1008, "{close}");
    assert!(
        s.next().await.is_none(),
        "the stream ends after the close event"
    );
    app.stop().await;
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sse_reader_is_caught_up_from_the_stream_without_a_gap() {
    let b = Backing::new().await;
    let mut cfg = b.config();
    cfg.client_queue_messages = 64;
    cfg.client_queue_bytes = 64 * 1024;
    cfg.socket_send_buffer = 16 * 1024;
    let app = TestApp::spawn(cfg).await;
    let mut s = Sse::open_small_buffer(&app, &sse_target(&b.token, "")).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.next_some().await.event.as_deref(), Some("connection"));
    let total = 3_000u64;
    let publisher = b.publisher.clone();
    let publishing = tokio::spawn(async move {
        let mut seqs = Vec::new();
        for chunk in 0..total / 50 {
            let sends = (0..50).map(|k| {
                publisher.publish_value(
                    "ticket.message_added",
                    json!({"ticket_id": 1, "message_id": chunk * 50 + k, "user_id": 1,
                        "is_from_admin": false, "message_text": "x".repeat(300),
                        "has_media": false, "status": "open"}),
                )
            });
            for r in futures::future::join_all(sends).await {
                seqs.push(r.expect("publish").sequence);
            }
        }
        seqs.sort_unstable();
        seqs
    });
    let mut seqs = Vec::new();
    let mut kinds = Vec::new();
    while (seqs.len() as u64) < total {
        let e = s.next_some().await;
        match e.event {
            None => seqs.push(e.json()["seq"].as_u64().unwrap()),
            Some(kind) => kinds.push(kind),
        }
        if seqs.len() % 200 == 0 && seqs.len() < 2_000 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let published = publishing.await.unwrap();
    assert_eq!(seqs, published, "every event once, in order");
    assert!(kinds.contains(&"catching_up".to_owned()), "{kinds:?}");
    assert!(!kinds.contains(&"resync_required".to_owned()), "{kinds:?}");
    app.stop().await;
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_answers_stored_events_at_once_the_next_one_on_arrival_and_nothing_after_wait() {
    let b = Backing::new().await;
    let app = TestApp::spawn(b.config()).await;
    let poll = |query: String| {
        let (http, url) = (app.http.clone(), app.url(&format!("/poll?{query}")));
        let auth = format!("Bearer {}", b.token);
        async move {
            let r = http
                .get(url)
                .header("Authorization", auth)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    // no cursor: from now on
    let (status, page) = poll("wait=0".into()).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["events"], json!([]));
    let start = page["next"].as_str().unwrap().to_owned();

    let s1 = b.publish("user.created", user_payload(1)).await;
    b.publish("ticket.created", ticket_payload(2)).await;
    let s3 = b.publish("user.created", user_payload(3)).await;
    let (_, page) = poll(format!("after={start}&events=user.*&wait=5")).await;
    let seqs: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![s1, s3]);
    let epoch = page["events"][0]["epoch"].as_str().unwrap().to_owned();
    assert_eq!(page["next"], format!("{epoch}:{s3}"));
    let (_, limited) = poll(format!("after={start}&limit=1&wait=0")).await;
    assert_eq!(limited["events"].as_array().unwrap().len(), 1);
    assert_eq!(limited["next"], format!("{epoch}:{s1}"));

    // nothing stored after `next`: the request waits for the next event
    let next = page["next"].as_str().unwrap().to_owned();
    let waiting = tokio::spawn(poll(format!("after={next}&events=user.*&wait=30")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.publish("ticket.created", ticket_payload(4)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiting.is_finished(),
        "an event the filter refuses answers nothing"
    );
    let published = Instant::now();
    let s5 = b.publish("user.created", user_payload(5)).await;
    let (status, page) = waiting.await.unwrap();
    let latency = published.elapsed();
    assert_eq!(status, 200);
    assert_eq!(page["events"][0]["seq"], s5);
    // woken by the event, not by `wait` (the figure is measured in
    // BENCHMARKS.md)
    assert!(latency < Duration::from_secs(10), "{latency:?}");
    eprintln!("long-poll answered {latency:?} after the publish was acknowledged");

    // idle: an empty page after `wait`
    let began = Instant::now();
    let (status, page) = poll(format!("after={epoch}:{s5}&wait=0.4")).await;
    assert_eq!(status, 200);
    assert_eq!(page["events"], json!([]));
    assert_eq!(page["next"], format!("{epoch}:{s5}"));
    assert!(began.elapsed() >= Duration::from_millis(400));

    // a cursor of another stream, one ahead of the stream, bad input
    let (status, body) = poll("after=1:1&wait=0".into()).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["type"], "resync_required");
    assert_eq!(body["epoch"], epoch.as_str());
    let (status, _) = poll(format!("after={epoch}:{}&wait=0", s5 + 100)).await;
    assert_eq!(status, 409);
    for bad in [
        "after=x",
        "limit=0",
        "limit=1001",
        "wait=61",
        "wait=x",
        "events=nope.*",
    ] {
        let (status, body) = poll(bad.into()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["detail"].is_string());
    }
    let r = app.http.get(app.url("/poll?wait=0")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    app.stop().await;
    b.cleanup().await;
}
