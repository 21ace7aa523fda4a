//! Reading the queries out of the dashboard JSON and the rule files.

use std::path::{Path, PathBuf};

use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

/// One PromQL expression and where it comes from, for error messages.
#[derive(Debug, Clone)]
pub struct Query {
    pub origin: String,
    pub expr: String,
}

/// `deploy/observability/` of this repository.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/observability")
}

/// The files in `dir` whose name ends with `suffix`, sorted.
pub fn files_in(dir: &Path, suffix: &str) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    out.sort();
    Ok(out)
}

/// Every query of a Grafana dashboard: the `expr` of each target of each
/// panel, rows' nested panels included. A panel other than a row without
/// queries, or a target without an expression, is an error.
pub fn dashboard_queries(dashboard: &Value) -> Result<Vec<Query>, String> {
    let panels = dashboard["panels"]
        .as_array()
        .ok_or("the dashboard has no panels list")?;
    let mut out = Vec::new();
    collect_panels(panels, &mut out)?;
    Ok(out)
}

fn collect_panels(panels: &[Value], out: &mut Vec<Query>) -> Result<(), String> {
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        if panel["type"] == "row" {
            if let Some(nested) = panel["panels"].as_array() {
                collect_panels(nested, out)?;
            }
            continue;
        }
        let targets = panel["targets"]
            .as_array()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("panel {title:?} has no queries"))?;
        for target in targets {
            let reference = target["refId"].as_str().unwrap_or("?");
            let expr = target["expr"]
                .as_str()
                .filter(|e| !e.trim().is_empty())
                .ok_or_else(|| format!("query {reference} of panel {title:?} has no expr"))?;
            out.push(Query {
                origin: format!("panel {title:?} query {reference}"),
                expr: expr.to_owned(),
            });
        }
    }
    Ok(())
}

/// The expression of every alerting and recording rule of a Prometheus
/// rule file.
pub fn rule_queries(text: &str) -> Result<Vec<Query>, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for doc in &docs {
        let groups = doc["groups"]
            .as_vec()
            .ok_or("a rule file without a groups list")?;
        for group in groups {
            let group_name = group["name"].as_str().unwrap_or("?");
            let rules = group["rules"]
                .as_vec()
                .ok_or_else(|| format!("group {group_name:?} has no rules list"))?;
            for rule in rules {
                let name = match (&rule["alert"], &rule["record"]) {
                    (Yaml::String(a), _) => format!("alert {a}"),
                    (_, Yaml::String(r)) => format!("record {r}"),
                    _ => return Err(format!("a rule of {group_name:?} has no name")),
                };
                let expr = rule["expr"]
                    .as_str()
                    .ok_or_else(|| format!("{name} has no expr"))?;
                out.push(Query {
                    origin: format!("{group_name}: {name}"),
                    expr: expr.to_owned(),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_dashboard_targets_and_rule_expressions() {
        let d = json!({"panels": [
            {"type": "row", "title": "r", "panels": [
                {"type": "stat", "title": "s", "targets": [{"refId": "A", "expr": "a"}]}
            ]},
            {"type": "timeseries", "title": "t", "targets": [
                {"refId": "A", "expr": "b"}, {"refId": "B", "expr": "c"}
            ]}
        ]});
        let q: Vec<String> = dashboard_queries(&d)
            .unwrap()
            .into_iter()
            .map(|q| q.expr)
            .collect();
        assert_eq!(q, ["a", "b", "c"]);
        let empty = json!({"panels": [{"type": "timeseries", "title": "t", "targets": []}]});
        assert!(dashboard_queries(&empty).is_err());

        let rules = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: |\n          x > 1\n          and y\n      - record: r:x\n        expr: sum(x)\n";
        let q = rule_queries(rules).unwrap();
        assert_eq!(q[0].origin, "g: alert A");
        assert_eq!(q[0].expr, "x > 1\nand y\n");
        assert_eq!(q[1].expr, "sum(x)");
        assert!(rule_queries("groups:\n  - name: g\n    rules:\n      - expr: x\n").is_err());
    }
}
