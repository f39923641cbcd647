//! End-to-end tests of alert delivery with real receivers on 127.0.0.1: an SMTP server
//! (aiosmtpd, Debian `python3-aiosmtpd`), Alertmanager 0.25 and Prometheus 2.42 (Debian
//! `prometheus-alertmanager`, `prometheus`), `promtool`, and an HTTP receiver written here.
//! `.ci/run` installs them; without them these tests fail and say what to install.

mod common;
use common::*;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn smtp_server(dir: &Path, port: u16, maildir: &Path) -> Server {
    let python = need("/usr/bin/python3");
    let s = spawn_logged(
        dir,
        "aiosmtpd",
        Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir),
    );
    wait_until("aiosmtpd to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    s
}

fn mails(maildir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        if let Ok(rd) = std::fs::read_dir(maildir.join(sub)) {
            for e in rd.flatten() {
                out.push(std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    out
}

const RULES: &str = r#"
rules:
  - name: secret-read
    severity: medium
    match: { verbs: [get], resources: [secrets] }
    summary: '{{ user.username }} read secret {{ objectRef.name }}'
  - name: pod-deleted
    severity: high
    match: { verbs: [delete], resources: [pods] }
    summary: '{{ user.username }} deleted pod {{ objectRef.name }}'
"#;

fn write_config(dir: &Path, hook: u16, metrics: u16, notify: &str) -> PathBuf {
    std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
    let config = format!(
        r#"state_dir: state
rules: [rules.yaml]
alerts: {{ stdout: json }}
http: {{ listen: "127.0.0.1:{metrics}" }}
sources:
  - webhook: {{ listen: "127.0.0.1:{hook}" }}
delivery:
  retry: {{ initial: 100ms, max: 1s }}
{notify}
"#
    );
    let path = dir.join("auditwatch.yaml");
    std::fs::write(&path, config).unwrap();
    path
}

#[test]
fn webhook_slack_pagerduty_alertmanager_and_metric_alerts_receive_every_alert() {
    let am_bin = need("/usr/bin/prometheus-alertmanager");
    let dir = Scratch::new("notify-http");
    let receiver = Receiver::start(1);
    let am_port = free_port();
    std::fs::write(
        dir.0.join("alertmanager.yml"),
        "route: { receiver: nobody }\nreceivers: [ { name: nobody } ]\n",
    )
    .unwrap();
    let _am = spawn_logged(
        &dir.0,
        "alertmanager",
        Command::new(am_bin)
            .arg(format!(
                "--config.file={}",
                dir.0.join("alertmanager.yml").display()
            ))
            .arg(format!(
                "--storage.path={}",
                dir.0.join("am-data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
            .arg("--cluster.listen-address="),
    );
    wait_until("alertmanager ready", || {
        http_get(am_port, "/-/ready").is_some_and(|(c, _)| c == 200)
    });
    let (hook, metrics) = (free_port(), free_port());
    let r = receiver.port;
    std::fs::write(dir.0.join("token"), "s3cret\n").unwrap();
    let config = write_config(
        &dir.0,
        hook,
        metrics,
        &format!(
            r#"notifiers:
  hook:
    webhook:
      url: "http://127.0.0.1:{r}/generic"
      headers: {{ X-Team: platform }}
      bearer_token: {{ file: token }}
  chat: {{ slack: {{ url: "http://127.0.0.1:{r}/slack" }} }}
  pager: {{ pagerduty: {{ url: "http://127.0.0.1:{r}/pd", routing_key: {{ value: rk-1 }} }} }}
  am: {{ alertmanager: {{ url: "http://127.0.0.1:{am_port}" }} }}
  prom: {{ metrics: {{}} }}
route:
  notify: [hook, chat, am, prom]
  routes:
    - match: {{ min_severity: high }}
      notify: [pager, hook, am, prom]
"#
        ),
    );
    let daemon = Daemon::start(&dir.0, &config, metrics, 1);
    post(
        hook,
        &[
            event("r-1", "get", "alice", "secrets", "db-password", 200),
            event("r-2", "delete", "bob", "pods", "web-1", 200),
        ],
    );
    wait_until("every receiver to get its alerts", || {
        receiver.at("/generic").len() == 2
            && receiver.at("/slack").len() == 1
            && receiver.at("/pd").len() == 1
    });
    let generic = receiver.at("/generic");
    let read = generic
        .iter()
        .find(|g| g.body["alerts"][0]["rule"] == "secret-read")
        .expect("the secret-read notification");
    let a = &read.body["alerts"][0];
    assert_eq!(read.body["version"], "1");
    assert_eq!(a["summary"], "alice read secret db-password");
    assert_eq!(a["events"][0]["user"], "alice");
    assert_eq!(a["events"][0]["object"], "secrets prod/db-password");
    assert_eq!(a["events"][0]["source_ip"], "10.1.2.3");
    assert_eq!(read.headers["authorization"], "Bearer s3cret");
    assert_eq!(read.headers["x-team"], "platform");
    assert_eq!(
        read.headers["idempotency-key"],
        read.body["notification_id"].as_str().unwrap()
    );
    let slack = &receiver.at("/slack")[0].body;
    assert!(slack["text"].as_str().unwrap().contains("secret-read"));
    assert_eq!(slack["blocks"][0]["type"], "header");
    let pd = &receiver.at("/pd")[0].body;
    assert_eq!(pd["routing_key"], "rk-1");
    assert_eq!(pd["event_action"], "trigger");
    assert_eq!(pd["payload"]["severity"], "error");
    let deleted_id = pd["dedup_key"].as_str().unwrap().to_owned();
    assert_eq!(pd["payload"]["custom_details"]["id"], deleted_id.as_str());

    // Alertmanager took both through API v2 and lists them in its own API.
    wait_until("alertmanager to list both alerts", || {
        http_get(am_port, "/api/v2/alerts").is_some_and(|(_, body)| {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let names: Vec<&str> = v
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x["labels"]["alertname"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            names.contains(&"secret-read") && names.contains(&"pod-deleted")
        })
    });
    let (_, body) = http_get(am_port, "/api/v2/alerts").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let del = v
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["labels"]["alertname"] == "pod-deleted")
        .unwrap();
    // High maps to Alertmanager's `critical` by default; the rule's severity stays readable.
    assert_eq!(del["labels"]["severity"], "critical");
    assert_eq!(del["labels"]["auditwatch_severity"], "high");
    assert_eq!(del["labels"]["source"], "auditwatch");
    assert_eq!(del["annotations"]["auditwatch_id"], deleted_id.as_str());

    let m = daemon.metrics();
    assert_eq!(
        sample(
            &m,
            r#"auditwatch_alert_firings_total{rule="secret-read",severity="medium"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            r#"auditwatch_alert_active{rule="pod-deleted",severity="high"}"#
        ),
        1.0
    );
    // The first POST got a 503 and was retried.
    assert!(
        sample(
            &m,
            r#"auditwatch_notification_attempts_total{notifier="chat",result="transient"}"#
        ) + sample(
            &m,
            r#"auditwatch_notification_attempts_total{notifier="hook",result="transient"}"#
        ) + sample(
            &m,
            r#"auditwatch_notification_attempts_total{notifier="pager",result="transient"}"#
        ) >= 1.0
    );
    wait_until("the outcomes to be counted", || {
        sample(
            &daemon.metrics(),
            r#"auditwatch_notifications_total{notifier="hook",outcome="sent"}"#,
        ) == 2.0
    });
    assert_eq!(daemon.terminate().code(), Some(0));
}

#[test]
fn email_reaches_every_recipient_once_across_an_smtp_outage_and_a_restart() {
    let dir = Scratch::new("notify-smtp");
    let (hook, metrics, smtp) = (free_port(), free_port(), free_port());
    let config = write_config(
        &dir.0,
        hook,
        metrics,
        &format!(
            r#"notifiers:
  oncall:
    email:
      smtp: {{ host: 127.0.0.1, port: {smtp}, tls: none }}
      from: "auditwatch <auditwatch@example.com>"
      to: [sec@example.com, "On Call <oncall@example.com>"]
route:
  notify: [oncall]
"#
        ),
    );
    // SMTP is down: the alerts wait.
    let daemon = Daemon::start(&dir.0, &config, metrics, 1);
    post(
        hook,
        &[
            event("m-1", "get", "alice", "secrets", "db-password", 200),
            event("m-2", "delete", "bob", "pods", "web-1", 200),
        ],
    );
    wait_until("failed SMTP attempts", || {
        sample(
            &daemon.metrics(),
            r#"auditwatch_notification_attempts_total{notifier="oncall",result="transient"}"#,
        ) >= 2.0
    });
    assert_eq!(
        sample(
            &daemon.metrics(),
            r#"auditwatch_notifications_pending{notifier="oncall"}"#
        ),
        2.0
    );
    assert_eq!(daemon.terminate().code(), Some(0));

    // SMTP comes back while auditwatch is down; the restart delivers what was pending.
    let maildir = dir.0.join("mail");
    let _smtp = smtp_server(&dir.0, smtp, &maildir);
    let daemon = Daemon::start(&dir.0, &config, metrics, 2);
    wait_until("two emails", || mails(&maildir).len() >= 2);
    wait_until("the ledger to record them", || {
        sample(
            &daemon.metrics(),
            r#"auditwatch_notifications_total{notifier="oncall",outcome="sent"}"#,
        ) == 2.0
    });
    assert_eq!(daemon.terminate().code(), Some(0));
    // A third start sends nothing again.
    let daemon = Daemon::start(&dir.0, &config, metrics, 3);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        sample(
            &daemon.metrics(),
            r#"auditwatch_notifications_pending{notifier="oncall"}"#
        ),
        0.0
    );
    assert_eq!(daemon.terminate().code(), Some(0));

    let all = mails(&maildir);
    assert_eq!(all.len(), 2, "each alert exactly once: {all:#?}");
    let read = all
        .iter()
        .find(|m| m.contains("secret-read"))
        .expect("the secret-read email");
    let unfolded = read.replace("=\r\n", "").replace("=\n", "");
    assert!(read.contains("Subject: [auditwatch] MEDIUM secret-read: alice read secret"));
    assert!(read.contains("To: sec@example.com, \"On Call\" <oncall@example.com>"));
    assert!(read.contains("Message-ID: <"));
    assert!(read.contains("multipart/alternative"));
    assert!(unfolded.contains("alice read secret db-password"));
    // The event table: who, verb, object, source IP, time, code.
    let row = unfolded
        .lines()
        .find(|l| l.contains("secrets prod/db-password") && !l.contains("<td>"))
        .expect("an event table row");
    assert!(
        row.contains("alice")
            && row.contains("get")
            && row.contains("10.1.2.3")
            && row.contains("200")
    );
}

#[test]
fn silences_grouping_and_the_alerts_listing() {
    let dir = Scratch::new("notify-silence");
    let receiver = Receiver::start(0);
    let (hook, metrics) = (free_port(), free_port());
    let r = receiver.port;
    let config = write_config(
        &dir.0,
        hook,
        metrics,
        &format!(
            r#"notifiers:
  hook: {{ webhook: {{ url: "http://127.0.0.1:{r}/generic" }} }}
route:
  notify: [hook]
  group_by: [rule]
  group_wait: 2s
"#
        ),
    );
    let daemon = Daemon::start(&dir.0, &config, metrics, 1);
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
            .args(args)
            .current_dir(&dir.0)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let url = format!("http://127.0.0.1:{metrics}");
    let added = cli(&[
        "silence",
        "add",
        "rule=secret-read",
        "--duration",
        "1h",
        "--comment",
        "rotation",
        "--url",
        &url,
    ]);
    let id = added.split_whitespace().next().unwrap().to_owned();
    assert!(cli(&["silence", "list", "--url", &url]).contains("rule=\"secret-read\""));

    post(
        hook,
        &[
            event("s-1", "get", "alice", "secrets", "db", 200),
            event("s-2", "delete", "bob", "pods", "web-1", 200),
            event("s-3", "delete", "bob", "pods", "web-2", 200),
        ],
    );
    // Both deletions within group_wait: one notification of two alerts.
    wait_until("the grouped notification", || {
        !receiver.at("/generic").is_empty()
    });
    std::thread::sleep(Duration::from_secs(1));
    let got = receiver.at("/generic");
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].body["group"]["rule"], "pod-deleted");
    assert_eq!(got[0].body["alerts"].as_array().unwrap().len(), 2);
    let m = daemon.metrics();
    assert_eq!(
        sample(
            &m,
            r#"auditwatch_notifications_total{notifier="hook",outcome="silenced"}"#
        ),
        1.0
    );
    assert_eq!(sample(&m, "auditwatch_silences_active"), 1.0);

    // Expired: the next secret read goes out.
    cli(&["silence", "expire", &id, "--url", &url]);
    post(hook, &[event("s-4", "get", "alice", "secrets", "db", 200)]);
    wait_until("the unsilenced alert", || {
        receiver.at("/generic").len() == 2
    });
    assert_eq!(daemon.terminate().code(), Some(0));

    let listed = cli(&[
        "alerts",
        "--state-dir",
        "state",
        "--rule",
        "secret-read",
        "--delivery",
    ]);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(lines[0].contains("hook=silenced"), "{listed}");
    assert!(lines[1].contains("hook=sent"), "{listed}");
    let json = cli(&[
        "alerts",
        "--state-dir",
        "state",
        "--min-severity",
        "high",
        "--format",
        "json",
    ]);
    assert_eq!(json.lines().count(), 2);
}

#[test]
fn prometheus_scrapes_metrics_and_promtool_accepts_them() {
    let promtool = need("/usr/bin/promtool");
    let dir = Scratch::new("notify-prom");
    let (hook, metrics, prom_port) = (free_port(), free_port(), free_port());
    let config = write_config(
        &dir.0,
        hook,
        metrics,
        "notifiers:\n  prom: { metrics: {} }\nroute:\n  notify: [prom]\n",
    );
    let daemon = Daemon::start(&dir.0, &config, metrics, 1);
    post(hook, &[event("p-1", "get", "alice", "secrets", "db", 200)]);
    wait_until("the metric alert", || {
        sample(
            &daemon.metrics(),
            r#"auditwatch_alert_firings_total{rule="secret-read",severity="medium"}"#,
        ) == 1.0
    });
    let _prom = prometheus(&dir.0, prom_port, metrics);
    wait_until("prometheus to have scraped the alert counter", || {
        http_get(
            prom_port,
            "/api/v1/query?query=auditwatch_alert_firings_total%7Brule%3D%22secret-read%22%7D",
        )
        .is_some_and(|(_, body)| {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            v["data"]["result"][0]["value"][1] == "1"
        })
    });

    let text = daemon.metrics();
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(daemon.terminate().code(), Some(0));
}

/// An Alertmanager 0.25 configuration (its documentation's example tree, with the old
/// `match`/`match_re` forms, `continue`, time intervals and inhibit rules), loaded as is by
/// both Alertmanager's own `amtool config routes test` and `auditwatch routes test`: the same
/// receivers for every label set of the table.
#[test]
fn a_pasted_alertmanager_config_routes_as_amtool_says() {
    let amtool = need("/usr/bin/amtool");
    let dir = Scratch::new("amtool-routes");
    let config = dir.0.join("alertmanager.yml");
    std::fs::write(
        &config,
        r#"route:
  group_by: ['alertname', 'cluster', 'service']
  group_wait: 30s
  group_interval: 5m
  repeat_interval: 3h
  receiver: team-X-mails
  routes:
    - matchers:
        - service=~"foo1|foo2|baz"
      receiver: team-X-mails
      routes:
        - matchers:
            - severity="critical"
          receiver: team-X-pager
    - matchers:
        - service="files"
      receiver: team-Y-mails
      routes:
        - matchers:
            - severity="critical"
          receiver: team-Y-pager
    - matchers:
        - service="database"
      receiver: team-DB-pager
      group_by: [alertname, cluster, database]
      routes:
        - matchers:
            - owner="team-X"
          receiver: team-X-pager
          continue: true
        - matchers:
            - owner="team-Y"
          receiver: team-Y-pager
    - match:
        team: frontend
      match_re:
        environment: prod|staging
      receiver: frontend-pager
      mute_time_intervals: [offhours]
    - matchers:
        - alertname=~"pod-exec.*"
        - cluster!="dev"
      continue: true
      receiver: audit-webhook
    - matchers: [cluster="prod-eu"]
      receiver: team-Y-mails
    - matchers:
        - alertname="noisy"
      receiver: blackhole
inhibit_rules:
  - source_matchers: [severity="critical"]
    target_matchers: [severity="warning"]
    equal: [alertname, cluster, service]
  - source_match: { alertname: cluster-admin-binding }
    target_match_re: { alertname: 'pod-exec|secret-read' }
    equal: [cluster]
time_intervals:
  - name: offhours
    time_intervals:
      - times: [{ start_time: '18:00', end_time: '24:00' }]
        weekdays: ['monday:friday']
        location: Europe/Berlin
      - weekdays: [saturday, sunday]
receivers:
  - name: team-X-mails
    email_configs:
      - to: 'team-X+alerts@example.org, team-X+alerts-critical@example.org'
        from: alertmanager@example.org
        smarthost: smtp.example.org:587
  - name: team-X-pager
    email_configs:
      - to: team-X+alerts-critical@example.org
        from: alertmanager@example.org
        smarthost: smtp.example.org:587
    pagerduty_configs:
      - routing_key: team-X-key
  - name: team-Y-mails
    email_configs:
      - to: team-Y+alerts@example.org
        from: alertmanager@example.org
        smarthost: smtp.example.org:587
  - name: team-Y-pager
    pagerduty_configs:
      - routing_key: team-Y-key
  - name: team-DB-pager
    pagerduty_configs:
      - routing_key: team-DB-key
        send_resolved: true
  - name: frontend-pager
    slack_configs:
      - api_url: https://hooks.slack.example/services/T000/B000/XXX
  - name: audit-webhook
    webhook_configs:
      - url: http://127.0.0.1:9/hook
        send_resolved: false
  - name: blackhole
"#,
    )
    .unwrap();
    let check = Command::new(&amtool)
        .args(["check-config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "amtool refuses the config: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    let table: &[&[&str]] = &[
        &["alertname=x"],
        &["alertname=x", "service=foo1"],
        &["alertname=x", "service=baz", "severity=critical"],
        &["alertname=x", "service=foo3", "severity=critical"],
        &["alertname=x", "service=files", "severity=warning"],
        &["alertname=x", "service=files", "severity=critical"],
        &["alertname=x", "service=database"],
        &["alertname=x", "service=database", "owner=team-X"],
        &["alertname=x", "service=database", "owner=team-Y"],
        &["alertname=x", "team=frontend", "environment=prod"],
        &["alertname=x", "team=frontend", "environment=production"],
        &["alertname=pod-exec-or-attach", "cluster=prod-eu"],
        &["alertname=pod-exec-or-attach", "cluster=dev"],
        &["alertname=secret-read", "cluster=prod-eu"],
        &[
            "alertname=pod-exec-or-attach",
            "service=files",
            "severity=critical",
        ],
        &["alertname=noisy"],
        &["alertname=noisy", "severity=info"],
    ];
    for labels in table {
        let am = Command::new(&amtool)
            .args(["config", "routes", "test", "--config.file"])
            .arg(&config)
            .args(*labels)
            .output()
            .unwrap();
        let ours = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
            .args(["routes", "test", "--config"])
            .arg(&config)
            .args(*labels)
            .output()
            .unwrap();
        assert!(
            ours.status.success(),
            "{}",
            String::from_utf8_lossy(&ours.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&ours.stdout).trim(),
            String::from_utf8_lossy(&am.stdout).trim(),
            "receivers for {labels:?}"
        );
    }
}

/// Alertmanager's words through the daemon: two clusters' webhooks (source labels), receivers
/// with webhook_configs (Alertmanager's webhook payload), an inhibit rule, a mute time
/// interval and repeat_interval, with a real HTTP receiver.
#[test]
fn receivers_inhibit_mute_and_repeat_through_the_daemon() {
    let dir = Scratch::new("am-words");
    let (prod, dev, http) = (free_port(), free_port(), free_port());
    let r = Receiver::start(0);
    std::fs::write(
        dir.0.join("rules.yaml"),
        r#"
rules:
  - name: secret-read
    severity: medium
    match: { verbs: [get], resources: [secrets] }
    summary: '{{ user.username }} read secret {{ objectRef.name }}'
  - name: cluster-admin-binding
    severity: critical
    match: { verbs: [create], resources: [clusterrolebindings] }
  - name: pod-deleted
    severity: low
    match: { verbs: [delete], resources: [pods] }
"#,
    )
    .unwrap();
    let config = dir.0.join("auditwatch.yaml");
    std::fs::write(
        &config,
        format!(
            r#"state_dir: state
rules: [rules.yaml]
http: {{ listen: "127.0.0.1:{http}" }}
sources:
  - webhook: {{ name: prod, listen: "127.0.0.1:{prod}", labels: {{ cluster: prod-eu }} }}
  - webhook: {{ name: dev, listen: "127.0.0.1:{dev}", labels: {{ cluster: dev }} }}
delivery: {{ resolve_timeout: 1h }}
route:
  receiver: dev-team
  group_by: [cluster, alertname]
  group_interval: 1s
  routes:
    - matchers: [cluster="prod-eu"]
      receiver: prod-team
      repeat_interval: 2s
    - matchers: [alertname="pod-deleted"]
      mute_time_intervals: [always]
inhibit_rules:
  - source_matchers: [alertname="cluster-admin-binding"]
    target_matchers: [severity="warning"]
    equal: [cluster]
time_intervals:
  - name: always
    time_intervals: [ {{ weekdays: ['sunday:saturday'] }} ]
receivers:
  - name: prod-team
    webhook_configs: [ {{ url: "http://127.0.0.1:{port}/prod", send_resolved: true }} ]
  - name: dev-team
    webhook_configs: [ {{ url: "http://127.0.0.1:{port}/dev" }} ]
"#,
            port = r.port
        ),
    )
    .unwrap();
    let d = Daemon::start(&dir.0, &config, http, 0);
    // A secret read in dev goes to dev-team, in Alertmanager's webhook payload.
    post(dev, &[event("d-1", "get", "alice", "secrets", "db", 200)]);
    wait_until("dev-team notified", || r.at("/dev").len() == 1);
    let body = &r.at("/dev")[0].body;
    assert_eq!(body["version"], "4");
    assert_eq!(body["receiver"], "dev-team");
    assert_eq!(body["groupLabels"]["cluster"], "dev");
    assert_eq!(body["commonLabels"]["severity"], "warning");
    assert_eq!(body["commonLabels"]["auditwatch_severity"], "medium");
    assert_eq!(body["alerts"][0]["labels"]["cluster"], "dev");
    let id = body["alerts"][0]["annotations"]["auditwatch_id"]
        .as_str()
        .unwrap();
    assert_eq!(
        body["alerts"][0]["generatorURL"],
        format!("http://127.0.0.1:{http}/alerts/{id}")
    );
    // A cluster-admin binding in prod pages prod-team and inhibits prod's warnings, not dev's.
    post(
        prod,
        &[event(
            "p-1",
            "create",
            "mallory",
            "clusterrolebindings",
            "crb",
            201,
        )],
    );
    wait_until("prod-team paged", || !r.at("/prod").is_empty());
    post(
        prod,
        &[event("p-2", "get", "mallory", "secrets", "db", 200)],
    );
    post(dev, &[event("d-2", "get", "bob", "secrets", "db", 200)]);
    wait_until("dev's second read sent", || r.at("/dev").len() == 2);
    wait_until("prod's read inhibited", || {
        sample(
            &d.metrics(),
            "auditwatch_notifications_total{notifier=\"prod-team\",outcome=\"inhibited\"}",
        ) == 1.0
    });
    // The pod deletion's route is muted all week.
    post(dev, &[event("d-3", "delete", "bob", "pods", "web-1", 200)]);
    wait_until("the deletion muted", || {
        sample(
            &d.metrics(),
            "auditwatch_notifications_total{notifier=\"dev-team\",outcome=\"muted\"}",
        ) == 1.0
    });
    // prod's group is still firing: repeat_interval sends it again, same alert.
    wait_until("a reminder", || r.at("/prod").len() >= 2);
    let prod_bodies = r.at("/prod");
    for b in &prod_bodies {
        assert_eq!(b.body["alerts"].as_array().unwrap().len(), 1);
        assert_eq!(
            b.body["alerts"][0]["labels"]["alertname"],
            "cluster-admin-binding"
        );
    }
    assert_eq!(r.at("/dev").len(), 2, "the muted deletion was sent");
    assert!(
        prod_bodies
            .iter()
            .all(|b| b.body["alerts"][0]["labels"]["alertname"] != "secret-read"),
        "an inhibited alert was sent"
    );
}
