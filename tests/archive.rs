//! The event archive through the binary: `replay --archive` leaves sealed Parquet segments
//! that DuckDB (its Python package, installed by .ci/run) reads with the same counts as
//! `auditwatch query` over the original log, and a segment left unsealed by an interrupted run
//! is removed (its events come again from the source), never read as data.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn auditwatch(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
        .args(args)
        .output()
        .expect("run auditwatch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
    let (code, _, err) = auditwatch(&[
        "replay",
        "--archive",
        dir.to_str().unwrap(),
        log.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("archive: 1 segments, 37 events"), "{err}");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["segment-00000000.parquet"]);

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
    let (code, _, err) = auditwatch(&[
        "replay",
        "--archive",
        dir.to_str().unwrap(),
        log.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
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
        ["segment-00000000.parquet", "segment-00000001.parquet"]
    );
    assert_eq!(
        duckdb(&dir, "SELECT count(*) AS n FROM archive")[0]["n"],
        74
    );
    std::fs::remove_dir_all(&dir).ok();
}
