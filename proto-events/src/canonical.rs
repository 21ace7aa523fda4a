//! Canonical JSON: byte-identical to Python's `json.dumps(value, sort_keys=True)`.
//!
//! Webhook receivers verify signatures by re-serialising the payload with
//! `json.dumps(payload, sort_keys=True)` (docs/contract.md, "Canonical body"), so the
//! bytes we sign and POST must be exactly what CPython produces with its
//! defaults:
//!
//! - separators `", "` and `": "`, no newlines or indentation;
//! - object keys sorted at every depth by Unicode code point order (for Rust
//!   `str` that is plain byte order of the UTF-8 encoding);
//! - `ensure_ascii=True`: `"` `\\` `\n` `\r` `\t` `\b` `\f` get their short
//!   escapes, the other control characters below U+0020 and DEL (U+007F)
//!   become `\u00XX` (CPython passes only `' '..='~'` through unescaped),
//!   every non-ASCII character becomes `\uXXXX` (lowercase hex) and
//!   characters beyond the BMP become a UTF-16 surrogate pair
//!   (`\ud83d\ude00`);
//! - integers in decimal;
//! - floats as Python's `repr(float)`: the shortest digits that round-trip,
//!   positional when the decimal exponent is in `-4..16` (`0.0001`, `100.0`,
//!   `1234567890123456.0`), scientific otherwise (`1e-05`, `1e+16`,
//!   `5e-324`); `-0.0` stays `-0.0`.
//!
//! serde_json writes the structure and the integers; the `Python`
//! formatter changes only what CPython does differently from serde_json's
//! compact output: the separators, the escaping of DEL and of non-ASCII
//! characters (serde_json escapes only `"`, `\\` and control characters,
//! with the same escapes as CPython) and the layout of floats.
//!
//! # Limits
//!
//! - Integers outside the `i64`/`u64` range cannot be held as integers by
//!   `serde_json::Value` (without the `arbitrary_precision` feature): when
//!   parsed from text they become floats, so `18446744073709551616` would be
//!   written as `1.8446744073709552e+19` here while Python keeps the exact
//!   integer. Ids and counters in the event catalogue never get near that
//!   range.
//! - The workspace enables serde_json's `float_roundtrip` feature so that
//!   floats parsed from text are correctly rounded, as in Python; the bytes
//!   written here depend only on the `f64` value.
//! - NaN and infinities cannot be stored in a `serde_json::Value`, so the
//!   Python spellings `NaN`/`Infinity` never occur.
//! - Nesting is handled by recursion (serde's). Values parsed by
//!   serde_json are limited to 128 levels; Python's own encoder stops near
//!   its recursion limit (about 1000 levels), so payloads deeper than that
//!   have no Python counterpart anyway.

use std::io::{self, Write as _};

use serde::ser::{Serialize, Serializer};
use serde_json::Value;
use serde_json::ser::Formatter;

/// Serialise `value` canonically into a new `String`.
#[must_use]
pub fn to_canonical_string(value: &Value) -> String {
    let bytes = to_canonical_vec(value);
    // The output is pure ASCII by construction (ensure_ascii), so this never
    // fails; the lossy path only exists to avoid a panic.
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// Serialise `value` canonically into a new byte vector.
#[must_use]
pub fn to_canonical_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write_canonical(&mut out, value);
    out
}

/// Append the canonical serialisation of `value` to `out`.
///
/// Allocates nothing besides growing `out` and a small buffer per float,
/// except when an object's keys are not already in sorted order (only
/// possible if some crate in the build enables serde_json's `preserve_order`
/// feature); then a temporary vector of key references is sorted.
pub fn write_canonical(out: &mut Vec<u8>, value: &Value) {
    let mut ser = serde_json::Serializer::with_formatter(out, Python);
    // Cannot fail: writing to a `Vec` does not, and every key of a `Value`
    // is a string.
    let _ = Sorted(value).serialize(&mut ser);
}

/// A value whose objects serialise with their keys sorted.
struct Sorted<'a>(&'a Value);

impl Serialize for Sorted<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Array(items) => serializer.collect_seq(items.iter().map(Sorted)),
            Value::Object(map) => serialize_sorted_entries(serializer, map.iter()),
            scalar => scalar.serialize(serializer),
        }
    }
}

/// Serialise `key: value` pairs in code point order of the keys. Entries
/// that already come sorted (serde_json's default `BTreeMap`) are written
/// directly; otherwise (`preserve_order`) they are sorted first.
fn serialize_sorted_entries<'a, S, I>(serializer: S, entries: I) -> Result<S::Ok, S::Error>
where
    S: Serializer,
    I: Iterator<Item = (&'a String, &'a Value)> + Clone,
{
    if keys_sorted(entries.clone().map(|(k, _)| k.as_str())) {
        serializer.collect_map(entries.map(|(k, v)| (k, Sorted(v))))
    } else {
        let mut sorted: Vec<(&String, &Value)> = entries.collect();
        // Byte order of UTF-8 equals code point order, which is what
        // Python's `sorted()` uses for `str` keys.
        sorted.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        serializer.collect_map(sorted.into_iter().map(|(k, v)| (k, Sorted(v))))
    }
}

fn keys_sorted<'a>(keys: impl Iterator<Item = &'a str>) -> bool {
    let mut prev: Option<&str> = None;
    for key in keys {
        if let Some(p) = prev
            && p.as_bytes() > key.as_bytes()
        {
            return false;
        }
        prev = Some(key);
    }
    true
}

/// What `json.dumps` does differently from serde_json's compact output:
/// `", "` and `": "` separators, `ensure_ascii` and `repr(float)`.
struct Python;

impl Formatter for Python {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_f64<W: ?Sized + io::Write>(&mut self, w: &mut W, value: f64) -> io::Result<()> {
        let mut out = Vec::with_capacity(32);
        write_f64(&mut out, value);
        w.write_all(&out)
    }

    /// A run of characters serde_json does not escape: everything but `"`,
    /// `\\` and control characters. CPython also escapes DEL and every
    /// non-ASCII character (`\uXXXX`, a UTF-16 surrogate pair beyond the BMP).
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let bytes = fragment.as_bytes();
        let mut start = 0;
        for (i, ch) in fragment.char_indices() {
            if ch.is_ascii() && ch != '\x7f' {
                continue;
            }
            w.write_all(&bytes[start..i])?;
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                write_u_escape(w, *unit)?;
            }
            start = i + ch.len_utf8();
        }
        w.write_all(&bytes[start..])
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn write_u_escape<W: ?Sized + io::Write>(w: &mut W, unit: u16) -> io::Result<()> {
    w.write_all(&[
        b'\\',
        b'u',
        HEX[usize::from(unit >> 12)],
        HEX[usize::from((unit >> 8) & 0xf)],
        HEX[usize::from((unit >> 4) & 0xf)],
        HEX[usize::from(unit & 0xf)],
    ])
}

/// Python `repr(float)` for a finite `f64`.
fn write_f64(out: &mut Vec<u8>, f: f64) {
    if !f.is_finite() {
        // Cannot come from a serde_json::Value; Python would print these.
        out.extend_from_slice(if f.is_nan() {
            b"NaN".as_slice()
        } else if f > 0.0 {
            b"Infinity".as_slice()
        } else {
            b"-Infinity".as_slice()
        });
        return;
    }
    // Shortest round-trip digits from ryu, which (like CPython's dtoa and
    // unlike Rust's own `{}`/`{:e}`) breaks exact ties to the even digit:
    // 1658206780088562.25 is `...562.2` in Python, `...562.3` in Rust's std.
    // ryu lays the digits out its own way (`1e16`, `0.0001`, `1.5e300`,
    // `100.0`), so only the digits and the exponent are taken from it.
    let mut buffer = ryu::Buffer::new();
    let text = buffer.format_finite(f).as_bytes();
    let (negative, text) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    let e_pos = text
        .iter()
        .position(|&b| b == b'e' || b == b'E')
        .unwrap_or(text.len());
    let exp = parse_exp(text.get(e_pos + 1..).unwrap_or_default());
    let mantissa = &text[..e_pos];

    // Significant digits without the point, and where the point goes:
    // value = 0.DIGITS × 10^point.
    let mut digits = [0u8; 40];
    let mut n_digits = 0;
    let mut point: i32 = 0;
    let mut seen_point = false;
    for &b in mantissa {
        if b == b'.' {
            seen_point = true;
        } else if b.is_ascii_digit() {
            if n_digits == 0 && b == b'0' {
                // Leading zero: before the point it carries no position,
                // after it it shifts the point left.
                if seen_point {
                    point -= 1;
                }
                continue;
            }
            if n_digits < digits.len() {
                digits[n_digits] = b;
                n_digits += 1;
            }
            if !seen_point {
                point += 1;
            }
        }
    }
    while n_digits > 0 && digits[n_digits - 1] == b'0' {
        n_digits -= 1;
    }
    let (digits, exp10) = if n_digits == 0 {
        (&b"0"[..], 0)
    } else {
        (
            &digits[..n_digits],
            point.saturating_add(exp).saturating_sub(1),
        )
    };

    if negative {
        out.push(b'-');
    }
    if (-4..16).contains(&exp10) {
        if exp10 >= 0 {
            // exp10 + 1 digits before the point, zero-padded.
            let int_len = usize::try_from(exp10).unwrap_or(0) + 1;
            if digits.len() <= int_len {
                out.extend_from_slice(digits);
                out.resize(out.len() + int_len - digits.len(), b'0');
                out.extend_from_slice(b".0");
            } else {
                out.extend_from_slice(&digits[..int_len]);
                out.push(b'.');
                out.extend_from_slice(&digits[int_len..]);
            }
        } else {
            // 0.000ddd: -exp10 - 1 zeros after the point.
            out.extend_from_slice(b"0.");
            let zeros = usize::try_from(-exp10 - 1).unwrap_or(0);
            out.resize(out.len() + zeros, b'0');
            out.extend_from_slice(digits);
        }
    } else {
        out.push(digits[0]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        out.push(b'e');
        out.push(if exp10 < 0 { b'-' } else { b'+' });
        let abs = exp10.unsigned_abs();
        if abs < 10 {
            out.push(b'0');
        }
        // Writing to a `Vec` cannot fail.
        let _ = write!(out, "{abs}");
    }
}

fn parse_exp(text: &[u8]) -> i32 {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    let mut v: i32 = 0;
    for &b in digits {
        if b.is_ascii_digit() {
            v = v.saturating_mul(10).saturating_add(i32::from(b - b'0'));
        }
    }
    if negative { -v } else { v }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn float(f: f64) -> String {
        let mut out = Vec::new();
        write_f64(&mut out, f);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn float_layout() {
        assert_eq!(float(0.0), "0.0");
        assert_eq!(float(-0.0), "-0.0");
        assert_eq!(float(1.0), "1.0");
        assert_eq!(float(100.0), "100.0");
        assert_eq!(float(0.1), "0.1");
        assert_eq!(float(0.0001), "0.0001");
        assert_eq!(float(0.00001), "1e-05");
        assert_eq!(float(0.000_123), "0.000123");
        assert_eq!(float(1e15), "1000000000000000.0");
        assert_eq!(float(1e16), "1e+16");
        assert_eq!(float(1_234_567_890_123_456.0), "1234567890123456.0");
        assert_eq!(float(12_345_678_901_234_567.0), "1.2345678901234568e+16");
        assert_eq!(float(1.5e300), "1.5e+300");
        assert_eq!(float(5e-324), "5e-324");
        assert_eq!(float(-2.5e-7), "-2.5e-07");
        assert_eq!(float(f64::MAX), "1.7976931348623157e+308");
        assert_eq!(float(123_456_789.123), "123456789.123");
        assert_eq!(float(1.0 / 3.0), "0.3333333333333333");
        assert_eq!(float(1e-7), "1e-07");
        assert_eq!(float(1e22), "1e+22");
        assert_eq!(float(1e100), "1e+100");
        assert_eq!(float(0.000_100_5), "0.0001005");
        assert_eq!(float(1_000_000.5), "1000000.5");
        // Exact tie between two shortest candidates: Python keeps the even
        // digit, Rust's `{}` would print ...562.3.
        assert_eq!(float(1_658_206_780_088_562.2), "1658206780088562.2");
    }

    #[test]
    fn unsorted_entries_get_sorted() {
        // Only reachable through a `Map` with serde_json's `preserve_order`,
        // which this build does not enable; exercise the path directly.
        let keys: Vec<String> = ["b", "\u{1F600}", "a", "\u{FFFF}", ""]
            .iter()
            .map(|k| (*k).to_owned())
            .collect();
        let values: Vec<Value> = (0..keys.len()).map(|i| Value::from(i as u64)).collect();
        let entries: Vec<(&String, &Value)> = keys.iter().zip(&values).collect();
        let mut out = Vec::new();
        let mut ser = serde_json::Serializer::with_formatter(&mut out, Python);
        serialize_sorted_entries(&mut ser, entries.iter().copied()).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out),
            r#"{"": 4, "a": 2, "b": 0, "\uffff": 3, "\ud83d\ude00": 1}"#
        );
        assert!(!keys_sorted(keys.iter().map(String::as_str)));
        assert!(keys_sorted(
            ["", "a", "ab", "\u{FFFF}", "\u{1F600}"].into_iter()
        ));
    }

    #[test]
    fn non_finite_spellings() {
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(f64::INFINITY), "Infinity");
        assert_eq!(float(f64::NEG_INFINITY), "-Infinity");
    }

    #[test]
    fn integers() {
        assert_eq!(
            to_canonical_string(&serde_json::json!([0, u64::MAX, i64::MIN])),
            "[0, 18446744073709551615, -9223372036854775808]"
        );
    }
}
