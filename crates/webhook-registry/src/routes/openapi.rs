//! `GET /openapi.json`: the OpenAPI 3 document, generated from the handlers'
//! and types' annotations (utoipa), served without a token.

use actix_web::{HttpResponse, web};
use proto_events::EventType;
use serde_json::{Value, json};
use storage::jobs::{JobKind, JobStatus};
use storage::models::{BodyFormat, DeliveryStatus};
use strum::VariantArray;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorOut, FieldError, HttpValidationError, LocItem};
use crate::extract::lax_bool_schema;
use crate::model::{
    BulkRetryIn, DeliveryOut, DeliveryPage, EventCatalogueOut, EventTypeOut, HourBucketOut,
    HourlyOut, JobOut, JobPage, RecoverIn, ReplayIn, RetryOut, RotateIn, RotateOut, StatsOut,
    TestOut, WebhookIn, WebhookOut, WebhookPage, WebhookPatch,
};
use crate::model::{
    DESCRIPTION_MAX, EVENT_TYPE_MAX, HOURS_DEFAULT, HOURS_MAX, JOB_RATE_MAX, LIMIT_DEFAULT,
    LIMIT_MAX, MAX_GRACE_SECONDS, NAME_MAX, SECRET_MAX, URL_MAX, url_pattern,
};
use crate::routes::portal::{ServiceReadiness, ServicesReadiness};

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
    components(schemas(
        WebhookIn, WebhookPatch, WebhookOut, WebhookPage, DeliveryOut, DeliveryPage, StatsOut,
        RotateIn, RotateOut, TestOut, RetryOut, EventTypeOut, EventCatalogueOut, ErrorOut,
        HttpValidationError, FieldError, LocItem, HourlyOut, HourBucketOut, ServiceReadiness,
        ServicesReadiness, RecoverIn, ReplayIn, BulkRetryIn, JobOut, JobPage,
    )),
    modifiers(&SecuritySchemes),
    tags(
        (name = "webhooks", description = "Webhook registrations"),
        (name = "deliveries", description = "Delivery history and manual retries"),
        (name = "jobs", description = "Recover, replay and bulk retry, run in the background by the delivery worker"),
        (name = "events", description = "The event catalogue"),
        (name = "meta", description = "This document and the services' readiness"),
    )
)]
pub struct ApiDoc;

/// The document as JSON text, rendered once at start.
#[derive(Clone)]
pub struct OpenApiJson(pub String);

impl OpenApiJson {
    pub fn render() -> Result<Self, serde_json::Error> {
        Ok(Self(serde_json::to_string(&document()?)?))
    }
}

/// The document as a JSON value: what utoipa derives from the annotations,
/// refined where the annotations cannot say exactly what the server does.
pub fn document() -> Result<Value, serde_json::Error> {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    // The paths of the route table.
    for op in crate::routes::operations() {
        doc.paths.add_path_operation(&op.path, op.methods, op.doc);
    }
    let mut doc = serde_json::to_value(doc)?;
    refine(&mut doc);
    Ok(doc)
}

/// Strings the server stores: no NUL characters (PostgreSQL text cannot
/// hold them; the server answers 422).
const NO_NUL: &str = "^[^\\u0000]*$";

/// Every accepted `event_type`: the catalogue's types, a family pattern per
/// family (`ticket.*`), and `*`.
fn event_type_values() -> Vec<Value> {
    let mut values: Vec<String> = EventType::ALL
        .iter()
        .map(|t| t.as_str().to_owned())
        .collect();
    for t in EventType::ALL {
        if let Some((family, _)) = t.as_str().split_once('.') {
            let pattern = format!("{family}.*");
            if !values.contains(&pattern) {
                values.push(pattern);
            }
        }
    }
    values.push("*".to_owned());
    values.into_iter().map(Value::String).collect()
}

fn set(doc: &mut Value, pointer: &str, key: &str, value: Value) {
    if let Some(Value::Object(obj)) = doc.pointer_mut(pointer) {
        obj.insert(key.to_owned(), value);
    }
}

/// `["string", "null"]` → `"string"`: a field that may be left out but is
/// refused as `null`.
fn not_null(doc: &mut Value, pointer: &str) {
    if let Some(Value::Object(obj)) = doc.pointer_mut(pointer)
        && let Some(Value::Array(types)) = obj.get("type")
        && let Some(first) = types.iter().find(|t| *t != "null").cloned()
    {
        obj.insert("type".to_owned(), first);
    }
}

/// The parameter `name` of the operation at `pointer`.
fn param<'a>(doc: &'a mut Value, pointer: &str, name: &str) -> Option<&'a mut Value> {
    doc.pointer_mut(&format!("{pointer}/parameters"))?
        .as_array_mut()?
        .iter_mut()
        .find(|p| p["name"] == name)
}

/// The limits of `crate::model`, where the validators and query structs
/// take them from.
fn limits(doc: &mut Value) {
    let schemas = "/components/schemas";
    for (schema, field, min, max) in [
        ("WebhookIn", "name", Some(1), NAME_MAX),
        ("WebhookIn", "url", Some(1), URL_MAX),
        ("WebhookIn", "event_type", Some(1), EVENT_TYPE_MAX),
        ("WebhookIn", "secret", None, SECRET_MAX),
        ("WebhookIn", "description", None, DESCRIPTION_MAX),
        ("WebhookPatch", "name", Some(1), NAME_MAX),
        ("WebhookPatch", "url", Some(1), URL_MAX),
        ("WebhookPatch", "event_type", Some(1), EVENT_TYPE_MAX),
        ("WebhookPatch", "secret", None, SECRET_MAX),
        ("WebhookPatch", "description", None, DESCRIPTION_MAX),
        ("RotateIn", "secret", Some(1), SECRET_MAX),
    ] {
        let pointer = format!("{schemas}/{schema}/properties/{field}");
        if let Some(min) = min {
            set(doc, &pointer, "minLength", json!(min));
        }
        set(doc, &pointer, "maxLength", json!(max));
    }
    for (schema, field, min, max) in [
        ("RotateIn", "grace_period_seconds", 0, MAX_GRACE_SECONDS),
        ("RecoverIn", "rate_per_s", 1, JOB_RATE_MAX),
        ("ReplayIn", "rate_per_s", 1, JOB_RATE_MAX),
        ("ReplayIn", "since_seq", 0, i64::MAX),
        ("BulkRetryIn", "rate_per_s", 1, JOB_RATE_MAX),
    ] {
        let pointer = format!("{schemas}/{schema}/properties/{field}");
        set(doc, &pointer, "minimum", json!(min));
        set(doc, &pointer, "maximum", json!(max));
    }
    let page = [
        ("limit", 1, Some(LIMIT_MAX), LIMIT_DEFAULT),
        ("offset", 0, None, 0),
    ];
    let hours = [("hours", 1, Some(HOURS_MAX), HOURS_DEFAULT)];
    for (operation, params) in [
        ("/paths/~1webhooks/get", &page[..]),
        ("/paths/~1webhooks~1{webhook_id}~1deliveries/get", &page[..]),
        ("/paths/~1webhooks~1{webhook_id}~1jobs/get", &page[..]),
        (
            "/paths/~1webhooks~1{webhook_id}~1deliveries~1hourly/get",
            &hours[..],
        ),
    ] {
        for &(name, min, max, default) in params {
            if let Some(Value::Object(schema)) =
                param(doc, operation, name).map(|p| &mut p["schema"])
            {
                schema.insert("minimum".to_owned(), json!(min));
                if let Some(max) = max {
                    schema.insert("maximum".to_owned(), json!(max));
                }
                schema.insert("default".to_owned(), json!(default));
            }
        }
    }
}

fn refine(doc: &mut Value) {
    limits(doc);
    let schemas = "/components/schemas";
    // Any JSON value: the string, number, object or null that was refused.
    set(
        doc,
        &format!("{schemas}/FieldError/properties"),
        "input",
        json!({"description": "The offending value as sent (any JSON value; never for secrets)."}),
    );
    for (schema, field) in [
        ("WebhookIn", "name"),
        ("WebhookIn", "secret"),
        ("WebhookIn", "description"),
        ("WebhookPatch", "name"),
        ("WebhookPatch", "secret"),
        ("WebhookPatch", "description"),
        ("RotateIn", "secret"),
    ] {
        set(
            doc,
            &format!("{schemas}/{schema}/properties/{field}"),
            "pattern",
            json!(NO_NUL),
        );
    }
    for schema in ["WebhookIn", "WebhookPatch"] {
        let props = format!("{schemas}/{schema}/properties");
        set(
            doc,
            &format!("{props}/url"),
            "pattern",
            json!(url_pattern()),
        );
        let mut types = event_type_values();
        if schema == "WebhookPatch" {
            // `null` leaves it unchanged.
            types.push(Value::Null);
        }
        set(
            doc,
            &format!("{props}/event_type"),
            "enum",
            Value::Array(types),
        );
    }
    // Lax booleans, as the server reads them; `null` leaves it unchanged.
    set(
        doc,
        &format!("{schemas}/WebhookPatch/properties"),
        "is_active",
        json!({"anyOf": [lax_bool_schema(), {"type": "null"}]}),
    );
    let formats = json!(BodyFormat::VARIANTS);
    for schema in ["WebhookIn", "WebhookOut"] {
        set(
            doc,
            &format!("{schemas}/{schema}/properties/body_format"),
            "enum",
            formats.clone(),
        );
    }
    let mut or_null = BodyFormat::VARIANTS
        .iter()
        .map(|f| json!(f))
        .collect::<Vec<_>>();
    or_null.push(Value::Null);
    set(
        doc,
        &format!("{schemas}/WebhookPatch/properties/body_format"),
        "enum",
        Value::Array(or_null),
    );
    // The enums serialize as their stored strings.
    let statuses = json!(DeliveryStatus::VARIANTS);
    set(
        doc,
        &format!("{schemas}/DeliveryOut/properties/status"),
        "enum",
        statuses.clone(),
    );
    if let Some(Value::Array(params)) =
        doc.pointer_mut("/paths/~1webhooks~1{webhook_id}~1deliveries/get/parameters")
    {
        for p in params.iter_mut() {
            if p["name"] == "status" {
                p["schema"]["enum"] = statuses.clone();
            }
            if p["name"] == "cursor" {
                p["schema"]["pattern"] = json!(storage::webhooks::Cursor::PATTERN);
            }
        }
    }
    if let Some(Value::Array(params)) = doc.pointer_mut("/paths/~1webhooks/get/parameters") {
        for p in params.iter_mut() {
            if p["name"] == "event_type" {
                p["schema"]["pattern"] = json!(NO_NUL);
            }
            if p["name"] == "is_active" {
                p["schema"] = lax_bool_schema();
            }
        }
    }
    // Jobs: optional fields may be left out but are refused as `null`.
    for (schema, fields) in [
        ("RecoverIn", &["until", "rate_per_s"][..]),
        (
            "ReplayIn",
            &["since", "since_seq", "until", "rate_per_s"][..],
        ),
        (
            "BulkRetryIn",
            &["status", "since", "until", "rate_per_s"][..],
        ),
    ] {
        for field in fields {
            not_null(doc, &format!("{schemas}/{schema}/properties/{field}"));
        }
    }
    set(
        doc,
        &format!("{schemas}/BulkRetryIn/properties/status"),
        "enum",
        json!(crate::model::BULK_RETRY_STATUSES),
    );
    set(
        doc,
        &format!("{schemas}/ReplayIn"),
        "not",
        json!({"required": ["since", "since_seq"]}),
    );
    set(
        doc,
        &format!("{schemas}/JobOut/properties/kind"),
        "enum",
        json!(JobKind::VARIANTS),
    );
    set(
        doc,
        &format!("{schemas}/JobOut/properties/status"),
        "enum",
        json!(JobStatus::VARIANTS),
    );
    for (path, schema) in [
        ("/paths/~1webhooks~1{webhook_id}~1replay/post", "ReplayIn"),
        (
            "/paths/~1webhooks~1{webhook_id}~1deliveries~1retry/post",
            "BulkRetryIn",
        ),
    ] {
        set(
            doc,
            &format!("{path}/requestBody/content/application~1json"),
            "schema",
            json!({"$ref": format!("#/components/schemas/{schema}")}),
        );
        set(
            doc,
            &format!("{path}/requestBody"),
            "required",
            json!(false),
        );
    }
    // Optional, but `null` is not an object: 422.
    set(
        doc,
        "/paths/~1webhooks~1{webhook_id}~1rotate-secret/post/requestBody/content/application~1json",
        "schema",
        json!({"$ref": "#/components/schemas/RotateIn"}),
    );
    set(
        doc,
        "/paths/~1webhooks~1{webhook_id}~1rotate-secret/post/requestBody",
        "required",
        json!(false),
    );
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn job_requests_are_described_as_the_server_reads_them() {
        let doc = document().unwrap();
        let schemas = &doc["components"]["schemas"];
        if std::env::var("PRINT_DOC").is_ok() {
            for s in ["RecoverIn", "ReplayIn", "BulkRetryIn", "JobOut"] {
                println!("{s}: {}", schemas[s]);
            }
            println!("{}", doc["paths"]["/webhooks/{webhook_id}/replay"]);
        }
        let replay = &schemas["ReplayIn"];
        assert_eq!(replay["not"], json!({"required": ["since", "since_seq"]}));
        assert_eq!(replay["properties"]["since_seq"]["type"], "integer");
        assert_eq!(replay["properties"]["since"]["format"], "date-time");
        assert_eq!(schemas["RecoverIn"]["required"], json!(["since"]));
        assert_eq!(
            schemas["BulkRetryIn"]["properties"]["status"]["enum"],
            json!(["failed"])
        );
        for path in [
            "/webhooks/{webhook_id}/replay",
            "/webhooks/{webhook_id}/deliveries/retry",
        ] {
            assert_eq!(
                doc["paths"][path]["post"]["requestBody"]["required"], false,
                "{path}"
            );
        }
        for (path, method) in [
            ("/webhooks/{webhook_id}/recover", "post"),
            ("/webhooks/{webhook_id}/jobs", "get"),
            ("/webhooks/{webhook_id}/jobs/{job_id}", "get"),
            ("/webhooks/{webhook_id}/jobs/{job_id}", "delete"),
        ] {
            assert!(
                doc["paths"][path][method]["responses"].get("422").is_some(),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn the_document_says_what_the_server_checks() {
        let doc = document().unwrap();
        let schemas = &doc["components"]["schemas"];
        assert!(
            schemas["FieldError"]["properties"]["input"]
                .get("type")
                .is_none()
        );
        let patch = &schemas["WebhookPatch"]["properties"];
        for field in ["name", "url", "event_type", "secret", "description"] {
            assert_eq!(patch[field]["type"], json!(["string", "null"]), "{field}");
        }
        assert_eq!(
            patch["is_active"],
            json!({"anyOf": [crate::extract::lax_bool_schema(), {"type": "null"}]})
        );
        assert_eq!(
            patch["body_format"]["enum"],
            json!(["canonical", "bot", null])
        );
        assert_eq!(
            schemas["WebhookOut"]["properties"]["body_format"]["enum"],
            json!(["canonical", "bot"])
        );
        let list = doc["paths"]["/webhooks"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "is_active")
            .unwrap();
        assert_eq!(list["schema"], crate::extract::lax_bool_schema());
        for schema in ["WebhookIn", "WebhookPatch"] {
            assert_eq!(
                schemas[schema]["properties"]["url"]["pattern"],
                crate::model::url_pattern()
            );
        }
        assert_eq!(patch["secret"]["type"], json!(["string", "null"]));
        for schema in ["WebhookIn", "WebhookPatch"] {
            let props = &schemas[schema]["properties"];
            assert_eq!(props["url"]["maxLength"], URL_MAX);
            assert_eq!(props["description"]["maxLength"], DESCRIPTION_MAX);
            let types = props["event_type"]["enum"].as_array().unwrap();
            assert!(types.contains(&json!("ticket.*")) && types.contains(&json!("*")));
            assert!(!types.contains(&json!("user.deleted")));
            for t in types.iter().filter(|t| !t.is_null()) {
                assert!(
                    proto_events::Pattern::parse(t.as_str().unwrap()).is_ok(),
                    "{t}"
                );
            }
        }
        let deliveries = &doc["paths"]["/webhooks/{webhook_id}/deliveries"]["get"]["parameters"];
        let status = deliveries
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "status")
            .unwrap();
        assert_eq!(
            status["schema"]["enum"],
            json!(["pending", "success", "failed"])
        );
        let rotate = &doc["paths"]["/webhooks/{webhook_id}/rotate-secret"]["post"]["requestBody"];
        assert_eq!(rotate["required"], false);
        assert_eq!(
            rotate["content"]["application/json"]["schema"],
            json!({"$ref": "#/components/schemas/RotateIn"})
        );
        for (path, method) in [
            ("/webhooks/{webhook_id}", "delete"),
            ("/webhooks/{webhook_id}/test", "post"),
        ] {
            assert!(
                doc["paths"][path][method]["responses"].get("422").is_some(),
                "{method} {path}"
            );
        }
    }
}
