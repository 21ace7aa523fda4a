//! Change notices for delivery workers: after a write that changes which
//! webhooks match an event or how they are signed, a core-NATS message
//! ([`proto_events::WebhookChange`]) on
//! `Namespace::webhooks_changed_subject()`. Publishing happens on a
//! background task, so a slow or absent NATS never holds up a request;
//! failures are logged, not fatal (workers also reload every 30 s).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What changed.
pub use proto_events::ChangeOp as Op;
use proto_events::WebhookChange;

/// Notices waiting for NATS, at most; more are dropped with a warning.
const QUEUE: usize = 1024;
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// Hands notices to the publishing task.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::Sender<(i32, Op)>,
}

impl Notifier {
    /// A notifier and the receiving end for [`run`].
    pub fn new() -> (Self, mpsc::Receiver<(i32, Op)>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Self { tx }, rx)
    }

    /// Queues a notice; never waits.
    pub fn notify(&self, webhook_id: i32, op: Op) {
        if let Err(e) = self.tx.try_send((webhook_id, op)) {
            tracing::warn!(webhook_id, op = op.as_str(), error = %e,
                "change notice dropped; workers will pick the change up on their periodic reload");
        }
    }
}

async fn publish(client: &async_nats::Client, subject: &str, webhook_id: i32, op: Op) {
    let sent = tokio::time::timeout(
        PUBLISH_TIMEOUT,
        client.publish(
            subject.to_owned(),
            WebhookChange::new(webhook_id, op).to_payload(),
        ),
    )
    .await;
    match sent {
        Ok(Ok(())) => tracing::debug!(webhook_id, op = op.as_str(), "change notice published"),
        Ok(Err(e)) => tracing::warn!(webhook_id, op = op.as_str(), error = %e,
            "could not publish change notice"),
        Err(_) => tracing::warn!(
            webhook_id,
            op = op.as_str(),
            "could not publish change notice: NATS did not take it in time"
        ),
    }
}

/// Publishes queued notices until `shutdown`, then the ones still queued.
pub async fn run(
    client: async_nats::Client,
    subject: String,
    mut rx: mpsc::Receiver<(i32, Op)>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            next = rx.recv() => match next {
                Some((id, op)) => publish(&client, &subject, id, op).await,
                None => break,
            },
            () = shutdown.cancelled() => break,
        }
    }
    if client.connection_state() != async_nats::connection::State::Connected {
        // Nothing would reach NATS; waiting for it would only delay the exit.
        let dropped = std::iter::from_fn(|| rx.try_recv().ok()).count();
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "NATS unreachable at shutdown; change notices dropped (workers reload periodically)"
            );
        }
        return;
    }
    while let Ok((id, op)) = rx.try_recv() {
        publish(&client, &subject, id, op).await;
    }
    let _ = tokio::time::timeout(PUBLISH_TIMEOUT, client.flush()).await;
}
