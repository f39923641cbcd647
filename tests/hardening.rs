//! Issue 16, through the real binary: what a hostile client or a mistake can do to the
//! daemon, and what it must not be able to do.
//!
//! - the silences API: authentication (token, bcrypt and argon2 users), refusal to start
//!   open on a public address, Host / Origin / content-type checks, bounds on silences,
//!   confirmation of match-everything silences, who-did-what in the alert journal;
//! - credentials that rotate: the webhook's token, certificate and client CA, the API token;
//! - connections: a cap that fits the descriptor limit, 408 for slow headers, idle close,
//!   no log amplification, rules still reload while connections flood in;
//! - a stalled engine shows as backlog age and fails `/readyz`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, PATIENCE, Pki, Scratch, event, event_list, free_port, pki, sample};

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

const RULES: &str = r#"
rules:
  - name: secret-read
    severity: high
    match: { verbs: [get], resources: [secrets] }
    summary: '{{ user.username }} read secret {{ objectRef.name }}'
"#;

fn json_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A silence request body.
fn silence(matchers: &[&str], duration: &str) -> String {
    serde_json::json!({ "matchers": matchers, "duration": duration, "comment": "test" }).to_string()
}

fn stderr(dir: &Path, run: usize) -> String {
    std::fs::read_to_string(dir.join(format!("stderr-{run}.log"))).unwrap_or_default()
}

#[test]
fn a_public_api_without_auth_is_refused_at_start_unless_insecure() {
    let dir = Scratch::new("open-api");
    write(&dir.0, "rules.yaml", RULES);
    let port = free_port();
    let config = format!(
        "state_dir: state\nrules: [rules.yaml]\nhttp: {{ listen: \"0.0.0.0:{port}\" }}\nsources: [{{ webhook: {{ listen: \"127.0.0.1:{}\" }} }}]\n",
        free_port()
    );
    write(&dir.0, "auditwatch.yaml", &config);
    let out = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
        .args(["run", "--config", "auditwatch.yaml"])
        .current_dir(&dir.0)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started:\n{err}");
    assert!(
        err.contains("auditwatch.yaml:3:")
            && err.contains("not a loopback address and http.auth is not set"),
        "{err}"
    );

    // Explicitly insecure: it starts, and says so.
    write(
        &dir.0,
        "auditwatch.yaml",
        &config.replace("http: {", "http: { insecure: true,"),
    );
    let daemon = Daemon::start(&dir.0, &dir.0.join("auditwatch.yaml"), port, 0);
    drop(daemon);
    assert!(stderr(&dir.0, 0).contains("the silences API is open to anyone"));
}

#[test]
fn silences_api_needs_credentials_same_origin_json_and_stays_bounded() {
    let dir = Scratch::new("silences-auth");
    write(&dir.0, "rules.yaml", RULES);
    write(&dir.0, "api-token", "api-s3cret\n");
    let bob = bcrypt::hash("bob-password", 4).unwrap();
    write(&dir.0, "users", &format!("bob:{bob}\n"));
    let alice = auditwatch::net::auth::hash_password("alice-password").unwrap();
    let (port, hook) = (free_port(), free_port());
    let config = format!(
        r#"
state_dir: state
rules: [rules.yaml]
alerts: {{ stdout: json }}
sources: [{{ webhook: {{ listen: "127.0.0.1:{hook}" }} }}]
http:
  listen: "127.0.0.1:{port}"
  allowed_hosts: [auditwatch.example.svc]
  auth:
    bearer_token_file: api-token
    basic_auth_users_file: users
    basic_auth_users: {{ alice: "{alice}" }}
silences: {{ max_silences: 3, max_duration: 7d, max_comment_bytes: 64 }}
"#
    );
    write(&dir.0, "auditwatch.yaml", &config);
    let daemon = Daemon::start(&dir.0, &dir.0.join("auditwatch.yaml"), port, 0);
    let url = format!("http://127.0.0.1:{port}/api/v1/silences");
    let client = json_client();
    let post = |body: &str,
                auth: &dyn Fn(
        reqwest::blocking::RequestBuilder,
    ) -> reqwest::blocking::RequestBuilder| {
        auth(
            client
                .post(&url)
                .header("Content-Type", "application/json")
                .body(body.to_owned()),
        )
        .send()
        .unwrap()
    };
    let token = |r: reqwest::blocking::RequestBuilder| r.bearer_auth("api-s3cret");
    let none = |r: reqwest::blocking::RequestBuilder| r;

    // Metrics and health stay open; the API does not.
    assert_eq!(common::http_get(port, "/metrics").unwrap().0, 200);
    assert_eq!(common::http_get(port, "/readyz").unwrap().0, 200);
    let r = post(&silence(&["rule=secret-read"], "1h"), &none);
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    assert_eq!(client.get(&url).send().unwrap().status(), 401);
    let r = post(&silence(&["rule=secret-read"], "1h"), &|r| {
        r.bearer_auth("guess")
    });
    assert_eq!(r.status(), 401);
    let r = post(&silence(&["rule=secret-read"], "1h"), &|r| {
        r.basic_auth("bob", Some("wrong"))
    });
    assert_eq!(r.status(), 401);

    // A page the operator visits cannot: a text/plain form post, a foreign Origin, a
    // rebinding Host, a cross-site fetch. Even with the token, so the check is not auth's.
    let r = token(
        client
            .post(&url)
            .header("Content-Type", "text/plain")
            .body(silence(&["rule=secret-read"], "1h")),
    )
    .send()
    .unwrap();
    assert_eq!(r.status(), 415);
    for (name, value) in [
        ("Origin", "http://evil.example"),
        ("Host", "evil.example:9095"),
        ("Sec-Fetch-Site", "cross-site"),
    ] {
        let r = post(&silence(&["rule=secret-read"], "1h"), &|r| {
            r.bearer_auth("api-s3cret").header(name, value)
        });
        assert_eq!(r.status(), 403, "{name}: {value}");
    }
    // The configured service name is fine.
    let r = post(&silence(&["rule=secret-read"], "1h"), &|r| {
        r.bearer_auth("api-s3cret")
            .header("Host", format!("auditwatch.example.svc:{port}"))
    });
    assert_eq!(r.status(), 201, "{}", r.text().unwrap());

    // Bounds: a million hours, the end of time, a long comment.
    let r = post(&silence(&["rule=secret-read"], "1000000h"), &token);
    assert_eq!(r.status(), 422);
    assert!(r.text().unwrap().contains("silences.max_duration"));
    let end_of_time =
        serde_json::json!({"matchers": ["rule=secret-read"], "ends_at": "9999-12-31T00:00:00Z"})
            .to_string();
    assert_eq!(post(&end_of_time, &token).status(), 422);
    let chatty =
        serde_json::json!({"matchers": ["rule=x"], "duration": "1h", "comment": "x".repeat(65)})
            .to_string();
    assert_eq!(post(&chatty, &token).status(), 422);

    // Match-everything needs an explicit confirmation, and is logged at WARN.
    let everything = silence(&["rule=~.*"], "1h");
    let r = post(&everything, &token);
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("confirm_match_all"));
    let confirmed =
        serde_json::json!({"matchers": ["rule=~.*"], "duration": "1h", "confirm_match_all": true})
            .to_string();
    let r = post(&confirmed, &|r| {
        r.basic_auth("alice", Some("alice-password"))
    });
    assert_eq!(r.status(), 201);
    let all: serde_json::Value = r.json().unwrap();
    assert_eq!(all["authenticated_as"], "alice");

    // Basic auth with the bcrypt user, then the count bound (3 in force).
    let r = post(&silence(&["severity=info"], "1h"), &|r| {
        r.basic_auth("bob", Some("bob-password"))
    });
    assert_eq!(r.status(), 201);
    let r = post(&silence(&["severity=low"], "1h"), &token);
    assert_eq!(r.status(), 422);
    assert!(r.text().unwrap().contains("max_silences"));

    // Expiring needs credentials too.
    let id = all["id"].as_str().unwrap();
    let expire =
        |auth: &dyn Fn(reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder| {
            auth(client.delete(format!("{url}/{id}")))
                .send()
                .unwrap()
                .status()
        };
    assert_eq!(expire(&none), 401);
    assert_eq!(expire(&|r| r.basic_auth("bob", Some("bob-password"))), 200);

    // Who did what is in the alert journal, one change record each.
    let journal = std::fs::read_to_string(dir.0.join("state/alerts.jsonl")).unwrap();
    let changes: Vec<serde_json::Value> = journal
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["record"] == "silence")
        .collect();
    let summary: Vec<(String, String)> = changes
        .iter()
        .map(|c| {
            (
                c["action"].as_str().unwrap().to_owned(),
                c["by"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("create".to_owned(), "token".to_owned()),
            ("create".to_owned(), "alice".to_owned()),
            ("create".to_owned(), "bob".to_owned()),
            ("expire".to_owned(), "bob".to_owned()),
        ]
    );
    assert!(
        changes[0]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );

    // Alerts still flow past the change records (the journal stays readable).
    common::post(
        hook,
        &[event(
            "aaaaaaaa-0000-0000-0000-00000000000a",
            "get",
            "mallory",
            "secrets",
            "db",
            200,
        )],
    );
    common::wait_until("the alert", || {
        sample(
            &daemon.metrics(),
            "auditwatch_alerts_total{rule=\"secret-read\",severity=\"high\"}",
        ) >= 1.0
    });
    let m = daemon.metrics();
    assert!(
        sample(
            &m,
            "auditwatch_http_refused_total{reason=\"unauthenticated\"}"
        ) >= 5.0,
        "{m}"
    );
    assert!(
        sample(&m, "auditwatch_http_refused_total{reason=\"cross_origin\"}") >= 2.0,
        "{m}"
    );
    assert!(
        sample(&m, "auditwatch_http_refused_total{reason=\"host\"}") >= 1.0,
        "{m}"
    );
    assert_eq!(daemon.terminate().code(), Some(0));
    let log = stderr(&dir.0, 0);
    assert!(log.contains("matches EVERY alert"), "{log}");
    let out = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
        .args(["alerts", "--state-dir", "state"])
        .current_dir(&dir.0)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("mallory read secret db"), "{listed}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("not an alert"),
        "change records are not alerts, and not warned about"
    );
}

fn tls_files(dir: &Path, pki: &Pki) {
    write(dir, "ca.crt", &pki.ca);
    write(dir, "tls.crt", &pki.server_cert);
    write(dir, "tls.key", &pki.server_key);
}

fn tls_client(ca: &str, identity: Option<(&str, &str)>) -> reqwest::blocking::Client {
    let mut b = reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30));
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

fn replace(dir: &Path, name: &str, text: &str) {
    // As cert-manager or a Secret update does: a new file renamed over the old one.
    let tmp = dir.join(format!("{name}.new"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join(name)).unwrap();
}

fn wait_for_status(what: &str, mut status: impl FnMut() -> Option<u16>, want: u16) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if status() == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: never {want}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn tokens_certificates_and_client_cas_rotate_without_a_restart() {
    let dir = Scratch::new("rotation");
    let first = pki();
    let second = pki();
    tls_files(&dir.0, &first);
    write(&dir.0, "token", "token-one\n");
    write(&dir.0, "api-token", "api-one\n");
    write(&dir.0, "rules.yaml", RULES);
    let (port, hook) = (free_port(), free_port());
    write(
        &dir.0,
        "auditwatch.yaml",
        &format!(
            r#"
state_dir: state
rules: [rules.yaml]
reload: {{ interval: 200ms }}
sources:
  - webhook:
      name: apiserver
      listen: "127.0.0.1:{hook}"
      tls: {{ cert: tls.crt, key: tls.key, client_ca: ca.crt }}
      bearer_token_file: token
http:
  listen: "127.0.0.1:{port}"
  auth: {{ bearer_token_file: api-token }}
"#
        ),
    );
    let daemon = Daemon::start(&dir.0, &dir.0.join("auditwatch.yaml"), port, 0);
    let url = format!("https://127.0.0.1:{hook}/");
    let body = event_list(&[event("r1", "get", "u", "pods", "p", 200)]);
    let send = |client: &reqwest::blocking::Client, token: &str| -> Option<u16> {
        client
            .post(&url)
            .header("Content-Type", "application/json")
            .bearer_auth(token)
            .body(body.clone())
            .send()
            .ok()
            .map(|r| r.status().as_u16())
    };
    let old_client = tls_client(&first.ca, Some((&first.client_cert, &first.client_key)));
    assert_eq!(send(&old_client, "token-one"), Some(200));

    // 1. The webhook token file changes: the old token is refused, the new one accepted.
    replace(&dir.0, "token", "token-two\n");
    wait_for_status("new token", || send(&old_client, "token-two"), 200);
    assert_eq!(send(&old_client, "token-one"), Some(403));

    // 2. The client CA rotates to the second PKI: the old client certificate fails the
    //    handshake, the new one is accepted (the serving certificate is still the first).
    replace(&dir.0, "ca.crt", &second.ca);
    let new_client = tls_client(&first.ca, Some((&second.client_cert, &second.client_key)));
    wait_for_status("new client CA", || send(&new_client, "token-two"), 200);
    assert_eq!(send(&old_client, "token-two"), None);

    // 3. The serving certificate is renewed (signed by the second CA), picked up on SIGHUP
    //    with file polling slow enough not to be the one that notices.
    replace(&dir.0, "tls.crt", &second.server_cert);
    replace(&dir.0, "tls.key", &second.server_key);
    Command::new("kill")
        .args(["-HUP", &daemon.child.id().to_string()])
        .status()
        .unwrap();
    let second_server = tls_client(&second.ca, Some((&second.client_cert, &second.client_key)));
    wait_for_status(
        "new serving certificate",
        || send(&second_server, "token-two"),
        200,
    );
    assert_eq!(
        send(&new_client, "token-two"),
        None,
        "the first CA no longer verifies the server"
    );

    // 4. The API token rotates.
    let api = |token: &str| {
        json_client()
            .get(format!("http://127.0.0.1:{port}/api/v1/silences"))
            .bearer_auth(token)
            .send()
            .ok()
            .map(|r| r.status().as_u16())
    };
    assert_eq!(api("api-one"), Some(200));
    replace(&dir.0, "api-token", "api-two");
    wait_for_status("new API token", || api("api-two"), 200);
    assert_eq!(api("api-one"), Some(401));

    // A broken rotation keeps what works.
    replace(&dir.0, "api-token", "");
    common::wait_until("the failed reload to be counted", || {
        daemon.metrics().contains(
            "auditwatch_credential_reloads_total{result=\"error\",what=\"http bearer token\"} 1",
        )
    });
    assert_eq!(api("api-two"), Some(200));
    let m = daemon.metrics();
    for what in [
        "webhook apiserver bearer token",
        "webhook apiserver tls",
        "http bearer token",
    ] {
        assert!(
            sample(
                &m,
                &format!("auditwatch_credential_reloads_total{{result=\"ok\",what=\"{what}\"}}")
            ) >= 1.0,
            "{what}\n{m}"
        );
    }
}

/// Reads until the peer closes or `limit` passes; what was read and how long it took.
fn read_until_close(stream: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut text = Vec::new();
    let _ = stream.read_to_end(&mut text);
    (
        String::from_utf8_lossy(&text).into_owned(),
        started.elapsed(),
    )
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn connections_are_capped_timed_and_do_not_amplify_logs() {
    let dir = Scratch::new("connections");
    write(&dir.0, "rules.yaml", RULES);
    let (port, hook) = (free_port(), free_port());
    write(
        &dir.0,
        "auditwatch.yaml",
        &format!(
            r#"
state_dir: state
rules: [rules.yaml]
sources:
  - webhook:
      listen: "127.0.0.1:{hook}"
      max_body: 4MiB
      connections: {{ max: 50, header_timeout: 1s, idle_timeout: 2s }}
http: {{ listen: "127.0.0.1:{port}" }}
"#
        ),
    );
    let daemon = Daemon::start(&dir.0, &dir.0.join("auditwatch.yaml"), port, 0);
    let pid = daemon.child.id();

    // Slow headers: 408, then the connection closes.
    let mut slow = TcpStream::connect(("127.0.0.1", hook)).unwrap();
    slow.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let (answer, took) = read_until_close(&mut slow, Duration::from_secs(60));
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "{answer:?} after {took:?}"
    );

    // Idle: closed quietly after idle_timeout.
    let mut idle = TcpStream::connect(("127.0.0.1", hook)).unwrap();
    let (answer, took) = read_until_close(&mut idle, Duration::from_secs(60));
    assert!(
        answer.is_empty() && took < Duration::from_secs(50),
        "{answer:?} after {took:?}"
    );

    // Wrong or missing content type: 415, not 200.
    let client = json_client();
    let r = client
        .post(format!("http://127.0.0.1:{hook}/"))
        .body(event_list(&[event("ct", "get", "u", "pods", "p", 200)]))
        .send()
        .unwrap();
    assert_eq!(r.status(), 415);

    // A body of a million numbers: 400, and no line per number.
    let numbers = format!(
        "[{}]",
        (0..1_000_000)
            .map(|i| (i % 10).to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let r = client
        .post(format!("http://127.0.0.1:{hook}/"))
        .header("Content-Type", "application/json")
        .body(numbers)
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("none of the 1000000 items"));
    // One event among 100,000 bad items: accepted (the event counts), the rest counted, and
    // the log holds a few lines, not 100,000.
    let mut items: Vec<String> = (0..100_000).map(|i| i.to_string()).collect();
    items.push(event(
        "bbbbbbbb-0000-0000-0000-00000000000b",
        "get",
        "mallory",
        "secrets",
        "db",
        200,
    ));
    let r = client
        .post(format!("http://127.0.0.1:{hook}/"))
        .header("Content-Type", "application/json")
        .body(event_list(&items))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    common::wait_until("the items to be counted", || {
        sample(
            &daemon.metrics(),
            "auditwatch_events_rejected_total{source=\"webhook\"}",
        ) >= 100_000.0
    });

    // A burst of 3,000 connections that send nothing: at most 50 are accepted at once, memory
    // comes back afterwards, and health, metrics and a rule reload keep working meanwhile.
    let before = vm_rss_kib(pid);
    let mut flood = Vec::new();
    for _ in 0..3000 {
        match TcpStream::connect_timeout(
            &format!("127.0.0.1:{hook}").parse().unwrap(),
            Duration::from_millis(200),
        ) {
            Ok(s) => flood.push(s),
            Err(_) => break, // the accept queue is full: the kernel refuses, not the daemon
        }
    }
    common::wait_until("the cap to be reached", || {
        sample(
            &daemon.metrics(),
            "auditwatch_connections_open{listener=\"webhook\"}",
        ) >= 50.0
    });
    let m = daemon.metrics();
    assert_eq!(
        sample(&m, "auditwatch_connections_open{listener=\"webhook\"}"),
        50.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, "auditwatch_connections_max{listener=\"webhook\"}"),
        50.0
    );
    assert_eq!(common::http_get(port, "/readyz").unwrap().0, 200);
    write(
        &dir.0,
        "rules.yaml",
        &RULES.replace("severity: high", "severity: critical"),
    );
    Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    common::wait_until("the reload", || {
        sample(
            &daemon.metrics(),
            "auditwatch_rule_reloads_total{result=\"ok\"}",
        ) >= 1.0
    });
    let during = vm_rss_kib(pid);
    drop(flood);
    // Idle connections close after 2s; then the webhook takes events again.
    common::wait_until("the flood to drain", || {
        sample(
            &daemon.metrics(),
            "auditwatch_connections_open{listener=\"webhook\"}",
        ) <= 1.0
    });
    common::post(
        hook,
        &[event(
            "cccccccc-0000-0000-0000-00000000000c",
            "get",
            "eve",
            "secrets",
            "db",
            200,
        )],
    );
    std::thread::sleep(Duration::from_secs(2));
    let after = vm_rss_kib(pid);
    assert!(
        during < before + 64 * 1024 && after < before + 32 * 1024,
        "RSS before {before} KiB, during {during} KiB, after {after} KiB"
    );
    let m = daemon.metrics();
    assert_eq!(
        sample(&m, "auditwatch_rule_reloads_total{result=\"invalid\"}"),
        0.0
    );
    assert!(
        sample(
            &m,
            "auditwatch_webhook_refused_total{reason=\"timeout\",source=\"webhook\"}"
        ) >= 1.0,
        "{m}"
    );
    assert!(
        sample(
            &m,
            "auditwatch_webhook_refused_total{reason=\"content_type\",source=\"webhook\"}"
        ) >= 1.0
    );
    assert!(
        sample(
            &m,
            "auditwatch_webhook_refused_total{reason=\"not_events\",source=\"webhook\"}"
        ) >= 1.0
    );
    assert_eq!(daemon.terminate().code(), Some(0));
    let log = stderr(&dir.0, 0);
    let rejected_lines = log
        .lines()
        .filter(|l| l.contains("rejected record"))
        .count();
    assert!(
        (1..=10).contains(&rejected_lines),
        "{rejected_lines} lines for 100,000 bad items"
    );
    assert!(log.len() < 200_000, "{} bytes of log", log.len());
    let alerts = std::fs::read_to_string(dir.0.join("stdout-0.jsonl")).unwrap();
    assert!(
        alerts.contains("mallory read secret db") && alerts.contains("eve read secret db"),
        "{alerts}"
    );
}

#[test]
fn failed_handshakes_are_counted_not_logged_one_by_one() {
    let dir = Scratch::new("handshakes");
    let pki = pki();
    tls_files(&dir.0, &pki);
    write(&dir.0, "rules.yaml", RULES);
    let (port, hook) = (free_port(), free_port());
    write(
        &dir.0,
        "auditwatch.yaml",
        &format!(
            "state_dir: state\nrules: [rules.yaml]\nhttp: {{ listen: \"127.0.0.1:{port}\" }}\nsources: [{{ webhook: {{ listen: \"127.0.0.1:{hook}\", tls: {{ cert: tls.crt, key: tls.key, client_ca: ca.crt }} }} }}]\n"
        ),
    );
    let daemon = Daemon::start(&dir.0, &dir.0.join("auditwatch.yaml"), port, 0);
    for _ in 0..300 {
        let mut s = TcpStream::connect(("127.0.0.1", hook)).unwrap();
        // Not a TLS ClientHello.
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let _ = read_until_close(&mut s, Duration::from_secs(30));
    }
    common::wait_until("300 refusals", || {
        sample(
            &daemon.metrics(),
            "auditwatch_webhook_refused_total{reason=\"tls\",source=\"webhook\"}",
        ) >= 300.0
    });
    drop(daemon);
    let lines = stderr(&dir.0, 0)
        .lines()
        .filter(|l| l.contains("TLS handshake refused"))
        .count();
    assert!(
        (1..=10).contains(&lines),
        "{lines} log lines for 300 failed handshakes"
    );
}

#[test]
fn a_stalled_engine_shows_as_backlog_age_and_fails_readiness() {
    let dir = Scratch::new("stall");
    // A condition that costs about a second per event: a real stall, not a mock. The budgets
    // of issue 16.6 are raised so that it is allowed to run.
    write(
        &dir.0,
        "rules.yaml",
        r#"
rules:
  - name: slow
    severity: low
    match: { verbs: [get] }
    condition: 'let n = 0; for i in 0..500000 { n += 1 } n > 0'
"#,
    );
    let (port, hook) = (free_port(), free_port());
    write(
        &dir.0,
        "auditwatch.yaml",
        &format!(
            r#"
state_dir: state
rules: [rules.yaml]
engine: {{ max_lag: 1s, max_operations: 100000000, condition_timeout: 60s, rule_time_budget: 1s }}
sources: [{{ webhook: {{ listen: "127.0.0.1:{hook}" }} }}]
http: {{ listen: "127.0.0.1:{port}" }}
"#
        ),
    );
    let daemon = Daemon::start(&dir.0, &dir.0.join("auditwatch.yaml"), port, 0);
    let events: Vec<String> = (0..8)
        .map(|i| {
            event(
                &format!("{i:08}-0000-0000-0000-000000000000"),
                "get",
                "u",
                "pods",
                "p",
                200,
            )
        })
        .collect();
    common::post(hook, &events);
    common::wait_until("readyz to fail on the backlog", || {
        common::http_get(port, "/readyz")
            .is_some_and(|(code, body)| code == 503 && body.contains("engine.max_lag"))
    });
    let age = sample(&daemon.metrics(), "auditwatch_engine_backlog_age_seconds");
    assert!(age > 1.0, "backlog age {age}");
    // Once the batch is through, the daemon is ready again and the age drops to 0.
    common::wait_until("readyz to recover", || {
        common::http_get(port, "/readyz").is_some_and(|(code, _)| code == 200)
    });
    assert_eq!(
        sample(&daemon.metrics(), "auditwatch_engine_backlog_age_seconds"),
        0.0
    );
}

#[test]
fn a_connection_flood_under_a_low_descriptor_limit_neither_blinds_nor_breaks_reloads() {
    let dir = Scratch::new("fd-limit");
    write(&dir.0, "rules.yaml", RULES);
    let (port, hook) = (free_port(), free_port());
    write(
        &dir.0,
        "auditwatch.yaml",
        &format!(
            r#"
state_dir: state
rules: [rules.yaml]
reload: {{ interval: 200ms }}
alerts: {{ stdout: json }}
sources: [{{ webhook: {{ listen: "127.0.0.1:{hook}", connections: {{ idle_timeout: 3s }} }} }}]
http: {{ listen: "127.0.0.1:{port}" }}
"#
        ),
    );
    // 400 descriptors: the configured cap of 256 per listener would run the process out of
    // them (two listeners); the daemon lowers it to leave its reserve.
    let daemon = Daemon::start_under(
        &["prlimit", "--nofile=400:400", "--"],
        &[],
        &dir.0,
        &dir.0.join("auditwatch.yaml"),
        port,
        0,
    );
    let cap = sample(
        &daemon.metrics(),
        "auditwatch_connections_max{listener=\"webhook\"}",
    );
    assert!((1.0..=72.0).contains(&cap), "cap {cap}");
    let mut flood = Vec::new();
    for _ in 0..2000 {
        match TcpStream::connect_timeout(
            &format!("127.0.0.1:{hook}").parse().unwrap(),
            Duration::from_millis(200),
        ) {
            Ok(s) => flood.push(s),
            Err(_) => break,
        }
    }
    common::wait_until("the cap to be reached", || {
        sample(
            &daemon.metrics(),
            "auditwatch_connections_open{listener=\"webhook\"}",
        ) >= cap
    });
    // Rule files are edited during the flood: the watch loop reloads them, no reload fails,
    // and health and metrics answer.
    write(
        &dir.0,
        "rules.yaml",
        &RULES.replace("severity: high", "severity: critical"),
    );
    common::wait_until("the reload", || {
        sample(
            &daemon.metrics(),
            "auditwatch_rule_reloads_total{result=\"ok\"}",
        ) >= 1.0
    });
    assert_eq!(common::http_get(port, "/healthz").unwrap().0, 200);
    drop(flood);
    // The flood ends (idle connections close): events flow, alerts fire with the new rules.
    common::post(
        hook,
        &[event(
            "dddddddd-0000-0000-0000-00000000000d",
            "get",
            "eve",
            "secrets",
            "db",
            200,
        )],
    );
    common::wait_until("the alert", || {
        sample(
            &daemon.metrics(),
            "auditwatch_alerts_total{rule=\"secret-read\",severity=\"critical\"}",
        ) >= 1.0
    });
    let m = daemon.metrics();
    assert_eq!(
        sample(&m, "auditwatch_rule_reloads_total{result=\"invalid\"}"),
        0.0,
        "{m}"
    );
    drop(daemon);
    let log = stderr(&dir.0, 0);
    assert!(!log.contains("Too many open files"), "{log}");
}

const BRUTE_FORCE: &str = r#"
rules:
  - name: brute-force
    severity: high
    match: { response_codes: [403] }
    window: { threshold: 5, over: 10m, group_by: [user.username] }
"#;

/// A daemon config with state snapshots every `interval`: (metrics port, webhook port, path).
fn write_state_config(dir: &Path, interval: &str) -> (u16, u16, std::path::PathBuf) {
    let (port, hook) = (free_port(), free_port());
    write(
        dir,
        "auditwatch.yaml",
        &format!(
            r#"
state_dir: state
rules: [rules.yaml]
alerts: {{ stdout: json }}
snapshot: {{ interval: {interval} }}
sources: [{{ webhook: {{ listen: "127.0.0.1:{hook}" }} }}]
http: {{ listen: "127.0.0.1:{port}" }}
"#
        ),
    );
    (port, hook, dir.join("auditwatch.yaml"))
}

fn refusals(hook: u16, from: usize, to: usize) {
    for i in from..to {
        common::post(
            hook,
            &[event(
                &format!("eeeeeeee-0000-0000-0000-{i:012}"),
                "get",
                "mallory",
                "secrets",
                "db",
                403,
            )],
        );
    }
}

/// Issue 16.5: a bit flip in the snapshot was accepted silently and lost a brute force in
/// progress (3 refusals before the restart, 2 after: no alert). The damage is now detected,
/// the previous snapshot and the journal stand in, and the alert fires.
#[test]
fn a_damaged_snapshot_is_detected_and_the_window_survives() {
    let dir = Scratch::new("snapshot-flip");
    write(&dir.0, "rules.yaml", BRUTE_FORCE);
    let (port, hook, config) = write_state_config(&dir.0, "1s");
    let daemon = Daemon::start(&dir.0, &config, port, 0);
    refusals(hook, 0, 3);
    common::wait_until("a snapshot after the refusals", || {
        sample(
            &daemon.metrics(),
            "auditwatch_snapshots_total{result=\"ok\"}",
        ) >= 2.0
    });
    assert_eq!(daemon.terminate().code(), Some(0));
    // One bit, in the middle of the newest snapshot.
    let snap = dir.0.join("state/snapshot.msgpack");
    let mut bytes = std::fs::read(&snap).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x04;
    std::fs::write(&snap, bytes).unwrap();

    let daemon = Daemon::start(&dir.0, &config, port, 1);
    let m = daemon.metrics();
    assert_eq!(
        sample(
            &m,
            "auditwatch_state_problems_total{problem=\"corrupt\",what=\"snapshot\"}"
        ),
        1.0,
        "{m}"
    );
    refusals(hook, 3, 5);
    common::wait_until("the brute force alert", || {
        std::fs::read_to_string(dir.0.join("stdout-1.jsonl"))
            .unwrap_or_default()
            .contains("brute-force")
    });
    assert_eq!(daemon.terminate().code(), Some(0));
    let log = stderr(&dir.0, 1);
    assert!(
        log.contains("the newest state snapshot is damaged"),
        "{log}"
    );
    assert!(
        std::fs::read_dir(dir.0.join("state")).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("snapshot.msgpack.damaged-")),
        "the damaged file is kept for inspection"
    );

    // Both snapshots deleted: the alert journal says there was state, so it is said loudly.
    std::fs::remove_file(dir.0.join("state/snapshot.msgpack")).unwrap();
    std::fs::remove_file(dir.0.join("state/snapshot.msgpack.prev")).unwrap();
    let daemon = Daemon::start(&dir.0, &config, port, 2);
    let m = daemon.metrics();
    assert_eq!(
        sample(
            &m,
            "auditwatch_state_problems_total{problem=\"missing\",what=\"snapshot\"}"
        ),
        1.0,
        "{m}"
    );
    drop(daemon);
    assert!(stderr(&dir.0, 2).contains("no state snapshot, although"));
}

/// Issue 16.5: a damaged journal record before the tail refused start with no way out.
#[test]
fn a_damaged_journal_refuses_start_until_skip_corrupt_sets_it_aside() {
    let dir = Scratch::new("journal-damage");
    write(&dir.0, "rules.yaml", BRUTE_FORCE);
    // No periodic snapshot during the run; journal records stay after the final one.
    let (port, hook, config) = write_state_config(&dir.0, "1h");
    let daemon = Daemon::start(&dir.0, &config, port, 0);
    refusals(hook, 0, 4);
    daemon.kill9();
    let segment = std::fs::read_dir(dir.0.join("state/journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    // A byte inside the second record's payload (the first is about 600 bytes).
    let at = bytes.len() * 3 / 8;
    bytes[at] ^= 0x01;
    std::fs::write(&segment, bytes).unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
        .args(["run", "--config"])
        .arg(&config)
        .current_dir(&dir.0)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("corrupt record at byte") && err.contains("--skip-corrupt"),
        "{err}"
    );

    let daemon = Daemon::start_under(&[], &["--skip-corrupt"], &dir.0, &config, port, 1);
    let m = daemon.metrics();
    assert_eq!(
        sample(
            &m,
            "auditwatch_state_problems_total{problem=\"corrupt\",what=\"journal\"}"
        ),
        1.0
    );
    // The record before the damage was replayed; the webhook takes new batches.
    assert!(
        sample(&m, "auditwatch_events_decoded_total{source=\"webhook\"}") >= 1.0,
        "{m}"
    );
    refusals(hook, 10, 11);
    drop(daemon);
    let log = stderr(&dir.0, 1);
    assert!(
        log.contains("--skip-corrupt: journal segment damaged"),
        "{log}"
    );
    assert!(
        std::fs::read_dir(dir.0.join("state/journal"))
            .unwrap()
            .any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".seg.corrupt-")),
    );
}

/// Issue 16.6: a costly condition, hot-reloaded, delayed the other rules' alerts by 15 s. Each
/// run now stops at engine.condition_timeout and the rule is held to engine.rule_time_budget,
/// so a burst of events it matches costs a bounded time and the other rules' alerts go out.
#[test]
fn a_costly_rule_cannot_delay_the_other_rules() {
    let dir = Scratch::new("costly-rule");
    write(&dir.0, "rules.yaml", RULES);
    let (port, hook) = (free_port(), free_port());
    write(
        &dir.0,
        "auditwatch.yaml",
        &format!(
            r#"
state_dir: state
rules: [rules.yaml]
alerts: {{ stdout: json }}
sources: [{{ webhook: {{ listen: "127.0.0.1:{hook}" }} }}]
http: {{ listen: "127.0.0.1:{port}" }}
"#
        ),
    );
    let daemon = Daemon::start(&dir.0, &dir.0.join("auditwatch.yaml"), port, 0);
    write(
        &dir.0,
        "rules.yaml",
        &format!(
            "{RULES}\n  - name: costly\n    severity: low\n    match: {{ verbs: [get] }}\n    condition: 'let m = #{{}}; for i in 0..100000 {{ m = #{{ inner: m, i: i }}; }} m.len() > 0'\n"
        ),
    );
    common::wait_until("the reload", || {
        sample(
            &daemon.metrics(),
            "auditwatch_rule_reloads_total{result=\"ok\"}",
        ) >= 1.0
    });
    let mut events: Vec<String> = (0..60)
        .map(|i| {
            event(
                &format!("ffffffff-0000-0000-0000-{i:012}"),
                "get",
                "u",
                "pods",
                "p",
                200,
            )
        })
        .collect();
    events.push(event(
        "ffffffff-0000-0000-0000-999999999999",
        "get",
        "mallory",
        "secrets",
        "db",
        200,
    ));
    let sent = Instant::now();
    common::post(hook, &events);
    common::wait_until("the secret-read alert", || {
        std::fs::read_to_string(dir.0.join("stdout-0.jsonl"))
            .unwrap_or_default()
            .contains("mallory read secret db")
    });
    let took = sent.elapsed();
    // Without the budgets: 61 runs of several seconds each.
    assert!(took < Duration::from_secs(30), "the alert took {took:?}");
    common::wait_until("the costly rule's counters", || {
        let m = daemon.metrics();
        sample(
            &m,
            "auditwatch_rule_condition_timeouts_total{rule=\"costly\"}",
        ) >= 1.0
            && sample(
                &m,
                "auditwatch_rule_condition_skipped_total{rule=\"costly\"}",
            ) >= 1.0
    });
    drop(daemon);
    assert!(stderr(&dir.0, 0).contains("rule over its time budget"));
}

/// Issue 16.5: a deleted journal started silently, and the next batches were numbered from 1
/// again, below the snapshot's position: after a crash their replay skipped them.
#[test]
fn a_lost_journal_is_reported_and_new_batches_survive_a_crash() {
    let dir = Scratch::new("journal-lost");
    write(&dir.0, "rules.yaml", RULES);
    let (port, hook, config) = write_state_config(&dir.0, "1h");
    let daemon = Daemon::start(&dir.0, &config, port, 0);
    refusals(hook, 0, 3);
    assert_eq!(daemon.terminate().code(), Some(0));
    std::fs::remove_dir_all(dir.0.join("state/journal")).unwrap();

    let daemon = Daemon::start(&dir.0, &config, port, 1);
    assert_eq!(
        sample(
            &daemon.metrics(),
            "auditwatch_state_problems_total{problem=\"missing\",what=\"journal\"}"
        ),
        1.0
    );
    common::post(
        hook,
        &[event(
            "abababab-0000-0000-0000-000000000001",
            "get",
            "mallory",
            "secrets",
            "db",
            200,
        )],
    );
    daemon.kill9();
    // The batch acknowledged after the loss is replayed after the crash.
    let daemon = Daemon::start(&dir.0, &config, port, 2);
    assert_eq!(
        sample(
            &daemon.metrics(),
            "auditwatch_events_decoded_total{source=\"webhook\"}"
        ),
        1.0,
        "the batch acknowledged before the crash was replayed"
    );
    drop(daemon);
    assert!(stderr(&dir.0, 1).contains("the ingest journal is missing or shorter"));
}
