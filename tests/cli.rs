//! End-to-end tests: the real `auditwatch` binary on real audit logs.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_auditwatch"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

/// The shared corpus beside the repository. The conformance tests need it; fail clearly.
fn corpus(rel: &str) -> PathBuf {
    let p = root().join("../shared/corpus").join(rel);
    assert!(
        p.exists(),
        "{} is missing: clone the repository next to shared/ (see README)",
        p.display()
    );
    p
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run auditwatch")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write_rules(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("rules.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A scratch directory removed when the test ends (pass or fail).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

fn tempdir(name: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("auditwatch-e2e-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

/// JSON alerts from a replay.
fn replay_json(rules: &Path, files: &[PathBuf]) -> Vec<serde_json::Value> {
    let out = run(bin()
        .args(["replay", "--format", "json", "--rules"])
        .arg(rules)
        .arg("--")
        .args(files));
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn groups(alerts: &[serde_json::Value], rule: &str) -> BTreeSet<String> {
    alerts
        .iter()
        .filter(|a| a["rule"] == rule)
        .map(|a| {
            a["group"]["effectiveUser.username"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[test]
fn check_accepts_the_shipped_packs() {
    let out = run(bin().arg("check").arg(root().join("rules")));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("ok: "), "{}", stdout(&out));
}

#[test]
fn check_reports_every_error_with_its_position() {
    let dir = tempdir("check");
    let rules = write_rules(
        &dir,
        r#"lists:
  admins: [alice]
rules:
  - name: burst
    severity: critcal
  - name: window
    severity: high
    window: { over: 5 minutes, threshold: 3, group_by: [user.name] }
  - name: script
    severity: low
    condition: 'event.verb == "get" && lists.admin.len() > 0'
    match: { users: [$admin], response_codes: [4xx, 99x] }
  - name: script
    severity: low
"#,
    );
    let out = run(bin().arg("check").arg(&rules));
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out).replace(&dir.display().to_string(), "DIR");
    insta::assert_snapshot!(text);
}

#[test]
fn impersonated_403_bursts_fire_at_the_documented_boundaries() {
    let dir = tempdir("boundaries");
    let rules = write_rules(
        &dir,
        r#"rules:
  - name: three-in-5m
    severity: high
    match: { response_codes: [403] }
    window: { over: 5m, threshold: 3, group_by: [effectiveUser.username] }
  - name: four-in-1m
    severity: high
    match: { response_codes: [403] }
    window: { over: 1m, threshold: 4, group_by: [effectiveUser.username] }
  - name: five-in-5m
    severity: high
    match: { response_codes: [403] }
    window: { over: 5m, threshold: 5, group_by: [effectiveUser.username] }
  - name: by-authenticated-user
    severity: high
    match: { response_codes: [403] }
    window: { over: 5m, threshold: 3, group_by: [user.username] }
"#,
    );
    let alerts = replay_json(&rules, &[fixture("audit2rbac-demo.log")]);
    assert_eq!(
        groups(&alerts, "three-in-5m"),
        ["alice", "bob", "system:serviceaccount:ns1:sa1"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        groups(&alerts, "four-in-1m"),
        ["system:serviceaccount:ns1:sa1".to_owned()].into()
    );
    assert!(groups(&alerts, "five-in-5m").is_empty());
    // Keyed on the authenticated user, impersonation collapses everyone into system:admin.
    let by_user: Vec<_> = alerts
        .iter()
        .filter(|a| a["rule"] == "by-authenticated-user")
        .collect();
    assert!(!by_user.is_empty());
    assert!(
        by_user
            .iter()
            .all(|a| a["group"]["user.username"] == "system:admin")
    );
    let sa1 = alerts.iter().find(|a| a["rule"] == "four-in-1m").unwrap();
    assert_eq!(sa1["count"], 4);
    assert_eq!(sa1["audit_ids"].as_array().unwrap().len(), 4);
    assert_eq!(sa1["first_seen"], "2017-09-11T20:00:59Z");
    assert_eq!(sa1["last_seen"], "2017-09-11T20:01:37Z");
}

#[test]
fn an_event_list_body_gives_the_same_alerts_as_the_log() {
    let dir = tempdir("eventlist");
    let rules = write_rules(
        &dir,
        "rules:\n  - name: refused\n    severity: low\n    match: { response_codes: [403] }\n    summary: '{{ effectiveUser.username }} {{ verb }} {{ objectRef.resource }}'\n",
    );
    let from_log = replay_json(&rules, &[fixture("audit2rbac-demo.log")]);
    let from_list = replay_json(&rules, &[fixture("audit2rbac-demo.eventlist.json")]);
    assert_eq!(from_log.len(), 11);
    assert_eq!(from_log, from_list);
}

#[test]
fn one_request_one_match_over_real_request_response_pairs() {
    let raw = corpus("kubernetes/audit2rbac/demo.v1beta1-raw-501d132.log");
    // Oracle: distinct auditIDs of get requests, counted independently of auditwatch.
    let text = std::fs::read_to_string(&raw).unwrap();
    let mut gets = HashSet::new();
    let mut get_records = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["verb"] == "get" {
            get_records += 1;
            gets.insert(v["auditID"].as_str().unwrap().to_owned());
        }
    }
    assert!(
        get_records > gets.len(),
        "the log must hold several records per request"
    );
    let dir = tempdir("dedup");
    let rules = write_rules(
        &dir,
        "rules:\n  - name: gets\n    severity: info\n    match: { verbs: [get] }\n",
    );
    let alerts = replay_json(&rules, &[raw]);
    assert_eq!(alerts.len(), gets.len());
    let ids: HashSet<String> = alerts
        .iter()
        .map(|a| a["audit_ids"][0].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, gets);
}

#[test]
fn bad_records_are_reported_with_their_place_and_skipped() {
    let dir = tempdir("bad");
    let log = dir.join("mixed.log");
    let good = std::fs::read_to_string(fixture("falco-exec_pod.json")).unwrap();
    let mut f = std::fs::File::create(&log).unwrap();
    writeln!(f, "{{\"kind\": 0}}").unwrap();
    writeln!(f, "this is not json").unwrap();
    writeln!(f, "{{\"kind\":\"Pod\",\"apiVersion\":\"v1\"}}").unwrap();
    write!(f, "{good}").unwrap();
    writeln!(f, "{{\"auditID\":\"x\",\"stageTimestamp\":\"yesterday\"}}").unwrap();
    drop(f);
    let out = run(bin().args(["replay", "--format", "json"]).arg(&log));
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out).replace(&dir.display().to_string(), "DIR");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    insta::assert_snapshot!(warnings.join("\n"));
    assert!(err.contains("1 events in 5 records (4 rejected"), "{err}");
    let alerts: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["rule"], "pod-exec-or-attach");
}

#[test]
fn stdin_is_read_with_a_dash() {
    let mut child = bin()
        .args(["replay", "--format", "json", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let data = std::fs::read(fixture("falco-exec_pod.json")).unwrap();
    child.stdin.take().unwrap().write_all(&data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(stdout(&out).contains("\"rule\":\"pod-exec-or-attach\""));
    assert!(stderr(&out).contains("1 events in 1 records"));
}

#[test]
fn replay_is_deterministic() {
    let files = [
        fixture("audit2rbac-demo.log"),
        corpus("kubernetes/audit2rbac/demo.v1beta1-raw-501d132.log"),
    ];
    let once = run(bin().args(["replay", "--format", "json"]).args(&files));
    let twice = run(bin()
        .args(["replay", "--format", "json"])
        .args(files.iter().rev()));
    assert!(once.status.success());
    assert_eq!(stdout(&once), stdout(&twice), "input order must not matter");
}

/// Which bundled rules must fire on each Falco trace (our packs' counterparts of the Falco
/// rules the trace was recorded for); every other bundled rule must stay quiet.
#[test]
fn bundled_packs_on_falco_traces() {
    let expected: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("exec_pod.json", &["pod-exec-or-attach"][..]),
        ("attach_pod.json", &["pod-exec-or-attach"]),
        (
            "create_nginx_pod_privileged.json",
            &["privileged-pod-created"],
        ),
        (
            "create_nginx_pod_privileged_2nd_container.json",
            &["privileged-pod-created"],
        ),
        (
            "create_nginx_pod_no_secctx_1st_container_privileged_2nd_container.json",
            &["privileged-pod-created"],
        ),
        (
            "create_nginx_pod_sensitive_mount.json",
            &["pod-with-sensitive-hostpath"],
        ),
        (
            "create_nginx_pod_sensitive_mount_2nd_container.json",
            &["pod-with-sensitive-hostpath"],
        ),
        (
            "create_nginx_pod_hostnetwork.json",
            &["pod-with-host-namespaces"],
        ),
        ("attach_cluster_admin_role.json", &["cluster-admin-binding"]),
        (
            "create_cluster_role_wildcard_resources.json",
            &["clusterrole-with-wildcard"],
        ),
        (
            "create_cluster_role_wildcard_verbs.json",
            &["clusterrole-with-wildcard"],
        ),
        (
            "anonymous_creates_namespace_foo.json",
            &["anonymous-request-allowed"],
        ),
    ]);
    let dir = corpus("falco/trace_files/k8s_audit");
    let mut traces: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    traces.sort();
    assert_eq!(traces.len(), 47);
    let mut problems = Vec::new();
    for trace in &traces {
        let name = trace.file_name().unwrap().to_str().unwrap();
        let out = run(bin().args(["replay", "--format", "json"]).arg(trace));
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let fired: BTreeSet<String> = stdout(&out)
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["rule"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        let want: BTreeSet<String> = expected
            .get(name)
            .copied()
            .unwrap_or(&[])
            .iter()
            .map(|s| s.to_string())
            .collect();
        if fired != want {
            problems.push(format!("{name}: expected {want:?}, fired {fired:?}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn rule_tests_pass_and_failures_show_a_diff() {
    let out = run(bin().arg("test").arg(root().join("rules")));
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains(" passed, 0 failed"));

    let dir = tempdir("ruletest");
    let rules = write_rules(
        &dir,
        "rules:\n  - name: refused\n    severity: high\n    match: { response_codes: [403] }\n    window: { over: 1m, threshold: 2, group_by: [user.username] }\n",
    );
    let tests = dir.join("refused.test.yaml");
    std::fs::write(
        &tests,
        r#"tests:
  - name: wrong count and an unexpected group
    events:
      - event: { verb: get, user: { username: eve }, responseStatus: { code: 403 } }
        repeat: 2
      - event: { verb: get, user: { username: bob }, responseStatus: { code: 403 } }
        repeat: 2
    expect:
      - rule: refused
        group: { user.username: eve }
        count: 3
  - name: events listed out of time order
    events:
      - event: { verb: get, user: { username: eve }, responseStatus: { code: 403 } }
        at: 12m
      - event: { verb: get, user: { username: eve }, responseStatus: { code: 403 } }
        at: 9m
    expect: []
"#,
    )
    .unwrap();
    let out = run(bin().arg("test").arg(&rules).arg("--tests").arg(&tests));
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out).replace(&dir.display().to_string(), "DIR");
    insta::assert_snapshot!(text);
}

/// Every YAML example in the docs that defines `rules:` must load, so the docs cannot drift.
#[test]
fn rule_examples_in_the_docs_load() {
    let dir = tempdir("doc-examples");
    let mut checked = 0;
    for doc in ["README.md", "docs/rules.md"] {
        let text = std::fs::read_to_string(root().join(doc)).unwrap();
        for (i, block) in text.split("```yaml\n").skip(1).enumerate() {
            let yaml = block.split("```").next().unwrap();
            if !yaml.lines().any(|l| l.starts_with("rules:")) {
                continue;
            }
            let file = dir.join(format!("{}-{i}.yaml", doc.replace('/', "-")));
            std::fs::write(&file, yaml).unwrap();
            let out = run(bin().arg("check").arg(&file));
            assert!(
                out.status.success(),
                "{doc} example {i}:\n{yaml}\n{}",
                stderr(&out)
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "found only {checked} examples");
}

/// Issue 16.6: a user name holding a newline and a forged alert line, or an ANSI escape,
/// printed raw in text output. They are escaped: one alert is one line.
#[test]
fn text_output_escapes_control_characters() {
    let dir = tempdir("escape");
    let rules = write_rules(
        &dir,
        "rules:\n  - name: secret-read\n    severity: low\n    match: { verbs: [get], resources: [secrets] }\n    summary: '{{ user.username }} read {{ objectRef.name }}'\n",
    );
    let user =
        "eve\\n2026-01-01T00:00:00.000Z CRITICAL cluster-admin-binding: all clear\\u001b[2K\\u202e";
    let log = dir.join("audit.log");
    std::fs::write(
        &log,
        format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"x1","stage":"ResponseComplete","verb":"get","user":{{"username":"{user}"}},"objectRef":{{"resource":"secrets","namespace":"ns","name":"db"}},"responseStatus":{{"code":200}},"stageTimestamp":"2026-01-01T00:00:00.000000Z"}}"#
        ) + "\n",
    )
    .unwrap();
    let out = run(bin()
        .arg("replay")
        .arg(format!("--rules={}", rules.display()))
        .arg(&log));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{202e}'),
        "{text:?}"
    );
    assert!(
        text.contains(r"eve\n2026-01-01T00:00:00.000Z CRITICAL") && text.contains(r"\u{1b}[2K"),
        "{text}"
    );
}

/// Issue 17: one positioned-error type for every YAML file kind, each error naming its place
/// once: a rule file, a rule test file, the daemon's config, an audit policy.
#[test]
fn every_yaml_file_kind_reports_errors_the_same_way() {
    let dir = tempdir("yaml-errors");
    let rules = write_rules(
        &dir,
        "rules:\n  - name: burst\n    severity: high\n    match: { response_codes: [403] }\n    window: { ovr: 5m, threshold: 5 }\n",
    );
    let good_rules = dir.join("good.yaml");
    std::fs::write(
        &good_rules,
        "rules:\n  - name: burst\n    severity: high\n    match: { response_codes: [403] }\n",
    )
    .unwrap();
    let tests = dir.join("bad.test.yaml");
    std::fs::write(&tests, "tests:\n  - name: t\n    events: [\n").unwrap();
    let config = dir.join("auditwatch.yaml");
    std::fs::write(&config, "engine:\n  lateness: soon\n").unwrap();
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: Everything\n",
    )
    .unwrap();
    let runs: [(&str, Vec<&std::ffi::OsStr>); 4] = [
        ("rule file", vec!["check".as_ref(), rules.as_os_str()]),
        (
            "rule test file",
            vec![
                "test".as_ref(),
                good_rules.as_os_str(),
                "--tests".as_ref(),
                tests.as_os_str(),
            ],
        ),
        (
            "config",
            vec![
                "run".as_ref(),
                "--check".as_ref(),
                "--config".as_ref(),
                config.as_os_str(),
            ],
        ),
        (
            "audit policy",
            vec![
                "check".as_ref(),
                "--policy".as_ref(),
                policy.as_os_str(),
                good_rules.as_os_str(),
            ],
        ),
    ];
    let mut text = String::new();
    for (kind, args) in runs {
        let out = run(bin().args(args));
        let shown = format!("{}{}", stdout(&out), stderr(&out))
            .replace(&dir.display().to_string(), "<dir>");
        text.push_str(&format!(
            "## {kind} (exit {})\n{}\n",
            out.status.code().unwrap_or(-1),
            shown.trim_end()
        ));
    }
    insta::assert_snapshot!(text);
}

/// Issue 17: `auditwatch replay --rules my-rules.yaml audit.log`, in the order the README
/// shows, failed (`--rules` swallowed the log). Every `auditwatch` command line of the
/// README's examples runs as written, in a directory that holds the files they name.
#[test]
fn the_readme_command_lines_run_as_written() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let dir = tempdir("readme");
    for name in ["rules", "peers", "deploy", "examples"] {
        std::os::unix::fs::symlink(root().join(name), dir.join(name)).unwrap();
    }
    std::fs::copy(root().join("rules/auth.yaml"), dir.join("my-rules.yaml")).unwrap();
    std::fs::copy(
        root().join("examples/audit-sample.jsonl"),
        dir.join("audit.log"),
    )
    .unwrap();
    let mut in_block = false;
    let mut ran = 0;
    for line in readme.lines() {
        if line.starts_with("```") {
            in_block = !in_block;
            continue;
        }
        let Some(args) = line.trim().strip_prefix("auditwatch ") else {
            continue;
        };
        if !in_block {
            continue;
        }
        let argv: Vec<&str> = args.split_whitespace().collect();
        let out = run(bin().args(&argv).current_dir(&*dir));
        assert!(
            out.status.success(),
            "`auditwatch {args}` failed:\n{}{}",
            stdout(&out),
            stderr(&out)
        );
        ran += 1;
    }
    assert!(ran >= 6, "only {ran} command lines found in the README");
}

/// Issue 17: `auditwatch check /nonexistent` printed the OS error twice.
#[test]
fn a_missing_path_is_reported_once() {
    let out = run(bin().args(["check", "/nonexistent-auditwatch-path"]));
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    let bash = run(bin().args(["completions", "bash"]));
    assert!(bash.status.success());
    let script = stdout(&bash);
    for sub in ["replay", "query", "explain", "verify", "run"] {
        assert!(
            script.contains(sub),
            "{sub} missing from the bash completions"
        );
    }
    // bash itself accepts it.
    let dir = tempdir("completions");
    let path = dir.0.join("auditwatch.bash");
    std::fs::write(&path, &script).unwrap();
    let checked = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(checked.status.success(), "{}", stderr(&checked));
    let zsh = run(bin().args(["completions", "zsh"]));
    assert!(stdout(&zsh).starts_with("#compdef auditwatch"));
    let man = run(bin().arg("man"));
    assert!(man.status.success());
    let page = stdout(&man);
    assert!(page.contains(".TH auditwatch"), "{page}");
    assert!(page.contains("explain"), "{page}");
}

#[test]
fn auditwatch_config_names_the_config_file() {
    let dir = tempdir("env-config");
    let config = dir.0.join("from-env.yaml");
    std::fs::write(&config, "state_dir: state\nbogus_key: 1\n").unwrap();
    let out = run(bin()
        .args(["run", "--check"])
        .env("AUDITWATCH_CONFIG", &config));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("from-env.yaml:2:1"), "{err}");
}

#[test]
fn routes_show_the_tree_and_test_where_an_alert_goes() {
    let dir = tempdir("routes");
    let config = dir.0.join("auditwatch.yaml");
    std::fs::write(
        &config,
        r#"
notifiers:
  default: { webhook: { url: "http://127.0.0.1:9/default" } }
  pager: { webhook: { url: "http://127.0.0.1:9/pager" } }
  apps: { webhook: { url: "http://127.0.0.1:9/apps" } }
route:
  notify: [default]
  routes:
    - match: { labels: { team: apps } }
      notify: [apps]
      continue: true
    - match: { min_severity: high }
      notify: [pager]
"#,
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let show = run(bin().args(["routes", "show", "--config", config]));
    assert!(show.status.success(), "{}", stderr(&show));
    assert_eq!(
        stdout(&show),
        "[0] any alert -> default\n  [1] team=apps -> apps (continue)\n  [2] severity>=high -> pager\n"
    );
    let test = |fields: &[&str]| {
        let mut cmd = bin();
        cmd.args(["routes", "test", "--config", config])
            .args(fields);
        let out = run(&mut cmd);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    assert_eq!(test(&["rule=x", "severity=low"]), "default\n");
    assert_eq!(test(&["severity=critical"]), "pager\n");
    assert_eq!(test(&["severity=critical", "team=apps"]), "apps,pager\n");
    // Alertmanager's words: receivers, receiver, matchers.
    let am = dir.0.join("am.yaml");
    std::fs::write(
        &am,
        r#"
receivers:
  - name: default
    webhook_configs: [ { url: "http://127.0.0.1:9/default" } ]
  - name: pager
    webhook_configs: [ { url: "http://127.0.0.1:9/pager" } ]
route:
  receiver: default
  routes:
    - matchers: ['severity=~"high|critical"', 'rule!="noisy"']
      receiver: pager
"#,
    )
    .unwrap();
    let am = am.to_str().unwrap();
    let show = run(bin().args(["routes", "show", "--config", am]));
    assert_eq!(
        stdout(&show),
        "[0] any alert -> default\n  [1] severity=~\"high|critical\" rule!=\"noisy\" -> pager\n"
    );
    let to = |fields: &[&str]| {
        let mut cmd = bin();
        cmd.args(["routes", "test", "--config", am]).args(fields);
        stdout(&run(&mut cmd))
    };
    assert_eq!(to(&["rule=x", "severity=high"]), "pager\n");
    assert_eq!(to(&["rule=noisy", "severity=high"]), "default\n");
    assert_eq!(to(&["rule=x", "severity=low"]), "default\n");
    // A receiver that does not exist, and a matcher that does not parse: positioned errors.
    std::fs::write(dir.0.join("bad.yaml"), "route:\n  receiver: nobody\n").unwrap();
    let bad = run(bin()
        .args(["routes", "show", "--config"])
        .arg(dir.0.join("bad.yaml")));
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("bad.yaml:2:"), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("unknown receiver \"nobody\""),
        "{}",
        stderr(&bad)
    );
    std::fs::write(
        dir.0.join("bad2.yaml"),
        "route:\n  routes:\n    - matchers: ['severity']\n",
    )
    .unwrap();
    let bad = run(bin()
        .args(["routes", "show", "--config"])
        .arg(dir.0.join("bad2.yaml")));
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("bad2.yaml:3:"), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("has no operator"), "{}", stderr(&bad));
    let bad = run(bin().args(["routes", "test", "--config", config, "severity=urgent"]));
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("info, low, medium, high or critical"));
    // The first vocabulary still loads, with a positioned deprecation warning each.
    let check = run(bin().args(["run", "--check", "--config", config]));
    assert!(check.status.success(), "{}", stderr(&check));
    let err = stderr(&check);
    assert!(
        err.contains("auditwatch.yaml:2:1: `notifiers:` is deprecated"),
        "{err}"
    );
    assert!(
        err.contains("auditwatch.yaml:9:7: this `match` form is deprecated"),
        "{err}"
    );
}

/// A progress line (share, MiB, records/s, ETA) on a terminal, erased at the end; none when
/// stderr is not a terminal.
#[test]
fn progress_shows_on_a_terminal_only() {
    let dir = tempdir("progress");
    // Big enough to be read for longer than one redraw (200 ms) on any machine.
    let line = std::fs::read_to_string(fixture("audit2rbac-demo.log")).unwrap();
    let log = dir.0.join("big.log");
    let mut f = std::fs::File::create(&log).unwrap();
    for _ in 0..1500 {
        f.write_all(line.as_bytes()).unwrap();
    }
    drop(f);
    let command = format!(
        "{} query 'verb = list' --groupby username {} > /dev/null",
        env!("CARGO_BIN_EXE_auditwatch"),
        log.display()
    );
    // `script` gives the command a terminal; what it wrote there is in the typescript.
    let typescript = dir.0.join("typescript");
    let out = run(Command::new("script")
        .args(["-qec", &command])
        .arg(&typescript));
    assert!(out.status.success(), "{}", stderr(&out));
    let seen = std::fs::read_to_string(&typescript).unwrap();
    assert!(seen.contains("% of ") && seen.contains("ETA"), "{seen:?}");
    // Erased at the end: the line is cleared before the summary is written.
    assert!(seen.contains("\r\x1b[2K55500 events read"), "{seen:?}");
    let plain = run(bin()
        .args(["query", "verb = list", "--groupby", "username"])
        .arg(&log));
    assert!(plain.status.success());
    assert!(!stderr(&plain).contains("ETA"), "{}", stderr(&plain));
}
