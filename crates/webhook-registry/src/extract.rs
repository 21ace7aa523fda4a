//! Request parsing with FastAPI's error shapes: JSON bodies (size cap,
//! content type, decode errors, per-field validation), query strings and
//! path ids. Nothing a client sends reaches a panic or a 500.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use futures::StreamExt;
use serde_json::{Map, Value, json};

use crate::error::{ApiError, FieldError, LocItem};

/// Body rules from the configuration, stored as app data.
#[derive(Debug, Clone, Copy)]
pub struct BodyRules {
    /// Largest body in bytes (413 above).
    pub limit: usize,
    /// `DELIVERY_ALLOW_PRIVATE_TARGETS`: internal webhook URLs accepted.
    pub allow_private_targets: bool,
}

impl Default for BodyRules {
    fn default() -> Self {
        Self {
            limit: 64 * 1024,
            allow_private_targets: false,
        }
    }
}

/// A request type built from a parsed JSON body (`None` = empty body).
pub trait FromBody: Sized {
    /// The rules of its fields, which `from_body` reads them by and the
    /// OpenAPI document (`routes::openapi`) states.
    const FIELDS: &'static [Field];

    fn from_body(body: Option<Value>, rules: &BodyRules) -> Result<Self, Vec<FieldError>>;
}

/// Whether a body field must be given, and what `null` means for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// May be left out; `null` is the same as leaving it out.
    Optional,
    /// May be left out; `null` is refused.
    NotNull,
    /// Must be given, and not as `null`.
    Required,
}

/// What a text field's value is besides its length (the server's checks:
/// [`Fields::string`], `model::check_url`, `model::check_event_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Any text without NUL characters.
    NoNul,
    /// A webhook URL (`model::url_pattern`).
    Url,
    /// An event type or pattern of the catalogue.
    EventType,
}

/// A string field of `min..=max` characters.
#[derive(Debug, Clone, Copy)]
pub struct Text {
    pub name: &'static str,
    pub presence: Presence,
    pub min: usize,
    pub max: usize,
    /// Never echoed back in an error.
    pub secret: bool,
    pub shape: Shape,
}

/// An integer field within `min..=max`.
#[derive(Debug, Clone, Copy)]
pub struct Integer {
    pub name: &'static str,
    pub presence: Presence,
    pub min: i64,
    pub max: i64,
}

/// A number field above `above` (exclusive) and at most `max`.
#[derive(Debug, Clone, Copy)]
pub struct Number {
    pub name: &'static str,
    pub presence: Presence,
    pub above: f64,
    pub max: f64,
}

/// A field whose type says the rest: a date-time, a lax boolean or one of
/// an enum's values.
#[derive(Debug, Clone, Copy)]
pub struct Plain {
    pub name: &'static str,
    pub presence: Presence,
}

/// A field of structured JSON (a list, an object) that its own parser
/// reads; `schema` is the JSON Schema the OpenAPI document states for it,
/// written beside that parser.
#[derive(Debug, Clone, Copy)]
pub struct Structured {
    pub name: &'static str,
    pub presence: Presence,
    pub schema: fn() -> Value,
}

/// A body field's rule.
#[derive(Debug, Clone, Copy)]
pub enum Field {
    Text(Text),
    Integer(Integer),
    Number(Number),
    Plain(Plain),
    Structured(Structured),
}

impl Field {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Text(t) => t.name,
            Self::Integer(i) => i.name,
            Self::Number(n) => n.name,
            Self::Plain(p) => p.name,
            Self::Structured(s) => s.name,
        }
    }

    pub fn presence(&self) -> Presence {
        match self {
            Self::Text(t) => t.presence,
            Self::Integer(i) => i.presence,
            Self::Number(n) => n.presence,
            Self::Plain(p) => p.presence,
            Self::Structured(s) => s.presence,
        }
    }
}

/// An integer query parameter: `default` when absent, else within
/// `min..=max` (no upper bound when `max` is `None`).
#[derive(Debug, Clone, Copy)]
pub struct IntParam {
    pub name: &'static str,
    pub default: i64,
    pub min: i64,
    pub max: Option<i64>,
}

/// A JSON body validated into `T`.
pub struct JsonBody<T>(pub T);

impl<T: FromBody + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let rules = req
            .app_data::<web::Data<BodyRules>>()
            .map(|r| *r.get_ref())
            .unwrap_or_default();
        let limit = rules.limit;
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().map(str::to_owned));
        let declared_len = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let mut payload = payload.take();
        Box::pin(async move {
            if declared_len.is_some_and(|n| n > limit as u64) {
                return Err(ApiError::PayloadTooLarge(limit));
            }
            let mut buf = web::BytesMut::new();
            while let Some(chunk) = payload.next().await {
                let chunk = chunk
                    .map_err(|_| ApiError::BadRequest("There was an error parsing the body"))?;
                if buf.len() + chunk.len() > limit {
                    return Err(ApiError::PayloadTooLarge(limit));
                }
                buf.extend_from_slice(&chunk);
            }
            let body = parse_body(content_type, &buf)?;
            T::from_body(body, &rules)
                .map(JsonBody)
                .map_err(ApiError::Validation)
        })
    }
}

/// What FastAPI does with a body: JSON when there is no content type or a
/// JSON one (`application/json`, `application/*+json`), the raw bytes
/// otherwise (which then fail validation as "not an object").
fn parse_body(
    content_type: Option<Result<String, header::ToStrError>>,
    buf: &[u8],
) -> Result<Option<Value>, ApiError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let is_json = match content_type {
        None => true,
        Some(Err(_)) => false,
        Some(Ok(ct)) => {
            let essence = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            match essence.split_once('/') {
                Some(("application", sub)) => sub == "json" || sub.ends_with("+json"),
                _ => false,
            }
        }
    };
    if !is_json {
        // Not parsed, and not echoed either: the raw body may hold a secret.
        return Ok(Some(Value::Null));
    }
    match serde_json::from_slice::<Value>(buf) {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            let pos = byte_position(buf, e.line(), e.column());
            let reason = e.to_string();
            // serde's message ends with " at line L column C"; keep the reason.
            let reason = reason
                .rsplit_once(" at line ")
                .map_or(reason.as_str(), |(r, _)| r)
                .to_owned();
            Err(ApiError::one(FieldError {
                kind: "json_invalid".to_owned(),
                loc: vec![LocItem::from("body"), LocItem::Index(pos)],
                msg: "JSON decode error".to_owned(),
                input: Some(json!({})),
                ctx: Some(json!({ "error": reason })),
            }))
        }
    }
}

/// The byte offset of a 1-based line and column.
fn byte_position(buf: &[u8], line: usize, column: usize) -> u64 {
    let mut offset = 0usize;
    for (i, l) in buf.split(|b| *b == b'\n').enumerate() {
        if i + 1 == line {
            return (offset + column.saturating_sub(1)).min(buf.len()) as u64;
        }
        offset += l.len() + 1;
    }
    buf.len() as u64
}

/// Reads the fields of a JSON object body and collects every problem.
pub struct Fields {
    map: Map<String, Value>,
    pub errors: Vec<FieldError>,
}

/// A field present with a value, present as `null`, or absent.
pub enum Given<T> {
    Absent,
    Null,
    Value(T),
}

impl Fields {
    /// The body must be an object; `required` says whether an empty body
    /// is an error (`missing`) or an empty object.
    pub fn of(body: Option<Value>, required: bool) -> Result<Self, Vec<FieldError>> {
        match body {
            None if required => Err(vec![FieldError::missing(&["body"]).input(Value::Null)]),
            None => Ok(Self {
                map: Map::new(),
                errors: Vec::new(),
            }),
            Some(Value::Object(map)) => Ok(Self {
                map,
                errors: Vec::new(),
            }),
            Some(other) => Err(vec![
                FieldError::new(
                    &["body"],
                    "model_attributes_type",
                    "Input should be a valid dictionary or object to extract fields from",
                )
                .input(other),
            ]),
        }
    }

    fn take(&mut self, name: &str) -> Given<Value> {
        match self.map.remove(name) {
            None => Given::Absent,
            Some(Value::Null) => Given::Null,
            Some(v) => Given::Value(v),
        }
    }

    /// A string field of `min..=max` characters, without NUL characters.
    /// `secret` fields never echo their input.
    fn string(&mut self, name: &str, min: usize, max: usize, secret: bool) -> Given<String> {
        let loc = ["body", name];
        match self.take(name) {
            Given::Absent => Given::Absent,
            Given::Null => Given::Null,
            Given::Value(Value::String(s)) => {
                let echo = |e: FieldError| {
                    if secret {
                        e
                    } else {
                        e.input(Value::String(s.clone()))
                    }
                };
                let n = s.chars().count();
                if n < min {
                    self.errors.push(echo(
                        FieldError::new(
                            &loc,
                            "string_too_short",
                            format!("String should have at least {min} character{}", plural(min)),
                        )
                        .ctx(json!({ "min_length": min })),
                    ));
                    Given::Absent
                } else if n > max {
                    self.errors.push(echo(
                        FieldError::new(
                            &loc,
                            "string_too_long",
                            format!("String should have at most {max} character{}", plural(max)),
                        )
                        .ctx(json!({ "max_length": max })),
                    ));
                    Given::Absent
                } else if s.contains('\0') {
                    self.errors.push(echo(FieldError::value_error(
                        &loc,
                        "must not contain NUL characters",
                    )));
                    Given::Absent
                } else {
                    Given::Value(s)
                }
            }
            Given::Value(other) => {
                let e = FieldError::new(&loc, "string_type", "Input should be a valid string");
                self.errors.push(if secret { e } else { e.input(other) });
                Given::Absent
            }
        }
    }

    /// A boolean field, with pydantic's lax forms (`"true"`, `1`, `"off"`, …).
    fn boolean(&mut self, name: &str) -> Given<bool> {
        match self.take(name) {
            Given::Absent => Given::Absent,
            Given::Null => Given::Null,
            Given::Value(v) => {
                let parsed = match &v {
                    Value::Bool(b) => Some(*b),
                    // 0 and 1, also written 0.0 or 1.0: pydantic takes
                    // those floats, and JSON Schema's `enum: [0, 1]` (the
                    // document) counts them as the same numbers.
                    Value::Number(n) => match n.as_f64() {
                        Some(0.0) => Some(false),
                        Some(1.0) => Some(true),
                        _ => None,
                    },
                    Value::String(s) => parse_bool(s),
                    _ => None,
                };
                match parsed {
                    Some(b) => Given::Value(b),
                    None => {
                        let (kind, msg) = if v.is_string() {
                            (
                                "bool_parsing",
                                "Input should be a valid boolean, unable to interpret input",
                            )
                        } else {
                            ("bool_type", "Input should be a valid boolean")
                        };
                        self.errors
                            .push(FieldError::new(&["body", name], kind, msg).input(v));
                        Given::Absent
                    }
                }
            }
        }
    }

    /// An integer field within `min..=max`.
    fn integer(&mut self, name: &str, min: i64, max: i64) -> Given<i64> {
        let loc = ["body", name];
        match self.take(name) {
            Given::Absent => Given::Absent,
            Given::Null => Given::Null,
            Given::Value(v) => {
                let parsed = match &v {
                    Value::Number(n) => n.as_i64().or_else(|| {
                        n.as_f64()
                            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e18)
                            .map(|f| f as i64)
                    }),
                    Value::String(s) => s.trim().parse::<i64>().ok(),
                    _ => None,
                };
                match parsed {
                    Some(n) => match check_range(&loc, n, min, max, v.clone()) {
                        Ok(n) => Given::Value(n),
                        Err(e) => {
                            self.errors.push(*e);
                            Given::Absent
                        }
                    },
                    None => {
                        self.errors.push(
                            FieldError::new(&loc, "int_type", "Input should be a valid integer")
                                .input(v),
                        );
                        Given::Absent
                    }
                }
            }
        }
    }

    /// A finite number above `above` and at most `max` (a numeric string
    /// too, as pydantic's lax mode reads it).
    fn float(&mut self, name: &str, above: f64, max: f64) -> Given<f64> {
        let loc = ["body", name];
        match self.take(name) {
            Given::Absent => Given::Absent,
            Given::Null => Given::Null,
            Given::Value(v) => {
                let parsed = match &v {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => s.trim().parse::<f64>().ok(),
                    _ => None,
                };
                let error = match parsed {
                    None => FieldError::new(&loc, "float_type", "Input should be a valid number"),
                    Some(x) if !x.is_finite() => {
                        FieldError::new(&loc, "finite_number", "Input should be a finite number")
                    }
                    Some(x) if x <= above => FieldError::new(
                        &loc,
                        "greater_than",
                        format!("Input should be greater than {above}"),
                    )
                    .ctx(json!({ "gt": above })),
                    Some(x) if x > max => FieldError::new(
                        &loc,
                        "less_than_equal",
                        format!("Input should be less than or equal to {max}"),
                    )
                    .ctx(json!({ "le": max })),
                    Some(x) => return Given::Value(x),
                };
                self.errors.push(error.input(v));
                Given::Absent
            }
        }
    }

    /// An RFC 3339 date-time with a UTC offset (`2026-12-01T10:00:00Z`).
    fn datetime(&mut self, name: &str) -> Given<chrono::DateTime<chrono::Utc>> {
        let loc = ["body", name];
        match self.take(name) {
            Given::Absent => Given::Absent,
            Given::Null => Given::Null,
            Given::Value(Value::String(s)) => match chrono::DateTime::parse_from_rfc3339(&s) {
                Ok(t) => Given::Value(t.with_timezone(&chrono::Utc)),
                Err(e) => {
                    self.errors.push(
                        FieldError::new(
                            &loc,
                            "datetime_from_date_parsing",
                            format!("Input should be a valid datetime or date, {e}"),
                        )
                        .input(Value::String(s.clone()))
                        .ctx(json!({ "error": e.to_string() })),
                    );
                    Given::Absent
                }
            },
            Given::Value(other) => {
                self.errors.push(
                    FieldError::new(&loc, "datetime_type", "Input should be a valid datetime")
                        .input(other),
                );
                Given::Absent
            }
        }
    }

    /// A string field that must name one of `allowed` (enum values spelled
    /// by strum).
    fn one_of<T: Copy + Into<&'static str>>(&mut self, name: &str, allowed: &[T]) -> Given<T> {
        match self.take(name) {
            Given::Absent => Given::Absent,
            Given::Null => Given::Null,
            Given::Value(other) => {
                if let Some(chosen) = other.as_str().and_then(|s| choose(allowed, s)) {
                    return Given::Value(chosen);
                }
                let expected = expected_list(&names(allowed));
                self.errors.push(
                    FieldError::new(
                        &["body", name],
                        "enum",
                        format!("Input should be {expected}"),
                    )
                    .input(other)
                    .ctx(json!({ "expected": expected })),
                );
                Given::Absent
            }
        }
    }

    /// What `given` leaves of field `name` by its `presence`: a value, or
    /// nothing, with a `kind` error (`msg`) for a refused `null` and a
    /// `missing` one for a required field left out.
    fn present<T>(
        &mut self,
        name: &str,
        presence: Presence,
        given: Given<T>,
        kind: &str,
        msg: impl FnOnce() -> String,
    ) -> Option<T> {
        match given {
            Given::Value(v) => Some(v),
            Given::Null if presence != Presence::Optional => {
                self.errors
                    .push(FieldError::new(&["body", name], kind, msg()).input(Value::Null));
                None
            }
            Given::Absent if presence == Presence::Required && !self.has_error(name) => {
                self.errors
                    .push(FieldError::missing(&["body", name]).input(Value::Null));
                None
            }
            Given::Null | Given::Absent => None,
        }
    }

    /// The text field `rule`.
    pub fn text(&mut self, rule: &Text) -> Option<String> {
        let given = self.string(rule.name, rule.min, rule.max, rule.secret);
        self.present(rule.name, rule.presence, given, "string_type", || {
            "Input should be a valid string".to_owned()
        })
    }

    /// The integer field `rule`.
    pub fn int(&mut self, rule: &Integer) -> Option<i64> {
        let given = self.integer(rule.name, rule.min, rule.max);
        self.present(rule.name, rule.presence, given, "int_type", || {
            "Input should be a valid integer".to_owned()
        })
    }

    /// The number field `rule`: its value, `Some(None)` for an explicit
    /// `null` when the rule takes one, `None` when absent (or refused).
    pub fn number(&mut self, rule: &Number) -> Option<Option<f64>> {
        let given = self.float(rule.name, rule.above, rule.max);
        self.nullable(rule.name, rule.presence, given, "float_type", || {
            "Input should be a valid number".to_owned()
        })
    }

    /// The integer field `rule`, telling `null` from absent as
    /// [`Fields::number`] does.
    pub fn int_or_null(&mut self, rule: &Integer) -> Option<Option<i64>> {
        let given = self.integer(rule.name, rule.min, rule.max);
        self.nullable(rule.name, rule.presence, given, "int_type", || {
            "Input should be a valid integer".to_owned()
        })
    }

    /// [`Fields::present`] for a field whose `null` means something (no
    /// limit, the default): `Some(None)` for it.
    fn nullable<T>(
        &mut self,
        name: &str,
        presence: Presence,
        given: Given<T>,
        kind: &str,
        msg: impl FnOnce() -> String,
    ) -> Option<Option<T>> {
        match given {
            Given::Null if presence == Presence::Optional => Some(None),
            other => self.present(name, presence, other, kind, msg).map(Some),
        }
    }

    /// The date-time field `rule`.
    pub fn time(&mut self, rule: &Plain) -> Option<chrono::DateTime<chrono::Utc>> {
        let given = self.datetime(rule.name);
        self.present(rule.name, rule.presence, given, "datetime_type", || {
            "Input should be a valid datetime".to_owned()
        })
    }

    /// The lax boolean field `rule`.
    pub fn flag(&mut self, rule: &Plain) -> Option<bool> {
        let given = self.boolean(rule.name);
        self.present(rule.name, rule.presence, given, "bool_type", || {
            "Input should be a valid boolean".to_owned()
        })
    }

    /// The field `rule`, one of `allowed`.
    pub fn choice<T: Copy + Into<&'static str>>(
        &mut self,
        rule: &Plain,
        allowed: &[T],
    ) -> Option<T> {
        let given = self.one_of(rule.name, allowed);
        self.present(rule.name, rule.presence, given, "enum", || {
            format!("Input should be {}", expected_list(&names(allowed)))
        })
    }

    /// The structured field `rule` as given, for its own parser (`null`
    /// counts as absent unless the rule refuses it).
    pub fn structured(&mut self, rule: &Structured) -> Option<Value> {
        let given = self.take(rule.name);
        self.present(rule.name, rule.presence, given, "value_error", || {
            "Value error, must not be null".to_owned()
        })
    }

    /// The problems found so far name `name`.
    pub fn has_error(&self, name: &str) -> bool {
        self.errors
            .iter()
            .any(|e| e.loc.get(1) == Some(&LocItem::from(name)))
    }

    /// Ok when no field had a problem.
    pub fn finish(self) -> Result<(), Vec<FieldError>> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors)
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

const TRUE_WORDS: [&str; 6] = ["true", "1", "yes", "on", "t", "y"];
const FALSE_WORDS: [&str; 6] = ["false", "0", "no", "off", "f", "n"];

/// pydantic's lax boolean strings, in any ASCII case, with surrounding
/// whitespace ignored.
pub fn parse_bool(s: &str) -> Option<bool> {
    let word = s.trim().to_ascii_lowercase();
    if TRUE_WORDS.contains(&word.as_str()) {
        Some(true)
    } else if FALSE_WORDS.contains(&word.as_str()) {
        Some(false)
    } else {
        None
    }
}

/// The JSON Schema of exactly what a lax boolean field ([`Fields::flag`],
/// and [`Query::boolean`] whose values are strings) accepts: a boolean, the
/// number 0 or 1, or a string [`parse_bool`] reads.
pub fn lax_bool_schema() -> Value {
    // What `str::trim` removes: the Unicode White_Space characters.
    const SPACE: &str =
        "[\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";
    let any_case = |w: &str| -> String {
        w.chars()
            .map(|c| {
                if c.is_ascii_alphabetic() {
                    format!("[{}{}]", c.to_ascii_uppercase(), c)
                } else {
                    c.to_string()
                }
            })
            .collect()
    };
    let words: Vec<String> = TRUE_WORDS
        .iter()
        .chain(FALSE_WORDS.iter())
        .map(|w| any_case(w))
        .collect();
    json!({
        "anyOf": [
            {"type": "boolean"},
            {"enum": [0, 1]},
            {"type": "string", "pattern": format!("^{SPACE}*({}){SPACE}*$", words.join("|"))},
        ],
        "description": "A boolean; also 0 or 1, or one of the strings true, 1, yes, on, t, y, \
            false, 0, no, off, f, n in any ASCII case with surrounding whitespace \
            (pydantic's lax booleans).",
    })
}

fn check_range(
    loc: &[&str],
    n: i64,
    min: i64,
    max: i64,
    input: Value,
) -> Result<i64, Box<FieldError>> {
    if n < min || n > max {
        Err(Box::new(out_of_range(loc, n < min, min, max, input)))
    } else {
        Ok(n)
    }
}

/// pydantic's range error: below `min` (`below`) or above `max`.
fn out_of_range(loc: &[&str], below: bool, min: i64, max: i64, input: Value) -> FieldError {
    if below {
        FieldError::new(
            loc,
            "greater_than_equal",
            format!("Input should be greater than or equal to {min}"),
        )
        .input(input)
        .ctx(json!({ "ge": min }))
    } else {
        FieldError::new(
            loc,
            "less_than_equal",
            format!("Input should be less than or equal to {max}"),
        )
        .input(input)
        .ctx(json!({ "le": max }))
    }
}

/// A query struct: the one that documents a route's parameters
/// (`utoipa::IntoParams`) is the one read from its query string.
pub trait FromQuery: Sized {
    fn from_query(q: &mut Query) -> Self;
}

/// A parsed query string (the last value of a repeated name wins, as in
/// Starlette).
pub struct Query {
    values: HashMap<String, String>,
    pub errors: Vec<FieldError>,
}

impl Query {
    pub fn parse(query_string: &str) -> Self {
        let values = url::form_urlencoded::parse(query_string.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Self {
            values,
            errors: Vec::new(),
        }
    }

    /// An optional string (NUL characters refused).
    pub fn string(&mut self, name: &str) -> Option<String> {
        let v = self.values.get(name)?;
        if v.contains('\0') {
            self.errors.push(
                FieldError::value_error(&["query", name], "must not contain NUL characters")
                    .input(Value::String(v.clone())),
            );
            return None;
        }
        Some(v.clone())
    }

    /// An optional boolean.
    pub fn boolean(&mut self, name: &str) -> Option<bool> {
        let v = self.values.get(name)?;
        match parse_bool(v) {
            Some(b) => Some(b),
            None => {
                self.errors.push(
                    FieldError::new(
                        &["query", name],
                        "bool_parsing",
                        "Input should be a valid boolean, unable to interpret input",
                    )
                    .input(Value::String(v.clone())),
                );
                None
            }
        }
    }

    /// An integer within `min..=max`, `default` when absent.
    pub fn integer(&mut self, name: &str, default: i64, min: i64, max: i64) -> i64 {
        let Some(v) = self.values.get(name) else {
            return default;
        };
        let loc = ["query", name];
        let input = Value::String(v.clone());
        let t = v.trim();
        let n = match t.parse::<i64>() {
            Ok(n) => Some(Ok(n)),
            // All digits but beyond i64: as pydantic, a range error (never
            // clamped into the range).
            Err(_) if is_integer_literal(t) => Some(Err(t.starts_with('-'))),
            Err(_) => None,
        };
        match n {
            Some(Err(negative)) => {
                self.errors
                    .push(out_of_range(&loc, negative, min, max, input));
                default
            }
            Some(Ok(n)) => match check_range(&loc, n, min, max, input) {
                Ok(n) => n,
                Err(e) => {
                    self.errors.push(*e);
                    default
                }
            },
            None => {
                self.errors.push(
                    FieldError::new(
                        &loc,
                        "int_parsing",
                        "Input should be a valid integer, unable to parse string as an integer",
                    )
                    .input(input),
                );
                default
            }
        }
    }

    /// The integer parameter `rule`.
    pub fn param(&mut self, rule: &IntParam) -> i64 {
        let max = rule.max.unwrap_or(i64::MAX);
        self.integer(rule.name, rule.default, rule.min, max)
    }

    /// One of `allowed` (enum values spelled by strum), if given.
    pub fn one_of<T: Copy + Into<&'static str>>(&mut self, name: &str, allowed: &[T]) -> Option<T> {
        let v = self.values.get(name)?;
        if let Some(chosen) = choose(allowed, v) {
            return Some(chosen);
        }
        let expected = expected_list(&names(allowed));
        self.errors.push(
            FieldError::new(
                &["query", name],
                "enum",
                format!("Input should be {expected}"),
            )
            .input(Value::String(v.clone()))
            .ctx(json!({ "expected": expected })),
        );
        None
    }

    /// An optional page cursor (`next_cursor` of a delivery page).
    pub fn cursor(&mut self, name: &str) -> Option<storage::webhooks::Cursor> {
        let v = self.values.get(name)?;
        let c = storage::webhooks::Cursor::decode(v);
        if c.is_none() {
            self.errors.push(
                FieldError::value_error(
                    &["query", name],
                    "not a cursor: pass the next_cursor of a previous page",
                )
                .input(Value::String(v.clone())),
            );
        }
        c
    }

    /// An optional RFC 3339 date-time with an offset.
    pub fn time(&mut self, name: &str) -> Option<chrono::DateTime<chrono::Utc>> {
        let v = self.values.get(name)?;
        match chrono::DateTime::parse_from_rfc3339(v.trim()) {
            Ok(t) => Some(t.with_timezone(&chrono::Utc)),
            Err(e) => {
                self.errors.push(
                    FieldError::new(
                        &["query", name],
                        "datetime_from_date_parsing",
                        format!("Input should be a valid datetime or date, {e}"),
                    )
                    .input(Value::String(v.clone()))
                    .ctx(json!({ "error": e.to_string() })),
                );
                None
            }
        }
    }

    /// An optional cursor of the event audit (`next_cursor` of an events
    /// page).
    pub fn event_cursor(&mut self, name: &str) -> Option<storage::audit::EventCursor> {
        let v = self.values.get(name)?;
        let c = storage::audit::EventCursor::decode(v);
        if c.is_none() {
            self.errors.push(
                FieldError::value_error(
                    &["query", name],
                    "not a cursor: pass the next_cursor of a previous page",
                )
                .input(Value::String(v.clone())),
            );
        }
        c
    }

    /// A problem found after reading (one parameter against another).
    pub fn refuse(&mut self, error: FieldError) {
        self.errors.push(error);
    }

    /// Reads `T` from a query string; every problem in one 422.
    pub fn read<T: FromQuery>(query_string: &str) -> Result<T, ApiError> {
        let mut q = Self::parse(query_string);
        let value = T::from_query(&mut q);
        q.finish()?;
        Ok(value)
    }

    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.errors))
        }
    }
}

fn is_integer_literal(s: &str) -> bool {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// The value of `allowed` spelled `text`.
fn choose<T: Copy + Into<&'static str>>(allowed: &[T], text: &str) -> Option<T> {
    allowed.iter().copied().find(|a| (*a).into() == text)
}

fn names<T: Copy + Into<&'static str>>(allowed: &[T]) -> Vec<&'static str> {
    allowed.iter().map(|a| (*a).into()).collect()
}

/// pydantic's "'a', 'b' or 'c'".
fn expected_list(allowed: &[&str]) -> String {
    let quoted: Vec<String> = allowed.iter().map(|a| format!("'{a}'")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.clone(),
        None => String::new(),
    }
}

/// A path id: not an integer → 422 (`int_parsing`, as FastAPI); an integer
/// no row can have → the resource's 404.
pub fn path_id<T: TryFrom<i64>>(raw: &str, name: &str, not_found: ApiError) -> Result<T, ApiError> {
    let t = raw.trim();
    match t.parse::<i64>() {
        Ok(n) => T::try_from(n).map_err(|_| not_found),
        Err(_) if is_integer_literal(t) => Err(not_found),
        Err(_) => Err(ApiError::one(
            FieldError::new(
                &["path", name],
                "int_parsing",
                "Input should be a valid integer, unable to parse string as an integer",
            )
            .input(Value::String(raw.to_owned())),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_lax_boolean_schema_is_what_the_parsers_take() {
        let schema = jsonschema::validator_for(&lax_bool_schema()).unwrap();
        let body = |v: &Value| {
            let mut f = Fields::of(Some(json!({ "b": v })), false).ok().unwrap();
            matches!(f.boolean("b"), Given::Value(_))
        };
        let query = |s: &str| {
            let mut q = Query::parse(&format!("b={}", urlencode(s)));
            q.boolean("b").is_some()
        };
        let mut strings: Vec<String> = Vec::new();
        for w in TRUE_WORDS.iter().chain(FALSE_WORDS.iter()) {
            strings.push((*w).to_owned());
            strings.push(w.to_ascii_uppercase());
            strings.push(format!(" \t\u{a0}{w}\u{3000}\n"));
            strings.push(format!("{w}\u{85}"));
            strings.push(format!("{w}x"));
            strings.push(format!("\u{200b}{w}")); // zero width: not whitespace
            strings.push(format!("\u{1c}{w}")); // Python's \s, not Unicode's
        }
        strings.extend(
            [
                "",
                " ",
                "tru",
                "yess",
                "2",
                "-1",
                "1.0",
                "nil",
                "null",
                "None",
                "ｔｒｕｅ",
            ]
            .map(String::from),
        );
        for s in &strings {
            let v = json!(s);
            let ok = schema.is_valid(&v);
            assert_eq!(body(&v), ok, "body {s:?}");
            assert_eq!(query(s), ok, "query {s:?}");
        }
        for v in [
            json!(true),
            json!(false),
            json!(0),
            json!(1),
            json!(0.0),
            json!(1.0),
            json!(-0.0),
            json!(2),
            json!(-1),
            json!(0.5),
            json!(null),
            json!([]),
            json!({}),
            json!([true]),
        ] {
            assert_eq!(body(&v), schema.is_valid(&v), "body {v}");
        }
    }

    fn urlencode(s: &str) -> String {
        s.bytes().map(|b| format!("%{b:02X}")).collect()
    }

    #[test]
    fn json_positions() {
        let buf = br#"{"a": 1,
  "b": x}"#;
        let err = serde_json::from_slice::<Value>(buf).unwrap_err();
        let pos = byte_position(buf, err.line(), err.column());
        assert_eq!(buf[pos as usize], b'x');
    }

    #[test]
    fn expected_lists() {
        assert_eq!(
            expected_list(&["pending", "success", "failed"]),
            "'pending', 'success' or 'failed'"
        );
        assert_eq!(expected_list(&["a"]), "'a'");
    }

    #[test]
    fn query_integers() {
        let mut q = Query::parse(
            "limit=500&offset=abc&x=99999999999999999999999&big=9223372036854775808&small=-9223372036854775809",
        );
        assert_eq!(q.integer("limit", 50, 1, 200), 50);
        assert_eq!(q.integer("offset", 0, 0, i64::MAX), 0);
        assert_eq!(q.integer("x", 0, 0, 10), 0);
        assert_eq!(q.integer("absent", 7, 0, 10), 7);
        assert_eq!(q.integer("big", 0, 0, i64::MAX), 0);
        assert_eq!(q.integer("small", 0, i64::MIN, 10), 0);
        let kinds: Vec<_> = q.errors.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "less_than_equal",
                "int_parsing",
                "less_than_equal",
                "less_than_equal",
                "greater_than_equal"
            ]
        );
    }

    #[test]
    fn path_ids() {
        assert_eq!(path_id::<i32>("12", "id", ApiError::Internal).unwrap(), 12);
        assert!(matches!(
            path_id::<i32>("99999999999", "id", ApiError::webhook_not_found()),
            Err(ApiError::NotFound(_))
        ));
        assert_eq!(
            path_id::<i64>("99999999999", "id", ApiError::Internal).unwrap(),
            99_999_999_999
        );
        assert!(matches!(
            path_id::<i32>("abc", "id", ApiError::webhook_not_found()),
            Err(ApiError::Validation(_))
        ));
    }
}
