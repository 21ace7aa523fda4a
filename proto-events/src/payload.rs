//! Typed payloads of the catalogue (docs/contract.md, "Event catalogue").
//!
//! Every struct keeps fields it does not know in `extra`, so a field the bot
//! adds later passes through the services unchanged. Nullable fields are
//! `Option`s that serialize as `null`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::EventType;

/// Fields the bot may add later; they are kept, not dropped.
pub type Extra = Map<String, Value>;

/// `user.created`. Users who sign up by e-mail or OAuth carry `email` and
/// `auth_type` instead of `telegram_id` and `username`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserCreated {
    pub user_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telegram_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub referral_code: Option<String>,
    #[serde(default)]
    pub referred_by_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_type: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `payment.completed` and `transaction.created` share this shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    pub transaction_id: i64,
    pub user_id: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub amount_kopeks: i64,
    pub amount_rubles: f64,
    #[serde(default)]
    pub payment_method: Option<String>,
    #[serde(default)]
    pub external_id: Option<String>,
    pub is_completed: bool,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `ticket.created`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketCreated {
    pub ticket_id: i64,
    pub user_id: i64,
    pub title: String,
    pub status: String,
    pub priority: String,
    pub has_media: bool,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `ticket.status_changed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketStatusChanged {
    pub ticket_id: i64,
    pub user_id: i64,
    #[serde(default)]
    pub old_status: Option<String>,
    pub new_status: String,
    #[serde(default)]
    pub closed_at: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `ticket.message_added`. `message_text` is at most 200 characters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketMessageAdded {
    pub ticket_id: i64,
    pub message_id: i64,
    pub user_id: i64,
    pub is_from_admin: bool,
    #[serde(default)]
    pub message_text: Option<String>,
    pub has_media: bool,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `operator.webhook.disabled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookDisabled {
    pub webhook_id: i64,
    pub webhook_name: String,
    pub reason: String,
    pub disabled_at: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `operator.webhook.failing`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookFailing {
    pub webhook_id: i64,
    pub webhook_name: String,
    pub failing_since: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `operator.webhook.recovered`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookRecovered {
    pub webhook_id: i64,
    pub webhook_name: String,
    pub failing_since: String,
    pub recovered_at: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `operator.webhook.circuit_opened`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CircuitOpened {
    pub webhook_id: i64,
    pub webhook_name: String,
    pub consecutive_failures: i64,
    pub opened_at: String,
    pub cooldown_s: i64,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `operator.webhook.circuit_closed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CircuitClosed {
    pub webhook_id: i64,
    pub webhook_name: String,
    pub closed_at: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `operator.job.finished`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobFinished {
    pub job_id: i64,
    pub webhook_id: i64,
    pub kind: String,
    pub status: String,
    #[serde(default)]
    pub total: Option<i64>,
    pub done: i64,
    pub failed: i64,
    pub unavailable: i64,
    #[serde(default)]
    pub error: Option<String>,
    pub finished_at: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A payload of any catalogue type.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    UserCreated(UserCreated),
    PaymentCompleted(Transaction),
    TransactionCreated(Transaction),
    TicketCreated(TicketCreated),
    TicketStatusChanged(TicketStatusChanged),
    TicketMessageAdded(TicketMessageAdded),
    OperatorWebhookDisabled(WebhookDisabled),
    OperatorWebhookFailing(WebhookFailing),
    OperatorWebhookRecovered(WebhookRecovered),
    OperatorWebhookCircuitOpened(CircuitOpened),
    OperatorWebhookCircuitClosed(CircuitClosed),
    OperatorJobFinished(JobFinished),
}

impl Payload {
    /// The type this payload belongs to.
    pub fn event_type(&self) -> EventType {
        match self {
            Payload::UserCreated(_) => EventType::UserCreated,
            Payload::PaymentCompleted(_) => EventType::PaymentCompleted,
            Payload::TransactionCreated(_) => EventType::TransactionCreated,
            Payload::TicketCreated(_) => EventType::TicketCreated,
            Payload::TicketStatusChanged(_) => EventType::TicketStatusChanged,
            Payload::TicketMessageAdded(_) => EventType::TicketMessageAdded,
            Payload::OperatorWebhookDisabled(_) => EventType::OperatorWebhookDisabled,
            Payload::OperatorWebhookFailing(_) => EventType::OperatorWebhookFailing,
            Payload::OperatorWebhookRecovered(_) => EventType::OperatorWebhookRecovered,
            Payload::OperatorWebhookCircuitOpened(_) => EventType::OperatorWebhookCircuitOpened,
            Payload::OperatorWebhookCircuitClosed(_) => EventType::OperatorWebhookCircuitClosed,
            Payload::OperatorJobFinished(_) => EventType::OperatorJobFinished,
        }
    }

    /// Reads a payload object as the given type.
    pub fn from_value(event_type: EventType, value: Value) -> Result<Self, serde_json::Error> {
        Ok(match event_type {
            EventType::UserCreated => Payload::UserCreated(serde_json::from_value(value)?),
            EventType::PaymentCompleted => {
                Payload::PaymentCompleted(serde_json::from_value(value)?)
            }
            EventType::TransactionCreated => {
                Payload::TransactionCreated(serde_json::from_value(value)?)
            }
            EventType::TicketCreated => Payload::TicketCreated(serde_json::from_value(value)?),
            EventType::TicketStatusChanged => {
                Payload::TicketStatusChanged(serde_json::from_value(value)?)
            }
            EventType::TicketMessageAdded => {
                Payload::TicketMessageAdded(serde_json::from_value(value)?)
            }
            EventType::OperatorWebhookDisabled => {
                Payload::OperatorWebhookDisabled(serde_json::from_value(value)?)
            }
            EventType::OperatorWebhookFailing => {
                Payload::OperatorWebhookFailing(serde_json::from_value(value)?)
            }
            EventType::OperatorWebhookRecovered => {
                Payload::OperatorWebhookRecovered(serde_json::from_value(value)?)
            }
            EventType::OperatorWebhookCircuitOpened => {
                Payload::OperatorWebhookCircuitOpened(serde_json::from_value(value)?)
            }
            EventType::OperatorWebhookCircuitClosed => {
                Payload::OperatorWebhookCircuitClosed(serde_json::from_value(value)?)
            }
            EventType::OperatorJobFinished => {
                Payload::OperatorJobFinished(serde_json::from_value(value)?)
            }
        })
    }

    /// The payload as a JSON object.
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        match self {
            Payload::UserCreated(p) => serde_json::to_value(p),
            Payload::PaymentCompleted(p) | Payload::TransactionCreated(p) => {
                serde_json::to_value(p)
            }
            Payload::TicketCreated(p) => serde_json::to_value(p),
            Payload::TicketStatusChanged(p) => serde_json::to_value(p),
            Payload::TicketMessageAdded(p) => serde_json::to_value(p),
            Payload::OperatorWebhookDisabled(p) => serde_json::to_value(p),
            Payload::OperatorWebhookFailing(p) => serde_json::to_value(p),
            Payload::OperatorWebhookRecovered(p) => serde_json::to_value(p),
            Payload::OperatorWebhookCircuitOpened(p) => serde_json::to_value(p),
            Payload::OperatorWebhookCircuitClosed(p) => serde_json::to_value(p),
            Payload::OperatorJobFinished(p) => serde_json::to_value(p),
        }
    }
}
