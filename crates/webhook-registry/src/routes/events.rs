//! `GET /events/types`: the event catalogue with each payload's JSON Schema.

use actix_web::HttpResponse;
use proto_events::EventType;
use serde_json::Value;

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
