//! Native Sigma conformance: the 16 SigmaHQ Kubernetes audit rules
//! (`../shared/corpus/sigma/rules`, DRL 1.1) loaded as they are, evaluated on every event of the
//! corpus, must match exactly the events two independent Sigma engines matched
//! (`engine_matches.json`: sigma-rust 0.7.0 and rsigma-eval 0.23.0, which agree on all of them).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use auditwatch::event::{Record, decode_event, decode_record};
use auditwatch::rules::fields::ObjectCache;
use auditwatch::rules::{LoadOptions, RuleSet, load_paths};
use serde_json::Value;

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

/// (rule file, event reference) pairs.
type Matches = BTreeSet<(String, String)>;

fn rules() -> RuleSet {
    load_paths(
        &[shared().join("corpus/sigma/rules")],
        &LoadOptions::default(),
    )
    .unwrap_or_else(|e| panic!("the SigmaHQ rules must load as they are:\n{e}"))
}

/// Evaluates every rule on one event (`text` is its JSON) and records what matched.
fn evaluate(set: &RuleSet, text: &str, reference: &str, out: &mut Matches) {
    let ev = match decode_record(text) {
        Ok(Record::Event(ev)) => ev,
        Ok(Record::Batch(_)) => panic!("{reference}: a batch"),
        Err(_) => return, // not an audit event (the oracle skipped those too)
    };
    let objects = ObjectCache::new(set.object_paths());
    for rule in &set.rules {
        if rule.matcher.matches(&ev, &objects) {
            out.insert((format!("{}.yml", rule.name), reference.to_owned()));
        }
    }
}

fn json_lines(set: &RuleSet, file: &Path, shown: &str, out: &mut Matches) -> usize {
    let text = std::fs::read_to_string(file).unwrap();
    let mut events = 0;
    for (n, line) in (1..).zip(text.lines()) {
        if line.trim().is_empty() {
            continue;
        }
        if decode_event(line).is_ok() {
            events += 1;
        }
        evaluate(set, line, &format!("{shown}:{n}"), out);
    }
    events
}

#[test]
fn sigmahq_rules_match_what_two_sigma_engines_match() {
    let set = rules();
    assert_eq!(set.rules.len(), 16);
    // DRL 1.1: every rule keeps its author, and alerts carry it.
    assert!(set.rules.iter().all(|r| r.author.is_some()), "authors kept");

    let oracle_doc: Value = serde_json::from_str(
        &std::fs::read_to_string(shared().join("corpus/sigma/engine_matches.json")).unwrap(),
    )
    .unwrap();
    let mut oracle = Matches::new();
    for rule in oracle_doc["rules"].as_array().unwrap() {
        let file = rule["file"].as_str().unwrap();
        for m in rule["matches"].as_array().unwrap() {
            let reference = match m.get("rule_id") {
                Some(id) => format!("panther:{}#{}", id.as_str().unwrap(), m["test_index"]),
                None => format!("{}:{}", m["file"].as_str().unwrap(), m["line"]),
            };
            oracle.insert((file.to_owned(), reference));
        }
    }

    let mut ours = Matches::new();
    let mut counts = [0usize; 4];
    // Panther's derived audit events.
    let panther: Value = serde_json::from_str(
        &std::fs::read_to_string(shared().join("corpus/panther/panther_k8s_expectations.json"))
            .unwrap(),
    )
    .unwrap();
    for case in panther["cases"].as_array().unwrap() {
        if case["audit_event"].is_null() {
            continue;
        }
        counts[0] += 1;
        let reference = format!(
            "panther:{}#{}",
            case["rule_id"].as_str().unwrap(),
            case["test_index"]
        );
        evaluate(
            &set,
            &case["audit_event"].to_string(),
            &reference,
            &mut ours,
        );
    }
    // Falco's traces and the audit2rbac logs, line by line.
    let traces = shared().join("corpus/falco/trace_files/k8s_audit");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&traces)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in &files {
        let shown = format!(
            "shared/corpus/falco/trace_files/k8s_audit/{}",
            f.file_name().unwrap().to_string_lossy()
        );
        counts[1] += json_lines(&set, f, &shown, &mut ours);
    }
    for (slot, name) in [(2, "demo.log"), (3, "demo.v1beta1-raw-501d132.log")] {
        let f = shared().join("corpus/kubernetes/audit2rbac").join(name);
        counts[slot] += json_lines(
            &set,
            &f,
            &format!("shared/corpus/kubernetes/audit2rbac/{name}"),
            &mut ours,
        );
    }
    assert_eq!(
        counts,
        [222, 51, 37, 757],
        "the events the oracle evaluated"
    );

    let missed: Vec<_> = oracle.difference(&ours).collect();
    let extra: Vec<_> = ours.difference(&oracle).collect();
    assert!(
        missed.is_empty() && extra.is_empty(),
        "disagreement with the Sigma engines:\n missed: {missed:#?}\n extra: {extra:#?}"
    );
    // Every rule file accounted for, including the five that cannot match real events.
    assert_eq!(oracle.len(), 316);
}

/// Replays `log` through the SigmaHQ rule `bases` plus one correlation rule (`correlation`,
/// written as `corr.yml`) and returns the alerts.
fn replay_correlation(bases: &[&str], correlation: &str, log: &Path) -> Vec<Value> {
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("aw-sigma-corr-{}-{run}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for base in bases {
        std::fs::copy(
            shared().join("corpus/sigma/rules").join(base),
            dir.join(base),
        )
        .unwrap();
    }
    std::fs::write(dir.join("corr.yml"), correlation).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditwatch"))
        .args(["replay", "--format", "json", "--rules"])
        .arg(&dir)
        .arg("--")
        .arg(log)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const REFUSED: &str = "kubernetes_audit_unauthorized_unauthenticated_actions.yml";
const SECRETS_LISTED: &str = "kubernetes_audit_secrets_enumeration.yml";

/// The corpus' correlation check: `event_count` over the SigmaHQ 401/403 rule, grouped by the
/// impersonated user, on `audit2rbac/demo.log`. rsigma fired for bob, sa1 (twice: at 3 and
/// again at 4 within the span) and alice at 5m/≥3; sa1 at 1m/≥4; nobody at 5m/≥5. auditwatch
/// fires once per group when it reaches the threshold (then the window's group starts over),
/// so it names the same identities with one alert each.
#[test]
fn event_count_correlations_fire_for_the_same_identities() {
    let log = shared().join("corpus/kubernetes/audit2rbac/demo.log");
    let run = |span: &str, gte: u64| -> Vec<String> {
        let correlation = format!(
            "title: Refusal burst per impersonated user\nauthor: auditwatch tests\nlevel: high\ncorrelation:\n  type: event_count\n  rules: [0d933542-1f1f-420d-97d4-21b2c3c492d9]\n  group-by: [impersonatedUser.username]\n  timespan: {span}\n  condition: {{ gte: {gte} }}\n"
        );
        replay_correlation(&[REFUSED], &correlation, &log)
            .iter()
            .map(|a| {
                assert_eq!(a["rule"], "corr", "the base rule does not alert on its own");
                format!(
                    "{} {}",
                    a["group"]["impersonatedUser.username"].as_str().unwrap(),
                    a["count"]
                )
            })
            .collect()
    };
    assert_eq!(
        run("5m", 3),
        ["bob 3", "system:serviceaccount:ns1:sa1 3", "alice 3"]
    );
    assert_eq!(run("1m", 4), ["system:serviceaccount:ns1:sa1 4"]);
    assert_eq!(run("5m", 5), Vec::<String>::new());
}

/// `temporal` / `temporal_ordered` over two SigmaHQ rules on `audit2rbac/demo.log`: bob, sa1
/// and alice are refused (401/403); only alice then lists secrets (line 37, itself refused).
/// "Refused, then secrets listed" fires for alice alone, with the refusal before it (line 36)
/// and the listing; the reverse order never completes; unordered, line 37 alone is both.
#[test]
fn temporal_correlations_fire_on_the_requests_of_each_rule() {
    let log = shared().join("corpus/kubernetes/audit2rbac/demo.log");
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let audit_id = |line: usize| lines[line - 1]["auditID"].as_str().unwrap().to_owned();
    let run = |kind: &str, rules: &str| {
        let correlation = format!(
            "title: Refused then secrets\nauthor: auditwatch tests\nlevel: high\ncorrelation:\n  type: {kind}\n  rules: {rules}\n  group-by: [impersonatedUser.username]\n  timespan: 10m\n"
        );
        replay_correlation(&[REFUSED, SECRETS_LISTED], &correlation, &log)
    };
    let ordered = run(
        "temporal_ordered",
        "[0d933542-1f1f-420d-97d4-21b2c3c492d9, eeb3e9e1-b685-44e4-9232-6bb701f925b5]",
    );
    assert_eq!(ordered.len(), 1, "{ordered:#?}");
    let a = &ordered[0];
    assert_eq!(
        (
            &a["rule"],
            &a["kind"],
            &a["group"]["impersonatedUser.username"]
        ),
        (
            &Value::from("corr"),
            &Value::from("sequence"),
            &Value::from("alice")
        )
    );
    assert_eq!(
        a["audit_ids"],
        serde_json::json!([audit_id(36), audit_id(37)])
    );
    assert_eq!(a["author"], "auditwatch tests");
    let summary = a["summary"].as_str().unwrap();
    assert!(summary.contains(" then "), "{summary}");
    let reversed = run(
        "temporal_ordered",
        "[eeb3e9e1-b685-44e4-9232-6bb701f925b5, 0d933542-1f1f-420d-97d4-21b2c3c492d9]",
    );
    assert!(reversed.is_empty(), "{reversed:#?}");
    let unordered = run(
        "temporal",
        "[eeb3e9e1-b685-44e4-9232-6bb701f925b5, 0d933542-1f1f-420d-97d4-21b2c3c492d9]",
    );
    assert_eq!(unordered.len(), 1, "{unordered:#?}");
    assert_eq!(unordered[0]["audit_ids"], serde_json::json!([audit_id(37)]));
}
