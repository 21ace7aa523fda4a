//! `GET /openapi.json`: the OpenAPI 3 document, generated from the handlers'
//! and types' annotations (utoipa), served without a token.

use actix_web::{HttpResponse, web};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorOut, FieldError, HttpValidationError, LocItem};
use crate::model::{
    DeliveryOut, DeliveryPage, EventCatalogueOut, EventTypeOut, RetryOut, RotateIn, RotateOut,
    StatsOut, TestOut, WebhookIn, WebhookOut, WebhookPage, WebhookPatch,
};
use crate::routes::{events, webhooks};

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// The registry's API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "bedolaga-events webhook registry",
        description = "Manage webhooks, their deliveries and secrets. Every /webhooks route needs `Authorization: Bearer <token>` or `X-API-Key: <token>`."
    ),
    paths(
        webhooks::create, webhooks::list, webhooks::stats, webhooks::get, webhooks::update,
        webhooks::delete, webhooks::deliveries, webhooks::test, webhooks::retry, webhooks::rotate,
        events::types, serve,
    ),
    components(schemas(
        WebhookIn, WebhookPatch, WebhookOut, WebhookPage, DeliveryOut, DeliveryPage, StatsOut,
        RotateIn, RotateOut, TestOut, RetryOut, EventTypeOut, EventCatalogueOut, ErrorOut,
        HttpValidationError, FieldError, LocItem,
    )),
    modifiers(&SecuritySchemes),
    tags(
        (name = "webhooks", description = "Webhook registrations"),
        (name = "deliveries", description = "Delivery history and manual retries"),
        (name = "events", description = "The event catalogue"),
        (name = "meta", description = "This document"),
    )
)]
pub struct ApiDoc;

/// The document as JSON text, rendered once at start.
#[derive(Clone)]
pub struct OpenApiJson(pub String);

impl OpenApiJson {
    pub fn render() -> Result<Self, serde_json::Error> {
        let mut doc = ApiDoc::openapi();
        doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
        Ok(Self(doc.to_json()?))
    }
}

/// This OpenAPI document.
#[utoipa::path(
    get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json"))
)]
pub async fn serve(doc: web::Data<OpenApiJson>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc.0.clone())
}
