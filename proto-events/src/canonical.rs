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
//! - Nesting is handled by recursion. Values parsed by serde_json are limited
//!   to 128 levels; Python's own encoder stops near its recursion limit
//!   (about 1000 levels), so payloads deeper than that have no Python
//!   counterpart anyway.

use serde_json::{Map, Number, Value};

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
/// Allocates nothing besides growing `out`, except when an object's keys are
/// not already in sorted order (only possible if some crate in the build
/// enables serde_json's `preserve_order` feature); then a temporary vector of
/// key references is sorted.
pub fn write_canonical(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            let mut first = true;
            for item in items {
                if !first {
                    out.extend_from_slice(b", ");
                }
                first = false;
                write_canonical(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(out, map),
    }
}

fn write_object(out: &mut Vec<u8>, map: &Map<String, Value>) {
    out.push(b'{');
    write_sorted_entries(out, map.iter());
    out.push(b'}');
}

/// Write `key: value` pairs in code point order of the keys. Entries that
/// already come sorted (serde_json's default `BTreeMap`) are written
/// directly; otherwise (`preserve_order`) they are sorted first.
fn write_sorted_entries<'a, I>(out: &mut Vec<u8>, entries: I)
where
    I: Iterator<Item = (&'a String, &'a Value)> + Clone,
{
    if keys_sorted(entries.clone().map(|(k, _)| k.as_str())) {
        write_entries(out, entries);
    } else {
        let mut sorted: Vec<(&String, &Value)> = entries.collect();
        // Byte order of UTF-8 equals code point order, which is what
        // Python's `sorted()` uses for `str` keys.
        sorted.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        write_entries(out, sorted.into_iter());
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

fn write_entries<'a>(out: &mut Vec<u8>, entries: impl Iterator<Item = (&'a String, &'a Value)>) {
    let mut first = true;
    for (key, value) in entries {
        if !first {
            out.extend_from_slice(b", ");
        }
        first = false;
        write_string(out, key);
        out.extend_from_slice(b": ");
        write_canonical(out, value);
    }
}

/// What to do with an ASCII byte inside a string.
/// `0` = copy as is; otherwise the character after the backslash, with `u`
/// meaning `\u00XX`.
const ESCAPE: [u8; 128] = {
    let mut table = [0u8; 128];
    let mut i = 0;
    while i < 0x20 {
        table[i] = b'u';
        i += 1;
    }
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[0x08] = b'b';
    table[0x0c] = b'f';
    table[0x7f] = b'u';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

const HEX: &[u8; 16] = b"0123456789abcdef";

fn write_string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b < 0x80 {
            let esc = ESCAPE[usize::from(b)];
            if esc == 0 {
                i += 1;
                continue;
            }
            out.extend_from_slice(&bytes[start..i]);
            if esc == b'u' {
                write_u_escape(out, u16::from(b));
            } else {
                out.push(b'\\');
                out.push(esc);
            }
            i += 1;
            start = i;
        } else {
            out.extend_from_slice(&bytes[start..i]);
            // `i` is at a char boundary: every earlier byte was ASCII or part
            // of a whole char consumed below.
            let ch = s.get(i..).and_then(|rest| rest.chars().next());
            let Some(ch) = ch else {
                // Unreachable for a valid `str`; stop rather than panic.
                start = bytes.len();
                break;
            };
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                write_u_escape(out, *unit);
            }
            i += ch.len_utf8();
            start = i;
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn write_u_escape(out: &mut Vec<u8>, unit: u16) {
    out.extend_from_slice(&[
        b'\\',
        b'u',
        HEX[usize::from(unit >> 12)],
        HEX[usize::from((unit >> 8) & 0xf)],
        HEX[usize::from((unit >> 4) & 0xf)],
        HEX[usize::from(unit & 0xf)],
    ]);
}

fn write_number(out: &mut Vec<u8>, n: &Number) {
    if let Some(u) = n.as_u64() {
        write_u64(out, u, false);
    } else if let Some(i) = n.as_i64() {
        write_u64(out, i.unsigned_abs(), i < 0);
    } else if let Some(f) = n.as_f64() {
        write_f64(out, f);
    } else {
        // Only reachable with serde_json's `arbitrary_precision`: the number
        // text is kept verbatim, which is what Python prints for integers.
        out.extend_from_slice(n.to_string().as_bytes());
    }
}

fn write_u64(out: &mut Vec<u8>, mut v: u64, negative: bool) {
    let mut buf = [0u8; 20];
    let mut pos = buf.len();
    loop {
        pos -= 1;
        // `v % 10` < 10, so the cast cannot truncate.
        buf[pos] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if negative {
        out.push(b'-');
    }
    out.extend_from_slice(&buf[pos..]);
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
        write_u64(out, u64::from(abs), false);
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
        write_sorted_entries(&mut out, entries.iter().copied());
        assert_eq!(
            String::from_utf8_lossy(&out),
            r#""": 4, "a": 2, "b": 0, "\uffff": 3, "\ud83d\ude00": 1"#
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
        let mut out = Vec::new();
        write_u64(&mut out, 0, false);
        out.push(b' ');
        write_u64(&mut out, u64::MAX, false);
        out.push(b' ');
        write_u64(&mut out, i64::MIN.unsigned_abs(), true);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "0 18446744073709551615 -9223372036854775808"
        );
    }
}
