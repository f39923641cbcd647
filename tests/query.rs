//! `auditwatch query` through the binary: the user's example over real events, every output
//! format, the same counts as a brute-force count with serde_json, and errors that point at
//! the column of the query text.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn query(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
        .arg("query")
        .args(args)
        .output()
        .expect("run auditwatch query");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Counts by user of the events whose code and verb are as given, read with serde_json.
fn brute_force(path: &PathBuf, code: i64, verb: &str) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut counts = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["responseStatus"]["code"].as_i64() == Some(code) && v["verb"] == verb {
            *counts
                .entry(v["user"]["username"].as_str().unwrap_or("").to_owned())
                .or_default() += 1;
        }
    }
    counts
}

#[test]
fn the_users_example_gives_the_brute_force_counts_in_every_format() {
    let log = repo().join("tests/fixtures/audit2rbac-demo.log");
    let expected = brute_force(&log, 403, "list");
    assert!(!expected.is_empty());
    let file = log.to_str().unwrap();

    let (code, out, err) = query(&[
        "responsestatus_code=403 and verb=\"list\"",
        "--groupby",
        "username",
        "--format",
        "json",
        file,
    ]);
    assert_eq!(code, 0, "{err}");
    let got: BTreeMap<String, u64> = out
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["username"].as_str().unwrap().to_owned(),
                v["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    assert!(err.contains("37 events read"), "{err}");

    // The rule paths mean the same as the aliases; CSV and the table say the same.
    let (_, csv, _) = query(&[
        "responseStatus.code = 403 and verb = list",
        "--groupby",
        "user.username",
        "--format",
        "csv",
        file,
    ]);
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("user.username,count"));
    for (user, n) in &expected {
        assert!(csv.contains(&format!("{user},{n}")), "{csv}");
    }
    let (_, table, _) = query(&["code=403 and verb=list", "--groupby", "username", file]);
    assert!(table.starts_with("username"), "{table}");

    // The EventList form of the same events gives the same answer.
    let list = repo().join("tests/fixtures/audit2rbac-demo.eventlist.json");
    let (_, same, _) = query(&[
        "responsestatus_code=403 and verb=list",
        "--groupby",
        "username",
        "--format",
        "json",
        list.to_str().unwrap(),
    ]);
    assert_eq!(same, out);
}

#[test]
fn a_bad_query_points_at_its_column_and_exits_2() {
    let log = repo().join("tests/fixtures/audit2rbac-demo.log");
    let (code, out, err) = query(&["verb = list and (code > 400", log.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert!(err.contains("column 28: expected `)`"), "{err}");
    assert!(err.contains(&format!("\n{}^", " ".repeat(29))), "{err}");
    let (code, _, err) = query(&["verb = list", "--groupby", "nosuch", log.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("--groupby nosuch"), "{err}");
    let (code, _, err) = query(&["", "/nonexistent/audit.log"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/audit.log"), "{err}");
}
