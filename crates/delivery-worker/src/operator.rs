//! Operator events (docs/contract.md, "Operator events"): what the worker
//! notices about webhooks and jobs, published on the events stream under
//! the reserved `operator.` family, so that webhooks naming it, WebSocket
//! clients and the portal see them like any other event.
//!
//! They are published after the transaction that made the change commits;
//! a publish that fails is tried three times, then counted and logged
//! (`delivery_operator_events{outcome="failed"}`): the change itself is in
//! the database either way.

use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use proto_events::payload::{
    CircuitClosed, CircuitOpened, JobFinished, Payload, WebhookDisabled, WebhookFailing,
    WebhookRecovered,
};
use proto_events::{Envelope, Namespace, format_timestamp};
use storage::attempts::{Change, Moved};
use storage::jobs::Job;

use crate::metrics::Metrics;

/// Publishes operator events; cheap to clone.
#[derive(Clone)]
pub struct OperatorEvents {
    js: jetstream::Context,
    ns: Namespace,
    metrics: Metrics,
}

impl OperatorEvents {
    pub fn new(js: jetstream::Context, ns: Namespace, metrics: Metrics) -> Self {
        Self { js, ns, metrics }
    }

    /// The events of a batch's health changes, published in the background.
    pub fn moved(&self, moved: &[Moved]) {
        for m in moved {
            self.spawn(payload_of_move(m));
        }
    }

    /// `operator.job.finished` for a job that ended, in the background.
    pub fn job_finished(&self, job: &Job) {
        self.spawn(Payload::OperatorJobFinished(JobFinished {
            job_id: job.id,
            webhook_id: i64::from(job.webhook_id),
            kind: job.kind.as_str().to_owned(),
            status: job.status.as_str().to_owned(),
            total: job.total,
            done: job.done,
            failed: job.failed,
            unavailable: job.unavailable,
            error: job.error.clone(),
            finished_at: format_timestamp(job.finished_at.unwrap_or_else(Utc::now)),
            extra: Default::default(),
        }));
    }

    fn spawn(&self, payload: Payload) {
        let this = self.clone();
        tokio::spawn(async move { this.publish(payload).await });
    }

    async fn publish(&self, payload: Payload) {
        let event_type = payload.event_type();
        let Ok(serde_json::Value::Object(map)) = payload.to_value() else {
            return;
        };
        let event = Envelope::new(event_type, map);
        let subject = self.ns.event_subject(event_type.as_str());
        let mut error = String::new();
        for attempt in 0..3u32 {
            let mut headers = async_nats::HeaderMap::new();
            // The same id on every try: JetStream keeps one copy.
            headers.insert("Nats-Msg-Id", event.id.as_str());
            let sent = self
                .js
                .publish_with_headers(subject.clone(), headers, event.to_bytes().into())
                .await;
            match sent {
                Ok(ack) => match ack.await {
                    Ok(_) => {
                        self.metrics.operator_event("published");
                        tracing::info!(event_type = event_type.as_str(), event_id = %event.id, "operator event published");
                        return;
                    }
                    Err(e) => error = e.to_string(),
                },
                Err(e) => error = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200 * 5u64.pow(attempt))).await;
        }
        self.metrics.operator_event("failed");
        tracing::warn!(event_type = event_type.as_str(), %error, "cannot publish an operator event");
    }
}

fn ts(t: DateTime<Utc>) -> String {
    format_timestamp(t)
}

/// The operator event of one health change.
pub fn payload_of_move(m: &Moved) -> Payload {
    let (webhook_id, webhook_name, extra) =
        (i64::from(m.webhook_id), m.name.clone(), Default::default());
    match &m.change {
        Change::Disabled { reason } => Payload::OperatorWebhookDisabled(WebhookDisabled {
            webhook_id,
            webhook_name,
            reason: reason.clone(),
            disabled_at: ts(m.at),
            extra,
        }),
        Change::Failing { since } => Payload::OperatorWebhookFailing(WebhookFailing {
            webhook_id,
            webhook_name,
            failing_since: ts(*since),
            extra,
        }),
        Change::Recovered { failing_since } => {
            Payload::OperatorWebhookRecovered(WebhookRecovered {
                webhook_id,
                webhook_name,
                failing_since: ts(*failing_since),
                recovered_at: ts(m.at),
                extra,
            })
        }
        Change::CircuitOpened {
            failures,
            cooldown_s,
        } => Payload::OperatorWebhookCircuitOpened(CircuitOpened {
            webhook_id,
            webhook_name,
            consecutive_failures: i64::from(*failures),
            opened_at: ts(m.at),
            cooldown_s: i64::from(*cooldown_s),
            extra,
        }),
        Change::CircuitClosed => Payload::OperatorWebhookCircuitClosed(CircuitClosed {
            webhook_id,
            webhook_name,
            closed_at: ts(m.at),
            extra,
        }),
    }
}
