//! Alertmanager's time intervals: named sets of times (`times`, `weekdays`, `days_of_month`,
//! `months`, `years`, in a `location`) that routes name in `mute_time_intervals` (no
//! notifications then) or `active_time_intervals` (notifications only then). Same syntax and
//! meaning as Alertmanager 0.25, so a pasted `time_intervals:` block behaves the same: within
//! one entry every given field must hold; a named interval holds when any entry does.
//!
//! ```yaml
//! time_intervals:
//!   - name: weekend
//!     time_intervals:
//!       - weekdays: ['saturday', 'sunday']
//!       - weekdays: ['friday']
//!         times: [{ start_time: '18:00', end_time: '24:00' }]
//!         location: Europe/Berlin
//! ```

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use serde::Deserialize;

/// `time_intervals:` (or Alertmanager's older `mute_time_intervals:`) entry in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeIntervalConfig {
    pub name: String,
    #[serde(default)]
    pub time_intervals: Vec<TimeSpecConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeSpecConfig {
    pub times: Vec<TimeRangeConfig>,
    pub weekdays: Vec<String>,
    pub days_of_month: Vec<String>,
    pub months: Vec<String>,
    pub years: Vec<String>,
    /// An IANA time zone (`Europe/Berlin`), `UTC` (the default) or `Local`.
    pub location: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeRangeConfig {
    pub start_time: String,
    pub end_time: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Location {
    Utc,
    Local,
    Zone(chrono_tz::Tz),
}

/// One entry: every non-empty list must contain the instant.
#[derive(Debug, Clone, PartialEq)]
struct Spec {
    /// Minutes of the day, `[start, end)`.
    times: Vec<(u32, u32)>,
    /// 0 = Sunday … 6 = Saturday, inclusive ranges.
    weekdays: Vec<(u32, u32)>,
    /// 1…31, or negative counting back from the month's last day (-1).
    days_of_month: Vec<(i32, i32)>,
    months: Vec<(u32, u32)>,
    years: Vec<(i32, i32)>,
    location: Location,
}

/// A compiled named time interval.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeInterval {
    pub name: String,
    specs: Vec<Spec>,
}

const WEEKDAYS: [&str; 7] = [
    "sunday",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
];
const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

/// `a` or `a:b`, each side parsed by `one`; the range must not run backwards.
fn range<T: Copy + PartialOrd + std::fmt::Debug>(
    text: &str,
    one: impl Fn(&str) -> Result<T, String>,
) -> Result<(T, T), String> {
    let (a, b) = match text.split_once(':') {
        Some((a, b)) => (one(a.trim())?, one(b.trim())?),
        None => {
            let v = one(text.trim())?;
            (v, v)
        }
    };
    if b < a {
        return Err(format!("{text:?}: the range ends before it starts"));
    }
    Ok((a, b))
}

fn named(names: &[&str], offset: u32, what: &str, text: &str) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    if let Some(i) = names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + offset);
    }
    match text.parse::<u32>() {
        Ok(n) if what == "month" && (1..=12).contains(&n) => Ok(n),
        _ => Err(format!("{text:?} is not a {what}")),
    }
}

/// `HH:MM`, 00:00 to 24:00.
fn minute_of_day(text: &str) -> Result<u32, String> {
    let bad = || format!("{text:?} is not a time of day (HH:MM, 00:00 to 24:00)");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl TimeInterval {
    /// Compiles a config entry; errors carry the key below the entry and a message.
    pub fn compile(cfg: &TimeIntervalConfig) -> Result<TimeInterval, (String, String)> {
        let mut specs = Vec::new();
        for (i, s) in cfg.time_intervals.iter().enumerate() {
            let at = |key: &str, j: usize| format!("time_intervals.{i}.{key}.{j}");
            let mut spec = Spec {
                times: Vec::new(),
                weekdays: Vec::new(),
                days_of_month: Vec::new(),
                months: Vec::new(),
                years: Vec::new(),
                location: Location::Utc,
            };
            for (j, t) in s.times.iter().enumerate() {
                let start = minute_of_day(&t.start_time).map_err(|e| (at("times", j), e))?;
                let end = minute_of_day(&t.end_time).map_err(|e| (at("times", j), e))?;
                if end <= start {
                    return Err((
                        at("times", j),
                        format!(
                            "end_time {} is not after start_time {}",
                            t.end_time, t.start_time
                        ),
                    ));
                }
                spec.times.push((start, end));
            }
            for (j, w) in s.weekdays.iter().enumerate() {
                spec.weekdays.push(
                    range(w, |x| named(&WEEKDAYS, 0, "weekday", x))
                        .map_err(|e| (at("weekdays", j), e))?,
                );
            }
            for (j, d) in s.days_of_month.iter().enumerate() {
                let day = |x: &str| match x.parse::<i32>() {
                    Ok(n) if (1..=31).contains(&n) || (-31..=-1).contains(&n) => Ok(n),
                    _ => Err(format!(
                        "{x:?} is not a day of the month (1 to 31, or -31 to -1)"
                    )),
                };
                let (a, b) = match d.split_once(':') {
                    Some((a, b)) => (day(a.trim()), day(b.trim())),
                    None => (day(d.trim()), day(d.trim())),
                };
                let (a, b) = (
                    a.map_err(|e| (at("days_of_month", j), e))?,
                    b.map_err(|e| (at("days_of_month", j), e))?,
                );
                // Same sign: must not run backwards; mixed signs depend on the month.
                if a.signum() == b.signum() && b < a {
                    return Err((
                        at("days_of_month", j),
                        format!("{d:?}: the range ends before it starts"),
                    ));
                }
                spec.days_of_month.push((a, b));
            }
            for (j, m) in s.months.iter().enumerate() {
                spec.months.push(
                    range(m, |x| named(&MONTHS, 1, "month", x))
                        .map_err(|e| (at("months", j), e))?,
                );
            }
            for (j, y) in s.years.iter().enumerate() {
                spec.years.push(
                    range(y, |x| {
                        x.parse::<i32>().map_err(|_| format!("{x:?} is not a year"))
                    })
                    .map_err(|e| (at("years", j), e))?,
                );
            }
            spec.location = match s.location.as_deref() {
                None | Some("") | Some("UTC") => Location::Utc,
                Some("Local") => Location::Local,
                Some(name) => Location::Zone(name.parse().map_err(|_| {
                    (
                        format!("time_intervals.{i}.location"),
                        format!("{name:?} is not a time zone (an IANA name such as Europe/Berlin, UTC or Local)"),
                    )
                })?),
            };
            specs.push(spec);
        }
        Ok(TimeInterval {
            name: cfg.name.clone(),
            specs,
        })
    }

    /// Whether `t` falls in the interval.
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.specs.iter().any(|s| s.contains(t))
    }
}

/// The local calendar fields of an instant.
struct Local {
    year: i32,
    month: u32,
    day: u32,
    weekday: u32,
    minute: u32,
    days_in_month: u32,
}

fn local<Tz: chrono::TimeZone>(t: DateTime<Tz>) -> Local {
    let (year, month) = (t.year(), t.month());
    let next = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)
    };
    let days_in_month = next
        .and_then(|n| n.pred_opt())
        .map_or(31, |last| last.day());
    Local {
        year,
        month,
        day: t.day(),
        weekday: t.weekday().num_days_from_sunday(),
        minute: t.hour() * 60 + t.minute(),
        days_in_month,
    }
}

impl Spec {
    fn contains(&self, t: DateTime<Utc>) -> bool {
        let l = match &self.location {
            Location::Utc => local(t),
            Location::Local => local(t.with_timezone(&chrono::Local)),
            Location::Zone(z) => local(t.with_timezone(z)),
        };
        let within = |ranges: &[(u32, u32)], v: u32| {
            ranges.is_empty() || ranges.iter().any(|(a, b)| *a <= v && v <= *b)
        };
        let day_ok = self.days_of_month.is_empty()
            || self.days_of_month.iter().any(|(a, b)| {
                let resolve = |d: i32| {
                    if d < 0 {
                        l.days_in_month as i32 + 1 + d
                    } else {
                        d
                    }
                };
                let (a, b) = (resolve(*a), resolve(*b).min(l.days_in_month as i32));
                a <= l.day as i32 && l.day as i32 <= b
            });
        (self.times.is_empty()
            || self
                .times
                .iter()
                .any(|(a, b)| *a <= l.minute && l.minute < *b))
            && within(&self.weekdays, l.weekday)
            && day_ok
            && within(&self.months, l.month)
            && (self.years.is_empty()
                || self.years.iter().any(|(a, b)| *a <= l.year && l.year <= *b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(yaml: &str) -> TimeInterval {
        let cfg: TimeIntervalConfig = serde_yaml::from_str(yaml).unwrap();
        TimeInterval::compile(&cfg).unwrap()
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    /// The examples of Alertmanager's configuration documentation.
    #[test]
    fn alertmanager_documented_examples() {
        let business = interval(
            "name: business\ntime_intervals:\n  - times: [{start_time: '09:00', end_time: '17:00'}]\n    weekdays: ['monday:friday']\n",
        );
        assert!(business.contains(at("2026-11-30T09:00:00Z"))); // a Monday
        assert!(business.contains(at("2026-11-30T16:59:59Z")));
        assert!(
            !business.contains(at("2026-11-30T17:00:00Z")),
            "end is exclusive"
        );
        assert!(!business.contains(at("2026-11-29T10:00:00Z")), "a Sunday");
        let end_of_month = interval("name: eom\ntime_intervals:\n  - days_of_month: ['-3:-1']\n");
        assert!(end_of_month.contains(at("2026-02-26T00:00:00Z")));
        assert!(end_of_month.contains(at("2026-02-28T23:00:00Z")));
        assert!(!end_of_month.contains(at("2026-02-25T23:59:00Z")));
        assert!(end_of_month.contains(at("2026-03-29T00:00:00Z")));
        let months = interval(
            "name: m\ntime_intervals:\n  - months: ['1:3', 'may:august', 'december']\n    years: ['2026:2027']\n",
        );
        assert!(months.contains(at("2026-02-10T00:00:00Z")));
        assert!(months.contains(at("2026-06-10T00:00:00Z")));
        assert!(months.contains(at("2026-12-10T00:00:00Z")));
        assert!(!months.contains(at("2026-04-10T00:00:00Z")));
        assert!(!months.contains(at("2028-02-10T00:00:00Z")));
    }

    #[test]
    fn location_moves_the_day_and_the_hour() {
        let berlin_evening = interval(
            "name: e\ntime_intervals:\n  - times: [{start_time: '18:00', end_time: '24:00'}]\n    weekdays: [monday]\n    location: Europe/Berlin\n",
        );
        // 17:30 UTC is 18:30 in Berlin (CET, UTC+1) on that Monday.
        assert!(berlin_evening.contains(at("2026-11-30T17:30:00Z")));
        assert!(!berlin_evening.contains(at("2026-11-30T16:30:00Z")));
        // 23:30 UTC Monday is 00:30 Tuesday in Berlin.
        assert!(!berlin_evening.contains(at("2026-11-30T23:30:00Z")));
    }

    #[test]
    fn mistakes_are_named() {
        for (yaml, key, needle) in [
            (
                "times: [{start_time: '25:00', end_time: '26:00'}]",
                "time_intervals.0.times.0",
                "not a time of day",
            ),
            (
                "times: [{start_time: '10:00', end_time: '09:00'}]",
                "time_intervals.0.times.0",
                "not after",
            ),
            (
                "weekdays: [funday]",
                "time_intervals.0.weekdays.0",
                "not a weekday",
            ),
            (
                "weekdays: ['friday:monday']",
                "time_intervals.0.weekdays.0",
                "ends before",
            ),
            (
                "days_of_month: ['32']",
                "time_intervals.0.days_of_month.0",
                "not a day",
            ),
            (
                "months: [smarch]",
                "time_intervals.0.months.0",
                "not a month",
            ),
            (
                "location: Mars/Olympus",
                "time_intervals.0.location",
                "not a time zone",
            ),
        ] {
            let cfg: TimeIntervalConfig =
                serde_yaml::from_str(&format!("name: x\ntime_intervals:\n  - {yaml}\n")).unwrap();
            let (k, msg) = TimeInterval::compile(&cfg).unwrap_err();
            assert_eq!(k, key, "{yaml}");
            assert!(msg.contains(needle), "{yaml}: {msg}");
        }
    }
}
