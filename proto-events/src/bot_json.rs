//! The bot's body format (docs/contract.md, "Body formats"): the bytes of
//! Python's `json.dumps(payload, default=str, ensure_ascii=False)`, which the
//! bot POSTs and signs, so receivers written against the bot keep verifying.
//!
//! That is the payload's keys in the order the publisher wrote them,
//! separators `", "` and `": "`, every character but `"`, `\` and the
//! control characters unescaped (raw UTF-8). The order is taken from the
//! envelope's text: the payload is never parsed into a map, which would sort
//! it. The `bedolaga_events` Python package writes the envelope with the same
//! `json.dumps`, so for its events the payload's text is already these bytes
//! and [`reformat`] leaves it as it is; text from other publishers is
//! rewritten into the same shape, numbers kept as they were written.

use serde::Deserialize;
use serde_json::value::RawValue;

/// The payload of an envelope (the message body) in the bot's format, or
/// `None` when the body has no readable `payload` (such a message is
/// dead-lettered before a body is ever needed).
pub fn payload_of(envelope: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Raw<'a> {
        #[serde(borrow)]
        payload: &'a RawValue,
    }
    let raw: Raw<'_> = serde_json::from_slice(envelope).ok()?;
    Some(reformat(raw.payload.get()))
}

/// Rewrites a valid JSON text as Python's `json.dumps(value,
/// ensure_ascii=False)` writes the value it parses to: same order, `", "` and
/// `": "` between items, strings escaped only where Python escapes them.
/// Numbers, `true`, `false` and `null` are copied as written. The input must
/// be valid JSON (it always comes from a parsed envelope or row).
pub fn reformat(json: &str) -> String {
    let mut out = String::with_capacity(json.len() + json.len() / 8);
    let mut chars = json.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {}
            ',' => out.push_str(", "),
            ':' => out.push_str(": "),
            '"' => string(&mut chars, &mut out),
            other => out.push(other),
        }
    }
    out
}

/// Copies one string body (after its opening quote) with Python's escapes.
fn string(chars: &mut std::str::Chars<'_>, out: &mut String) {
    out.push('"');
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => match chars.next() {
                Some('u') => {
                    let unit = hex4(chars);
                    match unit {
                        // A surrogate pair written as two escapes.
                        Some(hi @ 0xD800..=0xDBFF) => {
                            let rest = chars.clone();
                            let lo = (chars.next() == Some('\\') && chars.next() == Some('u'))
                                .then(|| hex4(chars))
                                .flatten()
                                .filter(|lo| (0xDC00..=0xDFFF).contains(lo));
                            match lo {
                                Some(lo) => {
                                    let code = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                                    push_escaped(out, char::from_u32(code).unwrap_or('\u{FFFD}'));
                                }
                                None => {
                                    // A lone surrogate cannot be UTF-8; Python
                                    // would fail to encode it. Keep the escape.
                                    *chars = rest;
                                    out.push_str(&format!("\\u{hi:04x}"));
                                }
                            }
                        }
                        Some(u @ 0xDC00..=0xDFFF) => out.push_str(&format!("\\u{u:04x}")),
                        Some(u) => push_escaped(out, char::from_u32(u).unwrap_or('\u{FFFD}')),
                        None => {}
                    }
                }
                Some('/') => out.push('/'),
                Some('b') => out.push_str("\\b"),
                Some('f') => out.push_str("\\f"),
                Some('n') => out.push_str("\\n"),
                Some('r') => out.push_str("\\r"),
                Some('t') => out.push_str("\\t"),
                Some(other) => push_escaped(out, other),
                None => break,
            },
            other => push_escaped(out, other),
        }
    }
    out.push('"');
}

fn hex4(chars: &mut std::str::Chars<'_>) -> Option<u32> {
    let mut v = 0;
    for _ in 0..4 {
        v = v * 16 + chars.next()?.to_digit(16)?;
    }
    Some(v)
}

/// One character as Python's `ensure_ascii=False` writes it inside a string.
fn push_escaped(out: &mut String, c: char) {
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keeps_order_and_raw_utf8() {
        // python3 -c 'import json;print(json.dumps({"z":1,"first_name":"Иван","a":[1.5,None,True],"e":{}}, ensure_ascii=False))'
        let text = r#"{"z":1,"first_name":"\u0418\u0432\u0430\u043d","a":[1.5,null,true],"e":{}}"#;
        assert_eq!(
            reformat(text),
            r#"{"z": 1, "first_name": "Иван", "a": [1.5, null, true], "e": {}}"#
        );
    }

    #[test]
    fn python_text_is_left_as_it_is() {
        let text =
            r#"{"user_id": 1, "note": "ok, \"quoted\": \\ tab\t 😀 \u001f", "x": [], "y": 1e-05}"#;
        assert_eq!(reformat(text), text);
    }

    #[test]
    fn escapes_as_python() {
        assert_eq!(
            reformat(r#"["\/\b\f\n\r\t\u0001\u007f\u2028\ud83d\ude00"]"#),
            "[\"/\\b\\f\\n\\r\\t\\u0001\u{7f}\u{2028}😀\"]"
        );
        // A lone surrogate stays escaped (no UTF-8 for it).
        assert_eq!(reformat(r#"["\ud800x"]"#), r#"["\ud800x"]"#);
    }

    #[test]
    fn payload_from_an_envelope() {
        let env = br#"{"id":"1","type":"user.created","timestamp":"2024-01-15T10:30:00Z","payload":{"b":2,"a":"\u0436"}}"#;
        assert_eq!(payload_of(env).unwrap(), r#"{"b": 2, "a": "ж"}"#);
        assert!(payload_of(b"{}").is_none());
    }
}
