//! Engine cost per event below and far past `max_keys_per_rule`.
//!
//! `cargo bench --bench key_pressure [-- --bound N]` replays 403s in which every request comes
//! from another user, source address and object name (the attack of issue 16: each one is a
//! new group key for every windowed rule keyed on them), through an engine with every pack
//! loaded as users run it: the bundled packs, the Falco and Panther ports and the SigmaHQ
//! Kubernetes rules. It measures the CPU per event over events `N/2..N` (keys growing towards
//! the bound) and over events `9N..10N` (ten times as many keys seen as may be held: every new
//! key evicts one), next to a plain `serde_json::Value` parse of the same lines.
//!
//! Target: the cost at 10x the bound is within 2x of the cost below it. Before eviction was
//! amortised, one rule grouped by source address took 0.87 s at 100k keys and 12 s at 105k.

use std::path::PathBuf;
use std::sync::Arc;

use auditwatch::engine::{Engine, EngineOptions};
use auditwatch::event::decode_event;
use auditwatch::rules::{LoadOptions, load_paths};

/// The allocator the binary uses (see src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn line(i: u64) -> String {
    // 100 µs apart: ten times the bound stays well inside every window, so keys leave only by
    // eviction, never by expiry.
    let micros = 1_700_000_000_000_000u64 + i * 100;
    let (secs, frac) = (micros / 1_000_000, micros % 1_000_000);
    let ts = chrono::DateTime::from_timestamp(secs as i64, (frac * 1000) as u32)
        .expect("valid time")
        .format("%Y-%m-%dT%H:%M:%S%.6fZ");
    let (a, b, c) = ((i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
    format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{:08x}-0000-4000-8000-{:012x}","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/prod/secrets/s-{i}","verb":"get","user":{{"username":"user-{i}","groups":["system:authenticated"]}},"sourceIPs":["198.{a}.{b}.{c}"],"userAgent":"curl/8.5.0","objectRef":{{"resource":"secrets","namespace":"prod","name":"s-{i}","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"status":"Failure","reason":"Forbidden","code":403}},"requestReceivedTimestamp":"{ts}","stageTimestamp":"{ts}"}}"#,
        i as u32, i
    )
}

/// CPU time of this thread so far (Linux `/proc/thread-self/schedstat`).
fn cpu_time() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bound: u64 = args
        .iter()
        .position(|a| a == "--bound")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let packs = vec![
        repo.join("rules"),
        repo.join("peers/falco"),
        repo.join("peers/panther"),
        repo.join("../shared/corpus/sigma/rules"),
    ];
    let rules = load_paths(&packs, &LoadOptions::default()).expect("load every pack");
    let windowed = rules.rules.iter().filter(|r| r.window.is_some()).count();
    println!(
        "rules: {} ({} windowed) from rules/, peers/falco, peers/panther, SigmaHQ k8s; max_keys_per_rule = {bound}",
        rules.rules.len(),
        windowed
    );
    let lines: Vec<String> = (0..10 * bound).map(line).collect();

    let mut engine = Engine::new(
        Arc::new(rules),
        EngineOptions {
            max_keys_per_rule: bound as usize,
            ..EngineOptions::default()
        },
    );
    let mut out = Vec::new();
    let mut run = |range: std::ops::Range<u64>| {
        let started = cpu_time();
        for i in range.clone() {
            let ev = decode_event(&lines[i as usize]).expect("valid event");
            engine.process(&ev, &mut out);
            out.clear();
        }
        (cpu_time() - started) / (range.end - range.start) as f64
    };
    let _ = run(0..bound / 2);
    let below = run(bound / 2..bound);
    let _ = run(bound..9 * bound);
    let past = run(9 * bound..10 * bound);
    let evicted: u64 = engine.rule_stats().map(|(_, s)| s.evicted_keys).sum();

    let started = cpu_time();
    let mut objects = 0u64;
    for l in &lines[(9 * bound) as usize..] {
        let v: serde_json::Value = serde_json::from_str(l).expect("valid JSON");
        objects += u64::from(v.is_object());
    }
    let parse = (cpu_time() - started) / objects as f64;

    println!();
    println!("{:<58} {:>12}", "CPU per event", "µs");
    println!(
        "{:<58} {:>12.2}",
        "serde_json::Value parse of the same lines (peer)",
        parse * 1e6
    );
    println!(
        "{:<58} {:>12.2}",
        format!("engine, events {}..{bound} (below the bound)", bound / 2),
        below * 1e6
    );
    println!(
        "{:<58} {:>12.2}",
        format!(
            "engine, events {}..{} (10x the bound)",
            9 * bound,
            10 * bound
        ),
        past * 1e6
    );
    println!();
    let ratio = past / below;
    println!(
        "10x the bound / below it: {ratio:.2} (target <= 2.00: {}); keys evicted: {evicted}; window keys held: {}",
        if ratio <= 2.0 { "met" } else { "NOT met" },
        engine.window_keys()
    );
}
