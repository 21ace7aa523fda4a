//! The route table.

pub mod events;
pub mod jobs;
pub mod openapi;
pub mod portal;
pub mod webhooks;

use actix_web::http::header;
use actix_web::middleware::from_fn;
use actix_web::{HttpResponse, Resource, ResponseError, web};

use crate::auth::require_token;
use crate::error::ApiError;
use crate::head_guard::Refusal;

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("Not Found"))
}

/// 405 with the `Allow` header RFC 9110 requires.
fn method_not_allowed(allow: &'static str) -> HttpResponse {
    let mut resp = ApiError::MethodNotAllowed("Method Not Allowed").error_response();
    resp.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    resp
}

/// A resource answering 405 (with `Allow: <allow>`) to other methods.
fn resource(paths: &[&str], allow: &'static str) -> Resource {
    web::resource(paths.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>())
        .default_service(web::to(move || async move { method_not_allowed(allow) }))
}

/// Every API route (the ops routes are mounted by `telemetry::ops`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/webhooks")
            .wrap(from_fn(require_token))
            .service(
                resource(&["", "/"], "GET, POST")
                    .route(web::post().to(webhooks::create))
                    .route(web::get().to(webhooks::list)),
            )
            .service(resource(&["/stats"], "GET").route(web::get().to(webhooks::stats)))
            .service(
                resource(&["/{webhook_id}"], "GET, PATCH, DELETE")
                    .route(web::get().to(webhooks::get))
                    .route(web::patch().to(webhooks::update))
                    .route(web::delete().to(webhooks::delete)),
            )
            .service(
                resource(&["/{webhook_id}/deliveries"], "GET")
                    .route(web::get().to(webhooks::deliveries)),
            )
            .service(
                resource(&["/{webhook_id}/deliveries/retry"], "POST")
                    .route(web::post().to(jobs::bulk_retry)),
            )
            .service(
                resource(&["/{webhook_id}/recover"], "POST").route(web::post().to(jobs::recover)),
            )
            .service(
                resource(&["/{webhook_id}/replay"], "POST").route(web::post().to(jobs::replay)),
            )
            .service(resource(&["/{webhook_id}/jobs"], "GET").route(web::get().to(jobs::list)))
            .service(
                resource(&["/{webhook_id}/jobs/{job_id}"], "GET, DELETE")
                    .route(web::get().to(jobs::get))
                    .route(web::delete().to(jobs::cancel)),
            )
            .service(
                resource(&["/{webhook_id}/jobs/{job_id}/pause"], "POST")
                    .route(web::post().to(jobs::pause)),
            )
            .service(
                resource(&["/{webhook_id}/jobs/{job_id}/resume"], "POST")
                    .route(web::post().to(jobs::resume)),
            )
            .service(
                resource(&["/{webhook_id}/deliveries/hourly"], "GET")
                    .route(web::get().to(webhooks::hourly)),
            )
            .service(
                resource(&["/{webhook_id}/deliveries/{delivery_id}/retry"], "POST")
                    .route(web::post().to(webhooks::retry)),
            )
            .service(
                resource(&["/{webhook_id}/test"], "POST").route(web::post().to(webhooks::test)),
            )
            .service(
                resource(&["/{webhook_id}/rotate-secret"], "POST")
                    .route(web::post().to(webhooks::rotate)),
            )
            .default_service(web::to(not_found)),
    )
    .service(
        resource(&["/services/readiness"], "GET")
            .wrap(from_fn(require_token))
            .route(web::get().to(portal::readiness)),
    )
    .service(resource(&["/"], "GET").route(web::get().to(portal::index)))
    .service(resource(&["/portal/{file}"], "GET").route(web::get().to(portal::asset)))
    .service(resource(&["/events/types"], "GET").route(web::get().to(events::types)))
    .service(resource(&["/openapi.json"], "GET").route(web::get().to(openapi::serve)))
    .service(resource(&["/_refused/{reason}"], "GET").route(web::get().to(refused)));
}

/// The answer to a request head the connection guard refused: the guard
/// (`head_guard`) hands actix-http `GET /_refused/{reason}` in its place.
/// Not part of the API; asked directly it answers the same error.
async fn refused(reason: web::Path<String>) -> Result<HttpResponse, ApiError> {
    match Refusal::from_path_segment(&reason) {
        Some(why) => Err(ApiError::Refused(why)),
        None => not_found().await,
    }
}

/// For unmatched paths (`App::default_service`).
pub async fn default_not_found() -> Result<HttpResponse, ApiError> {
    not_found().await
}
