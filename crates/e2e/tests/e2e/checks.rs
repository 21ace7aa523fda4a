//! What every test asserts about the WebSocket client, and shared settings.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use e2e::publish::Event;
use e2e::ws::{ResumingClient, Seen};

/// The machine's shared NATS (tests that do not stop it use a prefix of
/// their own there).
pub fn shared_nats_url() -> String {
    test_support::nats_url()
}

/// How long an attempt may have been under way at a fault (the workers'
/// `DELIVERY_TIMEOUT`).
pub const IN_FLIGHT: Duration = Duration::from_secs(3);

/// How long the deliveries of one test may take to settle.
pub const SETTLE: Duration = Duration::from_secs(120);

/// The client saw every published event once, in stream order, and nothing
/// that says events were missed.
pub async fn assert_ws_saw_every_event_once(ws: ResumingClient, events: &[Event]) -> Seen {
    ws.wait_for(events.len(), Duration::from_secs(60)).await;
    // Anything repeated after the last event would arrive now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = ws.stop().await;
    assert!(seen.problems.is_empty(), "problems: {:?}", seen.problems);
    let mut want: Vec<u64> = events.iter().map(|e| e.seq).collect();
    want.sort_unstable();
    let got: Vec<u64> = seen.events.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(got.len(), want.len(), "as many event frames as events");
    assert_eq!(got, want, "every sequence once, in order");
    let ids: HashSet<&str> = seen.events.iter().map(|(_, id)| id.as_str()).collect();
    let published: HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, published, "the frames carry the published event ids");
    seen
}

/// `[from - before, to + after]`, the window in which work may have been in
/// flight around a fault.
pub fn window(from: Instant, to: Instant, before: Duration, after: Duration) -> (Instant, Instant) {
    (from.checked_sub(before).unwrap_or(from), to + after)
}
