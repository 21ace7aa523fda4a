//! A position in the event stream that names its stream: the SSE `id:`,
//! the long-poll `after`/`next` and a pull webhook's `cursor` are all one
//! [`Cursor`], written `<epoch>:<sequence>`.
//!
//! The epoch is the stream's creation time in nanoseconds since 1970, as a
//! decimal string (as the WebSocket's `epoch`): sequence numbers start
//! again in a recreated stream, so a cursor from another stream is never
//! taken for a position in this one.

use std::fmt;
use std::str::FromStr;

/// A stream position: everything up to and including `seq` of the stream
/// created at `epoch` has been read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor {
    pub epoch: String,
    pub seq: u64,
}

impl Cursor {
    pub fn new(epoch: impl Into<String>, seq: u64) -> Self {
        Self {
            epoch: epoch.into(),
            seq,
        }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.seq)
    }
}

/// Why a cursor could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a cursor is '<epoch>:<sequence>', two non-negative integers (as given in an event's id or a page's next)"
)]
pub struct InvalidCursor;

impl FromStr for Cursor {
    type Err = InvalidCursor;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (epoch, seq) = s.trim().split_once(':').ok_or(InvalidCursor)?;
        let digits =
            |t: &str| !t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(epoch) || !digits(seq) {
            return Err(InvalidCursor);
        }
        Ok(Self {
            epoch: epoch.to_owned(),
            seq: seq.parse().map_err(|_| InvalidCursor)?,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let c: Cursor = "1733540000123456789:42".parse().unwrap();
        assert_eq!(c, Cursor::new("1733540000123456789", 42));
        assert_eq!(c.to_string(), "1733540000123456789:42");
        for bad in [
            "",
            "42",
            ":42",
            "1:",
            "a:1",
            "1:-1",
            "1:2:3",
            "1: 2",
            "1:99999999999999999999",
        ] {
            assert_eq!(bad.parse::<Cursor>(), Err(InvalidCursor), "{bad}");
        }
    }
}
