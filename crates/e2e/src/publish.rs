//! Publishing a bounded run of events with the project's `Publisher`, at a
//! steady pace, riding out broker outages: an event that JetStream did not
//! confirm is published again with the same id (`Nats-Msg-Id`), so the
//! stream stores it once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proto_events::{Envelope, EventType, Publisher};
use serde_json::{Value, json};

/// One stored event.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub event_type: EventType,
    /// The stream sequence JetStream stored it at.
    pub seq: u64,
}

/// The payload of event `n`: users and tickets in turn, as the bot sends
/// them (Cyrillic text and emoji included).
pub fn event(n: u64) -> Envelope {
    let (event_type, payload) = if n.is_multiple_of(2) {
        (
            EventType::UserCreated,
            json!({"user_id": n, "telegram_id": 100_000 + n, "username": format!("u{n}"),
                "first_name": "Иван 🚀", "last_name": null, "referral_code": format!("ref{n}"),
                "referred_by_id": null}),
        )
    } else {
        (
            EventType::TicketCreated,
            json!({"ticket_id": n, "user_id": 1, "title": "Не подключается VPN 😢",
                "status": "open", "priority": "normal", "has_media": false}),
        )
    };
    let Value::Object(payload) = payload else {
        unreachable!("a JSON object literal")
    };
    Envelope::new(event_type, payload)
}

/// Publishes until JetStream confirms; panics after `give_up`.
pub async fn publish_until_stored(
    publisher: &Publisher,
    envelope: &Envelope,
    give_up: Duration,
) -> u64 {
    let deadline = tokio::time::Instant::now() + give_up;
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(3), publisher.publish(envelope));
        match attempt.await {
            Ok(Ok(p)) => return p.sequence,
            Ok(Err(e)) if !e.is_transient() => panic!("event {} refused: {e}", envelope.id),
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "event {} not stored within {give_up:?}",
            envelope.id
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A run of `n` events published in the background at `per_second`.
pub struct PublishRun {
    /// How many are stored so far.
    pub stored: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<Event>>,
}

impl PublishRun {
    pub fn start(publisher: Publisher, n: u64, per_second: u64) -> Self {
        let stored = Arc::new(AtomicUsize::new(0));
        let counter = stored.clone();
        let task = tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_micros(1_000_000 / per_second));
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut events = Vec::with_capacity(n as usize);
            for i in 0..n {
                pace.tick().await;
                let envelope = event(i);
                let seq =
                    publish_until_stored(&publisher, &envelope, Duration::from_secs(90)).await;
                events.push(Event {
                    id: envelope.id,
                    event_type: envelope.event_type,
                    seq,
                });
                counter.fetch_add(1, Ordering::SeqCst);
            }
            events
        });
        Self { stored, task }
    }

    pub fn stored(&self) -> usize {
        self.stored.load(Ordering::SeqCst)
    }

    /// Waits until `n` events are stored.
    pub async fn wait_stored(&self, n: usize, within: Duration) {
        let what = format!("{n} events published");
        crate::eventually(within, &what, || async {
            (self.stored() >= n).then_some(())
        })
        .await;
    }

    /// Every event, once all are stored.
    pub async fn finish(self) -> Vec<Event> {
        self.task.await.expect("the publishing task")
    }
}
