//! The shipped dashboards and self-monitoring rules against the real thing:
//!
//! - every PromQL expression in `dashboards/*.json` parses (promtool), names only metrics a
//!   running auditwatch exports (scraped), and evaluates without error in a real Prometheus
//!   that scrapes that auditwatch;
//! - the dashboards are portable (datasource as a variable, no Grafana-instance UIDs) and laid
//!   out without overlapping panels;
//! - `deploy/prometheus-rules.yaml` passes `promtool check rules` and its unit tests
//!   (`promtool test rules`), and names only exported metrics (plus Prometheus' own `up`).

mod common;
use common::*;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Metric names a PromQL expression selects: identifiers that are not functions, keywords,
/// label names (inside `{}` or grouping clauses) or durations.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Strings and label matchers first: their contents are not metric names.
    let mut cleaned = String::new();
    let mut chars = expr.chars().peekable();
    let mut depth = 0;
    while let Some(ch) = chars.next() {
        match ch {
            '"' | '\'' | '`' => {
                for c in chars.by_ref() {
                    if c == ch {
                        break;
                    }
                }
                cleaned.push(' ');
            }
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                cleaned.push(' ');
            }
            '[' => {
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                }
                cleaned.push(' ');
            }
            _ if depth > 0 => {}
            _ => cleaned.push(ch),
        }
    }
    let grouping =
        regex::Regex::new(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
            .unwrap();
    let cleaned = grouping.replace_all(&cleaned, " ");
    let ident = regex::Regex::new(r"[a-zA-Z_:][a-zA-Z0-9_:]*(\s*\()?").unwrap();
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
        "Inf",
        "NaN",
    ];
    ident
        .captures_iter(&cleaned)
        .filter(|c| c.get(1).is_none())
        .map(|c| c[0].to_owned())
        .filter(|n| !KEYWORDS.contains(&n.as_str()))
        // A number's exponent (1e3) or a unit suffix is not an identifier start.
        .filter(|n| {
            let at = cleaned.find(n.as_str()).unwrap_or(0);
            at == 0 || !cleaned.as_bytes()[at - 1].is_ascii_digit()
        })
        .collect()
}

#[test]
fn metric_names_are_found_and_nothing_else() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (notifier, le) (rate(auditwatch_notification_duration_seconds_bucket{instance=~"$x", queue!="a b"}[5m]))) / on (job) group_left(instance) up or vector(0) > bool 1e3"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["auditwatch_notification_duration_seconds_bucket", "up"]
    );
}

/// Grafana's variables, replaced by values Prometheus accepts.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("${instance}", ".*")
        .replace("$instance", ".*")
}

struct Query {
    dashboard: String,
    panel: String,
    expr: String,
}

/// Every target expression of every panel (rows included) of every dashboard.
fn dashboard_queries() -> (Vec<Query>, Vec<(String, serde_json::Value)>) {
    let mut queries = Vec::new();
    let mut dashboards = Vec::new();
    let dir = repo().join("dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards in {}", dir.display());
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        fn walk(panels: &serde_json::Value, dashboard: &str, out: &mut Vec<Query>) {
            for p in panels.as_array().into_iter().flatten() {
                for t in p["targets"].as_array().into_iter().flatten() {
                    if let Some(expr) = t["expr"].as_str() {
                        out.push(Query {
                            dashboard: dashboard.to_owned(),
                            panel: p["title"].as_str().unwrap_or_default().to_owned(),
                            expr: expr.to_owned(),
                        });
                    }
                }
                walk(&p["panels"], dashboard, out);
            }
        }
        walk(&dash["panels"], &name, &mut queries);
        dashboards.push((name, dash));
    }
    (queries, dashboards)
}

#[test]
fn dashboards_are_portable_and_laid_out() {
    let (queries, dashboards) = dashboard_queries();
    assert!(queries.len() >= 20, "expected a full dashboard");
    let uid = regex::Regex::new(r#""uid":"([^"]*)""#).unwrap();
    for (name, dash) in dashboards {
        assert!(
            dash["schemaVersion"].as_u64().unwrap_or(0) >= 39,
            "{name}: schemaVersion of a current Grafana (>= 39)"
        );
        let vars = dash["templating"]["list"].as_array().unwrap();
        assert!(
            vars.iter()
                .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
            "{name}: a datasource variable of type prometheus"
        );
        // Every datasource reference is the variable (or Grafana's built-in annotations).
        let text = serde_json::to_string(&dash).unwrap();
        for c in uid.captures_iter(&text) {
            let v = &c[1];
            assert!(
                v == "${datasource}" || v == "-- Grafana --" || v == dash["uid"],
                "{name}: hard-coded uid {v:?}"
            );
        }
        // Unique ids; panels of the same row do not overlap.
        let mut ids = BTreeSet::new();
        let mut boxes: Vec<(String, [u64; 4])> = Vec::new();
        for p in dash["panels"].as_array().unwrap() {
            assert!(
                ids.insert(p["id"].as_u64().unwrap()),
                "{name}: duplicate panel id"
            );
            let g = &p["gridPos"];
            let b = ["x", "y", "w", "h"].map(|k| g[k].as_u64().unwrap());
            assert!(
                b[0] + b[2] <= 24,
                "{name}: {} is wider than the grid",
                p["title"]
            );
            for (other, o) in &boxes {
                let overlap = b[0] < o[0] + o[2]
                    && o[0] < b[0] + b[2]
                    && b[1] < o[1] + o[3]
                    && o[1] < b[1] + b[3];
                assert!(!overlap, "{name}: {} overlaps {other}", p["title"]);
            }
            if p["type"] != "row" {
                assert_eq!(
                    p["datasource"]["uid"], "${datasource}",
                    "{name}: {}",
                    p["title"]
                );
                assert!(
                    !p["targets"].as_array().unwrap().is_empty(),
                    "{}",
                    p["title"]
                );
            }
            boxes.push((p["title"].as_str().unwrap().to_owned(), b));
        }
    }
}

/// Runs promtool on a rule file made of one recording rule per expression: promtool parses
/// each with Prometheus' own parser.
fn promtool_parses(dir: &Path, queries: &[Query]) {
    let mut file = String::from("groups:\n  - name: dashboards\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        file.push_str(&format!(
            "      - record: dashboard:expr_{i}\n        expr: {}\n",
            serde_json::to_string(&substitute(&q.expr)).unwrap()
        ));
    }
    let path = dir.join("dashboard-exprs.yaml");
    std::fs::write(&path, file).unwrap();
    let out = Command::new(need("/usr/bin/promtool"))
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // Point at the panel: promtool names the rule (dashboard:expr_<i>) or its line.
        let mut culprits = String::new();
        for (i, q) in queries.iter().enumerate() {
            if text.contains(&format!("expr_{i}\"")) || text.contains(&format!("expr_{i} ")) {
                culprits.push_str(&format!("\n  {} / {}: {}", q.dashboard, q.panel, q.expr));
            }
        }
        panic!("promtool rejects dashboard expressions:{culprits}\n{text}");
    }
}

/// The metric names of a scrape: family names and sample names (`_bucket`, `_sum`, `_count`).
fn exported(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter_map(|l| {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                rest.split_whitespace().next().map(str::to_owned)
            } else if l.starts_with('#') || l.trim().is_empty() {
                None
            } else {
                l.split(['{', ' ']).next().map(str::to_owned)
            }
        })
        .collect()
}

#[test]
fn dashboard_queries_parse_name_exported_metrics_and_run_in_prometheus() {
    let (queries, _) = dashboard_queries();
    let dir = Scratch::new("observability");
    promtool_parses(&dir.0, &queries);

    // A running auditwatch with a webhook source, rules, a notifier and an API token (so every
    // family with labels has its series), fed a few events.
    let (hook, metrics_port, prom_port, dead) =
        (free_port(), free_port(), free_port(), free_port());
    std::fs::write(
        dir.0.join("rules.yaml"),
        "rules:\n  - name: secret-read\n    severity: medium\n    match: { verbs: [get], resources: [secrets] }\n",
    )
    .unwrap();
    std::fs::write(dir.0.join("token"), "t0ken\n").unwrap();
    let config = dir.0.join("auditwatch.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: state\nrules: [rules.yaml]\nalerts: {{ stdout: json }}\nhttp: {{ listen: \"127.0.0.1:{metrics_port}\", auth: {{ bearer_token_file: token }} }}\nsources:\n  - webhook: {{ listen: \"127.0.0.1:{hook}\", labels: {{ cluster: test }} }}\nreceivers:\n  - {{ name: hook, webhook_configs: [ {{ url: \"http://127.0.0.1:{dead}/\" }} ] }}\nroute: {{ receiver: hook }}\n"
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&dir.0, &config, metrics_port, 1);
    post(
        hook,
        &[
            event("o-1", "get", "alice", "secrets", "db", 200),
            event("o-2", "list", "bob", "pods", "", 403),
        ],
    );
    wait_until("the events to be counted and the clocks published", || {
        let m = daemon.metrics();
        sample(&m, r#"auditwatch_events_decoded_total{source="webhook"}"#) == 2.0
            && m.contains("auditwatch_source_newest_event_timestamp_seconds{")
    });
    let scraped = daemon.metrics();
    let names = exported(&scraped);
    let mut unknown = Vec::new();
    for q in &queries {
        for m in metric_names(&q.expr) {
            if !names.contains(&m) {
                unknown.push(format!("{} / {}: {m}", q.dashboard, q.panel));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "dashboards query metrics auditwatch does not export:\n  {}",
        unknown.join("\n  ")
    );
    let (_, dashboards) = dashboard_queries();
    for (name, dash) in &dashboards {
        for v in dash["templating"]["list"].as_array().unwrap() {
            if let Some(q) = v["query"]["query"].as_str()
                && let Some(args) = q.strip_prefix("label_values(")
            {
                let metric = args.split(',').next().unwrap().trim();
                assert!(
                    names.contains(metric),
                    "{name}: variable {} reads {metric}",
                    v["name"]
                );
            }
        }
    }

    // A real Prometheus scrapes it; every expression must evaluate without error.
    let _prom = prometheus(&dir.0, prom_port, metrics_port);
    let client = reqwest::blocking::Client::new();
    let query = |expr: &str| -> serde_json::Value {
        client
            .get(format!("http://127.0.0.1:{prom_port}/api/v1/query"))
            .query(&[("query", expr)])
            .send()
            .and_then(|r| r.json())
            .unwrap_or_default()
    };
    wait_until("prometheus to scrape auditwatch twice", || {
        query("count_over_time(auditwatch_rules_loaded[1m])")["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|n| n >= 2.0)
    });
    for q in &queries {
        let answer = query(&substitute(&q.expr));
        assert_eq!(
            answer["status"], "success",
            "{} / {}: {}\n{answer}",
            q.dashboard, q.panel, q.expr
        );
    }
    // And the audit-stream panels see the events that were sent.
    let by_verb = query("sum by (verb) (auditwatch_audit_events_total)");
    let verbs: BTreeSet<String> = by_verb["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metric"]["verb"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(verbs, BTreeSet::from(["get".to_owned(), "list".to_owned()]));
}

#[test]
fn self_monitoring_rules_pass_promtool_and_name_exported_metrics() {
    let promtool = need("/usr/bin/promtool");
    let rules = repo().join("deploy/prometheus-rules.yaml");
    for args in [
        vec!["check", "rules", "prometheus-rules.yaml"],
        vec!["test", "rules", "prometheus-rules.test.yaml"],
    ] {
        let out = Command::new(&promtool)
            .args(&args)
            .current_dir(rules.parent().unwrap())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The names: against a scrape of a daemon on defaults plus a notifier and an API token.
    let dir = Scratch::new("observability-rules");
    std::fs::write(dir.0.join("token"), "t0ken\n").unwrap();
    let (hook, metrics_port) = (free_port(), free_port());
    let config = dir.0.join("auditwatch.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: state\nhttp: {{ listen: \"127.0.0.1:{metrics_port}\", auth: {{ bearer_token_file: token }} }}\nsources:\n  - webhook: {{ listen: \"127.0.0.1:{hook}\" }}\nnotifiers:\n  m: {{ metrics: {{}} }}\nroute: {{ notify: [m] }}\n"
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&dir.0, &config, metrics_port, 1);
    let names = exported(&daemon.metrics());
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&rules).unwrap()).unwrap();
    let mut alerts = 0;
    for group in doc["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            alerts += 1;
            let expr = rule["expr"].as_str().unwrap();
            for m in metric_names(expr) {
                assert!(
                    m == "up" || names.contains(&m),
                    "{}: {m} is not exported",
                    rule["alert"].as_str().unwrap_or_default()
                );
            }
        }
    }
    assert!(alerts >= 5);
}
