//! Event-type patterns: an exact type (`user.created`), every type of one
//! family (`ticket.*`) or every event of the bot (`*`; the reserved
//! `operator.` family is selected only by naming it). Webhooks and WebSocket
//! subscriptions use the same rules, through this one matcher.

use std::fmt;

use crate::EventType;

/// A parsed event-type pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// `*`
    All,
    /// `ticket.*`: the string is the family with its dot, `ticket.`.
    Family(String),
    /// One type.
    Exact(EventType),
}

/// A pattern that names no type of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown event type '{0}'; valid: {valid}, a family pattern such as 'ticket.*', or '*'",
    valid = EventType::names().join(", ")
)]
pub struct InvalidPattern(pub String);

impl Pattern {
    /// Parses a type or pattern; patterns must match at least one type.
    pub fn parse(s: &str) -> Result<Self, InvalidPattern> {
        if s == "*" {
            return Ok(Pattern::All);
        }
        if let Some(family) = s.strip_suffix('*') {
            let known = family.ends_with('.')
                && !family[..family.len() - 1].contains(['.', '*'])
                && EventType::ALL
                    .iter()
                    .any(|t| t.as_str().starts_with(family));
            return if known {
                Ok(Pattern::Family(family.to_owned()))
            } else {
                Err(InvalidPattern(s.to_owned()))
            };
        }
        s.parse()
            .map(Pattern::Exact)
            .map_err(|_| InvalidPattern(s.to_owned()))
    }

    /// Whether an event of this type matches.
    pub fn matches(&self, event_type: EventType) -> bool {
        match self {
            // The operator family must be named: `*` keeps meaning "every
            // event of the bot".
            Pattern::All => !event_type.is_operator(),
            Pattern::Family(family) => event_type.as_str().starts_with(family.as_str()),
            Pattern::Exact(t) => *t == event_type,
        }
    }

    /// The types this pattern selects, in catalogue order.
    pub fn types(&self) -> impl Iterator<Item = EventType> + '_ {
        EventType::ALL.into_iter().filter(|t| self.matches(*t))
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::All => f.write_str("*"),
            Pattern::Family(family) => write!(f, "{family}*"),
            Pattern::Exact(t) => f.write_str(t.as_str()),
        }
    }
}

/// A set of patterns, kept as a bit mask over the catalogue so matching an
/// event is one AND.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatternSet {
    mask: u32,
}

impl PatternSet {
    /// What `*` selects: every type outside the operator family.
    pub fn all() -> Self {
        Self::from_patterns(&[Pattern::All])
    }

    /// No type.
    pub const fn none() -> Self {
        Self { mask: 0 }
    }

    /// The union of the given patterns.
    pub fn from_patterns<'a>(patterns: impl IntoIterator<Item = &'a Pattern>) -> Self {
        let mut set = Self::none();
        for p in patterns {
            for t in p.types() {
                set.mask |= bit(t);
            }
        }
        set
    }

    /// Parses type names and patterns; the first bad one is the error.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, InvalidPattern> {
        let patterns = items
            .into_iter()
            .map(Pattern::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_patterns(&patterns))
    }

    /// Whether an event of this type is selected.
    pub fn matches(&self, event_type: EventType) -> bool {
        self.mask & bit(event_type) != 0
    }
}

fn bit(t: EventType) -> u32 {
    1 << (t as u32)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use EventType::*;

    #[test]
    fn the_operator_family_must_be_named() {
        let all = Pattern::parse("*").unwrap();
        let operator = Pattern::parse("operator.*").unwrap();
        for t in EventType::ALL {
            assert_eq!(all.matches(t), !t.is_operator(), "{t}");
            assert_eq!(operator.matches(t), t.is_operator(), "{t}");
        }
        assert!(!PatternSet::all().matches(OperatorWebhookDisabled));
        assert!(
            PatternSet::parse(["operator.webhook.circuit_opened"])
                .unwrap()
                .matches(OperatorWebhookCircuitOpened)
        );
        assert!(Pattern::parse("operator.webhook.*").is_err());
    }

    #[test]
    fn matching() {
        let ticket = Pattern::parse("ticket.*").unwrap();
        assert!(ticket.matches(TicketCreated));
        assert!(ticket.matches(TicketMessageAdded));
        assert!(!ticket.matches(UserCreated));
        assert!(Pattern::parse("*").unwrap().matches(PaymentCompleted));
        let exact = Pattern::parse("user.created").unwrap();
        assert!(exact.matches(UserCreated) && !exact.matches(TicketCreated));
        assert_eq!(ticket.to_string(), "ticket.*");
        assert_eq!(ticket.types().count(), 3);
    }

    #[test]
    fn rejects_what_matches_nothing() {
        for bad in [
            "",
            "user",
            "user.deleted",
            "foo.*",
            "ticket*",
            "ticket.c*",
            "*.*",
            "ticket.*.*",
        ] {
            let err = Pattern::parse(bad).unwrap_err();
            assert!(err.to_string().contains("user.created"), "{bad}: {err}");
        }
    }

    #[test]
    fn sets() {
        let set = PatternSet::parse(["ticket.*", "user.created"]).unwrap();
        assert!(set.matches(TicketStatusChanged) && set.matches(UserCreated));
        assert!(!set.matches(PaymentCompleted));
        assert!(PatternSet::all().matches(TransactionCreated));
        assert!(!PatternSet::none().matches(TransactionCreated));
        assert!(PatternSet::parse(["nope"]).is_err());
    }
}
