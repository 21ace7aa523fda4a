//! The delivery policy's shared state against the real Postgres: the rate
//! limiter taken by concurrent callers, and the circuit moved by batches
//! and probed by one caller at a time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use storage::DbPool;
use storage::attempts::{
    AttemptSummary, Batch, Change, CircuitSettings, HealthSettings, Written, record,
};
use storage::models::{BodyFormat, CircuitState};
use storage::policy::{CircuitTake, RateLimit, RateTake, circuit, take_circuit, take_rate};
use storage::testing::TestDb;
use storage::webhooks::{self, NewWebhook};

async fn setup() -> (TestDb, DbPool, i32) {
    let db = TestDb::new().await.unwrap();
    let pool = db.pool().unwrap();
    let mut conn = pool.get().await.unwrap();
    let w = webhooks::insert_webhook(
        &mut conn,
        NewWebhook {
            name: "crm".to_owned(),
            url: Some("http://127.0.0.1:9/crm".to_owned()),
            secret: None,
            event_type: "*".to_owned(),
            is_active: true,
            description: None,
            body_format: BodyFormat::Canonical,
            event_types: None,
            payload_filter: None,
            headers: None,
            auth: None,
            signature_scheme: storage::subscription::SignatureScheme::Hmac,
            mode: storage::models::WebhookMode::Push,
            policy: Default::default(),
        },
    )
    .await
    .unwrap();
    drop(conn);
    (db, pool, w.id)
}

#[tokio::test]
async fn concurrent_takers_share_one_limit() {
    let (_db, pool, id) = setup().await;
    let limit = RateLimit {
        per_s: 20.0,
        burst: 5,
    };
    // 8 callers at once, 10 takes each: every "go" gets a slot (now + its
    // wait); slots never crowd more than burst + window × rate into a window.
    let started = Utc::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for _ in 0..10 {
                let before = Utc::now();
                match take_rate(&pool, id, limit, Duration::from_millis(500))
                    .await
                    .unwrap()
                {
                    RateTake::Go(wait) => out.push(Ok(before + wait)),
                    RateTake::Hold { due } => out.push(Err(due)),
                }
            }
            out
        }));
    }
    let mut slots: Vec<DateTime<Utc>> = Vec::new();
    let mut held: Vec<DateTime<Utc>> = Vec::new();
    for t in tasks {
        for r in t.await.unwrap() {
            match r {
                Ok(slot) => slots.push(slot),
                Err(due) => held.push(due),
            }
        }
    }
    slots.sort();
    held.sort();
    assert!(
        !held.is_empty(),
        "80 takes at once exceed half a second of slots"
    );
    for (i, s) in slots.iter().enumerate() {
        let window_end = *s + chrono::Duration::milliseconds(250);
        let n = slots[i..].iter().take_while(|t| **t < window_end).count();
        // At most burst + 250 ms × 20/s; the slots' times are read from
        // this process's clock around the call: one of slack.
        assert!(n <= 5 + 5 + 1, "{n} slots in 250 ms from {s}");
    }
    // Held deliveries are queued at least one period apart.
    for pair in held.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap.num_microseconds().unwrap() >= 49_000, "{gap}");
    }
    assert!(held[0] > started);
}

fn failure(id: i32, at: DateTime<Utc>, success: bool) -> AttemptSummary {
    AttemptSummary {
        webhook_id: id,
        at,
        success,
        gone: false,
        claimed: None,
    }
}

async fn attempts(pool: &DbPool, id: i32, outcomes: &[bool]) -> Written {
    let now = Utc::now();
    let batch = Batch {
        attempts: outcomes
            .iter()
            .enumerate()
            .map(|(i, ok)| failure(id, now + chrono::Duration::milliseconds(i as i64), *ok))
            .collect(),
        ..Batch::default()
    };
    let health = HealthSettings {
        disable_after: Duration::from_secs(86_400),
        circuit: CircuitSettings {
            threshold: 3,
            cooldown: Duration::from_secs(1),
        },
    };
    record(pool, &[], health, |_| (batch.clone(), 0))
        .await
        .unwrap()
}

fn changes(w: &Written) -> Vec<&'static str> {
    w.moved
        .iter()
        .map(|m| match m.change {
            Change::Disabled { .. } => "disabled",
            Change::Failing { .. } => "failing",
            Change::Recovered { .. } => "recovered",
            Change::CircuitOpened { .. } => "circuit_opened",
            Change::CircuitClosed => "circuit_closed",
        })
        .collect()
}

#[tokio::test]
async fn the_circuit_opens_at_the_threshold_lets_one_probe_and_closes_on_success() {
    let (_db, pool, id) = setup().await;
    let lease = Duration::from_secs(30);
    let cooldown = Duration::from_secs(1);
    assert_eq!(
        changes(&attempts(&pool, id, &[false, false]).await),
        ["failing"]
    );
    assert_eq!(
        circuit(&pool, id).await.unwrap().state,
        CircuitState::Closed
    );
    assert_eq!(circuit(&pool, id).await.unwrap().consecutive_failures, 2);
    assert_eq!(
        take_circuit(&pool, id, cooldown, lease).await.unwrap(),
        CircuitTake::Closed
    );
    assert_eq!(
        changes(&attempts(&pool, id, &[false]).await),
        ["circuit_opened"]
    );
    let open = circuit(&pool, id).await.unwrap();
    assert_eq!(
        (open.state, open.consecutive_failures),
        (CircuitState::Open, 3)
    );
    assert!(matches!(
        take_circuit(&pool, id, cooldown, lease).await.unwrap(),
        CircuitTake::Hold { .. }
    ));
    // Late failures of attempts already in flight keep it open.
    assert!(changes(&attempts(&pool, id, &[false]).await).is_empty());

    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Many callers at once: exactly one probe.
    let takes =
        futures::future::join_all((0..6).map(|_| take_circuit(&pool, id, cooldown, lease))).await;
    let probes = takes
        .iter()
        .filter(|t| matches!(t, Ok(CircuitTake::Probe)))
        .count();
    assert_eq!(probes, 1, "{takes:?}");
    assert_eq!(
        circuit(&pool, id).await.unwrap().state,
        CircuitState::HalfOpen
    );
    // The probe failed: open again, a new cooldown, no new "opened" event.
    assert!(changes(&attempts(&pool, id, &[false]).await).is_empty());
    assert_eq!(circuit(&pool, id).await.unwrap().state, CircuitState::Open);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        take_circuit(&pool, id, cooldown, lease).await.unwrap(),
        CircuitTake::Probe
    );
    let closed = attempts(&pool, id, &[true]).await;
    let mut got = changes(&closed);
    got.sort_unstable();
    assert_eq!(got, ["circuit_closed", "recovered"]);
    let c = circuit(&pool, id).await.unwrap();
    assert_eq!((c.state, c.consecutive_failures), (CircuitState::Closed, 0));
}
