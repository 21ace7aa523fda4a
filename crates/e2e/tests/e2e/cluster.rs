//! Three nats-server processes clustered on loopback, the events stream
//! with three replicas (created by the services from `EVENTS_REPLICAS`),
//! every service given the whole comma-separated `NATS_URL` list.

use std::time::{Duration, Instant};

use e2e::deployment::Deployment;
use e2e::eventually;
use e2e::nats::NatsServers;
use e2e::process::TempDir;
use e2e::publish::PublishRun;
use e2e::ws::ResumingClient;
use proto_events::{Namespace, StreamSettings};
use storage::testing::TestDb;

use crate::checks::{IN_FLIGHT, SETTLE, assert_ws_saw_every_event_once, window};

const EVENTS: u64 = 600;
const DELIVERIES: usize = (EVENTS + EVENTS / 2) as usize;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end to end: deploy/test.sh --e2e"]
async fn stream_leader_killed_then_a_worker_restarted_while_a_node_is_down() {
    let dir = TempDir::new("cluster");
    let db = TestDb::new().await.unwrap();
    let mut nats = NatsServers::cluster(dir.path(), 3).await;
    let ns = Namespace::default().with_stream_settings(StreamSettings {
        replicas: 3,
        ..StreamSettings::default()
    });
    let mut d = Deployment::start(
        dir.path(),
        &db.url,
        &nats.urls(),
        ns.clone(),
        &[("EVENTS_REPLICAS", "3")],
    )
    .await;
    let js = async_nats::jetstream::new(nats.client().await);
    let (_, replicas) = eventually(Duration::from_secs(20), "a stream leader", || {
        nats.stream_leader(&js, ns.stream())
    })
    .await;
    assert_eq!(replicas, 3, "the services created the stream with R3");

    let ws = ResumingClient::connect(&d.ws_url(), &d.token).await;
    let run = PublishRun::start(d.publisher().await, EVENTS, 100);
    d.receiver
        .wait_for(DELIVERIES / 3, Duration::from_secs(30))
        .await;

    // kill -9 the stream leader mid-run; another node takes over.
    let (leader, _) = nats.stream_leader(&js, ns.stream()).await.unwrap();
    let down = Instant::now();
    nats.kill(leader);
    let (new_leader, _) = eventually(Duration::from_secs(30), "a new stream leader", || async {
        nats.stream_leader(&js, ns.stream())
            .await
            .filter(|(l, _)| *l != leader)
    })
    .await;
    eprintln!(
        "killed the stream leader {}; {} leads now",
        nats.name(leader),
        nats.name(new_leader)
    );

    // Restart a worker while that node is still down, with the dead node
    // first in its list.
    let status = d.workers[0].terminate(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "a graceful stop exits 0");
    d.set_nats_url(&nats.urls_starting_with(leader));
    d.start_worker().await;
    run.wait_stored(EVENTS as usize * 2 / 3, Duration::from_secs(60))
        .await;
    nats.restart(leader).await;
    let up = Instant::now();

    let events = run.finish().await;
    let outcome = d.check_delivered(&events, SETTLE).await;
    // Only what was in flight while the node was away may come twice.
    let repeated = outcome.assert_repeats_within(window(down, up, IN_FLIGHT, Duration::ZERO));
    let seen = assert_ws_saw_every_event_once(ws, &events).await;
    eprintln!(
        "{} requests for {DELIVERIES} deliveries, {repeated} repeated; websocket: {} connections",
        outcome.received.len(),
        seen.connections
    );
}
