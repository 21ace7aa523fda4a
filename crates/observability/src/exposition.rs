//! What a `/metrics` page exports: every sample's name and the label names
//! it carries (Prometheus and OpenMetrics text formats).

use std::collections::{BTreeMap, BTreeSet};

/// Sample names of one or more scrapes, each with the union of its label
/// names, and the type each family was declared with.
#[derive(Debug, Default, Clone)]
pub struct Exported {
    pub samples: BTreeMap<String, BTreeSet<String>>,
    /// Family name → `counter`, `gauge`, `histogram`, … from `# TYPE`.
    pub families: BTreeMap<String, String>,
}

impl Exported {
    /// Adds one scrape's text.
    pub fn add(&mut self, text: &str) -> Result<(), String> {
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix('#') {
                let mut words = rest.split_whitespace();
                if words.next() == Some("TYPE")
                    && let (Some(name), Some(kind)) = (words.next(), words.next())
                {
                    self.families.insert(name.to_owned(), kind.to_owned());
                }
                continue;
            }
            let (name, labels) = sample(line)?;
            self.samples
                .entry(name.to_owned())
                .or_default()
                .extend(labels);
        }
        Ok(())
    }

    /// Why `name` is not a sample name here, with the sample names of its
    /// family when the name is a family's (`x` for the counter `x_total`).
    pub fn hint(&self, name: &str) -> String {
        match self.families.get(name) {
            Some(kind) => {
                let of_family: Vec<&str> = self
                    .samples
                    .keys()
                    .filter(|s| {
                        s.strip_prefix(name)
                            .is_some_and(|r| r.is_empty() || r.starts_with('_'))
                    })
                    .map(String::as_str)
                    .collect();
                format!("{name} is a {kind} family; its samples are {of_family:?}")
            }
            None => "no service exports it".to_owned(),
        }
    }
}

/// The name and label names of one sample line
/// (`name{a="x",b="y"} value [timestamp]`).
fn sample(line: &str) -> Result<(&str, Vec<String>), String> {
    let end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or_else(|| format!("a sample without a value: {line:?}"))?;
    let name = &line[..end];
    let mut labels = Vec::new();
    if line[end..].starts_with('{') {
        let mut rest = &line[end + 1..];
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(after) = rest.strip_prefix('}') {
                if after.trim().is_empty() {
                    return Err(format!("a sample without a value: {line:?}"));
                }
                break;
            }
            let eq = rest
                .find('=')
                .ok_or_else(|| format!("a label without a value: {line:?}"))?;
            labels.push(rest[..eq].trim().to_owned());
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or_else(|| format!("an unquoted label value: {line:?}"))?;
            let mut escaped = false;
            let close = rest
                .char_indices()
                .find(|&(_, c)| {
                    let done = c == '"' && !escaped;
                    escaped = c == '\\' && !escaped;
                    done
                })
                .map(|(i, _)| i)
                .ok_or_else(|| format!("an unterminated label value: {line:?}"))?;
            rest = &rest[close + 1..];
        }
    }
    Ok((name, labels))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_samples_labels_and_types() {
        let mut e = Exported::default();
        e.add(concat!(
            "# HELP delivery_attempts Webhook delivery attempts by outcome.\n",
            "# TYPE delivery_attempts counter\n",
            "delivery_attempts_total{outcome=\"success\"} 3\n",
            "# TYPE lat histogram\n",
            "lat_bucket{le=\"0.5\",route=\"/a \\\"b\\\", {c}\"} 1\n",
            "lat_sum 0.25\n",
            "up 1 1700000000\n",
            "# EOF\n",
        ))
        .unwrap();
        let names: Vec<&str> = e.samples.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["delivery_attempts_total", "lat_bucket", "lat_sum", "up"]
        );
        assert_eq!(
            e.samples["lat_bucket"].iter().collect::<Vec<_>>(),
            ["le", "route"]
        );
        assert_eq!(e.families["delivery_attempts"], "counter");
        assert!(
            e.hint("delivery_attempts")
                .contains("delivery_attempts_total")
        );
        assert_eq!(e.hint("nothing"), "no service exports it");
        assert!(e.add("x{a=\"1\"}\n").is_err());
        assert!(e.add("x{a=1} 2\n").is_err());
    }
}
