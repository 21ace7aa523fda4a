//! The headers of a dead letter (docs/contract.md, "Dead letters"): a
//! message on `events.>` that is not a valid envelope is republished to
//! `deadletter.<its subject>` ([`Namespace::deadletter_subject`]) with its
//! own headers plus these.
//!
//! [`Namespace::deadletter_subject`]: crate::Namespace::deadletter_subject

/// Header naming why a message was dead-lettered.
pub const DEADLETTER_REASON: &str = "Bedolaga-Deadletter-Reason";
/// Header with the size in bytes of the original body.
pub const DEADLETTER_ORIGINAL_SIZE: &str = "Bedolaga-Deadletter-Original-Size";
/// Header with the original message's sequence in the events stream.
pub const DEADLETTER_STREAM_SEQUENCE: &str = "Bedolaga-Deadletter-Stream-Sequence";
/// Header `true` when the body was cut to fit the broker's `max_payload`.
pub const DEADLETTER_TRUNCATED: &str = "Bedolaga-Deadletter-Truncated";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_names_every_header() {
        let contract = include_str!("../../docs/contract.md");
        for name in [
            DEADLETTER_REASON,
            DEADLETTER_ORIGINAL_SIZE,
            DEADLETTER_STREAM_SEQUENCE,
            DEADLETTER_TRUNCATED,
        ] {
            assert!(
                contract.contains(&format!("| `{name}` |")),
                "docs/contract.md has no row for {name}"
            );
        }
    }
}
