//! `auditwatch query`: filter and aggregate audit events without writing a rule — "403s on
//! list, by user" — over audit log files (any shape the sources read: JSON lines, an
//! `EventList`, managed exports), decoded by the same fast decoder as the engine.
//!
//! A query is a filter ([`lang`]), an optional time range, the fields to group by, one
//! aggregate (a count by default, distinct values of a field, or the first or last time), and
//! optionally a time series (`--every`). The result is a table of rows, largest first.

pub mod columnar;
pub mod lang;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use crate::event::{DecodeError, EventTime, InputFormat, Span, decode_each};
use crate::source::RecordReader;
use lang::{Expr, Field};

/// What to compute per group.
#[derive(Debug, Clone)]
pub enum Aggregate {
    Count,
    /// Distinct values of a field.
    Distinct(Field),
    /// Event time of the group's first event.
    First,
    /// Event time of the group's last event.
    Last,
}

impl Aggregate {
    /// `count`, `distinct(FIELD)`, `first` or `last`.
    pub fn parse(text: &str) -> Result<Aggregate, String> {
        let t = text.trim();
        match t.to_ascii_lowercase().as_str() {
            "count" => return Ok(Aggregate::Count),
            "first" => return Ok(Aggregate::First),
            "last" => return Ok(Aggregate::Last),
            _ => {}
        }
        let inner = t
            .strip_prefix("distinct(")
            .or_else(|| t.strip_prefix("DISTINCT("))
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(|| {
                format!("unknown aggregate {t:?}: count, distinct(FIELD), first or last")
            })?;
        Field::parse(inner.trim()).map(Aggregate::Distinct)
    }

    /// The result column's name.
    pub fn name(&self) -> String {
        match self {
            Aggregate::Count => "count".into(),
            Aggregate::Distinct(f) => format!("distinct({})", f.written),
            Aggregate::First => "first".into(),
            Aggregate::Last => "last".into(),
        }
    }
}

/// A whole query.
#[derive(Debug, Clone)]
pub struct Query {
    pub filter: Expr,
    pub group_by: Vec<Field>,
    pub aggregate: Aggregate,
    /// Events at or after.
    pub from: Option<EventTime>,
    /// Events before.
    pub to: Option<EventTime>,
    /// A time series: one row per bucket of this length and group.
    pub every: Option<Span>,
    /// Keep the N largest groups (by count over the whole range).
    pub top: Option<usize>,
}

/// One result row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The bucket's start, for `--every`.
    pub bucket: Option<EventTime>,
    pub group: Vec<String>,
    /// Events in the row (what `--top` and the order go by).
    pub count: u64,
    /// The aggregate's value: the count, the number of distinct values, or a time.
    pub value: AggValue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AggValue {
    Number(u64),
    Time(Option<EventTime>),
}

impl std::fmt::Display for AggValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AggValue::Number(n) => write!(f, "{n}"),
            AggValue::Time(Some(t)) => write!(f, "{t}"),
            AggValue::Time(None) => Ok(()),
        }
    }
}

/// What a run read, and what it found.
#[derive(Debug, Default)]
pub struct QueryReport {
    pub rows: Vec<Row>,
    pub events: u64,
    pub matched: u64,
    pub decode_errors: u64,
    /// Files that could not be read: name and why.
    pub unreadable: Vec<(String, String)>,
}

#[derive(Default)]
pub(crate) struct Acc {
    count: u64,
    distinct: HashSet<String>,
    first: Option<EventTime>,
    last: Option<EventTime>,
}

/// Runs `query` over `paths`; bad records go to `on_error` (counted, the run goes on).
pub fn run(
    query: &Query,
    paths: &[PathBuf],
    format: InputFormat,
    on_error: &mut dyn FnMut(DecodeError),
) -> QueryReport {
    run_with_progress(query, paths, format, None, on_error)
}

/// [`run`], counting records and bytes read in `progress` (for a display on another thread;
/// an archive segment counts as its rows and its file size once read).
pub fn run_with_progress(
    query: &Query,
    paths: &[PathBuf],
    format: InputFormat,
    progress: Option<&crate::replay::Progress>,
    on_error: &mut dyn FnMut(DecodeError),
) -> QueryReport {
    let mut report = QueryReport::default();
    let mut groups: HashMap<(Option<EventTime>, Vec<String>), Acc> = HashMap::new();
    let mut key = Vec::with_capacity(query.group_by.len());
    let mut columnar = columnar::Groups::default();
    for path in paths {
        if path.as_os_str() != "-" && columnar::is_archive(path) {
            let segments = if path.is_dir() {
                match columnar::segments(path, &mut report.unreadable) {
                    Ok(s) => s,
                    Err(e) => {
                        report
                            .unreadable
                            .push((path.display().to_string(), e.to_string()));
                        continue;
                    }
                }
            } else {
                vec![path.clone()]
            };
            for segment in segments {
                let before = report.events;
                let result = columnar::run_segment(query, &segment, &mut columnar, &mut report);
                if let Some(p) = progress {
                    use std::sync::atomic::Ordering::Relaxed;
                    p.records.fetch_add(report.events - before, Relaxed);
                    let size = std::fs::metadata(&segment).map_or(0, |m| m.len());
                    p.bytes.fetch_add(size, Relaxed);
                }
                if let Err(why) = result {
                    report.unreadable.push((segment.display().to_string(), why));
                }
            }
            continue;
        }
        let mut reader = match RecordReader::open(path) {
            Ok(r) => r,
            Err(e) => {
                report
                    .unreadable
                    .push((path.display().to_string(), e.to_string()));
                continue;
            }
        };
        loop {
            let rec = match reader.next_record() {
                Ok(Some(rec)) => rec,
                Ok(None) => break,
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    report.decode_errors += 1;
                    continue;
                }
                Err(e) => {
                    report
                        .unreadable
                        .push((path.display().to_string(), e.to_string()));
                    break;
                }
            };
            let position = rec.position.clone();
            if let Some(p) = progress {
                p.record(rec.text.len() as u64 + 1);
            }
            let mut errors = 0;
            let mut on_bad = |e: DecodeError| {
                errors += 1;
                on_error(e);
            };
            report.events += decode_each(format, &position, rec.text, &mut on_bad, &mut |ev| {
                if let Some(from) = query.from
                    && ev.time.is_none_or(|t| t < from)
                {
                    return;
                }
                if let Some(to) = query.to
                    && ev.time.is_none_or(|t| t >= to)
                {
                    return;
                }
                if !query.filter.matches(ev) {
                    return;
                }
                report.matched += 1;
                let bucket = query.every.map(|every| {
                    let t = ev.time.unwrap_or_default().0;
                    EventTime(t.div_euclid(every.0.max(1)) * every.0.max(1))
                });
                key.clear();
                key.extend(
                    query
                        .group_by
                        .iter()
                        .map(|f| f.path.resolve(ev).to_key_string()),
                );
                let acc = groups.entry((bucket, key.clone())).or_default();
                acc.count += 1;
                if let Aggregate::Distinct(f) = &query.aggregate {
                    acc.distinct.insert(f.path.resolve(ev).to_key_string());
                }
                if let Some(t) = ev.time {
                    acc.first = Some(acc.first.map_or(t, |f| f.min(t)));
                    acc.last = Some(acc.last.map_or(t, |l| l.max(t)));
                }
            });
            report.decode_errors += errors;
        }
    }
    for (key, acc) in columnar.into_rows(query.group_by.len()) {
        let into = groups.entry(key).or_default();
        into.count += acc.count;
        into.distinct.extend(acc.distinct);
        into.first = match (into.first, acc.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        into.last = into.last.max(acc.last);
    }
    // `--top`: the N groups with the most events over the whole range.
    let keep: Option<HashSet<Vec<String>>> = query.top.map(|n| {
        let mut totals: HashMap<&Vec<String>, u64> = HashMap::new();
        for ((_, g), acc) in &groups {
            *totals.entry(g).or_default() += acc.count;
        }
        let mut ranked: Vec<(&Vec<String>, u64)> = totals.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        ranked.into_iter().take(n).map(|(g, _)| g.clone()).collect()
    });
    let mut rows: Vec<Row> = groups
        .into_iter()
        .filter(|((_, g), _)| keep.as_ref().is_none_or(|k| k.contains(g)))
        .map(|((bucket, group), acc)| Row {
            bucket,
            group,
            count: acc.count,
            value: match &query.aggregate {
                Aggregate::Count => AggValue::Number(acc.count),
                Aggregate::Distinct(_) => AggValue::Number(acc.distinct.len() as u64),
                Aggregate::First => AggValue::Time(acc.first),
                Aggregate::Last => AggValue::Time(acc.last),
            },
        })
        .collect();
    // Time order for a series; otherwise largest first; ties by group, for a stable output.
    rows.sort_by(|a, b| {
        a.bucket
            .cmp(&b.bucket)
            .then_with(|| b.count.cmp(&a.count))
            .then_with(|| a.group.cmp(&b.group))
    });
    report.rows = rows;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(filter: &str, group_by: &[&str], aggregate: &str) -> Query {
        Query {
            filter: lang::parse(filter).unwrap(),
            group_by: group_by.iter().map(|g| Field::parse(g).unwrap()).collect(),
            aggregate: Aggregate::parse(aggregate).unwrap(),
            from: None,
            to: None,
            every: None,
            top: None,
        }
    }

    fn log(dir: &std::path::Path) -> PathBuf {
        let ev = |id: &str, secs: u32, verb: &str, user: &str, code: u16, name: &str| {
            format!(
                r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{id}","stage":"ResponseComplete","verb":"{verb}","user":{{"username":"{user}"}},"objectRef":{{"resource":"secrets","namespace":"prod","name":"{name}"}},"responseStatus":{{"code":{code}}},"requestReceivedTimestamp":"2025-01-01T00:0{secs}:00Z","stageTimestamp":"2025-01-01T00:0{secs}:00Z"}}"#
            )
        };
        let lines = [
            ev("1", 0, "list", "mallory", 403, ""),
            ev("2", 1, "list", "mallory", 403, ""),
            ev("3", 6, "list", "mallory", 403, ""),
            ev("4", 2, "list", "bob", 403, ""),
            ev("5", 3, "get", "bob", 403, "db"),
            ev("6", 4, "get", "alice", 200, "db"),
            ev("7", 5, "get", "alice", 200, "api"),
        ];
        let path = dir.join("audit.log");
        std::fs::write(&path, lines.join("\n") + "\nnot json\n").unwrap();
        path
    }

    #[test]
    fn the_users_example_counts_by_user_largest_first() {
        let dir = std::env::temp_dir().join(format!("aw-query-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = log(&dir);
        let run_q = |q: &Query| {
            run(
                q,
                std::slice::from_ref(&path),
                InputFormat::Auto,
                &mut |_| {},
            )
        };
        let r = run_q(&query(
            "responsestatus_code=403 and verb=\"list\"",
            &["username"],
            "count",
        ));
        let rows: Vec<(Vec<String>, AggValue)> = r
            .rows
            .iter()
            .map(|r| (r.group.clone(), r.value.clone()))
            .collect();
        assert_eq!(
            rows,
            [
                (vec!["mallory".to_string()], AggValue::Number(3)),
                (vec!["bob".to_string()], AggValue::Number(1)),
            ]
        );
        assert_eq!((r.events, r.matched, r.decode_errors), (7, 4, 1));

        let r = run_q(&query("verb = get", &["user.username"], "distinct(name)"));
        assert_eq!(r.rows[0].group, ["alice"]);
        assert_eq!(r.rows[0].value, AggValue::Number(2));

        let r = run_q(&query("username = mallory", &[], "last"));
        assert_eq!(r.rows[0].value.to_string(), "2025-01-01T00:06:00Z");

        let mut q = query("code = 403", &["username"], "count");
        q.every = Some(Span::from_secs(300));
        q.top = Some(1);
        let series: Vec<(String, u64)> = r_series(&run_q(&q));
        assert_eq!(
            series,
            [
                ("2025-01-01T00:00:00Z".to_string(), 2),
                ("2025-01-01T00:05:00Z".to_string(), 1)
            ]
        );
        q.every = None;
        q.top = None;
        q.from = EventTime::parse_rfc3339("2025-01-01T00:01:00Z");
        q.to = EventTime::parse_rfc3339("2025-01-01T00:03:00Z");
        let r = run_q(&q);
        assert_eq!(r.rows.iter().map(|r| r.count).sum::<u64>(), 2);
        std::fs::remove_dir_all(&dir).ok();
    }

    fn r_series(r: &QueryReport) -> Vec<(String, u64)> {
        r.rows
            .iter()
            .map(|row| (row.bucket.unwrap().to_string(), row.count))
            .collect()
    }
}
