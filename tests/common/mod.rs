//! Helpers shared by the end-to-end tests: scratch dirs, free loopback ports, the daemon
//! process, bare HTTP GETs, Prometheus samples, audit events, test PKI, child servers, an HTTP
//! receiver for notifications.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// Generous: the tests must pass on a slow, busy machine.
pub const PATIENCE: Duration = Duration::from_secs(90);

pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("aw-daemon-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Kept when the test failed, for its logs.
        if std::thread::panicking() {
            eprintln!("kept {} for inspection", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `dir/auditwatch.yaml`: state in `state/`, the rules of `rules.yaml`, metrics and the
/// API on 127.0.0.1:`metrics`, then `rest` (sources, alerts and whatever the test needs).
pub fn daemon_config(dir: &Path, metrics: u16, rest: &str) -> PathBuf {
    let config = dir.join("auditwatch.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: state\nrules: [rules.yaml]\nhttp: {{ listen: \"127.0.0.1:{metrics}\" }}\n{rest}"
        ),
    )
    .unwrap();
    config
}

/// Runs the auditwatch binary (in `dir`, if given): (exit code, stdout, stderr).
pub fn cli(dir: Option<&Path>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_auditwatch"));
    cmd.args(args);
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    let out = cmd.output().expect("run auditwatch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `auditwatch run`; killed (SIGKILL) on drop.
pub struct Daemon {
    pub child: Child,
    pub metrics: u16,
}

impl Daemon {
    pub fn start(dir: &Path, config: &Path, metrics: u16, run: usize) -> Daemon {
        Daemon::start_under(&[], &[], dir, config, metrics, run)
    }

    /// Starts it under a wrapper command (`prlimit --nofile=...`), with extra arguments to
    /// `auditwatch run`.
    pub fn start_under(
        wrapper: &[&str],
        extra: &[&str],
        dir: &Path,
        config: &Path,
        metrics: u16,
        run: usize,
    ) -> Daemon {
        let stdout = std::fs::File::create(dir.join(format!("stdout-{run}.jsonl"))).unwrap();
        let stderr = std::fs::File::create(dir.join(format!("stderr-{run}.log"))).unwrap();
        let binary = env!("CARGO_BIN_EXE_auditwatch");
        let mut command = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let child = command
            .args(["run", "--config"])
            .arg(config)
            .args(extra)
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start auditwatch run");
        let mut d = Daemon { child, metrics };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = d.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(dir.join(format!("stderr-{run}.log")))
                    .unwrap_or_default();
                panic!("auditwatch exited early ({status}):\n{log}");
            }
            if http_get(metrics, "/readyz").is_some_and(|(code, _)| code == 200) {
                return d;
            }
            assert!(Instant::now() < deadline, "auditwatch never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn metrics(&self) -> String {
        http_get(self.metrics, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bare HTTP/1.1 GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|x| x.1.to_owned())?;
    Some((code, body))
}

/// The value of one sample in Prometheus text output (0 if absent).
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

pub fn now_rfc3339(offset_ms: i64) -> String {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + offset_ms;
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}000Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

pub fn event(id: &str, verb: &str, user: &str, resource: &str, name: &str, code: u16) -> String {
    let ts = now_rfc3339(0);
    format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{id}","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/prod/{resource}/{name}","verb":"{verb}","user":{{"username":"{user}","groups":["system:authenticated"]}},"sourceIPs":["10.1.2.3"],"userAgent":"kubectl/v1.31.0","objectRef":{{"resource":"{resource}","namespace":"prod","name":"{name}","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":{code}}},"requestReceivedTimestamp":"{ts}","stageTimestamp":"{ts}"}}"#
    )
}

pub fn event_list(events: &[String]) -> String {
    format!(
        r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{{}},"items":[{}]}}"#,
        events.join(",")
    )
}

/// A test CA with a serving certificate (localhost, 127.0.0.1), a client certificate it
/// signed, and a client certificate from another CA.
pub struct Pki {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
    pub rogue_cert: String,
    pub rogue_key: String,
}

pub fn pki() -> Pki {
    fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
    }
    fn leaf(
        issuer: &CertifiedIssuer<'static, KeyPair>,
        names: &[&str],
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
    let good = ca("auditwatch");
    let other = ca("rogue");
    let (server_cert, server_key) = leaf(
        &good,
        &["localhost", "127.0.0.1"],
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = leaf(
        &good,
        &["kube-apiserver"],
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    );
    let (rogue_cert, rogue_key) = leaf(
        &other,
        &["kube-apiserver"],
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    );
    Pki {
        ca: good.pem(),
        server_cert,
        server_key,
        client_cert,
        client_key,
        rogue_cert,
        rogue_key,
    }
}

/// A binary the tests need from Debian packages (`.ci/run` installs them).
pub fn need(binary: &str) -> PathBuf {
    let p = PathBuf::from(binary);
    assert!(
        p.exists(),
        "{binary} is missing: apt-get install -y prometheus prometheus-alertmanager python3-aiosmtpd (or run .ci/run)"
    );
    p
}

/// A child process (a receiver, Prometheus) killed on drop.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn spawn_logged(dir: &Path, name: &str, cmd: &mut Command) -> Server {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let err = log.try_clone().unwrap();
    Server(
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}")),
    )
}

pub fn post(hook: u16, events: &[String]) {
    let client = reqwest::blocking::Client::new();
    let resp = client
        .post(format!("http://127.0.0.1:{hook}/"))
        .header("Content-Type", "application/json")
        .body(event_list(events))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

/// The repository root (tests read its shipped files: Dockerfile, deploy/, dashboards/).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A real Prometheus (Debian `prometheus`) on 127.0.0.1:`port`, scraping the auditwatch
/// metrics endpoint on `target` every second as job `auditwatch`; its data lives in `dir`.
pub fn prometheus(dir: &Path, port: u16, target: u16) -> Server {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s }}\nscrape_configs:\n  - job_name: auditwatch\n    static_configs: [ {{ targets: ['127.0.0.1:{target}'] }} ]\n"
        ),
    )
    .unwrap();
    spawn_logged(
        dir,
        "prometheus",
        Command::new(need("/usr/bin/prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}")),
    )
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: serde_json::Value,
}

/// An HTTP receiver on 127.0.0.1: records JSON POSTs, answers the first `fail_first` with 503.
pub struct Receiver {
    pub port: u16,
    pub got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub fn start(fail_first: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let seen = Arc::clone(&got);
        std::thread::spawn(move || {
            let mut served = 0usize;
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                let mut headers = BTreeMap::new();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        headers.insert(k.trim().to_lowercase(), v.trim().to_owned());
                    }
                }
                let len: usize = headers
                    .get("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                served += 1;
                let status = if served <= fail_first {
                    "503 Service Unavailable"
                } else {
                    seen.lock().unwrap().push(Received {
                        path,
                        headers,
                        body: serde_json::from_slice(&body).unwrap_or_default(),
                    });
                    "202 Accepted"
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Receiver { port, got }
    }

    pub fn at(&self, path: &str) -> Vec<Received> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}
