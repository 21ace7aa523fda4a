//! A webhook's subscription fields in the API: `event_types`, `filter`,
//! `headers`, `auth` and `signature_scheme` (docs/contract.md,
//! "Subscriptions"). Each is read with FastAPI-shaped errors that point at
//! the wrong part, stated as a JSON Schema for the OpenAPI document beside
//! its parser, written with its secrets sealed, and shown without them.

use proto_events::Pattern;
use proto_events::filter::{Filter, FilterPathItem};
use serde_json::{Map, Value, json};
use storage::secrets::Keyring;
use storage::subscription::{StoredAuth, StoredHeader, purpose};

use crate::error::{ApiError, FieldError, LocItem};
use crate::extract::{Fields, Presence, Structured};

/// Most patterns one webhook takes.
pub const MAX_PATTERNS: usize = 20;
/// Most custom headers one webhook sends.
pub const MAX_HEADERS: usize = 20;
/// Longest custom header name and value, in characters.
pub const MAX_HEADER_NAME: usize = 100;
pub const MAX_HEADER_VALUE: usize = 4096;
/// Longest credential or user name.
pub const MAX_CREDENTIAL: usize = 4096;

pub const EVENT_TYPES: Structured = Structured {
    name: "event_types",
    presence: Presence::Optional,
    schema: event_types_schema,
};
pub const FILTER: Structured = Structured {
    name: "filter",
    presence: Presence::Optional,
    schema: filter_schema,
};
/// `headers` of a new webhook: a secret value must be given.
pub const HEADERS: Structured = Structured {
    name: "headers",
    presence: Presence::Optional,
    schema: new_headers_schema,
};
/// `headers` of a PATCH: `{"secret": true}` keeps a stored value.
pub const HEADERS_PATCH: Structured = Structured {
    name: "headers",
    presence: Presence::Optional,
    schema: patch_headers_schema,
};
/// `auth` of a new webhook: the credential must be given.
pub const AUTH: Structured = Structured {
    name: "auth",
    presence: Presence::Optional,
    schema: new_auth_schema,
};
/// `auth` of a PATCH: a credential left out keeps the stored one.
pub const AUTH_PATCH: Structured = Structured {
    name: "auth",
    presence: Presence::Optional,
    schema: patch_auth_schema,
};

fn loc(path: &[LocItem]) -> Vec<LocItem> {
    let mut l = vec![LocItem::from("body")];
    l.extend_from_slice(path);
    l
}

fn name(s: &str) -> LocItem {
    LocItem::from(s)
}

fn error_at(path: &[LocItem], reason: &str) -> FieldError {
    FieldError {
        loc: loc(path),
        ..FieldError::value_error(&[], reason)
    }
}

// ---- event_types -----------------------------------------------------------

fn event_types_schema() -> Value {
    json!({
        "type": "array",
        "description": "Every event pattern the webhook takes (1-20, no repeats): types, family patterns (`ticket.*`) or `*`. `event_type` is the first.",
        "items": {"type": "string", "enum": crate::routes::openapi::event_type_values()},
        "minItems": 1,
        "maxItems": MAX_PATTERNS,
        "uniqueItems": true,
    })
}

/// `event_types`: 1-20 distinct patterns of the catalogue.
pub fn event_types(f: &mut Fields, v: Value) -> Option<Vec<String>> {
    let at = [name("event_types")];
    let Value::Array(items) = v else {
        f.errors.push(
            FieldError::new(
                &["body", "event_types"],
                "list_type",
                "Input should be a valid list",
            )
            .input(v),
        );
        return None;
    };
    if items.is_empty() || items.len() > MAX_PATTERNS {
        let (kind, msg) = if items.is_empty() {
            (
                "too_short",
                "List should have at least 1 item after validation, not 0".to_owned(),
            )
        } else {
            (
                "too_long",
                format!(
                    "List should have at most {MAX_PATTERNS} items after validation, not {}",
                    items.len()
                ),
            )
        };
        f.errors
            .push(FieldError::new(&["body", "event_types"], kind, msg).input(Value::Array(items)));
        return None;
    }
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.into_iter().enumerate() {
        let here = [at[0].clone(), LocItem::Index(i as u64)];
        match item {
            Value::String(s) => match Pattern::parse(&s) {
                Ok(_) if out.contains(&s) => {
                    f.errors
                        .push(error_at(&here, "a pattern is given twice").input(Value::String(s)));
                    ok = false;
                }
                Ok(_) => out.push(s),
                Err(e) => {
                    f.errors
                        .push(error_at(&here, &e.to_string()).input(Value::String(s)));
                    ok = false;
                }
            },
            other => {
                f.errors.push(FieldError {
                    loc: loc(&here),
                    ..FieldError::new(&[], "string_type", "Input should be a valid string")
                        .input(other)
                });
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

// ---- filter ----------------------------------------------------------------

fn filter_schema() -> Value {
    json!({
        "description": "Only events whose payload passes this filter are delivered (docs/contract.md, \"Payload filters\"); `{}` for every event.",
        "anyOf": [
            {"$ref": "#/components/schemas/Filter"},
            {"type": "object", "maxProperties": 0},
        ],
    })
}

/// The filter language as a JSON Schema (the `Filter` component of the
/// OpenAPI document): its forms, operators, operands and path shape. Its
/// limits on nesting (32 levels) and size (the body's) are not stated; one
/// recursive component keeps the document small enough to generate from.
pub fn filter_component() -> Value {
    let this = json!({"$ref": "#/components/schemas/Filter"});
    let list = json!({"type": "array", "minItems": 1, "maxItems": proto_events::filter::MAX_ITEMS, "items": this});
    let scalar = json!({"anyOf": [
        {"type": "string", "pattern": "^[^\\u0000]*$"},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "null"},
    ]});
    let path =
        json!({"type": "string", "pattern": "^[^.\\u0000]{1,64}(\\.[^.\\u0000]{1,64}){0,9}$"});
    let condition = |op: &str, operand: Value| {
        json!({
            "type": "object",
            "properties": {"path": path, op: operand},
            "required": ["path", op],
            "additionalProperties": false,
        })
    };
    let mut forms = vec![
        json!({"type": "object", "properties": {"and": list}, "required": ["and"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"or": list}, "required": ["or"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"not": this}, "required": ["not"], "additionalProperties": false}),
        condition("eq", scalar.clone()),
        condition("ne", scalar.clone()),
        condition(
            "in",
            json!({"type": "array", "minItems": 1, "maxItems": 100, "items": scalar}),
        ),
        condition("exists", json!({"type": "boolean"})),
    ];
    for op in ["gt", "gte", "lt", "lte"] {
        forms.push(condition(op, json!({"type": "number"})));
    }
    json!({
        "description": "A payload filter (docs/contract.md, \"Payload filters\").",
        "oneOf": forms,
    })
}

/// `filter`: `{}` is none (`Some(None)`), anything else a [`Filter`].
pub fn filter(f: &mut Fields, v: Value) -> Option<Option<Filter>> {
    if v.as_object().is_some_and(Map::is_empty) {
        return Some(None);
    }
    // PostgreSQL's jsonb cannot hold NUL characters.
    if v.to_string().contains("\\u0000") {
        f.errors.push(error_at(
            &[name("filter")],
            "must not contain NUL characters",
        ));
        return None;
    }
    match Filter::parse(&v) {
        Ok(filter) => Some(Some(filter)),
        Err(e) => {
            let mut path = vec![name("filter")];
            path.extend(e.path.iter().map(|p| match p {
                FilterPathItem::Key(k) => LocItem::Name(k.clone()),
                FilterPathItem::Index(i) => LocItem::Index(*i as u64),
            }));
            f.errors.push(error_at(&path, &e.message).input(v));
            None
        }
    }
}

// ---- headers ---------------------------------------------------------------

/// A custom header as a request gives it.
#[derive(Clone)]
pub enum HeaderIn {
    /// A value shown back as it is.
    Plain { name: String, value: String },
    /// A write-only value; `None` keeps the stored one (a client that sends
    /// back what it read).
    Secret { name: String, value: Option<String> },
}

/// A header name the API takes: a token (RFC 9110) that is none of the
/// refused names, in any case (a lookahead of case-insensitive classes,
/// which ECMA-262 and Python's `re` read alike).
fn header_name_pattern() -> String {
    let any_case = |name: &str| -> String {
        name.chars()
            .map(|c| {
                if c.is_ascii_alphabetic() {
                    format!("[{}{}]", c.to_ascii_uppercase(), c.to_ascii_lowercase())
                } else if c == '-' {
                    "\\-".to_owned()
                } else {
                    c.to_string()
                }
            })
            .collect()
    };
    let refused: Vec<String> = webhook_client::refused_header_names()
        .map(any_case)
        .collect();
    format!(
        "^(?!(?:{})$)[!#$%&'*+.^_`|~0-9A-Za-z-]+$",
        refused.join("|")
    )
}

/// Header values: no control characters but tab, no DEL.
const HEADER_VALUE_PATTERN: &str = "^[^\\u0000-\\u0008\\u000a-\\u001f\\u007f]*$";

fn headers_schema(value_required: bool) -> Value {
    let value =
        json!({"type": "string", "maxLength": MAX_HEADER_VALUE, "pattern": HEADER_VALUE_PATTERN});
    let marked = if value_required {
        json!({
            "type": "object",
            "properties": {"value": value, "secret": {"type": "boolean"}},
            "required": ["value"],
            "additionalProperties": false,
        })
    } else {
        json!({
            "type": "object",
            "properties": {"value": value, "secret": {"type": "boolean"}},
            "additionalProperties": false,
            // Without a value it is a secret kept as stored.
            "anyOf": [{"required": ["value"]}, {"required": ["secret"], "properties": {"secret": {"const": true}}}],
        })
    };
    json!({
        "type": "object",
        "description": "Custom request headers, `{name: value}`; a value may be `{\"value\": \"…\", \"secret\": true}` to keep it write-only (shown back as `{\"secret\": true}`; sending that back keeps the stored value). `{}` removes them all. Not allowed: hop-by-hop headers, Host, Content-Length, Content-Type, Expect, User-Agent and the delivery's own headers. With `auth` set, its Authorization is sent, not a custom one.",
        "maxProperties": MAX_HEADERS,
        "propertyNames": {"minLength": 1, "maxLength": MAX_HEADER_NAME, "pattern": header_name_pattern()},
        "additionalProperties": {"anyOf": [value, marked]},
    })
}

fn new_headers_schema() -> Value {
    headers_schema(true)
}

fn patch_headers_schema() -> Value {
    headers_schema(false)
}

/// `headers`: at most 20, each name and value acceptable to
/// [`webhook_client::check_custom_header`].
pub fn headers(f: &mut Fields, v: Value, value_required: bool) -> Option<Vec<HeaderIn>> {
    let Value::Object(map) = v else {
        f.errors.push(
            FieldError::new(
                &["body", "headers"],
                "dict_type",
                "Input should be a valid dictionary",
            )
            .input(v),
        );
        return None;
    };
    if map.len() > MAX_HEADERS {
        f.errors.push(error_at(
            &[name("headers")],
            &format!("at most {MAX_HEADERS} headers"),
        ));
        return None;
    }
    let mut out: Vec<HeaderIn> = Vec::with_capacity(map.len());
    let mut ok = true;
    for (key, given) in map {
        let here = [name("headers"), LocItem::Name(key.clone())];
        let header = match given {
            Value::String(value) => Some(HeaderIn::Plain {
                name: key.clone(),
                value,
            }),
            Value::Object(mut o) => {
                let secret = o.remove("secret");
                let value = o.remove("value");
                let extra = o.keys().next().cloned();
                match (secret, value, extra) {
                    (_, _, Some(k)) => {
                        f.errors.push(error_at(
                            &here,
                            &format!("unknown key `{k}`; a header value is a string or {{\"value\", \"secret\"}}"),
                        ));
                        None
                    }
                    (Some(Value::Bool(true)), Some(Value::String(v)), None) => {
                        Some(HeaderIn::Secret {
                            name: key.clone(),
                            value: Some(v),
                        })
                    }
                    (Some(Value::Bool(true)), None, None) if !value_required => {
                        Some(HeaderIn::Secret {
                            name: key.clone(),
                            value: None,
                        })
                    }
                    (Some(Value::Bool(true)), None, None) => {
                        f.errors.push(FieldError {
                            loc: loc(&[here[0].clone(), here[1].clone(), name("value")]),
                            ..FieldError::missing(&[])
                        });
                        None
                    }
                    (Some(Value::Bool(false)) | None, Some(Value::String(v)), None) => {
                        Some(HeaderIn::Plain {
                            name: key.clone(),
                            value: v,
                        })
                    }
                    _ => {
                        f.errors.push(error_at(
                            &here,
                            "a header value is a string, or {\"value\": string, \"secret\": bool}",
                        ));
                        None
                    }
                }
            }
            other => {
                f.errors.push(
                    error_at(
                        &here,
                        "a header value is a string, or {\"value\": string, \"secret\": bool}",
                    )
                    .input(other),
                );
                None
            }
        };
        let Some(header) = header else {
            ok = false;
            continue;
        };
        let probe = match &header {
            HeaderIn::Plain { value, .. } => Some(value.as_str()),
            HeaderIn::Secret { value, .. } => value.as_deref(),
        };
        let problem = if key.chars().count() > MAX_HEADER_NAME {
            Some(format!(
                "a header name has at most {MAX_HEADER_NAME} characters"
            ))
        } else if probe.is_some_and(|v| v.chars().count() > MAX_HEADER_VALUE) {
            Some(format!(
                "a header value has at most {MAX_HEADER_VALUE} characters"
            ))
        } else {
            webhook_client::check_custom_header(&key, probe.unwrap_or("x")).err()
        };
        if let Some(problem) = problem {
            f.errors.push(error_at(&here, &problem));
            ok = false;
            continue;
        }
        out.push(header);
    }
    ok.then_some(out)
}

/// The headers to store: `given` with secret values sealed, a secret one
/// without a value keeping the stored value of that name.
pub fn seal_headers(
    keys: &Keyring,
    given: Vec<HeaderIn>,
    stored: &[StoredHeader],
) -> Result<Vec<StoredHeader>, ApiError> {
    let mut out = Vec::with_capacity(given.len());
    for h in given {
        match h {
            HeaderIn::Plain { name, value } => out.push(StoredHeader {
                name,
                value: Some(value),
                sealed: None,
            }),
            HeaderIn::Secret {
                name,
                value: Some(value),
            } => match keys.seal(purpose::HEADER, &value) {
                Ok(sealed) => out.push(StoredHeader {
                    name,
                    value: None,
                    sealed: Some(sealed),
                }),
                Err(e) => {
                    tracing::error!(error = %e, "cannot seal a header value");
                    return Err(ApiError::Internal);
                }
            },
            HeaderIn::Secret { name, value: None } => {
                match stored
                    .iter()
                    .find(|s| s.is_secret() && s.name.eq_ignore_ascii_case(&name))
                {
                    Some(s) => out.push(StoredHeader {
                        name,
                        value: None,
                        sealed: s.sealed.clone(),
                    }),
                    None => {
                        return Err(ApiError::Conflict(format!(
                            "headers.{name}: no stored secret value to keep; give its value"
                        )));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The headers as the API shows them: secret values as `{"secret": true}`.
pub fn headers_out(stored: &[StoredHeader]) -> Map<String, Value> {
    stored
        .iter()
        .map(|h| {
            let shown = match (&h.value, &h.sealed) {
                (_, Some(_)) => json!({"secret": true}),
                (Some(v), None) => Value::String(v.clone()),
                (None, None) => Value::Null,
            };
            (h.name.clone(), shown)
        })
        .collect()
}

// ---- auth ------------------------------------------------------------------

/// Receiver auth as a request gives it; a credential of `None` keeps the
/// stored one of the same type.
#[derive(Clone)]
pub enum AuthIn {
    /// `{"type": "none"}`: no auth.
    None,
    Basic {
        username: String,
        password: Option<String>,
    },
    Bearer {
        token: Option<String>,
    },
    OAuth2 {
        token_url: String,
        client_id: String,
        client_secret: Option<String>,
        scope: Option<String>,
    },
}

fn auth_schema(credential_required: bool) -> Value {
    let text = |max: usize| json!({"type": "string", "minLength": 1, "maxLength": max, "pattern": "^[^\\u0000]*$"});
    // Left out or `null`: the same (kept on a PATCH).
    let optional = |max: usize| json!({"anyOf": [text(max), {"type": "null"}]});
    let credential = if credential_required {
        text(MAX_CREDENTIAL)
    } else {
        optional(MAX_CREDENTIAL)
    };
    let with = |required: &[&str], credential: &str| -> Value {
        let mut all: Vec<&str> = required.to_vec();
        if credential_required {
            all.push(credential);
        }
        json!(all)
    };
    json!({
        "description": "How deliveries authenticate to the receiver. Credentials are write-only: they are shown back without them, and a PATCH that leaves one out keeps the stored one of the same type. `{\"type\": \"none\"}` removes it.",
        "oneOf": [
            {"type": "object", "properties": {"type": {"const": "none"}}, "required": ["type"], "additionalProperties": false},
            {"type": "object", "properties": {"type": {"const": "basic"}, "username": text(MAX_CREDENTIAL), "password": credential}, "required": with(&["type", "username"], "password"), "additionalProperties": false},
            {"type": "object", "properties": {"type": {"const": "bearer"}, "token": credential}, "required": with(&["type"], "token"), "additionalProperties": false},
            {"type": "object", "properties": {
                "type": {"const": "oauth2"},
                "token_url": {"type": "string", "maxLength": 2048, "pattern": crate::model::url_pattern()},
                "client_id": text(MAX_CREDENTIAL),
                "client_secret": credential,
                "scope": optional(1000),
            }, "required": with(&["type", "token_url", "client_id"], "client_secret"), "additionalProperties": false},
        ],
    })
}

fn new_auth_schema() -> Value {
    auth_schema(true)
}

fn patch_auth_schema() -> Value {
    auth_schema(false)
}

/// Reads the string `key` of an auth object: `Some(None)` when absent and
/// allowed to be.
fn auth_text(
    f: &mut Fields,
    o: &mut Map<String, Value>,
    key: &str,
    max: usize,
    required: bool,
    secret: bool,
) -> Option<Option<String>> {
    let here = [name("auth"), name(key)];
    match o.remove(key) {
        None | Some(Value::Null) if required => {
            f.errors.push(FieldError {
                loc: loc(&here),
                ..FieldError::missing(&[])
            });
            None
        }
        None | Some(Value::Null) => Some(None),
        Some(Value::String(s))
            if !s.is_empty() && s.chars().count() <= max && !s.contains('\0') =>
        {
            Some(Some(s))
        }
        Some(other) => {
            let e = error_at(
                &here,
                &format!("a string of 1-{max} characters without NUL characters"),
            );
            f.errors.push(if secret { e } else { e.input(other) });
            None
        }
    }
}

/// `auth`: one of the four forms; the OAuth2 token URL passes the same
/// checks as a webhook URL.
pub fn auth(
    f: &mut Fields,
    v: Value,
    allow_private: bool,
    credential_required: bool,
) -> Option<AuthIn> {
    let Value::Object(mut o) = v else {
        f.errors
            .push(error_at(&[name("auth")], "an object with a `type`"));
        return None;
    };
    let kind = o.remove("type");
    let parsed = match kind.as_ref().and_then(Value::as_str) {
        Some("none") => Some(AuthIn::None),
        Some("basic") => {
            let username = auth_text(f, &mut o, "username", MAX_CREDENTIAL, true, false);
            let password = auth_text(
                f,
                &mut o,
                "password",
                MAX_CREDENTIAL,
                credential_required,
                true,
            );
            match (username, password) {
                (Some(Some(username)), Some(password)) => {
                    Some(AuthIn::Basic { username, password })
                }
                _ => None,
            }
        }
        Some("bearer") => auth_text(
            f,
            &mut o,
            "token",
            MAX_CREDENTIAL,
            credential_required,
            true,
        )
        .map(|token| AuthIn::Bearer { token }),
        Some("oauth2") => {
            let token_url = auth_text(f, &mut o, "token_url", 2048, true, false);
            let client_id = auth_text(f, &mut o, "client_id", MAX_CREDENTIAL, true, false);
            let client_secret = auth_text(
                f,
                &mut o,
                "client_secret",
                MAX_CREDENTIAL,
                credential_required,
                true,
            );
            let scope = auth_text(f, &mut o, "scope", 1000, false, false);
            let url_ok = match &token_url {
                Some(Some(u)) => {
                    crate::model::check_url_at(f, &["body", "auth", "token_url"], u, allow_private)
                }
                _ => false,
            };
            match (token_url, client_id, client_secret, scope) {
                (
                    Some(Some(token_url)),
                    Some(Some(client_id)),
                    Some(client_secret),
                    Some(scope),
                ) if url_ok => Some(AuthIn::OAuth2 {
                    token_url,
                    client_id,
                    client_secret,
                    scope,
                }),
                _ => None,
            }
        }
        _ => {
            f.errors.push(
                FieldError {
                    loc: loc(&[name("auth"), name("type")]),
                    ..FieldError::new(
                        &[],
                        "enum",
                        "Input should be 'none', 'basic', 'bearer' or 'oauth2'",
                    )
                }
                .input(kind.unwrap_or(Value::Null)),
            );
            None
        }
    };
    if let (Some(_), Some(extra)) = (&parsed, o.keys().next()) {
        f.errors.push(error_at(
            &[name("auth"), LocItem::Name(extra.clone())],
            "unknown key for this auth type",
        ));
        return None;
    }
    parsed
}

/// The auth to store: credentials sealed, a missing one taken from the
/// stored auth of the same type. `Ok(None)`: no auth.
pub fn seal_auth(
    keys: &Keyring,
    given: AuthIn,
    stored: Option<&StoredAuth>,
) -> Result<Option<StoredAuth>, ApiError> {
    let (auth, credential, key) = match given {
        AuthIn::None => return Ok(None),
        AuthIn::Basic { username, password } => (
            StoredAuth::Basic {
                username,
                password: String::new(),
            },
            password,
            "password",
        ),
        AuthIn::Bearer { token } => (
            StoredAuth::Bearer {
                token: String::new(),
            },
            token,
            "token",
        ),
        AuthIn::OAuth2 {
            token_url,
            client_id,
            client_secret,
            scope,
        } => (
            StoredAuth::Oauth2 {
                token_url,
                client_id,
                client_secret: String::new(),
                scope,
            },
            client_secret,
            "client_secret",
        ),
    };
    let sealed = match credential {
        Some(plain) => keys.seal(purpose::AUTH, &plain).map_err(|e| {
            tracing::error!(error = %e, "cannot seal a credential");
            ApiError::Internal
        })?,
        None => match stored.filter(|s| s.kind() == auth.kind()) {
            Some(s) => s.credential().to_owned(),
            None => {
                return Err(ApiError::Conflict(format!(
                    "auth.{key}: no stored {} credential to keep; give it",
                    auth.kind()
                )));
            }
        },
    };
    Ok(Some(auth.with_credential(sealed)))
}

/// The auth as the API shows it: everything but the credential.
pub fn auth_out(stored: Option<&StoredAuth>) -> Option<Value> {
    Some(match stored? {
        StoredAuth::Basic { username, .. } => json!({"type": "basic", "username": username}),
        StoredAuth::Bearer { .. } => json!({"type": "bearer"}),
        StoredAuth::Oauth2 {
            token_url,
            client_id,
            scope,
            ..
        } => {
            json!({"type": "oauth2", "token_url": token_url, "client_id": client_id, "scope": scope})
        }
    })
}
