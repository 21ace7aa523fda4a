//! `GET /events/types`: the event catalogue with each payload's JSON Schema.

use actix_web::HttpResponse;
use proto_events::EventType;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::model::{EventCatalogueOut, EventTypeOut};

/// Builds the catalogue (every type, its description and schema, and the
/// patterns a webhook may subscribe with).
pub fn catalogue() -> Result<EventCatalogueOut, serde_json::Error> {
    let mut items = Vec::with_capacity(EventType::ALL.len());
    for t in EventType::ALL {
        items.push(EventTypeOut {
            event_type: t.as_str().to_owned(),
            description: t.description().to_owned(),
            schema: serde_json::from_str::<Value>(t.schema_json())?,
            example: example(t),
        });
    }
    let mut patterns = vec!["*".to_owned()];
    for t in EventType::ALL {
        if let Some((family, _)) = t.as_str().split_once('.') {
            let p = format!("{family}.*");
            if !patterns.contains(&p) {
                patterns.push(p);
            }
        }
    }
    Ok(EventCatalogueOut { items, patterns })
}

/// An example payload of each type, shaped as the bot sends it (docs/contract.md,
/// "Event catalogue").
pub fn example(t: EventType) -> Value {
    match t {
        EventType::UserCreated => json!({
            "user_id": 42, "telegram_id": 123456789, "username": "ivan_petrov",
            "first_name": "Иван", "last_name": "Петров", "referral_code": "ref42abc",
            "referred_by_id": null,
        }),
        EventType::PaymentCompleted => json!({
            "transaction_id": 1001, "user_id": 42, "type": "deposit", "amount_kopeks": 29900,
            "amount_rubles": 299.0, "payment_method": "yookassa", "external_id": "2c5f-77a1",
            "is_completed": true, "description": "Пополнение баланса",
        }),
        EventType::TransactionCreated => json!({
            "transaction_id": 1002, "user_id": 42, "type": "subscription_payment",
            "amount_kopeks": 19900, "amount_rubles": 199.0, "payment_method": null,
            "external_id": null, "is_completed": true, "description": "Подписка на 30 дней",
        }),
        EventType::TicketCreated => json!({
            "ticket_id": 7, "user_id": 42, "title": "Не подключается VPN", "status": "open",
            "priority": "normal", "has_media": false,
        }),
        EventType::TicketStatusChanged => json!({
            "ticket_id": 7, "user_id": 42, "old_status": "open", "new_status": "closed",
            "closed_at": "2026-12-01T10:30:00Z",
        }),
        EventType::TicketMessageAdded => json!({
            "ticket_id": 7, "message_id": 70, "user_id": 42, "is_from_admin": true,
            "message_text": "Здравствуйте! Проверьте настройки, пожалуйста ✅", "has_media": false,
            "status": "answered",
        }),
        EventType::OperatorWebhookDisabled => json!({
            "webhook_id": 3, "webhook_name": "CRM", "reason": "receiver answered 410 Gone",
            "disabled_at": "2026-12-07T10:00:00Z",
        }),
        EventType::OperatorWebhookFailing => json!({
            "webhook_id": 3, "webhook_name": "CRM", "failing_since": "2026-12-07T10:00:00Z",
        }),
        EventType::OperatorWebhookRecovered => json!({
            "webhook_id": 3, "webhook_name": "CRM", "failing_since": "2026-12-07T10:00:00Z",
            "recovered_at": "2026-12-07T10:20:00Z",
        }),
        EventType::OperatorWebhookCircuitOpened => json!({
            "webhook_id": 3, "webhook_name": "CRM", "consecutive_failures": 5,
            "opened_at": "2026-12-07T10:05:00Z", "cooldown_s": 60,
        }),
        EventType::OperatorWebhookCircuitClosed => json!({
            "webhook_id": 3, "webhook_name": "CRM", "closed_at": "2026-12-07T10:20:00Z",
        }),
        EventType::OperatorJobFinished => json!({
            "job_id": 12, "webhook_id": 3, "kind": "replay", "status": "completed", "total": 240,
            "done": 240, "failed": 0, "unavailable": 0, "error": null,
            "finished_at": "2026-12-07T10:30:00Z",
        }),
    }
}

/// The event catalogue (no token needed).
#[utoipa::path(
    get, path = "/events/types", tag = "events",
    responses((status = 200, description = "Every event type with its payload schema", body = EventCatalogueOut))
)]
pub async fn types() -> Result<HttpResponse, ApiError> {
    let body = catalogue().map_err(|e| {
        tracing::error!(error = %e, "an event schema is not valid JSON");
        ApiError::Internal
    })?;
    Ok(HttpResponse::Ok().json(body))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_example_is_valid_against_its_schema() {
        for t in EventType::ALL {
            let schema: Value = serde_json::from_str(t.schema_json()).unwrap();
            let validator = jsonschema::validator_for(&schema).unwrap();
            let example = example(t);
            let errors: Vec<String> = validator
                .iter_errors(&example)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{t}: {errors:?}");
        }
    }
}
