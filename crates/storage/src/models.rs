//! Row types of the three tables.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde_json::Value;

use crate::schema::{web_api_tokens, webhook_deliveries, webhooks};

/// A `webhooks` row. `secret` and `previous_secret` must never leave the
/// process except as a signature.
#[derive(Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = webhooks, check_for_backend(diesel::pg::Pg))]
pub struct Webhook {
    pub id: i32,
    pub name: String,
    /// Where deliveries are POSTed; `None` for a pull webhook.
    pub url: Option<String>,
    pub secret: Option<String>,
    pub event_type: String,
    pub is_active: bool,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_triggered_at: Option<DateTime<Utc>>,
    pub failure_count: i64,
    pub success_count: i64,
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub failing_since: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
    pub body_format: BodyFormat,
    /// Every pattern when there are several (`None`: `event_type` alone).
    pub event_types: Option<Vec<String>>,
    /// The payload filter (`proto_events::filter`), `None` for every event.
    pub payload_filter: Option<Value>,
    /// Custom headers ([`crate::subscription::StoredHeader`]s).
    pub headers: Option<Value>,
    /// Receiver auth ([`crate::subscription::StoredAuth`]).
    pub auth: Option<Value>,
    pub signature_scheme: crate::subscription::SignatureScheme,
    pub mode: WebhookMode,
    /// The acknowledged pull position (`proto_events::Cursor`): its epoch
    /// and sequence, `None` until the owner first acknowledges.
    pub pull_epoch: Option<String>,
    pub pull_seq: Option<i64>,
    /// At most this many requests per second, across every replica
    /// (`None`: unlimited).
    pub rate_limit_per_s: Option<f64>,
    /// Requests allowed at once above the rate (`None`: the rate, rounded up).
    pub rate_burst: Option<i32>,
    /// One event at a time, in stream order.
    pub ordered: bool,
    /// When `ordered` was switched on: events published since are ordered.
    pub ordered_since: Option<DateTime<Utc>>,
    /// Consecutive failures that open the circuit (`None`: the worker's setting).
    pub circuit_threshold: Option<i32>,
    /// Seconds the circuit stays open before a probe (`None`: the worker's setting).
    pub circuit_cooldown_s: Option<i32>,
}

/// A webhook's circuit (`webhook_circuit`; no row: closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Circuit {
    pub state: CircuitState,
    /// When it entered its state (`None`: closed since creation).
    pub since: Option<DateTime<Utc>>,
    /// Failed attempts since the last success.
    pub consecutive_failures: i32,
}

impl Default for Circuit {
    fn default() -> Self {
        Self {
            state: CircuitState::Closed,
            since: None,
            consecutive_failures: 0,
        }
    }
}

crate::text_enum::text_enum! {
    /// A webhook's circuit breaker (docs/contract.md, "Circuit breaker").
    pub enum CircuitState {
        /// Deliveries are attempted.
        Closed,
        /// Too many consecutive failures: nothing is attempted until the
        /// cooldown ends.
        Open,
        /// The cooldown ended: one probe attempt is in flight.
        #[strum(serialize = "half_open")]
        HalfOpen,
    }
}

crate::text_enum::text_enum! {
    /// How a webhook's events reach its owner (docs/contract.md, "Pull
    /// webhooks").
    pub enum WebhookMode {
        /// The delivery worker POSTs each event to the webhook's URL.
        Push,
        /// The owner reads its events with `GET /webhooks/{id}/pull`.
        Pull,
    }
}

crate::text_enum::text_enum! {
    /// How a webhook's POST body is written (docs/contract.md, "Body
    /// formats"). Signatures are always over the bytes sent.
    pub enum BodyFormat {
        /// `json.dumps(payload, sort_keys=True)`: keys sorted, ASCII only.
        Canonical,
        /// The bot's `json.dumps(payload, default=str, ensure_ascii=False)`:
        /// the payload's key order as emitted, raw UTF-8.
        Bot,
    }
}

impl Webhook {
    /// Whether its owner reads its events (no deliveries are POSTed).
    pub fn is_pull(&self) -> bool {
        self.mode == WebhookMode::Pull
    }

    /// The acknowledged pull position, if any.
    pub fn pull_cursor(&self) -> Option<proto_events::Cursor> {
        let seq = u64::try_from(self.pull_seq?).ok()?;
        Some(proto_events::Cursor::new(self.pull_epoch.clone()?, seq))
    }

    /// Its patterns, `event_type` first.
    pub fn patterns(&self) -> Vec<&str> {
        crate::subscription::patterns(&self.event_type, self.event_types.as_deref())
    }

    /// The secrets a delivery is signed with now: the current one first,
    /// then the previous one while its grace period lasts.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<&str> {
        signing_secrets(
            self.secret.as_deref(),
            self.previous_secret.as_deref(),
            self.previous_secret_expires_at,
            now,
        )
    }
}

/// The secrets a delivery is signed with at `now`: the current one, then
/// the previous one until its grace period ends. Empty strings mean "no
/// secret", as in the bot.
pub fn signing_secrets<'a>(
    secret: Option<&'a str>,
    previous: Option<&'a str>,
    previous_expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Vec<&'a str> {
    let mut out = Vec::with_capacity(2);
    if let Some(s) = secret.filter(|s| !s.is_empty()) {
        out.push(s);
    }
    if let (Some(prev), Some(until)) = (previous.filter(|s| !s.is_empty()), previous_expires_at)
        && until > now
    {
        out.push(prev);
    }
    out
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("event_type", &self.event_type)
            .field("is_active", &self.is_active)
            .field("has_secret", &self.secret.is_some())
            .finish_non_exhaustive()
    }
}

/// A `webhook_deliveries` row: one attempt, or one queued attempt when its
/// status is `pending`.
#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = webhook_deliveries, check_for_backend(diesel::pg::Pg))]
pub struct Delivery {
    pub id: i64,
    pub webhook_id: i32,
    pub event_type: String,
    pub payload: Value,
    pub response_status: Option<i32>,
    pub response_body: Option<String>,
    pub status: DeliveryStatus,
    pub error_message: Option<String>,
    pub attempt_number: i32,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub next_retry_at: Option<DateTime<Utc>>,
    pub event_id: Option<String>,
    /// The W3C `traceparent` the event was published with.
    pub traceparent: Option<String>,
    /// The exact bytes sent when they are not the canonical body of
    /// `payload` (a `bot` body format); a retry sends them again.
    pub body: Option<String>,
    /// Why a pending row waits unattempted (`Held`), `None` otherwise.
    pub held: Option<String>,
}

/// A new `webhook_deliveries` row.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = webhook_deliveries, check_for_backend(diesel::pg::Pg))]
pub struct NewDelivery {
    pub webhook_id: i32,
    pub event_type: String,
    pub payload: Value,
    pub response_status: Option<i32>,
    pub response_body: Option<String>,
    pub status: DeliveryStatus,
    pub error_message: Option<String>,
    pub attempt_number: i32,
    pub delivered_at: Option<DateTime<Utc>>,
    pub next_retry_at: Option<DateTime<Utc>>,
    pub event_id: Option<String>,
    pub traceparent: Option<String>,
    pub body: Option<String>,
}

crate::text_enum::text_enum! {
    /// The status of a `webhook_deliveries` row, stored as the bot stores it
    /// (`pending`, `success`, `failed`) and shown so in the API.
    pub enum DeliveryStatus {
        /// A queued attempt, due at `next_retry_at`.
        Pending,
        Success,
        Failed,
    }
}

/// A `web_api_tokens` row. Only the hash of a token is ever stored.
#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = web_api_tokens, check_for_backend(diesel::pg::Pg))]
pub struct ApiToken {
    pub id: i32,
    pub name: String,
    pub token_hash: String,
    pub token_prefix: String,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub last_used_ip: Option<String>,
    pub is_active: bool,
    pub created_by: Option<String>,
    /// Its id in the bot's `web_api_tokens`, for a token copied from there.
    pub bot_token_id: Option<i32>,
}

impl ApiToken {
    /// Active and not expired at `now`.
    pub fn is_usable(&self, now: DateTime<Utc>) -> bool {
        self.is_active && self.expires_at.is_none_or(|t| t > now)
    }
}

/// A new `web_api_tokens` row.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = web_api_tokens, check_for_backend(diesel::pg::Pg))]
pub struct NewApiToken {
    pub name: String,
    pub token_hash: String,
    pub token_prefix: String,
    pub description: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub is_active: bool,
    pub created_by: Option<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use strum::VariantArray;

    use super::DeliveryStatus;

    #[test]
    fn delivery_statuses_keep_the_stored_strings() {
        let names: Vec<&str> = DeliveryStatus::VARIANTS
            .iter()
            .map(|s| s.as_str())
            .collect();
        assert_eq!(names, ["pending", "success", "failed"]);
        for (status, text) in [
            (DeliveryStatus::Pending, "pending"),
            (DeliveryStatus::Success, "success"),
            (DeliveryStatus::Failed, "failed"),
        ] {
            assert_eq!(status.as_str(), text);
            assert_eq!(text.parse::<DeliveryStatus>().unwrap(), status);
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{text}\"")
            );
        }
        assert!("Success".parse::<DeliveryStatus>().is_err());
    }
}
