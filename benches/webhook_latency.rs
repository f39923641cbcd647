//! End-to-end latency of the live daemon: webhook POST → alert on stdout, over mTLS on
//! loopback, with every bundled pack loaded and the journal fsynced before each 2xx.
//!
//! ```sh
//! cargo bench --bench webhook_latency                     # 50,000 events/s for 40 s, then 10x overload for 20 s
//! cargo bench --bench webhook_latency -- --rate 20000 --seconds 5 --refused-percent 10
//! cargo bench --bench webhook_latency -- --refused-percent 10 --overload-seconds 90
//! cargo bench --bench webhook_latency -- --log-level debug     # daemon's snapshot/journal timings on stderr
//! cargo bench --bench webhook_latency -- --archive on          # only with the archive (default: off, then on)
//! ```
//!
//! The daemon runs twice, with the event archive off and on, and the daemon's CPU per
//! accepted event and p99 are compared (the archive's budget: +25% CPU, p99 ≤ 50 ms).
//!
//! The phase lasts long enough to include periodic state snapshots (every 30 s) and journal
//! compaction. Background traffic: controller reads and lists, lease updates, event writes,
//! watches, and `--refused-percent` (default 1) 403s from one service account, which keep the
//! auth rules' windows busy.
//!
//! A load client behaves like the apiserver's batching webhook backend: batches of 400 events,
//! sent open-loop on a fixed schedule from several connections; each batch carries one marker
//! event that a marker rule turns into an alert, so the latency of every batch is measured
//! from the start of its POST to the moment its alert line is read from auditwatch's stdout.
//! Refused batches (429/503) are counted and not retried (the load is open-loop).
//!
//! Windowed latency: each batch also carries four 403s of a user of its own (`burst-N`) and
//! the fifth 403 of the previous batch's user, stamped 15 s before the batch's other events (as
//! when two apiservers' batches interleave). A count window (5 within 1m per user, with the
//! default lateness) fires on that fifth request: its latency is measured from the POST of
//! the batch that carries it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

#[path = "common/measure.rs"]
mod measure;
use measure::{process_cpu, vm_kib};

const BATCH: usize = 400;
/// How a burst alert names its user.
const BURST_GROUP: &str = "\"user.username\":\"burst-";
const CONNECTIONS: usize = 6;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn timestamp() -> String {
    stamp(0.0)
}

/// The time `offset` seconds from now, as the apiserver writes it.
fn stamp(offset: f64) -> String {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        + offset;
    let (secs, nanos) = (d.floor() as i64, ((d - d.floor()) * 1e9) as u32);
    let t = chrono::DateTime::from_timestamp(secs, nanos).unwrap_or_default();
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// A batch of background traffic plus one marker event. `refused_percent` of the background
/// events are 403s (which every auth rule's window holds for the lateness period).
fn batch(seq: u64, refused_percent: usize) -> String {
    let ts = timestamp();
    let mut items = Vec::with_capacity(BATCH);
    for i in 0..BATCH - 6 {
        let (verb, resource, user, code) = match i % 10 {
            _ if i % 100 < refused_percent => {
                ("get", "secrets", "system:serviceaccount:prod:app", 403)
            }
            0..=3 => (
                "get",
                "pods",
                "system:serviceaccount:kube-system:replicaset-controller",
                200,
            ),
            4..=5 => ("update", "leases", "system:node:node-7", 200),
            6 => (
                "list",
                "configmaps",
                "system:serviceaccount:monitoring:prometheus",
                200,
            ),
            7 => ("create", "events", "system:node:node-3", 201),
            8 => ("watch", "endpoints", "system:kube-proxy", 200),
            _ => ("get", "secrets", "system:serviceaccount:prod:app", 200),
        };
        items.push(format!(
            r#"{{"level":"Metadata","auditID":"{seq:08x}-{i:04x}-4000-8000-000000000000","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/prod/{resource}/x{i}","verb":"{verb}","user":{{"username":"{user}","groups":["system:authenticated"]}},"sourceIPs":["10.0.0.{}"],"userAgent":"kube-controller-manager/v1.31.0","objectRef":{{"resource":"{resource}","namespace":"prod","name":"x{i}","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":{code}}},"requestReceivedTimestamp":"{ts}","stageTimestamp":"{ts}"}}"#,
            i % 250
        ));
    }
    // A burst of this batch's user, and the request completing the previous batch's burst,
    // 15 s older than everything else here.
    let earlier = stamp(-15.0);
    for (i, user, at) in [
        (0, seq, &ts),
        (1, seq, &ts),
        (2, seq, &ts),
        (3, seq, &ts),
        (4, seq.wrapping_sub(1), &earlier),
    ] {
        items.push(format!(
            r#"{{"level":"Metadata","auditID":"burst-{seq}-{i}","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/bench/secrets","verb":"list","user":{{"username":"burst-{user}"}},"sourceIPs":["10.9.0.1"],"objectRef":{{"resource":"secrets","namespace":"bench"}},"responseStatus":{{"code":403}},"requestReceivedTimestamp":"{at}","stageTimestamp":"{at}"}}"#
        ));
    }
    items.push(format!(
        r#"{{"level":"Metadata","auditID":"marker-{seq}","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/bench/configmaps/marker","verb":"delete","user":{{"username":"latency-probe"}},"sourceIPs":["127.0.0.1"],"objectRef":{{"resource":"configmaps","namespace":"bench","name":"marker"}},"responseStatus":{{"code":200}},"requestReceivedTimestamp":"{ts}","stageTimestamp":"{ts}"}}"#
    ));
    format!(
        r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{{}},"items":[{}]}}"#,
        items.join(",")
    )
}

struct Phase {
    name: &'static str,
    rate: u64,
    seconds: u64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Options {
    rate: u64,
    seconds: u64,
    refused_percent: usize,
    log_level: String,
    overload_seconds: Option<u64>,
}

/// The target phase of one run: the daemon's CPU per accepted event and the marker p99.
struct Measured {
    cpu_us_per_event: f64,
    p99_ms: f64,
}

fn main() {
    let mut rate = 50_000u64;
    let mut seconds = 40u64;
    let mut refused_percent = 1usize;
    let mut log_level = String::from("warn");
    let mut overload_seconds = None;
    let mut archive = String::from("both");
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--rate" => rate = args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(rate),
            "--refused-percent" => {
                refused_percent = args
                    .get(i + 1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(refused_percent)
            }
            "--overload-seconds" => {
                overload_seconds = args.get(i + 1).and_then(|v| v.parse().ok());
            }
            "--log-level" => {
                log_level = args.get(i + 1).cloned().unwrap_or(log_level);
            }
            "--archive" => {
                archive = args.get(i + 1).cloned().unwrap_or(archive);
            }
            "--seconds" => {
                seconds = args
                    .get(i + 1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(seconds)
            }
            _ => {}
        }
        i += 1;
    }
    let options = Options {
        rate,
        seconds,
        refused_percent,
        log_level,
        overload_seconds,
    };
    let runs: &[bool] = match archive.as_str() {
        "on" => &[true],
        "off" => &[false],
        _ => &[false, true],
    };
    let mut measured = Vec::new();
    for &on in runs {
        println!();
        println!("archive {}:", if on { "on" } else { "off" });
        measured.push((on, run(&options, on)));
    }
    if let [(false, Some(off)), (true, Some(on))] = &measured[..] {
        let extra = on.cpu_us_per_event / off.cpu_us_per_event - 1.0;
        println!();
        println!(
            "archive cost at the target rate: daemon CPU {:.2} -> {:.2} µs per accepted event ({:+.0}%; target ≤ +25%: {}); marker p99 {:.1} -> {:.1} ms (target ≤ 50 ms: {})",
            off.cpu_us_per_event,
            on.cpu_us_per_event,
            extra * 100.0,
            if extra <= 0.25 { "met" } else { "NOT met" },
            off.p99_ms,
            on.p99_ms,
            if on.p99_ms <= 50.0 { "met" } else { "NOT met" },
        );
    }
}

/// Starts a daemon (archive on or off), runs the phases against it, stops it.
fn run(options: &Options, archive: bool) -> Option<Measured> {
    let Options {
        rate,
        seconds,
        refused_percent,
        ref log_level,
        overload_seconds,
    } = *options;
    let mut result = None;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/tmp/webhook-latency");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");

    // Certificates: a CA, the server's, the apiserver's client certificate.
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(names)
            .expect("params")
            .signed_by(&key, &ca)
            .expect("cert");
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".into()]);
    let (client_cert, client_key) = leaf(vec!["kube-apiserver".into()]);
    std::fs::write(dir.join("ca.crt"), ca.pem()).expect("write");
    std::fs::write(dir.join("tls.crt"), &server_cert).expect("write");
    std::fs::write(dir.join("tls.key"), &server_key).expect("write");
    std::fs::write(
        dir.join("marker.yaml"),
        "rules:\n  - name: latency-marker\n    severity: info\n    match: { verbs: [delete], users: [latency-probe] }\n  - name: latency-burst\n    severity: info\n    match: { users: [\"burst-*\"], response_codes: [403] }\n    window: { over: 1m, threshold: 5, group_by: [user.username] }\n",
    )
    .expect("write");
    let (port, metrics) = (free_port(), free_port());
    std::fs::write(
        dir.join("auditwatch.yaml"),
        format!(
            r#"state_dir: state
rules: ["{rules}", marker.yaml]
# The marker rules fire ~7,500 times a minute each, by design: the storm limit stays in the
# path (its cost is measured) but high enough not to fold them.
alerts: {{ stdout: json, storm: {{ max_per_rule: 1000000, per: 1m }} }}
http: {{ listen: "127.0.0.1:{metrics}" }}
log: {{ level: {log_level} }}
archive: {{ enabled: {archive} }}
sources:
  - webhook:
      listen: "127.0.0.1:{port}"
      tls: {{ cert: tls.crt, key: tls.key, client_ca: ca.crt }}
"#,
            rules = root.join("rules").display()
        ),
    )
    .expect("write");

    let mut child = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
        .args(["run", "--config", "auditwatch.yaml"])
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start auditwatch");
    let pid = child.id();
    let seen: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    // Burst alerts by the batch that completed them (the one after the user's own).
    let windowed: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    {
        let (seen, windowed) = (Arc::clone(&seen), Arc::clone(&windowed));
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            let number = |rest: &str| rest.split('"').next().and_then(|s| s.parse::<u64>().ok());
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let at = Instant::now();
                if let Some(i) = line.find("\"marker-") {
                    if let Some(seq) = number(&line[i + 8..]) {
                        seen.lock().expect("lock").insert(seq, at);
                    }
                } else if line.contains("\"latency-burst\"")
                    && let Some(i) = line.find(BURST_GROUP)
                    && let Some(seq) = number(&line[i + BURST_GROUP.len()..])
                {
                    windowed.lock().expect("lock").insert(seq + 1, at);
                }
            }
        });
    }
    let client = reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("ca"))
        .identity(
            reqwest::Identity::from_pem(format!("{client_cert}{client_key}").as_bytes())
                .expect("identity"),
        )
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let url = format!("https://127.0.0.1:{port}/");
    let deadline = Instant::now() + Duration::from_secs(60);
    while client
        .get(format!("http://127.0.0.1:{metrics}/readyz"))
        .send()
        .is_err()
    {
        assert!(Instant::now() < deadline, "auditwatch did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut seq_base = 0u64;
    for phase in [
        Phase {
            name: "target",
            rate,
            seconds,
        },
        Phase {
            name: "10x overload",
            rate: rate * 10,
            seconds: overload_seconds.unwrap_or(seconds.div_ceil(2)),
        },
    ] {
        if phase.seconds == 0 {
            continue;
        }
        let batches = phase.rate * phase.seconds / BATCH as u64;
        let interval = Duration::from_secs_f64(BATCH as f64 / phase.rate as f64);
        let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
        let (accepted, refused, failed) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let next = Arc::new(AtomicU64::new(0));
        let start = Instant::now() + Duration::from_millis(200);
        let cpu_before = process_cpu(pid);
        let rss_samples = Arc::new(Mutex::new(Vec::new()));
        let mut workers = Vec::new();
        for _ in 0..CONNECTIONS {
            let (client, url) = (client.clone(), url.clone());
            let (sent_at, accepted, refused, failed, next) = (
                Arc::clone(&sent_at),
                Arc::clone(&accepted),
                Arc::clone(&refused),
                Arc::clone(&failed),
                Arc::clone(&next),
            );
            workers.push(std::thread::spawn(move || {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= batches {
                        break;
                    }
                    let due = start + interval * n as u32;
                    let body = batch(seq_base + n, refused_percent);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let t = Instant::now();
                    match client
                        .post(&url)
                        .header("Content-Type", "application/json")
                        .body(body)
                        .send()
                    {
                        Ok(r) if r.status().is_success() => {
                            sent_at.lock().expect("lock").insert(seq_base + n, t);
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        {
            let rss_samples = Arc::clone(&rss_samples);
            let until = start + Duration::from_secs(phase.seconds);
            std::thread::spawn(move || {
                while Instant::now() < until {
                    rss_samples
                        .lock()
                        .expect("lock")
                        .push(vm_kib(pid, "VmRSS:"));
                    std::thread::sleep(Duration::from_millis(250));
                }
            });
        }
        for w in workers {
            let _ = w.join();
        }
        let elapsed = start.elapsed().as_secs_f64();
        // Let the last alerts arrive (and the last batches be evaluated and archived).
        std::thread::sleep(Duration::from_secs(2));
        let cpu = process_cpu(pid) - cpu_before;
        let sent = sent_at.lock().expect("lock");
        let seen = seen.lock().expect("lock");
        let windowed = windowed.lock().expect("lock");
        let mut window_lat: Vec<f64> = sent
            .iter()
            .filter_map(|(seq, t)| {
                windowed
                    .get(seq)
                    .map(|a| a.saturating_duration_since(*t).as_secs_f64() * 1e3)
            })
            .collect();
        window_lat.sort_by(|a, b| a.total_cmp(b));
        let mut lat: Vec<f64> = sent
            .iter()
            .filter_map(|(seq, t)| {
                seen.get(seq)
                    .map(|a| a.duration_since(*t).as_secs_f64() * 1e3)
            })
            .collect();
        lat.sort_by(|a, b| a.total_cmp(b));
        // Seconds of the phase whose worst batch took longer than 50 ms: shows whether slow
        // batches are spread out or come from one stall.
        let mut slow_seconds: std::collections::BTreeMap<u64, (usize, f64)> = Default::default();
        for (seq, t) in sent.iter() {
            if let Some(a) = seen.get(seq) {
                let ms = a.duration_since(*t).as_secs_f64() * 1e3;
                if ms > 50.0 {
                    let second = t.saturating_duration_since(start).as_secs();
                    let e = slow_seconds.entry(second).or_default();
                    e.0 += 1;
                    e.1 = e.1.max(ms);
                }
            }
        }
        let lost = sent.keys().filter(|s| !seen.contains_key(s)).count();
        let rss = rss_samples.lock().expect("lock").clone();
        let accepted_events = accepted.load(Ordering::Relaxed) * BATCH as u64;
        println!("phase: {}", phase.name);
        println!(
            "  offered  {:>9.0} events/s ({} batches of {BATCH} over {:.1} s, {CONNECTIONS} connections)",
            (batches * BATCH as u64) as f64 / elapsed,
            batches,
            elapsed
        );
        println!(
            "  accepted {:>9.0} events/s; refused (429/503) {} batches, failed {}",
            accepted_events as f64 / elapsed,
            refused.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed)
        );
        println!(
            "  daemon CPU {cpu:.1} s: {:.2} µs per accepted event, {:.0}% of a core",
            cpu / accepted_events.max(1) as f64 * 1e6,
            cpu / elapsed * 100.0
        );
        if phase.name == "target" {
            result = Some(Measured {
                cpu_us_per_event: cpu / accepted_events.max(1) as f64 * 1e6,
                p99_ms: percentile(&lat, 0.99),
            });
        }
        println!(
            "  latency POST -> alert: p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms ({} batches; {} accepted without an alert)",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            percentile(&lat, 0.999),
            lat.last().copied().unwrap_or(f64::NAN),
            lat.len(),
            lost
        );
        println!(
            "  latency POST -> windowed alert (5th 403 of a burst, 15 s out of order): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} bursts)",
            percentile(&window_lat, 0.5),
            percentile(&window_lat, 0.99),
            window_lat.last().copied().unwrap_or(f64::NAN),
            window_lat.len(),
        );
        // Flat memory means the second half of the phase needs no more than the first.
        let (first, second) = rss.split_at(rss.len() / 2);
        let max_mib = |s: &[u64]| s.iter().max().copied().unwrap_or(0) / 1024;
        println!(
            "  RSS during the phase: min {} MiB, max {} MiB (first half max {} MiB, second half max {} MiB); peak RSS so far {} MiB",
            rss.iter().min().copied().unwrap_or(0) / 1024,
            max_mib(&rss),
            max_mib(first),
            max_mib(second),
            vm_kib(pid, "VmHWM:") / 1024
        );
        // The shape over time: a plateau means the state has reached its configured bounds.
        let per_slot = 20; // samples are 250 ms apart
        let timeline: Vec<String> = rss
            .chunks(per_slot)
            .map(|c| (c.iter().max().copied().unwrap_or(0) / 1024).to_string())
            .collect();
        println!("  RSS max per 5 s (MiB): {}", timeline.join(" "));
        // What the engine holds at the end of the phase (the lateness's memory) and what the
        // snapshots cost it.
        let scraped = client
            .get(format!("http://127.0.0.1:{metrics}/metrics"))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default();
        let value = |name: &str| {
            scraped
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        println!(
            "  engine: {:.0} window keys, {:.0} requests held for the lateness; snapshot capture {:.1} ms on average over {:.0}",
            value("auditwatch_window_keys "),
            value("auditwatch_window_held_requests "),
            value("auditwatch_snapshot_capture_seconds_sum ") * 1e3
                / value("auditwatch_snapshot_capture_seconds_count "),
            value("auditwatch_snapshot_capture_seconds_count "),
        );
        if !slow_seconds.is_empty() {
            let list: Vec<String> = slow_seconds
                .iter()
                .map(|(s, (n, worst))| format!("{s}s: {n} (worst {worst:.0} ms)"))
                .collect();
            if list.len() <= 12 {
                println!(
                    "  batches over 50 ms by second of the phase: {}",
                    list.join(", ")
                );
            } else {
                let total: usize = slow_seconds.values().map(|(n, _)| n).sum();
                println!(
                    "  batches over 50 ms: {total} spread over {} seconds of the phase",
                    list.len()
                );
            }
        }
        seq_base += batches;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    if archive {
        let bytes: u64 = std::fs::read_dir(dir.join("state/archive"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        println!("  archive on disk: {:.1} MiB", bytes as f64 / 1048576.0);
    }
    result
}
