//! Cluster mode against real servers: a 3-node `nats-server` cluster (Debian's, JetStream on)
//! on loopback, 2 receivers and 2 workers of the real binary, and a real HTTP receiver for
//! the alerts. The worker holding the partition is killed with SIGKILL in the middle of the
//! stream, then one NATS node; the alerts in the alerts stream and those the receiver got
//! must be exactly a single-process `auditwatch replay` of the same events. Then everything
//! restarts, and nothing is sent again.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{
    Daemon, Receiver, Scratch, Server, cli, free_port, need, sample, spawn_logged, wait_until,
};

const RULES: &str = r#"
rules:
  - name: secret-read
    severity: high
    match:
      verbs: [get]
      resources: [secrets]
  - name: forbidden-burst
    severity: medium
    match:
      response_codes: [403]
    window: { over: 1m, threshold: 5, group_by: [user.username] }
"#;

/// Three nats-server processes routed to each other, JetStream in `dir/nats-<i>`.
struct NatsCluster {
    nodes: Vec<Option<Server>>,
    ports: Vec<u16>,
    dir: PathBuf,
    cluster_ports: Vec<u16>,
}

impl NatsCluster {
    fn start(dir: &Path) -> NatsCluster {
        need("/usr/sbin/nats-server");
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut c = NatsCluster {
            nodes: Vec::new(),
            ports,
            dir: dir.to_owned(),
            cluster_ports,
        };
        for i in 0..3 {
            let node = c.spawn(i);
            c.nodes.push(Some(node));
        }
        wait_until("a JetStream meta leader", || {
            (0..3).any(|i| {
                std::fs::read_to_string(dir.join(format!("nats-{i}.log")))
                    .unwrap_or_default()
                    .contains("metadata leader")
            })
        });
        c
    }

    fn spawn(&self, i: usize) -> Server {
        let routes: Vec<String> = self
            .cluster_ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        let store = self.dir.join(format!("nats-{i}"));
        std::fs::create_dir_all(&store).unwrap();
        let conf = self.dir.join(format!("nats-{i}.conf"));
        std::fs::write(
            &conf,
            format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{}\nmax_payload: 8MB\njetstream {{ store_dir: \"{}\", max_memory_store: 64MB, max_file_store: 1GB }}\ncluster {{ name: aw, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                self.ports[i],
                store.display(),
                self.cluster_ports[i],
                routes.join(", ")
            ),
        )
        .unwrap();
        spawn_logged(
            &self.dir,
            &format!("nats-{i}"),
            Command::new("/usr/sbin/nats-server").arg("-c").arg(&conf),
        )
    }

    fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("\"nats://127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn kill9(&mut self, i: usize) {
        self.nodes[i] = None;
    }

    fn restart(&mut self, i: usize) {
        self.nodes[i] = Some(self.spawn(i));
    }
}

/// One process of the cluster, in its own directory.
struct Member {
    dir: PathBuf,
    config: PathBuf,
    http: u16,
    hook: u16,
}

fn member(root: &Path, name: &str, role: &str, nats: &str, receiver: u16) -> Member {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
    let (http, hook) = (free_port(), free_port());
    let config = common::daemon_config(
        &dir,
        http,
        &format!(
            r#"alerts: {{ stdout: off }}
snapshot: {{ interval: 1s }}
sources:
  - webhook: {{ name: audit, listen: "127.0.0.1:{hook}" }}
receivers:
  - name: hook
    webhook_configs: [ {{ url: "http://127.0.0.1:{receiver}/alerts" }} ]
route: {{ receiver: hook, group_wait: 0s }}
cluster:
  nats: [{nats}]
  role: {role}
  name: prod
  partitions: [prod]
  member: {name}
  lease_ttl: 5s
"#
        ),
    );
    Member {
        dir,
        config,
        http,
        hook,
    }
}

fn start(m: &Member, run: usize) -> Daemon {
    Daemon::start(&m.dir, &m.config, m.http, run)
}

/// An audit event at `at` (RFC 3339).
fn event(i: usize, at: &str) -> String {
    let (verb, resource, user, code) = match i {
        i if i % 15 == 0 => ("get", "secrets", format!("reader{}", i % 4), 200),
        i if i % 4 == 1 => ("create", "pods", format!("mallory{}", i % 3), 403),
        _ => ("list", "configmaps", format!("dev{}", i % 5), 200),
    };
    format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"ev-{i}","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/prod/{resource}/o{i}","verb":"{verb}","user":{{"username":"{user}","groups":["system:authenticated"]}},"sourceIPs":["10.1.2.3"],"objectRef":{{"resource":"{resource}","namespace":"prod","name":"o{i}","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":{code}}},"requestReceivedTimestamp":"{at}","stageTimestamp":"{at}"}}"#
    )
}

/// Posts a batch the way the apiserver's webhook backend does: again after 429/503.
fn post(client: &reqwest::blocking::Client, hook: u16, events: &[String]) {
    let body = format!(
        r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{}]}}"#,
        events.join(",")
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = client
            .post(format!("http://127.0.0.1:{hook}/"))
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send()
            .map(|r| r.status().as_u16());
        match status {
            Ok(200) => return,
            Ok(429 | 503) | Err(_) => {}
            Ok(other) => panic!("receiver answered {other}"),
        }
        assert!(Instant::now() < deadline, "batch never accepted");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Alert IDs a single-process `auditwatch replay` of `events` (in `root`) fires, each once.
fn replayed_ids(root: &Path, rules: &str, events: &str) -> BTreeMap<String, usize> {
    let (code, out, err) = cli(
        Some(root),
        &["replay", "--rules", rules, "--format", "json", events],
    );
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["id"].as_str().unwrap().to_owned(), 1)
        })
        .collect()
}

/// Alert IDs the HTTP receiver got, with how often each came.
fn received_ids(receiver: &Receiver) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for r in receiver.at("/alerts") {
        for a in r.body["alerts"].as_array().into_iter().flatten() {
            let id = a["annotations"]["auditwatch_id"]
                .as_str()
                .unwrap()
                .to_owned();
            *ids.entry(id).or_default() += 1;
        }
    }
    ids
}

/// Runs `f` with a NATS connection of the test's own (as `NatsCluster::urls` lists them).
fn with_nats<T>(urls: &str, f: impl AsyncFnOnce(auditwatch::cluster::Nats) -> T) -> T {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let cfg = auditwatch::cluster::ClusterConfig {
            nats: urls
                .split(", ")
                .map(|u| u.trim_matches('"').to_owned())
                .collect(),
            ..Default::default()
        };
        let nats = auditwatch::cluster::Nats::connect(&cfg, "test")
            .await
            .unwrap();
        f(nats).await
    })
}

/// Alert IDs in the partition's alerts stream, with how often each is there.
fn journal_ids(nats_urls: &str) -> BTreeMap<String, usize> {
    with_nats(nats_urls, async |nats| {
        let alerts = auditwatch::cluster::alerts::AlertStream::new(&nats)
            .read_after("prod", 0)
            .await
            .unwrap();
        let mut ids = BTreeMap::new();
        for (_, a) in alerts {
            *ids.entry(a.id).or_default() += 1;
        }
        ids
    })
}

/// A NATS cluster and one member, receiver and worker, holding the partition. (Dropped in
/// reverse: the member, then NATS, then the scratch directory.)
fn alone(name: &str) -> (Scratch, NatsCluster, Receiver, Member, Daemon) {
    let scratch = Scratch::new(name);
    let nats = NatsCluster::start(&scratch.0);
    let receiver = Receiver::start(0);
    let m = member(&scratch.0, "m", "both", &nats.urls(), receiver.port);
    let daemon = start(&m, 1);
    wait_until("the partition taken", || held(&daemon));
    (scratch, nats, receiver, m, daemon)
}

fn held(d: &Daemon) -> bool {
    sample(
        &d.metrics(),
        "auditwatch_cluster_partition_held{partition=\"prod\"}",
    ) == 1.0
}

#[test]
fn a_killed_worker_and_a_killed_nats_node_lose_and_repeat_nothing() {
    let scratch = Scratch::new("cluster-failover");
    let root = &scratch.0;
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("{:>6.1}s {what}", t0.elapsed().as_secs_f64());
    let mut nats = NatsCluster::start(root);
    phase("nats up");
    let urls = nats.urls();
    let receiver = Receiver::start(0);
    let r1 = member(root, "r1", "receiver", &urls, receiver.port);
    let r2 = member(root, "r2", "receiver", &urls, receiver.port);
    let w1 = member(root, "w1", "worker", &urls, receiver.port);
    let w2 = member(root, "w2", "worker", &urls, receiver.port);
    let receivers = [start(&r1, 1), start(&r2, 1)];
    let worker1 = start(&w1, 1);
    wait_until("w1 to take the partition", || held(&worker1));
    let worker2 = start(&w2, 1);
    phase("receivers and workers up");

    // 600 events in 200 batches, event time 50 ms apart ending 20 s ago.
    let base = -50_000i64;
    let events: Vec<String> = (0..600)
        .map(|i| event(i, &common::now_rfc3339(base + i as i64 * 50)))
        .collect();
    std::fs::write(root.join("events.jsonl"), events.join("\n") + "\n").unwrap();
    let client = reqwest::blocking::Client::new();
    let hooks = [r1.hook, r2.hook];
    for (b, batch) in events.chunks(3).enumerate().take(80) {
        post(&client, hooks[b % 2], batch);
    }
    wait_until("w1 to store a snapshot", || {
        sample(
            &worker1.metrics(),
            "auditwatch_cluster_snapshots_total{partition=\"prod\",result=\"ok\"}",
        ) >= 1.0
    });
    phase("80 batches posted, snapshot stored");
    // The rest is posted while the holder dies (mid-stream: it is evaluating and sending),
    // and while a NATS node dies.
    let posted = Arc::new(AtomicUsize::new(80));
    let poster = {
        let (events, posted) = (events.clone(), Arc::clone(&posted));
        std::thread::spawn(move || {
            let client = reqwest::blocking::Client::new();
            for (b, batch) in events.chunks(3).enumerate().skip(80) {
                post(&client, hooks[b % 2], batch);
                posted.store(b + 1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    wait_until("w1 to evaluate 110 batches", || {
        sample(
            &worker1.metrics(),
            "auditwatch_cluster_evaluated_sequence{partition=\"prod\"}",
        ) >= 110.0
    });
    let killed = Instant::now();
    worker1.kill9();
    wait_until("w2 to take the partition over", || held(&worker2));
    let takeover = killed.elapsed();
    eprintln!("standby took over {takeover:?} after the kill");
    assert!(
        takeover <= Duration::from_secs(10),
        "the standby took {takeover:?} (lease TTL 5 s)"
    );
    wait_until("170 batches posted", || {
        posted.load(Ordering::Relaxed) >= 170
    });
    nats.kill9(2);
    phase("a NATS node killed");
    poster.join().unwrap();

    phase("all posted");
    let expected = replayed_ids(root, "w1/rules.yaml", "events.jsonl");
    assert!(
        expected.len() > 40,
        "the corpus fires alerts: {}",
        expected.len()
    );
    wait_until("every alert at the receiver", || {
        received_ids(&receiver).len() >= expected.len()
    });
    phase("every alert received");
    // Anything sent twice would arrive within this.
    std::thread::sleep(Duration::from_secs(3));
    let got = received_ids(&receiver);
    assert_eq!(
        got, expected,
        "the receiver got other alerts than a replay fires"
    );
    assert_eq!(journal_ids(&urls), expected, "the alerts stream differs");
    let took_over = std::fs::read_to_string(w2.dir.join("stderr-1.log")).unwrap();
    let resumed = took_over
        .lines()
        .find(|l| l.contains("partition state rebuilt"))
        .unwrap_or_default();
    eprintln!("{resumed}");
    assert!(
        resumed.contains("resumed=\"snapshot\""),
        "w2 resumed from w1's snapshot:\n{took_over}"
    );

    phase("compared");
    // Restart everything (the dead NATS node too): nothing is sent again.
    for d in receivers {
        assert!(d.terminate().success());
    }
    assert!(worker2.terminate().success());
    nats.restart(2);
    let before = receiver.got.lock().unwrap().len();
    let _receivers = [start(&r1, 2), start(&r2, 2)];
    let worker1 = start(&w1, 2);
    let _worker2 = start(&w2, 2);
    wait_until("a worker to hold the partition again", || {
        held(&worker1) || held(&_worker2)
    });
    let holder = if held(&worker1) { &worker1 } else { &_worker2 };
    wait_until("the holder to reach the end of the stream", || {
        sample(
            &holder.metrics(),
            "auditwatch_cluster_evaluated_sequence{partition=\"prod\"}",
        ) >= 200.0
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        receiver.got.lock().unwrap().len(),
        before,
        "a restart sent notifications again"
    );
    assert_eq!(journal_ids(&urls), expected, "a restart wrote alerts again");
}

#[test]
fn without_nats_the_receiver_is_not_ready_and_answers_503() {
    let scratch = Scratch::new("cluster-no-nats");
    let root = &scratch.0;
    // A port nobody listens on.
    let nowhere = format!("\"nats://127.0.0.1:{}\"", free_port());
    let r = member(root, "r", "receiver", &nowhere, free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
        .args(["run", "--config"])
        .arg(&r.config)
        .current_dir(&r.dir)
        .stderr(std::fs::File::create(r.dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let _kill = scopeguard(&mut child);
    wait_until("the clear error", || {
        std::fs::read_to_string(r.dir.join("stderr.log"))
            .unwrap_or_default()
            .contains("cannot reach NATS at nats://127.0.0.1")
    });
    let ready = common::http_get(r.http, "/readyz").map(|(code, _)| code);
    assert_eq!(ready, Some(503), "/readyz while NATS is unreachable");
    let client = reqwest::blocking::Client::new();
    let resp = client
        .post(format!("http://127.0.0.1:{}/", r.hook))
        .header("Content-Type", "application/json")
        .body(format!(
            r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{}]}}"#,
            event(1, &common::now_rfc3339(0))
        ))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
}

/// Kills the child when the test ends, however it ends.
fn scopeguard(child: &mut std::process::Child) -> impl Drop + '_ {
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    Kill(child)
}

/// A forbidden request by `user` at `at`.
fn forbidden(id: &str, user: &str, at: &str) -> String {
    format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{id}","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/prod/pods","verb":"create","user":{{"username":"{user}"}},"objectRef":{{"resource":"pods","namespace":"prod","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":403}},"requestReceivedTimestamp":"{at}","stageTimestamp":"{at}"}}"#
    )
}

/// Forbidden requests `f<i>` by mallory, 100 ms apart from `base_ms` (relative to now).
fn mallory(ids: std::ops::Range<i64>, base_ms: i64) -> Vec<String> {
    ids.map(|i| {
        let at = common::now_rfc3339(base_ms + i * 100);
        forbidden(&format!("f{i}"), "mallory", &at)
    })
    .collect()
}

#[test]
fn while_nats_is_away_receivers_answer_503_and_the_worker_keeps_its_windows() {
    let (_scratch, mut nats, receiver, m, daemon) = alone("cluster-nats-away");
    let client = reqwest::blocking::Client::new();
    // Three of the five forbidden requests the window needs, before NATS goes away.
    let first = mallory(0..3, -5_000);
    post(&client, m.hook, &first);
    wait_until("the batch evaluated", || {
        sample(
            &daemon.metrics(),
            "auditwatch_cluster_evaluated_sequence{partition=\"prod\"}",
        ) >= 1.0
    });
    for i in 0..3 {
        nats.kill9(i);
    }
    wait_until("/readyz to fail", || {
        common::http_get(m.http, "/readyz").is_some_and(|(code, _)| code == 503)
    });
    let refused = client
        .post(format!("http://127.0.0.1:{}/", m.hook))
        .header("Content-Type", "application/json")
        .body(format!(
            r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{}]}}"#,
            forbidden("f-refused", "mallory", &common::now_rfc3339(0))
        ))
        .send()
        .unwrap();
    assert_eq!(refused.status().as_u16(), 503);
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_eq!(
        sample(&daemon.metrics(), "auditwatch_cluster_nats_connected"),
        0.0
    );
    // Away for longer than the lease TTL (5 s).
    std::thread::sleep(Duration::from_secs(6));
    for i in 0..3 {
        nats.restart(i);
    }
    wait_until("/readyz again", || {
        common::http_get(m.http, "/readyz").is_some_and(|(code, _)| code == 200)
    });
    let rest = mallory(3..5, -4_000);
    post(&client, m.hook, &rest);
    wait_until("the burst alert", || !received_ids(&receiver).is_empty());
    std::thread::sleep(Duration::from_secs(2));
    let got = received_ids(&receiver);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got.values().all(|n| *n == 1), "{got:?}");
    let body = &receiver.at("/alerts")[0].body;
    assert_eq!(body["alerts"][0]["annotations"]["count"], "5", "{body}");
    // The worker kept the partition (and its windows) through the outage.
    let metrics = daemon.metrics();
    let takeovers: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("auditwatch_cluster_partition_takeovers_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(takeovers, 1.0, "{metrics}");
    assert!(held(&daemon));
}

#[test]
fn a_snapshot_this_version_cannot_read_is_rebuilt_from_the_stream() {
    let (_scratch, nats, receiver, m, daemon) = alone("cluster-bad-snapshot");
    let urls = nats.urls();
    let client = reqwest::blocking::Client::new();
    let events: Vec<String> = (0..60)
        .map(|i| event(i, &common::now_rfc3339(-20_000 + i as i64 * 100)))
        .collect();
    for batch in events.chunks(3) {
        post(&client, m.hook, batch);
    }
    wait_until("alerts", || received_ids(&receiver).len() >= 4);
    assert!(daemon.terminate().success());
    let delivered = received_ids(&receiver);
    // Another version's pointer.
    with_nats(&urls, async |n| {
        n.snapshot_pointers
            .put(
                "prod",
                br#"{"version":999,"layout":"from the future"}"#.to_vec().into(),
            )
            .await
            .unwrap();
    });
    let daemon = start(&m, 2);
    wait_until("the partition taken again", || held(&daemon));
    let log = std::fs::read_to_string(m.dir.join("stderr-2.log")).unwrap();
    assert!(
        log.contains("rebuilding by replaying the events stream from its oldest retained batch"),
        "{log}"
    );
    assert!(log.contains("resumed=\"rebuild\""), "{log}");
    wait_until("the rebuild to reach the end", || {
        sample(
            &daemon.metrics(),
            "auditwatch_cluster_evaluated_sequence{partition=\"prod\"}",
        ) >= 20.0
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        received_ids(&receiver),
        delivered,
        "the rebuild sent alerts again"
    );
    assert_eq!(
        journal_ids(&urls),
        delivered,
        "the rebuild wrote alerts twice"
    );
}

#[test]
fn what_a_rogue_publisher_puts_in_the_events_stream_is_rejected_and_the_partition_goes_on() {
    let (_scratch, nats, receiver, m, daemon) = alone("cluster-rogue");
    let urls = nats.urls();
    // Straight into the stream, past the receivers: a zstd bomb (a batch far larger than any
    // webhook accepts once decompressed), garbage claiming to be zstd, an unknown encoding,
    // and JSON that is no audit event.
    with_nats(&urls, async |n| {
        let bomb = zstd::bulk::compress(&vec![b' '; 64 << 20], 19).unwrap();
        let subject = auditwatch::cluster::events_subject("prod", "audit");
        for (encoding, body) in [
            (Some("zstd"), bomb),
            (Some("zstd"), b"not zstd at all".to_vec()),
            (Some("rot13"), b"{}".to_vec()),
            (
                None,
                br#"{"kind":"EventList","items":[{"no":"event"}]}"#.to_vec(),
            ),
        ] {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(auditwatch::cluster::SOURCE_HEADER, "audit");
            if let Some(e) = encoding {
                headers.insert(auditwatch::cluster::ENCODING_HEADER, e);
            }
            n.js.publish_with_headers(subject.clone(), headers, body.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
    // Then a real batch through a receiver: still evaluated and alerted on.
    let client = reqwest::blocking::Client::new();
    post(&client, m.hook, &[event(15, &common::now_rfc3339(0))]);
    wait_until("the alert after the rogue messages", || {
        received_ids(&receiver).len() == 1
    });
    let metrics = daemon.metrics();
    assert!(
        sample(
            &metrics,
            "auditwatch_events_rejected_total{source=\"audit\"}"
        ) >= 4.0,
        "{metrics}"
    );
    assert!(held(&daemon), "the partition is still held");
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(
        rss_kib < 512 * 1024,
        "the bomb was not inflated: RSS {rss_kib} KiB"
    );
}

#[test]
fn a_receivers_file_source_is_published_and_resumes_where_it_stopped() {
    let scratch = Scratch::new("cluster-file");
    let root = &scratch.0;
    let nats = NatsCluster::start(root);
    let receiver = Receiver::start(0);
    let m = member(root, "m", "both", &nats.urls(), receiver.port);
    // Beside the webhook, the apiserver's log file.
    let config = std::fs::read_to_string(&m.config).unwrap().replacen(
        "sources:\n",
        "sources:\n  - file: { name: auditlog, path: audit.log, poll_interval: 100ms, start_at: beginning }\n",
        1,
    );
    std::fs::write(&m.config, config).unwrap();
    let log = m.dir.join("audit.log");
    let events: Vec<String> = (0..60)
        .map(|i| event(i, &common::now_rfc3339(-30_000 + i as i64 * 100)))
        .collect();
    let append = |lines: &[String]| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
    };
    append(&events[..30]);
    let daemon = start(&m, 1);
    // Events 0 and 15 fire: the file's first (and only) batch is in the stream.
    wait_until("the first batch's alerts", || {
        received_ids(&receiver).len() >= 2
    });
    daemon.kill9();
    // As if it had been killed after publishing that batch and before recording it as done
    // (a window of a few milliseconds that a kill rarely hits): the record says the batch
    // from the start of the file is being published.
    with_nats(&nats.urls(), async |n| {
        use futures_util::StreamExt;
        let key = n
            .positions
            .keys()
            .await
            .unwrap()
            .next()
            .await
            .unwrap()
            .unwrap();
        let stored = n.positions.get(&key).await.unwrap().unwrap();
        let mut end: serde_json::Value = serde_json::from_slice(&stored).unwrap();
        end.as_object_mut().unwrap().remove("publishing");
        let mut begun = end.clone();
        begun["offset"] = 0.into();
        begun["line"] = 0.into();
        begun["publishing"] = end;
        n.positions
            .put(&key, serde_json::to_vec(&begun).unwrap().into())
            .await
            .unwrap();
    });
    // The file grows meanwhile. The restarted receiver publishes the begun batch again (the
    // same bytes under the same message ID, stored once) and goes on.
    append(&events[30..45]);
    let daemon = start(&m, 2);
    wait_until("event 30's alert", || received_ids(&receiver).len() >= 3);
    // Killed again, however far it got; the file grows; it resumes where it recorded.
    daemon.kill9();
    append(&events[45..]);
    let daemon = start(&m, 3);
    std::fs::write(root.join("all.jsonl"), events.join("\n") + "\n").unwrap();
    let expected = replayed_ids(root, "m/rules.yaml", "all.jsonl");
    assert!(expected.len() >= 4, "{expected:?}");
    wait_until("every alert", || {
        received_ids(&receiver).len() >= expected.len()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(received_ids(&receiver), expected);
    // Every line is in the events stream once: each restart resumed at the stored position.
    let lines = with_nats(&nats.urls(), async |n| {
        use async_nats::jetstream::consumer::{AckPolicy, pull};
        use futures_util::StreamExt;
        let consumer = n
            .events
            .create_consumer(pull::Config {
                filter_subject: auditwatch::cluster::events_subject("prod", "auditlog"),
                ack_policy: AckPolicy::None,
                ..Default::default()
            })
            .await
            .unwrap();
        let pending = consumer.cached_info().num_pending as usize;
        let mut messages = consumer.messages().await.unwrap();
        let mut lines = 0;
        for _ in 0..pending {
            let m = messages.next().await.unwrap().unwrap();
            let body = zstd::bulk::decompress(&m.payload, 1 << 24).unwrap();
            lines += body
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count();
        }
        lines
    });
    assert_eq!(lines, 60);
    drop(daemon);
}
