//! Event time: nanoseconds since the Unix epoch, parsed from the audit event's own timestamps.
//!
//! Windows, lateness and throttles all run on this clock, never on the wall clock, so a replay
//! of last week's log gives the same alerts as the live stream did.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};

/// A point in event time (ns since the Unix epoch, UTC).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventTime(pub i64);

impl EventTime {
    pub const MIN: EventTime = EventTime(i64::MIN);

    /// Parses RFC 3339 as Kubernetes writes it (`2018-10-26T13:38:34.867116Z`, or whole seconds).
    /// RFC 3339 (`T` or a space between date and time). A time without a zone is read as
    /// UTC: exports that normalise timestamps (SIEMs, `2022-11-29 00:09:04.38`) drop it.
    pub fn parse_rfc3339(s: &str) -> Option<EventTime> {
        let utc = match DateTime::parse_from_rfc3339(s) {
            Ok(dt) => dt.to_utc(),
            Err(_) => chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
                .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f"))
                .ok()?
                .and_utc(),
        };
        utc.timestamp_nanos_opt().map(EventTime)
    }

    pub fn from_secs(secs: i64) -> EventTime {
        EventTime(secs.saturating_mul(1_000_000_000))
    }

    pub fn saturating_add(self, d: Span) -> EventTime {
        EventTime(self.0.saturating_add(d.0))
    }

    pub fn saturating_sub(self, d: Span) -> EventTime {
        EventTime(self.0.saturating_sub(d.0))
    }

    pub fn to_datetime(self) -> DateTime<Utc> {
        DateTime::from_timestamp_nanos(self.0)
    }
}

impl fmt::Display for EventTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            &self
                .to_datetime()
                .to_rfc3339_opts(SecondsFormat::AutoSi, true),
        )
    }
}

impl serde::Serialize for EventTime {
    /// RFC 3339 in human-readable formats (JSON), nanoseconds in binary ones (snapshots).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_i64(self.0)
        }
    }
}

/// Reads what [`Serialize`](serde::Serialize) writes (RFC 3339), or nanoseconds as an integer.
impl<'de> serde::Deserialize<'de> for EventTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<EventTime, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = EventTime;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 timestamp or nanoseconds since the epoch")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<EventTime, E> {
                Ok(EventTime(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<EventTime, E> {
                i64::try_from(v)
                    .map(EventTime)
                    .map_err(|_| E::custom("timestamp out of range"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EventTime, E> {
                EventTime::parse_rfc3339(v)
                    .ok_or_else(|| E::custom(format!("invalid RFC 3339 timestamp {v:?}")))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A length of event time (ns). Parsed from rule files as `30s`, `5m`, `1h30m`, `2d`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(pub i64);

impl Span {
    pub const fn from_secs(secs: i64) -> Span {
        Span(secs.saturating_mul(1_000_000_000))
    }

    pub const fn from_millis(ms: i64) -> Span {
        Span(ms.saturating_mul(1_000_000))
    }

    /// Parses a duration such as `500ms`, `30s`, `5m`, `1h30m`, `2d` (units: ms, s, m, h, d, w).
    pub fn parse(text: &str) -> Result<Span, String> {
        let s = text.trim();
        if s.is_empty() {
            return Err("empty duration".into());
        }
        let bytes = s.as_bytes();
        let mut total: i64 = 0;
        let mut i = 0;
        while i < bytes.len() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if start == i {
                return Err(format!(
                    "invalid duration {text:?}: expected a number at {:?} (use e.g. 30s, 5m, 1h30m)",
                    &s[start..]
                ));
            }
            let number: i64 = s[start..i]
                .parse()
                .map_err(|_| format!("invalid duration {text:?}: number too large"))?;
            let unit_start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            let unit_ns: i64 = match &s[unit_start..i] {
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60 * 1_000_000_000,
                "h" => 3_600 * 1_000_000_000,
                "d" => 86_400 * 1_000_000_000,
                "w" => 7 * 86_400 * 1_000_000_000,
                "" => {
                    return Err(format!(
                        "invalid duration {text:?}: missing unit after {number} (ms, s, m, h, d, w)"
                    ));
                }
                other => {
                    return Err(format!(
                        "invalid duration {text:?}: unknown unit {other:?} (ms, s, m, h, d, w)"
                    ));
                }
            };
            total = number
                .checked_mul(unit_ns)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| format!("invalid duration {text:?}: too large"))?;
        }
        Ok(Span(total))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0;
        if ns % 1_000_000_000 != 0 {
            return write!(f, "{}ms", ns / 1_000_000);
        }
        let mut secs = ns / 1_000_000_000;
        if secs == 0 {
            return f.write_str("0s");
        }
        for (unit, len) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
            if secs >= len {
                write!(f, "{}{unit}", secs / len)?;
                secs %= len;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_timestamps() {
        let micro = EventTime::parse_rfc3339("2018-10-26T13:38:34.867116Z").unwrap();
        let secs = EventTime::parse_rfc3339("2018-10-26T13:38:34Z").unwrap();
        assert_eq!(micro.0 - secs.0, 867_116_000);
        assert_eq!(secs.to_string(), "2018-10-26T13:38:34Z");
        assert!(EventTime::parse_rfc3339("yesterday").is_none());
        // Zone-less exports (SIEM-normalised) are UTC; a space may stand for the T.
        let naive = EventTime::parse_rfc3339("2018-10-26 13:38:34.867116").unwrap();
        assert_eq!(naive, micro);
        assert_eq!(
            EventTime::parse_rfc3339("2018-10-26T13:38:34").unwrap(),
            secs
        );
        let offset = EventTime::parse_rfc3339("2018-10-26 15:38:34+02:00").unwrap();
        assert_eq!(offset, secs);
    }

    #[test]
    fn serialized_times_read_back_exactly() {
        for t in [
            EventTime::MIN,
            EventTime(0),
            EventTime(1_540_561_114_867_116_123),
        ] {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(
                serde_json::from_str::<EventTime>(&json).unwrap(),
                t,
                "{json}"
            );
        }
    }

    #[test]
    fn parses_durations() {
        assert_eq!(Span::parse("5m").unwrap(), Span::from_secs(300));
        assert_eq!(Span::parse("1h30m").unwrap(), Span::from_secs(5400));
        assert_eq!(Span::parse("250ms").unwrap(), Span::from_millis(250));
        assert_eq!(Span::parse("2d").unwrap().to_string(), "2d");
        assert_eq!(Span::parse("90s").unwrap().to_string(), "1m30s");
    }

    #[test]
    fn rejects_bad_durations_with_a_reason() {
        assert!(Span::parse("5").unwrap_err().contains("missing unit"));
        assert!(
            Span::parse("5min")
                .unwrap_err()
                .contains("unknown unit \"min\"")
        );
        assert!(Span::parse("m").unwrap_err().contains("expected a number"));
        assert!(Span::parse("").unwrap_err().contains("empty"));
    }
}
