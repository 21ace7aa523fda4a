//! `GET /openapi.json`: the OpenAPI 3 document, generated from the handlers'
//! and types' annotations (utoipa), served without a token.

use actix_web::{HttpResponse, web};
use proto_events::EventType;
use serde_json::{Map, Value, json};
use storage::jobs::{JobKind, JobStatus};
use storage::models::{BodyFormat, DeliveryStatus, WebhookMode};
use storage::subscription::SignatureScheme;
use strum::VariantArray;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::error::{ErrorOut, FieldError, HttpValidationError, LocItem};
use crate::extract::{Field, FromBody, Presence, Shape, lax_bool_schema};
use crate::model::{
    BulkRetryIn, DeliveryOut, DeliveryPage, EventCatalogueOut, EventTypeOut, HourBucketOut,
    HourlyOut, JobOut, JobPage, RecoverIn, ReplayIn, RetryOut, RotateIn, RotateOut, StatsOut,
    TestOut, WebhookIn, WebhookOut, WebhookPage, WebhookPatch,
};
use crate::model::{CircuitOut, INT_PARAMS, url_pattern};
use crate::routes::audit::{
    AttemptOut, AuditEventOut, AuditPage, AuditSummaryOut, AuditWebhookOut,
};
use crate::routes::portal::{ServiceReadiness, ServicesReadiness};
use crate::routes::pull::{PullEventOut, PullPage};

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
        ServicesReadiness, RecoverIn, ReplayIn, BulkRetryIn, JobOut, JobPage, PullPage,
        PullEventOut, CircuitOut, AuditPage, AuditSummaryOut, AuditEventOut, AuditWebhookOut,
        AttemptOut,
    )),
    modifiers(&SecuritySchemes),
    tags(
        (name = "webhooks", description = "Webhook registrations"),
        (name = "deliveries", description = "Delivery history and manual retries"),
        (name = "jobs", description = "Recover, replay and bulk retry, run in the background by the delivery worker"),
        (name = "events", description = "The event catalogue"),
        (name = "audit", description = "What happened to each processed event, per webhook"),
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
pub(crate) fn event_type_values() -> Vec<Value> {
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
fn not_null(schema: &mut Map<String, Value>) {
    if let Some(Value::Array(types)) = schema.get("type")
        && let Some(first) = types.iter().find(|t| *t != "null").cloned()
    {
        schema.insert("type".to_owned(), first);
    }
}

/// The rules of `T`'s fields ([`FromBody::FIELDS`]), as its schema states
/// them.
fn describe<T: FromBody + ToSchema>(doc: &mut Value) {
    let pointer = format!("/components/schemas/{}/properties", T::name());
    let Some(Value::Object(props)) = doc.pointer_mut(&pointer) else {
        return;
    };
    for field in T::FIELDS {
        let Some(Value::Object(schema)) = props.get_mut(field.name()) else {
            continue;
        };
        match field {
            Field::Text(t) => {
                if t.min > 0 {
                    schema.insert("minLength".to_owned(), json!(t.min));
                }
                schema.insert("maxLength".to_owned(), json!(t.max));
                let (key, value) = match t.shape {
                    Shape::NoNul => ("pattern", json!(NO_NUL)),
                    Shape::Url => ("pattern", json!(url_pattern())),
                    Shape::EventType => {
                        let mut types = event_type_values();
                        if t.presence == Presence::Optional {
                            // `null` leaves it unchanged.
                            types.push(Value::Null);
                        }
                        ("enum", Value::Array(types))
                    }
                };
                schema.insert(key.to_owned(), value);
            }
            Field::Integer(i) => {
                schema.insert("minimum".to_owned(), json!(i.min));
                schema.insert("maximum".to_owned(), json!(i.max));
            }
            Field::Number(n) => {
                schema.insert("exclusiveMinimum".to_owned(), json!(n.above));
                schema.insert("maximum".to_owned(), json!(n.max));
            }
            Field::Plain(_) => {}
            Field::Structured(s) => {
                // The parser's own schema; `null` leaves an optional one
                // unchanged.
                let own = (s.schema)();
                let stated = if s.presence == Presence::Optional {
                    json!({"anyOf": [own, {"type": "null"}]})
                } else {
                    own
                };
                if let Value::Object(map) = stated {
                    *schema = map;
                }
                continue;
            }
        }
        if field.presence() != Presence::Optional {
            not_null(schema);
        }
    }
}

/// The integer query parameters ([`INT_PARAMS`]) of every operation.
fn int_params(doc: &mut Value) {
    let Some(Value::Object(paths)) = doc.get_mut("paths") else {
        return;
    };
    let params = paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.get_mut("parameters")?.as_array_mut())
        .flatten()
        .filter(|p| p["in"] == "query");
    for p in params {
        let Some(rule) = INT_PARAMS.iter().find(|r| p["name"] == r.name) else {
            continue;
        };
        if let Some(Value::Object(schema)) = p.get_mut("schema") {
            schema.insert("minimum".to_owned(), json!(rule.min));
            if let Some(max) = rule.max {
                schema.insert("maximum".to_owned(), json!(max));
            }
            schema.insert("default".to_owned(), json!(rule.default));
        }
    }
}

fn refine(doc: &mut Value) {
    describe::<WebhookIn>(doc);
    describe::<WebhookPatch>(doc);
    describe::<RotateIn>(doc);
    describe::<RecoverIn>(doc);
    describe::<ReplayIn>(doc);
    describe::<BulkRetryIn>(doc);
    int_params(doc);
    let schemas = "/components/schemas";
    // Any JSON value: the string, number, object or null that was refused.
    set(
        doc,
        &format!("{schemas}/FieldError/properties"),
        "input",
        json!({"description": "The offending value as sent (any JSON value; never for secrets)."}),
    );
    // Lax booleans, as the server reads them; `null` leaves it unchanged.
    set(
        doc,
        &format!("{schemas}/WebhookPatch/properties"),
        "is_active",
        json!({"anyOf": [lax_bool_schema(), {"type": "null"}]}),
    );
    subscriptions(doc);
    modes(doc);
    policy(doc);
    audit(doc);
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

/// What the subscription fields' own rules cannot state field by field:
/// the filter language as a component, the signature schemes, the
/// `matching` parameter, that a new webhook names `event_type` or
/// `event_types`, and that an `ed25519` webhook's secret is a signing key.
fn subscriptions(doc: &mut Value) {
    let schemas = "/components/schemas";
    set(
        doc,
        schemas,
        "Filter",
        crate::subscription::filter_component(),
    );
    let schemes = json!(SignatureScheme::VARIANTS);
    for schema in ["WebhookIn", "WebhookOut"] {
        set(
            doc,
            &format!("{schemas}/{schema}/properties/signature_scheme"),
            "enum",
            schemes.clone(),
        );
    }
    let mut or_null: Vec<Value> = SignatureScheme::VARIANTS.iter().map(|f| json!(f)).collect();
    or_null.push(Value::Null);
    set(
        doc,
        &format!("{schemas}/WebhookPatch/properties/signature_scheme"),
        "enum",
        Value::Array(or_null),
    );
    set(
        doc,
        &format!("{schemas}/WebhookIn"),
        "anyOf",
        json!([
            {"required": ["event_type"], "properties": {"event_type": {"type": "string"}}},
            {"required": ["event_types"], "properties": {"event_types": {"type": "array"}}},
        ]),
    );
    let signing_key = json!({
        "if": {"required": ["signature_scheme"], "properties": {"signature_scheme": {"const": "ed25519"}}},
        "then": {"properties": {"secret": {"anyOf": [
            {"type": "null"},
            {"type": "string", "maxLength": 0},
            {"type": "string", "pattern": "^whsk_[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"},
        ]}}},
    });
    for schema in ["WebhookIn", "WebhookPatch"] {
        if let Some(Value::Object(obj)) = doc.pointer_mut(&format!("{schemas}/{schema}"))
            && let Value::Object(rule) = signing_key.clone()
        {
            obj.extend(rule);
        }
    }
    if let Some(Value::Array(params)) = doc.pointer_mut("/paths/~1webhooks/get/parameters") {
        for p in params.iter_mut() {
            if p["name"] == "matching" {
                p["schema"] = json!({"type": "string", "enum": EventType::names()});
            }
        }
    }
}

/// The webhook's mode: a `pull` webhook has no `url` (refused when
/// given), a `push` one (the default) must have one; the pull endpoint's
/// parameters, whose `limit` is not the lists' one.
fn modes(doc: &mut Value) {
    let schemas = "/components/schemas";
    let modes = json!(WebhookMode::VARIANTS);
    for schema in ["WebhookIn", "WebhookOut"] {
        set(
            doc,
            &format!("{schemas}/{schema}/properties/mode"),
            "enum",
            modes.clone(),
        );
    }
    let mut or_null: Vec<Value> = WebhookMode::VARIANTS.iter().map(|m| json!(m)).collect();
    or_null.push(Value::Null);
    set(
        doc,
        &format!("{schemas}/WebhookPatch/properties/mode"),
        "enum",
        Value::Array(or_null),
    );
    set(
        doc,
        &format!("{schemas}/WebhookIn"),
        "allOf",
        json!([{
            "if": {"required": ["mode"], "properties": {"mode": {"const": "pull"}}},
            "then": {"properties": {"url": {"type": "null"}}},
            "else": {"required": ["url"], "properties": {"url": {"type": "string"}}},
        }]),
    );
    if let Some(Value::Array(params)) =
        doc.pointer_mut("/paths/~1webhooks~1{webhook_id}~1pull/get/parameters")
    {
        for p in params.iter_mut() {
            if p["name"] == "cursor" {
                p["schema"]["pattern"] = json!(crate::routes::pull::CURSOR_PATTERN);
            }
            for rule in [crate::routes::pull::PULL_LIMIT, crate::routes::pull::WAIT] {
                if p["name"] == rule.name {
                    p["schema"]["minimum"] = json!(rule.min);
                    p["schema"]["maximum"] = json!(rule.max);
                    p["schema"]["default"] = json!(rule.default);
                }
            }
        }
    }
}

/// The delivery policy: `ordered` is a lax boolean (`null` leaves it
/// unchanged); a burst needs a rate; the circuit's states.
fn policy(doc: &mut Value) {
    let schemas = "/components/schemas";
    for schema in ["WebhookIn", "WebhookPatch"] {
        set(
            doc,
            &format!("{schemas}/{schema}/properties"),
            "ordered",
            json!({"anyOf": [lax_bool_schema(), {"type": "null"}]}),
        );
    }
    // A PATCH that gives a burst and clears the rate in one body contradicts
    // itself (a 422); a burst alone meets the stored rate (a 409 without one).
    set(
        doc,
        &format!("{schemas}/WebhookPatch"),
        "allOf",
        json!([{
            "if": {"required": ["rate_burst"], "properties": {"rate_burst": {"type": "integer"}}},
            "then": {"properties": {"rate_limit_per_s": {"type": "number"}}},
        }]),
    );
    if let Some(Value::Array(all)) = doc.pointer_mut(&format!("{schemas}/WebhookIn/allOf")) {
        all.push(json!({
            "if": {"required": ["rate_burst"], "properties": {"rate_burst": {"type": "integer"}}},
            "then": {"required": ["rate_limit_per_s"], "properties": {"rate_limit_per_s": {"type": "number"}}},
        }));
        // A pull webhook has no delivery policy.
        all.push(json!({
            "if": {"required": ["mode"], "properties": {"mode": {"const": "pull"}}},
            "then": {"properties": {
                "rate_limit_per_s": {"type": "null"},
                "rate_burst": {"type": "null"},
                "ordered": {"anyOf": [{"type": "null"}, {"enum": [false, 0, "false", "0", "no", "off", "f", "n"]}]},
                "circuit_threshold": {"type": "null"},
                "circuit_cooldown_s": {"type": "null"},
            }},
        }));
    }
    set(
        doc,
        &format!("{schemas}/CircuitOut/properties/state"),
        "enum",
        json!(storage::models::CircuitState::VARIANTS),
    );
}

/// The audit's states and its list's parameters.
fn audit(doc: &mut Value) {
    let schemas = "/components/schemas";
    let states = json!(storage::audit::AuditState::VARIANTS);
    set(
        doc,
        &format!("{schemas}/AuditWebhookOut/properties/state"),
        "enum",
        states.clone(),
    );
    set(
        doc,
        &format!("{schemas}/AttemptOut/properties/status"),
        "enum",
        json!(DeliveryStatus::VARIANTS),
    );
    if let Some(Value::Array(params)) = doc.pointer_mut("/paths/~1events/get/parameters") {
        for p in params.iter_mut() {
            match p["name"].as_str() {
                Some("type") => p["schema"] = json!({"type": "string", "enum": EventType::names()}),
                Some("state") => p["schema"]["enum"] = states.clone(),
                Some("since" | "until") => p["schema"]["format"] = json!("date-time"),
                Some("cursor") => {
                    p["schema"]["pattern"] = json!(storage::audit::EventCursor::PATTERN);
                }
                _ => {}
            }
        }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Every rule of `T`'s fields names a property of its schema (a rule
    /// for a renamed field would otherwise say nothing).
    fn rules_name_properties<T: FromBody + ToSchema>(doc: &Value) {
        let props = &doc["components"]["schemas"][T::name().as_ref()]["properties"];
        for field in T::FIELDS {
            assert!(
                props.get(field.name()).is_some(),
                "{}.{}",
                T::name(),
                field.name()
            );
        }
    }

    #[test]
    fn every_field_rule_is_stated() {
        let doc = document().unwrap();
        rules_name_properties::<WebhookIn>(&doc);
        rules_name_properties::<WebhookPatch>(&doc);
        rules_name_properties::<RotateIn>(&doc);
        rules_name_properties::<RecoverIn>(&doc);
        rules_name_properties::<ReplayIn>(&doc);
        rules_name_properties::<BulkRetryIn>(&doc);
        let params: Vec<&Value> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .filter_map(|op| op["parameters"].as_array())
            .flatten()
            .collect();
        for rule in INT_PARAMS {
            assert!(
                params
                    .iter()
                    .any(|p| p["name"] == rule.name && p["schema"]["default"] == rule.default),
                "{}",
                rule.name
            );
        }
    }

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
            assert_eq!(props["url"]["maxLength"], crate::model::URL.max);
            assert_eq!(
                props["description"]["maxLength"],
                crate::model::DESCRIPTION.max
            );
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
