//! The route table.

pub mod events;
pub mod openapi;
pub mod webhooks;

use actix_web::middleware::from_fn;
use actix_web::{HttpResponse, Resource, web};

use crate::auth::require_token;
use crate::error::ApiError;

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("Not Found"))
}

async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed("Method Not Allowed"))
}

fn resource(paths: &[&str]) -> Resource {
    web::resource(paths.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>())
        .default_service(web::to(method_not_allowed))
}

/// Every API route (the ops routes are mounted by `telemetry::ops`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/webhooks")
            .wrap(from_fn(require_token))
            .service(
                resource(&["", "/"])
                    .route(web::post().to(webhooks::create))
                    .route(web::get().to(webhooks::list)),
            )
            .service(resource(&["/stats"]).route(web::get().to(webhooks::stats)))
            .service(
                resource(&["/{webhook_id}"])
                    .route(web::get().to(webhooks::get))
                    .route(web::patch().to(webhooks::update))
                    .route(web::delete().to(webhooks::delete)),
            )
            .service(
                resource(&["/{webhook_id}/deliveries"]).route(web::get().to(webhooks::deliveries)),
            )
            .service(
                resource(&["/{webhook_id}/deliveries/{delivery_id}/retry"])
                    .route(web::post().to(webhooks::retry)),
            )
            .service(resource(&["/{webhook_id}/test"]).route(web::post().to(webhooks::test)))
            .service(
                resource(&["/{webhook_id}/rotate-secret"]).route(web::post().to(webhooks::rotate)),
            )
            .default_service(web::to(not_found)),
    )
    .service(resource(&["/events/types"]).route(web::get().to(events::types)))
    .service(resource(&["/openapi.json"]).route(web::get().to(openapi::serve)));
}

/// For unmatched paths (`App::default_service`).
pub async fn default_not_found() -> Result<HttpResponse, ApiError> {
    not_found().await
}
