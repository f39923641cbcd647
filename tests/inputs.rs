//! Managed-cluster inputs (EKS, AKS, GKE) on the Panther corpus (`../shared/corpus/panther`):
//! every record of each shape unwraps into the audit event Panther's own data says it holds,
//! and the binary alerts on managed records exactly as on the native events inside them.

use std::path::PathBuf;
use std::process::Command;

use auditwatch::event::decode_each;
use auditwatch::event::{AuditEvent, InputFormat, Position};
use serde_json::Value;

mod common;

fn corpus() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/corpus/panther/panther_k8s_expectations.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the shared corpus beside the repo)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

/// The fields rules read, as comparable strings.
fn summary(ev: &AuditEvent<'_>) -> Vec<String> {
    let r = ev.object_ref();
    vec![
        ev.verb.to_string(),
        ev.user.username.to_string(),
        r.resource.to_string(),
        r.subresource.to_string(),
        r.namespace.to_string(),
        r.name.to_string(),
        r.api_group.to_string(),
        ev.response_code().to_string(),
        ev.source_ips
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(","),
        ev.request_object
            .map(|o| o.get().len().to_string())
            .unwrap_or_default(),
    ]
}

fn decode(format: InputFormat, text: &str) -> (Vec<Vec<String>>, Vec<String>) {
    let position = Position {
        source: "case".into(),
        line: 1,
        offset: 0,
        item: None,
    };
    let mut events = Vec::new();
    let mut errors = Vec::new();
    decode_each(
        format,
        &position,
        text,
        &mut |e| errors.push(e.to_string()),
        &mut |ev| events.push(summary(ev)),
    );
    (events, errors)
}

#[test]
fn eks_and_aks_records_hold_the_event_panther_derived() {
    let corpus = corpus();
    let mut checked = [0usize; 2];
    for case in corpus["cases"].as_array().unwrap() {
        let format = case["format"].as_str().unwrap();
        let slot = match format {
            "k8s_audit_event" => 0,
            "aks_diagnostic_record" => 1,
            _ => continue,
        };
        let name = format!(
            "{} #{} ({})",
            case["rule_id"], case["test_index"], case["test_name"]
        );
        let log = case["log"].to_string();
        let (got, errors) = decode(InputFormat::Auto, &log);
        if case["audit_event"].is_null() {
            // The one AKS record of another category (an Azure activity log entry).
            assert!(
                got.is_empty() && errors.is_empty(),
                "{name}: {got:?} {errors:?}"
            );
            continue;
        }
        let (want, want_errors) = decode(InputFormat::Native, &case["audit_event"].to_string());
        assert_eq!(want_errors, Vec::<String>::new(), "{name}");
        assert_eq!(errors, Vec::<String>::new(), "{name}");
        assert_eq!(got, want, "{name}");
        // The explicit format reads it too (EKS native events are native).
        let explicit = if slot == 0 {
            InputFormat::Native
        } else {
            InputFormat::Aks
        };
        assert_eq!(decode(explicit, &log).0, want, "{name} as {explicit:?}");
        checked[slot] += 1;
    }
    assert_eq!(checked, [188, 34], "every EKS and AKS case with an event");
}

#[test]
fn gke_entries_map_onto_audit_events() {
    let corpus = corpus();
    let mut mapped = 0;
    for case in corpus["cases"].as_array().unwrap() {
        if case["format"] != "gke_cloud_audit_log" {
            continue;
        }
        let name = format!("{} #{}", case["rule_id"], case["test_index"]);
        let log = &case["log"];
        let p = &log["protoPayload"];
        let (got, errors) = decode(InputFormat::Auto, &log.to_string());
        assert_eq!(errors, Vec::<String>::new(), "{name}");
        assert_eq!(decode(InputFormat::Gke, &log.to_string()).0, got, "{name}");
        if p["serviceName"] != "k8s.io" {
            assert!(got.is_empty(), "{name}: another service's entry is skipped");
            continue;
        }
        assert_eq!(got.len(), 1, "{name}");
        let ev = &got[0];
        let method = p["methodName"].as_str().unwrap();
        let parts: Vec<&str> = method.split('.').collect();
        if let Some(v) = parts
            .iter()
            .position(|s| s.starts_with('v') && s[1..].starts_with(|c: char| c.is_ascii_digit()))
        {
            assert_eq!(ev[0], *parts.last().unwrap(), "{name}: verb");
            assert_eq!(ev[2], parts[v + 1], "{name}: resource");
            if parts.len() == v + 4 {
                assert_eq!(ev[3], parts[v + 2], "{name}: subresource");
            }
        }
        assert_eq!(
            ev[1],
            p["authenticationInfo"]["principalEmail"]
                .as_str()
                .unwrap_or(""),
            "{name}: user"
        );
        let expected_code = match p["status"]["code"].as_i64() {
            Some(7) => "403",
            Some(16) => "401",
            None | Some(0) => "200",
            Some(other) => panic!("{name}: unexpected gRPC code {other} in the corpus"),
        };
        assert_eq!(ev[7], expected_code, "{name}: code");
        assert_eq!(
            ev[8],
            p["requestMetadata"]["callerIP"].as_str().unwrap_or(""),
            "{name}: source IP"
        );
        assert_eq!(
            !ev[9].is_empty(),
            p.get("request").is_some(),
            "{name}: request object"
        );
        mapped += 1;
    }
    assert_eq!(mapped, 33, "every GKE case of the k8s.io service");
}

#[test]
fn the_binary_alerts_on_managed_records_as_on_native_events() {
    use std::io::Write;
    let dir = common::Scratch::new("inputs");
    let rules = dir.0.join("rules.yaml");
    std::fs::write(
        &rules,
        "rules:\n  - name: secret-read\n    severity: medium\n    match: { verbs: [get], resources: [secrets] }\n    summary: '{{ user.username }} read {{ objectRef.namespace }}/{{ objectRef.name }}'\n",
    )
    .unwrap();
    let event = |id: &str, user: &str| {
        format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"{id}","stage":"ResponseComplete","verb":"get","user":{{"username":"{user}"}},"objectRef":{{"resource":"secrets","namespace":"prod","name":"db"}},"responseStatus":{{"code":200}},"stageTimestamp":"2026-11-23T10:00:0{}.000000Z"}}"#,
            id.len() % 10
        )
    };
    // EKS: a subscription payload, gzipped and base64'd, on one line.
    let payload = serde_json::json!({"messageType": "DATA_MESSAGE", "logEvents": [{"id": "1", "timestamp": 1, "message": event("e", "eks-user")}]}).to_string();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(payload.as_bytes()).unwrap();
    use base64::Engine as _;
    let eks = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
    // AKS: an Event Hub batch with one audit record and one record of another category.
    let aks = serde_json::json!({"records": [
        {"category": "kube-audit", "properties": {"log": event("aa", "aks-user")}},
        {"category": "cluster-autoscaler", "properties": {"log": "scale up"}},
    ]})
    .to_string();
    // GKE: a Cloud Audit Log entry.
    let gke = serde_json::json!({
        "protoPayload": {
            "methodName": "io.k8s.core.v1.secrets.get",
            "serviceName": "k8s.io",
            "authenticationInfo": {"principalEmail": "gke-user@example.com"},
            "resourceName": "core/v1/namespaces/prod/secrets/db",
            "requestMetadata": {"callerIP": "10.0.0.9"}
        },
        "operation": {"id": "ggg", "first": true, "last": true},
        "timestamp": "2026-11-23T10:00:03.000000Z"
    })
    .to_string();
    let input = dir.0.join("mixed.jsonl");
    std::fs::write(
        &input,
        format!("{eks}\n{aks}\n{gke}\n{}\n", event("nnnn", "native-user")),
    )
    .unwrap();
    let replay = |options: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_auditwatch"))
            .arg("replay")
            .args(options)
            .arg(&input)
            .arg("--rules")
            .arg(&rules)
            .output()
            .unwrap()
    };
    let out = replay(&["--format", "json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summaries: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["summary"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        summaries,
        [
            "eks-user read prod/db",
            "aks-user read prod/db",
            "gke-user@example.com read prod/db",
            "native-user read prod/db"
        ],
        "{stderr}"
    );
    // An explicit format refuses what is not in it, naming the line.
    let out = replay(&["--input-format", "gke"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("mixed.jsonl:1: not an audit event: not in the Gke input format"),
        "{stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        1,
        "only the GKE entry"
    );
}

#[test]
fn the_webhook_takes_firehose_and_event_hub_deliveries() {
    use base64::Engine as _;
    use std::io::Write;
    let dir = common::Scratch::new("inputs-webhook");
    let (hook, metrics) = (common::free_port(), common::free_port());
    std::fs::write(
        dir.0.join("rules.yaml"),
        "rules:\n  - name: secret-read\n    severity: medium\n    match: { verbs: [get], resources: [secrets] }\n    summary: '{{ user.username }} read a secret'\n",
    )
    .unwrap();
    std::fs::write(dir.0.join("token"), "s3cret\n").unwrap();
    let config = dir.0.join("auditwatch.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: state\nrules: [rules.yaml]\nalerts: {{ stdout: json }}\nhttp: {{ listen: \"127.0.0.1:{metrics}\" }}\nsources:\n  - webhook: {{ listen: \"127.0.0.1:{hook}\", bearer_token_file: token }}\n"
        ),
    )
    .unwrap();
    let _daemon = common::Daemon::start(&dir.0, &config, metrics, 1);
    let event =
        |user: &str| common::event(&format!("id-{user}"), "get", user, "secrets", "db", 200);
    let payload = serde_json::json!({"messageType": "DATA_MESSAGE", "logEvents": [{"id": "1", "timestamp": 1, "message": event("via-firehose")}]}).to_string();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(payload.as_bytes()).unwrap();
    let data = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
    let client = reqwest::blocking::Client::new();
    let url = format!("http://127.0.0.1:{hook}/");
    let firehose = client
        .post(&url)
        .header("X-Amz-Firehose-Request-Id", "req-42")
        .header("X-Amz-Firehose-Access-Key", "s3cret")
        .header("Content-Type", "application/json")
        .body(
            serde_json::json!({"requestId": "req-42", "timestamp": 1, "records": [{"data": data}]})
                .to_string(),
        )
        .send()
        .unwrap();
    assert_eq!(firehose.status().as_u16(), 200);
    let answer: Value = firehose.json().unwrap();
    assert_eq!(
        answer["requestId"], "req-42",
        "Firehose needs its request ID back"
    );
    assert!(answer["timestamp"].as_u64().unwrap() > 0);
    let wrong_key = client
        .post(&url)
        .header("X-Amz-Firehose-Access-Key", "guess")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(wrong_key.status().as_u16(), 403);
    let event_hub = client
        .post(&url)
        .bearer_auth("s3cret")
        .header("Content-Type", "application/json")
        .body(serde_json::json!({"records": [{"category": "kube-audit", "properties": {"log": event("via-event-hub")}}]}).to_string())
        .send()
        .unwrap();
    assert_eq!(event_hub.status().as_u16(), 200);
    let not_audit = client
        .post(&url)
        .bearer_auth("s3cret")
        .header("Content-Type", "application/json")
        .body(r#"{"records": [{"category": "kube-audit", "properties": {}}]}"#)
        .send()
        .unwrap();
    assert_eq!(not_audit.status().as_u16(), 400);
    let stdout = dir.0.join("stdout-1.jsonl");
    common::wait_until("both alerts", || {
        let text = std::fs::read_to_string(&stdout).unwrap_or_default();
        text.contains("via-firehose read a secret") && text.contains("via-event-hub read a secret")
    });
}
