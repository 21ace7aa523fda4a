//! The test endpoint's delivery: a `webhook.test` event built and signed,
//! sent by the same `WebhookSender::send_event` as the delivery worker's
//! attempts, and recorded as one attempt with the webhook's counters.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use storage::models::{BodyFormat, Delivery, DeliveryStatus, NewDelivery, Webhook};
use webhook_client::{Event, Verdict};

use crate::error::ApiError;
use crate::state::AppState;
use storage::webhooks as db;

/// The event type of test deliveries.
pub const TEST_EVENT: &str = "webhook.test";

/// Sends a test event to `webhook` and records the attempt: the stored row
/// (its status, response and error as recorded) and how long the attempt
/// took. `traceparent` is sent and stored with it.
pub async fn send(
    state: &AppState,
    webhook: &Webhook,
    traceparent: Option<String>,
) -> Result<(Delivery, Duration), ApiError> {
    let now = Utc::now();
    let event_id = proto_events::new_event_id();
    let payload = json!({
        "webhook_id": webhook.id,
        "event": TEST_EVENT,
        "message": "Test delivery from bedolaga-events",
        "sent_at": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    // Written in the webhook's body format, as its events are; a `bot` body
    // is kept with the row, like the worker's.
    let (body, raw) = match webhook.body_format {
        BodyFormat::Canonical => (proto_events::canonical::to_canonical_vec(&payload), None),
        BodyFormat::Bot => {
            let text = proto_events::bot_json::reformat(&payload.to_string());
            (text.clone().into_bytes(), Some(text))
        }
    };
    let body = bytes::Bytes::from(body);
    let secrets = webhook.signing_secrets(now);
    let outcome = state
        .sender
        .send_event(
            Event {
                url: &webhook.url,
                webhook_id: webhook.id,
                event_type: TEST_EVENT,
                event_id: &event_id,
                body,
                secrets: &secrets,
                traceparent: traceparent.as_deref(),
            },
            now,
        )
        .await;
    let success = outcome.verdict == Verdict::Success;
    let mut conn = state.conn().await?;
    let row = db::record_attempt(
        &mut conn,
        NewDelivery {
            webhook_id: webhook.id,
            event_type: TEST_EVENT.to_owned(),
            payload,
            response_status: outcome.response_status.map(i32::from),
            response_body: outcome.response_body.map(storable),
            status: if success {
                DeliveryStatus::Success
            } else {
                DeliveryStatus::Failed
            },
            error_message: outcome.error.map(storable),
            attempt_number: 1,
            delivered_at: success.then(Utc::now),
            next_retry_at: None,
            event_id: Some(event_id),
            traceparent,
            body: raw,
        },
    )
    .await?;
    Ok((row, outcome.latency))
}

/// Text stored in Postgres cannot hold NUL characters.
fn storable(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{fffd}")
    } else {
        s
    }
}
