//! The event types: the six the bot emits and the reserved `operator.`
//! family the platform emits about itself, with their JSON Schemas.

use std::fmt;
use std::str::FromStr;

/// One of the event types of the catalogue (docs/contract.md, "Event
/// catalogue").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    UserCreated,
    PaymentCompleted,
    TransactionCreated,
    TicketCreated,
    TicketStatusChanged,
    TicketMessageAdded,
    OperatorWebhookDisabled,
    OperatorWebhookFailing,
    OperatorWebhookRecovered,
    OperatorWebhookCircuitOpened,
    OperatorWebhookCircuitClosed,
    OperatorJobFinished,
}

/// The family of the platform's own events (docs/contract.md, "Operator
/// events"): `*` does not select it, a pattern must name it.
pub const OPERATOR_FAMILY: &str = "operator.";

/// The error for a type name that is not in the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type '{0}'; valid types: {valid}", valid = EventType::names().join(", "))]
pub struct UnknownEventType(pub String);

impl EventType {
    /// Every type, in catalogue order.
    pub const ALL: [EventType; 12] = [
        EventType::UserCreated,
        EventType::PaymentCompleted,
        EventType::TransactionCreated,
        EventType::TicketCreated,
        EventType::TicketStatusChanged,
        EventType::TicketMessageAdded,
        EventType::OperatorWebhookDisabled,
        EventType::OperatorWebhookFailing,
        EventType::OperatorWebhookRecovered,
        EventType::OperatorWebhookCircuitOpened,
        EventType::OperatorWebhookCircuitClosed,
        EventType::OperatorJobFinished,
    ];

    /// The types the bot emits (every type outside the operator family).
    pub const BOT: [EventType; 6] = [
        EventType::UserCreated,
        EventType::PaymentCompleted,
        EventType::TransactionCreated,
        EventType::TicketCreated,
        EventType::TicketStatusChanged,
        EventType::TicketMessageAdded,
    ];

    /// Whether it is one of the platform's own events (`operator.…`).
    pub const fn is_operator(self) -> bool {
        matches!(
            self,
            EventType::OperatorWebhookDisabled
                | EventType::OperatorWebhookFailing
                | EventType::OperatorWebhookRecovered
                | EventType::OperatorWebhookCircuitOpened
                | EventType::OperatorWebhookCircuitClosed
                | EventType::OperatorJobFinished
        )
    }

    /// The wire name, e.g. `ticket.status_changed`.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::UserCreated => "user.created",
            EventType::PaymentCompleted => "payment.completed",
            EventType::TransactionCreated => "transaction.created",
            EventType::TicketCreated => "ticket.created",
            EventType::TicketStatusChanged => "ticket.status_changed",
            EventType::TicketMessageAdded => "ticket.message_added",
            EventType::OperatorWebhookDisabled => "operator.webhook.disabled",
            EventType::OperatorWebhookFailing => "operator.webhook.failing",
            EventType::OperatorWebhookRecovered => "operator.webhook.recovered",
            EventType::OperatorWebhookCircuitOpened => "operator.webhook.circuit_opened",
            EventType::OperatorWebhookCircuitClosed => "operator.webhook.circuit_closed",
            EventType::OperatorJobFinished => "operator.job.finished",
        }
    }

    /// Every wire name, in catalogue order.
    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|t| t.as_str()).collect()
    }

    /// A one-line description for the catalogue endpoint.
    pub const fn description(self) -> &'static str {
        match self {
            EventType::UserCreated => "A user signed up (Telegram, e-mail or OAuth).",
            EventType::PaymentCompleted => "A balance top-up payment completed.",
            EventType::TransactionCreated => "A balance transaction was created.",
            EventType::TicketCreated => "A support ticket was created.",
            EventType::TicketStatusChanged => "A support ticket changed status.",
            EventType::TicketMessageAdded => {
                "A message was added to a support ticket (by the user or an admin)."
            }
            EventType::OperatorWebhookDisabled => {
                "A webhook was disabled by the platform (410 Gone, or failing for too long)."
            }
            EventType::OperatorWebhookFailing => {
                "A webhook's deliveries started failing (its first failure after a success)."
            }
            EventType::OperatorWebhookRecovered => "A failing webhook's deliveries succeed again.",
            EventType::OperatorWebhookCircuitOpened => {
                "A webhook's circuit opened: no attempts until its cooldown ends."
            }
            EventType::OperatorWebhookCircuitClosed => {
                "A webhook's circuit closed after a successful probe; its backlog drains."
            }
            EventType::OperatorJobFinished => "A replay, recover or bulk retry job finished.",
        }
    }

    /// The JSON Schema (draft 2020-12) of this type's payload, as shipped in
    /// `proto-events/schemas/`.
    pub const fn schema_json(self) -> &'static str {
        match self {
            EventType::UserCreated => include_str!("../schemas/user.created.json"),
            EventType::PaymentCompleted => include_str!("../schemas/payment.completed.json"),
            EventType::TransactionCreated => include_str!("../schemas/transaction.created.json"),
            EventType::TicketCreated => include_str!("../schemas/ticket.created.json"),
            EventType::TicketStatusChanged => {
                include_str!("../schemas/ticket.status_changed.json")
            }
            EventType::TicketMessageAdded => include_str!("../schemas/ticket.message_added.json"),
            EventType::OperatorWebhookDisabled => {
                include_str!("../schemas/operator.webhook.disabled.json")
            }
            EventType::OperatorWebhookFailing => {
                include_str!("../schemas/operator.webhook.failing.json")
            }
            EventType::OperatorWebhookRecovered => {
                include_str!("../schemas/operator.webhook.recovered.json")
            }
            EventType::OperatorWebhookCircuitOpened => {
                include_str!("../schemas/operator.webhook.circuit_opened.json")
            }
            EventType::OperatorWebhookCircuitClosed => {
                include_str!("../schemas/operator.webhook.circuit_closed.json")
            }
            EventType::OperatorJobFinished => include_str!("../schemas/operator.job.finished.json"),
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownEventType(s.to_owned()))
    }
}

impl serde::Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>(), Ok(t));
        }
        let err = "user.deleted"
            .parse::<EventType>()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.to_string().contains("ticket.message_added"), "{err}");
    }
}
