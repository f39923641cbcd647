use super::*;
use crate::event::decode_event;
use crate::rules::{LoadOptions, Severity, load_str};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::collections::BTreeMap;

fn engine(rules: &str) -> Engine {
    engine_with(rules, EngineOptions::default())
}

fn engine_with(rules: &str, opts: EngineOptions) -> Engine {
    let set = load_str("t.yaml", rules, &LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    Engine::new(Arc::new(set), opts)
}

/// Builds an event line from a few fields.
fn line(
    id: &str,
    secs: i64,
    verb: &str,
    user: &str,
    resource: &str,
    code: i32,
    stage: &str,
) -> String {
    let ts = EventTime::from_secs(1_700_000_000 + secs).to_string();
    format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{id}","stage":"{stage}","verb":"{verb}","user":{{"username":"{user}"}},"sourceIPs":["10.0.0.9"],"objectRef":{{"resource":"{resource}","namespace":"ns","name":"obj-{id}"}},"responseStatus":{{"code":{code}}},"requestReceivedTimestamp":"{ts}","stageTimestamp":"{ts}"}}"#
    )
}

fn feed(e: &mut Engine, lines: &[String]) -> Vec<Alert> {
    let mut out = Vec::new();
    for l in lines {
        let ev = decode_event(l).unwrap_or_else(|err| panic!("{err}: {l}"));
        e.process(&ev, &mut out);
    }
    e.finish(&mut out);
    out
}

const INGRESS: &str = r#"
lists:
  gitops: ["system:serviceaccount:argocd:argocd-application-controller"]
rules:
  - name: ingress-edited-outside-gitops
    severity: high
    match:
      verbs: [create, update, patch, delete]
      resources: [networking.k8s.io/ingresses, ingresses]
    condition: 'event.responseStatus.code < 400 && !(event.user.username in lists.gitops)'
    summary: '{{ user.username }} {{ verb }} ingress {{ objectRef.namespace }}/{{ objectRef.name }}'
    labels: { team: platform }
"#;

#[test]
fn plain_rule_fires_per_request_with_summary_and_labels() {
    let mut e = engine(INGRESS);
    let alerts = feed(
        &mut e,
        &[
            line(
                "a",
                0,
                "patch",
                "mallory",
                "ingresses",
                200,
                "ResponseComplete",
            ),
            line(
                "b",
                1,
                "patch",
                "system:serviceaccount:argocd:argocd-application-controller",
                "ingresses",
                200,
                "ResponseComplete",
            ),
            line(
                "c",
                2,
                "patch",
                "mallory",
                "ingresses",
                403,
                "ResponseComplete",
            ),
            line(
                "d",
                3,
                "get",
                "mallory",
                "ingresses",
                200,
                "ResponseComplete",
            ),
        ],
    );
    assert_eq!(alerts.len(), 1);
    let a = &alerts[0];
    assert_eq!(a.summary, "mallory patch ingress ns/obj-a");
    assert_eq!(a.audit_ids, ["a"]);
    assert_eq!(a.labels.get("team").map(String::as_str), Some("platform"));
    assert_eq!(a.kind, AlertKind::Event);
}

const BURST: &str = r#"
rules:
  - name: repeated-auth-failures
    severity: critical
    match: { response_codes: [401, 403] }
    window: { over: 5m, group_by: [user.username], threshold: 5 }
    throttle: 10m
"#;

#[test]
fn windows_count_requests_not_records() {
    let mut e = engine(BURST);
    let mut lines = Vec::new();
    for i in 0..4 {
        // Every request logged twice (a Panic record carries the code too) must count once.
        lines.push(line(
            &format!("r{i}"),
            i * 10,
            "get",
            "mallory",
            "secrets",
            403,
            "ResponseComplete",
        ));
        lines.push(line(
            &format!("r{i}"),
            i * 10 + 1,
            "get",
            "mallory",
            "secrets",
            403,
            "Panic",
        ));
    }
    assert!(
        feed(&mut e, &lines).is_empty(),
        "4 requests are below the threshold of 5"
    );
    let stats: Vec<_> = e.rule_stats().map(|(_, s)| s).collect();
    assert_eq!((stats[0].matched, stats[0].deduplicated), (4, 4));
}

#[test]
fn burst_fires_once_then_throttles_and_reports_swallowed() {
    let mut e = engine(BURST);
    let mut lines = Vec::new();
    // 15 failures, one every 10s, then 5 more after the 10m throttle.
    for i in 0..15 {
        lines.push(line(
            &format!("f{i}"),
            i * 10,
            "get",
            "mallory",
            "secrets",
            401,
            "ResponseStarted",
        ));
    }
    for i in 0..5 {
        lines.push(line(
            &format!("g{i}"),
            700 + i,
            "get",
            "mallory",
            "secrets",
            401,
            "ResponseStarted",
        ));
    }
    lines.push(line(
        "other",
        5,
        "get",
        "alice",
        "secrets",
        403,
        "ResponseComplete",
    ));
    let alerts = feed(&mut e, &lines);
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    assert_eq!(alerts[0].group.0[0].1, "mallory");
    assert_eq!(alerts[0].count, 5);
    assert_eq!(alerts[0].audit_ids, ["f0", "f1", "f2", "f3", "f4"]);
    assert_eq!(
        alerts[0].summary,
        "5 matching requests within 5m for user.username=mallory"
    );
    assert_eq!(
        alerts[1].suppressed, 10,
        "f5-f14 came inside the throttle's mute"
    );
    assert_eq!(alerts[1].audit_ids, ["g0", "g1", "g2", "g3", "g4"]);
    let stats: Vec<_> = e.rule_stats().map(|(_, s)| s).collect();
    assert_eq!((stats[0].alerts, stats[0].throttled), (2, 10));
}

#[test]
fn stages_narrow_and_first_record_wins() {
    let rules = r#"
rules:
  - name: exec
    severity: medium
    match: { resources: [pods/exec], stages: [ResponseStarted, ResponseComplete] }
"#;
    let exec = |stage: &str, secs: i64| {
        line("x1", secs, "create", "bob", "pods", 101, stage).replace(
            r#""resource":"pods""#,
            r#""resource":"pods","subresource":"exec""#,
        )
    };
    let mut e = engine(rules);
    let alerts = feed(
        &mut e,
        &[
            exec("RequestReceived", 0),
            exec("ResponseStarted", 1),
            exec("ResponseComplete", 60),
        ],
    );
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].first_seen, EventTime::from_secs(1_700_000_001));
}

#[test]
fn script_errors_are_counted_and_other_rules_still_run() {
    let rules = r#"
rules:
  - name: broken
    severity: low
    condition: 'event.user.username.len() / 0 > 1'
  - name: fine
    severity: low
    match: { verbs: [get] }
"#;
    let mut e = engine(rules);
    let alerts = feed(
        &mut e,
        &[line("a", 0, "get", "bob", "pods", 200, "ResponseComplete")],
    );
    assert_eq!(alerts.len(), 1);
    assert_eq!(&*alerts[0].rule, "fine");
    let errors = e.take_script_errors();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        (&*errors[0].rule, errors[0].audit_id.as_str()),
        ("broken", "a")
    );
    assert!(
        errors[0].message.contains("Division by zero"),
        "{}",
        errors[0].message
    );
}

#[test]
fn runaway_scripts_are_stopped() {
    let rules = "rules:\n  - name: spin\n    severity: low\n    condition: 'loop { }'\n";
    let mut e = engine(rules);
    feed(
        &mut e,
        &[line("a", 0, "get", "bob", "pods", 200, "ResponseComplete")],
    );
    let errors = e.take_script_errors();
    assert!(
        errors[0].message.contains("Too many operations"),
        "{errors:?}"
    );
}

#[test]
fn distinct_secrets_per_user() {
    let rules = r#"
rules:
  - name: many-secrets
    severity: high
    match: { verbs: [get], resources: [secrets] }
    window: { over: 10m, threshold: 3, distinct: objectRef.name, group_by: [effectiveUser.username] }
    summary: '{{ group["effectiveUser.username"] }} read {{ count }} secrets'
"#;
    let mut e = engine(rules);
    let lines: Vec<String> = (0..6)
        .map(|i| {
            line(
                &format!("s{}", i % 2),
                i * 10,
                "get",
                "eve",
                "secrets",
                200,
                "ResponseComplete",
            )
        })
        .collect();
    // Only two distinct names (obj-s0, obj-s1): the same auditIDs also dedup to two requests.
    assert!(feed(&mut e, &lines).is_empty());
    let mut e = engine(rules);
    let lines: Vec<String> = (0..3)
        .map(|i| {
            line(
                &format!("n{i}"),
                i * 10,
                "get",
                "eve",
                "secrets",
                200,
                "ResponseComplete",
            )
        })
        .collect();
    let alerts = feed(&mut e, &lines);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].summary, "eve read 3 secrets");
    assert_eq!(alerts[0].kind, AlertKind::Distinct);
}

#[test]
fn absence_fires_on_gaps_but_not_after_the_end_of_input() {
    let rules = r#"
rules:
  - name: audit-silence
    severity: critical
    window: { absent_for: 10m }
"#;
    let mut e = engine(rules);
    let alerts = feed(
        &mut e,
        &[
            line("a", 0, "get", "x", "pods", 200, "ResponseComplete"),
            line("b", 60, "get", "x", "pods", 200, "ResponseComplete"),
            line("c", 60 * 30, "get", "x", "pods", 200, "ResponseComplete"),
        ],
    );
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0].last_seen, EventTime::from_secs(1_700_000_060));
    assert_eq!(alerts[0].kind, AlertKind::Absence);
    // A live clock tick fires the silence without any further event.
    let mut out = Vec::new();
    e.advance_watermark(EventTime::from_secs(1_700_000_000 + 60 * 41), &mut out);
    assert_eq!(out.len(), 1);
}

#[test]
fn late_hits_are_dropped_and_counted() {
    let mut e = engine(BURST);
    let alerts = feed(
        &mut e,
        &[
            line("a", 200, "get", "m", "pods", 403, "ResponseComplete"),
            line("b", 90, "get", "m", "pods", 403, "ResponseComplete"),
        ],
    );
    assert!(alerts.is_empty());
    assert_eq!(e.stats().late_hits, 1);
    assert_eq!(e.stats().late_events, 1);
    let (count, named) = e.take_late();
    assert_eq!((count, named[0].audit_id.as_str()), (1, "b"));
    assert_eq!(e.rule_stats().next().map(|(_, s)| s.late), Some(1));
}

#[test]
fn reload_keeps_state_of_unchanged_rules_only() {
    let mut e = engine(BURST);
    let lines: Vec<String> = (0..4)
        .map(|i| {
            line(
                &format!("p{i}"),
                i,
                "get",
                "m",
                "pods",
                403,
                "ResponseComplete",
            )
        })
        .collect();
    feed(&mut e, &lines);
    let same = load_str("t.yaml", BURST, &LoadOptions::default()).unwrap();
    e.replace_rules(Arc::new(same));
    let alerts = feed(
        &mut e,
        &[line("p5", 10, "get", "m", "pods", 403, "ResponseComplete")],
    );
    assert_eq!(alerts.len(), 1, "the 4 earlier hits survived the reload");
    let changed = load_str(
        "t.yaml",
        &BURST.replace("threshold: 5", "threshold: 2"),
        &LoadOptions::default(),
    )
    .unwrap();
    e.replace_rules(Arc::new(changed));
    let alerts = feed(
        &mut e,
        &[line("p6", 20, "get", "m", "pods", 403, "ResponseComplete")],
    );
    assert!(alerts.is_empty(), "a changed rule starts empty");
}

/// The brute-force oracle of the time-ordered run (docs/rules.md): per key, walk the events in
/// (time, auditID) order; one inside a throttle mute is skipped; the others join the group,
/// which keeps those within `over` of the newest; at `threshold` the window fires (first, last,
/// count, values), empties, and mutes the key for `mute`. A value of `None` counts requests;
/// `Some` counts distinct values.
#[allow(clippy::type_complexity)]
fn oracle(
    events: &[(i64, u8, u8)],
    (over, threshold, distinct, mute): (i64, usize, bool, Option<i64>),
) -> Vec<(u8, i64, i64, usize)> {
    let mut sorted: Vec<(i64, usize, u8, u8)> = events
        .iter()
        .enumerate()
        .map(|(i, (t, k, v))| (*t, i, *k, *v))
        .collect();
    sorted.sort();
    let mut fired = Vec::new();
    for key in 0..=u8::MAX {
        let mut group: Vec<(i64, u8)> = Vec::new();
        let mut muted_until = i64::MIN;
        for &(t, _, k, v) in &sorted {
            if k != key {
                continue;
            }
            if t < muted_until {
                continue;
            }
            group.retain(|(t2, _)| t - t2 <= over);
            group.push((t, v));
            let size = if distinct {
                group
                    .iter()
                    .map(|(_, v)| *v)
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()
            } else {
                group.len()
            };
            if size >= threshold {
                fired.push((key, group[0].0, t, size));
                group.clear();
                muted_until = mute.map_or(i64::MIN, |m| t + m);
            }
        }
    }
    fired
}

/// Per key, how many alerts the oracle gives.
fn per_key(fired: &[(u8, i64, i64, usize)]) -> BTreeMap<u8, usize> {
    let mut n = BTreeMap::new();
    for f in fired {
        *n.entry(f.0).or_default() += 1;
    }
    n
}

/// Events (time, key, value) with gaps, keys and values from the strategy, and an arrival
/// order in which none comes more than 30 s (the lateness) after a newer one.
fn shuffled(
    gaps: &[i64],
    keys: &[u8],
    values: &[u8],
    jitter: &[i64],
) -> (Vec<(i64, u8, u8)>, Vec<usize>) {
    let mut t = 0;
    let events: Vec<(i64, u8, u8)> = gaps
        .iter()
        .enumerate()
        .map(|(i, g)| {
            t += g;
            (t, keys[i], values[i])
        })
        .collect();
    let mut arrival: Vec<usize> = (0..events.len()).collect();
    arrival.sort_by_key(|&i| (events[i].0 + jitter[i], i));
    (events, arrival)
}

/// Feeds `arrival` one event at a time; after each, checks that the alerts so far per key are
/// exactly the oracle's firings over the events in hand (early firing: an alert leaves with the
/// request that completes it, never later, and none is taken back). Returns every alert.
fn feed_checking_early(
    rules: &str,
    events: &[(i64, u8, u8)],
    arrival: &[usize],
    run: (i64, usize, bool, Option<i64>),
) -> Result<Vec<Alert>, TestCaseError> {
    let mut e = engine_with(
        rules,
        EngineOptions {
            lateness: Span::from_secs(30),
            ..EngineOptions::default()
        },
    );
    let mut alerts = Vec::new();
    let mut in_hand = Vec::new();
    for &i in arrival {
        let (time, key, value) = events[i];
        let l = line(
            &format!("id{i:04}"),
            time,
            "get",
            &format!("u{key}"),
            "secrets",
            200,
            "ResponseComplete",
        )
        .replace(
            &format!("\"name\":\"obj-id{i:04}\""),
            &format!("\"name\":\"s{value}\""),
        );
        let ev = decode_event(&l).map_err(|e| TestCaseError::fail(e.to_string()))?;
        e.process(&ev, &mut alerts);
        in_hand.push(events[i]);
        let mut got: BTreeMap<u8, usize> = BTreeMap::new();
        for a in &alerts {
            let k: u8 = a.group.0[0].1[1..].parse().unwrap_or(u8::MAX);
            *got.entry(k).or_default() += 1;
        }
        prop_assert_eq!(
            &got,
            &per_key(&oracle(&in_hand, run)),
            "after {} events",
            in_hand.len()
        );
    }
    e.finish(&mut alerts);
    prop_assert_eq!(e.stats().late_hits, 0);
    Ok(alerts)
}

/// (key, first_seen, last_seen, count) of alerts, in seconds after the test epoch.
fn summarize(alerts: &[Alert]) -> Vec<(u8, i64, i64, usize)> {
    let mut got: Vec<(u8, i64, i64, usize)> = alerts
        .iter()
        .map(|a| {
            let k: u8 = a.group.0[0].1[1..].parse().unwrap_or(u8::MAX);
            let secs = |t: EventTime| t.0 / 1_000_000_000 - 1_700_000_000;
            (k, secs(a.first_seen), secs(a.last_seen), a.count as usize)
        })
        .collect();
    got.sort();
    got
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Count windows fire early and agree with the brute-force run: for any arrival order in
    /// which no event comes more than the lateness after a newer one, the alerts per key after
    /// every event are the oracle's over the events in hand; each alert is a real group
    /// (`threshold` requests of its key within `over`); in time order the alerts are exactly
    /// the oracle's. With or without a throttle.
    #[test]
    fn count_window_fires_early_and_matches_brute_force_under_bounded_disorder(
        gaps in prop::collection::vec(1i64..40, 1..120),
        keys in prop::collection::vec(0u8..3, 120),
        jitter in prop::collection::vec(0i64..=30, 120),
        threshold in 2usize..5,
        over in 20i64..120,
        throttle in prop::option::of(10i64..200),
    ) {
        let (events, arrival) = shuffled(&gaps, &keys, &[0; 120], &jitter);
        let throttle_line = throttle.map_or(String::new(), |t| format!("    throttle: {t}s\n"));
        let rules = format!(
            "rules:\n  - name: w\n    severity: low\n    window: {{ over: {over}s, threshold: {threshold}, group_by: [user.username] }}\n{throttle_line}"
        );
        let run = (over, threshold, false, throttle);
        let alerts = feed_checking_early(&rules, &events, &arrival, run)?;
        for a in &alerts {
            prop_assert_eq!(a.count as usize, threshold);
            prop_assert!(a.last_seen.0 - a.first_seen.0 <= Span::from_secs(over).0);
            let key = a.group.0[0].1.clone();
            for id in &a.audit_ids {
                let i: usize = id[2..].parse().unwrap_or(usize::MAX);
                prop_assert_eq!(format!("u{}", events[i].1), key.clone());
            }
        }
        let in_order: Vec<usize> = (0..events.len()).collect();
        let alerts = feed_checking_early(&rules, &events, &in_order, run)?;
        prop_assert_eq!(summarize(&alerts), { let mut w = oracle(&events, run); w.sort(); w });
    }

    /// Distinct-count windows: the same, counting distinct values.
    #[test]
    fn distinct_window_fires_early_and_matches_brute_force_under_bounded_disorder(
        gaps in prop::collection::vec(1i64..30, 1..120),
        keys in prop::collection::vec(0u8..2, 120),
        values in prop::collection::vec(0u8..6, 120),
        jitter in prop::collection::vec(0i64..=30, 120),
        threshold in 2usize..5,
        over in 20i64..150,
        throttle in prop::option::of(10i64..200),
    ) {
        let (events, arrival) = shuffled(&gaps, &keys, &values, &jitter);
        let throttle_line = throttle.map_or(String::new(), |t| format!("    throttle: {t}s\n"));
        let rules = format!(
            "rules:\n  - name: d\n    severity: low\n    window: {{ over: {over}s, threshold: {threshold}, distinct: objectRef.name, group_by: [user.username] }}\n{throttle_line}"
        );
        let run = (over, threshold, true, throttle);
        let alerts = feed_checking_early(&rules, &events, &arrival, run)?;
        for a in &alerts {
            prop_assert_eq!(a.count as usize, threshold);
            prop_assert!(a.last_seen.0 - a.first_seen.0 <= Span::from_secs(over).0);
        }
        let in_order: Vec<usize> = (0..events.len()).collect();
        let alerts = feed_checking_early(&rules, &events, &in_order, run)?;
        let got: Vec<(u8, i64, usize)> = summarize(&alerts).into_iter().map(|(k, _, l, c)| (k, l, c)).collect();
        let mut want: Vec<(u8, i64, usize)> = oracle(&events, run).into_iter().map(|(k, _, l, c)| (k, l, c)).collect();
        want.sort();
        prop_assert_eq!(got, want);
    }

    /// A throttled plain rule: every request is a firing; after an alert the key is muted.
    /// Its alerts per key match the oracle after every event, in any bounded arrival order.
    #[test]
    fn throttled_plain_rule_is_order_independent(
        gaps in prop::collection::vec(1i64..40, 1..120),
        keys in prop::collection::vec(0u8..3, 120),
        jitter in prop::collection::vec(0i64..=30, 120),
        throttle in 10i64..300,
    ) {
        let (events, arrival) = shuffled(&gaps, &keys, &[0; 120], &jitter);
        let rules = format!(
            "rules:\n  - name: p\n    severity: low\n    match: {{ verbs: [get] }}\n    group_by: [user.username]\n    throttle: {throttle}s\n"
        );
        feed_checking_early(&rules, &events, &arrival, (0, 1, false, Some(throttle)))?;
    }
}

/// Brute force for a three-step sequence (get, list, watch) per key, over the time-ordered
/// run: a request inside the key's mute is skipped; ordered, the window fires at a `watch`
/// when some get < list < watch chain of the key since its last firing lies within `over`
/// (the alert starts at the latest such get); unordered, at any request after which
/// `threshold` different steps have a request within `over` since the last firing (the alert
/// starts at the oldest of each step's newest). Returns (key, first, last) per firing.
fn sequence_oracle(
    events: &[(i64, u8, u8)],
    (over, ordered, threshold, mute): (i64, bool, usize, Option<i64>),
) -> Vec<(u8, i64, i64)> {
    let mut sorted = events.to_vec();
    sorted.sort();
    // Per key: the index of the last firing and the end of its mute.
    let mut last_fire: HashMap<u8, (usize, i64)> = HashMap::new();
    let mut fired = Vec::new();
    for (pos, &(t, k, step)) in sorted.iter().enumerate() {
        let (from, muted_until) = last_fire
            .get(&k)
            .map_or((0, i64::MIN), |&(p, m)| (p + 1, m));
        if t < muted_until {
            continue;
        }
        let mine =
            |i: usize, s: u8| sorted[i].1 == k && sorted[i].2 == s && sorted[i].0 >= muted_until;
        let start = if ordered {
            if step != 2 {
                continue;
            }
            (from..pos)
                .filter(|&i| mine(i, 0) && t - sorted[i].0 <= over)
                .filter(|&i| (i + 1..pos).any(|j| mine(j, 1)))
                .map(|i| sorted[i].0)
                .max()
        } else {
            let newest: Vec<i64> = (0..3u8)
                .filter_map(|s| {
                    (from..=pos)
                        .filter(|&i| mine(i, s) && t - sorted[i].0 <= over)
                        .map(|i| sorted[i].0)
                        .max()
                })
                .collect();
            (newest.len() >= threshold).then(|| newest.iter().copied().min().unwrap_or(t))
        };
        if let Some(start) = start {
            fired.push((k, start, t));
            last_fire.insert(k, (pos, mute.map_or(i64::MIN, |m| t + m)));
        }
    }
    fired
}

/// Feeds a sequence rule one event at a time; after each, the alerts per key must be the
/// oracle's over the events in hand. Returns (key, first, last) of every alert.
fn feed_sequence_checking_early(
    rules: &str,
    events: &[(i64, u8, u8)],
    arrival: &[usize],
    run: (i64, bool, usize, Option<i64>),
) -> Result<Vec<(u8, i64, i64)>, TestCaseError> {
    let mut e = engine_with(
        rules,
        EngineOptions {
            lateness: Span::from_secs(30),
            ..EngineOptions::default()
        },
    );
    let verbs = ["get", "list", "watch"];
    let mut alerts = Vec::new();
    let mut in_hand = Vec::new();
    for &i in arrival {
        let (t, k, s) = events[i];
        let l = line(
            &format!("id{i:04}"),
            t,
            verbs[s as usize],
            &format!("u{k}"),
            "pods",
            200,
            "ResponseComplete",
        );
        let ev = decode_event(&l).map_err(|e| TestCaseError::fail(e.to_string()))?;
        e.process(&ev, &mut alerts);
        in_hand.push(events[i]);
        let mut got: BTreeMap<u8, usize> = BTreeMap::new();
        for a in &alerts {
            let k: u8 = a.group.0[0].1[1..].parse().unwrap_or(u8::MAX);
            *got.entry(k).or_default() += 1;
        }
        let mut want: BTreeMap<u8, usize> = BTreeMap::new();
        for f in sequence_oracle(&in_hand, run) {
            *want.entry(f.0).or_default() += 1;
        }
        prop_assert_eq!(got, want, "after {} events", in_hand.len());
    }
    e.finish(&mut alerts);
    prop_assert_eq!(e.stats().late_hits, 0);
    let base = 1_700_000_000;
    let mut got: Vec<(u8, i64, i64)> = alerts
        .iter()
        .map(|a| {
            let k: u8 = a.group.0[0].1[1..].parse().unwrap_or(u8::MAX);
            (
                k,
                a.first_seen.0 / 1_000_000_000 - base,
                a.last_seen.0 / 1_000_000_000 - base,
            )
        })
        .collect();
    got.sort();
    Ok(got)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Sequence windows fire early and agree with a brute-force chain search: for any arrival
    /// order within the lateness, the alerts per key after every event are the oracle's over
    /// the events in hand; in time order they are exactly the oracle's. Ordered and
    /// unordered, with or without a throttle.
    #[test]
    fn sequences_fire_early_and_match_brute_force_under_bounded_disorder(
        gaps in prop::collection::vec(1i64..40, 1..120),
        keys in prop::collection::vec(0u8..2, 120),
        steps in prop::collection::vec(0u8..3, 120),
        jitter in prop::collection::vec(0i64..=30, 120),
        over in 20i64..200,
        ordered in any::<bool>(),
        threshold in 2usize..=3,
        throttle in prop::option::of(10i64..300),
    ) {
        let (events, arrival) = shuffled(&gaps, &keys, &steps, &jitter);
        let threshold = if ordered { 3 } else { threshold };
        let throttle_line = throttle.map_or(String::new(), |t| format!("    throttle: {t}s\n"));
        let rules = format!(
            "rules:\n  - name: s\n    severity: low\n    window:\n      over: {over}s\n      group_by: [user.username]\n      ordered: {ordered}\n      threshold: {threshold}\n      sequence:\n        - match: {{ verbs: [get] }}\n        - match: {{ verbs: [list] }}\n        - match: {{ verbs: [watch] }}\n{throttle_line}"
        );
        let run = (over, ordered, threshold, throttle);
        feed_sequence_checking_early(&rules, &events, &arrival, run)?;
        let in_order: Vec<usize> = (0..events.len()).collect();
        let got = feed_sequence_checking_early(&rules, &events, &in_order, run)?;
        let mut want = sequence_oracle(&events, run);
        want.sort();
        prop_assert_eq!(got, want);
    }
}

#[test]
fn absence_catches_a_gap_the_watermark_has_not_closed() {
    let rules = "rules:\n  - name: quiet\n    severity: low\n    window: { absent_for: 10m }\n";
    let mut e = engine(rules);
    // 601s apart: with 5s lateness the watermark stops at 596s, short of the 600s deadline.
    let alerts = feed(
        &mut e,
        &[
            line("a", 0, "get", "x", "pods", 200, "ResponseComplete"),
            line("b", 601, "get", "x", "pods", 200, "ResponseComplete"),
        ],
    );
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].last_seen, EventTime::from_secs(1_700_000_000));
}

#[test]
fn response_code_classes_only_narrow_candidates() {
    let set = load_str(
        "t.yaml",
        "rules:\n  - { name: a, severity: low, match: { response_codes: [401, 403] } }\n  - { name: b, severity: low, match: { response_codes: [\"100-399\"] } }\n  - { name: c, severity: low, match: { response_codes: [\"0-99\", 600] } }\n  - { name: d, severity: low }\n",
        &LoadOptions::default(),
    )
    .unwrap();
    let classes: Vec<Option<[bool; needs::CODE_CLASSES]>> = set
        .rules
        .iter()
        .map(|r| needs::of(&r.matcher).classes)
        .collect();
    assert_eq!(
        classes[0],
        Some([false, false, false, false, true, false, false])
    );
    assert_eq!(
        classes[1],
        Some([false, true, true, true, false, false, false])
    );
    assert_eq!(
        classes[2],
        Some([false, false, false, false, false, false, true])
    );
    assert_eq!(classes[3], None);
}

const STATEFUL: &str = r#"
rules:
  - name: forbidden-burst
    severity: medium
    match: { response_codes: [403] }
    window: { threshold: 3, over: 1m, group_by: [user.username] }
  - name: many-secrets
    severity: high
    match: { verbs: [get], resources: [secrets] }
    window: { distinct: objectRef.name, threshold: 3, over: 5m, group_by: [user.username] }
    throttle: 10m
  - name: heartbeat-gone
    severity: low
    match: { resources: [leases] }
    window: { absent_for: 2m, group_by: [user.username] }
"#;

/// A stream exercising every kind of state: count and distinct windows, a throttle,
/// absence keys, pending hits and remembered requests.
fn stateful_stream() -> Vec<String> {
    let mut lines = Vec::new();
    for i in 0..40i64 {
        let t = i * 7;
        lines.push(line(
            &format!("f{i}"),
            t,
            "get",
            &format!("u{}", i % 3),
            "pods",
            403,
            "ResponseComplete",
        ));
        lines.push(line(
            &format!("s{i}"),
            t + 1,
            "get",
            &format!("u{}", i % 2),
            "secrets",
            200,
            "ResponseComplete",
        ));
        // The same request's second record: must not count again after a restore.
        lines.push(line(
            &format!("s{i}"),
            t + 2,
            "get",
            &format!("u{}", i % 2),
            "secrets",
            200,
            "ResponseComplete",
        ));
        if !(20..=35).contains(&i) {
            lines.push(line(
                &format!("l{i}"),
                t + 3,
                "update",
                "kubelet",
                "leases",
                200,
                "ResponseComplete",
            ));
        }
    }
    lines
}

#[test]
fn snapshot_and_restore_gives_the_alerts_of_an_uninterrupted_run() {
    let lines = stateful_stream();
    let whole = feed(&mut engine(STATEFUL), &lines);
    assert!(whole.len() > 5, "the stream must fire: {whole:?}");
    for cut in [1, lines.len() / 3, lines.len() / 2, lines.len() - 1] {
        let mut first = engine(STATEFUL);
        let mut out = Vec::new();
        for l in &lines[..cut] {
            first.process(&decode_event(l).unwrap(), &mut out);
        }
        let json = serde_json::to_string(&first.snapshot()).unwrap();
        drop(first);
        let mut second = engine(STATEFUL);
        let restored = second.restore(serde_json::from_str(&json).unwrap());
        assert_eq!(restored, 3);
        for l in &lines[cut..] {
            second.process(&decode_event(l).unwrap(), &mut out);
        }
        second.finish(&mut out);
        assert_eq!(out, whole, "cut at {cut}");
    }
}

#[test]
fn restore_skips_changed_rules() {
    let lines = stateful_stream();
    let mut first = engine(STATEFUL);
    let mut out = Vec::new();
    for l in &lines[..30] {
        first.process(&decode_event(l).unwrap(), &mut out);
    }
    let snap = first.snapshot();
    let changed = STATEFUL.replace("threshold: 3, over: 1m", "threshold: 4, over: 1m");
    let mut second = engine(&changed);
    assert_eq!(second.restore(snap), 2, "the changed rule starts empty");
}

#[test]
fn reload_keeps_hits_still_waiting_for_the_watermark() {
    let mut e = engine(BURST);
    let mut out = Vec::new();
    for i in 0..4 {
        let l = line(
            &format!("w{i}"),
            i,
            "get",
            "m",
            "pods",
            403,
            "ResponseComplete",
        );
        e.process(&decode_event(&l).unwrap(), &mut out);
    }
    // Reloading with an extra rule in front renumbers the rules; the pending hits follow.
    let extra = BURST.replace(
        "rules:\n",
        "rules:\n  - name: first\n    severity: low\n    match: { verbs: [delete] }\n",
    );
    e.replace_rules(Arc::new(
        load_str("t.yaml", &extra, &LoadOptions::default()).unwrap(),
    ));
    let l = line("w4", 4, "get", "m", "pods", 403, "ResponseComplete");
    e.process(&decode_event(&l).unwrap(), &mut out);
    e.finish(&mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].count, 5);
}

#[test]
fn resource_masks_skip_only_rules_that_cannot_match() {
    let rules = "rules:\n  - { name: exact, severity: low, match: { resources: [core/secrets, pods/exec] } }\n  - { name: glob, severity: low, match: { resources: [\"*maps\"] } }\n  - { name: any, severity: low }\n";
    let mut e = engine(rules);
    let fired = |e: &mut Engine, resource: &str| {
        let mut names: Vec<String> = feed(
            e,
            &[line(
                &format!("id-{resource}"),
                0,
                "get",
                "u",
                resource,
                200,
                "ResponseComplete",
            )],
        )
        .iter()
        .map(|a| a.rule.to_string())
        .collect();
        names.sort();
        names
    };
    assert_eq!(fired(&mut e, "secrets"), ["any", "exact"]);
    assert_eq!(fired(&mut e, "configmaps"), ["any", "glob"]);
    assert_eq!(fired(&mut e, "pods"), ["any"]);
    let masks = &e.index.resource_masks;
    assert_eq!(
        masks[0],
        index::event_resource_bits("secrets") | index::event_resource_bits("pods")
    );
    assert_eq!(masks[1..], [u64::MAX, u64::MAX]);
}

#[test]
fn severity_when_sets_each_alerts_severity_from_its_request() {
    let rules = "rules:\n  - name: secrets\n    severity: medium\n    severity_when:\n      - { severity: critical, match: { namespaces: [kube-system] } }\n      - { severity: info, match: { response_codes: [\"400-599\"] } }\n    match: { resources: [secrets] }\n";
    let mut e = engine(rules);
    let alerts = feed(
        &mut e,
        &[
            line("a", 0, "get", "u", "secrets", 200, "ResponseComplete"),
            line("b", 1, "get", "u", "secrets", 403, "ResponseComplete"),
        ],
    );
    let got: Vec<Severity> = alerts.iter().map(|a| a.severity).collect();
    // `line` puts every object in namespace "ns": no critical; the 403 is info.
    assert_eq!(got, [Severity::Medium, Severity::Info]);
    let err = load_str(
        "t.yaml",
        "rules:\n  - name: w\n    severity: low\n    severity_when: [{ severity: high, match: {} }]\n    window: { over: 1m, threshold: 2 }\n",
        &LoadOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("t.yaml:4:") && err.contains("cannot use it"),
        "{err}"
    );
}

/// Issue 16.6: a pattern that only exists at run time and does not compile is a counted
/// script error, not a silent `false`.
#[test]
fn a_bad_runtime_regex_is_a_counted_error() {
    let mut e = engine(
        "rules:\n  - name: by-user-pattern\n    severity: low\n    condition: 'regex(event.verb, event.user.username)'\n",
    );
    let alerts = feed(
        &mut e,
        &[
            line("a", 0, "get", "(", "pods", 200, "ResponseComplete"),
            line("b", 1, "get", "g.t", "pods", 200, "ResponseComplete"),
        ],
    );
    assert_eq!(alerts.len(), 1, "g.t matches get");
    let (_, stats) = e.rule_stats().next().unwrap();
    assert_eq!(stats.script_errors, 1);
    let errs = e.take_script_errors();
    assert!(
        errs[0].message.contains("invalid regular expression"),
        "{errs:?}"
    );
}

/// Issue 16.6: a value nested past serde_json's limit anywhere in a pod made the pod
/// unreadable, and privileged-pod rules silently did not fire. The deep part is cut, the
/// rest is read, and the cut is counted for the rules that read the object.
#[test]
fn deeply_nested_objects_do_not_blind_rules_and_are_counted() {
    let rules = r#"
rules:
  - name: privileged-pod
    severity: critical
    match:
      verbs: [create]
      resources: [pods]
      fields:
        pod.containers[*].securityContext.privileged: [true]
  - name: host-pid
    severity: high
    match: { verbs: [create], resources: [pods] }
    condition: 'event.requestObject.spec.hostPID == true'
  - name: any-create
    severity: low
    match: { verbs: [create] }
"#;
    let deep = format!("{}1{}", "[".repeat(150), "]".repeat(150));
    let ts = EventTime::from_secs(1_700_000_000).to_string();
    let pod = format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Request","auditID":"deep","stage":"ResponseComplete","verb":"create","user":{{"username":"mallory"}},"objectRef":{{"resource":"pods","namespace":"ns","name":"p"}},"responseStatus":{{"code":201}},"requestObject":{{"kind":"Pod","metadata":{{"annotations":{{"x":"y"}}}},"spec":{{"hostPID":true,"containers":[{{"name":"c","image":"i","securityContext":{{"privileged":true}},"env":[{{"name":"deep","value":"v","x":{deep}}}]}}]}}}},"requestReceivedTimestamp":"{ts}","stageTimestamp":"{ts}"}}"#
    );
    let mut e = engine(rules);
    let alerts = feed(&mut e, &[pod]);
    let fired: Vec<&str> = alerts.iter().map(|a| &*a.rule).collect();
    assert_eq!(fired, ["privileged-pod", "host-pid", "any-create"]);
    let deep_counts: Vec<(String, u64)> = e
        .rule_stats()
        .map(|(r, s)| (r.name.to_string(), s.objects_too_deep))
        .collect();
    // The match block parses only the paths it reads (the deep `env` subtree is skipped
    // without being built), so nothing it reads was cut; the condition reads the whole object,
    // whose deep part was cut: counted for that rule.
    assert_eq!(
        deep_counts,
        [
            ("privileged-pod".to_owned(), 0),
            ("host-pid".to_owned(), 1),
            ("any-create".to_owned(), 0)
        ]
    );
}

/// The rule index offers each rule only the events its whole match block can match
/// (verbs, resources and code classes found inside Sigma's `and`/`not` trees and `any`s),
/// and never skips an event it would match: an upper-case verb or resource (no apiserver
/// writes one) still reaches Sigma's case-insensitive rules, and not the exact ones.
#[test]
fn the_rule_index_never_skips_a_match() {
    let sigma = r#"
title: Deployment deleted
id: 3f9e8d1c-0000-4000-8000-000000000001
status: test
logsource: { product: kubernetes, service: audit }
detection:
  selection:
    verb: delete
    objectRef.resource: deployments
  filter:
    responseStatus.code: 404
  condition: selection and not filter
level: low
"#;
    let native = r#"
rules:
  - name: native-delete
    severity: low
    match:
      any:
        - { verbs: [delete], resources: [deployments] }
        - { verbs: [deletecollection], resources: [deployments] }
      response_codes: [2xx]
"#;
    let dir = std::env::temp_dir().join(format!("aw-index-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("s.yml"), sigma).unwrap();
    std::fs::write(dir.join("n.yaml"), native).unwrap();
    let set = crate::rules::load_paths(std::slice::from_ref(&dir), &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::remove_dir_all(&dir).ok();
    let sigma_idx = set
        .rules
        .iter()
        .position(|r| &*r.name != "native-delete")
        .unwrap();
    let needs = needs::of(&set.rules[sigma_idx].matcher);
    assert_eq!(
        needs.verbs.map(|v| v.into_iter().collect::<Vec<_>>()),
        Some(vec!["delete".to_string()])
    );
    assert_eq!(
        needs.resources.map(|v| v.into_iter().collect::<Vec<_>>()),
        Some(vec!["deployments".to_string()])
    );
    let mut e = Engine::new(Arc::new(set), EngineOptions::default());
    let cases = [
        ("1", "delete", "deployments", 200, true, true),
        ("2", "DELETE", "deployments", 200, true, false),
        ("3", "delete", "Deployments", 200, true, false),
        ("4", "deletecollection", "deployments", 200, false, true),
        ("5", "delete", "deployments", 404, false, false),
        ("6", "get", "deployments", 200, false, false),
        ("7", "delete", "pods", 200, false, false),
    ];
    for (id, verb, resource, code, want_sigma, want_native) in cases {
        let mut out = Vec::new();
        let l = line(
            id,
            id.parse().unwrap(),
            verb,
            "u",
            resource,
            code,
            "ResponseComplete",
        );
        e.process(&decode_event(&l).unwrap(), &mut out);
        let fired = |native: bool| out.iter().any(|a| (&*a.rule == "native-delete") == native);
        assert_eq!(
            fired(false),
            want_sigma,
            "sigma on {verb} {resource} {code}"
        );
        assert_eq!(
            fired(true),
            want_native,
            "native on {verb} {resource} {code}"
        );
    }
}

/// Two clusters' sources feed one engine: their windows never mix, alerts carry the source's
/// labels, and a user name holding the key's separators forges neither a group nor a label.
#[test]
fn source_labels_split_windows_and_label_alerts() {
    let mut e = engine(
        r#"
rules:
  - name: burst
    severity: high
    labels: { team: sec }
    window: { over: 1m, group_by: [user.username], threshold: 2 }
    match: { verbs: [get], resources: [secrets] }
"#,
    );
    let prod: Arc<str> = Arc::from(crate::window::source_tag(&BTreeMap::from([(
        "cluster".to_owned(),
        "prod-eu".to_owned(),
    )])));
    let dev: Arc<str> = Arc::from(crate::window::source_tag(&BTreeMap::from([(
        "cluster".to_owned(),
        "dev".to_owned(),
    )])));
    let mut out = Vec::new();
    let mut send = |e: &mut Engine, tag: &Arc<str>, id: &str, secs: i64, user: &str| {
        e.select_source_tag(tag);
        let l = line(id, secs, "get", user, "secrets", 200, "ResponseComplete");
        e.process(&decode_event(&l).unwrap(), &mut out);
    };
    send(&mut e, &prod, "1", 0, "alice");
    send(&mut e, &dev, "2", 1, "alice");
    // JSON-escaped in the event: the decoded name holds U+001E.
    let forged = "alice\\u001ecluster=prod-eu";
    send(&mut e, &dev, "3", 2, forged);
    send(&mut e, &prod, "4", 3, "alice");
    send(&mut e, &dev, "5", 4, forged);
    e.finish(&mut out);
    assert_eq!(out.len(), 2, "{out:#?}");
    let f = out.iter().find(|a| a.audit_ids == ["3", "5"]).unwrap();
    assert_eq!(f.labels.get("cluster").map(String::as_str), Some("dev"));
    assert_eq!(f.group.0[0].1, "alice\u{fffd}cluster=prod-eu");
    let a = out.iter().find(|a| a.audit_ids[0] == "1").unwrap();
    assert_eq!(a.labels.get("cluster").map(String::as_str), Some("prod-eu"));
    assert_eq!(a.labels.get("team").map(String::as_str), Some("sec"));
    assert_eq!(
        a.group.0,
        [(Arc::from("user.username"), "alice".to_owned())]
    );
    assert_eq!(a.audit_ids, ["1", "4"]);
}
