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
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[path = "common/corpus.rs"]
mod corpus;
#[path = "common/measure.rs"]
mod measure;
#[path = "common/python.rs"]
mod python;
use corpus::{READ_RESOURCES, generate};
use measure::{cpu_time, met};

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
    let text = python::run_duckdb_script(root, script, &[path.as_os_str()])?;
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
