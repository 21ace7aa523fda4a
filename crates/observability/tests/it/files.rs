//! The observability files are well formed and agree with each other and
//! with docker-compose.yml (no services needed).

use std::collections::BTreeSet;

use observability::files::{self, deploy_dir};
use observability::promql;
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

fn yaml(path: &std::path::Path) -> Yaml {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .remove(0)
}

fn strings(v: &Yaml) -> Vec<String> {
    v.as_vec()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn dashboards_parse_and_every_panel_queries_the_provisioned_prometheus() {
    let dir = deploy_dir();
    let provisioned = yaml(&dir.join("grafana/provisioning/datasources/datasources.yml"));
    let uids: BTreeSet<String> = provisioned["datasources"]
        .as_vec()
        .unwrap()
        .iter()
        .filter(|d| d["type"].as_str() == Some("prometheus"))
        .filter_map(|d| d["uid"].as_str().map(str::to_owned))
        .collect();
    let dashboards = files::files_in(&dir.join("grafana/dashboards"), ".json").unwrap();
    assert!(!dashboards.is_empty());
    let mut dashboard_uids = BTreeSet::new();
    for path in dashboards {
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            dashboard_uids.insert(d["uid"].as_str().unwrap().to_owned()),
            "two dashboards with one uid"
        );
        // The data source variable defaults to the provisioned Prometheus.
        let var = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["type"] == "datasource")
            .expect("a data source variable");
        assert!(uids.contains(var["current"]["value"].as_str().unwrap()));
        let reference = format!("${{{}}}", var["name"].as_str().unwrap());
        let mut ids = BTreeSet::new();
        for panel in d["panels"].as_array().unwrap() {
            assert!(
                ids.insert(panel["id"].as_i64().unwrap()),
                "duplicate panel id"
            );
            let pos = &panel["gridPos"];
            assert!(pos["x"].as_i64().unwrap() + pos["w"].as_i64().unwrap() <= 24);
            if panel["type"] == "row" {
                continue;
            }
            assert_eq!(panel["datasource"]["uid"], reference.as_str());
            for target in panel["targets"].as_array().unwrap() {
                assert_eq!(target["datasource"]["uid"], reference.as_str());
            }
        }
        for q in files::dashboard_queries(&d).unwrap() {
            let s = promql::selectors(&q.expr).unwrap_or_else(|e| panic!("{}: {e}", q.origin));
            assert!(!s.is_empty(), "{} names no metric", q.origin);
        }
    }
}

#[test]
fn rules_parse_and_alerts_say_how_bad_and_what_happened() {
    let dir = deploy_dir().join("prometheus");
    let rule_files = files::files_in(&dir.join("rules"), ".yml").unwrap();
    assert!(!rule_files.is_empty());
    let mut alerts = BTreeSet::new();
    for path in &rule_files {
        let doc = yaml(path);
        for group in doc["groups"].as_vec().unwrap() {
            for rule in group["rules"].as_vec().unwrap() {
                let Some(name) = rule["alert"].as_str() else {
                    continue;
                };
                assert!(alerts.insert(name.to_owned()), "alert {name} twice");
                let severity = rule["labels"]["severity"].as_str();
                assert!(
                    matches!(severity, Some("warning" | "critical")),
                    "{name}: severity {severity:?}"
                );
                assert!(rule["annotations"]["summary"].as_str().is_some(), "{name}");
                assert!(
                    rule["annotations"]["description"].as_str().is_some(),
                    "{name}"
                );
            }
        }
        for q in files::rule_queries(&std::fs::read_to_string(path).unwrap()).unwrap() {
            promql::selectors(&q.expr).unwrap_or_else(|e| panic!("{}: {e}", q.origin));
        }
    }
    // What the alerts must cover.
    for wanted in [
        "BedolagaRetryBacklogGrowing",
        "BedolagaDeadLetters",
        "BedolagaConsumerLag",
        "BedolagaWebhooksAutoDisabled",
        "BedolagaServiceNotReady",
    ] {
        assert!(alerts.contains(wanted), "no alert {wanted}");
    }
    // Prometheus loads them (rule_files globs are relative to its config).
    let config = yaml(&dir.join("prometheus.yml"));
    let globs = strings(&config["rule_files"]);
    assert_eq!(globs, ["rules/*.yml"]);
    // And scrapes each service on its port.
    let jobs: BTreeSet<String> = config["scrape_configs"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|j| j["job_name"].as_str().map(str::to_owned))
        .collect();
    for job in [
        "webhook-registry",
        "gateway",
        "delivery-worker",
        "outbox-relay",
    ] {
        assert!(jobs.contains(job), "no scrape job {job}");
    }
}

#[test]
fn collector_pipelines_use_only_configured_components() {
    let config = yaml(&deploy_dir().join("otel-collector/config.yml"));
    let traces = &config["service"]["pipelines"]["traces"];
    for (kind, list) in [
        ("receivers", "receivers"),
        ("processors", "processors"),
        ("exporters", "exporters"),
    ] {
        let used = strings(&traces[list]);
        assert!(!used.is_empty(), "the traces pipeline has no {kind}");
        for name in used {
            assert!(
                !config[kind][name.as_str()].is_badvalue(),
                "the traces pipeline uses {kind} {name}, which is not configured"
            );
        }
    }
    assert!(!config["receivers"]["otlp"]["protocols"]["http"].is_badvalue());
}

/// The `observability` profile of docker-compose.yml mounts files that
/// exist, and points the services' OTLP endpoint at the collector.
#[test]
fn compose_profile_mounts_existing_files() {
    let root = deploy_dir().join("../..");
    let compose = yaml(&root.join("docker-compose.yml"));
    let services = compose["services"].as_hash().unwrap();
    let mut profiled = Vec::new();
    for (name, service) in services {
        if !strings(&service["profiles"])
            .iter()
            .any(|p| p == "observability")
        {
            continue;
        }
        let name = name.as_str().unwrap().to_owned();
        let image = service["image"].as_str().unwrap_or_default();
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
        assert!(
            !tag.is_empty() && tag != "latest",
            "{name}: the image tag is not pinned: {image}"
        );
        for volume in strings(&service["volumes"]) {
            if let Some(source) = volume.strip_prefix("./") {
                let source = source.split(':').next().unwrap();
                assert!(
                    root.join(source).exists(),
                    "{name} mounts {source}, which does not exist"
                );
            }
        }
        profiled.push(name);
    }
    profiled.sort();
    assert_eq!(
        profiled,
        ["grafana", "jaeger", "otel-collector", "prometheus"]
    );
}
