//! The change notice: a core-NATS message on
//! [`Namespace::webhooks_changed_subject`](crate::Namespace::webhooks_changed_subject)
//! telling delivery workers that a webhook was created, changed, deleted or
//! had its secret rotated, so they reload their list at once instead of at
//! their next periodic reload. Its body is JSON:
//! `{"webhook_id": 7, "op": "created"}`.

use serde::{Deserialize, Serialize};

/// What happened to the webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    Created,
    Updated,
    Deleted,
    Rotated,
}

impl ChangeOp {
    /// The name on the wire, for log fields.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
            Self::Rotated => "rotated",
        }
    }
}

/// One change notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookChange {
    pub webhook_id: i32,
    pub op: ChangeOp,
}

impl WebhookChange {
    pub fn new(webhook_id: i32, op: ChangeOp) -> Self {
        Self { webhook_id, op }
    }

    /// The message body.
    pub fn to_payload(&self) -> bytes::Bytes {
        // A struct of an integer and a unit enum always serialises.
        serde_json::to_vec(self).unwrap_or_default().into()
    }

    /// Reads a message body.
    pub fn from_payload(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_wire_form() {
        let notice = WebhookChange::new(7, ChangeOp::Rotated);
        assert_eq!(
            &notice.to_payload()[..],
            br#"{"webhook_id":7,"op":"rotated"}"#
        );
        assert_eq!(
            WebhookChange::from_payload(br#"{"op":"deleted","webhook_id":3}"#).unwrap(),
            WebhookChange::new(3, ChangeOp::Deleted)
        );
        for op in [
            ChangeOp::Created,
            ChangeOp::Updated,
            ChangeOp::Deleted,
            ChangeOp::Rotated,
        ] {
            let json = serde_json::to_value(op).unwrap();
            assert_eq!(json, op.as_str());
        }
        assert!(WebhookChange::from_payload(br#"{"webhook_id":1,"op":"renamed"}"#).is_err());
    }
}
