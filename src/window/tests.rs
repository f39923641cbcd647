use super::*;

fn ids(f: &Firing) -> Vec<&str> {
    f.events.iter().map(|e| e.audit_id()).collect()
}

const MIN: i64 = 60;

fn hit(secs: i64, key: &str, id: &str) -> Hit {
    Hit {
        time: EventTime::from_secs(secs),
        key: Arc::from(key),
        event: EventRef::new(
            EventTime::from_secs(secs),
            403,
            id,
            "mallory",
            "get",
            "secrets prod/db",
            "10.0.0.1",
        ),
        distinct: None,
        steps: 0,
        captured: Captured::default(),
    }
}

/// A hit of the sequence steps in `mask`.
fn step(secs: i64, key: &str, id: &str, mask: u64) -> Hit {
    Hit {
        steps: mask,
        ..hit(secs, key, id)
    }
}

fn sequence(over_secs: i64, steps: usize, threshold: u64, ordered: bool) -> RuleWindow {
    RuleWindow::new(
        WindowSpec::Sequence {
            over: Span::from_secs(over_secs),
            steps: (0..steps)
                .map(|i| Arc::from(format!("s{i}").as_str()))
                .collect(),
            threshold,
            ordered,
        },
        None,
        limits(1000),
    )
}

fn limits(max_keys: usize) -> Limits {
    Limits {
        max_keys,
        max_held: 1_000_000,
    }
}

fn fire_all(w: &mut RuleWindow, hits: Vec<Hit>) -> Vec<Firing> {
    hits.into_iter().filter_map(|h| w.on_hit(h)).collect()
}

fn count(over_secs: i64, threshold: u64) -> RuleWindow {
    RuleWindow::new(
        WindowSpec::Count {
            over: Span::from_secs(over_secs),
            threshold,
        },
        None,
        limits(1000),
    )
}

#[test]
fn count_window_slides_across_minute_boundaries() {
    // Five failures spread across a minute boundary and within 5m: fires at the fifth.
    let mut w = count(5 * MIN, 5);
    let times = [58, 61, 119, 121, 290];
    let mut fired = Vec::new();
    for (i, t) in times.iter().enumerate() {
        if let Some(f) = w.on_hit(hit(*t, "mallory", &format!("id{i}"))) {
            fired.push(f);
        }
    }
    assert_eq!(fired.len(), 1);
    let f = &fired[0];
    assert_eq!(
        (f.count, f.first_seen, f.last_seen),
        (5, EventTime::from_secs(58), EventTime::from_secs(290))
    );
    assert_eq!(ids(f), ["id0", "id1", "id2", "id3", "id4"]);
}

#[test]
fn count_window_forgets_hits_older_than_over_and_restarts_after_firing() {
    let mut w = count(60, 3);
    assert!(w.on_hit(hit(0, "k", "a")).is_none());
    assert!(w.on_hit(hit(30, "k", "b")).is_none());
    // 61s after the first: the first has slid out, so only two remain.
    assert!(w.on_hit(hit(61, "k", "c")).is_none());
    let f = w.on_hit(hit(62, "k", "d")).expect("b, c, d within 60s");
    assert_eq!(f.first_seen, EventTime::from_secs(30));
    // Restarted: the next two do not fire, the third does.
    assert!(w.on_hit(hit(63, "k", "e")).is_none());
    assert!(w.on_hit(hit(64, "k", "f")).is_none());
    assert!(w.on_hit(hit(65, "k", "g")).is_some());
    // Inclusive bound: exactly `over` apart still counts.
    let mut w = count(60, 2);
    w.on_hit(hit(0, "k", "a"));
    assert!(w.on_hit(hit(60, "k", "b")).is_some());
}

#[test]
fn keys_are_independent_and_bounded() {
    let mut w = RuleWindow::new(
        WindowSpec::Count {
            over: Span::from_secs(60),
            threshold: 2,
        },
        None,
        limits(2),
    );
    assert!(w.on_hit(hit(0, "a", "1")).is_none());
    assert!(w.on_hit(hit(1, "b", "2")).is_none());
    // A third key evicts the least recently updated one ("a").
    assert!(w.on_hit(hit(2, "c", "3")).is_none());
    assert_eq!((w.key_count(), w.evicted), (2, 1));
    assert!(
        w.on_hit(hit(3, "a", "4")).is_none(),
        "a's first hit was evicted"
    );
    assert!(w.on_hit(hit(4, "c", "5")).is_some());
}

#[test]
fn distinct_counts_values_not_hits() {
    let mut w = RuleWindow::new(
        WindowSpec::Distinct {
            over: Span::from_secs(30 * MIN),
            threshold: 3,
            field: crate::event::field::FieldPath::parse("objectRef.name").unwrap(),
        },
        None,
        limits(100),
    );
    let mut h = |t: i64, v: &str| {
        let mut x = hit(t, "eve", &format!("id-{t}"));
        x.distinct = Some(v.into());
        w.on_hit(x)
    };
    assert!(h(0, "s1").is_none());
    for t in 1..50 {
        assert!(h(t, "s1").is_none(), "the same secret again is not new");
    }
    assert!(h(50, "s2").is_none());
    let f = h(60, "s3").expect("three distinct secrets");
    assert_eq!(f.count, 3);
    assert_eq!(ids(&f), ["id-49", "id-50", "id-60"]);
    // Values slide out too.
    assert!(h(4000, "a").is_none());
    assert!(h(4001, "b").is_none());
    assert!(h(4001 + 30 * MIN + 1, "c").is_none(), "a and b slid out");
}

#[test]
fn absence_fires_once_per_silence_and_rearms() {
    let mut w = RuleWindow::new(
        WindowSpec::Absence {
            after: Span::from_secs(10 * MIN),
        },
        None,
        limits(100),
    );
    let mut out = Vec::new();
    w.on_hit(hit(0, "", "a"));
    w.on_hit(hit(5 * MIN, "", "b"));
    w.on_watermark(EventTime::from_secs(14 * MIN), &mut out);
    assert!(out.is_empty(), "b at 5m re-armed the deadline to 15m");
    w.on_watermark(EventTime::from_secs(15 * MIN), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, EventTime::from_secs(15 * MIN));
    assert_eq!(out[0].1.last_seen, EventTime::from_secs(5 * MIN));
    assert_eq!(ids(&out[0].1), ["b"]);
    w.on_watermark(EventTime::from_secs(60 * MIN), &mut out);
    assert_eq!(out.len(), 1, "one alert per silence");
    w.on_hit(hit(61 * MIN, "", "c"));
    w.on_watermark(EventTime::from_secs(71 * MIN), &mut out);
    assert_eq!(out.len(), 2);
}

#[test]
fn throttle_swallows_and_reports() {
    let mut t = Throttle::new(Span::from_secs(10 * MIN), 1000);
    let k: GroupKey = Arc::from("mallory");
    assert_eq!(t.admit(&k, EventTime::from_secs(0)), Some(0));
    assert_eq!(t.admit(&k, EventTime::from_secs(60)), None);
    assert_eq!(t.admit(&k, EventTime::from_secs(599)), None);
    assert_eq!(t.admit(&k, EventTime::from_secs(600)), Some(2));
    assert_eq!(
        t.admit(&Arc::from("other"), EventTime::from_secs(601)),
        Some(0)
    );
}

#[test]
fn ordered_sequence_needs_every_step_in_order_within_over() {
    let mut w = sequence(5 * MIN, 3, 3, true);
    // Steps 2 and 3 before step 1 do not count; then 1, 2, 3 in order fire once.
    let fired = fire_all(
        &mut w,
        vec![
            step(0, "k", "c-early", 0b100),
            step(10, "k", "b-early", 0b010),
            step(20, "k", "a", 0b001),
            step(30, "k", "c-too-soon", 0b100),
            step(40, "k", "b", 0b010),
            step(50, "k", "c", 0b100),
        ],
    );
    assert_eq!(fired.len(), 1);
    assert_eq!(ids(&fired[0]), ["a", "b", "c"]);
    assert_eq!(
        (fired[0].count, fired[0].first_seen, fired[0].last_seen),
        (3, EventTime::from_secs(20), EventTime::from_secs(50))
    );
    // The window restarted: another step 3 alone does not fire again.
    assert!(w.on_hit(step(60, "k", "c2", 0b100)).is_none());
}

#[test]
fn ordered_sequence_keeps_the_latest_start_and_expires_old_ones() {
    let mut w = sequence(60, 2, 2, true);
    // Step 1 at 0 expires by 70; step 1 at 30 is still within 60s of 80.
    let fired = fire_all(
        &mut w,
        vec![
            step(0, "k", "a0", 0b01),
            step(30, "k", "a1", 0b01),
            step(80, "k", "b", 0b10),
        ],
    );
    assert_eq!(fired.len(), 1);
    assert_eq!(ids(&fired[0]), ["a1", "b"]);
    // Too late: 61s after its step 1.
    let fired = fire_all(
        &mut w,
        vec![step(100, "k", "a2", 0b01), step(161, "k", "b2", 0b10)],
    );
    assert!(fired.is_empty());
    // Other keys are separate sequences.
    let fired = fire_all(
        &mut w,
        vec![step(200, "x", "a3", 0b01), step(210, "y", "b3", 0b10)],
    );
    assert!(fired.is_empty());
}

#[test]
fn one_request_advances_an_ordered_sequence_by_one_step_only() {
    let mut w = sequence(MIN, 2, 2, true);
    // A request matching both steps starts a sequence but cannot complete it alone.
    assert!(w.on_hit(step(0, "k", "both", 0b11)).is_none());
    let f = w.on_hit(step(5, "k", "both-again", 0b11));
    assert_eq!(f.map(|f| ids(&f).join(",")), Some("both,both-again".into()));
}

#[test]
fn unordered_sequence_fires_on_threshold_distinct_steps_in_any_order() {
    let mut w = sequence(MIN, 3, 2, false);
    let fired = fire_all(
        &mut w,
        vec![
            step(0, "k", "c", 0b100),
            step(5, "k", "c-again", 0b100),
            step(10, "k", "a", 0b001),
        ],
    );
    assert_eq!(fired.len(), 1);
    // The newest hit of each step counts.
    assert_eq!(ids(&fired[0]), ["c-again", "a"]);
    assert_eq!(fired[0].count, 2);
    // A step seen 61s before the other is outside the window.
    let fired = fire_all(
        &mut w,
        vec![step(100, "k", "a", 0b001), step(161, "k", "b", 0b010)],
    );
    assert!(fired.is_empty());
}

#[test]
fn a_request_completing_several_unordered_steps_is_listed_once() {
    let mut w = sequence(MIN, 2, 2, false);
    let f = w
        .on_hit(step(0, "k", "both", 0b11))
        .expect("both steps seen");
    assert_eq!((ids(&f), f.count), (vec!["both"], 1));
}

#[test]
fn sequence_keys_expire_and_survive_a_snapshot() {
    let mut w = sequence(MIN, 2, 2, true);
    assert!(w.on_hit(step(0, "k", "a", 0b01)).is_none());
    assert!(w.on_hit(step(0, "old", "a", 0b01)).is_none());
    w.expire(EventTime::from_secs(61));
    assert_eq!(w.key_count(), 0);
    assert!(w.on_hit(step(100, "k", "a", 0b01)).is_none());
    let snap = w.snapshot();
    let json = serde_json::to_string(&snap).unwrap();
    let back: WindowSnapshot = serde_json::from_str(&json).unwrap();
    let mut restored = RuleWindow::restore(w.spec().clone(), None, limits(1000), back);
    let f = restored.on_hit(step(110, "k", "b", 0b10));
    assert_eq!(f.map(|f| ids(&f).join(",")), Some("a,b".into()));
    // A snapshot of a sequence does not fit a window of another kind.
    let other = RuleWindow::restore(
        WindowSpec::Absence {
            after: Span::from_secs(60),
        },
        None,
        limits(1000),
        w.snapshot(),
    );
    assert_eq!(other.key_count(), 0);
}

#[test]
fn eviction_past_the_key_bound_costs_constant_work() {
    let bound = 2_000;
    let mut w = RuleWindow::new(
        WindowSpec::Count {
            over: Span::from_secs(3600),
            threshold: 3,
        },
        None,
        limits(bound),
    );
    let events = 10 * bound as i64;
    for i in 0..events {
        // A slowly moving repeat offender keeps its key fresh among the one-off keys.
        let key = if i % 10 == 0 {
            "repeat".to_owned()
        } else {
            format!("10.{}.{}.{}", i >> 16, (i >> 8) & 0xff, i & 0xff)
        };
        w.on_hit(hit(i, &key, &format!("id{i}")));
    }
    assert_eq!(w.key_count(), bound);
    let evicted = w.evicted;
    assert!(evicted as i64 >= events * 8 / 10, "{evicted} evictions");
    let per_eviction = w.eviction_work() as f64 / evicted as f64;
    assert!(
        per_eviction < 12.0,
        "{per_eviction:.1} keys looked at per eviction (a full scan would be {bound})"
    );
    // Least recently updated goes first: the repeat offender stays, the early keys are gone.
    assert!(w.keys.contains_key("repeat"));
    assert!(!w.keys.contains_key("10.0.0.1"));
    assert!(
        w.keys.contains_key(
            format!(
                "10.0.{}.{}",
                ((events - 1) >> 8) & 0xff,
                (events - 1) & 0xff
            )
            .as_str()
        )
    );
}
