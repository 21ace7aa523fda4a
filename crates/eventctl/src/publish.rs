//! `eventctl publish` and `eventctl simulate`.

use std::time::{Duration, Instant};

use anyhow::Context;
use proto_events::nats::{FirstConnect, NatsArgs};
use proto_events::{Envelope, EventType, Namespace, Publisher};
use rand::Rng;
use serde_json::{Value, json};

/// Publish one event.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Event type, e.g. `user.created`.
    #[arg(long = "type")]
    pub event_type: String,
    /// The payload, a JSON object.
    #[arg(long)]
    pub payload: String,
    /// Event id (default: a new UUIDv7). Re-using an id within two minutes
    /// is dropped by JetStream as a duplicate.
    #[arg(long)]
    pub id: Option<String>,
    /// A W3C `traceparent` to carry to the webhook receivers.
    #[arg(long)]
    pub traceparent: Option<String>,
}

/// Publish a stream of realistic events of every type.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// How many events to publish.
    #[arg(long, default_value_t = 100)]
    pub count: u64,
    /// Events per second (0 = as fast as JetStream acknowledges).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Only these types (default: all six).
    #[arg(long = "type", value_delimiter = ',')]
    pub types: Vec<String>,
}

async fn connect(nats: &NatsArgs, ns: Namespace) -> anyhow::Result<Publisher> {
    let client = nats.connect("eventctl", FirstConnect::FailFast).await?;
    Ok(Publisher::new(client, ns))
}

/// Publishes one event and prints `<id> seq=<n>`.
pub async fn publish(nats: &NatsArgs, ns: Namespace, args: PublishArgs) -> anyhow::Result<()> {
    let event_type: EventType = args.event_type.parse()?;
    let payload: Value = serde_json::from_str(&args.payload).context("--payload is not JSON")?;
    let Value::Object(payload) = payload else {
        anyhow::bail!("--payload must be a JSON object");
    };
    let mut envelope = Envelope::new(event_type, payload);
    if let Some(id) = args.id {
        envelope.id = id;
    }
    let mut headers = async_nats::HeaderMap::new();
    if let Some(tp) = &args.traceparent {
        headers.insert("traceparent", tp.as_str());
    }
    let publisher = connect(nats, ns).await?;
    let published = publisher.publish_with_headers(&envelope, headers).await?;
    println!(
        "{} seq={}{}",
        published.id,
        published.sequence,
        if published.duplicate {
            " (duplicate, dropped)"
        } else {
            ""
        }
    );
    Ok(())
}

/// Publishes `count` generated events at `rate` per second.
pub async fn simulate(nats: &NatsArgs, ns: Namespace, args: SimulateArgs) -> anyhow::Result<()> {
    let types: Vec<EventType> = if args.types.is_empty() {
        EventType::BOT.to_vec()
    } else {
        args.types
            .iter()
            .map(|t| t.parse())
            .collect::<Result<_, _>>()?
    };
    let publisher = connect(nats, ns).await?;
    let started = Instant::now();
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
    for i in 0..args.count {
        if let Some(every) = interval {
            let due = started + every.mul_f64(i as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let t = types[(i as usize) % types.len()];
        let payload = sample_payload(t, i as i64 + 1);
        publisher.publish_value(t.as_str(), payload).await?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "published {} events in {secs:.2}s ({:.0}/s)",
        args.count,
        args.count as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// A payload shaped like the bot's, with Cyrillic text and emoji.
pub fn sample_payload(t: EventType, n: i64) -> Value {
    let mut rng = rand::rng();
    let user_id = rng.random_range(1..100_000);
    match t {
        EventType::UserCreated => json!({
            "user_id": user_id, "telegram_id": 100_000_000 + n, "username": format!("user{n}"),
            "first_name": "Иван", "last_name": "Петров 🚀", "referral_code": format!("ref{n:06}"),
            "referred_by_id": null,
        }),
        EventType::PaymentCompleted | EventType::TransactionCreated => {
            let kopeks: i64 = rng.random_range(1..100_000) * 100;
            json!({
                "transaction_id": n, "user_id": user_id,
                "type": if t == EventType::PaymentCompleted { "deposit" } else { "subscription_payment" },
                "amount_kopeks": kopeks, "amount_rubles": kopeks as f64 / 100.0,
                "payment_method": "yookassa", "external_id": format!("ext-{n}"),
                "is_completed": true, "description": "Пополнение баланса",
            })
        }
        EventType::TicketCreated => json!({
            "ticket_id": n, "user_id": user_id, "title": "Не подключается VPN 😢",
            "status": "open", "priority": "normal", "has_media": false,
        }),
        EventType::TicketStatusChanged => json!({
            "ticket_id": n, "user_id": user_id, "old_status": "open", "new_status": "closed",
            "closed_at": chrono::Utc::now().to_rfc3339(),
        }),
        EventType::TicketMessageAdded => json!({
            "ticket_id": n, "message_id": n * 10, "user_id": user_id, "is_from_admin": n % 2 == 0,
            "message_text": "Здравствуйте! Проверьте, пожалуйста, настройки ✅", "has_media": false,
            "status": "answered",
        }),
        // The platform's own events, shaped as the worker writes them.
        EventType::OperatorJobFinished => json!({
            "job_id": n, "webhook_id": 1, "kind": "replay", "status": "completed", "total": 10,
            "done": 10, "failed": 0, "unavailable": 0, "error": null,
            "finished_at": chrono::Utc::now().to_rfc3339(),
        }),
        _ => {
            let now = chrono::Utc::now().to_rfc3339();
            json!({
                "webhook_id": n, "webhook_name": format!("webhook {n}"), "reason": "sample",
                "disabled_at": now, "failing_since": now, "recovered_at": now,
                "consecutive_failures": 5, "opened_at": now, "cooldown_s": 60, "closed_at": now,
            })
        }
    }
}
