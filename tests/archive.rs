//! The event archive through the binary: `replay --archive` leaves sealed Parquet segments
//! that DuckDB (its Python package, installed by .ci/run) reads with the same counts as
//! `auditwatch query` over the original log, a segment left unsealed by an interrupted run is
//! removed (its events come again from the source), never read as data, and `auditwatch
//! verify` detects each way of tampering with the sealed segments and their manifest.

use std::path::{Path, PathBuf};
use std::process::Command;

use common::repo;

fn auditwatch(args: &[&str]) -> (i32, String, String) {
    common::cli(None, args)
}

/// `replay --archive ARCHIVE LOG`, which must succeed; its stderr (the archive's summary).
fn archive_log(archive: &Path, log: &Path) -> String {
    let (code, _, err) = auditwatch(&[
        "replay",
        "--archive",
        archive.to_str().unwrap(),
        log.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    err
}

/// Runs one SQL query with DuckDB over `dir/*.parquet`; rows as JSON lines.
fn duckdb(dir: &Path, sql: &str) -> Vec<serde_json::Value> {
    let venv = repo().join(".ci/venv/bin/python");
    let python = if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    };
    let script = r#"
import duckdb, json, sys
con = duckdb.connect()
glob = (sys.argv[1] + "/*.parquet").replace("'", "''")
con.execute(f"CREATE VIEW archive AS SELECT * FROM read_parquet('{glob}')")
cur = con.execute(sys.argv[2])
names = [d[0] for d in cur.description]
for row in cur.fetchall():
    print(json.dumps(dict(zip(names, [str(v) if not isinstance(v, (int, float, str, type(None))) else v for v in row]))))
"#;
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(dir)
        .arg(sql)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "DuckDB (pip install duckdb, as .ci/run does): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn duckdb_reads_the_archive_with_the_counts_of_auditwatch_query() {
    let dir = std::env::temp_dir().join(format!("aw-archive-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let log = repo().join("tests/fixtures/audit2rbac-demo.log");
    let err = archive_log(&dir, &log);
    assert!(err.contains("archive: 1 segments, 37 events"), "{err}");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["manifest.jsonl", "segment-00000000.parquet"]);

    // The user's example, both ways.
    let (_, json, _) = auditwatch(&[
        "query",
        "responsestatus_code=403 and verb=list",
        "--groupby",
        "username",
        "--format",
        "json",
        log.to_str().unwrap(),
    ]);
    let ours: Vec<(String, u64)> = json
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["username"].as_str().unwrap().into(),
                v["count"].as_u64().unwrap(),
            )
        })
        .collect();
    let theirs: Vec<(String, u64)> = duckdb(
        &dir,
        r#"SELECT "user.username" AS u, count(*) AS n FROM archive
           WHERE "responseStatus.code" = 403 AND verb = 'list' GROUP BY 1 ORDER BY 2 DESC, 1"#,
    )
    .iter()
    .map(|v| (v["u"].as_str().unwrap().into(), v["n"].as_u64().unwrap()))
    .collect();
    assert_eq!(ours, theirs);

    // Every event, typed columns and raw JSON kept as written.
    let all = duckdb(
        &dir,
        r#"SELECT count(*) AS n, count(DISTINCT "auditID") AS ids, min(time) AS first,
                  count("impersonatedUser.username") AS impersonated,
                  sum(CASE WHEN "requestObject" IS NOT NULL THEN 1 ELSE 0 END) AS objects
           FROM archive"#,
    );
    assert_eq!(all[0]["n"], 37);
    assert_eq!(all[0]["ids"], 37);
    assert!(
        all[0]["first"]
            .as_str()
            .unwrap()
            .starts_with("2017-09-11 19:55:05"),
        "{all:?}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let impersonated = text
        .lines()
        .filter(|l| l.contains("\"impersonatedUser\""))
        .count();
    let objects = text
        .lines()
        .filter(|l| l.contains("\"requestObject\""))
        .count();
    assert_eq!(all[0]["impersonated"], impersonated as u64);
    assert_eq!(all[0]["objects"], objects as u64);

    // A segment an interrupted run left unsealed is removed; sealed ones stay, and new
    // segments continue their numbering.
    std::fs::write(dir.join("segment-00000001.parquet.partial"), b"PAR1 torn").unwrap();
    let err = archive_log(&dir, &log);
    assert!(
        err.contains("segment-00000001.parquet.partial: an unsealed segment"),
        "{err}"
    );
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "manifest.jsonl",
            "segment-00000000.parquet",
            "segment-00000001.parquet"
        ]
    );
    let (code, out, _) = auditwatch(&["verify", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        duckdb(&dir, "SELECT count(*) AS n FROM archive")[0]["n"],
        74
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// An archive of three different segments; its chain head.
fn three_segments(dir: &Path) -> String {
    let _ = std::fs::remove_dir_all(dir);
    let mut head = String::new();
    for fixture in [
        "audit2rbac-demo.log",
        "falco-exec_pod.json",
        "audit2rbac-demo.eventlist.json",
    ] {
        let (code, _, err) = auditwatch(&[
            "replay",
            "--archive",
            dir.to_str().unwrap(),
            repo()
                .join("tests/fixtures")
                .join(fixture)
                .to_str()
                .unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        head = err.rsplit("head ").next().unwrap().trim().to_owned();
    }
    head
}

fn verify(dir: &Path, head: Option<&str>) -> (i32, String) {
    let mut args = vec!["verify", dir.to_str().unwrap()];
    if let Some(h) = head {
        args.extend(["--expect-head", h]);
    }
    let (code, out, err) = auditwatch(&args);
    (code, out + &err)
}

fn segment(dir: &Path, seq: u32) -> PathBuf {
    dir.join(format!("segment-{seq:08}.parquet"))
}

/// One test per attack: each leaves `verify` exit 1 naming the first broken link and why.
#[test]
fn verify_names_the_first_broken_link_of_every_attack() {
    let base = std::env::temp_dir().join(format!("aw-verify-{}", std::process::id()));
    let head = three_segments(&base);
    let (code, out) = verify(&base, Some(&head));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact: 3 segments"), "{out}");

    type Attack = fn(&Path);
    let attacks: [(&str, Attack, &str, &str); 7] = [
        (
            "an edited record",
            |d| {
                let p = segment(d, 1);
                let mut bytes = std::fs::read(&p).unwrap();
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x20;
                std::fs::write(&p, bytes).unwrap();
            },
            "segment-00000001.parquet",
            "SHA-256 is not the manifest's",
        ),
        (
            "a deleted segment",
            |d| std::fs::remove_file(segment(d, 1)).unwrap(),
            "segment-00000001.parquet",
            "missing: deleted",
        ),
        (
            "reordered segments",
            |d| {
                std::fs::rename(segment(d, 0), d.join("tmp")).unwrap();
                std::fs::rename(segment(d, 1), segment(d, 0)).unwrap();
                std::fs::rename(d.join("tmp"), segment(d, 1)).unwrap();
            },
            "segment-00000000.parquet",
            "bytes, the manifest says",
        ),
        (
            "a truncated file",
            |d| {
                let p = segment(d, 2);
                let len = std::fs::metadata(&p).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_len(len - 100)
                    .unwrap();
            },
            "segment-00000002.parquet",
            "truncated",
        ),
        (
            "an inserted segment",
            |d| {
                std::fs::copy(segment(d, 0), segment(d, 3)).unwrap();
            },
            "segment-00000003.parquet",
            "does not list: inserted",
        ),
        (
            "an edited manifest entry",
            |d| {
                let p = d.join("manifest.jsonl");
                let text = std::fs::read_to_string(&p).unwrap();
                std::fs::write(&p, text.replacen("\"events\":37", "\"events\":36", 1)).unwrap();
            },
            "manifest.jsonl line 1",
            "the entry was edited",
        ),
        (
            "a manifest rolled back (with its last segment)",
            |d| {
                let p = d.join("manifest.jsonl");
                let text = std::fs::read_to_string(&p).unwrap();
                let kept: Vec<&str> = text.lines().take(2).collect();
                std::fs::write(&p, kept.join("\n") + "\n").unwrap();
                std::fs::remove_file(segment(d, 2)).unwrap();
            },
            "manifest.jsonl",
            "rolled back or rewritten",
        ),
    ];
    for (name, attack, at, why) in attacks {
        let dir = base.with_extension("attacked");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(&base).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
        attack(&dir);
        let (code, out) = verify(&dir, Some(&head));
        assert_eq!(code, 1, "{name}: {out}");
        assert!(out.contains(&format!("tampered: {at}")), "{name}: {out}");
        assert!(out.contains(why), "{name}: {out}");
        std::fs::remove_dir_all(&dir).ok();
    }
    // Without a published head, a rollback that removes whole segments and their lines
    // leaves a consistent chain: that is what anchoring is for (docs/evidence.md).
    let (code, out) = verify(&base.join("nonexistent"), None);
    assert_eq!(code, 2, "{out}");
    std::fs::remove_dir_all(&base).ok();
}

/// Signed manifests: a chain re-signed under another key is tampering, an unsigned one is
/// refused when signatures are required, and rotating keys keeps old entries valid.
#[test]
fn signatures_catch_a_chain_re_signed_under_another_key() {
    let base = std::env::temp_dir().join(format!("aw-sign-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let keygen = |name: &str| {
        let (code, out, err) = auditwatch(&["keygen", "--out", base.join(name).to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        out.trim().to_owned()
    };
    let (a, b) = (keygen("a.key"), keygen("b.key"));
    let (code, _, err) = auditwatch(&["keygen", "--out", base.join("a.key").to_str().unwrap()]);
    assert_ne!(code, 0, "keygen must not overwrite a key");
    assert!(err.contains("a.key"), "{err}");
    let trust = |name: &str, lines: &[&str]| {
        let p = base.join(name);
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        p.to_str().unwrap().to_owned()
    };
    let only_a = trust("trusted-a", &[&a]);
    let both = trust("trusted-ab", &[&a, &b]);
    let archive = |dir: &str, keys: &[&str]| {
        let dir = base.join(dir);
        for (fixture, key) in [
            "audit2rbac-demo.log",
            "falco-exec_pod.json",
            "audit2rbac-demo.eventlist.json",
        ]
        .iter()
        .zip(keys)
        {
            let mut args = vec!["replay", "--archive", dir.to_str().unwrap()];
            let key_path = base.join(key);
            if !key.is_empty() {
                args.extend(["--sign-key", key_path.to_str().unwrap()]);
            }
            let fixture = repo().join("tests/fixtures").join(fixture);
            args.push(fixture.to_str().unwrap());
            let (code, _, err) = auditwatch(&args);
            assert_eq!(code, 0, "{err}");
        }
        dir
    };
    let verify_with = |dir: &Path, trusted: &str| {
        let (code, out, err) =
            auditwatch(&["verify", dir.to_str().unwrap(), "--trusted-keys", trusted]);
        (code, out + &err)
    };

    let signed = archive("signed", &["a.key", "a.key", "a.key"]);
    let (code, out) = verify_with(&signed, &only_a);
    assert_eq!(code, 0, "{out}");

    let b_id = b.split(' ').next().unwrap();
    let resigned = archive("resigned", &["b.key", "b.key", "b.key"]);
    let (code, out) = verify_with(&resigned, &only_a);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("manifest.jsonl line 1 (segment-00000000.parquet): signed by key {b_id}, which is not a trusted key")),
        "{out}"
    );

    let unsigned = archive("unsigned", &["", "", ""]);
    let (code, out) = verify_with(&unsigned, &only_a);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not signed"), "{out}");

    // A forged signature (another entry's) does not verify.
    let forged = base.join("forged");
    std::fs::create_dir_all(&forged).unwrap();
    for entry in std::fs::read_dir(&signed).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), forged.join(entry.file_name())).unwrap();
    }
    let manifest = std::fs::read_to_string(forged.join("manifest.jsonl")).unwrap();
    let sigs: Vec<String> = manifest
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["sig"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    std::fs::write(
        forged.join("manifest.jsonl"),
        manifest.replacen(&sigs[1], &sigs[0], 1),
    )
    .unwrap();
    let (code, out) = verify_with(&forged, &only_a);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("line 2") && out.contains("does not verify"),
        "{out}"
    );

    // Rotation: the third segment signed by the new key.
    let rotated = archive("rotated", &["a.key", "a.key", "b.key"]);
    assert_eq!(verify_with(&rotated, &both).0, 0);
    let (code, out) = verify_with(&rotated, &only_a);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("line 3"), "{out}");
    std::fs::remove_dir_all(&base).ok();
}

/// `auditwatch query` with the same arguments over the log and over its archive.
fn query_both(log: &Path, archive: &Path, args: &[&str]) -> (String, String) {
    let run = |input: &Path| {
        let mut all: Vec<&str> = vec!["query"];
        all.extend(args);
        all.extend(["--format", "json"]);
        all.push(input.to_str().unwrap());
        let (code, out, err) = auditwatch(&all);
        assert_eq!(code, 0, "{args:?} over {}: {err}", input.display());
        out
    };
    (run(log), run(archive))
}

#[test]
fn query_means_the_same_over_the_archive_as_over_the_log() {
    let dir = std::env::temp_dir().join(format!("aw-archive-query-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let log = repo().join("tests/fixtures/audit2rbac-demo.log");
    archive_log(&dir, &log);
    let cases: &[&[&str]] = &[
        &[
            "responsestatus_code=403 and verb=list",
            "--groupby",
            "username",
        ],
        &["", "--groupby", "verb,resource"],
        &[
            "verb in (get, list) and not namespace = kube-system",
            "--groupby",
            "username",
            "--agg",
            "distinct(resource)",
        ],
        &["username = 'system:*' or code >= 400", "--groupby", "code"],
        &["resource != ''", "--groupby", "user.groups", "--top", "3"],
        &["", "--groupby", "username", "--agg", "first"],
        &["", "--groupby", "username", "--agg", "last"],
        &["", "--every", "1m"],
        &[
            "",
            "--from",
            "2017-09-11T19:55:10Z",
            "--to",
            "2017-09-11T19:56:00Z",
            "--groupby",
            "verb",
        ],
        &[
            "sourceIPs = '::1' and namespace != ''",
            "--groupby",
            "objectRef.namespace",
        ],
    ];
    for args in cases {
        let (from_log, from_archive) = query_both(&log, &dir, args);
        assert!(!from_log.is_empty(), "{args:?} found nothing");
        assert_eq!(from_log, from_archive, "{args:?}");
    }

    // A field the archive keeps only inside raw JSON: a clear error, exit 2.
    let (code, _, err) = auditwatch(&[
        "query",
        "requestObject.spec.replicas > 3",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("requestObject.spec.replicas: not an archive column"),
        "{err}"
    );

    // A corrupt segment and a foreign file: named, skipped; the rest is still counted.
    let good = duckdb(&dir, "SELECT count(*) AS n FROM archive")[0]["n"]
        .as_u64()
        .unwrap();
    std::fs::write(dir.join("segment-00000007.parquet"), b"PAR1 not really").unwrap();
    std::fs::write(dir.join("notes.txt"), b"hello").unwrap();
    let (code, out, err) = auditwatch(&["query", "", "--format", "json", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("segment-00000007.parquet: not a readable Parquet segment"),
        "{err}"
    );
    assert!(err.contains("notes.txt: not an archive segment"), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["count"].as_u64(), Some(good));
    // verify calls both tampering.
    let (code, out) = verify(&dir, None);
    assert_eq!(code, 1, "{out}");
    std::fs::remove_file(dir.join("segment-00000007.parquet")).unwrap();
    let (code, out) = verify(&dir, None);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("notes.txt") && out.contains("foreign"),
        "{out}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[path = "common/mod.rs"]
mod common;

/// The issue's "done when": a daemon fed the example events leaves an archive that `verify`
/// accepts and that `query` and DuckDB read with the same counts as the events sent.
#[test]
fn a_daemon_leaves_an_archive_that_verify_query_and_duckdb_agree_on() {
    let dir = common::Scratch::new("archive");
    let (hook, metrics) = (common::free_port(), common::free_port());
    // The manifest signed with a key of its own (the path relative to the config file).
    let key = dir.0.join("archive.key");
    let (code, trusted_line, err) = auditwatch(&["keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let trusted = dir.0.join("trusted-keys");
    std::fs::write(&trusted, &trusted_line).unwrap();
    let config = dir.0.join("auditwatch.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
state_dir: state
alerts: {{ stdout: json }}
http: {{ listen: "127.0.0.1:{metrics}" }}
archive: {{ sign_key: archive.key }}
sources: [ {{ webhook: {{ listen: "127.0.0.1:{hook}" }} }} ]
"#
        ),
    )
    .unwrap();
    let daemon = common::Daemon::start(&dir.0, &config, metrics, 0);
    // Every Falco trace event and the audit2rbac demo log, in batches as an apiserver sends.
    let mut events: Vec<String> = Vec::new();
    let traces = repo().join("../shared/corpus/falco/trace_files/k8s_audit");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&traces)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for path in names {
        for line in std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            events.push(line.to_owned());
        }
    }
    let demo = std::fs::read_to_string(repo().join("tests/fixtures/audit2rbac-demo.log")).unwrap();
    events.extend(demo.lines().map(str::to_owned));
    for chunk in events.chunks(10) {
        common::post(hook, chunk);
    }
    // What counts as an event (a Falco trace holds a record that is not one): the same
    // events, read from a file by `auditwatch query`.
    let sent_log = dir.0.join("sent.log");
    std::fs::write(&sent_log, events.join("\n")).unwrap();
    let (_, out, _) = auditwatch(&["query", "", "--format", "json", sent_log.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let sent = v["count"].as_u64().unwrap();
    assert!(sent > 70, "{sent}");
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while common::sample(&daemon.metrics(), "auditwatch_archive_events_total") < sent as f64 {
        assert!(
            std::time::Instant::now() < deadline,
            "the archive never got every event"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        common::sample(&daemon.metrics(), "auditwatch_archive_up"),
        1.0
    );
    assert_eq!(daemon.terminate().code(), Some(0));
    let archive = dir.0.join("state/archive");
    let (code, out) = verify(&archive, None);
    assert_eq!(code, 0, "{out}");
    let (code, out, err) = auditwatch(&[
        "verify",
        archive.to_str().unwrap(),
        "--trusted-keys",
        trusted.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "signed by the daemon's key: {out}{err}");
    // The head the daemon logged (the anchor) is the chain's.
    let log = std::fs::read_to_string(dir.0.join("stderr-0.log")).unwrap();
    let head = log
        .lines()
        .rev()
        .find_map(|l| l.split("head=\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .expect("a logged head");
    let (code, out) = verify(&archive, Some(head));
    assert_eq!(code, 0, "{out}");

    let (code, out, err) =
        auditwatch(&["query", "", "--format", "json", archive.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["count"].as_u64(), Some(sent));
    assert_eq!(
        duckdb(&archive, "SELECT count(*) AS n FROM archive")[0]["n"].as_u64(),
        Some(sent)
    );
    let (code, out, err) = auditwatch(&[
        "query",
        "",
        "--groupby",
        "verb",
        "--format",
        "json",
        archive.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let ours: Vec<(String, u64)> = out
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["verb"].as_str().unwrap().to_owned(),
                v["count"].as_u64().unwrap(),
            )
        })
        .collect();
    let theirs: Vec<(String, u64)> = duckdb(
        &archive,
        "SELECT coalesce(verb, '') AS v, count(*) AS n FROM archive GROUP BY 1 ORDER BY 2 DESC, 1",
    )
    .iter()
    .map(|v| {
        (
            v["v"].as_str().unwrap().to_owned(),
            v["n"].as_u64().unwrap(),
        )
    })
    .collect();
    assert_eq!(ours, theirs);

    // The state dir as a whole: the archive and the alert journal's chain; the alert chain's
    // head the daemon logged at shutdown is the chain's.
    let state = dir.0.join("state");
    let alerts_head = log
        .lines()
        .rev()
        .find(|l| l.contains("alert journal chain head"))
        .and_then(|l| l.split("head=").nth(1))
        .map(|h| h.trim().trim_matches('"').to_owned())
        .expect("a logged alert chain head");
    let (code, out, err) = auditwatch(&[
        "verify",
        state.to_str().unwrap(),
        "--expect-alerts-head",
        &alerts_head,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("archive: intact"), "{out}");
    assert!(out.contains("alert journal: intact"), "{out}");
    let journal = state.join("alerts.jsonl");
    let text = std::fs::read_to_string(&journal).unwrap();
    assert!(text.lines().count() >= 2, "{text}");
    // An alert's severity lowered after the fact: named by record.
    let edited = text.replacen("\"severity\":\"", "\"severity\":\"x", 2);
    let second = edited.lines().nth(1).unwrap().to_owned();
    let fixed = text.lines().next().unwrap().to_owned()
        + "\n"
        + &second
        + "\n"
        + &text
            .lines()
            .skip(2)
            .map(|l| format!("{l}\n"))
            .collect::<String>();
    std::fs::write(&journal, fixed).unwrap();
    let (code, out, _) = auditwatch(&["verify", state.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("alert journal: tampered: alerts.jsonl record 2 (line 2)"),
        "{out}"
    );
}

/// `replay` reads an archive directory as it reads the log it came from: the same alerts.
#[test]
fn replay_over_the_archive_gives_the_alerts_of_the_log() {
    let dir = common::Scratch::new("archive-replay");
    let archive = dir.0.join("archive");
    let mut log = String::new();
    let traces = repo().join("../shared/corpus/falco/trace_files/k8s_audit");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&traces)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for path in names {
        log.push_str(&std::fs::read_to_string(&path).unwrap());
        if !log.ends_with('\n') {
            log.push('\n');
        }
    }
    log.push_str(
        &std::fs::read_to_string(repo().join("tests/fixtures/audit2rbac-demo.log")).unwrap(),
    );
    let log_path = dir.0.join("all.log");
    std::fs::write(&log_path, &log).unwrap();
    let alert_ids = |out: &str| {
        let mut ids: Vec<(String, String)> = out
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["rule"].as_str().unwrap().to_owned(),
                    v["id"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        ids.sort();
        ids
    };
    let (code, from_log, err) = auditwatch(&[
        "replay",
        "--format",
        "json",
        "--archive",
        archive.to_str().unwrap(),
        log_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, from_archive, err) =
        auditwatch(&["replay", "--format", "json", archive.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (ours, theirs) = (alert_ids(&from_log), alert_ids(&from_archive));
    assert!(ours.len() >= 10, "{ours:?}");
    assert_eq!(ours, theirs);
    // A segment too.
    let first = archive.join("segment-00000000.parquet");
    let (code, _, err) = auditwatch(&["replay", "--format", "json", first.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    // Archiving into the directory being replayed is refused.
    let (code, _, err) = auditwatch(&[
        "replay",
        "--archive",
        archive.to_str().unwrap(),
        archive.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
}

/// A file source pointed at an archive directory reads each sealed segment as the events it
/// holds, then the segments sealed later, and resumes after a restart without reading any
/// event twice.
#[test]
fn a_file_source_follows_an_archive_directory() {
    let dir = common::Scratch::new("archive-follow");
    let upstream = dir.0.join("upstream");
    let demo = repo().join("tests/fixtures/audit2rbac-demo.log");
    archive_log(&upstream, &demo);
    std::fs::write(
        dir.0.join("rules.yaml"),
        "rules:\n  - name: pods-forbidden\n    severity: high\n    match: { verbs: [list], resources: [pods], response_codes: [403] }\n    window: { over: 10m, threshold: 3, group_by: [user.username] }\n",
    )
    .unwrap();
    let metrics = common::free_port();
    let config = common::daemon_config(
        &dir.0,
        metrics,
        r#"
alerts: { stdout: json }
sources:
  - file: { name: upstream, path: upstream, start_at: beginning, poll_interval: 50ms }
"#,
    );
    let decoded = |d: &common::Daemon| {
        common::sample(
            &d.metrics(),
            "auditwatch_events_decoded_total{source=\"upstream\"}",
        )
    };
    let daemon = common::Daemon::start(&dir.0, &config, metrics, 0);
    common::wait_until("the first segment's 37 events", || decoded(&daemon) >= 37.0);
    common::wait_until("the alert", || {
        std::fs::read_to_string(dir.0.join("state/alerts.jsonl"))
            .is_ok_and(|t| t.contains("pods-forbidden"))
    });
    // A segment sealed later is read too.
    archive_log(&upstream, &demo);
    common::wait_until("the second segment", || decoded(&daemon) >= 74.0);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(decoded(&daemon), 74.0);
    assert_eq!(daemon.terminate().code(), Some(0));
    // A restart resumes after what was read.
    let daemon = common::Daemon::start(&dir.0, &config, metrics, 1);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(decoded(&daemon), 0.0);
    assert_eq!(daemon.terminate().code(), Some(0));
    // Everything it read, it archived in its own archive.
    let (code, out, err) = auditwatch(&[
        "query",
        "",
        "--format",
        "json",
        dir.0.join("state/archive").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["count"].as_u64(), Some(74));

    // Its own archive as a source is refused at start.
    std::fs::write(
        &config,
        format!(
            r#"
state_dir: state
rules: [rules.yaml]
http: {{ listen: "127.0.0.1:{metrics}" }}
sources: [ {{ file: {{ name: self, path: state/archive }} }} ]
"#
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditwatch"))
        .args(["run", "--config"])
        .arg(&config)
        .current_dir(&dir.0)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is this daemon's own archive"), "{err}");
}
