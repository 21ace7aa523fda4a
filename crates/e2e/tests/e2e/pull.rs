//! Pull webhooks end to end, through the built binaries: events are
//! published while the owner of a pull webhook reads them page by page,
//! acknowledging each page with the next cursor; the registry and the
//! worker are restarted midway (the registry while a read waits for
//! events). In the end the owner has read every matching event exactly
//! once and nothing else, every read is a delivery row, and the worker
//! never sent anything for the pull webhook.

use std::collections::HashSet;
use std::time::Duration;

use e2e::deployment::Deployment;
use e2e::process::TempDir;
use proto_events::{Envelope, EventType, Namespace, Publisher};
use reqwest::Method;
use serde_json::{Value, json};
use storage::testing::TestDb;

use crate::checks::shared_nats_url;

/// What the owner of the pull webhook keeps: its cursor and what it read.
#[derive(Default)]
struct Owner {
    cursor: Option<String>,
    read: Vec<String>,
    attempts: Vec<i64>,
}

impl Owner {
    fn path(&self, id: i64, wait: u64) -> String {
        let mut path = format!("/webhooks/{id}/pull?limit=7&wait={wait}");
        if let Some(c) = &self.cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        path
    }

    /// Takes a page: its events are handled, its `next` acknowledges them
    /// with the next request. Returns how many events it held.
    fn take(&mut self, status: u16, page: &Value) -> usize {
        assert_eq!(status, 200, "pull: {page}");
        let events = page["events"].as_array().expect("events");
        for e in events {
            self.read
                .push(e["event_id"].as_str().expect("event_id").to_owned());
            self.attempts
                .push(e["attempt_number"].as_i64().expect("attempt"));
        }
        assert_eq!(page["skipped"], false, "nothing expired: {page}");
        self.cursor = Some(page["next"].as_str().expect("next").to_owned());
        events.len()
    }

    async fn read_page(&mut self, d: &Deployment, id: i64, wait: u64) -> usize {
        let (status, page) = d.api(Method::GET, &self.path(id, wait), None).await;
        self.take(status, &page)
    }
}

/// Publishes `n` events of three kinds from `from` on: users (taken),
/// deposits of users the filter refuses, and tickets (another type).
/// Returns the ids the pull webhook takes.
async fn publish(p: &Publisher, from: i64, n: i64) -> Vec<String> {
    let mut wanted = Vec::new();
    for i in from..from + n {
        let (t, payload) = match i % 3 {
            0 => (
                EventType::UserCreated,
                json!({"user_id": i, "username": "u"}),
            ),
            1 => (
                EventType::PaymentCompleted,
                json!({"user_id": 100_000 + i, "type": "deposit", "amount_kopeks": i}),
            ),
            _ => (
                EventType::TicketCreated,
                json!({"ticket_id": i, "user_id": i}),
            ),
        };
        let Value::Object(map) = payload else {
            unreachable!("payloads are objects")
        };
        let e = Envelope::new(t, map);
        p.publish(&e).await.expect("published");
        if i % 3 == 0 {
            wanted.push(e.id);
        }
    }
    wanted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end to end: deploy/test.sh --e2e"]
async fn a_pull_webhooks_owner_reads_every_matching_event_once_across_restarts() {
    let dir = TempDir::new("pull");
    let db = TestDb::new().await.unwrap();
    let mut d = Deployment::start(
        dir.path(),
        &db.url,
        &shared_nats_url(),
        Namespace::unique(),
        &[],
    )
    .await;
    let p = d.publisher().await;
    // Published before the webhook exists: never served.
    let early = publish(&p, 0, 6).await;

    let (status, hook) = d
        .api(
            Method::POST,
            "/webhooks",
            Some(json!({
                "name": "puller", "mode": "pull",
                "event_types": ["user.created", "payment.completed"],
                "filter": {"path": "user_id", "lt": 100_000},
            })),
        )
        .await;
    assert_eq!(status, 201, "{hook}");
    assert_eq!(hook["url"], Value::Null);
    let id = hook["id"].as_i64().unwrap();

    let mut wanted = publish(&p, 6, 60).await;
    assert_eq!(wanted.len(), 20);
    let mut owner = Owner::default();
    assert_eq!(owner.read_page(&d, id, 0).await, 7);
    assert_eq!(owner.read_page(&d, id, 0).await, 7);
    assert_eq!(owner.read_page(&d, id, 0).await, 6);

    // A read that waits for events when the registry stops: it is
    // answered, and what it holds is read like any page.
    let asked = std::time::Instant::now();
    let waiting = {
        let url = d.registry.url(&owner.path(id, 30));
        let token = d.token.clone();
        tokio::spawn(async move {
            let resp = reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The registry restarts (the waiting read is answered as it stops)
    // while events are published; the worker is replaced.
    d.kill_workers();
    let (_, more) = tokio::join!(d.restart_registry(), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        publish(&p, 66, 30).await
    });
    wanted.extend(more);
    let (status, page) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting read was answered")
        .unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "the waiting read ended with the registry, not after its 30 s"
    );
    owner.take(status, &page);
    d.start_worker().await;
    wanted.extend(publish(&p, 96, 30).await);
    assert_eq!(wanted.len(), 40);

    // Reads on with its cursor until a page comes back empty.
    while owner.read_page(&d, id, 2).await > 0 {}

    let read: HashSet<&String> = owner.read.iter().collect();
    assert_eq!(read.len(), owner.read.len(), "an event was read twice");
    let wanted_set: HashSet<&String> = wanted.iter().collect();
    assert_eq!(read, wanted_set, "every matching event, nothing else");
    assert!(early.iter().all(|e| !read.contains(e)));
    assert!(owner.attempts.iter().all(|a| *a == 1));

    // The position is kept: a reader without a cursor starts after it.
    let (_, w) = d.api(Method::GET, &format!("/webhooks/{id}"), None).await;
    assert_eq!(w["pull_cursor"].as_str(), owner.cursor.as_deref());
    let mut fresh = Owner::default();
    assert_eq!(fresh.read_page(&d, id, 0).await, 0);

    // Every read is a delivery; the worker sent nothing for it but did
    // deliver to the push webhooks.
    let (_, deliveries) = d
        .api(
            Method::GET,
            &format!("/webhooks/{id}/deliveries?limit=1"),
            None,
        )
        .await;
    assert_eq!(deliveries["total"], wanted.len() as i64, "{deliveries}");
    let (_, w) = d.api(Method::GET, &format!("/webhooks/{id}"), None).await;
    assert_eq!(w["success_count"], wanted.len() as i64);
    assert_eq!(w["failure_count"], 0);
    // At least once: a killed worker may have sent some twice.
    let mut distinct = 0;
    for _ in 0..600 {
        let ids: HashSet<String> = d
            .receiver
            .on("/all")
            .iter()
            .filter_map(|r| r.header("webhook-id").map(str::to_owned))
            .collect();
        distinct = ids.len();
        if distinct >= 126 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(distinct, 126, "the push webhook got every event");
    let pull_id = id.to_string();
    assert!(
        d.receiver
            .received()
            .iter()
            .all(|r| r.header("x-webhook-id") != Some(pull_id.as_str())),
        "nothing was sent for the pull webhook"
    );
}
