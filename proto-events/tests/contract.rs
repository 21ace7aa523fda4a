//! The Rust payload types against the JSON Schemas in `schemas/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proto_events::payload::Payload;
use proto_events::{EventType, Pattern};
use serde_json::{Value, json};

fn samples(t: EventType) -> Vec<Value> {
    match t {
        EventType::UserCreated => vec![
            json!({"user_id": 123, "telegram_id": 456789, "username": "testuser", "first_name": "Тест",
                   "last_name": "Пользователь 🚀", "referral_code": "refABC123", "referred_by_id": null}),
            json!({"user_id": 124, "email": "a@example.com", "auth_type": "email", "first_name": null,
                   "last_name": null, "referral_code": "r", "referred_by_id": 123, "locale": "ru"}),
        ],
        EventType::PaymentCompleted => vec![json!({
            "transaction_id": 1, "user_id": 2, "type": "deposit", "amount_kopeks": 10050,
            "amount_rubles": 100.5, "payment_method": "yookassa", "external_id": "ext-1",
            "is_completed": true, "description": "Пополнение баланса"})],
        EventType::TransactionCreated => vec![json!({
            "transaction_id": 3, "user_id": 2, "type": "subscription_payment", "amount_kopeks": -19900,
            "amount_rubles": -199.0, "payment_method": null, "external_id": null,
            "is_completed": true, "description": null, "future_field": {"nested": [1, 2]}})],
        EventType::TicketCreated => vec![json!({
            "ticket_id": 7, "user_id": 2, "title": "Не работает VPN 😢", "status": "open",
            "priority": "normal", "has_media": false})],
        EventType::TicketStatusChanged => vec![json!({
            "ticket_id": 7, "user_id": 2, "old_status": "open", "new_status": "closed",
            "closed_at": "2024-01-15T10:30:00"})],
        EventType::TicketMessageAdded => vec![json!({
            "ticket_id": 7, "message_id": 70, "user_id": 2, "is_from_admin": true,
            "message_text": "Здравствуйте! Проверьте настройки.", "has_media": false, "status": "answered"})],
        EventType::OperatorWebhookDisabled => vec![json!({
            "webhook_id": 3, "webhook_name": "crm", "reason": "receiver answered 410 Gone",
            "disabled_at": "2026-12-07T10:00:00Z"})],
        EventType::OperatorWebhookFailing => vec![json!({
            "webhook_id": 3, "webhook_name": "crm", "failing_since": "2026-12-07T10:00:00Z"})],
        EventType::OperatorWebhookRecovered => vec![json!({
            "webhook_id": 3, "webhook_name": "crm", "failing_since": "2026-12-07T10:00:00Z",
            "recovered_at": "2026-12-07T11:00:00Z"})],
        EventType::OperatorWebhookCircuitOpened => vec![json!({
            "webhook_id": 3, "webhook_name": "crm", "consecutive_failures": 5,
            "opened_at": "2026-12-07T10:00:00Z", "cooldown_s": 60})],
        EventType::OperatorWebhookCircuitClosed => vec![json!({
            "webhook_id": 3, "webhook_name": "crm", "closed_at": "2026-12-07T10:01:00Z"})],
        EventType::OperatorJobFinished => vec![json!({
            "job_id": 9, "webhook_id": 3, "kind": "replay", "status": "finished", "total": 10,
            "done": 10, "failed": 0, "unavailable": 0, "error": null,
            "finished_at": "2026-12-07T10:02:00Z"})],
    }
}

#[test]
fn every_type_has_a_valid_schema_that_accepts_its_samples_and_the_rust_type_round_trips() {
    for t in EventType::ALL {
        let schema: Value = serde_json::from_str(t.schema_json()).expect("schema is JSON");
        assert_eq!(schema["title"], t.as_str());
        let validator = jsonschema::validator_for(&schema).expect("schema compiles");
        for sample in samples(t) {
            let errors: Vec<String> = validator
                .iter_errors(&sample)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{t}: {errors:?}");
            let typed = Payload::from_value(t, sample.clone()).expect("typed payload parses");
            assert_eq!(typed.event_type(), t);
            // Unknown fields are kept, nothing is lost or invented.
            assert_eq!(typed.to_value().unwrap(), sample, "{t} round trip");
        }
    }
}

#[test]
fn schemas_and_types_reject_the_same_broken_payloads() {
    let broken = [
        (EventType::UserCreated, json!({"telegram_id": 1})),
        (EventType::UserCreated, json!({"user_id": "12"})),
        (
            EventType::TicketCreated,
            json!({"ticket_id": 1, "user_id": 2, "title": "t", "status": "open", "priority": "low"}),
        ),
        (
            EventType::PaymentCompleted,
            json!({"transaction_id": 1, "user_id": 2, "type": "deposit", "amount_kopeks": 1.5,
            "amount_rubles": 0.01, "is_completed": true}),
        ),
        (
            EventType::TicketStatusChanged,
            json!({"ticket_id": 1, "user_id": 2, "new_status": null}),
        ),
    ];
    for (t, payload) in broken {
        let schema: Value = serde_json::from_str(t.schema_json()).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        assert!(
            !validator.is_valid(&payload),
            "schema of {t} accepted {payload}"
        );
        assert!(
            Payload::from_value(t, payload.clone()).is_err(),
            "type {t} accepted {payload}"
        );
    }
}

#[test]
fn message_text_is_capped_by_the_schema() {
    let t = EventType::TicketMessageAdded;
    let schema: Value = serde_json::from_str(t.schema_json()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut p = samples(t).remove(0);
    p["message_text"] = Value::String("я".repeat(200));
    assert!(validator.is_valid(&p));
    p["message_text"] = Value::String("я".repeat(201));
    assert!(!validator.is_valid(&p));
}

#[test]
fn patterns_select_catalogue_families() {
    let names: Vec<_> = Pattern::parse("ticket.*")
        .unwrap()
        .types()
        .map(|t| t.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "ticket.created",
            "ticket.status_changed",
            "ticket.message_added"
        ]
    );
}
