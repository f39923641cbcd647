//! Cluster mode on a real 3-node NATS JetStream cluster (Debian's nats-server, R3 streams):
//! scale-out, latency and footprint. Every pack is loaded (bundled, Falco and Panther ports,
//! SigmaHQ rules, with benches/tuning.yaml), as users run it.
//!
//! ```sh
//! cargo bench --bench cluster                          # 120,000 events per partition, 20 s at 20,000 events/s
//! cargo bench --bench cluster -- --events 300000 --rate 20000 --seconds 30
//! cargo bench --bench cluster -- --only scale --rounds 5   # or --only latency
//! ```
//!
//! 1. **Scale-out.** The quiet corpus of `benches/common/corpus.rs`, in EventList batches of
//!    400, is published to two partitions as receivers publish (zstd-compressed). One worker holding one partition, then two workers
//!    holding one each, evaluate from the stream; the aggregate rate of the two is compared
//!    with the one (target ≥ 1.6×). A plain parse of the same batches (serde_json to a
//!    `Value`, one core) is printed beside them as the peer.
//! 2. **Latency.** A receiver and a worker; a load client POSTs batches of 400 events at
//!    `--rate` events/s to the receiver, each with one marker event that a marker rule turns
//!    into an alert. Latency is from the start of a batch's POST to the arrival of its marker
//!    alert at a webhook endpoint of the bench's own: webhook → JetStream (R3, acknowledged)
//!    → worker → engine → alerts stream (acknowledged) → ledger claim → notification.
//!    Target p99 ≤ 100 ms at 20,000 events/s.
//! 3. **Footprint.** RSS and disk of the three NATS servers and RSS of the auditwatch
//!    processes after the runs.

#[path = "common/corpus.rs"]
mod corpus;
#[path = "common/measure.rs"]
mod measure;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use measure::{met, process_cpu};

const BATCH: usize = 400;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    measure::vm_kib(pid, "VmRSS:")
}

fn du_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += du_bytes(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

struct Nats {
    nodes: Vec<Proc>,
    dirs: Vec<PathBuf>,
    urls: Vec<String>,
}

fn nats_cluster(dir: &Path) -> Nats {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let route_list: Vec<String> = routes
        .iter()
        .map(|p| format!("nats-route://127.0.0.1:{p}"))
        .collect();
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..3 {
        let store = dir.join(format!("nats-{i}"));
        std::fs::create_dir_all(&store).expect("nats dir");
        let conf = dir.join(format!("nats-{i}.conf"));
        std::fs::write(
            &conf,
            format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{}\nmax_payload: 8MB\njetstream {{ store_dir: \"{}\", max_memory_store: 256MB, max_file_store: 8GB }}\ncluster {{ name: bench, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                ports[i],
                store.display(),
                routes[i],
                route_list.join(", ")
            ),
        )
        .expect("nats conf");
        let log = std::fs::File::create(dir.join(format!("nats-{i}.log"))).expect("log");
        let child = Command::new("/usr/sbin/nats-server")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server (apt-get install nats-server)");
        nodes.push(Proc(child));
        dirs.push(store);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(0..3).any(|i| {
        std::fs::read_to_string(dir.join(format!("nats-{i}.log")))
            .unwrap_or_default()
            .contains("metadata leader")
    }) {
        assert!(Instant::now() < deadline, "no JetStream meta leader");
        std::thread::sleep(Duration::from_millis(100));
    }
    Nats {
        nodes,
        dirs,
        urls: ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect(),
    }
}

fn rules(root: &Path) -> String {
    let paths = [
        root.join("rules"),
        root.join("peers/falco"),
        root.join("peers/panther"),
        root.join("../shared/corpus/sigma/rules"),
        root.join("benches/tuning.yaml"),
    ];
    paths
        .iter()
        .map(|p| format!("\"{}\"", p.display()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes a member's config; returns (dir, config, http port, webhook port).
#[allow(clippy::too_many_arguments)]
fn member(
    root: &Path,
    work: &Path,
    name: &str,
    role: &str,
    partitions: &[&str],
    nats: &Nats,
    stdout: &str,
    extra_rules: &str,
) -> (PathBuf, PathBuf, u16, u16) {
    let dir = work.join(name);
    std::fs::create_dir_all(&dir).expect("member dir");
    let (http, hook) = (free_port(), free_port());
    let urls: Vec<String> = nats.urls.iter().map(|u| format!("\"{u}\"")).collect();
    let config = dir.join("auditwatch.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: state\nrules: [{}{extra_rules}]\nhttp: {{ listen: \"127.0.0.1:{http}\", console: false }}\nalerts: {{ stdout: {stdout}, storm: {{ max_per_rule: 1000000 }} }}\nlog: {{ level: warn }}\nsources:\n  - webhook: {{ name: audit, listen: \"127.0.0.1:{hook}\", max_body: 8MiB }}\ncluster:\n  nats: [{}]\n  role: {role}\n  name: {}\n  partitions: [{}]\n  member: {name}\n",
            rules(root),
            urls.join(", "),
            partitions[0],
            partitions.join(", ")
        ),
    )
    .expect("config");
    (dir, config, http, hook)
}

fn spawn(dir: &Path, config: &Path, stdout: Stdio) -> Proc {
    let log = std::fs::File::create(dir.join("stderr.log")).expect("log");
    Proc(
        Command::new(env!("CARGO_BIN_EXE_auditwatch"))
            .args(["run", "--config"])
            .arg(config)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .expect("auditwatch run"),
    )
}

fn metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn decoded(port: u16) -> u64 {
    metrics(port)
        .lines()
        .filter(|l| l.starts_with("auditwatch_events_decoded_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// EventList batches of the quiet corpus.
fn batches(work: &Path, events: u64) -> Vec<Vec<u8>> {
    let path = work.join(format!("corpus-quiet-{events}.jsonl"));
    corpus::generate(&path, events, true).expect("corpus");
    let text = std::fs::read_to_string(&path).expect("corpus");
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(BATCH)
        .map(|c| {
            format!(
                r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{}]}}"#,
                c.join(",")
            )
            .into_bytes()
        })
        .collect()
}

async fn publish(nats: &auditwatch::cluster::Nats, partition: &str, batches: &[Vec<u8>]) {
    let subject = auditwatch::cluster::events_subject(partition, "audit");
    for chunk in batches.chunks(64) {
        let mut acks = Vec::new();
        for b in chunk {
            // As a receiver publishes it.
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(auditwatch::cluster::SOURCE_HEADER, "audit");
            headers.insert(auditwatch::cluster::ENCODING_HEADER, "zstd");
            let body = zstd::bulk::compress(b, 1).expect("zstd");
            acks.push(
                nats.js
                    .publish_with_headers(subject.clone(), headers, body.into())
                    .await
                    .expect("publish"),
            );
        }
        for a in acks {
            a.await.expect("ack");
        }
    }
}

/// Reads a partition from the stream as a worker does, without evaluating it: the floor of a
/// worker's cost that is NATS and decompression. Returns events/s and cores used.
async fn read_floor(
    client: &auditwatch::cluster::Nats,
    nats: &Nats,
    partition: &str,
) -> (f64, f64, f64) {
    use async_nats::jetstream::consumer::pull;
    use futures_util::StreamExt;
    let nats_cpu = || {
        nats.nodes
            .iter()
            .map(|p| process_cpu(p.0.id()))
            .sum::<f64>()
    };
    let consumer = client
        .events
        .create_consumer(pull::OrderedConfig {
            filter_subject: auditwatch::cluster::events_subject(partition, "*"),
            max_batch: 64,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let (t, own, theirs) = (Instant::now(), process_cpu(std::process::id()), nats_cpu());
    let mut bytes = 0usize;
    let mut inflater = auditwatch::cluster::Inflater::default();
    while let Some(Ok(m)) = messages.next().await {
        bytes += inflater.inflate(&m.payload, 8 << 20).expect("zstd").len();
        if m.info().map(|i| i.pending).unwrap_or(0) == 0 {
            break;
        }
    }
    let wall = t.elapsed().as_secs_f64();
    (
        bytes as f64 / wall,
        (process_cpu(std::process::id()) - own) / wall,
        (nats_cpu() - theirs) / wall,
    )
}

/// What one replicated write costs, in wall time and in the NATS servers' CPU: why a worker's
/// alerts replica paces its writes (`pace` in src/daemon/cluster.rs). Written to a
/// subject of the alerts stream no partition reads; the scale runs purge the stream.
async fn write_cost(client: &auditwatch::cluster::Nats, nats: &Nats, size: usize) -> (f64, f64) {
    let cpu = || {
        nats.nodes
            .iter()
            .map(|p| process_cpu(p.0.id()))
            .sum::<f64>()
    };
    const WRITES: usize = 500;
    let (t, c) = (Instant::now(), cpu());
    for _ in 0..WRITES {
        client
            .js
            .publish(
                "auditwatch.alerts.bench-write-cost",
                vec![b'x'; size].into(),
            )
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    let n = WRITES as f64;
    (t.elapsed().as_secs_f64() * 1e3 / n, (cpu() - c) * 1e3 / n)
}

/// Drops what a previous run left (snapshots, leases, alerts), so a run starts from the
/// stream's first batch.
async fn forget_state(nats: &auditwatch::cluster::Nats, partitions: &[&str]) {
    for p in partitions {
        let _ = nats.snapshot_pointers.purge(p).await;
        let _ = nats.leases.purge(p).await;
    }
    let _ = nats.alerts.clone().purge().await;
}

/// Evaluates `per_partition` events on each of `partitions`, one worker per partition;
/// returns the aggregate events/s and the workers' peak RSS.
fn scale_run(
    root: &Path,
    work: &Path,
    nats: &Nats,
    partitions: &[&str],
    per_partition: u64,
    runtime: &tokio::runtime::Runtime,
    client: &auditwatch::cluster::Nats,
) -> (f64, u64) {
    runtime.block_on(forget_state(client, partitions));
    let mut workers = Vec::new();
    for p in partitions {
        let name = format!("worker-{}-{p}", partitions.len());
        let (dir, config, http, _) = member(root, work, &name, "worker", &[p], nats, "off", "");
        let _ = std::fs::remove_dir_all(dir.join("state"));
        workers.push((spawn(&dir, &config, Stdio::null()), http));
    }
    let nats_cpu = |n: &Nats| n.nodes.iter().map(|p| process_cpu(p.0.id())).sum::<f64>();
    // The rate counts while every worker is evaluating: from the first poll at which all have
    // started to the last at which none has finished (start-up, which differs between
    // workers competing for the same two cores while compiling their rules, is left out, and
    // so is the end, when one runs alone). Polls are 100 ms apart: each scrapes every
    // worker's `/metrics`, which is work the workers do, and polling at 50 Hz cost them about
    // a tenth of a core.
    type Sample = (Instant, u64, std::collections::BTreeMap<String, f64>);
    let mut window_start: Option<Sample> = None;
    let mut last_all: Option<Sample> = None;
    let mut peak_rss = 0;
    // CPU by where it went: the workers' threads by name, and the NATS servers.
    let worker_cpu = |workers: &[(Proc, u16)]| {
        let mut by = std::collections::BTreeMap::new();
        for (p, _) in workers {
            for (name, cpu) in measure::thread_cpu(p.0.id()) {
                *by.entry(name).or_insert(0.0) += cpu;
            }
        }
        by.insert("NATS servers".to_owned(), nats_cpu(nats));
        by
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    let window = loop {
        assert!(Instant::now() < deadline, "workers did not finish");
        let counts: Vec<u64> = workers.iter().map(|(_, http)| decoded(*http)).collect();
        let sample = (Instant::now(), counts.iter().sum(), worker_cpu(&workers));
        if counts.iter().any(|n| *n >= per_partition) {
            for (p, _) in &workers {
                peak_rss = peak_rss.max(rss_kib(p.0.id()));
            }
            match (window_start, last_all) {
                (Some(s), Some(l)) if l.0 > s.0 => break (s, l),
                _ => panic!(
                    "the workers finished before a window could be measured: give them more --events"
                ),
            }
        }
        if counts.iter().all(|n| *n > 0) {
            window_start.get_or_insert_with(|| sample.clone());
            last_all = Some(sample);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let alerts = runtime
        .block_on(async { client.alerts.clone().info().await.map(|i| i.state.clone()) })
        .map(|s| format!("{} messages, {} KiB", s.messages, s.bytes >> 10))
        .unwrap_or_default();
    println!("  alerts stream at the end: {alerts}");
    let ((t0, n0, cpu0), (t1, n1, cpu1)) = window;
    let wall = (t1 - t0).as_secs_f64();
    let total = n1 - n0;
    let used: Vec<(String, f64)> = cpu1
        .iter()
        .map(|(name, c)| (name.clone(), c - cpu0.get(name).copied().unwrap_or(0.0)))
        .filter(|(_, c)| *c > 0.0)
        .collect();
    let all: f64 = used.iter().map(|(_, c)| c).sum();
    println!(
        "  {} worker(s): {total} events in {wall:.2} s while all evaluated; {:.2} cores busy meanwhile ({:.2} µs of CPU per event): {}",
        workers.len(),
        all / wall,
        all / total as f64 * 1e6,
        used.iter()
            .map(|(name, c)| format!("{name} {:.2}", c / wall))
            .collect::<Vec<_>>()
            .join(", ")
    );
    (total as f64 / wall, peak_rss)
}

fn stamp() -> String {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let (secs, nanos) = (d.floor() as i64, ((d - d.floor()) * 1e9) as u32);
    let t = chrono::DateTime::from_timestamp(secs, nanos).unwrap_or_default();
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// A live batch: controller traffic and one marker event.
fn live_batch(seq: u64) -> String {
    let ts = stamp();
    let mut items = Vec::with_capacity(BATCH);
    for i in 0..BATCH - 1 {
        let (verb, resource, user) = match i % 4 {
            0 | 1 => (
                "get",
                "pods",
                "system:serviceaccount:kube-system:replicaset-controller",
            ),
            2 => ("update", "leases", "system:node:node-7"),
            _ => (
                "list",
                "configmaps",
                "system:serviceaccount:monitoring:prometheus",
            ),
        };
        items.push(format!(
            r#"{{"level":"Metadata","auditID":"{seq:08x}-{i:04x}-4000-8000-000000000000","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/prod/{resource}/x{i}","verb":"{verb}","user":{{"username":"{user}","groups":["system:authenticated"]}},"sourceIPs":["10.0.0.{}"],"userAgent":"kube-controller-manager/v1.31.0","objectRef":{{"resource":"{resource}","namespace":"prod","name":"x{i}","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":200}},"requestReceivedTimestamp":"{ts}","stageTimestamp":"{ts}"}}"#,
            i % 250
        ));
    }
    items.push(format!(
        r#"{{"level":"Metadata","auditID":"marker-{seq}","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/bench/configmaps/marker","verb":"delete","user":{{"username":"latency-probe"}},"sourceIPs":["127.0.0.1"],"objectRef":{{"resource":"configmaps","namespace":"bench","name":"marker"}},"responseStatus":{{"code":200}},"requestReceivedTimestamp":"{ts}","stageTimestamp":"{ts}"}}"#
    ));
    format!(
        r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{}]}}"#,
        items.join(",")
    )
}

/// Answers the worker's notifications on one connection (keep-alive), recording the latency
/// of each marker alert in them.
fn serve_probe(
    conn: std::net::TcpStream,
    sent: &Mutex<HashMap<u64, Instant>>,
    latencies: &Mutex<Vec<f64>>,
) {
    use std::io::{Read, Write};
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let at = Instant::now();
        let text = String::from_utf8_lossy(&body);
        for (i, _) in text.match_indices("marker-") {
            let digits: String = text[i + 7..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(seq) = digits.parse::<u64>()
                && let Some(t) = sent.lock().expect("lock").remove(&seq)
            {
                latencies
                    .lock()
                    .expect("lock")
                    .push((at - t).as_secs_f64() * 1e3);
            }
        }
        if writer
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

/// Receiver + worker; POSTs at `rate` events/s for `seconds`; marker latencies in ms.
fn latency_run(
    root: &Path,
    work: &Path,
    nats: &Nats,
    rate: u64,
    seconds: u64,
) -> (Vec<f64>, u64, [u64; 2]) {
    let marker = work.join("marker.yaml");
    std::fs::write(
        &marker,
        "rules:\n  - name: latency-marker\n    severity: info\n    match: { verbs: [delete], users: [latency-probe] }\n",
    )
    .expect("marker rule");
    let extra = format!(", \"{}\"", marker.display());
    let (rdir, rconfig, rhttp, hook) = member(
        root,
        work,
        "receiver",
        "receiver",
        &["live"],
        nats,
        "off",
        &extra,
    );
    let (wdir, wconfig, whttp, _) = member(
        root,
        work,
        "live-worker",
        "worker",
        &["live"],
        nats,
        "off",
        &extra,
    );
    // The worker delivers each marker alert to this endpoint (Alertmanager's webhook payload).
    let listener = TcpListener::bind("127.0.0.1:0").expect("notification endpoint");
    let notify_port = listener.local_addr().expect("port").port();
    let mut config = std::fs::read_to_string(&wconfig).expect("config");
    config.push_str(&format!(
        "receivers:\n  - name: probe\n    webhook_configs: [ {{ url: \"http://127.0.0.1:{notify_port}/\" }} ]\nroute: {{ receiver: probe, group_wait: 0s }}\n"
    ));
    std::fs::write(&wconfig, config).expect("config");
    let receiver = spawn(&rdir, &rconfig, Stdio::null());
    let worker = spawn(&wdir, &wconfig, Stdio::null());
    let ready = |port: u16| metrics(port).contains("auditwatch_cluster_nats_connected 1");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(ready(rhttp)
        && metrics(whttp).contains("auditwatch_cluster_partition_held{partition=\"live\"} 1"))
    {
        assert!(Instant::now() < deadline, "receiver and worker not ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    {
        let (sent, latencies) = (Arc::clone(&sent), Arc::clone(&latencies));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (sent, latencies) = (Arc::clone(&sent), Arc::clone(&latencies));
                std::thread::spawn(move || serve_probe(conn, &sent, &latencies));
            }
        });
    }
    let batches_per_s = (rate / BATCH as u64).max(1);
    let interval = Duration::from_secs_f64(1.0 / batches_per_s as f64);
    let total = batches_per_s * seconds;
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let connections = 4;
    let mut posters = Vec::new();
    let start = Instant::now() + Duration::from_millis(200);
    for c in 0..connections {
        let (sent, refused) = (Arc::clone(&sent), Arc::clone(&refused));
        posters.push(std::thread::spawn(move || {
            let client = reqwest::blocking::Client::new();
            let mut seq = c;
            while seq < total {
                let due = start + interval * seq as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let body = live_batch(seq);
                sent.lock().expect("lock").insert(seq, Instant::now());
                let ok = client
                    .post(format!("http://127.0.0.1:{hook}/"))
                    .header("Content-Type", "application/json")
                    .body(body)
                    .send()
                    .is_ok_and(|r| r.status().is_success());
                if !ok {
                    sent.lock().expect("lock").remove(&seq);
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                seq += connections;
            }
        }));
    }
    for p in posters {
        let _ = p.join();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sent.lock().expect("lock").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let rss = [rss_kib(receiver.0.id()), rss_kib(worker.0.id())];
    drop(worker);
    drop(receiver);
    let lost = sent.lock().expect("lock").len() as u64;
    let mut l = latencies.lock().expect("lock").clone();
    l.sort_by(f64::total_cmp);
    (
        l,
        refused.load(std::sync::atomic::Ordering::Relaxed) + lost,
        rss,
    )
}

fn main() {
    let mut events = 300_000u64;
    let mut rate = 20_000u64;
    let mut seconds = 20u64;
    let mut only = String::from("all");
    let mut rounds = 3usize;
    let args: Vec<String> = std::env::args().collect();
    for w in args.windows(2) {
        match w[0].as_str() {
            "--events" => events = w[1].parse().unwrap_or(events),
            "--rate" => rate = w[1].parse().unwrap_or(rate),
            "--seconds" => seconds = w[1].parse().unwrap_or(seconds),
            "--only" => only = w[1].clone(),
            "--rounds" => rounds = w[1].parse().unwrap_or(rounds),
            _ => {}
        }
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let work = std::env::temp_dir().join(format!("aw-bench-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("work dir");
    let nats = nats_cluster(&work);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let cfg = auditwatch::cluster::ClusterConfig {
        nats: nats.urls.clone(),
        ..Default::default()
    };
    // Right after the meta leader is elected the other servers may not be placeable yet.
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = loop {
        match runtime.block_on(auditwatch::cluster::Nats::connect(&cfg, "bench")) {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for the NATS cluster: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("connect to NATS: {e}"),
        }
    };

    println!(
        "cluster mode, 3 nats-server nodes (R3), every pack loaded; {events} events per partition in batches of {BATCH}"
    );
    let batches = batches(&work, events);
    let bytes: usize = batches.iter().map(Vec::len).sum();
    let t = Instant::now();
    runtime.block_on(publish(&client, "a", &batches));
    runtime.block_on(publish(&client, "b", &batches));
    println!(
        "published 2 x {:.0} MiB to the events stream in {:.1} s",
        bytes as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );
    // The peer: a plain parse of the same batches on one core.
    let cpu = measure::cpu_time();
    let mut items = 0usize;
    for b in &batches {
        let v: serde_json::Value = serde_json::from_slice(b).expect("json");
        items += v["items"].as_array().map_or(0, Vec::len);
    }
    let parse_rate = items as f64 / (measure::cpu_time() - cpu);
    println!("peer: plain parse (serde_json to Value), per CPU second: {parse_rate:.0} events/s");

    if only != "latency" {
        for size in [100usize, 16 << 10] {
            let (wall, cpu) = runtime.block_on(write_cost(&client, &nats, size));
            println!(
                "one replicated write ({size} B to the alerts stream, R3, acknowledged; 500 one after another): {wall:.2} ms, {cpu:.2} ms of the NATS servers' CPU"
            );
        }
    }
    if only != "latency" {
        let (rate, own, theirs) = runtime.block_on(read_floor(&client, &nats, "a"));
        let per_event = bytes as f64 / (events as f64);
        println!(
            "reading one partition alone (ordered consumer, inflated, not evaluated): {:.0} events/s; cores: {own:.2} this process, {theirs:.2} the NATS servers",
            rate / per_event
        );
        // One worker and two alternate, `--rounds` times: the VM's speed drifts by a fifth
        // between runs a minute apart, so the ratio is of the medians, with every run shown.
        let (mut ones, mut twos, mut rss_one, mut rss_two) = (Vec::new(), Vec::new(), 0, 0);
        for round in 1..=rounds {
            println!("round {round} of {rounds}");
            let (one, rss) = scale_run(&root, &work, &nats, &["a"], events, &runtime, &client);
            println!(
                "  one worker, one partition: {one:.0} events/s ({:.2}x the plain parse)",
                one / parse_rate
            );
            let (two, rss2) =
                scale_run(&root, &work, &nats, &["a", "b"], events, &runtime, &client);
            println!(
                "  two workers, two partitions: {two:.0} events/s aggregate ({:.2}x this round's one worker)",
                two / one
            );
            ones.push(one);
            twos.push(two);
            (rss_one, rss_two) = (rss_one.max(rss), rss_two.max(rss2));
        }
        let (one, two) = (median(&mut ones), median(&mut twos));
        let ratio = two / one;
        println!(
            "one worker: median {one:.0} events/s (worker RSS {} MiB at most); two workers: median {two:.0} events/s aggregate, {ratio:.2}x (target >= 1.6x: {}; worker RSS {} MiB each at most)",
            rss_one / 1024,
            met(ratio >= 1.6),
            rss_two / 1024
        );
    }
    if only != "scale" {
        let (lat, failed, rss) = latency_run(&root, &work, &nats, rate, seconds);
        let (p50, p99, max) = (
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN),
        );
        println!(
            "latency, webhook POST -> alert delivered by the worker (stored in the alerts stream, claimed in the ledger, POSTed to a webhook), {rate} events/s for {seconds} s: {} batches, p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms (target p99 <= 100 ms: {}); refused or lost {failed}; RSS receiver {} MiB, worker {} MiB",
            lat.len(),
            met(p99 <= 100.0 && failed == 0),
            rss[0] / 1024,
            rss[1] / 1024
        );
    }
    let nats_rss: Vec<u64> = nats
        .nodes
        .iter()
        .map(|n| rss_kib(n.0.id()) / 1024)
        .collect();
    let nats_disk: Vec<u64> = nats.dirs.iter().map(|d| du_bytes(d) >> 20).collect();
    println!(
        "NATS footprint after the runs: RSS {:?} MiB, JetStream disk {:?} MiB per server (the batches: {:.0} MiB of JSON, zstd-compressed when published)",
        nats_rss,
        nats_disk,
        (bytes * 2) as f64 / (1 << 20) as f64
    );
    drop(nats);
    let _ = std::fs::remove_dir_all(&work);
}
