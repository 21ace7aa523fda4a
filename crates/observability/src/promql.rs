//! The series selectors of a PromQL expression: metric names and the label
//! names their matchers use. A lexer, not a full parser: it knows enough
//! of the syntax (strings, matchers, ranges, grouping clauses, function
//! calls, Grafana's `$variables`) to tell a metric name from everything
//! else, and rejects what it does not understand.

use std::iter::Peekable;
use std::str::CharIndices;

/// One series selector, e.g. `delivery_attempts_total{outcome="failed"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub metric: String,
    /// Label names of its matchers (`outcome` above), `__name__` excluded.
    pub labels: Vec<String>,
}

/// Words that are never metric names where they stand (besides
/// [`LABEL_LISTS`]).
const KEYWORDS: [&str; 8] = [
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Every selector of `expr`, in order of appearance.
pub fn selectors(expr: &str) -> Result<Vec<Selector>, String> {
    let mut lexer = Lexer {
        src: expr,
        chars: expr.char_indices().peekable(),
    };
    let mut out = Vec::new();
    while let Some((start, c)) = lexer.chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '#' => lexer.skip_while(|c| c != '\n'),
            '"' | '\'' | '`' => {
                lexer.string(c)?;
            }
            '[' => lexer.skip_brackets()?,
            '$' => lexer.variable(),
            '{' => {
                let (name, labels) = lexer.matchers()?;
                let metric = name.ok_or_else(|| {
                    format!("a selector without a metric name at byte {start} of {expr:?}")
                })?;
                out.push(Selector { metric, labels });
            }
            c if c.is_ascii_digit() || c == '.' => lexer.number(),
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let word = lexer.identifier(start);
                lexer.skip_while(char::is_whitespace);
                let next = lexer.chars.peek().map(|&(_, c)| c);
                let lower = word.to_ascii_lowercase();
                if LABEL_LISTS.contains(&lower.as_str()) {
                    if next == Some('(') {
                        lexer.chars.next();
                        lexer.skip_while(|c| c != ')');
                        lexer.chars.next();
                    }
                    continue;
                }
                // Keywords, function names and aggregations (`sum(…)`,
                // `sum by (le) (…)`).
                if KEYWORDS.contains(&lower.as_str())
                    || next == Some('(')
                    || lexer.grouping_follows()
                {
                    continue;
                }
                let mut labels = Vec::new();
                if next == Some('{') {
                    lexer.chars.next();
                    let (name, matched) = lexer.matchers()?;
                    if name.is_some_and(|n| n != word) {
                        return Err(format!("two metric names for one selector in {expr:?}"));
                    }
                    labels = matched;
                }
                out.push(Selector {
                    metric: word.to_owned(),
                    labels,
                });
            }
            '(' | ')' | ',' | '+' | '-' | '*' | '/' | '%' | '^' | '=' | '!' | '<' | '>' | '@' => {}
            other => return Err(format!("unexpected {other:?} at byte {start} of {expr:?}")),
        }
    }
    Ok(out)
}

struct Lexer<'a> {
    src: &'a str,
    chars: Peekable<CharIndices<'a>>,
}

impl<'a> Lexer<'a> {
    fn skip_while(&mut self, keep: impl Fn(char) -> bool) {
        while self.chars.next_if(|&(_, c)| keep(c)).is_some() {}
    }

    /// Whether the next word is `by` or `without` (after an aggregation).
    fn grouping_follows(&self) -> bool {
        let word: String = self
            .chars
            .clone()
            .map(|(_, c)| c)
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        matches!(word.to_ascii_lowercase().as_str(), "by" | "without")
    }

    fn identifier(&mut self, start: usize) -> &'a str {
        let mut end = start + 1;
        while let Some((i, c)) = self
            .chars
            .next_if(|&(_, c)| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            end = i + c.len_utf8();
        }
        &self.src[start..end]
    }

    /// A number or a duration (`0.95`, `1e3`, `5m`, `0x1f`).
    fn number(&mut self) {
        while let Some((_, c)) = self
            .chars
            .next_if(|&(_, c)| c.is_ascii_alphanumeric() || c == '.' || c == '_')
        {
            if c == 'e' || c == 'E' {
                self.chars.next_if(|&(_, c)| c == '+' || c == '-');
            }
        }
    }

    /// The rest of a string literal opened by `quote`; its contents.
    fn string(&mut self, quote: char) -> Result<String, String> {
        let mut text = String::new();
        while let Some((_, c)) = self.chars.next() {
            match c {
                '\\' if quote != '`' => {
                    if let Some((_, escaped)) = self.chars.next() {
                        text.push(escaped);
                    }
                }
                c if c == quote => return Ok(text),
                c => text.push(c),
            }
        }
        Err(format!("unterminated string in {:?}", self.src))
    }

    /// A range or subquery (`[5m]`, `[$__rate_interval]`, `[30m:1m]`).
    fn skip_brackets(&mut self) -> Result<(), String> {
        for (_, c) in self.chars.by_ref() {
            if c == ']' {
                return Ok(());
            }
        }
        Err(format!("unterminated [ in {:?}", self.src))
    }

    /// A Grafana variable: `$name` or `${name}`.
    fn variable(&mut self) {
        if self.chars.next_if(|&(_, c)| c == '{').is_some() {
            self.skip_while(|c| c != '}');
            self.chars.next();
        } else {
            self.skip_while(|c| c.is_ascii_alphanumeric() || c == '_');
        }
    }

    /// The matchers after `{`, up to `}`: the `__name__` they set, if any,
    /// and the other label names.
    fn matchers(&mut self) -> Result<(Option<String>, Vec<String>), String> {
        let mut name = None;
        let mut labels = Vec::new();
        loop {
            self.skip_while(|c| c.is_whitespace() || c == ',');
            let Some((start, c)) = self.chars.next() else {
                return Err(format!("unterminated {{ in {:?}", self.src));
            };
            if c == '}' {
                return Ok((name, labels));
            }
            if !(c.is_ascii_alphabetic() || c == '_') {
                return Err(format!("unexpected {c:?} in a matcher of {:?}", self.src));
            }
            let label = self.identifier(start).to_owned();
            self.skip_while(char::is_whitespace);
            let mut op = String::new();
            while let Some((_, c)) = self.chars.next_if(|&(_, c)| matches!(c, '=' | '!' | '~')) {
                op.push(c);
            }
            if !matches!(op.as_str(), "=" | "!=" | "=~" | "!~") {
                return Err(format!("bad matcher operator {op:?} in {:?}", self.src));
            }
            self.skip_while(char::is_whitespace);
            let value = match self.chars.next() {
                Some((_, q @ ('"' | '\'' | '`'))) => self.string(q)?,
                _ => {
                    return Err(format!(
                        "a matcher without a quoted value in {:?}",
                        self.src
                    ));
                }
            };
            if label == "__name__" {
                if op != "=" {
                    return Err(format!(
                        "a metric name matched by {op:?} cannot be checked: {:?}",
                        self.src
                    ));
                }
                name = Some(value);
            } else {
                labels.push(label);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        selectors(expr)
            .unwrap()
            .into_iter()
            .map(|s| s.metric)
            .collect()
    }

    #[test]
    fn finds_metrics_and_not_functions_labels_or_keywords() {
        assert_eq!(
            names(
                "histogram_quantile(0.95, sum by (le, route) (rate(x_seconds_bucket{route!=\"/metrics\"}[$__rate_interval])))"
            ),
            ["x_seconds_bucket"]
        );
        assert_eq!(
            names("sum(rate(a_total{s=~\"5..\"}[5m])) / sum(rate(a_total[5m])) > bool 0.1"),
            ["a_total", "a_total"]
        );
        assert_eq!(
            names("max(b) > 100\nand\nmax(deriv(b[30m])) > 0 unless on (job) c offset 1h"),
            ["b", "b", "c"]
        );
        assert_eq!(
            names("sum without (instance) (d) * on (job) group_left (version) e"),
            ["d", "e"]
        );
        assert_eq!(
            names("label_replace(up{job=~\"a|b\"}, \"dst\", \"$1\", \"src\", \"(.*)\") == 0"),
            ["up"]
        );
        assert_eq!(names("{__name__=\"f\", x=\"1\"} + 1e3 + Inf"), ["f"]);
        assert_eq!(names("rate(g[${interval}]) @ end()"), ["g"]);
        assert_eq!(names("delta(h[30m:1m]) # a comment naming i"), ["h"]);
    }

    #[test]
    fn reports_label_names_of_matchers() {
        let s = selectors("sum(k{outcome=\"failed\", reason != 'x', __name__=\"k\"})").unwrap();
        assert_eq!(
            s,
            [Selector {
                metric: "k".into(),
                labels: vec!["outcome".into(), "reason".into()],
            }]
        );
    }

    #[test]
    fn rejects_what_it_cannot_check() {
        assert!(selectors("{__name__=~\"delivery_.*\"}").is_err());
        assert!(selectors("{job=\"x\"}").is_err());
        assert!(selectors("rate(a{b=\"c\"").is_err());
        assert!(selectors("a{b=c}").is_err());
        assert!(selectors("sum(a) ; b").is_err());
    }
}
