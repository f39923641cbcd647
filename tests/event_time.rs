//! Event time in the daemon, end to end through `auditwatch run` and its webhook: windows fire
//! on the requests in hand however the apiservers' batches interleave, each apiserver keeps
//! its own event-time clock (one running ahead pushes no one else's events into lateness; a
//! quiet one stops holding the others back), and events later than the lateness are counted,
//! named in the log and left out of windows.
//!
//! Two "apiservers" are two loopback addresses (127.0.0.2 and 127.0.0.3) posting to the same
//! webhook: the daemon tells senders apart by address.

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// An audit event `offset_secs` from now (negative: in the past).
fn event_at(id: &str, user: &str, code: u16, offset_secs: i64) -> String {
    event(id, "get", user, "secrets", id, code).replace(
        &now_rfc3339(0)[..19],
        &now_rfc3339(offset_secs * 1000)[..19],
    )
}

/// A client posting from `from` (one apiserver).
fn apiserver(from: &str) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .local_address(from.parse::<IpAddr>().ok())
        .build()
        .unwrap()
}

fn send(client: &reqwest::blocking::Client, hook: u16, events: &[String]) {
    let resp = client
        .post(format!("http://127.0.0.1:{hook}/"))
        .header("Content-Type", "application/json")
        .body(event_list(events))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

fn fired(dir: &Path, rule: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("state/alerts.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["rule"] == rule)
        .collect()
}

/// The built-in packs, the default lateness: only the state, the ports and (for the idle test)
/// `idle_after` are set.
fn start(dir: &Path, idle_after: &str) -> (Daemon, u16) {
    let (hook, metrics) = (free_port(), free_port());
    let config = dir.join("auditwatch.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: state\nhttp: {{ listen: \"127.0.0.1:{metrics}\" }}\nengine: {{ idle_after: {idle_after} }}\nsources:\n  - webhook: {{ name: apiserver, listen: \"127.0.0.1:{hook}\" }}\n"
        ),
    )
    .unwrap();
    (Daemon::start(dir, &config, metrics, 0), hook)
}

/// The case: five 403s of one user within 90 s, served by two apiservers whose
/// batches arrive 10-15 s out of step. With the old defaults (lateness 5 s, windows waiting
/// for the watermark) no alert came. Now the window fires when the fifth request arrives,
/// although it is 30 s older than the newest: far sooner than the watermark (a minute behind
/// the newest event) could pass it.
#[test]
fn a_burst_served_by_two_apiservers_alerts_when_its_last_request_arrives() {
    let dir = Scratch::new("early-firing");
    let (daemon, hook) = start(&dir.0, "10s");
    let (a, b) = (apiserver("127.0.0.2"), apiserver("127.0.0.3"));
    let rule = "repeated-auth-failures-per-user";
    send(
        &a,
        hook,
        &[
            event_at("a1", "mallory", 403, -40),
            event_at("a2", "mallory", 403, -20),
            event_at("a3", "mallory", 403, -5),
        ],
    );
    send(&b, hook, &[event_at("b1", "mallory", 403, -55)]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(fired(&dir.0, rule).is_empty(), "four requests only");
    let sent = Instant::now();
    send(&b, hook, &[event_at("b2", "mallory", 403, -35)]);
    wait_until("the burst's alert", || !fired(&dir.0, rule).is_empty());
    let took = sent.elapsed();
    // The watermark would pass b2 no sooner than ~40 s from now (idle_after plus the 30 s the
    // newest event is ahead of b2 beyond the lateness). Far below that even on a slow machine.
    assert!(took < Duration::from_secs(20), "alert took {took:?}");
    let alert = &fired(&dir.0, rule)[0];
    assert_eq!(alert["count"], 5);
    let ids: Vec<&str> = alert["audit_ids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(ids, ["b1", "a1", "b2", "a2", "a3"]);
    let m = daemon.metrics();
    assert_eq!(
        sample(&m, "auditwatch_late_events_total{source=\"apiserver\"}"),
        0.0
    );
}

/// One apiserver's clock runs 10 minutes ahead: its times move no clock past the wall clock
/// (plus a little skew), so the others' events are not pushed into lateness.
#[test]
fn a_clock_running_ahead_pushes_no_one_into_lateness() {
    let dir = Scratch::new("ahead");
    let (daemon, hook) = start(&dir.0, "10s");
    let (ahead, normal) = (apiserver("127.0.0.2"), apiserver("127.0.0.3"));
    let rule = "repeated-auth-failures-per-user";
    send(&ahead, hook, &[event_at("ahead-1", "robot", 200, 600)]);
    let burst: Vec<String> = (0..5)
        .map(|i| event_at(&format!("n{i}"), "eve", 403, -30 + i * 5))
        .collect();
    send(&normal, hook, &burst);
    wait_until("eve's burst", || !fired(&dir.0, rule).is_empty());
    let m = daemon.metrics();
    assert_eq!(
        sample(&m, "auditwatch_late_events_total{source=\"apiserver\"}"),
        0.0
    );
}

/// An apiserver 90 s behind the other (a lagging sender) holds event time back while it
/// speaks, so its events are not late although the other's are far newer: each sender has its
/// own clock. Once it has been quiet for `idle_after` it no longer holds time back; what it
/// sends next, still 90 s behind, is late: counted, named in the log, left out of windows.
#[test]
fn a_lagging_apiserver_holds_time_back_until_it_goes_quiet() {
    let dir = Scratch::new("lagging");
    let (daemon, hook) = start(&dir.0, "2s");
    let (lagging, current) = (apiserver("127.0.0.2"), apiserver("127.0.0.3"));
    let rule = "repeated-auth-failures-per-user";
    let late = |d: &Daemon| {
        sample(
            &d.metrics(),
            "auditwatch_late_events_total{source=\"apiserver\"}",
        )
    };
    send(&lagging, hook, &[event_at("lag-0", "trent", 403, -95)]);
    send(&current, hook, &[event_at("cur-0", "robot", 200, 0)]);
    // 90 s behind the newest event, more than the lateness: a single clock would call these
    // late. The lagging sender's own clock says they are not.
    let burst: Vec<String> = (1..5)
        .map(|i| event_at(&format!("lag-{i}"), "trent", 403, -95 + i))
        .collect();
    send(&lagging, hook, &burst);
    wait_until("trent's burst", || !fired(&dir.0, rule).is_empty());
    assert_eq!(late(&daemon), 0.0);

    // The lagging sender goes quiet while the other keeps speaking.
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(5) {
        send(&current, hook, &[event_at("tick", "robot", 200, 0)]);
        std::thread::sleep(Duration::from_millis(250));
    }
    send(&lagging, hook, &[event_at("lag-late", "trent", 403, -90)]);
    wait_until("the late event to be counted", || late(&daemon) >= 1.0);
    let log = std::fs::read_to_string(dir.0.join("stderr-0.log")).unwrap();
    assert!(
        log.contains("lag-late") && log.contains("later than the lateness"),
        "{log}"
    );
}
