//! What the API takes and returns, with their validation and OpenAPI
//! schemas.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use proto_events::Pattern;
use proto_events::filter::Filter;
use regex::Regex;
use serde::Serialize;
use serde_json::Value;
use storage::jobs::{JobKind, JobStatus};
use storage::models::{
    BodyFormat, Circuit, CircuitState, Delivery, DeliveryStatus, Webhook, WebhookMode,
};
use storage::secrets::Keyring;
use storage::subscription::SignatureScheme;
use webhook_client::Ed25519Key;

use crate::subscription::{self, AuthIn, HeaderIn};
use strum::VariantArray;
use utoipa::ToSchema;

use crate::error::FieldError;
use crate::extract::{
    BodyRules, Field, Fields, FromBody, IntParam, Integer, Number, Plain, Presence, Shape, Text,
};

// The API's fields, each rule said once: the request types read their
// fields by these rules and the OpenAPI document (`routes::openapi`)
// states them.

/// `name`: the bot's column holds 255 characters.
pub const NAME: Text = Text {
    name: "name",
    presence: Presence::Required,
    min: 1,
    max: 255,
    secret: false,
    shape: Shape::NoNul,
};
/// `url`: TEXT, capped like common browsers and proxies.
pub const URL: Text = Text {
    name: "url",
    presence: Presence::Required,
    min: 1,
    max: 2048,
    secret: false,
    shape: Shape::Url,
};
/// `event_type`: the bot's column holds 50 characters.
pub const EVENT_TYPE: Text = Text {
    name: "event_type",
    presence: Presence::Required,
    min: 1,
    max: 50,
    secret: false,
    shape: Shape::EventType,
};
/// `secret`: the bot's column holds 128 characters.
pub const SECRET: Text = Text {
    name: "secret",
    presence: Presence::Optional,
    min: 0,
    max: 128,
    secret: true,
    shape: Shape::NoNul,
};
/// `description`: TEXT, capped so one row stays reasonable.
pub const DESCRIPTION: Text = Text {
    name: "description",
    presence: Presence::Optional,
    min: 0,
    max: 10_000,
    secret: false,
    shape: Shape::NoNul,
};
pub const IS_ACTIVE: Plain = Plain {
    name: "is_active",
    presence: Presence::Optional,
};
pub const BODY_FORMAT: Plain = Plain {
    name: "body_format",
    presence: Presence::Optional,
};
/// `mode`: `push` (the default) or `pull`.
pub const MODE: Plain = Plain {
    name: "mode",
    presence: Presence::Optional,
};

/// `rate_limit_per_s`: requests per second to the webhook, across every
/// worker replica (the column's CHECK).
pub const RATE_LIMIT_PER_S: Number = Number {
    name: "rate_limit_per_s",
    presence: Presence::Optional,
    above: 0.0,
    max: 100_000.0,
};
/// `rate_burst`: requests allowed at once above the rate; only with a rate.
pub const RATE_BURST: Integer = Integer {
    name: "rate_burst",
    presence: Presence::Optional,
    min: 1,
    max: 100_000,
};
/// `ordered`: one delivery at a time, in stream order.
pub const ORDERED: Plain = Plain {
    name: "ordered",
    presence: Presence::Optional,
};
/// `circuit_threshold`: consecutive failures that open the circuit.
pub const CIRCUIT_THRESHOLD: Integer = Integer {
    name: "circuit_threshold",
    presence: Presence::Optional,
    min: 1,
    max: 1_000_000,
};
/// `circuit_cooldown_s`: seconds the circuit stays open (at most a week).
pub const CIRCUIT_COOLDOWN_S: Integer = Integer {
    name: "circuit_cooldown_s",
    presence: Presence::Optional,
    min: 1,
    max: 604_800,
};

/// The delivery policy fields of a body as given: `None` absent,
/// `Some(None)` given as `null` (unlimited, or the worker's setting).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PolicyIn {
    pub rate_limit_per_s: Option<Option<f64>>,
    pub rate_burst: Option<Option<i32>>,
    pub ordered: Option<bool>,
    pub circuit_threshold: Option<Option<i32>>,
    pub circuit_cooldown_s: Option<Option<i32>>,
}

/// The body fields of [`PolicyIn`], in order.
const POLICY_FIELDS: [Field; 5] = [
    Field::Number(RATE_LIMIT_PER_S),
    Field::Integer(RATE_BURST),
    Field::Plain(ORDERED),
    Field::Integer(CIRCUIT_THRESHOLD),
    Field::Integer(CIRCUIT_COOLDOWN_S),
];

impl PolicyIn {
    fn read(f: &mut Fields) -> Self {
        let int = |f: &mut Fields, rule: &Integer| {
            f.int_or_null(rule)
                .map(|v| v.and_then(|n| i32::try_from(n).ok()))
        };
        Self {
            rate_limit_per_s: f.number(&RATE_LIMIT_PER_S),
            rate_burst: int(f, &RATE_BURST),
            ordered: f.flag(&ORDERED),
            circuit_threshold: int(f, &CIRCUIT_THRESHOLD),
            circuit_cooldown_s: int(f, &CIRCUIT_COOLDOWN_S),
        }
    }

    /// The fields that ask a pull webhook for something it does not have
    /// (they shape POSTs); the values a webhook reads back without a
    /// policy (`null`, `false`) ask for nothing.
    pub fn push_only(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if matches!(self.rate_limit_per_s, Some(Some(_))) {
            names.push(RATE_LIMIT_PER_S.name);
        }
        if matches!(self.rate_burst, Some(Some(_))) {
            names.push(RATE_BURST.name);
        }
        if self.ordered == Some(true) {
            names.push(ORDERED.name);
        }
        if matches!(self.circuit_threshold, Some(Some(_))) {
            names.push(CIRCUIT_THRESHOLD.name);
        }
        if matches!(self.circuit_cooldown_s, Some(Some(_))) {
            names.push(CIRCUIT_COOLDOWN_S.name);
        }
        names
    }
}

/// The 422 entries of `names` on a pull webhook.
pub fn pull_policy_errors(names: &[&str]) -> Vec<FieldError> {
    names
        .iter()
        .map(|name| {
            FieldError::value_error(
                &["body", name],
                "a pull webhook has no delivery policy: rate limit, ordered delivery and the \
                 circuit breaker shape POSTs, and nothing is POSTed to a pull webhook",
            )
        })
        .collect()
}

/// The 422 entry of a burst without a rate.
pub fn burst_without_rate() -> FieldError {
    FieldError::value_error(
        &["body", "rate_burst"],
        "rate_burst needs a rate limit: give rate_limit_per_s too (a burst without a rate \
         means nothing)",
    )
}

/// Page size of every list: 50 unless asked, at most 200 (docs/contract.md,
/// "REST API").
pub const LIMIT: IntParam = IntParam {
    name: "limit",
    default: 50,
    min: 1,
    max: Some(200),
};
/// Items of a list to skip.
pub const OFFSET: IntParam = IntParam {
    name: "offset",
    default: 0,
    min: 0,
    max: None,
};
/// Window of the hourly counts: a day unless asked, a week at most.
pub const HOURS: IntParam = IntParam {
    name: "hours",
    default: 24,
    min: 1,
    max: Some(168),
};
/// The integer query parameters: wherever one of these names is a query
/// parameter, this is its rule.
pub const INT_PARAMS: [IntParam; 3] = [LIMIT, OFFSET, HOURS];

/// `rule`, which may be left out (or given as `null`).
const fn optional(rule: Text) -> Text {
    Text {
        presence: Presence::Optional,
        ..rule
    }
}

/// Checks a webhook URL: no whitespace or control characters a parser would
/// drop, an absolute http/https URL with a host and no credentials, no
/// internal destination unless allowed, and a match of [`url_pattern`].
pub fn check_url(fields: &mut Fields, url: &str, allow_private: bool) -> bool {
    check_url_at(fields, &["body", "url"], url, allow_private)
}

/// [`check_url`] of a URL at `loc`.
pub fn check_url_at(fields: &mut Fields, loc: &[&str], url: &str, allow_private: bool) -> bool {
    // The most specific reason first; the pattern last.
    let problem = match raw_url_problem(url) {
        Some(p) => p.to_owned(),
        None => match webhook_client::ssrf::validate_url(url, allow_private) {
            Err(problem) => problem.to_string(),
            Ok(_) if url_regex().is_some_and(|re| re.is_match(url)) => return true,
            Ok(_) => URL_PATTERN_PROBLEM.to_owned(),
        },
    };
    fields.errors.push(
        // Credentials in a refused URL are not echoed back.
        FieldError::value_error(loc, &problem).input(Value::String(proto_events::redact_url(url))),
    );
    false
}

const URL_PATTERN_PROBLEM: &str = "URL must be http(s)://, then a host name of ASCII \
    letters, digits, hyphens and dots (IDN names as punycode, xn--…), an IPv4 address \
    or a bracketed IPv6 address, an optional port up to 65535, and a path, query or \
    fragment of printable ASCII characters (percent-encode others)";

/// The webhook URLs the API takes, as one regular expression: it is the
/// OpenAPI document's `pattern` for `url`, and [`check_url`] requires a
/// match besides the URL parser's, so the document and the server agree.
/// Written for what the Rust `regex` crate, ECMA-262 and Python's `re` read
/// alike: ASCII classes only, no `\d`/`\w`/`\s`, anchored at both ends.
///
/// Every match parses with the `url` crate as written (the one exception a
/// pattern cannot see: a label starting with `xn--` must be valid punycode):
/// - scheme `http` or `https`, in any case;
/// - host: labels of letters, digits and inner hyphens, the last one
///   starting with a letter (so it is never read as an IPv4 number), with
///   an optional final dot; or a dotted-decimal IPv4 address without
///   leading zeros; or an RFC 3986 IPv6 address in brackets (the IPv4 tail
///   form included, zone ids not);
/// - port: 0–65535 (at most four digits with leading zeros);
/// - then `/`, `?` or `#` and printable ASCII, inner spaces allowed (they
///   are percent-encoded when the URL is used), not ending in a space.
pub fn url_pattern() -> &'static str {
    static PATTERN: LazyLock<String> = LazyLock::new(|| {
        let label = "[A-Za-z0-9]+(-+[A-Za-z0-9]+)*";
        let last_label = "[A-Za-z][A-Za-z0-9]*(-+[A-Za-z0-9]+)*";
        let name = format!("({label}\\.)*{last_label}\\.?");
        let octet = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
        let ipv4 = format!("{octet}(\\.{octet}){{3}}");
        let h16 = "[0-9A-Fa-f]{1,4}";
        let ls32 = format!("({h16}:{h16}|{ipv4})");
        // RFC 3986 §3.2.2 IPv6address: up to `before` pieces, then `::`
        // (or nothing, for the first form), then `after` pieces and ls32.
        let ipv6 = [
            format!("({h16}:){{6}}{ls32}"),
            format!("::({h16}:){{5}}{ls32}"),
            format!("({h16})?::({h16}:){{4}}{ls32}"),
            format!("(({h16}:){{0,1}}{h16})?::({h16}:){{3}}{ls32}"),
            format!("(({h16}:){{0,2}}{h16})?::({h16}:){{2}}{ls32}"),
            format!("(({h16}:){{0,3}}{h16})?::{h16}:{ls32}"),
            format!("(({h16}:){{0,4}}{h16})?::{ls32}"),
            format!("(({h16}:){{0,5}}{h16})?::{h16}"),
            format!("(({h16}:){{0,6}}{h16})?::"),
        ]
        .join("|");
        let port =
            "(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})";
        format!(
            "^[Hh][Tt][Tt][Pp][Ss]?://({name}|{ipv4}|\\[({ipv6})\\])(:{port})?([/?#]([ -~]*[!-~])?)?$"
        )
    });
    &PATTERN
}

fn url_regex() -> Option<&'static Regex> {
    // Compiling a fixed pattern cannot fail (a unit test proves it); if it
    // ever did, every URL would be refused, never one accepted unchecked.
    static REGEX: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(url_pattern()).ok());
    REGEX.as_ref()
}

/// What the URL parser would silently repair, refused instead so a URL is
/// stored (and shown) as it is used: leading or trailing whitespace and
/// control characters anywhere (the parser strips both), and a missing or
/// empty authority (`http:///x`, `http:/x` and `http:x` all parse as
/// `http://x/`). Inner spaces stay allowed: they are percent-encoded when
/// the URL is used, as browsers do.
fn raw_url_problem(url: &str) -> Option<&'static str> {
    if url.trim() != url {
        return Some("URL must not start or end with whitespace");
    }
    if url.chars().any(char::is_control) {
        return Some("URL must not contain control characters");
    }
    let after_scheme = url.split_once(':').map_or("", |(_, rest)| rest);
    match after_scheme.strip_prefix("//") {
        Some(rest) if !rest.is_empty() && !rest.starts_with(['/', '\\', '?', '#']) => None,
        _ => Some("URL must be a valid absolute URL with a host, e.g. https://example.com/webhook"),
    }
}

/// Checks an event type or pattern (`ticket.*`, `*`).
pub fn check_event_type(fields: &mut Fields, event_type: &str) -> bool {
    match Pattern::parse(event_type) {
        Ok(_) => true,
        Err(e) => {
            fields.errors.push(
                FieldError::value_error(&["body", "event_type"], &e.to_string())
                    .input(Value::String(event_type.to_owned())),
            );
            false
        }
    }
}

/// `POST /webhooks` (no `Debug`: it holds the secret).
#[derive(Clone, ToSchema)]
pub struct WebhookIn {
    pub name: String,
    /// Absolute http(s) URL; internal addresses are refused unless allowed.
    /// Required for a `push` webhook; a `pull` webhook has none.
    #[schema(example = "https://example.com/webhook")]
    pub url: Option<String>,
    /// One event type, a family pattern (`ticket.*`) or `*`; give this or
    /// `event_types` (which decides when both are given).
    #[schema(example = "user.created")]
    pub event_type: Option<String>,
    /// Several patterns; `event_type` is then the first.
    #[schema(value_type = Option<Vec<String>>)]
    pub event_types: Vec<String>,
    /// HMAC key for signatures; unsigned when absent. For an `ed25519`
    /// webhook, its signing key (`whsk_…`), generated when absent.
    #[schema(nullable)]
    pub secret: Option<String>,
    #[schema(nullable)]
    pub description: Option<String>,
    /// How the POST body is written: `canonical` (the default) or `bot`
    /// (docs/contract.md, "Body formats").
    #[schema(value_type = Option<String>, example = "canonical")]
    pub body_format: BodyFormat,
    /// Only events whose payload passes it are delivered.
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Filter>,
    /// Custom request headers.
    #[schema(value_type = Option<Object>)]
    pub headers: Vec<HeaderIn>,
    /// How deliveries authenticate to the receiver.
    #[schema(value_type = Option<Object>)]
    pub auth: Option<AuthIn>,
    /// `hmac` (the default) or `ed25519`.
    #[schema(value_type = Option<String>, example = "hmac")]
    pub signature_scheme: SignatureScheme,
    /// `push` (the default: events are POSTed to `url`) or `pull` (no
    /// `url`; the owner reads them with `GET /webhooks/{id}/pull`).
    #[schema(value_type = Option<String>, example = "push")]
    pub mode: WebhookMode,
    /// At most this many requests per second (fractions allowed), across
    /// every worker replica; `null` or absent: unlimited. Push only.
    #[schema(nullable, example = 10.0)]
    pub rate_limit_per_s: Option<f64>,
    /// Requests allowed at once above the rate; `null`: the rate rounded
    /// up. Only with `rate_limit_per_s`.
    #[schema(nullable)]
    pub rate_burst: Option<i32>,
    /// One delivery at a time, in stream order (a failing event holds the
    /// later ones). Push only.
    #[schema(value_type = Option<bool>)]
    pub ordered: bool,
    /// Consecutive failures that open the circuit; `null`: the worker's
    /// setting (`DELIVERY_CIRCUIT_THRESHOLD`, 5). Push only.
    #[schema(nullable)]
    pub circuit_threshold: Option<i32>,
    /// Seconds the circuit stays open before a probe; `null`: the worker's
    /// setting (`DELIVERY_CIRCUIT_COOLDOWN`, 60 s). Push only.
    #[schema(nullable)]
    pub circuit_cooldown_s: Option<i32>,
}

pub const SIGNATURE_SCHEME: Plain = Plain {
    name: "signature_scheme",
    presence: Presence::Optional,
};

impl WebhookIn {
    /// Given when `event_types` is not.
    const EVENT_TYPE: Text = optional(EVENT_TYPE);
    /// Required for a push webhook (checked with the mode).
    const URL: Text = optional(URL);
}

impl FromBody for WebhookIn {
    const FIELDS: &'static [Field] = &[
        Field::Text(NAME),
        Field::Text(Self::URL),
        Field::Text(Self::EVENT_TYPE),
        Field::Structured(subscription::EVENT_TYPES),
        Field::Text(SECRET),
        Field::Text(DESCRIPTION),
        Field::Plain(BODY_FORMAT),
        Field::Structured(subscription::FILTER),
        Field::Structured(subscription::HEADERS),
        Field::Structured(subscription::AUTH),
        Field::Plain(SIGNATURE_SCHEME),
        Field::Plain(MODE),
        POLICY_FIELDS[0],
        POLICY_FIELDS[1],
        POLICY_FIELDS[2],
        POLICY_FIELDS[3],
        POLICY_FIELDS[4],
    ];

    fn from_body(body: Option<Value>, rules: &BodyRules) -> Result<Self, Vec<FieldError>> {
        let mut f = Fields::of(body, true)?;
        let name = f.text(&NAME);
        // Read before the others so that a push webhook's missing `url`
        // is reported as it always was.
        let mode = f.choice(&MODE, WebhookMode::VARIANTS);
        let url = match mode {
            Some(WebhookMode::Pull) => f.text(&Self::URL),
            _ => f.text(&URL),
        };
        let event_type = f.text(&Self::EVENT_TYPE);
        let event_types = f
            .structured(&subscription::EVENT_TYPES)
            .map(|v| subscription::event_types(&mut f, v));
        let secret = f.text(&SECRET);
        let description = f.text(&DESCRIPTION);
        let body_format = f
            .choice(&BODY_FORMAT, BodyFormat::VARIANTS)
            .unwrap_or(BodyFormat::Canonical);
        let filter = f
            .structured(&subscription::FILTER)
            .map(|v| subscription::filter(&mut f, v));
        let headers = f
            .structured(&subscription::HEADERS)
            .map(|v| subscription::headers(&mut f, v, true));
        let auth = f
            .structured(&subscription::AUTH)
            .map(|v| subscription::auth(&mut f, v, rules.allow_private_targets, true));
        let signature_scheme = f
            .choice(&SIGNATURE_SCHEME, SignatureScheme::VARIANTS)
            .unwrap_or(SignatureScheme::Hmac);
        let policy = PolicyIn::read(&mut f);
        if mode == Some(WebhookMode::Pull) {
            f.errors.extend(pull_policy_errors(&policy.push_only()));
        }
        let rate_limit_per_s = policy.rate_limit_per_s.flatten();
        let rate_burst = policy.rate_burst.flatten();
        if rate_burst.is_some() && rate_limit_per_s.is_none() && !f.has_error("rate_limit_per_s") {
            f.errors.push(burst_without_rate());
        }
        match (mode, &url) {
            (Some(WebhookMode::Pull), Some(u)) => f.errors.push(
                FieldError::value_error(
                    &["body", "url"],
                    "a pull webhook has no URL: its owner reads its events with GET /webhooks/{id}/pull; leave url out",
                )
                .input(Value::String(u.clone())),
            ),
            (_, Some(u)) => {
                check_url(&mut f, u, rules.allow_private_targets);
            }
            (_, None) => {}
        }
        let mode = mode.unwrap_or(WebhookMode::Push);
        if let Some(t) = &event_type {
            check_event_type(&mut f, t);
        }
        let patterns = match (event_types, event_type) {
            (Some(list), _) => list,
            (None, Some(t)) => Some(vec![t]),
            (None, None) => {
                if !f.has_error("event_type") {
                    f.errors
                        .push(FieldError::missing(&["body", "event_type"]).input(Value::Null));
                }
                None
            }
        };
        let secret = secret.filter(|s| !s.is_empty());
        if let Some(s) = &secret {
            check_secret(&mut f, signature_scheme, s);
        }
        match (name, patterns, filter, headers, auth) {
            (Some(name), Some(patterns), filter, headers, auth) if f.errors.is_empty() => {
                Ok(WebhookIn {
                    name,
                    url,
                    event_type: patterns.first().cloned(),
                    event_types: patterns,
                    secret,
                    description,
                    body_format,
                    filter: filter.flatten().flatten(),
                    headers: headers.flatten().unwrap_or_default(),
                    auth: auth.flatten(),
                    signature_scheme,
                    mode,
                    rate_limit_per_s,
                    rate_burst,
                    ordered: policy.ordered.unwrap_or(false),
                    circuit_threshold: policy.circuit_threshold.flatten(),
                    circuit_cooldown_s: policy.circuit_cooldown_s.flatten(),
                })
            }
            _ => {
                // Report in field order, as FastAPI does.
                let mut errors = f.errors;
                errors.sort_by_key(|e| field_rank(Self::FIELDS, e));
                Err(errors)
            }
        }
    }
}

/// An `ed25519` webhook's secret is its signing key.
fn check_secret(f: &mut Fields, scheme: SignatureScheme, secret: &str) {
    if scheme == SignatureScheme::Ed25519 && Ed25519Key::from_secret_text(secret).is_err() {
        f.errors.push(FieldError::value_error(
            &["body", "secret"],
            "an ed25519 webhook's secret is a signing key, whsk_ and the base64 of 32 bytes; \
             leave it out to have one generated",
        ));
    }
}

/// Where the field an error names comes in `fields` (errors about the
/// body as a whole first).
fn field_rank(fields: &[Field], e: &FieldError) -> usize {
    match e.loc.get(1) {
        Some(crate::error::LocItem::Name(n)) => fields
            .iter()
            .position(|f| f.name() == n)
            .unwrap_or(fields.len()),
        _ => 0,
    }
}

/// `PATCH /webhooks/{id}`: only the given fields change; a field that is
/// absent or `null` is left as it is (as in the bot, so a client may send
/// back the object it read). An empty `secret` switches signing off and an
/// empty `description` clears it; `is_active: true` also clears
/// `disabled_reason`. `filter: {}`, `headers: {}` and
/// `auth: {"type": "none"}` remove those.
#[derive(Default, ToSchema)]
pub struct WebhookPatch {
    #[schema(nullable)]
    pub name: Option<String>,
    #[schema(nullable)]
    pub url: Option<String>,
    /// One event type, a family pattern (`ticket.*`) or `*`: the webhook's
    /// first pattern.
    #[schema(nullable)]
    pub event_type: Option<String>,
    /// Every pattern; decides when it differs from the stored ones.
    #[schema(value_type = Option<Vec<String>>)]
    pub event_types: Option<Vec<String>>,
    /// A new secret; `""` removes it (unsigned deliveries).
    #[schema(value_type = Option<String>, nullable)]
    pub secret: Option<Option<String>>,
    /// A new description; `""` clears it.
    #[schema(value_type = Option<String>, nullable)]
    pub description: Option<Option<String>>,
    #[schema(nullable)]
    pub is_active: Option<bool>,
    /// `canonical` or `bot`.
    #[schema(value_type = Option<String>, nullable)]
    pub body_format: Option<BodyFormat>,
    /// `Some(None)`: remove the filter.
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Option<Filter>>,
    #[schema(value_type = Option<Object>)]
    pub headers: Option<Vec<HeaderIn>>,
    #[schema(value_type = Option<Object>)]
    pub auth: Option<AuthIn>,
    /// `hmac` or `ed25519`; a change drops the previous secret, and a
    /// change to `ed25519` without a `secret` generates a signing key.
    #[schema(value_type = Option<String>, nullable)]
    pub signature_scheme: Option<SignatureScheme>,
    /// `push` or `pull`: the mode is fixed when the webhook is created, so
    /// only the stored one is accepted (a client may send back what it
    /// read); another is a 409.
    #[schema(value_type = Option<String>, nullable)]
    pub mode: Option<WebhookMode>,
    /// A new rate limit; `null` removes it (and the burst). Push only.
    #[schema(value_type = Option<f64>, nullable)]
    pub rate_limit_per_s: Option<Option<f64>>,
    /// A new burst; `null`: the rate rounded up. Needs a rate (given or
    /// stored).
    #[schema(value_type = Option<i32>, nullable)]
    pub rate_burst: Option<Option<i32>>,
    /// Switching it on starts ordered delivery now (`ordered_since`);
    /// `null` leaves it as it is. Push only.
    #[schema(value_type = Option<bool>, nullable)]
    pub ordered: Option<bool>,
    /// `null`: the worker's setting. Push only.
    #[schema(value_type = Option<i32>, nullable)]
    pub circuit_threshold: Option<Option<i32>>,
    /// `null`: the worker's setting. Push only.
    #[schema(value_type = Option<i32>, nullable)]
    pub circuit_cooldown_s: Option<Option<i32>>,
}

impl WebhookPatch {
    /// Its delivery policy fields.
    pub fn policy(&self) -> PolicyIn {
        PolicyIn {
            rate_limit_per_s: self.rate_limit_per_s,
            rate_burst: self.rate_burst,
            ordered: self.ordered,
            circuit_threshold: self.circuit_threshold,
            circuit_cooldown_s: self.circuit_cooldown_s,
        }
    }

    const NAME: Text = optional(NAME);
    const URL: Text = optional(URL);
    const EVENT_TYPE: Text = optional(EVENT_TYPE);
}

impl FromBody for WebhookPatch {
    const FIELDS: &'static [Field] = &[
        Field::Text(Self::NAME),
        Field::Text(Self::URL),
        Field::Text(Self::EVENT_TYPE),
        Field::Structured(subscription::EVENT_TYPES),
        Field::Text(SECRET),
        Field::Text(DESCRIPTION),
        Field::Plain(IS_ACTIVE),
        Field::Plain(BODY_FORMAT),
        Field::Structured(subscription::FILTER),
        Field::Structured(subscription::HEADERS_PATCH),
        Field::Structured(subscription::AUTH_PATCH),
        Field::Plain(SIGNATURE_SCHEME),
        Field::Plain(MODE),
        POLICY_FIELDS[0],
        POLICY_FIELDS[1],
        POLICY_FIELDS[2],
        POLICY_FIELDS[3],
        POLICY_FIELDS[4],
    ];

    fn from_body(body: Option<Value>, rules: &BodyRules) -> Result<Self, Vec<FieldError>> {
        let mut f = Fields::of(body, true)?;
        // An empty string clears the column; `null` leaves it unchanged.
        let clearable = |s: Option<String>| s.map(|s| Some(s).filter(|s| !s.is_empty()));
        let name = f.text(&Self::NAME);
        let url = f.text(&Self::URL);
        let event_type = f.text(&Self::EVENT_TYPE);
        let event_types = f
            .structured(&subscription::EVENT_TYPES)
            .and_then(|v| subscription::event_types(&mut f, v));
        let secret = clearable(f.text(&SECRET));
        let description = clearable(f.text(&DESCRIPTION));
        let is_active = f.flag(&IS_ACTIVE);
        let body_format = f.choice(&BODY_FORMAT, BodyFormat::VARIANTS);
        let filter = f
            .structured(&subscription::FILTER)
            .and_then(|v| subscription::filter(&mut f, v));
        let headers = f
            .structured(&subscription::HEADERS_PATCH)
            .and_then(|v| subscription::headers(&mut f, v, false));
        let auth = f
            .structured(&subscription::AUTH_PATCH)
            .and_then(|v| subscription::auth(&mut f, v, rules.allow_private_targets, false));
        let signature_scheme = f.choice(&SIGNATURE_SCHEME, SignatureScheme::VARIANTS);
        let mode = f.choice(&MODE, WebhookMode::VARIANTS);
        let policy = PolicyIn::read(&mut f);
        if let Some(u) = &url {
            check_url(&mut f, u, rules.allow_private_targets);
        }
        if let Some(t) = &event_type {
            check_event_type(&mut f, t);
        }
        if let (Some(scheme), Some(Some(s))) = (signature_scheme, &secret) {
            check_secret(&mut f, scheme, s);
        }
        f.errors.sort_by_key(|e| field_rank(Self::FIELDS, e));
        f.finish()?;
        Ok(WebhookPatch {
            name,
            url,
            event_type,
            event_types,
            secret,
            description,
            is_active,
            body_format,
            filter,
            headers,
            auth,
            signature_scheme,
            mode,
            rate_limit_per_s: policy.rate_limit_per_s,
            rate_burst: policy.rate_burst,
            ordered: policy.ordered,
            circuit_threshold: policy.circuit_threshold,
            circuit_cooldown_s: policy.circuit_cooldown_s,
        })
    }
}

/// `POST /webhooks/{id}/rotate-secret` (body optional).
#[derive(Clone, Default, ToSchema)]
pub struct RotateIn {
    /// The new secret; generated (and returned once) when absent.
    pub secret: Option<String>,
    /// How long the previous secret keeps signing; the server default
    /// (`REGISTRY_SECRET_ROTATION_GRACE`, 24 h) when absent. 0 drops it at once.
    pub grace_period_seconds: Option<i64>,
}

impl RotateIn {
    /// A new secret is never empty.
    const SECRET: Text = Text { min: 1, ..SECRET };
    /// The longest accepted grace period is 30 days.
    const GRACE_PERIOD_SECONDS: Integer = Integer {
        name: "grace_period_seconds",
        presence: Presence::Optional,
        min: 0,
        max: 30 * 24 * 3600,
    };
}

impl FromBody for RotateIn {
    const FIELDS: &'static [Field] = &[
        Field::Text(Self::SECRET),
        Field::Integer(Self::GRACE_PERIOD_SECONDS),
    ];

    fn from_body(body: Option<Value>, _rules: &BodyRules) -> Result<Self, Vec<FieldError>> {
        let mut f = Fields::of(body, false)?;
        let secret = f.text(&Self::SECRET);
        let grace = f.int(&Self::GRACE_PERIOD_SECONDS);
        f.finish()?;
        Ok(RotateIn {
            secret,
            grace_period_seconds: grace,
        })
    }
}

/// RFC 3339 timestamps exactly as chrono writes them (`…T22:24:50.684830Z`),
/// formatted once and written as one string: chrono's own `Serialize` goes
/// through `collect_str`, which escapes it character by character.
pub mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::Serializer;

    pub fn ser<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }

    pub fn ser_opt<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => ser(t, s),
            None => s.serialize_none(),
        }
    }
}

/// A webhook as the API shows it. The secret never appears.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookOut {
    pub id: i32,
    pub name: String,
    /// `null` for a pull webhook.
    pub url: Option<String>,
    pub event_type: String,
    pub is_active: bool,
    pub description: Option<String>,
    #[serde(serialize_with = "rfc3339::ser")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339::ser")]
    pub updated_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339::ser_opt")]
    pub last_triggered_at: Option<DateTime<Utc>>,
    pub failure_count: i64,
    pub success_count: i64,
    /// Why the delivery worker switched the webhook off (410, long failures).
    pub disabled_reason: Option<String>,
    /// Since when every attempt failed (the first failure after the last
    /// success); `null` while it succeeds.
    #[serde(serialize_with = "rfc3339::ser_opt")]
    pub failing_since: Option<DateTime<Utc>>,
    /// How the POST body is written: `canonical` or `bot`.
    #[schema(value_type = String, example = "canonical")]
    pub body_format: BodyFormat,
    /// Every pattern, `event_type` first.
    pub event_types: Vec<String>,
    /// The payload filter, `null` for every event.
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Value>,
    /// Custom headers; a secret value shows as `{"secret": true}`.
    #[schema(value_type = Object)]
    pub headers: serde_json::Map<String, Value>,
    /// Receiver auth without its credential, `null` for none.
    #[schema(value_type = Option<Object>)]
    pub auth: Option<Value>,
    /// `hmac` or `ed25519`.
    #[schema(value_type = String, example = "hmac")]
    pub signature_scheme: SignatureScheme,
    /// An `ed25519` webhook's public key (`whpk_…`), for receivers to
    /// verify `v1a` signatures with; `null` otherwise.
    pub public_key: Option<String>,
    /// `push` (events are POSTed to `url`) or `pull` (read with
    /// `GET /webhooks/{id}/pull`).
    #[schema(value_type = String, example = "push")]
    pub mode: WebhookMode,
    /// A pull webhook's acknowledged position (`<epoch>:<sequence>`),
    /// `null` before the first acknowledgement and for a push webhook.
    pub pull_cursor: Option<String>,
    /// Requests per second at most, across every worker replica; `null`:
    /// unlimited.
    pub rate_limit_per_s: Option<f64>,
    /// Requests allowed at once above the rate; `null`: the rate rounded up.
    pub rate_burst: Option<i32>,
    /// One delivery at a time, in stream order.
    pub ordered: bool,
    /// When ordered delivery was switched on (events published since are
    /// ordered); `null` when it is off.
    #[serde(serialize_with = "rfc3339::ser_opt")]
    pub ordered_since: Option<DateTime<Utc>>,
    /// Consecutive failures that open the circuit; `null`: the worker's
    /// setting.
    pub circuit_threshold: Option<i32>,
    /// Seconds the circuit stays open before a probe; `null`: the worker's
    /// setting.
    pub circuit_cooldown_s: Option<i32>,
    /// The circuit breaker as the delivery worker left it.
    pub circuit: CircuitOut,
}

/// A webhook's circuit breaker.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CircuitOut {
    /// `closed` (deliveries are attempted), `open` (none until the
    /// cooldown ends) or `half_open` (one probe in flight).
    #[schema(value_type = String, example = "closed")]
    pub state: CircuitState,
    /// Since when it is in that state; `null`: closed since the webhook was
    /// created.
    #[serde(serialize_with = "rfc3339::ser_opt")]
    pub since: Option<DateTime<Utc>>,
    /// Failed attempts since the last success.
    pub consecutive_failures: i32,
}

impl From<Circuit> for CircuitOut {
    fn from(c: Circuit) -> Self {
        Self {
            state: c.state,
            since: c.since,
            consecutive_failures: c.consecutive_failures,
        }
    }
}

impl WebhookOut {
    /// The webhook as shown, with its `circuit`; `keys` open an `ed25519`
    /// signing key to show its public key.
    pub fn new(w: Webhook, keys: &Keyring, circuit: Circuit) -> Self {
        let public_key = match (w.signature_scheme, &w.secret) {
            (SignatureScheme::Ed25519, Some(stored)) => {
                storage::subscription::open(keys, storage::subscription::purpose::SECRET, stored)
                    .ok()
                    .and_then(|text| Ed25519Key::from_secret_text(&text).ok())
                    .map(|k| k.public_key_text())
            }
            _ => None,
        };
        let event_types = w.patterns().into_iter().map(str::to_owned).collect();
        let pull_cursor = w.pull_cursor().map(|c| c.to_string());
        let headers =
            subscription::headers_out(&storage::subscription::headers_of(w.headers.as_ref()));
        let auth = subscription::auth_out(storage::subscription::auth_of(w.auth.as_ref()).as_ref());
        Self {
            id: w.id,
            name: w.name,
            url: w.url,
            event_type: w.event_type,
            is_active: w.is_active,
            description: w.description,
            created_at: w.created_at,
            updated_at: w.updated_at,
            last_triggered_at: w.last_triggered_at,
            failure_count: w.failure_count,
            success_count: w.success_count,
            disabled_reason: w.disabled_reason,
            failing_since: w.failing_since,
            body_format: w.body_format,
            event_types,
            filter: w.payload_filter,
            headers,
            auth,
            signature_scheme: w.signature_scheme,
            public_key,
            mode: w.mode,
            pull_cursor,
            rate_limit_per_s: w.rate_limit_per_s,
            rate_burst: w.rate_burst,
            ordered: w.ordered,
            ordered_since: w.ordered_since,
            circuit_threshold: w.circuit_threshold,
            circuit_cooldown_s: w.circuit_cooldown_s,
            circuit: circuit.into(),
        }
    }
}

/// One delivery attempt (or a queued one, `status = pending`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeliveryOut {
    pub id: i64,
    pub webhook_id: i32,
    pub event_type: String,
    #[schema(value_type = Object)]
    pub payload: Value,
    pub response_status: Option<i32>,
    pub response_body: Option<String>,
    /// `pending`, `success` or `failed`.
    #[schema(value_type = String)]
    pub status: DeliveryStatus,
    pub error_message: Option<String>,
    pub attempt_number: i32,
    #[serde(serialize_with = "rfc3339::ser")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339::ser_opt")]
    pub delivered_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339::ser_opt")]
    pub next_retry_at: Option<DateTime<Utc>>,
    /// The event this attempt carries (same across retries).
    pub event_id: Option<String>,
}

impl From<Delivery> for DeliveryOut {
    fn from(d: Delivery) -> Self {
        Self {
            id: d.id,
            webhook_id: d.webhook_id,
            event_type: d.event_type,
            payload: d.payload,
            response_status: d.response_status,
            response_body: d.response_body,
            status: d.status,
            error_message: d.error_message,
            attempt_number: d.attempt_number,
            created_at: d.created_at,
            delivered_at: d.delivered_at,
            next_retry_at: d.next_retry_at,
            event_id: d.event_id,
        }
    }
}

/// `GET /webhooks`
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookPage {
    pub items: Vec<WebhookOut>,
    /// Size of the filtered set.
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

/// `GET /webhooks/{id}/deliveries`
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    pub items: Vec<DeliveryOut>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /webhooks/stats`
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsOut {
    pub total_webhooks: i64,
    pub active_webhooks: i64,
    pub total_deliveries: i64,
    pub successful_deliveries: i64,
    pub failed_deliveries: i64,
    /// successful / total × 100, two decimals; 0.0 without deliveries.
    pub success_rate: f64,
}

/// `POST /webhooks/{id}/rotate-secret`
#[derive(Serialize, ToSchema)]
pub struct RotateOut {
    pub webhook: WebhookOut,
    /// The generated secret, shown only this once; absent when the request
    /// gave the secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Until when deliveries are also signed with the previous secret
    /// (`null` when there was none or the grace period is 0).
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
}

/// `POST /webhooks/{id}/test`
#[derive(Debug, Serialize, ToSchema)]
pub struct TestOut {
    pub success: bool,
    pub response_status: Option<i32>,
    /// The receiver's answer, cut to 1000 characters.
    pub response_body: Option<String>,
    pub error: Option<String>,
    pub latency_ms: u64,
    /// The recorded delivery row.
    pub delivery_id: i64,
}

/// `POST /webhooks/{id}/deliveries/{delivery_id}/retry` (202)
#[derive(Debug, Serialize, ToSchema)]
pub struct RetryOut {
    /// Always `queued`.
    pub status: String,
    /// The pending delivery row the worker will attempt.
    pub delivery_id: i64,
    pub retry_of: i64,
    pub attempt_number: i32,
    pub next_retry_at: Option<DateTime<Utc>>,
    /// An attempt of this event was already waiting; no new row was added.
    pub already_queued: bool,
}

/// `GET /webhooks/{id}/deliveries/hourly`: attempts per hour, oldest hour
/// first, every hour of the window present (zeros included).
#[derive(Debug, Serialize, ToSchema)]
pub struct HourlyOut {
    pub webhook_id: i32,
    /// Hours in the window (the current, unfinished hour included).
    pub hours: i64,
    /// Start of the first hour (inclusive).
    #[serde(serialize_with = "rfc3339::ser")]
    pub from: DateTime<Utc>,
    /// End of the last hour (exclusive).
    #[serde(serialize_with = "rfc3339::ser")]
    pub to: DateTime<Utc>,
    pub buckets: Vec<HourBucketOut>,
}

/// Delivery rows of one webhook created in one UTC hour, by status.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HourBucketOut {
    /// Start of the hour.
    #[serde(serialize_with = "rfc3339::ser")]
    pub hour: DateTime<Utc>,
    pub success: i64,
    pub failed: i64,
    pub pending: i64,
}

/// One entry of `GET /events/types`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventTypeOut {
    #[serde(rename = "type")]
    pub event_type: String,
    pub description: String,
    /// JSON Schema (draft 2020-12) of the payload.
    #[schema(value_type = Object)]
    pub schema: Value,
    /// An example payload, valid against `schema`.
    #[schema(value_type = Object)]
    pub example: Value,
}

/// `GET /events/types`
#[derive(Debug, Serialize, ToSchema)]
pub struct EventCatalogueOut {
    pub items: Vec<EventTypeOut>,
    /// Patterns a webhook's `event_type` may also use.
    pub patterns: Vec<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use chrono::{DateTime, TimeZone, Utc};
    use serde_json::json;

    use super::{url_pattern, url_regex};

    /// What the server takes with private targets allowed: the pattern and
    /// the parser.
    fn server_takes(url: &str) -> bool {
        let mut f = crate::extract::Fields::of(Some(json!({})), false)
            .ok()
            .unwrap();
        super::check_url(&mut f, url, true)
    }

    #[test]
    fn the_url_pattern_is_what_the_server_checks() {
        assert!(url_regex().is_some());
        // The document's reading of the pattern (ECMA-262, as validators do).
        let schema =
            jsonschema::validator_for(&json!({"type": "string", "pattern": url_pattern()}))
                .unwrap();
        let taken = [
            "http://example.com",
            "HttP://Example.COM:8080/a/b?c=d&e#frag",
            "https://a",
            "https://my-host.example.com./x",
            "https://a--b.c-d.e",
            "https://xn--caf-dma.example/x",
            "http://1.2.3.4",
            "http://255.255.255.255:65535/",
            "http://0.0.0.0:0",
            "http://1a.b2",
            "http://[::1]/x",
            "http://[::]",
            "http://[2001:db8::8:800:200c:417a]:443",
            "http://[1:2:3:4:5:6:7:8]",
            "http://[1:2:3:4:5:6:7::]",
            "http://[::ffff:127.0.0.1]/x",
            "http://[1:2:3:4:5:6:1.2.3.4]",
            "http://example.com:0080",
            "http://example.com?x",
            "http://example.com#x",
            "https://example.com/a b?c d",
            "https://example.com/%zz/\\..;@:~!$&'()*+,=",
        ];
        for url in taken {
            assert!(schema.is_valid(&json!(url)), "document refuses {url}");
            assert!(server_takes(url), "server refuses {url}");
        }
        let refused = [
            "HttP://x*",
            "http://x_y.com",
            "http://café.example",
            "http://-a.com",
            "http://a-.com",
            "http://a..b",
            "http://123",
            "http://a.0x1",
            "http://01.2.3.4",
            "http://1.2.3.256",
            "http://1.2.3",
            "http://[1:2:3:4:5:6:7:8:9]",
            "http://[1::2::3]",
            "http://[::1%25eth0]",
            "http://[::ffff:1.2.3.04]",
            "http://a:65536",
            "http://a:00080",
            "http://a:",
            "http://a/ ",
            "http://a/\n",
            "http://a/é",
            "http://u:p@a",
            "ftp://a",
            "http:/a",
            "http://",
            " http://a",
        ];
        for url in refused {
            assert!(!schema.is_valid(&json!(url)), "document takes {url:?}");
            assert!(!server_takes(url), "server takes {url:?}");
        }
    }

    #[derive(serde::Serialize)]
    struct Ours(#[serde(serialize_with = "super::rfc3339::ser")] DateTime<Utc>);

    #[test]
    fn timestamps_match_chrono() {
        for nanos in [0, 684_830_000, 500_000_000, 123_456_789, 1_000] {
            let t = Utc.timestamp_opt(1_795_000_000, nanos).unwrap();
            assert_eq!(
                serde_json::to_string(&Ours(t)).unwrap(),
                serde_json::to_string(&t).unwrap()
            );
        }
    }
}

// ------------------------------------------------- recover, replay, retry

// A job's optional fields may be left out but are refused as `null`.

/// `rate_per_s` of a job: at most 10,000 per second.
const RATE_PER_S: Integer = Integer {
    name: "rate_per_s",
    presence: Presence::NotNull,
    min: 1,
    max: 10_000,
};
const SINCE: Plain = Plain {
    name: "since",
    presence: Presence::NotNull,
};
const UNTIL: Plain = Plain {
    name: "until",
    presence: Presence::NotNull,
};

fn job_rate(f: &mut Fields) -> Option<i32> {
    f.int(&RATE_PER_S).and_then(|n| i32::try_from(n).ok())
}

/// `POST /webhooks/{id}/recover`: re-send every event of the window whose
/// last attempt failed (retries exhausted), once per event.
#[derive(Debug, Clone, ToSchema)]
pub struct RecoverIn {
    /// Events whose first attempt was at or after this time (RFC 3339).
    pub since: DateTime<Utc>,
    /// … and before this time; open-ended when absent.
    pub until: Option<DateTime<Utc>>,
    /// Deliveries per second; the server default (`REGISTRY_JOB_DEFAULT_RATE_PER_S`) when absent.
    pub rate_per_s: Option<i32>,
}

impl RecoverIn {
    const SINCE: Plain = Plain {
        presence: Presence::Required,
        ..SINCE
    };
}

impl FromBody for RecoverIn {
    const FIELDS: &'static [Field] = &[
        Field::Plain(Self::SINCE),
        Field::Plain(UNTIL),
        Field::Integer(RATE_PER_S),
    ];

    fn from_body(body: Option<Value>, _rules: &BodyRules) -> Result<Self, Vec<FieldError>> {
        let mut f = Fields::of(body, true)?;
        let since = f.time(&Self::SINCE);
        let until = f.time(&UNTIL);
        let rate_per_s = job_rate(&mut f);
        f.finish()?;
        Ok(RecoverIn {
            since: since.unwrap_or_default(),
            until,
            rate_per_s,
        })
    }
}

/// `POST /webhooks/{id}/replay`: deliver every stored event of the window
/// that the webhook's `event_type` matches, in stream order. The window
/// starts after `since_seq` or at `since` (not both); neither replays
/// everything the stream holds.
#[derive(Debug, Clone, ToSchema)]
pub struct ReplayIn {
    /// Events stored at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Events after this stream sequence (0: from the first one).
    pub since_seq: Option<i64>,
    /// Events stored before this time; open-ended (up to the last event
    /// stored when the job starts) when absent.
    pub until: Option<DateTime<Utc>>,
    /// Deliveries per second; the server default (`REGISTRY_JOB_DEFAULT_RATE_PER_S`) when absent.
    pub rate_per_s: Option<i32>,
}

impl ReplayIn {
    const SINCE_SEQ: Integer = Integer {
        name: "since_seq",
        presence: Presence::NotNull,
        min: 0,
        max: i64::MAX,
    };
}

impl FromBody for ReplayIn {
    const FIELDS: &'static [Field] = &[
        Field::Plain(SINCE),
        Field::Integer(Self::SINCE_SEQ),
        Field::Plain(UNTIL),
        Field::Integer(RATE_PER_S),
    ];

    fn from_body(body: Option<Value>, _rules: &BodyRules) -> Result<Self, Vec<FieldError>> {
        let mut f = Fields::of(body, false)?;
        let since = f.time(&SINCE);
        let since_seq = f.int(&Self::SINCE_SEQ);
        let until = f.time(&UNTIL);
        let rate_per_s = job_rate(&mut f);
        if since.is_some() && since_seq.is_some() {
            f.errors.push(FieldError::value_error(
                &["body"],
                "give either since or since_seq, not both",
            ));
        }
        f.finish()?;
        Ok(ReplayIn {
            since,
            since_seq,
            until,
            rate_per_s,
        })
    }
}

/// Statuses a bulk retry can select.
pub const BULK_RETRY_STATUSES: [DeliveryStatus; 1] = [DeliveryStatus::Failed];

/// `POST /webhooks/{id}/deliveries/retry`: retry every matching failed
/// delivery (the first one of each event in the window), unless a retry
/// of that event is already pending.
#[derive(Debug, Clone, ToSchema)]
pub struct BulkRetryIn {
    /// Deliveries with this status; `failed` when absent.
    #[schema(value_type = Option<String>)]
    pub status: Option<DeliveryStatus>,
    /// Deliveries created at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Deliveries created before this time.
    pub until: Option<DateTime<Utc>>,
    /// Deliveries per second; the server default (`REGISTRY_JOB_DEFAULT_RATE_PER_S`) when absent.
    pub rate_per_s: Option<i32>,
}

impl BulkRetryIn {
    const STATUS: Plain = Plain {
        name: "status",
        presence: Presence::NotNull,
    };
}

impl FromBody for BulkRetryIn {
    const FIELDS: &'static [Field] = &[
        Field::Plain(Self::STATUS),
        Field::Plain(SINCE),
        Field::Plain(UNTIL),
        Field::Integer(RATE_PER_S),
    ];

    fn from_body(body: Option<Value>, _rules: &BodyRules) -> Result<Self, Vec<FieldError>> {
        let mut f = Fields::of(body, false)?;
        let status = f.choice(&Self::STATUS, &BULK_RETRY_STATUSES);
        let since = f.time(&SINCE);
        let until = f.time(&UNTIL);
        let rate_per_s = job_rate(&mut f);
        f.finish()?;
        Ok(BulkRetryIn {
            status,
            since,
            until,
            rate_per_s,
        })
    }
}

/// A recover, replay or bulk retry job.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobOut {
    pub id: i64,
    pub webhook_id: i32,
    /// `recover`, `replay` or `retry`.
    #[schema(value_type = String)]
    pub kind: JobKind,
    /// `queued`, `running`, `paused`, `completed`, `cancelled` or `failed`.
    #[schema(value_type = String)]
    pub status: JobStatus,
    /// Items in the window; `null` until the job started (for a replay an
    /// estimate while it runs, exact once completed).
    pub total: Option<i64>,
    /// Items handled: sent (whatever the outcome) or queued for the worker.
    pub done: i64,
    /// Of those, attempts that failed (a replayed event is then retried on
    /// the webhook's schedule).
    pub failed: i64,
    /// Replay only: stream sequences of the window the stream no longer
    /// holds (events of any type; they cannot be replayed).
    pub unavailable: Option<i64>,
    pub rate_per_s: i32,
    #[serde(serialize_with = "rfc3339::ser_opt")]
    pub since: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339::ser_opt")]
    pub until: Option<DateTime<Utc>>,
    pub since_seq: Option<i64>,
    /// Bulk retry: the delivery status it selects.
    #[schema(value_type = Option<String>)]
    pub delivery_status: Option<DeliveryStatus>,
    /// Why a job failed.
    pub error: Option<String>,
    #[serde(serialize_with = "rfc3339::ser")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339::ser_opt")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339::ser_opt")]
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<storage::jobs::Job> for JobOut {
    fn from(j: storage::jobs::Job) -> Self {
        let is_replay = j.kind == JobKind::Replay;
        Self {
            id: j.id,
            webhook_id: j.webhook_id,
            kind: j.kind,
            status: j.status,
            total: j.total,
            done: j.done,
            failed: j.failed,
            unavailable: is_replay.then_some(j.unavailable),
            rate_per_s: j.rate_per_s,
            since: j.since,
            until: j.until,
            since_seq: j.since_seq,
            delivery_status: j.delivery_status,
            error: j.error,
            created_at: j.created_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
        }
    }
}

/// `GET /webhooks/{id}/jobs`
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    pub items: Vec<JobOut>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}
