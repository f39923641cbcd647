//! Replay throughput and memory with every rule pack users load, next to the cost of merely
//! parsing every line, and next to DuckDB over the same file.
//!
//! `cargo bench --bench throughput [-- --events N]` generates two realistic audit logs of N
//! events (default 1M; about 1 KB per event): a *busy* one (Metadata reads, RequestResponse
//! writes with full objects, RequestReceived/ResponseComplete pairs, and 11% suspicious
//! requests: 401/403s, secret reads by people, exec, ingress and RBAC changes) and a *quiet*
//! one with the suspicious kinds ten times rarer. Over each it measures:
//! 1. a parse of every line into `serde_json::Value` (the baseline), in this process;
//! 2. the real `auditwatch replay` binary with the bundled packs, with every pack (bundled,
//!    peers/falco, peers/panther and the SigmaHQ rules of ../shared/corpus), and with Panther's
//!    alone, reading each run's own summary (CPU time, alerts, peak RSS);
//! 3. DuckDB (Python package, one thread) running one exact sliding-window count in SQL.
//!
//! Then the time to load and compile all packs, and 200 rules (all packs plus 80 generated).
//! Times are CPU time (best of three), not wall time: the development VM is a shared guest
//! where wall time varies by tens of percent between identical runs. Everything is one core:
//! the replay by construction, DuckDB by `SET threads=1`.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const NAMESPACES: &[&str] = &[
    "default",
    "kube-system",
    "prod",
    "staging",
    "payments",
    "web",
    "monitoring",
    "argocd",
];
const SERVICE_ACCOUNTS: &[&str] = &[
    "system:serviceaccount:kube-system:replicaset-controller",
    "system:serviceaccount:kube-system:deployment-controller",
    "system:serviceaccount:kube-system:endpointslice-controller",
    "system:serviceaccount:argocd:argocd-application-controller",
    "system:serviceaccount:monitoring:prometheus",
    "system:kube-scheduler",
    "system:kube-controller-manager",
    "system:node:worker-1",
    "system:node:worker-2",
];
const HUMANS: &[&str] = &[
    "alice@example.com",
    "bob@example.com",
    "carol@example.com",
    "mallory",
];
const READ_RESOURCES: &[&str] = &[
    "pods",
    "configmaps",
    "secrets",
    "nodes",
    "leases",
    "endpoints",
    "services",
    "events",
];

fn uuid(rng: &mut Rng) -> String {
    let a = rng.next();
    let b = rng.next();
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

fn ts(base: i64, micros: i64) -> String {
    let t = chrono::DateTime::from_timestamp_micros(base * 1_000_000 + micros).unwrap_or_default();
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn pod_object(rng: &mut Rng, ns: &str, name: &str, privileged: bool) -> String {
    let image = rng.pick(&[
        "nginx:1.25",
        "registry.example.com/payments/api:4.2.1",
        "redis:7",
        "busybox:1.36",
    ]);
    format!(
        r#"{{"kind":"Pod","apiVersion":"v1","metadata":{{"name":"{name}","namespace":"{ns}","labels":{{"app":"{name}","pod-template-hash":"5cdcc99dbf"}},"ownerReferences":[{{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"{name}-5cdcc99dbf","uid":"8c800470-d85f-11e8-88b6-080027728ac4","controller":true,"blockOwnerDeletion":true}}]}},"spec":{{"volumes":[{{"name":"kube-api-access","projected":{{"sources":[{{"serviceAccountToken":{{"expirationSeconds":3607,"path":"token"}}}}]}}}}],"containers":[{{"name":"app","image":"{image}","ports":[{{"containerPort":8080,"protocol":"TCP"}}],"resources":{{"limits":{{"cpu":"500m","memory":"256Mi"}},"requests":{{"cpu":"100m","memory":"128Mi"}}}},"volumeMounts":[{{"name":"kube-api-access","readOnly":true,"mountPath":"/var/run/secrets/kubernetes.io/serviceaccount"}}],"terminationMessagePath":"/dev/termination-log","imagePullPolicy":"IfNotPresent","securityContext":{{"privileged":{privileged},"allowPrivilegeEscalation":false}}}}],"restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","serviceAccountName":"default","securityContext":{{}},"schedulerName":"default-scheduler","tolerations":[{{"key":"node.kubernetes.io/not-ready","operator":"Exists","effect":"NoExecute","tolerationSeconds":300}}]}},"status":{{"phase":"Pending","qosClass":"Burstable"}}}}"#
    )
}

fn ingress_object(ns: &str, name: &str, tls: bool) -> String {
    let tls = if tls {
        r#","tls":[{"hosts":["shop.example.com"],"secretName":"shop-tls"}]"#
    } else {
        ""
    };
    format!(
        r#"{{"kind":"Ingress","apiVersion":"networking.k8s.io/v1","metadata":{{"name":"{name}","namespace":"{ns}","annotations":{{"nginx.ingress.kubernetes.io/rewrite-target":"/"}}}},"spec":{{"ingressClassName":"nginx","rules":[{{"host":"shop.example.com","http":{{"paths":[{{"path":"/","pathType":"Prefix","backend":{{"service":{{"name":"{name}","port":{{"number":80}}}}}}}}]}}}}]{tls}}}}}"#
    )
}

/// One event line. `i` makes names and times advance. `quiet`: the suspicious kinds (403,
/// 401, secret reads by people, exec, ingress and RBAC changes) are ten times rarer, as on a
/// cluster that is not under attack.
fn event(rng: &mut Rng, i: u64, base: i64, quiet: bool) -> String {
    let micros = (i as i64) * 700 + rng.below(500) as i64; // ~1,400 events/s of cluster time
    let rr = ts(base, micros);
    let st = ts(base, micros + 1500);
    let id = uuid(rng);
    let ns = rng.pick(NAMESPACES);
    let mut roll = rng.below(1000);
    if quiet && roll >= 890 && rng.below(10) != 0 {
        roll = rng.below(890);
    }
    let agent = "kube-controller-manager/v1.29.2 (linux/amd64) kubernetes/4b8e819/system:serviceaccount:kube-system:replicaset-controller";
    let ip = format!("10.0.{}.{}", rng.below(8), rng.below(250) + 2);
    let common = |level: &str, stage: &str, uri: &str, verb: &str, user: &str, groups: &str| {
        format!(
            r#""kind":"Event","apiVersion":"audit.k8s.io/v1","level":"{level}","auditID":"{id}","stage":"{stage}","requestURI":"{uri}","verb":"{verb}","user":{{"username":"{user}","uid":"{}","groups":[{groups}]}},"sourceIPs":["{ip}"],"userAgent":"{agent}""#,
            &id[..8]
        )
    };
    let sa_groups =
        r#""system:serviceaccounts","system:serviceaccounts:kube-system","system:authenticated""#;
    let annotations = r#""annotations":{"authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":"RBAC: allowed by ClusterRoleBinding \"system:controller:replicaset-controller\" of ClusterRole \"system:controller:replicaset-controller\" to ServiceAccount \"replicaset-controller/kube-system\""}"#;
    match roll {
        // Metadata-level reads by controllers and nodes: the bulk of a real log.
        0..=439 => {
            let res = rng.pick(READ_RESOURCES);
            let verb = rng.pick(&["get", "list", "watch", "get", "get"]);
            let user = rng.pick(SERVICE_ACCOUNTS);
            let name = format!("{res}-{}", rng.below(400));
            format!(
                r#"{{{},"objectRef":{{"resource":"{res}","namespace":"{ns}","name":"{name}","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":200}},"requestReceivedTimestamp":"{rr}","stageTimestamp":"{st}",{annotations}}}"#,
                common(
                    "Metadata",
                    "ResponseComplete",
                    &format!("/api/v1/namespaces/{ns}/{res}/{name}"),
                    verb,
                    user,
                    sa_groups
                )
            )
        }
        // Lease renewals: every node and controller, every few seconds.
        440..=639 => {
            let holder = rng.pick(SERVICE_ACCOUNTS);
            let lease = format!("lease-{}", rng.below(60));
            format!(
                r#"{{{},"objectRef":{{"resource":"leases","namespace":"kube-node-lease","name":"{lease}","apiGroup":"coordination.k8s.io","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":200}},"requestReceivedTimestamp":"{rr}","stageTimestamp":"{st}",{annotations}}}"#,
                common(
                    "Metadata",
                    "ResponseComplete",
                    &format!(
                        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{lease}"
                    ),
                    "update",
                    holder,
                    sa_groups
                )
            )
        }
        // RequestReceived records (policies that keep the stage): no response yet.
        640..=719 => {
            let user = rng.pick(SERVICE_ACCOUNTS);
            format!(
                r#"{{{},"objectRef":{{"resource":"leases","namespace":"kube-system","name":"kube-scheduler","apiGroup":"coordination.k8s.io","apiVersion":"v1"}},"requestReceivedTimestamp":"{rr}","stageTimestamp":"{rr}"}}"#,
                common(
                    "Metadata",
                    "RequestReceived",
                    "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-scheduler",
                    "update",
                    user,
                    sa_groups
                )
            )
        }
        // Kubernetes Event objects written by controllers, at the Request level.
        720..=819 => {
            let name = format!("app-{}.17a{:x}", rng.below(5000), rng.below(1 << 20));
            format!(
                r#"{{{},"objectRef":{{"resource":"events","namespace":"{ns}","name":"{name}","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":201}},"requestObject":{{"kind":"Event","apiVersion":"v1","metadata":{{"name":"{name}","namespace":"{ns}"}},"involvedObject":{{"kind":"Pod","namespace":"{ns}","name":"app","apiVersion":"v1"}},"reason":"Scheduled","message":"Successfully assigned {ns}/app to worker-2","source":{{}},"type":"Normal","reportingComponent":"default-scheduler"}},"requestReceivedTimestamp":"{rr}","stageTimestamp":"{st}"}}"#,
                common(
                    "Request",
                    "ResponseComplete",
                    &format!("/api/v1/namespaces/{ns}/events"),
                    "create",
                    "system:kube-scheduler",
                    r#""system:authenticated""#
                )
            )
        }
        // RequestResponse pod creates (full request and response objects).
        820..=839 => {
            let name = format!("app-{}", rng.below(5000));
            let privileged = rng.below(200) == 0;
            let body = pod_object(rng, ns, &name, privileged);
            format!(
                r#"{{{},"objectRef":{{"resource":"pods","namespace":"{ns}","name":"{name}","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":201}},"requestObject":{body},"responseObject":{body},"requestReceivedTimestamp":"{rr}","stageTimestamp":"{st}",{annotations}}}"#,
                common(
                    "RequestResponse",
                    "ResponseComplete",
                    &format!("/api/v1/namespaces/{ns}/pods"),
                    "create",
                    "system:serviceaccount:kube-system:replicaset-controller",
                    sa_groups
                )
            )
        }
        // Request-level configmap patches.
        840..=889 => {
            let name = format!("cfg-{}", rng.below(300));
            format!(
                r#"{{{},"objectRef":{{"resource":"configmaps","namespace":"{ns}","name":"{name}","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":200}},"requestObject":{{"data":{{"feature.flags":"a=1,b=0,c=1","log.level":"info"}}}},"requestReceivedTimestamp":"{rr}","stageTimestamp":"{st}",{annotations}}}"#,
                common(
                    "Request",
                    "ResponseComplete",
                    &format!("/api/v1/namespaces/{ns}/configmaps/{name}"),
                    "patch",
                    rng.pick(SERVICE_ACCOUNTS),
                    sa_groups
                )
            )
        }
        // Authorization failures (403) by people and service accounts.
        890..=929 => {
            let user = rng.pick(HUMANS);
            format!(
                r#"{{{},"objectRef":{{"resource":"secrets","namespace":"{ns}","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"status":"Failure","message":"secrets is forbidden: User \"{user}\" cannot list resource \"secrets\" in API group \"\" in the namespace \"{ns}\"","reason":"Forbidden","details":{{"kind":"secrets"}},"code":403}},"requestReceivedTimestamp":"{rr}","stageTimestamp":"{st}","annotations":{{"authorization.k8s.io/decision":"forbid","authorization.k8s.io/reason":""}}}}"#,
                common(
                    "Metadata",
                    "ResponseComplete",
                    &format!("/api/v1/namespaces/{ns}/secrets"),
                    "list",
                    user,
                    r#""system:authenticated""#
                )
            )
        }
        // Failed authentication (401): ResponseStarted, no user.
        930..=949 => format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{id}","stage":"ResponseStarted","requestURI":"/api/v1/namespaces/kube-system/secrets","verb":"list","user":{{}},"sourceIPs":["198.51.100.{}"],"userAgent":"curl/8.5.0","responseStatus":{{"metadata":{{}},"status":"Failure","message":"Authentication failed, attempted: bearer","reason":"Unauthorized","code":401}},"requestReceivedTimestamp":"{rr}","stageTimestamp":"{st}"}}"#,
            rng.below(4) + 1
        ),
        // Secret reads by people.
        950..=969 => {
            let user = rng.pick(HUMANS);
            let name = format!("secret-{}", rng.below(50));
            format!(
                r#"{{{},"objectRef":{{"resource":"secrets","namespace":"{ns}","name":"{name}","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":200}},"requestReceivedTimestamp":"{rr}","stageTimestamp":"{st}",{annotations}}}"#,
                common(
                    "Metadata",
                    "ResponseComplete",
                    &format!("/api/v1/namespaces/{ns}/secrets/{name}"),
                    "get",
                    user,
                    r#""system:authenticated""#
                )
            )
        }
        // exec sessions.
        970..=979 => {
            let user = rng.pick(HUMANS);
            let pod = format!("app-{}", rng.below(5000));
            format!(
                r#"{{{},"objectRef":{{"resource":"pods","namespace":"{ns}","name":"{pod}","apiVersion":"v1","subresource":"exec"}},"responseStatus":{{"metadata":{{}},"code":101}},"requestReceivedTimestamp":"{rr}","stageTimestamp":"{st}",{annotations}}}"#,
                common(
                    "Request",
                    "ResponseStarted",
                    &format!(
                        "/api/v1/namespaces/{ns}/pods/{pod}/exec?command=sh&stdin=true&tty=true"
                    ),
                    "create",
                    user,
                    r#""system:authenticated""#
                )
            )
        }
        // Ingress changes, half by the GitOps controller.
        980..=989 => {
            let name = format!("ing-{}", rng.below(40));
            let user = if rng.below(2) == 0 {
                "system:serviceaccount:argocd:argocd-application-controller"
            } else {
                rng.pick(HUMANS)
            };
            let body = ingress_object(ns, &name, rng.below(3) != 0);
            format!(
                r#"{{{},"objectRef":{{"resource":"ingresses","namespace":"{ns}","name":"{name}","apiGroup":"networking.k8s.io","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":200}},"requestObject":{body},"responseObject":{body},"requestReceivedTimestamp":"{rr}","stageTimestamp":"{st}",{annotations}}}"#,
                common(
                    "RequestResponse",
                    "ResponseComplete",
                    &format!("/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses/{name}"),
                    "update",
                    user,
                    r#""system:authenticated""#
                )
            )
        }
        // RBAC bindings.
        _ => {
            let role = if rng.below(10) == 0 {
                "cluster-admin"
            } else {
                "view"
            };
            let name = format!("binding-{}", rng.below(100));
            format!(
                r#"{{{},"objectRef":{{"resource":"clusterrolebindings","name":"{name}","apiGroup":"rbac.authorization.k8s.io","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":201}},"requestObject":{{"kind":"ClusterRoleBinding","apiVersion":"rbac.authorization.k8s.io/v1","metadata":{{"name":"{name}"}},"roleRef":{{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"{role}"}},"subjects":[{{"kind":"User","name":"dev@example.com"}}]}},"requestReceivedTimestamp":"{rr}","stageTimestamp":"{st}",{annotations}}}"#,
                common(
                    "RequestResponse",
                    "ResponseComplete",
                    "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                    "create",
                    rng.pick(HUMANS),
                    r#""system:authenticated""#
                )
            )
        }
    }
}

fn generate(path: &PathBuf, events: u64, quiet: bool) -> std::io::Result<u64> {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let base = 1_735_689_600; // 2025-01-01T00:00:00Z
    let mut bytes = 0;
    for i in 0..events {
        let line = event(&mut rng, i, base, quiet);
        bytes += line.len() as u64 + 1;
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(bytes)
}

/// The rule sets measured: name, `--rules` arguments (none: the bundled packs).
fn rule_sets(root: &Path) -> Vec<(&'static str, Vec<PathBuf>)> {
    let corpus = root.join("../shared/corpus/sigma/rules");
    let all = vec![
        root.join("rules"),
        root.join("peers/falco"),
        root.join("peers/panther"),
        corpus,
    ];
    let mut tuned = all.clone();
    tuned.push(root.join("benches/tuning.yaml"));
    vec![
        ("bundled packs", Vec::new()),
        ("all packs (bundled, Falco, Panther, SigmaHQ)", all),
        ("all packs, tuned (benches/tuning.yaml)", tuned),
        ("peers/panther alone", vec![root.join("peers/panther")]),
    ]
}

/// One `auditwatch replay` run's own summary.
struct Replay {
    cpu: f64,
    rules: usize,
    alerts: u64,
    rss: String,
}

/// Runs `auditwatch replay --format json` RUNS times over `path`; the best CPU counts.
fn replay(path: &Path, rules: &[PathBuf]) -> Replay {
    let mut best: Option<Replay> = None;
    for _ in 0..RUNS {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_auditwatch"));
        cmd.args(["replay", "--format", "json", "--max-errors", "5"]);
        for r in rules {
            cmd.arg("--rules").arg(r);
        }
        let out = cmd
            .arg(path)
            .stdout(std::process::Stdio::null())
            .output()
            .expect("run auditwatch replay");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        let summary = stderr.lines().last().unwrap_or_default();
        let cpu: f64 = summary
            .split("CPU ")
            .nth(1)
            .and_then(|s| s.split('s').next())
            .and_then(|s| s.parse().ok())
            .expect("replay summary reports CPU time");
        let alerts = summary
            .split(" alerts")
            .next()
            .and_then(|s| s.rsplit(", ").next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        // The per-rule table: one line per rule between the header and the summary line.
        let rules = stderr
            .lines()
            .skip_while(|l| !l.starts_with("rule "))
            .skip(1)
            .take_while(|l| !l.is_empty() && !l.contains(" events in "))
            .count();
        let rss = summary.rsplit("peak RSS ").next().unwrap_or("?").to_owned();
        if best.as_ref().is_none_or(|b| cpu < b.cpu) {
            best = Some(Replay {
                cpu,
                rules,
                alerts,
                rss,
            });
        }
    }
    best.expect("RUNS > 0")
}

/// Reads and parses every line into `serde_json::Value`, in this process: the baseline.
fn value_parse(path: &Path, events: u64) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..RUNS {
        let cpu_before = cpu_time();
        let reader = BufReader::with_capacity(256 * 1024, File::open(path).expect("open corpus"));
        let mut parsed = 0u64;
        for line in reader.lines() {
            let line = line.expect("read");
            let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
            parsed += u64::from(v.is_object());
        }
        best = best.min(cpu_time() - cpu_before);
        assert_eq!(parsed, events);
    }
    best
}

/// DuckDB (the Python package, from `.ci/venv` or PATH) over the same file, one thread: an
/// exact sliding-window count (403s per user, 5 within 1m), one SQL query. Its CPU seconds,
/// or why it did not run.
fn duckdb(path: &Path, root: &Path) -> Result<(f64, u64), String> {
    let venv = root.join(".ci/venv/bin/python");
    let python = if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    };
    let script = r#"
import duckdb, sys, time
con = duckdb.connect()
con.execute("SET threads=1")
q = """
SELECT count(*) FROM (
  SELECT count(*) OVER (PARTITION BY u ORDER BY t
                        RANGE BETWEEN INTERVAL 1 MINUTE PRECEDING AND CURRENT ROW) AS n
  FROM (SELECT "user".username AS u, requestReceivedTimestamp AS t
        FROM read_json(?, format='newline_delimited',
             columns={'user': 'STRUCT(username VARCHAR)',
                      'responseStatus': 'STRUCT(code INTEGER)',
                      'requestReceivedTimestamp': 'TIMESTAMP'})
        WHERE responseStatus.code = 403)
) WHERE n >= 5
"""
best = None
for _ in range(3):
    c0 = time.process_time()
    found = con.execute(q, [sys.argv[1]]).fetchone()[0]
    c = time.process_time() - c0
    best = c if best is None else min(best, c)
print(best, found)
"#;
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(path)
        .output()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "not run ({}; `pip install duckdb` into .ci/venv, as .ci/run does)",
            err.lines().last().unwrap_or("failed")
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    let cpu = parts.next().and_then(|s| s.parse().ok());
    let found = parts.next().and_then(|s| s.parse().ok());
    cpu.zip(found)
        .ok_or_else(|| format!("unexpected output {text:?}"))
}

/// Wall time of `auditwatch check` over `rules` (best of RUNS): loading and compiling.
fn compile_time(rules: &[PathBuf]) -> (f64, String) {
    let mut best = f64::MAX;
    let mut said = String::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
            .arg("check")
            .args(rules)
            .output()
            .expect("run auditwatch check");
        best = best.min(started.elapsed().as_secs_f64());
        said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(out.status.success(), "{said}");
    }
    (best, said)
}

/// 80 more rules, of the kinds the packs hold (typed criteria, field criteria, Rhai
/// conditions, count and distinct windows), for the 200-rule compile figure.
fn generated_rules(dir: &Path) -> PathBuf {
    let path = dir.join("generated-rules");
    std::fs::create_dir_all(&path).expect("rules dir");
    let mut yaml = String::from("rules:\n");
    for i in 0..80 {
        let resource = READ_RESOURCES[i % READ_RESOURCES.len()];
        yaml.push_str(&format!(
            "  - name: generated-{i}\n    description: generated rule {i}\n    severity: low\n    match:\n      verbs: [get, list, create]\n      resources: [{resource}]\n      users: [\"system:serviceaccount:*\", \"*@example.com\"]\n      fields: {{ objectRef.namespace: [prod-{i}, \"staging-*\"] }}\n"
        ));
        match i % 4 {
            0 => yaml.push_str(&format!(
                "    condition: event.user.username.contains(\"{i}\") && event.sourceIPs.len() > 0\n"
            )),
            1 => yaml.push_str("    window: { over: 5m, threshold: 10, group_by: [user.username] }\n"),
            2 => yaml.push_str(
                "    window: { over: 10m, distinct: objectRef.name, threshold: 20, group_by: [user.username] }\n",
            ),
            _ => {}
        }
    }
    std::fs::write(path.join("generated.yaml"), yaml).expect("write generated rules");
    path
}

const RUNS: usize = 3;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let events: u64 = args
        .iter()
        .position(|a| a == "--events")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    println!(
        "mix: 44% Metadata reads, 20% lease renewals, 8% RequestReceived, 10% Event writes (Request), \
         2% pod creates (RequestResponse), 5% configmap patches (Request), 4% 403, 2% 401, \
         2% secret reads, 1% exec, 1% ingress updates (RequestResponse), 1% RBAC bindings; \
         the quiet corpus has the last six (the suspicious ones) ten times rarer"
    );
    println!(
        "all times: CPU seconds, one core, best of {RUNS}; x parse = CPU / the plain parse's CPU"
    );
    let sets = rule_sets(&root);
    let mut all_packs_quiet = None;
    let mut storm = None;
    for (corpus, quiet) in [("busy", false), ("quiet", true)] {
        let path = dir.join(format!("bench-audit-{corpus}-{events}.jsonl"));
        let started = Instant::now();
        let bytes = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(_) => generate(&path, events, quiet).expect("generate corpus"),
        };
        let _ = std::fs::read(&path); // warm the page cache
        println!();
        println!(
            "corpus {corpus}: {events} events, {:.0} MiB, {:.0} bytes/event ({}; ready in {:.1}s)",
            bytes as f64 / 1048576.0,
            bytes as f64 / events as f64,
            path.display(),
            started.elapsed().as_secs_f64()
        );
        let baseline = value_parse(&path, events);
        println!(
            "{:<48} {:>6} {:>10} {:>8} {:>7} {:>16} {:>10}",
            "", "rules", "events/s", "CPU s", "x parse", "alerts", "peak RSS"
        );
        let row = |name: &str, rules: String, cpu: f64, alerts: String, rss: &str| {
            println!(
                "{:<48} {:>6} {:>10.0} {:>8.2} {:>7.2} {:>16} {:>10}",
                name,
                rules,
                events as f64 / cpu,
                cpu,
                cpu / baseline,
                alerts,
                rss
            );
        };
        row(
            "serde_json::Value parse of every line",
            "-".into(),
            baseline,
            "-".into(),
            "",
        );
        for (name, rules) in &sets {
            let r = replay(&path, rules);
            let pct = r.alerts as f64 / events as f64 * 100.0;
            row(
                &format!("auditwatch replay, {name}"),
                r.rules.to_string(),
                r.cpu,
                format!("{} ({pct:.1}%)", r.alerts),
                &r.rss,
            );
            if quiet && name.contains("tuned") {
                all_packs_quiet = Some((r.cpu, baseline, pct));
            }
            if rules.is_empty() {
                bundled_ratio_line(r.cpu / baseline, corpus);
            }
        }
        if quiet {
            storm = Some(alert_storm(&path, &dir, events, &row));
        }
        match duckdb(&path, &root) {
            Ok((cpu, found)) => row(
                "DuckDB: exact 5-in-1m 403 window count, 1 query",
                "1".into(),
                cpu,
                format!("{found} rows"),
                "",
            ),
            Err(why) => println!("DuckDB: {why}"),
        }
    }

    println!();
    if let Some((cpu, baseline, pct)) = all_packs_quiet {
        let rate = events as f64 / cpu;
        println!(
            "target, all packs tuned on the quiet corpus (alerts {pct:.1}% of events, <= 2%): >= 250,000 events/s: {} ({rate:.0}); <= 0.50x parse: {} ({:.2})",
            met(rate >= 250_000.0),
            met(cpu / baseline <= 0.5),
            cpu / baseline
        );
    }

    if let Some((alerts, per_alert)) = storm {
        println!(
            "target, alert storm through replay --format json: >= 200,000 alerts/s (<= 5 us each): {} ({:.0} alerts/s, {:.2} us per alert over {alerts} alerts)",
            met(per_alert <= 5e-6),
            1.0 / per_alert,
            per_alert * 1e6
        );
    }

    // Compile time: every pack, plus 80 generated rules to reach 200.
    let mut rules: Vec<PathBuf> = sets[1].1.clone();
    let (t, said) = compile_time(&rules);
    println!("compile, all packs: {:.0} ms ({said})", t * 1e3);
    rules.push(generated_rules(&dir));
    let (t, said) = compile_time(&rules);
    println!(
        "compile, all packs + 80 generated: {:.0} ms ({said}); target 200 rules <= 100 ms: {}",
        t * 1e3,
        met(t <= 0.1)
    );
}

/// Alert storm: a rule that fires on every completed request, against a rule that matches
/// nothing (the same decoding and engine floor); the difference per alert is what one alert
/// costs, built and written as JSON. Returns (alerts, CPU seconds per alert).
fn alert_storm(
    path: &Path,
    dir: &Path,
    events: u64,
    row: &dyn Fn(&str, String, f64, String, &str),
) -> (u64, f64) {
    let storm = dir.join("storm.yaml");
    std::fs::write(
        &storm,
        "rules:\n  - name: every-request\n    description: fires on every completed request\n    severity: low\n    match: { stages: [ResponseComplete] }\n",
    )
    .expect("write storm rule");
    let none = dir.join("none.yaml");
    std::fs::write(
        &none,
        "rules:\n  - name: never\n    severity: low\n    match: { verbs: [never] }\n",
    )
    .expect("write idle rule");
    let floor = replay(path, &[none]);
    row(
        "auditwatch replay, one rule matching nothing",
        "1".into(),
        floor.cpu,
        "0".into(),
        &floor.rss,
    );
    let fired = replay(path, &[storm]);
    let pct = fired.alerts as f64 / events as f64 * 100.0;
    row(
        "auditwatch replay, one rule firing on every request",
        "1".into(),
        fired.cpu,
        format!("{} ({pct:.0}%)", fired.alerts),
        &fired.rss,
    );
    let per_alert = (fired.cpu - floor.cpu).max(0.0) / fired.alerts.max(1) as f64;
    (fired.alerts, per_alert)
}

fn bundled_ratio_line(ratio: f64, corpus: &str) {
    println!(
        "{:<48} bundled packs on the {corpus} corpus: {ratio:.2}x parse, target <= 0.33: {}",
        "",
        met(ratio <= 0.33)
    );
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

/// CPU time of this process so far (Linux `/proc/self/schedstat`, ns).
fn cpu_time() -> f64 {
    std::fs::read_to_string("/proc/self/schedstat")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        })
        .map_or(0.0, |ns| ns as f64 / 1e9)
}
