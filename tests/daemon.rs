//! End-to-end tests of `auditwatch run`: the real binary, real TLS with certificates made
//! here, a client that behaves like the apiserver's webhook backend, a writer that appends
//! and rotates a log file like the apiserver's log backend, and kill -9 in the middle.
//! Everything listens on 127.0.0.1 only.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::*;

const RULES: &str = r#"
rules:
  - name: secret-read
    severity: medium
    match: { verbs: [get], resources: [secrets] }
    summary: '{{ user.username }} read secret {{ objectRef.name }}'
  - name: forbidden-burst
    severity: high
    match: { response_codes: [403] }
    window: { threshold: 3, over: 5m, group_by: [user.username] }
"#;

/// Sends what the apiserver's webhook backend sends: JSON, with its content type.
fn json_headers() -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::CONTENT_TYPE,
        reqwest::header::HeaderValue::from_static("application/json"),
    );
    h
}

fn client(pki: &Pki, identity: Option<(&str, &str)>) -> reqwest::blocking::Client {
    let mut b = reqwest::blocking::Client::builder()
        .default_headers(json_headers())
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca.as_bytes()).unwrap())
        .timeout(Duration::from_secs(30));
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// Writes certificates, token and rules; returns the config path.
fn setup_tls(dir: &Path, pki: &Pki) {
    for (name, text) in [
        ("ca.crt", &pki.ca),
        ("tls.crt", &pki.server_cert),
        ("tls.key", &pki.server_key),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    std::fs::write(dir.join("token"), "s3cret-token\n").unwrap();
    std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
}

#[test]
fn webhook_refuses_wrong_certs_tokens_oversized_garbage_and_slow_clients() {
    let dir = Scratch::new("refusals");
    let pki = pki();
    setup_tls(&dir.0, &pki);
    let (tls_port, plain_port, metrics) = (free_port(), free_port(), free_port());
    let config = daemon_config(
        &dir.0,
        metrics,
        &format!(
            r#"
alerts: {{ stdout: json }}
sources:
  - webhook:
      name: apiserver
      listen: "127.0.0.1:{tls_port}"
      path: /audit
      tls: {{ cert: tls.crt, key: tls.key, client_ca: ca.crt }}
      bearer_token_file: token
      max_body: 64KiB
  - webhook:
      name: plain
      listen: "127.0.0.1:{plain_port}"
      read_timeout: 1s
"#
        ),
    );
    let daemon = Daemon::start(&dir.0, &config, metrics, 0);
    let url = format!("https://127.0.0.1:{tls_port}/audit");
    let body = event_list(&[event(
        "aaaaaaaa-0000-0000-0000-000000000001",
        "get",
        "mallory",
        "secrets",
        "db",
        200,
    )]);
    let good = client(&pki, Some((&pki.client_cert, &pki.client_key)));

    // Accepted: right certificate, right token.
    let r = good
        .post(&url)
        .bearer_auth("s3cret-token")
        .body(body.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);

    // A certificate from another CA, and no certificate: the handshake fails.
    let rogue = client(&pki, Some((&pki.rogue_cert, &pki.rogue_key)));
    assert!(
        rogue
            .post(&url)
            .bearer_auth("s3cret-token")
            .body(body.clone())
            .send()
            .is_err()
    );
    let anonymous = client(&pki, None);
    assert!(
        anonymous
            .post(&url)
            .bearer_auth("s3cret-token")
            .body(body.clone())
            .send()
            .is_err()
    );

    // Token missing or wrong.
    let r = good.post(&url).body(body.clone()).send().unwrap();
    assert_eq!(r.status(), 401);
    let r = good
        .post(&url)
        .bearer_auth("guess")
        .body(body.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);

    // Too large (64 KiB limit), also when it only grows past the limit once un-gzipped.
    let big = event_list(&vec![event("x", "get", "u", "pods", "p", 200); 400]);
    // The server answers 413 as soon as the limit is passed and closes; a client still
    // writing may see the close (broken pipe) before it reads the 413. Either way the batch
    // is refused; the metrics below check that it was counted as too large.
    match good
        .post(&url)
        .bearer_auth("s3cret-token")
        .body(big.clone())
        .send()
    {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => assert!(e.is_request(), "unexpected error: {e}"),
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(big.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    assert!(gz.len() < 64 << 10, "compresses below the limit");
    let r = good
        .post(&url)
        .bearer_auth("s3cret-token")
        .header("Content-Encoding", "gzip")
        .body(gz)
        .send()
        .unwrap();
    assert_eq!(r.status(), 413);

    // Garbage: 400 with the reason.
    let r = good
        .post(&url)
        .bearer_auth("s3cret-token")
        .body("{\"kind\": \"EventList\", \"items\": [")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let reason = r.text().unwrap();
    assert!(
        reason.contains("invalid JSON") && reason.contains("line 1"),
        "{reason}"
    );

    // A client that sends headers and then stalls its body gets 408.
    let mut slow = TcpStream::connect(("127.0.0.1", plain_port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        slow,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"kind\":"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = slow.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Only the accepted batch was processed: one alert.
    let m = daemon.metrics();
    for (reason, at_least) in [
        ("tls", 2.0),
        ("unauthenticated", 2.0),
        ("too_large", 2.0),
        ("bad_json", 1.0),
        ("timeout", 1.0),
    ] {
        let source = if reason == "timeout" {
            "plain"
        } else {
            "apiserver"
        };
        let got = sample(
            &m,
            &format!("auditwatch_webhook_refused_total{{reason=\"{reason}\",source=\"{source}\"}}"),
        );
        assert!(got >= at_least, "{reason}: {got}\n{m}");
    }
    assert_eq!(
        sample(&m, "auditwatch_events_decoded_total{source=\"apiserver\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(daemon.terminate().code(), Some(0));
    let alerts = std::fs::read_to_string(dir.0.join("stdout-0.jsonl")).unwrap();
    assert_eq!(alerts.lines().count(), 1, "{alerts}");
    assert!(alerts.contains("mallory read secret db"), "{alerts}");
}

/// Sends batches like the apiserver's webhook backend: each batch until it gets a 2xx,
/// retrying with backoff on 429, 5xx and connection errors.
fn apiserver_sender(
    client: reqwest::blocking::Client,
    url: String,
    batches: Vec<String>,
    sent: Arc<AtomicUsize>,
    pause: Duration,
) {
    for body in batches {
        let mut backoff = Duration::from_millis(20);
        loop {
            let r = client
                .post(&url)
                .bearer_auth("s3cret-token")
                .header("Content-Type", "application/json")
                .body(body.clone())
                .send();
            match r {
                Ok(r) if r.status().is_success() => break,
                Ok(r) if r.status() == 429 || r.status().is_server_error() => {}
                Ok(r) => panic!("batch refused for good: {} {:?}", r.status(), r.text()),
                Err(_) => {} // down (killed): retry
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
        sent.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(pause);
    }
}

/// Appends lines like the apiserver's log backend, rotating (rename + new file) every
/// `rotate_every` lines.
fn log_writer(
    path: PathBuf,
    lines: Vec<String>,
    rotate_every: usize,
    written: Arc<AtomicUsize>,
    pause: Duration,
) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    for (i, line) in lines.iter().enumerate() {
        if i > 0 && i % rotate_every == 0 {
            drop(file);
            let backup = path.with_file_name(format!("audit-rotated-{i:05}.log"));
            std::fs::rename(&path, backup).unwrap();
            file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap();
        }
        // Written in two parts sometimes, so the reader sees partial lines.
        let (a, b) = line.split_at(line.len() / 2);
        file.write_all(a.as_bytes()).unwrap();
        if i % 7 == 0 {
            file.flush().unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        file.write_all(b.as_bytes()).unwrap();
        file.write_all(b"\n").unwrap();
        written.fetch_add(1, Ordering::Relaxed);
        if i % 10 == 0 {
            std::thread::sleep(pause);
        }
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
struct Fired {
    rule: String,
    audit_ids: Vec<String>,
}

fn alert_journal(dir: &Path) -> Vec<Fired> {
    let text = std::fs::read_to_string(dir.join("state/alerts.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            Fired {
                rule: v["rule"].as_str().unwrap().to_owned(),
                audit_ids: v["audit_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().to_owned())
                    .collect(),
            }
        })
        .collect()
}

#[test]
fn kill_9_and_restart_lose_nothing_and_repeat_nothing() {
    let dir = Scratch::new("restart");
    let pki = pki();
    setup_tls(&dir.0, &pki);
    let (port, metrics) = (free_port(), free_port());
    let config = daemon_config(
        &dir.0,
        metrics,
        &format!(
            r#"
# Every alert is counted here: the storm limit is off (tests/alert_storm.rs covers it).
alerts: {{ stdout: json, storm: {{ max_per_rule: 0 }} }}
engine: {{ lateness: 1s, idle_after: 1s }}
snapshot: {{ interval: 1s }}
pipeline: {{ queue: 4 }}
archive: {{ segment_max_age: 1s }}
sources:
  - webhook:
      name: apiserver
      listen: "127.0.0.1:{port}"
      tls: {{ cert: tls.crt, key: tls.key, client_ca: ca.crt }}
      bearer_token_file: token
  - file:
      name: audit-log
      path: audit.log
      poll_interval: 20ms
      start_at: beginning
"#
        ),
    );

    // Webhook: 30 batches of 20 secret reads. Log file: 600 secret reads, and for each of
    // 20 users three 403s (a window that must fire across the restart).
    let uuid = |prefix: u32, i: usize| format!("{prefix:08x}-0000-4000-8000-{i:012x}");
    let mut expected: BTreeSet<Fired> = BTreeSet::new();
    let mut batches = Vec::new();
    for b in 0..30 {
        let events: Vec<String> = (0..20)
            .map(|i| {
                let id = uuid(1, b * 20 + i);
                expected.insert(Fired {
                    rule: "secret-read".into(),
                    audit_ids: vec![id.clone()],
                });
                event(&id, "get", "ci-bot", "secrets", &format!("s{b}-{i}"), 200)
            })
            .collect();
        batches.push(event_list(&events));
    }
    let mut lines = Vec::new();
    let mut forbidden: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..600 {
        let id = uuid(2, i);
        expected.insert(Fired {
            rule: "secret-read".into(),
            audit_ids: vec![id.clone()],
        });
        lines.push(event(
            &id,
            "get",
            "operator",
            "secrets",
            &format!("f{i}"),
            200,
        ));
        if i % 10 == 0 {
            let user = format!("intruder-{}", (i / 10) % 20);
            let id = uuid(3, i);
            forbidden.entry(user.clone()).or_default().push(id.clone());
            lines.push(event(&id, "list", &user, "secrets", "", 403));
        }
    }
    for ids in forbidden.values() {
        assert_eq!(ids.len(), 3);
        expected.insert(Fired {
            rule: "forbidden-burst".into(),
            audit_ids: ids.clone(),
        });
    }

    let mut every_id: BTreeSet<String> = lines
        .iter()
        .chain(&batches)
        .flat_map(|text| audit_ids(text))
        .collect();
    assert_eq!(every_id.len(), 30 * 20 + 600 + 60);
    let daemon = Daemon::start(&dir.0, &config, metrics, 0);
    let sent = Arc::new(AtomicUsize::new(0));
    let written = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (client, url, sent) = (
            client(&pki, Some((&pki.client_cert, &pki.client_key))),
            format!("https://127.0.0.1:{port}/"),
            Arc::clone(&sent),
        );
        std::thread::spawn(move || {
            apiserver_sender(client, url, batches, sent, Duration::from_millis(40))
        })
    };
    let total_lines = lines.len();
    let writer = {
        let (path, written) = (dir.0.join("audit.log"), Arc::clone(&written));
        std::thread::spawn(move || log_writer(path, lines, 150, written, Duration::from_millis(15)))
    };

    // Kill -9 in the middle of both streams, with a snapshot already taken.
    let deadline = Instant::now() + PATIENCE;
    while sent.load(Ordering::Relaxed) < 12 || written.load(Ordering::Relaxed) < 300 {
        assert!(Instant::now() < deadline, "the streams did not progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    daemon.kill9();
    // Down for a while: the writer rotates meanwhile, the sender retries.
    std::thread::sleep(Duration::from_millis(800));
    let daemon = Daemon::start(&dir.0, &config, metrics, 1);
    sender.join().unwrap();
    writer.join().unwrap();
    assert_eq!(written.load(Ordering::Relaxed), total_lines);

    // Wait until everything expected is in the alert journal (and a little longer, to catch
    // duplicates arriving late).
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = alert_journal(&dir.0);
        if got.len() >= expected.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {} alerts arrived",
            got.len(),
            expected.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(daemon.terminate().code(), Some(0));

    let got = alert_journal(&dir.0);
    let unique: BTreeSet<Fired> = got.iter().cloned().collect();
    assert_eq!(got.len(), unique.len(), "duplicated alerts");
    let missing: Vec<_> = expected.difference(&unique).take(5).collect();
    let extra: Vec<_> = unique.difference(&expected).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}\nextra {extra:?}"
    );
    // And it really was a restart that replayed something.
    let log = std::fs::read_to_string(dir.0.join("stderr-1.log")).unwrap();
    assert!(log.contains("state restored from snapshot"), "{log}");

    // The archive holds every accepted event exactly once, across the kill, and its chain
    // verifies.
    let archived = archived_ids(&dir.0.join("state/archive"));
    let mut repeated: Vec<&String> = Vec::new();
    let mut seen = BTreeSet::new();
    for id in &archived {
        if !seen.insert(id.clone()) {
            repeated.push(id);
        }
    }
    assert!(
        repeated.is_empty(),
        "archived twice: {:?}",
        &repeated[..repeated.len().min(5)]
    );
    let missing: Vec<_> = every_id.difference(&seen).take(5).collect();
    assert!(
        missing.is_empty(),
        "not archived: {missing:?} ({} of {})",
        seen.len(),
        every_id.len()
    );
    every_id.clear();
    let verify = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
        .arg("verify")
        .arg(dir.0.join("state/archive"))
        .output()
        .unwrap();
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

/// The auditIDs in a JSON line or an EventList body.
fn audit_ids(text: &str) -> Vec<String> {
    text.lines()
        .flat_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            match v["items"].as_array() {
                Some(items) => items
                    .iter()
                    .map(|i| i["auditID"].as_str().unwrap().to_owned())
                    .collect(),
                None => vec![v["auditID"].as_str().unwrap().to_owned()],
            }
        })
        .collect()
}

/// Every auditID in the archive's sealed segments, in order.
fn archived_ids(dir: &Path) -> Vec<String> {
    use arrow_array::Array as _;
    use arrow_array::cast::AsArray as _;
    let mut ids = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    names.sort();
    for path in names {
        let file = std::fs::File::open(&path).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let column = batch.column_by_name("auditID").unwrap().as_string::<i32>();
            for i in 0..column.len() {
                ids.push(column.value(i).to_owned());
            }
        }
    }
    ids
}

#[test]
fn invalid_rule_reload_keeps_the_old_rules_and_a_valid_one_applies() {
    let dir = Scratch::new("reload");
    let (port, metrics) = (free_port(), free_port());
    std::fs::write(dir.0.join("rules.yaml"), RULES).unwrap();
    let config = daemon_config(
        &dir.0,
        metrics,
        &format!(
            r#"
alerts: {{ stdout: json }}
reload: {{ interval: 100ms }}
engine: {{ lateness: 1s, idle_after: 1s }}
sources: [ {{ webhook: {{ listen: "127.0.0.1:{port}" }} }} ]
"#
        ),
    );
    let daemon = Daemon::start(&dir.0, &config, metrics, 0);
    let post = |body: String| {
        reqwest::blocking::Client::builder()
            .default_headers(json_headers())
            .build()
            .unwrap()
            .post(format!("http://127.0.0.1:{port}/"))
            .body(body)
            .send()
            .unwrap()
            .status()
    };
    let wait_for = |series: &str, value: f64| {
        let deadline = Instant::now() + PATIENCE;
        while sample(&daemon.metrics(), series) < value {
            assert!(Instant::now() < deadline, "{series} never reached {value}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Two 403s of a burst of three, then a broken edit: refused, the old rules keep running.
    for i in 0..2 {
        assert_eq!(
            post(event_list(&[event(
                &format!("r{i}"),
                "get",
                "eve",
                "pods",
                "p",
                403
            )])),
            200
        );
    }
    std::fs::write(
        dir.0.join("rules.yaml"),
        "rules:\n  - name: broken\n    severity: extreme\n",
    )
    .unwrap();
    wait_for("auditwatch_rule_reloads_total{result=\"invalid\"}", 1.0);
    assert_eq!(
        post(event_list(&[event("r2", "get", "eve", "pods", "p", 403)])),
        200
    );
    // A valid edit that keeps forbidden-burst as it was and adds a rule: the window survives.
    std::fs::write(
        dir.0.join("rules.yaml"),
        format!("{RULES}\n  - name: pod-read\n    severity: low\n    match: {{ resources: [pods], verbs: [get] }}\n"),
    )
    .unwrap();
    wait_for("auditwatch_rule_reloads_total{result=\"ok\"}", 1.0);
    assert_eq!(
        post(event_list(&[event("r3", "get", "eve", "pods", "p", 403)])),
        200
    );
    wait_for(
        "auditwatch_alerts_total{rule=\"pod-read\",severity=\"low\"}",
        1.0,
    );
    // The burst r0-r2 fires once event time has moved past it (idle_after: 1s).
    wait_for(
        "auditwatch_alerts_total{rule=\"forbidden-burst\",severity=\"high\"}",
        1.0,
    );
    assert_eq!(daemon.terminate().code(), Some(0));
    let out = std::fs::read_to_string(dir.0.join("stdout-0.jsonl")).unwrap();
    let rules: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["rule"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    // r0, r1, r2 made the burst (with the old rules running through the broken edit);
    // r3 starts a new window and fires pod-read.
    let mut rules = rules;
    rules.sort();
    assert_eq!(rules, ["forbidden-burst", "pod-read"], "{out}");
    let stderr = std::fs::read_to_string(dir.0.join("stderr-0.log")).unwrap();
    assert!(
        stderr.contains("rules.yaml:3:15"),
        "the refused reload names the place:\n{stderr}"
    );
}

#[test]
fn config_errors_name_file_line_column() {
    let dir = Scratch::new("config");
    let config = dir.0.join("bad.yaml");
    std::fs::write(
        &config,
        "sources:\n  - webhook:\n      listen: 127.0.0.1:1\n      max_body: lots\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml:4:17:") && err.contains("invalid size"),
        "{err}"
    );
}

/// Issue 17: window state was matched to rules by std's hasher over the rule's debug output,
/// so a new field in a struct or a new toolchain silently restarted every window after an
/// upgrade. A snapshot written by the build before rule ids (3 of 5 refusals) restores into
/// today's build: 2 more refusals fire.
#[test]
fn a_snapshot_from_before_rule_ids_restores_its_windows() {
    let fixture = common::repo().join("tests/fixtures/state-before-rule-ids");
    let dir = Scratch::new("legacy-snapshot");
    std::fs::create_dir_all(dir.0.join("state/journal")).unwrap();
    std::fs::copy(fixture.join("rules.yaml"), dir.0.join("rules.yaml")).unwrap();
    std::fs::copy(
        fixture.join("state/snapshot.msgpack"),
        dir.0.join("state/snapshot.msgpack"),
    )
    .unwrap();
    for entry in std::fs::read_dir(fixture.join("state/journal")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            dir.0.join("state/journal").join(entry.file_name()),
        )
        .unwrap();
    }
    let (metrics, hook) = (free_port(), free_port());
    let config = dir.0.join("auditwatch.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: state\nrules: [rules.yaml]\nalerts: {{ stdout: json }}\nsources: [{{ webhook: {{ listen: \"127.0.0.1:{hook}\" }} }}]\nhttp: {{ listen: \"127.0.0.1:{metrics}\" }}\n"
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&dir.0, &config, metrics, 0);
    let refusal = |i: u32| {
        let ts = format!("2026-01-01T00:00:0{i}.000000Z");
        format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"eeeeeeee-0000-0000-0000-00000000000{i}","stage":"ResponseComplete","verb":"get","user":{{"username":"mallory"}},"objectRef":{{"resource":"secrets","namespace":"prod","name":"db"}},"responseStatus":{{"code":403}},"requestReceivedTimestamp":"{ts}","stageTimestamp":"{ts}"}}"#
        )
    };
    // A later event moves event time past the lateness, so the window sees the new hits.
    let later = refusal(5)
        .replace("\"code\":403", "\"code\":200")
        .replace("00:00:05", "00:01:00");
    common::post(hook, &[refusal(3), refusal(4), later]);
    let out = dir.0.join("stdout-0.jsonl");
    common::wait_until("the alert", || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("brute-force")
    });
    // A batch's items are records (it counted batches).
    let m = daemon.metrics();
    assert_eq!(
        common::sample(&m, "auditwatch_events_received_total{source=\"webhook\"}"),
        3.0,
        "{m}"
    );
    assert_eq!(daemon.terminate().code(), Some(0));
    let alerts = std::fs::read_to_string(&out).unwrap();
    let fired: Vec<serde_json::Value> = alerts
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(fired.len(), 1, "{alerts}");
    assert_eq!(fired[0]["rule"], "brute-force");
    assert_eq!(fired[0]["count"], 5, "the 3 hits of the old snapshot count");
}

/// A full disk under the archive: archiving stops with an error and
/// `auditwatch_archive_up 0`, detection goes on, the ingest journal keeps every batch since
/// the last sealed segment (so the webhook answers 503 once it is full), and a restart with
/// space archives every accepted event, once.
#[test]
fn a_full_archive_disk_loses_nothing() {
    let dir = Scratch::new("archive-full");
    let (hook, metrics) = (free_port(), free_port());
    std::fs::write(dir.0.join("rules.yaml"), RULES).unwrap();
    let config = daemon_config(
        &dir.0,
        metrics,
        &format!(
            r#"
alerts: {{ stdout: json, storm: {{ max_per_rule: 0 }} }}
journal: {{ max_size: 4MiB, segment_size: 256KiB }}
snapshot: {{ interval: 1s }}
archive: {{ segment_max_age: 1s }}
sources: [ {{ webhook: {{ listen: "127.0.0.1:{hook}" }} }} ]
"#
        ),
    );
    std::fs::create_dir_all(dir.0.join("state/archive")).unwrap();
    // The archive on a 16 KiB file system of its own, in a mount namespace of the daemon's.
    let daemon = Daemon::start_under(
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs -o size=16k tmpfs state/archive && exec \"$0\" \"$@\"",
        ],
        &[],
        &dir.0,
        &config,
        metrics,
        0,
    );
    let client = reqwest::blocking::Client::new();
    let mut accepted: BTreeSet<String> = BTreeSet::new();
    let mut refused_full = false;
    let mut archive_down = false;
    for b in 0..2000 {
        let events: Vec<String> = (0..100)
            .map(|i| {
                let id = format!("{b:08x}-0000-4000-8000-{i:012x}");
                event(&id, "get", "ci-bot", "secrets", &format!("s{b}-{i}"), 200)
            })
            .collect();
        let resp = client
            .post(format!("http://127.0.0.1:{hook}/"))
            .header("Content-Type", "application/json")
            .body(event_list(&events))
            .send()
            .unwrap();
        match resp.status().as_u16() {
            200 => accepted.extend(events.iter().flat_map(|e| audit_ids(e))),
            503 => {
                let body = resp.text().unwrap();
                assert!(body.contains("journal full"), "{body}");
                refused_full = true;
                break;
            }
            other => panic!("unexpected {other}"),
        }
        // Slowly until the archive's disk is full (segments seal every second), then as
        // fast as the journal takes it.
        if !archive_down {
            archive_down = sample(&daemon.metrics(), "auditwatch_archive_up") == 0.0;
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert!(archive_down, "the archive's disk never filled");
    assert!(
        refused_full,
        "the journal never filled: the archive kept up"
    );
    assert_eq!(sample(&daemon.metrics(), "auditwatch_archive_up"), 0.0);
    assert!(
        sample(
            &daemon.metrics(),
            "auditwatch_archive_segments_total{result=\"error\"}"
        ) >= 1.0
    );
    // Detection went on meanwhile.
    common::wait_until("an alert per accepted secret read", || {
        alert_journal(&dir.0).len() >= accepted.len()
    });
    // What the full disk holds (the segments sealed before it filled) is kept, as a real
    // disk keeps it: copied out through the daemon's view of its mount namespace.
    let inside = PathBuf::from(format!("/proc/{}/root", daemon.child.id()))
        .join(dir.0.strip_prefix("/").unwrap())
        .join("state/archive");
    let saved: Vec<(std::ffi::OsString, Vec<u8>)> = std::fs::read_dir(&inside)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name(), std::fs::read(e.path()).unwrap())
        })
        .collect();
    assert!(
        saved
            .iter()
            .any(|(n, _)| n.to_string_lossy().ends_with(".parquet")),
        "no segment sealed before the disk filled"
    );
    assert_eq!(daemon.terminate().code(), Some(0));
    let log = std::fs::read_to_string(dir.0.join("stderr-0.log")).unwrap();
    assert!(
        log.contains("archiving stopped (auditwatch_archive_up 0)"),
        "{log}"
    );

    for (name, bytes) in saved {
        std::fs::write(dir.0.join("state/archive").join(name), bytes).unwrap();
    }

    // Space again: a restart archives what the journal kept since the last sealed segment.
    let daemon = Daemon::start(&dir.0, &config, metrics, 1);
    // Recovery hands the journal's batches to the archive before the daemon is ready; the
    // shutdown seals them.
    assert_eq!(daemon.terminate().code(), Some(0));
    let archived = archived_ids(&dir.0.join("state/archive"));
    let unique: BTreeSet<String> = archived.iter().cloned().collect();
    assert_eq!(unique.len(), archived.len(), "archived twice");
    assert_eq!(unique, accepted);
    // And nothing was evaluated twice.
    assert_eq!(alert_journal(&dir.0).len(), accepted.len());
}
