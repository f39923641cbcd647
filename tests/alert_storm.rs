//! Alert storms, end to end through `auditwatch run`: a rule that fires on every request is
//! held to its rate limit (`alerts.storm`), the excess becomes one summary alert when its
//! minute is over, the storm metric counts what was folded, and another rule's alert, sent in
//! the middle of the flood, still comes out at once.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn line(id: &str, verb: &str, user: &str, resource: &str, time: &str) -> String {
    format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{id}","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/prod/{resource}","verb":"{verb}","user":{{"username":"{user}"}},"sourceIPs":["10.0.0.9"],"objectRef":{{"resource":"{resource}","namespace":"prod","name":"x"}},"responseStatus":{{"code":200}},"requestReceivedTimestamp":"{time}","stageTimestamp":"{time}"}}"#
    )
}

fn alerts(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("state/alerts.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn a_flooding_rule_is_folded_and_others_still_alert_at_once() {
    let dir = Scratch::new("storm");
    std::fs::write(
        dir.0.join("rules.yaml"),
        "rules:\n  - name: flood\n    severity: low\n    match: { verbs: [list] }\n    group_by: [user.username]\n  - name: mallory-reads-secrets\n    severity: high\n    match: { verbs: [get], resources: [secrets], users: [mallory] }\n",
    )
    .unwrap();
    let (hook, metrics) = (free_port(), free_port());
    let config = dir.0.join("auditwatch.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: state\nrules: [rules.yaml]\nalerts: {{ stdout: off, storm: {{ max_per_rule: 50, per: 1m }} }}\nhttp: {{ listen: \"127.0.0.1:{metrics}\" }}\nsources:\n  - webhook: {{ listen: \"127.0.0.1:{hook}\" }}\n"
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&dir.0, &config, metrics, 0);
    // Every flood request at one instant five minutes ago: one storm bucket.
    let then = now_rfc3339(-300_000);
    let (batches, per_batch) = (10, 200);
    for b in 0..batches {
        let mut events: Vec<String> = (0..per_batch)
            .map(|i| {
                let user = format!("user-{}", i % 7);
                line(&format!("f-{b}-{i}"), "list", &user, "pods", &then)
            })
            .collect();
        if b == batches - 1 {
            events.push(line("m-1", "get", "mallory", "secrets", &then));
        }
        let sent = Instant::now();
        post(hook, &events);
        if b == batches - 1 {
            wait_until("mallory's alert", || {
                alerts(&dir.0)
                    .iter()
                    .any(|a| a["rule"] == "mallory-reads-secrets")
            });
            // Behind 2,000 flood alerts: still at once (generous for a slow, busy machine).
            let took = sent.elapsed();
            assert!(took < Duration::from_secs(10), "took {took:?}");
        }
    }
    let sent: Vec<_> = alerts(&dir.0)
        .into_iter()
        .filter(|a| a["rule"] == "flood")
        .collect();
    assert_eq!(sent.len(), 50, "the limit lets 50 through");
    assert!(sent.iter().all(|a| a["kind"] == "event"));

    // Event time moves past the storm's minute: its summary comes.
    post(
        hook,
        &[line(
            "later",
            "get",
            "someone",
            "configmaps",
            &now_rfc3339(0),
        )],
    );
    wait_until("the storm summary", || {
        alerts(&dir.0).iter().any(|a| a["kind"] == "storm")
    });
    let all = alerts(&dir.0);
    let storm: Vec<_> = all.iter().filter(|a| a["kind"] == "storm").collect();
    assert_eq!(storm.len(), 1, "one summary");
    let s = storm[0];
    assert_eq!(s["rule"], "flood");
    assert_eq!(s["count"], 2000);
    assert_eq!(s["suppressed"], 1950);
    assert_eq!(s["labels"]["storm"], "true");
    let text = s["summary"].as_str().unwrap();
    assert!(
        text.starts_with(
            "rule flood fired 2000 times in 1m; 1950 suppressed; top groups: user.username=user-"
        ),
        "{text}"
    );
    let m = daemon.metrics();
    assert_eq!(
        sample(
            &m,
            "auditwatch_alerts_storm_suppressed_total{rule=\"flood\"}"
        ),
        1950.0,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "auditwatch_alerts_total{rule=\"mallory-reads-secrets\",severity=\"high\"}"
        ),
        1.0
    );
    assert_eq!(daemon.terminate().code(), Some(0));
}
