//! `auditwatch explain` through the binary: after a replay that wrote an archive, and on a
//! daemon's state directory. The alert, its requests in full from the archive, each criterion
//! of the rule met or not, and the same user's other requests within ±15 minutes, counted
//! as `auditwatch query` counts them.

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

/// Three forbidden pod lists of one user within ten minutes (the demo log has them, served
/// to system:admin between 19:55 and 19:59).
const RULES: &str = r#"
rules:
  - name: pods-forbidden
    severity: high
    match:
      verbs: [list]
      resources: [pods]
      response_codes: [403]
      except:
        - namespaces: [kube-system]
    condition: event.user.username.starts_with("system:")
    window: { over: 10m, threshold: 3, group_by: [user.username] }
"#;

fn auditwatch(dir: &Path, args: &[&str]) -> (i32, String, String) {
    common::cli(Some(dir), args)
}

fn demo() -> PathBuf {
    common::repo().join("tests/fixtures/audit2rbac-demo.log")
}

/// What every explanation of the pods-forbidden alert must say.
fn check_explanation(dir: &Path, alert: &serde_json::Value, text: &str) {
    let id = alert["id"].as_str().unwrap();
    assert!(text.starts_with(&format!("alert {id}\n")), "{text}");
    assert!(
        text.contains("contributing requests: 3 of 3 in the archive"),
        "{text}"
    );
    for audit_id in alert["audit_ids"].as_array().unwrap() {
        // In full: the auditID as a JSON member of the pretty-printed event.
        let member = format!("\"auditID\": {audit_id}");
        assert!(text.contains(&member), "{member} not in {text}");
    }
    // Every criterion, for each of the three requests.
    for line in [
        "met     verbs  (\"list\")",
        "met     response_codes  (\"403\")",
        "met     resources  (\"/pods/\")",
        "met     except[0] (must not match)",
        "NOT met namespaces  (\"default\")",
        "met     condition",
    ] {
        assert!(text.contains(line), "{line:?} not in {text}");
    }
    assert_eq!(text.matches("criteria of rule pods-forbidden:").count(), 3);
    // The same user's other requests: as many as `query` counts in the window, minus the
    // three contributors.
    let window = |key: &str, sign: i64| {
        let t = chrono::DateTime::parse_from_rfc3339(alert[key].as_str().unwrap()).unwrap();
        (t + chrono::Duration::minutes(15 * sign))
            .to_utc()
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    };
    let (from, to) = (window("first_seen", -1), window("last_seen", 1));
    let (code, out, err) = auditwatch(
        dir,
        &[
            "query",
            "username = 'system:admin'",
            "--from",
            &from,
            "--to",
            &to,
            "--format",
            "json",
            demo().to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let others = v["count"].as_u64().unwrap() - 3;
    assert!(others > 0);
    let header =
        format!("other requests of system:admin from {from} to {to} (±15 min): {others}\n");
    assert!(text.contains(&header), "{header:?} not in {text}");
}

#[test]
fn explain_after_a_replay_that_wrote_an_archive() {
    let dir = common::Scratch::new("explain-replay");
    std::fs::write(dir.0.join("rules.yaml"), RULES).unwrap();
    let (code, out, err) = auditwatch(
        &dir.0,
        &[
            "replay",
            "--rules",
            "rules.yaml",
            "--archive",
            "archive",
            "--format",
            "json",
            demo().to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    std::fs::write(dir.0.join("alerts.jsonl"), &out).unwrap();
    let alert: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(alert["rule"], "pods-forbidden");
    let id = alert["id"].as_str().unwrap();
    let (code, text, err) = auditwatch(
        &dir.0,
        &[
            "explain",
            &id[..12],
            "--alerts",
            "alerts.jsonl",
            "--archive",
            "archive",
            "--rules",
            "rules.yaml",
        ],
    );
    assert_eq!(code, 0, "{err}");
    check_explanation(&dir.0, &alert, &text);

    // An unknown ID: exit 2, said so.
    let (code, _, err) = auditwatch(
        &dir.0,
        &[
            "explain",
            "ffffffff",
            "--alerts",
            "alerts.jsonl",
            "--archive",
            "archive",
        ],
    );
    assert_eq!(code, 2);
    assert!(err.contains("no alert ffffffff in alerts.jsonl"), "{err}");
}

#[test]
fn explain_reads_a_daemons_state_directory() {
    let dir = common::Scratch::new("explain-daemon");
    std::fs::write(dir.0.join("rules.yaml"), RULES).unwrap();
    let (hook, metrics) = (common::free_port(), common::free_port());
    let config = common::daemon_config(
        &dir.0,
        metrics,
        &format!(
            r#"
alerts: {{ stdout: json }}
sources: [ {{ webhook: {{ listen: "127.0.0.1:{hook}" }} }} ]
"#
        ),
    );
    let daemon = common::Daemon::start(&dir.0, &config, metrics, 0);
    let events: Vec<String> = std::fs::read_to_string(demo())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    common::post(hook, &events);
    common::wait_until("the alert in the journal", || {
        std::fs::read_to_string(dir.0.join("state/alerts.jsonl"))
            .is_ok_and(|t| t.contains("pods-forbidden"))
    });
    assert_eq!(daemon.terminate().code(), Some(0));
    let journal = std::fs::read_to_string(dir.0.join("state/alerts.jsonl")).unwrap();
    let alert: serde_json::Value = journal
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|a| a["rule"] == "pods-forbidden")
        .unwrap();
    let (code, text, err) = auditwatch(
        &dir.0,
        &[
            "explain",
            alert["id"].as_str().unwrap(),
            "--config",
            "auditwatch.yaml",
        ],
    );
    assert_eq!(code, 0, "{err}");
    check_explanation(&dir.0, &alert, &text);
}
