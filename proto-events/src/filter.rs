//! Webhook filters: a small JSON language over an event's payload.
//!
//! A webhook may carry a filter; the delivery worker sends it an event only
//! when the filter matches the event's `payload` (the object under
//! `payload` in the envelope, not the envelope itself). The event-type
//! patterns ([`crate::Pattern`]) are checked first; a filter narrows further.
//! A filter is parsed once, when the webhook is loaded ([`Filter::parse`]);
//! [`Filter::matches`] then runs for every event without allocating.
//!
//! # The language
//!
//! A filter is a JSON object of exactly one of these forms:
//!
//! | form | matches when |
//! |---|---|
//! | `{"and": [F, ...]}` | every `F` matches (1 to 32 filters) |
//! | `{"or": [F, ...]}` | at least one `F` matches (1 to 32 filters) |
//! | `{"not": F}` | `F` does not match |
//! | `{"path": P, OP: operand}` | the condition holds (below) |
//!
//! A condition has `path` and exactly one operator:
//!
//! | operator | operand | true when |
//! |---|---|---|
//! | `eq` | a scalar | the field equals the operand |
//! | `ne` | a scalar | the field is missing or does not equal the operand |
//! | `in` | 1 to 100 scalars | the field equals one of them |
//! | `gt`, `gte`, `lt`, `lte` | a number | the field is a number `>`, `>=`, `<`, `<=` the operand |
//! | `exists` | `true` or `false` | `true`: the path leads to a value (`null` counts); `false`: it does not |
//!
//! - **Scalars** are strings, numbers, `true`, `false` and `null`. Values of
//!   different JSON types are never equal: `"1"` is not `1`, `false` is not
//!   `null`. A field that is an object or an array equals no scalar.
//! - **Numbers** compare by value: `1` equals `1.0`, `-0.5 < 0`. Two
//!   integers compare exactly at any size JSON allows (beyond 2^53 too); an
//!   integer and a fraction compare exactly as well.
//! - **Missing fields**: `eq`, `in` and the comparisons are false, `ne` is
//!   true, `exists: false` is true. A field that is present but not a number
//!   makes `gt`, `gte`, `lt` and `lte` false (so `{"not": {"path": "x",
//!   "gt": 5}}` matches when `x` is missing).
//! - **`path`** is a string of keys separated by dots, walked from the
//!   payload object: `user.id` is `payload["user"]["id"]`. It has 1 to 10
//!   segments of 1 to 64 characters each. A segment made only of ASCII
//!   digits also indexes an array (`items.0.price` is the first item's
//!   price; `01` is the same index as `1`); on an object it is an ordinary
//!   key. There is no escaping: a key that itself contains a dot cannot be
//!   reached.
//! - **Limits**: filters nest at most 32 levels deep (a bare condition is
//!   level 1, a condition inside `and` is level 2) and hold at most 4,096
//!   conditions and operators (`and`, `or`, `not`) in total, more than the
//!   registry's request body can carry.
//! - **Strictness**: unknown keys, extra keys, two forms in one object and
//!   operands of the wrong type are refused, each with the location of the
//!   offending part inside the filter ([`FilterError::path`]), such as
//!   `["and", 1, "gte"]`.
//!
//! Example: only deposits of at least 1,000 roubles, for a webhook
//! subscribed to `payment.completed` (whose payload has `type` and the
//! integer `amount_kopeks`):
//!
//! ```json
//! {"and": [{"path": "type", "eq": "deposit"}, {"path": "amount_kopeks", "gte": 100000}]}
//! ```
//!
//! [`Filter::to_value`] gives the canonical form: the same document with
//! each object's keys as above, which parses back to an equal filter.

use std::cmp::Ordering;
use std::fmt;

use serde_json::{Map, Number, Value};

/// How deep filters nest; a bare condition is level 1. Deeper than any
/// filter a person writes, and far inside serde_json's own limit.
pub const MAX_DEPTH: usize = 32;
/// Conditions and operators (`and`, `or`, `not`) in one filter: more than
/// the registry's request body (64 KiB by default) can hold, so in practice
/// the body limit bounds a filter's size, and the API's schema, which can
/// state depth and list lengths but not a count over the whole tree, says
/// exactly what is taken.
pub const MAX_NODES: usize = 4096;
/// Filters in one `and` or `or`.
pub const MAX_ITEMS: usize = 32;
/// Values in one `in`.
pub const MAX_IN_VALUES: usize = 100;
/// Segments of one `path`.
pub const MAX_PATH_SEGMENTS: usize = 10;
/// Characters of one `path` segment.
pub const MAX_SEGMENT_CHARS: usize = 64;

/// The operators of a condition, in the order the messages list them.
const OPERATORS: [&str; 8] = ["eq", "ne", "in", "gt", "gte", "lt", "lte", "exists"];

/// A parsed filter over an event's payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    root: Node,
}

/// A refused filter: where in the filter document, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    /// The location of the offending part inside the filter, from its root:
    /// `["and", 1, "gte"]`. Empty when the whole filter is at fault.
    pub path: Vec<FilterPathItem>,
    /// What is wrong, for a person.
    pub message: String,
}

/// One step of a [`FilterError::path`]. Serializes as a bare string or
/// number, so it can extend an API error's `loc` list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(untagged)]
pub enum FilterPathItem {
    /// A key of an object.
    Key(String),
    /// A position in an array.
    Index(usize),
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
    Condition(Condition),
}

#[derive(Debug, Clone, PartialEq)]
struct Condition {
    path: Vec<Segment>,
    op: Op,
}

/// One key of a `path`, with its value as an array index when it is all
/// digits.
#[derive(Debug, Clone, PartialEq)]
struct Segment {
    key: String,
    index: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Eq(Scalar),
    Ne(Scalar),
    In(Vec<Scalar>),
    Compare(Comparison, Num),
    Exists(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Gt,
    Gte,
    Lt,
    Lte,
}

#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    Null,
    Bool(bool),
    Num(Num),
    Str(String),
}

/// A JSON number as the filter compares it: integers (whatever serde_json
/// holds as `u64` or `i64`) exactly, everything else as `f64`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Int(i128),
    Float(f64),
}

impl Filter {
    /// Parses a filter document (see the module documentation).
    pub fn parse(v: &Value) -> Result<Filter, FilterError> {
        let mut parser = Parser {
            loc: Vec::new(),
            nodes: 0,
        };
        Ok(Filter {
            root: parser.node(v, 1)?,
        })
    }

    /// Whether an event with this payload passes the filter.
    pub fn matches(&self, payload: &Map<String, Value>) -> bool {
        self.root.matches(payload)
    }

    /// The canonical JSON form; [`Filter::parse`] gives back an equal
    /// filter.
    pub fn to_value(&self) -> Value {
        self.root.to_value()
    }
}

impl serde::Serialize for Filter {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for Filter {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(deserializer)?;
        Filter::parse(&v).map_err(serde::de::Error::custom)
    }
}

impl Node {
    fn matches(&self, payload: &Map<String, Value>) -> bool {
        match self {
            Node::And(items) => items.iter().all(|n| n.matches(payload)),
            Node::Or(items) => items.iter().any(|n| n.matches(payload)),
            Node::Not(inner) => !inner.matches(payload),
            Node::Condition(c) => c.matches(payload),
        }
    }

    fn to_value(&self) -> Value {
        let mut obj = Map::new();
        match self {
            Node::And(items) => {
                obj.insert("and".into(), items.iter().map(Node::to_value).collect());
            }
            Node::Or(items) => {
                obj.insert("or".into(), items.iter().map(Node::to_value).collect());
            }
            Node::Not(inner) => {
                obj.insert("not".into(), inner.to_value());
            }
            Node::Condition(c) => {
                let path = c
                    .path
                    .iter()
                    .map(|s| s.key.as_str())
                    .collect::<Vec<_>>()
                    .join(".");
                obj.insert("path".into(), Value::String(path));
                let (name, operand) = match &c.op {
                    Op::Eq(s) => ("eq", s.to_value()),
                    Op::Ne(s) => ("ne", s.to_value()),
                    Op::In(list) => ("in", list.iter().map(Scalar::to_value).collect()),
                    Op::Compare(cmp, n) => (cmp.name(), n.to_value()),
                    Op::Exists(b) => ("exists", Value::Bool(*b)),
                };
                obj.insert(name.into(), operand);
            }
        }
        Value::Object(obj)
    }
}

impl Condition {
    fn matches(&self, payload: &Map<String, Value>) -> bool {
        let field = resolve(&self.path, payload);
        match &self.op {
            Op::Eq(s) => field.is_some_and(|v| s.equals(v)),
            Op::Ne(s) => !field.is_some_and(|v| s.equals(v)),
            Op::In(list) => field.is_some_and(|v| list.iter().any(|s| s.equals(v))),
            Op::Compare(cmp, operand) => match field {
                Some(Value::Number(n)) => Num::of(n)
                    .and_then(|n| n.compare(*operand))
                    .is_some_and(|o| cmp.holds(o)),
                _ => false,
            },
            Op::Exists(want) => field.is_some() == *want,
        }
    }
}

/// Walks `path` from the payload; `None` when a step is missing.
fn resolve<'a>(path: &[Segment], payload: &'a Map<String, Value>) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut here = payload.get(first.key.as_str())?;
    for segment in rest {
        here = match here {
            Value::Object(obj) => obj.get(segment.key.as_str())?,
            Value::Array(items) => items.get(segment.index?)?,
            _ => return None,
        };
    }
    Some(here)
}

impl Comparison {
    fn parse(name: &str) -> Option<Comparison> {
        Some(match name {
            "gt" => Comparison::Gt,
            "gte" => Comparison::Gte,
            "lt" => Comparison::Lt,
            "lte" => Comparison::Lte,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Comparison::Gt => "gt",
            Comparison::Gte => "gte",
            Comparison::Lt => "lt",
            Comparison::Lte => "lte",
        }
    }

    /// Whether `field <op> operand` holds, given how field compares to
    /// operand.
    fn holds(self, o: Ordering) -> bool {
        match self {
            Comparison::Gt => o == Ordering::Greater,
            Comparison::Gte => o != Ordering::Less,
            Comparison::Lt => o == Ordering::Less,
            Comparison::Lte => o != Ordering::Greater,
        }
    }
}

impl Scalar {
    fn equals(&self, v: &Value) -> bool {
        match (self, v) {
            (Scalar::Null, Value::Null) => true,
            (Scalar::Bool(a), Value::Bool(b)) => a == b,
            (Scalar::Str(a), Value::String(b)) => a == b,
            (Scalar::Num(a), Value::Number(b)) => {
                Num::of(b).and_then(|b| b.compare(*a)) == Some(Ordering::Equal)
            }
            _ => false,
        }
    }

    fn to_value(&self) -> Value {
        match self {
            Scalar::Null => Value::Null,
            Scalar::Bool(b) => Value::Bool(*b),
            Scalar::Num(n) => n.to_value(),
            Scalar::Str(s) => Value::String(s.clone()),
        }
    }
}

impl Num {
    fn of(n: &Number) -> Option<Num> {
        if let Some(u) = n.as_u64() {
            Some(Num::Int(i128::from(u)))
        } else if let Some(i) = n.as_i64() {
            Some(Num::Int(i128::from(i)))
        } else {
            n.as_f64().filter(|f| f.is_finite()).map(Num::Float)
        }
    }

    /// `self` against `other`; `None` only for NaN, which JSON cannot carry.
    fn compare(self, other: Num) -> Option<Ordering> {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => Some(a.cmp(&b)),
            (Num::Float(a), Num::Float(b)) => a.partial_cmp(&b),
            (Num::Int(a), Num::Float(b)) => int_against_float(a, b),
            (Num::Float(a), Num::Int(b)) => int_against_float(b, a).map(Ordering::reverse),
        }
    }

    fn to_value(self) -> Value {
        match self {
            Num::Int(i) => {
                if let Ok(i) = i64::try_from(i) {
                    Value::from(i)
                } else if let Ok(u) = u64::try_from(i) {
                    Value::from(u)
                } else {
                    // Parsed integers fit in i64 or u64.
                    Value::Null
                }
            }
            // Parsed floats are finite, so this is never null.
            Num::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        }
    }
}

/// An integer against a float, exactly: the float's whole part against the
/// integer, then its fraction against zero.
fn int_against_float(i: i128, f: f64) -> Option<Ordering> {
    // 2^127, exact in f64; every i128 lies in [-2^127, 2^127).
    const BOUND: f64 = i128::MAX as f64;
    if f.is_nan() {
        return None;
    }
    if f >= BOUND {
        return Some(Ordering::Less);
    }
    if f < -BOUND {
        return Some(Ordering::Greater);
    }
    let whole = f.trunc();
    // `whole` is integral and within i128, so the cast is exact.
    match i.cmp(&(whole as i128)) {
        Ordering::Equal => 0.0_f64.partial_cmp(&(f - whole)),
        o => Some(o),
    }
}

/// The parse of one document: where it is, and how many nodes so far.
struct Parser {
    loc: Vec<FilterPathItem>,
    nodes: usize,
}

impl Parser {
    fn error(&self, message: impl Into<String>) -> FilterError {
        FilterError {
            path: self.loc.clone(),
            message: message.into(),
        }
    }

    /// Runs `f` one step deeper into the document.
    fn at<T>(
        &mut self,
        item: FilterPathItem,
        f: impl FnOnce(&mut Self) -> Result<T, FilterError>,
    ) -> Result<T, FilterError> {
        self.loc.push(item);
        let result = f(self);
        self.loc.pop();
        result
    }

    fn error_at(&mut self, key: &str, message: impl Into<String>) -> FilterError {
        self.loc.push(FilterPathItem::Key(key.to_owned()));
        let e = self.error(message);
        self.loc.pop();
        e
    }

    fn node(&mut self, v: &Value, depth: usize) -> Result<Node, FilterError> {
        if depth > MAX_DEPTH {
            return Err(self.error(format!("filters nest at most {MAX_DEPTH} levels deep")));
        }
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(self.error(format!(
                "a filter holds at most {MAX_NODES} conditions and operators (and, or, not)"
            )));
        }
        let Value::Object(obj) = v else {
            return Err(self.error(format!(
                "a filter is an object: {{\"and\": [...]}}, {{\"or\": [...]}}, {{\"not\": ...}} \
                 or a condition such as {{\"path\": \"type\", \"eq\": \"deposit\"}}; found {}",
                kind(v)
            )));
        };

        let mut logical = Vec::new();
        let mut ops = Vec::new();
        let mut has_path = false;
        let mut unknown = None;
        for key in obj.keys() {
            match key.as_str() {
                "and" | "or" | "not" => logical.push(key.as_str()),
                "path" => has_path = true,
                k if OPERATORS.contains(&k) => ops.push(k),
                k => {
                    unknown.get_or_insert(k);
                }
            }
        }

        if let Some(key) = unknown {
            let expected = if has_path || !ops.is_empty() {
                "a condition has `path` and one of eq, ne, in, gt, gte, lt, lte, exists"
            } else {
                "expected one of and, or, not, path"
            };
            return Err(self.error_at(key, format!("unknown key `{key}`; {expected}")));
        }
        if let [first, second, ..] = logical[..] {
            return Err(self.error_at(
                second,
                format!(
                    "`{first}` and `{second}` cannot share an object; nest one inside the other"
                ),
            ));
        }
        if let [form] = logical[..] {
            if let Some(other) = has_path.then_some("path").or(ops.first().copied()) {
                return Err(self.error_at(
                    other,
                    format!(
                        "`{other}` cannot share an object with `{form}`; \
                         an object is either and, or, not or a condition"
                    ),
                ));
            }
            let operand = &obj[form];
            return self.at(FilterPathItem::Key(form.to_owned()), |p| match form {
                "and" => p.list(form, operand, depth).map(Node::And),
                "or" => p.list(form, operand, depth).map(Node::Or),
                _ => p.node(operand, depth + 1).map(|n| Node::Not(Box::new(n))),
            });
        }
        match (has_path, &ops[..]) {
            (true, [op]) => {
                let path = self.at(FilterPathItem::Key("path".into()), |p| {
                    p.field_path(&obj["path"])
                })?;
                let op = self.at(FilterPathItem::Key((*op).to_owned()), |p| {
                    p.operator(op, &obj[*op])
                })?;
                Ok(Node::Condition(Condition { path, op }))
            }
            (true, []) => Err(self
                .error("a condition needs one operator: eq, ne, in, gt, gte, lt, lte or exists")),
            (true, [first, second, ..]) => Err(self.error_at(
                second,
                format!("a condition has exactly one operator; found `{first}` and `{second}`"),
            )),
            (false, [op, ..]) => Err(self.error(format!(
                "`{op}` needs a `path` beside it: {{\"path\": \"type\", \"{op}\": ...}}"
            ))),
            (false, []) => {
                Err(self
                    .error("an empty object is not a filter; expected one of and, or, not, path"))
            }
        }
    }

    /// The filters of an `and` or an `or`; `self.loc` is at the list.
    fn list(&mut self, form: &str, v: &Value, depth: usize) -> Result<Vec<Node>, FilterError> {
        let Value::Array(items) = v else {
            return Err(self.error(format!(
                "`{form}` needs an array of 1 to {MAX_ITEMS} filters; found {}",
                kind(v)
            )));
        };
        if items.is_empty() {
            return Err(self.error(format!("`{form}` needs at least one filter")));
        }
        if items.len() > MAX_ITEMS {
            return Err(self.error(format!(
                "`{form}` takes at most {MAX_ITEMS} filters; found {}",
                items.len()
            )));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| self.at(FilterPathItem::Index(i), |p| p.node(item, depth + 1)))
            .collect()
    }

    /// A condition's `path`; `self.loc` is at it.
    fn field_path(&self, v: &Value) -> Result<Vec<Segment>, FilterError> {
        let Value::String(s) = v else {
            return Err(self.error(format!(
                "`path` needs a string of dot-separated keys such as \"user.id\"; found {}",
                kind(v)
            )));
        };
        if s.is_empty() {
            return Err(self.error("`path` is empty; it names a field such as \"user.id\""));
        }
        let count = s.split('.').count();
        if count > MAX_PATH_SEGMENTS {
            return Err(self.error(format!(
                "`path` has at most {MAX_PATH_SEGMENTS} segments; found {count}"
            )));
        }
        s.split('.')
            .enumerate()
            .map(|(i, key)| {
                let n = i + 1;
                if key.is_empty() {
                    return Err(self.error(format!(
                        "`path` segment {n} is empty; keys are separated by single dots"
                    )));
                }
                let chars = key.chars().count();
                if chars > MAX_SEGMENT_CHARS {
                    return Err(self.error(format!(
                        "`path` segment {n} has {chars} characters; at most {MAX_SEGMENT_CHARS}"
                    )));
                }
                let index = if key.bytes().all(|b| b.is_ascii_digit()) {
                    key.parse().ok()
                } else {
                    None
                };
                Ok(Segment {
                    key: key.to_owned(),
                    index,
                })
            })
            .collect()
    }

    /// A condition's operator and operand; `self.loc` is at the operand.
    fn operator(&mut self, name: &str, v: &Value) -> Result<Op, FilterError> {
        if let Some(cmp) = Comparison::parse(name) {
            return match v {
                Value::Number(n) => Num::of(n)
                    .map(|n| Op::Compare(cmp, n))
                    .ok_or_else(|| self.error(format!("`{name}` needs a finite number"))),
                _ => Err(self.error(format!("`{name}` needs a number; found {}", kind(v)))),
            };
        }
        match name {
            "eq" => self.scalar(name, v).map(Op::Eq),
            "ne" => self.scalar(name, v).map(Op::Ne),
            "exists" => match v {
                Value::Bool(b) => Ok(Op::Exists(*b)),
                _ => Err(self.error(format!("`exists` needs true or false; found {}", kind(v)))),
            },
            _ => {
                let Value::Array(items) = v else {
                    return Err(self.error(format!(
                        "`in` needs an array of 1 to {MAX_IN_VALUES} strings, numbers, \
                         booleans or nulls; found {}",
                        kind(v)
                    )));
                };
                if items.is_empty() {
                    return Err(self.error("`in` needs at least one value"));
                }
                if items.len() > MAX_IN_VALUES {
                    return Err(self.error(format!(
                        "`in` takes at most {MAX_IN_VALUES} values; found {}",
                        items.len()
                    )));
                }
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.at(FilterPathItem::Index(i), |p| p.scalar("in", item)))
                    .collect::<Result<_, _>>()
                    .map(Op::In)
            }
        }
    }

    fn scalar(&self, name: &str, v: &Value) -> Result<Scalar, FilterError> {
        Ok(match v {
            Value::Null => Scalar::Null,
            Value::Bool(b) => Scalar::Bool(*b),
            Value::String(s) => Scalar::Str(s.clone()),
            Value::Number(n) => Num::of(n)
                .map(Scalar::Num)
                .ok_or_else(|| self.error(format!("`{name}` needs a finite number")))?,
            Value::Array(_) | Value::Object(_) => {
                return Err(self.error(format!(
                    "`{name}` compares with a string, number, boolean or null; found {}",
                    kind(v)
                )));
            }
        })
    }
}

/// A JSON type, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl fmt::Display for FilterPathItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilterPathItem::Key(k) => f.write_str(k),
            FilterPathItem::Index(i) => write!(f, "{i}"),
        }
    }
}

impl fmt::Display for FilterError {
    /// `and.1.gte: `gte` needs a number; found a string`, or the message
    /// alone when the whole filter is at fault.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, item) in self.path.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{item}")?;
        }
        if !self.path.is_empty() {
            f.write_str(": ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for FilterError {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::json;

    fn filter(v: Value) -> Filter {
        Filter::parse(&v).unwrap_or_else(|e| panic!("{v}: {e}"))
    }

    fn payload(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(obj) => obj,
            _ => panic!("a payload is an object"),
        }
    }

    /// Whether `{"path": path, op: operand}` matches `p`.
    fn holds(p: &Value, path: &str, op: &str, operand: Value) -> bool {
        let mut cond = Map::new();
        cond.insert("path".into(), path.into());
        cond.insert(op.into(), operand);
        filter(Value::Object(cond)).matches(&payload(p.clone()))
    }

    fn error(v: Value) -> FilterError {
        match Filter::parse(&v) {
            Ok(f) => panic!("{v} parsed as {f:?}"),
            Err(e) => e,
        }
    }

    fn loc(items: Value) -> Vec<FilterPathItem> {
        items
            .as_array()
            .unwrap()
            .iter()
            .map(|i| match i {
                Value::String(s) => FilterPathItem::Key(s.clone()),
                Value::Number(n) => FilterPathItem::Index(n.as_u64().unwrap() as usize),
                _ => panic!("a location is keys and indexes"),
            })
            .collect()
    }

    #[test]
    fn contract_example() {
        let f = filter(json!({"and": [
            {"path": "type", "eq": "deposit"},
            {"path": "amount_kopeks", "gte": 100000}
        ]}));
        assert!(f.matches(&payload(
            json!({"type": "deposit", "amount_kopeks": 100000})
        )));
        assert!(f.matches(&payload(
            json!({"type": "deposit", "amount_kopeks": 250000})
        )));
        assert!(!f.matches(&payload(json!({"type": "deposit", "amount_kopeks": 99999}))));
        assert!(!f.matches(&payload(
            json!({"type": "withdrawal", "amount_kopeks": 500000})
        )));
        assert!(!f.matches(&payload(json!({"type": "deposit"}))));
        assert!(!f.matches(&payload(
            json!({"type": "deposit", "amount_kopeks": "100000"})
        )));
    }

    #[test]
    fn eq_compares_scalars_of_the_same_type() {
        let p =
            json!({"s": "a", "n": 5, "t": true, "f": false, "z": null, "o": {"a": 1}, "l": [1]});
        assert!(holds(&p, "s", "eq", json!("a")));
        assert!(!holds(&p, "s", "eq", json!("b")));
        assert!(holds(&p, "n", "eq", json!(5)));
        assert!(!holds(&p, "n", "eq", json!("5")));
        assert!(!holds(&p, "s", "eq", json!(5)));
        assert!(holds(&p, "t", "eq", json!(true)));
        assert!(!holds(&p, "t", "eq", json!(false)));
        assert!(holds(&p, "f", "eq", json!(false)));
        assert!(!holds(&p, "f", "eq", Value::Null));
        assert!(holds(&p, "z", "eq", Value::Null));
        assert!(!holds(&p, "z", "eq", json!(false)));
        assert!(!holds(&p, "z", "eq", json!(0)));
        assert!(!holds(&p, "z", "eq", json!("")));
        assert!(!holds(&p, "missing", "eq", Value::Null));
        assert!(!holds(&p, "missing", "eq", json!("a")));
        assert!(!holds(&p, "o", "eq", json!(1)));
        assert!(!holds(&p, "l", "eq", json!(1)));
    }

    #[test]
    fn ne_is_true_when_missing_or_different() {
        let p = json!({"s": "a", "z": null, "o": {}});
        assert!(!holds(&p, "s", "ne", json!("a")));
        assert!(holds(&p, "s", "ne", json!("b")));
        assert!(holds(&p, "s", "ne", json!(1)));
        assert!(holds(&p, "missing", "ne", json!("a")));
        assert!(holds(&p, "missing", "ne", Value::Null));
        assert!(!holds(&p, "z", "ne", Value::Null));
        assert!(holds(&p, "z", "ne", json!("a")));
        assert!(holds(&p, "o", "ne", Value::Null));
    }

    #[test]
    fn in_matches_any_value() {
        let p = json!({"status": "open", "n": 2, "z": null, "l": ["open"]});
        let statuses = json!(["open", "pending"]);
        assert!(holds(&p, "status", "in", statuses.clone()));
        assert!(!holds(&p, "status", "in", json!(["closed"])));
        assert!(!holds(&p, "missing", "in", statuses.clone()));
        assert!(!holds(&p, "l", "in", statuses));
        assert!(holds(&p, "n", "in", json!(["2", 1, 2.0])));
        assert!(!holds(&p, "n", "in", json!(["2", 1, 3])));
        assert!(holds(&p, "z", "in", json!([1, null])));
        assert!(!holds(&p, "z", "in", json!([1, false])));
    }

    #[test]
    fn comparisons() {
        let p = json!({"n": 10, "f": 2.5, "s": "10", "z": null, "b": true, "l": [10]});
        for (op, below, at, above) in [
            ("gt", false, false, true),
            ("gte", false, true, true),
            ("lt", true, false, false),
            ("lte", true, true, false),
        ] {
            // The field (10) against operands 11, 10 and 9.
            assert_eq!(holds(&p, "n", op, json!(11)), below, "{op} 11");
            assert_eq!(holds(&p, "n", op, json!(10)), at, "{op} 10");
            assert_eq!(holds(&p, "n", op, json!(9)), above, "{op} 9");
            assert_eq!(holds(&p, "n", op, json!(10.5)), below, "{op} 10.5");
            assert_eq!(holds(&p, "n", op, json!(10.0)), at, "{op} 10.0");
            assert_eq!(holds(&p, "f", op, json!(3)), below, "{op} 3 on 2.5");
            assert_eq!(holds(&p, "f", op, json!(2.5)), at, "{op} 2.5 on 2.5");
            for not_a_number in ["s", "z", "b", "l", "missing"] {
                assert!(
                    !holds(&p, not_a_number, op, json!(0)),
                    "{op} on {not_a_number}"
                );
                assert!(
                    !holds(&p, not_a_number, op, json!(100)),
                    "{op} on {not_a_number}"
                );
            }
        }
    }

    #[test]
    fn exists_counts_null_as_present() {
        let p = json!({"z": null, "a": {"b": 0}, "l": []});
        for (path, present) in [
            ("z", true),
            ("a", true),
            ("a.b", true),
            ("a.c", false),
            ("a.b.c", false),
            ("l", true),
            ("l.0", false),
            ("missing", false),
        ] {
            assert_eq!(holds(&p, path, "exists", json!(true)), present, "{path}");
            assert_eq!(holds(&p, path, "exists", json!(false)), !present, "{path}");
        }
    }

    #[test]
    fn numbers_compare_by_value() {
        let p = json!({
            "one": 1, "one_f": 1.0, "neg": -3, "neg_f": -3.5, "zero_f": -0.0,
            "big": 9007199254740993_u64, "max": u64::MAX, "min": i64::MIN,
        });
        assert!(holds(&p, "one", "eq", json!(1.0)));
        assert!(holds(&p, "one_f", "eq", json!(1)));
        assert!(!holds(&p, "one", "ne", json!(1.0)));
        assert!(holds(&p, "zero_f", "eq", json!(0)));
        assert!(holds(&p, "neg", "lt", json!(-2)));
        assert!(holds(&p, "neg", "gt", json!(-3.5)));
        assert!(holds(&p, "neg_f", "lt", json!(-3)));
        assert!(holds(&p, "neg_f", "gt", json!(-4)));
        assert!(holds(&p, "neg_f", "eq", json!(-3.5)));
        // 2^53 + 1 is not 2^53, though both are 2^53 as f64.
        assert!(holds(&p, "big", "eq", json!(9007199254740993_u64)));
        assert!(!holds(&p, "big", "eq", json!(9007199254740992_u64)));
        assert!(holds(&p, "big", "gt", json!(9007199254740992_u64)));
        assert!(holds(&p, "max", "eq", json!(u64::MAX)));
        assert!(holds(&p, "max", "gt", json!(u64::MAX - 1)));
        assert!(holds(&p, "max", "gt", json!(i64::MAX)));
        assert!(holds(&p, "min", "eq", json!(i64::MIN)));
        assert!(holds(&p, "min", "lt", json!(i64::MIN + 1)));
        assert!(holds(&p, "min", "lt", json!(u64::MAX)));
        // An integer against a fraction is exact too: 2^53 + 1 is above
        // the float 2^53 and below 2^53 + 2.
        assert!(holds(&p, "big", "gt", json!(9007199254740992.0)));
        assert!(holds(&p, "big", "lt", json!(9007199254740994.0)));
        assert!(holds(&p, "max", "lt", json!(18446744073709551616.0)));
        assert!(holds(&p, "max", "lt", json!(1e300)));
        assert!(holds(&p, "min", "gt", json!(-1e300)));
        assert!(holds(&p, "one", "gt", json!(0.999999)));
        assert!(holds(&p, "neg", "gt", json!(-3.000001)));
    }

    #[test]
    fn int_against_float_agrees_with_f64_where_f64_is_exact() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..10_000 {
            let i: i64 = rng.random_range(-1_000_000..1_000_000);
            let f: f64 = match rng.random_range(0..3) {
                0 => f64::from(rng.random_range(-1_000_000..1_000_000)),
                1 => rng.random_range(-1e6..1e6),
                _ => i as f64 + rng.random_range(-1.0..1.0),
            };
            assert_eq!(
                int_against_float(i128::from(i), f),
                (i as f64).partial_cmp(&f),
                "{i} against {f}"
            );
        }
        assert_eq!(
            int_against_float(i128::MAX, 2f64.powi(127)),
            Some(Ordering::Less)
        );
        assert_eq!(
            int_against_float(i128::MIN, -(2f64.powi(127))),
            Some(Ordering::Equal)
        );
        assert_eq!(int_against_float(0, f64::NAN), None);
    }

    #[test]
    fn paths_walk_objects_and_arrays() {
        let p = json!({
            "items": [{"price": 10}, {"price": 20}],
            "by_id": {"0": "zero", "7": "seven"},
            "user": {"id": 42, "tags": ["vip", "new"]},
            "deep": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}},
        });
        assert!(holds(&p, "items.0.price", "eq", json!(10)));
        assert!(holds(&p, "items.1.price", "eq", json!(20)));
        assert!(holds(&p, "items.01.price", "eq", json!(20)));
        assert!(!holds(&p, "items.2.price", "exists", json!(true)));
        assert!(!holds(&p, "items.price", "exists", json!(true)));
        assert!(!holds(&p, "items.-1.price", "exists", json!(true)));
        assert!(!holds(
            &p,
            "items.99999999999999999999999",
            "exists",
            json!(true)
        ));
        assert!(holds(&p, "by_id.0", "eq", json!("zero")));
        assert!(holds(&p, "by_id.7", "eq", json!("seven")));
        assert!(!holds(&p, "by_id.07", "exists", json!(true)));
        assert!(holds(&p, "user.tags.1", "eq", json!("new")));
        assert!(!holds(&p, "user.id.0", "exists", json!(true)));
        assert!(!holds(&p, "user.tags.0.x", "exists", json!(true)));
        assert!(holds(&p, "deep.a.b.c.d.e.f.g.h.i", "eq", json!(1)));
        // A dotted key cannot be reached.
        let dotted = json!({"a.b": 1});
        assert!(!holds(&dotted, "a.b", "exists", json!(true)));
    }

    #[test]
    fn and_or_not_nest() {
        let p = payload(json!({"type": "deposit", "amount": 500, "user": {"vip": true}}));
        let t = json!({"path": "type", "eq": "deposit"});
        let f = json!({"path": "amount", "gt": 1000});
        let cases = [
            (json!({"and": [t.clone()]}), true),
            (json!({"and": [t.clone(), f.clone()]}), false),
            (json!({"or": [f.clone()]}), false),
            (json!({"or": [f.clone(), t.clone()]}), true),
            (json!({"not": t.clone()}), false),
            (json!({"not": f.clone()}), true),
            (json!({"not": {"not": t.clone()}}), true),
            (
                json!({"or": [
                    {"and": [t.clone(), f.clone()]},
                    {"and": [t.clone(), {"path": "user.vip", "eq": true}]}
                ]}),
                true,
            ),
            (
                json!({"and": [{"or": [f.clone(), {"not": t.clone()}]}, t.clone()]}),
                false,
            ),
        ];
        for (doc, want) in cases {
            assert_eq!(filter(doc.clone()).matches(&p), want, "{doc}");
        }
    }

    #[test]
    fn errors_name_their_location() {
        let cases = [
            (json!([]), json!([]), "a filter is an object"),
            (json!("x"), json!([]), "found a string"),
            (
                json!({}),
                json!([]),
                "an empty object is not a filter; expected one of and, or, not, path",
            ),
            (
                json!({"foo": 1}),
                json!(["foo"]),
                "unknown key `foo`; expected one of and, or, not, path",
            ),
            (
                json!({"path": "a", "eq": 1, "foo": 1}),
                json!(["foo"]),
                "unknown key `foo`; a condition has `path` and one of eq, ne, in, gt, gte, lt, lte, exists",
            ),
            (
                json!({"and": [{"path": "a", "eq": 1}], "or": [{"path": "a", "eq": 1}]}),
                json!(["or"]),
                "`and` and `or` cannot share an object",
            ),
            (
                json!({"and": [{"path": "a", "eq": 1}], "path": "a"}),
                json!(["path"]),
                "`path` cannot share an object with `and`",
            ),
            (
                json!({"not": {"path": "a", "eq": 1}, "eq": 1}),
                json!(["eq"]),
                "`eq` cannot share an object with `not`",
            ),
            (
                json!({"path": "a", "eq": 1, "gt": 2}),
                json!(["gt"]),
                "a condition has exactly one operator; found `eq` and `gt`",
            ),
            (
                json!({"path": "a"}),
                json!([]),
                "a condition needs one operator",
            ),
            (json!({"eq": 1}), json!([]), "`eq` needs a `path` beside it"),
            (
                json!({"and": {}}),
                json!(["and"]),
                "`and` needs an array of 1 to 32 filters; found an object",
            ),
            (
                json!({"or": []}),
                json!(["or"]),
                "`or` needs at least one filter",
            ),
            (json!({"not": []}), json!(["not"]), "a filter is an object"),
            (json!({"not": null}), json!(["not"]), "found null"),
            (
                json!({"and": [{"path": "a", "eq": 1}, {"path": "b", "gte": "100"}]}),
                json!(["and", 1, "gte"]),
                "`gte` needs a number; found a string",
            ),
            (
                json!({"or": [{"not": {"and": [{"path": "a", "lt": null}]}}]}),
                json!(["or", 0, "not", "and", 0, "lt"]),
                "`lt` needs a number; found null",
            ),
            (
                json!({"path": "a", "gt": true}),
                json!(["gt"]),
                "`gt` needs a number; found a boolean",
            ),
            (
                json!({"path": "a", "lte": [1]}),
                json!(["lte"]),
                "`lte` needs a number; found an array",
            ),
            (
                json!({"path": "a", "eq": [1]}),
                json!(["eq"]),
                "`eq` compares with a string, number, boolean or null; found an array",
            ),
            (
                json!({"path": "a", "ne": {}}),
                json!(["ne"]),
                "`ne` compares with a string, number, boolean or null; found an object",
            ),
            (
                json!({"path": "a", "in": 1}),
                json!(["in"]),
                "`in` needs an array of 1 to 100",
            ),
            (
                json!({"path": "a", "in": []}),
                json!(["in"]),
                "`in` needs at least one value",
            ),
            (
                json!({"path": "a", "in": [1, [2]]}),
                json!(["in", 1]),
                "`in` compares with a string, number, boolean or null; found an array",
            ),
            (
                json!({"path": "a", "exists": 1}),
                json!(["exists"]),
                "`exists` needs true or false; found a number",
            ),
            (
                json!({"path": "a", "exists": null}),
                json!(["exists"]),
                "`exists` needs true or false; found null",
            ),
            (
                json!({"path": 1, "eq": 1}),
                json!(["path"]),
                "`path` needs a string of dot-separated keys",
            ),
            (
                json!({"path": "", "eq": 1}),
                json!(["path"]),
                "`path` is empty",
            ),
            (
                json!({"path": "a..b", "eq": 1}),
                json!(["path"]),
                "`path` segment 2 is empty",
            ),
            (
                json!({"path": ".a", "eq": 1}),
                json!(["path"]),
                "`path` segment 1 is empty",
            ),
            (
                json!({"path": "a.", "eq": 1}),
                json!(["path"]),
                "`path` segment 2 is empty",
            ),
        ];
        for (doc, want_loc, want_message) in cases {
            let e = error(doc.clone());
            assert_eq!(e.path, loc(want_loc), "{doc}: {e}");
            assert!(e.message.contains(want_message), "{doc}: {e}");
        }
    }

    #[test]
    fn error_display_and_location_serialization() {
        let e = error(json!({"and": [{"path": "a", "eq": 1}, {"path": "b", "gte": "x"}]}));
        assert_eq!(
            e.to_string(),
            "and.1.gte: `gte` needs a number; found a string"
        );
        assert_eq!(
            serde_json::to_value(&e.path).unwrap(),
            json!(["and", 1, "gte"])
        );
        assert_eq!(
            error(json!({})).to_string(),
            "an empty object is not a filter; expected one of and, or, not, path"
        );
        let e = serde_json::from_value::<Filter>(json!({"path": "a", "gt": "x"})).unwrap_err();
        assert!(e.to_string().contains("gt: `gt` needs a number"), "{e}");
    }

    /// `depth` levels of `not` around a condition.
    fn nested_not(depth: usize) -> Value {
        let mut v = json!({"path": "a", "exists": true});
        for _ in 0..depth {
            v = json!({ "not": v });
        }
        v
    }

    fn conditions(n: usize) -> Vec<Value> {
        (0..n).map(|i| json!({"path": "n", "ne": i})).collect()
    }

    #[test]
    fn limits() {
        // Depth.
        filter(nested_not(MAX_DEPTH - 1));
        let e = error(nested_not(MAX_DEPTH));
        assert_eq!(e.path, vec![FilterPathItem::Key("not".into()); MAX_DEPTH]);
        assert_eq!(e.message, "filters nest at most 32 levels deep");

        // Conditions and operators: and[32 × or[32 × and[k conditions]]]
        // holds 1 + 32 × (1 + 32 × (1 + k)): 3105 for k = 2 is taken, 4129
        // for k = 3 is not.
        let tree = |k: usize| {
            let inner = json!({"and": conditions(k)});
            let or = json!({"or": vec![inner; 32]});
            json!({"and": vec![or; 32]})
        };
        filter(tree(2));
        let e = error(tree(3));
        assert!(
            e.message.contains("at most 4096 conditions and operators"),
            "{e}"
        );

        // Items of and/or.
        filter(json!({ "or": conditions(MAX_ITEMS) }));
        let e = error(json!({ "or": conditions(MAX_ITEMS + 1) }));
        assert_eq!(e.path, loc(json!(["or"])));
        assert_eq!(e.message, "`or` takes at most 32 filters; found 33");

        // Values of in.
        let values = |n: usize| (0..n).map(Value::from).collect::<Vec<_>>();
        filter(json!({"path": "a", "in": values(MAX_IN_VALUES)}));
        let e = error(json!({"path": "a", "in": values(MAX_IN_VALUES + 1)}));
        assert_eq!(e.path, loc(json!(["in"])));
        assert_eq!(e.message, "`in` takes at most 100 values; found 101");

        // Path segments and their length (in characters, not bytes).
        let segments = |n: usize| vec!["s"; n].join(".");
        filter(json!({"path": segments(MAX_PATH_SEGMENTS), "exists": true}));
        let e = error(json!({"path": segments(MAX_PATH_SEGMENTS + 1), "exists": true}));
        assert_eq!(e.path, loc(json!(["path"])));
        assert_eq!(e.message, "`path` has at most 10 segments; found 11");
        let long = "я".repeat(MAX_SEGMENT_CHARS);
        let f = filter(json!({"path": format!("a.{long}"), "eq": 1}));
        assert!(f.matches(&payload(json!({"a": { long.clone(): 1 }}))));
        let e = error(json!({"path": format!("a.{long}я"), "eq": 1}));
        assert_eq!(e.path, loc(json!(["path"])));
        assert_eq!(e.message, "`path` segment 2 has 65 characters; at most 64");
    }

    #[test]
    fn to_value_round_trips() {
        for doc in [
            json!({"path": "a", "eq": "x"}),
            json!({"path": "a", "eq": null}),
            json!({"path": "a.0.b", "ne": false}),
            json!({"path": "a", "in": ["x", 1, 1.5, -2, true, null, u64::MAX, i64::MIN]}),
            json!({"path": "a", "gt": 1}),
            json!({"path": "a", "gte": 1.0}),
            json!({"path": "a", "lt": -0.25}),
            json!({"path": "a", "lte": u64::MAX}),
            json!({"path": "a", "exists": false}),
            json!({"and": [{"path": "a", "exists": true}, {"or": [{"not": {"path": "b", "eq": 2}}]}]}),
        ] {
            let f = filter(doc.clone());
            assert_eq!(f.to_value(), doc);
            assert_eq!(filter(f.to_value()), f);
            assert_eq!(serde_json::to_value(&f).unwrap(), doc);
            assert_eq!(serde_json::from_value::<Filter>(doc.clone()).unwrap(), f);
        }
        // 1.0 stays a float: equal in matching, distinct in the document.
        assert_ne!(
            filter(json!({"path": "a", "eq": 1})),
            filter(json!({"path": "a", "eq": 1.0}))
        );
    }

    /// Random canonical filter documents, within the limits.
    struct Gen {
        rng: StdRng,
        budget: usize,
    }

    const KEYS: [&str; 6] = ["a", "b", "n", "0", "1", "type"];

    impl Gen {
        fn filter(&mut self, depth: usize) -> Value {
            self.budget -= 1;
            let leaf = depth == MAX_DEPTH || self.budget < 2 || self.rng.random_bool(0.4);
            if leaf {
                return self.condition();
            }
            match self.rng.random_range(0..3) {
                0 => json!({ "not": self.filter(depth + 1) }),
                form => {
                    let form = if form == 1 { "and" } else { "or" };
                    let n = self.rng.random_range(1..=4).min(self.budget);
                    let mut items = Vec::new();
                    for k in 0..n {
                        // Keep one node for each item still to come.
                        let reserve = n - k - 1;
                        self.budget -= reserve;
                        items.push(self.filter(depth + 1));
                        self.budget += reserve;
                    }
                    json!({ form: items })
                }
            }
        }

        fn condition(&mut self) -> Value {
            let segments = self.rng.random_range(1..=3);
            let path = (0..segments)
                .map(|_| KEYS[self.rng.random_range(0..KEYS.len())])
                .collect::<Vec<_>>()
                .join(".");
            let op = OPERATORS[self.rng.random_range(0..OPERATORS.len())];
            let operand = match op {
                "eq" | "ne" => self.scalar(),
                "in" => {
                    let n = self.rng.random_range(1..=4);
                    Value::Array((0..n).map(|_| self.scalar()).collect())
                }
                "exists" => Value::Bool(self.rng.random()),
                _ => self.number(),
            };
            json!({ "path": path, op: operand })
        }

        fn number(&mut self) -> Value {
            match self.rng.random_range(0..5) {
                0 => json!(self.rng.random_range(-3..=3)),
                1 => json!(self.rng.random::<u64>()),
                2 => json!(self.rng.random::<i64>()),
                3 => json!(f64::from(self.rng.random_range(-6..=6)) / 2.0),
                _ => json!(self.rng.random_range(-1e20..1e20)),
            }
        }

        fn scalar(&mut self) -> Value {
            match self.rng.random_range(0..5) {
                0 => Value::Null,
                1 => Value::Bool(self.rng.random()),
                2 => json!(["x", "y", "deposit", ""][self.rng.random_range(0..4)]),
                _ => self.number(),
            }
        }

        /// A payload over the same keys, numbers and strings.
        fn payload(&mut self, depth: usize) -> Value {
            let nested = depth < 3 && self.rng.random_bool(0.5);
            match self.rng.random_range(0..if nested { 4 } else { 2 }) {
                0 => self.scalar(),
                1 => self.number(),
                2 => Value::Array((0..3).map(|_| self.payload(depth + 1)).collect()),
                _ => {
                    let mut obj = Map::new();
                    for k in KEYS {
                        if self.rng.random_bool(0.6) {
                            obj.insert(k.to_owned(), self.payload(depth + 1));
                        }
                    }
                    Value::Object(obj)
                }
            }
        }
    }

    #[test]
    fn generated_filters_round_trip_and_agree_with_their_negation() {
        let mut g = Gen {
            rng: StdRng::seed_from_u64(2026),
            budget: 0,
        };
        for _ in 0..2_000 {
            g.budget = g.rng.random_range(1..=64);
            let doc = g.filter(1);
            let f = filter(doc.clone());
            assert_eq!(f.to_value(), doc);
            assert_eq!(filter(f.to_value()), f);
            // Built directly: wrapping a filter at the limits in `not`
            // would pass them.
            let negated = Filter {
                root: Node::Not(Box::new(f.root.clone())),
            };
            for _ in 0..10 {
                let p = match g.payload(0) {
                    Value::Object(obj) => obj,
                    other => payload(json!({ "a": other, "n": 1 })),
                };
                assert_eq!(negated.matches(&p), !f.matches(&p), "{doc} on {p:?}");
            }
        }
    }

    #[test]
    fn ne_is_the_negation_of_eq() {
        let mut g = Gen {
            rng: StdRng::seed_from_u64(53),
            budget: 0,
        };
        for _ in 0..2_000 {
            let path = KEYS[g.rng.random_range(0..KEYS.len())];
            let operand = g.scalar();
            let eq = filter(json!({"path": path, "eq": operand.clone()}));
            let ne = filter(json!({"path": path, "ne": operand}));
            let p = payload(json!({ path: g.payload(1) }));
            assert_eq!(ne.matches(&p), !eq.matches(&p));
        }
    }

    const NAMES: [&str; 13] = [
        "and", "or", "not", "path", "eq", "ne", "in", "gt", "gte", "lt", "lte", "exists", "foo",
    ];

    /// Random JSON over the filter's keys.
    fn junk(rng: &mut StdRng, depth: usize) -> Value {
        let pick = if depth > 10 {
            rng.random_range(0..4)
        } else {
            rng.random_range(0..7)
        };
        match pick {
            0 => Value::Null,
            1 => Value::Bool(rng.random()),
            2 => json!(rng.random_range(-5..5)),
            3 => json!(["a", "a.0", "", "a..b", "1.5"][rng.random_range(0..5)]),
            4 => {
                let n = rng.random_range(0..4);
                Value::Array((0..n).map(|_| junk(rng, depth + 1)).collect())
            }
            _ => {
                let mut obj = Map::new();
                for _ in 0..rng.random_range(0..3) {
                    let k = NAMES[rng.random_range(0..NAMES.len())];
                    obj.insert(k.to_owned(), junk(rng, depth + 1));
                }
                Value::Object(obj)
            }
        }
    }

    /// One random change somewhere in `v`: a key dropped or added, an item
    /// dropped, or a value replaced by junk.
    fn mutate(v: &mut Value, rng: &mut StdRng) {
        match v {
            Value::Object(obj) if !obj.is_empty() && rng.random_bool(0.8) => {
                let k = obj
                    .keys()
                    .nth(rng.random_range(0..obj.len()))
                    .unwrap()
                    .clone();
                match rng.random_range(0..5) {
                    0 => {
                        obj.remove(&k);
                    }
                    1 => {
                        let name = NAMES[rng.random_range(0..NAMES.len())];
                        obj.insert(name.to_owned(), junk(rng, 5));
                    }
                    _ => mutate(obj.get_mut(&k).unwrap(), rng),
                }
            }
            Value::Array(items) if !items.is_empty() && rng.random_bool(0.8) => {
                let i = rng.random_range(0..items.len());
                if rng.random_bool(0.2) {
                    items.remove(i);
                } else {
                    mutate(&mut items[i], rng);
                }
            }
            _ => *v = junk(rng, 5),
        }
    }

    /// Random JSON and broken filters: parsing never panics, and whatever
    /// parses round-trips and evaluates.
    #[test]
    fn arbitrary_documents_never_panic() {
        let mut g = Gen {
            rng: StdRng::seed_from_u64(99),
            budget: 0,
        };
        let p = payload(json!({"a": [1, {"b": null}], "path": "x", "n": 1.5}));
        let (mut parsed, mut refused) = (0, 0);
        for i in 0..20_000 {
            let doc = if i % 2 == 0 {
                junk(&mut g.rng, 0)
            } else {
                g.budget = g.rng.random_range(1..=64);
                let mut doc = g.filter(1);
                mutate(&mut doc, &mut g.rng);
                doc
            };
            match Filter::parse(&doc) {
                Ok(f) => {
                    parsed += 1;
                    assert_eq!(filter(f.to_value()), f, "{doc}");
                    f.matches(&p);
                }
                Err(e) => {
                    refused += 1;
                    assert!(!e.message.is_empty());
                }
            }
        }
        assert!(
            parsed > 500 && refused > 10_000,
            "{parsed} parsed, {refused} refused"
        );
    }
}
