//! The test endpoint's delivery: a `webhook.test` event built and signed,
//! sent by the same `WebhookSender::send_event` as the delivery worker's
//! attempts, and recorded as one attempt with the webhook's counters.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use storage::models::{BodyFormat, Delivery, DeliveryStatus, NewDelivery, Webhook};
use storage::secrets::Keyring;
use storage::subscription::{SignatureScheme, StoredAuth};
use webhook_client::{
    Auth, Ed25519Key, Event, HeaderName, HeaderValue, OAuth2Client, Signing, Verdict,
};

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
    let Some(url) = webhook.url.as_deref() else {
        return Err(ApiError::pull_only());
    };
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
    let request = Request::of(webhook, &state.keys, now)?;
    let hmac: Vec<&str> = request.hmac.iter().map(String::as_str).collect();
    let ed25519: Vec<&Ed25519Key> = request.ed25519.iter().collect();
    let signing = match webhook.signature_scheme {
        SignatureScheme::Hmac => Signing::Hmac(&hmac),
        SignatureScheme::Ed25519 => Signing::Ed25519(&ed25519),
    };
    let outcome = state
        .sender
        .send_event(
            Event {
                url,
                webhook_id: webhook.id,
                event_type: TEST_EVENT,
                event_id: &event_id,
                body,
                signing,
                headers: &request.headers,
                auth: request.auth.as_ref(),
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

/// What the test request is made with, the webhook's secrets opened: the
/// same signing keys, headers and auth as its deliveries.
struct Request {
    hmac: Vec<String>,
    ed25519: Vec<Ed25519Key>,
    headers: Vec<(HeaderName, HeaderValue)>,
    auth: Option<Auth>,
}

impl Request {
    fn of(webhook: &Webhook, keys: &Keyring, now: DateTime<Utc>) -> Result<Self, ApiError> {
        let unusable = |e: &dyn std::fmt::Display| {
            tracing::error!(webhook_id = webhook.id, error = %e, "the webhook cannot be delivered to as stored");
            ApiError::Internal
        };
        let opened = webhook
            .sending()
            .ok_or_else(ApiError::pull_only)?
            .open(keys)
            .map_err(|e| unusable(&e))?;
        let mut secrets: Vec<String> = opened.secret.into_iter().collect();
        secrets.extend(
            opened
                .previous
                .filter(|(_, until)| *until > now)
                .map(|(s, _)| s),
        );
        let (hmac, ed25519) = match webhook.signature_scheme {
            SignatureScheme::Hmac => (secrets, Vec::new()),
            SignatureScheme::Ed25519 => (
                Vec::new(),
                secrets
                    .iter()
                    .map(|s| Ed25519Key::from_secret_text(s))
                    .collect::<Result<_, _>>()
                    .map_err(|e| unusable(&e))?,
            ),
        };
        let headers = opened
            .headers
            .iter()
            .map(|(n, v)| webhook_client::check_custom_header(n, v))
            .collect::<Result<_, _>>()
            .map_err(|e| unusable(&e))?;
        let auth = opened.auth.map(|a| match a {
            StoredAuth::Basic { username, password } => Auth::Basic { username, password },
            StoredAuth::Bearer { token } => Auth::Bearer { token },
            StoredAuth::Oauth2 {
                token_url,
                client_id,
                client_secret,
                scope,
            } => Auth::OAuth2(OAuth2Client {
                token_url,
                client_id,
                client_secret,
                scope,
            }),
        });
        Ok(Self {
            hmac,
            ed25519,
            headers,
            auth,
        })
    }
}

/// Text stored in Postgres cannot hold NUL characters.
fn storable(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{fffd}")
    } else {
        s
    }
}
